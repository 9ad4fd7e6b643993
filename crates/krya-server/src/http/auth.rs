//! Accounts (seed §6.1 Authentication): register, log in, who am I. Passwords are hashed
//! with Argon2id off the async threads; tokens are random, stored only as SHA-256 hashes.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::http::guard::ClientIp;
#[allow(unused_imports)]
use crate::http::openapi::{Accepted, ErrorBody, Object, Session};
use crate::infra::error::{ApiError, ErrorCode, internal, invalid};
use crate::persistence::db::User;

pub const ACCESS_TTL_SECS: i64 = 15 * 60;
pub const REFRESH_TTL_SECS: i64 = 30 * 24 * 3600;
pub const COOKIE: &str = "krya_session";
/// The browser's refresh token: HttpOnly, sent only to `/api/auth` (refresh, logout), so
/// the studio keeps no token where scripts can read it.
pub const REFRESH_COOKIE: &str = "krya_refresh";
/// A new account's free daily allowance (seed App. C).
pub const FREE_CREDITS: i64 = 50;

pub use crate::infra::ids::now;

pub(crate) use krya_core::ids::random_hex;

pub(crate) fn token_hash(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct Register {
    #[schema(
        max_length = 254,
        pattern = "^[^@\\s]+@[^.\\s][^\\s]*\\.[^\\s]*[^.\\s]$"
    )]
    email: String,
    /// At least 8 characters.
    #[schema(min_length = 8, max_length = 1024)]
    password: String,
    #[schema(min_length = 1, max_length = 100, pattern = "\\S")]
    name: String,
    /// The code of an invite (when the server takes new accounts by invite).
    #[serde(default)]
    invite: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct Login {
    email: String,
    password: String,
}

fn normalize_email(email: &str) -> Result<String, ApiError> {
    let e = email.trim().to_lowercase();
    let valid = e.len() <= 254
        && e.split_once('@').is_some_and(|(l, d)| {
            !l.is_empty() && d.contains('.') && !d.starts_with('.') && !d.ends_with('.')
        })
        && !e.contains(char::is_whitespace);
    if valid {
        Ok(e)
    } else {
        Err(invalid("email", "not a valid email address"))
    }
}

/// `; Secure` unless `server.secure_cookies` is off.
fn secure_attr(state: &AppState) -> &'static str {
    if state.config.server.secure_cookies {
        "; Secure"
    } else {
        ""
    }
}

/// A session's tokens and the user, as register and login return them.
pub(crate) async fn issue(
    state: &AppState,
    user: User,
    status: StatusCode,
) -> Result<Response, ApiError> {
    if user.suspended {
        return Err(suspended());
    }
    let access = random_hex(32);
    let refresh = random_hex(32);
    let t = now();
    state
        .db
        .insert_session(
            &random_hex(16),
            &user.id,
            &token_hash(&access),
            t + ACCESS_TTL_SECS,
            &token_hash(&refresh),
            t + REFRESH_TTL_SECS,
            t,
        )
        .await
        .map_err(internal)?;
    let secure = secure_attr(state);
    let cookie = format!(
        "{COOKIE}={access}; HttpOnly; SameSite=Lax; Path=/; Max-Age={ACCESS_TTL_SECS}{secure}"
    );
    let refresh_cookie = format!(
        "{REFRESH_COOKIE}={refresh}; HttpOnly; SameSite=Strict; Path=/api/auth; Max-Age={REFRESH_TTL_SECS}{secure}"
    );
    let body = crate::http::openapi::Session {
        access_token: access,
        refresh_token: refresh,
        token_type: "bearer".into(),
        expires_in: ACCESS_TTL_SECS,
        user: user.clone(),
    };
    // Appended: two headers of one name (a plain array would keep only the last).
    Ok((
        status,
        axum::response::AppendHeaders([
            (header::SET_COOKIE, cookie),
            (header::SET_COOKIE, refresh_cookie),
        ]),
        Json(body),
    )
        .into_response())
}

#[utoipa::path(post, path = "/api/auth/register", tag = "accounts", security(), request_body = Register, responses((status = 201, description = "Account created, signed in", body = Session), (status = 403, description = "Registration is closed, or needs a valid invite", body = ErrorBody), (status = 409, description = "Email taken", body = ErrorBody), (status = 422, description = "Invalid input (the message names the field)", body = ErrorBody)))]
pub async fn register(
    State(state): State<AppState>,
    body: Result<Json<Register>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(r) = body?;
    let invite = crate::http::signup::admit(&state, r.invite.as_deref()).await?;
    let made = create_user(&state.db, &r.email, &r.name, &r.password, false).await;
    if let Some(i) = &invite {
        crate::http::signup::settle(&state, i, made.as_ref().ok()).await?;
    }
    issue(&state, made?, StatusCode::CREATED).await
}

