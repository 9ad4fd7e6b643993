//! A job's status: `pending` → `processing` → `completed` | `failed` | `cancelled`.

/// Every status, in the order a job moves through them.
pub const STATUSES: [&str; 5] = ["pending", "processing", "completed", "failed", "cancelled"];

/// Whether a job with this status has not ended.
pub fn is_active(status: &str) -> bool {
    status == "pending" || status == "processing"
}
