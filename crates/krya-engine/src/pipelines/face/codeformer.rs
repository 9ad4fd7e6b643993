//! CodeFormer (sczhou/CodeFormer@b33cc7d639: basicsr/archs/codeformer_arch.py and
//! vqgan_arch.py; spandrel-extra-arches' `CodeFormer`): a VQGAN encoder reads the aligned
//! face down to a grid of tokens; a transformer predicts, for each, a code of a learned
//! codebook; the codes' vectors, given the encoder output's statistics (AdaIN), are painted
//! back up by the VQGAN generator. The fidelity weight `w` mixes the encoder's features back
//! into the generator (`Fuse_sft_block`): `dec + w·(dec·scale + shift)`; `w = 0` skips it
//! (pure codebook faces, most "restored"), `w = 1` keeps most of the input.
//!
//! - Blocks are read from the file in order (`encoder.blocks.N`, `generator.blocks.N`):
//!   a ResBlock (GroupNorm 32, swish, conv; twice; a 1×1 `conv_out` skip where the channels
//!   change) is diffusers' `ResnetBlock2D`, the attention block (1×1 `q`, `k`, `v`,
//!   `proj_out`) its one-head `Attention`, "Downsample" pads right and bottom then a stride-2
//!   conv, "Upsample" is nearest ×2 then a conv; the last norm is followed by the last conv
//!   with no activation between.
//! - The encoder's feature at each fused size is taken after that level's last ResBlock; the
//!   generator fuses after the first ResBlock of the level (the bottom level: its last),
//!   the indices the reference hard-codes for the released model.
//! - Transformer layers: pre-norm; the position embedding is added to the queries' and keys'
//!   input, not the values'; exact GELU. The code of a token is its logits' arg-max (the
//!   reference's softmax then top-1).
//! - The head count cannot be read from the file: 8, as released (and as spandrel assumes).
//!
//! Input and output are `[1, 3, S, S]` RGB in `[-1, 1]`; `S` is the code grid's side times
//! two per downsampling (512 for the released model).

use std::collections::HashMap;

use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{LayerNorm, VarBuilder};

use crate::kernels::{Conv2d, GroupNorm, Linear, group_norm, linear, linear_b};
use crate::model::state_dict::StateDict;
use crate::pipelines::stable_diffusion::blocks::{
    ATTENTION_CHUNK_BYTES, Act, Attention, Downsample2D, ResnetBlock2D, ResnetParams, Upsample2D,
    conv,
};
use crate::pipelines::upscale::{Shapes, leaky_relu};
use crate::weights::Weights;
use crate::{EngineError, Result};

/// Attention heads of the transformer (not in the file).
pub const HEADS: usize = 8;
/// GroupNorm groups of the VQGAN (`normalize` in the reference).
const GROUPS: usize = 32;

/// Whether tensors of these names make a CodeFormer (as spandrel-extra-arches detects it).
pub fn detect(sd: &Shapes) -> bool {
    [
        "position_emb",
        "idx_pred_layer.1.weight",
        "quantize.embedding.weight",
        "ft_layers.0.self_attn.in_proj_weight",
        "encoder.blocks.0.weight",
    ]
    .iter()
    .all(|k| sd.contains_key(*k))
}

fn bad(m: impl Into<String>) -> EngineError {
    EngineError::bad_model(std::path::PathBuf::new(), m)
}

/// The VQGAN's ResBlocks as diffusers' `ResnetBlock2D`: GroupNorm 32 (eps 1e-6), swish.
fn res_params() -> ResnetParams {
    ResnetParams {
        temb_channels: None,
        groups: GROUPS,
        eps: 1e-6,
        act: Act::Silu,
        output_scale_factor: 1.0,
    }
}

/// One block of the VQGAN's encoder or generator.
enum Block {
    Conv(Conv2d),
    Res(ResnetBlock2D),
    Attn(GroupNorm, Attention),
    Down(Downsample2D),
    Up(Upsample2D),
    Norm(GroupNorm),
}

