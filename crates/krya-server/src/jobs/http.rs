//! The jobs API, the same for every kind. A kind's own endpoints (`/api/generate/image`)
//! create jobs of this shape too.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sqlx::Row;
use utoipa::ToSchema;

use super::{JOB_COLUMNS, JobError, JobRow, JobView, NewJob, Progress};
use crate::http::openapi::ErrorBody;
use crate::infra::credits::log_usage;
use crate::infra::error::{ApiError, ApiQuery, ErrorCode, internal, invalid};
use crate::infra::ids::random_id;
use crate::persistence::db::{Db, User};
use crate::tasks::runner::with_kind;
use crate::tasks::{Slot, Task};
use crate::{AppState, http::auth};

use krya_core::status::STATUSES;

/// `POST /api/jobs`: a job of any kind that takes its requests here.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewJobRequest {
    /// A kind this server runs (`GET /api/jobs/kinds`; `image` has its own endpoint).
    pub kind: String,
    /// The kind's request.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    /// Shown in the feed once completed (default false).
    #[serde(default)]
    pub is_public: bool,
    /// Gets a signed POST when the job ends.
    #[serde(default)]
    pub webhook_url: Option<String>,
}

/// The view of a job: its outputs, error and (while pending) queue position.
pub async fn view(state: &AppState, j: &JobRow, with_queue: bool) -> Result<JobView, ApiError> {
    let outputs = state.db.outputs(&j.id).await.map_err(internal)?;
    let queue_position = if with_queue && j.status == "pending" {
        // Ahead of it: the jobs of the kinds its slot runs.
        let slot = state.tasks.get(&j.kind).map_or(Slot::Compute, |t| t.slot());
        let kinds = state.tasks.kinds(slot);
        state
            .db
            .queue_position(&j.id, &kinds)
            .await
            .map_err(internal)?
    } else {
        None
    };
    Ok(JobView {
        id: j.id.clone(),
        kind: j.kind.clone(),
        status: j.status.clone(),
        progress: Progress {
            step: j.progress_step,
            total: j.progress_total,
        },
        attempts: j.attempts,
        queue_position,
        params: j
            .params
            .as_deref()
            .and_then(|p| serde_json::from_str(p).ok())
            .unwrap_or_default(),
        outputs,
        error: j.error_code.as_ref().map(|c| JobError {
            code: c.clone(),
            message: j.last_error.clone().unwrap_or_default(),
        }),
        cost: j.cost,
        ref_id: (j.ref_id != j.id).then(|| j.ref_id.clone()),
        prompt: j.prompt.clone(),
        is_public: j.is_public,
        created_at: j.created_at / 1000,
        started_at: j.started_at.map(|t| t / 1000),
        completed_at: j.completed_at.map(|t| t / 1000),
    })
}

/// A task of this server that users submit to and hear from.
pub(crate) fn task_of(state: &AppState, kind: &str) -> Result<std::sync::Arc<dyn Task>, ApiError> {
    state
        .tasks
        .get(kind)
        .filter(|t| t.notifies())
        .cloned()
        .ok_or_else(|| {
            let kinds: Vec<_> = user_kinds(state);
            invalid("kind", format!("must be one of {}", kinds.join(", ")))
        })
}

pub(crate) fn user_kinds(state: &AppState) -> Vec<&'static str> {
    state
        .tasks
        .all_kinds()
        .into_iter()
        .filter(|k| state.tasks.get(k).is_some_and(|t| t.notifies()))
        .collect()
}

/// A kind's own create endpoint (`POST /api/enhance/image`…): the body is the kind's
/// request with what every job takes (`is_public`, `webhook_url`) beside it; those come
/// off, and the rest is checked strictly (an unknown field is refused) by the kind's task.
pub(crate) async fn create_of_kind(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Json<serde_json::Value>, JsonRejection>,
    kind: &str,
) -> Result<Response, ApiError> {
    let user = auth::current_user(state, headers).await?;
    let Json(mut params) = body?;
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
    let task = task_of(state, kind)?;
    let id = submit(
        state,
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
    let j = own(state, &user, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(view(state, &j, true).await?)).into_response())
}

