//! GRPO as a [`BatchSource`] of the one training loop.
//!
//! A batch of rollouts serves μ = `num_iterations` optimizer steps (a *block*). At a block's first
//! step the student's current weights sample G completions for each of `prompts_per_step`
//! prompts (the local engine, seeded per (block, round, prompt, index), so a sample does not
//! depend on the batch it is decoded in). Groups are decoded `batch / G` at a time, call c on
//! rank c mod world, so the groups are those of a one-device run. On the sampling rank each
//! rollout gets:
//!
//! - its rewards ([`super::reward`]) and, its group being whole there, its advantage;
//! - the policy's log-prob of every token at the sampling temperature (the ratio's denominator
//!   for μ > 1, and the entropy figure), and the reference model's when β > 0, from a forward of
//!   the same code the step runs.
//!
//! Every rank then gathers every rollout, and rank 0 commits them to the run's `rl/` corpus
//! (kind = rl) before the first step uses them. Under dynamic sampling (DAPO) a group whose
//! rewards are all equal is dropped and another round of prompts is sampled, up to
//! `max_sampling_rounds`; dropped groups are committed too, marked as such.
//!
//! Resume: the rollouts of a block that is not finished are read back from the corpus, never
//! sampled again, and both paths read the rollouts back from their JSON, so a resumed run sees
//! exactly what an uninterrupted one saw.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;
use distill_data::{Corpus, CorpusWriter, Sampling, Source, Trace, WriterOptions};
use distill_models::ModelConfig;
use distill_models::generate::{Engine, SamplingParams};
use distill_models::hf;
use distill_models::model::CausalLm;
use distill_models::rope::Rope;
use distill_models::tokenizer::TextTokenizer;
use serde_json::{Map, Value, json};

use super::reward::{Rewards, Rollout};
use super::{GrpoConfig, LossType, advantages, token_weights, uninformative};
use crate::error::{Error, Result};
use crate::onpolicy::Judge;
use crate::onpolicy::source::{
    PromptSet, Rendered, lines_of, micro_batches, sample_seed, split_prompt_set,
};
use crate::train::checkpoint::RunState;
use crate::train::data::{DataReport, Example, RlTargets, check_template_tokens, pad_id};
use crate::train::loss::{Head, inputs};
use crate::train::objective::Objective;
use crate::train::run::train as train_loop;
use crate::train::step::CastParams;
use crate::train::{BatchSource, Observer, StepBatch, StudentView, Summary, TrainConfig};

/// One rollout, as committed and read back.
#[derive(Debug, Clone)]
struct Rolled {
    /// Index of its prompt in the training prompts.
    prompt: usize,
    round: usize,
    /// The group's index within its round, and the sample's within its group.
    group: usize,
    index: usize,
    tokens: Vec<u32>,
    /// The sampling policy's log-prob of each token (logits / temperature).
    old: Vec<f32>,
    /// The reference model's (empty without one).
    reference: Vec<f32>,
    /// Σ over tokens of the policy's entropy at sampling time.
    entropy: f64,
    reward: f64,
    parts: Vec<f64>,
    advantage: f64,
    eos: bool,
}

/// Where a GRPO run keeps its rollouts.
pub fn rollouts_dir(output: &Path) -> PathBuf {
    output.join("rl")
}

/// The trace prompt id of a rollout group.
fn group_id(block: u64, round: usize, prompt: &str) -> String {
    format!("rl/step-{block:06}/round-{round}/{prompt}")
}

/// The seed of sample `index` of `prompt` in `round` of `block`.
fn rollout_seed(seed: u64, block: u64, round: usize, prompt: &str, index: usize) -> u64 {
    sample_seed(seed, block, &format!("{round}/{prompt}/{index}"))
}

/// What sampling needs besides the weights.
struct Roller<'a> {
    g: &'a GrpoConfig,
    tok: &'a TextTokenizer,
    rewards: &'a Rewards<'a>,
    max_seq_len: usize,
    micro_batch: usize,
    pad: u32,
}

