//! The Stable Diffusion family (1.x, 2.x, XL, Turbo, LCM; inpainting UNets) as one
//! config-driven pipeline, following diffusers' `StableDiffusionPipeline`,
//! `StableDiffusionImg2ImgPipeline`, `StableDiffusionInpaintPipeline` and
//! `StableDiffusionXLPipeline` step for step, including the order in which each image's
//! generator is drawn from, so a seed gives diffusers' image.
//!
//! Layout: `tokenizer`, `clip`, `unet`, `vae` (and `vae_tiny`, TAESD) are the components
//! (`blocks` their shared layers); `prompt_weighting` parses A1111 emphasis; `stream` is the
//! live canvas's per-session renderer; this file holds the model bundle and the denoising
//! loop with its step callback and cancel token.

pub mod blocks;
pub mod clip;
pub mod prompt_weighting;
pub mod stream;
pub mod tiles;
pub mod tokenizer;
pub mod unet;
pub mod vae;
pub mod vae_tiny;

use candle_core::{DType, Device, IndexOp, Tensor};
use image::{GrayImage, RgbImage};

use crate::cancel::CancelToken;
use crate::image_io::{self, latent_preview};
use crate::rng::BatchRng;
use crate::schedulers::{SchedulerConfig, SchedulerKind};
use crate::{EngineError, Result, invalid};

use clip::ClipTextModel;
use tokenizer::ClipTokenizer;
use unet::{AddedCond, UNet2DConditionModel};
use vae::AutoencoderKL;

/// Generation defaults a model suggests (turbo: 1 step without guidance).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Defaults {
    pub steps: usize,
    pub guidance: f64,
    pub width: usize,
    pub height: usize,
}

/// A loaded Stable Diffusion model: every component, built from the model's own configs.
#[derive(Clone)]
pub struct StableDiffusion {
    pub name: String,
    pub tokenizers: std::sync::Arc<Vec<ClipTokenizer>>,
    pub text_encoders: Vec<ClipTextModel>,
    pub unet: UNet2DConditionModel,
    pub vae: std::sync::Arc<AutoencoderKL>,
    pub scheduler_config: SchedulerConfig,
    /// SDXL: an absent negative prompt gives zero embeddings (model_index.json).
    pub force_zeros_for_empty_prompt: bool,
    pub defaults: Defaults,
    /// Learned parameters loaded (all components), for memory accounting.
    pub parameter_count: u64,
    /// A tiny autoencoder (TAESD) for step previews; without one, previews are a fixed
    /// linear map of the latents.
    pub preview_vae: Option<std::sync::Arc<vae_tiny::AutoencoderTiny>>,
    pub device: Device,
    pub dtype: DType,
}

/// What to generate. `None` fields take the model's defaults.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub steps: Option<usize>,
    pub guidance: Option<f64>,
    pub scheduler: Option<SchedulerKind>,
    /// Image `i` of the batch uses seed `seed + i`.
    pub seed: u64,
    pub batch: usize,
    pub init_image: Option<RgbImage>,
    pub strength: f64,
    pub mask: Option<GrayImage>,
    /// Initial latent noise `[batch, latent_channels, h/f, w/f]` instead of drawing it.
    pub init_noise: Option<Tensor>,
    /// Number of final text-encoder layers to skip (A1111's "clip skip" minus one).
    pub clip_skip: usize,
    /// Emit a latent preview every this many steps (0: none).
    pub preview_every: usize,
    /// Instruction-editing models (InstructPix2Pix): how strongly the output keeps to the
    /// init image (diffusers' `image_guidance_scale`; `None`: 1.5).
    pub image_guidance: Option<f64>,
}

impl Default for GenerateRequest {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: None,
            width: None,
            height: None,
            steps: None,
            guidance: None,
            scheduler: None,
            seed: 0,
            batch: 1,
            init_image: None,
            strength: 0.8,
            mask: None,
            init_noise: None,
            clip_skip: 0,
            preview_every: 1,
            image_guidance: None,
        }
    }
}

/// Reported after each denoising step.
pub struct StepProgress<'a> {
    pub step: usize,
    pub total: usize,
    /// A cheap RGB rendering of the current clean-latent estimate (first image).
    pub preview: Option<&'a RgbImage>,
}

