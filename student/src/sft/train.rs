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
use super::fsdp::{Fsdp, FsdpOptions};
use super::loss::losses;
use super::optim::{AdamW, OptimConfig};
use super::pack::{self, Batch};
use super::parallel::{Comm, Layout, Offload, Parallel, ParallelConfig, ShardMode};
use crate::error::{Error, IoContext, Result};
use distill_models::checkpoint::SaveDtype;
use distill_models::device::{CpuDevice, DeviceKind};
use distill_models::hf::{self, Assets, ExportOptions};
use distill_models::model::{CausalLm, ParamMut};
use distill_models::rope::Rope;
use distill_models::tokenizer::TextTokenizer;

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
    /// Stop once the optimizer steps have run this many seconds, at the step count nearest to it
    /// (the steps' own time: loading, evaluation and export do not count; `max_steps`/`epochs`
    /// still cap the run). The SFT arm of an equal-time comparison uses it (`[on_policy] compare`).
    #[serde(default)]
    pub max_step_seconds: Option<f64>,
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
    #[serde(default)]
    pub device: DeviceKind,
    /// Compute precision: `f32`, `bf16` (weights cast to bf16 for each forward, master weights,
    /// gradients and AdamW state stay f32; norms, softmax, attention math and the loss run in f32),
    /// or `auto` (the default): bf16 on CUDA, f32 on CPU.
    #[serde(default)]
    pub compute_dtype: ComputeDtype,
    /// Peak device throughput for the MFU estimate, TFLOP/s (default: a CPU estimate).
    #[serde(default)]
    pub peak_tflops: Option<f64>,
    /// Memory of one device, GB. Training refuses to start when the estimate exceeds it
    /// (default: this machine's RAM on CPU; required to check a GPU).
    #[serde(default)]
    pub device_memory_gb: Option<f64>,
    #[serde(default)]
    pub export: ExportConfig,
    /// Data parallelism over several devices, and how state is sharded across them.
    #[serde(default)]
    pub parallel: ParallelConfig,
    /// DeepSeek-V3's auxiliary-loss-free load balancing: after each step every expert's
    /// `e_score_correction_bias` moves by this much toward balance (V3's pre-training used
    /// 0.001). 0 (the default) keeps the router's bias as the checkpoint has it, which is what
    /// fine-tuning a released model wants. Models without the bias ignore it.
    #[serde(default)]
    pub moe_bias_update: f64,
    /// On-policy distillation instead of SFT (`crate::onpolicy`): the student samples, the
    /// teacher scores, a divergence is minimised; `[train.data]` feeds the SFT share.
    #[serde(default)]
    pub on_policy: Option<crate::onpolicy::OnPolicyConfig>,
}

/// `[train] compute_dtype`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDtype {
    /// bf16 on CUDA, f32 on CPU.
    #[default]
    Auto,
    F32,
    Bf16,
}

/// `[train.export] dtype`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportDtype {
    /// Half the size; what the R1-Distill releases ship.
    #[default]
    Bf16,
    F32,
}

impl ExportDtype {
    pub fn save(self) -> SaveDtype {
        match self {
            ExportDtype::Bf16 => SaveDtype::Bf16,
            ExportDtype::F32 => SaveDtype::F32,
        }
    }
}

/// `[train.export]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    /// `bf16` or `f32`.
    pub dtype: ExportDtype,
    pub max_shard_gb: f64,
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig { dtype: ExportDtype::Bf16, max_shard_gb: 5.0 }
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

/// The largest micro-batch, accumulation and sequences per optimizer step a recipe may ask for.
pub const MAX_MICRO_BATCH: usize = 1 << 16;
pub const MAX_GRAD_ACCUM: usize = 1 << 16;
pub const MAX_STEP_SEQUENCES: usize = 1 << 20;

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        // A purely on-policy run (lambda = 1) reads no corpus.
        match &self.on_policy {
            Some(op) => {
                op.validate()?;
                if op.lambda < 1.0 {
                    self.data.validate()?;
                }
            }
            None => self.data.validate()?,
        }
        self.optim.validate()?;
        self.parallel.validate()?;
        let bad = |m: &str| Err(Error::Invalid(format!("[train] {m}")));
        if self.micro_batch == 0 || self.grad_accum == 0 {
            return bad("micro_batch and grad_accum must be at least 1");
        }
        // Bounds no run comes near (R1's distillation used 128 sequences a step), so a mistyped
        // `--set` cannot reserve memory for billions of sequences or stall on one step.
        if self.micro_batch > MAX_MICRO_BATCH
            || self.grad_accum > MAX_GRAD_ACCUM
            || self.micro_batch.saturating_mul(self.grad_accum) > MAX_STEP_SEQUENCES
        {
            return Err(Error::Invalid(format!(
                "[train] micro_batch {} × grad_accum {} is beyond any run (micro_batch ≤ {MAX_MICRO_BATCH}, grad_accum ≤ {MAX_GRAD_ACCUM}, their product ≤ {MAX_STEP_SEQUENCES} sequences a step)",
                self.micro_batch, self.grad_accum
            )));
        }
        if self.epochs == 0 && self.max_steps.is_none() {
            return bad("set epochs ≥ 1 or max_steps");
        }
        if self.max_steps == Some(0) {
            return bad("max_steps = 0 trains nothing; set it to 1 or more");
        }
        if !(0.0..=1.0).contains(&self.kd_weight) {
            return bad("kd_weight must be in [0, 1]");
        }
        if !(self.moe_bias_update.is_finite() && self.moe_bias_update >= 0.0) {
            return bad("moe_bias_update must be a non-negative number");
        }
        if self.moe_bias_update > 0.0
            && self.parallel.shard == super::parallel::ShardMode::Parameters
        {
            return bad(
                "moe_bias_update is not supported with parameter sharding yet (shard = \"parameters\")",
            );
        }
        if self.max_step_seconds.is_some_and(|s| !(s.is_finite() && s > 0.0)) {
            return bad("max_step_seconds must be a positive number of seconds");
        }
        if self.max_step_seconds.is_some() && self.on_policy.is_some() {
            return bad("max_step_seconds applies to SFT runs; an on-policy run counts max_steps");
        }
        Ok(())
    }

    /// The compute dtype `auto` resolves to: bf16 on CUDA, f32 on CPU.
    pub fn compute(&self) -> DType {
        match self.compute_dtype {
            ComputeDtype::Bf16 => DType::BF16,
            ComputeDtype::Auto if self.on_cuda() => DType::BF16,
            ComputeDtype::Auto | ComputeDtype::F32 => DType::F32,
        }
    }

    /// The devices of this node, one rank each: `[train.parallel] devices`, else `[train] device`.
    pub fn device_kinds(&self) -> Result<Vec<DeviceKind>> {
        match &self.parallel.devices {
            Some(d) => distill_models::device::parse_devices(d)
                .map_err(|e| Error::Invalid(format!("[train.parallel] devices: {e}"))),
            None => Ok(vec![self.device]),
        }
    }

    /// CUDA (bf16 by default); wgpu has no bf16 (WGSL), so `auto` stays f32 there.
    pub fn on_cuda(&self) -> bool {
        self.device_kinds()
            .is_ok_and(|k| matches!(k.first(), Some(distill_models::device::DeviceKind::Cuda(_))))
    }
}

