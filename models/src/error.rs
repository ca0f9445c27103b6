//! Errors of the models crate. Each says which file, tensor or key.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The cause is in the message and deliberately not a `#[source]`: printed with its chain
    // (`{:#}`), it would repeat ("… (os error 2): … (os error 2)").
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },

    /// config.json problems: a missing key, a bad value, an unsupported architecture.
    #[error("{}: {msg}", path.display())]
    Config { path: PathBuf, msg: String },

    /// A checkpoint file that is not valid safetensors (truncated, huge header, bad offsets…).
    #[error("{}: not a valid safetensors file: {msg}", path.display())]
    Safetensors { path: PathBuf, msg: String },

    #[error("tensor '{name}' is missing from the checkpoint ({where_})")]
    MissingTensor { name: String, where_: String },

    #[error("tensor '{name}' has shape {found:?} in {}, the config expects {expected:?}", file.display())]
    ShapeMismatch { name: String, file: PathBuf, found: Vec<usize>, expected: Vec<usize> },

    #[error("tensor '{name}' in {}: dtype {dtype} is not supported (F32, BF16, F16 are)", file.display())]
    Dtype { name: String, file: PathBuf, dtype: String },

    #[error("{}: GGUF: {msg}", path.display())]
    Gguf { path: PathBuf, msg: String },

    /// A device string that names no device, or one this build cannot run on.
    #[error("{0}")]
    Device(String),

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("chat template: {0}")]
    Template(String),

    #[error("generation: {0}")]
    Generate(String),

    #[error(transparent)]
    Data(#[from] distill_data::Error),

    #[error("{0}")]
    Invalid(String),
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