/// Per example (one row each in `micro`): the log-prob of each completion token under `model` at
/// `temperature`, and the sum of the entropies at those positions.
fn token_logprobs<B: Backend>(
    model: &CausalLm<B>,
    config: &ModelConfig,
    examples: &[Example],
    micro: usize,
    pad: u32,
    temperature: f64,
    device: &B::Device,
) -> Result<Vec<(Vec<f32>, f64)>> {
    let rope = Rope::<B>::new(config, device);
    let head = Head::of(model);
    let mut out = Vec::with_capacity(examples.len());
    for (b, chunk) in micro_batches(examples, micro, pad).iter().zip(examples.chunks(micro.max(1)))
    {
        let (input, mask, positions) = inputs::<B>(b, device);
        let hidden = model.forward_hidden(input, positions, &rope, &mask, None); // [r, t, d]
        let (rows, len, d) = (b.rows, b.len, hidden.dims()[2]);
        // Positions that predict a completion token, row by row.
        let mut at = Vec::new();
        let mut tgt = Vec::new();
        let mut counts = Vec::new();
        for (r, ex) in chunk.iter().enumerate() {
            let start = ex.rl.as_ref().map_or(ex.ids.len(), |x| x.start);
            for t in start..ex.ids.len() {
                at.push((r * len + t - 1) as i64);
                tgt.push(ex.ids[t] as i64);
            }
            counts.push(ex.ids.len() - start);
        }
        let n = at.len();
        if n == 0 {
            out.extend(counts.iter().map(|_| (vec![], 0.0)));
            continue;
        }
        let sel = Tensor::<B, 1, Int>::from_data(TensorData::new(at, [n]), device);
        let x = hidden.reshape([rows * len, d]).select(0, sel);
        let logits = head.logits(x).cast(burn::tensor::DType::F32).div_scalar(temperature);
        let lsm = log_softmax(logits, 1); // [n, vocab]
        let ent = (lsm.clone().exp() * lsm.clone()).sum_dim(1).neg().reshape([n]);
        let t = Tensor::<B, 2, Int>::from_data(TensorData::new(tgt, [n, 1]), device);
        let lp = lsm.gather(1, t).reshape([n]);
        let read = |x: Tensor<B, 1>| -> Result<Vec<f32>> {
            x.into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .map_err(|e| Error::Readback(format!("{e:?}")))
        };
        let (lp, ent) = (read(lp)?, read(ent)?);
        let mut from = 0;
        for c in counts {
            let e: f64 = ent[from..from + c].iter().map(|&x| x as f64).sum();
            out.push((lp[from..from + c].to_vec(), e));
            from += c;
        }
    }
    Ok(out)
}

/// The training example of a rollout of prompt `r` (advantage and weights filled in later).
fn example(r: &Rendered, tokens: &[u32]) -> Example {
    let mut ids = r.ids.clone();
    ids.extend(tokens);
    let mut assistant = vec![false; r.ids.len()];
    assistant.extend(vec![true; tokens.len()]);
    Example {
        id: r.prompt.id.clone(),
        prompt_id: r.prompt.id.clone(),
        ids,
        assistant,
        kd: None,
        rl: Some(RlTargets {
            start: r.ids.len(),
            advantage: 0.0,
            weight: 1.0,
            old_logprobs: vec![],
            ref_logprobs: vec![],
        }),
    }
}

impl Roller<'_> {
    fn params(&self, eos: Vec<u32>) -> SamplingParams {
        SamplingParams {
            temperature: self.g.temperature as f32,
            top_p: self.g.top_p as f32,
            top_k: 0,
            max_tokens: self.g.max_tokens,
            seed: 0,
            stop_ids: eos,
            stop_strings: vec![],
            logprobs: 0,
        }
    }

    /// Sample G completions for each of `groups` (prompts), with the seeds of `seeds` (G per
    /// group): `(tokens, eos)` per sample, group by group.
    fn sample<B: Backend>(
        &self,
        model: &CausalLm<B>,
        config: &ModelConfig,
        device: &B::Device,
        groups: &[&Rendered],
        seeds: &[u64],
    ) -> Result<Vec<(Vec<u32>, bool)>> {
        let eos = self.tok.eos_ids(&config.eos_token_ids);
        let engine = Engine::new(model, config, Some(self.tok), device.clone());
        let g = self.g.group_size;
        let ids: Vec<Vec<u32>> =
            groups.iter().flat_map(|r| std::iter::repeat_n(r.ids.clone(), g)).collect();
        let mut got = Vec::with_capacity(ids.len());
        for (chunk, s) in ids.chunks(self.g.batch.max(g)).zip(seeds.chunks(self.g.batch.max(g))) {
            got.extend(engine.generate_seeded(chunk, s, &self.params(eos.clone()), |_| {})?);
        }
        Ok(got
            .into_iter()
            .zip(&ids)
            .map(|(c, p)| {
                // Prompt + completion within max_seq_len: the completion is cut, not the prompt.
                let room = self.max_seq_len.saturating_sub(p.len());
                let mut t = c.ids;
                t.truncate(room);
                let ended = t.last().is_some_and(|l| eos.contains(l));
                (t, ended)
            })
            .collect())
    }
}