/// The images and the settings that made them (for the PNG `parameters` chunk).
pub struct Generated {
    pub images: Vec<RgbImage>,
    pub seeds: Vec<u64>,
    pub steps: usize,
    pub guidance: f64,
    pub scheduler: SchedulerKind,
    pub width: usize,
    pub height: usize,
}

impl Generated {
    /// The A1111 `parameters` text for image `index` of this result (prompt, negative
    /// prompt, then `Steps: .., Sampler: .., CFG scale: .., Seed: .., Size: .., Model: ..`).
    pub fn parameters_text(&self, req: &GenerateRequest, model: &str, index: usize) -> String {
        let mut settings = vec![
            ("Steps", self.steps.to_string()),
            ("Sampler", self.scheduler.a1111_name().to_string()),
            ("CFG scale", format!("{}", self.guidance)),
            ("Seed", self.seeds[index].to_string()),
            ("Size", format!("{}x{}", self.width, self.height)),
            ("Model", model.to_string()),
        ];
        if req.init_image.is_some() {
            settings.push(("Denoising strength", format!("{}", req.strength)));
        }
        if req.clip_skip > 0 {
            settings.push(("Clip skip", (req.clip_skip + 1).to_string()));
        }
        crate::image_io::a1111_parameters(&req.prompt, req.negative_prompt.as_deref(), &settings)
    }
}

/// A prompt's conditioning for the UNet (one image; unconditional half first when
/// guidance is on). Computing it runs the text encoders: a stream of frames with the same
/// prompt computes it once (`embed_prompt`) and passes it to every `generate_with`.
#[derive(Clone)]
pub struct PromptEmbeds {
    context: Tensor,
    pooled: Option<Tensor>,
    /// Made for classifier-free guidance (negative and positive halves).
    cfg: bool,
}

/// What `generate_with` may reuse or swap.
#[derive(Default, Clone, Copy)]
pub struct GenerateOptions<'a> {
    /// Conditioning from `embed_prompt` for this request's prompt, negative prompt, clip
    /// skip and guidance, instead of encoding them again.
    pub embeds: Option<&'a PromptEmbeds>,
    /// Encode and decode with this tiny autoencoder (TAESD) instead of the model's VAE, as
    /// diffusers does with `pipe.vae = AutoencoderTiny(...)`: its encoder is deterministic
    /// (no posterior sample is drawn) and its latents need no scaling.
    pub tiny_vae: Option<&'a vae_tiny::AutoencoderTiny>,
    /// Denoise a large latent as overlapping tiles (MultiDiffusion, `tiles`); a latent no
    /// larger than one tile runs as without.
    pub tiles: Option<tiles::LatentTiles>,
}

impl StableDiffusion {
    pub fn vae_scale_factor(&self) -> usize {
        self.vae.config.scale_factor()
    }

    pub fn latent_channels(&self) -> usize {
        self.vae.config.latent_channels
    }

    pub fn is_inpainting_unet(&self) -> bool {
        self.unet.config.in_channels == 2 * self.latent_channels() + 1
    }

    /// An instruction-editing UNet (InstructPix2Pix): the noisy latents and the image's
    /// latents side by side.
    pub fn is_instruct_unet(&self) -> bool {
        self.unet.config.in_channels == 2 * self.latent_channels()
    }

    /// Token ids and per-token weights of one prompt for tokenizer `k`.
    fn tokenize(&self, k: usize, prompt: &str) -> (Vec<u32>, Vec<f32>) {
        let tok = &self.tokenizers[k];
        let pieces = prompt_weighting::parse(prompt);
        let mut ids = Vec::new();
        let mut weights = Vec::new();
        for p in &pieces {
            let t = tok.encode_words(&p.text);
            weights.extend(std::iter::repeat_n(p.weight as f32, t.len()));
            ids.extend(t);
        }
        let padded = tok.pad(ids);
        weights.truncate(tok.max_len - 2);
        let mut w = vec![1.0f32];
        w.extend(weights);
        w.resize(tok.max_len, 1.0);
        (padded, w)
    }

