//! Krya's native inference engine: the Stable Diffusion family on candle, faithful to
//! diffusers on the same weights and noise.
//!
//! Layout:
//! - `model`: where models come from (registry names, Hugging Face repos, diffusers
//!   folders, single-file checkpoints) and how their configs become components;
//! - `pipelines::<capability>`: each a request, a run with a step callback and a cancel
//!   token; `pipelines::stable_diffusion`: tokenizer, text encoders, UNet, VAE, the
//!   denoising loop, and `stream`, the live canvas's per-session renderer (TAESD, cached
//!   prompts);
//! - `schedulers`: one file per sampling algorithm;
//! - `rng`: a PyTorch-compatible generator so seeds match diffusers;
//! - `weights`: tensor sources that check every stored tensor is used;
//! - `image_io`: image tensors, previews and PNGs with A1111 parameters; `pyramid`: a large
//!   image as levels of tiles for viewers;
//! - `kernels`: CPU kernels faster than candle's generic ones, a file per family (conv,
//!   linear, norm, attention, math; the direct, Winograd and flash-attention kernels).

pub mod cancel;
pub mod device;
pub mod error;
pub mod image_io;
pub mod kernels;
pub mod model;
pub mod pipelines;
pub mod pyramid;
pub mod rng;
pub mod schedulers;
pub mod weights;

pub use cancel::CancelToken;
pub use error::{EngineError, Result};
pub use pipelines::stable_diffusion::{
    GenerateOptions, GenerateRequest, Generated, PromptEmbeds, StableDiffusion, StepProgress,
};
pub use schedulers::SchedulerKind;
