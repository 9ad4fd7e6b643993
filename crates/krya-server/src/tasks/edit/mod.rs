//! The `edit` kind (seed §2.5, `POST /api/edit/image`): an uploaded image changed by an
//! image model where a mask says (`inpaint`), on a larger canvas (`outpaint`), re-drawn in
//! a style (`restyle`) or as an instruction says (`instruct`, InstructPix2Pix), with
//! `krya_engine::pipelines::edit`. The output is a PNG asset whose `parent_id` is the
//! image it edits, so an image's versions form a chain the studio's history follows.
//!
//! Priced as image generation: a credit per started output megapixel.

pub mod http;

use serde::Deserialize;

use super::{
    Body, Outcome, Output, Prepared, RunContext, Services, Task, in_range, job_seed, step_reporter,
};
use crate::http::media;
use crate::infra::error::{ApiError, internal, invalid};
use crate::persistence::registry::{self, Capability};
use krya_engine::pipelines::edit::{self as engine, Extend, MaskOptions};
use krya_engine::pipelines::erase::Eraser;
use krya_engine::pipelines::matte::{self, Matter};
use krya_engine::{EngineError, GenerateRequest};

pub const KIND: &str = "edit";

/// Inputs are decoded up to this many pixels (as image-to-image's).
const MAX_INPUT_PIXELS: u64 = 8192 * 8192;

/// What an edit does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EditOperation {
    /// Repaint where `mask` is white, as `prompt` says.
    Inpaint,
    /// Extend the canvas (`extend` or `aspect`) and fill the new area.
    Outpaint,
    /// Re-draw the whole image in a style (`style`, `prompt`) by `strength`.
    Restyle,
    /// Change the image as `prompt` says ("make it winter") with an instruction-editing
    /// model (InstructPix2Pix).
    Instruct,
    /// Remove what `mask` covers, the surroundings continued: with an object-removal model
    /// (LaMa), or an image model inpainting with no prompt, a negative one for objects,
    /// and the mask grown more.
    Erase,
    /// Cut the subject out: a PNG whose background is transparent (`matte_model`).
    RemoveBackground,
    /// Keep the subject and put it on `background` (an image), or on a new background
    /// painted as `prompt` says by `model`.
    ReplaceBackground,
}

impl EditOperation {
    fn name(self) -> &'static str {
        match self {
            EditOperation::Inpaint => "inpaint",
            EditOperation::Outpaint => "outpaint",
            EditOperation::Restyle => "restyle",
            EditOperation::Instruct => "instruct",
            EditOperation::Erase => "erase",
            EditOperation::RemoveBackground => "remove_background",
            EditOperation::ReplaceBackground => "replace_background",
        }
    }

    /// What a model must do for it, and how the error says so.
    fn capability(self) -> (Capability, &'static str) {
        match self {
            EditOperation::Inpaint
            | EditOperation::Outpaint
            | EditOperation::Erase
            | EditOperation::ReplaceBackground
            | EditOperation::RemoveBackground => {
                (Capability::Inpaint, "an image model that inpaints")
            }
            EditOperation::Restyle => (Capability::Img2img, "an image model that re-draws images"),
            EditOperation::Instruct => (
                Capability::Instruct,
                "an instruction-editing model (InstructPix2Pix)",
            ),
        }
    }
}

/// Pixels added on each side (outpaint).
#[derive(Debug, Clone, Copy, Default, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendPixels {
    #[serde(default)]
    pub left: u32,
    #[serde(default)]
    pub top: u32,
    #[serde(default)]
    pub right: u32,
    #[serde(default)]
    pub bottom: u32,
}

