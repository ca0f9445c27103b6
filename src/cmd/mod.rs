//! One module per CLI command.

pub mod bench;
pub mod corpus;
pub mod demo;
