//! On-policy distillation as a [`BatchSource`] of the one training loop: each step the student's
//! current weights sample completions for a batch of prompts (the local engine, KV cache, seeded
//! per step and prompt; split over the ranks), the teacher scores exactly those tokens, every
//! sample and its scores are committed to a corpus under the run directory, and the step minimises
//! the divergence on them. With `lambda < 1` a seeded share of the steps are SFT steps on
//! `[train.data]`'s corpus instead.
//!
//! Resume: a step's samples are committed before its optimizer step, so a run killed anywhere
//! and resumed from its last checkpoint re-reads the samples of the steps it repeats instead of
//! sampling and asking the teacher again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use distill_data::prompts::{ReadOptions, dataset_name, read_prompts};
use distill_data::{
    Corpus, CorpusWriter, Prompt, Sampling, Source, TokenLogprobs, Trace, WriterOptions,
};
use distill_models::generate::{Engine, SamplingParams};
use distill_models::hf;
use distill_models::model::CausalLm;
use distill_models::score::{ScoreRequest, Scorer};
use distill_models::tokenizer::TextTokenizer;
use serde_json::json;

use super::OnPolicyConfig;
use crate::error::{Error, Result};
use crate::sft::{SftData, SftSource};
use crate::train::checkpoint::RunState;
use crate::train::data::{DataReport, Example, KdTargets, check_template_tokens, pad_id};
use crate::train::pack::{self, Batch};
use crate::train::run::train as train_loop;
use crate::train::{BatchSource, Observer, StepBatch, StudentView, Summary, TrainConfig};

/// A prompt rendered for the student (and, sharing its vocabulary, the teacher).
pub(crate) struct Rendered {
    pub(crate) prompt: Prompt,
    pub(crate) ids: Vec<u32>,
}

/// One on-policy sample with the teacher's scores.
struct Sample {
    prompt: usize,
    scores: TokenLogprobs,
    /// The student's log-prob of each sampled token (temperature 1).
    student: Vec<f32>,
    /// Whether the sample ended with an end-of-sequence token.
    eos: bool,
    /// The verifier's verdict, when the prompt has a reference answer.
    passed: Option<bool>,
}

/// Judges a completion against a reference answer: (the extracted answer, equivalent?).
pub type Judge<'a> = &'a (dyn Fn(&str, &str) -> (Option<String>, bool) + Sync);

/// A committed on-policy trace as a sample of training prompt `prompt`.
fn sample_of(t: &Trace, prompt: usize, corpus: &Path) -> Result<Sample> {
    let scores = t.logprobs.clone().ok_or_else(|| {
        Error::Invalid(format!(
            "{}: on-policy trace {} has no teacher scores",
            corpus.display(),
            t.id
        ))
    })?;
    let student: Vec<f32> = t
        .metadata
        .get("student_logprobs")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    Ok(Sample {
        prompt,
        scores,
        student,
        eos: t.finish_reason == distill_data::FinishReason::Stop,
        passed: t.verdicts.first().map(|v| v.passed),
    })
}

/// Per-step figures of the samples: mean sampled-token reverse KL, the teacher's NLL of the
/// sampled tokens, mean length, the share ending in EOS, and the pass rate where judged.
fn sample_metrics(samples: &[Sample]) -> serde_json::Value {
    let (mut rkl, mut nll, mut n) = (0.0f64, 0.0f64, 0usize);
    for s in samples {
        for (q, p) in s.student.iter().zip(&s.scores.token_logprobs) {
            rkl += (*q - *p) as f64;
            nll -= *p as f64;
            n += 1;
        }
    }
    let judged: Vec<bool> = samples.iter().filter_map(|s| s.passed).collect();
    let k = samples.len().max(1) as f64;
    json!({
        "sample_reverse_kl": rkl / n.max(1) as f64,
        "teacher_nll": nll / n.max(1) as f64,
        "sample_tokens": samples.iter().map(|s| s.scores.len()).sum::<usize>() as f64 / k,
        "eos_fraction": samples.iter().filter(|s| s.eos).count() as f64 / k,
        "pass_rate": (!judged.is_empty()).then(|| judged.iter().filter(|&&p| p).count() as f64 / judged.len() as f64),
    })
}