/// What `POST /api/edit/image` takes.
#[derive(Debug, Clone, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditRequest {
    /// The image to edit (an uploaded or generated asset of the caller's).
    pub image: String,
    pub operation: EditOperation,
    /// Inpaint: the mask, an image of the same size; white (at least half grey) is
    /// repainted, black kept.
    #[serde(default)]
    pub mask: Option<String>,
    /// What to paint (default: nothing in particular, the surroundings continued); for
    /// `instruct`, the instruction ("make it winter"; needed).
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub negative_prompt: Option<String>,
    /// The image model (`GET /api/models?capability=inpaint`; `img2img` to restyle,
    /// `instruct` for instructions; to erase, `erase` (LaMa) or `inpaint`); default the
    /// first installed one (to erase: LaMa, else an inpainting model, else LaMa
    /// downloaded).
    #[serde(default)]
    pub model: Option<String>,
    /// Remove or replace the background: the background-removal model
    /// (`GET /api/models?capability=matte`); default the first installed one.
    #[serde(default)]
    pub matte_model: Option<String>,
    /// Replace the background: the image to put behind the subject (an uploaded or
    /// generated asset of the caller's), scaled to cover the image; instead of `prompt`.
    #[serde(default)]
    pub background: Option<String>,
    /// Restyle: a style preset (`GET /api/styles`) applied to the prompt.
    #[serde(default)]
    pub style: Option<String>,
    /// Instruct: how strongly the output keeps to the image (diffusers'
    /// `image_guidance_scale`), 0 to 10; default 1.5.
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 10.0)]
    pub image_guidance: Option<f64>,
    /// How much is re-drawn, 0 to 1 (default 1 for inpaint and outpaint: from noise; 0.6
    /// to restyle; an instruction always re-draws all).
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub strength: Option<f64>,
    /// Pixels the mask is grown by, 0 to 256 (default 4).
    #[serde(default)]
    #[schema(maximum = 256)]
    pub grow: Option<u32>,
    /// The mask's feather (a Gaussian's standard deviation), 0 to 64 px (default 4).
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 64.0)]
    pub blur: Option<f64>,
    /// Outpaint: pixels added on each side.
    #[serde(default)]
    pub extend: Option<ExtendPixels>,
    /// Outpaint: the aspect to extend to, `W:H` (`16:9`), added evenly to both ends of the
    /// short side; instead of `extend`.
    #[serde(default)]
    pub aspect: Option<String>,
    /// The seed; -1 or left out for a random one (the job records it).
    #[serde(default)]
    pub seed: Option<i64>,
    /// Denoising steps (default the model's).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 150)]
    pub steps: Option<u32>,
    /// Classifier-free guidance (default the model's).
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 30.0)]
    pub cfg_scale: Option<f64>,
}

/// `W:H` with both from 1 to 100.
fn parse_aspect(s: &str) -> Option<(u32, u32)> {
    let (w, h) = s.split_once(':')?;
    let (w, h) = (w.trim().parse().ok()?, h.trim().parse().ok()?);
    ((1..=100).contains(&w) && (1..=100).contains(&h)).then_some((w, h))
}

/// The pixels an outpaint adds to a `w × h` image.
fn extension(r: &EditRequest, w: u32, h: u32) -> Result<Extend, ApiError> {
    let e = match (&r.extend, &r.aspect) {
        (Some(_), Some(_)) => return Err(invalid("aspect", "give extend or aspect, not both")),
        (Some(e), None) => Extend {
            left: e.left,
            top: e.top,
            right: e.right,
            bottom: e.bottom,
        },
        (None, Some(a)) => {
            let (aw, ah) = parse_aspect(a)
                .ok_or_else(|| invalid("aspect", "must be W:H, each from 1 to 100 (16:9)"))?;
            Extend::to_aspect(w, h, aw, ah)
        }
        (None, None) => return Err(invalid("extend", "outpaint needs extend or aspect")),
    };
    if e.is_empty() {
        return Err(invalid(
            if r.aspect.is_some() {
                "aspect"
            } else {
                "extend"
            },
            "adds nothing: the image is that size already",
        ));
    }
    let (nw, nh) = (
        w as u64 + e.left as u64 + e.right as u64,
        h as u64 + e.top as u64 + e.bottom as u64,
    );
    if nw.max(nh) > 8192 {
        return Err(invalid(
            "extend",
            format!("the canvas would be {nw}×{nh}; at most 8192 px a side"),
        ));
    }
    Ok(e)
}

/// Credits for an output of `w × h`: one per started megapixel.
fn cost(w: u64, h: u64) -> i64 {
    (w * h).div_ceil(1_000_000).max(1) as i64
}

