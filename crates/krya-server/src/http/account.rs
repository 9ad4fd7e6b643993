//! The caller's own account (seed §6.1 User): profile, usage, subscription; and the admin's
//! credit grants.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::ToSchema;

#[allow(unused_imports)]
use crate::http::openapi::{Accepted, ErrorBody, Object, Session};
use crate::infra::credits::{daily_allowance, daily_top_up, log_usage, today};
use crate::infra::error::{ApiError, ErrorCode};
use crate::infra::error::{internal, invalid};
use crate::persistence::db::User;
use crate::{AppState, http::auth};

/// An account's own profile: the user and what only they (and admins) see.
#[derive(Serialize, ToSchema)]
pub struct Profile {
    #[serde(flatten)]
    pub user: User,
    pub bio: String,
    pub avatar_url: Option<String>,
}

async fn profile_of(state: &AppState, user_id: &str) -> Result<Profile, ApiError> {
    let user = state
        .db
        .user_by_id(user_id)
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError::not_found("no such user"))?;
    let row = sqlx::query("SELECT bio, avatar_url FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_one(&state.db.pool)
        .await
        .map_err(internal)?;
    Ok(Profile {
        user,
        bio: row.try_get("bio").map_err(internal)?,
        avatar_url: row.try_get("avatar_url").map_err(internal)?,
    })
}

