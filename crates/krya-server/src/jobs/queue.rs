//! The durable job queue: a `jobs` table in the same database as everything else, so a
//! job is enqueued in the same transaction as the row it works on and survives any crash.
//!
//! A job is `pending` → `processing` (claimed with a lease that its worker extends by
//! heartbeats) → `completed` | `failed` | `cancelled`. A job whose lease ran out (its worker
//! died) is claimable again. Claims are fair across users and kinds: each user's runnable
//! jobs of each kind are ranked by age, the queue takes rank 1 of every user and kind
//! before anyone's rank 2, and among equal ranks the user served longest ago goes first
//! (round robin), then the kind they were served longest ago, so one user's hundred jobs do not
//! starve another's one, nor a hundred images one upscale. On PostgreSQL the claim locks
//! with `FOR UPDATE SKIP LOCKED`, so many workers share the queue without waiting on each
//! other.

use sqlx::Row;

use crate::persistence::db::{Backend, Db};

pub use crate::infra::ids::now_ms;

#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: String,
    pub kind: String,
    pub ref_id: String,
    pub user_id: String,
    /// Including this one.
    pub attempts: i64,
    pub max_attempts: i64,
    pub payload: Option<String>,
    pub params: Option<String>,
    pub cost: i64,
    pub webhook_url: Option<String>,
}

/// The runnable jobs: pending and due, or processing with an expired lease. The leading
/// `status IN` lets the planner reach them through the status index instead of reading
/// every finished job.
const RUNNABLE: &str = "(j.status IN ('pending', 'processing') AND ((j.status = 'pending' AND j.run_after <= $1) OR (j.status = 'processing' AND j.lease_expires_at < $1)))";

/// `IN (...)` of kinds. Kinds are the server's registered names, checked to be lowercase
/// letters and `_` when registered; never user input.
fn kind_list(kinds: &[&str]) -> String {
    assert!(!kinds.is_empty(), "no kinds to claim");
    let quoted: Vec<String> = kinds
        .iter()
        .map(|k| {
            assert!(
                k.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "job kind {k:?}"
            );
            format!("'{k}'")
        })
        .collect();
    format!("({})", quoted.join(", "))
}

/// Runnable jobs of `kinds` with their fair-order key `(rn, last, klast, seq)`: rank within
/// the user's runnable jobs of that kind, then the user served longest ago (never: first;
/// `last` is their latest claim), then the kind that user was served longest ago, then
/// submission order. When users were served comes from `job_claims` (a row per user and
/// kind), never from the history of jobs.
fn ranked_cte(kinds: &[&str]) -> String {
    let kinds = kind_list(kinds);
    // Looked up per runnable job by `job_claims`' key: the cost follows the jobs waiting,
    // not the users or jobs there have ever been.
    format!(
        "WITH runnable AS (SELECT j.seq, j.ref_id, j.status, j.user_id, j.kind FROM jobs j WHERE {RUNNABLE} AND j.kind IN {kinds}), \
         ranked AS (SELECT j.seq, j.ref_id, j.status, ROW_NUMBER() OVER (PARTITION BY j.user_id, j.kind ORDER BY j.seq) AS rn, \
         COALESCE((SELECT MAX(c.last_claimed_at) FROM job_claims c WHERE c.user_id = j.user_id AND c.kind IN {kinds}), 0) AS last, \
         COALESCE((SELECT c.last_claimed_at FROM job_claims c WHERE c.user_id = j.user_id AND c.kind = j.kind), 0) AS klast \
         FROM runnable j)"
    )
}

/// The next runnable job of `kinds` in fair order (`extra`: a locking clause).
fn fair_order_sql(kinds: &[&str], extra: &str) -> String {
    format!(
        "{} SELECT j.id, j.kind, j.ref_id, j.user_id, j.attempts, j.max_attempts, j.payload, j.params, j.cost, j.webhook_url \
         FROM jobs j JOIN ranked r ON r.seq = j.seq \
         WHERE {RUNNABLE} ORDER BY r.rn, r.last, r.klast, j.seq LIMIT 1{extra}",
        ranked_cte(kinds)
    )
}

