//! One shard file: independent zstd frames of JSONL records, then a seek index.
//!
//! ```text
//! [zstd frame 0][zstd frame 1]…[zstd frame F-1][zstd skippable frame: index]
//! ```
//! The whole file is a valid zstd stream (`zstd -dc shard-00000.jsonl.zst` prints JSONL): the
//! index lives in a skippable frame that decoders ignore. Each data frame has zstd's content
//! checksum on and holds at most `frame_records` records. Index payload (little-endian):
//!
//! ```text
//! "DSTLIDX1" | u32 version | u32 n_frames | u64 n_records
//! n_frames × { u64 offset | u32 compressed | u32 raw | u32 records | u32 0 | [u8;16] blake3(frame) }
//! u32 ids_len | zstd("id\nid\n…") | [u8;32] blake3(everything above) | u64 payload_len | "DSTLEND1"
//! ```
//! A reader finds the index from the last 16 bytes. A damaged index is detected by its own
//! checksum, and the frames can then still be found by walking the zstd frame headers.

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{Error, IoContext, Result};

const SKIPPABLE_MAGIC: u32 = 0x184D_2A5E;
const INDEX_MAGIC: &[u8; 8] = b"DSTLIDX1";
const FOOTER_MAGIC: &[u8; 8] = b"DSTLEND1";
const INDEX_VERSION: u32 = 1;
const ENTRY_BYTES: usize = 40;
const FOOTER_BYTES: usize = 16;
/// Frames larger than this are not ones we wrote; refuse rather than allocate.
pub const MAX_FRAME_RAW: u64 = 1 << 30;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameEntry {
    /// Byte offset of the frame in the shard file.
    pub offset: u64,
    pub compressed: u32,
    pub raw: u32,
    pub records: u32,
    /// First 16 bytes of blake3 of the compressed frame.
    pub hash: [u8; 16],
}

/// The decoded seek index of a shard.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardIndex {
    pub frames: Vec<FrameEntry>,
    /// Record index (within the shard) of the first record of each frame; one more entry at the end.
    pub starts: Vec<u64>,
    /// Record ids in order.
    pub ids: Vec<String>,
}

impl ShardIndex {
    pub fn new(frames: Vec<FrameEntry>, ids: Vec<String>) -> Self {
        let mut starts = Vec::with_capacity(frames.len() + 1);
        let mut n = 0u64;
        for f in &frames {
            starts.push(n);
            n += f.records as u64;
        }
        starts.push(n);
        ShardIndex { frames, starts, ids }
    }

    pub fn records(&self) -> u64 {
        *self.starts.last().unwrap_or(&0)
    }

    /// `(frame, line within frame)` of record `i` of this shard.
    pub fn locate(&self, i: u64) -> (usize, usize) {
        let f = self.starts.partition_point(|&s| s <= i) - 1;
        (f, (i - self.starts[f]) as usize)
    }

