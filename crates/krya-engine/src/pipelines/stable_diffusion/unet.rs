//! diffusers' `UNet2DConditionModel`, built from the model's `unet/config.json`.
//!
//! Covers SD 1.x/2.x/XL, 9-channel inpainting UNets, LCM-distilled UNets (guidance
//! embedding through `time_cond_proj_dim`) and SDXL's `text_time` additional embedding.
//! Per-block settings (heads, layers, cross-attention size, transformer depth) may each be
//! a number or a list, as in diffusers.

use candle_core::{DType, Module, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use serde_json::Value;

use super::blocks::{Act, Attention, Downsample2D, ResnetBlock2D, ResnetParams, Upsample2D, conv};
use crate::Result;
use crate::kernels::{
    Conv2d, GroupNorm, LayerNorm, Linear, group_norm, layer_norm, linear, linear_b,
};
use crate::pipelines::lora::{Layer, Visit};

/// The subset of diffusers' UNet config that shapes the network.
#[derive(Debug, Clone, Deserialize)]
pub struct UNetConfig {
    #[serde(default = "d_4")]
    pub in_channels: usize,
    #[serde(default = "d_4")]
    pub out_channels: usize,
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    pub down_block_types: Vec<String>,
    #[serde(default = "d_mid")]
    pub mid_block_type: Option<String>,
    pub up_block_types: Vec<String>,
    #[serde(default)]
    pub only_cross_attention: Value,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_layers")]
    pub layers_per_block: Value,
    #[serde(default = "d_1")]
    pub downsample_padding: usize,
    #[serde(default = "d_1f")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "d_silu")]
    pub act_fn: String,
    #[serde(default = "d_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    #[serde(default = "d_cross")]
    pub cross_attention_dim: Value,
    #[serde(default = "d_tl")]
    pub transformer_layers_per_block: Value,
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<Value>,
    #[serde(default = "d_head")]
    pub attention_head_dim: Value,
    #[serde(default)]
    pub num_attention_heads: Option<Value>,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    #[serde(default)]
    pub encoder_hid_dim: Option<usize>,
    #[serde(default = "d_default")]
    pub resnet_time_scale_shift: String,
    #[serde(default = "d_3")]
    pub conv_in_kernel: usize,
    #[serde(default = "d_3")]
    pub conv_out_kernel: usize,
    #[serde(default)]
    pub sample_size: Option<usize>,
}

fn d_4() -> usize {
    4
}
fn d_1() -> usize {
    1
}
fn d_3() -> usize {
    3
}
fn d_true() -> bool {
    true
}
fn d_1f() -> f64 {
    1.0
}
fn d_mid() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn d_layers() -> Value {
    Value::from(2)
}
fn d_silu() -> String {
    "silu".into()
}
fn d_groups() -> usize {
    32
}
fn d_eps() -> f64 {
    1e-5
}
fn d_cross() -> Value {
    Value::from(1280)
}
fn d_tl() -> Value {
    Value::from(1)
}
fn d_head() -> Value {
    Value::from(8)
}
fn d_default() -> String {
    "default".into()
}

/// A config value given as one number for every block or as a list with one per block.
fn per_block(v: &Value, n: usize, field: &str) -> Result<Vec<usize>> {
    match v {
        Value::Number(x) => Ok(vec![x.as_u64().unwrap_or(0) as usize; n]),
        Value::Array(a) if a.len() == n => a
            .iter()
            .map(|e| match e {
                Value::Number(x) => Ok(x.as_u64().unwrap_or(0) as usize),
                // Per-layer lists (some SDXL variants): every layer of a block must agree.
                Value::Array(inner) => {
                    let first = inner.first().and_then(|x| x.as_u64()).unwrap_or(1);
                    if inner.iter().all(|x| x.as_u64() == Some(first)) {
                        Ok(first as usize)
                    } else {
                        Err(crate::invalid!("unet config: per-layer {field} lists that vary within a block are not supported"))
                    }
                }
                _ => Err(crate::invalid!("unet config: {field} must hold numbers")),
            })
            .collect(),
        _ => Err(crate::invalid!("unet config: {field} must be a number or a list of {n}")),
    }
}

fn per_block_bool(v: &Value, n: usize) -> Vec<bool> {
    match v {
        Value::Bool(b) => vec![*b; n],
        Value::Array(a) => a.iter().map(|x| x.as_bool().unwrap_or(false)).collect(),
        _ => vec![false; n],
    }
}

impl UNetConfig {
    pub fn from_json(text: &str) -> Result<Self> {
        crate::model::config_json::from_str(text).map_err(|e| crate::invalid!("unet config: {e}"))
    }
}

/// Sinusoidal timestep features, as diffusers' `get_timestep_embedding`.
pub fn timestep_embedding(
    t: &Tensor,
    dim: usize,
    flip_sin_to_cos: bool,
    shift: f64,
) -> candle_core::Result<Tensor> {
    let half = dim / 2;
    let device = t.device();
    let exponent: Vec<f32> = (0..half)
        .map(|i| (-(10000f64.ln()) * i as f64 / (half as f64 - shift)).exp() as f32)
        .collect();
    let freqs = Tensor::from_vec(exponent, (1, half), device)?;
    let args = t
        .to_dtype(DType::F32)?
        .unsqueeze(1)?
        .broadcast_mul(&freqs)?;
    let (sin, cos) = (args.sin()?, args.cos()?);
    let emb = if flip_sin_to_cos {
        Tensor::cat(&[cos, sin], 1)?
    } else {
        Tensor::cat(&[sin, cos], 1)?
    };
    if dim % 2 == 1 {
        emb.pad_with_zeros(1, 0, 1)
    } else {
        Ok(emb)
    }
}

#[derive(Clone)]
struct TimestepEmbedding {
    cond_proj: Option<Linear>,
    linear_1: Linear,
    linear_2: Linear,
    act: Act,
}

impl TimestepEmbedding {
    fn new(
        vb: VarBuilder,
        cin: usize,
        dim: usize,
        act: Act,
        cond_dim: Option<usize>,
    ) -> Result<Self> {
        Ok(Self {
            cond_proj: match cond_dim {
                Some(c) => Some(linear_b(c, cin, false, vb.pp("cond_proj"))?),
                None => None,
            },
            linear_1: linear(cin, dim, vb.pp("linear_1"))?,
            linear_2: linear(dim, dim, vb.pp("linear_2"))?,
            act,
        })
    }
    fn visit_layers(&mut self, p: &str, f: &mut Visit) -> Result<()> {
        if let Some(l) = &mut self.cond_proj {
            f(&format!("{p}.cond_proj"), Layer::Linear(l))?;
        }
        f(&format!("{p}.linear_1"), Layer::Linear(&mut self.linear_1))?;
        f(&format!("{p}.linear_2"), Layer::Linear(&mut self.linear_2))
    }

    fn forward(&self, x: &Tensor, cond: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let x = match (&self.cond_proj, cond) {
            (Some(p), Some(c)) => (x + p.forward(c)?)?,
            _ => x.clone(),
        };
        self.linear_2
            .forward(&self.act.apply(&self.linear_1.forward(&x)?)?)
    }
}

#[derive(Clone)]
struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff_in: Linear,
    ff_out: Linear,
    only_cross: bool,
}