impl Block {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Block::Conv(c) => c.forward(x),
            Block::Res(r) => r.forward(x, None),
            Block::Attn(norm, attn) => {
                let (b, c, h, w) = x.dims4()?;
                let t = norm.forward(x)?.reshape((b, c, h * w))?.transpose(1, 2)?;
                let t = attn.forward(&t.contiguous()?, None)?;
                t.transpose(1, 2)?.reshape((b, c, h, w))? + x
            }
            Block::Down(d) => d.forward(x),
            Block::Up(u) => u.forward(x, None),
            Block::Norm(n) => n.forward(x),
        }
    }
}

/// The blocks under `prefix.blocks.N`, in order, each recognised from its tensors.
fn blocks(sd: &Shapes, prefix: &str, vb: &VarBuilder, down: bool) -> Result<Vec<Block>> {
    let res = res_params();
    let mut out = Vec::new();
    loop {
        let p = format!("{prefix}.blocks.{}", out.len());
        let vb = vb.pp(format!("blocks.{}", out.len()));
        let shape = |k: &str| sd.get(&format!("{p}.{k}"));
        let block = if let Some(s) = shape("conv1.weight") {
            Block::Res(ResnetBlock2D::new(vb, s[1], s[0], &res)?)
        } else if let Some(s) = shape("attn.to_q.weight") {
            let c = s[0];
            Block::Attn(
                group_norm(GROUPS, c, 1e-6, vb.pp("norm"))?,
                Attention::new(vb.pp("attn"), c, None, 1, c, true)?,
            )
        } else if let Some(s) = shape("conv.weight") {
            if down {
                Block::Down(Downsample2D::new(vb, s[0], 0)?)
            } else {
                Block::Up(Upsample2D::new(vb, s[0])?)
            }
        } else if let Some(s) = shape("weight") {
            match s.len() {
                4 => Block::Conv(conv(vb, s[1], s[0], s[2], 1, s[2] / 2)?),
                1 => Block::Norm(group_norm(GROUPS, s[0], 1e-6, vb)?),
                _ => return Err(bad(format!("CodeFormer block {p} of shape {s:?}"))),
            }
        } else {
            break;
        };
        out.push(block);
    }
    if out.is_empty() {
        return Err(bad(format!("CodeFormer without {prefix} blocks")));
    }
    Ok(out)
}

/// Indices of the ResBlocks among `blocks`, split into levels at each resampling block.
fn levels(blocks: &[Block]) -> Vec<Vec<usize>> {
    let mut levels = vec![Vec::new()];
    for (i, b) in blocks.iter().enumerate() {
        match b {
            Block::Res(_) => levels.last_mut().unwrap().push(i),
            Block::Down(_) | Block::Up(_) => levels.push(Vec::new()),
            _ => {}
        }
    }
    levels
}

/// `Fuse_sft_block`: the encoder's and the generator's features make a scale and a shift.
struct Fuse {
    encode: ResnetBlock2D,
    scale: (Conv2d, Conv2d),
    shift: (Conv2d, Conv2d),
}

impl Fuse {
    fn new(vb: VarBuilder, ch: usize) -> Result<Self> {
        let res = res_params();
        let pair = |name: &str| -> Result<(Conv2d, Conv2d)> {
            Ok((
                conv(vb.pp(format!("{name}.0")), ch, ch, 3, 1, 1)?,
                conv(vb.pp(format!("{name}.2")), ch, ch, 3, 1, 1)?,
            ))
        };
        Ok(Self {
            encode: ResnetBlock2D::new(vb.pp("encode_enc"), 2 * ch, ch, &res)?,
            scale: pair("scale")?,
            shift: pair("shift")?,
        })
    }

    fn forward(&self, enc: &Tensor, dec: &Tensor, w: f64) -> candle_core::Result<Tensor> {
        let e = self.encode.forward(&Tensor::cat(&[enc, dec], 1)?, None)?;
        let two = |(a, b): &(Conv2d, Conv2d)| b.forward(&leaky_relu(&a.forward(&e)?, 0.2)?);
        let (scale, shift) = (two(&self.scale)?, two(&self.shift)?);
        dec + ((dec * scale)? + shift)? * w
    }
}