/// The seed of prompt `id`'s sample at `step` (independent of the batch it is in).
pub(crate) fn sample_seed(seed: u64, step: u64, id: &str) -> u64 {
    let h = blake3::hash(format!("{seed}:{step}:{id}").as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// The trace id of prompt `id`'s sample at `step`.
fn trace_prompt_id(step: u64, id: &str) -> String {
    format!("on-policy/step-{step:06}/{id}")
}

pub(crate) fn render(prompts: Vec<Prompt>, tok: &TextTokenizer) -> Result<Vec<Rendered>> {
    let chat = tok
        .chat
        .as_ref()
        .ok_or_else(|| Error::Invalid("the student's tokenizer has no chat template".into()))?;
    let bos = tok.add_bos.then(|| tok.bos_token.as_deref().and_then(|b| tok.token_id(b))).flatten();
    prompts
        .into_iter()
        .map(|p| {
            let text = chat.render(&p.messages, true).map_err(|e| Error::Prompt {
                id: p.id.clone(),
                msg: format!("the chat template: {e}"),
            })?;
            let mut ids = tok
                .encode(&text)
                .map_err(|e| Error::Prompt { id: p.id.clone(), msg: format!("tokenizing: {e}") })?;
            if let Some(b) = bos
                && ids.first() != Some(&b)
            {
                ids.insert(0, b);
            }
            Ok(Rendered { prompt: p, ids })
        })
        .collect()
}

/// What sampling and scoring need besides the student's current weights.
struct Sampler<'a, B: Backend> {
    config: &'a distill_models::ModelConfig,
    tok: &'a TextTokenizer,
    device: &'a B::Device,
    op: &'a OnPolicyConfig,
    scorer: &'a dyn Scorer,
    max_seq_len: usize,
}

/// Sample one completion per prompt with `model` and have the teacher score them.
fn sample_and_score<B: Backend>(
    sm: &Sampler<'_, B>,
    model: &CausalLm<B>,
    prompts: &[&Rendered],
    seeds: &[u64],
) -> Result<Vec<(TokenLogprobs, Vec<f32>)>> {
    let Sampler { config, tok, device, op, scorer, max_seq_len } = *sm;
    let engine = Engine::new(model, config, Some(tok), device.clone());
    let params = SamplingParams {
        temperature: op.temperature as f32,
        top_p: op.top_p as f32,
        top_k: 0,
        max_tokens: op.max_tokens,
        seed: 0,
        stop_ids: tok.eos_ids(&config.eos_token_ids),
        stop_strings: vec![],
        // The student's own log-prob of each sampled token (raw logits, temperature 1).
        logprobs: 1,
    };
    let ids: Vec<Vec<u32>> = prompts.iter().map(|r| r.ids.clone()).collect();
    let mut got = Vec::with_capacity(ids.len());
    for (chunk, s) in ids.chunks(op.batch.max(1)).zip(seeds.chunks(op.batch.max(1))) {
        got.extend(engine.generate_seeded(chunk, s, &params, |_| {})?);
    }
    let reqs: Vec<ScoreRequest> = prompts
        .iter()
        .zip(&got)
        .map(|(r, c)| {
            // Keep prompt + completion within max_seq_len: the completion is cut, not the prompt.
            let room = max_seq_len.saturating_sub(r.ids.len());
            ScoreRequest {
                prompt: r.ids.clone(),
                completion: c.ids[..c.ids.len().min(room)].to_vec(),
            }
        })
        .collect();
    let scores = scorer.score(&reqs, op.top_k)?;
    Ok(scores
        .into_iter()
        .zip(got)
        .map(|(t, c)| {
            let n = t.len();
            let mine = c.logprobs.map(|l| l.token_logprobs).unwrap_or_default();
            (t, mine[..n.min(mine.len())].to_vec())
        })
        .collect())
}

/// An example for the step: prompt + the sampled completion, the completion as targets, the
/// teacher's scores at each completion position.
/// Teacher ids past the student's vocabulary (a larger embedding's padding rows) are dropped from
/// the support.
fn example(r: &Rendered, scores: &TokenLogprobs, vocab: usize) -> Example {
    let (mut top_ids, mut top_lps) = (scores.top_ids.clone(), scores.top_logprobs.clone());
    for (i, l) in top_ids.iter_mut().zip(top_lps.iter_mut()) {
        if *i != u32::MAX && *i as usize >= vocab {
            (*i, *l) = (u32::MAX, f32::NEG_INFINITY);
        }
    }
    let mut ids = r.ids.clone();
    ids.extend(&scores.tokens);
    let mut assistant = vec![false; r.ids.len()];
    assistant.extend(vec![true; scores.tokens.len()]);
    Example {
        id: r.prompt.id.clone(),
        prompt_id: r.prompt.id.clone(),
        ids,
        assistant,
        kd: Some(KdTargets {
            start: r.ids.len(),
            k: scores.k as usize,
            ids: top_ids,
            logprobs: top_lps,
            token_logprobs: scores.token_logprobs.clone(),
        }),
        rl: None,
    }
}

/// Micro-batches of one row per example, each padded to its longest row.
pub(crate) fn micro_batches(examples: &[Example], micro: usize, pad: u32) -> Vec<Batch> {
    let idx: Vec<usize> = (0..examples.len()).collect();
    idx.chunks(micro.max(1))
        .map(|c| {
            let rows: Vec<Vec<usize>> = c.iter().map(|&i| vec![i]).collect();
            let len = c.iter().map(|&i| examples[i].ids.len()).max().unwrap_or(1);
            pack::build(examples, &rows, len, pad)
        })
        .collect()
}

/// Whether step `step` is on-policy, for the share `lambda` (seeded, so a resumed run agrees).
fn on_policy_step(lambda: f64, seed: u64, step: u64) -> bool {
    if lambda >= 1.0 {
        return true;
    }
    let h = blake3::hash(format!("mix:{seed}:{step}").as_bytes());
    let x = u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"));
    (x as f64 / u64::MAX as f64) < lambda
}

/// The training prompts and the held-out ones (a seeded share, `eval_prompts` of them), rendered
/// with the student's chat template; refuses a prompt that leaves no room within `seq` tokens.
fn split_prompts(
    op: &OnPolicyConfig,
    tok: &TextTokenizer,
    seq: usize,
) -> Result<(Vec<Rendered>, Vec<Rendered>)> {
    let set = PromptSet {
        section: "train.on_policy",
        path: &op.prompts,
        fields: &op.fields,
        eval_prompts: op.eval_prompts,
        seed: op.seed,
    };
    split_prompt_set(&set, tok, seq)
}

/// A prompt file and its held-out share, as an objective's section names them.
pub(crate) struct PromptSet<'a> {
    pub(crate) section: &'static str,
    pub(crate) path: &'a Path,
    pub(crate) fields: &'a distill_data::FieldMap,
    pub(crate) eval_prompts: usize,
    pub(crate) seed: u64,
}

