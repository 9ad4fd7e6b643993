//! `GET /api/assets/:id/tiles` and `GET /api/assets/:id/tiles/:level/:x/:y`: the zoomable
//! copy of a large output (an enhanced image up to 22,000 px), so a viewer fetches only the
//! tiles in view at its zoom (`krya_engine::pyramid`: level 0 is full size, each level
//! after it half the one before; JPEG tiles). The pyramid is one blob beside the asset's
//! file; its index is read from the blob's end once and kept for the next tiles.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use krya_engine::pyramid::{self, Index};
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::http::openapi::ErrorBody;
use crate::infra::error::{ApiError, internal};

/// Indexes by blob key (at most [`KEPT`]; all dropped when full).
pub type Indexes = Arc<Mutex<HashMap<String, Arc<Index>>>>;

const KEPT: usize = 256;

/// What a viewer needs to lay the tiles out.
#[derive(Serialize, ToSchema)]
pub struct TileInfo {
    /// The image's size (level 0).
    pub width: usize,
    pub height: usize,
    /// A tile's side in pixels of its level (edge tiles are smaller).
    pub tile: usize,
    /// Levels: level `l` is the image halved `l` times (sides rounded up); the last fits in
    /// one tile.
    pub levels: usize,
}

/// Bytes `range` of a blob.
async fn read(
    state: &AppState,
    key: &str,
    range: std::ops::Range<u64>,
) -> Result<Vec<u8>, ApiError> {
    use futures_util::TryStreamExt;
    let stream = state
        .blobs
        .stream(key, range)
        .await
        .map_err(internal)?
        .ok_or_else(|| internal(format!("{key}: blob missing")))?;
    let parts: Vec<axum::body::Bytes> = stream.try_collect().await.map_err(internal)?;
    Ok(parts.concat())
}

/// The pyramid of asset `id` as the caller may see it (an owner's, or a public one), with
/// whether it is public.
async fn index(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
) -> Result<(String, Arc<Index>, bool), ApiError> {
    let a = crate::http::media::readable(state, headers, id).await?;
    let key = crate::tasks::tiles_key(&a.blob_key);
    let none = || ApiError::not_found(format!("asset {id} has no tiles"));
    if let Some(i) = state.pyramids.lock().unwrap().get(&key) {
        return Ok((key, i.clone(), a.public));
    }
    let size = state
        .blobs
        .size(&key)
        .await
        .map_err(internal)?
        .ok_or_else(none)?;
    if size < pyramid::FOOTER as u64 {
        return Err(internal(format!("{key}: not a tile pyramid")));
    }
    let footer = read(state, &key, size - pyramid::FOOTER as u64..size).await?;
    let (shape, offset, n) = Index::footer(&footer).map_err(internal)?;
    let end = offset + 12 * n as u64;
    if end + pyramid::FOOTER as u64 != size {
        return Err(internal(format!("{key}: not a tile pyramid")));
    }
    let bytes = read(state, &key, offset..end).await?;
    let index = Arc::new(Index::new(shape, offset, &bytes).map_err(internal)?);
    let mut kept = state.pyramids.lock().unwrap();
    if kept.len() >= KEPT {
        kept.clear();
    }
    kept.insert(key.clone(), index.clone());
    Ok((key, index, a.public))
}

/// `GET /api/assets/:id/tiles`: the shape of an asset's tile pyramid.
#[utoipa::path(get, path = "/api/assets/{id}/tiles", tag = "media", security((), ("bearer" = [])), params(("id" = String, Path, description = "Asset id")), responses((status = 200, description = "The pyramid's shape", body = TileInfo), (status = 404, description = "No such item, not the caller's, or without tiles", body = ErrorBody)))]
pub async fn info(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<TileInfo>, ApiError> {
    let (_, index, _) = index(&state, &headers, &id).await?;
    let s = index.shape;
    Ok(Json(TileInfo {
        width: s.width,
        height: s.height,
        tile: s.tile,
        levels: s.levels(),
    }))
}

/// `GET /api/assets/:id/tiles/:level/:x/:y`: one tile (JPEG).
#[utoipa::path(get, path = "/api/assets/{id}/tiles/{level}/{x}/{y}", tag = "media", security((), ("bearer" = [])), params(("id" = String, Path, description = "Asset id"), ("level" = usize, Path, description = "0: full size; each level after it half the one before"), ("x" = usize, Path, description = "Column of tiles"), ("y" = usize, Path, description = "Row of tiles")), responses((status = 200, description = "The tile", content_type = "image/jpeg", body = Vec<u8>), (status = 404, description = "No such item, not the caller's, without tiles, or no such tile", body = ErrorBody)))]
pub async fn tile(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, level, x, y)): Path<(String, String, String, String)>,
) -> Result<Response, ApiError> {
    let (key, index, public) = index(&state, &headers, &id).await?;
    let no_tile = || ApiError::not_found(format!("asset {id} has no tile {level}/{x}/{y}"));
    let n = |s: &str| s.parse::<usize>().map_err(|_| no_tile());
    let range = index.tile(n(&level)?, n(&x)?, n(&y)?).ok_or_else(no_tile)?;
    let bytes = read(&state, &key, range).await?;
    let cache = if public {
        "public, max-age=60"
    } else {
        "private, max-age=3600"
    };
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg")),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
        ],
        bytes,
    )
        .into_response())
}
