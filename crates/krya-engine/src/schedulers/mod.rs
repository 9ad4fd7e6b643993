//! Noise schedulers, faithful to diffusers' implementations of the same name.
//!
//! Layout: `SchedulerConfig` is a model's `scheduler/scheduler_config.json`; `SchedulerKind`
//! names an algorithm (the model's own `_class_name`, or the caller's choice, which then
//! takes the model's config as diffusers' `from_config` does). Each algorithm lives in its
//! own file and implements `Scheduler`, stepping by index into its own timestep list.

mod ddim;
mod dpmpp_2m;
mod euler;
mod euler_ancestral;
mod lcm;
mod pndm;

use candle_core::Tensor;
use serde::Deserialize;

use crate::rng::BatchRng;
use crate::{Result, invalid};

pub use ddim::Ddim;
pub use dpmpp_2m::DpmPp2m;
pub use euler::Euler;
pub use euler_ancestral::EulerAncestral;
pub use lcm::Lcm;
pub use pndm::Pndm;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    Epsilon,
    VPrediction,
    Sample,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    Leading,
    Trailing,
    Linspace,
}

/// A model's `scheduler_config.json`, with diffusers' defaults for absent keys.
#[derive(Debug, Clone, Deserialize)]
pub struct SchedulerConfig {
    #[serde(default, rename = "_class_name")]
    pub class_name: Option<String>,
    #[serde(default = "d_train")]
    pub num_train_timesteps: usize,
    #[serde(default = "d_beta_start")]
    pub beta_start: f64,
    #[serde(default = "d_beta_end")]
    pub beta_end: f64,
    #[serde(default = "d_beta_schedule")]
    pub beta_schedule: String,
    #[serde(default = "d_pred")]
    pub prediction_type: PredictionType,
    /// diffusers' per-class default applies when absent (`None`).
    #[serde(default)]
    pub timestep_spacing: Option<TimestepSpacing>,
    #[serde(default)]
    pub steps_offset: usize,
    /// Absent: each class's own default (DDIM clips, LCM does not).
    #[serde(default)]
    pub clip_sample: Option<bool>,
    #[serde(default = "d_clip_range")]
    pub clip_sample_range: f64,
    /// Absent: each class's own default (DDIM and LCM: true, PNDM: false).
    #[serde(default)]
    pub set_alpha_to_one: Option<bool>,
    #[serde(default)]
    pub skip_prk_steps: Option<bool>,
    #[serde(default)]
    pub rescale_betas_zero_snr: bool,
    #[serde(default)]
    pub use_karras_sigmas: bool,
    #[serde(default)]
    pub timestep_type: Option<String>,
    #[serde(default)]
    pub interpolation_type: Option<String>,
    #[serde(default)]
    pub final_sigmas_type: Option<String>,
    #[serde(default = "d_orig_steps")]
    pub original_inference_steps: usize,
    #[serde(default = "d_ts_scaling")]
    pub timestep_scaling: f64,
    #[serde(default)]
    pub sigma_min: Option<f64>,
    #[serde(default)]
    pub sigma_max: Option<f64>,
    #[serde(default)]
    pub thresholding: bool,
}

fn d_train() -> usize {
    1000
}
fn d_beta_start() -> f64 {
    0.0001
}
fn d_beta_end() -> f64 {
    0.02
}
fn d_beta_schedule() -> String {
    "linear".into()
}
fn d_pred() -> PredictionType {
    PredictionType::Epsilon
}
fn d_clip_range() -> f64 {
    1.0
}
fn d_orig_steps() -> usize {
    50
}
fn d_ts_scaling() -> f64 {
    10.0
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults")
    }
}

impl SchedulerConfig {
    pub fn from_json(text: &str) -> Result<Self> {
        crate::model::config_json::from_str(text).map_err(|e| invalid!("scheduler config: {e}"))
    }

