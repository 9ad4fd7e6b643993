//! HAT (Hybrid Attention Transformer, XPixelGroup/HAT), as spandrel 0.4.2 loads it
//! (`spandrel/architectures/HAT`): SwinIR's layout ([`super::swinir`]) with two additions.
//! Each Swin block has a convolution branch beside its window attention (3×3 to
//! `dim / compress`, GELU, 3×3 back, channel attention), added at 0.01; each group ends with
//! an overlapping cross-attention block (OCAB): queries from `window²` windows attend to
//! keys and values from the larger windows around them (`window · (1 + overlap)` a side,
//! zero-padded), with a relative-position bias of their own. Its only reconstruction is
//! `pixelshuffle`; group and body residual convolutions are `1conv` or none.
//!
//! Sizes come from the tensors, as spandrel reads them (the stored index buffers say the
//! window and the overlap); the index of the overlapping bias is computed as HAT does,
//! negative entries counting from the table's end as PyTorch's indexing reads them.

use candle_core::{Device, IndexOp, Module, Tensor};
use candle_nn::{LayerNorm, VarBuilder};

use super::swinir::{
    Block, BlockShape, Cab, Grid, PAD1, ShuffleTail, dims, div2k_mean, groups, heads_fit, isqrt,
    partition, reverse, shuffle_scale,
};
use super::{Arch, layout_error, reflect_pad_to_multiple};
use crate::Result;
use crate::kernels::{Conv2d, Linear, conv2d, linear};
use crate::model::state_dict::StateDict;

#[derive(Debug, Clone, PartialEq)]
pub struct HatConfig {
    pub channels: usize,
    pub embed_dim: usize,
    pub depths: Vec<usize>,
    pub heads: Vec<usize>,
    pub window: usize,
    /// The larger windows keys and values come from in the overlapping attention.
    pub overlap_window: usize,
    /// Hidden widths: the blocks' MLP, the overlapping block's MLP, the convolution
    /// branch, the channel attention's squeeze.
    pub mlp: usize,
    pub overlap_mlp: usize,
    pub cab: usize,
    pub squeeze: usize,
    /// The upsampler's features.
    pub features: usize,
    pub scale: usize,
    /// Residual convolutions after each group and the body (else none).
    pub one_conv: bool,
    pub img_size: usize,
}

const BLOCK0: &str = "layers.0.residual_group.blocks.0";
const OCAB0: &str = "layers.0.residual_group.overlap_attn";

/// Whether tensors of these names make a HAT, as spandrel's detection reads them.
pub fn detect(sd: &super::Shapes) -> bool {
    let has = |k: &str| sd.contains_key(k);
    has("relative_position_index_SA")
        && has("conv_first.weight")
        && has("conv_last.weight")
        && has(&format!("{BLOCK0}.norm1.weight"))
        && has(&format!("{BLOCK0}.conv_block.cab.0.weight"))
        && has(&format!("{BLOCK0}.conv_block.cab.3.attention.1.weight"))
        && has(&format!("{BLOCK0}.mlp.fc1.bias"))
        && has(&format!("{OCAB0}.relative_position_bias_table"))
        && has(&format!("{OCAB0}.qkv.weight"))
        && has(&format!("{OCAB0}.mlp.fc1.weight"))
}

/// `sd` without its buffers, and the hyper-parameters.
pub fn canonical(sd: StateDict) -> Result<(StateDict, HatConfig)> {
    if sd.contains_key("absolute_pos_embed") {
        return Err(layout_error(
            "HAT with an absolute position embedding is not supported yet",
        ));
    }
    let dims = |k: &str| dims(&sd, k, "HAT");
    let first = dims("conv_first.weight")?;
    let (embed_dim, channels) = (first[0], first[1]);
    let features = dims("conv_last.weight")?[1];
    let scale = shuffle_scale(&sd);
    let oca = dims("relative_position_index_OCA")?;
    let (depths, heads) = groups(&sd, "HAT", |i| {
        format!("layers.{i}.residual_group.overlap_attn.relative_position_bias_table")
    })?;
    let config = HatConfig {
        channels,
        embed_dim,
        window: isqrt(dims("relative_position_index_SA")?[0]),
        overlap_window: isqrt(oca[1]),
        depths,
        heads,
        mlp: dims(&format!("{BLOCK0}.mlp.fc1.weight"))?[0],
        overlap_mlp: dims(&format!("{OCAB0}.mlp.fc1.weight"))?[0],
        cab: dims(&format!("{BLOCK0}.conv_block.cab.0.weight"))?[0],
        squeeze: dims(&format!("{BLOCK0}.conv_block.cab.3.attention.1.weight"))?[0],
        features,
        scale,
        one_conv: sd.contains_key("conv_after_body.weight"),
        img_size: 64,
    };
    if config.window == 0
        || config.overlap_window < config.window
        || (config.overlap_window - config.window) % 2 != 0
        || !(1..=8).contains(&scale)
        || !heads_fit(&config.heads, embed_dim)
    {
        return Err(layout_error(format!(
            "a HAT that cannot be read: {config:?}"
        )));
    }
    let sd = sd
        .into_iter()
        .filter(|(k, _)| !k.starts_with("relative_position_index_") && !k.ends_with("attn_mask"))
        .collect();
    Ok((sd, config))
}

