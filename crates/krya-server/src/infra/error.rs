//! The API's errors: one type, one table from stable code to HTTP status, one JSON shape
//! `{"error": {"code", "message"}}`. Internal errors are logged, never sent.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Stable error codes and their HTTP statuses (`krya_core::error`), shared with jobs that
/// fail, the live canvas and the studio.
pub use krya_core::error::ErrorCode;

/// An error code's HTTP status.
pub fn status_of(code: ErrorCode) -> StatusCode {
    StatusCode::from_u16(code.info().1).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Seconds for a `Retry-After` header (rate limits).
    pub retry_after: Option<u64>,
}

/// `axum::extract::Query` whose rejection is the API's error (422 naming the parameter),
/// not axum's plain-text 400.
pub struct ApiQuery<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(q)) => Ok(ApiQuery(q)),
            Err(e) => {
                // "Failed to deserialize query string: limit: invalid digit ..." -> "limit: ..."
                let text = e.body_text();
                let detail = text
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&text);
                Err(ApiError::new(ErrorCode::InvalidInput, detail.to_string()))
            }
        }
    }
}

impl From<krya_core::error::CodedError> for ApiError {
    fn from(e: krya_core::error::CodedError) -> Self {
        ApiError::new(e.code, e.message)
    }
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
        let (code, status) = (self.code.as_str(), status_of(self.code));
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

/// Middleware: a request not read and answered within `server.request_timeout_secs` gets
/// 408 (its handler is dropped). Streams answer at once, so they are not cut.
pub async fn timeout(
    axum::extract::State(secs): axum::extract::State<f64>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let limit = std::time::Duration::from_secs_f64(secs.max(0.001));
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::new(
            ErrorCode::Timeout,
            format!("the request was not read and answered within {secs} s"),
        )
        .into_response(),
    }
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
    let span =
        tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path());
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
