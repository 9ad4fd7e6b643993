//! `GET /api/models` and `GET /api/styles`: what this server offers. Anyone may list the
//! models; only administrators see where their files are (`source`).

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::generations::{ASPECT_RATIOS, aspect_size};
use crate::http::openapi::ErrorBody;
use crate::infra::error::{ApiError, internal, invalid};
use crate::persistence::registry::{self, Capability, ModelEntry, Style};
use crate::{AppState, http::auth};

/// Every model this server offers (curated and local), with installed state.
pub(crate) async fn offered(state: &AppState) -> Result<Vec<ModelEntry>, ApiError> {
    let (data_dir, local) = (
        state.config.server.data_dir.clone(),
        state.config.models.local.clone(),
    );
    tokio::task::spawn_blocking(move || registry::list(&data_dir, &local))
        .await
        .map_err(internal)?
        .map_err(internal)
}

/// The size an aspect ratio gives on a model.
#[derive(Serialize, ToSchema)]
pub struct AspectSize {
    /// `W:H`, e.g. `16:9`.
    pub ratio: String,
    pub width: u32,
    pub height: u32,
}

/// A model as clients see it.
#[derive(Serialize, ToSchema)]
pub struct Model {
    /// The name requests use.
    pub id: String,
    pub name: String,
    /// `sd1`, `sd2`, `sdxl`, … for curated models.
    pub family: Option<String>,
    /// The square size it was trained at.
    pub resolution: Option<u32>,
    pub default_steps: Option<u32>,
    pub default_cfg: Option<f64>,
    /// Few-step (turbo / LCM): usable for the live canvas.
    pub fast: bool,
    /// Added on this server rather than shipped.
    pub local: bool,
    /// The caller's own: a LoRA they trained (its id is its asset's).
    pub own: bool,
    /// Its files are on this server (else they are downloaded on first use).
    pub installed: bool,
    /// The download's size in bytes, where it is one file of known size.
    pub size: Option<u64>,
    /// The weights' licence (an SPDX id), where the list knows it.
    pub license: Option<String>,
    /// An upscaler with a denoising twin: the enhancer's `denoise` strength applies.
    pub denoise: bool,
    /// A face restorer with a fidelity weight (CodeFormer): the enhancer's `fidelity`
    /// applies.
    pub fidelity: bool,
    pub capabilities: Vec<Capability>,
    /// Each aspect ratio's size at the model's native pixel count.
    pub aspect_ratios: Vec<AspectSize>,
    /// Where its files are: a folder, a checkpoint or a Hugging Face repo id. Only
    /// administrators see it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ModelList {
    pub models: Vec<Model>,
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct ModelQuery {
    /// Only models that can do this.
    #[param(inline)]
    capability: Option<Capability>,
}

#[utoipa::path(get, path = "/api/models", tag = "generation", security((), ("bearer" = [])), params(ModelQuery), responses((status = 200, description = "Curated and local models with installed state, capabilities and the size of each aspect ratio", body = ModelList), (status = 401, description = "A token was sent but is invalid or expired", body = ErrorBody), (status = 422, description = "Invalid input (the message names the field)", body = ErrorBody)))]
pub async fn models(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ModelQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ModelList>, ApiError> {
    let Query(q) = query.map_err(|_| {
        let names: Vec<_> = Capability::ALL.iter().map(|c| c.name()).collect();
        invalid("capability", format!("must be one of {}", names.join(", ")))
    })?;
    let user = auth::optional_user(&state, &headers).await?;
    let admin = user.as_ref().is_some_and(|u| u.is_admin);
    // The caller's own trained LoRAs first, then what the server offers.
    let own = match &user {
        Some(u) if q.capability.is_none_or(|c| c == Capability::Lora) => {
            crate::tasks::lora::own_entries(&state.services(), &u.id, None)
                .await
                .map_err(internal)?
        }
        _ => Vec::new(),
    };
    let own_ids: Vec<String> = own.iter().map(|m| m.id.clone()).collect();
    let models = own
        .into_iter()
        .chain(offered(&state).await?)
        .filter(|m| q.capability.is_none_or(|c| m.capabilities.contains(&c)))
        .map(|m| {
            let base = m.resolution.unwrap_or(512);
            Model {
                aspect_ratios: ASPECT_RATIOS
                    .iter()
                    .filter_map(|ar| {
                        let (width, height) = aspect_size(base, ar)?;
                        Some(AspectSize {
                            ratio: ar.to_string(),
                            width,
                            height,
                        })
                    })
                    .collect(),
                own: own_ids.contains(&m.id),
                source: admin.then_some(m.source),
                id: m.id,
                name: m.name,
                family: m.family,
                resolution: m.resolution,
                default_steps: m.default_steps,
                default_cfg: m.default_cfg,
                fast: m.fast,
                local: m.local,
                installed: m.installed,
                size: m.size,
                license: m.license,
                denoise: m.denoise_twin.is_some(),
                fidelity: m.fidelity,
                capabilities: m.capabilities,
            }
        })
        .collect();
    Ok(Json(ModelList { models }))
}

#[derive(Serialize, ToSchema)]
pub struct StyleList {
    pub styles: Vec<Style>,
}

#[utoipa::path(get, path = "/api/styles", tag = "generation", security(), responses((status = 200, description = "Style presets", body = StyleList)))]
pub async fn styles() -> Json<StyleList> {
    Json(StyleList {
        styles: registry::styles(),
    })
}
