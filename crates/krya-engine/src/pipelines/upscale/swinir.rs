//! SwinIR, as JingyunLiang/SwinIR defines it and spandrel 0.4.2 loads it
//! (`spandrel/architectures/SwinIR`): a 3×3 convolution to `embed_dim` features, residual
//! Swin transformer blocks (RSTB: `depth` Swin blocks, then a convolution, added to the
//! group's input), a LayerNorm and a convolution after the body added to the first
//! features, then one of four reconstructions: `pixelshuffle` (classical SR),
//! `pixelshuffledirect` (lightweight), `nearest+conv` (real-world SR, as ESRGAN's) or none
//! (denoising and JPEG models, ×1, the residual added to the input).
//!
//! A Swin block: LayerNorm, multi-head self-attention inside `window × window` windows
//! (every other block on windows shifted by half a window, with the mask that keeps pixels
//! from across the image's wrapped edge apart) with a learned bias per relative position,
//! added back; LayerNorm, an MLP with exact GELU, added back.
//!
//! Everything comes from the tensors, as spandrel reads them: the features, the MLP's
//! width, the window (from the relative-position index), the depths and heads per group,
//! the upsampler and scale, `1conv` or `3conv` residual convolutions; the JPEG models
//! (window 7) work on `[0, 255]`, the others on `[0, 1]`, both around the DIV2K mean
//! colour. The image is padded by reflection to whole windows and cropped back.

use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::{Conv2dConfig, LayerNorm, VarBuilder};

use super::{Arch, layout_error, leaky_relu, pixel_shuffle, reflect_pad_to_multiple};
use crate::Result;
use crate::kernels::{Conv2d, Linear, conv2d, linear};
use crate::model::state_dict::StateDict;

/// How the features become the larger image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsampler {
    /// A convolution and LeakyReLU(0.01), then (conv ×4 + shuffle by 2) per doubling (or
    /// one conv ×9 + shuffle by 3), then a convolution to the image.
    PixelShuffle,
    /// One convolution to `channels · scale²` and a shuffle.
    PixelShuffleDirect,
    /// A convolution and LeakyReLU(0.01), then nearest doublings each with a convolution
    /// and LeakyReLU(0.2), a convolution, LeakyReLU(0.2), a convolution to the image.
    NearestConv,
    /// ×1: the features' convolution added to the input.
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SwinIrConfig {
    pub channels: usize,
    pub embed_dim: usize,
    pub depths: Vec<usize>,
    pub heads: Vec<usize>,
    pub window: usize,
    /// The MLP's hidden width.
    pub mlp: usize,
    /// The upsampler's features (`num_feat`; the embedding's where it has none).
    pub features: usize,
    pub upsampler: Upsampler,
    pub scale: usize,
    /// The residual convolutions are three (3×3 to a quarter, 1×1, 3×3 back) rather than one.
    pub three_conv: bool,
    pub img_range: f64,
    /// The size the model was built for: a window no smaller than it is shrunk to it, and
    /// then not shifted (spandrel's blocks do this at 16² and below).
    pub img_size: usize,
}

const BLOCK0: &str = "layers.0.residual_group.blocks.0";

/// Whether tensors of these names make a SwinIR, as spandrel's detection reads them.
pub fn detect(sd: &super::Shapes) -> bool {
    let has = |k: &str| sd.contains_key(k);
    has(&format!("{BLOCK0}.norm1.weight"))
        && (has("conv_first.weight") || has("conv_first.1.weight"))
        && has(&format!("{BLOCK0}.mlp.fc1.bias"))
        && has(&format!("{BLOCK0}.attn.relative_position_index"))
}

/// The buffers a SwinIR file stores besides its weights (recomputed here for each size):
/// relative-position indexes and shifted windows' masks.
fn is_buffer(k: &str) -> bool {
    k.ends_with(".attn.relative_position_index") || k.ends_with(".attn_mask")
}

