//! Webhooks: when a generation with a `webhook_url` ends, its owner's URL gets a POST with
//! the event, signed the Standard Webhooks way (as Replicate does): headers `webhook-id`,
//! `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256>` over
//! `"{id}.{timestamp}.{body}"`, keyed by the user's secret (`GET /api/user/webhook-secret`,
//! `whsec_` + base64). Deliveries are jobs in the durable queue, enqueued in the same
//! transaction that ends the generation, so none is lost when a process dies; a failed one
//! (network error or non-2xx) is retried with exponential backoff.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{KeyInit, Mac};
use sqlx::Row;

use crate::db::Db;
use crate::error::ApiError;
use crate::generations::{Generation, internal};

#[allow(unused_imports)]
use crate::openapi::{Accepted, ErrorBody, Object, Session};
use crate::{AppState, auth};

/// Attempts per delivery, and the first retry delay (doubling).
pub const ATTEMPTS: u32 = 5;
pub const FIRST_RETRY: Duration = Duration::from_millis(500);

/// The Standard Webhooks signature of a message.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> String {
    let key = B64
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .unwrap_or_default();
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

/// The user's signing secret, made on first use.
pub async fn secret(db: &Db, user_id: &str) -> Result<String, sqlx::Error> {
    let row = sqlx::query("SELECT webhook_secret FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_one(&db.pool)
        .await?;
    if let Some(s) = row.try_get::<Option<String>, _>("webhook_secret")? {
        return Ok(s);
    }
    let mut key = [0u8; 24];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
    let s = format!("whsec_{}", B64.encode(key));
    // Two first uses at once: the first write wins and both read it back.
    sqlx::query("UPDATE users SET webhook_secret = $1 WHERE id = $2 AND webhook_secret IS NULL")
        .bind(&s)
        .bind(user_id)
        .execute(&db.pool)
        .await?;
    let row = sqlx::query("SELECT webhook_secret FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_one(&db.pool)
        .await?;
    row.try_get("webhook_secret")
}

/// `GET /api/user/webhook-secret`.
#[utoipa::path(get, path = "/api/user/webhook-secret", tag = "accounts", responses((status = 200, description = "The webhook signing secret (whsec_...)", body = Object), (status = 401, description = "Not signed in", body = ErrorBody)))]
pub async fn get_secret(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let user = auth::current_user(&state, &headers).await?;
    let s = secret(&state.db, &user.id).await.map_err(internal)?;
    Ok(Json(serde_json::json!({"secret": s})))
}

/// Queues the `event` delivery for `g` in the caller's transaction (no-op without a URL).
pub async fn enqueue(
    tx: &mut sqlx::AnyConnection,
    g: &Generation,
    event: &str,
    data: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    let Some(url) = &g.webhook_url else {
        return Ok(());
    };
    let mut body = serde_json::json!({"type": format!("generation.{event}"), "id": g.id});
    if let (Some(b), Some(d)) = (body.as_object_mut(), data.as_object()) {
        for (k, v) in d {
            b.insert(k.clone(), v.clone());
        }
    }
    let payload = serde_json::json!({"url": url, "webhook_id": format!("{}-{event}", g.id), "body": body.to_string()});
    crate::jobs::enqueue(
        tx,
        &crate::generations::random_id(),
        crate::jobs::WEBHOOK,
        &g.id,
        &g.user_id,
        ATTEMPTS as i64,
        Some(&payload.to_string()),
    )
    .await
}

/// Delivers queued webhooks until `stop` is set (runs in `krya serve` and `krya worker`).
pub async fn dispatch(
    db: Db,
    owner: String,
    poll: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    while !stop.load(Ordering::SeqCst) {
        match db.claim_job(&owner, 60_000, crate::jobs::WEBHOOK).await {
            Ok(Some(job)) => {
                if let Err(e) = deliver(&db, &owner, &job).await {
                    // The lease runs out and the delivery is tried again.
                    eprintln!("webhook {}: {e}", job.id);
                }
            }
            Ok(None) => tokio::time::sleep(poll).await,
            Err(e) => {
                eprintln!("claiming a webhook: {e}");
                tokio::time::sleep(poll).await;
            }
        }
    }
}

async fn deliver(db: &Db, owner: &str, job: &crate::jobs::Claimed) -> Result<(), sqlx::Error> {
    let p: serde_json::Value =
        serde_json::from_str(job.payload.as_deref().unwrap_or("{}")).unwrap_or_default();
    let (url, id, body) = (
        p["url"].as_str().unwrap_or_default().to_string(),
        p["webhook_id"].as_str().unwrap_or_default().to_string(),
        p["body"].as_str().unwrap_or_default().to_string(),
    );
    let secret = secret(db, &job.user_id).await?;
    let ts = auth::now();
    let sig = sign(&secret, &id, ts, &body);
    let sent = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build()
            .into();
        agent
            .post(&url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", &sig)
            .send(body)
            .map(|r| r.status().as_u16())
    })
    .await;
    let failure = match sent {
        Ok(Ok(s)) if (200..300).contains(&s) => None,
        Ok(Ok(s)) => Some(format!("HTTP {s}")),
        Ok(Err(e)) => Some(e.to_string()),
        Err(e) => Some(e.to_string()),
    };
    let mut tx = db.pool.begin().await?;
    match failure {
        None => {
            Db::finish_job(&mut tx, &job.id, owner, "completed", None).await?;
        }
        Some(e) if job.attempts < job.max_attempts => {
            let delay = FIRST_RETRY.as_millis() as i64 * (1i64 << (job.attempts - 1).clamp(0, 16));
            Db::retry_job(&mut tx, &job.id, owner, delay, &e).await?;
        }
        Some(e) => {
            eprintln!(
                "webhook {}: giving up after {} attempts: {e}",
                job.id, job.attempts
            );
            Db::finish_job(&mut tx, &job.id, owner, "failed", Some(&e)).await?;
        }
    }
    tx.commit().await
}

#[cfg(test)]
mod tests {
    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The example from the Standard Webhooks specification.
        let sig = super::sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