/// A pre-norm transformer layer whose queries and keys see the position embedding.
struct Layer {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    linear1: Linear,
    linear2: Linear,
}

impl Layer {
    fn forward(&self, x: &Tensor, pos: &Tensor) -> candle_core::Result<Tensor> {
        let t = self.norm1.forward(x)?;
        let qk = t.broadcast_add(pos)?;
        let x = (x + self.attn.forward_qkv(&qk, &qk, &t, ATTENTION_CHUNK_BYTES)?)?;
        let t = self.linear1.forward(&self.norm2.forward(&x)?)?.gelu_erf()?;
        x + self.linear2.forward(&t)?
    }
}

/// What the file's shapes say.
#[derive(Debug, Clone, PartialEq)]
pub struct CodeFormerConfig {
    /// The face's side (512 for the released model).
    pub size: usize,
    /// The code grid's side (16) and the transformer's width (512) and depth (9).
    pub grid: usize,
    pub dim: usize,
    pub layers: usize,
    /// Codebook entries (1024) and their width (256).
    pub codes: usize,
    pub code_dim: usize,
    /// Sides at which the encoder's features are fused into the generator.
    pub fused: Vec<usize>,
}

pub struct CodeFormer {
    pub config: CodeFormerConfig,
    encoder: Vec<Block>,
    generator: Vec<Block>,
    /// `(encoder block, generator block, fusion)` per fused side.
    fuse: Vec<(usize, usize, Fuse)>,
    position: Tensor,
    feat_emb: Linear,
    layers: Vec<Layer>,
    head_norm: LayerNorm,
    head: Linear,
    codebook: Tensor,
}

/// The released layout's names, mapped onto the shared blocks': a ResBlock's `conv_out`
/// skip is `conv_shortcut`; the attention blocks' 1×1 convs are linear `attn.to_*`; the
/// transformer's packed `in_proj` is split into `to_q`, `to_k` and `to_v`.
fn renamed(sd: StateDict) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for (k, t) in sd {
        if let Some((p, what)) = k.rsplit_once(".self_attn.") {
            let name = |n: &str| format!("{p}.self_attn.{n}");
            match what {
                "in_proj_weight" | "in_proj_bias" => {
                    let kind = if what.ends_with("weight") {
                        "weight"
                    } else {
                        "bias"
                    };
                    let d = t.dim(0)? / 3;
                    for (i, x) in ["to_q", "to_k", "to_v"].iter().enumerate() {
                        out.insert(name(&format!("{x}.{kind}")), t.narrow(0, i * d, d)?);
                    }
                }
                _ => {
                    out.insert(name(&what.replace("out_proj.", "to_out.0.")), t);
                }
            }
            continue;
        }
        let parts: Vec<&str> = k.rsplitn(3, '.').collect();
        let renamed = match parts.as_slice() {
            [kind, "conv_out", p] => format!("{p}.conv_shortcut.{kind}"),
            [kind, layer @ ("q" | "k" | "v" | "proj_out"), p] => {
                let to = match *layer {
                    "proj_out" => "to_out.0".to_string(),
                    l => format!("to_{l}"),
                };
                let t = if *kind == "weight" {
                    t.flatten_from(1)?
                } else {
                    t
                };
                out.insert(format!("{p}.attn.{to}.{kind}"), t);
                continue;
            }
            _ => k,
        };
        out.insert(renamed, t);
    }
    Ok(out)
}

