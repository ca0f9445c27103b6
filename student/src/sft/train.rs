//! The training loop: a linear sequence of plain steps, setup → (batches → loss → backward →
//! clip → AdamW) × N → checkpoint → export.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::module::{AutodiffModule, ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::checkpoint::{self, RunState};
use super::data::{self, DataConfig, DataReport};
use super::loss::losses;
use super::optim::{AdamW, OptimConfig, clip_global};
use super::pack::{self, Batch};
use crate::checkpoint::SaveDtype;
use crate::error::{Error, IoContext, Result};
use crate::hf::{self, Assets, ExportOptions};
use crate::model::{CausalLm, ParamMut};
use crate::rope::Rope;
use crate::tokenizer::TextTokenizer;

/// `[train]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The student to start from: a Hugging Face directory.
    pub model: PathBuf,
    /// Run directory: checkpoints/, metrics.jsonl, export/.
    pub output: PathBuf,
    pub data: DataConfig,
    #[serde(default)]
    pub optim: OptimConfig,
    /// Passes over the training rows (Open-R1: 5 … 10 for distills).
    #[serde(default = "one")]
    pub epochs: u64,
    /// Stop after this many optimizer steps (wins over epochs when set).
    #[serde(default)]
    pub max_steps: Option<u64>,
    /// Rows per forward/backward. Memory grows with it; throughput too until the device is full.
    #[serde(default = "one_usize")]
    pub micro_batch: usize,
    /// Micro-batches per optimizer step: global batch = micro_batch · grad_accum rows.
    #[serde(default = "one_usize")]
    pub grad_accum: usize,
    /// Eval loss on the held-out split every N steps (0: only at the end).
    #[serde(default)]
    pub eval_every: u64,
    /// Checkpoint every N steps (0: only at the end). Smaller loses less on a crash, costs disk time.
    #[serde(default)]
    pub save_every: u64,
    /// Checkpoints kept.
    #[serde(default = "two")]
    pub keep_checkpoints: usize,
    /// Logit distillation from the corpus's teacher top-k log-probs: loss = (1−w)·CE + w·KL.
    #[serde(default)]
    pub kd_weight: f64,
    /// Recompute activations in the backward pass (less memory, ~30% more compute).
    #[serde(default)]
    pub activation_checkpointing: bool,
    /// `cpu`, `cuda` or `cuda:N`.
    #[serde(default = "cpu")]
    pub device: String,
    /// Compute precision: `f32`, `bf16` (weights cast to bf16 for each forward, master weights,
    /// gradients and AdamW state stay f32; norms, softmax, attention math and the loss run in f32),
    /// or `auto` (the default): bf16 on CUDA, f32 on CPU.
    #[serde(default = "auto")]
    pub compute_dtype: String,
    /// Peak device throughput for the MFU estimate, TFLOP/s (default: a CPU estimate).
    #[serde(default)]
    pub peak_tflops: Option<f64>,
    /// Memory of one device, GB. Training refuses to start when the estimate exceeds it
    /// (default: this machine's RAM on CPU; required to check a GPU).
    #[serde(default)]
    pub device_memory_gb: Option<f64>,
    #[serde(default)]
    pub export: ExportConfig,
}

/// `[train.export]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    /// `bf16` (half the size; what the R1-Distill releases ship) or `f32`.
    pub dtype: String,
    pub max_shard_gb: f64,
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig { dtype: "bf16".into(), max_shard_gb: 5.0 }
    }
}

