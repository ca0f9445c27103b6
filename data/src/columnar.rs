//! Parquet files as JSON rows, read and written through the `parquet` and `arrow` crates.
//!
//! Datasets on the Hub (Open-R1's among them) are Parquet: a row becomes the same JSON object a
//! JSONL line would be (nested lists and structs included: a `messages` column of
//! `list<struct<role, content>>` reads as `[{"role": …, "content": …}]`), so the prompt field
//! map and the trace importers serve both. Row numbers are 0-based across the file's row groups.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde_json::{Map, Value};

use crate::error::{Error, IoContext, Result};

/// Whether `path` names a Parquet file (by extension).
pub fn is_parquet(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
}

fn bad(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Manifest { path: path.to_path_buf(), msg: format!("Parquet: {msg}") }
}

pub mod guard;

/// What reading one Parquet file may cost: its rows are decoded from compressed, often
/// dictionary-encoded pages, so a small file can claim (or expand to) far more than its size.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// One row as JSON (as JSONL's `max_line_bytes` bounds a line).
    pub max_row_bytes: usize,
    /// The whole file decoded (its pages uncompressed, and its rows as JSON), at least this
    /// many bytes or 64 × the file's size, whichever is larger.
    pub min_decoded_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_row_bytes: 64 << 20, min_decoded_bytes: 1 << 30 }
    }
}

/// Rows decoded at a time.
const BATCH_ROWS: usize = 64;

/// A panic inside the `parquet` or `arrow` crates (a case [`guard`] does not foresee) as an
/// error naming the file, not a crash.
fn no_panic<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        Err(bad(path, format!("the file is malformed (the Parquet reader failed: {msg})")))
    })
}

/// The rows of a Parquet file as JSON objects, `(0-based row, object)`, a batch at a time.
pub struct ParquetRows {
    path: PathBuf,
    reader: ParquetRecordBatchReader,
    rows: std::vec::IntoIter<Map<String, Value>>,
    next_row: u64,
    limits: Limits,
    /// An error ended the file: rows after a bad batch are not guessed at.
    failed: bool,
    /// Bytes of JSON decoded so far, and the most the file may decode to.
    decoded: u64,
    max_decoded: u64,
    /// Rows the footer says the file holds.
    pub total: u64,
}

impl ParquetRows {
    pub fn open(path: &Path) -> Result<ParquetRows> {
        Self::open_with(path, Limits::default())
    }

    /// Open `path` after [`guard::check`] has walked its footer and page headers.
    pub fn open_with(path: &Path, limits: Limits) -> Result<ParquetRows> {
        let len = std::fs::metadata(path).at(path)?.len();
        let max_decoded = limits.min_decoded_bytes.max(len.saturating_mul(64));
        guard::check(path, max_decoded).map_err(|e| bad(path, e))?;
        let file = File::open(path).at(path)?;
        let (reader, total) = no_panic(path, || {
            let builder =
                ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| bad(path, e))?;
            let total = builder.metadata().file_metadata().num_rows().max(0) as u64;
            let reader = builder.with_batch_size(BATCH_ROWS).build().map_err(|e| bad(path, e))?;
            Ok((reader, total))
        })?;
        Ok(ParquetRows {
            path: path.to_path_buf(),
            reader,
            rows: Vec::new().into_iter(),
            next_row: 0,
            limits,
            failed: false,
            decoded: 0,
            max_decoded,
            total,
        })
    }

    fn refill(&mut self) -> Result<bool> {
        let path = self.path.clone();
        let from = self.next_row;
        let Some(batch) = no_panic(&path, || Ok(self.reader.next()))? else { return Ok(false) };
        let batch = batch.map_err(|e| bad(&path, format!("row {from}: {e}")))?;
        let (rows, bytes) = no_panic(&path, || {
            batch_to_rows(&batch, from, self.limits.max_row_bytes)
                .map_err(|e| bad(&path, format!("rows from {from}: {e}")))
        })?;
        self.decoded += bytes;
        if self.decoded > self.max_decoded {
            return Err(bad(
                &path,
                format!(
                    "rows up to {} decode to more than {} bytes (64 × the file's size, at least {}): a file this small should not hold this much",
                    from + rows.len() as u64,
                    self.max_decoded,
                    self.limits.min_decoded_bytes
                ),
            ));
        }
        self.rows = rows.into_iter();
        Ok(true)
    }
}

