//! The student crate's tests, in one binary: each file instantiates the same generic model and
//! training code for the CPU autodiff backend, and one binary compiles that once instead of three
//! times (about 300 s of a cold build on 2 cores; docs/benchmarks.md).

mod grpo_loss;
mod onpolicy_loss;
mod packing;
mod train_step;