/// `sd` without its buffers, and the hyper-parameters.
pub fn canonical(sd: StateDict) -> Result<(StateDict, SwinIrConfig)> {
    if sd.contains_key("conv_first.1.weight") {
        return Err(layout_error(
            "SwinIR with a pixel-unshuffled input (conv_first.1) is not supported yet",
        ));
    }
    let dims = |k: &str| dims(&sd, k, "SwinIR");
    let has = |k: &str| sd.contains_key(k);
    let upsampler = if has("conv_before_upsample.0.weight") {
        if has("conv_up1.weight") {
            Upsampler::NearestConv
        } else {
            Upsampler::PixelShuffle
        }
    } else if has("upsample.0.weight") {
        Upsampler::PixelShuffleDirect
    } else {
        Upsampler::None
    };
    let first = dims("conv_first.weight")?;
    let (embed_dim, channels) = (first[0], first[1]);
    let out = if has("conv_last.weight") {
        dims("conv_last.weight")?[0]
    } else {
        channels
    };
    if out != channels {
        return Err(layout_error(format!(
            "SwinIR with {channels} channels in and {out} out"
        )));
    }
    let scale = match upsampler {
        Upsampler::NearestConv => {
            1 << (1..)
                .take_while(|i| has(&format!("conv_up{i}.weight")))
                .count()
        }
        Upsampler::PixelShuffle => shuffle_scale(&sd),
        Upsampler::PixelShuffleDirect => isqrt(dims("upsample.0.bias")?[0] / channels),
        Upsampler::None => 1,
    };
    let window = isqrt(dims(&format!("{BLOCK0}.attn.relative_position_index"))?[0]);
    let img_size = match sd.get("layers.0.residual_group.blocks.1.attn_mask") {
        Some(m) => isqrt(m.dims()[0]) * window,
        None => 64,
    };
    let (depths, heads) = groups(&sd, "SwinIR", |i| {
        format!("layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table")
    })?;
    let features = match sd.get("conv_before_upsample.0.weight") {
        Some(t) => t.dims()[0],
        None => embed_dim,
    };
    let config = SwinIrConfig {
        channels,
        embed_dim,
        features,
        mlp: dims(&format!("{BLOCK0}.mlp.fc1.bias"))?[0],
        window,
        depths,
        heads,
        upsampler,
        scale,
        three_conv: !has("conv_after_body.weight"),
        img_range: if window == 7 { 255.0 } else { 1.0 },
        img_size,
    };
    if window == 0 || !(1..=8).contains(&scale) || !heads_fit(&config.heads, embed_dim) {
        return Err(layout_error(format!(
            "a SwinIR that cannot be read: {config:?}"
        )));
    }
    let sd = sd.into_iter().filter(|(k, _)| !is_buffer(k)).collect();
    Ok((sd, config))
}

// What HAT (`super::hat`) shares with SwinIR: reading their shapes, the DIV2K mean, the
// pixel-shuffle reconstruction, and moving between feature maps and tokens.

/// `√n`, for sizes stored squared.
pub(super) fn isqrt(n: usize) -> usize {
    (n as f64).sqrt().round() as usize
}

/// The shape of tensor `k`, or an error naming `arch`.
pub(super) fn dims(sd: &StateDict, k: &str, arch: &str) -> Result<Vec<usize>> {
    Ok(sd
        .get(k)
        .ok_or_else(|| layout_error(format!("{arch} without {k}")))?
        .dims()
        .to_vec())
}

/// How many `{prefix}.{i}.…` there are, from 0 (spandrel's `get_seq_len`).
fn seq_len(sd: &StateDict, prefix: &str) -> usize {
    (0..)
        .take_while(|i| {
            let p = format!("{prefix}.{i}.");
            sd.keys().any(|k| k.starts_with(&p))
        })
        .count()
}

/// Each group's depth (blocks), and its heads: the second dimension of the relative-position
/// table `table(i)` names. At least one group.
pub(super) fn groups(
    sd: &StateDict,
    arch: &str,
    table: impl Fn(usize) -> String,
) -> Result<(Vec<usize>, Vec<usize>)> {
    let layers = seq_len(sd, "layers");
    if layers == 0 {
        return Err(layout_error(format!("{arch} without layers")));
    }
    let depths = (0..layers)
        .map(|i| seq_len(sd, &format!("layers.{i}.residual_group.blocks")))
        .collect();
    let heads = (0..layers)
        .map(|i| Ok(dims(sd, &table(i), arch)?[1]))
        .collect::<Result<_>>()?;
    Ok((depths, heads))
}

