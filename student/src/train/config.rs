//! `[train]`: the run's configuration, validated before anything loads.

use std::path::PathBuf;

use burn::tensor::DType;
use serde::{Deserialize, Serialize};

use super::data::DataConfig;
use super::optim::OptimConfig;
use super::parallel::ParallelConfig;
use crate::error::{Error, Result};
use distill_models::checkpoint::SaveDtype;
use distill_models::device::DeviceKind;

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
    /// still cap the run). The arms of the equal-time comparisons use it (`[on_policy] compare`,
    /// `[train.grpo] compare`).
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
    /// RL with verifiable rewards (GRPO, Dr. GRPO, DAPO) on the student's own rollouts.
    #[serde(default)]
    pub grpo: Option<crate::grpo::GrpoConfig>,
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
            None if self.grpo.is_some() => {}
            None => self.data.validate()?,
        }
        if let Some(g) = &self.grpo {
            g.validate()?;
            if self.on_policy.is_some() {
                return Err(Error::Config {
                    section: "train",
                    msg: "[train.grpo] and [train.on_policy] are two objectives: keep one".into(),
                });
            }
        }
        self.optim.validate()?;
        self.parallel.validate()?;
        let bad = |m: &str| Err(Error::Config { section: "train", msg: m.to_string() });
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
            Some(d) => distill_models::device::parse_devices(d).map_err(|e| Error::Config {
                section: "train.parallel",
                msg: format!("devices: {e}"),
            }),
            None => Ok(vec![self.device]),
        }
    }

    /// CUDA (bf16 by default); wgpu has no bf16 (WGSL), so `auto` stays f32 there.
    pub fn on_cuda(&self) -> bool {
        self.device_kinds()
            .is_ok_and(|k| matches!(k.first(), Some(distill_models::device::DeviceKind::Cuda(_))))
    }
}
