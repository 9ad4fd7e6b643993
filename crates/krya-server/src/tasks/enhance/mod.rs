//! The `enhance` kind (seed §2.4, `POST /api/enhance/image`): an uploaded image made 1×–8×
//! larger by a super-resolution model (`krya_engine::pipelines::upscale`), tile by tile,
//! with progress per tile. Its output is a PNG asset whose `parent_id` is the input.
//!
//! Priced by the output's size: a credit per started 4 megapixels, and in the generative
//! mode a credit more per started output megapixel. The model is one the server lists with
//! the `upscale` capability (a local `.pth`/`.safetensors` file); the generative mode
//! re-draws with an image model (`diffusion_model`, by default the first installed one).

pub mod http;

use serde::Deserialize;
use serde_json::json;

use super::{Body, Outcome, Output, Prepared, RunContext, Services, Task};
use crate::http::media;
use crate::infra::error::{ApiError, internal, invalid};
use crate::persistence::registry::{self, Capability};
use krya_engine::pipelines::face::Faces;
use krya_engine::pipelines::upscale::enhance::{
    self as engine, EnhanceOptions, GENERATIVE_MAX_SIDE, Generative, MAX_SIDE,
};
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
    /// Restore faces: find them in the image, repaint them (GFPGAN) and paste them into the
    /// output.
    #[serde(default)]
    pub face_restore: Option<bool>,
    /// The face restorer (`GET /api/models?capability=face_restore`); default the first
    /// installed one. Faces are found with the first installed `face_detect` model.
    #[serde(default)]
    pub face_model: Option<String>,
    /// Unsharp-mask amount after upscaling, 0 (none, the default) to 4.
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 4.0)]
    pub sharpen: Option<f64>,
    /// `upscale` (the default) or `generative`: upscale, then re-draw detail with an image
    /// model over overlapping tiles (output at most 2048 px a side).
    #[serde(default)]
    pub mode: Option<EnhanceMode>,
    /// Generative: how much is re-drawn (the image-to-image strength), 0 to 1; default 0.35.
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub creativity: Option<f64>,
    /// Generative: how much of the upscaled image's colours and large shapes are kept, 0 to
    /// 1; default 0.5.
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub resemblance: Option<f64>,
    /// Generative: what the image shows (optional; at most 4000 characters).
    #[serde(default)]
    pub prompt: Option<String>,
    /// Generative: the image model that re-draws (`GET /api/models?capability=img2img`);
    /// default the first installed one.
    #[serde(default)]
    pub diffusion_model: Option<String>,
    /// Generative: the seed; -1 or left out for a random one (the job records it).
    #[serde(default)]
    pub seed: Option<i64>,
}

/// How the enhancer works.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EnhanceMode {
    Upscale,
    Generative,
}

pub struct EnhanceTask;

/// Credits for an output of `w × h` pixels: one per started 4 megapixels, and one more per
/// started megapixel when it is re-drawn.
pub fn cost(w: u64, h: u64, generative: bool) -> i64 {
    let upscale = (w * h).div_ceil(4_000_000).max(1) as i64;
    upscale
        + if generative {
            (w * h).div_ceil(1_000_000) as i64
        } else {
            0
        }
}

/// Defaults of the generative controls.
const CREATIVITY: f64 = 0.35;
const RESEMBLANCE: f64 = 0.5;

/// The image model a generative request re-draws with: the one named (which must make
/// images from images) or the first installed one.
fn diffusion_source(
    services: &Services,
    id: Option<&str>,
) -> Result<registry::ModelEntry, ApiError> {
    model_source(
        services,
        "diffusion_model",
        id,
        Capability::Img2img,
        "an image model that re-draws images",
    )
}

fn upscaler_source(services: &Services, id: &str) -> Result<String, ApiError> {
    model_source(
        services,
        "model",
        Some(id),
        Capability::Upscale,
        "an upscaler",
    )
    .map(|e| e.source)
}