/// Whether every group's heads split the features evenly.
pub(super) fn heads_fit(heads: &[usize], dim: usize) -> bool {
    heads.iter().all(|&h| h > 0 && dim % h == 0)
}

/// The scale of a pixel-shuffle upsampler (`upsample.0`, `.2`, … each to `f²` times its
/// input's channels).
pub(super) fn shuffle_scale(sd: &StateDict) -> usize {
    (0..10)
        .step_by(2)
        .map_while(|i| sd.get(&format!("upsample.{i}.weight")))
        .map(|t| {
            let d = t.dims();
            isqrt(d[0] / d[1])
        })
        .product()
}

/// The DIV2K mean colour both subtract (zero for other than 3 channels), `[1, C, 1, 1]`.
pub(super) fn div2k_mean(channels: usize) -> Result<Tensor> {
    Ok(if channels == 3 {
        Tensor::new(&[0.4488f32, 0.4371, 0.4040], &Device::Cpu)?.reshape((1, 3, 1, 1))?
    } else {
        Tensor::zeros((1, channels, 1, 1), DType::F32, &Device::Cpu)?
    })
}

pub(super) const PAD1: Conv2dConfig = Conv2dConfig {
    padding: 1,
    stride: 1,
    dilation: 1,
    groups: 1,
    cudnn_fwd_algo: None,
};

/// The `pixelshuffle` reconstruction: a convolution to `nf` and LeakyReLU(0.01), then a
/// convolution to 4× (or 9×) the channels and a shuffle by 2 (or 3) per factor of the
/// scale, then a convolution to the image.
pub(super) struct ShuffleTail {
    before: Conv2d,
    ups: Vec<Conv2d>,
    factor: usize,
    last: Conv2d,
}

impl ShuffleTail {
    pub(super) fn new(
        dim: usize,
        nf: usize,
        channels: usize,
        scale: usize,
        vb: &VarBuilder,
    ) -> Result<Self> {
        let (factor, n) = if scale == 3 {
            (3, 1)
        } else {
            (2, scale.trailing_zeros() as usize)
        };
        let ups = (0..n)
            .map(|i| {
                let vb = vb.pp(format!("upsample.{}", 2 * i));
                conv2d(nf, factor * factor * nf, 3, PAD1, vb)
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            before: conv2d(dim, nf, 3, PAD1, vb.pp("conv_before_upsample.0"))?,
            ups,
            factor,
            last: conv2d(nf, channels, 3, PAD1, vb.pp("conv_last"))?,
        })
    }

    pub(super) fn forward(&self, feat: &Tensor) -> Result<Tensor> {
        let mut y = leaky_relu(&self.before.forward(feat)?, 0.01)?;
        for up in &self.ups {
            y = pixel_shuffle(&up.forward(&y)?, self.factor)?;
        }
        Ok(self.last.forward(&y)?)
    }
}

/// A `[B, C, H, W]` feature map's size: between it and its `[B, H·W, C]` tokens.
#[derive(Debug, Clone, Copy)]
pub(super) struct Grid {
    b: usize,
    c: usize,
    pub h: usize,
    pub w: usize,
}

impl Grid {
    pub(super) fn of(x: &Tensor) -> Result<Self> {
        let (b, c, h, w) = x.dims4()?;
        Ok(Self { b, c, h, w })
    }

    pub(super) fn tokens(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.flatten_from(2)?.transpose(1, 2)?.contiguous()
    }

    pub(super) fn image(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        t.transpose(1, 2)?
            .contiguous()?
            .reshape((self.b, self.c, self.h, self.w))
    }

    /// The shifted windows' mask at this size, shared by every shifted block of `blocks`
    /// (`None` when none shifts).
    pub(super) fn mask<'a>(
        &self,
        mut blocks: impl Iterator<Item = &'a Block>,
    ) -> Result<Option<Tensor>> {
        Ok(blocks
            .find(|b| b.shift > 0)
            .map(|b| shift_mask(self.h, self.w, b.window, b.shift))
            .transpose()?)
    }
}

/// The residual convolution of a group or of the body: one 3×3, or 3×3 to a quarter,
/// LeakyReLU(0.2), 1×1, LeakyReLU(0.2), 3×3 back.
enum ResidualConv {
    One(Conv2d),
    Three([Conv2d; 3]),
}

