//! Job events for `GET /api/events` (Server-Sent Events): queued, started, progress (with a
//! small preview image), completed, failed, cancelled. Each subscriber sees only its own
//! user's events. Events are fanned out in-process; a subscriber that falls behind skips
//! the events it missed (progress is a stream of states, the latest matters).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::error::ApiError;
use crate::{AppState, auth};

#[derive(Debug, Clone, Serialize)]
pub struct JobEvent {
    #[serde(skip)]
    pub user_id: String,
    /// queued | started | progress | completed | failed | cancelled
    pub event: &'static str,
    /// The generation's id.
    pub id: String,
    pub data: serde_json::Value,
}

#[derive(Clone)]
pub struct Bus {
    tx: broadcast::Sender<Arc<JobEvent>>,
}

impl Default for Bus {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(1024).0,
        }
    }
}

impl Bus {
    pub fn publish(&self, user_id: &str, event: &'static str, id: &str, data: serde_json::Value) {
        // No subscribers is fine.
        let _ = self.tx.send(Arc::new(JobEvent {
            user_id: user_id.to_string(),
            event,
            id: id.to_string(),
            data,
        }));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<JobEvent>> {
        self.tx.subscribe()
    }
}

/// `GET /api/events`: the caller's job events as SSE (`event:` is the kind, `data:` JSON
/// `{id, ...}`).
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
            Some(Ok(Event::default().event(e.event).data(data.to_string())))
        }
    });
    let hello =
        futures_util::stream::once(async { Ok(Event::default().event("ready").data("{}")) });
    let mut stop = state.shutting_down.clone();
    let ended = async move {
        let _ = stop.wait_for(|down| *down).await;
    };
    Ok(Sse::new(hello.chain(events).take_until(ended))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
