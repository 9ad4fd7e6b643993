//! LoRAs (capability `lora`): community adapter files merged into a model's weights.
//!
//! `format` reads every file format users have into one form; `delta` computes each
//! algorithm's weight change; `prompt` parses A1111's `<lora:name:weight>` tags. `apply`
//! makes a patched copy of a loaded model: the layers an adapter touches get
//! `W + Σ mᵢ·sᵢ·ΔWᵢ` (computed in f32, as ComfyUI and Forge merge), every other tensor is
//! shared with the base, which is never changed, so switching LoRAs never reloads the base
//! and dropping the copy restores it exactly. A key that matches no layer is an error that
//! names it, never a silent no-op.

pub mod delta;
pub mod format;
pub mod prompt;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Tensor};

pub use format::{Component, LoraFile};

use crate::kernels::{Conv2d, Linear};
use crate::pipelines::stable_diffusion::StableDiffusion;
use crate::{EngineError, Result};

/// The file diffusers saves an adapter as.
pub const DIFFUSERS_FILE: &str = "pytorch_lora_weights.safetensors";

/// The LoRA file in a folder (a hub snapshot of an adapter repo): diffusers'
/// `pytorch_lora_weights.safetensors`, else the folder's only `.safetensors` file.
pub fn file_in_folder(dir: &Path) -> Option<std::path::PathBuf> {
    let named = dir.join(DIFFUSERS_FILE);
    if named.is_file() {
        return Some(named);
    }
    let mut files = std::fs::read_dir(dir).ok()?.filter_map(|e| {
        let p = e.ok()?.path();
        (p.extension().and_then(|x| x.to_str()) == Some("safetensors")).then_some(p)
    });
    let first = files.next()?;
    files.next().is_none().then_some(first)
}

/// The base family a LoRA's keys and shapes are for: `sd1`, `sd2` or `sdxl` (SDXL's second
/// text encoder or SGM block names; else the width of the cross-attention's context or of
/// the text encoder), `None` when they do not say (tiny test models).
pub fn family(shapes: &BTreeMap<String, Vec<usize>>) -> Option<&'static str> {
    let sdxl_names = [
        "lora_te2_",
        "text_encoder_2.",
        "lora_unet_input_blocks",
        "lora_unet_middle_block",
        "lora_unet_output_blocks",
    ];
    if shapes
        .keys()
        .any(|k| sdxl_names.iter().any(|p| k.starts_with(p)))
    {
        return Some("sdxl");
    }
    let down = |k: &str| {
        k.ends_with("lora_down.weight")
            || k.ends_with("lora_A.weight")
            || k.ends_with(".down.weight")
    };
    let width = |part: &str| {
        shapes
            .iter()
            .find(|(k, s)| k.contains(part) && down(k) && s.len() >= 2)
            .map(|(_, s)| s[1])
    };
    match (width("attn2_to_k").or(width("attn2.to_k")), width("q_proj")) {
        (Some(2048), _) => Some("sdxl"),
        (Some(1024), _) | (None, Some(1024)) => Some("sd2"),
        (Some(768), _) | (None, Some(768)) => Some("sd1"),
        _ => None,
    }
}

/// Whether `path` is a LoRA file (every key an adapter tensor), and then its family.
pub fn detect_file(path: &Path) -> Option<Option<&'static str>> {
    if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        return None;
    }
    let shapes = crate::model::state_dict::shapes_cached(path)?;
    let all = !shapes.is_empty() && shapes.keys().all(|k| format::is_adapter_key(k));
    all.then(|| family(&shapes))
}

/// A layer a LoRA can change.
pub enum Layer<'a> {
    Linear(&'a mut Linear),
    Conv(&'a mut Conv2d),
}

impl Layer<'_> {
    fn dims(&self) -> candle_core::Result<Vec<usize>> {
        Ok(match self {
            Layer::Linear(l) => l.weight()?.dims().to_vec(),
            Layer::Conv(c) => {
                let (o, i, h, w) = c.dims()?;
                vec![o, i, h, w]
            }
        })
    }
}

/// Called with each layer a LoRA can change and its diffusers name.
pub type Visit<'v> = dyn FnMut(&str, Layer<'_>) -> Result<()> + 'v;

/// How strongly one LoRA applies: A1111's `<lora:name:te:unet>` (both the same unless
/// given apart).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Strength {
    pub unet: f32,
    pub text: f32,
}

impl Strength {
    pub fn new(weight: f32) -> Self {
        Self {
            unet: weight,
            text: weight,
        }
    }
}

/// One adapter's change to one layer, in the order the LoRAs were given.
struct Patch {
    delta: Tensor,
    multiplier: f32,
    dora_scale: Option<Tensor>,
    bias: Option<Tensor>,
}

/// A component's layers: every name they go by (underscored) → the diffusers name, and
/// each layer's weight shape.
struct Table {
    names: HashMap<String, String>,
    dims: HashMap<String, Vec<usize>>,
}

