//! diffusers' `DPMSolverMultistepScheduler` as DPM-Solver++(2M): `algorithm_type =
//! "dpmsolver++"`, `solver_order = 2`, midpoint solver, lower-order final steps, optionally
//! with Karras sigmas.

use candle_core::Tensor;

use super::{
    PredictionType, Scheduler, SchedulerConfig, StepOutput, TimestepSpacing, arange, f32r,
    interp_index, karras_sigmas, linspace, sigma_to_t, train_sigmas,
};
use crate::rng::BatchRng;
use crate::{Result, invalid};

pub struct DpmPp2m {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    pred: PredictionType,
    /// The previous step's data prediction (x0).
    prev_output: Option<Tensor>,
    lower_order_nums: usize,
    final_zero: bool,
}

/// `(alpha_t, sigma_t)` of the VP process at k-diffusion noise level `sigma`.
fn alpha_sigma(sigma: f64) -> (f64, f64) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

fn lambda(sigma: f64) -> f64 {
    let (a, s) = alpha_sigma(sigma);
    a.ln() - s.ln()
}

impl DpmPp2m {
    pub fn new(c: &SchedulerConfig, steps: usize, karras: bool) -> Result<Self> {
        let ac = c.alphas_cumprod()?;
        let n = c.num_train_timesteps;
        let mut timesteps: Vec<f64> = match c.spacing_or(TimestepSpacing::Linspace) {
            TimestepSpacing::Linspace => {
                let mut t: Vec<f64> = linspace(0.0, (n - 1) as f64, steps + 1)
                    .into_iter()
                    .map(f64::round_ties_even)
                    .rev()
                    .collect();
                t.pop();
                t
            }
            TimestepSpacing::Leading => {
                let ratio = n / (steps + 1);
                (1..=steps)
                    .rev()
                    .map(|i| (i * ratio + c.steps_offset) as f64)
                    .collect()
            }
            TimestepSpacing::Trailing => arange(n as f64, 0.0, -(n as f64 / steps as f64))
                .into_iter()
                .map(|t| t.round_ties_even() - 1.0)
                .collect(),
        };
        let train = train_sigmas(&ac);
        let log_sigmas: Vec<f64> = train.iter().map(|s| s.ln()).collect();
        let mut sigmas: Vec<f64> = if karras {
            let smin = c.sigma_min.unwrap_or(train[0]);
            let smax = c.sigma_max.unwrap_or(train[n - 1]);
            let s = karras_sigmas(smin, smax, steps);
            timesteps = s.iter().map(|&x| sigma_to_t(x, &log_sigmas)).collect();
            if c.beta_schedule != "squaredcos_cap_v2" {
                timesteps = timesteps.into_iter().map(f64::round_ties_even).collect();
            }
            s
        } else {
            timesteps.iter().map(|&t| interp_index(t, &train)).collect()
        };
        let final_zero = match c.final_sigmas_type.as_deref().unwrap_or("zero") {
            "zero" => {
                sigmas.push(0.0);
                true
            }
            "sigma_min" => {
                sigmas.push(train[0]);
                false
            }
            other => {
                return Err(invalid!(
                    "scheduler config: final_sigmas_type {other:?} is not supported"
                ));
            }
        };
        Ok(Self {
            timesteps,
            sigmas: sigmas.into_iter().map(f32r).collect(),
            pred: c.prediction_type,
            prev_output: None,
            lower_order_nums: 0,
            final_zero,
        })
    }
}

impl Scheduler for DpmPp2m {
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
        let n = self.timesteps.len();
        let lower_order_final = i == n - 1 && (n < 15 || self.final_zero);
        let lower_order_second = i + 2 == n && n < 15;

        // Data prediction (x0) from the model output.
        let s0 = self.sigmas[i];
        let (alpha_s0, sigma_s0) = alpha_sigma(s0);
        let x0 = match self.pred {
            PredictionType::Epsilon => ((sample - (model_output * sigma_s0)?)? / alpha_s0)?,
            PredictionType::VPrediction => ((sample * alpha_s0)? - (model_output * sigma_s0)?)?,
            PredictionType::Sample => model_output.clone(),
        };

        let st = self.sigmas[i + 1];
        let (alpha_t, sigma_t) = alpha_sigma(st);
        let h = lambda(st) - lambda(s0);
        let first_order =
            self.lower_order_nums < 1 || lower_order_final || self.prev_output.is_none();
        let coef = alpha_t * ((-h).exp() - 1.0);
        let ratio = sigma_t / sigma_s0;
        let prev_sample = if first_order {
            ((sample * ratio)? - (&x0 * coef)?)?
        } else {
            let _ = lower_order_second; // order 2 is the highest used: second-order either way
            let m1 = self.prev_output.as_ref().unwrap();
            let s1 = self.sigmas[i - 1];
            let h0 = lambda(s0) - lambda(s1);
            let r0 = h0 / h;
            let d1 = ((&x0 - m1)? * (1.0 / r0))?;
            (((sample * ratio)? - (&x0 * coef)?)? - (d1 * (0.5 * coef))?)?
        };
        if self.lower_order_nums < 2 {
            self.lower_order_nums += 1;
        }
        self.prev_output = Some(x0.clone());
        Ok(StepOutput {
            prev_sample,
            denoised: x0,
        })
    }
    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        let (a, s) = alpha_sigma(self.sigmas[i]);
        Ok(((original * a)? + (noise * s)?)?)
    }
}
