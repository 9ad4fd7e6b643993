//! A whole LoRA training run on a loaded SD 1.x/2.x or XL model (SDXL with its pooled text
//! state and size conditioning; its text encoders stay frozen): images to aspect-ratio buckets
//! and their latents (encoded once), captions (with the trigger word, and dropped to the
//! empty prompt at `caption_dropout`) to the frozen text encoder's states (encoded once),
//! then `steps` optimiser steps, each drawing its batch, noise and timesteps from a
//! generator seeded by `(seed, step)`: a run resumed from a checkpoint draws what the
//! uninterrupted run would have, so it ends with the same weights. Progress after every
//! step (its loss), a checkpoint every `checkpoint_every` steps and on cancel, and a sample
//! image every `sample_every` steps (the current LoRA merged, a fixed prompt and seed).

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use image::RgbImage;

use super::export::{Metadata, kohya_bytes};
use super::lora::{LoraConfig, Trainable, inject, inject_text};
use super::recipe::{Batch, Moments, Recipe, Trainer};
use crate::pipelines::lora::{self, LoraFile, Strength};
use crate::pipelines::stable_diffusion::StableDiffusion;
use crate::pipelines::stable_diffusion::unet::UNet2DConditionModel;
use crate::rng::TorchRng;
use crate::{CancelToken, EngineError, GenerateRequest, Result};

/// Where a text encoder's layers are in a checkpoint.
const TEXT: &str = "text_encoder.";

/// One training image and its caption.
pub struct Example {
    pub image: RgbImage,
    pub caption: String,
    /// Where the subject is (white) in the image: the loss counts only it (a person's
    /// photos without their backgrounds). Any size; it is fitted to the image's bucket.
    pub mask: Option<image::GrayImage>,
}

/// What a run does.
#[derive(Debug, Clone)]
pub struct Plan {
    pub lora: LoraConfig,
    pub recipe: Recipe,
    pub steps: usize,
    /// The side of a square bucket's area (512 for SD 1.5).
    pub resolution: usize,
    pub caption_dropout: f64,
    /// Put before every caption (kohya's `keep_tokens` word).
    pub trigger: Option<String>,
    pub seed: u64,
    pub checkpoint_every: usize,
    pub sample_every: usize,
    pub sample_prompt: String,
    pub sample_steps: usize,
    /// A LoRA on the text encoder too (at `recipe.text_lr`): each step's caption goes
    /// through it, in the graph, instead of states encoded once.
    pub text: Option<LoraConfig>,
}

/// Where a run stands: everything a resumed run needs.
#[derive(Clone)]
pub struct Checkpoint {
    pub step: usize,
    /// Each layer's `down` and `up`.
    pub lora: Vec<(String, Tensor, Tensor)>,
    pub moments: Moments,
    pub losses: Vec<f32>,
    /// The loss on the fixed draws where the run started (see `Trained::eval`).
    pub eval_before: Option<f32>,
}

impl Checkpoint {
    /// As one safetensors file (`{layer}.down/up`, `adam.m/v.{i}`, `losses`, `step`).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut t: Vec<(String, Tensor)> = Vec::new();
        for (name, d, u) in &self.lora {
            t.push((format!("lora.{name}.down"), d.clone()));
            t.push((format!("lora.{name}.up"), u.clone()));
        }
        for (i, (m, v)) in self.moments.m.iter().zip(&self.moments.v).enumerate() {
            t.push((format!("adam.m.{i}"), m.clone()));
            t.push((format!("adam.v.{i}"), v.clone()));
        }
        t.push((
            "losses".into(),
            Tensor::new(self.losses.as_slice(), &Device::Cpu)?,
        ));
        t.push((
            "step".into(),
            Tensor::new(&[self.step as u32], &Device::Cpu)?,
        ));
        if let Some(e) = self.eval_before {
            t.push(("eval_before".into(), Tensor::new(&[e], &Device::Cpu)?));
        }
        super::export::safetensors_bytes(&t, None)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let t = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)?;
        let bad = || crate::invalid!("training: the checkpoint is incomplete");
        let mut names: Vec<String> = t
            .keys()
            .filter_map(|k| {
                k.strip_prefix("lora.")?
                    .strip_suffix(".down")
                    .map(String::from)
            })
            .collect();
        names.sort();
        let lora = names
            .into_iter()
            .map(|n| {
                let d = t.get(&format!("lora.{n}.down")).ok_or_else(bad)?.clone();
                let u = t.get(&format!("lora.{n}.up")).ok_or_else(bad)?.clone();
                Ok((n, d, u))
            })
            .collect::<Result<Vec<_>>>()?;
        let (mut m, mut v) = (Vec::new(), Vec::new());
        while let (Some(a), Some(b)) = (
            t.get(&format!("adam.m.{}", m.len())),
            t.get(&format!("adam.v.{}", v.len())),
        ) {
            m.push(a.clone());
            v.push(b.clone());
        }
        Ok(Self {
            step: t.get("step").ok_or_else(bad)?.to_vec1::<u32>()?[0] as usize,
            losses: t.get("losses").ok_or_else(bad)?.to_vec1()?,
            eval_before: t
                .get("eval_before")
                .map(|e| e.to_vec1::<f32>().map(|v| v[0]))
                .transpose()?,
            lora,
            moments: Moments { m, v },
        })
    }
}

