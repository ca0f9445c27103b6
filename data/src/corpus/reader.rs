//! Reading a corpus: streaming, random access by index or id, and parallel scans.
//!
//! Shards are immutable once named in the manifest, so a reader sees a consistent snapshot even
//! while a writer appends. Memory is bounded by one frame per reading thread.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use rayon::prelude::*;

use super::manifest::{self, Manifest, ShardEntry};
use super::salvage::{self, Damage};
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
                    "{}; rebuilding the index from the frames failed too: {} \
                     (--skip-damaged reads the rest; `distill corpus repair` copies every readable \
                     record into a new corpus)",
                    salvage::bare(&trailer_err),
                    scan_err
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
    /// Opened with [`Corpus::open_skipping_damage`]: damaged frames are skipped and recorded.
    skip_damaged: bool,
    damage: Mutex<Vec<Damage>>,
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
        Ok(Corpus::assemble(dir, manifest, &bytes, shards, first, None))
    }

    fn assemble(
        dir: &Path,
        manifest: Manifest,
        manifest_bytes: &[u8],
        shards: Vec<ShardState>,
        total: u64,
        skipped: Option<Vec<Damage>>,
    ) -> Corpus {
        Corpus {
            dir: dir.to_path_buf(),
            manifest_checksum: blake3::hash(manifest_bytes).to_hex().to_string(),
            manifest,
            shards,
            total,
            by_id: OnceLock::new(),
            skip_damaged: skipped.is_some(),
            damage: Mutex::new(skipped.unwrap_or_default()),
        }
    }

    /// Open whatever is readable. Shards whose index trailer is damaged are walked frame by
    /// frame; frames that do not decode (now or when read) are skipped and recorded in
    /// [`Corpus::damage`]; a missing shard is recorded and skipped. If `manifest.json` itself is
    /// unreadable, the shard files in the directory are read in name order. Record numbers count
    /// only what is readable.
    pub fn open_skipping_damage(dir: &Path) -> Result<Corpus> {
        let mut damage = Vec::new();
        let (manifest, bytes) = match Manifest::load(dir) {
            Ok(m) => m,
            Err(e) => {
                let listed = list_shards(dir);
                if listed.is_empty() {
                    return Err(e);
                }
                damage.push(Damage {
                    shard: manifest::MANIFEST_FILE.to_string(),
                    frame: None,
                    msg: format!("{e}; reading the {} shard files in the directory", listed.len()),
                    lost_records: None,
                    lost_ids: vec![],
                });
                let mut m = Manifest::new();
                m.shards = listed;
                (m, vec![])
            }
        };
        let mut shards = Vec::with_capacity(manifest.shards.len());
        let mut first = 0;
        for entry in &manifest.shards {
            let path = dir.join(&entry.file);
            let found = match salvage::salvage_shard(&path, &entry.file) {
                Ok(found) => found,
                Err(e) => {
                    damage.push(Damage {
                        shard: entry.file.clone(),
                        frame: None,
                        msg: format!("unreadable, skipped: {e}"),
                        lost_records: Some(entry.records),
                        lost_ids: vec![],
                    });
                    continue;
                }
            };
            let mut found = found;
            let lost_known: u64 = found.damage.iter().filter_map(|d| d.lost_records).sum();
            let unknown: Vec<usize> = (0..found.damage.len())
                .filter(|&i| found.damage[i].lost_records.is_none())
                .collect();
            let missing = entry.records.checked_sub(found.index.records() + lost_known);
            if let ([i], Some(n), false) = (&unknown[..], missing, bytes.is_empty()) {
                // One range of unknown loss: the manifest's count says how much it was.
                let d = &mut found.damage[*i];
                d.lost_records = Some(n);
                d.msg.push_str(&format!(" (the manifest's count says {n} records)"));
            } else if found.damage.is_empty()
                && found.index.records() != entry.records
                && !bytes.is_empty()
            {
                damage.push(Damage {
                    shard: entry.file.clone(),
                    frame: None,
                    msg: format!(
                        "holds {} records but the manifest says {} (reading what it holds)",
                        found.index.records(),
                        entry.records
                    ),
                    lost_records: None,
                    lost_ids: vec![],
                });
            } else if missing.is_some_and(|n| n > 0) && !bytes.is_empty() {
                damage.push(Damage {
                    shard: entry.file.clone(),
                    frame: None,
                    msg: format!(
                        "the manifest says {} records; {} are readable",
                        entry.records,
                        found.index.records()
                    ),
                    lost_records: Some(entry.records - found.index.records() - lost_known),
                    lost_ids: vec![],
                });
            }
            damage.extend(found.damage);
            let records = found.index.records();
            shards.push(ShardState { entry: entry.clone(), path, first, index: found.index });
            first += records;
        }
        Ok(Corpus::assemble(dir, manifest, &bytes, shards, first, Some(damage)))
    }

    /// Open strictly, or skipping damage (see [`Corpus::open_skipping_damage`]).
    pub fn open_with(dir: &Path, skip_damaged: bool) -> Result<Corpus> {
        if skip_damaged { Self::open_skipping_damage(dir) } else { Self::open(dir) }
    }

    /// Damage found so far (at open, and in the frames read since) by a corpus opened with
    /// [`Corpus::open_skipping_damage`], in the order found.
    pub fn damage(&self) -> Vec<Damage> {
        self.damage.lock().unwrap().clone()
    }

    /// Records lost to the damage found so far, where known.
    pub fn lost_records(&self) -> u64 {
        self.damage.lock().unwrap().iter().filter_map(|d| d.lost_records).sum()
    }

    fn record_damage(&self, loc: FrameLoc, err: &Error) {
        let s = &self.shards[loc.shard];
        let (a, b) = (s.index.starts[loc.frame] as usize, s.index.starts[loc.frame + 1] as usize);
        let lost_ids = s.index.ids.get(a..b).map(<[String]>::to_vec).unwrap_or_default();
        let d = Damage {
            shard: s.entry.file.clone(),
            frame: Some(loc.frame),
            msg: format!("skipped: {}", salvage::bare(err)),
            lost_records: Some(loc.records as u64),
            lost_ids,
        };
        self.damage.lock().unwrap().push(d);
    }

    fn record_bad_record(&self, loc: FrameLoc, err: &Error) {
        let d = Damage {
            shard: self.shards[loc.shard].entry.file.clone(),
            frame: Some(loc.frame),
            msg: format!("a record was skipped: {}", salvage::bare(err)),
            lost_records: Some(1),
            lost_ids: vec![],
        };
        self.damage.lock().unwrap().push(d);
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

    /// Like [`Corpus::read_frame_raw`], but a corpus opened with
    /// [`Corpus::open_skipping_damage`] answers `None` for a damaged frame and records it.
    pub fn read_frame_raw_or_skip(&self, loc: FrameLoc) -> Result<Option<Vec<u8>>> {
        match self.read_frame_raw(loc) {
            Ok(raw) => Ok(Some(raw)),
            Err(e) if self.skip_damaged => {
                self.record_damage(loc, &e);
                Ok(None)
            }
            Err(e) => Err(e),
        }
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
    /// with the next frame; a corpus opened with [`Corpus::open_skipping_damage`] skips it (and
    /// any record that does not parse) and records it in [`Corpus::damage`] instead.
    pub fn iter(&self) -> impl Iterator<Item = Result<Trace>> + '_ {
        self.frames().into_iter().flat_map(move |loc| match self.read_frame_raw(loc) {
            Ok(raw) => FrameRecords::Ok(
                String::from_utf8_lossy(&raw)
                    .lines()
                    .map(Trace::from_json)
                    .filter(|r| match r {
                        Err(e) if self.skip_damaged => {
                            self.record_bad_record(loc, e);
                            false
                        }
                        _ => true,
                    })
                    .collect::<Vec<_>>()
                    .into_iter(),
            ),
            Err(e) if self.skip_damaged => {
                self.record_damage(loc, &e);
                FrameRecords::Err(None)
            }
            Err(e) => FrameRecords::Err(Some(e)),
        })
    }

    /// Apply `f` to every frame's records in parallel; results come back in corpus order.
    /// Opened with [`Corpus::open_skipping_damage`], a damaged frame reaches `f` as no records
    /// (and is recorded in [`Corpus::damage`]).
    pub fn par_map_frames<T, F>(&self, f: F) -> Vec<T>
    where
        T: Send,
        F: Fn(FrameLoc, Result<Vec<Trace>>) -> T + Sync + Send,
    {
        self.frames()
            .into_par_iter()
            .map(|loc| {
                if !self.skip_damaged {
                    return f(loc, self.read_frame(loc));
                }
                // Skipping damage, as `iter` does: a frame that does not decode is skipped
                // whole, a record that does not parse alone.
                match self.read_frame_raw(loc) {
                    Err(e) => {
                        self.record_damage(loc, &e);
                        f(loc, Ok(vec![]))
                    }
                    Ok(raw) => {
                        let records = String::from_utf8_lossy(&raw)
                            .lines()
                            .map(Trace::from_json)
                            .filter_map(|r| r.map_err(|e| self.record_bad_record(loc, &e)).ok())
                            .collect();
                        f(loc, Ok(records))
                    }
                }
            })
            .collect()
    }

    /// Shard file name and frame count per shard, for reports.
    pub fn shard_summaries(&self) -> Vec<(&ShardEntry, usize)> {
        self.shards.iter().map(|s| (&s.entry, s.index.frames.len())).collect()
    }
}

/// The shard files of a directory, in name order, for a corpus whose manifest is unreadable.
fn list_shards(dir: &Path) -> Vec<ShardEntry> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| manifest::shard_number(n).is_some())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
        .into_iter()
        .map(|file| ShardEntry {
            file,
            records: 0,
            frames: 0,
            raw_bytes: 0,
            compressed_bytes: 0,
            blake3: String::new(),
            created_unix: 0,
            provenance: serde_json::Value::Null,
        })
        .collect()
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
