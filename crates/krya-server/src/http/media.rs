//! Uploads (`POST /api/assets`) and the images the server serves.
//!
//! An upload is read with a byte limit enforced while it streams, its type is sniffed from
//! its first bytes (never the name or the Content-Type), and its pixel count is read from
//! the header before anything is decoded, so a decompression bomb is refused cheaply. Its
//! storage key is made from a server id. Images are served only to their owner, or to
//! anyone once their generation is public; to everyone else they do not exist (404).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sqlx::Row;

use crate::AppState;
use crate::http::auth;
#[allow(unused_imports)]
use crate::http::openapi::{Accepted, ErrorBody, Object, Session};
use crate::infra::error::internal;
use crate::infra::error::{ApiError, ErrorCode};
use crate::infra::ids::random_id;
use crate::persistence::db::Db;

pub use krya_core::images::sniff;

/// Decodes an upload within limits (`krya_core::images`): header first (size), then the
/// pixels with the decoder's own allocation limit as a second guard.
pub fn decode_limited(bytes: &[u8], max_pixels: u64) -> Result<image::DynamicImage, ApiError> {
    Ok(krya_core::images::decode_limited(
        bytes, max_pixels, "file",
    )?)
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Asset {
    pub id: String,
    #[serde(skip)]
    pub user_id: String,
    #[serde(skip)]
    pub blob_key: String,
    pub mime: String,
    pub width: i64,
    pub height: i64,
    pub bytes: i64,
    pub created_at: i64,
    #[serde(skip)]
    pub thumb_key: Option<String>,
    /// Readable by anyone (its job is public).
    #[serde(skip)]
    pub public: bool,
}

impl Db {
    /// The user's asset with this id.
    pub async fn asset(&self, id: &str, user_id: &str) -> Result<Option<Asset>, sqlx::Error> {
        self.asset_where(id, user_id, false).await
    }

    /// An asset `viewer` may read: their own, or a public one (an output of a public job).
    pub async fn readable_asset(
        &self,
        id: &str,
        viewer: Option<&str>,
    ) -> Result<Option<Asset>, sqlx::Error> {
        self.asset_where(id, viewer.unwrap_or(""), true).await
    }

    async fn asset_where(
        &self,
        id: &str,
        user_id: &str,
        or_public: bool,
    ) -> Result<Option<Asset>, sqlx::Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT a.id, a.user_id, a.blob_key, a.mime, a.width, a.height, a.bytes, a.created_at, a.thumb_key, \
             CASE WHEN a.visibility = 'public' OR aj.is_public = 1 THEN 1 ELSE 0 END AS public FROM {} \
             WHERE a.id = $1 AND (a.user_id = $2 OR ($3 = 1 AND (a.visibility = 'public' OR aj.is_public = 1)))",
            crate::jobs::ASSETS
        )))
        .bind(id)
        .bind(user_id)
        .bind(or_public as i64)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(Asset {
                id: r.try_get("id")?,
                user_id: r.try_get("user_id")?,
                blob_key: r.try_get("blob_key")?,
                mime: r.try_get("mime")?,
                width: r.try_get("width")?,
                height: r.try_get("height")?,
                bytes: r.try_get("bytes")?,
                created_at: r.try_get("created_at")?,
                thumb_key: r.try_get("thumb_key")?,
                public: r.try_get::<i64, _>("public")? != 0,
            })
        })
        .transpose()
    }
}

/// An upload as a form: the image in the field `file`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// A PNG, JPEG or WebP file (type sniffed from the bytes).
    #[schema(format = Binary, content_media_type = "application/octet-stream")]
    file: String,
}