/// HAT's index into the overlapping attention's bias table for each (query, key) pair:
/// `(ext − ori + ws − wse + 1)` per axis, rows times `ws + wse − 1`, as `calculate_rpi_oca`
/// makes it; negative entries count from the table's end.
fn overlap_index(ws: usize, wse: usize) -> Vec<u32> {
    let side = (ws + wse - 1) as isize;
    let table = side * side;
    let shift = ws as isize - wse as isize + 1;
    let mut out = Vec::with_capacity(ws * ws * wse * wse);
    for i in 0..ws * ws {
        let (oy, ox) = ((i / ws) as isize, (i % ws) as isize);
        for j in 0..wse * wse {
            let (ey, ex) = ((j / wse) as isize, (j % wse) as isize);
            let v = (ey - oy + shift) * side + (ex - ox + shift);
            out.push(v.rem_euclid(table) as u32);
        }
    }
    out
}

/// The overlapping cross-attention block.
struct Ocab {
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    /// `[heads, ws², wse²]`.
    bias: Tensor,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
    window: usize,
    overlap: usize,
}

impl Ocab {
    fn new(c: &HatConfig, heads: usize, vb: VarBuilder) -> Result<Self> {
        let d = c.embed_dim;
        let (ws, wse) = (c.window, c.overlap_window);
        let table = vb.get(
            ((ws + wse - 1) * (ws + wse - 1), heads),
            "relative_position_bias_table",
        )?;
        let index = Tensor::new(overlap_index(ws, wse), &Device::Cpu)?;
        let bias = table
            .index_select(&index, 0)?
            .reshape((ws * ws, wse * wse, heads))?
            .permute((2, 0, 1))?
            .contiguous()?;
        let ln = |name: &str| candle_nn::layer_norm(d, 1e-5, vb.pp(name));
        Ok(Self {
            norm1: ln("norm1")?,
            qkv: linear(d, 3 * d, vb.pp("qkv"))?,
            proj: linear(d, d, vb.pp("proj"))?,
            bias,
            norm2: ln("norm2")?,
            fc1: linear(d, c.overlap_mlp, vb.pp("mlp.fc1"))?,
            fc2: linear(c.overlap_mlp, d, vb.pp("mlp.fc2"))?,
            heads,
            window: ws,
            overlap: wse,
        })
    }

