//! Append-only corpus writer.
//!
//! Records are grouped into frames, frames are serialized and compressed in parallel (rayon) and
//! streamed into `shard-NNNNN.jsonl.zst.tmp`. [`CorpusWriter::commit`] finishes the open shard:
//! index trailer, fsync, rename to its final name, fsync the directory, then the manifest is
//! rewritten the same way. Only then are its records *committed*. A crash at any point leaves
//! the previous manifest and its shards intact; reopening deletes the leftovers (temp files and
//! shards the manifest never named) and reports the committed ids so a generator can skip them.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rayon::prelude::*;
use serde_json::Value;

use super::manifest::{self, MANIFEST_FILE, Manifest, ShardEntry};
use super::reader::load_index;
use super::shard::{FrameEntry, ShardIndex, compress_frame, frame_hash};
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::record::{SCHEMA_VERSION, Trace};

#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// zstd level. Higher is smaller and slower to write; reading speed barely changes.
    pub level: i32,
    /// Most records in one frame. Smaller frames make random access cheaper and compress worse.
    pub frame_records: usize,
    /// A frame is closed once its JSON reaches about this many bytes.
    pub frame_bytes: usize,
    /// A shard is finished (and committed) once it holds this many records…
    pub shard_records: u64,
    /// …or this many raw bytes.
    pub shard_bytes: u64,
    /// Stored in each new shard's manifest entry (command, recipe, run id…), with the distill version.
    pub provenance: Value,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            level: 3,
            frame_records: 256,
            frame_bytes: 1 << 20,
            shard_records: 1 << 20,
            shard_bytes: 1 << 30,
            provenance: Value::Null,
        }
    }
}

struct OpenShard {
    name: String,
    tmp: PathBuf,
    out: BufWriter<File>,
    hasher: blake3::Hasher,
    frames: Vec<FrameEntry>,
    ids: Vec<String>,
    offset: u64,
    raw_bytes: u64,
}

pub struct CorpusWriter {
    dir: PathBuf,
    opts: WriterOptions,
    _lock: File,
    manifest: Manifest,
    committed: HashSet<String>,
    /// Ids appended but not yet committed.
    pending: HashSet<String>,
    /// Content hashes of the records this writer has serialized, for
    /// [`CorpusWriter::same_content`]; taken from the JSON the frames are written from, so
    /// appending costs no second serialization.
    /// (BLAKE3 of the id, of the JSON), 16 bytes each: 32 bytes a record.
    appended: std::collections::HashMap<[u8; 16], [u8; 16]>,
    /// A reader of what was committed before this writer opened, opened on demand.
    before: Option<super::reader::Corpus>,
    frame: Vec<Trace>,
    frame_bytes: usize,
    full_frames: Vec<Vec<Trace>>,
    shard: Option<OpenShard>,
    next_shard: u32,
    removed: Vec<PathBuf>,
}

impl CorpusWriter {
    /// Open `dir` for appending, creating an empty corpus if it does not exist.
    pub fn open(dir: &Path, opts: WriterOptions) -> Result<CorpusWriter> {
        fs::create_dir_all(dir).at(dir)?;
        let lock_path = dir.join(".lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .at(&lock_path)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(Error::Locked { dir: dir.to_path_buf() });
            }
            Err(fs::TryLockError::Error(e)) => return Err(Error::io(&lock_path, e)),
        }