impl ResidualConv {
    fn new(dim: usize, three: bool, vb: VarBuilder) -> Result<Self> {
        if !three {
            return Ok(Self::One(conv2d(dim, dim, 3, PAD1, vb)?));
        }
        let q = dim / 4;
        Ok(Self::Three([
            conv2d(dim, q, 3, PAD1, vb.pp("0"))?,
            conv2d(q, q, 1, Default::default(), vb.pp("2"))?,
            conv2d(q, dim, 3, PAD1, vb.pp("4"))?,
        ]))
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::One(c) => c.forward(x)?,
            Self::Three([a, b, c]) => {
                let y = leaky_relu(&a.forward(x)?, 0.2)?;
                let y = leaky_relu(&b.forward(&y)?, 0.2)?;
                c.forward(&y)?
            }
        })
    }
}

/// HAT's convolution branch of a block: 3×3 to fewer channels, GELU, 3×3 back, then
/// channel attention (average pool, 1×1 down, ReLU, 1×1 up, sigmoid, times the input).
pub(super) struct Cab {
    conv1: Conv2d,
    conv2: Conv2d,
    squeeze: Conv2d,
    excite: Conv2d,
}

impl Cab {
    pub(super) fn new(dim: usize, hidden: usize, squeezed: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv1: conv2d(dim, hidden, 3, PAD1, vb.pp("0"))?,
            conv2: conv2d(hidden, dim, 3, PAD1, vb.pp("2"))?,
            squeeze: conv2d(dim, squeezed, 1, Default::default(), vb.pp("3.attention.1"))?,
            excite: conv2d(squeezed, dim, 1, Default::default(), vb.pp("3.attention.3"))?,
        })
    }

    /// `[B, C, H, W]` → the same.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.conv2.forward(&self.conv1.forward(x)?.gelu_erf()?)?;
        let pooled = y.mean_keepdim(3)?.mean_keepdim(2)?;
        let weights = candle_nn::ops::sigmoid(
            &self
                .excite
                .forward(&self.squeeze.forward(&pooled)?.relu()?)?,
        )?;
        Ok(y.broadcast_mul(&weights)?)
    }
}

/// The weight of HAT's convolution branch in a block.
const CONV_SCALE: f64 = 0.01;

pub(super) struct Block {
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    /// `[heads, N, N]`: the learned bias of each pair of positions in a window.
    bias: Tensor,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
    pub(super) window: usize,
    pub(super) shift: usize,
    /// HAT's convolution branch (`conv_block.cab`), added at [`CONV_SCALE`].
    pub(super) cab: Option<Cab>,
}

/// The index into the relative-position table of each pair of positions in a window.
pub(super) fn relative_index(ws: usize) -> Vec<u32> {
    let n = ws * ws;
    let mut out = Vec::with_capacity(n * n);
    for a in 0..n {
        for b in 0..n {
            let dy = (a / ws) as isize - (b / ws) as isize + ws as isize - 1;
            let dx = (a % ws) as isize - (b % ws) as isize + ws as isize - 1;
            out.push((dy * (2 * ws as isize - 1) + dx) as u32);
        }
    }
    out
}

/// `[B, H, W, C]` → `[B·nW, ws·ws, C]`, windows in row-major order.
pub(super) fn partition(x: &Tensor, ws: usize) -> candle_core::Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    x.reshape(vec![b, h / ws, ws, w / ws, ws, c])?
        .permute(vec![0, 1, 3, 2, 4, 5])?
        .contiguous()?
        .reshape((b * (h / ws) * (w / ws), ws * ws, c))
}

/// The inverse of [`partition`].
pub(super) fn reverse(
    x: &Tensor,
    ws: usize,
    b: usize,
    h: usize,
    w: usize,
) -> candle_core::Result<Tensor> {
    let c = x.dim(2)?;
    x.reshape(vec![b, h / ws, w / ws, ws, ws, c])?
        .permute(vec![0, 1, 3, 2, 4, 5])?
        .contiguous()?
        .reshape((b, h, w, c))
}

