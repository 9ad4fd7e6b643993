//! Sending a stored file: streamed from the store, never read whole into memory; an
//! `ETag` (the bytes under a key never change) answered with `304` on `If-None-Match`; and
//! one `Range` per request (`206`; `416` when it cannot be satisfied), as video players and
//! resumed downloads ask.

use std::ops::Range;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;

use crate::AppState;
use crate::infra::error::{ApiError, internal};

/// What to send and how.
pub struct File<'a> {
    pub key: &'a str,
    pub mime: &'a str,
    pub cache: &'static str,
    pub disposition: Option<String>,
}

/// A strong validator from the key: the bytes under a key never change.
fn etag(key: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(key.as_bytes());
    let hex: String = h[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// The one range a `Range` header asks of `size` bytes: `Ok(None)` to send the whole file
/// (no header, one that does not parse, or several ranges), `Err(())` when it cannot be
/// satisfied.
fn range(v: &str, size: u64) -> Result<Option<Range<u64>>, ()> {
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // The last n bytes.
        let Ok(n) = b.parse::<u64>() else {
            return Ok(None);
        };
        if n == 0 || size == 0 {
            return Err(());
        }
        return Ok(Some(size.saturating_sub(n)..size));
    }
    let Ok(start) = a.parse::<u64>() else {
        return Ok(None);
    };
    let end = if b.is_empty() {
        size
    } else {
        match b.parse::<u64>() {
            Ok(last) if last >= start => (last + 1).min(size),
            _ => return Ok(None),
        }
    };
    if start >= size {
        return Err(());
    }
    Ok(Some(start..end))
}

/// Sends `f` for a request with `headers`; `missing` when the store has no such blob.
pub async fn send(
    state: &AppState,
    headers: &HeaderMap,
    f: File<'_>,
    missing: impl FnOnce() -> ApiError,
) -> Result<Response, ApiError> {
    let size = state
        .blobs
        .size(f.key)
        .await
        .map_err(internal)?
        .ok_or_else(missing)?;
    let tag = etag(f.key);
    let mut resp = Response::new(Body::empty());
    let h = resp.headers_mut();
    h.insert(header::ETAG, HeaderValue::from_str(&tag).map_err(internal)?);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(f.cache));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let header_str = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if let Some(inm) = header_str(header::IF_NONE_MATCH)
        && inm
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == "*" || t == tag)
    {
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        return Ok(resp);
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(f.mime).map_err(internal)?,
    );
    if let Some(d) = &f.disposition {
        h.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_str(d).map_err(internal)?,
        );
    }
    // A Range under If-Range holds only for the same file.
    let ranged = match header_str(header::IF_RANGE) {
        Some(v) if v.trim() != tag => None,
        _ => header_str(header::RANGE),
    };
    let part = match ranged.map(|v| range(v, size)).transpose() {
        Ok(p) => p.flatten(),
        Err(()) => {
            *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            resp.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}")).map_err(internal)?,
            );
            return Ok(resp);
        }
    };
    let span = part.clone().unwrap_or(0..size);
    let stream = state
        .blobs
        .stream(f.key, span.clone())
        .await
        .map_err(internal)?
        .ok_or_else(|| internal(format!("blob {} vanished while sent", f.key)))?;
    *resp.body_mut() = Body::from_stream(stream);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(span.end - span.start),
    );
    if part.is_some() {
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!(
                "bytes {}-{}/{size}",
                span.start,
                span.end.saturating_sub(1)
            ))
            .map_err(internal)?,
        );
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::range;

    #[test]
    fn ranges() {
        assert_eq!(range("bytes=0-9", 100), Ok(Some(0..10)));
        assert_eq!(range("bytes=90-", 100), Ok(Some(90..100)));
        assert_eq!(range("bytes=-5", 100), Ok(Some(95..100)));
        assert_eq!(range("bytes=-500", 100), Ok(Some(0..100)));
        assert_eq!(range("bytes=50-500", 100), Ok(Some(50..100)));
        assert_eq!(range("bytes=100-", 100), Err(()));
        assert_eq!(range("bytes=-0", 100), Err(()));
        // Not understood, or several: the whole file.
        assert_eq!(range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(range("items=0-1", 100), Ok(None));
        assert_eq!(range("bytes=9-3", 100), Ok(None));
        assert_eq!(range("bytes=x-", 100), Ok(None));
    }
}