/// Casts every float parameter to the compute dtype. Under autodiff the cast is part of the graph,
/// so gradients reach the f32 master weights (the cast's backward casts them back to f32).
pub struct CastParams(pub DType);

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
    /// Wall-clock seconds of this step (for an on-policy step: sampling and scoring included).
    pub step_s: f64,
    /// Ranks (devices) in the run.
    pub world: usize,
    /// Seconds of the step spent in collectives (gradient reduction, weight gathering).
    pub comm_s: f64,
    /// Under offload: seconds spent moving slices between device and host and in the host's
    /// AdamW.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offload_s: Option<f64>,
    /// Mixture of Experts: how evenly the step's tokens spread over the experts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moe_load: Option<MoeLoad>,
    /// The process's peak resident memory so far (Linux VmHWM), MB: host memory on CPU, the
    /// host's share under CUDA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_peak_rss_mb: Option<f64>,
}

/// The process's peak resident memory so far (`VmHWM` in /proc/self/status), MB; None off Linux.
pub fn host_peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 =
        s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Expert load balance of one step, over every sparse layer (all ranks' tokens).
#[derive(Debug, Clone, Serialize)]
pub struct MoeLoad {
    /// The busiest expert's tokens over the mean, worst layer (1 = perfectly even).
    pub max_over_mean: f64,
    /// The coefficient of variation of tokens per expert, averaged over layers.
    pub cv: f64,
    /// Experts that got no token, summed over layers.
    pub idle_experts: usize,
}

impl MoeLoad {
    /// From the tokens per expert of each sparse layer.
    pub fn of(layers: &[Vec<f64>]) -> MoeLoad {
        let (mut max_over_mean, mut cv, mut idle) = (0.0f64, 0.0, 0);
        for l in layers {
            let n = l.len().max(1) as f64;
            let mean = l.iter().sum::<f64>() / n;
            if mean > 0.0 {
                let max = l.iter().copied().fold(0.0, f64::max);
                max_over_mean = max_over_mean.max(max / mean);
                let var = l.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
                cv += var.sqrt() / mean;
            }
            idle += l.iter().filter(|&&x| x == 0.0).count();
        }
        MoeLoad { max_over_mean, cv: cv / layers.len().max(1) as f64, idle_experts: idle }
    }
}

pub struct Summary {
    pub steps: u64,
    pub final_eval_loss: Option<f64>,
    pub first_eval_loss: Option<f64>,
    pub export_dir: PathBuf,
    pub data: DataReport,
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

fn flatten<B: Backend>(p: &ParamMut<'_, B>) -> (Tensor<B, 1>, Vec<usize>) {
    match p {
        ParamMut::Vector(p) => (p.val(), p.val().dims().to_vec()),
        ParamMut::Matrix(p) => {
            let d = p.val().dims();
            (p.val().reshape([d[0] * d[1]]), d.to_vec())
        }
    }
}

/// Everything the ranks share: the resolved config and the data, loaded once.
struct Shared<'a> {
    cfg: &'a TrainConfig,
    recipe: serde_json::Value,
    train_ex: Arc<Vec<data::Example>>,
    eval_ex: Vec<data::Example>,
    rows: Vec<Vec<usize>>,
    eval_rows: Vec<Vec<usize>>,
    total: u64,
    pad: u32,
    report: DataReport,
    resume: bool,
}

struct Quiet;
impl Observer for Quiet {}

/// Train per the config, one rank per device in `devices` (data parallel when there are
/// several). With `resume`, continue from the newest complete checkpoint.
pub fn train<B: AutodiffBackend>(
    cfg: &TrainConfig,
    recipe: serde_json::Value,
    devices: Vec<B::Device>,
    resume: bool,
    obs: &mut dyn Observer,
) -> Result<Summary> {
    cfg.validate()?;
    if devices.is_empty() {
        return Err(Error::Invalid("[train] no device to train on".into()));
    }
    let nodes = cfg.parallel.node_spec()?;
    let world = devices.len() * nodes.as_ref().map_or(1, |n| n.count);
    let tok = TextTokenizer::from_dir(&cfg.model)?;
    check_template_tokens(&tok)?;
    let (mut train_ex, mut eval_ex, report) = data::load(&cfg.data, &tok)?;
    if cfg.kd_weight == 0.0 {
        // No logit distillation: do not carry the teacher's top-k through the batches.
        train_ex.iter_mut().chain(eval_ex.iter_mut()).for_each(|e| e.kd = None);
    }
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
    let pad = pad_id(&tok);

    let ckpt_root = cfg.output.join("checkpoints");
    std::fs::create_dir_all(&cfg.output).at(&cfg.output)?;
    resume_from(&ckpt_root, resume)?;
    // The plan must fit before any rank loads anything.
    let config = distill_models::ModelConfig::from_file(&cfg.model.join("config.json"))?;
    let plan = super::plan::MemoryPlan::for_run(&config, cfg, world);
    // CPU peers share the machine's memory.
    let have = cfg.device_memory_gb.unwrap_or_else(|| {
        machine_memory_gb() / if cfg.on_cuda() { 1.0 } else { devices.len() as f64 }
    });
    if plan.total_gb() > have {
        return Err(Error::Invalid(format!(
            "this run needs about {:.0} GB per rank but a device has {have:.0} GB:\n{}\nlower max_seq_len or micro_batch, turn on activation_checkpointing, add devices, or shard more ([train.parallel] shard = \"optimizer\", \"gradients\" or \"parameters\"); `distill plan` shows every mode",
            plan.total_gb(),
            plan.table()
        )));
    }

    // Offloaded state lives in this node's host memory, for every rank the node runs (on CPU
    // peers the devices' own share comes out of the same memory).
    if plan.offload {
        let local = devices.len() as f64;
        let need = (plan.host_gb() + if cfg.on_cuda() { 0.0 } else { plan.total_gb() }) * local;
        let host = cfg.parallel.host_memory_gb.unwrap_or_else(machine_memory_gb);
        if need > host {
            let parts: Vec<String> = plan
                .host_parts()
                .iter()
                .map(|(name, b)| format!("{name} {:.2} GB", b / 1e9))
                .collect();
            return Err(Error::Invalid(format!(
                "offload = \"cpu\" needs about {need:.1} GB of host memory on this node but it has {host:.1} GB ([train.parallel] host_memory_gb, default: this machine's RAM): {} rank(s) × {:.2} GB of offloaded state ({}){}; add devices or nodes so each rank's share shrinks, or turn offload off if the devices can hold it (`distill plan` shows every mode)",
                devices.len(),
                plan.host_gb(),
                parts.join(", "),
                if cfg.on_cuda() {
                    String::new()
                } else {
                    format!(", plus {:.2} GB per CPU peer for the step itself", plan.total_gb())
                }
            )));
        }
    }

    let shared = Shared {
        cfg,
        recipe,
        train_ex: Arc::new(train_ex),
        eval_ex,
        rows,
        eval_rows,
        total,
        pad,
        report,
        resume,
    };
    super::parallel::launch::<B::InnerBackend, Summary>(
        devices,
        nodes.as_ref(),
        |comm, device| run_rank::<B>(&shared, comm, device, obs),
        |comm, device| run_rank::<B>(&shared, comm, device, &mut Quiet),
    )
}

fn run_rank<B: AutodiffBackend>(
    sh: &Shared<'_>,
    comm: Comm<B::InnerBackend>,
    device: B::Device,
    obs: &mut dyn Observer,
) -> Result<Summary> {
    let cfg = sh.cfg;
    let (rank, world) = (comm.rank, comm.world);
    let lead = rank == 0;
    let seq = cfg.data.max_seq_len;
    let total = sh.total;
    let ckpt_root = cfg.output.join("checkpoints");
    let resume_dir =
        if sh.resume { checkpoint::list(&ckpt_root)?.pop().map(|(_, d)| d) } else { None };
    // Where the weights come from: the student, or the checkpoint to resume.
    let (mut state, weights_dir) = match &resume_dir {
        Some(dir) => (checkpoint::load_state(dir)?, dir.clone()),
        None => (RunState::fresh(sh.recipe.clone()), cfg.model.clone()),
    };
    let unusable = |e: distill_models::Error| match &resume_dir {
        Some(dir) => Error::Invalid(format!("checkpoint {} is unusable: {e}", dir.display())),
        None => e.into(),
    };
    let config = distill_models::ModelConfig::from_file(&weights_dir.join("config.json"))
        .map_err(unusable)?;
    // The flat layout comes from the parameter spec (the order `params_mut` walks).
    let sizes: Vec<(String, usize)> = distill_models::spec::param_specs(&config)
        .into_iter()
        .map(|s| (s.name, s.shape.iter().product()))
        .collect();
    let layout = Layout::new(&sizes, world, (cfg.parallel.bucket_mb * 1e6) as usize);
    let par = Parallel { comm, mode: cfg.parallel.shard, layout };
    // Under `parameters`, each rank reads only its slices; otherwise every rank the whole model.
    // At world size 1 there is nothing to shard: `parameters` runs as `none`, except that
    // activation checkpointing there runs the same unit-by-unit schedule (every unit owned whole),
    // which recomputes each layer from its input: burn's own checkpointing of the whole graph
    // (op-level, it keeps every matmul output) saved 7% of the memory where this saves the
    // activations (docs/benchmarks.md, "Parameter sharding").
    let offload = cfg.parallel.offload == Offload::Cpu;
    let units =
        uses_units(cfg.parallel.shard, world, cfg.activation_checkpointing, cfg.parallel.offload);
    let mut student: Student<B> = if units {
        let ckpt = distill_models::checkpoint::Checkpoint::open(&weights_dir).map_err(unusable)?;
        let mut src = distill_models::weights::CheckpointSource::new(&ckpt);
        let opts = FsdpOptions {
            recompute: cfg.activation_checkpointing,
            prefetch: cfg.parallel.prefetch,
            offload,
            compute: cfg.compute(),
        };
        let f = Fsdp::load(&config, &mut src, &par, &device, opts).map_err(|e| match e {
            Error::Model(m) => unusable(m),
            e => e,
        })?;
        Student::Sharded(Box::new(f))
    } else {
        let loaded = hf::load_model::<B>(&weights_dir, &device).map_err(unusable)?;
        Student::Whole(Box::new(loaded.model))
    };
    // AdamW's moments: on the device, or under offload on the host beside the f32 master (the
    // device's optimizer then stays empty).
    let mut opt = match (&resume_dir, offload) {
        (Some(dir), false) => {
            checkpoint::load_optimizer(dir, cfg.optim.clone(), state.step, &par, &device)?
        }
        _ => AdamW::<B::InnerBackend>::new(cfg.optim.clone()),
    };
    if let Student::Sharded(f) = &mut student
        && let Some(h) = f.host.as_mut()
    {
        h.opt = match &resume_dir {
            Some(dir) => checkpoint::load_optimizer(
                dir,
                cfg.optim.clone(),
                state.step,
                &par,
                &CpuDevice::default(),
            )?,
            None => AdamW::new(cfg.optim.clone()),
        };
    }
    let rope = Rope::<B>::new(&config, &device);
    let n_params = par.layout.total;
    let peak = cfg.peak_tflops.unwrap_or_else(cpu_peak_tflops) * 1e12 * world as f64;

    // metrics.jsonl (rank 0): keep exactly the lines up to the resumed step, so a resumed run's
    // file equals an uninterrupted one.
    let metrics_path = cfg.output.join("metrics.jsonl");
    let mut metrics = if lead { Some(reopen_metrics(&metrics_path, state.step)?) } else { None };
    fn log(
        metrics: &mut Option<std::fs::File>,
        path: &Path,
        line: serde_json::Value,
    ) -> Result<()> {
        if let Some(f) = metrics.as_mut() {
            writeln!(f, "{line}").at(path)?;
            f.flush().at(path)?;
        }
        Ok(())
    }
    if lead {
        obs.started(total, state.step, &sh.report);
    }

    // Held-out loss: eval rows are split over the ranks, the sums reduced.
    let eval_loss = |student: &Student<B>| -> Result<Option<f64>> {
        if sh.eval_rows.is_empty() {
            return Ok(None);
        }
        let rope = Rope::<B::InnerBackend>::new(&config, &device);
        let (mut sum, mut n) = (0.0, 0usize);
        match student {
            Student::Whole(model) => {
                let inner = model.valid();
                for (c, chunk) in sh.eval_rows.chunks(cfg.micro_batch.max(1)).enumerate() {
                    if c % world != rank {
                        continue;
                    }
                    let b = pack::build(&sh.eval_ex, chunk, seq, sh.pad);
                    let l = losses(&inner, &rope, &b, &device);
                    sum += l.ce.into_scalar().elem::<f64>();
                    n += l.tokens;
                }
            }
            Student::Sharded(f) => {
                // Every rank joins every gather: all chunks are built, each rank runs its own.
                let chunks: Vec<Batch> = sh
                    .eval_rows
                    .chunks(cfg.micro_batch.max(1))
                    .map(|chunk| pack::build(&sh.eval_ex, chunk, seq, sh.pad))
                    .collect();
                (sum, n) = super::fsdp::eval_sums(f, &rope, &chunks, &device, &par)?;
            }
        }
        let r = par.comm.sum(&[sum, n as f64], &device)?;
        Ok((r[1] > 0.0).then(|| r[0] / r[1]))
    };
    let first_eval = if state.step == 0 { eval_loss(&student)? } else { None };
    if let Some(l) = first_eval {
        log(&mut metrics, &metrics_path, json!({"step": 0, "eval_loss": l}))?;
        if lead {
            obs.eval(0, l);
        }
    }

    let rows = &sh.rows;
    let mut order = pack::shuffled(rows.len(), cfg.data.seed, state.epoch);
    let t_run = Instant::now();
    let elapsed0 = state.elapsed_s;
    let mut last_eval = None;
    let fault = injected_fault();
    // Seconds spent in this invocation's optimizer steps, and how many ran (the time budget).
    let (mut steps_s, mut steps_here) = (0.0f64, 0u64);
    while state.step < total {
        if let Some(budget) = cfg.max_step_seconds
            && steps_here > 0
        {
            // Run the next step only if that ends nearer the budget than stopping now. Ranks
            // agree on rank 0's clock.
            let mean = steps_s / steps_here as f64;
            let spent = elapsed0 + steps_s;
            let stop = rank == 0 && spent + mean / 2.0 > budget;
            if par.comm.sum(&[if stop { 1.0 } else { 0.0 }], &device)?[0] > 0.0 {
                break;
            }
        }
        if fault == Some((rank, state.step + 1)) {
            panic!(
                "injected fault (DISTILL_FAULT_INJECT) on rank {rank} at step {}",
                state.step + 1
            );
        }
        let t0 = Instant::now();
        // The rows of this global batch, in micro-batches; every rank builds the same list and
        // computes only its own (micro-batch i on rank i mod world).
        let micro = next_global_batch(cfg, &mut state, &mut order, rows, &sh.train_ex, sh.pad);
        let seen: u64 = micro.iter().map(|b| b.real_tokens as u64).sum();
        let lr = cfg.optim.lr_at(state.step, total);
        let spec = StepSpec {
            kd_weight: cfg.kd_weight,
            max_grad_norm: cfg.optim.max_grad_norm,
            lr,
            compute: cfg.compute(),
            objective: None,
        };
        let mut moe_load = None;
        let out = match &mut student {
            Student::Whole(model) => {
                let sparse = sparse_layers(model);
                if !sparse.is_empty() {
                    distill_models::model::routing_load::start();
                }
                let out =
                    parallel_step(model, &rope, &mut opt, &micro, &spec, &device, &par, false)?;
                if !sparse.is_empty() {
                    moe_load =
                        Some(balance_experts(model, &sparse, cfg.moe_bias_update, &par, &device)?);
                }
                out
            }
            Student::Sharded(f) => {
                super::fsdp::fsdp_step(f, &rope, &mut opt, &micro, &spec, &device, &par)?
            }
        };
        let (loss, ce, kd, grad_norm, n_tokens) =
            (out.loss, out.ce, out.kd, out.grad_norm, out.tokens);
        if !loss.is_finite() || !grad_norm.is_finite() {
            let last = checkpoint::list(&ckpt_root)?
                .pop()
                .map_or("none".to_string(), |(_, d)| d.display().to_string());
            return Err(Error::Invalid(format!(
                "non-finite {} at step {} (loss {loss}, grad norm {grad_norm}); stopped without saving. Last good checkpoint: {last}",
                if loss.is_finite() { "gradient" } else { "loss" },
                state.step + 1
            )));
        }
        state.step += 1;
        state.tokens_seen += seen;
        let secs = t0.elapsed().as_secs_f64();
        steps_s += secs;
        steps_here += 1;
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
            step_s: secs,
            world,
            comm_s: out.comm_s,
            offload_s: offload.then_some(out.offload_s),
            moe_load,
            host_peak_rss_mb: host_peak_rss_mb(),
        };
        log(&mut metrics, &metrics_path, serde_json::to_value(&m).expect("json"))?;
        if lead {
            obs.step(&m);
        }
        if cfg.eval_every > 0
            && state.step % cfg.eval_every == 0
            && state.step < total
            && let Some(l) = eval_loss(&student)?
        {
            log(&mut metrics, &metrics_path, json!({"step": state.step, "eval_loss": l}))?;
            if lead {
                obs.eval(state.step, l);
            }
        }
        if cfg.save_every > 0 && state.step % cfg.save_every == 0 && state.step < total {
            if let Some(f) = metrics.as_mut() {
                f.sync_all().at(&metrics_path)?;
            }
            state.elapsed_s = elapsed0 + t_run.elapsed().as_secs_f64();
            let dir = checkpoint::save(
                &ckpt_root,
                &student.consolidate(&par, &device)?,
                &config,
                &student.moments(&opt),
                &state,
                cfg.keep_checkpoints,
                &par,
                &device,
            )?;
            if lead {
                obs.saved(&dir);
            }
        }
    }
    if let Some(l) = eval_loss(&student)? {
        log(&mut metrics, &metrics_path, json!({"step": state.step, "eval_loss": l}))?;
        if lead {
            obs.eval(state.step, l);
        }
        last_eval = Some(l);
    }
    if let Some(f) = metrics.as_mut() {
        f.sync_all().at(&metrics_path)?;
    }
    state.elapsed_s = elapsed0 + t_run.elapsed().as_secs_f64();
    let weights = student.consolidate(&par, &device)?;
    let dir = checkpoint::save(
        &ckpt_root,
        &weights,
        &config,
        &student.moments(&opt),
        &state,
        cfg.keep_checkpoints,
        &par,
        &device,
    )?;
    if lead {
        obs.saved(&dir);
    }

    // Export (rank 0: the weights are the same on every rank), recording what the model was
    // distilled from.
    let export_dir = cfg.output.join("export");
    let exported = if lead {
        export(cfg, &sh.recipe, &sh.report, &weights, &config, &state, &export_dir)
    } else {
        Ok(())
    };
    let ok = par.comm.agree(exported.is_ok(), &device)?;
    exported?;
    if !ok {
        return Err(Error::Collective { rank, msg: "rank 0 failed to export".into() });
    }
    Ok(Summary {
        steps: state.step,
        final_eval_loss: last_eval,
        first_eval_loss: first_eval,
        export_dir,
        data: sh.report.clone(),
    })
}