impl BasicTransformerBlock {
    fn new(
        vb: VarBuilder,
        dim: usize,
        heads: usize,
        head_dim: usize,
        cross: usize,
        only_cross: bool,
    ) -> Result<Self> {
        let inner_ff = dim * 4;
        Ok(Self {
            norm1: layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            attn1: Attention::new(
                vb.pp("attn1"),
                dim,
                if only_cross { Some(cross) } else { None },
                heads,
                head_dim,
                false,
            )?,
            norm2: layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            attn2: Attention::new(vb.pp("attn2"), dim, Some(cross), heads, head_dim, false)?,
            norm3: layer_norm(dim, 1e-5, vb.pp("norm3"))?,
            ff_in: linear(dim, inner_ff * 2, vb.pp("ff.net.0.proj"))?,
            ff_out: linear(inner_ff, dim, vb.pp("ff.net.2"))?,
            only_cross,
        })
    }
    fn visit_layers(&mut self, p: &str, f: &mut Visit) -> Result<()> {
        self.attn1.visit_layers(&format!("{p}.attn1"), f)?;
        self.attn2.visit_layers(&format!("{p}.attn2"), f)?;
        f(
            &format!("{p}.ff.net.0.proj"),
            Layer::Linear(&mut self.ff_in),
        )?;
        f(&format!("{p}.ff.net.2"), Layer::Linear(&mut self.ff_out))
    }

