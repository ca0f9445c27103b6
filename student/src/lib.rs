//! `distill-student`: the student's training. One loop ([`train::run`]) for every objective:
//! SFT and offline logit distillation on a trace corpus ([`sft`]), on-policy distillation
//! ([`onpolicy`]) and RL with verifiable rewards ([`grpo`]), each a [`train::BatchSource`]; packed batches ([`train::pack`]), the losses
//! ([`train::loss`], [`train::divergence`], [`lm_head_loss`]), AdamW ([`train::optim`]), data
//! parallelism and sharding ([`train::parallel`], [`train::fsdp`]), checkpoints
//! ([`train::checkpoint`]) and the memory planner ([`train::plan`]); and the student-teacher
//! agreement score ([`agreement`]). The models themselves live in `distill-models`.

pub mod agreement;
pub mod error;
pub mod grpo;
pub mod lm_head_loss;
pub mod onpolicy;
pub mod sft;
pub mod train;

pub use error::{Error, Result};
