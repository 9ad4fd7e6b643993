//! The image API's handlers and views: submit, poll, list, cancel, delete, publish, remix.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::*;
use crate::http::openapi::{Accepted, ErrorBody};
use crate::jobs::{JobError, Progress};

/// An image of a generation.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ImageView {
    pub id: String,
    pub url: String,
    pub thumbnail_url: String,
    pub width: i64,
    pub height: i64,
    pub seed: i64,
}

impl ImageView {
    pub fn new(id: &str, width: i64, height: i64, seed: i64) -> ImageView {
        ImageView {
            id: id.to_string(),
            url: format!("/api/images/{id}"),
            thumbnail_url: format!("/api/images/{id}/thumbnail"),
            width,
            height,
            seed,
        }
    }
}

/// A generation (seed §6.3 polling response, plus its parameters).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GenerationView {
    pub id: String,
    /// Always `image`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `pending`, `processing`, `completed`, `failed` or `cancelled`.
    pub status: String,
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub model: String,
    /// Known once it has run (a request may leave the size to the model).
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub steps: Option<u32>,
    pub cfg_scale: Option<f64>,
    pub scheduler: Option<String>,
    pub style: Option<String>,
    pub aspect_ratio: Option<String>,
    pub strength: Option<f64>,
    pub init_image: Option<String>,
    pub mask: Option<String>,
    pub clip_skip: u32,
    /// The request's `loras` (tags in the prompt are in `prompt`).
    pub loras: Vec<crate::tasks::lora::LoraRef>,
    pub seed: i64,
    pub batch_size: i64,
    pub is_public: bool,
    pub likes_count: i64,
    pub remix_of: Option<String>,
    pub progress: Progress,
    pub images: Vec<ImageView>,
    pub credits_used: i64,
    pub error: Option<JobError>,
    /// Jobs the fair order runs first (when asked for one generation and still pending).
    pub queue_position: Option<i64>,
    /// Seconds until done, estimated from recent jobs of the same model.
    pub estimated_time: Option<f64>,
    /// Seconds since the epoch.
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
}

/// The API's view of a generation; `with_queue` adds its queue position and estimate.
pub async fn view(
    state: &AppState,
    g: &Generation,
    with_queue: bool,
) -> Result<GenerationView, ApiError> {
    let images = state.db.images(&g.id).await.map_err(internal)?;
    let images: Vec<_> = images
        .iter()
        .map(|i| ImageView::new(&i.id, i.width, i.height, i.seed))
        .collect();
    let (mut queue_position, mut estimated_time) = (None, None);
    if with_queue && g.is_active() {
        let typical = state.db.typical_seconds(&g.model).await.map_err(internal)?;
        if g.status == "pending" {
            let job = state.db.job_for(&g.id, IMAGE).await.map_err(internal)?;
            let ahead = match job {
                Some(j) => state
                    .db
                    .queue_position(&j.id, &state.tasks.kinds(crate::tasks::Slot::Compute))
                    .await
                    .map_err(internal)?
                    .unwrap_or(0),
                None => 0,
            };
            queue_position = Some(ahead);
            estimated_time = Some(((ahead as f64 + 1.0) * typical).round());
        } else {
            let left = if g.progress_total > 0 {
                1.0 - g.progress_step as f64 / g.progress_total as f64
            } else {
                1.0
            };
            queue_position = Some(0);
            estimated_time = Some((left * typical).round());
        }
    }
    let dim = |x: i64| (x > 0).then_some(x);
    Ok(GenerationView {
        id: g.id.clone(),
        kind: IMAGE.to_string(),
        status: g.status.clone(),
        prompt: g.prompt.clone(),
        negative_prompt: g.negative_prompt.clone(),
        model: g.model.clone(),
        width: dim(g.width),
        height: dim(g.height),
        steps: g.params.steps,
        cfg_scale: g.params.cfg_scale,
        scheduler: g.params.scheduler.clone(),
        style: g.params.style.clone(),
        aspect_ratio: g.params.aspect_ratio.clone(),
        strength: g.params.strength,
        init_image: g.params.init_image.clone(),
        mask: g.params.mask.clone(),
        clip_skip: g.params.clip_skip,
        loras: g.params.loras.clone(),
        seed: g.seed,
        batch_size: g.batch_size,
        is_public: g.is_public,
        likes_count: g.likes_count,
        remix_of: g.remix_of.clone(),
        progress: Progress {
            step: g.progress_step,
            total: g.progress_total,
        },
        images,
        credits_used: g.credits_used,
        error: g.error_code.as_ref().map(|c| JobError {
            code: c.clone(),
            message: g.error_message.clone().unwrap_or_default(),
        }),
        queue_position,
        estimated_time,
        created_at: g.created_at,
        started_at: g.started_at,
        completed_at: g.completed_at,
    })
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => {
            let k = v
                .to_str()
                .map_err(|_| invalid("Idempotency-Key", "must be printable ASCII"))?;
            if k.is_empty() || k.len() > 255 {
                return Err(invalid("Idempotency-Key", "must be 1 to 255 characters"));
            }
            Ok(Some(k.to_string()))
        }
    }
}

