//! `distill-student`: the SFT stage. Trace data → packed batches ([`sft::data`], [`sft::pack`]) →
//! cross-entropy and logit distillation ([`sft::loss`], [`lm_head_loss`]) → AdamW ([`sft::optim`])
//! → the trainer ([`sft::train`]) with data parallelism ([`sft::parallel`]), checkpoints
//! ([`sft::checkpoint`]) and the memory planner ([`sft::plan`]); and the student-teacher
//! agreement score ([`agreement`]). The models themselves live in `distill-models`.

pub mod agreement;
pub mod error;
pub mod lm_head_loss;
pub mod onpolicy;
pub mod sft;

pub use error::{Error, Result};