/// Standard normal draws of `dims` (the generator draws at least 16 values at a time).
fn normals(rng: &mut TorchRng, dims: &[usize]) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    Ok(rng
        .randn(vec![n.max(16)], &Device::Cpu)?
        .narrow(0, 0, n)?
        .reshape(dims)?)
}

/// After each step.
pub struct Progress<'a> {
    pub step: usize,
    pub total: usize,
    pub loss: f32,
    /// The sample of this step, when one was made.
    pub sample: Option<&'a RgbImage>,
}

/// The bucket sizes for `resolution`² pixels, sides multiples of `unit`, aspect ratios up
/// to 2:1 (kohya's `make_bucket_resolutions`, with the model's own unit for small models).
pub fn buckets(resolution: usize, unit: usize) -> Vec<(usize, usize)> {
    let area = resolution * resolution;
    let side = (resolution / unit).max(1) * unit;
    let mut out = vec![(side, side)];
    let mut w = unit;
    while w <= 2 * resolution {
        let h = (area / w / unit) * unit;
        if h >= unit && w.max(h) <= 2 * w.min(h) && w != h {
            out.push((w, h));
        }
        w += unit;
    }
    out.sort();
    out.dedup();
    out
}

/// The bucket whose aspect ratio is nearest the image's.
fn bucket_of(buckets: &[(usize, usize)], w: u32, h: u32) -> (usize, usize) {
    let ar = (w as f64 / h as f64).ln();
    *buckets
        .iter()
        .min_by(|a, b| {
            let d = |x: &(usize, usize)| ((x.0 as f64 / x.1 as f64).ln() - ar).abs();
            d(a).total_cmp(&d(b))
        })
        .expect("at least the square bucket")
}

/// The image resized to cover `(w, h)` and cropped to it, centred.
fn cover(img: &RgbImage, w: usize, h: usize) -> RgbImage {
    let (sw, sh, left, top) = cover_geometry(img.width(), img.height(), w, h);
    let scaled = image::imageops::resize(img, sw, sh, image::imageops::FilterType::Lanczos3);
    image::imageops::crop_imm(&scaled, left, top, w as u32, h as u32).to_image()
}

/// Where [`cover`] scales an `iw × ih` image to and the crop's top-left corner in it.
fn cover_geometry(iw: u32, ih: u32, w: usize, h: usize) -> (u32, u32, u32, u32) {
    let s = (w as f64 / iw as f64).max(h as f64 / ih as f64);
    let (sw, sh) = (
        ((iw as f64 * s).round() as u32).max(w as u32),
        ((ih as f64 * s).round() as u32).max(h as u32),
    );
    (sw, sh, (sw - w as u32) / 2, (sh - h as u32) / 2)
}