/// The shifted windows' mask for an `h × w` image: `[nW, N, N]`, 0 between pixels of the
/// same region before the roll and -100 between others, as SwinIR's `calculate_mask`.
pub(super) fn shift_mask(
    h: usize,
    w: usize,
    ws: usize,
    shift: usize,
) -> candle_core::Result<Tensor> {
    let region = |i: usize, n: usize| {
        if i < n - ws {
            0
        } else if i < n - shift {
            1
        } else {
            2
        }
    };
    let (nh, nw, n) = (h / ws, w / ws, ws * ws);
    let mut mask = Vec::with_capacity(nh * nw * n * n);
    for wy in 0..nh {
        for wx in 0..nw {
            let label = |p: usize| {
                let (y, x) = (wy * ws + p / ws, wx * ws + p % ws);
                region(y, h) * 3 + region(x, w)
            };
            for a in 0..n {
                for b in 0..n {
                    mask.push(if label(a) == label(b) { 0f32 } else { -100.0 });
                }
            }
        }
    }
    Tensor::from_vec(mask, (nh * nw, n, n), &Device::Cpu)
}

/// What a group's Swin blocks are built from.
pub(super) struct BlockShape {
    pub dim: usize,
    pub heads: usize,
    pub mlp: usize,
    pub window: usize,
    pub img_size: usize,
}

impl BlockShape {
    /// The `depth` blocks of the group under `vb` (`residual_group.blocks.{j}`), the odd
    /// ones on shifted windows, each with the convolution branch `cab` makes from its own
    /// `VarBuilder` (HAT's), if any.
    pub(super) fn blocks(
        &self,
        depth: usize,
        vb: &VarBuilder,
        cab: impl Fn(&VarBuilder) -> Result<Option<Cab>>,
    ) -> Result<Vec<Block>> {
        (0..depth)
            .map(|j| {
                let vb = vb.pp(format!("residual_group.blocks.{j}"));
                Block::new(self, j % 2 == 1, cab(&vb)?, vb)
            })
            .collect()
    }
}

impl Block {
    /// A block of `b`'s group; an `odd` one works on shifted windows.
    fn new(b: &BlockShape, odd: bool, cab: Option<Cab>, vb: VarBuilder) -> Result<Self> {
        let (dim, heads) = (b.dim, b.heads);
        let ln = |name: &str| candle_nn::layer_norm(dim, 1e-5, vb.pp(name));
        // A window no smaller than the image the model was built for is shrunk to it and
        // not shifted.
        let (window, shift) = if b.img_size <= b.window {
            (b.img_size, 0)
        } else {
            (b.window, if odd { b.window / 2 } else { 0 })
        };
        let table = vb.pp("attn").get(
            ((2 * window - 1) * (2 * window - 1), heads),
            "relative_position_bias_table",
        )?;
        let n = window * window;
        let index = Tensor::new(relative_index(window), &Device::Cpu)?;
        let bias = table
            .index_select(&index, 0)?
            .reshape((n, n, heads))?
            .permute((2, 0, 1))?
            .contiguous()?;
        Ok(Self {
            norm1: ln("norm1")?,
            qkv: linear(dim, 3 * dim, vb.pp("attn.qkv"))?,
            proj: linear(dim, dim, vb.pp("attn.proj"))?,
            bias,
            norm2: ln("norm2")?,
            fc1: linear(dim, b.mlp, vb.pp("mlp.fc1"))?,
            fc2: linear(b.mlp, dim, vb.pp("mlp.fc2"))?,
            heads,
            window,
            shift,
            cab,
        })
    }

