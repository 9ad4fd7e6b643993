//! Pipelines: each turns a request into images with a step callback and a cancel token.

pub mod caption;
pub mod edit;
pub mod erase;
pub mod face;
pub mod lora;
pub mod matte;
pub mod segment;
pub mod stable_diffusion;
pub mod train;
pub mod upscale;