    /// Encodes prompts with every text encoder: `(context [n, seq, dim], pooled [n, dim])`.
    pub(crate) fn encode_prompts(
        &self,
        prompts: &[&str],
        clip_skip: usize,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let sdxl_style = self.unet.needs_added_cond();
        let mut contexts = Vec::new();
        let mut pooled = None;
        for (k, enc) in self.text_encoders.iter().enumerate() {
            let (ids, weights): (Vec<_>, Vec<_>) =
                prompts.iter().map(|p| self.tokenize(k, p)).unzip();
            let out = enc.forward(&ids, &self.device)?;
            let n = out.hidden_states.len();
            let hidden = if sdxl_style {
                // SDXL uses the penultimate layer (before the final layer norm).
                let idx = n.checked_sub(2 + clip_skip).ok_or_else(|| {
                    invalid!("clip_skip {clip_skip} is larger than the text encoder")
                })?;
                out.hidden_states[idx].clone()
            } else if clip_skip > 0 {
                let idx = n.checked_sub(1 + clip_skip).ok_or_else(|| {
                    invalid!("clip_skip {clip_skip} is larger than the text encoder")
                })?;
                enc.final_norm(&out.hidden_states[idx])?
            } else {
                out.last_hidden_state
            };
            let hidden = if weights.iter().flatten().any(|&w| w != 1.0) {
                let rows = (0..prompts.len())
                    .map(|i| prompt_weighting::apply(&hidden.i(i..i + 1)?, &weights[i]))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::cat(&rows, 0)?
            } else {
                hidden
            };
            contexts.push(hidden);
            pooled = Some(out.pooled);
        }
        let context = Tensor::cat(&contexts, 2)?;
        Ok((context, if sdxl_style { pooled } else { None }))
    }

    /// Whether a request with this guidance runs classifier-free guidance (LCM models take
    /// guidance as an embedding instead).
    fn uses_cfg(&self, guidance: f64) -> bool {
        guidance > 1.0 && self.unet.config.time_cond_proj_dim.is_none()
    }

    /// The request's prompt conditioning, for one image; see `PromptEmbeds`.
    pub fn embed_prompt(&self, req: &GenerateRequest) -> Result<PromptEmbeds> {
        let (.., guidance, _) = self.resolve(req)?;
        self.conditioning(req, self.uses_cfg(guidance))
    }

    fn conditioning(&self, req: &GenerateRequest, cfg: bool) -> Result<PromptEmbeds> {
        let (pos, pos_pooled) = self.encode_prompts(&[&req.prompt], req.clip_skip)?;
        if !cfg {
            return Ok(PromptEmbeds {
                context: pos,
                pooled: pos_pooled,
                cfg,
            });
        }
        let (neg, neg_pooled) =
            if req.negative_prompt.is_none() && self.force_zeros_for_empty_prompt {
                (
                    pos.zeros_like()?,
                    pos_pooled.as_ref().map(|p| p.zeros_like()).transpose()?,
                )
            } else {
                self.encode_prompts(
                    &[req.negative_prompt.as_deref().unwrap_or("")],
                    req.clip_skip,
                )?
            };
        let pooled = match (neg_pooled, pos_pooled) {
            (Some(n), Some(p)) => Some(Tensor::cat(&[n, p], 0)?),
            _ => None,
        };
        Ok(PromptEmbeds {
            context: Tensor::cat(&[neg, pos], 0)?,
            pooled,
            cfg,
        })
    }

    /// One image's embeds repeated for a batch of `b`: `[neg × b, pos × b]` with guidance.
    fn batched(e: &PromptEmbeds, b: usize) -> Result<(Tensor, Option<Tensor>)> {
        let halves = if e.cfg { 2 } else { 1 };
        let repeat = |t: &Tensor| -> candle_core::Result<Tensor> {
            let parts = (0..halves)
                .map(|h| Tensor::cat(&vec![t.i(h..h + 1)?; b], 0))
                .collect::<candle_core::Result<Vec<_>>>()?;
            Tensor::cat(&parts, 0)
        };
        Ok((
            repeat(&e.context)?,
            e.pooled.as_ref().map(repeat).transpose()?,
        ))
    }