/// The image model an edit paints with, if it uses one: for `erase`, LaMa or an
/// inpainting model (left out: an installed LaMa, else an installed inpainting model, else
/// LaMa downloaded).
fn image_model(
    services: &Services,
    r: &EditRequest,
) -> Result<Option<registry::ModelEntry>, ApiError> {
    let id = r.model.as_deref();
    Ok(Some(match r.operation {
        EditOperation::RemoveBackground => return Ok(None),
        EditOperation::ReplaceBackground if r.background.is_some() => return Ok(None),
        EditOperation::Erase => {
            let what = "an object-removal model (LaMa) or an image model that inpaints";
            let lama = || super::model_source(services, "model", id, Capability::Erase, what);
            let inpaint = || super::model_source(services, "model", id, Capability::Inpaint, what);
            match id {
                Some(_) => lama().or_else(|_| inpaint())?,
                None => {
                    let installed = |c| {
                        registry::default_for(&services.data_dir, &services.local_models, c)
                            .ok()
                            .flatten()
                            .filter(|e| e.installed)
                    };
                    match installed(Capability::Erase).or_else(|| installed(Capability::Inpaint)) {
                        Some(e) => e,
                        None => lama()?,
                    }
                }
            }
        }
        op => {
            let (capability, what) = op.capability();
            super::model_source(services, "model", id, capability, what)?
        }
    }))
}

/// The background-removal model, for the operations that use one.
fn matte_model(
    services: &Services,
    r: &EditRequest,
) -> Result<Option<registry::ModelEntry>, ApiError> {
    match r.operation {
        EditOperation::RemoveBackground | EditOperation::ReplaceBackground => super::model_source(
            services,
            "matte_model",
            r.matte_model.as_deref(),
            Capability::Matte,
            "a background-removal model",
        )
        .map(Some),
        _ => Ok(None),
    }
}

/// The model in `path`, from the cache or loaded by `load` (counted at its file's size).
fn cached<T: Send + Sync + 'static>(
    cache: &krya_engine::model::cache::ModelCache,
    path: &std::path::Path,
    load: impl FnOnce(&std::path::Path) -> Result<T, EngineError>,
) -> Result<std::sync::Arc<T>, EngineError> {
    cache.get_or_load(&path.display().to_string(), || {
        let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        Ok((load(path)?, bytes))
    })
}

/// `bg` scaled to cover `w × h` (the aspect kept) and cropped to it, centred.
fn cover(bg: &image::RgbImage, w: u32, h: u32) -> image::RgbImage {
    let (bw, bh) = bg.dimensions();
    let s = (w as f64 / bw as f64).max(h as f64 / bh as f64);
    let (sw, sh) = (
        ((bw as f64 * s).ceil() as u32).max(w),
        ((bh as f64 * s).ceil() as u32).max(h),
    );
    let scaled = image::imageops::resize(bg, sw, sh, image::imageops::FilterType::Triangle);
    image::imageops::crop_imm(&scaled, (sw - w) / 2, (sh - h) / 2, w, h).to_image()
}

pub struct EditTask;