/// The 202 body for a submitted generation.
async fn accepted(state: &AppState, id: &str) -> Result<Accepted, ApiError> {
    let g = state
        .db
        .generation(id)
        .await
        .map_err(internal)?
        .ok_or_else(|| internal("vanished"))?;
    let v = view(state, &g, true).await?;
    let job = state
        .db
        .job_for(id, IMAGE)
        .await
        .map_err(internal)?
        .ok_or_else(|| internal("generation without a job"))?;
    Ok(Accepted {
        id: v.id,
        job_id: job.id,
        status: v.status,
        estimated_time: v.estimated_time,
        queue_position: v.queue_position,
    })
}

#[utoipa::path(post, path = "/api/generate/image", tag = "generation", request_body = ImageRequest, params(("Idempotency-Key" = Option<String>, Header, description = "A retried POST with the same key returns the same job")), responses((status = 202, description = "Queued", body = Accepted), (status = 400, description = "Malformed JSON", body = ErrorBody), (status = 401, description = "Not signed in", body = ErrorBody), (status = 402, description = "Not enough credits", body = ErrorBody), (status = 413, description = "Body too large", body = ErrorBody), (status = 415, description = "Not JSON", body = ErrorBody), (status = 422, description = "Invalid input (the message names the field)", body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<ImageRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let user = auth::current_user(&state, &headers).await?;
    let Json(req) = body?;
    let key = idempotency_key(&headers)?;
    let checked = check(&state, &user, req).await?;
    let ids = submit(&state, &user, vec![checked], key.as_deref(), None).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted(&state, &ids[0]).await?)).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    #[schema(min_items = 1, max_items = 4)]
    requests: Vec<ImageRequest>,
}

#[utoipa::path(post, path = "/api/generate/image/batch", tag = "generation", request_body = BatchRequest, responses((status = 202, description = "All queued (or none)", body = AcceptedBatch), (status = 401, description = "Not signed in", body = ErrorBody), (status = 402, description = "Not enough credits", body = ErrorBody), (status = 422, description = "Invalid input (the message names the field)", body = ErrorBody)))]
pub async fn create_batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<BatchRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let user = auth::current_user(&state, &headers).await?;
    let Json(b) = body?;
    if b.requests.is_empty() || b.requests.len() > 4 {
        return Err(invalid("requests", "must hold 1 to 4 requests"));
    }
    let mut checked = Vec::new();
    for (i, r) in b.requests.into_iter().enumerate() {
        checked.push(check(&state, &user, r).await.map_err(|mut e| {
            e.message = format!("requests[{i}].{}", e.message);
            e
        })?);
    }
    let ids = submit(&state, &user, checked, None, None).await?;
    let mut items = Vec::new();
    for id in &ids {
        items.push(accepted(&state, id).await?);
    }
    Ok((StatusCode::ACCEPTED, Json(AcceptedBatch { items })).into_response())
}

/// A batch, queued: one entry per request, in order.
#[derive(Serialize, ToSchema)]
pub struct AcceptedBatch {
    pub items: Vec<Accepted>,
}

