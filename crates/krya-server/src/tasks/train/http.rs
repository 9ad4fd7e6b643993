//! `POST /api/train/model`, `GET /api/train/model/:id` (the job with its loss curve,
//! samples and ETA), `GET /api/train/models` and a sample's image: training's own endpoints
//! over the common job (`/api/jobs` shows the same jobs; cancel and delete are there).

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{KIND, TrainRequest, read_log, sample_key};
use crate::AppState;
#[allow(unused_imports)]
use crate::http::openapi::ErrorBody;
use crate::infra::error::{ApiError, ApiQuery, internal};
use crate::jobs::JobView;
use crate::jobs::http::{JobPage, ListQuery, create_of_kind, get_of_kind};

/// A training request, with what every job takes.
#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct NewTraining {
    #[serde(flatten)]
    pub request: TrainRequest,
    /// Told when the job ends (signed).
    #[serde(default)]
    pub webhook_url: Option<String>,
}

/// A sample image of a training.
#[derive(Serialize, ToSchema)]
pub struct TrainingSample {
    pub step: usize,
    pub url: String,
}

/// The loss before and after, on the same fixed draws.
#[derive(Serialize, ToSchema)]
pub struct EvalLoss {
    pub before: f32,
    pub after: f32,
}

/// Where a training stands.
#[derive(Serialize, ToSchema)]
pub struct Training {
    /// Each step's loss, from step 1.
    pub losses: Vec<f32>,
    /// The sample images so far (the fixed prompt and seed), oldest first.
    pub samples: Vec<TrainingSample>,
    /// The steps its attempts went on from, after a crash or a resume.
    pub resumed_at: Vec<usize>,
    /// The step of its last checkpoint: where it would go on from.
    pub checkpoint_step: Option<usize>,
    pub seconds_per_step: Option<f64>,
    /// Seconds left at this pace (while running).
    pub eta_seconds: Option<f64>,
    pub eval_loss: Option<EvalLoss>,
    /// The trained LoRA's id once done: usable at once in `loras` and `<lora:ID:1>`.
    pub lora: Option<String>,
}

/// A training job with its progress.
#[derive(Serialize, ToSchema)]
pub struct TrainingView {
    #[serde(flatten)]
    pub job: JobView,
    pub training: Training,
}

#[utoipa::path(post, path = "/api/train/model", tag = "training", request_body = NewTraining, responses((status = 202, description = "Queued", body = JobView), (status = 401, description = "Not signed in", body = ErrorBody), (status = 402, description = "Not enough credits", body = ErrorBody), (status = 422, description = "Invalid input (the message names the field)", body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    create_of_kind(&state, &headers, body, KIND).await
}

#[utoipa::path(get, path = "/api/train/model/{id}", tag = "training", params(("id" = String, Path, description = "Job id")), responses((status = 200, description = "The training, its loss curve, samples and ETA; its LoRA once done", body = TrainingView), (status = 401, description = "Not signed in", body = ErrorBody), (status = 404, description = "No such item, or not the caller's", body = ErrorBody)))]
pub async fn get_one(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<TrainingView>, ApiError> {
    let Json(job) = get_of_kind(&state, &headers, &id, KIND).await?;
    let log = read_log(&state.blobs, &id).await.map_err(internal)?;
    let left = (job.progress.total - job.progress.step).max(0) as f64;
    let training = Training {
        eta_seconds: log
            .seconds_per_step
            .filter(|_| job.status == "processing")
            .map(|s| s * left),
        samples: log
            .samples
            .iter()
            .map(|&step| TrainingSample {
                step,
                url: format!("/api/train/model/{id}/samples/{step}"),
            })
            .collect(),
        lora: job
            .outputs
            .iter()
            .find(|o| o.kind == "lora")
            .map(|o| o.id.clone()),
        eval_loss: log
            .eval_loss
            .map(|(before, after)| EvalLoss { before, after }),
        losses: log.losses,
        resumed_at: log.resumed_at,
        checkpoint_step: log.checkpoint_step,
        seconds_per_step: log.seconds_per_step,
    };
    Ok(Json(TrainingView { job, training }))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct TrainingsQuery {
    /// 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// `next_cursor` of the page before.
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/train/models", tag = "training", params(TrainingsQuery), responses((status = 200, description = "The caller's trainings, newest first", body = JobPage), (status = 401, description = "Not signed in", body = ErrorBody), (status = 422, description = "Invalid input (the message names the field)", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<TrainingsQuery>,
) -> Result<Json<JobPage>, ApiError> {
    let query = ListQuery {
        kind: Some(KIND.into()),
        status: None,
        model: None,
        q: None,
        limit: q.limit,
        cursor: q.cursor,
    };
    crate::jobs::http::list(State(state), headers, ApiQuery(query)).await
}

#[utoipa::path(get, path = "/api/train/model/{id}/samples/{step}", tag = "training", params(("id" = String, Path, description = "Job id"), ("step" = usize, Path, description = "The sample's step")), responses((status = 200, description = "The sample image", content_type = "image/png", body = Vec<u8>), (status = 401, description = "Not signed in", body = ErrorBody), (status = 404, description = "No such item, or not the caller's", body = ErrorBody)))]
pub async fn sample(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, step)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let _owned = get_of_kind(&state, &headers, &id, KIND).await?;
    let no_sample = || ApiError::not_found(format!("training {id} has no sample at step {step}"));
    let step: usize = step.parse().map_err(|_| no_sample())?;
    let key = sample_key(&id, step);
    let file = crate::http::files::File {
        key: &key,
        mime: "image/png",
        cache: "private, max-age=3600",
        disposition: None,
    };
    crate::http::files::send(&state, &headers, file, no_sample).await
}