/// Creates an account (an administrator with `admin`: `krya users create --admin`, the
/// setup link). Registration never makes an administrator.
pub async fn create_user(
    db: &crate::persistence::db::Db,
    email: &str,
    name: &str,
    password: &str,
    is_admin: bool,
) -> Result<User, ApiError> {
    let email = normalize_email(email)?;
    let name = name.trim().to_string();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(invalid("name", "must be 1 to 100 characters"));
    }
    if password.chars().count() < 8 || password.len() > 1024 {
        return Err(invalid("password", "must be at least 8 characters"));
    }
    let password = password.to_string();
    let hash = tokio::task::spawn_blocking(move || {
        use argon2::password_hash::PasswordHasher;
        argon2::Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    // A public handle from the email's local part, made unique with a suffix if needed.
    let base: String = email
        .split('@')
        .next()
        .unwrap_or("user")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(24)
        .collect();
    let base = if base.is_empty() {
        "user".to_string()
    } else {
        base
    };
    let mut handle = base.clone();
    while db.handle_taken(&handle).await.map_err(internal)? {
        handle = format!("{base}-{}", &random_hex(2));
    }
    let user = User {
        id: random_hex(16),
        email,
        name,
        handle,
        is_admin,
        credits_remaining: FREE_CREDITS,
        subscription_tier: "free".into(),
        created_at: now(),
        suspended: false,
    };
    if !db.insert_user(&user, &hash).await.map_err(internal)? {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "email: an account with this email already exists",
        ));
    }
    Ok(user)
}

#[utoipa::path(post, path = "/api/auth/login", tag = "accounts", security(), request_body = Login, responses((status = 200, description = "Signed in", body = Session), (status = 401, description = "Not signed in", body = ErrorBody), (status = 429, description = "Too many failures; see Retry-After", body = ErrorBody)))]
pub async fn login(
    State(state): State<AppState>,
    axum::Extension(ClientIp(client)): axum::Extension<ClientIp>,
    body: Result<Json<Login>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(l) = body?;
    let wrong = || ApiError::new(ErrorCode::Unauthorized, "wrong email or password");
    let email = normalize_email(&l.email).map_err(|_| wrong())?;
    // Per account and address: failures from one address never lock the owner out from
    // another.
    let (pair, address) = (format!("{email} {client}"), client.to_string());
    let throttle = &state.login_throttle;
    if let Err(wait) = throttle
        .pair
        .check(&pair)
        .and(throttle.address.check(&address))
    {
        let mut e = ApiError::new(
            ErrorCode::RateLimited,
            format!("too many failed sign-ins; try again in {wait} s"),
        );
        e.retry_after = Some(wait);
        return Err(e);
    }
    let found = state.db.user_by_email(&email).await.map_err(internal)?;
    let verified = match found {
        Some((user, hash)) => {
            let password = l.password.clone();
            let ok = tokio::task::spawn_blocking(move || {
                use argon2::password_hash::PasswordVerifier;
                argon2::Argon2::default()
                    .verify_password(password.as_bytes(), hash.as_str())
                    .is_ok()
            })
            .await
            .map_err(internal)?;
            ok.then_some(user)
        }
        None => None,
    };
    let Some(user) = verified else {
        throttle.pair.fail(&pair);
        throttle.address.fail(&address);
        return Err(wrong());
    };
    throttle.pair.reset(&pair);
    issue(&state, user, StatusCode::OK).await
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct Refresh {
    refresh_token: String,
}

/// Exchanges a refresh token (the body's, else the `krya_refresh` cookie) for a new
/// session; the old one is revoked (single use). A token used twice is a sign of theft:
/// every session of its user is revoked.
#[utoipa::path(post, path = "/api/auth/refresh", tag = "accounts", security(), request_body(content = Option<Refresh>, description = "Optional in browsers: the krya_refresh cookie is used when there is no body"), responses((status = 200, description = "A new session; the old refresh token is spent", body = Session), (status = 401, description = "Not signed in", body = ErrorBody)))]
pub async fn refresh(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    // No body (or a JSON null): the browser's cookie.
    let empty = body.iter().all(u8::is_ascii_whitespace) || body.trim_ascii() == b"null";
    let token = if empty {
        cookie(&headers, REFRESH_COOKIE)
            .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "sign in first"))?
    } else {
        let Json(r) = Json::<Refresh>::from_bytes(&body)?;
        r.refresh_token
    };
    let expired = || {
        ApiError::new(
            ErrorCode::Unauthorized,
            "the refresh token is invalid, expired or already used",
        )
    };
    match state
        .db
        .take_refresh(
            &token_hash(&token),
            now(),
            state.config.server.refresh_reuse_secs as i64,
        )
        .await
        .map_err(internal)?
    {
        Ok(Some(user_id)) => {
            let user = state
                .db
                .user_by_id(&user_id)
                .await
                .map_err(internal)?
                .ok_or_else(expired)?;
            issue(&state, user, StatusCode::OK).await
        }
        Ok(None) => Err(expired()),
        Err(user_id) => {
            state
                .db
                .revoke_user_sessions(&user_id)
                .await
                .map_err(internal)?;
            Err(expired())
        }
    }
}

