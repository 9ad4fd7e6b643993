//! Webhooks: when a generation with a `webhook_url` ends, its owner's URL gets a POST with
//! the event, signed the Standard Webhooks way (as Replicate does): headers `webhook-id`,
//! `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256>` over
//! `"{id}.{timestamp}.{body}"`, keyed by the user's secret (`GET /api/user/webhook-secret`,
//! `whsec_` + base64). A failed delivery (network error or non-2xx) is retried with
//! exponential backoff.

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

/// Sends `event` for `g` to its webhook URL in the background (no-op without one).
pub async fn deliver(db: &Db, g: &Generation, event: &str, data: serde_json::Value) {
    let Some(url) = g.webhook_url.clone() else {
        return;
    };
    let secret = match secret(db, &g.user_id).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("webhook for {}: {e}", g.id);
            return;
        }
    };
    let id = format!("{}-{event}", g.id);
    let mut body = serde_json::json!({"type": format!("generation.{event}"), "id": g.id});
    if let (Some(b), Some(d)) = (body.as_object_mut(), data.as_object()) {
        for (k, v) in d {
            b.insert(k.clone(), v.clone());
        }
    }
    let body = body.to_string();
    tokio::spawn(async move {
        let mut delay = FIRST_RETRY;
        for attempt in 1..=ATTEMPTS {
            let ts = auth::now();
            let sig = sign(&secret, &id, ts, &body);
            let (u, b, i) = (url.clone(), body.clone(), id.clone());
            let sent = tokio::task::spawn_blocking(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .timeout_global(Some(Duration::from_secs(10)))
                    .http_status_as_error(false)
                    .build()
                    .into();
                agent
                    .post(&u)
                    .header("content-type", "application/json")
                    .header("webhook-id", &i)
                    .header("webhook-timestamp", ts.to_string())
                    .header("webhook-signature", &sig)
                    .send(b)
                    .map(|r| r.status().as_u16())
            })
            .await;
            match sent {
                Ok(Ok(s)) if (200..300).contains(&s) => return,
                Ok(Ok(s)) => eprintln!("webhook {id} attempt {attempt}: HTTP {s}"),
                Ok(Err(e)) => eprintln!("webhook {id} attempt {attempt}: {e}"),
                Err(e) => eprintln!("webhook {id} attempt {attempt}: {e}"),
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    });
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