/// A page of generations, newest first.
#[derive(Serialize, ToSchema)]
pub struct GenerationPage {
    pub items: Vec<GenerationView>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// The caller's own generation, or 404 (also for someone else's: ids are not confirmed).
async fn own(state: &AppState, user: &User, id: &str) -> Result<Generation, ApiError> {
    match state.db.generation(id).await.map_err(internal)? {
        Some(g) if g.user_id == user.id => Ok(g),
        _ => Err(ApiError::not_found(format!("no generation {id}"))),
    }
}

#[utoipa::path(get, path = "/api/generate/image/{id}", tag = "generation", params(("id" = String, Path, description = "Generation id")), responses((status = 200, description = "Status, progress, images", body = GenerationView), (status = 401, description = "Not signed in", body = ErrorBody), (status = 404, description = "No such item, or not the caller's", body = ErrorBody)))]
pub async fn get_one(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<GenerationView>, ApiError> {
    let user = auth::current_user(&state, &headers).await?;
    let g = own(&state, &user, &id).await?;
    Ok(Json(view(&state, &g, true).await?))
}

#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<u32>,
    cursor: Option<String>,
    model: Option<String>,
    status: Option<String>,
    q: Option<String>,
}

#[utoipa::path(get, path = "/api/generate/images", tag = "generation", params(("limit" = Option<u32>, Query, minimum = 1, maximum = 100), ("cursor" = Option<String>, Query), ("model" = Option<String>, Query), ("status" = Option<String>, Query), ("q" = Option<String>, Query, description = "Only prompts containing this")), responses((status = 200, description = "The caller's generations, newest first", body = GenerationPage), (status = 401, description = "Not signed in", body = ErrorBody), (status = 422, description = "Invalid input (the message names the field)", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    crate::infra::error::ApiQuery(q): crate::infra::error::ApiQuery<ListQuery>,
) -> Result<Json<GenerationPage>, ApiError> {
    let user = auth::current_user(&state, &headers).await?;
    let page = Page::new(q.limit, q.cursor.as_deref())?;
    let filter = Filter {
        user_id: Some(&user.id),
        model: q.model.as_deref(),
        status: q.status.as_deref(),
        search: q.q.as_deref(),
        ..Default::default()
    };
    let gens = page_of(&state.db, &filter, &page).await?;
    let mut items = Vec::new();
    for g in &gens {
        items.push(view(&state, g, false).await?);
    }
    Ok(Json(GenerationPage {
        items,
        next_cursor: page.next(&gens),
    }))
}

/// Cancels an active generation through its job: refunds it, stops it at the next
/// denoising step.
pub async fn cancel(state: &AppState, g: &Generation) -> Result<bool, ApiError> {
    match state.db.job_for(&g.id, IMAGE).await.map_err(internal)? {
        Some(j) => crate::jobs::http::cancel(state, &j).await,
        None => Ok(false),
    }
}

#[utoipa::path(post, path = "/api/generate/image/{id}/cancel", tag = "generation", params(("id" = String, Path, description = "Generation id")), responses((status = 200, description = "Cancelled and refunded", body = GenerationView), (status = 401, description = "Not signed in", body = ErrorBody), (status = 404, description = "No such item, or not the caller's", body = ErrorBody), (status = 409, description = "Already ended", body = ErrorBody)))]
pub async fn cancel_one(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<GenerationView>, ApiError> {
    let user = auth::current_user(&state, &headers).await?;
    let g = own(&state, &user, &id).await?;
    if !cancel(&state, &g).await? {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("generation {id} has already ended ({})", g.status),
        ));
    }
    let g = own(&state, &user, &id).await?;
    Ok(Json(view(&state, &g, false).await?))
}

/// Deletes a generation: cancels it if it is running, then removes its rows and files.
#[utoipa::path(delete, path = "/api/generate/image/{id}", tag = "generation", params(("id" = String, Path, description = "Generation id")), responses((status = 204, description = "Cancelled if running; rows and files deleted"), (status = 401, description = "Not signed in", body = ErrorBody), (status = 404, description = "No such item, or not the caller's", body = ErrorBody)))]
pub async fn delete_one(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let user = auth::current_user(&state, &headers).await?;
    let g = own(&state, &user, &id).await?;
    match state.db.job_for(&g.id, IMAGE).await.map_err(internal)? {
        Some(j) => crate::jobs::http::delete(&state, &j).await?,
        None => return Err(internal(format!("generation {id} has no job"))),
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Patch {
    is_public: Option<bool>,
}

/// `PATCH /api/generate/image/:id {is_public}`: make a generation public or private.
#[utoipa::path(patch, path = "/api/generate/image/{id}", tag = "generation", params(("id" = String, Path, description = "Generation id")), request_body = Patch, responses((status = 200, description = "Updated", body = GenerationView), (status = 401, description = "Not signed in", body = ErrorBody), (status = 404, description = "No such item, or not the caller's", body = ErrorBody), (status = 422, description = "Invalid input (the message names the field)", body = ErrorBody)))]
pub async fn patch_one(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<Patch>, JsonRejection>,
) -> Result<Json<GenerationView>, ApiError> {
    let user = auth::current_user(&state, &headers).await?;
    let Json(p) = body?;
    let g = own(&state, &user, &id).await?;
    if let Some(public) = p.is_public {
        let job = state
            .db
            .job_for(&g.id, IMAGE)
            .await
            .map_err(internal)?
            .ok_or_else(|| internal(format!("generation {id} has no job")))?;
        state.db.set_public(&job.id, public).await?;
    }
    let g = own(&state, &user, &id).await?;
    Ok(Json(view(&state, &g, false).await?))
}

pub async fn remix_response(state: &AppState, id: &str) -> Result<Response, ApiError> {
    Ok((StatusCode::ACCEPTED, Json(accepted(state, id).await?)).into_response())
}
