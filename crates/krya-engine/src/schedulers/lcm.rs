//! diffusers' `LCMScheduler` (latent consistency models): timesteps picked from a skipped
//! schedule of `original_inference_steps`, a boundary-condition blend of the model's x0
//! estimate and the sample, and fresh noise between steps.

use candle_core::Tensor;

use super::ddim::ddpm_add_noise;
use super::{
    PredictionType, Scheduler, SchedulerConfig, StepOutput, alpha_pred_original, noise_like,
};
use crate::rng::BatchRng;
use crate::{Result, invalid};

pub struct Lcm {
    timesteps: Vec<f64>,
    ac: Vec<f64>,
    pred: PredictionType,
    timestep_scaling: f64,
    clip: Option<f64>,
}

impl Lcm {
    /// `strength` below 1 is image-to-image as diffusers' LCM img2img pipeline does it: the
    /// schedule is picked from the first `original_inference_steps * strength` of the
    /// original steps, and every one of the `steps` runs.
    pub fn new(c: &SchedulerConfig, steps: usize, strength: f64) -> Result<Self> {
        let ac = c.alphas_cumprod()?;
        let original = c.original_inference_steps;
        let k = c.num_train_timesteps / original;
        if steps > original {
            return Err(invalid!(
                "LCM: steps ({steps}) cannot exceed original_inference_steps ({original})"
            ));
        }
        let kept = (original as f64 * strength) as usize;
        if kept / steps < 1 {
            return Err(invalid!(
                "LCM: strength {strength} leaves {kept} of {original} original steps, fewer than the {steps} steps asked; raise strength or lower steps"
            ));
        }
        // lcm_origin_timesteps = [1..=kept] * k - 1, reversed; then evenly indexed.
        let origin: Vec<usize> = (1..=kept).rev().map(|i| i * k - 1).collect();
        let len = origin.len();
        let timesteps = (0..steps)
            .map(|i| origin[(i as f64 * len as f64 / steps as f64).floor() as usize] as f64)
            .collect();
        Ok(Self {
            timesteps,
            ac,
            pred: c.prediction_type,
            timestep_scaling: c.timestep_scaling,
            clip: c
                .clip_sample
                .unwrap_or(false)
                .then_some(c.clip_sample_range),
        })
    }
}

impl Scheduler for Lcm {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }
    fn step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        rng: &mut BatchRng,
    ) -> Result<StepOutput> {
        let t = self.timesteps[i];
        let last = i + 1 == self.timesteps.len();
        let a_t = self.ac[t as usize];
        let a_prev = if last {
            a_t
        } else {
            self.ac[self.timesteps[i + 1] as usize]
        };
        // Boundary condition scalings (sigma_data = 0.5).
        let scaled = t * self.timestep_scaling;
        let c_skip = 0.25 / (scaled * scaled + 0.25);
        let c_out = scaled / (scaled * scaled + 0.25).sqrt();
        let mut x0 = alpha_pred_original(self.pred, model_output, sample, a_t)?;
        if let Some(r) = self.clip {
            x0 = x0.clamp(-r as f32, r as f32)?;
        }
        let denoised = ((x0 * c_out)? + (sample * c_skip)?)?;
        let prev_sample = if last {
            denoised.clone()
        } else {
            let noise = noise_like(model_output, rng)?;
            ddpm_add_noise(&denoised, &noise, a_prev)?
        };
        Ok(StepOutput {
            prev_sample,
            denoised,
        })
    }
    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        ddpm_add_noise(original, noise, self.ac[self.timesteps[i] as usize])
    }
}
