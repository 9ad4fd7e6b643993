//! MobileSAM's image encoder: TinyViT (ChaoningZhang/MobileSAM, `mobile_sam/modeling/
//! tiny_vit_sam.py`), distilled from SAM's ViT-H; the prompt encoder and mask decoder are
//! SAM's own.
//!
//! - Stem: two 3×3 stride-2 convolutions with batch norms, GELU between (input / 4).
//! - Stage 0: MBConv blocks (1×1 up ×4, depthwise 3×3, 1×1 down, each with a batch norm;
//!   GELU after the residual sum).
//! - Stages 1…: TinyViT blocks: windowed attention (the grid padded with zeros to whole
//!   windows *before* the attention's LayerNorm, so a pad is the norm's bias; per head a
//!   learned bias for each `(|Δy|, |Δx|)` offset), a residual sum, a depthwise 3×3
//!   convolution with a batch norm (no residual), and a LayerNorm-MLP with a residual.
//! - Between stages a patch merging: 1×1, depthwise 3×3 stride 2, 1×1 (batch norms, GELUs).
//!   The reference keeps the last merging at stride 1 by its width (320, 448 or 576): here
//!   by the grid, which must end at the input / 16 for SAM's decoder (64² for 1024²) — the
//!   same for every released model.
//!
//! Batch norms are folded into their convolutions at load. Widths, depths, heads (the bias
//! table's rows) and windows (its columns, `window²`) come from the tensors; the classifier
//! head left in the released checkpoint (`head`, `norm_head`) is not used.

use candle_core::{D, Module, Tensor};
use candle_nn::{Conv2dConfig, LayerNorm};

use crate::kernels::{Conv2d, Linear, conv2d_from, gelu};
use crate::model::state_dict::{self, StateDict};
use crate::{EngineError, Result};

/// The encoder's input side: the reference reads its output as a 64×64 grid.
pub const IMAGE_SIZE: usize = 1024;

fn bad(m: impl Into<String>) -> EngineError {
    EngineError::bad_model(std::path::PathBuf::new(), m)
}

fn take(sd: &mut StateDict, name: &str) -> Result<Tensor> {
    sd.remove(name)
        .ok_or_else(|| bad(format!("MobileSAM's encoder without image_encoder.{name}")))
}

/// `Conv2d_BN` at `p` (`{p}.c`, `{p}.bn`) with the batch norm folded in; depthwise when its
/// weight has one input channel per group and `depthwise` says so.
fn conv_bn(sd: &mut StateDict, p: &str, stride: usize, depthwise: bool) -> Result<Conv2d> {
    let w = take(sd, &format!("{p}.c.weight"))?;
    let bn = state_dict::take_batch_norm(sd, &format!("{p}.bn"))?;
    let (w, b) = state_dict::fold_batch_norm(&w, None, &bn)?;
    let (cout, _, k, _) = w.dims4()?;
    let cfg = Conv2dConfig {
        stride,
        padding: k / 2,
        groups: if depthwise { cout } else { 1 },
        ..Default::default()
    };
    Ok(conv2d_from(w, Some(b), cfg)?)
}

fn layer_norm(sd: &mut StateDict, p: &str) -> Result<LayerNorm> {
    Ok(LayerNorm::new(
        take(sd, &format!("{p}.weight"))?,
        take(sd, &format!("{p}.bias"))?,
        1e-5,
    ))
}

fn linear(sd: &mut StateDict, p: &str) -> Result<Linear> {
    Ok(Linear::new(
        take(sd, &format!("{p}.weight"))?,
        Some(take(sd, &format!("{p}.bias"))?),
    )?)
}

/// `[b, c, h, w]` → `[b, h, w, c]` and back.
fn to_tokens(x: &Tensor) -> candle_core::Result<Tensor> {
    x.permute((0, 2, 3, 1))?.contiguous()
}

fn to_planes(x: &Tensor) -> candle_core::Result<Tensor> {
    x.permute((0, 3, 1, 2))?.contiguous()
}

struct MbConv {
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
}

impl MbConv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = gelu(&self.conv1.forward(x)?)?;
        let y = gelu(&self.conv2.forward(&y)?)?;
        gelu(&(self.conv3.forward(&y)? + x)?)
    }
}

/// Patch merging: `[b, c, h, w]` → `[b, c', h / stride, w / stride]`.
struct Merge {
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
}

impl Merge {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = gelu(&self.conv1.forward(x)?)?;
        let y = gelu(&self.conv2.forward(&y)?)?;
        self.conv3.forward(&y)
    }
}

