//! The API's errors: one type, one table from stable code to HTTP status, one JSON shape
//! `{"error": {"code", "message"}}`. Internal errors are logged, never sent.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Stable error codes, shared with jobs that fail and with the studio.
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
    Internal,
}

impl ErrorCode {
    /// The table: code string and HTTP status.
    pub fn info(self) -> (&'static str, StatusCode) {
        use ErrorCode::*;
        match self {
            InvalidJson => ("invalid-json", StatusCode::BAD_REQUEST),
            InvalidInput => ("invalid-input", StatusCode::UNPROCESSABLE_ENTITY),
            Unauthorized => ("unauthorized", StatusCode::UNAUTHORIZED),
            InsufficientCredits => ("insufficient-credits", StatusCode::PAYMENT_REQUIRED),
            Forbidden => ("forbidden", StatusCode::FORBIDDEN),
            NotFound => ("not-found", StatusCode::NOT_FOUND),
            MethodNotAllowed => ("method-not-allowed", StatusCode::METHOD_NOT_ALLOWED),
            Conflict => ("conflict", StatusCode::CONFLICT),
            TooLarge => ("too-large", StatusCode::PAYLOAD_TOO_LARGE),
            UnsupportedMediaType => ("unsupported-media-type", StatusCode::UNSUPPORTED_MEDIA_TYPE),
            RateLimited => ("rate-limited", StatusCode::TOO_MANY_REQUESTS),
            Internal => ("internal", StatusCode::INTERNAL_SERVER_ERROR),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Seconds for a `Retry-After` header (rate limits).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, what)
    }
}

/// An internal error (logged with the request id, never sent).
pub(crate) fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Internal, e.to_string())
}

/// A validation error naming its field: `"{field}: {message}"`.
pub(crate) fn invalid(field: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::InvalidInput, format!("{field}: {message}"))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, status) = self.code.info();
        let message = if self.code == ErrorCode::Internal {
            let id = REQUEST_ID.try_with(|id| id.clone()).unwrap_or_default();
            tracing::error!(request_id = %id, error = %self.message, "internal error");
            format!("internal error (request {id})")
        } else {
            self.message
        };
        let mut resp = (
            status,
            Json(serde_json::json!({"error": {"code": code, "message": message}})),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        resp
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        use axum::extract::rejection::JsonRejection::*;
        match r {
            JsonDataError(e) => ApiError::new(ErrorCode::InvalidInput, e.body_text()),
            JsonSyntaxError(e) => ApiError::new(ErrorCode::InvalidJson, e.body_text()),
            MissingJsonContentType(_) => ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "expected Content-Type: application/json",
            ),
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::new(ErrorCode::TooLarge, "body: the request body is too large")
            }
            other => ApiError::new(ErrorCode::InvalidJson, other.body_text()),
        }
    }
}

tokio::task_local! {
    /// The id of the request being handled (set by [`request_id`]).
    pub static REQUEST_ID: String;
}

/// Middleware: gives each request an id (the client's `x-request-id` if it is short and
/// printable, else a new one), echoed in the response and named in internal-error logs.
pub async fn request_id(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.chars().all(|c| c.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
    use tracing::Instrument;
    let span = tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path());
    let t0 = std::time::Instant::now();
    let mut resp = REQUEST_ID
        .scope(id.clone(), next.run(req))
        .instrument(span.clone())
        .await;
    span.in_scope(|| {
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        let status = resp.status().as_u16();
        if status >= 500 {
            tracing::warn!(status, ms, "answered");
        } else {
            tracing::debug!(status, ms, "answered");
        }
    });
    if let Ok(v) = axum::http::HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}