    /// `alphas_cumprod` for the training schedule, in float32 as diffusers keeps it.
    pub fn alphas_cumprod(&self) -> Result<Vec<f64>> {
        let n = self.num_train_timesteps;
        let betas: Vec<f64> = match self.beta_schedule.as_str() {
            "linear" => linspace(self.beta_start, self.beta_end, n)
                .into_iter()
                .map(f32r)
                .collect(),
            "scaled_linear" => linspace(self.beta_start.sqrt(), self.beta_end.sqrt(), n)
                .into_iter()
                .map(|b| f32r(f32r(b).powi(2)))
                .collect(),
            "squaredcos_cap_v2" => {
                let f = |t: f64| {
                    ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
                        .cos()
                        .powi(2)
                };
                (0..n)
                    .map(|i| {
                        f32r(
                            (1.0 - f((i + 1) as f64 / n as f64) / f(i as f64 / n as f64))
                                .min(0.999),
                        )
                    })
                    .collect()
            }
            other => {
                return Err(invalid!(
                    "scheduler config: beta_schedule {other:?} is not supported"
                ));
            }
        };
        let betas = if self.rescale_betas_zero_snr {
            rescale_zero_terminal_snr(&betas)
        } else {
            betas
        };
        let mut acc = 1.0f32;
        Ok(betas
            .iter()
            .map(|b| {
                acc *= 1.0 - *b as f32;
                acc as f64
            })
            .collect())
    }

    pub fn spacing_or(&self, default: TimestepSpacing) -> TimestepSpacing {
        self.timestep_spacing.unwrap_or(default)
    }
}

/// Inference timesteps, first to last, for a spacing (the config's, else `default`):
/// `linspace` is rounded for integer-timestep schedulers (DDIM, PNDM) and kept fractional
/// for sigma-based ones (Euler), as in diffusers.
pub(crate) fn spaced_timesteps(
    c: &SchedulerConfig,
    steps: usize,
    default: TimestepSpacing,
    round_linspace: bool,
) -> Vec<f64> {
    let n = c.num_train_timesteps;
    match c.spacing_or(default) {
        TimestepSpacing::Linspace => linspace(0.0, (n - 1) as f64, steps)
            .into_iter()
            .rev()
            .map(|t| {
                if round_linspace {
                    t.round_ties_even()
                } else {
                    t
                }
            })
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

/// Rounds through float32, where diffusers keeps a value in a float32 tensor.
pub(crate) fn f32r(x: f64) -> f64 {
    x as f32 as f64
}

/// diffusers' `rescale_zero_terminal_snr` (arXiv:2305.08891, algorithm 1).
fn rescale_zero_terminal_snr(betas: &[f64]) -> Vec<f64> {
    let mut acc = 1.0;
    let mut sqrt_ac: Vec<f64> = betas
        .iter()
        .map(|b| {
            acc *= 1.0 - b;
            f64::sqrt(acc)
        })
        .collect();
    let (first, last) = (sqrt_ac[0], *sqrt_ac.last().unwrap());
    for v in &mut sqrt_ac {
        *v = (*v - last) * first / (first - last);
    }
    let bar: Vec<f64> = sqrt_ac.iter().map(|v| v * v).collect();
    let mut out = vec![1.0 - bar[0]];
    out.extend(bar.windows(2).map(|w| 1.0 - w[1] / w[0]));
    out
}

/// numpy's `linspace(start, stop, n)` (endpoint included).
pub(crate) fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    match n {
        0 => vec![],
        1 => vec![start],
        _ => {
            let step = (stop - start) / (n - 1) as f64;
            let mut v: Vec<f64> = (0..n).map(|i| start + i as f64 * step).collect();
            v[n - 1] = stop;
            v
        }
    }
}

/// numpy's `arange(start, stop, step)` for floats.
pub(crate) fn arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil().max(0.0) as usize;
    (0..len).map(|i| start + i as f64 * step).collect()
}

/// numpy's `interp(x, arange(len(fp)), fp)`.
pub(crate) fn interp_index(x: f64, fp: &[f64]) -> f64 {
    if x <= 0.0 {
        return fp[0];
    }
    let last = fp.len() - 1;
    if x >= last as f64 {
        return fp[last];
    }
    let i = x.floor() as usize;
    let w = x - i as f64;
    if w == 0.0 {
        fp[i]
    } else {
        fp[i] + (fp[i + 1] - fp[i]) * w
    }
}

/// `((1 - ac) / ac) ** 0.5` per training step, as float32.
pub(crate) fn train_sigmas(ac: &[f64]) -> Vec<f64> {
    ac.iter().map(|a| f32r(((1.0 - a) / a).sqrt())).collect()
}

/// Karras et al. (2022) sigmas between the schedule's extremes, `rho = 7`.
pub(crate) fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0;
    let (min_inv, max_inv) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// diffusers' `_sigma_to_t`: the fractional training step whose sigma is `sigma`,