impl CodeFormer {
    /// Builds the network from a state dict (keys as released, `params_ema` unwrapped).
    pub fn from_state_dict(sd: StateDict, origin: &str) -> Result<Self> {
        let tensors = renamed(sd)?;
        let shapes: Shapes = tensors
            .iter()
            .map(|(k, t)| (k.clone(), t.dims().to_vec()))
            .collect();
        let shape = |k: &str| {
            shapes
                .get(k)
                .cloned()
                .ok_or_else(|| bad(format!("CodeFormer without {k}")))
        };
        let weights = Weights::from_tensors(tensors, origin);
        let vb = weights.var_builder(DType::F32, &Device::Cpu);
        let encoder = blocks(&shapes, "encoder", &vb.pp("encoder"), true)?;
        let generator = blocks(&shapes, "generator", &vb.pp("generator"), false)?;
        let pos = shape("position_emb")?;
        let (tokens, dim) = (pos[0], pos[1]);
        let grid = (tokens as f64).sqrt().round() as usize;
        let codebook_shape = shape("quantize.embedding.weight")?;
        let (codes, code_dim) = (codebook_shape[0], codebook_shape[1]);
        if grid * grid != tokens || dim % HEADS != 0 {
            return Err(bad(format!(
                "CodeFormer with {tokens} positions of {dim} (a square grid, a multiple of {HEADS} wide)"
            )));
        }
        let down = levels(&encoder);
        let up = levels(&generator);
        let depth = down.len() - 1;
        if up.len() != down.len() || depth == 0 {
            return Err(bad(
                "CodeFormer whose encoder and generator differ in depth",
            ));
        }
        let size = grid << depth;
        let per_level = down[0].len();
        // The encoder's bottom level is its first `per_level` ResBlocks after the last
        // downsampling (the non-local blocks follow); the generator's bottom level ends at
        // its first upsampling.
        let enc_at = |side: usize| -> Option<usize> {
            let level = (size / side).trailing_zeros() as usize;
            match level.cmp(&depth) {
                std::cmp::Ordering::Less => down[level].last().copied(),
                std::cmp::Ordering::Equal => down[depth].get(per_level.checked_sub(1)?).copied(),
                std::cmp::Ordering::Greater => None,
            }
        };
        let gen_at = |side: usize| -> Option<usize> {
            let level = (size / side).trailing_zeros() as usize;
            if level == depth {
                up[0].last().copied()
            } else {
                up.get(depth - level)?.first().copied()
            }
        };
        let mut fused: Vec<usize> = shapes
            .keys()
            .filter_map(|k| k.strip_prefix("fuse_convs_dict.")?.split('.').next())
            .filter_map(|s| s.parse().ok())
            .collect();
        fused.sort_unstable();
        fused.dedup();
        let mut fuse = Vec::new();
        for &side in &fused {
            let level = side <= size && size % side == 0 && (size / side).is_power_of_two();
            let (true, Some(e), Some(g)) = (level, enc_at(side), gen_at(side)) else {
                return Err(bad(format!(
                    "CodeFormer fusing at {side}, not a level of its {size}² face"
                )));
            };
            let ch = shape(&format!("fuse_convs_dict.{side}.scale.0.weight"))?[0];
            fuse.push((
                e,
                g,
                Fuse::new(vb.pp(format!("fuse_convs_dict.{side}")), ch)?,
            ));
        }
        let ln = |n: usize, name: String| -> Result<LayerNorm> {
            Ok(candle_nn::layer_norm(n, 1e-5, vb.pp(name))?)
        };
        let mut layers = Vec::new();
        while shapes.contains_key(&format!("ft_layers.{}.linear1.weight", layers.len())) {
            let p = format!("ft_layers.{}", layers.len());
            let mlp = shape(&format!("{p}.linear1.weight"))?[0];
            layers.push(Layer {
                norm1: ln(dim, format!("{p}.norm1"))?,
                attn: Attention::new(
                    vb.pp(format!("{p}.self_attn")),
                    dim,
                    None,
                    HEADS,
                    dim / HEADS,
                    true,
                )?,
                norm2: ln(dim, format!("{p}.norm2"))?,
                linear1: linear(dim, mlp, vb.pp(format!("{p}.linear1")))?,
                linear2: linear(mlp, dim, vb.pp(format!("{p}.linear2")))?,
            });
        }
        let net = Self {
            config: CodeFormerConfig {
                size,
                grid,
                dim,
                layers: layers.len(),
                codes,
                code_dim,
                fused,
            },
            encoder,
            generator,
            fuse,
            position: vb.get((tokens, dim), "position_emb")?,
            feat_emb: linear(code_dim, dim, vb.pp("feat_emb"))?,
            layers,
            head_norm: ln(dim, "idx_pred_layer.0".into())?,
            head: linear_b(dim, codes, false, vb.pp("idx_pred_layer.1"))?,
            codebook: vb.get((codes, code_dim), "quantize.embedding.weight")?,
        };
        weights.check_all_used()?;
        Ok(net)
    }

