//! The route table: every endpoint in one readable place.

use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use axum::routing::{delete, get, post};

use crate::{account, events, feed, generations, media, webhooks};
use axum::{Json, Router};

use crate::error::{ApiError, ErrorCode};
use crate::{AppState, auth};

pub fn router(state: AppState) -> Router {
    let limit = state.config.server.max_body_bytes as usize;
    Router::new()
        .route("/api/health", get(health))
        .route("/api/auth/register", post(auth::register))
        .route("/api/auth/login", post(auth::login))
        .route("/api/auth/refresh", post(auth::refresh))
        .route("/api/auth/logout", post(auth::logout))
        .route("/api/auth/me", get(auth::me))
        .route(
            "/api/user/api-keys",
            post(auth::create_api_key).get(auth::list_api_keys),
        )
        .route("/api/user/api-keys/{id}", delete(auth::delete_api_key))
        .route("/api/user/webhook-secret", get(webhooks::get_secret))
        .route("/api/models", get(generations::models))
        .route("/api/styles", get(generations::styles))
        .route("/api/generate/image", post(generations::create))
        .route("/api/generate/image/batch", post(generations::create_batch))
        .route(
            "/api/generate/image/{id}",
            get(generations::get_one)
                .delete(generations::delete_one)
                .patch(generations::patch_one),
        )
        .route(
            "/api/generate/image/{id}/cancel",
            post(generations::cancel_one),
        )
        .route("/api/generate/images", get(generations::list))
        .route("/api/assets", post(media::upload))
        .route("/api/assets/{id}", get(media::get_asset))
        .route("/api/images/{id}", get(media::image))
        .route("/api/images/{id}/thumbnail", get(media::thumbnail))
        .route("/api/events", get(events::stream))
        .route("/api/feed", get(feed::feed))
        .route("/api/feed/{id}", get(feed::get_item))
        .route("/api/feed/{id}/like", post(feed::like))
        .route("/api/feed/{id}/remix", post(feed::remix))
        .route("/api/profiles/{handle}", get(feed::profile))
        .route(
            "/api/user/profile",
            get(account::get_profile).put(account::put_profile),
        )
        .route("/api/user/usage", get(account::usage))
        .route("/api/user/subscription", get(account::subscription))
        .route("/api/admin/users/{id}/credits", post(account::grant))
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

async fn fallback(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no endpoint at {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{method} is not allowed on {}", uri.path()),
    )
}