/// The sparse layers of a model and their expert counts.
fn sparse_layers<B: Backend>(model: &CausalLm<B>) -> Vec<(usize, usize)> {
    model
        .model
        .layers
        .iter()
        .enumerate()
        .filter_map(|(i, l)| match &l.mlp {
            distill_models::model::FeedForward::Sparse(m) => Some((i, m.experts.len())),
            distill_models::model::FeedForward::Dense(_) => None,
        })
        .collect()
}

/// The step's expert load (this rank's routing, summed over ranks in a fixed layout so every
/// rank agrees), and with `rate > 0` DeepSeek-V3's bias update on every rank alike.
fn balance_experts<B: AutodiffBackend>(
    model: &mut CausalLm<B>,
    sparse: &[(usize, usize)],
    rate: f64,
    par: &Parallel<B::InnerBackend>,
    device: &B::Device,
) -> Result<MoeLoad> {
    let recorded = distill_models::model::routing_load::take().unwrap_or_default();
    let mut flat = Vec::new();
    for &(layer, experts) in sparse {
        let l = recorded.get(&layer);
        flat.extend((0..experts).map(|e| l.and_then(|v| v.get(e)).copied().unwrap_or(0) as f64));
    }
    let flat = if par.world() > 1 { par.comm.sum(&flat, device)? } else { flat };
    let mut at = 0;
    let per_layer: Vec<Vec<f64>> = sparse
        .iter()
        .map(|&(_, experts)| {
            at += experts;
            flat[at - experts..at].to_vec()
        })
        .collect();
    if rate > 0.0 {
        for (&(layer, _), load) in sparse.iter().zip(&per_layer) {
            if let distill_models::model::FeedForward::Sparse(m) =
                &mut model.model.layers[layer].mlp
            {
                m.update_bias(load, rate);
            }
        }
    }
    Ok(MoeLoad::of(&per_layer))
}