/// [`split_prompts`] for any section's prompt file.
pub(crate) fn split_prompt_set(
    set: &PromptSet<'_>,
    tok: &TextTokenizer,
    seq: usize,
) -> Result<(Vec<Rendered>, Vec<Rendered>)> {
    let dataset = dataset_name(set.path);
    let (prompts, _) = read_prompts(set.path, &dataset, set.fields, &ReadOptions::default())?;
    if prompts.len() <= set.eval_prompts {
        return Err(Error::Invalid(format!(
            "[{}] {}: {} prompts, but eval_prompts = {} leaves none to train on",
            set.section,
            set.path.display(),
            prompts.len(),
            set.eval_prompts
        )));
    }
    let order = pack::shuffled(prompts.len(), set.seed, u64::MAX);
    let mut prompts: Vec<Option<Prompt>> = prompts.into_iter().map(Some).collect();
    let eval_p: Vec<Prompt> =
        order[..set.eval_prompts].iter().map(|&i| prompts[i].take().expect("once")).collect();
    let train_p: Vec<Prompt> = prompts.into_iter().flatten().collect();
    let eval = render(eval_p, tok)?;
    let train = render(train_p, tok)?;
    if let Some(r) = train.iter().chain(&eval).find(|r| r.ids.len() >= seq) {
        return Err(Error::Invalid(format!(
            "[{}] prompt {} is {} tokens: no room for a completion within max_seq_len {seq}",
            set.section,
            r.prompt.id,
            r.ids.len()
        )));
    }
    Ok((train, eval))
}