    /// `x`: `[B, H·W, C]` tokens of an `h × w` image (whole windows); `mask`: the shifted
    /// windows' mask for this size (used when this block shifts).
    pub(super) fn forward(
        &self,
        x: &Tensor,
        h: usize,
        w: usize,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, l, c) = x.dims3()?;
        let (ws, s) = (self.window, self.shift);
        let y = self.norm1.forward(x)?.reshape((b, h, w, c))?;
        let conv = match &self.cab {
            Some(cab) => {
                let img = y.permute((0, 3, 1, 2))?.contiguous()?;
                let out = cab.forward(&img)?.permute((0, 2, 3, 1))?.contiguous()?;
                Some((out.reshape((b, l, c))? * CONV_SCALE)?)
            }
            None => None,
        };
        let y = if s > 0 {
            y.roll(-(s as i32), 1)?.roll(-(s as i32), 2)?
        } else {
            y
        };
        let windows = partition(&y, ws)?;
        let attended = self.attention(&windows, if s > 0 { mask } else { None })?;
        let y = reverse(&attended, ws, b, h, w)?;
        let y = if s > 0 {
            y.roll(s as i32, 1)?.roll(s as i32, 2)?
        } else {
            y
        };
        let mut x = (x + y.reshape((b, l, c))?)?;
        if let Some(conv) = conv {
            x = (x + conv)?;
        }
        let m = self
            .fc2
            .forward(&self.fc1.forward(&self.norm2.forward(&x)?)?.gelu_erf()?)?;
        Ok((x + m)?)
    }

    /// Multi-head attention within each window: `[B·nW, N, C]` → the same.
    fn attention(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (bw, n, c) = x.dims3()?;
        let hd = c / self.heads;
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((bw, n, 3, self.heads, hd))?
            .permute((2, 0, 3, 1, 4))?;
        let scale = (hd as f64).powf(-0.5);
        let q = (qkv.i(0)?.contiguous()? * scale)?;
        let k = qkv.i(1)?.contiguous()?;
        let v = qkv.i(2)?.contiguous()?;
        let attn = q.matmul(&k.t()?)?.broadcast_add(&self.bias)?;
        let attn = match mask {
            Some(m) => {
                let nw = m.dim(0)?;
                attn.reshape((bw / nw, nw, self.heads, n, n))?
                    .broadcast_add(&m.unsqueeze(1)?.unsqueeze(0)?)?
                    .reshape((bw, self.heads, n, n))?
            }
            None => attn,
        };
        let attn = candle_nn::ops::softmax_last_dim(&attn)?;
        let y = attn.matmul(&v)?.transpose(1, 2)?.reshape((bw, n, c))?;
        Ok(self.proj.forward(&y)?)
    }
}

struct Group {
    blocks: Vec<Block>,
    conv: ResidualConv,
}

/// How SwinIR's features become the image (see [`Upsampler`]).
enum Tail {
    Shuffle(ShuffleTail),
    Direct(Conv2d),
    Nearest {
        before: Conv2d,
        ups: Vec<Conv2d>,
        hr: Conv2d,
        last: Conv2d,
    },
    /// ×1: a convolution added to the input.
    Residual(Conv2d),
}

pub struct SwinIr {
    pub config: SwinIrConfig,
    conv_first: Conv2d,
    /// The patch embedding's LayerNorm (`patch_norm`), then each group, then `norm`.
    embed_norm: LayerNorm,
    groups: Vec<Group>,
    norm: LayerNorm,
    conv_after_body: ResidualConv,
    tail: Tail,
    mean: Tensor,
}

impl SwinIr {
    pub fn new(config: SwinIrConfig, vb: VarBuilder) -> Result<Self> {
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
                let blocks = shape.blocks(depth, &vb, |_| Ok(None))?;
                Ok(Group {
                    blocks,
                    conv: ResidualConv::new(d, c.three_conv, vb.pp("conv"))?,
                })
            })
            .collect::<Result<_>>()?;
        let nf = c.features;
        let tail = match c.upsampler {
            Upsampler::PixelShuffle => {
                Tail::Shuffle(ShuffleTail::new(d, nf, c.channels, c.scale, &vb)?)
            }
            Upsampler::PixelShuffleDirect => {
                let out = c.channels * c.scale * c.scale;
                Tail::Direct(conv2d(d, out, 3, PAD1, vb.pp("upsample.0"))?)
            }
            Upsampler::NearestConv => Tail::Nearest {
                before: conv2d(d, nf, 3, PAD1, vb.pp("conv_before_upsample.0"))?,
                ups: (1..=c.scale.trailing_zeros() as usize)
                    .map(|i| conv2d(nf, nf, 3, PAD1, vb.pp(format!("conv_up{i}"))))
                    .collect::<candle_core::Result<_>>()?,
                hr: conv2d(nf, nf, 3, PAD1, vb.pp("conv_hr"))?,
                last: conv2d(nf, c.channels, 3, PAD1, vb.pp("conv_last"))?,
            },
            Upsampler::None => Tail::Residual(conv2d(d, c.channels, 3, PAD1, vb.pp("conv_last"))?),
        };
        Ok(Self {
            conv_first: conv2d(c.channels, d, 3, PAD1, vb.pp("conv_first"))?,
            embed_norm: candle_nn::layer_norm(d, 1e-5, vb.pp("patch_embed.norm"))?,
            groups,
            norm: candle_nn::layer_norm(d, 1e-5, vb.pp("norm"))?,
            conv_after_body: ResidualConv::new(d, c.three_conv, vb.pp("conv_after_body"))?,
            tail,
            mean: div2k_mean(c.channels)?,
            config,
        })
    }

    /// The transformer body on `[B, C, H, W]` features (whole windows): patch embedding's
    /// norm, the groups, the last norm.
    fn features(&self, x: &Tensor) -> Result<Tensor> {
        let g = Grid::of(x)?;
        let mask = g.mask(self.groups.iter().flat_map(|g| &g.blocks))?;
        let mut t = self.embed_norm.forward(&g.tokens(x)?)?;
        for group in &self.groups {
            let mut y = t.clone();
            for blk in &group.blocks {
                y = blk.forward(&y, g.h, g.w, mask.as_ref())?;
            }
            t = (g.tokens(&group.conv.forward(&g.image(&y)?)?)? + t)?;
        }
        Ok(g.image(&self.norm.forward(&t)?)?)
    }
}