    fn forward(&self, x: &Tensor, ctx: &Tensor) -> candle_core::Result<Tensor> {
        let self_ctx = if self.only_cross { Some(ctx) } else { None };
        let x = (self.attn1.forward(&self.norm1.forward(x)?, self_ctx)? + x)?;
        let x = (self.attn2.forward(&self.norm2.forward(&x)?, Some(ctx))? + x)?;
        // GEGLU: the projection's second half gates the first through exact GELU.
        let h = self.ff_in.forward(&self.norm3.forward(&x)?)?;
        let gated = crate::kernels::geglu(&h)?;
        self.ff_out.forward(&gated)? + x
    }
}

#[derive(Clone)]
enum Proj {
    Conv(Conv2d),
    Linear(Linear),
}

#[derive(Clone)]
struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Proj,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Proj,
}

struct AttnSpec {
    heads: usize,
    layers: usize,
    cross: usize,
    linear: bool,
    only_cross: bool,
    groups: usize,
}

impl Transformer2DModel {
    fn new(vb: VarBuilder, channels: usize, s: &AttnSpec) -> Result<Self> {
        let head_dim = channels / s.heads;
        let inner = s.heads * head_dim;
        let proj = |vb: VarBuilder, a: usize, b: usize| -> Result<Proj> {
            Ok(if s.linear {
                Proj::Linear(linear(a, b, vb)?)
            } else {
                Proj::Conv(conv(vb, a, b, 1, 1, 0)?)
            })
        };
        Ok(Self {
            norm: group_norm(s.groups, channels, 1e-6, vb.pp("norm"))?,
            proj_in: proj(vb.pp("proj_in"), channels, inner)?,
            blocks: (0..s.layers)
                .map(|i| {
                    BasicTransformerBlock::new(
                        vb.pp(format!("transformer_blocks.{i}")),
                        inner,
                        s.heads,
                        head_dim,
                        s.cross,
                        s.only_cross,
                    )
                })
                .collect::<Result<_>>()?,
            proj_out: proj(vb.pp("proj_out"), inner, channels)?,
        })
    }

    fn visit_layers(&mut self, p: &str, f: &mut Visit) -> Result<()> {
        let mut proj = |name: &str, proj: &mut Proj| -> Result<()> {
            let name = format!("{p}.{name}");
            match proj {
                Proj::Conv(c) => f(&name, Layer::Conv(c)),
                Proj::Linear(l) => f(&name, Layer::Linear(l)),
            }
        };
        proj("proj_in", &mut self.proj_in)?;
        proj("proj_out", &mut self.proj_out)?;
        for (i, b) in self.blocks.iter_mut().enumerate() {
            b.visit_layers(&format!("{p}.transformer_blocks.{i}"), f)?;
        }
        Ok(())
    }