fn one() -> u64 {
    1
}
fn one_usize() -> usize {
    1
}
fn two() -> usize {
    2
}
fn cpu() -> String {
    "cpu".into()
}
fn auto() -> String {
    "auto".into()
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        self.data.validate()?;
        self.optim.validate().map_err(Error::Invalid)?;
        let bad = |m: &str| Err(Error::Invalid(format!("[train] {m}")));
        if self.micro_batch == 0 || self.grad_accum == 0 {
            return bad("micro_batch and grad_accum must be at least 1");
        }
        if self.epochs == 0 && self.max_steps.is_none() {
            return bad("set epochs ≥ 1 or max_steps");
        }
        if !(0.0..=1.0).contains(&self.kd_weight) {
            return bad("kd_weight must be in [0, 1]");
        }
        if self.export.dtype != "bf16" && self.export.dtype != "f32" {
            return bad("export.dtype must be bf16 or f32");
        }
        if !["auto", "f32", "bf16"].contains(&self.compute_dtype.as_str()) {
            return bad("compute_dtype must be auto, f32 or bf16");
        }
        Ok(())
    }

    /// The compute dtype `auto` resolves to: bf16 on CUDA, f32 on CPU.
    pub fn compute(&self) -> DType {
        match self.compute_dtype.as_str() {
            "bf16" => DType::BF16,
            "auto" if self.device.starts_with("cuda") => DType::BF16,
            _ => DType::F32,
        }
    }
}

/// Casts every float parameter to the compute dtype. Under autodiff the cast is part of the graph,
/// so gradients reach the f32 master weights (the cast's backward casts them back to f32).
struct CastParams(DType);

impl<B: Backend> ModuleMapper<B> for CastParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        Param::from_mapped_value(id, tensor.cast(self.0), mapper)
    }
}

/// What the caller hears about while the run goes.
pub trait Observer {
    fn started(&mut self, _total_steps: u64, _start_step: u64, _data: &DataReport) {}
    fn step(&mut self, _m: &StepMetrics) {}
    fn eval(&mut self, _step: u64, _loss: f64) {}
    fn saved(&mut self, _dir: &Path) {}
}

#[derive(Debug, Clone, Serialize)]
pub struct StepMetrics {
    pub step: u64,
    pub total_steps: u64,
    pub epoch: f64,
    pub loss: f64,
    pub ce: f64,
    pub kd: Option<f64>,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Loss tokens in the step.
    pub tokens: u64,
    /// All (non-padding) tokens per second.
    pub tokens_per_s: f64,
    pub mfu: f64,
    pub elapsed_s: f64,
}

pub struct Summary {
    pub steps: u64,
    pub final_eval_loss: Option<f64>,
    pub first_eval_loss: Option<f64>,
    pub export_dir: PathBuf,
    pub data: DataReport,
}

/// Estimated peak memory of a full fine-tune, GB: f32 weights, gradients and both AdamW moments
/// (16 bytes per parameter), plus activations and the logits. Attention keeps no score matrix
/// (`crate::attention` recomputes it per chunk in the backward pass), so activations grow linearly
/// with context.
pub fn estimate_memory_gb(c: &crate::ModelConfig, micro_batch: usize, seq: usize, checkpointing: bool) -> f64 {
    let params = (c.vocab_size * c.hidden_size * if c.tie_word_embeddings { 1 } else { 2 }
        + c.num_hidden_layers
            * (c.hidden_size * c.head_dim * (c.num_attention_heads * 2 + c.num_key_value_heads * 2) + 3 * c.hidden_size * c.intermediate_size)) as f64;
    let state = 16.0 * params;
    let tokens = (micro_batch * seq) as f64;
    // Per layer and token: ~ (hidden·10 + intermediate·3) floats of activations kept for backward.
    let per_layer = tokens * (c.hidden_size * 10 + c.intermediate_size * 3) as f64 * 4.0;
    let layers = c.num_hidden_layers as f64;
    let act = if checkpointing { layers * tokens * c.hidden_size as f64 * 4.0 + per_layer } else { layers * per_layer };
    let logits = tokens * c.vocab_size as f64 * 4.0 * 2.0;
    (state + act + logits) / 1e9
}

/// Check that the student's tokenizer has every special token its chat template writes.
pub fn check_template_tokens(tok: &TextTokenizer) -> Result<()> {
    let chat = tok.chat.as_ref().ok_or_else(|| Error::Tokenizer("the student has no chat template".into()))?;
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
        Err(Error::Tokenizer(format!("the chat template writes special tokens the tokenizer does not have: {}", missing.join(", "))))
    }
}

