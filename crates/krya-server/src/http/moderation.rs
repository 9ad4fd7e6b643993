//! Moderation: users report public items; administrators see the open reports, hide an
//! item from everyone but its owner (or show it again), dismiss its reports, delete it,
//! and suspend an account.
//!
//! Hiding takes a job out of everything public in one place: it is no longer `is_public`
//! (so the feed, profiles and its outputs' readers all stop showing it) and `hidden` says
//! why, so its owner cannot share it again and unhiding restores exactly what hiding took.
//! A suspension hides the user's public jobs the same way (`hidden = 'suspended'`), cancels
//! their queued work, and refuses their sign-in, tokens and keys (403, saying why) until
//! it is lifted; their sessions are kept, so lifting it lets them back in as they were.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::ToSchema;

use crate::AppState;
use crate::generations::search_pattern;
use crate::http::auth;
use crate::http::feed::{FeedItem, POST_COLUMNS, POSTS, items, visible};
#[allow(unused_imports)]
use crate::http::openapi::ErrorBody;
use crate::infra::error::{ApiError, ApiQuery, ErrorCode, internal, invalid};
use crate::infra::ids::{now, random_id};
use crate::jobs::http::user_kinds;
use crate::persistence::db::placeholders;

/// Why a job is hidden: an administrator hid it, or its author is suspended.
const BY_ADMIN: &str = "admin";
const BY_SUSPENSION: &str = "suspended";

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewReport {
    /// What is wrong with it (1 to 500 characters).
    pub reason: String,
}

/// A report, as its reporter gets it back.
#[derive(Serialize, ToSchema)]
pub struct Reported {
    /// The job reported.
    pub id: String,
    /// False when the caller's earlier report of it is still open (one per person and
    /// item).
    pub new: bool,
}

/// `POST /api/feed/:id/report {reason}`: reports a public item to the administrators.
#[utoipa::path(post, path = "/api/feed/{id}/report", tag = "feed", params(("id" = String, Path, description = "Job id (or an image's generation id)")), request_body = NewReport, responses((status = 201, description = "Reported", body = Reported), (status = 200, description = "Reported already", body = Reported), (status = 401, description = "Not signed in", body = ErrorBody), (status = 404, description = "No such item, or not the caller's", body = ErrorBody), (status = 422, description = "Invalid input (the message names the field)", body = ErrorBody)))]
pub async fn report(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<NewReport>, JsonRejection>,
) -> Result<(StatusCode, Json<Reported>), ApiError> {
    let user = auth::current_user(&state, &headers).await?;
    let Json(r) = body?;
    let reason = r.reason.trim();
    if reason.is_empty() || reason.chars().count() > 500 {
        return Err(invalid("reason", "must be 1 to 500 characters"));
    }
    let (_, item) = visible(&state, &id, Some(&user)).await?;
    if !item.is_public {
        // The caller's own private item: nobody else sees it.
        return Err(ApiError::not_found(format!("no public item {id}")));
    }
    // One per person and item: a resolved one is opened again, an open one stays as it is.
    let added = sqlx::query(
        "INSERT INTO reports (id, job_id, reporter_id, reason, created_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (job_id, reporter_id) DO UPDATE SET reason = excluded.reason, created_at = excluded.created_at, \
         resolved_at = NULL, resolution = NULL WHERE reports.resolved_at IS NOT NULL",
    )
        .bind(random_id())
        .bind(&item.id)
        .bind(&user.id)
        .bind(reason)
        .bind(now())
        .execute(&state.db.pool)
        .await
        .map_err(internal)?
        .rows_affected()
        == 1;
    let status = if added {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(Reported {
            id: item.id,
            new: added,
        }),
    ))
}

/// One person's report.
#[derive(Serialize, ToSchema)]
pub struct ReportView {
    pub reason: String,
    /// The reporter's handle.
    pub reporter: String,
    /// Seconds since the epoch.
    pub created_at: i64,
}

/// An item with open reports.
#[derive(Serialize, ToSchema)]
pub struct ReportedItem {
    pub item: FeedItem,
    /// Hidden by an administrator, or because its author is suspended.
    pub hidden: bool,
    /// Its open reports, newest first.
    pub reports: Vec<ReportView>,
}

#[derive(Serialize, ToSchema)]
pub struct ReportList {
    /// Items with open reports, the most recently reported first (at most 100).
    pub items: Vec<ReportedItem>,
}

