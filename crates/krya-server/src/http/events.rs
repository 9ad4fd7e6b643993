//! Job events for `GET /api/events` (Server-Sent Events): queued, started, progress (with a
//! small preview image), completed, failed, cancelled. Each subscriber sees only its own
//! user's events. On SQLite (one process) events are fanned out in-process. On PostgreSQL
//! they travel through `NOTIFY krya_events`, so the events of a job run by a `krya worker`
//! on another machine reach the server its owner is connected to. A subscriber that falls
//! behind skips the events it missed (progress is a stream of states, the latest matters).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use futures_util::StreamExt;

use tokio::sync::broadcast;

#[allow(unused_imports)]
use crate::http::openapi::{Accepted, ErrorBody, Object, Session};
use crate::infra::error::ApiError;
use crate::{AppState, http::auth};

pub use krya_core::events::JobEvent;

/// PostgreSQL's NOTIFY payloads must stay under 8000 bytes.
const NOTIFY_LIMIT: usize = 7900;
const CHANNEL: &str = "krya_events";

#[derive(Clone)]
pub struct Bus {
    tx: broadcast::Sender<Arc<JobEvent>>,
    /// Set on PostgreSQL: events go out as NOTIFY payloads (in order, from one task) and
    /// come back to every process, this one included, through its listener.
    notify: Option<tokio::sync::mpsc::UnboundedSender<String>>,
}

impl Default for Bus {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(1024).0,
            notify: None,
        }
    }
}

impl Bus {
    /// A bus shared by every process on the PostgreSQL database at `url`.
    pub async fn postgres(db: crate::persistence::db::Db, url: &str) -> Result<Bus, sqlx::Error> {
        let bus = Bus::default();
        let mut listener = sqlx::postgres::PgListener::connect(url).await?;
        listener.listen(CHANNEL).await?;
        let tx = bus.tx.clone();
        tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(n) => {
                        if let Ok(e) = serde_json::from_str::<JobEvent>(n.payload()) {
                            let _ = tx.send(Arc::new(e));
                        }
                    }
                    // The listener reconnects on the next recv.
                    Err(e) => {
                        tracing::warn!(error = %e, "event listener lost its connection");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        let (ntx, mut nrx) = tokio::sync::mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(payload) = nrx.recv().await {
                if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(CHANNEL)
                    .bind(&payload)
                    .execute(&db.pool)
                    .await
                {
                    tracing::warn!(error = %e, "publishing an event failed");
                }
            }
        });
        Ok(Bus {
            notify: Some(ntx),
            ..bus
        })
    }

    pub fn publish(&self, user_id: &str, event: &'static str, id: &str, data: serde_json::Value) {
        let e = JobEvent {
            user_id: user_id.to_string(),
            event: event.to_string(),
            id: id.to_string(),
            data,
        };
        match &self.notify {
            Some(n) => {
                let mut payload = serde_json::to_string(&e).unwrap_or_default();
                if payload.len() > NOTIFY_LIMIT {
                    // Too big for NOTIFY: the preview image goes first.
                    let mut slim = e.clone();
                    if let Some(o) = slim.data.as_object_mut() {
                        o.remove("preview");
                    }
                    payload = serde_json::to_string(&slim).unwrap_or_default();
                }
                if payload.len() <= NOTIFY_LIMIT {
                    let _ = n.send(payload);
                }
            }
            // No subscribers is fine.
            None => {
                let _ = self.tx.send(Arc::new(e));
            }
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<JobEvent>> {
        self.tx.subscribe()
    }
}

/// `GET /api/events`: the caller's job events as SSE (`event:` is the kind, `data:` JSON
/// `{id, ...}`).
#[utoipa::path(get, path = "/api/events", tag = "generation", responses((status = 200, description = "Server-Sent Events: ready, queued, started, progress, completed, failed, cancelled", content_type = "text/event-stream"), (status = 401, description = "Not signed in", body = ErrorBody)))]
pub async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let user = auth::current_user(&state, &headers).await?;
    let rx = state.bus.subscribe();
    let events = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |e| {
        let uid = user.id.clone();
        async move {
            let e = e.ok()?;
            if e.user_id != uid {
                return None;
            }
            let mut data = e.data.clone();
            if let Some(obj) = data.as_object_mut() {
                obj.insert("id".into(), e.id.clone().into());
            }
            Some(Ok(Event::default()
                .event(e.event.clone())
                .data(data.to_string())))
        }
    });
    let hello =
        futures_util::stream::once(async { Ok(Event::default().event("ready").data("{}")) });
    let mut stop = state.shutting_down.clone();
    // The stream ends when the server shuts down, or when the token it was opened with
    // stops being valid (logout, revoked key, expiry): EventSource clients reconnect
    // with their current credentials.
    let every = Duration::from_secs_f64(state.config.server.stream_auth_check_secs.max(0.05));
    let ended = async move {
        let revoked = async {
            loop {
                tokio::time::sleep(every).await;
                if auth::current_user(&state, &headers).await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            _ = stop.wait_for(|down| *down) => {}
            _ = revoked => {}
        }
    };
    Ok(Sse::new(hello.chain(events).take_until(ended))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
