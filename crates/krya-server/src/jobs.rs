//! The durable job queue: a `jobs` table in the same database as everything else, so a
//! job is enqueued in the same transaction as the row it works on and survives any crash.
//!
//! A job is `pending` → `processing` (claimed with a lease that its worker extends by
//! heartbeats) → `completed` | `failed` | `cancelled`. A job whose lease ran out (its worker
//! died) is claimable again. Claims are fair across users: each user's runnable jobs are
//! ranked by age, the queue takes rank 1 of every user before anyone's rank 2, and among
//! equal ranks the user served longest ago goes first (round robin), so one user's
//! hundred jobs do not starve another's one. On PostgreSQL the claim locks with
//! `FOR UPDATE SKIP LOCKED`, so many workers share the queue without waiting on each other.

use sqlx::Row;

use crate::db::{Backend, Db};

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Job kinds.
pub const IMAGE: &str = "image";
pub const WEBHOOK: &str = "webhook";

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
}

/// The runnable jobs: pending and due, or processing with an expired lease.
const RUNNABLE: &str = "((j.status = 'pending' AND j.run_after <= $1) OR (j.status = 'processing' AND j.lease_expires_at < $1))";

/// Runnable jobs of `kind` with their fair-order key `(rn, last, seq)`: rank within the
/// user's runnable jobs, then the user served longest ago (never: first; `last` is their
/// latest claim), then submission order.
fn ranked_cte(kind: &str) -> String {
    // Kinds are the server's own constants; never user input.
    assert!(
        kind.chars().all(|c| c.is_ascii_lowercase()),
        "job kind {kind:?}"
    );
    format!(
        "WITH served AS (SELECT user_id, MAX(claimed_at) AS last FROM jobs WHERE claimed_at IS NOT NULL AND kind = '{kind}' GROUP BY user_id), \
         ranked AS (SELECT j.seq, j.ref_id, j.status, ROW_NUMBER() OVER (PARTITION BY j.user_id ORDER BY j.seq) AS rn, \
         COALESCE(s.last, 0) AS last FROM jobs j LEFT JOIN served s ON s.user_id = j.user_id WHERE {RUNNABLE} AND j.kind = '{kind}')"
    )
}

/// The next runnable job of `kind` in fair order (`extra`: a locking clause).
fn fair_order_sql(kind: &str, extra: &str) -> String {
    format!(
        "{} SELECT j.id, j.kind, j.ref_id, j.user_id, j.attempts, j.max_attempts, j.payload FROM jobs j JOIN ranked r ON r.seq = j.seq \
         WHERE {RUNNABLE} ORDER BY r.rn, r.last, j.seq LIMIT 1{extra}",
        ranked_cte(kind)
    )
}

/// Adds a job in the caller's transaction. `payload`: what the job needs besides `ref_id`.
#[allow(clippy::too_many_arguments)]
pub async fn enqueue(
    tx: &mut sqlx::AnyConnection,
    id: &str,
    kind: &str,
    ref_id: &str,
    user_id: &str,
    max_attempts: i64,
    payload: Option<&str>,
) -> Result<(), sqlx::Error> {
    let t = now_ms();
    sqlx::query("INSERT INTO jobs (id, kind, ref_id, user_id, status, attempts, max_attempts, run_after, payload, created_at) VALUES ($1, $2, $3, $4, 'pending', 0, $5, $6, $7, $6)")
        .bind(id)
        .bind(kind)
        .bind(ref_id)
        .bind(user_id)
        .bind(max_attempts)
        .bind(t)
        .bind(payload)
        .execute(tx)
        .await?;
    Ok(())
}

impl Db {
    /// Takes the next job in fair order for `owner`, leased for `lease_ms`.
    pub async fn claim_job(
        &self,
        owner: &str,
        lease_ms: i64,
        kind: &str,
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
            let row = sqlx::query(sqlx::AssertSqlSafe(fair_order_sql(kind, lock)))
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
            };
            let done = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE jobs SET status = 'processing', lease_owner = $2, lease_expires_at = $3, claimed_at = $1, attempts = attempts + 1 \
                 WHERE id = $4 AND seq = (SELECT j.seq FROM jobs j WHERE j.id = $4 AND {RUNNABLE})"
            )))
            .bind(now)
            .bind(owner)
            .bind(now + lease_ms)
            .bind(&job.id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            if done.rows_affected() == 1 {
                job.attempts += 1;
                return Ok(Some(job));
            }
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
        error: Option<&str>,
    ) -> Result<bool, sqlx::Error> {
        let r = sqlx::query("UPDATE jobs SET status = $1, last_error = $2, lease_owner = NULL, lease_expires_at = NULL WHERE id = $3 AND lease_owner = $4 AND status = 'processing'")
            .bind(status)
            .bind(error)
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
        let r = sqlx::query("UPDATE jobs SET status = 'pending', run_after = $1, last_error = $2, lease_owner = NULL, lease_expires_at = NULL WHERE id = $3 AND lease_owner = $4 AND status = 'processing'")
            .bind(now_ms() + delay_ms)
            .bind(error)
            .bind(id)
            .bind(owner)
            .execute(tx)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Cancels the image jobs working on `ref_id` that have not ended (webhook deliveries
    /// are left to run); returns how many.
    pub async fn cancel_jobs(
        tx: &mut sqlx::AnyConnection,
        ref_id: &str,
    ) -> Result<u64, sqlx::Error> {
        let r = sqlx::query("UPDATE jobs SET status = 'cancelled', lease_owner = NULL, lease_expires_at = NULL WHERE ref_id = $1 AND kind = 'image' AND status IN ('pending', 'processing')")
            .bind(ref_id)
            .execute(tx)
            .await?;
        Ok(r.rows_affected())
    }

    /// How many runnable jobs the fair order puts before the pending job on `ref_id`
    /// (`None` once it is no longer pending).
    pub async fn queue_position(&self, ref_id: &str) -> Result<Option<i64>, sqlx::Error> {
        let sql = format!(
            "{} SELECT me.status AS status, (SELECT COUNT(*) FROM ranked r WHERE r.rn < me.rn OR (r.rn = me.rn AND (r.last < me.last OR (r.last = me.last AND r.seq < me.seq)))) AS ahead \
             FROM ranked me WHERE me.ref_id = $2",
            ranked_cte(IMAGE)
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now_ms())
            .bind(ref_id)
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
