//! Reading what survives in a damaged corpus: which frames are lost, which ids they held, and an
//! index of the frames that still decode. Used by `corpus verify`, by readers opened with
//! [`Corpus::open_skipping_damage`](super::Corpus::open_skipping_damage) and by `corpus repair`.

use std::fs::File;
use std::path::Path;

use serde::Serialize;

use super::shard::{self, ShardIndex};
use crate::error::IoContext;

/// One piece of damage, as precisely as the shard still allows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Damage {
    pub shard: String,
    /// The frame: its number in the shard's index when the index survives, else its place in
    /// the file as it now stands. `None` for damage to the shard as a whole (trailer, file).
    pub frame: Option<usize>,
    pub msg: String,
    /// Records lost here, when known (`Some(0)`: nothing lost, e.g. only the index trailer).
    pub lost_records: Option<u64>,
    /// The ids of the lost records, when the index still names them.
    pub lost_ids: Vec<String>,
}

/// The readable part of one shard.
pub struct ShardSalvage {
    /// The frames that decode, at their offsets in the file as it is now.
    pub index: ShardIndex,
    /// Every frame or range that does not.
    pub damage: Vec<Damage>,
}

/// Index the readable frames of `path` (shard `name`). With an intact trailer this is the
/// trailer's index (frames are then checked when read); otherwise the file is walked frame by
/// frame and what the damaged trailer still records is used to name the lost frames and ids.
pub fn salvage_shard(path: &Path, name: &str) -> crate::Result<ShardSalvage> {
    let file = File::open(path).at(path)?;
    let len = file.metadata().at(path)?.len();
    let trailer_err = match ShardIndex::read(&file, len, name) {
        Ok(index) => return Ok(ShardSalvage { index, damage: vec![] }),
        Err(e) => e,
    };
    let bytes = std::fs::read(path).at(path)?;
    Ok(salvage_bytes(&bytes, &file, name, bare(&trailer_err)))
}

/// An error's message without the shard (and frame) it names, for a [`Damage`] that names them.
pub(crate) fn bare(e: &crate::Error) -> String {
    match e {
        crate::Error::Shard { msg, .. } | crate::Error::Frame { msg, .. } => msg.clone(),
        e => e.to_string(),
    }
}

/// The walk of a shard whose trailer did not read; `bytes` is the whole file.
pub(crate) fn salvage_bytes(
    bytes: &[u8],
    file: &File,
    name: &str,
    trailer_err: String,
) -> ShardSalvage {
    let len = bytes.len() as u64;
    let expected = ShardIndex::read_lenient(file, len, name).ok();
    let scan = shard::scan(bytes, ShardIndex::trailer_start(file, len));
    let mut damage = vec![Damage {
        shard: name.to_string(),
        frame: None,
        msg: format!("{trailer_err} (the frames were found by walking the file)"),
        lost_records: Some(0),
        lost_ids: vec![],
    }];
    match &expected {
        // The trailer still says which frames there were: every one whose bytes are not found
        // intact somewhere in the file is lost, with the ids it held.
        Some(ix) => {
            let found: std::collections::HashSet<[u8; 16]> =
                scan.frames.iter().map(|f| f.entry.hash).collect();
            for (fi, f) in ix.frames.iter().enumerate() {
                if !found.contains(&f.hash) {
                    let ids = ix.ids[ix.starts[fi] as usize..ix.starts[fi + 1] as usize].to_vec();
                    damage.push(Damage {
                        shard: name.to_string(),
                        frame: Some(fi),
                        msg: format!(
                            "lost: its bytes (offset {}, {} bytes) no longer decode",
                            f.offset, f.compressed
                        ),
                        lost_records: Some(f.records as u64),
                        lost_ids: ids,
                    });
                }
            }
        }
        None => {
            for r in &scan.damaged {
                damage.push(Damage {
                    shard: name.to_string(),
                    frame: Some(r.position),
                    msg: format!(
                        "bytes {}..{} do not decode ({}); the index that named its records is damaged too",
                        r.start, r.end, r.why
                    ),
                    lost_records: None,
                    lost_ids: vec![],
                });
            }
        }
    }
    if scan.trailer_at.is_none() && expected.is_none() && scan.damaged.is_empty() {
        damage[0].msg.push_str("; the file ends without a trailer (truncated after a frame?)");
    }
    ShardSalvage { index: scan.into_index(), damage }
}
