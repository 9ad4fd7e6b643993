//! Loading a model folder in diffusers layout: every component from its own config.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use serde_json::Value;

use super::config_json;
use crate::pipelines::stable_diffusion::clip::{ClipTextConfig, ClipTextModel};
use crate::pipelines::stable_diffusion::tokenizer::ClipTokenizer;
use crate::pipelines::stable_diffusion::unet::{UNet2DConditionModel, UNetConfig};
use crate::pipelines::stable_diffusion::vae::{AutoencoderKL, VaeConfig};
use crate::pipelines::stable_diffusion::{Defaults, StableDiffusion};
use crate::schedulers::{SchedulerConfig, TimestepSpacing};
use crate::weights::Weights;
use crate::{EngineError, Result};

pub(crate) fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            EngineError::NotFound(format!("{} is missing", path.display()))
        }
        _ => EngineError::io(path, e),
    })
}

fn with_path<T>(r: Result<T>, path: &Path) -> Result<T> {
    r.map_err(|e| match e {
        EngineError::InvalidInput(m) => EngineError::bad_model(path, m),
        other => other,
    })
}

/// The safetensors file(s) of a component folder: the plain file first, then the fp16
/// variant, then a sharded index.
pub fn component_weights(dir: &Path) -> Result<Vec<PathBuf>> {
    for stem in ["diffusion_pytorch_model", "model"] {
        for name in [
            format!("{stem}.safetensors"),
            format!("{stem}.fp16.safetensors"),
        ] {
            let p = dir.join(&name);
            if p.is_file() {
                return Ok(vec![p]);
            }
        }
        for name in [
            format!("{stem}.safetensors.index.json"),
            format!("{stem}.safetensors.index.fp16.json"),
        ] {
            let p = dir.join(&name);
            if p.is_file() {
                let index: Value = config_json::from_str(&read_text(&p)?)
                    .map_err(|e| EngineError::bad_model(&p, e.to_string()))?;
                let mut files: Vec<String> = index["weight_map"]
                    .as_object()
                    .map(|m| {
                        m.values()
                            .filter_map(|v| v.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                files.sort();
                files.dedup();
                return Ok(files.into_iter().map(|f| dir.join(f)).collect());
            }
        }
    }
    Err(EngineError::NotFound(format!(
        "{}: no .safetensors weights found",
        dir.display()
    )))
}

fn load_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    config_json::from_str(&read_text(path)?)
        .map_err(|e| EngineError::bad_model(path, format!("invalid config: {e}")))
}

/// Loads the UNet, VAE, text encoders, tokenizers and scheduler config of a diffusers folder.
pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<StableDiffusion> {
    if !dir.join("unet").is_dir() || !dir.join("vae").is_dir() {
        return Err(EngineError::NotFound(format!(
            "{} is not a diffusers model folder (it needs unet/ and vae/)",
            dir.display()
        )));
    }
    let index: Value = if dir.join("model_index.json").is_file() {
        load_json(&dir.join("model_index.json"))?
    } else {
        Value::Null
    };

    let unet_cfg_path = dir.join("unet/config.json");
    let unet_cfg = with_path(
        UNetConfig::from_json(&read_text(&unet_cfg_path)?),
        &unet_cfg_path,
    )?;
    let w = Weights::mmap(&component_weights(&dir.join("unet"))?)?;
    let unet = with_path(
        UNet2DConditionModel::new(unet_cfg, w.var_builder(dtype, device)),
        &unet_cfg_path,
    )?;
    w.check_all_used()?;
    let mut params = w.loaded_elements();

    let vae_cfg: VaeConfig = load_json(&dir.join("vae/config.json"))?;
    let w = Weights::mmap(&component_weights(&dir.join("vae"))?)?;
    let vae = with_path(
        AutoencoderKL::new(vae_cfg, w.var_builder(dtype, device)),
        &dir.join("vae/config.json"),
    )?;
    w.check_all_used()?;
    params += w.loaded_elements();

    let mut tokenizers = Vec::new();
    let mut text_encoders = Vec::new();
    for (enc, tok) in [
        ("text_encoder", "tokenizer"),
        ("text_encoder_2", "tokenizer_2"),
    ] {
        let enc_dir = dir.join(enc);
        if !enc_dir.is_dir() {
            continue;
        }
        let cfg_path = enc_dir.join("config.json");
        let cfg: ClipTextConfig = load_json(&cfg_path)?;
        let w = Weights::mmap(&component_weights(&enc_dir)?)?;
        text_encoders.push(with_path(
            ClipTextModel::new(cfg, w.var_builder(dtype, device)),
            &cfg_path,
        )?);
        w.check_all_used()?;
        params += w.loaded_elements();
        tokenizers.push(ClipTokenizer::from_dir(&dir.join(tok))?);
    }
    if text_encoders.is_empty() {
        return Err(EngineError::NotFound(format!(
            "{}: no text_encoder/ folder",
            dir.display()
        )));
    }

    let sched_path = dir.join("scheduler/scheduler_config.json");
    let mut scheduler_config = if sched_path.is_file() {
        with_path(
            SchedulerConfig::from_json(&read_text(&sched_path)?),
            &sched_path,
        )?
    } else {
        SchedulerConfig::default()
    };
    // diffusers takes the class from model_index.json; the config file may not name it.
    if scheduler_config.class_name.is_none() {
        scheduler_config.class_name = index["scheduler"][1].as_str().map(String::from);
    }

    let sdxl = unet.needs_added_cond();
    let force_zeros = index
        .get("force_zeros_for_empty_prompt")
        .and_then(|v| v.as_bool())
        .unwrap_or(sdxl);
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut model = assemble(
        name,
        tokenizers,
        text_encoders,
        unet,
        vae,
        scheduler_config,
        force_zeros,
        device,
        dtype,
    )?;
    model.parameter_count = params;
    Ok(model)
}

/// Checks that the components fit together and derives the model's defaults.
#[allow(clippy::too_many_arguments)]
pub(crate) fn assemble(
    name: String,
    tokenizers: Vec<ClipTokenizer>,
    text_encoders: Vec<ClipTextModel>,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    scheduler_config: SchedulerConfig,
    force_zeros_for_empty_prompt: bool,
    device: &Device,
    dtype: DType,
) -> Result<StableDiffusion> {
    let ctx: usize = text_encoders.iter().map(|e| e.config.hidden_size).sum();
    let cross = match &unet.config.cross_attention_dim {
        Value::Number(n) => n.as_u64().unwrap_or(0) as usize,
        Value::Array(a) => a.first().and_then(|v| v.as_u64()).unwrap_or(0) as usize,
        _ => 0,
    };
    if cross != ctx {
        return Err(EngineError::bad_model(
            &name,
            format!(
                "the UNet expects {cross}-wide text embeddings but the text encoders give {ctx}"
            ),
        ));
    }
    let lc = vae.config.latent_channels;
    let inc = unet.config.in_channels;
    // Plain, instruction editing (the image's latents beside) or inpainting (and a mask).
    if inc != lc && inc != 2 * lc && inc != 2 * lc + 1 {
        return Err(EngineError::bad_model(
            &name,
            format!(
                "UNet in_channels {inc} fits none of {lc} latent channels, instruction editing ({}) or inpainting ({})",
                2 * lc,
                2 * lc + 1
            ),
        ));
    }
    if let Some((input, tdim)) = unet.added_cond_dims() {
        let pooled = text_encoders.last().map(|e| e.pooled_dim()).unwrap_or(0);
        if input != pooled + 6 * tdim {
            return Err(EngineError::bad_model(
                &name,
                format!(
                    "add_embedding takes {input} inputs but pooled text ({pooled}) + 6 x {tdim} time ids differ"
                ),
            ));
        }
    }
    let size = unet.config.sample_size.unwrap_or(64) * vae.config.scale_factor();
    let (steps, guidance) = match scheduler_config.class_name.as_deref() {
        Some("LCMScheduler") => (
            4,
            if unet.config.time_cond_proj_dim.is_some() {
                8.0
            } else {
                1.0
            },
        ),
        // Distilled one-step models (SD-Turbo, SDXL-Turbo) ship trailing Euler schedules.
        _ if scheduler_config.timestep_spacing == Some(TimestepSpacing::Trailing) => (1, 0.0),
        _ => (30, if unet.needs_added_cond() { 5.0 } else { 7.5 }),
    };
    Ok(StableDiffusion {
        name,
        tokenizers: std::sync::Arc::new(tokenizers),
        text_encoders,
        unet,
        vae: std::sync::Arc::new(vae),
        scheduler_config,
        force_zeros_for_empty_prompt,
        defaults: Defaults {
            steps,
            guidance,
            width: size,
            height: size,
        },
        parameter_count: 0,
        preview_vae: None,
        device: device.clone(),
        dtype,
    })
}

/// The components of a model built from its config files alone, with random weights, for
/// speed measurements (time does not depend on weight values). Tokenizers are not needed.
pub struct RandomComponents {
    pub text_encoders: Vec<ClipTextModel>,
    pub unet: UNet2DConditionModel,
    pub vae: std::sync::Arc<AutoencoderKL>,
}

pub fn load_random(dir: &Path, device: &Device, dtype: DType) -> Result<RandomComponents> {
    let vb = || crate::weights::random_var_builder(dtype, device);
    let unet_cfg_path = dir.join("unet/config.json");
    let unet = with_path(
        UNet2DConditionModel::new(
            with_path(
                UNetConfig::from_json(&read_text(&unet_cfg_path)?),
                &unet_cfg_path,
            )?,
            vb(),
        ),
        &unet_cfg_path,
    )?;
    let vae = AutoencoderKL::new(load_json(&dir.join("vae/config.json"))?, vb())?;
    let mut text_encoders = Vec::new();
    for enc in ["text_encoder", "text_encoder_2"] {
        let p = dir.join(enc).join("config.json");
        if p.is_file() {
            text_encoders.push(ClipTextModel::new(load_json(&p)?, vb())?);
        }
    }
    Ok(RandomComponents {
        text_encoders,
        unet,
        vae: std::sync::Arc::new(vae),
    })
}

/// Loads a tiny autoencoder (TAESD) folder: `config.json` and its safetensors weights.
pub fn load_tiny_vae(
    dir: &Path,
    device: &Device,
    dtype: DType,
) -> Result<crate::pipelines::stable_diffusion::vae_tiny::AutoencoderTiny> {
    use crate::pipelines::stable_diffusion::vae_tiny::AutoencoderTiny;
    let cfg_path = dir.join("config.json");
    let w = Weights::mmap(&component_weights(dir)?)?;
    let mut vae = with_path(
        AutoencoderTiny::new(load_json(&cfg_path)?, w.var_builder(dtype, device)),
        &cfg_path,
    )?;
    w.check_all_used()?;
    vae.parameter_count = w.loaded_elements();
    Ok(vae)
}