/// The id that pads batches: the tokenizer's pad token, else its EOS, else 0.
pub fn pad_id(tok: &TextTokenizer) -> u32 {
    tok.pad_token
        .as_deref()
        .and_then(|p| tok.token_id(p))
        .or_else(|| tok.eos_token.as_deref().and_then(|e| tok.token_id(e)))
        .unwrap_or(0)
}

/// The newest checkpoint under `root` to resume from (`resume`), or `None` for a fresh run;
/// refuses `--resume` without a checkpoint and a fresh run over existing ones.
pub fn resume_from(root: &Path, resume: bool) -> Result<Option<PathBuf>> {
    let mut existing = checkpoint::list(root)?;
    match (resume, existing.is_empty()) {
        (true, true) => {
            Err(Error::Invalid(format!("--resume: no checkpoint under {}", root.display())))
        }
        (false, false) => Err(Error::Invalid(format!(
            "{} already holds checkpoints; pass --resume to continue the run, or choose another output",
            root.display()
        ))),
        (true, false) => Ok(existing.pop().map(|(_, d)| d)),
        (false, true) => Ok(None),
    }
}

/// metrics.jsonl reopened with exactly its lines up to `step`, so a resumed run's file equals
/// an uninterrupted one's.
pub fn reopen_metrics(path: &Path, step: u64) -> Result<std::fs::File> {
    let kept: Vec<String> = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .map(str::to_string)
        .collect();
    let mut f = std::fs::File::create(path).at(path)?;
    for l in &kept {
        writeln!(f, "{l}").at(path)?;
    }
    Ok(f)
}