/// What every rank's source reads.
struct Shared<'a> {
    cfg: &'a TrainConfig,
    g: &'a GrpoConfig,
    tok: TextTokenizer,
    train: Vec<Rendered>,
    eval: Vec<Rendered>,
    rewards: Rewards<'a>,
    total: u64,
    pad: u32,
}

impl Shared<'_> {
    fn roller(&self) -> Roller<'_> {
        Roller {
            g: self.g,
            tok: &self.tok,
            rewards: &self.rewards,
            max_seq_len: self.cfg.data.max_seq_len,
            micro_batch: self.cfg.micro_batch,
            pad: self.pad,
        }
    }
}

/// The GRPO source of one rank.
struct GrpoSource<'a, B: Backend> {
    sh: &'a Shared<'a>,
    report: DataReport,
    corpus_dir: PathBuf,
    /// Rank 0: the rollouts corpus, and its committed rollouts of blocks still to run.
    writer: Option<CorpusWriter>,
    kept: BTreeMap<u64, Vec<Trace>>,
    /// The frozen starting model (β > 0), loaded on first use.
    reference: Option<CausalLm<B>>,
    /// The current block's rollouts (kept groups) and their figures.
    block: Option<(u64, Vec<Rolled>, Map<String, Value>)>,
}

/// A rollout's trace.
#[allow(clippy::too_many_arguments)]
fn trace(
    sh: &Shared<'_>,
    r: &Rendered,
    block: u64,
    after_step: u64,
    x: &Rolled,
    text: String,
    dropped: bool,
) -> Trace {
    let g = sh.g;
    let names = sh.rewards.names();
    let parts: Map<String, Value> =
        names.iter().zip(&x.parts).map(|(n, v)| (n.to_string(), json!(v))).collect();
    let mut lp = distill_data::TokenLogprobs::new(0);
    lp.tokens = x.tokens.clone();
    lp.token_logprobs = x.old.clone();
    let pid = group_id(block, x.round, &r.prompt.id);
    Trace {
        schema: distill_data::SCHEMA_VERSION,
        id: Trace::make_id(&pid, x.index as u32),
        prompt_id: pid,
        sample: x.index as u32,
        source: Source { dataset: r.prompt.source.dataset.clone(), row: r.prompt.source.row },
        messages: r.prompt.messages.clone(),
        reasoning: String::new(),
        answer: text,
        finish_reason: if x.eos {
            distill_data::FinishReason::Stop
        } else {
            distill_data::FinishReason::Length
        },
        teacher: distill_data::Teacher {
            // The model that sampled: the student being trained.
            model: sh
                .cfg
                .model
                .file_name()
                .map_or_else(|| "student".into(), |n| n.to_string_lossy().to_string()),
            endpoint: distill_data::EndpointKind::Local,
            sampling: Sampling {
                temperature: Some(g.temperature),
                top_p: Some(g.top_p),
                top_k: None,
                max_tokens: Some(g.max_tokens as u32),
                seed: Some(g.seed),
            },
        },
        usage: distill_data::Usage {
            prompt_tokens: r.ids.len() as u64,
            completion_tokens: x.tokens.len() as u64,
        },
        verdicts: vec![],
        reference: r.prompt.reference.clone(),
        logprobs: Some(lp),
        metadata: Map::from_iter([
            ("kind".into(), json!("rl")),
            ("step".into(), json!(block)),
            ("round".into(), json!(x.round)),
            ("group".into(), json!(x.group)),
            ("train_prompt".into(), json!(x.prompt)),
            ("reward".into(), json!(x.reward)),
            ("rewards".into(), Value::Object(parts)),
            ("advantage".into(), json!(x.advantage)),
            ("dropped".into(), json!(dropped)),
            ("entropy".into(), json!(x.entropy)),
            ("ref_logprobs".into(), json!(x.reference)),
            (
                "student_weights".into(),
                json!({"base": sh.cfg.model.display().to_string(), "after_step": after_step}),
            ),
        ]),
    }
}

