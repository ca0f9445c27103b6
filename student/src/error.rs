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

    /// A recipe field out of range or inconsistent: `[section] what is wrong`.
    #[error("[{section}] {msg}")]
    Config { section: &'static str, msg: String },

    /// A checkpoint that cannot be resumed from, and why.
    #[error("checkpoint {} is unusable: {msg}", dir.display())]
    Checkpoint { dir: PathBuf, msg: String },

    /// A step whose loss or gradient is not finite; nothing was saved.
    #[error(
        "non-finite {what} at step {step} (loss {loss}, grad norm {grad_norm}); stopped without saving. Last good checkpoint: {last}"
    )]
    NonFinite { what: &'static str, step: u64, loss: f64, grad_norm: f64, last: String },

    /// The run does not fit the devices' or the host's memory (the plan says what to change).
    #[error("{0}")]
    DoesNotFit(String),

    /// `--resume` without a checkpoint, or a fresh run over existing ones.
    #[error("{0}")]
    Resume(String),

    /// A prompt that cannot be rendered or tokenized.
    #[error("prompt {id}: {msg}")]
    Prompt { id: String, msg: String },

    /// Reading a tensor back from the device failed.
    #[error("reading a tensor back: {0}")]
    Readback(String),

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
