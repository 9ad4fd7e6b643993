//! Trainable LoRA branches on a UNet's (or a text encoder's) linear layers, named and matched as PEFT does
//! (huggingface/peft@5d602fd:src/peft/tuners/tuners_utils.py `check_target_module_exists`:
//! a layer is a target when its name is one or ends with `.` + one), scaled `alpha / rank`.

use candle_core::{Tensor, Var};

use crate::kernels::LoraBranch;
use crate::pipelines::lora::{Layer, Visit};
use crate::pipelines::stable_diffusion::clip::ClipTextModel;
use crate::pipelines::stable_diffusion::unet::UNet2DConditionModel;
use crate::{EngineError, Result};

/// Which layers train and how.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    /// Layer names or their last parts (`to_q`, `to_out.0`, `ff.net.2`).
    pub targets: Vec<String>,
}

impl Default for LoraConfig {
    /// diffusers' `train_text_to_image_lora.py`: rank 4, alpha = rank, the attention's
    /// projections.
    fn default() -> Self {
        Self {
            rank: 4,
            alpha: 4.0,
            targets: ["to_q", "to_k", "to_v", "to_out.0"]
                .map(String::from)
                .to_vec(),
        }
    }
}

impl LoraConfig {
    pub fn matches(&self, path: &str) -> bool {
        self.targets
            .iter()
            .any(|t| path == t || path.ends_with(&format!(".{t}")))
    }
}

/// The branches put on a model, by layer name (in the model's order).
pub struct Trainable {
    pub layers: Vec<(String, LoraBranch)>,
}

impl Trainable {
    /// Every trainable tensor (each layer's `down`, then `up`).
    pub fn vars(&self) -> Vec<Var> {
        self.layers
            .iter()
            .flat_map(|(_, l)| [l.down.clone(), l.up.clone()])
            .collect()
    }
}

/// Puts a LoRA branch on every layer of `unet` that `config` targets (linear layers, and
/// convolutions as LoCon does), its weights from `init(name, fan_in, out)` (`down` `rank ×
/// fan_in`, `up` `out × rank` values, shaped for the layer). A target that matches no layer is
/// an error.
pub fn inject(
    unet: &mut UNet2DConditionModel,
    config: &LoraConfig,
    init: &mut dyn FnMut(&str, usize, usize) -> Result<(Tensor, Tensor)>,
) -> Result<Trainable> {
    inject_into(&mut |f| unet.visit_layers(f), config, init)
}

/// [`inject`] on a text encoder (targets as transformers names its layers: `q_proj`,
/// `k_proj`, `v_proj`, `out_proj`, `fc1`, `fc2`).
pub fn inject_text(
    encoder: &mut ClipTextModel,
    config: &LoraConfig,
    init: &mut dyn FnMut(&str, usize, usize) -> Result<(Tensor, Tensor)>,
) -> Result<Trainable> {
    inject_into(&mut |f| encoder.visit_layers(f), config, init)
}

fn inject_into(
    visit: &mut dyn FnMut(&mut Visit) -> Result<()>,
    config: &LoraConfig,
    init: &mut dyn FnMut(&str, usize, usize) -> Result<(Tensor, Tensor)>,
) -> Result<Trainable> {
    let scale = config.alpha / config.rank as f64;
    let mut layers = Vec::new();
    visit(&mut |path, layer| {
        if !config.matches(path) {
            return Ok(());
        }
        let rank = config.rank;
        // A linear layer's branch: `[rank, in]` and `[out, rank]`; a convolution's (LoCon):
        // `[rank, in, k, k]` (the layer's stride and padding) and `[out, rank, 1, 1]`. `init`
        // makes them flat (`fan_in` = in·k·k).
        let (fan_in, out, down_shape, up_shape) = match &layer {
            Layer::Linear(l) => {
                let (inp, out) = l.dims()?;
                (inp, out, vec![rank, inp], vec![out, rank])
            }
            Layer::Conv(c) => {
                if c.cfg.groups != 1 {
                    return Err(EngineError::InvalidInput(format!(
                        "LoRA training: {path} is a grouped convolution"
                    )));
                }
                let (out, inp, kh, kw) = c.dims()?;
                (
                    inp * kh * kw,
                    out,
                    vec![rank, inp, kh, kw],
                    vec![out, rank, 1, 1],
                )
            }
        };
        let (down, up) = init(path, fan_in, out)?;
        if down.elem_count() != rank * fan_in || up.elem_count() != out * rank {
            return Err(EngineError::InvalidInput(format!(
                "LoRA training: {path} takes down {down_shape:?} and up {up_shape:?}, not {:?} and {:?}",
                down.dims(),
                up.dims()
            )));
        }
        let branch = LoraBranch {
            down: Var::from_tensor(&down.reshape(down_shape)?)?,
            up: Var::from_tensor(&up.reshape(up_shape)?)?,
            scale,
        };
        match layer {
            Layer::Linear(l) => l.set_lora(Some(branch.clone())),
            Layer::Conv(c) => c.set_lora(Some(branch.clone())),
        }
        layers.push((path.to_string(), branch));
        Ok(())
    })?;
    if layers.is_empty() {
        return Err(EngineError::InvalidInput(format!(
            "LoRA training: no layer matches {:?}",
            config.targets
        )));
    }
    Ok(Trainable { layers })
}