    /// The index as a complete skippable zstd frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(64 + self.frames.len() * ENTRY_BYTES);
        p.extend_from_slice(INDEX_MAGIC);
        p.extend_from_slice(&INDEX_VERSION.to_le_bytes());
        p.extend_from_slice(&(self.frames.len() as u32).to_le_bytes());
        p.extend_from_slice(&self.records().to_le_bytes());
        for f in &self.frames {
            p.extend_from_slice(&f.offset.to_le_bytes());
            p.extend_from_slice(&f.compressed.to_le_bytes());
            p.extend_from_slice(&f.raw.to_le_bytes());
            p.extend_from_slice(&f.records.to_le_bytes());
            p.extend_from_slice(&0u32.to_le_bytes());
            p.extend_from_slice(&f.hash);
        }
        let mut joined = Vec::new();
        for id in &self.ids {
            joined.extend_from_slice(id.as_bytes());
            joined.push(b'\n');
        }
        let ids = zstd::bulk::compress(&joined, 3).expect("in-memory zstd compression");
        p.extend_from_slice(&(ids.len() as u32).to_le_bytes());
        p.extend_from_slice(&ids);
        let sum = blake3::hash(&p);
        p.extend_from_slice(sum.as_bytes());
        let payload_len = (p.len() + FOOTER_BYTES) as u64;
        p.extend_from_slice(&payload_len.to_le_bytes());
        p.extend_from_slice(FOOTER_MAGIC);
        let mut out = Vec::with_capacity(8 + p.len());
        out.extend_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.extend_from_slice(&p);
        out
    }

    /// Read the index trailer of the shard at `path` (`file_len` bytes long).
    pub fn read(file: &File, file_len: u64, shard: &str) -> Result<ShardIndex> {
        Self::read_trailer(file, file_len, shard, true)
    }

    /// The index a damaged shard's trailer still records: its checksum must hold, but the frame
    /// offsets need not match the file any more (bytes before the trailer were deleted or
    /// inserted) and the skippable-frame header may be damaged. Used to name the frames and ids
    /// that damage destroyed.
    pub fn read_lenient(file: &File, file_len: u64, shard: &str) -> Result<ShardIndex> {
        Self::read_trailer(file, file_len, shard, false)
    }

    /// Where the trailer starts according to the footer, if the footer is intact.
    pub fn trailer_start(file: &File, file_len: u64) -> Option<u64> {
        let mut foot = [0u8; FOOTER_BYTES];
        file.read_exact_at(&mut foot, file_len.checked_sub(FOOTER_BYTES as u64)?).ok()?;
        if &foot[8..] != FOOTER_MAGIC {
            return None;
        }
        let payload_len = u64::from_le_bytes(foot[..8].try_into().unwrap());
        file_len.checked_sub(payload_len.checked_add(8)?)
    }

    fn read_trailer(file: &File, file_len: u64, shard: &str, strict: bool) -> Result<ShardIndex> {
        let bad = |msg: String| Error::Shard {
            shard: shard.to_string(),
            msg: format!("index trailer: {msg}"),
        };
        if file_len < (8 + FOOTER_BYTES) as u64 {
            return Err(bad(format!("file is only {file_len} bytes")));
        }
        let mut foot = [0u8; FOOTER_BYTES];
        file.read_exact_at(&mut foot, file_len - FOOTER_BYTES as u64).at(shard)?;
        if &foot[8..] != FOOTER_MAGIC {
            return Err(bad("no end marker (file truncated or not a distill shard)".into()));
        }
        let payload_len = u64::from_le_bytes(foot[..8].try_into().unwrap());
        if payload_len < (FOOTER_BYTES + 56) as u64
            || payload_len > u32::MAX as u64
            || payload_len + 8 > file_len
        {
            return Err(bad(format!(
                "payload length {payload_len} does not fit a {file_len}-byte file"
            )));
        }
        let start = file_len - payload_len - 8;
        let mut buf = vec![0u8; payload_len as usize + 8];
        file.read_exact_at(&mut buf, start).at(shard)?;
        if strict
            && (u32::from_le_bytes(buf[..4].try_into().unwrap()) != SKIPPABLE_MAGIC
                || u32::from_le_bytes(buf[4..8].try_into().unwrap()) as u64 != payload_len)
        {
            return Err(bad("skippable frame header does not match".into()));
        }
        let p = &buf[8..];
        let body = &p[..p.len() - FOOTER_BYTES - 32];
        let sum = &p[p.len() - FOOTER_BYTES - 32..p.len() - FOOTER_BYTES];
        if blake3::hash(body).as_bytes() != sum {
            return Err(bad("checksum mismatch (the index is damaged)".into()));
        }
        Self::parse_body(body, strict.then_some(start)).map_err(bad)
    }

    /// `index_offset`: where the trailer starts, to check the frame offsets against (strict).
    fn parse_body(b: &[u8], index_offset: Option<u64>) -> std::result::Result<ShardIndex, String> {
        let mut r = Cursor { b, pos: 0 };
        if r.take(8)? != INDEX_MAGIC {
            return Err("bad magic".into());
        }
        let version = r.u32()?;
        if version != INDEX_VERSION {
            return Err(format!(
                "index version {version} is not supported (expected {INDEX_VERSION}); upgrade distill"
            ));
        }
        let n_frames = r.u32()? as usize;
        let n_records = r.u64()?;
        if n_frames.checked_mul(ENTRY_BYTES).is_none_or(|n| n > b.len()) {
            return Err(format!("{n_frames} frames do not fit the index"));
        }
        let mut frames = Vec::with_capacity(n_frames);
        let mut expect_offset = 0u64;
        for i in 0..n_frames {
            let f = FrameEntry {
                offset: r.u64()?,
                compressed: r.u32()?,
                raw: r.u32()?,
                records: r.u32()?,
                hash: {
                    r.u32()?;
                    r.take(16)?.try_into().unwrap()
                },
            };
            if (index_offset.is_some() && f.offset != expect_offset) || f.raw as u64 > MAX_FRAME_RAW
            {
                return Err(format!(
                    "frame {i} entry is inconsistent (offset {}, expected {expect_offset})",
                    f.offset
                ));
            }
            expect_offset += f.compressed as u64;
            frames.push(f);
        }
        if let Some(index_offset) = index_offset
            && expect_offset != index_offset
        {
            return Err(format!(
                "frames end at {expect_offset} but the index starts at {index_offset}"
            ));
        }
        let in_frames: u64 = frames.iter().map(|f| f.records as u64).sum();
        if n_records != in_frames {
            return Err(format!(
                "{n_records} records declared, the frame entries hold {in_frames}"
            ));
        }
        let ids_len = r.u32()? as usize;
        let ids_z = r.take(ids_len)?;
        // The buffer is sized by what the compressed ids declare, checked against the record
        // count (an id is at most MAX_ID_BYTES and a newline), never by the count alone.
        let per_id = crate::record::MAX_ID_BYTES as u64 + 1;
        let declared = match zstd::zstd_safe::get_frame_content_size(ids_z) {
            Ok(Some(n)) if n <= n_records.saturating_mul(per_id) => n as usize,
            Ok(Some(n)) => {
                return Err(format!("record ids declare {n} bytes for {n_records} records"));
            }
            _ => return Err("record ids have no declared size".into()),
        };
        // The declared size is not trusted with an allocation (a forged count could declare a
        // terabyte): decoded as frames are, memory grows only with what actually decodes.
        let joined = decompress_frame(ids_z, declared)
            .map_err(|e| format!("record ids do not decompress: {e}"))?;
        let joined =
            String::from_utf8(joined).map_err(|_| "record ids are not UTF-8".to_string())?;
        let ids: Vec<String> = joined.split_terminator('\n').map(str::to_string).collect();
        let idx = ShardIndex::new(frames, ids);
        if idx.records() != n_records || idx.ids.len() as u64 != n_records {
            return Err(format!(
                "{n_records} records declared, frames hold {}, {} ids",
                idx.records(),
                idx.ids.len()
            ));
        }
        Ok(idx)
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end =
            self.pos.checked_add(n).filter(|&e| e <= self.b.len()).ok_or("index is truncated")?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
}

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Compress one frame's JSONL with content size and content checksum.
pub fn compress_frame(raw: &[u8], level: i32) -> Vec<u8> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().is_none_or(|(l, _)| *l != level) {
            let mut z = zstd::bulk::Compressor::new(level).expect("zstd compressor");
            z.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))
                .expect("zstd checksum flag");
            z.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(true))
                .expect("zstd size flag");
            *c = Some((level, z));
        }
        c.as_mut().unwrap().1.compress(raw).expect("in-memory zstd compression")
    })
}