/// A student's samples of the held-out prompts, as the teacher sees them.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HeldOut {
    /// Held-out prompts sampled (one completion each, the seeds of `eval_reverse_kl`).
    pub prompts: usize,
    /// Mean over sampled tokens of log q(x) − log p(x): KL(student ‖ teacher) on its own paths.
    pub reverse_kl: f64,
    /// The teacher's mean NLL of the sampled tokens.
    pub teacher_nll: f64,
    /// Mean completion length, tokens.
    pub sample_tokens: f64,
    /// Share of samples that end with an end-of-sequence token.
    pub eos_fraction: f64,
    /// Share judged correct, over the prompts with a reference answer (none: `None`).
    pub pass_rate: Option<f64>,
}

/// Measure the student in `model_dir` on the held-out prompts of `op` (the split and seeds the
/// on-policy loop's `eval_reverse_kl` uses), so students from different runs are compared on the
/// same prompts with the same sampling seeds.
pub fn measure_held_out<B: Backend>(
    model_dir: &Path,
    op: &OnPolicyConfig,
    max_seq_len: usize,
    scorer: &dyn Scorer,
    judge: Option<Judge<'_>>,
    device: &B::Device,
) -> Result<HeldOut> {
    let tok = TextTokenizer::from_dir(model_dir)?;
    let (_, eval) = split_prompts(op, &tok, max_seq_len)?;
    if eval.is_empty() {
        return Err(Error::Invalid(
            "[train.on_policy] eval_prompts = 0: no held-out prompts to measure on".into(),
        ));
    }
    let loaded = hf::load_model::<B>(model_dir, device)?;
    let sm = Sampler::<B> { config: &loaded.config, tok: &tok, device, op, scorer, max_seq_len };
    let refs: Vec<&Rendered> = eval.iter().collect();
    let seeds: Vec<u64> =
        eval.iter().map(|r| sample_seed(op.seed, u64::MAX, &r.prompt.id)).collect();
    let got = sample_and_score(&sm, &loaded.model, &refs, &seeds)?;
    let eos = tok.eos_ids(&loaded.config.eos_token_ids);
    let samples: Vec<Sample> = got
        .into_iter()
        .enumerate()
        .map(|(i, (scores, student))| {
            let passed = match (judge, &eval[i].prompt.reference) {
                (Some(j), Some(gold)) => {
                    let text = tok.decode(&scores.tokens, true).unwrap_or_default();
                    Some(j(gold, &text).1)
                }
                _ => None,
            };
            let ended = scores.tokens.last().is_some_and(|l| eos.contains(l));
            Sample { prompt: i, scores, student, eos: ended, passed }
        })
        .collect();
    let m = sample_metrics(&samples);
    let f = |k: &str| m[k].as_f64().unwrap_or(f64::NAN);
    Ok(HeldOut {
        prompts: samples.len(),
        reverse_kl: f("sample_reverse_kl"),
        teacher_nll: f("teacher_nll"),
        sample_tokens: f("sample_tokens"),
        eos_fraction: f("eos_fraction"),
        pass_rate: m["pass_rate"].as_f64(),
    })
}

