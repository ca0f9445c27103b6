//! One error type for the crate; every variant says where (file, line, shard, frame, record).

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The cause is in the message and deliberately not a `#[source]`: printed with its chain
    // (`{:#}`), it would repeat ("… (os error 2): … (os error 2)").
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },

    /// A bad line in a JSONL input (prompts, imported traces).
    #[error("{}:{line}: {msg}", path.display())]
    Line { path: PathBuf, line: u64, msg: String },

    /// A bad row in a Parquet input (0-based, as `datasets` numbers them).
    #[error("{}: row {row}: {msg}", path.display())]
    Row { path: PathBuf, row: u64, msg: String },

    #[error("{}: {msg}", path.display())]
    Manifest { path: PathBuf, msg: String },

    #[error(
        "{}: corpus format '{format}' version {found} is not supported (this distill reads \
         'distill-corpus' version {supported}); {hint}",
        path.display()
    )]
    FormatVersion { path: PathBuf, format: String, found: u32, supported: u32, hint: &'static str },

    #[error(
        "record {id}: trace schema version {found} is newer than this distill understands \
         ({supported}); upgrade distill to read this corpus"
    )]
    SchemaVersion { id: String, found: u32, supported: u32 },

    #[error("record {id}: {msg}")]
    Record { id: String, msg: String },

    #[error("{shard}: {msg}")]
    Shard { shard: String, msg: String },

    #[error("{shard}, frame {frame}: {msg}")]
    Frame { shard: String, frame: usize, msg: String },

    #[error("{}: another writer holds this corpus (lock file {}); wait for it or stop it", dir.display(), dir.join(".lock").display())]
    Locked { dir: PathBuf },

    #[error("duplicate record id '{id}' (already {where_})")]
    DuplicateId { id: String, where_: &'static str },

    #[error("record index {index} is out of range: the corpus holds {len} records")]
    OutOfRange { index: u64, len: u64 },

    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), err: source }
    }
}

/// `result.at(path)?` attaches the path to an `io::Error`.
pub trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
