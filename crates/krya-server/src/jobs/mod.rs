//! Jobs of every kind: the record (one `jobs` row each: request, cost, progress, end), its
//! output assets, the queue (`queue`), and the API (`http`): `POST /api/jobs`,
//! `GET /api/jobs`, `GET /api/jobs/:id`, `POST /api/jobs/:id/cancel`, `DELETE /api/jobs/:id`.

pub mod http;
mod queue;

pub use queue::*;

use std::collections::HashMap;

use serde::Serialize;
use sqlx::Row;
use utoipa::ToSchema;

use crate::infra::error::{ApiError, ErrorCode, internal};
use crate::persistence::db::Db;
use crate::tasks::{Job, Stored};

/// A job's progress: step of total (0 of 0 before its first step).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Progress {
    pub step: i64,
    pub total: i64,
}

/// Why a job failed: a stable code (see `docs/api.md`) and a message.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobError {
    pub code: String,
    pub message: String,
}

/// A file: an upload or a job's output.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AssetView {
    pub id: String,
    /// `image`, `mask`, `video`, `audio`, `mesh`, `lora`, `dataset` or `text`.
    pub kind: String,
    pub mime: String,
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub duration_ms: Option<i64>,
    pub bytes: i64,
    pub url: String,
    pub thumbnail_url: Option<String>,
    /// The asset it was made from.
    pub parent_id: Option<String>,
    /// The job that made it.
    pub job_id: Option<String>,
    /// `private` (its owner only) or `public`.
    pub visibility: String,
    /// Seconds since the epoch.
    pub created_at: i64,
}

/// A job of any kind, as every jobs endpoint shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobView {
    pub id: String,
    pub kind: String,
    /// `pending`, `processing`, `completed`, `failed` or `cancelled`.
    pub status: String,
    pub progress: Progress,
    /// Runs started so far (a worker that died mid-run costs one; a poll does not).
    pub attempts: i64,
    /// Jobs the fair order runs first (while pending).
    pub queue_position: Option<i64>,
    /// The request, as its kind checked it.
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    pub outputs: Vec<AssetView>,
    pub error: Option<JobError>,
    /// Credits reserved (refunded when it fails or is cancelled).
    pub cost: i64,
    /// The record it works on when that is not the job itself (an image job's generation).
    pub ref_id: Option<String>,
    /// Its prompt, where its kind has one.
    pub prompt: Option<String>,
    /// Shared: in the feed once completed, its outputs readable by anyone.
    pub is_public: bool,
    /// Seconds since the epoch.
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
}

/// A `jobs` row as the API needs it.
#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: String,
    pub kind: String,
    pub ref_id: String,
    pub user_id: String,
    pub status: String,
    pub attempts: i64,
    pub params: Option<String>,
    pub cost: i64,
    pub progress_step: i64,
    pub progress_total: i64,
    pub error_code: Option<String>,
    pub last_error: Option<String>,
    pub webhook_url: Option<String>,
    pub prompt: Option<String>,
    pub is_public: bool,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
}

pub const JOB_COLUMNS: &str = "j.id, j.kind, j.ref_id, j.user_id, j.status, j.attempts, j.params, j.cost, j.progress_step, j.progress_total, j.error_code, j.last_error, j.webhook_url, j.prompt, j.is_public, j.created_at, j.started_at, j.completed_at";

impl JobRow {
    pub fn from_row(r: &sqlx::any::AnyRow) -> Result<Self, sqlx::Error> {
        Ok(JobRow {
            id: r.try_get("id")?,
            kind: r.try_get("kind")?,
            ref_id: r.try_get("ref_id")?,
            user_id: r.try_get("user_id")?,
            status: r.try_get("status")?,
            attempts: r.try_get("attempts")?,
            params: r.try_get("params")?,
            cost: r.try_get("cost")?,
            progress_step: r.try_get("progress_step")?,
            progress_total: r.try_get("progress_total")?,
            error_code: r.try_get("error_code")?,
            last_error: r.try_get("last_error")?,
            webhook_url: r.try_get("webhook_url")?,
            prompt: r.try_get("prompt")?,
            is_public: r.try_get::<i64, _>("is_public")? != 0,
            created_at: r.try_get("created_at")?,
            started_at: r.try_get("started_at")?,
            completed_at: r.try_get("completed_at")?,
        })
    }

    pub fn is_active(&self) -> bool {
        self.status == "pending" || self.status == "processing"
    }

