//! LoRA files as users have them, read into one form: per target module, the kind of
//! adapter and its tensors.
//!
//! The format is told by the keys: kohya/sd-scripts (`lora_unet_…`, `lora_te_…`,
//! `lora_te1_`/`lora_te2_` for SDXL, `.lora_down/.lora_up/.alpha`), diffusers/PEFT
//! (`lora_A`/`lora_B`, `lora.down`/`lora.up`, `lora_linear_layer`, the old attention
//! processors' `to_q_lora`, with or without `unet.`/`text_encoder.` prefixes), LyCORIS
//! (LoCon with an optional Tucker `lora_mid`, LoHa `hada_*`, LoKr `lokr_*`, full `diff`)
//! and DoRA's `dora_scale` (PEFT's `lora_magnitude_vector`). Module names keep the file's
//! spelling, normalised to underscores: the model's own layer table resolves them
//! (`lora::apply`), as A1111 and ComfyUI do, instead of reversing `_` into `.`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::{EngineError, Result};

/// Which model component a module belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    Unet,
    /// The text encoder at this index (SDXL: 0 = CLIP-L, 1 = OpenCLIP-bigG).
    Text(usize),
}

/// The tensors of one adapter, by algorithm.
#[derive(Debug, Clone)]
pub enum Kind {
    /// LoRA / LoCon: `ΔW = up · down`, or with a Tucker core `mid` for convolutions.
    LoRa {
        down: Tensor,
        up: Tensor,
        mid: Option<Tensor>,
    },
    /// LoHa: `(w1a · w1b) ⊙ (w2a · w2b)`, each factor optionally through a Tucker core.
    LoHa {
        w1a: Tensor,
        w1b: Tensor,
        w2a: Tensor,
        w2b: Tensor,
        t1: Option<Tensor>,
        t2: Option<Tensor>,
    },
    /// LoKr: `kron(w1, w2)`, each factor whole or low-rank (`a · b`, w2 optionally Tucker).
    LoKr {
        w1: Factor,
        w2: Factor,
        t2: Option<Tensor>,
    },
    /// The difference itself (LyCORIS "full").
    Full { diff: Tensor },
}

/// A LoKr factor: stored whole, or as a low-rank product `a · b`.
#[derive(Debug, Clone)]
pub enum Factor {
    Whole(Tensor),
    Product { a: Tensor, b: Tensor },
}

/// One adapted module of a file.
#[derive(Debug, Clone)]
pub struct Module {
    /// A key of the file for this module (named in errors).
    pub key: String,
    pub component: Component,
    /// The module's name with the component prefix removed and dots as underscores.
    pub name: String,
    pub kind: Kind,
    pub alpha: Option<f32>,
    /// DoRA's magnitude (`dora_scale`, PEFT's `lora_magnitude_vector`).
    pub dora_scale: Option<Tensor>,
    /// A change of the bias (`diff_b`).
    pub bias: Option<Tensor>,
}

/// A LoRA file, parsed.
#[derive(Debug, Clone)]
pub struct LoraFile {
    /// What to name in errors (the file name).
    pub origin: String,
    pub modules: Vec<Module>,
    pub metadata: HashMap<String, String>,
    /// `lora_alpha` from diffusers' embedded adapter config, for files without alphas.
    pub default_alpha: Option<f32>,
}

/// What a key's last part says about its tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Down,
    Up,
    Mid,
    Alpha,
    Dora,
    HadaW1A,
    HadaW1B,
    HadaW2A,
    HadaW2B,
    HadaT1,
    HadaT2,
    LokrW1,
    LokrW1A,
    LokrW1B,
    LokrW2,
    LokrW2A,
    LokrW2B,
    LokrT2,
    Diff,
    DiffB,
}