/// A committed rollout read back: `(rolled, dropped)`.
fn rolled_of(t: &Trace, names: &[&str], corpus: &Path) -> Result<(Rolled, bool)> {
    let bad = |what: &str| {
        Error::Invalid(format!("{}: rollout {} has no valid {what}", corpus.display(), t.id))
    };
    let m = &t.metadata;
    let lp = t.logprobs.as_ref().ok_or_else(|| bad("tokens"))?;
    let num = |k: &str| m.get(k).and_then(Value::as_f64).ok_or_else(|| bad(k));
    let int = |k: &str| m.get(k).and_then(Value::as_u64).map(|x| x as usize).ok_or_else(|| bad(k));
    let parts = names
        .iter()
        .map(|n| {
            m.get("rewards").and_then(|r| r.get(n)).and_then(Value::as_f64).ok_or_else(|| bad(n))
        })
        .collect::<Result<Vec<f64>>>()?;
    let reference: Vec<f32> = m
        .get("ref_logprobs")
        .map(|v| serde_json::from_value(v.clone()))
        .transpose()
        .map_err(|_| bad("ref_logprobs"))?
        .unwrap_or_default();
    Ok((
        Rolled {
            prompt: int("train_prompt")?,
            round: int("round")?,
            group: int("group")?,
            index: t.sample as usize,
            tokens: lp.tokens.clone(),
            old: lp.token_logprobs.clone(),
            reference,
            entropy: num("entropy")?,
            reward: num("reward")?,
            parts,
            advantage: num("advantage")?,
            eos: t.finish_reason == distill_data::FinishReason::Stop,
        },
        m.get("dropped").and_then(Value::as_bool).unwrap_or(false),
    ))
}

/// The prompts of `round` of `block`: round 0 walks the training prompts in seeded epochs;
/// refill rounds draw a seeded set of their own.
fn picks(n: usize, g: &GrpoConfig, block_index: u64, block: u64, round: usize) -> Vec<usize> {
    let p = g.prompts_per_step;
    if round == 0 {
        return (0..p)
            .map(|i| {
                let at = block_index * p as u64 + i as u64;
                crate::train::pack::shuffled(n, g.seed, at / n as u64)[(at % n as u64) as usize]
            })
            .collect();
    }
    let h = blake3::hash(format!("refill:{}:{block}:{round}", g.seed).as_bytes());
    let s = u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"));
    (0..p).map(|i| crate::train::pack::shuffled(n, s, (i / n) as u64)[i % n]).collect()
}

/// Roll `groups` (prompt indices) of `round` on this rank's share of them: the rollouts, with
/// rewards, advantages and log-probs, as traces (JSON lines).
#[allow(clippy::too_many_arguments)]
fn roll_round<B: Backend>(
    sh: &Shared<'_>,
    model: &CausalLm<B>,
    config: &ModelConfig,
    reference: Option<&CausalLm<B>>,
    device: &B::Device,
    (rank, world): (usize, usize),
    block: u64,
    after_step: u64,
    round: usize,
    groups: &[usize],
) -> Result<Vec<String>> {
    let g = sh.g;
    let ro = sh.roller();
    let per_call = (g.batch / g.group_size).max(1);
    let mut lines = Vec::new();
    for (c, chunk) in groups.chunks(per_call).enumerate() {
        if c % world != rank {
            continue;
        }
        let rendered: Vec<&Rendered> = chunk.iter().map(|&p| &sh.train[p]).collect();
        let seeds: Vec<u64> = rendered
            .iter()
            .flat_map(|r| {
                (0..g.group_size).map(|i| rollout_seed(g.seed, block, round, &r.prompt.id, i))
            })
            .collect();
        let sampled = ro.sample(model, config, device, &rendered, &seeds)?;
        let examples: Vec<Example> = sampled
            .iter()
            .enumerate()
            .map(|(k, (t, _))| example(rendered[k / g.group_size], t))
            .collect();
        // At the temperature the loss uses: the sampling one for the policy losses, 1 for online
        // RFT's cross-entropy.
        let temp = if g.loss == LossType::OnlineRft { 1.0 } else { g.temperature };
        // In the step's compute dtype, as the step's forward is: with μ > 1 the ratio's first
        // iteration is then 1 up to the order of the sums, not up to bf16's rounding.
        let compute = sh.cfg.compute();
        let cast = |m: &CausalLm<B>| {
            if compute == burn::tensor::DType::F32 {
                m.clone()
            } else {
                m.clone().map(&mut CastParams(compute))
            }
        };
        let logprobs = |m: &CausalLm<B>| {
            token_logprobs(&cast(m), config, &examples, ro.micro_batch, ro.pad, temp, device)
        };
        let pol = logprobs(model)?;
        let refs = reference.map(logprobs).transpose()?;
        for (j, grp) in sampled.chunks(g.group_size).enumerate() {
            let r = rendered[j];
            let gi = c * per_call + j;
            let mut rolled: Vec<Rolled> = Vec::with_capacity(g.group_size);
            let mut texts = Vec::with_capacity(g.group_size);
            for (i, (tokens, eos)) in grp.iter().enumerate() {
                let k = j * g.group_size + i;
                let text = sh.tok.decode(tokens, true).unwrap_or_default();
                let (reward, parts) = ro.rewards.score(&Rollout {
                    prompt: &r.prompt,
                    text: &text,
                    tokens: tokens.len(),
                    eos: *eos,
                });
                rolled.push(Rolled {
                    prompt: groups[gi],
                    round,
                    group: gi,
                    index: i,
                    tokens: tokens.clone(),
                    old: pol[k].0.clone(),
                    reference: refs.as_ref().map(|x| x[k].0.clone()).unwrap_or_default(),
                    entropy: pol[k].1,
                    reward,
                    parts,
                    advantage: 0.0,
                    eos: *eos,
                });
                texts.push(text);
            }
            let rs: Vec<f64> = rolled.iter().map(|x| x.reward).collect();
            let (adv, drop) = if g.loss == LossType::OnlineRft {
                // 1 for a sample the accuracy reward passes (it is trained on), else 0; a group
                // with none passed teaches nothing.
                let acc = ro.rewards.names().iter().position(|n| *n == "accuracy");
                let adv: Vec<f64> = rolled
                    .iter()
                    .map(|x| acc.map_or(0.0, |i| (x.parts[i] > 0.5) as u8 as f64))
                    .collect();
                let drop = g.dynamic() && adv.iter().all(|a| *a == 0.0);
                (adv, drop)
            } else {
                let drop = g.dynamic() && uninformative(&rs);
                (advantages(&rs, g.group_size, g.scales_rewards()), drop)
            };
            for (x, a) in rolled.iter_mut().zip(adv) {
                x.advantage = a;
            }
            for (x, text) in rolled.iter().zip(texts) {
                lines.push(trace(sh, r, block, after_step, x, text, drop).to_json());
            }
        }
    }
    Ok(lines)
}

