//! Corpus → training examples: each kept trace becomes a chat whose assistant turn is
//! `<think>\n{reasoning}\n</think>\n\n{answer}` (configurable), rendered with the student's own
//! chat template; the loss goes on the assistant tokens only, located by the spans the renderer
//! reports. Teacher top-k log-probs are attached when they line up with the student's tokens.

use std::path::PathBuf;

use distill_data::{Corpus, FinishReason, Message, Role, Trace};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use distill_models::tokenizer::TextTokenizer;

/// What to do with examples longer than `max_seq_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlong {
    /// Skip them (counted). Keeps every trained trace whole.
    Drop,
    /// Keep the first `max_seq_len` tokens (the end of the reasoning and the answer are lost).
    Truncate,
}

/// `[train.data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Trace corpora to train on.
    pub corpus: Vec<PathBuf>,
    /// Train only on traces whose verdicts all passed.
    #[serde(default = "yes")]
    pub only_passed: bool,
    /// Skip traces cut off by the teacher's token limit.
    #[serde(default = "yes")]
    pub drop_truncated: bool,
    /// The assistant turn for a trace with reasoning. R1-Distill templates prefill `<think>\n`;
    /// the renderer then does not repeat it.
    #[serde(default = "think_format")]
    pub assistant_format: String,
    /// The assistant turn for a trace without reasoning.
    #[serde(default = "plain_format")]
    pub plain_format: String,
    /// Longest training sequence (packed row length).
    pub max_seq_len: usize,
    #[serde(default = "drop")]
    pub overlong: Overlong,
    /// Pack examples into full rows (best-fit decreasing) with a block-diagonal mask; off pads
    /// each example to the longest in its micro-batch.
    #[serde(default = "yes")]
    pub packing: bool,
    /// Share of prompts held out for the eval loss (split by prompt, so samples of one prompt
    /// never straddle the split).
    #[serde(default = "eval_fraction")]
    pub eval_fraction: f64,
    /// Shuffling seed.
    #[serde(default)]
    pub seed: u64,
    /// Which assistant turns of a multi-turn trace are loss targets: the last (the teacher's
    /// reply, the default) or all of them. Earlier turns always stay in the prompt, rendered as
    /// the chat template renders history.
    #[serde(default)]
    pub train_on: TrainOn,
}

/// `[train.data] train_on`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainOn {
    /// The trace's own reply only.
    #[default]
    LastAssistant,
    /// Every assistant turn, earlier ones as the template renders them in the history (R1-Distill's
    /// drops their `<think>` blocks).
    AllAssistant,
}

fn yes() -> bool {
    true
}
fn think_format() -> String {
    "<think>\n{reasoning}\n</think>\n\n{answer}".into()
}
fn plain_format() -> String {
    "{answer}".into()
}
fn drop() -> Overlong {
    Overlong::Drop
}
fn eval_fraction() -> f64 {
    0.05
}

/// Teacher top-k log-probs aligned to the example's tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct KdTargets {
    /// Token index (in the example) of the first position the teacher scored.
    pub start: usize,
    pub k: usize,
    /// `[n, k]` ids and log-probs; rows for tokens `start..start + n`.
    pub ids: Vec<u32>,
    pub logprobs: Vec<f32>,
    /// `[n]` the teacher's log-prob of each scored token itself (the on-policy reverse KL's
    /// per-token estimate needs it); empty when the trace does not carry it.
    pub token_logprobs: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub id: String,
    pub prompt_id: String,
    pub ids: Vec<u32>,
    /// `true` where the token is assistant output (a loss target).
    pub assistant: Vec<bool>,
    pub kd: Option<KdTargets>,
    /// An RL sample's completion: its advantage and log-probs.
    pub rl: Option<RlTargets>,
}

/// An RL sample's completion tokens `start..start + n` (one entry per token in the vectors).
#[derive(Debug, Clone, PartialEq)]
pub struct RlTargets {
    pub start: usize,
    /// The sample's advantage (every token of it gets this one).
    pub advantage: f32,
    /// Each token's weight in `Σ w·ℓ / N` (the aggregation of the loss type).
    pub weight: f32,
    /// `[n]` the sampling policy's log-probs (NaN: the current policy's, held constant); their
    /// count is the number of tokens scored.
    pub old_logprobs: Vec<f32>,
    /// `[n]` the reference model's log-probs (empty without a reference).
    pub ref_logprobs: Vec<f32>,
}