impl Arch for SwinIr {
    fn scale(&self) -> usize {
        self.config.scale
    }

    fn channels(&self) -> usize {
        self.config.channels
    }

    /// Attention reaches across windows a little further with each shifted block: half a
    /// window per block, and a pixel per 3×3 convolution (a bound: tiles overlap by less,
    /// and their blended overlaps hide the difference).
    fn receptive_radius(&self) -> usize {
        let c = &self.config;
        let blocks: usize = c.depths.iter().sum();
        blocks * c.window.div_ceil(2) + 2 * c.depths.len() + 8
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let (_, _, h, w) = x.dims4()?;
        let window = self.groups[0].blocks.first().map_or(c.window, |b| b.window);
        let x = reflect_pad_to_multiple(x, window)?;
        let x = (x.broadcast_sub(&self.mean)? * c.img_range)?;
        let first = self.conv_first.forward(&x)?;
        let feat = (self.conv_after_body.forward(&self.features(&first)?)? + &first)?;
        let y = match &self.tail {
            Tail::Shuffle(t) => t.forward(&feat)?,
            Tail::Direct(conv) => pixel_shuffle(&conv.forward(&feat)?, c.scale)?,
            Tail::Nearest {
                before,
                ups,
                hr,
                last,
            } => {
                let mut y = leaky_relu(&before.forward(&feat)?, 0.01)?;
                for up in ups {
                    let (_, _, fh, fw) = y.dims4()?;
                    y = leaky_relu(&up.forward(&y.upsample_nearest2d(fh * 2, fw * 2)?)?, 0.2)?;
                }
                last.forward(&leaky_relu(&hr.forward(&y)?, 0.2)?)?
            }
            Tail::Residual(conv) => (&x + conv.forward(&feat)?)?,
        };
        let y = (y / c.img_range)?.broadcast_add(&self.mean)?;
        Ok(y.narrow(2, 0, h * c.scale)?.narrow(3, 0, w * c.scale)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_positions_and_masks_are_swinirs() {
        // ws 2: pairs (a, b) index (dy + 1) · 3 + (dx + 1).
        assert_eq!(
            relative_index(2),
            [4, 3, 1, 0, 5, 4, 2, 1, 7, 6, 4, 3, 8, 7, 5, 4]
        );
        // 4 × 4 with windows of 2 shifted by 1: the first window is one region; the last
        // holds four (its rows and columns each split at the shift).
        let m = shift_mask(4, 4, 2, 1).unwrap();
        assert_eq!(m.dims(), [4, 4, 4]);
        let first: Vec<f32> = m.i(0).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert!(first.iter().all(|v| *v == 0.0));
        let last: Vec<Vec<f32>> = m.i(3).unwrap().to_vec2().unwrap();
        assert_eq!(last[0], [0.0, -100.0, -100.0, -100.0]);
        assert_eq!(last[3], [-100.0, -100.0, -100.0, 0.0]);
    }
}