    /// Posterior sample of the VAE for one image `[1, 3, h, w]`, drawn from image `i`'s generator.
    fn encode_sample(&self, image: &Tensor, rng: &mut BatchRng, i: usize) -> Result<Tensor> {
        let (mean, std) = self.vae.encode(image)?;
        let eps = rng
            .randn_one(i, &mean.dims()[1..], &self.device)?
            .unsqueeze(0)?
            .to_dtype(mean.dtype())?;
        self.vae.scale_latents(&(mean + (std * eps)?)?)
    }

    /// Checks a request against this model and fills in defaults.
    pub fn resolve(
        &self,
        req: &GenerateRequest,
    ) -> Result<(usize, usize, usize, f64, SchedulerKind)> {
        let f = self.vae_scale_factor();
        let (iw, ih) = req
            .init_image
            .as_ref()
            .map(|i| (i.width() as usize, i.height() as usize))
            .unzip();
        let width = req.width.or(iw).unwrap_or(self.defaults.width);
        let height = req.height.or(ih).unwrap_or(self.defaults.height);
        if width == 0 || height == 0 || !width.is_multiple_of(f) || !height.is_multiple_of(f) {
            return Err(invalid!(
                "width and height must be positive multiples of {f} for this model (got {width}x{height})"
            ));
        }
        if width * height > 4096 * 4096 {
            return Err(invalid!(
                "{width}x{height} is larger than the 4096x4096 this engine allows"
            ));
        }
        if !(1..=64).contains(&req.batch) {
            return Err(invalid!(
                "batch must be between 1 and 64 (got {})",
                req.batch
            ));
        }
        if req.init_image.is_some() && !(0.0..=1.0).contains(&req.strength) {
            return Err(invalid!(
                "strength must be between 0 and 1 (got {})",
                req.strength
            ));
        }
        if req.mask.is_some() && req.init_image.is_none() {
            return Err(invalid!("a mask needs an init image to inpaint"));
        }
        if let (Some(mask), Some(img)) = (&req.mask, &req.init_image)
            && mask.dimensions() != img.dimensions()
        {
            let ((mw, mh), (iw, ih)) = (mask.dimensions(), img.dimensions());
            return Err(invalid!(
                "the mask is {mw}x{mh} but the image is {iw}x{ih}; give a mask of the same size"
            ));
        }
        if self.is_inpainting_unet() && req.mask.is_none() {
            return Err(invalid!(
                "this is an inpainting model: give an init image and a mask"
            ));
        }
        if self.is_instruct_unet() && self.unet.needs_added_cond() {
            return Err(invalid!(
                "SDXL instruction editing is not supported yet (its pooled and size conditioning)"
            ));
        }
        if self.is_instruct_unet() && (req.init_image.is_none() || req.mask.is_some()) {
            return Err(invalid!(
                "this is an instruction-editing model (InstructPix2Pix): give the image to edit, and no mask"
            ));
        }
        if let Some(g) = req.image_guidance
            && !(g.is_finite() && g >= 0.0)
        {
            return Err(invalid!("image guidance must be a number >= 0 (got {g})"));
        }
        let steps = req.steps.unwrap_or(self.defaults.steps);
        let guidance = req.guidance.unwrap_or(self.defaults.guidance);
        if !guidance.is_finite() || guidance < 0.0 {
            return Err(invalid!("guidance must be a number >= 0 (got {guidance})"));
        }
        let kind = match req.scheduler {
            Some(k) => k,
            None => SchedulerKind::from_config(&self.scheduler_config)?,
        };
        Ok((width, height, steps, guidance, kind))
    }

    /// Runs text-to-image, image-to-image or inpainting, depending on the request.
    pub fn generate(
        &self,
        req: &GenerateRequest,
        on_step: &mut dyn FnMut(StepProgress),
        cancel: &CancelToken,
    ) -> Result<Generated> {
        self.generate_with(req, GenerateOptions::default(), on_step, cancel)
    }

