//! `distill corpus …`: one file per subcommand.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use distill_data::WriterOptions;

mod cat;
mod decontaminate;
mod export;
mod filter;
mod get;
mod import;
mod merge;
mod stats;
mod verify;

#[derive(Subcommand)]
pub enum CorpusCommand {
    /// Records, bytes, compression ratio, verdict pass rates and length histograms.
    Stats(stats::Args),
    /// Check checksums, frames and the manifest; report damage by shard and frame.
    Verify(verify::Args),
    /// Print records as JSONL.
    Cat(cat::Args),
    /// Print one record, by id or by index.
    Get(get::Args),
    /// Copy the records that pass a filter into another corpus.
    Filter(filter::Args),
    /// Append several corpora into one (first copy of an id wins).
    Merge(merge::Args),
    /// Write a corpus as a JSONL file (native records, or chat messages for other trainers).
    Export(export::Args),
    /// Drop traces whose prompt shares a word 8-gram with an eval set (Open-R1's rule).
    Decontaminate(decontaminate::Args),
    /// Import JSONL traces from elsewhere (native, chat messages or Open-R1 rows) into a corpus.
    Import(import::Args),
}

pub fn run(cmd: CorpusCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CorpusCommand::Stats(a) => stats::run(a),
        CorpusCommand::Verify(a) => verify::run(a),
        CorpusCommand::Cat(a) => cat::run(a),
        CorpusCommand::Get(a) => get::run(a),
        CorpusCommand::Filter(a) => filter::run(a),
        CorpusCommand::Merge(a) => merge::run(a),
        CorpusCommand::Export(a) => export::run(a),
        CorpusCommand::Import(a) => import::run(a),
        CorpusCommand::Decontaminate(a) => decontaminate::run(a),
    }
}

/// How a command writes a corpus.
#[derive(Args, Debug, Clone)]
pub struct WriteArgs {
    /// zstd level (1–19): higher is smaller and slower to write.
    #[arg(long, default_value_t = 3)]
    pub level: i32,
    /// Most records per zstd frame (the unit of random access).
    #[arg(long, default_value_t = 256)]
    pub frame_records: usize,
    /// Records per shard before it is finished.
    #[arg(long, default_value_t = 1 << 20)]
    pub shard_records: u64,
}

impl WriteArgs {
    pub fn options(&self, provenance: serde_json::Value) -> WriterOptions {
        WriterOptions {
            level: self.level,
            frame_records: self.frame_records,
            shard_records: self.shard_records,
            provenance,
            ..Default::default()
        }
    }
}

/// The command line, for shard provenance.
pub fn provenance() -> serde_json::Value {
    serde_json::json!({ "command": std::env::args().collect::<Vec<_>>().join(" ") })
}
