//! Training on the student's own samples, in one binary: on-policy distillation ([`onpolicy`])
//! and GRPO ([`grpo`]). Each root test binary that builds or trains models compiles the same
//! generic model code again (120–170 s of a cold build on 2 cores, docs/benchmarks.md); one
//! binary compiles it once.

#[path = "../common/mod.rs"]
mod common;
mod grpo;
mod onpolicy;