/// A prepared example: its bucket, its latents, its caption and its states, its loss mask.
struct Prepared {
    bucket: (usize, usize),
    latents: Tensor,
    context: Tensor,
    /// SDXL's pooled text state and micro-conditioning.
    pooled: Option<Tensor>,
    time_ids: Option<Tensor>,
    /// The caption as encoded (with the trigger word), for a text encoder that trains.
    caption: String,
    mask: Option<Tensor>,
}

/// A mask (the image's size) fitted to the bucket `(w, h)` like its image, then averaged over
/// each latent pixel's area (kohya: `interpolate(mode="area")`): `[1, 1, h/f, w/f]` in 0..=1.
fn latent_mask(
    mask: &image::GrayImage,
    (w, h): (usize, usize),
    latents: &[usize],
) -> Result<Tensor> {
    let (lh, lw) = (latents[2], latents[3]);
    let rgb = image::DynamicImage::ImageLuma8(mask.clone()).to_rgb8();
    let fitted = cover(&rgb, w, h);
    let (fy, fx) = (h / lh, w / lw);
    let mut out = vec![0f32; lh * lw];
    for (y, row) in out.chunks_mut(lw).enumerate() {
        for (x, o) in row.iter_mut().enumerate() {
            let mut sum = 0u32;
            for dy in 0..fy {
                for dx in 0..fx {
                    sum += fitted.get_pixel((x * fx + dx) as u32, (y * fy + dy) as u32)[0] as u32;
                }
            }
            *o = sum as f32 / (255 * fx * fy) as f32;
        }
    }
    Ok(Tensor::from_vec(out, (1, 1, lh, lw), &Device::Cpu)?)
}

fn caption_of(plan: &Plan, caption: &str) -> String {
    match plan
        .trigger
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        Some(t) if !caption.trim().is_empty() => format!("{t}, {}", caption.trim()),
        Some(t) => t.to_string(),
        None => caption.trim().to_string(),
    }
}

/// The trained LoRA of a run.
pub struct Trained {
    pub trainable: Trainable,
    /// The text encoder's branches, when it trained.
    pub text: Option<Trainable>,
    pub unet: UNet2DConditionModel,
    pub losses: Vec<f32>,
    /// The loss on a fixed set of draws (every image at five timesteps, the same noise)
    /// where this run started and where it ended: what it learned, without the noise of
    /// each step's own draws.
    pub eval: (f32, f32),
}

impl Trained {
    /// The kohya file (see `export`).
    pub fn kohya(&self, base: &StableDiffusion, meta: &Metadata) -> Result<Vec<u8>> {
        kohya_bytes(&self.trainable, self.text.as_ref(), &base.unet, meta)
    }
}

/// The family name kohya's metadata wants for a model.
pub fn family_of(model: &StableDiffusion) -> &'static str {
    if model.unet.needs_added_cond() {
        "sdxl"
    } else if model
        .text_encoders
        .first()
        .is_some_and(|t| t.config.hidden_size == 1024)
    {
        "sd2"
    } else {
        "sd1"
    }
}