/// Decompress one frame, checking its size and zstd checksum.
///
/// The declared size (from the index or the frame header) is not trusted with an allocation: a
/// frame that claims a gigabyte but holds a few bytes would otherwise cost a gigabyte. Small
/// frames (the common case: at most 64× their compressed size) decode in one call into a buffer
/// of the declared size; larger claims stream, so memory grows only with what actually decodes.
pub(crate) fn decompress_frame(
    bytes: &[u8],
    raw_len: usize,
) -> std::result::Result<Vec<u8>, String> {
    let out = if raw_len <= bytes.len().saturating_mul(64).max(1 << 16) {
        DECOMPRESSOR.with(|d| {
            let mut d = d.borrow_mut();
            let d = d
                .get_or_insert_with(|| zstd::bulk::Decompressor::new().expect("zstd decompressor"));
            d.decompress(bytes, raw_len.max(1)).map_err(|e| format!("zstd: {e}"))
        })?
    } else {
        use std::io::Read;
        let mut out = Vec::new();
        let dec =
            zstd::stream::read::Decoder::with_buffer(bytes).map_err(|e| format!("zstd: {e}"))?;
        // One byte more than declared is enough to tell that the declaration is wrong.
        dec.take(raw_len as u64 + 1).read_to_end(&mut out).map_err(|e| format!("zstd: {e}"))?;
        out
    };
    if out.len() != raw_len {
        return Err(format!("decompressed to {} bytes, index says {raw_len}", out.len()));
    }
    Ok(out)
}

