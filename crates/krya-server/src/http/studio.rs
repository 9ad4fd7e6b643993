//! The web studio beside the API: the files `web/` builds (embedded into the binary by the
//! `krya-studio` crate) served at every path outside `/api/` and `/ws/`. The studio routes
//! in the browser, so a path that names no file gets `index.html`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use crate::infra::error::ApiError;

/// The studio's files by path (`index.html`, `assets/index-3f2a.js`, ...).
#[derive(Clone, Default)]
pub struct Studio {
    files: Arc<HashMap<&'static str, &'static [u8]>>,
}

impl Studio {
    pub fn new(files: &'static [(&'static str, &'static [u8])]) -> Studio {
        Studio {
            files: Arc::new(files.iter().copied().collect()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

fn mime(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, e)| e) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") | Some("mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("webp") => "image/webp",
        Some("woff2") => "font/woff2",
        Some("json") | Some("map") => "application/json",
        Some("webmanifest") => "application/manifest+json",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The page's policy: everything from this origin; images may also be data/blob URLs
/// (previews, uploads). Avatars are uploads too.
const CSP: &str = "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; \
     connect-src 'self'; media-src 'self' blob:; object-src 'none'; base-uri 'self'; frame-ancestors 'none'";

/// Answers a request no API route took: a studio file, the studio's page for its own
/// routes, or the API's JSON 404.
pub fn serve(studio: &Studio, method: &Method, uri: &Uri, headers: &HeaderMap) -> Response {
    let path = uri.path();
    let api = path == "/api" || path.starts_with("/api/") || path.starts_with("/ws/");
    if api || !(method == Method::GET || method == Method::HEAD) {
        return ApiError::not_found(format!("no endpoint at {path}")).into_response();
    }
    if studio.is_empty() {
        return ApiError::not_found(
            "this krya was built without the studio (KRYA_SKIP_WEB); the API is under /api/",
        )
        .into_response();
    }
    let name = path.trim_start_matches('/');
    let (name, bytes) = match studio.files.get(name) {
        Some(b) if !name.is_empty() => (name, *b),
        // A studio route (`/image`, `/feed/abc`): the page, which routes itself. A missing
        // file (`/assets/old-hash.js`) stays a 404 so a stale page fails visibly.
        _ if !name.rsplit('/').next().unwrap_or("").contains('.') => {
            match studio.files.get("index.html") {
                Some(b) => ("index.html", *b),
                None => return ApiError::not_found("the studio has no index.html").into_response(),
            }
        }
        _ => return ApiError::not_found(format!("no file at {path}")).into_response(),
    };
    // The copy compressed at build time that the browser accepts: brotli, else gzip.
    let accepts = |coding: &str| {
        headers
            .get_all(header::ACCEPT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|c| {
                let mut parts = c.split(';');
                parts
                    .next()
                    .is_some_and(|n| n.trim().eq_ignore_ascii_case(coding))
                    && !parts.any(|p| p.trim().replace(' ', "") == "q=0")
            })
    };
    let (bytes, encoding) = ["br", "gzip"]
        .iter()
        .filter(|c| accepts(c))
        .find_map(|c| {
            let ext = if *c == "gzip" { "gz" } else { "br" };
            studio
                .files
                .get(format!("{name}.{ext}").as_str())
                .map(|b| (*b, Some(*c)))
        })
        .unwrap_or((bytes, None));
    let mut resp = Response::new(if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(bytes)
    });
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime(name)));
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if let Some(e) = encoding {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(e));
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Built assets carry a content hash in their names; everything else is revalidated.
    let cache = if name.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if name.ends_with(".html") {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        );
    }
    *resp.status_mut() = StatusCode::OK;
    resp
}