    fn forward(&self, x: &Tensor, ctx: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let residual = x;
        let x = self.norm.forward(x)?;
        let mut t = match &self.proj_in {
            Proj::Conv(p) => {
                let x = p.forward(&x)?;
                let inner = x.dim(1)?;
                x.permute((0, 2, 3, 1))?.reshape((b, h * w, inner))?
            }
            Proj::Linear(p) => p.forward(&x.permute((0, 2, 3, 1))?.reshape((b, h * w, c))?)?,
        };
        for block in &self.blocks {
            t = block.forward(&t, ctx)?;
        }
        let inner = t.dim(2)?;
        let out = match &self.proj_out {
            Proj::Conv(p) => p.forward(
                &t.reshape((b, h, w, inner))?
                    .permute((0, 3, 1, 2))?
                    .contiguous()?,
            )?,
            Proj::Linear(p) => p
                .forward(&t)?
                .reshape((b, h, w, c))?
                .permute((0, 3, 1, 2))?,
        };
        out + residual
    }
}

/// One down or up block: resnets, optional transformers after each, optional resampler.
#[derive(Clone)]
struct Block {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    down: Option<Downsample2D>,
    up: Option<Upsample2D>,
}

impl Block {
    fn visit_layers(&mut self, p: &str, f: &mut Visit) -> Result<()> {
        for (j, r) in self.resnets.iter_mut().enumerate() {
            r.visit_layers(&format!("{p}.resnets.{j}"), f)?;
        }
        for (j, a) in self.attentions.iter_mut().enumerate() {
            a.visit_layers(&format!("{p}.attentions.{j}"), f)?;
        }
        if let Some(d) = &mut self.down {
            d.visit_layers(&format!("{p}.downsamplers.0"), f)?;
        }
        if let Some(u) = &mut self.up {
            u.visit_layers(&format!("{p}.upsamplers.0"), f)?;
        }
        Ok(())
    }
}

#[derive(Clone)]
struct MidBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
}

#[derive(Clone)]
pub struct UNet2DConditionModel {
    time_embedding: TimestepEmbedding,
    add_embedding: Option<(TimestepEmbedding, usize)>,
    conv_in: Conv2d,
    down: Vec<Block>,
    mid: Option<MidBlock>,
    up: Vec<Block>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    act: Act,
    pub config: UNetConfig,
}

/// SDXL's extra conditioning: pooled text embedding and the six size/crop numbers.
pub struct AddedCond<'a> {
    pub text_embeds: &'a Tensor,
    pub time_ids: &'a Tensor,
}