impl Table {
    fn new(
        visit: impl FnOnce(&mut Visit) -> Result<()>,
        aliases: impl Fn(&str) -> Vec<String>,
    ) -> Result<Self> {
        let mut dims = HashMap::new();
        visit(&mut |path: &str, layer: Layer<'_>| {
            dims.insert(path.to_string(), layer.dims()?);
            Ok(())
        })?;
        let mut names = HashMap::new();
        for path in dims.keys() {
            names.insert(path.replace('.', "_"), path.clone());
            for alias in aliases(path) {
                names.entry(alias.replace('.', "_")).or_insert(path.clone());
            }
        }
        Ok(Self { names, dims })
    }
}

fn text_aliases(path: &str) -> Vec<String> {
    // transformers 5 saves CLIPTextModel's keys without the `text_model.` level.
    path.strip_prefix("text_model.")
        .map(|p| vec![p.to_string()])
        .unwrap_or_default()
}

/// `model` with `loras` merged into its weights, and the bytes of the layers it holds on
/// its own (the rest is shared with `model`).
pub fn apply(
    model: &StableDiffusion,
    loras: &[(&LoraFile, Strength)],
) -> Result<(StableDiffusion, u64)> {
    let mut out = model.clone();
    let mut tables: HashMap<Component, Table> = HashMap::new();
    {
        let unet = &mut out.unet;
        let paths = Table::new(|f| unet.visit_layers(f), |_| vec![])?;
        let aliases: HashMap<String, String> = paths
            .dims
            .keys()
            .filter_map(|p| Some((unet.ldm_name(p)?.replace('.', "_"), p.clone())))
            .collect();
        let mut table = paths;
        for (alias, path) in aliases {
            table.names.entry(alias).or_insert(path);
        }
        tables.insert(Component::Unet, table);
    }
    for (i, te) in out.text_encoders.iter_mut().enumerate() {
        tables.insert(
            Component::Text(i),
            Table::new(|f| te.visit_layers(f), text_aliases)?,
        );
    }

    let mut patches: HashMap<(Component, String), Vec<Patch>> = HashMap::new();
    for (file, strength) in loras {
        for m in &file.modules {
            let bad = |msg: String| {
                let hint = file
                    .base_hint()
                    .map(|b| format!(" (the file says it is for {b})"))
                    .unwrap_or_default();
                EngineError::InvalidInput(format!(
                    "LoRA {}: key {:?} {msg}{hint}",
                    file.origin, m.key
                ))
            };
            let what = match m.component {
                Component::Unet => "the UNet".to_string(),
                Component::Text(i) => format!("text encoder {}", i + 1),
            };
            let table = tables
                .get(&m.component)
                .ok_or_else(|| bad(format!("is for {what}, which {} does not have", model.name)))?;
            let path = table
                .names
                .get(&m.name)
                .ok_or_else(|| bad(format!("matches no layer of {what} of {}", model.name)))?;
            let dims = &table.dims[path];
            let delta = delta::delta(m, dims, file.default_alpha)
                .map_err(|e| bad(format!("does not fit {path}: {e}")))?;
            let multiplier = match m.component {
                Component::Unet => strength.unet,
                Component::Text(_) => strength.text,
            };
            if multiplier == 0.0 {
                continue;
            }
            patches
                .entry((m.component, path.clone()))
                .or_default()
                .push(Patch {
                    delta,
                    multiplier,
                    dora_scale: m.dora_scale.clone(),
                    bias: m.bias.clone(),
                });
        }
    }

    let mut bytes = 0u64;
    let dtype = model.dtype;
    let mut patch = |component: Component, path: &str, layer: Layer<'_>| -> Result<()> {
        let Some(list) = patches.get(&(component, path.to_string())) else {
            return Ok(());
        };
        let (weight, bias) = match &layer {
            Layer::Linear(l) => (l.weight()?, l.bias().cloned()),
            Layer::Conv(c) => (c.weight()?, c.bias().cloned()),
        };
        let mut w = weight.to_dtype(DType::F32)?;
        let mut b = bias.map(|b| b.to_dtype(DType::F32)).transpose()?;
        for p in list {
            w = delta::merge(&w, &p.delta, p.multiplier, p.dora_scale.as_ref())
                .map_err(|e| EngineError::InvalidInput(format!("LoRA on {path}: {e}")))?;
            if let Some(db) = &p.bias {
                let old = b.as_ref().ok_or_else(|| {
                    EngineError::InvalidInput(format!(
                        "LoRA on {path}: the layer has no bias to change"
                    ))
                })?;
                b = Some((old + (db.reshape(old.dims())? * p.multiplier as f64)?)?);
            }
        }
        let device = weight.device().clone();
        let w = w.to_dtype(dtype)?.to_device(&device)?;
        let b = b
            .map(|b| b.to_dtype(dtype)?.to_device(&device))
            .transpose()?;
        bytes += (w.elem_count() * dtype.size_in_bytes()) as u64;
        match layer {
            Layer::Linear(l) => *l = l.with_weight(w, b)?,
            Layer::Conv(c) => *c = c.with_weight(w, b)?,
        }
        Ok(())
    };
    out.unet
        .visit_layers(&mut |p, l| patch(Component::Unet, p, l))?;
    for (i, te) in out.text_encoders.iter_mut().enumerate() {
        te.visit_layers(&mut |p, l| patch(Component::Text(i), p, l))?;
    }
    Ok((out, bytes))
}
