//! Building blocks shared by the UNet and the VAE, named as in diffusers
//! (`models/resnet.rs`, `models/attention_processor.py`, `models/downsampling.py`,
//! `models/upsampling.py`) so weight names load as they are stored.

use candle_core::{Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::kernels::{Conv2d, GroupNorm, Linear, conv2d, group_norm, linear, linear_b};

use crate::Result;
use crate::pipelines::lora::{Layer, Visit};

/// Largest attention score matrix computed at once, in bytes (see `Attention::forward`).
pub const ATTENTION_CHUNK_BYTES: usize = 256 << 20;

/// The activation named by a config's `act_fn`.
#[derive(Debug, Clone, Copy)]
pub enum Act {
    Silu,
    Gelu,
}

impl Act {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "silu" | "swish" => Ok(Act::Silu),
            "gelu" => Ok(Act::Gelu),
            other => Err(crate::invalid!("activation {other:?} is not supported")),
        }
    }
    pub fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Act::Silu => x.silu(),
            Act::Gelu => x.gelu_erf(),
        }
    }
}

pub fn conv(
    vb: VarBuilder,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    padding: usize,
) -> Result<Conv2d> {
    Ok(conv2d(
        cin,
        cout,
        k,
        Conv2dConfig {
            padding,
            stride,
            ..Default::default()
        },
        vb,
    )?)
}

/// diffusers' `ResnetBlock2D` with the "default" time-embedding mode.
#[derive(Clone)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
    act: Act,
    output_scale_factor: f64,
}

pub struct ResnetParams {
    pub temb_channels: Option<usize>,
    pub groups: usize,
    pub eps: f64,
    pub act: Act,
    pub output_scale_factor: f64,
}

impl ResnetBlock2D {
    pub fn new(vb: VarBuilder, cin: usize, cout: usize, p: &ResnetParams) -> Result<Self> {
        Ok(Self {
            norm1: group_norm(p.groups, cin, p.eps, vb.pp("norm1"))?,
            conv1: conv(vb.pp("conv1"), cin, cout, 3, 1, 1)?,
            time_emb_proj: match p.temb_channels {
                Some(t) => Some(linear(t, cout, vb.pp("time_emb_proj"))?),
                None => None,
            },
            norm2: group_norm(p.groups, cout, p.eps, vb.pp("norm2"))?,
            conv2: conv(vb.pp("conv2"), cout, cout, 3, 1, 1)?,
            shortcut: if cin != cout {
                Some(conv(vb.pp("conv_shortcut"), cin, cout, 1, 1, 0)?)
            } else {
                None
            },
            act: p.act,
            output_scale_factor: p.output_scale_factor,
        })
    }

    /// The layers a LoRA can change, named under `p` as in diffusers.
    pub(crate) fn visit_layers(&mut self, p: &str, f: &mut Visit) -> Result<()> {
        f(&format!("{p}.conv1"), Layer::Conv(&mut self.conv1))?;
        if let Some(l) = &mut self.time_emb_proj {
            f(&format!("{p}.time_emb_proj"), Layer::Linear(l))?;
        }
        f(&format!("{p}.conv2"), Layer::Conv(&mut self.conv2))?;
        if let Some(c) = &mut self.shortcut {
            f(&format!("{p}.conv_shortcut"), Layer::Conv(c))?;
        }
        Ok(())
    }

    /// The norm then the activation (one fused pass for SiLU).
    fn norm_act(&self, norm: &GroupNorm, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.act {
            Act::Silu => norm.forward_silu(x),
            act => act.apply(&norm.forward(x)?),
        }
    }

    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let mut h = self.conv1.forward(&self.norm_act(&self.norm1, x)?)?;
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            let t = proj
                .forward(&self.act.apply(temb)?)?
                .unsqueeze(2)?
                .unsqueeze(3)?;
            h = h.broadcast_add(&t)?;
        }
        let h = self.conv2.forward(&self.norm_act(&self.norm2, &h)?)?;
        let skip = match &self.shortcut {
            Some(s) => s.forward(x)?,
            None => x.clone(),
        };
        let out = (skip + h)?;
        if self.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            out / self.output_scale_factor
        }
    }
}

/// diffusers' `Downsample2D` with a convolution. `padding == 0` pads right and bottom by
/// one first, as the VAE encoder does.
#[derive(Clone)]
pub struct Downsample2D {
    conv: Conv2d,
    padding: usize,
}

impl Downsample2D {
    pub fn new(vb: VarBuilder, channels: usize, padding: usize) -> Result<Self> {
        Ok(Self {
            conv: conv(vb.pp("conv"), channels, channels, 3, 2, padding)?,
            padding,
        })
    }
    pub(crate) fn visit_layers(&mut self, p: &str, f: &mut Visit) -> Result<()> {
        f(&format!("{p}.conv"), Layer::Conv(&mut self.conv))
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.padding == 0 {
            let x = x.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?;
            self.conv.forward(&x)
        } else {
            self.conv.forward(x)
        }
    }
}