/// Key endings, longest first where one ends another.
const SUFFIXES: &[(&str, Role)] = &[
    (".lora_linear_layer.down.weight", Role::Down),
    (".lora_linear_layer.up.weight", Role::Up),
    (".lora_magnitude_vector.weight", Role::Dora),
    (".lora_magnitude_vector", Role::Dora),
    (".lora_down.weight", Role::Down),
    (".lora_up.weight", Role::Up),
    (".lora_mid.weight", Role::Mid),
    (".lora.down.weight", Role::Down),
    (".lora.up.weight", Role::Up),
    (".lora_A.weight", Role::Down),
    (".lora_B.weight", Role::Up),
    (".dora_scale", Role::Dora),
    (".alpha", Role::Alpha),
    (".hada_w1_a", Role::HadaW1A),
    (".hada_w1_b", Role::HadaW1B),
    (".hada_w2_a", Role::HadaW2A),
    (".hada_w2_b", Role::HadaW2B),
    (".hada_t1", Role::HadaT1),
    (".hada_t2", Role::HadaT2),
    (".lokr_w1_a", Role::LokrW1A),
    (".lokr_w1_b", Role::LokrW1B),
    (".lokr_w1", Role::LokrW1),
    (".lokr_w2_a", Role::LokrW2A),
    (".lokr_w2_b", Role::LokrW2B),
    (".lokr_w2", Role::LokrW2),
    (".lokr_t2", Role::LokrT2),
    (".diff_b", Role::DiffB),
    (".diff", Role::Diff),
    // The old attention processors (`…attn1.processor.to_q_lora.down.weight`).
    (".down.weight", Role::Down),
    (".up.weight", Role::Up),
];

fn split_key(key: &str) -> Option<(String, Role)> {
    let (stem, role) = SUFFIXES
        .iter()
        .find_map(|(s, r)| key.strip_suffix(s).map(|stem| (stem, *r)))?;
    // `…attn1.processor.to_out_lora` is the module `…attn1.to_out.0`.
    let stem = match stem.split_once(".processor.") {
        Some((head, proj)) => {
            let proj = proj.strip_suffix("_lora")?;
            let proj = if proj == "to_out" { "to_out.0" } else { proj };
            format!("{head}.{proj}")
        }
        None if matches!(role, Role::Down | Role::Up)
            && !key.contains("lora")
            && !key.contains("lokr") =>
        {
            return None;
        }
        None => stem.to_string(),
    };
    Some((stem, role))
}

/// Whether `key` is a tensor of an adapter format this module reads.
pub fn is_adapter_key(key: &str) -> bool {
    split_key(key).is_some()
}

/// The component a module stem belongs to, and its name within it (underscores).
fn component(stem: &str) -> (Component, String) {
    let stem = stem.strip_prefix("base_model.model.").unwrap_or(stem);
    let underscored = |s: &str| s.replace('.', "_");
    for (prefix, c) in [
        ("lora_unet_", Component::Unet),
        ("lycoris_", Component::Unet),
        ("lora_te1_", Component::Text(0)),
        ("lora_te2_", Component::Text(1)),
        ("lora_te_", Component::Text(0)),
        ("unet.", Component::Unet),
        ("text_encoder_2.", Component::Text(1)),
        ("text_encoder.", Component::Text(0)),
    ] {
        if let Some(rest) = stem.strip_prefix(prefix) {
            return (c, underscored(rest));
        }
    }
    // diffusers saves a UNet-only adapter without a prefix.
    (Component::Unet, underscored(stem))
}

