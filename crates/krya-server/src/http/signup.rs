//! Who may have an account. Registration is `open`, `invite` (a single-use code an
//! administrator made) or `closed` (`accounts.registration`). The first administrator is
//! never whoever registers first: it is made with `krya users create --admin`, or through
//! a one-time setup link the server logs at start (and writes to `DATA_DIR/setup-link`)
//! while it has no administrator.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::ToSchema;

use crate::AppState;
use crate::http::auth::{self, create_user, random_hex, token_hash};
#[allow(unused_imports)]
use crate::http::openapi::{Accepted, ErrorBody, Object, Session};
use crate::infra::config::Registration;
use crate::infra::error::{ApiError, ErrorCode, internal, invalid};
use crate::infra::ids::now;
use crate::persistence::db::{Db, User};

const SETUP: &str = "setup_token";

/// The file beside the database that holds the setup link while there is no admin.
fn link_file(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("setup-link")
}

async fn has_admin(db: &Db) -> Result<bool, sqlx::Error> {
    let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM users WHERE is_admin = 1")
        .fetch_one(&db.pool)
        .await?
        .try_get("n")?;
    Ok(n > 0)
}

/// At start: while there is no administrator, a new one-time setup token (its hash kept,
/// the link logged and written to `DATA_DIR/setup-link`); once there is one, neither.
pub async fn prepare_setup(
    db: &Db,
    data_dir: &std::path::Path,
    listen: std::net::SocketAddr,
) -> Result<(), sqlx::Error> {
    let file = link_file(data_dir);
    if has_admin(db).await? {
        sqlx::query("DELETE FROM settings WHERE name = $1")
            .bind(SETUP)
            .execute(&db.pool)
            .await?;
        let _ = std::fs::remove_file(&file);
        return Ok(());
    }
    let token = random_hex(24);
    let mut tx = db.pool.begin().await?;
    sqlx::query("DELETE FROM settings WHERE name = $1")
        .bind(SETUP)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO settings (name, value) VALUES ($1, $2)")
        .bind(SETUP)
        .bind(token_hash(&token))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let link = format!("/setup?token={token}");
    let written = write_private(&file, &format!("{link}\n"));
    tracing::warn!(
        "no administrator yet: open http://{listen}{link} to make one, or run `krya users create --admin`{}",
        if written.is_ok() {
            format!(" (the link is also in {})", file.display())
        } else {
            String::new()
        }
    );
    Ok(())
}

/// Writes a file only its owner can read.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path)?.write_all(text.as_bytes())
}

/// How this server takes new accounts.
#[derive(Serialize, ToSchema)]
pub struct RegistrationInfo {
    /// `open`, `invite` or `closed`.
    pub registration: String,
    /// The server has no administrator yet (its setup link is in its log).
    pub setup_pending: bool,
}

#[utoipa::path(get, path = "/api/auth/registration", tag = "accounts", security(), responses((status = 200, description = "How this server takes new accounts", body = RegistrationInfo)))]
pub async fn registration(
    State(state): State<AppState>,
) -> Result<Json<RegistrationInfo>, ApiError> {
    let registration = match state.config.accounts.registration {
        Registration::Open => "open",
        Registration::Invite => "invite",
        Registration::Closed => "closed",
    };
    Ok(Json(RegistrationInfo {
        registration: registration.into(),
        setup_pending: !has_admin(&state.db).await.map_err(internal)?,
    }))
}

/// Checks registration against the policy; with an invite, claims it for the new account
/// (`claim` then names it). `Ok(Some(invite id))` when one was claimed.
pub async fn admit(state: &AppState, invite: Option<&str>) -> Result<Option<String>, ApiError> {
    match state.config.accounts.registration {
        Registration::Open => Ok(None),
        Registration::Closed => Err(ApiError::new(
            ErrorCode::Forbidden,
            "registration is closed on this server: an administrator adds accounts",
        )),
        Registration::Invite => {
            let code = invite.ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Forbidden,
                    "invite: this server takes new accounts by invite only",
                )
            })?;
            // Taken before the account exists, so two registrations cannot share it.
            let row = sqlx::query(
                "UPDATE invites SET used_at = $1 WHERE code_hash = $2 AND used_at IS NULL AND expires_at > $1 RETURNING id",
            )
            .bind(now())
            .bind(token_hash(code))
            .fetch_optional(&state.db.pool)
            .await
            .map_err(internal)?;
            match row {
                Some(r) => Ok(Some(r.try_get("id").map_err(internal)?)),
                None => Err(ApiError::new(
                    ErrorCode::Forbidden,
                    "invite: not a valid invite (unknown, used or expired)",
                )),
            }
        }
    }
}