fn flatten<B: Backend>(p: &ParamMut<'_, B>) -> (Tensor<B, 1>, Vec<usize>) {
    match p {
        ParamMut::Vector(p) => (p.val(), p.val().dims().to_vec()),
        ParamMut::Matrix(p) => {
            let d = p.val().dims();
            (p.val().reshape([d[0] * d[1]]), d.to_vec())
        }
    }
}

/// Train per the config. With `resume`, continue from the newest complete checkpoint.
pub fn train<B: AutodiffBackend>(cfg: &TrainConfig, recipe: serde_json::Value, device: B::Device, resume: bool, obs: &mut dyn Observer) -> Result<Summary> {
    cfg.validate()?;
    let tok = TextTokenizer::from_dir(&cfg.model)?;
    check_template_tokens(&tok)?;
    let (mut train_ex, mut eval_ex, report) = data::load(&cfg.data, &tok)?;
    if cfg.kd_weight == 0.0 {
        // No logit distillation: do not carry the teacher's top-k through the batches.
        train_ex.iter_mut().chain(eval_ex.iter_mut()).for_each(|e| e.kd = None);
    }
    let train_ex = Arc::new(train_ex);
    let seq = cfg.data.max_seq_len;
    let rows: Vec<Vec<usize>> = if cfg.data.packing {
        pack::pack_bfd(&train_ex.iter().map(|e| e.ids.len()).collect::<Vec<_>>(), seq)
    } else {
        (0..train_ex.len()).map(|i| vec![i]).collect()
    };
    let eval_rows = pack::pack_bfd(&eval_ex.iter().map(|e| e.ids.len()).collect::<Vec<_>>(), seq);
    let global_rows = cfg.micro_batch * cfg.grad_accum;
    let steps_per_epoch = rows.len().div_ceil(global_rows) as u64;
    let total = cfg.max_steps.unwrap_or(steps_per_epoch * cfg.epochs).max(1);
    let pad = tok.pad_token.as_deref().and_then(|p| tok.token_id(p)).or_else(|| tok.eos_token.as_deref().and_then(|e| tok.token_id(e))).unwrap_or(0);

    let ckpt_root = cfg.output.join("checkpoints");
    std::fs::create_dir_all(&cfg.output).at(&cfg.output)?;
    let (mut state, loaded, mut opt) = match (resume, checkpoint::list(&ckpt_root)?.pop()) {
        (true, Some((_, dir))) => checkpoint::load::<B>(&dir, &device, cfg.optim.clone())?,
        (true, None) => return Err(Error::Invalid(format!("--resume: no checkpoint under {}", ckpt_root.display()))),
        (false, _) => {
            if !checkpoint::list(&ckpt_root)?.is_empty() {
                return Err(Error::Invalid(format!("{} already holds checkpoints; pass --resume to continue the run, or choose another output", ckpt_root.display())));
            }
            let st = RunState { format: checkpoint::FORMAT.into(), version: checkpoint::VERSION, step: 0, epoch: 0, epoch_row: 0, tokens_seen: 0, elapsed_s: 0.0, recipe: recipe.clone() };
            (st, hf::load_model::<B>(&cfg.model, &device)?, AdamW::<B::InnerBackend>::new(cfg.optim.clone()))
        }
    };
    let config = loaded.config.clone();
    let need = estimate_memory_gb(&config, cfg.micro_batch, seq, cfg.activation_checkpointing);
    let have = cfg.device_memory_gb.unwrap_or_else(machine_memory_gb);
    if need > have {
        return Err(Error::Invalid(format!(
            "this run needs about {need:.0} GB (16 bytes per parameter for weights, gradients and AdamW state, plus activations at micro_batch {} × {seq} tokens) but the device has {have:.0} GB; lower max_seq_len or micro_batch, turn on activation_checkpointing, or train with a sharded (FSDP/ZeRO) trainer on `distill corpus export --format chat`",
            cfg.micro_batch
        )));
    }
    let mut model: CausalLm<B> = loaded.model;
    let rope = Rope::<B>::new(&config, &device);
    let n_params: usize = model.params_mut().iter().map(|(_, p)| flatten(p).1.iter().product::<usize>()).sum();
    let peak = cfg.peak_tflops.unwrap_or_else(|| cpu_peak_tflops()) * 1e12;

    // metrics.jsonl: keep exactly the lines up to the resumed step, so a resumed run's file
    // equals an uninterrupted one.
    let metrics_path = cfg.output.join("metrics.jsonl");
    let kept_lines: Vec<String> = std::fs::read_to_string(&metrics_path)
        .unwrap_or_default()
        .lines()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).ok().and_then(|v| v["step"].as_u64()).is_some_and(|s| s <= state.step))
        .map(str::to_string)
        .collect();
    let mut metrics = std::fs::File::create(&metrics_path).at(&metrics_path)?;
    for l in &kept_lines {
        writeln!(metrics, "{l}").at(&metrics_path)?;
    }
    obs.started(total, state.step, &report);

    let eval_loss = |model: &CausalLm<B>| -> Option<f64> {
        if eval_rows.is_empty() {
            return None;
        }
        let inner = model.valid();
        let rope = Rope::<B::InnerBackend>::new(&config, &device);
        let (mut sum, mut n) = (0.0, 0usize);
        for chunk in eval_rows.chunks(cfg.micro_batch.max(1)) {
            let b = pack::build(&eval_ex, chunk, seq, pad);
            let l = losses(&inner, &rope, &b, &device);
            sum += l.ce.into_scalar().elem::<f64>();
            n += l.tokens;
        }
        (n > 0).then(|| sum / n as f64)
    };
    let first_eval = if state.step == 0 { eval_loss(&model) } else { None };
    if let Some(l) = first_eval {
        writeln!(metrics, "{}", json!({"step": 0, "eval_loss": l})).at(&metrics_path)?;
        obs.eval(0, l);
    }

    let mut order = pack::shuffled(rows.len(), cfg.data.seed, state.epoch);
    let t_run = Instant::now();
    let elapsed0 = state.elapsed_s;
    let mut last_eval = None;
    while state.step < total {
        let t0 = Instant::now();
        // The rows of this step, in micro-batches.
        let mut micro: Vec<Batch> = Vec::with_capacity(cfg.grad_accum);
        for _ in 0..cfg.grad_accum {
            let mut chosen = Vec::with_capacity(cfg.micro_batch);
            while chosen.len() < cfg.micro_batch {
                if state.epoch_row as usize >= order.len() {
                    state.epoch += 1;
                    state.epoch_row = 0;
                    order = pack::shuffled(rows.len(), cfg.data.seed, state.epoch);
                }
                chosen.push(rows[order[state.epoch_row as usize]].clone());
                state.epoch_row += 1;
            }
            let len = if cfg.data.packing { seq } else { chosen.iter().map(|r| train_ex[r[0]].ids.len()).max().unwrap_or(1) };
            micro.push(pack::build(&train_ex, &chosen, len, pad));
        }
        let seen: u64 = micro.iter().map(|b| b.real_tokens as u64).sum();
        let lr = cfg.optim.lr_at(state.step, total);
        let out = optimizer_step(&mut model, &rope, &mut opt, &micro, cfg.kd_weight, cfg.optim.max_grad_norm, lr, cfg.compute(), &device);
        let (loss, ce, kd, grad_norm, n_tokens) = (out.loss, out.ce, out.kd, out.grad_norm, out.tokens);
        if !loss.is_finite() || !grad_norm.is_finite() {
            let last = checkpoint::list(&ckpt_root)?.pop().map_or("none".to_string(), |(_, d)| d.display().to_string());
            return Err(Error::Invalid(format!(
                "non-finite {} at step {} (loss {loss}, grad norm {grad_norm}); stopped without saving. Last good checkpoint: {last}",
                if loss.is_finite() { "gradient" } else { "loss" },
                state.step + 1
            )));
        }
        state.step += 1;
        state.tokens_seen += seen;
        let secs = t0.elapsed().as_secs_f64();
        let m = StepMetrics {
            step: state.step,
            total_steps: total,
            epoch: state.epoch as f64 + state.epoch_row as f64 / rows.len().max(1) as f64,
            loss,
            ce,
            kd,
            lr,
            grad_norm,
            tokens: n_tokens as u64,
            tokens_per_s: seen as f64 / secs,
            mfu: 6.0 * n_params as f64 * seen as f64 / secs / peak,
            elapsed_s: elapsed0 + t_run.elapsed().as_secs_f64(),
        };
        writeln!(metrics, "{}", serde_json::to_string(&m).expect("json")).at(&metrics_path)?;
        metrics.flush().at(&metrics_path)?;
        obs.step(&m);
        if cfg.eval_every > 0 && state.step % cfg.eval_every == 0 && state.step < total
            && let Some(l) = eval_loss(&model)
        {
            writeln!(metrics, "{}", json!({"step": state.step, "eval_loss": l})).at(&metrics_path)?;
            obs.eval(state.step, l);
        }
        if cfg.save_every > 0 && state.step % cfg.save_every == 0 && state.step < total {
            metrics.sync_all().at(&metrics_path)?;
            state.elapsed_s = elapsed0 + t_run.elapsed().as_secs_f64();
            let dir = checkpoint::save(&ckpt_root, &model, &config, &opt, &state, cfg.keep_checkpoints)?;
            obs.saved(&dir);
        }
    }
    if let Some(l) = eval_loss(&model) {
        writeln!(metrics, "{}", json!({"step": state.step, "eval_loss": l})).at(&metrics_path)?;
        obs.eval(state.step, l);
        last_eval = Some(l);
    }
    metrics.sync_all().at(&metrics_path)?;
    state.elapsed_s = elapsed0 + t_run.elapsed().as_secs_f64();
    let dir = checkpoint::save(&ckpt_root, &model, &config, &opt, &state, cfg.keep_checkpoints)?;
    obs.saved(&dir);

    // Export, recording what the model was distilled from.
    let export_dir = cfg.output.join("export");
    let mut assets = Assets::read(&cfg.model)?;
    let provenance = json!({"corpus_manifest_blake3": report.corpus_checksums, "corpora": cfg.data.corpus, "recipe": recipe, "steps": state.step, "base_model": cfg.model});
    if let Some(g) = assets.generation_config.as_mut() {
        g["distill"] = provenance.clone();
    }
    let metadata = std::collections::HashMap::from([
        ("distill.corpus_manifest_blake3".to_string(), report.corpus_checksums.join(",")),
        ("distill.recipe".to_string(), serde_json::to_string(&recipe).expect("json")),
    ]);
    let opts = ExportOptions {
        dtype: if cfg.export.dtype == "f32" { SaveDtype::F32 } else { SaveDtype::Bf16 },
        max_shard_bytes: (cfg.export.max_shard_gb * 1e9) as u64,
        metadata,
        overwrite: true,
    };
    hf::export(&model.valid(), &config, &assets, &export_dir, &opts)?;
    distill_data::fsutil::atomic_write(&export_dir.join("distill.json"), &serde_json::to_vec_pretty(&provenance).expect("json"))?;
    Ok(Summary { steps: state.step, final_eval_loss: last_eval, first_eval_loss: first_eval, export_dir, data: report })
}

