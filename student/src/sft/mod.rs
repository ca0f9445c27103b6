//! The SFT stage: a trace corpus → batches → gradients → an exported student.
//!
//! One file per step of the data's way: [`data`] (traces → examples), [`pack`] (examples → rows →
//! micro-batches), [`loss`], [`optim`] (AdamW, schedule, clipping), [`checkpoint`], and [`train`],
//! the loop that strings them together.

pub mod checkpoint;
pub mod data;
pub mod fsdp;
pub mod loss;
pub mod optim;
pub mod pack;
pub mod parallel;
pub mod plan;
pub mod train;