/// The next global batch of SFT rows as `grad_accum` micro-batches, walking the epoch's shuffled
/// `order` (reshuffled at each new epoch) from `state`'s position.
pub fn next_global_batch(
    cfg: &TrainConfig,
    state: &mut RunState,
    order: &mut Vec<usize>,
    rows: &[Vec<usize>],
    examples: &[data::Example],
    pad: u32,
) -> Vec<Batch> {
    let seq = cfg.data.max_seq_len;
    let mut micro = Vec::with_capacity(cfg.grad_accum.min(1024));
    for _ in 0..cfg.grad_accum {
        let mut chosen = Vec::with_capacity(cfg.micro_batch.min(1024));
        while chosen.len() < cfg.micro_batch {
            if state.epoch_row as usize >= order.len() {
                state.epoch += 1;
                state.epoch_row = 0;
                *order = pack::shuffled(rows.len(), cfg.data.seed, state.epoch);
            }
            chosen.push(rows[order[state.epoch_row as usize]].clone());
            state.epoch_row += 1;
        }
        let len = if cfg.data.packing {
            seq
        } else {
            chosen.iter().map(|r| examples[r[0]].ids.len()).max().unwrap_or(1)
        };
        micro.push(pack::build(examples, &chosen, len, pad));
    }
    micro
}

