//! Metering the live canvas: a session is charged `realtime.credits_per_minute` for each
//! minute its frames took to render (the render threads add each frame's time to the
//! session), settled every few seconds while it is open and once more when it ends. The
//! fraction of a credit left over carries to the next settlement; the last one rounds up,
//! so reconnecting often cannot render for free. Each session is one `realtime` row in the
//! usage log, its credits and render time kept up to date, so usage shows live-canvas
//! minutes even where they are free. A balance that runs out ends the session with an
//! `insufficient-credits` error.

use crate::AppState;
use crate::infra::credits::daily_top_up;
use crate::infra::ids::{now, random_id};

/// The usage log's action for a live-canvas session.
pub const ACTION: &str = "realtime";

/// A user's credits now, with today's allowance (0 when they cannot be read).
pub(crate) async fn balance(state: &AppState, user_id: &str) -> i64 {
    let Ok(Some(user)) = state.db.user_by_id(user_id).await else {
        return 0;
    };
    if let Ok(mut conn) = state.db.pool.acquire().await {
        let _ = daily_top_up(&mut conn, &user).await;
    }
    match state.db.user_by_id(user_id).await {
        Ok(Some(u)) => u.credits_remaining,
        _ => 0,
    }
}

pub(crate) struct Meter {
    per_minute: f64,
    user_id: String,
    /// Render time settled so far, in microseconds.
    settled_us: u64,
    /// A fraction of a credit owed, not charged yet.
    owed: f64,
    charged: i64,
    /// The session's usage row, once it has one.
    row: Option<String>,
}

/// What a settlement found.
#[derive(Debug, PartialEq)]
pub(crate) enum Balance {
    Enough,
    /// The balance ran out (what it had was charged).
    Exhausted,
}

impl Meter {
    pub fn new(state: &AppState, user_id: &str) -> Meter {
        Meter {
            per_minute: state.config.realtime.credits_per_minute.max(0.0),
            user_id: user_id.to_string(),
            settled_us: 0,
            owed: 0.0,
            charged: 0,
            row: None,
        }
    }

    /// Whether rendering costs anything here.
    pub fn charges(&self) -> bool {
        self.per_minute > 0.0
    }

    /// Charges the render time since the last settlement (`rendered_us` is the session's
    /// total, in microseconds); `last` rounds the remaining fraction up.
    pub async fn settle(
        &mut self,
        state: &AppState,
        rendered_us: u64,
        last: bool,
    ) -> Result<Balance, sqlx::Error> {
        let new_us = rendered_us.saturating_sub(self.settled_us);
        if new_us == 0 && !(last && self.owed > 0.0) {
            return Ok(Balance::Enough);
        }
        self.settled_us = rendered_us;
        let due = self.owed + new_us as f64 * self.per_minute / 60e6;
        // A tiny epsilon: 0.1 × 3 is not quite 0.3.
        let whole = if last {
            (due - 1e-9).ceil().max(0.0)
        } else {
            (due + 1e-9).floor()
        };
        self.owed = (due - whole).max(0.0);
        let mut charged = whole as i64;
        // Read before the transaction: SQLite's pool has one connection, which it holds.
        let user = if charged > 0 {
            state.db.user_by_id(&self.user_id).await?
        } else {
            None
        };
        let mut tx = state.db.pool.begin().await?;
        let mut balance = Balance::Enough;
        if charged > 0 {
            if let Some(user) = &user {
                daily_top_up(&mut tx, user).await?;
            }
            let ok = sqlx::query("UPDATE users SET credits_remaining = credits_remaining - $1 WHERE id = $2 AND credits_remaining >= $1")
                .bind(charged)
                .bind(&self.user_id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            if !ok {
                // What is left is taken, and the session ends.
                let left: i64 = sqlx::query_scalar::<_, i64>(
                    "SELECT credits_remaining FROM users WHERE id = $1",
                )
                .bind(&self.user_id)
                .fetch_one(&mut *tx)
                .await?;
                charged = left.max(0);
                sqlx::query("UPDATE users SET credits_remaining = 0 WHERE id = $1")
                    .bind(&self.user_id)
                    .execute(&mut *tx)
                    .await?;
                balance = Balance::Exhausted;
            }
        }
        self.charged += charged;
        let metadata = serde_json::json!({"render_ms": rendered_us / 1000}).to_string();
        match &self.row {
            Some(id) => {
                sqlx::query("UPDATE usage_logs SET credits_used = $1, metadata = $2 WHERE id = $3")
                    .bind(self.charged)
                    .bind(&metadata)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            None => {
                let id = random_id();
                sqlx::query("INSERT INTO usage_logs (id, user_id, action_type, credits_used, ref_id, metadata, created_at) VALUES ($1, $2, $3, $4, $1, $5, $6)")
                    .bind(&id)
                    .bind(&self.user_id)
                    .bind(ACTION)
                    .bind(self.charged)
                    .bind(&metadata)
                    .bind(now())
                    .execute(&mut *tx)
                    .await?;
                self.row = Some(id);
            }
        }
        tx.commit().await?;
        Ok(balance)
    }
}