impl UNet2DConditionModel {
    pub fn new(config: UNetConfig, vb: VarBuilder) -> Result<Self> {
        let c = &config;
        let n = c.block_out_channels.len();
        if c.down_block_types.len() != n || c.up_block_types.len() != n {
            return Err(crate::invalid!(
                "unet config: down/up block types must match block_out_channels ({n})"
            ));
        }
        if c.class_embed_type.is_some() || c.encoder_hid_dim.is_some() {
            return Err(crate::invalid!(
                "unet config: class embeddings and encoder_hid_dim are not supported"
            ));
        }
        if c.resnet_time_scale_shift != "default" || c.conv_in_kernel != 3 || c.conv_out_kernel != 3
        {
            return Err(crate::invalid!(
                "unet config: only the default time-scale shift and 3x3 in/out convs are supported"
            ));
        }
        let act = Act::parse(&c.act_fn)?;
        let heads = per_block(
            c.num_attention_heads
                .as_ref()
                .unwrap_or(&c.attention_head_dim),
            n,
            "attention heads",
        )?;
        let layers = per_block(&c.layers_per_block, n, "layers_per_block")?;
        let cross = per_block(&c.cross_attention_dim, n, "cross_attention_dim")?;
        let tlayers = per_block(
            &c.transformer_layers_per_block,
            n,
            "transformer_layers_per_block",
        )?;
        let rev_tlayers = match &c.reverse_transformer_layers_per_block {
            Some(v) => per_block(v, n, "reverse_transformer_layers_per_block")?,
            None => tlayers.iter().rev().copied().collect(),
        };
        let only_cross = per_block_bool(&c.only_cross_attention, n);
        let time_dim = c.block_out_channels[0] * 4;
        let rp = |scale: f64| ResnetParams {
            temb_channels: Some(time_dim),
            groups: c.norm_num_groups,
            eps: c.norm_eps,
            act,
            output_scale_factor: scale,
        };
        let spec = |i: usize, layers: usize| AttnSpec {
            heads: heads[i],
            layers,
            cross: cross[i],
            linear: c.use_linear_projection,
            only_cross: only_cross.get(i).copied().unwrap_or(false),
            groups: c.norm_num_groups,
        };
        let has_attn = |t: &str| t.starts_with("CrossAttn");

        let time_embedding = TimestepEmbedding::new(
            vb.pp("time_embedding"),
            c.block_out_channels[0],
            time_dim,
            act,
            c.time_cond_proj_dim,
        )?;
        let add_embedding = match c.addition_embed_type.as_deref() {
            None => None,
            Some("text_time") => {
                let input = c.projection_class_embeddings_input_dim.ok_or_else(|| {
                    crate::invalid!(
                        "unet config: text_time needs projection_class_embeddings_input_dim"
                    )
                })?;
                let tdim = c.addition_time_embed_dim.ok_or_else(|| {
                    crate::invalid!("unet config: text_time needs addition_time_embed_dim")
                })?;
                Some((
                    TimestepEmbedding::new(vb.pp("add_embedding"), input, time_dim, act, None)?,
                    tdim,
                ))
            }
            Some(other) => {
                return Err(crate::invalid!(
                    "unet config: addition_embed_type {other:?} is not supported"
                ));
            }
        };

        let mut down = Vec::with_capacity(n);
        let mut out_ch = c.block_out_channels[0];
        for (i, ty) in c.down_block_types.iter().enumerate() {
            let in_ch = out_ch;
            out_ch = c.block_out_channels[i];
            let vb = vb.pp(format!("down_blocks.{i}"));
            let mut block = Block {
                resnets: vec![],
                attentions: vec![],
                down: None,
                up: None,
            };
            for j in 0..layers[i] {
                block.resnets.push(ResnetBlock2D::new(
                    vb.pp(format!("resnets.{j}")),
                    if j == 0 { in_ch } else { out_ch },
                    out_ch,
                    &rp(1.0),
                )?);
                if has_attn(ty) {
                    block.attentions.push(Transformer2DModel::new(
                        vb.pp(format!("attentions.{j}")),
                        out_ch,
                        &spec(i, tlayers[i]),
                    )?);
                }
            }
            if i + 1 < n {
                block.down = Some(Downsample2D::new(
                    vb.pp("downsamplers.0"),
                    out_ch,
                    c.downsample_padding,
                )?);
            }
            down.push(block);
        }

        let last = *c.block_out_channels.last().unwrap();
        let mid = match c.mid_block_type.as_deref() {
            None => None,
            Some(ty @ ("UNetMidBlock2DCrossAttn" | "UNetMidBlock2D")) => {
                let vb = vb.pp("mid_block");
                let mut m = MidBlock {
                    resnets: vec![ResnetBlock2D::new(
                        vb.pp("resnets.0"),
                        last,
                        last,
                        &rp(c.mid_block_scale_factor),
                    )?],
                    attentions: vec![],
                };
                if ty == "UNetMidBlock2DCrossAttn" {
                    m.attentions.push(Transformer2DModel::new(
                        vb.pp("attentions.0"),
                        last,
                        &spec(n - 1, tlayers[n - 1]),
                    )?);
                }
                m.resnets.push(ResnetBlock2D::new(
                    vb.pp("resnets.1"),
                    last,
                    last,
                    &rp(c.mid_block_scale_factor),
                )?);
                Some(m)
            }
            Some(other) => {
                return Err(crate::invalid!(
                    "unet config: mid block {other:?} is not supported"
                ));
            }
        };

        let rev_out: Vec<usize> = c.block_out_channels.iter().rev().copied().collect();
        let mut up = Vec::with_capacity(n);
        let mut out_ch = rev_out[0];
        for (i, ty) in c.up_block_types.iter().enumerate() {
            let prev = out_ch;
            out_ch = rev_out[i];
            let in_ch = rev_out[(i + 1).min(n - 1)];
            let bi = n - 1 - i; // the matching down block's settings
            let vb = vb.pp(format!("up_blocks.{i}"));
            let num = layers[bi] + 1;
            let mut block = Block {
                resnets: vec![],
                attentions: vec![],
                down: None,
                up: None,
            };
            for j in 0..num {
                let skip = if j == num - 1 { in_ch } else { out_ch };
                let rin = if j == 0 { prev } else { out_ch };
                block.resnets.push(ResnetBlock2D::new(
                    vb.pp(format!("resnets.{j}")),
                    rin + skip,
                    out_ch,
                    &rp(1.0),
                )?);
                if has_attn(ty) {
                    block.attentions.push(Transformer2DModel::new(
                        vb.pp(format!("attentions.{j}")),
                        out_ch,
                        &spec(bi, rev_tlayers[i]),
                    )?);
                }
            }
            if i + 1 < n {
                block.up = Some(Upsample2D::new(vb.pp("upsamplers.0"), out_ch)?);
            }
            up.push(block);
        }

        Ok(Self {
            time_embedding,
            add_embedding,
            conv_in: conv(
                vb.pp("conv_in"),
                c.in_channels,
                c.block_out_channels[0],
                3,
                1,
                1,
            )?,
            down,
            mid,
            up,
            norm_out: group_norm(
                c.norm_num_groups,
                c.block_out_channels[0],
                c.norm_eps,
                vb.pp("conv_norm_out"),
            )?,
            conv_out: conv(
                vb.pp("conv_out"),
                c.block_out_channels[0],
                c.out_channels,
                3,
                1,
                1,
            )?,
            act,
            config,
        })
    }