/// `POST /api/assets`: the body is the image file itself, or a `multipart/form-data` form
/// with the file in the field `file` (as browsers and most HTTP clients send files).
#[utoipa::path(post, path = "/api/assets", tag = "media", request_body(description = "A PNG, JPEG or WebP file (type sniffed from the bytes), as the body or in a form's field `file`", content(
    (Vec<u8> = "application/octet-stream"),
    (UploadForm = "multipart/form-data"),
)), responses((status = 201, description = "Stored", body = crate::jobs::AssetView), (status = 401, description = "Not signed in", body = ErrorBody), (status = 413, description = "Too many bytes or pixels", body = ErrorBody), (status = 415, description = "Not an image", body = ErrorBody), (status = 422, description = "Invalid input (the message names the field)", body = ErrorBody)))]
pub async fn upload(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let user = auth::current_user(&state, &headers).await?;
    let limit = state.config.server.max_upload_bytes as usize;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > DRAIN_CAP) {
        return Err(too_large(limit));
    }
    let mut bytes = read_limited(body, limit).await?;
    if let Some(boundary) = form_boundary(&headers)? {
        bytes = form_file(bytes, boundary).await?;
    }
    if bytes.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidInput,
            "file: the body is empty; send the image file as the request body",
        ));
    }
    let (mime, _) = sniff(&bytes).ok_or_else(|| {
        ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "file: not a PNG, JPEG or WebP image",
        )
    })?;
    let max_pixels = state.config.server.max_upload_pixels;
    let data = bytes.to_vec();
    let img = tokio::task::spawn_blocking(move || {
        decode_limited(&data, max_pixels).map(|i| (i.width(), i.height()))
    })
    .await
    .map_err(internal)??;
    let asset = store_asset(&state, &user.id, bytes.to_vec(), mime, img).await?;
    Ok((StatusCode::CREATED, Json(asset)).into_response())
}

/// Stores `bytes` (an image of `size`) as a new asset of `user_id`'s, within their quota.
pub async fn store_asset(
    state: &AppState,
    user_id: &str,
    bytes: Vec<u8>,
    mime: &str,
    size: (u32, u32),
) -> Result<crate::jobs::AssetView, ApiError> {
    crate::http::storage::check_quota(state, user_id, bytes.len() as u64).await?;
    let id = random_id();
    let key = format!("assets/{id}");
    let len = bytes.len() as i64;
    state.blobs.put(&key, bytes).await.map_err(internal)?;
    sqlx::query("INSERT INTO assets (id, user_id, blob_key, mime, width, height, bytes, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
        .bind(&id)
        .bind(user_id)
        .bind(&key)
        .bind(mime)
        .bind(size.0 as i64)
        .bind(size.1 as i64)
        .bind(len)
        .bind(auth::now())
        .execute(&state.db.pool)
        .await
        .map_err(internal)?;
    state
        .db
        .asset_view(&id)
        .await
        .map_err(internal)?
        .ok_or_else(|| internal("vanished"))
}

/// The boundary of a `multipart/form-data` body, `None` for any other type.
fn form_boundary(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(None);
    };
    if !ct
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
    {
        return Ok(None);
    }
    multer::parse_boundary(ct).map(Some).map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidInput,
            "file: a multipart/form-data body needs a boundary in its Content-Type",
        )
    })
}

/// The field `file` of a form (already read within the upload limit).
async fn form_file(body: Vec<u8>, boundary: String) -> Result<Vec<u8>, ApiError> {
    let bad = |e: multer::Error| {
        ApiError::new(
            ErrorCode::InvalidInput,
            format!("file: malformed multipart/form-data body ({e})"),
        )
    };
    let body = axum::body::Bytes::from(body);
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    while let Some(field) = form.next_field().await.map_err(bad)? {
        if field.name() == Some("file") {
            return field.bytes().await.map(|b| b.to_vec()).map_err(bad);
        }
    }
    Err(ApiError::new(
        ErrorCode::InvalidInput,
        "file: the form has no field named \"file\"",
    ))
}

/// Middleware: a request whose declared body exceeds `limit` bytes (uploads have their own
/// limit) is answered 413 after its body is drained, so the client reads the answer.
pub async fn limit_body(
    axum::extract::State(limit): axum::extract::State<u64>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(len) if len > limit && req.uri().path() != "/api/assets" => {
            if len <= DRAIN_CAP {
                let _ = read_limited(req.into_body(), 0).await;
            }
            ApiError::new(
                ErrorCode::TooLarge,
                format!("body: requests are limited to {limit} bytes"),
            )
            .into_response()
        }
        _ => next.run(req).await,
    }
}

/// Bytes of an over-limit body read and thrown away before answering 413, so a client
/// that is still sending gets the answer instead of a reset connection.
const DRAIN_CAP: u64 = 64 << 20;

/// Reads a body, keeping at most `limit` bytes: 413 beyond it (after draining up to
/// `DRAIN_CAP`), 422 when the client stops mid-body.
async fn read_limited(body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let (mut buf, mut total) = (Vec::new(), 0u64);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidInput,
                format!("file: the upload was interrupted ({e})"),
            )
        })?;
        total += chunk.len() as u64;
        if total <= limit as u64 {
            buf.extend_from_slice(&chunk);
        } else if total > DRAIN_CAP {
            break;
        }
    }
    if total > limit as u64 {
        return Err(too_large(limit));
    }
    Ok(buf)
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        ErrorCode::TooLarge,
        format!("file: uploads are limited to {limit} bytes"),
    )
}