/// A kind's own read endpoint (`GET /api/enhance/:id`…): the caller's job of that kind.
pub(crate) async fn get_of_kind(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
    kind: &str,
) -> Result<Json<JobView>, ApiError> {
    let user = auth::current_user(state, headers).await?;
    let j = own(state, &user, id).await?;
    if j.kind != kind {
        return Err(ApiError::not_found(format!("no {kind} job {id}")));
    }
    Ok(Json(view(state, &j, true).await?))
}

/// The caller's job with this id; others' do not exist (404).
pub(crate) async fn own(state: &AppState, user: &User, id: &str) -> Result<JobRow, ApiError> {
    match state.db.job(id).await.map_err(internal)? {
        Some(j) if j.user_id == user.id && task_of(state, &j.kind).is_ok() => Ok(j),
        _ => Err(ApiError::not_found(format!("no job {id}"))),
    }
}

#[utoipa::path(post, path = "/api/jobs", tag = "jobs", request_body = NewJobRequest, responses((status = 202, description = "Queued", body = JobView), (status = 401, description = "Not signed in", body = ErrorBody), (status = 402, description = "Not enough credits", body = ErrorBody), (status = 422, description = "Invalid input (the message names the field)", body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<NewJobRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let user = auth::current_user(&state, &headers).await?;
    let Json(req) = body?;
    let task = task_of(&state, &req.kind)?;
    let submitted = Submission {
        params: req.params,
        webhook_url: req.webhook_url.as_deref(),
        is_public: req.is_public,
        remix_of: None,
    };
    let id = submit(&state, &user, &*task, submitted).await?;
    let j = own(&state, &user, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(view(&state, &j, true).await?)).into_response())
}

/// A request for a job of a kind that takes its requests as `POST /api/jobs` does.
pub struct Submission<'a> {
    pub params: serde_json::Value,
    pub webhook_url: Option<&'a str>,
    pub is_public: bool,
    /// The job it remixes.
    pub remix_of: Option<&'a str>,
}

/// Checks, prices and queues a job for `user` (credits reserved); its id.
pub async fn submit(
    state: &AppState,
    user: &User,
    task: &dyn Task,
    s: Submission<'_>,
) -> Result<String, ApiError> {
    if let Some(url) = s.webhook_url {
        crate::tasks::webhook::outbox::check_target(url, state.config.webhooks.allow_private)
            .await
            .map_err(|e| invalid("webhook_url", e))?;
    }
    let prepared = task.prepare(&state.services(), &user.id, s.params).await?;
    for id in &prepared.inputs {
        if state
            .db
            .asset(id, &user.id)
            .await
            .map_err(internal)?
            .is_none()
        {
            return Err(invalid("params", format!("no uploaded file {id}")));
        }
    }
    task.check_inputs(&state.services(), &user.id, &prepared.params)
        .await?;
    let id = random_id();
    let params = prepared.params.to_string();
    let tx = state.db.pool.begin().await.map_err(internal)?;
    let mut tx = crate::infra::credits::reserve(&state.db, tx, user, prepared.cost).await?;
    log_usage(&mut tx, &user.id, task.kind(), prepared.cost, &id)
        .await
        .map_err(internal)?;
    super::enqueue(
        &mut tx,
        NewJob {
            id: &id,
            kind: task.kind(),
            ref_id: &id,
            user_id: &user.id,
            max_attempts: state.config.jobs.max_attempts as i64,
            payload: None,
            params: Some(&params),
            cost: prepared.cost,
            webhook_url: s.webhook_url,
            is_public: s.is_public,
            remix_of: s.remix_of,
        },
    )
    .await
    .map_err(internal)?;
    tx.commit().await.map_err(internal)?;
    crate::http::storage::mark_used(&state.db, &prepared.inputs)
        .await
        .map_err(internal)?;
    state.wake.notify();
    state.bus.publish(
        &user.id,
        "queued",
        &id,
        with_kind(serde_json::json!({"status": "pending"}), task.kind()),
    );
    Ok(id)
}