    /// `x`: `[B, H·W, C]` tokens of an `h × w` image (whole windows).
    fn forward(&self, x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        let (b, l, c) = x.dims3()?;
        let (ws, wse) = (self.window, self.overlap);
        let qkv = self
            .qkv
            .forward(&self.norm1.forward(x)?)?
            .reshape((b, h, w, 3, c))?;
        let q = partition(&qkv.i((.., .., .., 0))?.contiguous()?, ws)?;
        // Keys and values: each window's surroundings, `wse` a side, zero beyond the image
        // (`nn.Unfold` with stride `ws` and padding `(wse − ws) / 2`).
        let p = (wse - ws) / 2;
        let kv = qkv
            .i((.., .., .., 1..3))?
            .permute((0, 3, 4, 1, 2))? // b, 2, c, h, w
            .contiguous()?
            .reshape((b, 2 * c, h, w))?
            .pad_with_zeros(2, p, p)?
            .pad_with_zeros(3, p, p)?;
        let (nh, nw) = (h / ws, w / ws);
        let mut windows = Vec::with_capacity(nh * nw);
        for wy in 0..nh {
            for wx in 0..nw {
                windows.push(kv.narrow(2, wy * ws, wse)?.narrow(3, wx * ws, wse)?);
            }
        }
        // b, nW, 2, c, wse² → 2, b·nW, wse², c
        let kv = Tensor::stack(&windows, 1)?
            .reshape((b, nh * nw, 2, c, wse * wse))?
            .permute((2, 0, 1, 4, 3))?
            .contiguous()?
            .reshape((2, b * nh * nw, wse * wse, c))?;
        let (bw, nq, n) = (b * nh * nw, ws * ws, wse * wse);
        let hd = c / self.heads;
        let heads = |t: &Tensor, len: usize| -> candle_core::Result<Tensor> {
            t.reshape((bw, len, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = (heads(&q, nq)? * (hd as f64).powf(-0.5))?;
        let k = heads(&kv.i(0)?, n)?;
        let v = heads(&kv.i(1)?, n)?;
        let attn = q.matmul(&k.t()?)?.broadcast_add(&self.bias)?;
        let attn = candle_nn::ops::softmax_last_dim(&attn)?;
        let y = attn.matmul(&v)?.transpose(1, 2)?.reshape((bw, nq, c))?;
        let y = reverse(&y, ws, b, h, w)?.reshape((b, l, c))?;
        let x = (self.proj.forward(&y)? + x)?;
        let m = self
            .fc2
            .forward(&self.fc1.forward(&self.norm2.forward(&x)?)?.gelu_erf()?)?;
        Ok((x + m)?)
    }
}

struct Group {
    blocks: Vec<Block>,
    overlap: Ocab,
    conv: Option<Conv2d>,
}

pub struct Hat {
    pub config: HatConfig,
    conv_first: Conv2d,
    embed_norm: LayerNorm,
    groups: Vec<Group>,
    norm: LayerNorm,
    conv_after_body: Option<Conv2d>,
    tail: ShuffleTail,
    mean: Tensor,
}

impl Hat {
    pub fn new(config: HatConfig, vb: VarBuilder) -> Result<Self> {
        let c = &config;
        let d = c.embed_dim;
        let groups = c
            .depths
            .iter()
            .zip(&c.heads)
            .enumerate()
            .map(|(i, (&depth, &heads))| {
                let vb = vb.pp(format!("layers.{i}"));
                let shape = BlockShape {
                    dim: d,
                    heads,
                    mlp: c.mlp,
                    window: c.window,
                    img_size: c.img_size,
                };
                let blocks = shape.blocks(depth, &vb, |vb| {
                    let cab = Cab::new(d, c.cab, c.squeeze, vb.pp("conv_block.cab"))?;
                    Ok(Some(cab))
                })?;
                Ok(Group {
                    blocks,
                    overlap: Ocab::new(c, heads, vb.pp("residual_group.overlap_attn"))?,
                    conv: c
                        .one_conv
                        .then(|| conv2d(d, d, 3, PAD1, vb.pp("conv")))
                        .transpose()?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            conv_first: conv2d(c.channels, d, 3, PAD1, vb.pp("conv_first"))?,
            embed_norm: candle_nn::layer_norm(d, 1e-5, vb.pp("patch_embed.norm"))?,
            groups,
            norm: candle_nn::layer_norm(d, 1e-5, vb.pp("norm"))?,
            conv_after_body: c
                .one_conv
                .then(|| conv2d(d, d, 3, PAD1, vb.pp("conv_after_body")))
                .transpose()?,
            tail: ShuffleTail::new(d, c.features, c.channels, c.scale, &vb)?,
            mean: div2k_mean(c.channels)?,
            config,
        })
    }

    /// The transformer body, as SwinIR's with each group's overlapping attention.
    fn features(&self, x: &Tensor) -> Result<Tensor> {
        let g = Grid::of(x)?;
        let mask = g.mask(self.groups.iter().flat_map(|g| &g.blocks))?;
        let mut t = self.embed_norm.forward(&g.tokens(x)?)?;
        for group in &self.groups {
            let mut y = t.clone();
            for blk in &group.blocks {
                y = blk.forward(&y, g.h, g.w, mask.as_ref())?;
            }
            y = group.overlap.forward(&y, g.h, g.w)?;
            if let Some(conv) = &group.conv {
                y = g.tokens(&conv.forward(&g.image(&y)?)?)?;
            }
            t = (y + t)?;
        }
        Ok(g.image(&self.norm.forward(&t)?)?)
    }
}

impl Arch for Hat {
    fn scale(&self) -> usize {
        self.config.scale
    }

    fn channels(&self) -> usize {
        self.config.channels
    }

    /// As SwinIR's, and each group's overlapping windows reach a little further.
    fn receptive_radius(&self) -> usize {
        let c = &self.config;
        let blocks: usize = c.depths.iter().sum();
        blocks * c.window.div_ceil(2) + c.depths.len() * (c.overlap_window + 2) + 8
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let (_, _, h, w) = x.dims4()?;
        let x = x.broadcast_sub(&self.mean)?;
        let x = reflect_pad_to_multiple(&x, c.window)?;
        let first = self.conv_first.forward(&x)?;
        let body = self.features(&first)?;
        let body = match &self.conv_after_body {
            Some(conv) => conv.forward(&body)?,
            None => body,
        };
        let feat = (body + &first)?;
        let y = self.tail.forward(&feat)?.broadcast_add(&self.mean)?;
        Ok(y.narrow(2, 0, h * c.scale)?.narrow(3, 0, w * c.scale)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overlapping_index_wraps_as_pytorch_reads_it() {
        // HAT's own numbers for ws 4, wse 6: 16 × 36 entries from -40 to 40 in a table of 81.
        let idx = overlap_index(4, 6);
        assert_eq!(idx.len(), 16 * 36);
        assert!(idx.iter().all(|&i| i < 81));
        // Query (0, 0), key (0, 0): (0 − 0 + 4 − 6 + 1) · 9 + (−1) = −10 → 71.
        assert_eq!(idx[0], 71);
    }
}