/// The model `id` names, which must have `capability` (`what` says what that is), or,
/// without an id, the first installed one that has it. Errors name `field`.
fn model_source(
    services: &Services,
    field: &str,
    id: Option<&str>,
    capability: Capability,
    what: &str,
) -> Result<registry::ModelEntry, ApiError> {
    let list = format!("GET /api/models?capability={}", capability.name());
    let entry = match id {
        Some(id) => registry::find(&services.data_dir, &services.local_models, id)
            .map_err(internal)?
            .ok_or_else(|| invalid(field, format!("no model {id:?} (see GET /api/models)")))?,
        None => registry::list(&services.data_dir, &services.local_models)
            .map_err(internal)?
            .into_iter()
            .find(|m| m.installed && m.capabilities.contains(&capability))
            .ok_or_else(|| invalid(field, format!("no {what} is installed (see {list})")))?,
    };
    if !entry.capabilities.contains(&capability) {
        return Err(invalid(
            field,
            format!("{} is not {what} (see {list})", entry.id),
        ));
    }
    Ok(entry)
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
        if let Some(a) = r.sharpen
            && !(0.0..=4.0).contains(&a)
        {
            return Err(invalid("sharpen", "must be from 0 to 4"));
        }
        let mut r = r;
        let generative = r.mode == Some(EnhanceMode::Generative);
        if generative {
            for (field, v) in [("creativity", r.creativity), ("resemblance", r.resemblance)] {
                if let Some(v) = v
                    && !(0.0..=1.0).contains(&v)
                {
                    return Err(invalid(field, "must be from 0 to 1"));
                }
            }
            if r.prompt.as_ref().is_some_and(|p| p.chars().count() > 4000) {
                return Err(invalid("prompt", "must be at most 4000 characters"));
            }
            r.seed = match r.seed {
                None | Some(-1) => Some(rand::random::<u32>() as i64),
                Some(s) if (0..=u32::MAX as i64).contains(&s) => Some(s),
                Some(_) => {
                    return Err(invalid(
                        "seed",
                        "must be -1 (random) or from 0 to 4294967295",
                    ));
                }
            };
            // The model is fixed now, so a retry re-draws with the same one.
            let entry = diffusion_source(services, r.diffusion_model.as_deref())?;
            r.diffusion_model = Some(entry.id);
        } else {
            for (field, set) in [
                ("creativity", r.creativity.is_some()),
                ("resemblance", r.resemblance.is_some()),
                ("prompt", r.prompt.is_some()),
                ("diffusion_model", r.diffusion_model.is_some()),
                ("seed", r.seed.is_some()),
            ] {
                if set {
                    return Err(invalid(field, "is for mode \"generative\" only"));
                }
            }
        }
        if r.face_restore == Some(true) {
            let restorer = model_source(
                services,
                "face_model",
                r.face_model.as_deref(),
                Capability::FaceRestore,
                "a face restorer",
            )?;
            model_source(
                services,
                "face_restore",
                None,
                Capability::FaceDetect,
                "a face detector",
            )?;
            r.face_model = Some(restorer.id);
        } else if r.face_model.is_some() {
            return Err(invalid("face_model", "is for face_restore: true only"));
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
        let max = if generative {
            GENERATIVE_MAX_SIDE
        } else {
            MAX_SIDE
        } as u64;
        if ow.max(oh) > max {
            return Err(invalid(
                "scale",
                format!(
                    "the output would be {ow}×{oh}; at most {max} px a side{}",
                    if generative { " when re-drawn" } else { "" }
                ),
            ));
        }
        Ok(Prepared {
            cost: cost(ow, oh, generative),
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
        let diffusion = match &r.diffusion_model {
            Some(id) if r.mode == Some(EnhanceMode::Generative) => {
                match diffusion_source(&ctx.services, Some(id)) {
                    Ok(e) => Some(e),
                    Err(e) => return Outcome::failed("model-unavailable", e.message),
                }
            }
            _ => None,
        };
        let faces = match (&r.face_restore, &r.face_model) {
            (Some(true), Some(id)) => {
                let found = model_source(
                    &ctx.services,
                    "face_model",
                    Some(id),
                    Capability::FaceRestore,
                    "a face restorer",
                )
                .and_then(|restorer| {
                    let detector = model_source(
                        &ctx.services,
                        "face_restore",
                        None,
                        Capability::FaceDetect,
                        "a face detector",
                    )?;
                    Ok((restorer.source, detector.source))
                });
                match found {
                    Ok(paths) => Some(paths),
                    Err(e) => return Outcome::failed("model-unavailable", e.message),
                }
            }
            _ => None,
        };
        let cache = ctx.services.cache.clone();
        let data_dir = ctx.services.data_dir.clone();
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
                    sharpen: r.sharpen.unwrap_or(0.0) as f32,
                    ..Default::default()
                };
                let mut options = options;
                if let Some((restorer, detector)) = &faces {
                    options.faces = Some(std::sync::Arc::new(Faces::load(
                        std::path::Path::new(restorer),
                        std::path::Path::new(detector),
                    )?));
                }
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
                // The PNG goes to a temporary file beside the data (stored from there a part
                // at a time): at 22,000 px it is hundreds of megabytes.
                let file = tempfile::Builder::new()
                    .prefix(".enhance-")
                    .suffix(".png")
                    .tempfile_in(&data_dir)
                    .map_err(|e| krya_engine::EngineError::Io {
                        path: data_dir.clone(),
                        source: e,
                    })?;
                let mut png = std::io::BufWriter::new(file);
                // Progress per tile, with a picture of the output so far (at most ~4 a
                // second, and the last).
                let preview =
                    std::sync::Arc::new(std::sync::Mutex::new(image::RgbImage::new(0, 0)));
                options.preview = Some(preview.clone());
                let mut shown = std::time::Instant::now() - std::time::Duration::from_secs(1);
                let mut report = |done, total| {
                    let picture = if shown.elapsed() >= std::time::Duration::from_millis(250)
                        || done == total
                    {
                        shown = std::time::Instant::now();
                        let img = preview.lock().unwrap().clone();
                        (img.width() > 0)
                            .then(|| media::preview_data_url(&img))
                            .flatten()
                    } else {
                        None
                    };
                    let _ = progress.send((done, total, picture));
                };
                let mut meta = json!({"model": r.model});
                let (w, h) = match &diffusion {
                    None => {
                        engine::enhance(&model, &input, &options, &cancel, &mut report, &mut png)?
                    }
                    Some(entry) => {
                        let sd = crate::tasks::image::load_model(entry, &cache)?;
                        let g = Generative {
                            model: &sd,
                            prompt: r.prompt.clone().unwrap_or_default(),
                            negative_prompt: None,
                            creativity: r.creativity.unwrap_or(CREATIVITY),
                            resemblance: r.resemblance.unwrap_or(RESEMBLANCE),
                            seed: r.seed.unwrap_or(0) as u64,
                            steps: None,
                            guidance: None,
                            tiles: None,
                        };
                        meta = json!({
                            "model": r.model,
                            "mode": "generative",
                            "diffusion_model": entry.id,
                            "creativity": g.creativity,
                            "resemblance": g.resemblance,
                            "prompt": g.prompt,
                            "seed": g.seed,
                        });
                        engine::enhance_generative(
                            &model,
                            &g,
                            &input,
                            &options,
                            &cancel,
                            &mut report,
                            &mut png,
                        )?
                    }
                };
                meta["scale"] = json!(w / input.width);
                if let Some(a) = r.sharpen {
                    meta["sharpen"] = json!(a);
                }
                if let Some(f) = &r.face_model {
                    meta["face_model"] = json!(f);
                }
                Ok(Output {
                    kind: "image",
                    mime: "image/png",
                    ext: "png",
                    body: Body::File(
                        png.into_inner()
                            .map_err(|e| krya_engine::EngineError::Io {
                                path: data_dir.clone(),
                                source: e.into_error(),
                            })?
                            .into_temp_path(),
                    ),
                    thumbnail,
                    width: Some(w as u32),
                    height: Some(h as u32),
                    duration_ms: None,
                    parent_id: Some(parent),
                    meta,
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
