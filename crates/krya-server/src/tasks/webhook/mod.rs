//! Webhook deliveries as a task: one POST per job, signed the Standard Webhooks way
//! (`outbox::sign`). The runner enqueues a delivery in the transaction that ends the job
//! it reports on (an outbox), so none is lost when a process dies; a failed delivery
//! (network error or non-2xx) is retried with exponential backoff.

pub mod outbox;

use std::time::Duration;

use super::{Outcome, RunContext, Slot, Task};
use crate::http::auth;
use crate::infra::outbound::OutboundError;
use crate::tasks::webhook::outbox::{secret, sign};

pub const KIND: &str = "webhook";

/// Attempts per delivery, and the first retry delay (doubling).
pub const ATTEMPTS: i64 = 5;
pub const FIRST_RETRY: Duration = Duration::from_millis(500);

pub struct WebhookTask;

#[async_trait::async_trait]
impl Task for WebhookTask {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn slot(&self) -> Slot {
        Slot::Io
    }

    fn notifies(&self) -> bool {
        false
    }

    fn retry_delay_ms(&self, attempt: i64, _base_ms: u64) -> i64 {
        FIRST_RETRY.as_millis() as i64 * (1i64 << (attempt - 1).clamp(0, 16))
    }

    async fn run(&self, ctx: RunContext) -> Outcome {
        let p = ctx.job.state.clone().unwrap_or_default();
        let (url, id, body) = (
            p["url"].as_str().unwrap_or_default().to_string(),
            p["webhook_id"].as_str().unwrap_or_default().to_string(),
            p["body"].as_str().unwrap_or_default().to_string(),
        );
        let secret = match secret(&ctx.services.db, &ctx.job.user_id).await {
            Ok(s) => s,
            Err(e) => return Outcome::Retry(e.to_string()),
        };
        let ts = auth::now();
        let sig = sign(&secret, &id, ts, &body);
        // The outbound client refuses non-public addresses at connect time (the name may
        // resolve elsewhere now than at submission).
        let headers = [
            ("content-type", "application/json".to_string()),
            ("webhook-id", id),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", sig),
        ];
        match ctx.services.outbound.post(&url, &headers, body).await {
            Ok(s) if (200..300).contains(&s) => Outcome::Done(Vec::new()),
            Ok(s) => Outcome::Retry(format!("HTTP {s}")),
            Err(e @ (OutboundError::Refused(_) | OutboundError::BadUrl(_))) => {
                Outcome::failed("invalid-input", format!("webhook_url: {e}"))
            }
            Err(e) => Outcome::Retry(e.to_string()),
        }
    }
}