/// interpolating in log-sigma.
pub(crate) fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let count = log_sigmas.iter().filter(|&&l| log_sigma - l >= 0.0).count();
    // argmax of the cumulative sum of (dists >= 0): the last index where it holds.
    let low = if count == 0 {
        0
    } else {
        let mut cum = 0;
        let mut best = 0;
        let mut best_val = -1i64;
        for (i, &l) in log_sigmas.iter().enumerate() {
            if log_sigma - l >= 0.0 {
                cum += 1;
            }
            if cum > best_val {
                best_val = cum;
                best = i;
            }
        }
        best
    };
    let low = low.min(log_sigmas.len() - 2);
    let high = low + 1;
    let (lo, hi) = (log_sigmas[low], log_sigmas[high]);
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * high as f64
}

/// What one scheduler step returns.
pub struct StepOutput {
    pub prev_sample: Tensor,
    /// The model's current estimate of the clean latents, for previews.
    pub denoised: Tensor,
}

/// One denoising algorithm with its timestep list set for a number of steps.
pub trait Scheduler: Send {
    /// Timesteps fed to the UNet, first to last.
    fn timesteps(&self) -> &[f64];
    /// The initial noise's scale (1 for DDPM-style schedulers).
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }
    /// Scales the UNet input at step `i` (sigma-based schedulers divide by `sqrt(σ²+1)`).
    fn scale_model_input(&self, sample: &Tensor, _i: usize) -> Result<Tensor> {
        Ok(sample.clone())
    }
    /// Advances `sample` from step `i`; ancestral schedulers draw noise from `rng`.
    fn step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        rng: &mut BatchRng,
    ) -> Result<StepOutput>;
    /// Noises clean latents to the level of step `i` (image-to-image, inpainting).
    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor>;
}

/// The schedulers a caller can pick; `from_class_name` maps diffusers' class names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulerKind {
    Euler,
    EulerAncestral,
    Ddim,
    DpmPp2m,
    DpmPp2mKarras,
    Lcm,
    Pndm,
}

impl SchedulerKind {
    pub const NAMES: &'static [&'static str] = &[
        "euler",
        "euler_a",
        "ddim",
        "dpmpp_2m",
        "dpmpp_2m_karras",
        "lcm",
        "pndm",
    ];

    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "euler" => Self::Euler,
            "euler_a" | "euler_ancestral" => Self::EulerAncestral,
            "ddim" => Self::Ddim,
            "dpmpp_2m" => Self::DpmPp2m,
            "dpmpp_2m_karras" => Self::DpmPp2mKarras,
            "lcm" => Self::Lcm,
            "pndm" | "plms" => Self::Pndm,
            other => {
                return Err(invalid!(
                    "unknown scheduler {other:?}; use one of {}",
                    Self::NAMES.join(", ")
                ));
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Euler => "euler",
            Self::EulerAncestral => "euler_a",
            Self::Ddim => "ddim",
            Self::DpmPp2m => "dpmpp_2m",
            Self::DpmPp2mKarras => "dpmpp_2m_karras",
            Self::Lcm => "lcm",
            Self::Pndm => "pndm",
        }
    }

    /// The A1111 sampler name written into a PNG's parameters.
    pub fn a1111_name(self) -> &'static str {
        match self {
            Self::Euler => "Euler",
            Self::EulerAncestral => "Euler a",
            Self::Ddim => "DDIM",
            Self::DpmPp2m => "DPM++ 2M",
            Self::DpmPp2mKarras => "DPM++ 2M Karras",
            Self::Lcm => "LCM",
            Self::Pndm => "PLMS",
        }
    }

    /// The algorithm of a diffusers scheduler class, for the classes implemented here.
    pub fn from_class_name(class: &str, config: &SchedulerConfig) -> Option<Self> {
        Some(match class {
            "EulerDiscreteScheduler" => Self::Euler,
            "EulerAncestralDiscreteScheduler" => Self::EulerAncestral,
            "DDIMScheduler" => Self::Ddim,
            "DPMSolverMultistepScheduler" if config.use_karras_sigmas => Self::DpmPp2mKarras,
            "DPMSolverMultistepScheduler" => Self::DpmPp2m,
            "LCMScheduler" => Self::Lcm,
            "PNDMScheduler" => Self::Pndm,
            _ => return None,
        })
    }

    /// The scheduler a model ships with, from its config's `_class_name` (which the loader
    /// fills from `model_index.json` when the config lacks it). A class without an
    /// implementation here runs Euler, the closest general-purpose sampler.
    pub fn from_config(config: &SchedulerConfig) -> Result<Self> {
        Ok(config
            .class_name
            .as_deref()
            .and_then(|c| Self::from_class_name(c, config))
            .unwrap_or(Self::Euler))
    }

    /// Sets up the scheduler for `steps` inference steps.
    pub fn build(self, config: &SchedulerConfig, steps: usize) -> Result<Box<dyn Scheduler>> {
        self.build_with_strength(config, steps, 1.0)
    }

    /// Whether image-to-image at `strength` is built into the schedule (LCM: every step
    /// runs on a shorter schedule) rather than done by skipping its first steps.
    pub fn schedules_strength(self) -> bool {
        self == Self::Lcm
    }

    /// `build`, for image-to-image at `strength` when `schedules_strength()`.
    pub fn build_with_strength(
        self,
        config: &SchedulerConfig,
        steps: usize,
        strength: f64,
    ) -> Result<Box<dyn Scheduler>> {
        if steps == 0 {
            return Err(invalid!("steps must be at least 1"));
        }
        if steps > config.num_train_timesteps {
            return Err(invalid!(
                "steps ({steps}) cannot exceed the model's {} training timesteps",
                config.num_train_timesteps
            ));
        }
        Ok(match self {
            Self::Euler => Box::new(Euler::new(config, steps)?),
            Self::EulerAncestral => Box::new(EulerAncestral::new(config, steps)?),
            Self::Ddim => Box::new(Ddim::new(config, steps)?),
            Self::DpmPp2m => Box::new(DpmPp2m::new(config, steps, false)?),
            Self::DpmPp2mKarras => Box::new(DpmPp2m::new(config, steps, true)?),
            Self::Lcm => Box::new(Lcm::new(config, steps, strength)?),
            Self::Pndm => Box::new(Pndm::new(config, steps)?),
        })
    }
}