    /// The job as a task sees it (for the hooks run when its owner cancels it).
    pub fn as_job(&self) -> Job {
        Job {
            id: self.id.clone(),
            kind: self.kind.clone(),
            ref_id: self.ref_id.clone(),
            user_id: self.user_id.clone(),
            attempt: 0,
            max_attempts: 0,
            params: self
                .params
                .as_deref()
                .and_then(|p| serde_json::from_str(p).ok())
                .unwrap_or_default(),
            state: None,
            cost: self.cost,
            webhook_url: self.webhook_url.clone(),
        }
    }
}

/// Assets with the job that made them: a public job's outputs are public.
pub const ASSETS: &str = "assets a LEFT JOIN jobs aj ON aj.id = a.job_id";

const ASSET_COLUMNS: &str = "a.id, a.kind, a.mime, a.width, a.height, a.duration_ms, a.bytes, a.thumb_key, a.parent_id, a.job_id, \
     CASE WHEN a.visibility = 'public' OR aj.is_public = 1 THEN 'public' ELSE 'private' END AS visibility, a.created_at";

fn asset_view(r: &sqlx::any::AnyRow) -> Result<AssetView, sqlx::Error> {
    let id: String = r.try_get("id")?;
    let dim = |v: i64| (v > 0).then_some(v);
    let thumb: Option<String> = r.try_get("thumb_key")?;
    Ok(AssetView {
        url: format!("/api/assets/{id}"),
        thumbnail_url: thumb.map(|_| format!("/api/assets/{id}/thumbnail")),
        kind: r.try_get("kind")?,
        mime: r.try_get("mime")?,
        width: dim(r.try_get("width")?),
        height: dim(r.try_get("height")?),
        duration_ms: r.try_get("duration_ms")?,
        bytes: r.try_get("bytes")?,
        parent_id: r.try_get("parent_id")?,
        job_id: r.try_get("job_id")?,
        visibility: r.try_get("visibility")?,
        created_at: r.try_get("created_at")?,
        id,
    })
}

/// An output as events and webhooks describe it (before the API reads it back).
pub fn output_json(s: &Stored<'_>) -> serde_json::Value {
    let o = s.output;
    serde_json::json!({
        "id": s.asset_id, "kind": o.kind, "mime": o.mime, "width": o.width, "height": o.height,
        "duration_ms": o.duration_ms, "bytes": o.body.len(), "url": format!("/api/assets/{}", s.asset_id),
        "thumbnail_url": s.thumb_key.as_ref().map(|_| format!("/api/assets/{}/thumbnail", s.asset_id)),
        "parent_id": o.parent_id,
    })
}

/// Records a stored output as an asset of the job's owner, in the job's final transaction.
pub async fn insert_output(
    tx: &mut sqlx::AnyConnection,
    job: &Job,
    s: &Stored<'_>,
) -> Result<(), sqlx::Error> {
    let o = s.output;
    sqlx::query("INSERT INTO assets (id, user_id, blob_key, mime, width, height, bytes, created_at, kind, job_id, parent_id, duration_ms, thumb_key) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)")
        .bind(&s.asset_id)
        .bind(&job.user_id)
        .bind(&s.key)
        .bind(o.mime)
        .bind(o.width.unwrap_or(0) as i64)
        .bind(o.height.unwrap_or(0) as i64)
        // The zoomable copy counts against the owner's storage with the file.
        .bind((o.body.len() + o.tiles.as_ref().map_or(0, |t| t.len())) as i64)
        .bind(crate::http::auth::now())
        .bind(o.kind)
        .bind(&job.id)
        .bind(&o.parent_id)
        .bind(o.duration_ms)
        .bind(&s.thumb_key)
        .execute(tx)
        .await?;
    Ok(())
}

/// Records a job that ended as it began (a live-canvas capture: saved, nothing to run).
pub async fn record_completed(
    tx: &mut sqlx::AnyConnection,
    j: NewJob<'_>,
) -> Result<(), sqlx::Error> {
    let id = j.id.to_string();
    enqueue(&mut *tx, j).await?;
    sqlx::query("UPDATE jobs SET status = 'completed', started_at = created_at, completed_at = created_at WHERE id = $1")
        .bind(&id)
        .execute(tx)
        .await?;
    Ok(())
}

