//! LoRA training (issue 21), natively on candle's autograd.
//!
//! The UNet trains through the engine's own layers: every CPU kernel steps aside for a
//! tensor that is part of a gradient's graph (`kernels::cpu_f32` is false for it), so the
//! forward pass records candle's ops, and the ops candle fuses without a backward step
//! (softmax, layer norm) are replaced by their composed forms there. `lora` puts trainable
//! low-rank branches on the targeted layers, as PEFT's `LoraConfig` does.

pub mod export;
pub mod lora;
pub mod recipe;
pub mod run;