#[utoipa::path(get, path = "/api/user/profile", tag = "accounts", responses((status = 200, description = "The caller's profile", body = Profile), (status = 401, description = "Not signed in", body = ErrorBody)))]
pub async fn get_profile(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Profile>, ApiError> {
    let user = auth::current_user(&state, &headers).await?;
    Ok(Json(profile_of(&state, &user.id).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileUpdate {
    #[schema(min_length = 1, max_length = 100, pattern = "\\S")]
    name: Option<String>,
    #[schema(pattern = "^[A-Za-z0-9_-]{2,32}$")]
    handle: Option<String>,
    #[schema(max_length = 500)]
    bio: Option<String>,
    /// One of the caller's uploaded images, as `/api/assets/{id}` (it becomes public), or
    /// empty to remove it. Images from elsewhere are not shown: the studio loads images from
    /// this server only.
    #[schema(max_length = 2048, pattern = "^($|/api/assets/[0-9a-f]+$)")]
    avatar_url: Option<String>,
}

#[utoipa::path(put, path = "/api/user/profile", tag = "accounts", request_body = ProfileUpdate, responses((status = 200, description = "Updated profile", body = Profile), (status = 401, description = "Not signed in", body = ErrorBody), (status = 409, description = "Handle taken", body = ErrorBody), (status = 422, description = "Invalid input (the message names the field)", body = ErrorBody)))]
pub async fn put_profile(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<ProfileUpdate>, JsonRejection>,
) -> Result<Json<Profile>, ApiError> {
    let user = auth::current_user(&state, &headers).await?;
    let Json(p) = body?;
    if let Some(n) = &p.name
        && (n.trim().is_empty() || n.chars().count() > 100)
    {
        return Err(invalid("name", "must be 1 to 100 characters"));
    }
    if let Some(h) = &p.handle
        && (h.len() < 2
            || h.len() > 32
            || !h
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    {
        return Err(invalid(
            "handle",
            "must be 2 to 32 letters, digits, '_' or '-'",
        ));
    }
    if let Some(b) = &p.bio
        && b.chars().count() > 500
    {
        return Err(invalid("bio", "must be at most 500 characters"));
    }
    if let Some(a) = &p.avatar_url
        && !a.is_empty()
    {
        let asset = a
            .strip_prefix("/api/assets/")
            .filter(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit()));
        let own = match asset {
            Some(id) => state.db.asset(id, &user.id).await.map_err(internal)?,
            None => None,
        };
        match own {
            Some(asset) if asset.mime.starts_with("image/") => {
                // Seen by anyone who sees the profile; kept as used.
                sqlx::query("UPDATE assets SET visibility = 'public', used_at = COALESCE(used_at, $1) WHERE id = $2")
                    .bind(auth::now())
                    .bind(&asset.id)
                    .execute(&state.db.pool)
                    .await
                    .map_err(internal)?;
            }
            _ => {
                return Err(invalid(
                    "avatar_url",
                    "must be one of your uploaded images (/api/assets/{id}) or empty",
                ));
            }
        }
    }
    let r = sqlx::query("UPDATE users SET name = COALESCE($1, name), handle = COALESCE($2, handle), bio = COALESCE($3, bio), avatar_url = COALESCE($4, avatar_url), updated_at = $5 WHERE id = $6")
        .bind(p.name.map(|n| n.trim().to_string()))
        .bind(p.handle)
        .bind(p.bio)
        .bind(p.avatar_url)
        .bind(auth::now())
        .bind(&user.id)
        .execute(&state.db.pool)
        .await;
    match r {
        Ok(_) => {}
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "handle: this handle is taken",
            ));
        }
        Err(e) => return Err(internal(e)),
    }
    Ok(Json(profile_of(&state, &user.id).await?))
}

/// `GET /api/user/usage`: balance, today's allowance and use, and the last 30 days.
#[utoipa::path(get, path = "/api/user/usage", tag = "accounts", responses((status = 200, description = "Balance, allowance, last 30 days", body = Usage), (status = 401, description = "Not signed in", body = ErrorBody)))]
pub async fn usage(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Usage>, ApiError> {
    let user = auth::current_user(&state, &headers).await?;
    let mut conn = state.db.pool.acquire().await.map_err(internal)?;
    daily_top_up(&mut conn, &user).await.map_err(internal)?;
    drop(conn);
    let user = state
        .db
        .user_by_id(&user.id)
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError::not_found("no such user"))?;
    let since = (today() - 29) * 86_400;
    let rows = sqlx::query("SELECT action_type, credits_used, metadata, created_at FROM usage_logs WHERE user_id = $1 AND created_at >= $2 ORDER BY created_at")
        .bind(&user.id)
        .bind(since)
        .fetch_all(&state.db.pool)
        .await
        .map_err(internal)?;
    let mut days: std::collections::BTreeMap<i64, UsageDay> = Default::default();
    for r in &rows {
        let credits: i64 = r.try_get("credits_used").map_err(internal)?;
        let day = r
            .try_get::<i64, _>("created_at")
            .map_err(internal)?
            .div_euclid(86_400);
        let action: String = r.try_get("action_type").map_err(internal)?;
        let e = days.entry(day).or_insert_with(|| UsageDay {
            day: day * 86_400,
            ..Default::default()
        });
        e.credits_used += credits;
        match action.as_str() {
            "image_gen" => e.generations += 1,
            crate::realtime::METER_ACTION => {
                let meta: String = r.try_get("metadata").map_err(internal)?;
                let ms = serde_json::from_str::<serde_json::Value>(&meta)
                    .ok()
                    .and_then(|m| m["render_ms"].as_f64())
                    .unwrap_or(0.0);
                e.live_seconds += ms / 1000.0;
            }
            _ => {}
        }
    }
    let today_used = days.get(&today()).map(|d| d.credits_used).unwrap_or(0);
    let history = days.into_values().collect();
    Ok(Json(Usage {
        credits_remaining: user.credits_remaining,
        daily_allowance: daily_allowance(&user.subscription_tier),
        credits_used_today: today_used,
        resets_at: (today() + 1) * 86_400,
        tier: user.subscription_tier,
        live_credits_per_minute: state.config.realtime.credits_per_minute.max(0.0),
        history,
    }))
}

/// Credits used on one UTC day.
#[derive(Serialize, ToSchema, Default)]
pub struct UsageDay {
    /// The day's start, seconds since the epoch.
    pub day: i64,
    pub credits_used: i64,
    pub generations: i64,
    /// Seconds the live canvas spent rendering frames (charged at
    /// `live_credits_per_minute`).
    pub live_seconds: f64,
}

#[derive(Serialize, ToSchema)]
pub struct Usage {
    pub credits_remaining: i64,
    pub daily_allowance: i64,
    pub credits_used_today: i64,
    /// When the allowance is topped up next, seconds since the epoch.
    pub resets_at: i64,
    pub tier: String,
    /// What a minute of live-canvas rendering costs here (0: free).
    pub live_credits_per_minute: f64,
    /// The last 30 days with any use, oldest first.
    pub history: Vec<UsageDay>,
}

#[derive(Serialize, ToSchema)]
pub struct Tier {
    pub tier: String,
    pub daily_allowance: i64,
}

#[derive(Serialize, ToSchema)]
pub struct Subscription {
    pub tier: String,
    /// Always `active` on a self-hosted server (no billing).
    pub status: String,
    pub daily_allowance: i64,
    pub credits_remaining: i64,
    pub resets_at: i64,
    pub tiers: Vec<Tier>,
}

/// `GET /api/user/subscription`: the tier and what it gives (self-hosted: no billing).
#[utoipa::path(get, path = "/api/user/subscription", tag = "accounts", responses((status = 200, description = "Tier and allowances", body = Subscription), (status = 401, description = "Not signed in", body = ErrorBody)))]
pub async fn subscription(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Subscription>, ApiError> {
    let user = auth::current_user(&state, &headers).await?;
    let tiers = ["free", "basic", "pro", "max", "team"]
        .iter()
        .map(|t| Tier {
            tier: t.to_string(),
            daily_allowance: daily_allowance(t),
        })
        .collect();
    Ok(Json(Subscription {
        daily_allowance: daily_allowance(&user.subscription_tier),
        tier: user.subscription_tier,
        status: "active".into(),
        credits_remaining: user.credits_remaining,
        resets_at: (today() + 1) * 86_400,
        tiers,
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// Credits to add (negative to take away; the balance never goes below zero).
    #[schema(minimum = -1000000000, maximum = 1000000000)]
    amount: Option<i64>,
    /// A new tier.
    #[schema(pattern = "^(free|basic|pro|max|team)$")]
    tier: Option<String>,
}

/// `POST /api/admin/users/:id/credits {amount?, tier?}` (admins only).
#[utoipa::path(post, path = "/api/admin/users/{id}/credits", tag = "admin", request_body = Grant, params(("id" = String, Path, description = "User id")), responses((status = 200, description = "The user's profile after the grant", body = Profile), (status = 401, description = "Not signed in", body = ErrorBody), (status = 403, description = "Not an administrator", body = ErrorBody), (status = 404, description = "No such item, or not the caller's", body = ErrorBody), (status = 422, description = "Invalid input (the message names the field)", body = ErrorBody)))]
pub async fn grant(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<Grant>, JsonRejection>,
) -> Result<Json<Profile>, ApiError> {
    let admin = auth::admin(&state, &headers, "can grant credits").await?;
    let Json(g) = body?;
    if let Some(a) = g.amount
        && a.abs() > 1_000_000_000
    {
        return Err(invalid("amount", "is out of range"));
    }
    if let Some(t) = &g.tier
        && !["free", "basic", "pro", "max", "team"].contains(&t.as_str())
    {
        return Err(invalid("tier", "must be free, basic, pro, max or team"));
    }
    let target = state
        .db
        .user_by_id(&id)
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError::not_found(format!("no user {id}")))?;
    let mut tx = state.db.pool.begin().await.map_err(internal)?;
    if let Some(t) = &g.tier {
        sqlx::query("UPDATE users SET subscription_tier = $1 WHERE id = $2")
            .bind(t)
            .bind(&target.id)
            .execute(&mut *tx)
            .await
            .map_err(internal)?;
    }
    if let Some(a) = g.amount {
        sqlx::query("UPDATE users SET credits_remaining = CASE WHEN credits_remaining + $1 < 0 THEN 0 ELSE credits_remaining + $1 END WHERE id = $2")
            .bind(a)
            .bind(&target.id)
            .execute(&mut *tx)
            .await
            .map_err(internal)?;
        log_usage(&mut tx, &target.id, "grant", -a, &admin.id)
            .await
            .map_err(internal)?;
    }
    tx.commit().await.map_err(internal)?;
    Ok(Json(profile_of(&state, &target.id).await?))
}
