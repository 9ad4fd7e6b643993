//! The route table: every endpoint in one readable place. Each handler carries its own
//! `#[utoipa::path]`; registering it here also adds it to the OpenAPI document served at
//! `/api/openapi.json`.

use std::sync::{Arc, OnceLock};

use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri, header};
use axum::response::IntoResponse;
use axum::{Json, Router};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::infra::error::{ApiError, ErrorCode};
use crate::{
    AppState, generations, http::account, http::auth, http::events, http::feed, http::media,
    http::models, http::moderation, http::openapi, http::signup, http::storage, http::tiles, jobs,
    realtime, tasks::webhook::outbox as webhooks,
};

/// The route table as an OpenAPI router (for the document) before state and layers.
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(openapi_json))
        .routes(routes!(auth::register))
        .routes(routes!(auth::login))
        .routes(routes!(auth::refresh))
        .routes(routes!(auth::logout))
        .routes(routes!(auth::me))
        .routes(routes!(auth::session))
        .routes(routes!(signup::registration))
        .routes(routes!(signup::setup))
        .routes(routes!(signup::create_invite, signup::list_invites))
        .routes(routes!(signup::delete_invite))
        .routes(routes!(auth::create_api_key, auth::list_api_keys))
        .routes(routes!(auth::delete_api_key))
        .routes(routes!(webhooks::get_secret))
        .routes(routes!(account::get_profile, account::put_profile))
        .routes(routes!(account::usage))
        .routes(routes!(account::subscription))
        .routes(routes!(account::grant))
        .routes(routes!(models::models))
        .routes(routes!(models::styles))
        .routes(routes!(generations::create))
        .routes(routes!(generations::create_batch))
        .routes(routes!(
            generations::get_one,
            generations::delete_one,
            generations::patch_one
        ))
        .routes(routes!(generations::cancel_one))
        .routes(routes!(generations::list))
        .routes(routes!(jobs::http::create, jobs::http::list))
        .routes(routes!(
            jobs::http::get_one,
            jobs::http::delete_one,
            jobs::http::patch_one
        ))
        .routes(routes!(jobs::http::cancel_one))
        .routes(routes!(jobs::http::kinds))
        .routes(routes!(media::upload))
        .routes(routes!(media::get_asset, storage::delete_asset))
        .routes(routes!(media::get_asset_thumbnail))
        .routes(routes!(media::versions))
        .routes(routes!(tiles::info))
        .routes(routes!(tiles::tile))
        .routes(routes!(media::image))
        .routes(routes!(media::thumbnail))
        .routes(routes!(events::stream))
        .routes(routes!(feed::feed))
        .routes(routes!(feed::get_item))
        .routes(routes!(feed::like))
        .routes(routes!(feed::remix))
        .routes(routes!(crate::tasks::enhance::http::create))
        .routes(routes!(crate::tasks::enhance::http::get_one))
        .routes(routes!(crate::tasks::caption::http::create))
        .routes(routes!(crate::tasks::caption::http::get_one))
        .routes(routes!(crate::tasks::train::http::create))
        .routes(routes!(crate::tasks::train::http::get_one))
        .routes(routes!(crate::tasks::train::http::list))
        .routes(routes!(crate::tasks::train::http::sample))
        .routes(routes!(crate::tasks::edit::http::create))
        .routes(routes!(crate::tasks::edit::http::get_one))
        .routes(routes!(crate::http::segment::segment))
        .routes(routes!(moderation::report))
        .routes(routes!(moderation::reports))
        .routes(routes!(moderation::moderate, moderation::delete_job))
        .routes(routes!(moderation::dismiss))
        .routes(routes!(moderation::users))
        .routes(routes!(moderation::patch_user))
        .routes(routes!(feed::profile))
        .routes(routes!(realtime::capture::save))
}

/// The OpenAPI document, rendered once.
static DOCUMENT: OnceLock<Arc<String>> = OnceLock::new();

/// The OpenAPI document (`GET /api/openapi.json`, `krya openapi`), pretty-printed.
pub fn openapi_document() -> String {
    DOCUMENT
        .get_or_init(|| {
            let (_, doc) = api().split_for_parts();
            render(doc)
        })
        .to_string()
}

/// The document with what every route adds (`openapi::CommonResponses`), as JSON.
fn render(mut doc: utoipa::openapi::OpenApi) -> Arc<String> {
    use utoipa::Modify;
    openapi::CommonResponses.modify(&mut doc);
    Arc::new(doc.to_pretty_json().unwrap_or_default())
}

pub fn router(state: AppState) -> Router {
    let limit = state.config.server.max_body_bytes as usize;
    let (routes, doc) = api().split_for_parts();
    DOCUMENT.get_or_init(|| render(doc));
    routes
        // WebSocket, outside the OpenAPI document (docs/realtime.md describes it).
        .route("/ws/realtime", axum::routing::get(crate::realtime::ws))
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            limit as u64,
            media::limit_body,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.config.server.request_timeout_secs,
            crate::infra::error::timeout,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::http::limits::limit,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.guard.clone(),
            crate::http::guard::guard,
        ))
        .layer(axum::middleware::from_fn(crate::infra::error::request_id))
        .with_state(state)
}

/// The server answers.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
    /// Krya's version.
    pub version: String,
}

/// Liveness: the server answers.
#[utoipa::path(get, path = "/api/health", tag = "server", security(), responses((status = 200, description = "Alive", body = Health)))]
async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "server", security(), responses((status = 200, description = "OpenAPI 3.1", body = openapi::Object)))]
async fn openapi_json() -> impl IntoResponse {
    let doc = DOCUMENT.get().cloned().unwrap_or_default();
    (
        [(header::CONTENT_TYPE, "application/json")],
        doc.as_str().to_owned(),
    )
}

/// No API route matched: the studio's files and pages, else a JSON 404.
async fn fallback(
    axum::extract::State(state): axum::extract::State<AppState>,
    method: Method,
    uri: Uri,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    crate::http::studio::serve(&state.studio, &method, &uri, &headers)
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{method} is not allowed on {}", uri.path()),
    )
}