/// diffusers' `Upsample2D`: nearest ×2 (or to the skip connection's size), then a 3×3 conv.
#[derive(Clone)]
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    pub fn new(vb: VarBuilder, channels: usize) -> Result<Self> {
        Ok(Self {
            conv: conv(vb.pp("conv"), channels, channels, 3, 1, 1)?,
        })
    }
    pub(crate) fn visit_layers(&mut self, p: &str, f: &mut Visit) -> Result<()> {
        f(&format!("{p}.conv"), Layer::Conv(&mut self.conv))
    }

    pub fn forward(&self, x: &Tensor, size: Option<(usize, usize)>) -> candle_core::Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (th, tw) = size.unwrap_or((2 * h, 2 * w));
        self.conv.forward(&x.upsample_nearest2d(th, tw)?)
    }
}

/// diffusers' `Attention` over token sequences `[batch, tokens, channels]`.
#[derive(Clone)]
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    scale: f64,
}

impl Attention {
    /// `context_dim`: the channels of the cross-attention context (`None`: self-attention).
    pub fn new(
        vb: VarBuilder,
        query_dim: usize,
        context_dim: Option<usize>,
        heads: usize,
        head_dim: usize,
        qkv_bias: bool,
    ) -> Result<Self> {
        let inner = heads * head_dim;
        let ctx = context_dim.unwrap_or(query_dim);
        Ok(Self {
            to_q: linear_b(query_dim, inner, qkv_bias, vb.pp("to_q"))?,
            to_k: linear_b(ctx, inner, qkv_bias, vb.pp("to_k"))?,
            to_v: linear_b(ctx, inner, qkv_bias, vb.pp("to_v"))?,
            to_out: linear(inner, query_dim, vb.pp("to_out.0"))?,
            heads,
            scale: (head_dim as f64).powf(-0.5),
        })
    }

    pub(crate) fn visit_layers(&mut self, p: &str, f: &mut Visit) -> Result<()> {
        f(&format!("{p}.to_q"), Layer::Linear(&mut self.to_q))?;
        f(&format!("{p}.to_k"), Layer::Linear(&mut self.to_k))?;
        f(&format!("{p}.to_v"), Layer::Linear(&mut self.to_v))?;
        f(&format!("{p}.to_out.0"), Layer::Linear(&mut self.to_out))
    }

    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> candle_core::Result<Tensor> {
        self.forward_chunked(x, context, ATTENTION_CHUNK_BYTES)
    }

    /// `forward` with score matrices of at most `chunk_bytes` at a time.
    pub fn forward_chunked(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        chunk_bytes: usize,
    ) -> candle_core::Result<Tensor> {
        let ctx = context.unwrap_or(x);
        self.forward_qkv(x, ctx, ctx, chunk_bytes)
    }

    /// Queries, keys and values projected from three inputs (DETR-style layers add a
    /// position embedding to the queries' and keys' input only).
    pub fn forward_qkv(
        &self,
        q_in: &Tensor,
        k_in: &Tensor,
        v_in: &Tensor,
        chunk_bytes: usize,
    ) -> candle_core::Result<Tensor> {
        let q = self.to_q.forward(q_in)?;
        let k = self.to_k.forward(k_in)?;
        let v = self.to_v.forward(v_in)?;
        // The score matrix is heads x n x m; at large sizes (SD 1.5 at 2048², 65536
        // tokens) it would take hundreds of GB: it is only ever made a block of queries at
        // a time (within chunk_bytes off the CPU kernel); each row's softmax is unchanged.
        let o = crate::kernels::attention(&q, &k, &v, self.heads, self.scale, false, chunk_bytes)?;
        self.to_out.forward(&o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn chunked_attention_equals_whole() {
        let dev = Device::Cpu;
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        // VarMap initialises the weights randomly on first use.
        let self_attn = Attention::new(vb.pp("self"), 16, None, 2, 8, true).unwrap();
        let cross = Attention::new(vb.pp("cross"), 16, Some(12), 2, 8, true).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 37, 16), &dev).unwrap();
        let ctx = Tensor::randn(0f32, 1.0, (2, 5, 12), &dev).unwrap();
        for (attn, context) in [(&self_attn, None), (&cross, Some(&ctx))] {
            let whole = attn.forward_chunked(&x, context, usize::MAX).unwrap();
            // 1 and 3 query rows per chunk (uneven last chunk).
            for rows in [1usize, 3] {
                let m = context.map_or(37, |c| c.dim(1).unwrap());
                let part = attn
                    .forward_chunked(&x, context, rows * 2 * 2 * m * 4)
                    .unwrap();
                let diff = (&whole - &part).unwrap().abs().unwrap().max_all().unwrap();
                assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
            }
        }
    }
}
