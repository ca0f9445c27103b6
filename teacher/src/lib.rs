//! `distill-teacher`: turning prompts into verified traces.
//!
//! [`verify`] judges a sample (math answers, format, R1's filters) and is shared with eval.

pub mod verify;