/// The teacher shared by the ranks' threads: one scoring call at a time (an endpoint scorer
/// keeps its own concurrency inside a call).
struct Locked<'a>(Mutex<&'a mut (dyn Scorer + Send)>);

impl Scorer for Locked<'_> {
    fn score(&self, reqs: &[ScoreRequest], k: usize) -> distill_models::Result<Vec<TokenLogprobs>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).score(reqs, k)
    }
    fn model(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).model()
    }
    fn describe(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).describe()
    }
    fn endpoint_kind(&self) -> distill_data::EndpointKind {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).endpoint_kind()
    }
}

/// What every rank's source reads: the rendered prompts, the SFT share, the teacher.
struct Shared<'a> {
    cfg: &'a TrainConfig,
    op: &'a OnPolicyConfig,
    tok: TextTokenizer,
    train: Vec<Rendered>,
    eval: Vec<Rendered>,
    sft: Option<Arc<SftData>>,
    scorer: Locked<'a>,
    judge: Option<Judge<'a>>,
    total: u64,
    pad: u32,
}

/// The on-policy source of one rank. Each step's prompts are sampled in groups of
/// `[train.on_policy] batch`, group g on rank g mod world, so the groups (and with them every
/// sample) are those of a one-device run; the samples are then gathered on every rank, and rank
/// 0 commits them to the run's samples corpus before the step uses them.
struct OnPolicySource<'a> {
    sh: &'a Shared<'a>,
    sft: Option<SftSource<'a>>,
    report: DataReport,
    corpus_dir: PathBuf,
    /// Rank 0: the samples corpus, and its committed samples of steps still to run.
    writer: Option<CorpusWriter>,
    kept: HashMap<String, Trace>,
}