    /// Predicts noise (or v, or x0) for `sample` at `timestep`.
    /// `timestep_cond`: the guidance embedding of LCM-distilled UNets.
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
        timestep_cond: Option<&Tensor>,
        added: Option<AddedCond>,
    ) -> Result<Tensor> {
        let t = Tensor::full(timestep as f32, sample.dim(0)?, sample.device())?;
        self.forward_timesteps(sample, &t, context, timestep_cond, added)
    }

    /// `forward` with a timestep per sample (`[batch]`, f32): training draws one each.
    pub fn forward_timesteps(
        &self,
        sample: &Tensor,
        t: &Tensor,
        context: &Tensor,
        timestep_cond: Option<&Tensor>,
        added: Option<AddedCond>,
    ) -> Result<Tensor> {
        let b = sample.dim(0)?;
        let dtype = sample.dtype();
        let c = &self.config;
        let t_emb =
            timestep_embedding(t, c.block_out_channels[0], c.flip_sin_to_cos, c.freq_shift)?
                .to_dtype(dtype)?;
        let mut emb = self.time_embedding.forward(&t_emb, timestep_cond)?;
        if let Some((add, tdim)) = &self.add_embedding {
            let added = added.ok_or_else(|| {
                crate::invalid!("this UNet needs pooled text embeddings and time ids (SDXL)")
            })?;
            let ids = added.time_ids.flatten_all()?;
            let time_embeds = timestep_embedding(&ids, *tdim, c.flip_sin_to_cos, c.freq_shift)?
                .reshape((b, ()))?
                .to_dtype(dtype)?;
            let add_in = Tensor::cat(&[added.text_embeds, &time_embeds], 1)?;
            emb = (emb + add.forward(&add_in, None)?)?;
        }

        // Upsample to the skip connection's size when the latent is not a multiple of 2^n.
        let factor = 1usize << self.up.iter().filter(|b| b.up.is_some()).count();
        let (_, _, h, w) = sample.dims4()?;
        let odd_size = h % factor != 0 || w % factor != 0;

        let mut x = self.conv_in.forward(sample)?;
        let mut skips = vec![x.clone()];
        for block in &self.down {
            for (j, r) in block.resnets.iter().enumerate() {
                x = r.forward(&x, Some(&emb))?;
                if let Some(a) = block.attentions.get(j) {
                    x = a.forward(&x, context)?;
                }
                skips.push(x.clone());
            }
            if let Some(d) = &block.down {
                x = d.forward(&x)?;
                skips.push(x.clone());
            }
        }
        if let Some(m) = &self.mid {
            x = m.resnets[0].forward(&x, Some(&emb))?;
            if let Some(a) = m.attentions.first() {
                x = a.forward(&x, context)?;
            }
            x = m.resnets[1].forward(&x, Some(&emb))?;
        }
        for block in &self.up {
            for (j, r) in block.resnets.iter().enumerate() {
                let skip = skips
                    .pop()
                    .ok_or_else(|| crate::invalid!("unet: skip connections do not match"))?;
                x = r.forward(&Tensor::cat(&[&x, &skip], 1)?, Some(&emb))?;
                if let Some(a) = block.attentions.get(j) {
                    x = a.forward(&x, context)?;
                }
            }
            if let Some(u) = &block.up {
                let size = if odd_size {
                    skips
                        .last()
                        .map(|s| -> candle_core::Result<(usize, usize)> {
                            Ok((s.dim(2)?, s.dim(3)?))
                        })
                        .transpose()?
                } else {
                    None
                };
                x = u.forward(&x, size)?;
            }
        }
        let x = self
            .conv_out
            .forward(&self.act.apply(&self.norm_out.forward(&x)?)?)?;
        Ok(x)
    }

    /// The layers a LoRA can change, named as in diffusers (`down_blocks.0.resnets.1.conv1`,
    /// `mid_block.attentions.0.transformer_blocks.0.attn2.to_k`).
    pub fn visit_layers(&mut self, f: &mut Visit) -> Result<()> {
        self.time_embedding.visit_layers("time_embedding", f)?;
        if let Some((add, _)) = &mut self.add_embedding {
            add.visit_layers("add_embedding", f)?;
        }
        f("conv_in", Layer::Conv(&mut self.conv_in))?;
        for (i, b) in self.down.iter_mut().enumerate() {
            b.visit_layers(&format!("down_blocks.{i}"), f)?;
        }
        if let Some(m) = &mut self.mid {
            for (j, r) in m.resnets.iter_mut().enumerate() {
                r.visit_layers(&format!("mid_block.resnets.{j}"), f)?;
            }
            for (j, a) in m.attentions.iter_mut().enumerate() {
                a.visit_layers(&format!("mid_block.attentions.{j}"), f)?;
            }
        }
        for (i, b) in self.up.iter_mut().enumerate() {
            b.visit_layers(&format!("up_blocks.{i}"), f)?;
        }
        f("conv_out", Layer::Conv(&mut self.conv_out))
    }

    /// The name a layer of `visit_layers` has in the original (LDM/SGM) UNet, which
    /// kohya's SDXL LoRAs and A1111's own names use: `input_blocks.{n}.{0: resnet, 1:
    /// transformer}`, `middle_block.{0,1,2}`, `output_blocks.{n}.{..}`, ResNet convs as
    /// `in_layers.2`/`out_layers.3`, `emb_layers.1`, `skip_connection` (diffusers'
    /// `convert_diffusers_name_to_compvis` and `_maybe_map_sgm_blocks_to_diffusers`, counted
    /// from this UNet's own blocks instead of a fixed three per level).
    pub fn ldm_name(&self, path: &str) -> Option<String> {
        let resnet = |rest: &str| -> String {
            let (head, tail) = rest.split_once('.').map_or((rest, ""), |(h, t)| (h, t));
            let head = match head {
                "conv1" => "in_layers.2",
                "conv2" => "out_layers.3",
                "time_emb_proj" => "emb_layers.1",
                "conv_shortcut" => "skip_connection",
                other => other,
            };
            if tail.is_empty() {
                head.to_string()
            } else {
                format!("{head}.{tail}")
            }
        };
        let inner = |kind: &str, rest: &str| -> (usize, String) {
            if kind == "resnets" {
                (0, resnet(rest))
            } else {
                (1, rest.to_string())
            }
        };
        let fixed = [
            ("conv_in", "input_blocks.0.0"),
            ("conv_out", "out.2"),
            ("time_embedding.linear_1", "time_embed.0"),
            ("time_embedding.linear_2", "time_embed.2"),
            ("add_embedding.linear_1", "label_emb.0.0"),
            ("add_embedding.linear_2", "label_emb.0.2"),
        ];
        if let Some((_, ldm)) = fixed.iter().find(|(d, _)| *d == path) {
            return Some(ldm.to_string());
        }
        let parts: Vec<&str> = path.splitn(5, '.').collect();
        let num = |s: &str| s.parse::<usize>().ok();
        match parts.as_slice() {
            ["down_blocks", i, kind, j, rest] | ["up_blocks", i, kind, j, rest] => {
                let (i, j) = (num(i)?, num(j)?);
                let up = parts[0] == "up_blocks";
                let blocks = if up { &self.up } else { &self.down };
                // Input blocks start after conv_in; each level holds its layers and then
                // its resampler (a level of its own going down, the last layer's going up).
                let before: usize = blocks[..i.min(blocks.len())]
                    .iter()
                    .map(|b| b.resnets.len() + (!up && b.down.is_some()) as usize)
                    .sum::<usize>()
                    + (!up) as usize;
                let block = blocks.get(i)?;
                match *kind {
                    "resnets" | "attentions" => {
                        let (sub, rest) = inner(kind, rest);
                        let list = if up { "output_blocks" } else { "input_blocks" };
                        Some(format!("{list}.{}.{sub}.{rest}", before + j))
                    }
                    "downsamplers" if !up && j == 0 && *rest == "conv" => Some(format!(
                        "input_blocks.{}.0.op",
                        before + block.resnets.len()
                    )),
                    "upsamplers" if up && j == 0 && *rest == "conv" => Some(format!(
                        "output_blocks.{}.{}.conv",
                        before + block.resnets.len() - 1,
                        1 + !block.attentions.is_empty() as usize
                    )),
                    _ => None,
                }
            }
            ["mid_block", kind @ ("resnets" | "attentions"), j, a, b] => {
                let j = num(j)?;
                let (sub, rest) = inner(kind, &format!("{a}.{b}"));
                let n = if sub == 0 { 2 * j } else { 1 };
                Some(format!("middle_block.{n}.{rest}"))
            }
            ["mid_block", kind @ ("resnets" | "attentions"), j, a] => {
                let j = num(j)?;
                let (sub, rest) = inner(kind, a);
                let n = if sub == 0 { 2 * j } else { 1 };
                Some(format!("middle_block.{n}.{rest}"))
            }
            _ => None,
        }
    }

    /// Dimension of the text conditioning this UNet expects.
    pub fn needs_added_cond(&self) -> bool {
        self.add_embedding.is_some()
    }

    /// Input size of `add_embedding` (pooled text dim + 6 × time-id embedding dim).
    pub fn added_cond_dims(&self) -> Option<(usize, usize)> {
        self.add_embedding.as_ref().map(|(_, tdim)| {
            (
                self.config
                    .projection_class_embeddings_input_dim
                    .unwrap_or(0),
                *tdim,
            )
        })
    }
}