/// The clean-sample estimate from a model output at noise level `sigma`
/// (k-diffusion parameterisation: `x = x0 + σ ε`).
pub(crate) fn sigma_pred_original(
    pred: PredictionType,
    model_output: &Tensor,
    sample: &Tensor,
    sigma: f64,
) -> Result<Tensor> {
    Ok(match pred {
        PredictionType::Epsilon => (sample - (model_output * sigma)?)?,
        PredictionType::VPrediction => {
            let s2 = sigma * sigma + 1.0;
            ((model_output * (-sigma / s2.sqrt()))? + (sample / s2)?)?
        }
        PredictionType::Sample => model_output.clone(),
    })
}

/// The clean-sample estimate from a model output at `alpha_prod_t` (DDPM parameterisation).
pub(crate) fn alpha_pred_original(
    pred: PredictionType,
    model_output: &Tensor,
    sample: &Tensor,
    alpha_prod_t: f64,
) -> Result<Tensor> {
    let beta = 1.0 - alpha_prod_t;
    Ok(match pred {
        PredictionType::Epsilon => {
            ((sample - (model_output * beta.sqrt())?)? / alpha_prod_t.sqrt())?
        }
        PredictionType::VPrediction => {
            ((sample * alpha_prod_t.sqrt())? - (model_output * beta.sqrt())?)?
        }
        PredictionType::Sample => model_output.clone(),
    })
}

/// Per-image noise shaped like `like` (one generator per image).
pub(crate) fn noise_like(like: &Tensor, rng: &mut BatchRng) -> Result<Tensor> {
    let dims = like.dims();
    Ok(rng
        .randn(&dims[1..], like.device())?
        .to_dtype(like.dtype())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_helpers() {
        assert_eq!(linspace(0.0, 999.0, 4), vec![0.0, 333.0, 666.0, 999.0]);
        assert_eq!(
            arange(1000.0, 0.0, -250.0),
            vec![1000.0, 750.0, 500.0, 250.0]
        );
        assert_eq!(arange(1000.0, 0.0, -1000.0 / 3.0).len(), 3);
        assert_eq!(interp_index(1.5, &[0.0, 1.0, 3.0]), 2.0);
    }

    #[test]
    fn unknown_scheduler_names_the_choices() {
        let e = SchedulerKind::parse("heun").unwrap_err().to_string();
        assert!(e.contains("dpmpp_2m_karras") && e.contains("pndm"), "{e}");
        for name in SchedulerKind::NAMES {
            assert_eq!(SchedulerKind::parse(name).unwrap().name(), *name);
        }
    }
}
