//! diffusers' `PNDMScheduler` with `skip_prk_steps` (linear multistep, "PLMS"): the default
//! scheduler of SD 1.x repos. The second timestep is evaluated twice, as in diffusers.

use candle_core::Tensor;

use super::ddim::ddpm_add_noise;
use super::spaced_timesteps;
use super::{
    PredictionType, Scheduler, SchedulerConfig, StepOutput, TimestepSpacing, alpha_pred_original,
};
use crate::rng::BatchRng;
use crate::{Result, invalid};

pub struct Pndm {
    timesteps: Vec<f64>,
    ac: Vec<f64>,
    final_alpha_cumprod: f64,
    step_ratio: i64,
    pred: PredictionType,
    ets: Vec<Tensor>,
    counter: usize,
    cur_sample: Option<Tensor>,
}

impl Pndm {
    pub fn new(c: &SchedulerConfig, steps: usize) -> Result<Self> {
        if c.skip_prk_steps == Some(false) {
            return Err(invalid!(
                "PNDM with Runge-Kutta warm-up steps (skip_prk_steps = false) is not supported; choose another scheduler"
            ));
        }
        if c.prediction_type == PredictionType::Sample {
            return Err(invalid!(
                "PNDM does not support the \"sample\" prediction type"
            ));
        }
        let ac = c.alphas_cumprod()?;
        // Ascending integer timesteps, then the PLMS order: the second-to-last repeated.
        let mut t: Vec<f64> = spaced_timesteps(c, steps, TimestepSpacing::Leading, true);
        t.reverse();
        let n = t.len();
        let mut plms: Vec<f64> = t[..n - 1].to_vec();
        if n >= 2 {
            plms.push(t[n - 2]);
        }
        plms.push(t[n - 1]);
        plms.reverse();
        Ok(Self {
            timesteps: plms,
            final_alpha_cumprod: if c.set_alpha_to_one.unwrap_or(false) {
                1.0
            } else {
                ac[0]
            },
            ac,
            step_ratio: (c.num_train_timesteps / steps) as i64,
            pred: c.prediction_type,
            ets: Vec::new(),
            counter: 0,
            cur_sample: None,
        })
    }

    fn prev_sample(&self, sample: &Tensor, t: i64, prev_t: i64, eps: &Tensor) -> Result<Tensor> {
        let a_t = self.ac[t as usize];
        let a_prev = if prev_t >= 0 {
            self.ac[prev_t as usize]
        } else {
            self.final_alpha_cumprod
        };
        let (b_t, b_prev) = (1.0 - a_t, 1.0 - a_prev);
        let eps = match self.pred {
            PredictionType::VPrediction => ((eps * a_t.sqrt())? + (sample * b_t.sqrt())?)?,
            _ => eps.clone(),
        };
        let sample_coeff = (a_prev / a_t).sqrt();
        let denom = a_t * b_prev.sqrt() + (a_t * b_t * a_prev).sqrt();
        Ok(((sample * sample_coeff)? - (eps * ((a_prev - a_t) / denom))?)?)
    }
}

impl Scheduler for Pndm {
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
        let mut t = self.timesteps[i] as i64;
        let mut prev_t = t - self.step_ratio;
        if self.counter != 1 {
            if self.ets.len() > 3 {
                self.ets.remove(0);
            }
            self.ets.push(model_output.clone());
        } else {
            prev_t = t;
            t += self.step_ratio;
        }
        let e = &self.ets;
        let mut sample = sample.clone();
        let eps = match (e.len(), self.counter) {
            (1, 0) => {
                self.cur_sample = Some(sample.clone());
                model_output.clone()
            }
            (1, 1) => {
                sample = self.cur_sample.take().unwrap_or(sample);
                ((model_output + &e[0])? / 2.0)?
            }
            (2, _) => (((&e[1] * 3.0)? - &e[0])? / 2.0)?,
            (3, _) => ((((&e[2] * 23.0)? - (&e[1] * 16.0)?)? + (&e[0] * 5.0)?)? / 12.0)?,
            _ => {
                ((((((&e[3] * 55.0)? - (&e[2] * 59.0)?)? + (&e[1] * 37.0)?)? - (&e[0] * 9.0)?)?)
                    / 24.0)?
            }
        };
        let prev_sample = self.prev_sample(&sample, t, prev_t, &eps)?;
        self.counter += 1;
        let denoised = alpha_pred_original(
            self.pred,
            model_output,
            &sample,
            self.ac[t.clamp(0, self.ac.len() as i64 - 1) as usize],
        )?;
        Ok(StepOutput {
            prev_sample,
            denoised,
        })
    }
    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        ddpm_add_noise(original, noise, self.ac[self.timesteps[i] as usize])
    }
}