/// A job to add to the queue.
#[derive(Default)]
pub struct NewJob<'a> {
    pub id: &'a str,
    pub kind: &'a str,
    /// The record it works on (a generation), or its own id.
    pub ref_id: &'a str,
    pub user_id: &'a str,
    pub max_attempts: i64,
    /// What the job needs besides its params (a delivery's URL and body).
    pub payload: Option<&'a str>,
    /// The request, as its kind checked it.
    pub params: Option<&'a str>,
    /// Credits reserved for it.
    pub cost: i64,
    pub webhook_url: Option<&'a str>,
    /// Shown in the feed once completed.
    pub is_public: bool,
    /// The job it remixes.
    pub remix_of: Option<&'a str>,
}

/// Adds a job in the caller's transaction.
pub async fn enqueue(tx: &mut sqlx::AnyConnection, j: NewJob<'_>) -> Result<(), sqlx::Error> {
    let t = now_ms();
    // Listings search the prompt and filter by the model of any kind that has them.
    let params = j
        .params
        .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
        .unwrap_or_default();
    let text = |k: &str| params[k].as_str().map(str::to_string);
    sqlx::query("INSERT INTO jobs (id, kind, ref_id, user_id, status, attempts, max_attempts, run_after, payload, created_at, params, cost, webhook_url, is_public, remix_of, prompt, model) \
                 VALUES ($1, $2, $3, $4, 'pending', 0, $5, $6, $7, $6, $8, $9, $10, $11, $12, $13, $14)")
        .bind(j.id)
        .bind(j.kind)
        .bind(j.ref_id)
        .bind(j.user_id)
        .bind(j.max_attempts)
        .bind(t)
        .bind(j.payload)
        .bind(j.params)
        .bind(j.cost)
        .bind(j.webhook_url)
        .bind(j.is_public as i64)
        .bind(j.remix_of)
        .bind(text("prompt"))
        .bind(text("model"))
        .execute(tx)
        .await?;
    Ok(())
}

