//! The `enhance` kind (seed §2.4, `POST /api/enhance/image`): an uploaded image made 1×–8×
//! larger by a super-resolution model (`krya_engine::pipelines::upscale`), tile by tile,
//! with progress per tile. Its output is a PNG asset whose `parent_id` is the input.
//!
//! Priced by the output's size: a credit per started 4 megapixels. The model is one the
//! server lists with the `upscale` capability (a local `.pth`/`.safetensors` file).

pub mod http;

use serde::Deserialize;
use serde_json::json;

use super::{Outcome, Output, Prepared, RunContext, Services, Task};
use crate::http::media;
use crate::infra::error::{ApiError, internal, invalid};
use crate::persistence::registry::{self, Capability};
use krya_engine::pipelines::upscale::enhance::{self as engine, EnhanceOptions, MAX_SIDE};
use krya_engine::pipelines::upscale::tile::TileOptions;
use krya_engine::pipelines::upscale::{LoadOptions, Upscaler};

pub const KIND: &str = "enhance";

/// What `POST /api/enhance/image` takes.
#[derive(Debug, Clone, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnhanceRequest {
    /// The uploaded image (`POST /api/assets`).
    pub image: String,
    /// An upscaler (`GET /api/models?capability=upscale`).
    pub model: String,
    /// 1, 2, 4 or 8; leave out for the model's own.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 8)]
    pub scale: Option<u32>,
    /// Tile size in input pixels (64 to 1024; default 256).
    #[serde(default)]
    pub tile: Option<u32>,
    /// realesr-general-x4v3's denoise strength, 0 to 1 (needs the model's denoise twin).
    #[serde(default)]
    pub denoise: Option<f64>,
}

pub struct EnhanceTask;

/// Credits for an output of `w × h` pixels: one per started 4 megapixels.
pub fn cost(w: u64, h: u64) -> i64 {
    (w * h).div_ceil(4_000_000).max(1) as i64
}

fn upscaler_source(services: &Services, id: &str) -> Result<String, ApiError> {
    let entry = registry::find(&services.data_dir, &services.local_models, id)
        .map_err(internal)?
        .ok_or_else(|| invalid("model", format!("no model {id:?} (see GET /api/models)")))?;
    if !entry.capabilities.contains(&Capability::Upscale) {
        return Err(invalid(
            "model",
            format!("{id} is not an upscaler (see GET /api/models?capability=upscale)"),
        ));
    }
    Ok(entry.source)
}

#[async_trait::async_trait]
impl Task for EnhanceTask {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn prepare(
        &self,
        services: &Services,
        params: serde_json::Value,
    ) -> Result<Prepared, ApiError> {
        let r: EnhanceRequest =
            serde_json::from_value(params).map_err(|e| invalid("params", e.to_string()))?;
        if let Some(s) = r.scale
            && ![1, 2, 4, 8].contains(&s)
        {
            return Err(invalid("scale", "must be 1, 2, 4 or 8"));
        }
        if let Some(t) = r.tile
            && !(64..=1024).contains(&t)
        {
            return Err(invalid("tile", "must be from 64 to 1024"));
        }
        if let Some(d) = r.denoise
            && !(0.0..=1.0).contains(&d)
        {
            return Err(invalid("denoise", "must be from 0 to 1"));
        }
        upscaler_source(services, &r.model)?;
        // The size is known from the upload; a scale left to the model is at most 4 for
        // the architectures read here (checked exactly when the job runs).
        let (w, h) = services
            .db
            .asset_size(&r.image)
            .await
            .map_err(internal)?
            .ok_or_else(|| invalid("image", format!("no uploaded file {}", r.image)))?;
        let scale = r.scale.unwrap_or(4) as u64;
        let (ow, oh) = (w * scale, h * scale);
        if ow.max(oh) > MAX_SIDE as u64 {
            return Err(invalid(
                "scale",
                format!("the output would be {ow}×{oh}; at most {MAX_SIDE} px a side"),
            ));
        }
        Ok(Prepared {
            cost: cost(ow, oh),
            inputs: vec![r.image.clone()],
            params: serde_json::to_value(&r).map_err(internal)?,
        })
    }

    async fn run(&self, ctx: RunContext) -> Outcome {
        let r: EnhanceRequest = match serde_json::from_value(ctx.job.params.clone()) {
            Ok(r) => r,
            Err(e) => return Outcome::failed("invalid-input", format!("params: {e}")),
        };
        let source = match upscaler_source(&ctx.services, &r.model) {
            Ok(s) => s,
            Err(e) => return Outcome::failed("invalid-input", e.message),
        };
        let bytes = match ctx.input(&r.image).await {
            Ok(b) => b,
            Err(outcome) => return outcome,
        };
        let progress = ctx.progress();
        let cancel = ctx.cancel.clone();
        let parent = r.image.clone();
        let work =
            tokio::task::spawn_blocking(move || -> Result<Output, krya_engine::EngineError> {
                let options = EnhanceOptions {
                    scale: r.scale.unwrap_or(0) as usize,
                    tile: TileOptions {
                        tile: r.tile.unwrap_or(256) as usize,
                        ..Default::default()
                    },
                    ..Default::default()
                };
                let input = engine::decode(&bytes, options.max_input_pixels)?;
                let model = Upscaler::load(
                    std::path::Path::new(&source),
                    &LoadOptions {
                        denoise: r.denoise,
                        ..Default::default()
                    },
                )?;
                // The list's picture: the input as decoded (oriented), the same picture
                // smaller, not a read of the whole output.
                let thumbnail = media::thumbnail_webp(&input.to_rgb8(), 384).ok();
                let mut png = Vec::new();
                let (w, h) = engine::enhance(
                    &model,
                    &input,
                    &options,
                    &cancel,
                    &mut |done, total| {
                        let _ = progress.send((done, total, None));
                    },
                    &mut png,
                )?;
                Ok(Output {
                    kind: "image",
                    mime: "image/png",
                    ext: "png",
                    bytes: png,
                    thumbnail,
                    width: Some(w as u32),
                    height: Some(h as u32),
                    duration_ms: None,
                    parent_id: Some(parent),
                    meta: json!({"model": r.model, "scale": w / input.width}),
                })
            });
        match work.await {
            Ok(Ok(out)) => Outcome::Done(vec![out]),
            Ok(Err(krya_engine::EngineError::Cancelled)) => Outcome::Cancelled,
            Ok(Err(e)) if e.is_user_error() => Outcome::failed("invalid-input", e.to_string()),
            Ok(Err(e)) => Outcome::Retry(e.to_string()),
            Err(e) => Outcome::Retry(format!("the enhancer stopped: {e}")),
        }
    }
}