impl<'a> OnPolicySource<'a> {
    fn sampler<'m, B: Backend>(
        &'m self,
        config: &'m distill_models::ModelConfig,
        device: &'m B::Device,
    ) -> Sampler<'m, B> {
        let sh = self.sh;
        Sampler {
            config,
            tok: &sh.tok,
            device,
            op: sh.op,
            scorer: &sh.scorer,
            max_seq_len: sh.cfg.data.max_seq_len,
        }
    }

    /// Sample and score this rank's groups of `prompts` (every rank passes the same list):
    /// `(index in prompts, scores, the student's log-probs)`. The groups are decoded one by one
    /// (group c holds prompts `c·batch ..`, on rank c mod world), and the teacher scores all of
    /// this rank's samples in one call, so an endpoint teacher gets them all in flight at once.
    fn sample_mine<B: AutodiffBackend>(
        &self,
        view: &StudentView<'_, B>,
        model: &CausalLm<B::InnerBackend>,
        prompts: &[&Rendered],
        seeds: &[u64],
    ) -> Result<Vec<(usize, TokenLogprobs, Vec<f32>)>> {
        let sm = self.sampler::<B::InnerBackend>(view.config, view.device);
        let g = self.sh.op.batch.max(1);
        let (mut at, mut mine, mut my_seeds) = (Vec::new(), Vec::new(), Vec::new());
        for (c, (p, s)) in prompts.chunks(g).zip(seeds.chunks(g)).enumerate() {
            if c % view.world() == view.rank() {
                at.extend((0..p.len()).map(|i| c * g + i));
                mine.extend_from_slice(p);
                my_seeds.extend_from_slice(s);
            }
        }
        if mine.is_empty() {
            return Ok(vec![]);
        }
        // Only the last group can be short, and it is last here too: `sample_and_score` decodes
        // the same groups of `batch`.
        let got = sample_and_score(&sm, model, &mine, &my_seeds)?;
        Ok(at.into_iter().zip(got).map(|(i, (t, lps))| (i, t, lps)).collect())
    }

    /// A sample of training prompt `r` at `step` as the trace the corpus keeps.
    #[allow(clippy::too_many_arguments)]
    fn trace(
        &self,
        r: &Rendered,
        id: &str,
        step: u64,
        after_step: u64,
        s: TokenLogprobs,
        mine: Vec<f32>,
        eos: &[u32],
    ) -> Trace {
        let sh = self.sh;
        let op = sh.op;
        let text = sh.tok.decode(&s.tokens, true).unwrap_or_default();
        let verdicts = match (sh.judge, &r.prompt.reference) {
            (Some(j), Some(gold)) => {
                let (extracted, passed) = j(gold, &text);
                vec![distill_data::Verdict {
                    verifier: "math".into(),
                    passed,
                    extracted,
                    reason: None,
                }]
            }
            _ => vec![],
        };
        // The weights that sampled: the base model, or those after `after_step` steps.
        let made_by = json!({"base": sh.cfg.model.display().to_string(), "after_step": after_step});
        Trace {
            schema: distill_data::SCHEMA_VERSION,
            id: id.to_string(),
            prompt_id: trace_prompt_id(step, &r.prompt.id),
            sample: 0,
            source: Source { dataset: r.prompt.source.dataset.clone(), row: r.prompt.source.row },
            messages: r.prompt.messages.clone(),
            reasoning: String::new(),
            answer: text,
            finish_reason: if s.tokens.last().is_some_and(|l| eos.contains(l)) {
                distill_data::FinishReason::Stop
            } else {
                distill_data::FinishReason::Length
            },
            teacher: distill_data::Teacher {
                model: sh.scorer.model(),
                endpoint: sh.scorer.endpoint_kind(),
                sampling: Sampling {
                    temperature: Some(op.temperature),
                    top_p: Some(op.top_p),
                    top_k: None,
                    max_tokens: Some(op.max_tokens as u32),
                    seed: Some(op.seed),
                },
            },
            usage: distill_data::Usage {
                prompt_tokens: r.ids.len() as u64,
                completion_tokens: s.tokens.len() as u64,
            },
            verdicts,
            reference: r.prompt.reference.clone(),
            logprobs: Some(distill_data::TokenLogprobs { encoding: op.encoding, ..s }),
            metadata: serde_json::Map::from_iter([
                ("kind".into(), json!("on-policy")),
                ("step".into(), json!(step)),
                ("sampled_by".into(), json!("student")),
                ("student_weights".into(), made_by),
                ("student_logprobs".into(), json!(mine)),
                ("scored_by".into(), json!(sh.scorer.describe())),
            ]),
        }
    }
}

/// Traces as JSON lines, and back.
pub(crate) fn lines_of(traces: &[String]) -> Vec<u8> {
    traces.join("\n").into_bytes()
}