    /// `generate`, reusing prompt embeds and/or with a tiny autoencoder (see
    /// `GenerateOptions`).
    pub fn generate_with(
        &self,
        req: &GenerateRequest,
        opts: GenerateOptions,
        on_step: &mut dyn FnMut(StepProgress),
        cancel: &CancelToken,
    ) -> Result<Generated> {
        let (width, height, steps, guidance, kind) = self.resolve(req)?;
        if self.is_instruct_unet() {
            return self.instruct(req, (width, height, steps, guidance, kind), on_step, cancel);
        }
        if let Some(t) = opts.tiny_vae {
            if req.mask.is_some() {
                return Err(invalid!(
                    "inpainting needs the model's own VAE, not the tiny autoencoder"
                ));
            }
            let (tc, tf) = (t.config.latent_channels, t.config.scale_factor());
            if tc != self.latent_channels() || tf != self.vae_scale_factor() {
                return Err(invalid!(
                    "the tiny autoencoder ({tc} latent channels, {tf}x) does not fit this model ({} channels, {}x)",
                    self.latent_channels(),
                    self.vae_scale_factor()
                ));
            }
        }
        let b = req.batch;
        let f = self.vae_scale_factor();
        let lc = self.latent_channels();
        let (lh, lw) = (height / f, width / f);
        let latent_shape = [lc, lh, lw];
        let seeds: Vec<u64> = (0..b as u64).map(|i| req.seed.wrapping_add(i)).collect();
        let mut rng = BatchRng::new(&seeds);
        let dev = &self.device;

        let cond_dim = self.unet.config.time_cond_proj_dim;
        let cfg = self.uses_cfg(guidance);
        let made;
        let embeds = match opts.embeds {
            Some(e) if e.cfg == cfg => e,
            Some(_) => {
                return Err(invalid!(
                    "the prompt embeds were made for another guidance setting"
                ));
            }
            None => {
                made = self.conditioning(req, cfg)?;
                &made
            }
        };
        let (context, pooled) = Self::batched(embeds, b)?;
        let timestep_cond = match cond_dim {
            Some(d) => {
                let w = Tensor::full((guidance - 1.0) as f32 * 1000.0, b, dev)?;
                Some(unet::timestep_embedding(&w, d, false, 1.0)?.to_dtype(self.dtype)?)
            }
            None => None,
        };
        // SDXL's micro-conditioning: the original size, the crop's top-left corner and the
        // target size (a tile is a crop of the whole at its place).
        let time_ids_for =
            |top: usize, left: usize, h: usize, w: usize| -> Result<Option<Tensor>> {
                if !self.unet.needs_added_cond() {
                    return Ok(None);
                }
                let ids = [
                    height as f32,
                    width as f32,
                    top as f32,
                    left as f32,
                    h as f32,
                    w as f32,
                ];
                let n = if cfg { 2 * b } else { b };
                Ok(Some(
                    Tensor::from_slice(&ids, (1, 6), dev)?
                        .repeat((n, 1))?
                        .to_dtype(self.dtype)?,
                ))
            };
        let time_ids = time_ids_for(0, 0, height, width)?;
        let tiling = match opts.tiles {
            Some(t) => tiles::layout(lh, lw, t, self.dtype, dev)?,
            None => Vec::new(),
        };

        // LCM models do image-to-image in their schedule (diffusers'
        // LatentConsistencyModelImg2ImgPipeline); others skip the schedule's first steps.
        let scheduled = kind.schedules_strength() && req.init_image.is_some() && req.mask.is_none();
        let mut scheduler = if scheduled {
            kind.build_with_strength(&self.scheduler_config, steps, req.strength)?
        } else {
            kind.build(&self.scheduler_config, steps)?
        };
        let all_timesteps = scheduler.timesteps().to_vec();
        let n = all_timesteps.len();
        // Image-to-image and inpainting start part-way through the schedule.
        let t_start = if req.init_image.is_some() && !scheduled {
            let init = ((steps as f64 * req.strength) as usize).min(steps);
            let start = steps.saturating_sub(init);
            if start >= n {
                return Err(invalid!(
                    "strength {} with {steps} steps leaves no denoising step; raise one of them",
                    req.strength
                ));
            }
            start
        } else {
            0
        };

        let draw_noise = |rng: &mut BatchRng| -> Result<Tensor> {
            match &req.init_noise {
                Some(t) => {
                    let want = [b, lc, lh, lw];
                    if t.dims() != want {
                        return Err(invalid!(
                            "init noise has shape {:?}; this request needs {want:?}",
                            t.dims()
                        ));
                    }
                    Ok(t.to_device(dev)?.to_dtype(self.dtype)?)
                }
                None => Ok(rng.randn(&latent_shape, dev)?.to_dtype(self.dtype)?),
            }
        };

        let init_image = req
            .init_image
            .as_ref()
            .map(|img| image_io::to_tensor(img, width, height, dev))
            .transpose()?
            .map(|t| t.to_dtype(self.dtype))
            .transpose()?;
        let mut inpaint: Option<Inpaint> = None;
        let mut latents = match (&init_image, &req.mask) {
            (None, _) => (draw_noise(&mut rng)? * scheduler.init_noise_sigma())?,
            (Some(image), None) => {
                // Img2img: the image is repeated to the batch and each copy encoded with its
                // own generator (the tiny autoencoder draws nothing).
                let init = match opts.tiny_vae {
                    Some(t) => t.encode(image)?.repeat((b, 1, 1, 1))?,
                    None => {
                        let init = (0..b)
                            .map(|i| self.encode_sample(image, &mut rng, i))
                            .collect::<Result<Vec<_>>>()?;
                        Tensor::cat(&init, 0)?
                    }
                };
                let noise = draw_noise(&mut rng)?;
                scheduler.add_noise(&init, &noise, t_start)?
            }
            (Some(image), Some(mask)) => {
                let strength_max = req.strength == 1.0;
                let four_channel = !self.is_inpainting_unet();
                let mask_full =
                    image_io::mask_to_tensor(mask, width, height, dev)?.to_dtype(self.dtype)?;
                // The inpainting pipeline encodes the single init image with the first generator only.
                let image_latents = if four_channel || !strength_max {
                    Some(
                        self.encode_sample(image, &mut rng, 0)?
                            .repeat((b, 1, 1, 1))?,
                    )
                } else {
                    None
                };
                let noise = draw_noise(&mut rng)?;
                let latents = if strength_max {
                    (&noise * scheduler.init_noise_sigma())?
                } else {
                    scheduler.add_noise(image_latents.as_ref().unwrap(), &noise, t_start)?
                };
                let mask_lat = nearest_downsample(&mask_full, lh, lw)?.repeat((b, 1, 1, 1))?;
                let unet_extra = if four_channel {
                    // diffusers still encodes the masked image here; only its draw from the
                    // first generator matters for what follows, so draw without encoding.
                    rng.randn_one(0, &latent_shape, dev)?;
                    None
                } else {
                    let keep = mask_full.lt(0.5)?.to_dtype(self.dtype)?;
                    let masked = image.broadcast_mul(&keep)?;
                    let masked_latents = self
                        .encode_sample(&masked, &mut rng, 0)?
                        .repeat((b, 1, 1, 1))?;
                    // Mask and masked-image channels the UNet sees at every step.
                    let extra = Tensor::cat(&[&mask_lat, &masked_latents], 1)?;
                    Some(if cfg {
                        Tensor::cat(&[&extra, &extra], 0)?
                    } else {
                        extra
                    })
                };
                let keep_original = (1.0 - &mask_lat)?;
                inpaint = Some(Inpaint {
                    mask: mask_lat,
                    keep_original,
                    unet_extra,
                    image_latents,
                    noise,
                });
                latents
            }
        };

        let total = n - t_start;
        for (k, i) in (t_start..n).enumerate() {
            cancel.check()?;
            let t = all_timesteps[i];
            let input = if cfg {
                Tensor::cat(&[&latents, &latents], 0)?
            } else {
                latents.clone()
            };
            let mut input = scheduler.scale_model_input(&input, i)?;
            if let Some(extra) = inpaint.as_ref().and_then(|ip| ip.unet_extra.as_ref()) {
                input = Tensor::cat(&[&input, extra], 1)?;
            }
            let out = if tiling.is_empty() {
                self.unet.forward(
                    &input,
                    t,
                    &context,
                    timestep_cond.as_ref(),
                    added_cond(pooled.as_ref(), time_ids.as_ref()),
                )?
            } else {
                tiles::blend(&tiling, &input, &mut |crop, tile| {
                    let ids = time_ids_for(tile.y * f, tile.x * f, tile.h * f, tile.w * f)?;
                    Ok(self.unet.forward(
                        crop,
                        t,
                        &context,
                        timestep_cond.as_ref(),
                        added_cond(pooled.as_ref(), ids.as_ref()),
                    )?)
                })?
            };
            let noise_pred = if cfg {
                let (u, c) = (out.i(0..b)?, out.i(b..2 * b)?);
                (&u + ((c - &u)? * guidance)?)?
            } else {
                out
            };
            let step = scheduler.step(&noise_pred, i, &latents, &mut rng)?;
            latents = step.prev_sample;
            if let Some(ip) = &inpaint
                && let (Some(orig), false) = (&ip.image_latents, self.is_inpainting_unet())
            {
                // Ordinary models inpaint by pasting the (re-noised) original outside the mask.
                let proper = if i + 1 < n {
                    scheduler.add_noise(orig, &ip.noise, i + 1)?
                } else {
                    orig.clone()
                };
                latents = (ip.keep_original.broadcast_mul(&proper)?
                    + ip.mask.broadcast_mul(&latents)?)?;
            }
            self.report_step(req, k + 1, total, &step.denoised, on_step)?;
        }
        cancel.check()?;

        let images = match opts.tiny_vae {
            Some(t) => (0..b)
                .map(|i| image_io::from_tensor(&t.decode(&latents.i(i..i + 1)?)?.i(0)?))
                .collect::<Result<Vec<_>>>()?,
            None => self.decode(&latents)?,
        };
        Ok(Generated {
            images,
            seeds,
            steps,
            guidance,
            scheduler: kind,
            width,
            height,
        })
    }

