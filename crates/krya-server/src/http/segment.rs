//! `POST /api/segment`: click to segment. Points (and a box) on an image of the caller's
//! give a mask, stored as a new image of theirs (so it can be the mask of an inpaint at
//! once), with the model's estimate of its quality. The image's embedding (Segment
//! Anything's encoder, the slow part) is computed once per image and model and kept, so
//! each later click on that image only runs the light decoder.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::http::auth;
#[allow(unused_imports)]
use crate::http::openapi::ErrorBody;
use crate::infra::error::{ApiError, ErrorCode, internal, invalid};
use crate::jobs::AssetView;
use crate::persistence::registry::{self, Capability};
use krya_engine::EngineError;
use krya_engine::pipelines::segment::sam::Point;
use krya_engine::pipelines::segment::{Embedded, Segmenter};

/// Image embeddings kept (a ViT-B one is 4 MB).
const EMBEDDINGS_KEPT: usize = 16;
/// Clicks a request may carry.
const MAX_POINTS: usize = 64;

/// Loaded segmentation models (by file) and the latest image embeddings (by model and
/// image), the most recently used last.
#[derive(Default)]
pub struct SegmentCache {
    models: Mutex<HashMap<PathBuf, Arc<Segmenter>>>,
    embeddings: Mutex<VecDeque<(String, Arc<Embedded>)>>,
}

impl SegmentCache {
    fn model(&self, path: &std::path::Path) -> Result<Arc<Segmenter>, EngineError> {
        if let Some(m) = self.models.lock().unwrap().get(path) {
            return Ok(m.clone());
        }
        let m = Arc::new(Segmenter::load(path)?);
        self.models
            .lock()
            .unwrap()
            .insert(path.to_path_buf(), m.clone());
        Ok(m)
    }

    fn embedding(&self, key: &str) -> Option<Arc<Embedded>> {
        let mut kept = self.embeddings.lock().unwrap();
        let i = kept.iter().position(|(k, _)| k == key)?;
        let hit = kept.remove(i)?;
        let e = hit.1.clone();
        kept.push_back(hit);
        Some(e)
    }

    fn keep(&self, key: String, e: Arc<Embedded>) {
        let mut kept = self.embeddings.lock().unwrap();
        kept.retain(|(k, _)| *k != key);
        kept.push_back((key, e));
        while kept.len() > EMBEDDINGS_KEPT {
            kept.pop_front();
        }
    }
}

/// A click, in the image's pixels.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SegmentPoint {
    pub x: f32,
    pub y: f32,
    /// 1: part of the object (the default); 0: not.
    #[serde(default = "one")]
    pub label: u8,
}

fn one() -> u8 {
    1
}

/// What `POST /api/segment` takes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SegmentRequest {
    /// An image of the caller's (an upload or an output).
    pub image: String,
    /// Clicks (at most 64).
    #[serde(default)]
    pub points: Vec<SegmentPoint>,
    /// A box around the object, `[x0, y0, x1, y1]` in the image's pixels.
    #[serde(default, rename = "box")]
    pub bbox: Option<[f32; 4]>,
    /// A segmentation model (`GET /api/models?capability=segment`); default the first
    /// installed one, else the curated one (downloaded on first use).
    #[serde(default)]
    pub model: Option<String>,
}

/// The mask and how good the model thinks it is.
#[derive(Serialize, ToSchema)]
pub struct SegmentResult {
    /// A PNG of the image's size: white inside, black outside (a new image of the caller's).
    pub mask: AssetView,
    /// The model's predicted IoU of the mask.
    pub score: f32,
    /// The segmentation model used.
    pub model: String,
    /// Whether the image's embedding was computed for this request (false: it was kept from
    /// an earlier click).
    pub embedded: bool,
}

fn engine_error(e: EngineError) -> ApiError {
    match e.code() {
        "invalid-input" => ApiError::new(ErrorCode::InvalidInput, e.to_string()),
        _ => ApiError::new(ErrorCode::ModelUnavailable, format!("model: {e}")),
    }
}

#[utoipa::path(post, path = "/api/segment", tag = "edit", request_body = SegmentRequest, responses((status = 200, description = "The mask", body = SegmentResult), (status = 401, description = "Not signed in", body = ErrorBody), (status = 422, description = "Invalid input (the message names the field)", body = ErrorBody), (status = 503, description = "The model could not be had", body = ErrorBody)))]
pub async fn segment(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<SegmentRequest>, JsonRejection>,
) -> Result<Json<SegmentResult>, ApiError> {
    let user = auth::current_user(&state, &headers).await?;
    let Json(r) = body?;
    if r.points.is_empty() && r.bbox.is_none() {
        return Err(invalid("points", "give at least one point or a box"));
    }
    if r.points.len() > MAX_POINTS {
        return Err(invalid("points", format!("at most {MAX_POINTS}")));
    }
    if r.points.iter().any(|p| p.label > 1) {
        return Err(invalid("points", "a label is 1 (add) or 0 (remove)"));
    }
    let asset = state
        .db
        .asset(&r.image, &user.id)
        .await
        .map_err(internal)?
        .ok_or_else(|| invalid("image", format!("no uploaded file {}", r.image)))?;
    let services = state.services();
    let entry = crate::tasks::model_source(
        &services,
        "model",
        r.model.as_deref(),
        Capability::Segment,
        "a segmentation model",
    )?;
    let bytes = state
        .blobs
        .get(&asset.blob_key)
        .await
        .map_err(internal)?
        .ok_or_else(|| invalid("image", format!("the uploaded file {} is missing", r.image)))?;
    let cache = state.segments.clone();
    let data_dir = state.config.server.data_dir.clone();
    let mirror = state.config.models.mirror.clone();
    let max_pixels = state.config.server.max_upload_pixels;
    let key = format!("{}/{}", entry.id, r.image);
    let points: Vec<Point> = r
        .points
        .iter()
        .map(|p| Point {
            x: p.x,
            y: p.y,
            positive: p.label == 1,
        })
        .collect();
    let bbox = r.bbox;
    let model_id = entry.id.clone();
    let (png, size, score, embedded) = tokio::task::spawn_blocking(move || {
        let path = registry::local_file(&data_dir, &entry, &mirror, &mut |_, _| Ok(()))?;
        let model = cache.model(&path)?;
        let (e, embedded) = match cache.embedding(&key) {
            Some(e) => (e, false),
            None => {
                let img = crate::http::media::decode_limited(&bytes, max_pixels)
                    .map_err(|e| EngineError::InvalidInput(format!("image: {}", e.message)))?
                    .to_rgb8();
                let e = Arc::new(model.embed(&img)?);
                cache.keep(key, e.clone());
                (e, true)
            }
        };
        let s = model.segment(&e, &points, bbox)?;
        let size = s.mask.dimensions();
        let mut png = Vec::new();
        image::DynamicImage::ImageLuma8(s.mask)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(|e| EngineError::InvalidInput(format!("mask: {e}")))?;
        Ok::<_, EngineError>((png, size, s.score, embedded))
    })
    .await
    .map_err(internal)?
    .map_err(engine_error)?;
    let mask = crate::http::media::store_asset(&state, &user.id, png, "image/png", size).await?;
    Ok(Json(SegmentResult {
        mask,
        score,
        model: model_id,
        embedded,
    }))
}
