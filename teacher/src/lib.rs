//! `distill-teacher`: turning prompts into verified traces.
//!
//! [`backend`] talks to teachers (OpenAI-compatible servers, the local engine); [`verify`] judges
//! a sample (math answers, format, R1's filters) and is shared with eval; [`decontam`] removes
//! duplicate prompts and eval-set overlap; [`run`] is `distill generate`: rejection sampling into a
//! corpus, resumable after a crash.

pub mod backend;
pub mod decontam;
pub mod error;
pub mod eval;
pub mod run;
pub mod verify;

pub use error::{BackendError, Error, Result};