    /// InstructPix2Pix, as diffusers' `StableDiffusionInstructPix2PixPipeline`: denoising
    /// from noise over the whole schedule, the UNet seeing the image's latents (the VAE
    /// posterior's mode, not scaled) beside the noisy ones. With guidance (`guidance > 1`
    /// and image guidance ≥ 1) each step runs the prompt with the image, the negative prompt
    /// with the image, and the negative prompt with no image (zeros), and mixes them as
    /// `uncond + g·(text − image) + ig·(image − uncond)`.
    fn instruct(
        &self,
        req: &GenerateRequest,
        resolved: (usize, usize, usize, f64, SchedulerKind),
        on_step: &mut dyn FnMut(StepProgress),
        cancel: &CancelToken,
    ) -> Result<Generated> {
        let (width, height, steps, guidance, kind) = resolved;
        let image_guidance = req.image_guidance.unwrap_or(1.5);
        let cfg = self.uses_cfg(guidance) && image_guidance >= 1.0;
        let b = req.batch;
        let f = self.vae_scale_factor();
        let dev = &self.device;
        let latent_shape = [self.latent_channels(), height / f, width / f];
        let seeds: Vec<u64> = (0..b as u64).map(|i| req.seed.wrapping_add(i)).collect();
        let mut rng = BatchRng::new(&seeds);
        let embeds = self.conditioning(req, cfg)?;
        let (context, _) = Self::batched(&embeds, b)?;
        let image = req.init_image.as_ref().expect("checked in resolve");
        let image = image_io::to_tensor(image, width, height, dev)?.to_dtype(self.dtype)?;
        let image_latents = self.vae.encode(&image)?.0.repeat((b, 1, 1, 1))?;
        // [prompt, negative, negative] and [image, image, zeros], a batch each.
        let (context, image_latents) = if cfg {
            let (neg, pos) = (context.i(0..b)?, context.i(b..2 * b)?);
            (
                Tensor::cat(&[&pos, &neg, &neg], 0)?,
                Tensor::cat(
                    &[&image_latents, &image_latents, &image_latents.zeros_like()?],
                    0,
                )?,
            )
        } else {
            (context, image_latents)
        };
        let mut scheduler = kind.build(&self.scheduler_config, steps)?;
        let timesteps = scheduler.timesteps().to_vec();
        let mut latents = match &req.init_noise {
            Some(t) => t.to_device(dev)?.to_dtype(self.dtype)?,
            None => rng.randn(&latent_shape, dev)?.to_dtype(self.dtype)?,
        };
        latents = (latents * scheduler.init_noise_sigma())?;
        let total = timesteps.len();
        for (i, &t) in timesteps.iter().enumerate() {
            cancel.check()?;
            let input = if cfg {
                Tensor::cat(&[&latents, &latents, &latents], 0)?
            } else {
                latents.clone()
            };
            let input = scheduler.scale_model_input(&input, i)?;
            let input = Tensor::cat(&[&input, &image_latents], 1)?;
            let out = self.unet.forward(&input, t, &context, None, None)?;
            let noise_pred = if cfg {
                let (text, img, uncond) = (out.i(0..b)?, out.i(b..2 * b)?, out.i(2 * b..3 * b)?);
                ((&uncond + ((text - &img)? * guidance)?)? + ((img - &uncond)? * image_guidance)?)?
            } else {
                out
            };
            let step = scheduler.step(&noise_pred, i, &latents, &mut rng)?;
            latents = step.prev_sample;
            self.report_step(req, i + 1, total, &step.denoised, on_step)?;
        }
        cancel.check()?;
        Ok(Generated {
            images: self.decode(&latents)?,
            seeds,
            steps,
            guidance,
            scheduler: kind,
            width,
            height,
        })
    }