/// Ends the current session (its access and refresh tokens) and clears the cookies. A
/// browser whose access token has expired still signs out with its refresh cookie.
#[utoipa::path(post, path = "/api/auth/logout", tag = "accounts", security((), ("bearer" = [])), responses((status = 204, description = "Signed out"), (status = 401, description = "Not signed in", body = ErrorBody)))]
pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let access = request_token(&headers);
    let refresh = cookie(&headers, REFRESH_COOKIE);
    if access.is_none() && refresh.is_none() {
        return Err(ApiError::new(ErrorCode::Unauthorized, "sign in first"));
    }
    if let Some(token) = access {
        state
            .db
            .revoke_access(&token_hash(&token))
            .await
            .map_err(internal)?;
    }
    if let Some(token) = refresh {
        state
            .db
            .revoke_refresh(&token_hash(&token))
            .await
            .map_err(internal)?;
    }
    let secure = secure_attr(&state);
    let clear = format!("{COOKIE}=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0{secure}");
    let clear_refresh =
        format!("{REFRESH_COOKIE}=; HttpOnly; SameSite=Strict; Path=/api/auth; Max-Age=0{secure}");
    Ok((
        StatusCode::NO_CONTENT,
        axum::response::AppendHeaders([
            (header::SET_COOKIE, clear),
            (header::SET_COOKIE, clear_refresh),
        ]),
    )
        .into_response())
}

/// The value of cookie `name`, if the request carries it.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name && !v.is_empty()).then(|| v.to_string())
        })
}

/// The token a request carries: `Authorization: Bearer`, else the session cookie.
fn request_token(headers: &HeaderMap) -> Option<String> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string());
    bearer.or_else(|| cookie(headers, COOKIE))
}

/// The signed-in user, from `Authorization: Bearer` or the session cookie.
pub async fn current_user(state: &AppState, headers: &HeaderMap) -> Result<User, ApiError> {
    let token = request_token(headers)
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "sign in first"))?;
    let hash = token_hash(&token);
    let user = if token.starts_with(API_KEY_PREFIX) {
        state.db.user_by_api_key(&hash).await
    } else {
        state.db.user_by_access(&hash, now()).await
    };
    let user = user
        .map_err(internal)?
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "the token is invalid or expired"))?;
    if user.suspended {
        return Err(suspended());
    }
    Ok(user)
}

fn suspended() -> ApiError {
    ApiError::new(
        ErrorCode::Forbidden,
        "this account is suspended; ask the server's administrators",
    )
}

/// The signed-in user, who must be an administrator; `what` says what only they may do.
pub async fn admin(state: &AppState, headers: &HeaderMap, what: &str) -> Result<User, ApiError> {
    let u = current_user(state, headers).await?;
    if !u.is_admin {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("only administrators {what}"),
        ));
    }
    Ok(u)
}

