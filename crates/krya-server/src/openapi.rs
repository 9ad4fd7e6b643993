//! The OpenAPI document (`GET /api/openapi.json`), generated from the handlers' own
//! `#[utoipa::path]` annotations as the router registers them (`router.rs`), so no route
//! can exist without its description.

use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// Any JSON object (response shapes documented in `docs/api.md`).
pub type Object = serde_json::Value;

/// Every error: a stable code (see the table in `docs/api.md`) and a message.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// e.g. `invalid-input`, `insufficient-credits`, `not-found`
    pub code: String,
    /// For validation errors it starts with the field: `steps: must be from 1 to 150`.
    pub message: String,
}

/// A queued generation (seed §6.3).
#[derive(Serialize, ToSchema)]
pub struct Accepted {
    pub id: String,
    /// `pending` or `processing`.
    pub status: String,
    /// Seconds until done, estimated from recent jobs of the same model.
    pub estimated_time: Option<f64>,
    /// Jobs the fair order runs first.
    pub queue_position: Option<i64>,
}

/// A signed-in session (also sets the `krya_session` cookie).
#[derive(Serialize, ToSchema)]
pub struct Session {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: String,
    /// Seconds the access token lives.
    pub expires_in: i64,
    pub user: crate::db::User,
}

struct Security;

impl Modify for Security {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An access token from /api/auth/login or an API key (krya_...); the web UI uses the krya_session cookie",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Krya API", description = "Krya's REST API: accounts, image generation, media, events, feed. See docs/api.md."),
    modifiers(&Security),
    security(("bearer" = [])),
    components(schemas(ErrorBody, Accepted, Session))
)]
pub struct ApiDoc;
