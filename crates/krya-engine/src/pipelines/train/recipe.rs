//! One training step as diffusers' `train_text_to_image_lora.py` takes it (with kohya's
//! min-SNR and noise offset): noise added at a timestep per sample (DDPM's `add_noise`),
//! the UNet's prediction against the noise (or the velocity), each sample's mean squared
//! error weighted by min-SNR-γ, then backward, gradients clipped to a global norm
//! (`torch.nn.utils.clip_grad_norm_`), and AdamW at the learning rate of a constant
//! schedule after a linear warm-up (`LambdaLR` semantics: step k, from 0, uses
//! `lr · min(1, k / warmup)`, so with a warm-up the first step moves nothing).
//! huggingface/diffusers@58eb52c:examples/text_to_image/train_text_to_image_lora.py,
//! src/diffusers/training_utils.py `compute_snr`, src/diffusers/optimization.py.

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use super::lora::Trainable;
use crate::Result;
use crate::pipelines::stable_diffusion::unet::{AddedCond, UNet2DConditionModel};

/// What the UNet learns to predict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    Epsilon,
    /// `√ᾱ·ε − √(1−ᾱ)·x₀` (SD 2.x 768-v models).
    Velocity,
}

/// The optimiser and loss settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub warmup_steps: usize,
    /// Gradients scaled down to this global norm (diffusers' default 1).
    pub max_grad_norm: Option<f64>,
    /// Min-SNR-γ weighting (typically 5).
    pub snr_gamma: Option<f64>,
    /// Added noise gets `offset · N(0, 1)` per sample and channel on top.
    pub noise_offset: f64,
    pub prediction: Prediction,
    /// The text encoder's learning rate, when it trains too (the schedule scales both).
    pub text_lr: Option<f64>,
}

impl Default for Recipe {
    /// diffusers' LoRA script: AdamW (1e-4, 0.9, 0.999, 1e-8, decay 1e-2), clipping at 1.
    fn default() -> Self {
        Self {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
            warmup_steps: 0,
            max_grad_norm: Some(1.0),
            snr_gamma: None,
            noise_offset: 0.0,
            prediction: Prediction::Epsilon,
            text_lr: None,
        }
    }
}

/// One batch, every random draw given (so a run can be replayed exactly).
pub struct Batch<'a> {
    /// Clean latents `[b, c, h, w]` (already scaled by the VAE's factor).
    pub latents: &'a Tensor,
    /// The text encoder's states `[b, tokens, width]`.
    pub context: &'a Tensor,
    pub noise: &'a Tensor,
    /// `[b, c, 1, 1]` standard normal draws for the noise offset.
    pub offset_noise: Option<&'a Tensor>,
    pub timesteps: &'a [usize],
    /// `[b, 1, h, w]` weights in 0..=1 at the latents' size: the loss counts each latent
    /// pixel by its weight (kohya's masked loss: a person's subject, not the background).
    pub mask: Option<&'a Tensor>,
    /// SDXL's added conditioning: the pooled text state `[b, d]` and the `time_ids`
    /// `[b, 6]` (original size, crop corner, target size).
    pub added: Option<(&'a Tensor, &'a Tensor)>,
}

/// AdamW's running moments, one pair per trainable tensor (saved in checkpoints, so a
/// resumed run continues exactly).
#[derive(Clone)]
pub struct Moments {
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
}

/// An optimiser over a model's LoRA branches.
pub struct Trainer {
    pub recipe: Recipe,
    vars: Vec<Var>,
    pub moments: Moments,
    /// Optimiser steps taken.
    pub steps: usize,
    alphas_cumprod: Vec<f32>,
    /// `vars[text_from..]` are the text encoder's (trained at `recipe.text_lr`).
    text_from: usize,
}

impl Trainer {
    /// `alphas_cumprod`: the model's training schedule (`SchedulerConfig::alphas_cumprod`).
    pub fn new(trainable: &Trainable, recipe: Recipe, alphas_cumprod: &[f64]) -> Result<Self> {
        Self::with_text(trainable, None, recipe, alphas_cumprod)
    }