    /// Reports step `step` of `total`, with a preview of the first image's clean-latent
    /// estimate every `req.preview_every` steps and at the last.
    fn report_step(
        &self,
        req: &GenerateRequest,
        step: usize,
        total: usize,
        denoised: &Tensor,
        on_step: &mut dyn FnMut(StepProgress),
    ) -> Result<()> {
        let every = req.preview_every;
        let preview = if every > 0 && (step.is_multiple_of(every) || step == total) {
            Some(self.preview(&denoised.i(0..1)?)?)
        } else {
            None
        };
        on_step(StepProgress {
            step,
            total,
            preview: preview.as_ref(),
        });
        Ok(())
    }

    /// A preview of one image's clean-latent estimate `[1, c, h, w]`: TAESD-decoded when
    /// the model has a preview VAE with matching latent channels.
    pub fn preview(&self, latent: &Tensor) -> Result<RgbImage> {
        match &self.preview_vae {
            Some(t) if t.config.latent_channels == self.latent_channels() => {
                image_io::from_tensor(&t.decode(latent)?.i(0)?)
            }
            _ => latent_preview(&latent.i(0)?),
        }
    }

    /// Decodes UNet-space latents to 8-bit images, as diffusers' `postprocess` ("pil").
    pub fn decode(&self, latents: &Tensor) -> Result<Vec<RgbImage>> {
        let b = latents.dim(0)?;
        let mut images = Vec::with_capacity(b);
        for i in 0..b {
            let z = self.vae.unscale_latents(&latents.i(i..i + 1)?)?;
            let x = self.vae.decode(&z)?;
            images.push(image_io::from_tensor(&x.i(0)?)?);
        }
        Ok(images)
    }
}

