//! Stable error codes, each with its HTTP status: one table for the API's errors, the
//! errors stored on failed jobs and the live canvas's error messages.

/// A stable error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidJson,
    InvalidInput,
    Unauthorized,
    InsufficientCredits,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    TooLarge,
    UnsupportedMediaType,
    RateLimited,
    QuotaExceeded,
    Timeout,
    /// A model that cannot be had now (a download that failed, a file that does not load).
    ModelUnavailable,
    Internal,
}

impl ErrorCode {
    /// The table: the code's string and its HTTP status.
    pub fn info(self) -> (&'static str, u16) {
        use ErrorCode::*;
        match self {
            InvalidJson => ("invalid-json", 400),
            InvalidInput => ("invalid-input", 422),
            Unauthorized => ("unauthorized", 401),
            InsufficientCredits => ("insufficient-credits", 402),
            Forbidden => ("forbidden", 403),
            NotFound => ("not-found", 404),
            MethodNotAllowed => ("method-not-allowed", 405),
            Conflict => ("conflict", 409),
            TooLarge => ("too-large", 413),
            UnsupportedMediaType => ("unsupported-media-type", 415),
            RateLimited => ("rate-limited", 429),
            Timeout => ("timeout", 408),
            QuotaExceeded => ("quota-exceeded", 403),
            ModelUnavailable => ("model-unavailable", 503),
            Internal => ("internal", 500),
        }
    }

    pub fn as_str(self) -> &'static str {
        self.info().0
    }
}

/// An error with its code and a message (validation messages start with the field).
#[derive(Debug, Clone, PartialEq)]
pub struct CodedError {
    pub code: ErrorCode,
    pub message: String,
}

impl CodedError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}
