//! Reading a corpus: streaming, random access by index or id, and parallel scans.
//!
//! Shards are immutable once named in the manifest, so a reader sees a consistent snapshot even
//! while a writer appends. Memory is bounded by one frame per reading thread.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rayon::prelude::*;

use super::manifest::{Manifest, ShardEntry};
use super::shard::{self, FrameEntry, ShardIndex};
use crate::error::{Error, IoContext, Result};
use crate::record::Trace;

/// Load a shard's index from its trailer, or by walking its frames if the trailer is damaged.
pub fn load_index(dir: &Path, entry: &ShardEntry) -> Result<ShardIndex> {
    let path = dir.join(&entry.file);
    let file = File::open(&path).at(&path)?;
    let len = file.metadata().at(&path)?.len();
    let index = match ShardIndex::read(&file, len, &entry.file) {
        Ok(ix) => ix,
        Err(trailer_err) => {
            let bytes = std::fs::read(&path).at(&path)?;
            shard::scan_frames(&bytes, &entry.file).map_err(|scan_err| Error::Shard {
                shard: entry.file.clone(),
                msg: format!(
                    "{trailer_err}; rebuilding the index from the frames failed too: {scan_err}"
                ),
            })?
        }
    };
    if index.records() != entry.records {
        return Err(Error::Shard {
            shard: entry.file.clone(),
            msg: format!(
                "holds {} records but the manifest says {}",
                index.records(),
                entry.records
            ),
        });
    }
    Ok(index)
}

struct ShardState {
    entry: ShardEntry,
    path: PathBuf,
    index: ShardIndex,
    /// Global index of the shard's first record.
    first: u64,
}

/// Where one frame lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLoc {
    pub shard: usize,
    pub frame: usize,
    /// Global index of the frame's first record.
    pub first_record: u64,
    /// Records in the frame.
    pub records: u32,
}

/// A read-only view of a corpus.
pub struct Corpus {
    dir: PathBuf,
    manifest: Manifest,
    manifest_checksum: String,
    shards: Vec<ShardState>,
    total: u64,
    by_id: OnceLock<HashMap<String, u64>>,
}