/// SDXL's added conditioning, when the model takes it.
fn added_cond<'a>(pooled: Option<&'a Tensor>, ids: Option<&'a Tensor>) -> Option<AddedCond<'a>> {
    match (pooled, ids) {
        (Some(p), Some(ids)) => Some(AddedCond {
            text_embeds: p,
            time_ids: ids,
        }),
        _ => None,
    }
}

struct Inpaint {
    /// 1 where the model paints, at latent size `[b, 1, h/f, w/f]`.
    mask: Tensor,
    /// `1 - mask`, where the original is pasted back.
    keep_original: Tensor,
    /// Inpainting UNets: mask and masked-image latents to append to the input channels
    /// (already doubled for guidance), built once for all steps.
    unet_extra: Option<Tensor>,
    /// The clean init latents (ordinary 4-channel models paste them back outside the mask).
    image_latents: Option<Tensor>,
    noise: Tensor,
}

/// torch's `interpolate(mode="nearest")` to a smaller size: source index `floor(i * in / out)`.
fn nearest_downsample(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, _, ih, iw) = x.dims4()?;
    let rows: Vec<u32> = (0..h).map(|i| (i * ih / h) as u32).collect();
    let cols: Vec<u32> = (0..w).map(|j| (j * iw / w) as u32).collect();
    let dev = x.device();
    let x = x.index_select(&Tensor::from_vec(rows, h, dev)?, 2)?;
    Ok(x.index_select(&Tensor::from_vec(cols, w, dev)?, 3)?)
}

impl From<image::ImageError> for EngineError {
    fn from(e: image::ImageError) -> Self {
        EngineError::InvalidInput(format!("image: {e}"))
    }
}