/// Names the account an invite made, or frees the invite when the account was not made.
pub async fn settle(state: &AppState, invite: &str, user: Option<&User>) -> Result<(), ApiError> {
    let done = match user {
        Some(u) => {
            sqlx::query("UPDATE invites SET used_by = $1 WHERE id = $2")
                .bind(&u.id)
                .bind(invite)
                .execute(&state.db.pool)
                .await
        }
        None => {
            sqlx::query("UPDATE invites SET used_at = NULL WHERE id = $1")
                .bind(invite)
                .execute(&state.db.pool)
                .await
        }
    };
    done.map_err(internal)?;
    Ok(())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Setup {
    /// The token of the setup link.
    token: String,
    #[schema(max_length = 254)]
    email: String,
    #[schema(min_length = 8, max_length = 1024)]
    password: String,
    #[schema(min_length = 1, max_length = 100, pattern = "\\S")]
    name: String,
}

/// `POST /api/auth/setup`: the first administrator, through the setup link.
#[utoipa::path(post, path = "/api/auth/setup", tag = "accounts", security(), request_body = Setup, responses((status = 201, description = "The administrator's account, signed in", body = Session), (status = 403, description = "Not the setup token, or the server has an administrator", body = ErrorBody), (status = 409, description = "Email taken", body = ErrorBody), (status = 422, description = "Invalid input (the message names the field)", body = ErrorBody)))]
pub async fn setup(
    State(state): State<AppState>,
    body: Result<Json<Setup>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(s) = body?;
    let refused = || {
        ApiError::new(
            ErrorCode::Forbidden,
            "token: not this server's setup token, or it has an administrator already",
        )
    };
    // Spent first (one use even under concurrent requests), restored if the account fails.
    let spent = sqlx::query("DELETE FROM settings WHERE name = $1 AND value = $2")
        .bind(SETUP)
        .bind(token_hash(&s.token))
        .execute(&state.db.pool)
        .await
        .map_err(internal)?
        .rows_affected();
    if spent != 1 || has_admin(&state.db).await.map_err(internal)? {
        return Err(refused());
    }
    match create_user(&state.db, &s.email, &s.name, &s.password, true).await {
        Ok(user) => {
            let _ = std::fs::remove_file(link_file(&state.config.server.data_dir));
            tracing::info!(email = %user.email, "first administrator made through the setup link");
            auth::issue(&state, user, StatusCode::CREATED).await
        }
        Err(e) => {
            sqlx::query("INSERT INTO settings (name, value) VALUES ($1, $2)")
                .bind(SETUP)
                .bind(token_hash(&s.token))
                .execute(&state.db.pool)
                .await
                .map_err(internal)?;
            Err(e)
        }
    }
}

async fn admin(state: &AppState, headers: &HeaderMap) -> Result<User, ApiError> {
    auth::admin(state, headers, "manage invites").await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewInvite {
    /// Days it stays valid (default 7).
    #[schema(minimum = 1, maximum = 365)]
    days: Option<u32>,
}

/// An invite, as its maker sees it.
#[derive(Serialize, ToSchema)]
pub struct InviteView {
    pub id: String,
    /// Only when it is made: the code is kept as a hash.
    pub code: Option<String>,
    /// Only when it is made: the studio's registration page with the code.
    pub url: Option<String>,
    /// Seconds since the epoch.
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    /// The account it made.
    pub used_by: Option<String>,
}

#[utoipa::path(post, path = "/api/admin/invites", tag = "admin", request_body = NewInvite, responses((status = 201, description = "A single-use invite", body = InviteView), (status = 401, description = "Not signed in", body = ErrorBody), (status = 403, description = "Not an administrator", body = ErrorBody), (status = 422, description = "Invalid input (the message names the field)", body = ErrorBody)))]
pub async fn create_invite(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<NewInvite>, JsonRejection>,
) -> Result<(StatusCode, Json<InviteView>), ApiError> {
    let me = admin(&state, &headers).await?;
    let Json(n) = body?;
    let days = n.days.unwrap_or(7);
    if !(1..=365).contains(&days) {
        return Err(invalid("days", "must be from 1 to 365"));
    }
    let (id, code, t) = (random_hex(12), random_hex(16), now());
    let expires_at = t + days as i64 * 86_400;
    sqlx::query("INSERT INTO invites (id, code_hash, created_by, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(&id)
        .bind(token_hash(&code))
        .bind(&me.id)
        .bind(t)
        .bind(expires_at)
        .execute(&state.db.pool)
        .await
        .map_err(internal)?;
    Ok((
        StatusCode::CREATED,
        Json(InviteView {
            id,
            url: Some(format!("/register?invite={code}")),
            code: Some(code),
            created_at: t,
            expires_at,
            used_at: None,
            used_by: None,
        }),
    ))
}

#[derive(Serialize, ToSchema)]
pub struct InviteList {
    pub items: Vec<InviteView>,
}

#[utoipa::path(get, path = "/api/admin/invites", tag = "admin", responses((status = 200, description = "Every invite, newest first", body = InviteList), (status = 401, description = "Not signed in", body = ErrorBody), (status = 403, description = "Not an administrator", body = ErrorBody)))]
pub async fn list_invites(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<InviteList>, ApiError> {
    admin(&state, &headers).await?;
    let rows = sqlx::query("SELECT id, created_at, expires_at, used_at, used_by FROM invites ORDER BY created_at DESC, id LIMIT 500")
        .fetch_all(&state.db.pool)
        .await
        .map_err(internal)?;
    let items = rows
        .iter()
        .map(|r| {
            Ok(InviteView {
                id: r.try_get("id")?,
                code: None,
                url: None,
                created_at: r.try_get("created_at")?,
                expires_at: r.try_get("expires_at")?,
                used_at: r.try_get("used_at")?,
                used_by: r.try_get("used_by")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(internal)?;
    Ok(Json(InviteList { items }))
}

#[utoipa::path(delete, path = "/api/admin/invites/{id}", tag = "admin", params(("id" = String, Path, description = "Invite id")), responses((status = 204, description = "Withdrawn"), (status = 401, description = "Not signed in", body = ErrorBody), (status = 403, description = "Not an administrator", body = ErrorBody), (status = 404, description = "No such item, or not the caller's", body = ErrorBody)))]
pub async fn delete_invite(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin(&state, &headers).await?;
    let n = sqlx::query("DELETE FROM invites WHERE id = $1")
        .bind(&id)
        .execute(&state.db.pool)
        .await
        .map_err(internal)?
        .rows_affected();
    if n == 0 {
        return Err(ApiError::not_found(format!("no invite {id}")));
    }
    Ok(StatusCode::NO_CONTENT)
}