pub fn frame_hash(bytes: &[u8]) -> [u8; 16] {
    blake3::hash(bytes).as_bytes()[..16].try_into().unwrap()
}

/// Read frame `f` of an open shard file.
pub fn read_frame_bytes(file: &File, f: &FrameEntry, shard: &str) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; f.compressed as usize];
    file.read_exact_at(&mut buf, f.offset).at(shard)?;
    Ok(buf)
}

/// Rebuild a shard's index by walking its zstd frames, for when the trailer is damaged.
/// Every frame must decode; a frame that does not makes the shard unindexable.
pub fn scan_frames(bytes: &[u8], shard: &str) -> Result<ShardIndex> {
    let scan = scan(bytes, None);
    if let Some(bad) = scan.damaged.first() {
        return Err(Error::Frame {
            shard: shard.to_string(),
            frame: bad.position,
            msg: format!("bytes {}..{} do not decode: {}", bad.start, bad.end, bad.why),
        });
    }
    Ok(scan.into_index())
}

/// A frame found by [`scan`]: it decoded, its zstd checksum held and every line has an id.
#[derive(Debug, Clone)]
pub struct ScannedFrame {
    pub entry: FrameEntry,
    pub ids: Vec<String>,
}

/// Bytes between good frames that do not decode.
#[derive(Debug, Clone, PartialEq)]
pub struct DamagedRange {
    pub start: u64,
    pub end: u64,
    /// Its place among the frames as the file now stands (good frames and damaged ranges before it).
    pub position: usize,
    /// Why the first frame there did not decode.
    pub why: String,
}

/// What a lenient walk of a shard's bytes found.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    pub frames: Vec<ScannedFrame>,
    pub damaged: Vec<DamagedRange>,
    /// Where the index trailer starts, if it was found (intact or not).
    pub trailer_at: Option<u64>,
}

impl Scan {
    pub fn into_index(self) -> ShardIndex {
        let mut ids = Vec::new();
        let mut frames = Vec::with_capacity(self.frames.len());
        for f in self.frames {
            ids.extend(f.ids);
            frames.push(f.entry);
        }
        ShardIndex::new(frames, ids)
    }
}

const ZSTD_MAGIC: [u8; 4] = 0xFD2F_B528u32.to_le_bytes();

/// Walk a shard's zstd frames, stepping over damage: where a frame does not decode, look for the
/// next offset at which one does (or the trailer starts). `trailer_hint` is where the footer says
/// the trailer starts, when the footer is intact.
pub fn scan(bytes: &[u8], trailer_hint: Option<u64>) -> Scan {
    let mut out = Scan::default();
    let is_trailer = |off: usize| {
        let rest = &bytes[off..];
        trailer_hint == Some(off as u64)
            || (rest.len() >= 8
                && u32::from_le_bytes(rest[..4].try_into().unwrap()) & 0xFFFF_FFF0
                    == SKIPPABLE_MAGIC & 0xFFFF_FFF0)
    };
    let mut off = 0usize;
    while off < bytes.len() {
        if is_trailer(off) {
            out.trailer_at = Some(off as u64);
            break;
        }
        match decode_frame_at(bytes, off) {
            Ok(f) => {
                off += f.entry.compressed as usize;
                out.frames.push(f);
            }
            Err(why) => {
                // Resume at the next offset where a frame decodes or our trailer starts.
                let next = (off + 1..bytes.len().saturating_sub(3)).find(|&p| {
                    (bytes[p..p + 4] == ZSTD_MAGIC && decode_frame_at(bytes, p).is_ok())
                        || (trailer_hint == Some(p as u64))
                        || (bytes.len() - p >= 16
                            && u32::from_le_bytes(bytes[p..p + 4].try_into().unwrap())
                                == SKIPPABLE_MAGIC
                            && &bytes[p + 8..p + 16] == INDEX_MAGIC)
                });
                let end = next.unwrap_or(bytes.len());
                out.damaged.push(DamagedRange {
                    start: off as u64,
                    end: end as u64,
                    position: out.frames.len() + out.damaged.len(),
                    why,
                });
                off = end;
            }
        }
    }
    out
}