#[utoipa::path(get, path = "/api/jobs/{id}", tag = "jobs", params(("id" = String, Path, description = "Job id")), responses((status = 200, description = "The job", body = JobView), (status = 401, description = "Not signed in", body = ErrorBody), (status = 404, description = "No such item, or not the caller's", body = ErrorBody)))]
pub async fn get_one(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let user = auth::current_user(&state, &headers).await?;
    let j = own(&state, &user, &id).await?;
    Ok(Json(view(&state, &j, true).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// Only jobs of this kind.
    pub(crate) kind: Option<String>,
    /// Only jobs with this status.
    #[param(pattern = "^(pending|processing|completed|failed|cancelled)$")]
    pub(crate) status: Option<String>,
    /// Only jobs with this model.
    pub(crate) model: Option<String>,
    /// Only jobs whose prompt contains this (case-insensitive for ASCII letters).
    #[param(max_length = 200)]
    pub(crate) q: Option<String>,
    /// 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub(crate) limit: Option<u32>,
    /// `next_cursor` of the page before.
    pub(crate) cursor: Option<String>,
}

#[derive(serde::Serialize, ToSchema)]
pub struct JobPage {
    pub items: Vec<JobView>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/jobs", tag = "jobs", params(ListQuery), responses((status = 200, description = "The caller's jobs, newest first", body = JobPage), (status = 401, description = "Not signed in", body = ErrorBody), (status = 422, description = "Invalid input (the message names the field)", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<JobPage>, ApiError> {
    let user = auth::current_user(&state, &headers).await?;
    let kinds = user_kinds(&state);
    if let Some(k) = &q.kind
        && !kinds.contains(&k.as_str())
    {
        return Err(invalid(
            "kind",
            format!("must be one of {}", kinds.join(", ")),
        ));
    }
    if let Some(s) = &q.status
        && !STATUSES.contains(&s.as_str())
    {
        return Err(invalid(
            "status",
            format!("must be one of {}", STATUSES.join(", ")),
        ));
    }
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(invalid("limit", "must be from 1 to 100"));
    }
    let before = match &q.cursor {
        Some(c) => c
            .parse::<i64>()
            .map_err(|_| invalid("cursor", "is not a cursor this API gave"))?,
        None => i64::MAX,
    };
    let listed: Vec<String> = kinds.iter().map(|k| format!("'{k}'")).collect();
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS}, j.seq FROM jobs j WHERE j.user_id = $1 AND j.kind IN ({}) \
         AND ($2 = '' OR j.kind = $2) AND ($3 = '' OR j.status = $3) AND j.seq < $4 \
         AND ($6 = '' OR LOWER(j.prompt) LIKE $6 ESCAPE '\\') AND ($7 = '' OR j.model = $7) \
         ORDER BY j.seq DESC LIMIT $5",
        listed.join(", ")
    )))
    .bind(&user.id)
    .bind(q.kind.as_deref().unwrap_or(""))
    .bind(q.status.as_deref().unwrap_or(""))
    .bind(before)
    .bind(limit as i64 + 1)
    .bind(crate::generations::search_pattern(q.q.as_deref())?)
    .bind(q.model.as_deref().unwrap_or(""))
    .fetch_all(&state.db.pool)
    .await
    .map_err(internal)?;
    let mut items = Vec::new();
    let mut next_cursor = None;
    for (i, r) in rows.iter().enumerate() {
        if i == limit as usize {
            let seq: i64 = rows[i - 1].try_get("seq").map_err(internal)?;
            next_cursor = Some(seq.to_string());
            break;
        }
        let j = JobRow::from_row(r).map_err(internal)?;
        items.push(view(&state, &j, false).await?);
    }
    Ok(Json(JobPage { items, next_cursor }))
}

/// Cancels a job that has not ended: refunds it, and a running one stops at its task's
/// next check. `false` when it had ended.
pub async fn cancel(state: &AppState, j: &JobRow) -> Result<bool, ApiError> {
    let task = task_of(state, &j.kind)?;
    let job = j.as_job();
    let data = serde_json::json!({"status": "cancelled"});
    let mut tx = state.db.pool.begin().await.map_err(internal)?;
    // The job first, then its record: the same lock order as the runner's.
    let done = Db::cancel_job(&mut tx, &j.id).await.map_err(internal)?
        && task.cancelled(&mut tx, &job).await.map_err(internal)?;
    if !done {
        return Ok(false);
    }
    crate::infra::credits::refund(&mut tx, &job)
        .await
        .map_err(internal)?;
    crate::tasks::webhook::outbox::enqueue(&mut tx, &*task, &job, "cancelled", &data)
        .await
        .map_err(internal)?;
    tx.commit().await.map_err(internal)?;
    if let Some(token) = state.running.lock().unwrap().get(&j.ref_id) {
        token.cancel();
    }
    state
        .bus
        .publish(&j.user_id, "cancelled", &j.ref_id, with_kind(data, &j.kind));
    Ok(true)
}