struct Block {
    norm: LayerNorm,
    qkv: Linear,
    proj: Linear,
    /// `[1, heads, window², window²]`: each query-key pair's learned offset bias.
    bias: Tensor,
    heads: usize,
    window: usize,
    local: Conv2d,
    mlp_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl Block {
    fn load(sd: &mut StateDict, p: &str) -> Result<Self> {
        let table = take(sd, &format!("{p}.attn.attention_biases"))?;
        let (heads, offsets) = table.dims2()?;
        let window = (offsets as f64).sqrt().round() as usize;
        if window * window != offsets {
            return Err(bad(format!(
                "image_encoder.{p}.attn.attention_biases: {offsets} offsets is not a square window"
            )));
        }
        // The reference numbers the offsets as they first appear: (|Δy|, |Δx|) → |Δy|·w + |Δx|.
        let n = offsets;
        let idx: Vec<u32> = (0..n)
            .flat_map(|a| {
                (0..n).map(move |b| {
                    let (dy, dx) = (
                        (a / window).abs_diff(b / window),
                        (a % window).abs_diff(b % window),
                    );
                    (dy * window + dx) as u32
                })
            })
            .collect();
        let idx = Tensor::from_vec(idx, n * n, table.device())?;
        let bias = table.index_select(&idx, 1)?.reshape((1, heads, n, n))?;
        let qkv = linear(sd, &format!("{p}.attn.qkv"))?;
        let dim = qkv.weight_t.dim(0)?;
        if dim % heads != 0 || qkv.weight_t.dim(1)? != 3 * dim {
            return Err(bad(format!(
                "image_encoder.{p}.attn: {heads} heads do not divide a width of {dim} into q, k and v"
            )));
        }
        Ok(Self {
            norm: layer_norm(sd, &format!("{p}.attn.norm"))?,
            qkv,
            proj: linear(sd, &format!("{p}.attn.proj"))?,
            bias,
            heads,
            window,
            local: conv_bn(sd, &format!("{p}.local_conv"), 1, true)?,
            mlp_norm: layer_norm(sd, &format!("{p}.mlp.norm"))?,
            fc1: linear(sd, &format!("{p}.mlp.fc1"))?,
            fc2: linear(sd, &format!("{p}.mlp.fc2"))?,
        })
    }

    /// Attention within windows of `[n, ws, ws, c]` (already normalised).
    fn attend(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, ws, _, c) = x.dims4()?;
        let (heads, t) = (self.heads, ws * ws);
        let d = c / heads;
        // Each head's q, k, v lie together: `[n, t, heads, 3d]`.
        let qkv = self
            .qkv
            .forward(&x.reshape((n, t, c))?)?
            .reshape((n, t, heads, 3 * d))?
            .transpose(1, 2)?; // [n, heads, t, 3d]
        let part = |i: usize| -> candle_core::Result<Tensor> {
            qkv.narrow(D::Minus1, i * d, d)?
                .contiguous()?
                .reshape((n * heads, t, d))
        };
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let s = (q.matmul(&k.t()?)? * (d as f64).powf(-0.5))?
            .reshape((n, heads, t, t))?
            .broadcast_add(&self.bias)?;
        let p = candle_nn::ops::softmax_last_dim(&s)?.reshape((n * heads, t, t))?;
        let o = p
            .matmul(&v)?
            .reshape((n, heads, t, d))?
            .transpose(1, 2)?
            .reshape((n, t, c))?;
        self.proj.forward(&o)?.reshape((n, ws, ws, c))
    }

    /// `[b, h, w, c]` → the same.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // Padded to whole windows before the norm: a pad is the norm's bias.
        let o = super::sam::in_windows(x, self.window, |w| self.attend(&self.norm.forward(w)?))?;
        let x = (x + o)?;
        let x = to_tokens(&self.local.forward(&to_planes(&x)?)?)?;
        let m = self
            .fc2
            .forward(&gelu(&self.fc1.forward(&self.mlp_norm.forward(&x)?)?)?)?;
        x + m
    }
}

enum Blocks {
    Conv(Vec<MbConv>),
    Attention(Vec<Block>),
}

struct Stage {
    blocks: Blocks,
    merge: Option<Merge>,
}

/// What the tensors say of each stage.
#[derive(Debug, Clone, PartialEq)]
pub struct TinyVitConfig {
    pub widths: Vec<usize>,
    pub depths: Vec<usize>,
    /// Attention heads and windows of each stage (0 for the convolution stage).
    pub heads: Vec<usize>,
    pub windows: Vec<usize>,
}

pub struct TinyVit {
    pub config: TinyVitConfig,
    stem: [Conv2d; 2],
    stages: Vec<Stage>,
}