impl Corpus {
    pub fn open(dir: &Path) -> Result<Corpus> {
        let (manifest, bytes) = Manifest::load(dir)?;
        let mut shards = Vec::with_capacity(manifest.shards.len());
        let mut first = 0;
        for entry in &manifest.shards {
            let index = load_index(dir, entry)?;
            shards.push(ShardState {
                entry: entry.clone(),
                path: dir.join(&entry.file),
                first,
                index,
            });
            first += entry.records;
        }
        Ok(Corpus {
            dir: dir.to_path_buf(),
            manifest_checksum: blake3::hash(&bytes).to_hex().to_string(),
            manifest,
            shards,
            total: first,
            by_id: OnceLock::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// blake3 of `manifest.json` as read: identifies exactly this snapshot of the corpus.
    pub fn manifest_checksum(&self) -> &str {
        &self.manifest_checksum
    }

    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Every record id, in corpus order, from the shard indexes (nothing is decompressed).
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.shards.iter().flat_map(|s| s.index.ids.iter().map(String::as_str))
    }

    /// All frame locations in order.
    pub fn frames(&self) -> Vec<FrameLoc> {
        let mut out = Vec::new();
        for (si, s) in self.shards.iter().enumerate() {
            for fi in 0..s.index.frames.len() {
                let records = s.index.frames[fi].records;
                out.push(FrameLoc {
                    shard: si,
                    frame: fi,
                    first_record: s.first + s.index.starts[fi],
                    records,
                });
            }
        }
        out
    }

    /// Decompressed JSONL of one frame.
    pub fn read_frame_raw(&self, loc: FrameLoc) -> Result<Vec<u8>> {
        let s = &self.shards[loc.shard];
        let f: &FrameEntry = &s.index.frames[loc.frame];
        let file = File::open(&s.path).at(&s.path)?;
        let bytes = shard::read_frame_bytes(&file, f, &s.entry.file)?;
        let frame_err =
            |msg: String| Error::Frame { shard: s.entry.file.clone(), frame: loc.frame, msg };
        if shard::frame_hash(&bytes) != f.hash {
            return Err(frame_err("checksum mismatch (the frame is damaged)".into()));
        }
        shard::decompress_frame(&bytes, f.raw as usize).map_err(frame_err)
    }

    /// The records of one frame.
    pub fn read_frame(&self, loc: FrameLoc) -> Result<Vec<Trace>> {
        let raw = self.read_frame_raw(loc)?;
        let s = &self.shards[loc.shard];
        let text = std::str::from_utf8(&raw).map_err(|_| Error::Frame {
            shard: s.entry.file.clone(),
            frame: loc.frame,
            msg: "not UTF-8".into(),
        })?;
        text.lines().map(Trace::from_json).collect()
    }

    /// The raw JSON line of record `index`.
    pub fn get_raw(&self, index: u64) -> Result<String> {
        if index >= self.total {
            return Err(Error::OutOfRange { index, len: self.total });
        }
        let si = self.shards.partition_point(|s| s.first <= index) - 1;
        let s = &self.shards[si];
        let (frame, line) = s.index.locate(index - s.first);
        let loc = FrameLoc {
            shard: si,
            frame,
            first_record: index,
            records: s.index.frames[frame].records,
        };
        let raw = self.read_frame_raw(loc)?;
        let bad =
            |msg: &str| Error::Frame { shard: s.entry.file.clone(), frame, msg: msg.to_string() };
        let bytes = raw
            .split(|&b| b == b'\n')
            .nth(line)
            .ok_or_else(|| bad("holds fewer records than its index says"))?;
        String::from_utf8(bytes.to_vec()).map_err(|_| bad("not UTF-8"))
    }

    /// Record `index` (0-based, in corpus order).
    pub fn get(&self, index: u64) -> Result<Trace> {
        Trace::from_json(&self.get_raw(index)?)
    }

    /// The corpus index of record `id`. The id map is built on first use from the shard indexes.
    pub fn index_of(&self, id: &str) -> Option<u64> {
        self.by_id
            .get_or_init(|| {
                self.ids().enumerate().map(|(i, id)| (id.to_string(), i as u64)).collect()
            })
            .get(id)
            .copied()
    }

    pub fn get_by_id(&self, id: &str) -> Result<Option<Trace>> {
        self.index_of(id).map(|i| self.get(i)).transpose()
    }

    /// Stream every record in order. A damaged frame yields one `Err` and the stream goes on
    /// with the next frame.
    pub fn iter(&self) -> impl Iterator<Item = Result<Trace>> + '_ {
        self.frames().into_iter().flat_map(move |loc| match self.read_frame_raw(loc) {
            Ok(raw) => FrameRecords::Ok(
                String::from_utf8_lossy(&raw)
                    .lines()
                    .map(Trace::from_json)
                    .collect::<Vec<_>>()
                    .into_iter(),
            ),
            Err(e) => FrameRecords::Err(Some(e)),
        })
    }

    /// Apply `f` to every frame's records in parallel; results come back in corpus order.
    pub fn par_map_frames<T, F>(&self, f: F) -> Vec<T>
    where
        T: Send,
        F: Fn(FrameLoc, Result<Vec<Trace>>) -> T + Sync + Send,
    {
        self.frames().into_par_iter().map(|loc| f(loc, self.read_frame(loc))).collect()
    }

    /// Shard file name and frame count per shard, for reports.
    pub fn shard_summaries(&self) -> Vec<(&ShardEntry, usize)> {
        self.shards.iter().map(|s| (&s.entry, s.index.frames.len())).collect()
    }
}

enum FrameRecords {
    Ok(std::vec::IntoIter<Result<Trace>>),
    Err(Option<Error>),
}

impl Iterator for FrameRecords {
    type Item = Result<Trace>;
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            FrameRecords::Ok(it) => it.next(),
            FrameRecords::Err(e) => e.take().map(Err),
        }
    }
}
