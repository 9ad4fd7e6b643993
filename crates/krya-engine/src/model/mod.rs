//! Where models come from and how their files become a pipeline.
//!
//! A model is named by a diffusers folder, a single-file checkpoint, or a Hugging Face
//! repo id (fetched into the standard HF cache). Its architecture is always read from its
//! own config files; presets only fill in what a single-file checkpoint lacks.

pub mod cache;
pub mod config_json;
pub mod diffusers;
pub mod download;
pub mod hub;
pub mod single_file;
pub mod state_dict;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use crate::pipelines::stable_diffusion::StableDiffusion;
use crate::{EngineError, Result};

/// A model reference as the user gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A folder in diffusers layout (`model_index.json`, `unet/`, `vae/`, ...).
    Folder(PathBuf),
    /// A single `.safetensors` checkpoint in the A1111/CivitAI layout.
    Checkpoint(PathBuf),
    /// A Hugging Face repo id, e.g. `stabilityai/sd-turbo`.
    Hub { repo: String, revision: String },
}

impl ModelSource {
    /// Interprets `spec`: an existing folder or file, else a `owner/name[@revision]` repo id.
    pub fn parse(spec: &str) -> Result<Self> {
        let path = Path::new(spec);
        if path.is_dir() {
            return Ok(ModelSource::Folder(path.to_path_buf()));
        }
        if path.is_file() {
            return Ok(ModelSource::Checkpoint(path.to_path_buf()));
        }
        let (repo, revision) = spec.split_once('@').unwrap_or((spec, "main"));
        let valid = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        match repo.split_once('/') {
            Some((owner, name)) if valid(owner) && valid(name) && !spec.starts_with('.') => {
                Ok(ModelSource::Hub {
                    repo: repo.to_string(),
                    revision: revision.to_string(),
                })
            }
            _ => Err(EngineError::NotFound(format!(
                "model {spec:?} is not a folder, a checkpoint file or a Hugging Face repo id (owner/name)"
            ))),
        }
    }
}

/// Loads a model from a folder, a checkpoint, or a repo already in the HF cache.
pub fn load(source: &ModelSource, device: &Device, dtype: DType) -> Result<StableDiffusion> {
    match source {
        ModelSource::Folder(dir) => diffusers::load(dir, device, dtype),
        ModelSource::Checkpoint(path) => {
            if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
                return Err(EngineError::InvalidInput(format!(
                    "{}: only .safetensors checkpoints are read (pickled .ckpt files can run code; convert them first)",
                    path.display()
                )));
            }
            single_file::load(path, device, dtype)
        }
        ModelSource::Hub { repo, revision } => {
            diffusers::load(&hub::require_snapshot(repo, revision)?, device, dtype)
        }
    }
}

/// TAESD for the SD 1.x / 2.x latent space, and for SDXL's.
pub const TAESD_REPO: &str = "madebyollin/taesd";
pub const TAESDXL_REPO: &str = "madebyollin/taesdxl";

/// Where a model's tiny autoencoder comes from: a `taesd/` folder inside the model's own
/// folder (or cached snapshot) when it has one, else the TAESD repo of its latent space,
/// told by its UNet (SDXL's takes pooled text and size conditioning), never by its name.
pub fn tiny_vae_source(source: &ModelSource, model: &StableDiffusion) -> ModelSource {
    let own = match source {
        ModelSource::Folder(dir) => Some(dir.join("taesd")),
        ModelSource::Hub { repo, revision } => {
            hub::cached_snapshot(repo, revision).map(|d| d.join("taesd"))
        }
        ModelSource::Checkpoint(_) => None,
    };
    if let Some(dir) = own.filter(|d| d.join("config.json").is_file()) {
        return ModelSource::Folder(dir);
    }
    let repo = if model.unet.needs_added_cond() {
        TAESDXL_REPO
    } else {
        TAESD_REPO
    };
    ModelSource::Hub {
        repo: repo.into(),
        revision: "main".into(),
    }
}

/// Loads the tiny autoencoder `tiny_vae_source` names, downloading a hub one when it is
/// not cached yet (unless `HF_HUB_OFFLINE`).
pub fn load_tiny_vae(
    source: &ModelSource,
    device: &Device,
    dtype: DType,
) -> Result<crate::pipelines::stable_diffusion::vae_tiny::AutoencoderTiny> {
    let dir = match source {
        ModelSource::Folder(dir) => dir.clone(),
        ModelSource::Checkpoint(p) => {
            return Err(EngineError::InvalidInput(format!(
                "{}: a tiny autoencoder is a folder (config.json + weights)",
                p.display()
            )));
        }
        ModelSource::Hub { repo, revision } => match hub::cached_snapshot(repo, revision) {
            Some(d) => d,
            None => hub::pull(repo, revision, &mut |_| {})?,
        },
    };
    diffusers::load_tiny_vae(&dir, device, dtype)
}