        let manifest = if Manifest::path(dir).exists() {
            Manifest::load(dir)?.0
        } else {
            // A new corpus starts only in an empty (or new) directory: one that holds anything
            // but distill's lock is someone else's, and nothing in it is ours to clean up.
            // The one exception: a `manifest.json.tmp` alone is this writer's own first
            // manifest, cut off by a kill before its rename; it is removed below.
            let first_tmp = format!("{MANIFEST_FILE}.tmp");
            let mut others: Vec<String> =
                list_dir(dir)?.into_iter().filter(|n| n != ".lock" && *n != first_tmp).collect();
            if !others.is_empty() {
                others.sort();
                let shards = others.iter().filter(|n| n.ends_with(".zst")).count();
                let shown: Vec<&str> = others.iter().take(3).map(String::as_str).collect();
                return Err(Error::Manifest {
                    path: Manifest::path(dir),
                    msg: format!(
                        "missing, and the directory holds {} other file(s) ({}{}){}: it is not a distill corpus; refusing to start one among them (name a new or empty directory)",
                        others.len(),
                        shown.join(", "),
                        if others.len() > 3 { ", …" } else { "" },
                        if shards > 0 {
                            format!(
                                ", {shards} of them shard files (`distill corpus repair` reads them)"
                            )
                        } else {
                            String::new()
                        }
                    ),
                });
            }
            let m = Manifest::new();
            m.store(dir)?;
            m
        };
        if manifest.schema != SCHEMA_VERSION {
            return Err(Error::Manifest {
                path: Manifest::path(dir),
                msg: format!(
                    "corpus holds schema {} records; this distill writes schema {SCHEMA_VERSION}",
                    manifest.schema
                ),
            });
        }

        // Leftovers of a crash: temp files, and finished shards the manifest never named.
        let named: HashSet<&str> = manifest.shards.iter().map(|s| s.file.as_str()).collect();
        let mut removed = Vec::new();
        for name in list_dir(dir)? {
            let stray_shard =
                manifest::shard_number(&name).is_some() && !named.contains(name.as_str());
            if is_own_tmp(&name) || stray_shard {
                let p = dir.join(&name);
                fs::remove_file(&p).at(&p)?;
                removed.push(p);
            }
        }
        if !removed.is_empty() {
            fsutil::sync_dir(dir)?;
        }