impl<B: AutodiffBackend> BatchSource<B> for GrpoSource<'_, B::InnerBackend> {
    fn total_steps(&self) -> u64 {
        self.sh.total
    }

    fn report(&self) -> &DataReport {
        &self.report
    }

    fn eval_key(&self) -> &'static str {
        if self.sh.rewards.needs_references() { "eval_pass_rate" } else { "eval_reward" }
    }

    fn start(&mut self, state: &RunState, view: &StudentView<'_, B>) -> Result<()> {
        if view.rank() != 0 {
            return Ok(());
        }
        let mu = self.sh.g.num_iterations as u64;
        if self.corpus_dir.join("manifest.json").exists() {
            for t in Corpus::open(&self.corpus_dir)?.iter() {
                let t = t?;
                let Some(block) = t.metadata.get("step").and_then(Value::as_u64) else { continue };
                // A block whose last step is still to run.
                if block + mu - 1 > state.step {
                    self.kept.entry(block).or_default().push(t);
                }
            }
        }
        self.writer = Some(CorpusWriter::open(&self.corpus_dir, WriterOptions::default())?);
        Ok(())
    }

    fn next(&mut self, state: &mut RunState, view: &StudentView<'_, B>) -> Result<StepBatch> {
        let sh = self.sh;
        let (cfg, g) = (sh.cfg, sh.g);
        let step = state.step + 1;
        let mu = g.num_iterations as u64;
        let block_index = (step - 1) / mu;
        let block = block_index * mu + 1;
        let t_roll = Instant::now();
        if self.block.as_ref().is_none_or(|(b, _, _)| *b != block) {
            let (rolled, figures) = rollouts(self, state, view, block, block_index)?;
            self.block = Some((block, rolled, figures));
        }
        let (_, rolled, figures) = self.block.as_ref().expect("set above");
        let mut figures = figures.clone();
        figures.insert("objective".into(), json!(g.loss_name()));
        figures.insert("iteration".into(), json!(step - block));
        if step == block {
            figures.insert("rollout_s".into(), json!(t_roll.elapsed().as_secs_f64()));
        }
        if g.loss == LossType::OnlineRft {
            // SFT on the passed samples: the loop's cross-entropy, a token mean over them.
            let passed: Vec<Example> = rolled
                .iter()
                .filter(|x| x.advantage > 0.0)
                .map(|x| Example { rl: None, ..example(&sh.train[x.prompt], &x.tokens) })
                .collect();
            figures.insert("rft_samples".into(), json!(passed.len()));
            if !passed.is_empty() {
                return Ok(StepBatch {
                    micro: micro_batches(&passed, cfg.micro_batch, sh.pad),
                    kd_weight: 0.0,
                    objective: None,
                    epoch: block_index as f64 * g.prompts_per_step as f64 / sh.train.len() as f64,
                    figures,
                });
            }
            // None passed: the policy step below with every advantage 0 (no gradient), as a
            // GRPO step whose groups all tie.
        }
        let lens: Vec<usize> = rolled.iter().map(|x| x.tokens.len()).collect();
        let weights = token_weights(g.loss, &lens, g.max_tokens);
        let examples: Vec<Example> = rolled
            .iter()
            .zip(weights)
            .map(|(x, w)| {
                let mut e = example(&sh.train[x.prompt], &x.tokens);
                let rl = e.rl.as_mut().expect("an RL example");
                rl.advantage = x.advantage as f32;
                rl.weight = w;
                rl.old_logprobs =
                    if mu > 1 { x.old.clone() } else { vec![f32::NAN; x.tokens.len()] };
                rl.ref_logprobs = if g.beta > 0.0 { x.reference.clone() } else { vec![] };
                e
            })
            .collect();
        Ok(StepBatch {
            micro: micro_batches(&examples, cfg.micro_batch, sh.pad),
            kd_weight: 0.0,
            objective: Some(Objective::Policy(g.policy_loss())),
            epoch: block_index as f64 * g.prompts_per_step as f64 / sh.train.len() as f64,
            figures,
        })
    }

    /// pass@1 on the held-out prompts: `eval_samples` samples each (fixed seeds), the share the
    /// accuracy reward passes; without an accuracy reward, the samples' mean reward.
    fn eval(&mut self, view: &StudentView<'_, B>) -> Result<Option<f64>> {
        let sh = self.sh;
        if sh.eval.is_empty() {
            return Ok(None);
        }
        let model = view.inference_model()?;
        let (passed, reward, n) =
            pass_sums(sh, &model, view.config, view.device, (view.rank(), view.world()))?;
        let r = view.sum(&[passed, reward, n])?;
        let figure = if sh.rewards.needs_references() { r[0] } else { r[1] };
        Ok((r[2] > 0.0).then(|| figure / r[2]))
    }
}