    /// The code chosen for each token of the grid (row-major), and the encoder's output.
    fn encode(&self, x: &Tensor) -> Result<(Vec<u32>, Tensor, HashMap<usize, Tensor>)> {
        let mut feats = HashMap::new();
        let mut h = x.clone();
        for (i, block) in self.encoder.iter().enumerate() {
            h = block.forward(&h)?;
            if self.fuse.iter().any(|(e, _, _)| *e == i) {
                feats.insert(i, h.clone());
            }
        }
        let tokens = h.flatten_from(2)?.transpose(1, 2)?.contiguous()?;
        let mut q = self.feat_emb.forward(&tokens)?;
        for layer in &self.layers {
            q = layer.forward(&q, &self.position)?;
        }
        let logits = self.head.forward(&self.head_norm.forward(&q)?)?;
        let codes = logits.argmax(D::Minus1)?.flatten_all()?.to_vec1::<u32>()?;
        Ok((codes, h, feats))
    }

    /// The codes a face is given (for tests and diagnosis).
    pub fn codes(&self, x: &Tensor) -> Result<Vec<u32>> {
        self.check(x)?;
        Ok(self.encode(x)?.0)
    }

    fn check(&self, x: &Tensor) -> Result<()> {
        let s = self.config.size;
        let (b, _, h, w) = x.dims4()?;
        if b != 1 || h != s || w != s {
            return Err(EngineError::InvalidInput(format!(
                "CodeFormer restores one {s}×{s} face at a time (got {b} of {h}×{w})"
            )));
        }
        Ok(())
    }

    /// `[1, 3, S, S]` in `[-1, 1]` and the fidelity `w` in `[0, 1]` → the restored face,
    /// `[1, 3, S, S]`, about `[-1, 1]`.
    pub fn forward(&self, x: &Tensor, w: f64) -> Result<Tensor> {
        self.check(x)?;
        let (codes, lq, feats) = self.encode(x)?;
        let g = self.config.grid;
        let idx = Tensor::from_vec(codes, g * g, x.device())?;
        let quant =
            self.codebook
                .index_select(&idx, 0)?
                .t()?
                .reshape((1, self.config.code_dim, g, g))?;
        let mut h = adain(&quant, &lq)?;
        for (i, block) in self.generator.iter().enumerate() {
            h = block.forward(&h)?;
            if w > 0.0
                && let Some((e, _, f)) = self.fuse.iter().find(|(_, g, _)| *g == i)
            {
                h = f.forward(&feats[e], &h, w)?;
            }
        }
        Ok(h)
    }
}

/// `adaptive_instance_normalization(content, style)`: each channel of `content` given the
/// mean and (unbiased, + 1e-5) standard deviation of `style`'s.
fn adain(content: &Tensor, style: &Tensor) -> candle_core::Result<Tensor> {
    let stats = |t: &Tensor| -> candle_core::Result<(Tensor, Tensor)> {
        let (b, c, h, w) = t.dims4()?;
        let n = (h * w) as f64;
        let flat = t.reshape((b, c, h * w))?;
        let mean = flat.mean_keepdim(2)?;
        let var = (flat.broadcast_sub(&mean)?.sqr()?.sum_keepdim(2)? / (n - 1.0))?;
        Ok((mean.unsqueeze(3)?, (var + 1e-5)?.sqrt()?.unsqueeze(3)?))
    };
    let (cm, cs) = stats(content)?;
    let (sm, ss) = stats(style)?;
    content
        .broadcast_sub(&cm)?
        .broadcast_div(&cs)?
        .broadcast_mul(&ss)?
        .broadcast_add(&sm)
}