#[async_trait::async_trait]
impl Task for EditTask {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn prepare(
        &self,
        services: &Services,
        user_id: &str,
        params: serde_json::Value,
    ) -> Result<Prepared, ApiError> {
        let mut r: EditRequest =
            serde_json::from_value(params).map_err(|e| invalid("params", e.to_string()))?;
        in_range("strength", r.strength, 0.0, 1.0)?;
        in_range("grow", r.grow.map(f64::from), 0.0, 256.0)?;
        in_range("blur", r.blur, 0.0, 64.0)?;
        in_range("steps", r.steps.map(f64::from), 1.0, 150.0)?;
        in_range("cfg_scale", r.cfg_scale, 0.0, 30.0)?;
        in_range("image_guidance", r.image_guidance, 0.0, 10.0)?;
        for (field, text) in [
            ("prompt", &r.prompt),
            ("negative_prompt", &r.negative_prompt),
        ] {
            if text.as_ref().is_some_and(|p| p.chars().count() > 4000) {
                return Err(invalid(field, "must be at most 4000 characters"));
            }
        }
        r.seed = Some(job_seed(r.seed)?);
        let op = r.operation;
        let only = |field: &'static str, set: bool, ops: &[EditOperation]| {
            if set && !ops.contains(&op) {
                let names: Vec<&str> = ops.iter().map(|o| o.name()).collect();
                return Err(invalid(
                    field,
                    format!("is for operation {} only", names.join(" or ")),
                ));
            }
            Ok(())
        };
        use EditOperation::{
            Erase, Inpaint, Instruct, Outpaint, RemoveBackground, ReplaceBackground, Restyle,
        };
        only("style", r.style.is_some(), &[Restyle])?;
        only("image_guidance", r.image_guidance.is_some(), &[Instruct])?;
        only(
            "strength",
            r.strength.is_some(),
            &[Inpaint, Outpaint, Restyle],
        )?;
        only("extend", r.extend.is_some(), &[Outpaint])?;
        only("aspect", r.aspect.is_some(), &[Outpaint])?;
        only("mask", r.mask.is_some(), &[Inpaint, Erase])?;
        only(
            "prompt",
            r.prompt.is_some(),
            &[Inpaint, Outpaint, Restyle, Instruct, ReplaceBackground],
        )?;
        only(
            "matte_model",
            r.matte_model.is_some(),
            &[RemoveBackground, ReplaceBackground],
        )?;
        only("background", r.background.is_some(), &[ReplaceBackground])?;
        only(
            "model",
            r.model.is_some(),
            &[
                Inpaint,
                Outpaint,
                Restyle,
                Instruct,
                Erase,
                ReplaceBackground,
            ],
        )?;
        if op == ReplaceBackground {
            match (&r.background, &r.prompt) {
                (Some(_), Some(_)) => {
                    return Err(invalid("background", "give background or prompt, not both"));
                }
                (None, None) => {
                    return Err(invalid(
                        "background",
                        "replace_background needs a background image or a prompt to paint one",
                    ));
                }
                (Some(_), None) if r.model.is_some() => {
                    return Err(invalid(
                        "model",
                        "paints a background from a prompt; with a background image none is used",
                    ));
                }
                _ => {}
            }
        }
        if let Some(style) = &r.style
            && !crate::persistence::registry::styles()
                .iter()
                .any(|s| &s.id == style)
        {
            return Err(invalid(
                "style",
                format!("no style {style:?} (see GET /api/styles)"),
            ));
        }
        if op == Instruct && r.prompt.as_deref().is_none_or(|p| p.trim().is_empty()) {
            return Err(invalid(
                "prompt",
                "instruct needs the instruction (\"make it winter\")",
            ));
        }
        // The models are fixed now, so a retry uses the same ones.
        let image_model = image_model(services, &r)?;
        if let Some(entry) = &image_model
            && entry.capabilities.contains(&Capability::Erase)
        {
            for (field, set) in [
                ("steps", r.steps.is_some()),
                ("cfg_scale", r.cfg_scale.is_some()),
                ("negative_prompt", r.negative_prompt.is_some()),
            ] {
                if set {
                    return Err(invalid(
                        field,
                        format!("{} (LaMa) erases without one", entry.id),
                    ));
                }
            }
        }
        // Image-to-image skips the schedule's first (1 − strength) part: a strength that
        // leaves no step is refused now, not when the job runs.
        let steps = r
            .steps
            .or(image_model.as_ref().and_then(|e| e.default_steps));
        if let (Some(s), Some(steps)) = (r.strength, steps)
            && (steps as f64 * s) < 1.0
        {
            return Err(invalid(
                "strength",
                format!("{s} re-draws nothing in {steps} steps: raise it or the steps"),
            ));
        }
        r.model = image_model.map(|e| e.id);
        r.matte_model = matte_model(services, &r)?.map(|e| e.id);
        let size = |id: String, field: &'static str| async move {
            services
                .db
                .asset_size(&id, user_id)
                .await
                .map_err(internal)?
                .ok_or_else(|| invalid(field, format!("no uploaded file {id}")))
        };
        let (w, h) = size(r.image.clone(), "image").await?;
        let mut inputs = vec![r.image.clone()];
        let (ow, oh) = match r.operation {
            EditOperation::Inpaint | EditOperation::Erase => {
                let mask = r.mask.clone().ok_or_else(|| {
                    invalid(
                        "mask",
                        format!("{} needs a mask (white = change)", op.name()),
                    )
                })?;
                let (mw, mh) = size(mask.clone(), "mask").await?;
                if (mw, mh) != (w, h) {
                    return Err(invalid(
                        "mask",
                        format!(
                            "is {mw}×{mh} but the image is {w}×{h}; give a mask of the same size"
                        ),
                    ));
                }
                inputs.push(mask);
                (w, h)
            }
            EditOperation::Restyle
            | EditOperation::Instruct
            | EditOperation::RemoveBackground
            | EditOperation::ReplaceBackground => {
                if let Some(bg) = &r.background {
                    size(bg.clone(), "background").await?;
                    inputs.push(bg.clone());
                }
                (w, h)
            }
            EditOperation::Outpaint => {
                let e = extension(&r, w as u32, h as u32)?;
                (w + (e.left + e.right) as u64, h + (e.top + e.bottom) as u64)
            }
        };
        Ok(Prepared {
            cost: cost(ow, oh),
            inputs,
            params: serde_json::to_value(&r).map_err(internal)?,
        })
    }

    async fn check_inputs(
        &self,
        services: &Services,
        user_id: &str,
        params: &serde_json::Value,
    ) -> Result<(), ApiError> {
        let Some(mask) = params.get("mask").and_then(|m| m.as_str()) else {
            return Ok(());
        };
        let bytes = super::own_upload(services, user_id, "mask", mask).await?;
        let decoded = media::decode_limited(&bytes, MAX_INPUT_PIXELS)
            .map_err(|e| invalid("mask", e.message))?;
        if engine::mask::is_empty(&engine::mask::hard(&decoded.to_luma8())) {
            return Err(invalid("mask", "is empty: paint what to change in white"));
        }
        Ok(())
    }

    async fn run(&self, ctx: RunContext) -> Outcome {
        let r: EditRequest = match serde_json::from_value(ctx.job.params.clone()) {
            Ok(r) => r,
            Err(e) => return Outcome::failed("invalid-input", format!("params: {e}")),
        };
        let models =
            image_model(&ctx.services, &r).and_then(|i| Ok((i, matte_model(&ctx.services, &r)?)));
        let (entry, matte_entry) = match models {
            Ok(m) => m,
            Err(e) => return Outcome::failed("model-unavailable", e.message),
        };
        let mut inputs = Vec::new();
        for id in [Some(&r.image), r.mask.as_ref(), r.background.as_ref()] {
            inputs.push(match id {
                Some(id) => match ctx.input(id).await {
                    Ok(b) => Some(b),
                    Err(outcome) => return outcome,
                },
                None => None,
            });
        }
        let [image, mask, background] = <[_; 3]>::try_from(inputs).expect("three inputs");
        let cache = ctx.services.cache.clone();
        let progress = ctx.progress();
        let cancel = ctx.cancel.clone();
        let data_dir = ctx.services.data_dir.clone();
        let mirror = ctx.services.model_mirror.clone();
        let work = tokio::task::spawn_blocking(move || -> Result<Output, EngineError> {
            let decode = |b: &[u8]| {
                media::decode_limited(b, MAX_INPUT_PIXELS)
                    .map_err(|e| EngineError::InvalidInput(e.message))
            };
            let picture = decode(&image.unwrap_or_default())?.to_rgb8();
            let fetch = |e: &registry::ModelEntry| {
                super::fetch_file(&data_dir, e, &mirror, &progress, &cancel)
            };
            let grow_default = match r.operation {
                // Erasing by inpainting grows the mask more: an object's edge and shadow
                // go with it.
                EditOperation::Erase
                    if entry
                        .as_ref()
                        .is_some_and(|e| !e.capabilities.contains(&Capability::Erase)) =>
                {
                    engine::ERASE_GROW
                }
                _ => 4,
            };
            let options = MaskOptions {
                grow: r.grow.unwrap_or(grow_default),
                blur: r.blur.unwrap_or(4.0) as f32,
            };
            let matte = match &matte_entry {
                Some(e) => {
                    let m = cached(&cache, &fetch(e)?, Matter::load)?;
                    cancel.check()?;
                    Some(m.matte(&picture)?)
                }
                None => None,
            };
            let model_id = entry
                .as_ref()
                .or(matte_entry.as_ref())
                .map(|e| e.id.clone());
            let seed = r.seed.unwrap_or(0) as u64;
            let mut prompt = r.prompt.clone().unwrap_or_default();
            // An output with transparency (a cut-out) or without.
            let mut cut_out = None;
            let out = match (r.operation, &entry) {
                (EditOperation::RemoveBackground, _) => {
                    cut_out = Some(matte::cut_out(&picture, matte.as_ref().expect("matte")));
                    picture.clone()
                }
                (EditOperation::ReplaceBackground, None) => {
                    let bg = decode(&background.unwrap_or_default())?.to_rgb8();
                    let bg = cover(&bg, picture.width(), picture.height());
                    matte::composite(&picture, matte.as_ref().expect("matte"), &bg)
                }
                (EditOperation::Erase, Some(e)) if e.capabilities.contains(&Capability::Erase) => {
                    let eraser = cached(&cache, &fetch(e)?, Eraser::load)?;
                    cancel.check()?;
                    let m = decode(&mask.unwrap_or_default())?.to_luma8();
                    let m = engine::mask::grow(&engine::mask::hard(&m), options.grow);
                    eraser.erase(&picture, &m)?
                }
                (op, Some(e)) => {
                    let model = crate::tasks::image::load_model(e, &cache)?;
                    cancel.check()?;
                    let style = r.style.as_deref().and_then(|s| {
                        crate::persistence::registry::styles()
                            .into_iter()
                            .find(|x| x.id == s)
                    });
                    let (p, negative_prompt) = match (style, op) {
                        (Some(style), _) => style.apply(&prompt, r.negative_prompt.as_deref()),
                        // Erasing asks for the background, and away from anything standing
                        // on it.
                        (None, EditOperation::Erase) => (
                            String::new(),
                            Some(
                                r.negative_prompt
                                    .clone()
                                    .unwrap_or_else(|| engine::ERASE_NEGATIVE.into()),
                            ),
                        ),
                        (None, _) => (prompt.clone(), r.negative_prompt.clone()),
                    };
                    prompt = p;
                    let request = GenerateRequest {
                        prompt: prompt.clone(),
                        negative_prompt,
                        steps: r.steps.map(|s| s as usize),
                        guidance: r.cfg_scale,
                        seed,
                        strength: r.strength.unwrap_or(match op {
                            EditOperation::Restyle => 0.6,
                            _ => 1.0,
                        }),
                        image_guidance: r.image_guidance,
                        ..Default::default()
                    };
                    let mut on_step = step_reporter(&progress);
                    match op {
                        EditOperation::Inpaint | EditOperation::Erase => {
                            let mask = decode(&mask.unwrap_or_default())?.to_luma8();
                            engine::inpaint(
                                &model,
                                &request,
                                &picture,
                                &mask,
                                options,
                                &cancel,
                                &mut on_step,
                            )?
                        }
                        EditOperation::ReplaceBackground => {
                            // Paint where the matte is background, then lay the subject
                            // over the painting by its soft matte.
                            let alpha = matte.as_ref().expect("matte");
                            let behind =
                                image::GrayImage::from_fn(alpha.width(), alpha.height(), |x, y| {
                                    image::Luma([255 - alpha.get_pixel(x, y).0[0]])
                                });
                            if engine::mask::is_empty(&engine::mask::hard(&behind)) {
                                return Err(EngineError::InvalidInput(
                                    "image: the matte found no background to replace".into(),
                                ));
                            }
                            let options = MaskOptions { grow: 0, ..options };
                            let painted = engine::inpaint(
                                &model,
                                &request,
                                &picture,
                                &behind,
                                options,
                                &cancel,
                                &mut on_step,
                            )?;
                            matte::composite(&picture, alpha, &painted)
                        }
                        EditOperation::Outpaint => {
                            let e = extension(&r, picture.width(), picture.height())
                                .map_err(|e| EngineError::InvalidInput(e.message))?;
                            engine::outpaint(
                                &model,
                                &request,
                                &picture,
                                e,
                                options,
                                &cancel,
                                &mut on_step,
                            )?
                        }
                        EditOperation::Restyle
                        | EditOperation::Instruct
                        | EditOperation::RemoveBackground => {
                            engine::whole(&model, &request, &picture, &cancel, &mut on_step)?
                        }
                    }
                }
                (op, None) => {
                    return Err(EngineError::InvalidInput(format!(
                        "{} needs a model",
                        op.name()
                    )));
                }
            };
            let parameters = format!(
                "{prompt}\nEdit: {}, Model: {}, Seed: {seed}",
                r.operation.name(),
                model_id.as_deref().unwrap_or("none"),
            );
            let (png, thumbnail) = match &cut_out {
                Some(c) => (
                    krya_engine::image_io::png_bytes_rgba(c, &parameters)?,
                    media::thumbnail_webp(c, 384).ok(),
                ),
                None => (
                    krya_engine::image_io::png_bytes(&out, &parameters)?,
                    media::thumbnail_webp(&out, 384).ok(),
                ),
            };
            Ok(Output {
                kind: "image",
                mime: "image/png",
                ext: "png",
                body: Body::Bytes(png),
                thumbnail,
                tiles: None,
                width: Some(out.width()),
                height: Some(out.height()),
                duration_ms: None,
                parent_id: Some(r.image.clone()),
                meta: serde_json::json!({"seed": r.seed, "model": model_id}),
            })
        });
        super::engine_outcome(work.await, "the edit")
    }
}
