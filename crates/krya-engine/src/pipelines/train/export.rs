//! A trained LoRA as kohya/sd-scripts saves one, which A1111, Forge and ComfyUI load:
//! `lora_unet_<module>.lora_down.weight` / `.lora_up.weight` / `.alpha`, and `lora_te_…` for
//! the text encoder's layers (module names with
//! `_` for `.`: diffusers' names for SD 1.x/2.x, the SGM names for SDXL, as kohya trains
//! each), and the metadata those tools read (kohya-ss/sd-scripts@48d368f:train_network.py,
//! library/sai_model_spec.py; A1111's `network.py` tells the base by
//! `ss_base_model_version` and `ss_v2`).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use sha2::Digest;

use super::lora::Trainable;
use crate::pipelines::stable_diffusion::unet::UNet2DConditionModel;
use crate::{EngineError, Result};

/// What the file says about itself.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    /// `sd1`, `sd2` or `sdxl`.
    pub family: String,
    /// SD 2.x 768-v models predict velocity.
    pub v_prediction: bool,
    pub name: String,
    pub trigger: Option<String>,
    pub steps: usize,
    pub resolution: usize,
    pub rank: usize,
    pub alpha: f64,
    /// The base model's name.
    pub base_model: String,
}

/// The file's bytes: tensors in f32, `alpha` per module, the metadata as strings (with
/// `sshs_model_hash`, the SHA-256 of everything after the header, as kohya writes it).
pub fn kohya_bytes(
    trainable: &Trainable,
    text: Option<&Trainable>,
    unet: &UNet2DConditionModel,
    meta: &Metadata,
) -> Result<Vec<u8>> {
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    let unet_layers = trainable.layers.iter().map(|l| (true, l));
    let text_layers = text.into_iter().flat_map(|t| &t.layers).map(|l| (false, l));
    for (in_unet, (path, b)) in unet_layers.chain(text_layers) {
        let key = if !in_unet {
            // kohya: `lora_te_` (SDXL's first encoder: `lora_te1_`) and transformers' names.
            let prefix = if meta.family == "sdxl" {
                "lora_te1"
            } else {
                "lora_te"
            };
            format!("{prefix}_{}", path.replace('.', "_"))
        } else if meta.family == "sdxl" {
            let module = unet.ldm_name(path).ok_or_else(|| {
                EngineError::InvalidInput(format!("{path} has no SGM name to save it under"))
            })?;
            format!("lora_unet_{}", module.replace('.', "_"))
        } else {
            format!("lora_unet_{}", path.replace('.', "_"))
        };
        tensors.push((
            format!("{key}.lora_down.weight"),
            b.down.as_tensor().clone(),
        ));
        tensors.push((format!("{key}.lora_up.weight"), b.up.as_tensor().clone()));
        tensors.push((
            format!("{key}.alpha"),
            // Each branch's own (its scale is alpha / rank).
            Tensor::new(
                (b.scale * b.down.as_tensor().dim(0)? as f64) as f32,
                &Device::Cpu,
            )?,
        ));
    }
    let (version, arch) = match (meta.family.as_str(), meta.v_prediction) {
        ("sdxl", _) => ("sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora"),
        ("sd2", true) => ("sd_v2_v", "stable-diffusion-v2-768-v/lora"),
        ("sd2", false) => ("sd_v2", "stable-diffusion-v2-512/lora"),
        _ => ("sd_v1", "stable-diffusion-v1/lora"),
    };
    let mut m: HashMap<String, String> = [
        ("ss_base_model_version", version.to_string()),
        (
            "ss_v2",
            if meta.family == "sd2" {
                "True"
            } else {
                "False"
            }
            .into(),
        ),
        ("ss_network_module", "networks.lora".into()),
        ("ss_network_dim", meta.rank.to_string()),
        ("ss_network_alpha", format!("{}", meta.alpha)),
        ("ss_output_name", meta.name.clone()),
        ("ss_steps", meta.steps.to_string()),
        ("ss_sd_model_name", meta.base_model.clone()),
        ("ss_resolution", format!("({0}, {0})", meta.resolution)),
        ("modelspec.sai_model_spec", "1.0.1".into()),
        ("modelspec.architecture", arch.into()),
        (
            "modelspec.implementation",
            if meta.family == "sdxl" {
                "https://github.com/Stability-AI/generative-models".into()
            } else {
                "diffusers".into()
            },
        ),
        ("modelspec.title", meta.name.clone()),
        ("modelspec.resolution", format!("{0}x{0}", meta.resolution)),
        (
            "modelspec.prediction_type",
            if meta.v_prediction { "v" } else { "epsilon" }.into(),
        ),
        ("krya.trainer", "krya".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if let Some(t) = &meta.trigger {
        m.insert("modelspec.trigger_phrase".into(), t.clone());
    }
    // kohya's hash covers the tensors' bytes (the file after its header).
    let body = safetensors_bytes(&tensors, None)?;
    let header = u64::from_le_bytes(body[..8].try_into().unwrap()) as usize;
    let hash = sha2::Sha256::digest(&body[8 + header..]);
    m.insert(
        "sshs_model_hash".into(),
        hash.iter().map(|b| format!("{b:02x}")).collect(),
    );
    safetensors_bytes(&tensors, Some(m))
}

/// Tensors (f32 or u32) as a safetensors file's bytes, with string `metadata` (candle's own
/// `safetensors::save` writes a file, without metadata).
pub(crate) fn safetensors_bytes(
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let data = tensors
        .iter()
        .map(|(k, t)| {
            let flat = t.flatten_all()?;
            let (dtype, bytes): (_, Vec<u8>) = match t.dtype() {
                DType::F32 => (
                    safetensors::Dtype::F32,
                    flat.to_vec1::<f32>()?
                        .into_iter()
                        .flat_map(f32::to_le_bytes)
                        .collect(),
                ),
                DType::U32 => (
                    safetensors::Dtype::U32,
                    flat.to_vec1::<u32>()?
                        .into_iter()
                        .flat_map(u32::to_le_bytes)
                        .collect(),
                ),
                other => return Err(crate::invalid!("cannot save a {other:?} tensor ({k})")),
            };
            Ok((k.clone(), t.dims().to_vec(), dtype, bytes))
        })
        .collect::<Result<Vec<_>>>()?;
    let bad = |e: safetensors::SafeTensorError| {
        EngineError::InvalidInput(format!("cannot write safetensors: {e}"))
    };
    let views = data
        .iter()
        .map(|(k, shape, dtype, bytes)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (k.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(bad)?;
    safetensors::serialize(views, metadata).map_err(bad)
}