/// `GET /api/assets/:id`: an upload or output, to its owner, or to anyone once public.
/// An image's versions (`GET /api/assets/{id}/versions`).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Versions {
    /// From the original to this asset, each made from the one before (`parent_id`).
    pub versions: Vec<crate::jobs::AssetView>,
    /// The assets made from this one, oldest first.
    pub children: Vec<crate::jobs::AssetView>,
}

#[utoipa::path(get, path = "/api/assets/{id}/versions", tag = "media", params(("id" = String, Path, description = "Asset id")), responses((status = 200, description = "Its lineage", body = Versions), (status = 401, description = "Not signed in", body = ErrorBody), (status = 404, description = "No such item, or not the caller's", body = ErrorBody)))]
pub async fn versions(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Versions>, ApiError> {
    let user = auth::current_user(&state, &headers).await?;
    let (versions, children) = state
        .db
        .lineage(&id, &user.id)
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no asset {id}")))?;
    Ok(Json(Versions { versions, children }))
}

#[utoipa::path(get, path = "/api/assets/{id}", tag = "media", security((), ("bearer" = [])), params(("id" = String, Path, description = "Asset id")), responses((status = 200, description = "The file, with its own type", content_type = "*/*", body = Vec<u8>), (status = 206, description = "The part a Range asked for"), (status = 304, description = "Not modified (If-None-Match)"), (status = 416, description = "The Range starts past the end"), (status = 404, description = "No such item, or not the caller's", body = ErrorBody)))]
pub async fn get_asset(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    serve_asset(&state, &headers, &id, false).await
}

/// `GET /api/assets/:id/thumbnail`: a small WebP of an output that has one.
#[utoipa::path(get, path = "/api/assets/{id}/thumbnail", tag = "media", security((), ("bearer" = [])), params(("id" = String, Path, description = "Asset id")), responses((status = 200, description = "The thumbnail (WebP)", content_type = "image/webp", body = Vec<u8>), (status = 206, description = "The part a Range asked for"), (status = 304, description = "Not modified (If-None-Match)"), (status = 416, description = "The Range starts past the end"), (status = 404, description = "No such item, not the caller's, or without a thumbnail", body = ErrorBody)))]
pub async fn get_asset_thumbnail(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    serve_asset(&state, &headers, &id, true).await
}

/// The caller's asset, or a public one; to anyone else it does not exist (404).
pub(crate) async fn readable(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
) -> Result<Asset, ApiError> {
    let viewer = auth::current_user(state, headers).await.ok();
    state
        .db
        .readable_asset(id, viewer.as_ref().map(|v| v.id.as_str()))
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError::not_found(format!("no asset {id}")))
}

/// The caller's asset, or a public one (or its thumbnail).
async fn serve_asset(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
    thumbnail: bool,
) -> Result<Response, ApiError> {
    let a = readable(state, headers, id).await?;
    let (key, mime) = if thumbnail {
        let key = a
            .thumb_key
            .ok_or_else(|| ApiError::not_found(format!("asset {id} has no thumbnail")))?;
        (key, "image/webp".to_string())
    } else {
        (a.blob_key, a.mime)
    };
    let file = crate::http::files::File {
        key: &key,
        mime: &mime,
        // Short for public ones: one made private must leave caches soon.
        cache: if a.public {
            "public, max-age=60"
        } else {
            "private, max-age=3600"
        },
        disposition: None,
    };
    crate::http::files::send(state, headers, file, || {
        internal(format!("asset {id}: blob missing"))
    })
    .await
}

#[derive(Deserialize)]
pub struct ImageQuery {
    download: Option<u8>,
}