        // The manifest's counts are claims: they size nothing until the shards confirm them.
        let mut committed = HashSet::new();
        for entry in &manifest.shards {
            // load_index checks the shard's count against the manifest's.
            for id in load_index(dir, entry)?.ids {
                if !committed.insert(id.clone()) {
                    return Err(Error::DuplicateId {
                        id,
                        where_: "in two committed records of this corpus",
                    });
                }
            }
        }
        let next_shard = manifest
            .shards
            .iter()
            .filter_map(|s| manifest::shard_number(&s.file))
            .max()
            .map_or(0, |n| n + 1);
        Ok(CorpusWriter {
            dir: dir.to_path_buf(),
            opts,
            _lock: lock,
            manifest,
            committed,
            pending: HashSet::new(),
            appended: Default::default(),
            before: None,
            frame: Vec::new(),
            frame_bytes: 0,
            full_frames: Vec::new(),
            shard: None,
            next_shard,
            removed,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Files that opening removed as crash leftovers.
    pub fn removed_leftovers(&self) -> &[PathBuf] {
        &self.removed
    }

    /// True if a record with this id is committed (durable, listed in the manifest).
    pub fn is_committed(&self, id: &str) -> bool {
        self.committed.contains(id)
    }

    /// True if the id is committed or appended and waiting for the next commit.
    pub fn contains(&self, id: &str) -> bool {
        self.committed.contains(id) || self.pending.contains(id)
    }

    pub fn committed_ids(&self) -> &HashSet<String> {
        &self.committed
    }

    pub fn committed_records(&self) -> u64 {
        self.committed.len() as u64
    }

    pub fn pending_records(&self) -> u64 {
        self.pending.len() as u64
    }

    /// For a record whose id this corpus already holds: is the stored record the same (byte for
    /// byte as JSON)? Copies of one record are harmless; a different record under the same id is
    /// a conflict the caller reports. `None` if the id is not held.
    pub fn same_content(&mut self, t: &Trace) -> Result<Option<bool>> {
        if let Some(h) = self.appended.get(&short_hash(t.id.as_bytes())) {
            return Ok(Some(*h == content_hash(t)));
        }
        if self.pending.contains(&t.id) {
            // Appended in this session and not serialized yet: still in memory.
            let held =
                self.frame.iter().chain(self.full_frames.iter().flatten()).find(|x| x.id == t.id);
            return Ok(held.map(|x| content_hash(x) == content_hash(t)));
        }
        if !self.committed.contains(&t.id) {
            return Ok(None);
        }
        if self.before.is_none() {
            self.before = Some(super::reader::Corpus::open(&self.dir)?);
        }
        let stored = self.before.as_ref().expect("opened").get_by_id(&t.id)?;
        Ok(stored.map(|s| content_hash(&s) == content_hash(t)))
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Append a record. It becomes durable at the next [`commit`](Self::commit) (or when the
    /// open shard fills up). An id already in the corpus is an error.
    pub fn append(&mut self, trace: Trace) -> Result<()> {
        if trace.schema != SCHEMA_VERSION {
            return Err(Error::Record {
                id: trace.id,
                msg: format!(
                    "schema {} cannot be written; this distill writes schema {SCHEMA_VERSION}",
                    trace.schema
                ),
            });
        }
        if let Err(msg) = crate::record::check_id(&trace.id) {
            return Err(Error::Record { id: trace.id, msg });
        }
        if self.committed.contains(&trace.id) {
            return Err(Error::DuplicateId { id: trace.id, where_: "committed" });
        }
        if !self.pending.insert(trace.id.clone()) {
            return Err(Error::DuplicateId {
                id: trace.id,
                where_: "appended and waiting for commit",
            });
        }
        self.frame_bytes += trace.approx_json_len();
        self.frame.push(trace);
        if self.frame.len() >= self.opts.frame_records || self.frame_bytes >= self.opts.frame_bytes
        {
            self.close_frame();
            if self.full_frames.len() >= 2 * rayon::current_num_threads() {
                self.write_frames()?;
            }
        }
        Ok(())
    }

    /// Make everything appended so far durable. Returns how many records this committed.
    pub fn commit(&mut self) -> Result<u64> {
        let before = self.committed.len();
        self.close_frame();
        self.write_frames()?;
        self.finish_shard()?;
        Ok((self.committed.len() - before) as u64)
    }

    fn close_frame(&mut self) {
        if !self.frame.is_empty() {
            self.full_frames.push(std::mem::take(&mut self.frame));
            self.frame_bytes = 0;
        }
    }

    /// Serialize and compress the full frames in parallel, then append them to the open shard.
    fn write_frames(&mut self) -> Result<()> {
        if self.full_frames.is_empty() {
            return Ok(());
        }
        let level = self.opts.level;
        let frames = std::mem::take(&mut self.full_frames);
        type Hashes = Vec<([u8; 16], [u8; 16])>;
        let encoded: Vec<(Vec<u8>, usize, Vec<String>, Hashes)> = frames
            .into_par_iter()
            .map(|records| {
                let mut raw = Vec::with_capacity(records.iter().map(Trace::approx_json_len).sum());
                let mut ids = Vec::with_capacity(records.len());
                let mut hashes = Vec::with_capacity(records.len());
                for t in records {
                    let start = raw.len();
                    serde_json::to_writer(&mut raw, &t).expect("a Trace always serializes");
                    hashes.push((short_hash(t.id.as_bytes()), short_hash(&raw[start..])));
                    raw.push(b'\n');
                    ids.push(t.id);
                }
                (compress_frame(&raw, level), raw.len(), ids, hashes)
            })
            .collect();
        let (max_records, max_bytes) = (self.opts.shard_records, self.opts.shard_bytes);
        for (bytes, raw_len, ids, hashes) in encoded {
            self.appended.extend(hashes);
            if raw_len as u64 > super::shard::MAX_FRAME_RAW {
                return Err(Error::Record {
                    id: ids[0].clone(),
                    msg: format!("a frame of {raw_len} bytes is over the 1 GiB limit"),
                });
            }
            let shard = self.open_shard()?;
            shard.out.write_all(&bytes).at(&shard.tmp)?;
            shard.hasher.update(&bytes);
            shard.frames.push(FrameEntry {
                offset: shard.offset,
                compressed: bytes.len() as u32,
                raw: raw_len as u32,
                records: ids.len() as u32,
                hash: frame_hash(&bytes),
            });
            shard.offset += bytes.len() as u64;
            shard.raw_bytes += raw_len as u64;
            shard.ids.extend(ids);
            if shard.ids.len() as u64 >= max_records || shard.raw_bytes >= max_bytes {
                self.finish_shard()?;
            }
        }
        Ok(())
    }

    fn open_shard(&mut self) -> Result<&mut OpenShard> {
        if self.shard.is_none() {
            let name = manifest::shard_name(self.next_shard);
            let tmp = fsutil::tmp_path(&self.dir.join(&name));
            let file = File::create(&tmp).at(&tmp)?;
            self.shard = Some(OpenShard {
                name,
                tmp,
                out: BufWriter::with_capacity(1 << 20, file),
                hasher: blake3::Hasher::new(),
                frames: Vec::new(),
                ids: Vec::new(),
                offset: 0,
                raw_bytes: 0,
            });
        }
        Ok(self.shard.as_mut().unwrap())
    }

    /// Trailer, fsync, rename, then the manifest.
    fn finish_shard(&mut self) -> Result<()> {
        let Some(mut s) = self.shard.take() else { return Ok(()) };
        let index = ShardIndex::new(std::mem::take(&mut s.frames), std::mem::take(&mut s.ids));
        let trailer = index.encode();
        s.out.write_all(&trailer).at(&s.tmp)?;
        s.hasher.update(&trailer);
        let file = s.out.into_inner().map_err(|e| Error::io(&s.tmp, e.into_error()))?;
        file.sync_all().at(&s.tmp)?;
        drop(file);
        let path = self.dir.join(&s.name);
        fsutil::commit_rename(&s.tmp, &path)?;

        let mut provenance =
            serde_json::json!({ "writer": format!("distill-data {}", env!("CARGO_PKG_VERSION")) });
        if !self.opts.provenance.is_null() {
            let mut run = self.opts.provenance.clone();
            crate::redact::redact_json(&mut run);
            provenance["run"] = run;
        }
        let entry = ShardEntry {
            file: s.name,
            records: index.records(),
            frames: index.frames.len() as u64,
            raw_bytes: s.raw_bytes,
            compressed_bytes: s.offset + trailer.len() as u64,
            blake3: s.hasher.finalize().to_hex().to_string(),
            created_unix: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            provenance,
        };
        let mut next = self.manifest.clone();
        next.shards.push(entry);
        next.store(&self.dir)?;
        self.manifest = next;
        self.next_shard += 1;
        for id in index.ids {
            self.pending.remove(&id);
            self.committed.insert(id);
        }
        Ok(())
    }
}

/// A temp file this writer makes: `manifest.json.tmp` or `shard-NNNNN.jsonl.zst.tmp`. Any other
/// `*.tmp` in the directory is not distill's and is left alone.
pub(crate) fn is_own_tmp(name: &str) -> bool {
    name.strip_suffix(".tmp")
        .is_some_and(|b| b == MANIFEST_FILE || manifest::shard_number(b).is_some())
}

fn list_dir(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for e in fs::read_dir(dir).at(dir)? {
        let e = e.at(dir)?;
        let name = e.file_name().to_string_lossy().to_string();
        if name != MANIFEST_FILE {
            names.push(name);
        }
    }
    Ok(names)
}

/// BLAKE3 of a record's JSON, first 16 bytes.
fn content_hash(t: &Trace) -> [u8; 16] {
    short_hash(&serde_json::to_vec(t).expect("a trace serialises"))
}

fn short_hash(b: &[u8]) -> [u8; 16] {
    blake3::hash(b).as_bytes()[..16].try_into().expect("16 bytes")
}