/// What became of the corpus.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DataReport {
    pub traces: u64,
    pub examples: u64,
    pub dropped_failed: u64,
    pub dropped_truncated: u64,
    pub dropped_overlong: u64,
    pub truncated: u64,
    pub kd_aligned: u64,
    pub kd_misaligned: u64,
    pub train_examples: u64,
    pub eval_examples: u64,
    pub train_tokens: u64,
    pub assistant_tokens: u64,
    /// blake3 of each corpus's manifest, in order: what the model is distilled from.
    pub corpus_checksums: Vec<String>,
}

impl DataConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config { section: "train.data", msg });
        if self.corpus.is_empty() {
            return bad("corpus: name at least one corpus directory".into());
        }
        if self.max_seq_len < 8 {
            return bad(format!("max_seq_len {} is too small", self.max_seq_len));
        }
        if !(0.0..1.0).contains(&self.eval_fraction) {
            return bad(format!("eval_fraction {} must be in [0, 1)", self.eval_fraction));
        }
        if !self.assistant_format.contains("{answer}") {
            return bad("assistant_format must contain {answer}".into());
        }
        Ok(())
    }

    /// The assistant text of a trace.
    pub fn completion(&self, t: &Trace) -> String {
        let f =
            if t.reasoning.trim().is_empty() { &self.plain_format } else { &self.assistant_format };
        f.replace("{reasoning}", t.reasoning.trim()).replace("{answer}", t.answer.trim())
    }
}

/// Held-out split by prompt id: stable across runs and corpus order.
pub fn is_eval(prompt_id: &str, fraction: f64, seed: u64) -> bool {
    let h = blake3::hash(format!("{seed}:{prompt_id}").as_bytes());
    let x = u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap());
    (x as f64 / u64::MAX as f64) < fraction
}

/// Why a trace is not an example.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Skip {
    /// Dropped by `only_passed` (counted).
    #[error("it failed verification")]
    Failed,
    /// Dropped by `drop_truncated` (counted).
    #[error("the teacher's token limit cut it")]
    Truncated,
    /// Longer than `max_seq_len` with `overlong = "drop"` (counted).
    #[error("it is longer than max_seq_len")]
    Overlong,
    /// The rest are errors: the run stops, naming the trace.
    #[error("the tokenizer has no chat template")]
    NoTemplate,
    #[error("the chat template failed: {0}")]
    Render(String),
    #[error("tokenizing failed: {0}")]
    Tokenize(String),
}

/// Turn one trace into an example (and whether it was truncated to fit), or say why not.
pub fn example(
    t: &Trace,
    tok: &TextTokenizer,
    cfg: &DataConfig,
) -> std::result::Result<(Example, bool), Skip> {
    if cfg.only_passed && !t.passed() {
        return Err(Skip::Failed);
    }
    if cfg.drop_truncated && t.finish_reason == FinishReason::Length {
        return Err(Skip::Truncated);
    }
    let chat = tok.chat.as_ref().ok_or(Skip::NoTemplate)?;
    // The prompt is the whole conversation before the reply, earlier assistant turns included.
    let prompt: &[Message] = &t.messages;
    let (text, span) = chat
        .render_for_training(prompt, &cfg.completion(t))
        .map_err(|e| Skip::Render(e.to_string()))?;
    // Loss spans: the reply, and under `all_assistant` every earlier assistant turn as the
    // template rendered it in the history.
    let mut spans = vec![span.clone()];
    if cfg.train_on == TrainOn::AllAssistant && prompt.iter().any(|m| m.role == Role::Assistant) {
        let (history, earlier) =
            chat.render_with_spans(prompt).map_err(|e| Skip::Render(e.to_string()))?;
        if !text.starts_with(&history) {
            return Err(Skip::Render(
                "the template renders the conversation's history differently once a reply follows; train_on = \"all_assistant\" cannot locate the earlier turns".into(),
            ));
        }
        spans.extend(earlier);
    }
    let (mut ids, offsets) =
        tok.encode_with_offsets(&text).map_err(|e| Skip::Tokenize(e.to_string()))?;
    let mut assistant: Vec<bool> =
        offsets.iter().map(|&(s, _)| spans.iter().any(|r| r.contains(&s))).collect();
    // Where the reply starts, in tokens (teacher log-probs align there).
    let mut reply_start = offsets.iter().position(|&(s, _)| s >= span.start);
    if tok.add_bos
        && let Some(b) = tok.bos_token.as_deref().and_then(|b| tok.token_id(b))
        && ids.first() != Some(&b)
    {
        ids.insert(0, b);
        assistant.insert(0, false);
        reply_start = reply_start.map(|p| p + 1);
    }
    let mut truncated = false;
    if ids.len() > cfg.max_seq_len {
        match cfg.overlong {
            Overlong::Drop => return Err(Skip::Overlong),
            Overlong::Truncate => {
                ids.truncate(cfg.max_seq_len);
                assistant.truncate(cfg.max_seq_len);
                truncated = true;
            }
        }
    }
    // Teacher log-probs line up when the student tokenizes the completion into the same ids.
    let kd = t.logprobs.as_ref().and_then(|lp| {
        let start = reply_start.filter(|&p| p < ids.len())?;
        let n = lp.len().min(ids.len() - start);
        (n > 0 && ids[start..start + n] == lp.tokens[..n]).then(|| KdTargets {
            start,
            k: lp.k as usize,
            ids: lp.top_ids[..n * lp.k as usize].to_vec(),
            logprobs: lp.top_logprobs[..n * lp.k as usize].to_vec(),
            token_logprobs: lp.token_logprobs[..n].to_vec(),
        })
    });
    Ok((
        Example { id: t.id.clone(), prompt_id: t.prompt_id.clone(), ids, assistant, kd, rl: None },
        truncated,
    ))
}

