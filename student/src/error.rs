//! Errors of the SFT stage. Each says which file, field or rank; model and corpus errors pass
//! through with their own.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The cause is in the message and deliberately not a `#[source]`: printed with its chain
    // (`{:#}`), it would repeat ("… (os error 2): … (os error 2)").
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },

    /// Loading, saving or running a model.
    #[error(transparent)]
    Model(#[from] distill_models::Error),

    #[error(transparent)]
    Data(#[from] distill_data::Error),

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("{0}")]
    Invalid(String),

    /// A collective call failed on this rank (usually because another rank failed or left).
    #[error("rank {rank}: {msg}")]
    Collective { rank: usize, msg: String },
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), err: source }
    }
}

pub trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
