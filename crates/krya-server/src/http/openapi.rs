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
    /// The record to poll: a generation for images (`/api/generate/image/{id}`), else the job.
    pub id: String,
    /// Its job (`/api/jobs/{job_id}`).
    pub job_id: String,
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
    pub user: crate::persistence::db::User,
}

/// Responses every operation of a kind can give, added where a handler's annotation leaves
/// them out: a JSON body can be malformed (400), of another type (415), too large (413) or
/// invalid (422); query parameters can be invalid (422); an operation that needs a token
/// answers 401 without one.
pub struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        let global_security = api.security.clone().unwrap_or_default();
        for item in api.paths.paths.values_mut() {
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in ops.into_iter().flatten() {
                let json_body = op.request_body.as_ref().is_some_and(|b| match b {
                    utoipa::openapi::RefOr::T(b) => b.content.contains_key("application/json"),
                    utoipa::openapi::RefOr::Ref(_) => false,
                });
                let query = op.parameters.as_ref().is_some_and(|ps| {
                    ps.iter()
                        .any(|p| matches!(p, utoipa::openapi::RefOr::T(p) if matches!(p.parameter_in, utoipa::openapi::path::ParameterIn::Query)))
                });
                let security = op.security.as_ref().unwrap_or(&global_security);
                // `security(())` alone (public) is one empty requirement.
                let needs_token = !security.is_empty()
                    && !security
                        .iter()
                        .any(|s| *s == utoipa::openapi::security::SecurityRequirement::default());
                let responses = &mut op.responses.responses;
                let mut add = |status: &str, description: &str| {
                    responses
                        .entry(status.to_string())
                        .or_insert_with(|| error(description).into());
                };
                if json_body {
                    add("400", "Malformed JSON");
                    add("413", "Body too large");
                    add("415", "Not JSON");
                    add("422", "Invalid input (the message names the field)");
                }
                if query {
                    add("422", "Invalid input (the message names the field)");
                }
                if needs_token {
                    add("401", "Not signed in");
                }
            }
        }
    }
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
