//! What a Parquet file claims, checked before the `parquet` crate acts on it.
//!
//! The crate (57) trusts the footer's and the page headers' counts: a schema element with a
//! negative `num_children` panics ("capacity overflow"), a list or page count of 2^31 reserves
//! gigabytes before anything reads it, and a page that decompresses far past its announced size
//! grows without bound. So the footer and every page header are walked here first, in Thrift's
//! compact protocol (the encoding Parquet's metadata uses), with every count held against the
//! bytes that could hold it:
//!
//! - the footer at most [`MAX_FOOTER_BYTES`]; every list, map and string no longer than the
//!   bytes left; nesting at most [`MAX_DEPTH`];
//! - the schema a tree: each `num_children` between 0 and the elements left, depth at most
//!   [`MAX_DEPTH`];
//! - each column chunk inside the file; each page header in its chunk, its announced sizes
//!   non-negative, at most [`MAX_PAGE_BYTES`] uncompressed, its body inside the chunk; a page's
//!   value count at most `max(8 × its uncompressed size, 2^24)`; a dictionary's at most its
//!   uncompressed bytes;
//! - a zstd page inflating to no more than its header announces (the crate inflates zstd into a
//!   growing buffer and compares only afterwards);
//! - the sum of the pages' uncompressed sizes at most the caller's decoded-size limit.
//!
//! Decoding can still expand a dictionary (one long string repeated on many rows): the reader
//! bounds each decoded row and the decoded total as it goes (`super::Limits`).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// The footer (FileMetaData) a file may have.
pub const MAX_FOOTER_BYTES: u64 = 64 << 20;
/// Nesting of Thrift structs and lists, and of the schema tree.
pub const MAX_DEPTH: usize = 64;
/// A page's uncompressed size.
pub const MAX_PAGE_BYTES: i64 = 256 << 20;
/// What is read to walk one page header (headers carry at most small statistics).
const PAGE_HEADER_WINDOW: u64 = 1 << 20;

/// Why a file was refused (the caller adds the file's name).
pub type Refusal = String;

// Thrift compact protocol types.
const T_TRUE: u8 = 1;
const T_FALSE: u8 = 2;
const T_BYTE: u8 = 3;
const T_I16: u8 = 4;
const T_I32: u8 = 5;
const T_I64: u8 = 6;
const T_DOUBLE: u8 = 7;
const T_BINARY: u8 = 8;
const T_LIST: u8 = 9;
const T_SET: u8 = 10;
const T_MAP: u8 = 11;
const T_STRUCT: u8 = 12;
const T_UUID: u8 = 13;

/// What the walk reports: an integer field (with the path of field ids to it), or the end of a
/// struct (with the path of the field holding it).
enum Event<'a> {
    Int(&'a [i16], i64),
    StructEnd(&'a [i16]),
}

struct Walker<'a> {
    buf: &'a [u8],
    at: usize,
    path: Vec<i16>,
}

