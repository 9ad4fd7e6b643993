//! diffusers' `DDIMScheduler` with `eta = 0` (deterministic).

use candle_core::Tensor;

use super::{
    PredictionType, Scheduler, SchedulerConfig, StepOutput, TimestepSpacing, alpha_pred_original,
    arange, linspace,
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

/// Integer timesteps for DDIM-style schedulers (DDIM, and the DDPM `add_noise`).
pub(crate) fn integer_timesteps(
    c: &SchedulerConfig,
    steps: usize,
    default: TimestepSpacing,
) -> Vec<f64> {
    let n = c.num_train_timesteps;
    match c.spacing_or(default) {
        TimestepSpacing::Linspace => linspace(0.0, (n - 1) as f64, steps)
            .into_iter()
            .rev()
            .map(f64::round_ties_even)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = n / steps;
            (0..steps)
                .rev()
                .map(|i| (i * ratio + c.steps_offset) as f64)
                .collect()
        }
        TimestepSpacing::Trailing => arange(n as f64, 0.0, -(n as f64 / steps as f64))
            .into_iter()
            .map(|t| t.round_ties_even() - 1.0)
            .collect(),
    }
}

/// `sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε`, as DDPM-family schedulers noise clean latents.
pub(crate) fn ddpm_add_noise(original: &Tensor, noise: &Tensor, alpha_prod: f64) -> Result<Tensor> {
    Ok(((original * alpha_prod.sqrt())? + (noise * (1.0 - alpha_prod).sqrt())?)?)
}

impl Ddim {
    pub fn new(c: &SchedulerConfig, steps: usize) -> Result<Self> {
        let ac = c.alphas_cumprod()?;
        Ok(Self {
            timesteps: integer_timesteps(c, steps, TimestepSpacing::Leading),
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
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }
    fn scale_model_input(&self, sample: &Tensor, _i: usize) -> Result<Tensor> {
        Ok(sample.clone())
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