    /// An optimiser over the UNet's branches and the text encoder's (one AdamW, as
    /// diffusers' `--train_text_encoder`: the text encoder's tensors in a group of their own
    /// at `recipe.text_lr`, the gradients of both clipped together).
    pub fn with_text(
        trainable: &Trainable,
        text: Option<&Trainable>,
        recipe: Recipe,
        alphas_cumprod: &[f64],
    ) -> Result<Self> {
        let mut vars = trainable.vars();
        let text_from = vars.len();
        if let Some(t) = text {
            vars.extend(t.vars());
        }
        let zeros = vars
            .iter()
            .map(|v| v.as_tensor().zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            recipe,
            vars,
            moments: Moments {
                m: zeros.clone(),
                v: zeros,
            },
            steps: 0,
            alphas_cumprod: alphas_cumprod.iter().map(|a| *a as f32).collect(),
            text_from,
        })
    }

    /// The learning rate of optimiser step `k` (from 0).
    pub fn lr_at(&self, k: usize) -> f64 {
        self.rate(self.recipe.lr, k)
    }

    /// `base` under the warm-up at step `k`.
    fn rate(&self, base: f64, k: usize) -> f64 {
        let w = self.recipe.warmup_steps;
        if k < w {
            base * k as f64 / w.max(1) as f64
        } else {
            base
        }
    }

    /// The batch's loss (a scalar in the graph of the LoRA's weights).
    pub fn loss(&self, unet: &UNet2DConditionModel, batch: &Batch) -> Result<Tensor> {
        let dev = batch.latents.device();
        let b = batch.latents.dim(0)?;
        if batch.timesteps.len() != b {
            return Err(crate::invalid!(
                "training: {} timesteps for {b} samples",
                batch.timesteps.len()
            ));
        }
        let mut a = Vec::with_capacity(b);
        for &t in batch.timesteps {
            a.push(*self.alphas_cumprod.get(t).ok_or_else(|| {
                crate::invalid!("training: timestep {t} is past the schedule's end")
            })?);
        }
        let per_sample = |v: Vec<f32>| Tensor::from_vec(v, (b, 1, 1, 1), dev);
        let sqrt_a: Vec<f32> = a.iter().map(|a| a.sqrt()).collect();
        let sqrt_1ma: Vec<f32> = a.iter().map(|a| (1.0 - a).sqrt()).collect();
        let noise = match batch.offset_noise {
            Some(o) if self.recipe.noise_offset != 0.0 => batch
                .noise
                .broadcast_add(&(o * self.recipe.noise_offset)?)?,
            _ => batch.noise.clone(),
        };
        let (ca, cn) = (per_sample(sqrt_a.clone())?, per_sample(sqrt_1ma.clone())?);
        let noisy = (batch.latents.broadcast_mul(&ca)? + noise.broadcast_mul(&cn)?)?;
        let target = match self.recipe.prediction {
            Prediction::Epsilon => noise.clone(),
            Prediction::Velocity => {
                (noise.broadcast_mul(&ca)? - batch.latents.broadcast_mul(&cn)?)?
            }
        };
        let t = Tensor::from_vec(
            batch
                .timesteps
                .iter()
                .map(|&t| t as f32)
                .collect::<Vec<_>>(),
            b,
            dev,
        )?;
        let added = batch.added.map(|(text_embeds, time_ids)| AddedCond {
            text_embeds,
            time_ids,
        });
        let pred = unet.forward_timesteps(&noisy, &t, batch.context, None, added)?;
        let err = (pred - target)?.sqr()?;
        let err = match batch.mask {
            Some(m) => err.broadcast_mul(m)?,
            None => err,
        };
        let per = err.flatten_from(1)?.mean(1)?; // [b]
        let per = match self.recipe.snr_gamma {
            None => per,
            Some(gamma) => {
                let w: Vec<f32> = sqrt_a
                    .iter()
                    .zip(&sqrt_1ma)
                    .map(|(a, s)| {
                        let snr = (a / s).powi(2);
                        let clipped = snr.min(gamma as f32);
                        match self.recipe.prediction {
                            Prediction::Epsilon => clipped / snr,
                            Prediction::Velocity => clipped / (snr + 1.0),
                        }
                    })
                    .collect();
                (per * Tensor::from_vec(w, b, dev)?)?
            }
        };
        Ok(per.mean_all()?)
    }

    /// The loss and every LoRA weight's gradient (nothing updated).
    pub fn gradients(
        &self,
        unet: &UNet2DConditionModel,
        batch: &Batch,
    ) -> Result<(f32, GradStore)> {
        let loss = self.loss(unet, batch)?;
        let grads = loss.backward()?;
        Ok((loss.to_dtype(DType::F32)?.to_scalar::<f32>()?, grads))
    }

    /// One optimiser step on `batch`; returns its loss (before the update).
    pub fn step(&mut self, unet: &UNet2DConditionModel, batch: &Batch) -> Result<f32> {
        let (loss, mut grads) = self.gradients(unet, batch)?;
        if !loss.is_finite() {
            return Err(crate::invalid!(
                "training: the loss is {loss} at step {} (lower the learning rate)",
                self.steps + 1
            ));
        }
        if let Some(max) = self.recipe.max_grad_norm {
            let mut total = 0f32;
            for v in &self.vars {
                if let Some(g) = grads.get(v.as_tensor()) {
                    total += g.sqr()?.sum_all()?.to_scalar::<f32>()?;
                }
            }
            let coef = (max as f32 / (total.sqrt() + 1e-6)).min(1.0);
            if coef < 1.0 {
                for v in &self.vars {
                    if let Some(g) = grads.get(v.as_tensor()) {
                        let scaled = (g * coef as f64)?;
                        grads.insert(v.as_tensor(), scaled);
                    }
                }
            }
        }
        self.adamw(&grads)?;
        self.steps += 1;
        Ok(loss)
    }

    /// torch's AdamW (decoupled decay; bias corrections as `torch.optim.adam` applies them)
    /// at the schedule's rate for this step. A tensor without a gradient is left as it is.
    fn adamw(&mut self, grads: &GradStore) -> Result<()> {
        let r = &self.recipe;
        let unet_lr = self.lr_at(self.steps);
        let text_lr = self.rate(r.text_lr.unwrap_or(r.lr), self.steps);
        let t = (self.steps + 1) as i32;
        let (bc1, bc2) = (1.0 - r.beta1.powi(t), 1.0 - r.beta2.powi(t));
        for (i, var) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let lr = if i < self.text_from { unet_lr } else { text_lr };
            let m = ((&self.moments.m[i] * r.beta1)? + (g * (1.0 - r.beta1))?)?;
            let v = ((&self.moments.v[i] * r.beta2)? + (g.sqr()? * (1.0 - r.beta2))?)?;
            let theta = (var.as_tensor() * (1.0 - lr * r.weight_decay))?;
            let denom = ((v.sqrt()? / bc2.sqrt())? + r.eps)?;
            let theta = (theta - ((m.clone() / denom)? * (lr / bc1))?)?;
            var.set(&theta.detach())?;
            self.moments.m[i] = m.detach();
            self.moments.v[i] = v.detach();
        }
        Ok(())
    }
}