/// `GET /api/admin/reports`: items with open reports, with the reports.
#[utoipa::path(get, path = "/api/admin/reports", tag = "admin", responses((status = 200, description = "Items with open reports", body = ReportList), (status = 401, description = "Not signed in", body = ErrorBody), (status = 403, description = "Not an administrator", body = ErrorBody)))]
pub async fn reports(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<ReportList>, ApiError> {
    auth::admin(&state, &headers, "read reports").await?;
    let open = sqlx::query(
        "SELECT r.job_id, r.reason, r.created_at, u.handle FROM reports r JOIN users u ON u.id = r.reporter_id \
         WHERE r.resolved_at IS NULL AND r.job_id IN (SELECT job_id FROM reports WHERE resolved_at IS NULL \
         GROUP BY job_id ORDER BY MAX(created_at) DESC LIMIT 100) ORDER BY r.created_at DESC",
    )
    .fetch_all(&state.db.pool)
    .await
    .map_err(internal)?;
    // Job ids in the order of their newest report.
    let mut order: Vec<String> = Vec::new();
    let mut by_job: std::collections::HashMap<String, Vec<ReportView>> = Default::default();
    for r in &open {
        let job: String = r.try_get("job_id").map_err(internal)?;
        if !by_job.contains_key(&job) {
            order.push(job.clone());
        }
        by_job.entry(job).or_default().push(ReportView {
            reason: r.try_get("reason").map_err(internal)?,
            reporter: r.try_get("handle").map_err(internal)?,
            created_at: r.try_get("created_at").map_err(internal)?,
        });
    }
    if order.is_empty() {
        return Ok(Json(ReportList { items: Vec::new() }));
    }
    let sql = format!(
        "SELECT {POST_COLUMNS}, j.hidden FROM {POSTS} WHERE j.id IN ({})",
        placeholders(1, order.len())
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for id in &order {
        q = q.bind(id);
    }
    let rows = q.fetch_all(&state.db.pool).await.map_err(internal)?;
    let hidden: std::collections::HashSet<String> = rows
        .iter()
        .filter(|r| matches!(r.try_get::<Option<String>, _>("hidden"), Ok(Some(_))))
        .filter_map(|r| r.try_get("id").ok())
        .collect();
    let mut found: std::collections::HashMap<String, FeedItem> = items(&state, &rows, None)
        .await?
        .into_iter()
        .map(|i| (i.id.clone(), i))
        .collect();
    let items = order
        .into_iter()
        .filter_map(|id| {
            let item = found.remove(&id)?;
            Some(ReportedItem {
                hidden: hidden.contains(&id),
                reports: by_job.remove(&id).unwrap_or_default(),
                item,
            })
        })
        .collect();
    Ok(Json(ReportList { items }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Moderation {
    /// Hide the item from everyone but its owner (its open reports are resolved), or show
    /// it again.
    pub hidden: bool,
}

/// A job's state after moderation.
#[derive(Serialize, ToSchema)]
pub struct Moderated {
    pub id: String,
    pub hidden: bool,
    pub is_public: bool,
}

/// Resolves `job_id`'s open reports as `resolution`.
async fn resolve(
    conn: &mut sqlx::AnyConnection,
    job_id: &str,
    resolution: &str,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE reports SET resolved_at = $1, resolution = $2 WHERE job_id = $3 AND resolved_at IS NULL",
    )
    .bind(now())
    .bind(resolution)
    .bind(job_id)
    .execute(conn)
    .await?
    .rows_affected())
}

/// `PATCH /api/admin/jobs/:id {hidden}`: hides a public item (resolving its reports), or
/// shows again one an administrator hid.
#[utoipa::path(patch, path = "/api/admin/jobs/{id}", tag = "admin", params(("id" = String, Path, description = "Job id")), request_body = Moderation, responses((status = 200, description = "The item's state now", body = Moderated), (status = 401, description = "Not signed in", body = ErrorBody), (status = 403, description = "Not an administrator", body = ErrorBody), (status = 404, description = "No such item, or not the caller's", body = ErrorBody), (status = 409, description = "Not public, or hidden because its author is suspended", body = ErrorBody)))]
pub async fn moderate(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<Moderation>, JsonRejection>,
) -> Result<Json<Moderated>, ApiError> {
    auth::admin(&state, &headers, "moderate").await?;
    let Json(m) = body?;
    let job = state
        .db
        .job(&id)
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
    let mut tx = state.db.pool.begin().await.map_err(internal)?;
    let (sql, refused) = if m.hidden {
        (
            "UPDATE jobs SET hidden = $1, is_public = 0 WHERE id = $2 AND is_public = 1",
            "it is not public",
        )
    } else {
        (
            "UPDATE jobs SET hidden = NULL, is_public = 1 WHERE id = $2 AND hidden = $1",
            "an administrator has not hidden it (an item of a suspended user shows again when the suspension ends)",
        )
    };
    let changed = sqlx::query(sql)
        .bind(BY_ADMIN)
        .bind(&job.id)
        .execute(&mut *tx)
        .await
        .map_err(internal)?
        .rows_affected();
    if changed == 0 {
        let now_state = sqlx::query("SELECT hidden FROM jobs WHERE id = $1")
            .bind(&job.id)
            .fetch_one(&mut *tx)
            .await
            .map_err(internal)?
            .try_get::<Option<String>, _>("hidden")
            .map_err(internal)?;
        // Asked for what already holds: nothing to do.
        let already = (m.hidden && now_state.as_deref() == Some(BY_ADMIN))
            || (!m.hidden && now_state.is_none() && job.is_public);
        if !already {
            return Err(ApiError::new(ErrorCode::Conflict, refused));
        }
    }
    if m.hidden {
        resolve(&mut tx, &job.id, "hidden")
            .await
            .map_err(internal)?;
    }
    tx.commit().await.map_err(internal)?;
    tracing::info!(job = %job.id, hidden = m.hidden, "moderated");
    Ok(Json(Moderated {
        id: job.id,
        hidden: m.hidden,
        is_public: !m.hidden,
    }))
}

/// `DELETE /api/admin/jobs/:id/reports`: dismisses an item's open reports.
#[utoipa::path(delete, path = "/api/admin/jobs/{id}/reports", tag = "admin", params(("id" = String, Path, description = "Job id")), responses((status = 204, description = "Its open reports are dismissed"), (status = 401, description = "Not signed in", body = ErrorBody), (status = 403, description = "Not an administrator", body = ErrorBody), (status = 404, description = "No open reports of this item", body = ErrorBody)))]
pub async fn dismiss(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    auth::admin(&state, &headers, "moderate").await?;
    let mut conn = state.db.pool.acquire().await.map_err(internal)?;
    if resolve(&mut conn, &id, "dismissed")
        .await
        .map_err(internal)?
        == 0
    {
        return Err(ApiError::not_found(format!("no open reports of {id}")));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/admin/jobs/:id`: deletes anyone's item with its files (and its reports).
#[utoipa::path(delete, path = "/api/admin/jobs/{id}", tag = "admin", params(("id" = String, Path, description = "Job id")), responses((status = 204, description = "Deleted, with its files"), (status = 401, description = "Not signed in", body = ErrorBody), (status = 403, description = "Not an administrator", body = ErrorBody), (status = 404, description = "No such item, or not the caller's", body = ErrorBody)))]
pub async fn delete_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let admin = auth::admin(&state, &headers, "moderate").await?;
    let job = state
        .db
        .job(&id)
        .await
        .map_err(internal)?
        .filter(|j| user_kinds(&state).contains(&j.kind.as_str()))
        .ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
    crate::jobs::http::delete(&state, &job).await?;
    tracing::info!(job = %id, owner = %job.user_id, by = %admin.id, "deleted by an administrator");
    Ok(StatusCode::NO_CONTENT)
}

/// An account as administrators see it.
#[derive(Serialize, ToSchema)]
pub struct AccountView {
    pub id: String,
    pub email: String,
    pub name: String,
    pub handle: String,
    pub is_admin: bool,
    pub suspended: bool,
    /// Seconds since the epoch.
    pub created_at: i64,
}

#[derive(Serialize, ToSchema)]
pub struct AccountList {
    pub users: Vec<AccountView>,
}

#[derive(Deserialize)]
pub struct AccountQuery {
    /// Only accounts whose email, name or handle contains this.
    q: Option<String>,
    limit: Option<u32>,
}

const ACCOUNT_COLUMNS: &str = "id, email, name, handle, is_admin, suspended_at, created_at";

fn account(r: &sqlx::any::AnyRow) -> Result<AccountView, sqlx::Error> {
    Ok(AccountView {
        id: r.try_get("id")?,
        email: r.try_get("email")?,
        name: r.try_get("name")?,
        handle: r.try_get("handle")?,
        is_admin: r.try_get::<i64, _>("is_admin")? != 0,
        suspended: r.try_get::<Option<i64>, _>("suspended_at")?.is_some(),
        created_at: r.try_get("created_at")?,
    })
}

/// `GET /api/admin/users?q=`: accounts, newest first.
#[utoipa::path(get, path = "/api/admin/users", tag = "admin", params(("q" = Option<String>, Query, description = "Only accounts whose email, name or handle contains this"), ("limit" = Option<u32>, Query, minimum = 1, maximum = 200)), responses((status = 200, description = "Accounts", body = AccountList), (status = 401, description = "Not signed in", body = ErrorBody), (status = 403, description = "Not an administrator", body = ErrorBody), (status = 422, description = "Invalid input (the message names the field)", body = ErrorBody)))]
pub async fn users(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<AccountQuery>,
) -> Result<Json<AccountList>, ApiError> {
    auth::admin(&state, &headers, "list accounts").await?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(invalid("limit", "must be from 1 to 200"));
    }
    let pattern = search_pattern(q.q.as_deref())?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ACCOUNT_COLUMNS} FROM users WHERE $1 = '' OR LOWER(email) LIKE $1 ESCAPE '\\' \
         OR LOWER(name) LIKE $1 ESCAPE '\\' OR LOWER(handle) LIKE $1 ESCAPE '\\' \
         ORDER BY created_at DESC, id LIMIT $2"
    )))
    .bind(pattern)
    .bind(limit as i64)
    .fetch_all(&state.db.pool)
    .await
    .map_err(internal)?;
    let users = rows
        .iter()
        .map(account)
        .collect::<Result<_, _>>()
        .map_err(internal)?;
    Ok(Json(AccountList { users }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountPatch {
    /// Suspend the account (sign-in, tokens and keys refused, queued work cancelled,
    /// public items hidden), or lift the suspension (its items show again).
    pub suspended: bool,
}

/// `PATCH /api/admin/users/:id {suspended}`: suspends an account or lifts its suspension.
#[utoipa::path(patch, path = "/api/admin/users/{id}", tag = "admin", params(("id" = String, Path, description = "User id")), request_body = AccountPatch, responses((status = 200, description = "The account now", body = AccountView), (status = 401, description = "Not signed in", body = ErrorBody), (status = 403, description = "Not an administrator", body = ErrorBody), (status = 404, description = "No such item, or not the caller's", body = ErrorBody), (status = 409, description = "An administrator's own account", body = ErrorBody)))]
pub async fn patch_user(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<AccountPatch>, JsonRejection>,
) -> Result<Json<AccountView>, ApiError> {
    let admin = auth::admin(&state, &headers, "suspend accounts").await?;
    let Json(p) = body?;
    if p.suspended && id == admin.id {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "you cannot suspend your own account",
        ));
    }
    let target = state
        .db
        .user_by_id(&id)
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError::not_found(format!("no user {id}")))?;
    if target.suspended != p.suspended {
        let mut tx = state.db.pool.begin().await.map_err(internal)?;
        let run = |sql: &'static str| sqlx::query(sql).bind(&target.id);
        if p.suspended {
            run("UPDATE users SET suspended_at = $2 WHERE id = $1")
                .bind(now())
                .execute(&mut *tx)
                .await
                .map_err(internal)?;
            run("UPDATE jobs SET hidden = $2, is_public = 0 WHERE user_id = $1 AND is_public = 1")
                .bind(BY_SUSPENSION)
                .execute(&mut *tx)
                .await
                .map_err(internal)?;
        } else {
            run("UPDATE users SET suspended_at = NULL WHERE id = $1")
                .execute(&mut *tx)
                .await
                .map_err(internal)?;
            run("UPDATE jobs SET hidden = NULL, is_public = 1 WHERE user_id = $1 AND hidden = $2")
                .bind(BY_SUSPENSION)
                .execute(&mut *tx)
                .await
                .map_err(internal)?;
        }
        tx.commit().await.map_err(internal)?;
        if p.suspended {
            // Their queued and running work ends (refunded), as if they cancelled it.
            let kinds = user_kinds(&state);
            for job in state
                .db
                .active_jobs_of(&target.id)
                .await
                .map_err(internal)?
            {
                if kinds.contains(&job.kind.as_str()) {
                    crate::jobs::http::cancel(&state, &job).await?;
                }
            }
        }
        tracing::info!(user = %target.id, suspended = p.suspended, by = %admin.id, "account suspension changed");
    }
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ACCOUNT_COLUMNS} FROM users WHERE id = $1"
    )))
    .bind(&target.id)
    .fetch_one(&state.db.pool)
    .await
    .map_err(internal)?;
    Ok(Json(account(&row).map_err(internal)?))
}