impl LoraFile {
    /// Reads a `.safetensors` LoRA (pickled `.pt`/`.ckpt` files can run code: refused).
    pub fn load(path: &Path) -> Result<Self> {
        let origin = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| path.display().to_string());
        if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
            return Err(EngineError::InvalidInput(format!(
                "{origin}: only .safetensors LoRA files are read (pickled .pt/.ckpt files can run code; convert them first)"
            )));
        }
        let bytes = std::fs::read(path)
            .map_err(|e| EngineError::NotFound(format!("{}: {e}", path.display())))?;
        Self::from_bytes(&bytes, &origin)
    }

    /// Parses a safetensors file's bytes.
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Self> {
        let bad = |m: String| EngineError::InvalidInput(format!("{origin}: {m}"));
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
        let metadata: HashMap<String, String> = meta.metadata().clone().unwrap_or_default();
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
            .map_err(|e| bad(format!("cannot read its tensors ({e})")))?;
        Self::from_tensors(tensors, metadata, origin)
    }

    /// Groups a state dict's tensors by module and tells each module's algorithm.
    pub fn from_tensors(
        tensors: HashMap<String, Tensor>,
        metadata: HashMap<String, String>,
        origin: &str,
    ) -> Result<Self> {
        let bad = |m: String| EngineError::InvalidInput(format!("LoRA {origin}: {m}"));
        if tensors.is_empty() {
            return Err(bad("the file holds no tensors".into()));
        }
        let mut groups: BTreeMap<String, (String, BTreeMap<Role, Tensor>)> = BTreeMap::new();
        let mut keys: Vec<&String> = tensors.keys().collect();
        keys.sort();
        for key in keys {
            let (stem, role) = split_key(key).ok_or_else(|| {
                bad(format!(
                    "key {key:?} is no LoRA, LoCon, LoHa, LoKr or DoRA tensor this engine knows"
                ))
            })?;
            let t = tensors[key].to_dtype(DType::F32)?;
            let entry = groups
                .entry(stem)
                .or_insert_with(|| (key.clone(), BTreeMap::new()));
            entry.1.insert(role, t);
        }
        let default_alpha = metadata
            .get("lora_adapter_metadata")
            .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
            .and_then(|v| v.get("lora_alpha").and_then(|a| a.as_f64()))
            .map(|a| a as f32);
        let mut modules = Vec::with_capacity(groups.len());
        for (stem, (key, mut parts)) in groups {
            let p = &mut parts;
            let alpha = match p.remove(&Role::Alpha) {
                Some(a) => Some(
                    a.flatten_all()?
                        .to_vec1::<f32>()?
                        .first()
                        .copied()
                        .ok_or_else(|| bad(format!("{key:?}: an empty alpha")))?,
                ),
                None => None,
            };
            let dora_scale = p.remove(&Role::Dora);
            let bias = p.remove(&Role::DiffB);
            let missing = |what: &str| bad(format!("{key:?}: the module has no {what}"));
            let need = |p: &mut BTreeMap<Role, Tensor>, r: Role, name: &str| {
                p.remove(&r).ok_or_else(|| missing(name))
            };
            let kind = if let Some(down) = p.remove(&Role::Down) {
                Kind::LoRa {
                    down,
                    up: need(p, Role::Up, "up (lora_up/lora_B) weight")?,
                    mid: p.remove(&Role::Mid),
                }
            } else if let Some(w1a) = p.remove(&Role::HadaW1A) {
                Kind::LoHa {
                    w1a,
                    w1b: need(p, Role::HadaW1B, "hada_w1_b")?,
                    w2a: need(p, Role::HadaW2A, "hada_w2_a")?,
                    w2b: need(p, Role::HadaW2B, "hada_w2_b")?,
                    t1: p.remove(&Role::HadaT1),
                    t2: p.remove(&Role::HadaT2),
                }
            } else if [Role::LokrW1, Role::LokrW1A, Role::LokrW2, Role::LokrW2A]
                .iter()
                .any(|r| p.contains_key(r))
            {
                let mut factor = |whole: Role, a: Role, b: Role, name: &str| -> Result<Factor> {
                    match (p.remove(&whole), p.remove(&a), p.remove(&b)) {
                        (Some(w), None, None) => Ok(Factor::Whole(w)),
                        (None, Some(a), Some(b)) => Ok(Factor::Product { a, b }),
                        _ => Err(missing(name)),
                    }
                };
                let w1 = factor(Role::LokrW1, Role::LokrW1A, Role::LokrW1B, "lokr_w1")?;
                let w2 = factor(Role::LokrW2, Role::LokrW2A, Role::LokrW2B, "lokr_w2")?;
                Kind::LoKr {
                    w1,
                    w2,
                    t2: p.remove(&Role::LokrT2),
                }
            } else if let Some(diff) = p.remove(&Role::Diff) {
                Kind::Full { diff }
            } else {
                return Err(missing("down/up, hada, lokr or diff weights"));
            };
            if let Some((role, _)) = p.iter().next() {
                return Err(bad(format!(
                    "{key:?}: a {role:?} tensor does not go with this module's other tensors"
                )));
            }
            let (component, name) = component(&stem);
            modules.push(Module {
                key,
                component,
                name,
                kind,
                alpha,
                dora_scale,
                bias,
            });
        }
        Ok(Self {
            origin: origin.to_string(),
            modules,
            metadata,
            default_alpha,
        })
    }

    /// The bytes its tensors hold (f32), for the model cache's budget.
    pub fn bytes(&self) -> u64 {
        let n = |t: &Tensor| t.elem_count() as u64;
        let opt = |t: &Option<Tensor>| t.as_ref().map_or(0, n);
        let factor = |f: &Factor| match f {
            Factor::Whole(w) => n(w),
            Factor::Product { a, b } => n(a) + n(b),
        };
        let elements: u64 = self
            .modules
            .iter()
            .map(|m| {
                opt(&m.dora_scale)
                    + opt(&m.bias)
                    + match &m.kind {
                        Kind::LoRa { down, up, mid } => n(down) + n(up) + opt(mid),
                        Kind::LoHa {
                            w1a,
                            w1b,
                            w2a,
                            w2b,
                            t1,
                            t2,
                        } => n(w1a) + n(w1b) + n(w2a) + n(w2b) + opt(t1) + opt(t2),
                        Kind::LoKr { w1, w2, t2 } => factor(w1) + factor(w2) + opt(t2),
                        Kind::Full { diff } => n(diff),
                    }
            })
            .sum();
        4 * elements
    }

    /// The base family the file's own metadata names (kohya's `ss_base_model_version`,
    /// `ss_v2`, or `modelspec.architecture`), if any.
    pub fn base_hint(&self) -> Option<&'static str> {
        let m = &self.metadata;
        if let Some(v) = m.get("ss_base_model_version") {
            return Some(if v.starts_with("sdxl") {
                "sdxl"
            } else if v.starts_with("sd_v2") {
                "sd2"
            } else {
                "sd1"
            });
        }
        if m.get("ss_v2").map(String::as_str) == Some("True") {
            return Some("sd2");
        }
        let arch = m.get("modelspec.architecture")?;
        Some(if arch.starts_with("stable-diffusion-xl") {
            "sdxl"
        } else if arch.starts_with("stable-diffusion-v2") {
            "sd2"
        } else {
            "sd1"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_every_format_split_into_module_and_role() {
        let cases = [
            (
                "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
                "lora_unet_down_blocks_0_attentions_0_proj_in",
                Role::Down,
            ),
            (
                "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight",
                "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
                Role::Down,
            ),
            (
                "unet.mid_block.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight",
                "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0",
                Role::Up,
            ),
            (
                "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.down.weight",
                "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
                Role::Down,
            ),
            (
                "lora_te2_x_mlp_fc1.lokr_w1",
                "lora_te2_x_mlp_fc1",
                Role::LokrW1,
            ),
            ("lora_unet_a.lokr_w1_b", "lora_unet_a", Role::LokrW1B),
            ("lora_unet_a.diff_b", "lora_unet_a", Role::DiffB),
            ("lora_unet_a.alpha", "lora_unet_a", Role::Alpha),
        ];
        for (key, stem, role) in cases {
            assert_eq!(split_key(key), Some((stem.to_string(), role)), "{key}");
        }
        assert_eq!(
            split_key("model.diffusion_model.input_blocks.0.0.weight"),
            None
        );
        assert_eq!(split_key("first_stage_model.decoder.up.weight"), None);
        assert_eq!(
            component("lora_te2_text_model_encoder_layers_0_mlp_fc1"),
            (
                Component::Text(1),
                "text_model_encoder_layers_0_mlp_fc1".into()
            )
        );
        assert_eq!(
            component("text_encoder.text_model.encoder.layers.0.mlp.fc1"),
            (
                Component::Text(0),
                "text_model_encoder_layers_0_mlp_fc1".into()
            )
        );
        assert_eq!(
            component("down_blocks.0.attentions.0.proj_in"),
            (Component::Unet, "down_blocks_0_attentions_0_proj_in".into())
        );
    }
}