/// Trains a LoRA on `model` from `examples` (from `resume` when given).
pub fn train(
    model: &StableDiffusion,
    examples: &[Example],
    plan: &Plan,
    resume: Option<Checkpoint>,
    on_step: &mut dyn FnMut(Progress) -> Result<()>,
    on_checkpoint: &mut dyn FnMut(&Checkpoint) -> Result<()>,
    cancel: &CancelToken,
) -> Result<Trained> {
    if examples.is_empty() {
        return Err(crate::invalid!("training: no images"));
    }
    let f = model.vae_scale_factor();
    // Pixel sides multiples of f·8: latent sides multiples of 8 (the UNet's downsamplings).
    let sizes = buckets(plan.resolution, f * 8);
    let scale = model.vae.config.scaling_factor;
    let shift = model.vae.config.shift_factor.unwrap_or(0.0);
    let mut prepared = Vec::with_capacity(examples.len());
    for ex in examples {
        cancel.check()?;
        let (w, h) = bucket_of(&sizes, ex.image.width(), ex.image.height());
        let pixels = crate::image_io::to_tensor(&cover(&ex.image, w, h), w, h, &model.device)?
            .to_dtype(model.dtype)?;
        // The posterior's mean: latents cached once, the same every epoch.
        let (mean, _) = model.vae.encode(&pixels)?;
        let latents = ((mean - shift)? * scale)?.to_dtype(DType::F32)?;
        let (context, pooled) = model.encode_prompts(&[&caption_of(plan, &ex.caption)], 0)?;
        // SDXL's micro-conditioning (diffusers' SDXL scripts): the image's own size, the
        // crop's corner in the scaled image, the bucket's size.
        let time_ids = match pooled {
            Some(_) => {
                let (iw, ih) = ex.image.dimensions();
                let (_, _, left, top) = cover_geometry(iw, ih, w, h);
                let ids = [
                    ih as f32,
                    iw as f32,
                    top as f32,
                    left as f32,
                    h as f32,
                    w as f32,
                ];
                Some(Tensor::from_slice(&ids, (1, 6), &Device::Cpu)?)
            }
            None => None,
        };
        let mask = match &ex.mask {
            Some(m) => {
                let (iw, ih) = ex.image.dimensions();
                let m = if m.dimensions() == (iw, ih) {
                    m.clone()
                } else {
                    image::imageops::resize(m, iw, ih, image::imageops::FilterType::Triangle)
                };
                Some(latent_mask(&m, (w, h), latents.dims())?)
            }
            None => None,
        };
        prepared.push(Prepared {
            bucket: (w, h),
            latents,
            context: context.to_dtype(DType::F32)?,
            pooled: pooled.map(|p| p.to_dtype(DType::F32)).transpose()?,
            time_ids,
            caption: caption_of(plan, &ex.caption),
            mask,
        });
    }
    let (empty, empty_pooled) = model.encode_prompts(&[""], 0)?;
    let empty = empty.to_dtype(DType::F32)?;
    let empty_pooled = empty_pooled.map(|p| p.to_dtype(DType::F32)).transpose()?;
    let by_bucket: BTreeMap<(usize, usize), Vec<usize>> =
        prepared
            .iter()
            .enumerate()
            .fold(BTreeMap::new(), |mut m, (i, p)| {
                m.entry(p.bucket).or_default().push(i);
                m
            });
    let bucket_list: Vec<&Vec<usize>> = by_bucket.values().collect();

    let mut unet = model.unet.clone();
    let mut init_rng = TorchRng::new(plan.seed);
    let from = resume.as_ref().map(|c| c.step).unwrap_or(0);
    let restored: BTreeMap<&str, (&Tensor, &Tensor)> = resume
        .as_ref()
        .map(|c| {
            c.lora
                .iter()
                .map(|(n, d, u)| (n.as_str(), (d, u)))
                .collect()
        })
        .unwrap_or_default();
    // A layer's branch: from the checkpoint (its name, the text encoder's under
    // `text_encoder.`), else PEFT's default: A uniform in ±1/√in (kaiming, a = √5), B zero.
    let mut branch =
        |name: &str, rank: usize, inp: usize, out: usize| -> Result<(Tensor, Tensor)> {
            if let Some((d, u)) = restored.get(name) {
                return Ok(((*d).clone(), (*u).clone()));
            }
            if resume.is_some() {
                return Err(crate::invalid!("training: the checkpoint has no {name}"));
            }
            let bound = 1.0 / (inp as f32).sqrt();
            let a: Vec<f32> = (0..rank * inp)
                .map(|_| (init_rng.next_u32() as f32 / 4_294_967_296.0 * 2.0 - 1.0) * bound)
                .collect();
            let down = Tensor::from_vec(a, (rank, inp), &Device::Cpu)?;
            Ok((down, Tensor::zeros((out, rank), DType::F32, &Device::Cpu)?))
        };
    let rank = plan.lora.rank;
    let trainable = inject(&mut unet, &plan.lora, &mut |name, inp, out| {
        branch(name, rank, inp, out)
    })?;
    // The text encoder with its branches, in a copy of the model that encodes through it.
    let text = match &plan.text {
        None => None,
        Some(config) => {
            if model.text_encoders.len() != 1 {
                return Err(crate::invalid!(
                    "training: the text encoder trains only on SD 1.x and 2.x models"
                ));
            }
            let mut encoder = model.text_encoders[0].clone();
            let t = inject_text(&mut encoder, config, &mut |name, inp, out| {
                branch(&format!("{TEXT}{name}"), config.rank, inp, out)
            })?;
            let mut with = model.clone();
            with.text_encoders[0] = encoder;
            Some((t, with))
        }
    };
    let mut trainer = Trainer::with_text(
        &trainable,
        text.as_ref().map(|(t, _)| t),
        plan.recipe.clone(),
        &model.scheduler_config.alphas_cumprod()?,
    )?;
    // A caption's states (and SDXL's pooled one): encoded once, or (the text encoder
    // training) now, in the graph.
    let states = |p: &Prepared, dropped: bool| -> Result<(Tensor, Option<Tensor>)> {
        match &text {
            Some((_, with)) => {
                let caption = if dropped { "" } else { p.caption.as_str() };
                let (c, pooled) = with.encode_prompts(&[caption], 0)?;
                Ok((
                    c.to_dtype(DType::F32)?,
                    pooled.map(|p| p.to_dtype(DType::F32)).transpose()?,
                ))
            }
            None if dropped => Ok((empty.clone(), empty_pooled.clone())),
            None => Ok((p.context.clone(), p.pooled.clone())),
        }
    };
    let mut losses = Vec::new();
    let resumed_eval = resume.as_ref().and_then(|c| c.eval_before);
    if let Some(c) = resume {
        if c.moments.m.len() != trainer.moments.m.len() {
            return Err(crate::invalid!(
                "training: the checkpoint does not fit this LoRA"
            ));
        }
        trainer.moments = c.moments;
        trainer.steps = c.step;
        losses = c.losses;
    }
    let checkpoint = |trainer: &Trainer, losses: &[f32], eval_before: f32| -> Result<Checkpoint> {
        Ok(Checkpoint {
            eval_before: Some(eval_before),
            step: trainer.steps,
            lora: trainable
                .layers
                .iter()
                .map(|(n, b)| (n.clone(), b))
                .chain(
                    text.iter()
                        .flat_map(|(t, _)| t.layers.iter().map(|(n, b)| (format!("{TEXT}{n}"), b))),
                )
                .map(|(n, b)| Ok((n, b.down.as_tensor().copy()?, b.up.as_tensor().copy()?)))
                .collect::<Result<_>>()?,
            moments: trainer.moments.clone(),
            losses: losses.to_vec(),
        })
    };
    let timesteps = model.scheduler_config.num_train_timesteps;
    let eval = |trainer: &Trainer, unet: &UNet2DConditionModel| -> Result<f32> {
        let mut rng = TorchRng::new(plan.seed ^ 0x5eed_e7a1);
        let mut sum = 0f32;
        let mut n = 0;
        for p in &prepared {
            for k in 0..5 {
                let noise = normals(&mut rng, p.latents.dims())?;
                let t = (2 * k + 1) * timesteps / 10;
                let (context, pooled) = states(p, false)?;
                let context = context.detach();
                let batch = Batch {
                    latents: &p.latents,
                    context: &context,
                    noise: &noise,
                    offset_noise: None,
                    timesteps: &[t],
                    mask: p.mask.as_ref(),
                    added: pooled.as_ref().zip(p.time_ids.as_ref()),
                };
                sum += trainer.loss(unet, &batch)?.detach().to_scalar::<f32>()?;
                n += 1;
            }
        }
        Ok(sum / n as f32)
    };
    // Where the whole run started (a resumed one: as its checkpoint says).
    let eval_before = match resumed_eval {
        Some(e) => e,
        None => eval(&trainer, &unet)?,
    };
    for step in from..plan.steps {
        if cancel.is_cancelled() {
            on_checkpoint(&checkpoint(&trainer, &losses, eval_before)?)?;
            return Err(EngineError::Cancelled);
        }
        // Every draw of this step from (seed, step): the same whether resumed or not.
        let mut rng = TorchRng::new(
            plan.seed
                .wrapping_mul(1_000_003)
                .wrapping_add(step as u64 + 1),
        );
        let mut below = |n: usize| (rng.next_u32() as u64 * n as u64 >> 32) as usize;
        let group = bucket_list[below(bucket_list.len())];
        let p = &prepared[group[below(group.len())]];
        let t = below(timesteps);
        let dropped = (below(1 << 20) as f64) < plan.caption_dropout * (1 << 20) as f64;
        let (context, pooled) = states(p, dropped)?;
        let noise = normals(&mut rng, p.latents.dims())?;
        let offset = normals(&mut rng, &[1, p.latents.dim(1)?, 1, 1])?;
        let batch = Batch {
            latents: &p.latents,
            context: &context,
            noise: &noise,
            offset_noise: Some(&offset),
            timesteps: &[t],
            mask: p.mask.as_ref(),
            added: pooled.as_ref().zip(p.time_ids.as_ref()),
        };
        let loss = trainer.step(&unet, &batch)?;
        losses.push(loss);
        let done = step + 1;
        if plan.checkpoint_every > 0 && done % plan.checkpoint_every == 0 && done < plan.steps {
            on_checkpoint(&checkpoint(&trainer, &losses, eval_before)?)?;
        }
        let sample =
            if plan.sample_every > 0 && (done % plan.sample_every == 0 || done == plan.steps) {
                Some(sample(
                    model,
                    &trainable,
                    text.as_ref().map(|(t, _)| t),
                    plan,
                    cancel,
                )?)
            } else {
                None
            };
        on_step(Progress {
            step: done,
            total: plan.steps,
            loss,
            sample: sample.as_ref(),
        })?;
    }
    let eval_after = eval(&trainer, &unet)?;
    Ok(Trained {
        trainable,
        text: text.map(|(t, _)| t),
        unet,
        losses,
        eval: (eval_before, eval_after),
    })
}

