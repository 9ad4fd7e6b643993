//! diffusers' `EulerAncestralDiscreteScheduler`: an Euler step to `sigma_down`, then fresh
//! noise of size `sigma_up` drawn from each image's generator.

use candle_core::Tensor;

use super::euler::SigmaSchedule;
use super::{
    PredictionType, Scheduler, SchedulerConfig, StepOutput, noise_like, sigma_pred_original,
};
use crate::Result;
use crate::rng::BatchRng;

pub struct EulerAncestral {
    s: SigmaSchedule,
    pred: PredictionType,
}

impl EulerAncestral {
    pub fn new(c: &SchedulerConfig, steps: usize) -> Result<Self> {
        Ok(Self {
            s: SigmaSchedule::new(c, steps, false)?,
            pred: c.prediction_type,
        })
    }
}

impl Scheduler for EulerAncestral {
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
        rng: &mut BatchRng,
    ) -> Result<StepOutput> {
        let (from, to) = (self.s.sigmas[i], self.s.sigmas[i + 1]);
        let denoised = sigma_pred_original(self.pred, model_output, sample, from)?;
        let sigma_up = (to * to * (from * from - to * to) / (from * from)).sqrt();
        let sigma_down = (to * to - sigma_up * sigma_up).sqrt();
        let derivative = ((sample - &denoised)? / from)?;
        let prev = (sample + (derivative * (sigma_down - from))?)?;
        // diffusers draws the noise on every step, the last included.
        let noise = noise_like(model_output, rng)?;
        let prev_sample = (prev + (noise * sigma_up)?)?;
        Ok(StepOutput {
            prev_sample,
            denoised,
        })
    }
    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        self.s.add_noise(original, noise, i)
    }
}