impl TinyVit {
    /// Builds the encoder from its tensors (names without `image_encoder.`; the neck is the
    /// caller's), consuming them: any tensor left over is an error that names it.
    pub fn from_state_dict(mut sd: StateDict) -> Result<Self> {
        let sd = &mut sd;
        let stem = [
            conv_bn(sd, "patch_embed.seq.0", 2, false)?,
            conv_bn(sd, "patch_embed.seq.2", 2, false)?,
        ];
        let mut grid = IMAGE_SIZE / 4;
        let last_grid = IMAGE_SIZE / 16;
        let mut stages = Vec::new();
        let mut config = TinyVitConfig {
            widths: vec![],
            depths: vec![],
            heads: vec![],
            windows: vec![],
        };
        while sd
            .keys()
            .any(|k| k.starts_with(&format!("layers.{}.", stages.len())))
        {
            let i = stages.len();
            let has = |sd: &StateDict, j: usize, n: &str| {
                sd.contains_key(&format!("layers.{i}.blocks.{j}.{n}"))
            };
            let blocks = if has(sd, 0, "conv1.c.weight") {
                let mut v = Vec::new();
                while has(sd, v.len(), "conv1.c.weight") {
                    let p = format!("layers.{i}.blocks.{}", v.len());
                    v.push(MbConv {
                        conv1: conv_bn(sd, &format!("{p}.conv1"), 1, false)?,
                        conv2: conv_bn(sd, &format!("{p}.conv2"), 1, true)?,
                        conv3: conv_bn(sd, &format!("{p}.conv3"), 1, false)?,
                    });
                }
                config.depths.push(v.len());
                config.heads.push(0);
                config.windows.push(0);
                Blocks::Conv(v)
            } else {
                let mut v = Vec::new();
                while has(sd, v.len(), "attn.attention_biases") {
                    v.push(Block::load(sd, &format!("layers.{i}.blocks.{}", v.len()))?);
                }
                let first = v
                    .first()
                    .ok_or_else(|| bad(format!("MobileSAM's encoder stage {i} has no blocks")))?;
                config.depths.push(v.len());
                config.heads.push(first.heads);
                config.windows.push(first.window);
                Blocks::Attention(v)
            };
            let width = match &blocks {
                Blocks::Conv(v) => v.first().map(|b| b.conv3.dims()).transpose()?.map(|d| d.0),
                Blocks::Attention(v) => Some(v[0].qkv.weight_t.dim(0)?),
            }
            .ok_or_else(|| bad(format!("MobileSAM's encoder stage {i} has no blocks")))?;
            config.widths.push(width);
            let p = format!("layers.{i}.downsample");
            let merge = if sd.contains_key(&format!("{p}.conv1.c.weight")) {
                let stride = if grid > last_grid { 2 } else { 1 };
                grid /= stride;
                Some(Merge {
                    conv1: conv_bn(sd, &format!("{p}.conv1"), 1, false)?,
                    conv2: conv_bn(sd, &format!("{p}.conv2"), stride, true)?,
                    conv3: conv_bn(sd, &format!("{p}.conv3"), 1, false)?,
                })
            } else {
                None
            };
            stages.push(Stage { blocks, merge });
        }
        if stages.is_empty() {
            return Err(bad(
                "MobileSAM's encoder without stages (image_encoder.layers.*)",
            ));
        }
        if grid != last_grid {
            return Err(bad(format!(
                "MobileSAM's encoder ends at a {grid}² grid, not SAM's {last_grid}²"
            )));
        }
        // The classification head the distillation kept.
        sd.retain(|k, _| !(k.starts_with("head.") || k.starts_with("norm_head.")));
        if let Some(k) = sd.keys().next() {
            return Err(bad(format!(
                "MobileSAM's encoder: unknown tensor image_encoder.{k}"
            )));
        }
        Ok(Self {
            config,
            stem,
            stages,
        })
    }

    /// The width of the encoder's output (the neck's input).
    pub fn width(&self) -> usize {
        *self.config.widths.last().unwrap_or(&0)
    }

    /// `[1, 3, 1024, 1024]` → `[1, width, 64, 64]`.
    pub fn forward(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let x = gelu(&self.stem[0].forward(pixels)?)?;
        let mut x = self.stem[1].forward(&x)?; // planes
        for stage in &self.stages {
            x = match &stage.blocks {
                Blocks::Conv(blocks) => {
                    for b in blocks {
                        x = b.forward(&x)?;
                    }
                    x
                }
                Blocks::Attention(blocks) => {
                    let mut t = to_tokens(&x)?;
                    for b in blocks {
                        t = b.forward(&t)?;
                    }
                    to_planes(&t)?
                }
            };
            if let Some(m) = &stage.merge {
                x = m.forward(&x)?;
            }
        }
        Ok(x)
    }
}
