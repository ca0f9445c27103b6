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

/// The rows of a Parquet file as JSON objects, `(0-based row, object)`, a batch at a time.
pub struct ParquetRows {
    path: PathBuf,
    reader: ParquetRecordBatchReader,
    rows: std::vec::IntoIter<Map<String, Value>>,
    next_row: u64,
    /// Rows the footer says the file holds.
    pub total: u64,
}

impl ParquetRows {
    pub fn open(path: &Path) -> Result<ParquetRows> {
        let file = File::open(path).at(path)?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| bad(path, e))?;
        let total = builder.metadata().file_metadata().num_rows().max(0) as u64;
        let reader = builder.with_batch_size(256).build().map_err(|e| bad(path, e))?;
        Ok(ParquetRows {
            path: path.to_path_buf(),
            reader,
            rows: Vec::new().into_iter(),
            next_row: 0,
            total,
        })
    }

    fn refill(&mut self) -> Result<bool> {
        let Some(batch) = self.reader.next() else { return Ok(false) };
        let batch = batch.map_err(|e| bad(&self.path, format!("row {}: {e}", self.next_row)))?;
        self.rows = batch_to_rows(&batch)
            .map_err(|e| bad(&self.path, format!("rows from {}: {e}", self.next_row)))?
            .into_iter();
        Ok(true)
    }
}

impl Iterator for ParquetRows {
    type Item = Result<(u64, Map<String, Value>)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(obj) = self.rows.next() {
                let row = self.next_row;
                self.next_row += 1;
                return Some(Ok((row, obj)));
            }
            match self.refill() {
                Ok(true) => continue,
                Ok(false) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// A record batch as JSON objects (nulls kept as `null`, so a missing value and an absent
/// column read alike).
fn batch_to_rows(batch: &RecordBatch) -> std::result::Result<Vec<Map<String, Value>>, String> {
    let mut buf = Vec::new();
    {
        let mut w = arrow_json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow_json::writer::LineDelimited>(&mut buf);
        w.write(batch).map_err(|e| e.to_string())?;
        w.finish().map_err(|e| e.to_string())?;
    }
    let mut out = Vec::with_capacity(batch.num_rows());
    for line in buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice(line).map_err(|e| e.to_string())? {
            Value::Object(o) => out.push(o),
            _ => return Err("a row is not an object".into()),
        }
    }
    if out.len() != batch.num_rows() {
        return Err(format!("{} rows decoded from a batch of {}", out.len(), batch.num_rows()));
    }
    Ok(out)
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