/// The kept rollouts of `block` and their figures: read back from the corpus when rank 0 holds
/// them, else sampled (round after round under dynamic sampling) and committed.
fn rollouts<A: AutodiffBackend>(
    this: &mut GrpoSource<'_, A::InnerBackend>,
    state: &RunState,
    view: &StudentView<'_, A>,
    block: u64,
    block_index: u64,
) -> Result<(Vec<Rolled>, Map<String, Value>)> {
    let sh = this.sh;
    let g = sh.g;
    let names = sh.rewards.names();
    let mine = this.kept.remove(&block);
    let reused = view.sum(&[if mine.is_some() { 1.0 } else { 0.0 }])?[0] > 0.0;
    let mut all: Vec<(Rolled, bool)> = Vec::new();
    let mut traces: Vec<Trace> = Vec::new();
    let gather = |lines: Vec<String>,
                  all: &mut Vec<(Rolled, bool)>,
                  traces: &mut Vec<Trace>|
     -> Result<()> {
        for part in view.all_gather_bytes(&lines_of(&lines))? {
            let text = String::from_utf8(part)
                .map_err(|e| Error::Invalid(format!("rollouts from another rank: {e}")))?;
            for line in text.lines() {
                let t = Trace::from_json(line)?;
                all.push(rolled_of(&t, &names, &this.corpus_dir)?);
                traces.push(t);
            }
        }
        Ok(())
    };
    let mut rounds = 0;
    if reused {
        let lines: Vec<String> = mine.unwrap_or_default().iter().map(Trace::to_json).collect();
        gather(lines, &mut all, &mut traces)?;
        rounds = all.iter().map(|(x, _)| x.round + 1).max().unwrap_or(0);
    } else {
        let model = view.inference_model()?;
        if g.beta > 0.0 && this.reference.is_none() {
            this.reference =
                Some(hf::load_model::<A::InnerBackend>(&sh.cfg.model, view.device)?.model);
        }
        let n = sh.train.len();
        let mut informative = 0;
        while rounds < g.max_sampling_rounds {
            let groups = picks(n, g, block_index, block, rounds);
            let lines = roll_round(
                sh,
                &model,
                view.config,
                this.reference.as_ref(),
                view.device,
                (view.rank(), view.world()),
                block,
                state.step,
                rounds,
                &groups,
            )?;
            let before = all.len();
            gather(lines, &mut all, &mut traces)?;
            informative += all[before..].iter().filter(|(x, d)| !d && x.index == 0).count();
            rounds += 1;
            if !g.dynamic() || informative >= g.prompts_per_step {
                break;
            }
        }
        if let Some(w) = this.writer.as_mut() {
            for t in &traces {
                if !w.committed_ids().contains(&t.id) {
                    w.append(t.clone())?;
                }
            }
            // Durable before the step that uses them.
            w.commit()?;
        }
    }
    // Rank order of the gathers is not the groups' order: sort by (round, group, index).
    let mut order: Vec<usize> = (0..all.len()).collect();
    order.sort_by_key(|&i| (all[i].0.round, all[i].0.group, all[i].0.index));
    let sampled: Vec<&(Rolled, bool)> = order.iter().map(|&i| &all[i]).collect();
    let dropped = sampled.iter().filter(|(x, d)| *d && x.index == 0).count();
    // The first prompts_per_step informative groups (all groups without dynamic sampling);
    // when too few are informative, the dropped ones of round 0 fill the step (their
    // advantages are zero: only the KL term moves them).
    let mut chosen: Vec<(usize, usize)> = Vec::new();
    for (x, d) in &sampled {
        if !d && x.index == 0 && chosen.len() < g.prompts_per_step {
            chosen.push((x.round, x.group));
        }
    }
    let mut keep: Vec<Rolled> = sampled
        .iter()
        .filter(|(x, _)| chosen.contains(&(x.round, x.group)))
        .map(|(x, _)| x.clone())
        .collect();
    if keep.is_empty() {
        keep = sampled.iter().filter(|(x, _)| x.round == 0).map(|(x, _)| x.clone()).collect();
    }
    let figures = rollout_figures(&keep, &names, dropped, rounds);
    Ok((keep, figures))
}

