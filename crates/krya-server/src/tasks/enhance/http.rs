//! `POST /api/enhance/image` and `GET /api/enhance/:id` (seed §6.1): the enhancer's own
//! endpoints over the common job (`/api/jobs` shows the same jobs).

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::ToSchema;

use super::{EnhanceRequest, KIND};
use crate::AppState;
use crate::http::auth;
#[allow(unused_imports)]
use crate::http::openapi::ErrorBody;
use crate::infra::error::{ApiError, invalid};
use crate::jobs::JobView;
use crate::jobs::http::{Submission, own, submit, task_of, view};

/// An enhance request, with what every job takes (the OpenAPI document's shape of the
/// body `create` reads).
#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct NewEnhance {
    #[serde(flatten)]
    pub request: EnhanceRequest,
    /// Shown in the feed once completed.
    #[serde(default)]
    pub is_public: bool,
    /// Told when the job ends (signed).
    #[serde(default)]
    pub webhook_url: Option<String>,
}

#[utoipa::path(post, path = "/api/enhance/image", tag = "enhance", request_body = NewEnhance, responses((status = 202, description = "Queued", body = JobView), (status = 401, description = "Not signed in", body = ErrorBody), (status = 402, description = "Not enough credits", body = ErrorBody), (status = 422, description = "Invalid input (the message names the field)", body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let user = auth::current_user(&state, &headers).await?;
    let Json(mut params) = body?;
    // What every job takes comes off; the rest is the kind's request, checked strictly
    // (an unknown field is refused) by its task.
    let mut take = |k: &str| params.as_object_mut().and_then(|o| o.remove(k));
    let is_public = match take("is_public") {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Bool(b)) => b,
        Some(_) => return Err(invalid("is_public", "must be true or false")),
    };
    let webhook_url = match take("webhook_url") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(u)) => Some(u),
        Some(_) => return Err(invalid("webhook_url", "must be a URL")),
    };
    let task = task_of(&state, KIND)?;
    let id = submit(
        &state,
        &user,
        &*task,
        Submission {
            params,
            webhook_url: webhook_url.as_deref(),
            is_public,
            remix_of: None,
        },
    )
    .await?;
    let j = own(&state, &user, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(view(&state, &j, true).await?)).into_response())
}

#[utoipa::path(get, path = "/api/enhance/{id}", tag = "enhance", params(("id" = String, Path, description = "Job id")), responses((status = 200, description = "The enhance job, with its output once done", body = JobView), (status = 401, description = "Not signed in", body = ErrorBody), (status = 404, description = "No such item, or not the caller's", body = ErrorBody)))]
pub async fn get_one(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let user = auth::current_user(&state, &headers).await?;
    let j = own(&state, &user, &id).await?;
    if j.kind != KIND {
        return Err(ApiError::not_found(format!("no enhance job {id}")));
    }
    Ok(Json(view(&state, &j, true).await?))
}