pub(crate) fn export(
    cfg: &TrainConfig,
    recipe: &serde_json::Value,
    report: &DataReport,
    weights: &[distill_models::weights::NamedTensor],
    config: &distill_models::ModelConfig,
    state: &RunState,
    export_dir: &Path,
) -> Result<()> {
    let mut assets = Assets::read(&cfg.model)?;
    let mut recipe = recipe.clone();
    distill_data::redact::redact_json(&mut recipe);
    let provenance = json!({"corpus_manifest_blake3": report.corpus_checksums, "corpora": cfg.data.corpus, "recipe": recipe, "steps": state.step, "base_model": cfg.model});
    if let Some(g) = assets.generation_config.as_mut() {
        g["distill"] = provenance.clone();
    }
    let metadata = std::collections::HashMap::from([
        ("distill.corpus_manifest_blake3".to_string(), report.corpus_checksums.join(",")),
        ("distill.recipe".to_string(), serde_json::to_string(&recipe).expect("json")),
    ]);
    let opts = ExportOptions {
        dtype: cfg.export.dtype.save(),
        max_shard_bytes: (cfg.export.max_shard_gb * 1e9) as u64,
        metadata,
        overwrite: true,
    };
    hf::write_dir(export_dir, weights, config, &assets, &opts)?;
    distill_data::fsutil::atomic_write(
        &export_dir.join("distill.json"),
        &serde_json::to_vec_pretty(&provenance).expect("json"),
    )?;
    Ok(())
}

/// `DISTILL_FAULT_INJECT=rank=R,step=S` makes rank R panic before step S: how the tests kill
/// one rank of a data-parallel run.
fn injected_fault() -> Option<(usize, u64)> {
    let v = std::env::var("DISTILL_FAULT_INJECT").ok()?;
    let mut rank = None;
    let mut step = None;
    for kv in v.split(',') {
        match kv.split_once('=') {
            Some(("rank", r)) => rank = r.trim().parse().ok(),
            Some(("step", s)) => step = s.trim().parse().ok(),
            _ => {}
        }
    }
    Some((rank?, step?))
}

/// Whether a run uses the unit-by-unit schedule ([`super::fsdp`]): parameter sharding on several
/// ranks, activation checkpointing on one, or offload at any world size.
pub fn uses_units(shard: ShardMode, world: usize, checkpointing: bool, offload: Offload) -> bool {
    (shard == ShardMode::Parameters && world > 1)
        || (world == 1 && checkpointing)
        || offload == Offload::Cpu
}

/// The student as a rank holds it: the whole model, or its shards under `parameters`.
enum Student<B: AutodiffBackend> {
    Whole(Box<CausalLm<B>>),
    Sharded(Box<Fsdp<B::InnerBackend>>),
}

impl<B: AutodiffBackend> Student<B> {
    /// The model in HF layout for a checkpoint or an export: on rank 0 (every rank must call it;
    /// under `parameters` it gathers), empty elsewhere.
    fn consolidate(
        &self,
        par: &Parallel<B::InnerBackend>,
        device: &B::Device,
    ) -> Result<Vec<distill_models::weights::NamedTensor>> {
        match self {
            Student::Whole(_) if par.rank() != 0 => Ok(vec![]),
            Student::Whole(model) => {
                let mut sink = distill_models::weights::Collect::default();
                model.export(&mut sink as &mut dyn distill_models::weights::WeightSink);
                Ok(sink.0)
            }
            Student::Sharded(f) => f.consolidate(par, device),
        }
    }

    /// This rank's AdamW moments for a checkpoint: `opt`'s, or under offload the host's.
    fn moments(&self, opt: &AdamW<B::InnerBackend>) -> Vec<distill_models::weights::NamedTensor> {
        match self {
            Student::Sharded(f) if f.host.is_some() => {
                checkpoint::moments_of(&f.host.as_ref().expect("matched").opt)
            }
            _ => checkpoint::moments_of(opt),
        }
    }
}

/// Names and element counts of the trainable parameters, in `params_mut` order.
pub fn param_sizes<B: Backend>(model: &mut CausalLm<B>) -> Vec<(String, usize)> {
    model
        .params_mut()
        .iter()
        .map(|(n, p)| (n.clone(), flatten(p).1.iter().product::<usize>()))
        .collect()
}

