//! Single-file checkpoints in the original (A1111 / CivitAI) layout, converted in memory.
//!
//! The family is detected from tensor names; sizes (channels, levels, layers, transformer
//! depth, context width, latent channels, vocabulary) are read from tensor shapes. Presets
//! fill in only what shapes cannot tell: attention heads (SD 1.x: 8 per block, others 64
//! channels per head), 32 norm groups, the scheduler, and the bundled CLIP tokenizer.
//! Name mapping follows diffusers' `convert_from_ckpt` conventions.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};
use serde_json::json;

use crate::pipelines::stable_diffusion::StableDiffusion;
use crate::pipelines::stable_diffusion::clip::{ClipTextConfig, ClipTextModel};
use crate::pipelines::stable_diffusion::tokenizer::ClipTokenizer;
use crate::pipelines::stable_diffusion::unet::{UNet2DConditionModel, UNetConfig};
use crate::pipelines::stable_diffusion::vae::{AutoencoderKL, VaeConfig};
use crate::schedulers::SchedulerConfig;
use crate::weights::{Source, Weights};
use crate::{EngineError, Result};

const UNET: &str = "model.diffusion_model.";
const VAE: &str = "first_stage_model.";

/// A checkpoint's tensor names and shapes.
struct Index {
    shapes: HashMap<String, Vec<usize>>,
}

impl Index {
    fn has(&self, k: &str) -> bool {
        self.shapes.contains_key(k)
    }
    fn dim(&self, k: &str, d: usize) -> Option<usize> {
        self.shapes.get(k).and_then(|s| s.get(d).copied())
    }
    fn with_prefix<'a>(&'a self, p: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.shapes
            .keys()
            .filter(move |k| k.starts_with(p))
            .map(|k| &k[p.len()..])
    }
    /// Distinct values of the numeric path component right after `prefix`.
    fn indices(&self, prefix: &str) -> BTreeSet<usize> {
        self.with_prefix(prefix)
            .filter_map(|rest| rest.split('.').next()?.parse().ok())
            .collect()
    }
}

fn bad(path: &Path, msg: impl Into<String>) -> EngineError {
    EngineError::bad_model(path, msg)
}

