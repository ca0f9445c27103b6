//! Helpers shared by the data crate's integration tests.
#![allow(dead_code)]

use distill_data::synth;
use distill_data::{CorpusWriter, Trace, WriterOptions};
use std::path::Path;

/// Small frames and shards so that a few hundred records span many of both.
pub fn small_opts() -> WriterOptions {
    WriterOptions {
        frame_records: 7,
        frame_bytes: 1 << 20,
        shard_records: 50,
        ..Default::default()
    }
}

pub fn write_synthetic(dir: &Path, n: u64, opts: WriterOptions) -> Vec<Trace> {
    let traces: Vec<Trace> = synth::traces(7, n, 1).collect();
    let mut w = CorpusWriter::open(dir, opts).unwrap();
    for t in &traces {
        w.append(t.clone()).unwrap();
    }
    w.commit().unwrap();
    traces
}