impl Db {
    /// Takes the next job of `kinds` in fair order for `owner`, leased for `lease_ms`.
    pub async fn claim_job(
        &self,
        owner: &str,
        lease_ms: i64,
        kinds: &[&str],
    ) -> Result<Option<Claimed>, sqlx::Error> {
        // A lost race (another worker took the job between our read and write, possible on
        // SQLite shared by several processes) is retried a few times.
        for _ in 0..5 {
            let now = now_ms();
            let mut tx = self.pool.begin().await?;
            let lock = if self.backend == Backend::Postgres {
                " FOR UPDATE OF j SKIP LOCKED"
            } else {
                ""
            };
            let row = sqlx::query(sqlx::AssertSqlSafe(fair_order_sql(kinds, lock)))
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(row) = row else {
                tx.commit().await?;
                return Ok(None);
            };
            let mut job = Claimed {
                id: row.try_get("id")?,
                kind: row.try_get("kind")?,
                ref_id: row.try_get("ref_id")?,
                user_id: row.try_get("user_id")?,
                attempts: row.try_get("attempts")?,
                max_attempts: row.try_get("max_attempts")?,
                payload: row.try_get("payload")?,
                params: row.try_get("params")?,
                cost: row.try_get("cost")?,
                webhook_url: row.try_get("webhook_url")?,
            };
            let done = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE jobs SET status = 'processing', lease_owner = $2, lease_expires_at = $3, claimed_at = $1, attempts = attempts + 1, \
                 started_at = COALESCE(started_at, $1) WHERE id = $4 AND seq = (SELECT j.seq FROM jobs j WHERE j.id = $4 AND {RUNNABLE})"
            )))
            .bind(now)
            .bind(owner)
            .bind(now + lease_ms)
            .bind(&job.id)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 1 {
                sqlx::query("INSERT INTO job_claims (user_id, kind, last_claimed_at) VALUES ($1, $2, $3) \
                             ON CONFLICT (user_id, kind) DO UPDATE SET last_claimed_at = excluded.last_claimed_at")
                    .bind(&job.user_id)
                    .bind(&job.kind)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                job.attempts += 1;
                return Ok(Some(job));
            }
            tx.commit().await?;
        }
        Ok(None)
    }

    /// Extends `owner`'s lease; `false` when the job is no longer theirs to run (cancelled,
    /// finished, or reclaimed after the lease ran out).
    pub async fn heartbeat(
        &self,
        id: &str,
        owner: &str,
        lease_ms: i64,
    ) -> Result<bool, sqlx::Error> {
        let r = sqlx::query("UPDATE jobs SET lease_expires_at = $1 WHERE id = $2 AND lease_owner = $3 AND status = 'processing'")
            .bind(now_ms() + lease_ms)
            .bind(id)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Ends `owner`'s run of a job with `status`, inside the caller's transaction, so the
    /// job's results and its end are one atomic step. `false` (and nothing may be written)
    /// when the job is no longer `owner`'s.
    pub async fn finish_job(
        tx: &mut sqlx::AnyConnection,
        id: &str,
        owner: &str,
        status: &str,
        error: Option<(&str, &str)>,
    ) -> Result<bool, sqlx::Error> {
        let r = sqlx::query("UPDATE jobs SET status = $1, error_code = $2, last_error = $3, lease_owner = NULL, lease_expires_at = NULL, completed_at = $6, \
                             progress_step = CASE WHEN $1 = 'completed' THEN progress_total ELSE progress_step END \
                             WHERE id = $4 AND lease_owner = $5 AND status = 'processing'")
            .bind(status)
            .bind(error.map(|e| e.0))
            .bind(error.map(|e| e.1))
            .bind(id)
            .bind(owner)
            .bind(now_ms())
            .execute(tx)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Puts a job that is not done yet back in the queue until `at_ms` with `state` for its
    /// next run; a poll is not an attempt.
    pub async fn defer_job(
        tx: &mut sqlx::AnyConnection,
        id: &str,
        owner: &str,
        at_ms: i64,
        state: &str,
    ) -> Result<bool, sqlx::Error> {
        let r = sqlx::query("UPDATE jobs SET status = 'pending', run_after = $1, payload = $2, attempts = attempts - 1, lease_owner = NULL, lease_expires_at = NULL \
                             WHERE id = $3 AND lease_owner = $4 AND status = 'processing'")
            .bind(at_ms)
            .bind(state)
            .bind(id)
            .bind(owner)
            .execute(tx)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Puts a job that failed transiently back in the queue after `delay_ms`.
    pub async fn retry_job(
        tx: &mut sqlx::AnyConnection,
        id: &str,
        owner: &str,
        delay_ms: i64,
        error: &str,
    ) -> Result<bool, sqlx::Error> {
        let r = sqlx::query("UPDATE jobs SET status = 'pending', run_after = $1, last_error = $2, lease_owner = NULL, lease_expires_at = NULL, progress_step = 0 WHERE id = $3 AND lease_owner = $4 AND status = 'processing'")
            .bind(now_ms() + delay_ms)
            .bind(error)
            .bind(id)
            .bind(owner)
            .execute(tx)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Ends a job that has not ended as `cancelled`, in the caller's transaction; `false`
    /// when it had ended.
    pub async fn cancel_job(tx: &mut sqlx::AnyConnection, id: &str) -> Result<bool, sqlx::Error> {
        let r = sqlx::query("UPDATE jobs SET status = 'cancelled', lease_owner = NULL, lease_expires_at = NULL, completed_at = $2 WHERE id = $1 AND status IN ('pending', 'processing')")
            .bind(id)
            .bind(now_ms())
            .execute(tx)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// How many runnable jobs of `kinds` the fair order puts before the pending job `id`
    /// (`None` once it is no longer pending).
    pub async fn queue_position(
        &self,
        id: &str,
        kinds: &[&str],
    ) -> Result<Option<i64>, sqlx::Error> {
        let sql = format!(
            "{} SELECT me.status AS status, (SELECT COUNT(*) FROM ranked r WHERE r.rn < me.rn OR (r.rn = me.rn AND (r.last < me.last OR (r.last = me.last AND (r.klast < me.klast OR (r.klast = me.klast AND r.seq < me.seq)))))) AS ahead \
             FROM ranked me JOIN jobs mj ON mj.seq = me.seq WHERE mj.id = $2",
            ranked_cte(kinds)
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now_ms())
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) if r.try_get::<String, _>("status")? == "pending" => {
                Ok(Some(r.try_get("ahead")?))
            }
            _ => Ok(None),
        }
    }
}