async fn serve_image(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
    thumbnail: bool,
    download: bool,
) -> Result<Response, ApiError> {
    let viewer = auth::current_user(state, headers).await.ok();
    let row = sqlx::query("SELECT i.png_key, i.thumb_key, i.idx, g.id AS gid, g.user_id, j.is_public FROM images i JOIN generations g ON g.id = i.generation_id \
                          JOIN jobs j ON j.ref_id = g.id AND j.kind = 'image' WHERE i.id = $1")
        .bind(id)
        .fetch_optional(&state.db.pool)
        .await
        .map_err(internal)?;
    let missing = || ApiError::not_found(format!("no image {id}"));
    let row = row.ok_or_else(missing)?;
    let owner: String = row.try_get("user_id").map_err(internal)?;
    let public = row.try_get::<i64, _>("is_public").map_err(internal)? != 0;
    if !public && viewer.as_ref().is_none_or(|v| v.id != owner) {
        return Err(missing());
    }
    let key: String = row
        .try_get(if thumbnail { "thumb_key" } else { "png_key" })
        .map_err(internal)?;
    let (mime, ext) = if thumbnail {
        ("image/webp", "webp")
    } else {
        ("image/png", "png")
    };
    let gid: String = row.try_get("gid").map_err(internal)?;
    let idx: i64 = row.try_get("idx").map_err(internal)?;
    let disposition = format!(
        "{}; filename=\"krya-{gid}-{idx}{}.{ext}\"",
        if download { "attachment" } else { "inline" },
        if thumbnail { "-thumb" } else { "" }
    );
    let file = crate::http::files::File {
        key: &key,
        mime,
        // Short: a generation made private must stop being served from caches soon.
        cache: if public {
            "public, max-age=60"
        } else {
            "private, max-age=60"
        },
        disposition: Some(disposition),
    };
    crate::http::files::send(state, headers, file, missing).await
}

#[utoipa::path(get, path = "/api/images/{id}", tag = "media", security((), ("bearer" = [])), params(("id" = String, Path, description = "Image id"), ("download" = Option<u8>, Query, minimum = 0, maximum = 1, description = "1: as an attachment")), responses((status = 200, description = "PNG with the A1111 parameters chunk", content_type = "image/png", body = Vec<u8>), (status = 206, description = "The part a Range asked for"), (status = 304, description = "Not modified (If-None-Match)"), (status = 416, description = "The Range starts past the end"), (status = 404, description = "No such item, or not the caller's", body = ErrorBody)))]
pub async fn image(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    crate::infra::error::ApiQuery(q): crate::infra::error::ApiQuery<ImageQuery>,
) -> Result<Response, ApiError> {
    let download = match q.download {
        None | Some(0) => false,
        Some(1) => true,
        Some(_) => return Err(crate::infra::error::invalid("download", "must be 0 or 1")),
    };
    serve_image(&state, &headers, &id, false, download).await
}

#[utoipa::path(get, path = "/api/images/{id}/thumbnail", tag = "media", security((), ("bearer" = [])), params(("id" = String, Path, description = "Image id")), responses((status = 200, description = "WebP thumbnail", content_type = "image/webp", body = Vec<u8>), (status = 206, description = "The part a Range asked for"), (status = 304, description = "Not modified (If-None-Match)"), (status = 416, description = "The Range starts past the end"), (status = 404, description = "No such item, or not the caller's", body = ErrorBody)))]
pub async fn thumbnail(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    serve_image(&state, &headers, &id, true, false).await
}

/// A WebP thumbnail, at most `max` pixels on its long side (lossless WebP: the image
/// crate's encoder; small at this size), with the picture's transparency if it has any.
pub fn thumbnail_webp<P: image::PixelWithColorType<Subpixel = u8> + 'static>(
    img: &image::ImageBuffer<P, Vec<u8>>,
    max: u32,
) -> Result<Vec<u8>, image::ImageError> {
    let small = fit(img, max);
    let mut out = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut out).encode(
        small.as_raw(),
        small.width(),
        small.height(),
        P::COLOR_TYPE,
    )?;
    Ok(out)
}

/// `img` scaled down to at most `max` pixels on its long side (a copy when it fits).
fn fit<P: image::Pixel<Subpixel = u8> + 'static>(
    img: &image::ImageBuffer<P, Vec<u8>>,
    max: u32,
) -> image::ImageBuffer<P, Vec<u8>> {
    let (w, h) = img.dimensions();
    if w.max(h) <= max {
        return img.clone();
    }
    let s = max as f64 / w.max(h) as f64;
    let (tw, th) = (
        ((w as f64 * s).round() as u32).max(1),
        ((h as f64 * s).round() as u32).max(1),
    );
    image::imageops::resize(img, tw, th, image::imageops::FilterType::Triangle)
}

/// A small JPEG for progress previews, as a data URL.
pub fn preview_data_url(img: &image::RgbImage) -> Option<String> {
    use base64::Engine;
    let small = fit(img, 128);
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 70)
        .encode_image(&small)
        .ok()?;
    Some(format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(out)
    ))
}
