//! `manifest.json`: the list of finished shards. A shard exists for readers only once the
//! manifest names it; the manifest is replaced atomically after each finished shard.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::record::SCHEMA_VERSION;

pub const FORMAT_NAME: &str = "distill-corpus";
pub const FORMAT_VERSION: u32 = 1;
pub const MANIFEST_FILE: &str = "manifest.json";
/// A manifest larger than this is not one we wrote (about 2 million shards).
const MAX_MANIFEST_BYTES: u64 = 1 << 30;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always `distill-corpus`.
    pub format: String,
    /// On-disk format version (manifest + shard layout).
    pub version: u32,
    /// Trace schema version of the records (see `record::SCHEMA_VERSION`).
    pub schema: u32,
    /// Finished shards, in record order.
    pub shards: Vec<ShardEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// File name inside the corpus directory, e.g. `shard-00000.jsonl.zst`.
    pub file: String,
    pub records: u64,
    pub frames: u64,
    /// Bytes of JSONL before compression.
    pub raw_bytes: u64,
    /// Bytes of the shard file (frames + index trailer).
    pub compressed_bytes: u64,
    /// blake3 of the whole shard file, hex.
    pub blake3: String,
    /// Seconds since the Unix epoch when the shard was finished.
    pub created_unix: u64,
    /// Who wrote the shard: distill version, plus what the writer was given (command, recipe…).
    #[serde(default)]
    pub provenance: Value,
}

impl Manifest {
    pub fn new() -> Self {
        Manifest {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            schema: SCHEMA_VERSION,
            shards: vec![],
        }
    }

    pub fn records(&self) -> u64 {
        self.shards.iter().map(|s| s.records).sum()
    }

    pub fn path(dir: &Path) -> PathBuf {
        dir.join(MANIFEST_FILE)
    }

    /// Read and validate `dir/manifest.json`. Returns the manifest and its raw bytes.
    pub fn load(dir: &Path) -> Result<(Manifest, Vec<u8>)> {
        let path = Self::path(dir);
        let len = std::fs::metadata(&path).at(&path)?.len();
        if len > MAX_MANIFEST_BYTES {
            return Err(Error::Manifest {
                path,
                msg: format!("{len} bytes is too large for a corpus manifest"),
            });
        }
        let bytes = std::fs::read(&path).at(&path)?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| Error::Manifest {
            path: path.clone(),
            msg: format!("not valid JSON: {e}"),
        })?;
        // Check the format and version before the shape, so that a newer manifest says so.
        let format = value.get("format").and_then(Value::as_str).unwrap_or("").to_string();
        let version = value.get("version").and_then(Value::as_u64).unwrap_or(0) as u32;
        if format != FORMAT_NAME || version == 0 || version > FORMAT_VERSION {
            let hint = if format == FORMAT_NAME && version > FORMAT_VERSION {
                "it was written by a newer distill: upgrade distill to read it"
            } else {
                "this directory does not hold a distill corpus"
            };
            return Err(Error::FormatVersion {
                path,
                format,
                found: version,
                supported: FORMAT_VERSION,
                hint,
            });
        }
        let m: Manifest = serde_json::from_value(value).map_err(|e| Error::Manifest {
            path: path.clone(),
            msg: format!("bad manifest: {e}"),
        })?;
        if m.schema > SCHEMA_VERSION {
            return Err(Error::Manifest {
                path,
                msg: format!(
                    "trace schema {} is newer than this distill understands ({SCHEMA_VERSION}); upgrade distill",
                    m.schema
                ),
            });
        }
        let mut names = std::collections::HashSet::new();
        for s in &m.shards {
            check_shard_name(&s.file).map_err(|msg| Error::Manifest { path: path.clone(), msg })?;
            if !names.insert(&s.file) {
                return Err(Error::Manifest {
                    path: path.clone(),
                    msg: format!("shard '{}' is listed twice", s.file),
                });
            }
        }
        Ok((m, bytes))
    }

    /// Write atomically (temp file, fsync, rename, fsync dir).
    pub fn store(&self, dir: &Path) -> Result<Vec<u8>> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("manifest serializes");
        bytes.push(b'\n');
        fsutil::atomic_write(&Self::path(dir), &bytes)?;
        Ok(bytes)
    }
}

impl Default for Manifest {
    fn default() -> Self {
        Self::new()
    }
}

/// A shard name from a manifest must be a plain file name: no `..`, no separator, not absolute.
pub(crate) fn check_shard_name(name: &str) -> std::result::Result<(), String> {
    let bad = name.is_empty()
        || name == "."
        || name.contains("..")
        || name.contains('/')
        || name.contains('\\')
        || name.contains('\0')
        || name.starts_with('~')
        || Path::new(name).is_absolute();
    if bad {
        return Err(format!(
            "shard name '{name}' is not a plain file name inside the corpus directory (refusing to read it)"
        ));
    }
    if !name.ends_with(".zst") {
        return Err(format!("shard name '{name}' does not end in .zst"));
    }
    Ok(())
}

/// `shard-00042.jsonl.zst` → 42.
pub fn shard_number(name: &str) -> Option<u32> {
    name.strip_prefix("shard-")?.strip_suffix(".jsonl.zst")?.parse().ok()
}

pub fn shard_name(n: u32) -> String {
    format!("shard-{n:05}.jsonl.zst")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_must_stay_inside_the_corpus() {
        for bad in
            ["../x", "../x.zst", "/etc/passwd.zst", "a/b.zst", "a\\b.zst", "..", "", "x.json"]
        {
            assert!(check_shard_name(bad).is_err(), "{bad} should be rejected");
        }
        assert!(check_shard_name("shard-00001.jsonl.zst").is_ok());
        assert_eq!(shard_number(&shard_name(42)), Some(42));
    }
}
