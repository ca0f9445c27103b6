//! `corpus verify`: check every byte we can and report damage by shard and frame.

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

use super::manifest::{self, Manifest, ShardEntry};
use super::salvage::{self, Damage};
use super::shard::{self, ShardIndex};
use crate::error::Result;
use crate::record::Trace;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    pub shard: String,
    /// The damaged frame, when the damage can be pinned to one.
    pub frame: Option<usize>,
    pub msg: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub shards: u64,
    pub frames: u64,
    /// Records that decoded and parsed.
    pub records: u64,
    pub problems: Vec<Problem>,
    /// Files in the directory that the manifest does not name (crash leftovers; not damage).
    pub strays: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Verify a corpus. Only an unreadable manifest is an `Err`; all damage goes into the report.
pub fn verify(dir: &Path) -> Result<VerifyReport> {
    let (m, _) = Manifest::load(dir)?;
    let mut report = VerifyReport { shards: m.shards.len() as u64, ..Default::default() };
    let mut first_seen: HashMap<String, String> = HashMap::new();
    for entry in &m.shards {
        let ids = verify_shard(dir, entry, &mut report);
        for id in ids {
            if let Some(prev) = first_seen.insert(id.clone(), entry.file.clone()) {
                report.problems.push(Problem {
                    shard: entry.file.clone(),
                    frame: None,
                    msg: format!("record id '{id}' also appears in {prev}"),
                });
            }
        }
    }
    let named: std::collections::HashSet<&str> = m.shards.iter().map(|s| s.file.as_str()).collect();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if (super::writer::is_own_tmp(&n) || manifest::shard_number(&n).is_some())
                && !named.contains(n.as_str())
            {
                report.strays.push(n);
            }
        }
    }
    report.strays.sort();
    Ok(report)
}

/// Check one shard; returns the ids of the records that parsed.
fn verify_shard(dir: &Path, entry: &ShardEntry, report: &mut VerifyReport) -> Vec<String> {
    let name = entry.file.clone();
    let mut problem = |frame: Option<usize>, msg: String| {
        report.problems.push(Problem { shard: name.clone(), frame, msg })
    };
    let path = dir.join(&entry.file);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            problem(None, format!("cannot read {}: {e}", path.display()));
            return vec![];
        }
    };
    if bytes.len() as u64 != entry.compressed_bytes {
        problem(
            None,
            format!("file is {} bytes, the manifest says {}", bytes.len(), entry.compressed_bytes),
        );
    }
    if blake3::hash(&bytes).to_hex().as_str() != entry.blake3 {
        problem(None, "blake3 checksum differs from the manifest".into());
    }
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) => {
            problem(None, format!("cannot open: {e}"));
            return vec![];
        }
    };
    let index = match ShardIndex::read(&file, bytes.len() as u64, &entry.file) {
        Ok(ix) => ix,
        Err(e) => {
            // Walk the frames; what the damaged trailer still records names the lost frames.
            let found = salvage::salvage_bytes(&bytes, &file, &entry.file, e.to_string());
            for d in found.damage {
                problem(d.frame, damage_message(&d));
            }
            found.index
        }
    };
    if index.records() != entry.records || index.frames.len() as u64 != entry.frames {
        // Fewer frames than written (a truncated file): the first missing one is named.
        let first_missing =
            ((index.frames.len() as u64) < entry.frames).then_some(index.frames.len());
        problem(
            first_missing,
            format!(
                "index has {} records in {} frames, the manifest says {} in {}",
                index.records(),
                index.frames.len(),
                entry.records,
                entry.frames
            ),
        );
    }
    let mut ids = Vec::with_capacity(index.ids.len());
    for (fi, f) in index.frames.iter().enumerate() {
        report.frames += 1;
        let Some(cbytes) = bytes.get(f.offset as usize..(f.offset + f.compressed as u64) as usize)
        else {
            problem(Some(fi), "lies past the end of the file".into());
            continue;
        };
        if shard::frame_hash(cbytes) != f.hash {
            problem(Some(fi), "checksum mismatch: the compressed bytes changed".into());
        }
        let raw = match shard::decompress_frame(cbytes, f.raw as usize) {
            Ok(r) => r,
            Err(e) => {
                problem(Some(fi), format!("does not decompress: {e}"));
                continue;
            }
        };
        let Ok(text) = std::str::from_utf8(&raw) else {
            problem(Some(fi), "is not UTF-8".into());
            continue;
        };
        let first = index.starts[fi] as usize;
        let mut n = 0usize;
        for (li, line) in text.lines().enumerate() {
            n += 1;
            match Trace::from_json(line) {
                Ok(t) => {
                    if index.ids.get(first + li) != Some(&t.id) {
                        problem(
                            Some(fi),
                            format!("record {li} has id '{}' but the index says otherwise", t.id),
                        );
                    }
                    ids.push(t.id);
                    report.records += 1;
                }
                Err(e) => problem(Some(fi), format!("record {li}: {e}")),
            }
        }
        if n != f.records as usize {
            problem(Some(fi), format!("holds {n} records, the index says {}", f.records));
        }
    }
    ids
}

/// A damage entry as one line: the message, what was lost and (the first few of) its ids.
pub fn damage_message(d: &Damage) -> String {
    let mut m = d.msg.clone();
    match d.lost_records {
        Some(0) => {}
        Some(n) => m.push_str(&format!("; {n} records lost")),
        None => m.push_str("; the records lost there are unknown"),
    }
    if !d.lost_ids.is_empty() {
        let shown: Vec<&str> = d.lost_ids.iter().take(5).map(String::as_str).collect();
        let more = d.lost_ids.len().saturating_sub(5);
        m.push_str(&format!(
            " (ids {}{})",
            shown.join(", "),
            if more > 0 { format!(" and {more} more") } else { String::new() }
        ));
    }
    m
}