impl Db {
    pub async fn job(&self, id: &str) -> Result<Option<JobRow>, sqlx::Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM jobs j WHERE j.id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| JobRow::from_row(&r)).transpose()
    }

    /// Shares a job (its outputs become readable by anyone), or stops sharing it. A job an
    /// administrator hid cannot be shared again by its owner (403).
    pub async fn set_public(&self, job_id: &str, public: bool) -> Result<(), ApiError> {
        let changed =
            sqlx::query("UPDATE jobs SET is_public = $1 WHERE id = $2 AND hidden IS NULL")
                .bind(public as i64)
                .bind(job_id)
                .execute(&self.pool)
                .await
                .map_err(internal)?
                .rows_affected();
        if changed == 0 && public {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "an administrator has hidden this item: it cannot be shared",
            ));
        }
        Ok(())
    }

    /// A user's pending and running jobs.
    pub async fn active_jobs_of(&self, user_id: &str) -> Result<Vec<JobRow>, sqlx::Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM jobs j WHERE j.user_id = $1 AND j.status IN ('pending', 'processing')"
        )))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(JobRow::from_row).collect()
    }

    /// The job of `kind` working on record `ref_id` (an image job by its generation).
    pub async fn job_for(&self, ref_id: &str, kind: &str) -> Result<Option<JobRow>, sqlx::Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM jobs j WHERE j.ref_id = $1 AND j.kind = $2 ORDER BY j.seq LIMIT 1"
        )))
        .bind(ref_id)
        .bind(kind)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| JobRow::from_row(&r)).transpose()
    }

    /// An asset's size in pixels (whoever owns it; the caller checks ownership).
    /// The size of `user_id`'s asset `id` (none when it is not theirs: another user's
    /// images are never described, not even by their size).
    pub async fn asset_size(
        &self,
        id: &str,
        user_id: &str,
    ) -> Result<Option<(u64, u64)>, sqlx::Error> {
        let row = sqlx::query("SELECT width, height FROM assets WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok((
                r.try_get::<i64, _>("width")?.max(0) as u64,
                r.try_get::<i64, _>("height")?.max(0) as u64,
            ))
        })
        .transpose()
    }

    /// An asset as the API shows it.
    pub async fn asset_view(&self, id: &str) -> Result<Option<AssetView>, sqlx::Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ASSET_COLUMNS} FROM {ASSETS} WHERE a.id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| asset_view(&r)).transpose()
    }

    /// An asset's versions, as edits chain them through `parent_id`: its ancestors from the
    /// first (the original) to the asset itself, then the assets made from it (oldest
    /// first); the owner's only, at most 64 back and 64 on. `None`: not the owner's.
    pub async fn lineage(
        &self,
        id: &str,
        user_id: &str,
    ) -> Result<Option<(Vec<AssetView>, Vec<AssetView>)>, sqlx::Error> {
        let one =
            format!("SELECT {ASSET_COLUMNS} FROM {ASSETS} WHERE a.id = $1 AND a.user_id = $2");
        let mut chain: Vec<AssetView> = Vec::new();
        let mut next = Some(id.to_string());
        while let Some(at) = next.take() {
            if chain.len() == 64 || chain.iter().any(|a| a.id == at) {
                break;
            }
            let row = sqlx::query(sqlx::AssertSqlSafe(one.clone()))
                .bind(&at)
                .bind(user_id)
                .fetch_optional(&self.pool)
                .await?;
            let Some(row) = row else { break };
            let a = asset_view(&row)?;
            next = a.parent_id.clone();
            chain.push(a);
        }
        if chain.is_empty() {
            return Ok(None);
        }
        chain.reverse();
        let children = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ASSET_COLUMNS} FROM {ASSETS} WHERE a.parent_id = $1 AND a.user_id = $2 \
             ORDER BY a.created_at, a.id LIMIT 64"
        )))
        .bind(id)
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(asset_view)
        .collect::<Result<Vec<_>, _>>()?;
        Ok(Some((chain, children)))
    }

    /// The assets job `id` made, in output order.
    pub async fn outputs(&self, job_id: &str) -> Result<Vec<AssetView>, sqlx::Error> {
        let mut all = self.outputs_of(&[job_id.to_string()]).await?;
        Ok(all.remove(job_id).unwrap_or_default())
    }

    /// The outputs of each of `job_ids` (one query), in output order.
    pub async fn outputs_of(
        &self,
        job_ids: &[String],
    ) -> Result<HashMap<String, Vec<AssetView>>, sqlx::Error> {
        let mut out: HashMap<String, Vec<AssetView>> = HashMap::new();
        if job_ids.is_empty() {
            return Ok(out);
        }
        let sql = format!(
            "SELECT {ASSET_COLUMNS} FROM {ASSETS} WHERE a.job_id IN ({}) ORDER BY LENGTH(a.blob_key), a.blob_key",
            crate::persistence::db::placeholders(1, job_ids.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in job_ids {
            q = q.bind(id);
        }
        for r in q.fetch_all(&self.pool).await? {
            let a = asset_view(&r)?;
            out.entry(a.job_id.clone().unwrap_or_default())
                .or_default()
                .push(a);
        }
        Ok(out)
    }
}
