//! Errors of the teacher stage. Messages name the endpoint (base URL), never the API key.

use std::time::Duration;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Data(#[from] distill_data::Error),
    #[error(transparent)]
    Model(#[from] distill_models::Error),
    #[error("{0}")]
    Config(String),
    // The cause is in the message and deliberately not a `#[source]`: printed with its chain
    // (`{:#}`), it would repeat ("… (os error 2): … (os error 2)").
    #[error("{}: {err}", path.display())]
    Io { path: std::path::PathBuf, err: std::io::Error },
}

/// One failed call to a teacher.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The server answered with an error status.
    #[error("{endpoint}: HTTP {status}: {msg}")]
    Http { endpoint: String, status: u16, retry_after: Option<Duration>, msg: String },
    /// Connection refused or reset, timeout, body cut off.
    #[error("{endpoint}: {msg}")]
    Transport { endpoint: String, msg: String },
    /// A body that is not the JSON we expect (often a truncated one).
    #[error("{endpoint}: malformed response: {msg}")]
    Malformed { endpoint: String, msg: String },
    /// Not worth retrying (bad request, unsupported option, local engine failure).
    #[error("{0}")]
    Fatal(String),
    /// The teacher panicked (a bug, or an input it cannot take): never retried, and a run or an
    /// eval that meets one fails instead of reporting on fewer answers.
    #[error("the teacher panicked: {0}")]
    Panicked(String),
}

impl BackendError {
    /// 408, 429, 5xx, transport faults and malformed bodies are retried; other 4xx are not.
    pub fn retryable(&self) -> bool {
        match self {
            BackendError::Http { status, .. } => *status == 408 || *status == 429 || *status >= 500,
            BackendError::Transport { .. } | BackendError::Malformed { .. } => true,
            BackendError::Fatal(_) | BackendError::Panicked(_) => false,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            BackendError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}