/// What an optimizer step needs besides the model, its optimizer and the batches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepSpec {
    /// Weight of the KL term against the teacher's top-k (0: cross-entropy only).
    pub kd_weight: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    pub max_grad_norm: f64,
    pub lr: f64,
    /// The forward/backward dtype.
    pub compute: DType,
    /// `None`: SFT (cross-entropy, plus the KD term by `kd_weight`); else an on-policy
    /// divergence to the teacher on the student's own samples (`crate::onpolicy`).
    pub objective: Option<crate::onpolicy::loss::Divergence>,
}

/// What one optimizer step did.
#[derive(Debug, Clone)]
pub struct StepOutcome {
    pub loss: f64,
    pub ce: f64,
    pub kd: Option<f64>,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Per-tensor gradient norms before and after clipping, by HF name (only when asked for, and
    /// only where a rank holds whole gradients).
    pub grad_norms: BTreeMap<String, f64>,
    pub clipped_grad_norms: BTreeMap<String, f64>,
    /// Loss tokens.
    pub tokens: usize,
    /// Seconds spent in collectives.
    pub comm_s: f64,
    /// Seconds spent on offload: gradient slices to the host, the host's update, slices back.
    pub offload_s: f64,
}

/// One optimizer step on one device (world size 1), with per-tensor gradient norms.
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
    let spec = StepSpec { kd_weight, max_grad_norm, lr, compute, objective: None };
    single_step(model, rope, opt, micro, &spec, device)
}

/// [`optimizer_step`] for any [`StepSpec`] (an on-policy objective, say).
pub fn single_step<B: AutodiffBackend>(
    model: &mut CausalLm<B>,
    rope: &Rope<B>,
    opt: &mut AdamW<B::InnerBackend>,
    micro: &[Batch],
    spec: &StepSpec,
    device: &B::Device,
) -> StepOutcome {
    let layout = Layout::new(&param_sizes(model), 1, usize::MAX);
    let par = Parallel { comm: Comm::single(), mode: ShardMode::None, layout };
    parallel_step(model, rope, opt, micro, spec, device, &par, true)
        .expect("world size 1 makes no collective call")
}