impl<'a> Walker<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Walker { buf, at: 0, path: Vec::new() }
    }

    fn left(&self) -> usize {
        self.buf.len() - self.at
    }

    fn byte(&mut self) -> Result<u8, Refusal> {
        let b = *self.buf.get(self.at).ok_or("metadata ends early")?;
        self.at += 1;
        Ok(b)
    }

    fn skip(&mut self, n: usize) -> Result<(), Refusal> {
        if n > self.left() {
            return Err(format!("metadata claims {n} bytes where {} are left", self.left()));
        }
        self.at += n;
        Ok(())
    }

    fn varint(&mut self) -> Result<u64, Refusal> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("an integer in the metadata runs past 10 bytes".into())
    }

    fn zigzag(&mut self) -> Result<i64, Refusal> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    /// A count (list, map, string length) no larger than the bytes left, each element taking
    /// at least `min_each` bytes.
    fn count(&mut self, n: u64, min_each: usize) -> Result<usize, Refusal> {
        let most = self.left() / min_each.max(1);
        if n > most as u64 {
            return Err(format!(
                "metadata claims {n} elements where {} bytes are left",
                self.left()
            ));
        }
        Ok(n as usize)
    }

    fn value(
        &mut self,
        t: u8,
        depth: usize,
        on: &mut dyn FnMut(Event<'_>) -> Result<(), Refusal>,
    ) -> Result<(), Refusal> {
        if depth > MAX_DEPTH {
            return Err(format!("metadata nested deeper than {MAX_DEPTH}"));
        }
        match t {
            // A bool field carries its value in its type.
            T_TRUE | T_FALSE => on(Event::Int(&self.path, i64::from(t == T_TRUE)))?,
            T_BYTE => {
                let v = self.byte()? as i8;
                on(Event::Int(&self.path, v.into()))?;
            }
            T_I16 | T_I32 | T_I64 => {
                let v = self.zigzag()?;
                on(Event::Int(&self.path, v))?;
            }
            T_DOUBLE => self.skip(8)?,
            T_UUID => self.skip(16)?,
            T_BINARY => {
                let n = self.varint()?;
                let n = self.count(n, 1)?;
                self.skip(n)?;
            }
            T_LIST | T_SET => {
                let h = self.byte()?;
                let et = h & 0x0f;
                let n = if h >> 4 == 0x0f { self.varint()? } else { u64::from(h >> 4) };
                let n = self.count(n, 1)?;
                for _ in 0..n {
                    // A bool in a list is a byte of its own.
                    if et == T_TRUE || et == T_FALSE {
                        self.byte()?;
                    } else {
                        self.value(et, depth + 1, on)?;
                    }
                }
            }
            T_MAP => {
                let n = self.varint()?;
                let n = self.count(n, 2)?;
                if n > 0 {
                    let kv = self.byte()?;
                    for _ in 0..n {
                        self.value(kv >> 4, depth + 1, on)?;
                        self.value(kv & 0x0f, depth + 1, on)?;
                    }
                }
            }
            T_STRUCT => self.fields(depth + 1, on)?,
            other => return Err(format!("metadata holds an unknown Thrift type {other}")),
        }
        Ok(())
    }

    /// A struct's fields up to its stop byte.
    fn fields(
        &mut self,
        depth: usize,
        on: &mut dyn FnMut(Event<'_>) -> Result<(), Refusal>,
    ) -> Result<(), Refusal> {
        if depth > MAX_DEPTH {
            return Err(format!("metadata nested deeper than {MAX_DEPTH}"));
        }
        let mut last: i16 = 0;
        loop {
            let h = self.byte()?;
            if h == 0 {
                on(Event::StructEnd(&self.path))?;
                return Ok(());
            }
            let t = h & 0x0f;
            let delta = h >> 4;
            let id = if delta == 0 {
                i16::try_from(self.zigzag()?).map_err(|_| "a field id out of range")?
            } else {
                last.wrapping_add(i16::from(delta))
            };
            last = id;
            self.path.push(id);
            let r = self.value(t, depth, on);
            self.path.pop();
            r?;
        }
    }
}

/// The parts of the footer the checks need.
#[derive(Debug, Default)]
struct Footer {
    /// Each schema element's `num_children` (0 for a leaf).
    children: Vec<i64>,
    /// Each column chunk's metadata.
    chunks: Vec<Chunk>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Chunk {
    codec: i64,
    num_values: i64,
    dictionary_page_offset: Option<i64>,
    data_page_offset: i64,
    compressed: i64,
}

// FileMetaData: 2 schema (list<SchemaElement: 5 num_children>), 4 row_groups (list<RowGroup:
// 1 columns list<ColumnChunk: 3 meta_data ColumnMetaData: 4 codec, 5 num_values,
// 7 total_compressed_size, 9 data_page_offset, 11 dictionary_page_offset>>).
const SCHEMA: &[i16] = &[2];
const NUM_CHILDREN: &[i16] = &[2, 5];
const CHUNK_META: &[i16] = &[4, 1, 3];
const CODEC: &[i16] = &[4, 1, 3, 4];
const NUM_VALUES: &[i16] = &[4, 1, 3, 5];
const COMPRESSED: &[i16] = &[4, 1, 3, 7];
const DATA_PAGE_AT: &[i16] = &[4, 1, 3, 9];
const DICT_PAGE_AT: &[i16] = &[4, 1, 3, 11];

fn walk_footer(buf: &[u8]) -> Result<Footer, Refusal> {
    let mut f = Footer::default();
    let mut nc: Option<i64> = None;
    let mut chunk = Chunk::default();
    Walker::new(buf).fields(0, &mut |e| {
        match e {
            Event::Int(p, v) if p == NUM_CHILDREN => nc = Some(v),
            Event::StructEnd(p) if p == SCHEMA => f.children.push(nc.take().unwrap_or(0)),
            Event::Int(p, v) if p == CODEC => chunk.codec = v,
            Event::Int(p, v) if p == NUM_VALUES => chunk.num_values = v,
            Event::Int(p, v) if p == COMPRESSED => chunk.compressed = v,
            Event::Int(p, v) if p == DATA_PAGE_AT => chunk.data_page_offset = v,
            Event::Int(p, v) if p == DICT_PAGE_AT => chunk.dictionary_page_offset = Some(v),
            Event::StructEnd(p) if p == CHUNK_META => f.chunks.push(std::mem::take(&mut chunk)),
            _ => {}
        }
        Ok(())
    })?;
    Ok(f)
}

/// The schema's `num_children` make a tree that uses every element once, no deeper than
/// [`MAX_DEPTH`].
fn check_schema(children: &[i64]) -> Result<(), Refusal> {
    let n = children.len();
    let Some(&root) = children.first() else { return Err("the schema is empty".into()) };
    let fits = |c: i64, i: usize| c >= 0 && c as u64 <= (n - i - 1) as u64;
    if !fits(root, 0) {
        return Err(format!("the schema's root claims {root} children of {} elements", n - 1));
    }
    // Children still to come at each open level.
    let mut open = vec![root];
    for (i, &c) in children.iter().enumerate().skip(1) {
        while open.last() == Some(&0) {
            open.pop();
        }
        let Some(top) = open.last_mut() else {
            return Err(format!("schema element {i} belongs to no parent"));
        };
        *top -= 1;
        if !fits(c, i) {
            return Err(format!(
                "schema element {i} claims {c} children where {} elements are left",
                n - i - 1
            ));
        }
        if c > 0 {
            open.push(c);
            if open.len() > MAX_DEPTH {
                return Err(format!("the schema is nested deeper than {MAX_DEPTH}"));
            }
        }
    }
    if open.iter().any(|&c| c > 0) {
        return Err("the schema claims more children than it has elements".into());
    }
    Ok(())
}

/// A page header's fields the checks need.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Page {
    kind: i64,
    raw: i64,
    packed: i64,
    values: i64,
    /// Data page v2: the level bytes before the compressed values, and whether they are.
    levels: i64,
    compressed: bool,
}

/// A page header and its length.
fn page_header(buf: &[u8]) -> Result<(Page, usize), Refusal> {
    let mut h = Page { kind: -1, raw: -1, packed: -1, values: 0, levels: 0, compressed: true };
    let mut w = Walker::new(buf);
    w.fields(0, &mut |e| {
        if let Event::Int(p, v) = e {
            match p {
                [1] => h.kind = v,
                [2] => h.raw = v,
                [3] => h.packed = v,
                // data page (5), dictionary page (7), data page v2 (8): 1 num_values
                [5 | 7 | 8, 1] => h.values = v,
                // v2: 5 definition and 6 repetition level bytes, 7 is_compressed
                [8, 5 | 6] => h.levels = h.levels.saturating_add(v),
                [8, 7] => h.compressed = v != 0,
                _ => {}
            }
        }
        Ok(())
    })?;
    Ok((h, w.at))
}

const DATA_PAGE: i64 = 0;
const DICTIONARY_PAGE: i64 = 2;
const DATA_PAGE_V2: i64 = 3;
const ZSTD: i64 = 6;

/// A zstd page body inflates to at most the `raw` bytes its header announces (the `parquet`
/// crate inflates zstd into a growing buffer and compares only afterwards).
fn zstd_within(body: &[u8], raw: i64) -> Result<(), Refusal> {
    use std::io::Read as _;
    let dec = zstd::stream::read::Decoder::new(body).map_err(|e| format!("zstd: {e}"))?;
    let n = std::io::copy(&mut dec.take(raw as u64 + 1), &mut std::io::sink())
        .map_err(|e| format!("its zstd data is damaged: {e}"))?;
    if n > raw as u64 {
        return Err(format!("inflates past the {raw} bytes its header announces"));
    }
    Ok(())
}

/// Check `path` (of `len` bytes): its footer, schema, chunks and page headers; returns the sum
/// of the pages' uncompressed sizes, refused past `max_decoded`.
pub fn check(path: &Path, max_decoded: u64) -> Result<u64, Refusal> {
    let mut f = File::open(path).map_err(|e| e.to_string())?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    if len < 12 {
        return Err(format!("{len} bytes is too short for a Parquet file"));
    }
    let mut tail = [0u8; 8];
    f.seek(SeekFrom::Start(len - 8)).map_err(|e| e.to_string())?;
    f.read_exact(&mut tail).map_err(|e| e.to_string())?;
    if &tail[4..] != b"PAR1" {
        return Err("no PAR1 magic at the end (not a Parquet file, or truncated)".into());
    }
    let flen = u64::from(u32::from_le_bytes(tail[..4].try_into().expect("4 bytes")));
    if flen + 12 > len || flen > MAX_FOOTER_BYTES {
        return Err(format!(
            "the footer claims {flen} bytes (the file has {len}; at most {MAX_FOOTER_BYTES} are read)"
        ));
    }
    let mut buf = vec![0u8; flen as usize];
    f.seek(SeekFrom::Start(len - 8 - flen)).map_err(|e| e.to_string())?;
    f.read_exact(&mut buf).map_err(|e| e.to_string())?;
    let footer = walk_footer(&buf).map_err(|e| format!("footer: {e}"))?;
    check_schema(&footer.children).map_err(|e| format!("footer: {e}"))?;
    let data_end = len - 8 - flen;
    let mut total = 0u64;
    let mut window = Vec::new();
    for (ci, c) in footer.chunks.iter().enumerate() {
        let start = c.dictionary_page_offset.filter(|&d| d > 0).unwrap_or(c.data_page_offset);
        let end = start.checked_add(c.compressed);
        let inside = start >= 4
            && c.compressed >= 0
            && c.num_values >= 0
            && end.is_some_and(|e| e as u64 <= data_end);
        if !inside {
            return Err(format!(
                "column chunk {ci} claims bytes {start}..+{} and {} values, outside the file's {data_end} bytes of data",
                c.compressed, c.num_values
            ));
        }
        let (mut at, end) = (start as u64, end.expect("checked") as u64);
        while at < end {
            let n = (end - at).min(PAGE_HEADER_WINDOW);
            window.resize(n as usize, 0);
            f.seek(SeekFrom::Start(at)).map_err(|e| e.to_string())?;
            f.read_exact(&mut window).map_err(|e| e.to_string())?;
            let (h, hlen) = page_header(&window)
                .map_err(|e| format!("column chunk {ci}: the page header at byte {at}: {e}"))?;
            let (kind, raw, packed, count) = (h.kind, h.raw, h.packed, h.values);
            let body_at = at + hlen as u64;
            let bad = |what: String| format!("column chunk {ci}: the page at byte {at} {what}");
            if !(0..=MAX_PAGE_BYTES).contains(&raw) {
                return Err(bad(format!(
                    "claims {raw} bytes uncompressed (at most {MAX_PAGE_BYTES})"
                )));
            }
            if packed < 0 || body_at + packed as u64 > end {
                return Err(bad(format!("claims {packed} bytes, past its chunk's end at {end}")));
            }
            let most = if kind == DICTIONARY_PAGE { raw } else { (8 * raw).max(1 << 24) };
            if !(0..=most).contains(&count) {
                return Err(bad(format!("claims {count} values in {raw} bytes")));
            }
            if c.codec == ZSTD && matches!(kind, DATA_PAGE | DICTIONARY_PAGE | DATA_PAGE_V2) {
                // v2 pages keep their levels uncompressed, ahead of the values.
                let skip = if kind == DATA_PAGE_V2 { h.levels } else { 0 };
                if !(0..=packed).contains(&skip) {
                    return Err(bad(format!("claims {skip} level bytes in a {packed}-byte body")));
                }
                if kind != DATA_PAGE_V2 || h.compressed {
                    let mut body = vec![0u8; (packed - skip) as usize];
                    f.seek(SeekFrom::Start(body_at + skip as u64)).map_err(|e| e.to_string())?;
                    f.read_exact(&mut body).map_err(|e| e.to_string())?;
                    zstd_within(&body, raw).map_err(bad)?;
                }
            }
            total = total.saturating_add(raw as u64);
            if total > max_decoded {
                return Err(format!(
                    "its pages hold more than {max_decoded} bytes uncompressed (the limit for one file)"
                ));
            }
            at = body_at + packed as u64;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schema_must_be_a_tree_of_its_elements() {
        assert!(check_schema(&[2, 0, 0]).is_ok());
        assert!(check_schema(&[1, 2, 0, 0]).is_ok());
        assert!(check_schema(&[2, -1, 0]).unwrap_err().contains("-1 children"));
        assert!(check_schema(&[1, i64::from(i32::MAX)]).unwrap_err().contains("children"));
        assert!(check_schema(&[3, 0, 0]).unwrap_err().contains("root claims 3"));
        assert!(check_schema(&[2, 1, 0]).unwrap_err().contains("more children"));
        assert!(check_schema(&[1, 0, 0]).unwrap_err().contains("no parent"));
        let deep: Vec<i64> = (0..100).map(|i| if i < 99 { 1 } else { 0 }).collect();
        assert!(check_schema(&deep).unwrap_err().contains("deeper"));
    }

    #[test]
    fn counts_are_held_against_the_bytes_left() {
        // A struct whose field 1 is a list of 2^31 i32s, in 7 bytes.
        let buf = [0x19, 0xf5, 0x80, 0x80, 0x80, 0x80, 0x08];
        let e = walk_footer(&buf).unwrap_err();
        assert!(e.contains("2147483648 elements"), "{e}");
        // A binary of 1000 bytes with 2 left.
        let buf = [0x18, 0xe8, 0x07, 0x41, 0x42];
        assert!(walk_footer(&buf).unwrap_err().contains("1000"));
        // Structs nested 200 deep.
        let mut buf = vec![0x1c; 200];
        buf.push(0);
        assert!(walk_footer(&buf).unwrap_err().contains("deeper"));
    }

    /// Thrift compact: a field header (short form), a zigzag varint, a binary, a list header.
    fn field(out: &mut Vec<u8>, delta: u8, t: u8) {
        out.push(delta << 4 | t);
    }
    fn int(out: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        loop {
            let b = (z & 0x7f) as u8;
            z >>= 7;
            if z == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    fn list(out: &mut Vec<u8>, n: u8, t: u8) {
        out.push(n << 4 | t);
    }

    /// A one-column file: a page header announcing `raw` bytes uncompressed and `count` values,
    /// a 3-byte body, and a footer whose chunk spans the page.
    fn file(raw: i64, count: i64, chunk_len: Option<i64>) -> Vec<u8> {
        file_with(raw, count, chunk_len, &[1, 2, 3], 0)
    }

    fn file_with(raw: i64, count: i64, chunk_len: Option<i64>, body: &[u8], codec: i64) -> Vec<u8> {
        let mut page = Vec::new();
        field(&mut page, 1, T_I32);
        int(&mut page, 0); // DATA_PAGE
        field(&mut page, 1, T_I32);
        int(&mut page, raw);
        field(&mut page, 1, T_I32);
        int(&mut page, body.len() as i64);
        field(&mut page, 2, T_STRUCT); // 5: data_page_header
        field(&mut page, 1, T_I32);
        int(&mut page, count);
        page.push(0);
        page.push(0);
        page.extend(body);
        let mut f = Vec::new();
        field(&mut f, 2, T_LIST); // 2: schema
        list(&mut f, 2, T_STRUCT);
        field(&mut f, 4, T_BINARY);
        f.extend([1, b's']);
        field(&mut f, 1, T_I32);
        int(&mut f, 1); // 5: num_children
        f.push(0);
        field(&mut f, 1, T_I32);
        int(&mut f, 6); // 1: type BYTE_ARRAY
        field(&mut f, 3, T_BINARY);
        f.extend([1, b'a']);
        f.push(0);
        field(&mut f, 2, T_LIST); // 4: row_groups
        list(&mut f, 1, T_STRUCT);
        field(&mut f, 1, T_LIST); // 1: columns
        list(&mut f, 1, T_STRUCT);
        field(&mut f, 3, T_STRUCT); // 3: meta_data
        field(&mut f, 4, T_I32);
        int(&mut f, codec); // 4: codec
        field(&mut f, 1, T_I64);
        int(&mut f, 1); // 5: num_values
        field(&mut f, 2, T_I64);
        int(&mut f, chunk_len.unwrap_or(page.len() as i64)); // 7: total_compressed_size
        field(&mut f, 2, T_I64);
        int(&mut f, 4); // 9: data_page_offset
        f.extend([0, 0, 0, 0]); // meta_data, column chunk, row group, file metadata
        let mut out = b"PAR1".to_vec();
        out.extend(&page);
        out.extend(&f);
        out.extend((f.len() as u32).to_le_bytes());
        out.extend(b"PAR1");
        out
    }

    fn checked(bytes: &[u8]) -> Result<u64, Refusal> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.parquet");
        std::fs::write(&p, bytes).unwrap();
        check(&p, 1 << 30)
    }

    #[test]
    fn page_headers_are_held_to_their_chunk_and_the_limits() {
        assert_eq!(checked(&file(10, 1, None)), Ok(10));
        let e = checked(&file(1 << 30, 1, None)).unwrap_err();
        assert!(e.contains("uncompressed"), "{e}");
        let e = checked(&file(10, 1 << 31, None)).unwrap_err();
        assert!(e.contains("2147483648 values"), "{e}");
        let e = checked(&file(10, -5, None)).unwrap_err();
        assert!(e.contains("-5 values"), "{e}");
        // A chunk that claims bytes past the data.
        let e = checked(&file(10, 1, Some(1 << 40))).unwrap_err();
        assert!(e.contains("outside the file"), "{e}");
        // A chunk shorter than its page's body (the header is 11 bytes, the body 3).
        let e = checked(&file(10, 1, Some(13))).unwrap_err();
        assert!(e.contains("past its chunk's end"), "{e}");
        // A zstd page that inflates to a mebibyte where its header says 10 bytes.
        let bomb = zstd::bulk::compress(&vec![0u8; 1 << 20], 19).unwrap();
        assert!(bomb.len() < 1 << 10);
        let e = checked(&file_with(10, 1, None, &bomb, ZSTD)).unwrap_err();
        assert!(e.contains("inflates past the 10 bytes"), "{e}");
        let honest = zstd::bulk::compress(b"0123456789", 3).unwrap();
        assert_eq!(checked(&file_with(10, 1, None, &honest, ZSTD)), Ok(10));
        let mut short = file(10, 1, None);
        short.truncate(short.len() - 1);
        assert!(checked(&short).unwrap_err().contains("PAR1"));
    }
}