/// An image from the model with the LoRA as it stands merged (the fixed prompt and seed, at
/// the training's resolution).
pub fn sample(
    model: &StableDiffusion,
    trainable: &Trainable,
    text: Option<&Trainable>,
    plan: &Plan,
    cancel: &CancelToken,
) -> Result<RgbImage> {
    let meta = Metadata {
        family: family_of(model).into(),
        rank: plan.lora.rank,
        alpha: plan.lora.alpha,
        ..Default::default()
    };
    let bytes = kohya_bytes(trainable, text, &model.unet, &meta)?;
    let file = LoraFile::from_bytes(&bytes, "sample")?;
    let (merged, _) = lora::apply(model, &[(&file, Strength::new(1.0))])?;
    let out = merged.generate(
        &GenerateRequest {
            prompt: caption_of(plan, &plan.sample_prompt),
            // At the size it trains at (a square of a multiple of 8).
            width: Some((plan.resolution / 8).max(1) * 8),
            height: Some((plan.resolution / 8).max(1) * 8),
            steps: Some(plan.sample_steps.max(1)),
            seed: plan.seed,
            preview_every: 0,
            ..Default::default()
        },
        &mut |_| {},
        cancel,
    )?;
    out.images
        .into_iter()
        .next()
        .ok_or_else(|| crate::invalid!("no sample image"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mask is fitted to the bucket as its image is, then averaged over each latent
    /// pixel's area.
    #[test]
    fn masks_fit_the_bucket_and_average_per_latent_pixel() {
        // The left half white, on a 2:1 image cropped to a square bucket: the centre crop
        // keeps its middle half, so the left half of the crop is white.
        let m =
            image::GrayImage::from_fn(64, 32, |x, _| image::Luma([if x < 32 { 255 } else { 0 }]));
        let t = latent_mask(&m, (32, 32), &[1, 4, 4, 4]).unwrap();
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let want = [1.0, 1.0, 0.0, 0.0];
        assert!(
            v[..4].iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-3),
            "{v:?}"
        );
        assert_eq!(t.dims(), &[1, 1, 4, 4]);
        // A latent pixel half covered counts half.
        let m = image::GrayImage::from_fn(8, 8, |x, _| image::Luma([if x < 3 { 255 } else { 0 }]));
        let v: Vec<f32> = latent_mask(&m, (8, 8), &[1, 4, 2, 2])
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!((v[0] - 0.75).abs() < 1e-3 && v[1].abs() < 1e-3, "{v:?}");
    }
}
