//! A user's files: the storage quota (uploads and outputs), deleting an upload, and the
//! sweep that removes uploads no job used.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use sqlx::Row;

use crate::AppState;
use crate::http::auth;
#[allow(unused_imports)]
use crate::http::openapi::{Accepted, ErrorBody, Object, Session};
use crate::infra::error::{ApiError, ErrorCode, internal};
use crate::persistence::db::Db;

/// Bytes the user's files take (uploads and outputs).
pub async fn used_bytes(db: &Db, user_id: &str) -> Result<i64, sqlx::Error> {
    sqlx::query(
        "SELECT CAST(COALESCE(SUM(bytes), 0) AS BIGINT) AS n FROM assets WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_one(&db.pool)
    .await?
    .try_get("n")
}

/// Refuses when `adding` more bytes would take the user past their quota.
pub async fn check_quota(state: &AppState, user_id: &str, adding: u64) -> Result<(), ApiError> {
    let quota_mb = state.config.limits.storage_mb_per_user;
    if quota_mb == 0 {
        return Ok(());
    }
    let used = used_bytes(&state.db, user_id).await.map_err(internal)?;
    let quota = quota_mb.saturating_mul(1024 * 1024);
    if used as u64 + adding > quota {
        return Err(ApiError::new(
            ErrorCode::QuotaExceeded,
            format!(
                "storage: your files use {} of your {quota_mb} MiB; delete some (DELETE /api/assets/:id, DELETE /api/jobs/:id)",
                (used as u64).div_ceil(1024 * 1024)
            ),
        ));
    }
    Ok(())
}

/// Marks uploads as used by a job (they are kept from then on).
pub async fn mark_used(db: &Db, ids: &[String]) -> Result<(), sqlx::Error> {
    for id in ids {
        sqlx::query("UPDATE assets SET used_at = $1 WHERE id = $2 AND used_at IS NULL")
            .bind(crate::infra::ids::now())
            .bind(id)
            .execute(&db.pool)
            .await?;
    }
    Ok(())
}

/// `DELETE /api/assets/:id`: one of the caller's uploads, its row and its file. A job's
/// outputs go with their job (`DELETE /api/jobs/:id`).
#[utoipa::path(delete, path = "/api/assets/{id}", tag = "media", params(("id" = String, Path, description = "Asset id")), responses((status = 204, description = "Deleted"), (status = 401, description = "Not signed in", body = ErrorBody), (status = 404, description = "No such item, or not the caller's", body = ErrorBody), (status = 409, description = "A job's output: delete the job", body = ErrorBody)))]
pub async fn delete_asset(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let user = auth::current_user(&state, &headers).await?;
    let row = sqlx::query(
        "SELECT blob_key, thumb_key, job_id FROM assets WHERE id = $1 AND user_id = $2",
    )
    .bind(&id)
    .bind(&user.id)
    .fetch_optional(&state.db.pool)
    .await
    .map_err(internal)?
    .ok_or_else(|| ApiError::not_found(format!("no asset {id}")))?;
    if let Some(job) = row
        .try_get::<Option<String>, _>("job_id")
        .map_err(internal)?
    {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "asset {id} is an output of job {job}: delete the job (DELETE /api/jobs/{job})"
            ),
        ));
    }
    remove(&state, &id, &row).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes an asset's row, then its files.
async fn remove(state: &AppState, id: &str, row: &sqlx::any::AnyRow) -> Result<(), ApiError> {
    sqlx::query("DELETE FROM assets WHERE id = $1")
        .bind(id)
        .execute(&state.db.pool)
        .await
        .map_err(internal)?;
    for col in ["blob_key", "thumb_key"] {
        if let Some(key) = row.try_get::<Option<String>, _>(col).map_err(internal)? {
            state.blobs.delete(&key).await.map_err(internal)?;
        }
    }
    Ok(())
}

/// Deletes finished jobs that nobody lists (kinds that notify no one: webhook deliveries)
/// older than `jobs.retention_days`; the number deleted.
pub async fn prune_jobs(state: &AppState) -> Result<u64, ApiError> {
    let days = state.config.jobs.retention_days;
    if days == 0 {
        return Ok(0);
    }
    let internal_kinds: Vec<&str> = state
        .tasks
        .all_kinds()
        .into_iter()
        .filter(|k| state.tasks.get(k).is_some_and(|t| !t.notifies()))
        .collect();
    let before = crate::jobs::now_ms() - days as i64 * 86_400_000;
    let mut n = 0;
    for kind in internal_kinds {
        n += sqlx::query(
            "DELETE FROM jobs WHERE kind = $1 AND status IN ('completed', 'failed', 'cancelled') AND completed_at < $2",
        )
        .bind(kind)
        .bind(before)
        .execute(&state.db.pool)
        .await
        .map_err(internal)?
        .rows_affected();
    }
    if n > 0 {
        tracing::info!(
            deleted = n,
            "finished deliveries past their retention were deleted"
        );
    }
    Ok(n)
}

/// Removes uploads older than `limits.unused_upload_hours` that no job used (as an input or
/// a parent); the number removed.
pub async fn sweep(state: &AppState) -> Result<usize, ApiError> {
    let hours = state.config.limits.unused_upload_hours;
    if hours == 0 {
        return Ok(0);
    }
    let before = crate::infra::ids::now() - hours as i64 * 3600;
    let rows = sqlx::query(
        "SELECT a.id, a.blob_key, a.thumb_key FROM assets a WHERE a.job_id IS NULL AND a.used_at IS NULL \
         AND a.created_at < $1 AND NOT EXISTS (SELECT 1 FROM assets o WHERE o.parent_id = a.id) LIMIT 1000",
    )
    .bind(before)
    .fetch_all(&state.db.pool)
    .await
    .map_err(internal)?;
    for r in &rows {
        let id: String = r.try_get("id").map_err(internal)?;
        remove(state, &id, r).await?;
    }
    if !rows.is_empty() {
        tracing::info!(removed = rows.len(), "uploads no job used were removed");
    }
    Ok(rows.len())
}
