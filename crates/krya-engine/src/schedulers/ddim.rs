//! diffusers' `DDIMScheduler` with `eta = 0` (deterministic).

use candle_core::Tensor;

use super::spaced_timesteps;
use super::{
    PredictionType, Scheduler, SchedulerConfig, StepOutput, TimestepSpacing, alpha_pred_original,
};
use crate::Result;
use crate::rng::BatchRng;

pub struct Ddim {
    timesteps: Vec<f64>,
    ac: Vec<f64>,
    final_alpha_cumprod: f64,
    step_ratio: usize,
    pred: PredictionType,
    clip: Option<f64>,
}

/// `sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε`, as DDPM-family schedulers noise clean latents.
pub(crate) fn ddpm_add_noise(original: &Tensor, noise: &Tensor, alpha_prod: f64) -> Result<Tensor> {
    Ok(((original * alpha_prod.sqrt())? + (noise * (1.0 - alpha_prod).sqrt())?)?)
}

impl Ddim {
    pub fn new(c: &SchedulerConfig, steps: usize) -> Result<Self> {
        let ac = c.alphas_cumprod()?;
        Ok(Self {
            timesteps: spaced_timesteps(c, steps, TimestepSpacing::Leading, true),
            final_alpha_cumprod: if c.set_alpha_to_one.unwrap_or(true) {
                1.0
            } else {
                ac[0]
            },
            ac,
            step_ratio: c.num_train_timesteps / steps,
            pred: c.prediction_type,
            clip: c.clip_sample.unwrap_or(true).then_some(c.clip_sample_range),
        })
    }
}

impl Scheduler for Ddim {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }
    fn step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        _rng: &mut BatchRng,
    ) -> Result<StepOutput> {
        let t = self.timesteps[i] as i64;
        let prev_t = t - self.step_ratio as i64;
        let a_t = self.ac[t as usize];
        let a_prev = if prev_t >= 0 {
            self.ac[prev_t as usize]
        } else {
            self.final_alpha_cumprod
        };
        let b_t = 1.0 - a_t;
        let mut x0 = alpha_pred_original(self.pred, model_output, sample, a_t)?;
        let eps = match self.pred {
            PredictionType::Epsilon => model_output.clone(),
            PredictionType::VPrediction => ((model_output * a_t.sqrt())? + (sample * b_t.sqrt())?)?,
            PredictionType::Sample => ((sample - (&x0 * a_t.sqrt())?)? / b_t.sqrt())?,
        };
        if let Some(r) = self.clip {
            x0 = x0.clamp(-r as f32, r as f32)?;
        }
        let prev_sample = ((&x0 * a_prev.sqrt())? + (eps * (1.0 - a_prev).sqrt())?)?;
        Ok(StepOutput {
            prev_sample,
            denoised: x0,
        })
    }
    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        ddpm_add_noise(original, noise, self.ac[self.timesteps[i] as usize])
    }
}
