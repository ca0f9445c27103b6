//! `distill-data`: prompt datasets in, trace corpus out.
//!
//! The order of the modules is the order of the data: a JSONL prompt file is read into
//! [`Prompt`]s ([`prompts`]); the teacher turns each prompt into [`Trace`]s ([`record`]); traces
//! are appended to a compressed, crash-safe [`corpus`] that the SFT stage, eval and reports read.

pub mod columnar;
pub mod corpus;
pub mod endpoint;
pub mod error;
pub mod fsutil;
pub mod import;
pub mod logprobs;
pub mod prompts;
pub mod record;
pub mod redact;
pub mod synth;
#[doc(hidden)]
pub mod testing;
pub mod think;

pub use corpus::{Corpus, CorpusWriter, Damage, WriterOptions};
pub use error::{Error, Result};
pub use logprobs::TokenLogprobs;
pub use prompts::{FieldMap, Prompt, PromptReport};
pub use record::{
    EndpointKind, FinishReason, Message, Role, SCHEMA_VERSION, Sampling, Source, Teacher, Trace,
    Usage, Verdict,
};
