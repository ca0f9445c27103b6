//! The one training loop and its layers, for every objective.
//!
//! One file per part: [`config`] (`[train]`), [`data`] (traces → examples), [`pack`] (examples →
//! rows → micro-batches), [`loss`] (cross-entropy and logit KD) and [`divergence`] (on-policy
//! divergences), [`policy`] (GRPO's clipped policy gradient), [`objective`] (which of them), [`optim`] (AdamW, schedule, clipping), [`step`] (one optimizer step),
//! [`parallel`] and [`fsdp`] (data parallelism and sharding around the model and the optimizer),
//! [`checkpoint`], [`plan`] (memory), [`metrics`], [`source`] (what an objective supplies) and
//! [`run`], the loop that strings them together. The objectives live beside it: `sft.rs`
//! (corpus rows) and `onpolicy/` (sample → score → batch).

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod divergence;
pub mod fsdp;
pub mod loss;
pub mod metrics;
pub mod objective;
pub mod optim;
pub mod pack;
pub mod parallel;
pub mod plan;
pub mod policy;
pub mod run;
pub mod source;
pub mod step;

pub use config::{ComputeDtype, ExportConfig, ExportDtype, TrainConfig};
pub use metrics::{
    MoeLoad, Observer, StepMetrics, Summary, cpu_peak_tflops, host_peak_rss_mb, machine_memory_gb,
};
pub use objective::Objective;
pub use run::uses_units;
pub use source::{BatchSource, StepBatch, StudentView};
pub use step::{
    CastParams, StepOutcome, StepSpec, optimizer_step, parallel_step, param_sizes, single_step,
};