impl<B: AutodiffBackend> BatchSource<B> for OnPolicySource<'_> {
    fn total_steps(&self) -> u64 {
        self.sh.total
    }

    fn report(&self) -> &DataReport {
        &self.report
    }

    fn eval_key(&self) -> &'static str {
        "eval_reverse_kl"
    }

    fn start(&mut self, state: &RunState, view: &StudentView<'_, B>) -> Result<()> {
        if let Some(s) = self.sft.as_mut() {
            s.seek(state);
        }
        if view.rank() != 0 {
            return Ok(());
        }
        // The samples corpus: what is committed for a step still to run is reused, never
        // re-asked; the rest stays on disk.
        if self.corpus_dir.join("manifest.json").exists() {
            for t in Corpus::open(&self.corpus_dir)?.iter() {
                let t = t?;
                if t.metadata.get("step").and_then(|s| s.as_u64()).is_some_and(|s| s > state.step) {
                    self.kept.insert(t.id.clone(), t);
                }
            }
        }
        self.writer = Some(CorpusWriter::open(&self.corpus_dir, WriterOptions::default())?);
        Ok(())
    }

    fn next(&mut self, state: &mut RunState, view: &StudentView<'_, B>) -> Result<StepBatch> {
        let sh = self.sh;
        let (cfg, op) = (sh.cfg, sh.op);
        let step = state.step + 1;
        let mut figures = serde_json::Map::new();
        if let Some(sft) = self.sft.as_mut().filter(|_| !on_policy_step(op.lambda, op.seed, step)) {
            let (micro, _) = sft.next_batch(state);
            figures.insert("objective".into(), json!("sft"));
            return Ok(StepBatch {
                micro,
                kd_weight: cfg.kd_weight,
                objective: None,
                epoch: state.epoch as f64,
                figures,
            });
        }
        // This step's prompts: a seeded walk over the training prompts.
        let n = sh.train.len();
        let picks: Vec<usize> = (0..op.prompts_per_step)
            .map(|i| {
                let at = (state.step as usize * op.prompts_per_step + i) as u64;
                pack::shuffled(n, op.seed, at / n as u64)[(at % n as u64) as usize]
            })
            .collect();
        let ids: Vec<String> = picks
            .iter()
            .map(|&p| Trace::make_id(&trace_prompt_id(step, &sh.train[p].prompt.id), 0))
            .collect();
        // Rank 0 holds the corpus: it says whether every sample of the step is committed.
        let all_kept = view.rank() == 0 && ids.iter().all(|id| self.kept.contains_key(id));
        let reused = view.sum(&[if all_kept { 1.0 } else { 0.0 }])?[0] > 0.0;
        let mine: Vec<String> = if reused {
            if view.rank() == 0 {
                ids.iter().map(|id| self.kept[id].to_json()).collect()
            } else {
                vec![]
            }
        } else {
            let model = view.inference_model()?;
            let refs: Vec<&Rendered> = picks.iter().map(|&p| &sh.train[p]).collect();
            let seeds: Vec<u64> =
                refs.iter().map(|r| sample_seed(op.seed, step, &r.prompt.id)).collect();
            let eos = sh.tok.eos_ids(&view.config.eos_token_ids);
            self.sample_mine(view, &model, &refs, &seeds)?
                .into_iter()
                .map(|(i, s, lps)| {
                    let t = self.trace(refs[i], &ids[i], step, state.step, s, lps, &eos);
                    // As stored (packed1 is quantised): what a resumed run will read back.
                    t.to_json()
                })
                .collect()
        };
        let mut got: HashMap<String, Trace> = HashMap::new();
        for part in view.all_gather_bytes(&lines_of(&mine))? {
            let text = String::from_utf8(part)
                .map_err(|e| Error::Invalid(format!("on-policy samples from another rank: {e}")))?;
            for line in text.lines() {
                let t = Trace::from_json(line)?;
                got.insert(t.id.clone(), t);
            }
        }
        if let Some(w) = self.writer.as_mut().filter(|_| !reused) {
            for id in &ids {
                let t = got.get(id).ok_or_else(|| {
                    Error::Invalid(format!("on-policy sample {id} came back from no rank"))
                })?;
                if !w.committed_ids().contains(id) {
                    w.append(t.clone())?;
                }
            }
            // Durable before the step that uses them.
            w.commit()?;
        }
        // Used: no later step reads them again, so memory holds one step's samples.
        for id in &ids {
            self.kept.remove(id);
        }
        let samples: Vec<Sample> = picks
            .iter()
            .zip(&ids)
            .map(|(&p, id)| match got.get(id) {
                Some(t) => sample_of(t, p, &self.corpus_dir),
                None => {
                    Err(Error::Invalid(format!("on-policy sample {id} came back from no rank")))
                }
            })
            .collect::<Result<_>>()?;
        let examples: Vec<Example> = samples
            .iter()
            .map(|s| example(&sh.train[s.prompt], &s.scores, view.config.vocab_size))
            .collect();
        figures.insert("objective".into(), json!(op.loss_name()));
        figures.insert("samples_reused".into(), json!(reused));
        for (k, v) in sample_metrics(&samples).as_object().expect("object") {
            figures.insert(k.clone(), v.clone());
        }
        Ok(StepBatch {
            micro: micro_batches(&examples, cfg.micro_batch, sh.pad),
            kd_weight: 0.0,
            objective: Some(op.divergence().into()),
            epoch: state.epoch as f64,
            figures,
        })
    }

    /// The held-out reverse KL: the student samples every eval prompt (fixed seeds, in the
    /// groups of a one-device run, split over the ranks), the teacher and the student score the
    /// samples, and the mean over tokens of log q(x) − log p(x) estimates KL(student ‖ teacher)
    /// on the student's own paths.
    fn eval(&mut self, view: &StudentView<'_, B>) -> Result<Option<f64>> {
        let sh = self.sh;
        if sh.eval.is_empty() {
            return Ok(None);
        }
        let model = view.inference_model()?;
        let refs: Vec<&Rendered> = sh.eval.iter().collect();
        let seeds: Vec<u64> =
            sh.eval.iter().map(|r| sample_seed(sh.op.seed, u64::MAX, &r.prompt.id)).collect();
        let (mut sum, mut n) = (0.0f64, 0usize);
        for (_, t, mine) in self.sample_mine(view, &model, &refs, &seeds)? {
            for (lp_t, lp_s) in t.token_logprobs.iter().zip(&mine) {
                sum += (*lp_s - *lp_t) as f64;
                n += 1;
            }
        }
        let r = view.sum(&[sum, n as f64])?;
        Ok((r[1] > 0.0).then(|| r[0] / r[1]))
    }
}

