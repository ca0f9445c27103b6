//! One module per CLI command.

pub mod bench;
pub mod check_recipe;
pub mod corpus;
pub mod demo;
pub mod eval;
pub mod fetch;
pub mod generate;
pub mod generate_text;
pub mod import;
pub mod logits;
pub mod plan;
pub mod report;
pub mod run;
pub mod tokenize;
pub mod train;