#[utoipa::path(post, path = "/api/jobs/{id}/cancel", tag = "jobs", params(("id" = String, Path, description = "Job id")), responses((status = 200, description = "Cancelled and refunded", body = JobView), (status = 401, description = "Not signed in", body = ErrorBody), (status = 404, description = "No such item, or not the caller's", body = ErrorBody), (status = 409, description = "Already ended", body = ErrorBody)))]
pub async fn cancel_one(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let user = auth::current_user(&state, &headers).await?;
    let j = own(&state, &user, &id).await?;
    if !cancel(&state, &j).await? {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("job {id} has already ended ({})", j.status),
        ));
    }
    let j = own(&state, &user, &id).await?;
    Ok(Json(view(&state, &j, false).await?))
}

/// Deletes a job: cancels it if it has not ended, then removes its record, its outputs'
/// rows and every file under its storage prefix.
pub async fn delete(state: &AppState, j: &JobRow) -> Result<(), ApiError> {
    let task = task_of(state, &j.kind)?;
    if j.is_active() {
        cancel(state, j).await?;
    }
    let job = j.as_job();
    let mut tx = state.db.pool.begin().await.map_err(internal)?;
    task.deleted(&mut tx, &job).await.map_err(internal)?;
    for sql in [
        "DELETE FROM job_likes WHERE job_id = $1",
        "DELETE FROM reports WHERE job_id = $1",
        "DELETE FROM assets WHERE job_id = $1",
        "DELETE FROM jobs WHERE id = $1",
    ] {
        sqlx::query(sql)
            .bind(&j.id)
            .execute(&mut *tx)
            .await
            .map_err(internal)?;
    }
    tx.commit().await.map_err(internal)?;
    let prefix = task.blob_prefix(&job);
    for key in state.blobs.list(&prefix).await.map_err(internal)? {
        state.blobs.delete(&key).await.map_err(internal)?;
    }
    Ok(())
}

#[utoipa::path(delete, path = "/api/jobs/{id}", tag = "jobs", params(("id" = String, Path, description = "Job id")), responses((status = 204, description = "Cancelled if running; record and files deleted"), (status = 401, description = "Not signed in", body = ErrorBody), (status = 404, description = "No such item, or not the caller's", body = ErrorBody)))]
pub async fn delete_one(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let user = auth::current_user(&state, &headers).await?;
    let j = own(&state, &user, &id).await?;
    delete(&state, &j).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobPatch {
    /// Shown in the feed (once completed), its outputs readable by anyone.
    pub is_public: Option<bool>,
}

/// `PATCH /api/jobs/:id {is_public}`: share a job of any kind, or stop sharing it.
#[utoipa::path(patch, path = "/api/jobs/{id}", tag = "jobs", params(("id" = String, Path, description = "Job id")), request_body = JobPatch, responses((status = 200, description = "Updated", body = JobView), (status = 401, description = "Not signed in", body = ErrorBody), (status = 404, description = "No such item, or not the caller's", body = ErrorBody), (status = 422, description = "Invalid input (the message names the field)", body = ErrorBody)))]
pub async fn patch_one(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<JobPatch>, JsonRejection>,
) -> Result<Json<JobView>, ApiError> {
    let user = auth::current_user(&state, &headers).await?;
    let Json(p) = body?;
    let j = own(&state, &user, &id).await?;
    if let Some(public) = p.is_public {
        state.db.set_public(&j.id, public).await?;
    }
    let j = own(&state, &user, &id).await?;
    Ok(Json(view(&state, &j, false).await?))
}

/// The kinds of job this server takes.
#[derive(serde::Serialize, ToSchema)]
pub struct Kinds {
    /// Each kind's name: `image` (`POST /api/generate/image`) and those `POST /api/jobs`
    /// takes.
    pub kinds: Vec<String>,
}

#[utoipa::path(get, path = "/api/jobs/kinds", tag = "jobs", responses((status = 200, description = "The kinds of job this server takes", body = Kinds), (status = 401, description = "Not signed in", body = ErrorBody)))]
pub async fn kinds(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Kinds>, ApiError> {
    auth::current_user(&state, &headers).await?;
    Ok(Json(Kinds {
        kinds: user_kinds(&state).into_iter().map(str::to_string).collect(),
    }))
}
