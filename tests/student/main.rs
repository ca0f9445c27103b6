//! The tests that build, train or run real models through the library, in one binary: SmolLM2
//! against transformers ([`smollm2`]), `distill train` end to end ([`train_cli`]), data-parallel
//! CPU peers ([`parallel`]), on-policy distillation ([`onpolicy`]) and GRPO ([`grpo`]). Each root
//! test binary that uses the library's models compiles the same generic model and training code
//! again (120–170 s each of a cold build on 2 cores, docs/benchmarks.md); one binary compiles it
//! once. The tests that only drive the CLI stay in their own small binaries.

#[path = "../common/mod.rs"]
mod common;
mod grpo;
mod onpolicy;
mod parallel;
mod smollm2;
mod train_cli;