/// One optimizer step over the micro-batches of a global batch: each micro-batch's loss is scaled
/// by the token counts of the whole batch, gradients are summed (over micro-batches, then over
/// ranks), clipped by their global norm, and AdamW updates every parameter at `lr` — each rank
/// the part it owns under the shard mode. Every rank passes the same `micro` list; it computes
/// micro-batch i when i mod world is its rank (the others need only their token counts).
/// Parameters are left untouched if the loss or a gradient is not finite.
#[allow(clippy::too_many_arguments)]
pub fn parallel_step<B: AutodiffBackend>(
    model: &mut CausalLm<B>,
    rope: &Rope<B>,
    opt: &mut AdamW<B::InnerBackend>,
    micro: &[Batch],
    spec: &StepSpec,
    device: &B::Device,
    par: &Parallel<B::InnerBackend>,
    per_tensor_norms: bool,
) -> Result<StepOutcome> {
    let StepSpec { kd_weight, max_grad_norm, lr, compute, objective } = *spec;
    type G<B> = Option<Tensor<<B as AutodiffBackend>::InnerBackend, 1>>;
    let (rank, world) = (par.rank(), par.world());
    let n_tokens: usize = micro.iter().map(Batch::loss_tokens).sum();
    let n_kd: usize = micro.iter().map(|b| b.kd.len()).sum();
    let w = if n_kd > 0 { kd_weight } else { 0.0 };
    let np = par.layout.slots.len();
    let mut comm_s = 0.0;
    let mut acc: Vec<G<B>> = vec![None; np];
    let (mut ce_total, mut kd_total) = (0.0f64, 0.0f64);
    let add = |a: G<B>, b: G<B>| match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    };
    for round in 0..micro.len().div_ceil(world) {
        let mut g: Vec<G<B>> = vec![None; np];
        if let Some(b) = micro.get(round * world + rank) {
            // The forward runs on a copy whose weights are cast to the compute dtype (a no-op for
            // f32). The cast is made anew for each micro-batch: a backward pass consumes the graph
            // it belongs to, and a cast shared across micro-batches would pass no gradient to the
            // f32 masters after the first.
            let fwd = if compute == DType::F32 {
                model.clone()
            } else {
                model.clone().map(&mut CastParams(compute))
            };
            let l = match objective {
                None => losses(&fwd, rope, b, device),
                Some(d) => crate::onpolicy::loss::losses(&fwd, rope, b, device, d),
            };
            let loss = l.objective(w, n_tokens, n_kd, &mut ce_total, &mut kd_total);
            let grads = loss.backward();
            for (i, (_, p)) in model.params_mut().into_iter().enumerate() {
                // The gradient of the parameter tensor itself (a reshaped view would be a new
                // node). A parameter the step did not reach (an expert no token was routed to)
                // has a zero gradient, as in PyTorch: AdamW still decays it and ages its moments.
                g[i] = Some(match &p {
                    ParamMut::Vector(p) => p
                        .val()
                        .grad(&grads)
                        .unwrap_or_else(|| Tensor::zeros([p.val().dims()[0]], device)),
                    ParamMut::Matrix(p) => {
                        let [a, b] = p.val().dims();
                        p.val()
                            .grad(&grads)
                            .map_or_else(|| Tensor::zeros([a * b], device), |g| g.reshape([a * b]))
                    }
                });
            }
        }
        if par.replicated() || par.mode == ShardMode::Optimizer {
            acc = acc.into_iter().zip(g).map(|(a, b)| add(a, b)).collect();
        } else {
            let t = Instant::now();
            let s = par.reduce_scatter_grads(g, device)?;
            comm_s += t.elapsed().as_secs_f64();
            acc = acc.into_iter().zip(s).map(|(a, b)| add(a, b)).collect();
        }
    }
    let t = Instant::now();
    let sums = par.comm.sum(&[ce_total, kd_total], device)?;
    // Whole reduced gradients on every rank, except under `gradients` (owned ranges only).
    let whole = par.replicated() || par.mode == ShardMode::Optimizer;
    if whole {
        par.all_reduce_grads(&mut acc, device)?;
    }
    comm_s += t.elapsed().as_secs_f64();
    let (ce_total, kd_total) = if world == 1 { (ce_total, kd_total) } else { (sums[0], sums[1]) };
    let (loss, ce, kd) = mean_losses(ce_total, kd_total, n_tokens, n_kd, w);

    // Global norm: per-tensor sums of squares of what this rank holds, in parameter order, summed
    // over ranks when each holds a part.
    let held: Vec<(usize, Tensor<B::InnerBackend, 1>)> =
        acc.iter().enumerate().filter_map(|(i, g)| g.clone().map(|g| (i, g))).collect();
    let sq = sums_of_squares(held.iter().map(|(_, g)| g))?;
    let local: f64 = sq.iter().sum();
    let total_sq = if whole { local } else { par.comm.sum(&[local], device)?[0] };
    let grad_norm = total_sq.sqrt();
    let coef =
        if max_grad_norm > 0.0 { (max_grad_norm / (grad_norm + 1e-6)).min(1.0) } else { 1.0 };
    let name = |i: usize| par.layout.slots[i].name.clone();
    let want_norms = per_tensor_norms && whole;
    let grad_norms: BTreeMap<String, f64> = if want_norms {
        held.iter().zip(&sq).map(|((i, _), s)| (name(*i), s.sqrt())).collect()
    } else {
        BTreeMap::new()
    };
    if max_grad_norm > 0.0 {
        acc = acc.into_iter().map(|g| g.map(|g| g.mul_scalar(coef))).collect();
    }
    let norm = |t: &Tensor<B::InnerBackend, 1>| {
        t.clone().square().sum().into_scalar().elem::<f64>().sqrt()
    };
    let clipped_grad_norms = if want_norms {
        acc.iter().enumerate().filter_map(|(i, g)| g.as_ref().map(|g| (name(i), norm(g)))).collect()
    } else {
        BTreeMap::new()
    };
    let mut outcome = StepOutcome {
        loss,
        ce,
        kd,
        grad_norm,
        grad_norms,
        clipped_grad_norms,
        tokens: n_tokens,
        comm_s,
        offload_s: 0.0,
    };
    if whole && !par.replicated() {
        // ZeRO-1: keep the owned ranges for the update.
        acc = acc
            .into_iter()
            .enumerate()
            .map(|(i, g)| {
                g.and_then(|g| par.owned(i).map(|r| super::parallel::own_copy(g.slice(r))))
            })
            .collect();
    }
    if !loss.is_finite() || !grad_norm.is_finite() {
        return Ok(outcome);
    }

    // AdamW on what this rank owns.
    let mut own: Vec<G<B>> = vec![None; np];
    for (i, (name, p)) in model.params_mut().into_iter().enumerate() {
        let (Some(g), Some(r)) = (acc[i].take(), par.owned(i)) else { continue };
        let (t, _) = flatten(&p);
        let t = t.inner();
        let seg = if r.len() == par.layout.slots[i].numel { t } else { t.slice(r) };
        own[i] = Some(opt.update(&name, seg, g, lr));
    }
    let updated: Vec<G<B>> = if par.replicated() {
        own
    } else {
        let t = Instant::now();
        let all = par.all_gather_params(&own, device)?;
        outcome.comm_s += t.elapsed().as_secs_f64();
        all.into_iter().map(Some).collect()
    };
    for ((_, p), new) in model.params_mut().into_iter().zip(updated) {
        let Some(new) = new else { continue };
        match p {
            ParamMut::Vector(p) => *p = Param::from_tensor(Tensor::from_inner(new).require_grad()),
            ParamMut::Matrix(p) => {
                let [a, b] = p.val().dims();
                *p = Param::from_tensor(Tensor::from_inner(new.reshape([a, b])).require_grad())
            }
        }
    }
    opt.step += 1;
    Ok(outcome)
}

/// The step's mean losses from the micro-batches' sums: `(loss, ce, kd)`, with `w` the KD weight.
pub(crate) fn mean_losses(
    ce_total: f64,
    kd_total: f64,
    n_tokens: usize,
    n_kd: usize,
    w: f64,
) -> (f64, f64, Option<f64>) {
    let ce = ce_total / n_tokens.max(1) as f64;
    let kd = (n_kd > 0 && w > 0.0).then(|| kd_total / n_kd as f64);
    ((1.0 - w) * ce + w * kd.unwrap_or(0.0), ce, kd)
}

/// Per-tensor sums of squares in f64 (a sum over a shard and a sum over the whole tensor then
/// agree), read back in one transfer.
pub(crate) fn sums_of_squares<'a, B: Backend>(
    tensors: impl Iterator<Item = &'a Tensor<B, 1>>,
) -> Result<Vec<f64>> {
    let parts: Vec<Tensor<B, 1>> =
        tensors.map(|g| g.clone().cast(DType::F64).square().sum()).collect();
    if parts.is_empty() {
        return Ok(vec![]);
    }
    Tensor::cat(parts, 0)
        .into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .map_err(|e| Error::Invalid(format!("{e:?}")))
}

/// This machine's RAM, GB.
pub fn machine_memory_gb() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().next().and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::INFINITY, |kb| kb * 1024.0 / 1e9)
}

/// A nominal f32 peak for this CPU with the gemm kernel in use: threads × the clock /proc/cpuinfo
/// reports × the kernel's FLOP/cycle (64 for AVX-512 on 512-bit datapaths, 32 for AVX2 and for
/// AVX-512 on 256-bit units; `distill_models::cpu::nominal_peak_gflops`). Boost clocks run above
/// the reported clock, so MFU against it can exceed what the hardware's true peak would give.
pub fn cpu_peak_tflops() -> f64 {
    use distill_models::cpu;
    let id = cpu::CpuIdentity::detect();
    cpu::nominal_peak_gflops(&id, rayon::current_num_threads()) / 1e3
}
