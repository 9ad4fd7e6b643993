//! Webhooks: when a generation with a `webhook_url` ends, its owner's URL gets a POST with
//! the event, signed the Standard Webhooks way (as Replicate does): headers `webhook-id`,
//! `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256>` over
//! `"{id}.{timestamp}.{body}"`, keyed by the user's secret (`GET /api/user/webhook-secret`,
//! `whsec_` + base64). Deliveries are jobs of the kind `webhook` (`tasks/webhook.rs`) on the
//! same runner as every other kind, enqueued in the transaction that ends the job they
//! report on, so none is lost when a process dies; a failed one (network error or non-2xx)
//! is retried with exponential backoff.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{KeyInit, Mac};
use sqlx::Row;

use crate::infra::error::ApiError;
use crate::infra::error::internal;
use crate::persistence::db::Db;

#[allow(unused_imports)]
use crate::http::openapi::{Accepted, ErrorBody, Object, Session};
use crate::{AppState, http::auth};

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

/// The key webhooks are signed with.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct WebhookSecret {
    /// `whsec_` + base64.
    pub secret: String,
}

/// `GET /api/user/webhook-secret`.
#[utoipa::path(get, path = "/api/user/webhook-secret", tag = "accounts", responses((status = 200, description = "The webhook signing secret (whsec_...)", body = WebhookSecret), (status = 401, description = "Not signed in", body = ErrorBody)))]
pub async fn get_secret(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<WebhookSecret>, ApiError> {
    let user = auth::current_user(&state, &headers).await?;
    let s = secret(&state.db, &user.id).await.map_err(internal)?;
    Ok(Json(WebhookSecret { secret: s }))
}

pub use crate::infra::net::is_private;

/// Checks that `url` (http or https) resolves only to public addresses; the error says why
/// not. With `allow_private` any resolvable host passes. A friendly early answer at
/// submission: deliveries are guarded at connect time by the outbound client.
pub async fn check_target(url: &str, allow_private: bool) -> Result<(), String> {
    let (rest, default_port) = if let Some(r) = url.strip_prefix("https://") {
        (r, 443)
    } else if let Some(r) = url.strip_prefix("http://") {
        (r, 80)
    } else {
        return Err("must be an http(s) URL".into());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("has a malformed IPv6 host")?;
        let port = after
            .strip_prefix(':')
            .map(|p| p.parse::<u16>())
            .transpose()
            .map_err(|_| "has a bad port")?;
        (h.to_string(), port.unwrap_or(default_port))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse::<u16>().map_err(|_| "has a bad port")?,
            ),
            None => (authority.to_string(), default_port),
        }
    };
    if host.is_empty() {
        return Err("has no host".into());
    }
    let addrs: Vec<_> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("host {host:?} does not resolve ({e})"))?
        .collect();
    if !allow_private && addrs.iter().any(|a| is_private(a.ip())) {
        return Err(format!(
            "{host} is a loopback, private or link-local address (allowed only with webhooks.allow_private)"
        ));
    }
    Ok(())
}

/// Queues the `event` delivery for `job` in the caller's transaction, the one that ends the
/// job (an outbox); no-op without a URL. The body is `{type: "{subject}.{event}", id, kind,
/// ...data}`; its id is the job's record (a generation's id for images).
pub async fn enqueue(
    tx: &mut sqlx::AnyConnection,
    task: &dyn crate::tasks::Task,
    job: &crate::tasks::Job,
    event: &str,
    data: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    let Some(url) = &job.webhook_url else {
        return Ok(());
    };
    let mut body = serde_json::json!({"type": format!("{}.{event}", task.subject()), "id": job.ref_id, "kind": job.kind});
    if let (Some(b), Some(d)) = (body.as_object_mut(), data.as_object()) {
        for (k, v) in d {
            b.insert(k.clone(), v.clone());
        }
    }
    let payload = serde_json::json!({"url": url, "webhook_id": format!("{}-{event}", job.ref_id), "body": body.to_string()});
    let id = crate::infra::ids::random_id();
    crate::jobs::enqueue(
        tx,
        crate::jobs::NewJob {
            id: &id,
            kind: crate::tasks::webhook::KIND,
            ref_id: &job.ref_id,
            user_id: &job.user_id,
            max_attempts: crate::tasks::webhook::ATTEMPTS,
            payload: Some(&payload.to_string()),
            ..Default::default()
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    #[test]
    fn private_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.9",
            "172.16.5.5",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.1.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(super::is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "100.128.0.1"] {
            assert!(!super::is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn targets() {
        use super::check_target;
        assert!(
            check_target("http://127.0.0.1:9/x", false)
                .await
                .unwrap_err()
                .contains("allow_private")
        );
        assert!(check_target("http://[::1]/x", false).await.is_err());
        assert!(
            check_target("http://user@localhost:8080/x", false)
                .await
                .is_err()
        );
        check_target("http://127.0.0.1:9/x", true).await.unwrap();
        assert!(check_target("ftp://x", true).await.is_err());
        assert!(check_target("http://:80/", true).await.is_err());
        assert!(
            check_target("http://127.0.0.1:notaport/", true)
                .await
                .is_err()
        );
    }

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