impl Iterator for ParquetRows {
    type Item = Result<(u64, Map<String, Value>)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.failed {
                return None;
            }
            if let Some(obj) = self.rows.next() {
                let row = self.next_row;
                self.next_row += 1;
                return Some(Ok((row, obj)));
            }
            match self.refill() {
                Ok(true) => continue,
                Ok(false) => return None,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// A record batch (its first row `from`) as JSON objects (nulls kept as `null`, so a missing
/// value and an absent column read alike), and the bytes of JSON they took; a row longer than
/// `max_row` bytes is an error naming it.
fn batch_to_rows(
    batch: &RecordBatch,
    from: u64,
    max_row: usize,
) -> std::result::Result<(Vec<Map<String, Value>>, u64), String> {
    let mut buf = Vec::new();
    {
        let mut w = arrow_json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow_json::writer::LineDelimited>(&mut buf);
        w.write(batch).map_err(|e| e.to_string())?;
        w.finish().map_err(|e| e.to_string())?;
    }
    let mut out = Vec::with_capacity(batch.num_rows());
    for (i, line) in buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()).enumerate() {
        if line.len() > max_row {
            return Err(format!(
                "row {} decodes to {} bytes of JSON, over the limit of {max_row} (max_line_bytes)",
                from + i as u64,
                line.len()
            ));
        }
        match serde_json::from_slice(line).map_err(|e| e.to_string())? {
            Value::Object(o) => out.push(o),
            _ => return Err("a row is not an object".into()),
        }
    }
    if out.len() != batch.num_rows() {
        return Err(format!("{} rows decoded from a batch of {}", out.len(), batch.num_rows()));
    }
    Ok((out, buf.len() as u64))
}

/// `list<struct<role: string, content: string>>`, the chat column TRL and datasets use.
pub fn chat_type() -> DataType {
    let msg = Fields::from(vec![
        Field::new("role", DataType::Utf8, true),
        Field::new("content", DataType::Utf8, true),
    ]);
    DataType::List(Arc::new(Field::new("item", DataType::Struct(msg), true)))
}

/// Writes JSON rows of a fixed schema to a Parquet file (zstd), through a temp file renamed
/// into place by [`ParquetSink::finish`].
pub struct ParquetSink {
    path: PathBuf,
    tmp: PathBuf,
    schema: SchemaRef,
    writer: Option<ArrowWriter<File>>,
    pending: Vec<Value>,
    pub rows: u64,
}

impl ParquetSink {
    pub fn create(path: &Path, schema: Schema) -> Result<ParquetSink> {
        let schema = Arc::new(schema);
        let tmp = crate::fsutil::tmp_path(path);
        let file = File::create(&tmp).at(&tmp)?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("zstd level 3")))
            .build();
        let writer =
            ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(|e| bad(path, e))?;
        Ok(ParquetSink {
            path: path.to_path_buf(),
            tmp,
            schema,
            writer: Some(writer),
            pending: Vec::new(),
            rows: 0,
        })
    }

    /// One row: an object with the schema's fields.
    pub fn push(&mut self, row: Value) -> Result<()> {
        self.pending.push(row);
        if self.pending.len() >= 1024 {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut dec = arrow_json::ReaderBuilder::new(self.schema.clone())
            .with_batch_size(self.pending.len())
            .build_decoder()
            .map_err(|e| bad(&self.path, e))?;
        dec.serialize(&self.pending)
            .map_err(|e| bad(&self.path, format!("row {}: {e}", self.rows)))?;
        let batch = dec.flush().map_err(|e| bad(&self.path, e))?.expect("rows were given");
        self.writer.as_mut().expect("open").write(&batch).map_err(|e| bad(&self.path, e))?;
        self.rows += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// Write what is pending, close the file, sync it and rename it into place.
    pub fn finish(mut self) -> Result<u64> {
        self.flush()?;
        let w = self.writer.take().expect("open");
        let file = w.into_inner().map_err(|e| bad(&self.path, e))?;
        file.sync_all().at(&self.tmp)?;
        crate::fsutil::commit_rename(&self.tmp, &self.path)?;
        Ok(self.rows)
    }
}

impl Drop for ParquetSink {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
