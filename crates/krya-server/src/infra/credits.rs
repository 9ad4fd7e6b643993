//! Credits: daily allowances per tier, the usage log, and refunds. A job reserves its cost
//! when it is submitted (in the submitting transaction) and is refunded by the transaction
//! that fails or cancels it, so credits are charged exactly once whatever crashes when.

use crate::infra::ids::{now, random_id};
use crate::persistence::db::User;
use crate::tasks::Job;

/// Credits per day for each tier (seed App. C; free: 50 images a day).
pub fn daily_allowance(tier: &str) -> i64 {
    match tier {
        "basic" => 200,
        "pro" => 1000,
        "max" | "team" => 2000,
        _ => 50,
    }
}

pub fn today() -> i64 {
    now().div_euclid(86_400)
}

/// Reserves `cost` credits of `user`'s in the caller's transaction (after the daily
/// top-up); when the balance is short, the transaction is abandoned and the error says
/// how many are left.
pub async fn reserve(
    db: &crate::persistence::db::Db,
    mut tx: sqlx::Transaction<'static, sqlx::Any>,
    user: &User,
    cost: i64,
) -> Result<sqlx::Transaction<'static, sqlx::Any>, crate::infra::error::ApiError> {
    use crate::infra::error::{ApiError, ErrorCode, internal};
    daily_top_up(&mut tx, user).await.map_err(internal)?;
    let charged = sqlx::query("UPDATE users SET credits_remaining = credits_remaining - $1 WHERE id = $2 AND credits_remaining >= $1")
        .bind(cost)
        .bind(&user.id)
        .execute(&mut *tx)
        .await
        .map_err(internal)?;
    if charged.rows_affected() == 1 {
        return Ok(tx);
    }
    drop(tx);
    let left = db
        .user_by_id(&user.id)
        .await
        .map_err(internal)?
        .map(|u| u.credits_remaining)
        .unwrap_or(0);
    Err(ApiError::new(
        ErrorCode::InsufficientCredits,
        format!("this needs {cost} credits and {left} are left; they are topped up daily"),
    ))
}

/// Tops the balance up to the tier's daily allowance once per UTC day (unused grants above
/// the allowance are kept).
pub async fn daily_top_up(conn: &mut sqlx::AnyConnection, user: &User) -> Result<(), sqlx::Error> {
    let allowance = daily_allowance(&user.subscription_tier);
    sqlx::query("UPDATE users SET credits_remaining = CASE WHEN credits_remaining < $1 THEN $1 ELSE credits_remaining END, credits_day = $2 WHERE id = $3 AND credits_day < $2")
        .bind(allowance)
        .bind(today())
        .bind(&user.id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn log_usage(
    conn: &mut sqlx::AnyConnection,
    user_id: &str,
    action: &str,
    credits: i64,
    ref_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO usage_logs (id, user_id, action_type, credits_used, ref_id, metadata, created_at) VALUES ($1, $2, $3, $4, $5, '{}', $6)")
        .bind(random_id())
        .bind(user_id)
        .bind(action)
        .bind(credits)
        .bind(ref_id)
        .bind(now())
        .execute(conn)
        .await?;
    Ok(())
}

/// Gives a job's reserved credits back (it failed or was cancelled).
pub async fn refund(conn: &mut sqlx::AnyConnection, job: &Job) -> Result<(), sqlx::Error> {
    if job.cost == 0 {
        return Ok(());
    }
    sqlx::query("UPDATE users SET credits_remaining = credits_remaining + $1 WHERE id = $2")
        .bind(job.cost)
        .bind(&job.user_id)
        .execute(&mut *conn)
        .await?;
    log_usage(conn, &job.user_id, "refund", -job.cost, &job.ref_id).await
}
