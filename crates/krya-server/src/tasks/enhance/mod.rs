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

use std::path::PathBuf;

use super::{
    Body, Outcome, Output, Prepared, ProgressMsg, RunContext, Services, Task, in_range, job_seed,
    model_source,
};
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
    /// Restore faces: find them in the image, repaint them (GFPGAN, CodeFormer) and paste them into the
    /// output.
    #[serde(default)]
    pub face_restore: Option<bool>,
    /// The face restorer (`GET /api/models?capability=face_restore`); default the first
    /// installed one. Faces are found with the first installed `face_detect` model.
    #[serde(default)]
    pub face_model: Option<String>,
    /// CodeFormer's fidelity weight, 0 (the most repainted faces) to 1 (closest to the
    /// input); default 0.5. Only for a face model that has one (`fidelity` in
    /// `GET /api/models`).
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub fidelity: Option<f64>,
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
    /// Generative: LoRAs the image model re-draws with (`<lora:ID:WEIGHT>` in `prompt`
    /// adds more).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loras: Vec<crate::tasks::lora::LoraRef>,
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

fn upscaler(services: &Services, id: &str) -> Result<registry::ModelEntry, ApiError> {
    model_source(
        services,
        "model",
        Some(id),
        Capability::Upscale,
        "an upscaler",
    )
}

/// The weights file of each model a job uses, downloaded first where it is a URL's.
struct Files {
    upscaler: registry::ModelEntry,
    /// realesr-general-x4v3's denoising twin, when `denoise` blends with it.
    twin: Option<registry::ModelEntry>,
    /// The face restorer and detector.
    faces: Option<(registry::ModelEntry, registry::ModelEntry)>,
}

impl Files {
    /// Each file's path, fetched if needed (in the job, off the async runtime), the
    /// download reported as a stage of the job's progress, in MB, and stopped by `cancel`.
    fn fetch(
        &self,
        data_dir: &std::path::Path,
        mirror: &str,
        progress: &tokio::sync::mpsc::UnboundedSender<ProgressMsg>,
        cancel: &krya_engine::CancelToken,
    ) -> Result<(PathBuf, Option<PathBuf>, Option<(PathBuf, PathBuf)>), krya_engine::EngineError>
    {
        let get =
            |e: &registry::ModelEntry| super::fetch_file(data_dir, e, mirror, progress, cancel);
        let up = get(&self.upscaler)?;
        let twin = self.twin.as_ref().map(get).transpose()?;
        let faces = match &self.faces {
            Some((r, d)) => Some((get(r)?, get(d)?)),
            None => None,
        };
        Ok((up, twin, faces))
    }
}

/// A temporary file beside the data (large outputs are stored from there a part at a time).
fn temp_file(
    data_dir: &std::path::Path,
    suffix: &str,
) -> Result<tempfile::NamedTempFile, krya_engine::EngineError> {
    tempfile::Builder::new()
        .prefix(".enhance-")
        .suffix(suffix)
        .tempfile_in(data_dir)
        .map_err(|e| krya_engine::EngineError::Io {
            path: data_dir.to_path_buf(),
            source: e,
        })
}

/// Removes temporary outputs (`.enhance-*`) older than `age` from the data directory: what
/// a process that died mid-job left (a live job's are younger: they are written as it runs).
pub fn remove_stale_temp_files(data_dir: &std::path::Path, age: std::time::Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return 0;
    };
    let now = std::time::SystemTime::now();
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".enhance-"))
        .filter(|e| {
            e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).is_ok_and(|d| d > age))
        })
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

/// The models an enhance request names (checked when it is made, again when it runs).
fn job_models(services: &Services, r: &EnhanceRequest) -> Result<Files, ApiError> {
    let upscaler = upscaler(services, &r.model)?;
    let twin = match (r.denoise, &upscaler.denoise_twin) {
        (Some(d), Some(id)) if d < 1.0 => Some(model_source(
            services,
            "denoise",
            Some(id),
            Capability::Upscale,
            "an upscaler",
        )?),
        (Some(d), None) if d < 1.0 => {
            return Err(invalid(
                "denoise",
                format!(
                    "{} has no denoising twin to blend with (realesr-general-x4v3 has)",
                    upscaler.id
                ),
            ));
        }
        _ => None,
    };
    let faces = match r.face_restore {
        Some(true) => {
            let restorer = model_source(
                services,
                "face_model",
                r.face_model.as_deref(),
                Capability::FaceRestore,
                "a face restorer",
            )?;
            let detector = model_source(
                services,
                "face_restore",
                None,
                Capability::FaceDetect,
                "a face detector",
            )?;
            if r.fidelity.is_some() && !restorer.fidelity {
                return Err(invalid(
                    "fidelity",
                    format!("{} has no fidelity weight (CodeFormer has)", restorer.id),
                ));
            }
            Some((restorer, detector))
        }
        _ => None,
    };
    Ok(Files {
        upscaler,
        twin,
        faces,
    })
}

