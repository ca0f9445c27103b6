//! The on-policy loop, on one device: each step the student's current weights sample completions
//! for a batch of prompts (the local engine, KV cache, seeded per step and prompt), the teacher
//! scores exactly those tokens, every sample and its scores are committed to a corpus under the
//! run directory, and one optimizer step minimises the divergence on them. With `lambda < 1` a
//! seeded share of the steps are SFT steps on `[train.data]`'s corpus instead.
//!
//! Resume: a step's samples are committed before its optimizer step, so a run killed anywhere
//! and resumed from its last checkpoint re-reads the samples of the steps it repeats instead of
//! sampling and asking the teacher again.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use distill_data::prompts::{ReadOptions, dataset_name, read_prompts};
use distill_data::{
    Corpus, CorpusWriter, Prompt, Sampling, Source, TokenLogprobs, Trace, WriterOptions,
};
use distill_models::generate::{Engine, SamplingParams};
use distill_models::hf;
use distill_models::model::CausalLm;
use distill_models::rope::Rope;
use distill_models::score::{ScoreRequest, Scorer};
use distill_models::tokenizer::TextTokenizer;
use serde_json::json;

use super::OnPolicyConfig;
use crate::error::{Error, IoContext, Result};
use crate::sft::checkpoint::{self, RunState};
use crate::sft::data::{self, Example, KdTargets};
use crate::sft::optim::AdamW;
use crate::sft::pack::{self, Batch};
use crate::sft::parallel::{Comm, Layout, Parallel, ShardMode};
use crate::sft::train::{
    Observer, StepMetrics, StepSpec, Summary, TrainConfig, check_template_tokens, export,
    next_global_batch, pad_id, param_sizes, reopen_metrics, resume_from, single_step,
};