/// The step's rollout figures: reward mean and std (and per component), pass rate, length, EOS
/// share, entropy, groups dropped, rounds.
fn rollout_figures(
    kept: &[Rolled],
    names: &[&str],
    dropped: usize,
    rounds: usize,
) -> Map<String, Value> {
    let n = kept.len().max(1) as f64;
    let mean = |f: &dyn Fn(&Rolled) -> f64| kept.iter().map(f).sum::<f64>() / n;
    let std = |f: &dyn Fn(&Rolled) -> f64| {
        let m = mean(f);
        (kept.iter().map(|x| (f(x) - m).powi(2)).sum::<f64>() / n).sqrt()
    };
    let tokens: usize = kept.iter().map(|x| x.tokens.len()).sum();
    let mut m = Map::new();
    m.insert("reward_mean".into(), json!(mean(&|x| x.reward)));
    m.insert("reward_std".into(), json!(std(&|x| x.reward)));
    for (i, name) in names.iter().enumerate() {
        m.insert(format!("reward_{name}"), json!(mean(&|x| x.parts[i])));
        m.insert(format!("reward_{name}_std"), json!(std(&|x| x.parts[i])));
    }
    if let Some(i) = names.iter().position(|n| *n == "accuracy") {
        m.insert("pass_rate".into(), json!(mean(&|x| (x.parts[i] > 0.5) as u8 as f64)));
    }
    m.insert("sample_tokens".into(), json!(tokens as f64 / n));
    m.insert("eos_fraction".into(), json!(mean(&|x| x.eos as u8 as f64)));
    m.insert(
        "entropy".into(),
        json!(kept.iter().map(|x| x.entropy).sum::<f64>() / tokens.max(1) as f64),
    );
    m.insert("groups_dropped".into(), json!(dropped));
    m.insert("sampling_rounds".into(), json!(rounds));
    m
}

/// (passed, Σ reward, samples) of this rank's share of the held-out pass@1 sampling.
fn pass_sums<B: Backend>(
    sh: &Shared<'_>,
    model: &CausalLm<B>,
    config: &ModelConfig,
    device: &B::Device,
    (rank, world): (usize, usize),
) -> Result<(f64, f64, f64)> {
    let g = sh.g;
    let ro = sh.roller();
    let k = g.eval_samples;
    let eos = sh.tok.eos_ids(&config.eos_token_ids);
    let engine = Engine::new(model, config, Some(&sh.tok), device.clone());
    let ids: Vec<(usize, u64)> = sh
        .eval
        .iter()
        .enumerate()
        .flat_map(|(p, r)| {
            (0..k).map(move |i| (p, rollout_seed(g.seed, u64::MAX, 0, &r.prompt.id, i)))
        })
        .collect();
    let (mut passed, mut total, mut n) = (0.0, 0.0, 0.0);
    for (c, chunk) in ids.chunks(g.batch.max(1)).enumerate() {
        if c % world != rank {
            continue;
        }
        let prompts: Vec<Vec<u32>> = chunk.iter().map(|(p, _)| sh.eval[*p].ids.clone()).collect();
        let seeds: Vec<u64> = chunk.iter().map(|(_, s)| *s).collect();
        let got = engine.generate_seeded(&prompts, &seeds, &ro.params(eos.clone()), |_| {})?;
        for ((p, _), c) in chunk.iter().zip(got) {
            let text = sh.tok.decode(&c.ids, true).unwrap_or_default();
            let eos = c.ids.last().is_some_and(|l| eos.contains(l));
            let (reward, parts) = sh.rewards.score(&Rollout {
                prompt: &sh.eval[*p].prompt,
                text: &text,
                tokens: c.ids.len(),
                eos,
            });
            let i = sh.rewards.names().iter().position(|n| *n == "accuracy");
            passed += i.map_or(0.0, |i| (parts[i] > 0.5) as u8 as f64);
            total += reward;
            n += 1.0;
        }
    }
    Ok((passed, total, n))
}

