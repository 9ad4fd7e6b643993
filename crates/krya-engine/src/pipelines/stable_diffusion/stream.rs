//! Real-time streams (the live canvas): one `Stream` per canvas session renders frame after
//! frame, in the spirit of StreamDiffusion, with what makes that fast on a distilled model
//! (SD-Turbo, SDXL-Turbo, LCM):
//!
//! - a tiny autoencoder (TAESD) encodes the canvas and decodes the result;
//! - the prompt is encoded once and reused until it changes;
//! - each frame's generator is seeded the same, so its initial noise is the same from frame
//!   to frame and a still canvas gives a still picture (small strokes, small changes);
//! - a few denoising steps (1 to 4), image-to-image from the canvas or text-to-image.
//!
//! A frame is exactly diffusers' `StableDiffusionImg2ImgPipeline` (LCM models: its
//! `LatentConsistencyModelImg2ImgPipeline`; without a canvas the text-to-image pipelines)
//! with `vae = AutoencoderTiny`, `generator = torch.Generator().manual_seed(seed)` and the
//! model's default guidance. `strength` sets how much noise the canvas gets while `steps`
//! denoising steps run: LCM schedules that itself; for the others the schedule is
//! stretched to `num_inference_steps = schedule_len(steps, strength)`.

use std::sync::Arc;

use image::RgbImage;

use crate::pipelines::stable_diffusion::vae_tiny::AutoencoderTiny;
use crate::pipelines::stable_diffusion::{GenerateOptions, GenerateRequest, PromptEmbeds};
use crate::{CancelToken, Result, SchedulerKind, StableDiffusion, invalid};

/// The most denoising steps a frame may take.
pub const MAX_STEPS: usize = 4;

/// One frame to render.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameRequest {
    pub prompt: String,
    pub seed: u64,
    /// How far the result may move from the canvas: the noise it gets, 0 to 1.
    pub strength: f64,
    /// Denoising steps to run, 1 to `MAX_STEPS`.
    pub steps: usize,
    pub width: usize,
    pub height: usize,
    /// The canvas; `None` renders from the prompt alone.
    pub canvas: Option<Arc<RgbImage>>,
}

/// The scheduler length that makes image-to-image run `steps` steps at `strength`:
/// diffusers runs `int(len * strength)` of a schedule of `len`, so the shortest `len` with
/// `int(len * strength) >= steps`.
pub fn schedule_len(steps: usize, strength: f64) -> Result<usize> {
    if !(strength > 0.0 && strength <= 1.0) {
        return Err(invalid!(
            "strength must be above 0 and at most 1 (got {strength})"
        ));
    }
    let mut n = ((steps as f64) / strength).ceil().max(steps as f64) as usize;
    while ((n as f64) * strength) < steps as f64 {
        n += 1;
    }
    // Floating point may overshoot by one: take the shortest that still works.
    while n > steps && (((n - 1) as f64) * strength) as usize >= steps {
        n -= 1;
    }
    if n > 1000 {
        return Err(invalid!(
            "strength {strength} is too low for {steps} steps (at least {:.4})",
            steps as f64 / 1000.0
        ));
    }
    Ok(n)
}

/// A canvas session's renderer: the model, its tiny autoencoder and the cached prompt.
pub struct Stream {
    model: Arc<StableDiffusion>,
    /// `None`: the model's own VAE encodes and decodes (slower, same pictures as diffusers
    /// without `AutoencoderTiny`), for a model whose TAESD is not to be had.
    taesd: Option<Arc<AutoencoderTiny>>,
    embeds: Option<(String, PromptEmbeds)>,
}

impl Stream {
    pub fn new(model: Arc<StableDiffusion>, taesd: Option<Arc<AutoencoderTiny>>) -> Result<Stream> {
        if let Some(taesd) = &taesd {
            let (tc, mc) = (taesd.config.latent_channels, model.latent_channels());
            let (tf, mf) = (taesd.config.scale_factor(), model.vae_scale_factor());
            if tc != mc || tf != mf {
                return Err(invalid!(
                    "the tiny autoencoder ({tc} latent channels, {tf}x) does not fit model {} ({mc} channels, {mf}x)",
                    model.name
                ));
            }
        }
        Ok(Stream {
            model,
            taesd,
            embeds: None,
        })
    }

    pub fn model(&self) -> &Arc<StableDiffusion> {
        &self.model
    }

    /// Whether frames go through a tiny autoencoder (else the model's own VAE).
    pub fn has_tiny_vae(&self) -> bool {
        self.taesd.is_some()
    }

    /// The request diffusers would be given for this frame.
    pub fn request(&self, f: &FrameRequest) -> Result<GenerateRequest> {
        if !(1..=MAX_STEPS).contains(&f.steps) {
            return Err(invalid!(
                "steps must be from 1 to {MAX_STEPS} (got {})",
                f.steps
            ));
        }
        // LCM schedules strength itself; others run the last steps of a longer schedule.
        let kind = SchedulerKind::from_config(&self.model.scheduler_config)?;
        let steps = match &f.canvas {
            Some(_) if !kind.schedules_strength() => schedule_len(f.steps, f.strength)?,
            _ => f.steps,
        };
        Ok(GenerateRequest {
            prompt: f.prompt.clone(),
            width: Some(f.width),
            height: Some(f.height),
            steps: Some(steps),
            seed: f.seed,
            init_image: f.canvas.as_deref().cloned(),
            strength: f.strength,
            preview_every: 0,
            ..Default::default()
        })
    }

    /// Renders one frame. Encodes the prompt only when it differs from the last frame's.
    pub fn render(&mut self, f: &FrameRequest, cancel: &CancelToken) -> Result<RgbImage> {
        let req = self.request(f)?;
        if self.embeds.as_ref().is_none_or(|(p, _)| *p != f.prompt) {
            self.embeds = Some((f.prompt.clone(), self.model.embed_prompt(&req)?));
        }
        let embeds = self.embeds.as_ref().map(|(_, e)| e);
        let opts = GenerateOptions {
            embeds,
            tiny_vae: self.taesd.as_deref(),
            ..Default::default()
        };
        let mut out = self.model.generate_with(&req, opts, &mut |_| {}, cancel)?;
        Ok(out.images.swap_remove(0))
    }

    /// Whether the prompt's embeds are cached (for tests and metrics).
    pub fn has_prompt(&self, prompt: &str) -> bool {
        self.embeds.as_ref().is_some_and(|(p, _)| p == prompt)
    }
}

#[cfg(test)]
mod tests {
    use super::schedule_len;

    #[test]
    fn schedules_run_the_asked_steps() {
        for steps in 1..=4 {
            for k in 1..=100 {
                let s = k as f64 / 100.0;
                let n = schedule_len(steps, s).unwrap();
                assert_eq!(
                    ((n as f64) * s) as usize,
                    steps,
                    "steps {steps} strength {s}: {n}"
                );
                assert!(
                    n == steps || ((((n - 1) as f64) * s) as usize) < steps,
                    "{n} is not the shortest"
                );
            }
        }
        assert_eq!(schedule_len(2, 0.5).unwrap(), 4);
        assert_eq!(schedule_len(1, 1.0).unwrap(), 1);
        assert!(schedule_len(1, 0.0).is_err());
        assert!(schedule_len(4, 0.001).is_err());
    }
}
