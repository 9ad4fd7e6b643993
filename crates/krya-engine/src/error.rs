//! Engine errors. Each variant maps to a stable code (used by the CLI exit status
//! and, later, by the server's error table); the message names the problem and the fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The caller asked for something the model or pipeline cannot do.
    #[error("{0}")]
    InvalidInput(String),
    /// A model, file or component is not where it was looked for.
    #[error("{0}")]
    NotFound(String),
    /// A model's files are present but cannot be understood.
    #[error("model {path}: {message}")]
    BadModel { path: PathBuf, message: String },
    /// Files could not be fetched (offline, hub error, checksum mismatch).
    #[error("{0}")]
    Download(String),
    #[error("cancelled")]
    Cancelled,
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

impl EngineError {
    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            EngineError::InvalidInput(_) => "invalid-input",
            EngineError::NotFound(_) => "not-found",
            EngineError::BadModel { .. } => "bad-model",
            EngineError::Download(_) => "download-failed",
            EngineError::Cancelled => "cancelled",
            EngineError::Io { .. } => "io",
            EngineError::Tensor(_) => "internal",
        }
    }

    /// Whether the error is the caller's (bad input, missing files) rather than the engine's.
    pub fn is_user_error(&self) -> bool {
        !matches!(self, EngineError::Tensor(_))
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EngineError::Io {
            path: path.into(),
            source,
        }
    }

    pub fn bad_model(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        EngineError::BadModel {
            path: path.into(),
            message: message.into(),
        }
    }

    /// The error with `path` as the model file it is about, where it names none yet (the
    /// architectures' loaders see tensors, not files).
    pub fn in_file(self, path: &std::path::Path) -> Self {
        match self {
            EngineError::BadModel { path: p, message } if p.as_os_str().is_empty() => {
                EngineError::bad_model(path, message)
            }
            e => e,
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Shorthand for an `InvalidInput` error with a formatted message.
#[macro_export]
macro_rules! invalid {
    ($($arg:tt)*) => { $crate::error::EngineError::InvalidInput(format!($($arg)*)) };
}