#[async_trait::async_trait]
impl Task for EnhanceTask {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn prepare(
        &self,
        services: &Services,
        user_id: &str,
        params: serde_json::Value,
    ) -> Result<Prepared, ApiError> {
        let r: EnhanceRequest =
            serde_json::from_value(params).map_err(|e| invalid("params", e.to_string()))?;
        if let Some(s) = r.scale
            && ![1, 2, 4, 8].contains(&s)
        {
            return Err(invalid("scale", "must be 1, 2, 4 or 8"));
        }
        in_range("tile", r.tile.map(f64::from), 64.0, 1024.0)?;
        in_range("denoise", r.denoise, 0.0, 1.0)?;
        in_range("sharpen", r.sharpen, 0.0, 4.0)?;
        let mut r = r;
        let generative = r.mode == Some(EnhanceMode::Generative);
        if generative {
            in_range("creativity", r.creativity, 0.0, 1.0)?;
            in_range("resemblance", r.resemblance, 0.0, 1.0)?;
            if r.prompt.as_ref().is_some_and(|p| p.chars().count() > 4000) {
                return Err(invalid("prompt", "must be at most 4000 characters"));
            }
            r.seed = Some(job_seed(r.seed)?);
            // The model is fixed now, so a retry re-draws with the same one.
            let entry = diffusion_source(services, r.diffusion_model.as_deref())?;
            let mut offered = registry::list(&services.data_dir, &services.local_models)
                .map_err(crate::infra::error::internal)?;
            offered.extend(
                crate::tasks::lora::own_entries(
                    services,
                    user_id,
                    Some(&crate::tasks::lora::ids_in(
                        r.prompt.as_deref().unwrap_or(""),
                        &r.loras,
                    )),
                )
                .await
                .map_err(crate::infra::error::internal)?,
            );
            crate::tasks::lora::check(
                &offered,
                &entry,
                r.prompt.as_deref().unwrap_or(""),
                &r.loras,
            )?;
            r.diffusion_model = Some(entry.id);
        } else {
            for (field, set) in [
                ("creativity", r.creativity.is_some()),
                ("resemblance", r.resemblance.is_some()),
                ("prompt", r.prompt.is_some()),
                ("diffusion_model", r.diffusion_model.is_some()),
                ("seed", r.seed.is_some()),
                ("loras", !r.loras.is_empty()),
            ] {
                if set {
                    return Err(invalid(field, "is for mode \"generative\" only"));
                }
            }
        }
        for (field, set) in [
            ("face_model", r.face_model.is_some()),
            ("fidelity", r.fidelity.is_some()),
        ] {
            if set && r.face_restore != Some(true) {
                return Err(invalid(field, "is for face_restore: true only"));
            }
        }
        in_range("fidelity", r.fidelity, 0.0, 1.0)?;
        let models = job_models(services, &r)?;
        // The restorer is fixed now, so a retry restores with the same one.
        if let Some((restorer, _)) = &models.faces {
            r.face_model = Some(restorer.id.clone());
        }
        // The size is known from the upload; a scale left to the model is at most 4 for
        // the architectures read here (checked exactly when the job runs).
        let (w, h) = services
            .db
            .asset_size(&r.image, user_id)
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
        let files = match job_models(&ctx.services, &r) {
            Ok(f) => f,
            Err(e) => return Outcome::failed("model-unavailable", e.message),
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
        let own_loras = if diffusion.is_some() {
            let ids = crate::tasks::lora::ids_in(r.prompt.as_deref().unwrap_or(""), &r.loras);
            match crate::tasks::lora::own_entries(&ctx.services, &ctx.job.user_id, Some(&ids)).await
            {
                Ok(v) => v,
                Err(e) => return Outcome::Retry(e),
            }
        } else {
            Vec::new()
        };
        let cache = ctx.services.cache.clone();
        let data_dir = ctx.services.data_dir.clone();
        let local = ctx.services.local_models.clone();
        let mirror = ctx.services.model_mirror.clone();
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
                // Curated models are downloaded on their first use.
                let (source, twin, faces) = files.fetch(&data_dir, &mirror, &progress, &cancel)?;
                if let Some((restorer, detector)) = &faces {
                    let mut f = Faces::load(restorer, detector)?;
                    if let Some(w) = r.fidelity {
                        f.fidelity = w as f32;
                    }
                    options.faces = Some(std::sync::Arc::new(f));
                }
                let input = engine::decode(&bytes, options.max_input_pixels)?;
                let model = Upscaler::load(
                    &source,
                    &LoadOptions {
                        denoise: r.denoise,
                        denoise_twin: twin,
                    },
                )?;
                // The list's picture: the input as decoded (oriented), the same picture
                // smaller, not a read of the whole output.
                let thumbnail = media::thumbnail_webp(&input.to_rgb8(), 384).ok();
                // The PNG goes to a temporary file beside the data (stored from there a part
                // at a time): at 22,000 px it is hundreds of megabytes.
                let file = temp_file(&data_dir, ".png")?;
                let mut png = std::io::BufWriter::new(file);
                // Progress per tile, with a picture of the output so far (at most ~4 a
                // second, and the last).
                let preview =
                    std::sync::Arc::new(std::sync::Mutex::new(image::RgbImage::new(0, 0)));
                options.preview = Some(preview.clone());
                let mut pacer = super::PreviewPacer::default();
                let mut report = |done, total| {
                    let picture = if pacer.due(done == total) {
                        let img = preview.lock().unwrap().clone();
                        (img.width() > 0)
                            .then(|| media::preview_data_url(&img))
                            .flatten()
                    } else {
                        None
                    };
                    let _ = progress.send(ProgressMsg::step(done, total, picture));
                };
                // And a zoomable copy, for viewers of outputs too large to show whole.
                let tiles = temp_file(&data_dir, ".bin")?.into_temp_path();
                options.pyramid = Some(tiles.to_path_buf());
                let mut meta = json!({"model": r.model});
                let (w, h) = match &diffusion {
                    None => {
                        engine::enhance(&model, &input, &options, &cancel, &mut report, &mut png)?
                    }
                    Some(entry) => {
                        let (prompt, loras) =
                            crate::tasks::lora::split(r.prompt.as_deref().unwrap_or(""), &r.loras)?;
                        let loras: Vec<_> = loras.into_iter().map(|(l, _)| l).collect();
                        let sd = crate::tasks::lora::with_loras(
                            crate::tasks::image::load_model(entry, &cache)?,
                            entry,
                            &loras,
                            &own_loras,
                            &cache,
                            &data_dir,
                            &local,
                            &mirror,
                        )?;
                        let g = Generative {
                            model: &sd,
                            prompt,
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
                            "prompt": r.prompt.clone().unwrap_or_default(),
                            "seed": g.seed,
                            "loras": loras,
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
                if let Some(w) = r.fidelity {
                    meta["fidelity"] = json!(w);
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
                    tiles: Some(Body::File(tiles)),
                    width: Some(w as u32),
                    height: Some(h as u32),
                    duration_ms: None,
                    parent_id: Some(parent),
                    meta,
                })
            });
        super::engine_outcome(work.await, "the enhancer")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temporary_outputs_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join(".enhance-abc.png");
        let new = dir.path().join(".enhance-def.bin");
        let other = dir.path().join("krya.db");
        for p in [&old, &new, &other] {
            std::fs::write(p, b"x").unwrap();
        }
        let day = std::time::Duration::from_secs(86_400);
        let f = std::fs::File::options().write(true).open(&old).unwrap();
        f.set_modified(std::time::SystemTime::now() - 2 * day)
            .unwrap();
        let f = std::fs::File::options().write(true).open(&other).unwrap();
        f.set_modified(std::time::SystemTime::now() - 2 * day)
            .unwrap();
        assert_eq!(remove_stale_temp_files(dir.path(), day), 1);
        assert!(!old.exists() && new.exists() && other.exists());
    }
}
