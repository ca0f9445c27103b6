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
mod repair;
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
    /// Copy every readable record of a damaged corpus into a new one and report what was lost.
    Repair(repair::Args),
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
        CorpusCommand::Repair(a) => repair::run(a),
    }
}

/// `--skip-damaged` for the commands that read a whole corpus.
#[derive(Args, Debug, Clone, Copy)]
pub struct DamageArgs {
    /// Skip damaged frames, truncated tails and unreadable shards instead of stopping at the
    /// first one; what was skipped is reported on stderr (see also `corpus repair`).
    #[arg(long)]
    pub skip_damaged: bool,
}

impl DamageArgs {
    pub fn open(&self, dir: &std::path::Path) -> anyhow::Result<distill_data::Corpus> {
        use anyhow::Context;
        distill_data::Corpus::open_with(dir, self.skip_damaged)
            .with_context(|| format!("opening corpus {}", dir.display()))
    }
}

/// Tell the user on stderr what a skipping reader left out.
pub fn report_damage(c: &distill_data::Corpus) {
    let damage = c.damage();
    if damage.is_empty() {
        return;
    }
    let unknown = damage.iter().any(|d| d.lost_records.is_none());
    eprintln!(
        "warning: {}: skipped damage in {} places, {} records lost{}:",
        c.dir().display(),
        damage.len(),
        c.lost_records(),
        if unknown { " (plus an unknown number where the index is damaged too)" } else { "" }
    );
    for d in damage.iter().take(20) {
        let at = match d.frame {
            Some(f) => format!("{} frame {f}", d.shard),
            None => d.shard.clone(),
        };
        eprintln!("  {at}: {}", distill_data::corpus::verify::damage_message(d));
    }
    if damage.len() > 20 {
        eprintln!("  … and {} more (`distill corpus verify` lists all)", damage.len() - 20);
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

pub use crate::stages::provenance;
