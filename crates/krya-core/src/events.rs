//! Job events: what a job's owner hears of it (`GET /api/events`), carried between
//! processes as JSON (PostgreSQL `NOTIFY`).

use serde::{Deserialize, Serialize};

/// What the events of a job are called, in the order a job sends them.
pub const EVENTS: [&str; 6] = [
    "queued",
    "started",
    "progress",
    "completed",
    "failed",
    "cancelled",
];

/// One event of one job, for its owner.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobEvent {
    pub user_id: String,
    /// One of `EVENTS`.
    pub event: String,
    /// The job's record: a generation's id for images, else the job's own.
    pub id: String,
    /// The event's body; `kind` in it names the job's kind.
    pub data: serde_json::Value,
}

/// Event data with the job's kind in it.
pub fn with_kind(mut data: serde_json::Value, kind: &str) -> serde_json::Value {
    if let Some(o) = data.as_object_mut() {
        o.insert("kind".into(), kind.into());
    }
    data
}