/// A student's held-out pass@1.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EvalPass {
    pub prompts: usize,
    pub samples_per_prompt: usize,
    pub pass_rate: f64,
    pub mean_reward: f64,
}

fn shared<'a>(
    cfg: &'a TrainConfig,
    g: &'a GrpoConfig,
    tok: TextTokenizer,
    judge: Option<Judge<'a>>,
) -> Result<Shared<'a>> {
    let set = PromptSet {
        section: "train.grpo",
        path: &g.prompts,
        fields: &g.fields,
        eval_prompts: g.eval_prompts,
        seed: g.seed,
    };
    let (train, eval) = split_prompt_set(&set, &tok, cfg.data.max_seq_len)?;
    let rewards = Rewards::new(&g.rewards, g.max_tokens, judge)?;
    if rewards.needs_references()
        && let Some(r) = train.iter().chain(&eval).find(|r| r.prompt.reference.is_none())
    {
        return Err(Error::Prompt {
            id: r.prompt.id.clone(),
            msg: format!(
                "{}: the accuracy reward needs a reference answer, and this prompt has none",
                g.prompts.display()
            ),
        });
    }
    let pad = pad_id(&tok);
    let total = cfg.max_steps.ok_or_else(|| Error::Config {
        section: "train",
        msg: "max_steps: a GRPO run needs a step count".into(),
    })?;
    Ok(Shared { cfg, g, tok, train, eval, rewards, total, pad })
}

/// The held-out pass@1 of the model in `model_dir` on `cfg.grpo`'s held-out prompts (the split,
/// seeds and sampling `eval_pass_rate` uses), so runs are compared on the same samples' seeds.
pub fn measure_pass_rate<B: Backend>(
    model_dir: &Path,
    cfg: &TrainConfig,
    judge: Judge<'_>,
    device: &B::Device,
) -> Result<EvalPass> {
    let g = cfg
        .grpo
        .as_ref()
        .ok_or_else(|| Error::Config { section: "train.grpo", msg: "is missing".into() })?;
    let tok = TextTokenizer::from_dir(model_dir)?;
    let sh = shared(cfg, g, tok, Some(judge))?;
    if sh.eval.is_empty() {
        return Err(Error::Config {
            section: "train.grpo",
            msg: "eval_prompts = 0: no held-out prompts to measure on".into(),
        });
    }
    let loaded = hf::load_model::<B>(model_dir, device)?;
    let (passed, reward, n) = pass_sums(&sh, &loaded.model, &loaded.config, device, (0, 1))?;
    Ok(EvalPass {
        prompts: sh.eval.len(),
        samples_per_prompt: g.eval_samples,
        pass_rate: passed / n.max(1.0),
        mean_reward: reward / n.max(1.0),
    })
}

/// Train with GRPO per `cfg.grpo`, one rank per device in `devices` (rollouts split over the
/// ranks). `judge` is the accuracy reward's verifier.
pub fn train_grpo<B: AutodiffBackend>(
    cfg: &TrainConfig,
    judge: Option<Judge<'_>>,
    recipe: serde_json::Value,
    devices: Vec<B::Device>,
    resume: bool,
    obs: &mut dyn Observer,
) -> Result<Summary> {
    cfg.validate()?;
    let g = cfg
        .grpo
        .as_ref()
        .ok_or_else(|| Error::Config { section: "train.grpo", msg: "is missing".into() })?;
    let tok = TextTokenizer::from_dir(&cfg.model)?;
    check_template_tokens(&tok)?;
    let sh = shared(cfg, g, tok, judge)?;
    let sh = &sh;
    train_loop::<B>(cfg, recipe, devices, resume, obs, &|_, _| {
        Ok(Box::new(GrpoSource::<B::InnerBackend> {
            sh,
            report: DataReport::default(),
            corpus_dir: rollouts_dir(&cfg.output),
            writer: None,
            kept: BTreeMap::new(),
            reference: None,
            block: None,
        }))
    })
}