/// A prompt rendered for the student (and, sharing its vocabulary, the teacher).
struct Rendered {
    prompt: Prompt,
    ids: Vec<u32>,
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
pub type Judge<'a> = &'a dyn Fn(&str, &str) -> (Option<String>, bool);

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
fn sample_seed(seed: u64, step: u64, id: &str) -> u64 {
    let h = blake3::hash(format!("{seed}:{step}:{id}").as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// The trace id of prompt `id`'s sample at `step`.
fn trace_prompt_id(step: u64, id: &str) -> String {
    format!("on-policy/step-{step:06}/{id}")
}

fn render(prompts: Vec<Prompt>, tok: &TextTokenizer) -> Result<Vec<Rendered>> {
    let chat = tok.chat.as_ref().ok_or_else(|| {
        Error::Invalid("[train.on_policy] the student's tokenizer has no chat template".into())
    })?;
    let bos = tok.add_bos.then(|| tok.bos_token.as_deref().and_then(|b| tok.token_id(b))).flatten();
    prompts
        .into_iter()
        .map(|p| {
            let text = chat
                .render(&p.messages, true)
                .map_err(|e| Error::Invalid(format!("prompt {}: the chat template: {e}", p.id)))?;
            let mut ids = tok
                .encode(&text)
                .map_err(|e| Error::Invalid(format!("prompt {}: tokenizing: {e}", p.id)))?;
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
    }
}

/// Micro-batches of one row per example, each padded to its longest row.
fn micro_batches(examples: &[Example], micro: usize, pad: u32) -> Vec<Batch> {
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

/// The held-out reverse KL: the student samples every eval prompt (fixed seeds), the teacher and
/// the student score the samples, and the mean over tokens of log q(x) − log p(x) is the
/// estimate of KL(student ‖ teacher) on the student's own paths.
fn held_out_reverse_kl<B: Backend>(
    sm: &Sampler<'_, B>,
    model: &CausalLm<B>,
    eval: &[Rendered],
) -> Result<Option<f64>> {
    let op = sm.op;
    if eval.is_empty() {
        return Ok(None);
    }
    let refs: Vec<&Rendered> = eval.iter().collect();
    let seeds: Vec<u64> =
        eval.iter().map(|r| sample_seed(op.seed, u64::MAX, &r.prompt.id)).collect();
    let got = sample_and_score(sm, model, &refs, &seeds)?;
    let (mut sum, mut n) = (0.0f64, 0usize);
    for (t, mine) in &got {
        for (lp_t, lp_s) in t.token_logprobs.iter().zip(mine) {
            sum += (*lp_s - *lp_t) as f64;
            n += 1;
        }
    }
    Ok((n > 0).then(|| sum / n as f64))
}

/// The training prompts and the held-out ones (a seeded share, `eval_prompts` of them), rendered
/// with the student's chat template; refuses a prompt that leaves no room within `seq` tokens.
fn split_prompts(
    op: &OnPolicyConfig,
    tok: &TextTokenizer,
    seq: usize,
) -> Result<(Vec<Rendered>, Vec<Rendered>)> {
    let dataset = dataset_name(&op.prompts);
    let (prompts, _) = read_prompts(&op.prompts, &dataset, &op.fields, &ReadOptions::default())?;
    if prompts.len() <= op.eval_prompts {
        return Err(Error::Invalid(format!(
            "[train.on_policy] {}: {} prompts, but eval_prompts = {} leaves none to train on",
            op.prompts.display(),
            prompts.len(),
            op.eval_prompts
        )));
    }
    let order = pack::shuffled(prompts.len(), op.seed, u64::MAX);
    let mut prompts: Vec<Option<Prompt>> = prompts.into_iter().map(Some).collect();
    let eval_p: Vec<Prompt> =
        order[..op.eval_prompts].iter().map(|&i| prompts[i].take().expect("once")).collect();
    let train_p: Vec<Prompt> = prompts.into_iter().flatten().collect();
    let eval = render(eval_p, tok)?;
    let train = render(train_p, tok)?;
    if let Some(r) = train.iter().chain(&eval).find(|r| r.ids.len() >= seq) {
        return Err(Error::Invalid(format!(
            "[train.on_policy] prompt {} is {} tokens: no room for a completion within max_seq_len {seq}",
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

/// Train on-policy per `cfg.on_policy`, on one device. `scorer` is the teacher.
pub fn train_on_policy<B: AutodiffBackend>(
    cfg: &TrainConfig,
    scorer: &dyn Scorer,
    judge: Option<Judge<'_>>,
    recipe: serde_json::Value,
    device: B::Device,
    resume: bool,
    obs: &mut dyn Observer,
) -> Result<Summary> {
    cfg.validate()?;
    let op = cfg
        .on_policy
        .as_ref()
        .ok_or_else(|| Error::Invalid("[train.on_policy] is missing".into()))?;
    let tok = TextTokenizer::from_dir(&cfg.model)?;
    check_template_tokens(&tok)?;
    let seq = cfg.data.max_seq_len;

    let (train, eval) = split_prompts(op, &tok, seq)?;

    // The SFT share, when mixing.
    let (sft_ex, sft_rows, report) = if op.lambda < 1.0 {
        let (ex, _, report) = data::load(&cfg.data, &tok)?;
        let rows = if cfg.data.packing {
            pack::pack_bfd(&ex.iter().map(|e| e.ids.len()).collect::<Vec<_>>(), seq)
        } else {
            (0..ex.len()).map(|i| vec![i]).collect()
        };
        (ex, rows, report)
    } else {
        (vec![], vec![], data::DataReport::default())
    };
    let total = cfg.max_steps.ok_or_else(|| {
        Error::Invalid("[train] max_steps: an on-policy run needs a step count".into())
    })?;
    let pad = pad_id(&tok);

    let ckpt_root = cfg.output.join("checkpoints");
    std::fs::create_dir_all(&cfg.output).at(&cfg.output)?;
    let resume_dir = resume_from(&ckpt_root, resume)?;
    let (mut state, weights_dir) = match &resume_dir {
        Some(dir) => (checkpoint::load_state(dir)?, dir.clone()),
        None => (RunState::fresh(recipe.clone()), cfg.model.clone()),
    };
    let loaded = hf::load_model::<B>(&weights_dir, &device)?;
    let config = loaded.config;
    let mut model = loaded.model;
    let rope = Rope::<B>::new(&config, &device);
    let layout = Layout::new(&param_sizes(&mut model), 1, usize::MAX);
    let par = Parallel::<B::InnerBackend> { comm: Comm::single(), mode: ShardMode::None, layout };
    let mut opt = match &resume_dir {
        Some(dir) => checkpoint::load_optimizer(dir, cfg.optim.clone(), state.step, &par, &device)?,
        None => AdamW::<B::InnerBackend>::new(cfg.optim.clone()),
    };

    // The samples corpus: what is committed for a step still to run is reused, never re-asked.
    let corpus_dir = cfg.output.join("on-policy");
    let mut kept: HashMap<String, Trace> = HashMap::new();
    if corpus_dir.join("manifest.json").exists() {
        for t in Corpus::open(&corpus_dir)?.iter() {
            let t = t?;
            // Only the steps still to run can reuse samples: the rest stay on disk.
            if t.metadata.get("step").and_then(|s| s.as_u64()).is_some_and(|s| s > state.step) {
                kept.insert(t.id.clone(), t);
            }
        }
    }
    let mut writer = CorpusWriter::open(&corpus_dir, WriterOptions::default())?;

    // metrics.jsonl: the lines up to the resumed step.
    let metrics_path = cfg.output.join("metrics.jsonl");
    let mut metrics = reopen_metrics(&metrics_path, state.step)?;
    let mut log = |v: serde_json::Value| -> Result<()> {
        writeln!(metrics, "{v}").at(&metrics_path)?;
        metrics.flush().at(&metrics_path)
    };
    obs.started(total, state.step, &report);

    let sm = Sampler::<B::InnerBackend> {
        config: &config,
        tok: &tok,
        device: &device,
        op,
        scorer,
        max_seq_len: seq,
    };
    let rkl = |model: &CausalLm<B>| held_out_reverse_kl(&sm, &model.valid(), &eval);
    let first = if state.step == 0 { rkl(&model)? } else { None };
    if let Some(v) = first {
        log(json!({"step": 0, "eval_reverse_kl": v}))?;
        obs.eval(0, v);
    }
    let divergence = op.divergence();
    let sampling = Sampling {
        temperature: Some(op.temperature),
        top_p: Some(op.top_p),
        top_k: None,
        max_tokens: Some(op.max_tokens as u32),
        seed: Some(op.seed),
    };
    let t_run = Instant::now();
    let elapsed0 = state.elapsed_s;
    let mut sft_order = pack::shuffled(sft_rows.len(), cfg.data.seed, state.epoch);
    let mut last = None;
    while state.step < total {
        let t0 = Instant::now();
        let step = state.step + 1;
        let lr = cfg.optim.lr_at(state.step, total);
        let on = on_policy_step(op.lambda, op.seed, step) || sft_rows.is_empty();
        let (micro, spec, reused) = if on {
            // This step's prompts: a seeded walk over the training prompts.
            let n = train.len();
            let picks: Vec<usize> = (0..op.prompts_per_step)
                .map(|i| {
                    let at = (state.step as usize * op.prompts_per_step + i) as u64;
                    pack::shuffled(n, op.seed, at / n as u64)[(at % n as u64) as usize]
                })
                .collect();
            let ids: Vec<String> = picks
                .iter()
                .map(|&p| Trace::make_id(&trace_prompt_id(step, &train[p].prompt.id), 0))
                .collect();
            let reused = ids.iter().all(|id| kept.contains_key(id));
            if !reused {
                let refs: Vec<&Rendered> = picks.iter().map(|&p| &train[p]).collect();
                let seeds: Vec<u64> =
                    refs.iter().map(|r| sample_seed(op.seed, step, &r.prompt.id)).collect();
                let got = sample_and_score(&sm, &model.valid(), &refs, &seeds)?;
                // The weights that sampled: the base model, or those after `state.step` steps.
                let made_by =
                    json!({"base": cfg.model.display().to_string(), "after_step": state.step});
                let eos = tok.eos_ids(&config.eos_token_ids);
                for ((&p, id), (s, mine)) in picks.iter().zip(&ids).zip(got) {
                    let r = &train[p];
                    let text = tok.decode(&s.tokens, true).unwrap_or_default();
                    let verdicts = match (judge, &r.prompt.reference) {
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
                    let t = Trace {
                        schema: distill_data::SCHEMA_VERSION,
                        id: id.clone(),
                        prompt_id: trace_prompt_id(step, &r.prompt.id),
                        sample: 0,
                        source: Source {
                            dataset: r.prompt.source.dataset.clone(),
                            row: r.prompt.source.row,
                        },
                        messages: r.prompt.messages.clone(),
                        reasoning: String::new(),
                        answer: text,
                        finish_reason: if s.tokens.last().is_some_and(|l| eos.contains(l)) {
                            distill_data::FinishReason::Stop
                        } else {
                            distill_data::FinishReason::Length
                        },
                        teacher: distill_data::Teacher {
                            model: scorer.model(),
                            endpoint: scorer.endpoint_kind(),
                            sampling: sampling.clone(),
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
                            ("student_weights".into(), made_by.clone()),
                            ("student_logprobs".into(), json!(mine)),
                            ("scored_by".into(), json!(scorer.describe())),
                        ]),
                    };
                    // As stored (packed1 is quantised): what a resumed run will read back.
                    let t = Trace::from_json(&t.to_json())?;
                    if !writer.committed_ids().contains(id) {
                        writer.append(t.clone())?;
                    }
                    kept.insert(id.clone(), t);
                }
                // Durable before the step that uses them.
                writer.commit()?;
            }
            let samples: Vec<Sample> = picks
                .iter()
                .zip(&ids)
                .map(|(&p, id)| sample_of(&kept[id], p, &corpus_dir))
                .collect::<Result<_>>()?;
            // Used: no later step reads them again, so memory holds one step's samples.
            for id in &ids {
                kept.remove(id);
            }
            let examples: Vec<Example> = samples
                .iter()
                .map(|s| example(&train[s.prompt], &s.scores, config.vocab_size))
                .collect();
            let spec = StepSpec {
                kd_weight: 0.0,
                max_grad_norm: cfg.optim.max_grad_norm,
                lr,
                compute: cfg.compute(),
                objective: Some(divergence),
            };
            (
                micro_batches(&examples, cfg.micro_batch, pad),
                spec,
                Some((reused, sample_metrics(&samples))),
            )
        } else {
            let micro = next_global_batch(cfg, &mut state, &mut sft_order, &sft_rows, &sft_ex, pad);
            let spec = StepSpec {
                kd_weight: cfg.kd_weight,
                max_grad_norm: cfg.optim.max_grad_norm,
                lr,
                compute: cfg.compute(),
                objective: None,
            };
            (micro, spec, None)
        };
        let seen: u64 = micro.iter().map(|b| b.real_tokens as u64).sum();
        let out = single_step(&mut model, &rope, &mut opt, &micro, &spec, &device);
        if !out.loss.is_finite() || !out.grad_norm.is_finite() {
            return Err(Error::Invalid(format!(
                "non-finite loss or gradient at step {step} (loss {}, grad norm {})",
                out.loss, out.grad_norm
            )));
        }
        state.step = step;
        state.tokens_seen += seen;
        let secs = t0.elapsed().as_secs_f64();
        let m = StepMetrics {
            step,
            total_steps: total,
            epoch: state.epoch as f64,
            loss: out.loss,
            ce: out.ce,
            kd: out.kd,
            lr,
            grad_norm: out.grad_norm,
            tokens: out.tokens as u64,
            tokens_per_s: seen as f64 / secs,
            mfu: 0.0,
            elapsed_s: elapsed0 + t_run.elapsed().as_secs_f64(),
            step_s: secs,
            world: 1,
            comm_s: 0.0,
            offload_s: None,
            moe_load: None,
            host_peak_rss_mb: crate::sft::train::host_peak_rss_mb(),
        };
        let mut line = serde_json::to_value(&m).expect("json");
        line["objective"] = json!(if on { op.loss_name() } else { "sft" });
        if let Some((reused, figures)) = &reused {
            line["samples_reused"] = json!(reused);
            for (k, v) in figures.as_object().expect("object") {
                line[k.as_str()] = v.clone();
            }
        }
        log(line)?;
        obs.step(&m);
        if cfg.eval_every > 0
            && step % cfg.eval_every == 0
            && step < total
            && let Some(v) = rkl(&model)?
        {
            log(json!({"step": step, "eval_reverse_kl": v}))?;
            obs.eval(step, v);
        }
        if cfg.save_every > 0 && step % cfg.save_every == 0 && step < total {
            save(cfg, &model, &config, &opt, &mut state, elapsed0, &t_run, &par, &device, obs)?;
        }
    }
    if let Some(v) = rkl(&model)? {
        log(json!({"step": state.step, "eval_reverse_kl": v}))?;
        obs.eval(state.step, v);
        last = Some(v);
    }
    let weights =
        save(cfg, &model, &config, &opt, &mut state, elapsed0, &t_run, &par, &device, obs)?;
    let export_dir = cfg.output.join("export");
    export(cfg, &recipe, &report, &weights, &config, &state, &export_dir)?;
    Ok(Summary {
        steps: state.step,
        final_eval_loss: last,
        first_eval_loss: first,
        export_dir,
        data: report,
    })
}

/// A checkpoint of the model, AdamW's moments and the run state; returns the weights.
#[allow(clippy::too_many_arguments)]
fn save<B: AutodiffBackend>(
    cfg: &TrainConfig,
    model: &CausalLm<B>,
    config: &distill_models::ModelConfig,
    opt: &AdamW<B::InnerBackend>,
    state: &mut RunState,
    elapsed0: f64,
    t_run: &Instant,
    par: &Parallel<B::InnerBackend>,
    device: &B::Device,
    obs: &mut dyn Observer,
) -> Result<Vec<distill_models::weights::NamedTensor>> {
    state.elapsed_s = elapsed0 + t_run.elapsed().as_secs_f64();
    let mut sink = distill_models::weights::Collect::default();
    model.export(&mut sink as &mut dyn distill_models::weights::WeightSink);
    let dir = checkpoint::save(
        &cfg.output.join("checkpoints"),
        &sink.0,
        config,
        &checkpoint::moments_of(opt),
        state,
        cfg.keep_checkpoints,
        par,
        device,
    )?;
    obs.saved(&dir);
    Ok(sink.0)
}

/// Where an on-policy run keeps its samples.
pub fn samples_dir(output: &Path) -> PathBuf {
    output.join("on-policy")
}
