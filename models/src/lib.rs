//! `distill-models`: the models both stages use — the student being trained and the local
//! teacher generating traces.
//!
//! Config → init → forward: [`config::ModelConfig`] mirrors HF `config.json`; [`model::CausalLm`]
//! is Llama / Qwen2 / Qwen3 in burn, generic over the backend; [`hf`] loads and exports the Hugging
//! Face layout; [`gguf`] imports llama.cpp files; [`tokenizer`] wraps `tokenizer.json` and renders
//! chat templates; [`generate`] samples with a KV cache; [`device`] names the backends.

pub mod attention;
pub mod chat;
pub mod checkpoint;
pub mod config;
pub mod cpu;
pub mod device;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod hf;
pub mod kernels;
pub mod masks;
pub mod model;
pub mod prune;
pub mod rope;
pub mod score;
pub mod spec;
pub mod tokenizer;
pub mod weights;

pub use config::{Arch, ModelConfig};
pub use error::{Error, Result};
pub use model::CausalLm;