/// Read every corpus, build examples in parallel, split train/eval.
pub fn load(
    cfg: &DataConfig,
    tok: &TextTokenizer,
) -> Result<(Vec<Example>, Vec<Example>, DataReport)> {
    cfg.validate()?;
    let mut report = DataReport::default();
    let mut traces = Vec::new();
    for dir in &cfg.corpus {
        let c = Corpus::open(dir)?;
        report.corpus_checksums.push(c.manifest_checksum().to_string());
        for t in c.iter() {
            traces.push(t?);
        }
    }
    report.traces = traces.len() as u64;
    if traces.is_empty() {
        return Err(Error::Invalid(format!(
            "the corpus {} holds no traces",
            cfg.corpus.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        )));
    }
    let results: Vec<_> = traces.par_iter().map(|t| example(t, tok, cfg)).collect();
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for (t, r) in traces.iter().zip(results) {
        match r {
            Ok((ex, truncated)) => {
                report.truncated += truncated as u64;
                if ex.kd.is_some() {
                    report.kd_aligned += 1;
                } else if t.logprobs.is_some() {
                    report.kd_misaligned += 1;
                }
                if is_eval(&ex.prompt_id, cfg.eval_fraction, cfg.seed) {
                    eval.push(ex);
                } else {
                    report.train_tokens += ex.ids.len() as u64;
                    report.assistant_tokens += ex.assistant.iter().filter(|&&a| a).count() as u64;
                    train.push(ex);
                }
            }
            Err(Skip::Failed) => report.dropped_failed += 1,
            Err(Skip::Truncated) => report.dropped_truncated += 1,
            Err(Skip::Overlong) => report.dropped_overlong += 1,
            Err(why) => {
                return Err(Error::Invalid(format!(
                    "trace {}: could not be turned into an example: {why}",
                    t.id
                )));
            }
        }
    }
    report.examples = (train.len() + eval.len()) as u64;
    report.train_examples = train.len() as u64;
    report.eval_examples = eval.len() as u64;
    if train.is_empty() {
        return Err(Error::Invalid(format!(
            "no training examples: all {} traces were filtered out ({} failed verification, {} truncated, {} longer than max_seq_len {}, {} held out for eval)",
            report.traces,
            report.dropped_failed,
            report.dropped_truncated,
            report.dropped_overlong,
            cfg.max_seq_len,
            eval.len()
        )));
    }
    Ok((train, eval, report))
}

/// Check that the student's tokenizer has every special token its chat template writes.
pub fn check_template_tokens(tok: &TextTokenizer) -> Result<()> {
    let chat = tok
        .chat
        .as_ref()
        .ok_or_else(|| Error::Tokenizer("the student has no chat template".into()))?;
    let probe = [distill_data::Message::new(distill_data::Role::User, "hi")];
    let (text, _) = chat.render_for_training(&probe, "ok")?;
    let mut missing = Vec::new();
    for (open, close) in [("<|", "|>"), ("<｜", "｜>")] {
        let mut rest = text.as_str();
        while let Some(i) = rest.find(open) {
            let Some(j) = rest[i..].find(close) else { break };
            let token = &rest[i..i + j + close.len()];
            if tok.token_id(token).is_none() && !missing.contains(&token.to_string()) {
                missing.push(token.to_string());
            }
            rest = &rest[i + j + close.len()..];
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Tokenizer(format!(
            "the chat template writes special tokens the tokenizer does not have: {}",
            missing.join(", ")
        )))
    }
}

/// The id that pads batches: the tokenizer's pad token, else its EOS, else 0.
pub fn pad_id(tok: &TextTokenizer) -> u32 {
    tok.pad_token
        .as_deref()
        .and_then(|p| tok.token_id(p))
        .or_else(|| tok.eos_token.as_deref().and_then(|e| tok.token_id(e)))
        .unwrap_or(0)
}