/// Train on-policy per `cfg.on_policy`, one rank per device in `devices` (data parallel when
/// there are several, sampling split over the ranks). `scorer` is the teacher.
pub fn train_on_policy<B: AutodiffBackend>(
    cfg: &TrainConfig,
    scorer: &mut (dyn Scorer + Send),
    judge: Option<Judge<'_>>,
    recipe: serde_json::Value,
    devices: Vec<B::Device>,
    resume: bool,
    obs: &mut dyn Observer,
) -> Result<Summary> {
    cfg.validate()?;
    let op = cfg
        .on_policy
        .as_ref()
        .ok_or_else(|| Error::Config { section: "train.on_policy", msg: "is missing".into() })?;
    let tok = TextTokenizer::from_dir(&cfg.model)?;
    check_template_tokens(&tok)?;
    let (train, eval) = split_prompts(op, &tok, cfg.data.max_seq_len)?;
    // The SFT share, when mixing.
    let sft = if op.lambda < 1.0 { Some(Arc::new(SftData::load(cfg, &tok)?)) } else { None };
    let total = cfg.max_steps.ok_or_else(|| Error::Config {
        section: "train",
        msg: "max_steps: an on-policy run needs a step count".into(),
    })?;
    let pad = pad_id(&tok);
    let sh = Shared {
        cfg,
        op,
        tok,
        train,
        eval,
        sft,
        scorer: Locked(Mutex::new(scorer)),
        judge,
        total,
        pad,
    };
    let sh = &sh;
    train_loop::<B>(cfg, recipe, devices, resume, obs, &|_, _| {
        Ok(Box::new(OnPolicySource {
            sh,
            sft: sh.sft.as_ref().map(|d| SftSource::new(cfg, d.clone(), total)),
            report: sh.sft.as_ref().map(|d| d.report.clone()).unwrap_or_default(),
            corpus_dir: samples_dir(&cfg.output),
            writer: None,
            kept: HashMap::new(),
        }))
    })
}

/// Where an on-policy run keeps its samples.
pub fn samples_dir(output: &Path) -> PathBuf {
    output.join("on-policy")
}