/// Decode the frame starting at `off`, checking its size bound, zstd checksum and record ids.
fn decode_frame_at(bytes: &[u8], off: usize) -> std::result::Result<ScannedFrame, String> {
    let rest = &bytes[off..];
    // Every frame distill writes carries zstd's content checksum (frame header descriptor bit
    // 2): a frame without it is damage, not a frame whose content could be trusted.
    if rest.len() < 5 || rest[4] & 0x04 == 0 {
        return Err("no zstd frame with a content checksum starts here".into());
    }
    let len = zstd::zstd_safe::find_frame_compressed_size(rest)
        .map_err(|_| "cannot find the frame's end".to_string())?;
    if len > rest.len() || len > u32::MAX as usize {
        return Err("the frame runs past the end of the file".into());
    }
    let raw_len = match zstd::zstd_safe::get_frame_content_size(&rest[..len]) {
        Ok(Some(n)) if n <= MAX_FRAME_RAW => n,
        Ok(Some(n)) => return Err(format!("frame declares {n} bytes")),
        _ => return Err("frame header has no content size".into()),
    };
    let raw = decompress_frame(&rest[..len], raw_len as usize)?;
    let mut ids = Vec::new();
    for line in raw.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        ids.push(record_id_of(line)?);
    }
    Ok(ScannedFrame {
        entry: FrameEntry {
            offset: off as u64,
            compressed: len as u32,
            raw: raw_len as u32,
            records: ids.len() as u32,
            hash: frame_hash(&rest[..len]),
        },
        ids,
    })
}

/// The `id` of a JSON record line, without parsing the rest.
pub(crate) fn record_id_of(line: &[u8]) -> std::result::Result<String, String> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: String,
    }
    serde_json::from_slice::<Id>(line)
        .map(|r| r.id)
        .map_err(|e| format!("record without an id: {e}"))
}

/// Size of the file at `path`.
pub fn file_len(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path).at(path)?.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An index body whose record count (and frame entries) claim 2^40 records, as a damaged or
    /// hostile shard could with a recomputed checksum: a clean error, no allocation from the count.
    #[test]
    fn a_lying_record_count_is_refused_before_allocating() {
        let frames =
            vec![FrameEntry { offset: 0, compressed: 10, raw: 20, records: 2, hash: [0; 16] }];
        let idx = ShardIndex::new(frames, vec!["a#0".into(), "b#0".into()]);
        let enc = idx.encode();
        let body_len = enc.len() - 8 - FOOTER_BYTES - 32;
        let body = &enc[8..8 + body_len];
        assert!(ShardIndex::parse_body(body, Some(10)).is_ok());
        for claim in [1u64 << 40, 1 << 56, 3] {
            let mut lie = body.to_vec();
            lie[16..24].copy_from_slice(&claim.to_le_bytes());
            let e = ShardIndex::parse_body(&lie, Some(10)).err().unwrap();
            assert!(e.contains(&format!("{claim} records declared")), "{e}");
        }
        // The frame entry claiming u32::MAX records and the count agreeing with it.
        let mut lie = body.to_vec();
        lie[16..24].copy_from_slice(&(u32::MAX as u64).to_le_bytes());
        lie[24 + 16..24 + 20].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = ShardIndex::parse_body(&lie, Some(10)).err().unwrap();
        assert!(e.contains("record ids declare") || e.contains("records declared"), "{e}");
    }
}