/// Loads a single-file checkpoint as a pipeline.
pub fn load(path: &Path, device: &Device, dtype: DType) -> Result<StableDiffusion> {
    // SAFETY: read-only map of a file the user named (see `Weights::mmap`).
    let st = unsafe { MmapedSafetensors::new(path) }
        .map_err(|e| bad(path, format!("cannot read safetensors: {e}")))?;
    let st = Arc::new(st);
    let idx = Index {
        shapes: st
            .tensors()
            .into_iter()
            .map(|(n, v)| (n, v.shape().to_vec()))
            .collect(),
    };
    if !idx.has(&format!("{UNET}input_blocks.0.0.weight")) {
        return Err(bad(
            path,
            "not a Stable Diffusion checkpoint (no model.diffusion_model.* tensors)",
        ));
    }

    let (unet_cfg, unet_map) = unet(&idx, path)?;
    let sdxl = unet_cfg.addition_embed_type.is_some();
    let w = Weights::mapped(st.clone(), unet_map, path);
    let unet = UNet2DConditionModel::new(unet_cfg, w.var_builder(dtype, device))
        .map_err(|e| bad(path, e.to_string()))?;
    w.check_all_used()?;
    let mut params = w.loaded_elements();

    let (vae_cfg, vae_map) = vae(&idx, path, sdxl)?;
    let w = Weights::mapped(st.clone(), vae_map, path);
    let vae = AutoencoderKL::new(vae_cfg, w.var_builder(dtype, device))
        .map_err(|e| bad(path, e.to_string()))?;
    w.check_all_used()?;
    params += w.loaded_elements();

    // Text encoders, in pipeline order.
    let encoders: Vec<(&str, bool)> = if idx
        .has("conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight")
        || idx.has("conditioner.embedders.0.transformer.embeddings.token_embedding.weight")
    {
        vec![
            ("conditioner.embedders.0.transformer.", false),
            ("conditioner.embedders.1.model.", true),
        ]
    } else if idx.has("cond_stage_model.model.token_embedding.weight") {
        vec![("cond_stage_model.model.", true)]
    } else {
        vec![("cond_stage_model.transformer.", false)]
    };
    let mut tokenizers = Vec::new();
    let mut text_encoders = Vec::new();
    for (k, (prefix, open_clip)) in encoders.iter().enumerate() {
        let with_projection = sdxl && k == 1;
        let (cfg, map) = if *open_clip {
            open_clip_encoder(&idx, prefix, !sdxl, with_projection, path)?
        } else {
            hf_clip_encoder(&idx, prefix, path)?
        };
        let w = Weights::mapped(st.clone(), map, path);
        text_encoders.push(
            ClipTextModel::new(cfg, w.var_builder(dtype, device))
                .map_err(|e| bad(path, e.to_string()))?,
        );
        w.check_all_used()?;
        params += w.loaded_elements();
        tokenizers.push(ClipTokenizer::standard_clip(if *open_clip {
            "!"
        } else {
            "<|endoftext|>"
        })?);
    }

    // diffusers' scheduler configs for these families: scaled-linear Euler, leading spacing.
    let scheduler_config = SchedulerConfig::from_json(
        &json!({"_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                "steps_offset": 1, "timestep_spacing": "leading", "prediction_type": "epsilon"})
        .to_string(),
    )?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut model = super::diffusers::assemble(
        name,
        tokenizers,
        text_encoders,
        unet,
        vae,
        scheduler_config,
        sdxl,
        device,
        dtype,
    )?;
    model.parameter_count = params;
    Ok(model)
}

fn resnet_rename(rest: &str) -> String {
    for (from, to) in [
        ("in_layers.0.", "norm1."),
        ("in_layers.2.", "conv1."),
        ("out_layers.0.", "norm2."),
        ("out_layers.3.", "conv2."),
        ("emb_layers.1.", "time_emb_proj."),
        ("skip_connection.", "conv_shortcut."),
    ] {
        if let Some(r) = rest.strip_prefix(from) {
            return format!("{to}{r}");
        }
    }
    rest.to_string()
}

fn unet(idx: &Index, path: &Path) -> Result<(UNetConfig, HashMap<String, Source>)> {
    let k = |s: &str| format!("{UNET}{s}");
    let in_blocks = idx.indices(&k("input_blocks."));
    let downs: Vec<usize> = in_blocks
        .iter()
        .copied()
        .filter(|b| idx.has(&k(&format!("input_blocks.{b}.0.op.weight"))))
        .collect();
    let per = downs.first().copied().unwrap_or(in_blocks.len()); // layers per level + 1
    let layers = per - 1;
    let levels = downs.len() + 1;
    if layers == 0 || in_blocks.len() != 1 + levels * per - 1 {
        return Err(bad(path, "unrecognised UNet block layout"));
    }
    let ch = |i: usize| {
        idx.dim(
            &k(&format!(
                "input_blocks.{}.0.out_layers.3.weight",
                per * i + 1
            )),
            0,
        )
    };
    let block_out: Vec<usize> = (0..levels)
        .map(ch)
        .collect::<Option<_>>()
        .ok_or_else(|| bad(path, "missing UNet resnet weights"))?;
    let attn_prefix = |i: usize| k(&format!("input_blocks.{}.1.", per * i + 1));
    let has_attn: Vec<bool> = (0..levels)
        .map(|i| idx.has(&format!("{}proj_in.weight", attn_prefix(i))))
        .collect();
    let depth: Vec<usize> = (0..levels)
        .map(|i| {
            idx.indices(&format!("{}transformer_blocks.", attn_prefix(i)))
                .len()
                .max(1)
        })
        .collect();
    let first_attn = (0..levels).find(|&i| has_attn[i]).ok_or_else(|| {
        bad(
            path,
            "a UNet without cross-attention is not a text-to-image model",
        )
    })?;
    let ap = attn_prefix(first_attn);
    let cross = idx
        .dim(&format!("{ap}transformer_blocks.0.attn2.to_k.weight"), 1)
        .ok_or_else(|| bad(path, "missing cross-attention weights"))?;
    let linear = idx
        .shapes
        .get(&format!("{ap}proj_in.weight"))
        .map(|s| s.len() == 2)
        .unwrap_or(false);
    let sd1 = cross == 768;
    let heads: Vec<usize> = block_out
        .iter()
        .map(|&c| if sd1 { 8 } else { (c / 64).max(1) })
        .collect();
    let label = k("label_emb.0.0.weight");
    let sdxl = idx.has(&label);
    let mid_attn = idx.has(&k("middle_block.1.proj_in.weight"));
    let mid_depth = idx
        .indices(&k("middle_block.1.transformer_blocks."))
        .len()
        .max(1);
    let mut tl = depth.clone();
    tl[levels - 1] = if mid_attn { mid_depth } else { tl[levels - 1] };
    let down_types: Vec<&str> = has_attn
        .iter()
        .map(|&a| {
            if a {
                "CrossAttnDownBlock2D"
            } else {
                "DownBlock2D"
            }
        })
        .collect();
    let up_types: Vec<&str> = has_attn
        .iter()
        .rev()
        .map(|&a| if a { "CrossAttnUpBlock2D" } else { "UpBlock2D" })
        .collect();
    let mut cfg = json!({
        "in_channels": idx.dim(&k("input_blocks.0.0.weight"), 1),
        "out_channels": idx.dim(&k("out.2.weight"), 0),
        "block_out_channels": block_out, "layers_per_block": layers,
        "down_block_types": down_types, "up_block_types": up_types,
        "mid_block_type": if mid_attn { "UNetMidBlock2DCrossAttn" } else { "UNetMidBlock2D" },
        "cross_attention_dim": cross, "attention_head_dim": heads, "use_linear_projection": linear,
        "transformer_layers_per_block": depth, "reverse_transformer_layers_per_block": depth.iter().rev().collect::<Vec<_>>(),
        "sample_size": if sdxl { 128 } else { 64 },
    });
    if mid_attn && mid_depth != depth[levels - 1] {
        return Err(bad(
            path,
            "mid-block transformer depth differs from the last level's",
        ));
    }
    if sdxl {
        cfg["addition_embed_type"] = json!("text_time");
        cfg["addition_time_embed_dim"] = json!(256);
        cfg["projection_class_embeddings_input_dim"] = json!(idx.dim(&label, 1));
    }
    let cfg = UNetConfig::from_json(&cfg.to_string())?;

    let mut map = HashMap::new();
    for rest in idx.with_prefix(UNET) {
        let parts: Vec<&str> = rest.splitn(3, '.').collect();
        let num = |i: usize| parts.get(i).and_then(|p| p.parse::<usize>().ok());
        let tail = |n: usize| rest.splitn(n + 1, '.').nth(n).unwrap_or("").to_string();
        let name = match parts[0] {
            "time_embed" => Some(format!(
                "time_embedding.linear_{}.{}",
                if num(1) == Some(0) { 1 } else { 2 },
                tail(2)
            )),
            "label_emb" => {
                let r = tail(3);
                let lin = rest.split('.').nth(2).and_then(|p| p.parse::<usize>().ok());
                Some(format!(
                    "add_embedding.linear_{}.{r}",
                    if lin == Some(0) { 1 } else { 2 }
                ))
            }
            "out" => Some(format!(
                "{}.{}",
                if num(1) == Some(0) {
                    "conv_norm_out"
                } else {
                    "conv_out"
                },
                tail(2)
            )),
            "input_blocks" => {
                let b = num(1).unwrap_or(0);
                let sub = tail(2);
                let (which, r) = sub.split_once('.').unwrap_or((sub.as_str(), ""));
                if b == 0 {
                    Some(format!("conv_in.{r}"))
                } else if b % per == 0 {
                    Some(format!(
                        "down_blocks.{}.downsamplers.0.conv.{}",
                        b / per - 1,
                        r.trim_start_matches("op.")
                    ))
                } else {
                    let (i, j) = ((b - 1) / per, (b - 1) % per);
                    match which {
                        "0" => Some(format!("down_blocks.{i}.resnets.{j}.{}", resnet_rename(r))),
                        "1" => Some(format!("down_blocks.{i}.attentions.{j}.{r}")),
                        _ => None,
                    }
                }
            }
            "middle_block" => {
                let r = tail(2);
                match num(1) {
                    Some(0) => Some(format!("mid_block.resnets.0.{}", resnet_rename(&r))),
                    Some(1) => Some(format!("mid_block.attentions.0.{r}")),
                    Some(2) => Some(format!("mid_block.resnets.1.{}", resnet_rename(&r))),
                    _ => None,
                }
            }
            "output_blocks" => {
                let b = num(1).unwrap_or(0);
                let (i, j) = (b / per, b % per);
                let sub = tail(2);
                let (which, r) = sub.split_once('.').unwrap_or((&sub, ""));
                match which {
                    "0" => Some(format!("up_blocks.{i}.resnets.{j}.{}", resnet_rename(r))),
                    "1" if !r.starts_with("conv.") => {
                        Some(format!("up_blocks.{i}.attentions.{j}.{r}"))
                    }
                    "1" | "2" => Some(format!("up_blocks.{i}.upsamplers.0.{r}")),
                    _ => None,
                }
            }
            _ => None,
        };
        let name = name.ok_or_else(|| bad(path, format!("unexpected UNet tensor {UNET}{rest}")))?;
        map.insert(name, Source::Same(format!("{UNET}{rest}")));
    }
    Ok((cfg, map))
}

fn vae(idx: &Index, path: &Path, sdxl: bool) -> Result<(VaeConfig, HashMap<String, Source>)> {
    let k = |s: &str| format!("{VAE}{s}");
    let levels = idx.indices(&k("encoder.down.")).len();
    if levels == 0 {
        return Err(bad(path, "no VAE (first_stage_model.*) tensors"));
    }
    let layers = idx.indices(&k("encoder.down.0.block.")).len();
    let block_out: Vec<usize> = (0..levels)
        .map(|i| {
            idx.dim(
                &k(&format!(
                    "encoder.down.{i}.block.{}.conv2.weight",
                    layers - 1
                )),
                0,
            )
        })
        .collect::<Option<_>>()
        .ok_or_else(|| bad(path, "missing VAE encoder weights"))?;
    let cfg = json!({
        "block_out_channels": block_out, "layers_per_block": layers,
        "latent_channels": idx.dim(&k("decoder.conv_in.weight"), 1),
        "in_channels": idx.dim(&k("encoder.conv_in.weight"), 1), "out_channels": idx.dim(&k("decoder.conv_out.weight"), 0),
        "scaling_factor": if sdxl { 0.13025 } else { 0.18215 },
    });
    let cfg: VaeConfig = serde_json::from_value(cfg).map_err(|e| bad(path, e.to_string()))?;
    let mut map = HashMap::new();
    for rest in idx.with_prefix(VAE) {
        let orig = format!("{VAE}{rest}");
        let (part, r) = rest.split_once('.').unwrap_or((rest, ""));
        let name = match part {
            "quant_conv" | "post_quant_conv" => Some(rest.to_string()),
            "encoder" | "decoder" => {
                let segs: Vec<&str> = r.split('.').collect();
                let join = |from: usize| segs[from..].join(".");
                let res = |s: String| s.replacen("nin_shortcut.", "conv_shortcut.", 1);
                match segs.first().copied() {
                    Some("conv_in") | Some("conv_out") => Some(format!("{part}.{r}")),
                    Some("norm_out") => Some(format!("{part}.conv_norm_out.{}", join(1))),
                    Some("down") | Some("up") if segs.len() > 3 => {
                        let i: usize = segs[1].parse().unwrap_or(0);
                        let (blocks, level) = if segs[0] == "down" {
                            ("down_blocks", i)
                        } else {
                            ("up_blocks", levels - 1 - i)
                        };
                        match segs[2] {
                            "block" => Some(format!(
                                "{part}.{blocks}.{level}.resnets.{}.{}",
                                segs[3],
                                res(join(4))
                            )),
                            "downsample" => Some(format!(
                                "{part}.{blocks}.{level}.downsamplers.0.{}",
                                join(3)
                            )),
                            "upsample" => {
                                Some(format!("{part}.{blocks}.{level}.upsamplers.0.{}", join(3)))
                            }
                            _ => None,
                        }
                    }
                    Some("mid") if segs.len() > 2 => match segs[1] {
                        "block_1" => Some(format!("{part}.mid_block.resnets.0.{}", res(join(2)))),
                        "block_2" => Some(format!("{part}.mid_block.resnets.1.{}", res(join(2)))),
                        "attn_1" => {
                            let a = match segs[2] {
                                "norm" => "group_norm",
                                "q" => "to_q",
                                "k" => "to_k",
                                "v" => "to_v",
                                "proj_out" => "to_out.0",
                                _ => "",
                            };
                            if a.is_empty() {
                                None
                            } else {
                                let name = format!("{part}.mid_block.attentions.0.{a}.{}", join(3));
                                // 1x1 conv weights in the original, linear in diffusers.
                                let src = if a != "group_norm" && segs[3] == "weight" {
                                    Source::Squeeze(orig.clone())
                                } else {
                                    Source::Same(orig.clone())
                                };
                                map.insert(name, src);
                                continue;
                            }
                        }
                        _ => None,
                    },
                    _ => None,
                }
            }
            _ => None,
        };
        let name = name.ok_or_else(|| bad(path, format!("unexpected VAE tensor {orig}")))?;
        map.insert(name, Source::Same(orig));
    }
    Ok((cfg, map))
}

/// A text encoder stored with transformers' CLIP names (SD 1.x, SDXL's first).
fn hf_clip_encoder(
    idx: &Index,
    prefix: &str,
    path: &Path,
) -> Result<(ClipTextConfig, HashMap<String, Source>)> {
    let tm = if idx.has(&format!(
        "{prefix}text_model.embeddings.token_embedding.weight"
    )) {
        format!("{prefix}text_model.")
    } else {
        prefix.to_string()
    };
    let emb = format!("{tm}embeddings.token_embedding.weight");
    let (vocab, hidden) = (idx.dim(&emb, 0), idx.dim(&emb, 1));
    let cfg = json!({
        "vocab_size": vocab, "hidden_size": hidden,
        "intermediate_size": idx.dim(&format!("{tm}encoder.layers.0.mlp.fc1.weight"), 0),
        "num_hidden_layers": idx.indices(&format!("{tm}encoder.layers.")).len(),
        "num_attention_heads": hidden.map(|h| (h / 64).max(1)),
        "max_position_embeddings": idx.dim(&format!("{tm}embeddings.position_embedding.weight"), 0),
        "hidden_act": "quick_gelu", "architectures": ["CLIPTextModel"],
    });
    let cfg: ClipTextConfig =
        serde_json::from_value(cfg).map_err(|e| bad(path, format!("text encoder: {e}")))?;
    let map = idx
        .with_prefix(&tm)
        .filter(|r| !r.ends_with("position_ids"))
        .map(|r| (format!("text_model.{r}"), Source::Same(format!("{tm}{r}"))))
        .collect();
    Ok((cfg, map))
}

/// An OpenCLIP text encoder (SD 2.x; SDXL's second), mapped onto transformers' CLIP names.
/// SD 2.x uses the penultimate layer: its last layer is dropped, as diffusers does.
fn open_clip_encoder(
    idx: &Index,
    p: &str,
    drop_last: bool,
    projection: bool,
    path: &Path,
) -> Result<(ClipTextConfig, HashMap<String, Source>)> {
    let emb = format!("{p}token_embedding.weight");
    let (vocab, hidden) = (idx.dim(&emb, 0).unwrap_or(0), idx.dim(&emb, 1).unwrap_or(0));
    let total = idx.indices(&format!("{p}transformer.resblocks.")).len();
    let layers = if drop_last {
        total.saturating_sub(1)
    } else {
        total
    };
    let proj_dim = idx.dim(&format!("{p}text_projection"), 1);
    let cfg = json!({
        "vocab_size": vocab, "hidden_size": hidden,
        "intermediate_size": idx.dim(&format!("{p}transformer.resblocks.0.mlp.c_fc.weight"), 0),
        "num_hidden_layers": layers, "num_attention_heads": (hidden / 64).max(1),
        "max_position_embeddings": idx.dim(&format!("{p}positional_embedding"), 0),
        "hidden_act": "gelu", "projection_dim": proj_dim,
        "architectures": [if projection { "CLIPTextModelWithProjection" } else { "CLIPTextModel" }],
    });
    let cfg: ClipTextConfig =
        serde_json::from_value(cfg).map_err(|e| bad(path, format!("text encoder: {e}")))?;
    let mut map = HashMap::new();
    let same = |s: &str| Source::Same(format!("{p}{s}"));
    map.insert(
        "text_model.embeddings.token_embedding.weight".into(),
        same("token_embedding.weight"),
    );
    map.insert(
        "text_model.embeddings.position_embedding.weight".into(),
        same("positional_embedding"),
    );
    for t in ["weight", "bias"] {
        map.insert(
            format!("text_model.final_layer_norm.{t}"),
            same(&format!("ln_final.{t}")),
        );
    }
    if projection {
        map.insert(
            "text_projection.weight".into(),
            Source::Transpose(format!("{p}text_projection")),
        );
    }
    for i in 0..layers {
        let o = format!("transformer.resblocks.{i}.");
        let d = format!("text_model.encoder.layers.{i}.");
        for t in ["weight", "bias"] {
            for (from, to) in [
                ("ln_1", "layer_norm1"),
                ("ln_2", "layer_norm2"),
                ("attn.out_proj", "self_attn.out_proj"),
                ("mlp.c_fc", "mlp.fc1"),
                ("mlp.c_proj", "mlp.fc2"),
            ] {
                map.insert(format!("{d}{to}.{t}"), same(&format!("{o}{from}.{t}")));
            }
            for (n, qkv) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                map.insert(
                    format!("{d}self_attn.{qkv}.{t}"),
                    Source::Rows {
                        name: format!("{p}{o}attn.in_proj_{t}"),
                        start: n * hidden,
                        len: hidden,
                    },
                );
            }
        }
    }
    Ok((cfg, map))
}
