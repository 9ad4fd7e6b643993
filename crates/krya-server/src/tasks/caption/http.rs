//! `POST /api/caption` and `GET /api/caption/:id`: captioning's own endpoints over the
//! common job (`/api/jobs` shows the same jobs).

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use utoipa::ToSchema;

use super::{CaptionRequest, KIND};
use crate::AppState;
#[allow(unused_imports)]
use crate::http::openapi::ErrorBody;
use crate::infra::error::ApiError;
use crate::jobs::JobView;
use crate::jobs::http::{create_of_kind, get_of_kind};

/// A caption request, with what every job takes (the OpenAPI document's shape of the
/// body `create` reads).
#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct NewCaption {
    #[serde(flatten)]
    pub request: CaptionRequest,
    /// Shown in the feed once completed.
    #[serde(default)]
    pub is_public: bool,
    /// Told when the job ends (signed).
    #[serde(default)]
    pub webhook_url: Option<String>,
}

#[utoipa::path(post, path = "/api/caption", tag = "caption", request_body = NewCaption, responses((status = 202, description = "Queued", body = JobView), (status = 401, description = "Not signed in", body = ErrorBody), (status = 402, description = "Not enough credits", body = ErrorBody), (status = 422, description = "Invalid input (the message names the field)", body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    create_of_kind(&state, &headers, body, KIND).await
}

#[utoipa::path(get, path = "/api/caption/{id}", tag = "caption", params(("id" = String, Path, description = "Job id")), responses((status = 200, description = "The caption job; its output (a text asset) once done", body = JobView), (status = 401, description = "Not signed in", body = ErrorBody), (status = 404, description = "No such item, or not the caller's", body = ErrorBody)))]
pub async fn get_one(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    get_of_kind(&state, &headers, &id, KIND).await
}