/// The signed-in user, or `None` for a request without a token (a token that is sent must
/// be valid).
pub async fn optional_user(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<User>, ApiError> {
    match request_token(headers) {
        Some(_) => current_user(state, headers).await.map(Some),
        None => Ok(None),
    }
}

#[utoipa::path(get, path = "/api/auth/me", tag = "accounts", responses((status = 200, description = "The caller", body = User), (status = 401, description = "Not signed in", body = ErrorBody)))]
pub async fn me(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<User>, ApiError> {
    Ok(Json(current_user(&state, &headers).await?))
}

/// Who the caller is, for pages that work signed in or not: never a 401.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SessionState {
    /// The signed-in user; null for a guest (or an expired access token).
    pub user: Option<User>,
    /// No valid access token, but a refresh cookie: `POST /api/auth/refresh` may renew it.
    pub refreshable: bool,
}

/// `GET /api/auth/session`: the caller, or null. Browsers log every 4xx answer, so a
/// guest's pages ask this instead of `/api/auth/me`.
#[utoipa::path(get, path = "/api/auth/session", tag = "accounts", security((), ("bearer" = [])), responses((status = 200, description = "The caller, or null", body = SessionState)))]
pub async fn session(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<SessionState>, ApiError> {
    let user = match current_user(&state, &headers).await {
        Ok(u) => Some(u),
        Err(e) if e.code == ErrorCode::Unauthorized => None,
        Err(e) => return Err(e),
    };
    let refreshable = user.is_none() && cookie(&headers, REFRESH_COOKIE).is_some();
    Ok(Json(SessionState { user, refreshable }))
}

/// API keys start with this, so a bearer token's kind is known without two look-ups.
pub const API_KEY_PREFIX: &str = "krya_";

#[derive(Deserialize, utoipa::ToSchema)]
pub struct NewApiKey {
    #[schema(min_length = 1, max_length = 100, pattern = "\\S")]
    name: String,
}

/// An API key as listed (without the secret).
#[derive(Serialize, utoipa::ToSchema)]
pub struct ApiKeyView {
    pub id: String,
    pub name: String,
    /// The key's first characters, to tell keys apart.
    pub prefix: String,
    /// Seconds since the epoch.
    pub created_at: i64,
}

/// A new API key: the secret `key` is shown in this response only.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedApiKey {
    #[serde(flatten)]
    pub view: ApiKeyView,
    pub key: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ApiKeyList {
    pub items: Vec<ApiKeyView>,
}

/// Creates an API key; the key itself is shown in this response only.
#[utoipa::path(post, path = "/api/user/api-keys", tag = "accounts", request_body = NewApiKey, responses((status = 201, description = "The key, shown once", body = CreatedApiKey), (status = 401, description = "Not signed in", body = ErrorBody), (status = 422, description = "Invalid input (the message names the field)", body = ErrorBody)))]
pub async fn create_api_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<NewApiKey>, JsonRejection>,
) -> Result<Response, ApiError> {
    let user = current_user(&state, &headers).await?;
    let Json(k) = body?;
    let name = k.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(invalid("name", "must be 1 to 100 characters"));
    }
    let key = format!("{API_KEY_PREFIX}{}", random_hex(24));
    let prefix: String = key.chars().take(API_KEY_PREFIX.len() + 6).collect();
    let id = random_hex(16);
    let t = now();
    state
        .db
        .insert_api_key(&id, &user.id, &name, &token_hash(&key), &prefix, t)
        .await
        .map_err(internal)?;
    let view = ApiKeyView {
        id,
        name,
        prefix,
        created_at: t,
    };
    Ok((StatusCode::CREATED, Json(CreatedApiKey { view, key })).into_response())
}

#[utoipa::path(get, path = "/api/user/api-keys", tag = "accounts", responses((status = 200, description = "Live keys (without the secret)", body = ApiKeyList), (status = 401, description = "Not signed in", body = ErrorBody)))]
pub async fn list_api_keys(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<ApiKeyList>, ApiError> {
    let user = current_user(&state, &headers).await?;
    let keys = state.db.api_keys(&user.id).await.map_err(internal)?;
    let items = keys
        .into_iter()
        .map(|(id, name, prefix, created_at)| ApiKeyView {
            id,
            name,
            prefix,
            created_at,
        })
        .collect();
    Ok(Json(ApiKeyList { items }))
}

#[utoipa::path(delete, path = "/api/user/api-keys/{id}", tag = "accounts", params(("id" = String, Path, description = "Key id")), responses((status = 204, description = "Revoked"), (status = 401, description = "Not signed in", body = ErrorBody), (status = 404, description = "No such item, or not the caller's", body = ErrorBody)))]
pub async fn delete_api_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<StatusCode, ApiError> {
    let user = current_user(&state, &headers).await?;
    if state
        .db
        .revoke_api_key(&user.id, &id)
        .await
        .map_err(internal)?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("no such API key"))
    }
}