/// What one optimizer step did.
#[derive(Debug, Clone)]
pub struct StepOutcome {
    pub loss: f64,
    pub ce: f64,
    pub kd: Option<f64>,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Per-tensor gradient norms before and after clipping, by HF name.
    pub grad_norms: BTreeMap<String, f64>,
    pub clipped_grad_norms: BTreeMap<String, f64>,
    /// Loss tokens.
    pub tokens: usize,
}

/// One optimizer step over the micro-batches of a global batch: each micro-batch's loss is scaled
/// by the token counts of the whole batch, gradients are summed, clipped by their global norm, and
/// AdamW updates every parameter at `lr`. Parameters are left untouched if the loss or a gradient
/// is not finite.
#[allow(clippy::too_many_arguments)]
pub fn optimizer_step<B: AutodiffBackend>(
    model: &mut CausalLm<B>,
    rope: &Rope<B>,
    opt: &mut AdamW<B::InnerBackend>,
    micro: &[Batch],
    kd_weight: f64,
    max_grad_norm: f64,
    lr: f64,
    compute: DType,
    device: &B::Device,
) -> StepOutcome {
    let n_tokens: usize = micro.iter().map(Batch::loss_tokens).sum();
    let n_kd: usize = micro.iter().map(|b| b.kd.len()).sum();
    let w = if n_kd > 0 { kd_weight } else { 0.0 };
    let mut acc: BTreeMap<String, Tensor<B::InnerBackend, 1>> = BTreeMap::new();
    let (mut ce_total, mut kd_total) = (0.0f64, 0.0f64);
    // The forward runs on a copy whose weights are cast to the compute dtype (a no-op for f32).
    let fwd = if compute == DType::F32 { model.clone() } else { model.clone().map(&mut CastParams(compute)) };
    for b in micro {
        let l = losses(&fwd, rope, b, device);
        let mut loss = l.ce.clone().mul_scalar((1.0 - w) / n_tokens.max(1) as f64);
        ce_total += l.ce.clone().into_scalar().elem::<f64>();
        if let (Some(kd), true) = (l.kd.as_ref(), w > 0.0) {
            kd_total += kd.clone().into_scalar().elem::<f64>();
            loss = loss + kd.clone().mul_scalar(w / n_kd.max(1) as f64);
        }
        let grads = loss.backward();
        for (name, p) in model.params_mut() {
            // The gradient of the parameter tensor itself (a reshaped view would be a new node).
            let g = match &p {
                ParamMut::Vector(p) => p.val().grad(&grads),
                ParamMut::Matrix(p) => p.val().grad(&grads).map(|g| {
                    let [a, b] = g.dims();
                    g.reshape([a * b])
                }),
            };
            if let Some(g) = g {
                let g = match acc.remove(&name) {
                    Some(prev) => prev + g,
                    None => g,
                };
                acc.insert(name, g);
            }
        }
    }
    let ce = ce_total / n_tokens.max(1) as f64;
    let kd = (n_kd > 0 && w > 0.0).then(|| kd_total / n_kd as f64);
    let loss = (1.0 - w) * ce + w * kd.unwrap_or(0.0);
    let norm = |t: &Tensor<B::InnerBackend, 1>| t.clone().square().sum().into_scalar().elem::<f64>().sqrt();
    let grad_norms: BTreeMap<String, f64> = acc.iter().map(|(n, g)| (n.clone(), norm(g))).collect();
    let names: Vec<String> = acc.keys().cloned().collect();
    let mut grads: Vec<Tensor<B::InnerBackend, 1>> = names.iter().map(|n| acc[n].clone()).collect();
    let grad_norm = clip_global(&mut grads, max_grad_norm);
    let grads: BTreeMap<String, Tensor<B::InnerBackend, 1>> = names.into_iter().zip(grads).collect();
    let clipped_grad_norms = grads.iter().map(|(n, g)| (n.clone(), norm(g))).collect();
    let outcome = StepOutcome { loss, ce, kd, grad_norm, grad_norms, clipped_grad_norms, tokens: n_tokens };
    if !loss.is_finite() || !grad_norm.is_finite() {
        return outcome;
    }
    for (name, p) in model.params_mut() {
        let Some(g) = grads.get(&name) else { continue };
        let (t, shape) = flatten(&p);
        let new = opt.update(&name, t.inner(), g.clone(), lr);
        match p {
            ParamMut::Vector(p) => *p = Param::from_tensor(Tensor::from_inner(new).require_grad()),
            ParamMut::Matrix(p) => *p = Param::from_tensor(Tensor::from_inner(new.reshape([shape[0], shape[1]])).require_grad()),
        }
    }
    opt.step += 1;
    outcome
}

/// This machine's RAM, GB.
pub fn machine_memory_gb() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map_or(f64::INFINITY, |kb| kb * 1024.0 / 1e9)
}

/// A rough f32 peak for this CPU: cores × 2.5 GHz × 32 FLOP/cycle (AVX2 FMA; AVX-512 doubles it).
pub fn cpu_peak_tflops() -> f64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    cores * 2.5e9 * 32.0 / 1e12
}

