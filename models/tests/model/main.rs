//! The models crate's tests, in one binary: most of them instantiate the same generic model code
//! for the same backends, and one binary compiles that once instead of once per file (each took
//! 120–170 s of a cold build on 2 cores; docs/benchmarks.md). `gguf_memory.rs` stays a binary of
//! its own: it installs a counting global allocator.

mod chat_templates;
mod checkpoints;
mod cubecl_attention;
mod flex_patch;
mod gemm_kernel;
mod generate;
mod gguf;
mod moe;
mod reference;
