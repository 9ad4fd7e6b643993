//! diffusers' `EulerDiscreteScheduler` (Karras et al. 2022, algorithm 2 without churn).

use candle_core::Tensor;

use super::spaced_timesteps;
use super::{
    PredictionType, Scheduler, SchedulerConfig, StepOutput, TimestepSpacing, f32r, interp_index,
    karras_sigmas, linspace, sigma_pred_original, sigma_to_t, train_sigmas,
};
use crate::rng::BatchRng;
use crate::{Result, invalid};

/// Timesteps and sigmas of the k-diffusion family (Euler, Euler ancestral), as float32.
pub(crate) struct SigmaSchedule {
    pub timesteps: Vec<f64>,
    /// One more than `timesteps`: the last is the final noise level (0).
    pub sigmas: Vec<f64>,
    pub init_noise_sigma: f64,
}

impl SigmaSchedule {
    pub fn new(c: &SchedulerConfig, steps: usize, allow_karras: bool) -> Result<Self> {
        let mut ac = c.alphas_cumprod()?;
        if c.rescale_betas_zero_snr {
            // Zero terminal SNR would make sigma infinite; diffusers clips it.
            *ac.last_mut().unwrap() = 2f64.powi(-24);
        }
        let n = c.num_train_timesteps;
        let spacing = c.spacing_or(TimestepSpacing::Linspace);
        let mut timesteps = spaced_timesteps(c, steps, TimestepSpacing::Linspace, false);
        let train = train_sigmas(&ac);
        let log_sigmas: Vec<f64> = train.iter().map(|s| s.ln()).collect();
        let mut sigmas: Vec<f64> = match c.interpolation_type.as_deref().unwrap_or("linear") {
            "linear" => timesteps.iter().map(|&t| interp_index(t, &train)).collect(),
            "log_linear" => {
                let (lo, hi) = (train[0].ln(), train[n - 1].ln());
                linspace(hi, lo, steps).into_iter().map(f64::exp).collect()
            }
            other => {
                return Err(invalid!(
                    "scheduler config: interpolation_type {other:?} is not supported"
                ));
            }
        };
        if c.use_karras_sigmas && allow_karras {
            let smin = c.sigma_min.unwrap_or(*sigmas.last().unwrap());
            let smax = c.sigma_max.unwrap_or(sigmas[0]);
            sigmas = karras_sigmas(smin, smax, steps);
            timesteps = sigmas.iter().map(|&s| sigma_to_t(s, &log_sigmas)).collect();
        }
        if c.timestep_type.as_deref() == Some("continuous")
            && c.prediction_type == PredictionType::VPrediction
        {
            timesteps = sigmas.iter().map(|s| 0.25 * s.ln()).collect();
        }
        let last = match c.final_sigmas_type.as_deref().unwrap_or("zero") {
            "zero" => 0.0,
            "sigma_min" => train[0],
            other => {
                return Err(invalid!(
                    "scheduler config: final_sigmas_type {other:?} is not supported"
                ));
            }
        };
        sigmas.push(last);
        let sigmas: Vec<f64> = sigmas.into_iter().map(f32r).collect();
        let timesteps: Vec<f64> = timesteps.into_iter().map(f32r).collect();
        let max = sigmas.iter().cloned().fold(0.0, f64::max);
        let init_noise_sigma = match spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
            TimestepSpacing::Leading => f32r((max * max + 1.0).sqrt()),
        };
        Ok(Self {
            timesteps,
            sigmas,
            init_noise_sigma,
        })
    }

    pub fn scale_model_input(&self, sample: &Tensor, i: usize) -> Result<Tensor> {
        let s = self.sigmas[i];
        Ok((sample / f32r((s * s + 1.0).sqrt()))?)
    }

    /// `original + noise * sigma_i`.
    pub fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        Ok((original + (noise * self.sigmas[i])?)?)
    }
}

pub struct Euler {
    s: SigmaSchedule,
    pred: PredictionType,
}

impl Euler {
    pub fn new(c: &SchedulerConfig, steps: usize) -> Result<Self> {
        Ok(Self {
            s: SigmaSchedule::new(c, steps, true)?,
            pred: c.prediction_type,
        })
    }
}

impl Scheduler for Euler {
    fn timesteps(&self) -> &[f64] {
        &self.s.timesteps
    }
    fn init_noise_sigma(&self) -> f64 {
        self.s.init_noise_sigma
    }
    fn scale_model_input(&self, sample: &Tensor, i: usize) -> Result<Tensor> {
        self.s.scale_model_input(sample, i)
    }
    fn step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        _rng: &mut BatchRng,
    ) -> Result<StepOutput> {
        let sigma = self.s.sigmas[i];
        let denoised = sigma_pred_original(self.pred, model_output, sample, sigma)?;
        let derivative = ((sample - &denoised)? / sigma)?;
        let dt = self.s.sigmas[i + 1] - sigma;
        let prev_sample = (sample + (derivative * dt)?)?;
        Ok(StepOutput {
            prev_sample,
            denoised,
        })
    }
    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        self.s.add_noise(original, noise, i)
    }
}
