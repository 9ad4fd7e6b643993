//! Segment Anything (facebookresearch/segment-anything; transformers' `SamModel`): a ViT
//! image encoder, run once per image, whose 64×64 embedding a light prompt encoder and mask
//! decoder turn into masks for each click.
//!
//! - Image encoder: patch embedding, absolute position embedding, blocks of windowed or
//!   global attention with decomposed relative positions (a window's tokens padded with
//!   zeros to whole windows, the pads attended to, as the reference does), a neck of 1×1 and
//!   3×3 convolutions with channel LayerNorms.
//! - Prompts: points (+0.5, over the input size, a random-Fourier position encoding) labelled
//!   1 (add), 0 (remove) or -1 (padding: one is appended when there is no box); a box's two
//!   corners; without a mask input, `no_mask_embed` everywhere.
//! - Mask decoder: a two-way transformer (tokens to image and image to tokens, attention at
//!   half width across), two transposed convolutions up ×4, one hypernetwork MLP per mask
//!   token, an IoU head. `multimask`: masks 1–3 and their scores, else mask 0.
//!
//! Every size is read from the tensors (the window size and which blocks are global from the
//! relative-position tables); the heads of the image encoder from the table's width; the
//! decoder's 8 heads are not in the file (as released). Names are transformers' (a
//! `facebook/sam-vit-*` repo); the original checkpoint's are mapped onto them.

use std::collections::HashMap;

use candle_core::{D, DType, Device, IndexOp, Module, Tensor};
use candle_nn::{LayerNorm, VarBuilder};

use super::tiny_vit::{self, TinyVit};
use crate::kernels::{
    AttentionShape, Conv2d, Linear, add_layer_norm_rows, attention_tokens_biased, conv2d,
    conv2d_no_bias, data, dot, gelu, gelu_inplace, linear,
};
use crate::model::state_dict::StateDict;
use crate::weights::Weights;
use crate::{EngineError, Result};
use candle_nn::Conv2dConfig;

/// Attention heads of the mask decoder (not in the file).
pub const DECODER_HEADS: usize = 8;

fn bad(m: impl Into<String>) -> EngineError {
    EngineError::bad_model(std::path::PathBuf::new(), m)
}

/// Whether tensors of these names make a SAM (either layout).
pub fn detect<'a>(mut keys: impl Iterator<Item = &'a String>) -> bool {
    keys.any(|k| {
        k.starts_with("mask_decoder.iou_token") || k.starts_with("mask_decoder.iou_prediction_head")
    })
}

/// A name of the original checkpoint (`image_encoder.…`) as transformers' names it
/// (convert_sam_to_hf.py).
fn hf_name(k: &str) -> String {
    let mut s = k
        .replace("image_encoder.", "vision_encoder.")
        .replace(".blocks.", ".layers.")
        .replace("patch_embed.proj", "patch_embed.projection")
        .replace(".norm1", ".layer_norm1")
        .replace(".norm2", ".layer_norm2")
        .replace(".norm3", ".layer_norm3")
        .replace(".norm4", ".layer_norm4")
        .replace("norm_final_attn", "layer_norm_final_attn")
        .replace("mask_downscaling.0", "mask_embed.conv1")
        .replace("mask_downscaling.1", "mask_embed.layer_norm1")
        .replace("mask_downscaling.3", "mask_embed.conv2")
        .replace("mask_downscaling.4", "mask_embed.layer_norm2")
        .replace("mask_downscaling.6", "mask_embed.conv3")
        .replace("point_embeddings", "point_embed")
        .replace("output_upscaling.0", "upscale_conv1")
        .replace("output_upscaling.1", "upscale_layer_norm")
        .replace("output_upscaling.3", "upscale_conv2")
        .replace(
            "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
            "shared_image_embedding.positional_embedding",
        );
    // The neck: `neck.0` conv, `neck.1` norm, `neck.2` conv, `neck.3` norm.
    for (from, to) in [
        ("neck.0", "neck.conv1"),
        ("neck.1", "neck.layer_norm1"),
        ("neck.2", "neck.conv2"),
        ("neck.3", "neck.layer_norm2"),
    ] {
        s = s.replace(from, to);
    }
    // The three-layer MLPs: layers.0 in, layers.1 hidden, layers.2 out.
    if s.contains("output_hypernetworks_mlps.") || s.contains("iou_prediction_head.") {
        s = s
            .replace(".layers.0.", ".proj_in.")
            .replace(".layers.2.", ".proj_out.")
            .replace(".layers.1.", ".layers.0.");
    }
    s
}

/// A LayerNorm over the channels of `[b, c, h, w]` (SAM's `LayerNorm2d`), computed on the
/// planes as they lie: per pixel, the mean and variance across the channels' planes.
struct ChannelNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
}

impl ChannelNorm {
    fn new(c: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let get = |n: &str| -> Result<Vec<f32>> { Ok(vb.get(c, n)?.to_vec1::<f32>()?) };
        Ok(Self {
            weight: get("weight")?,
            bias: get("bias")?,
            eps: eps as f32,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        use rayon::prelude::*;
        let (b, c, h, w) = x.dims4()?;
        let hw = h * w;
        let mut v: Vec<f32> = x.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
        // Pixels in runs, each run's mean and variance over the channels in f32 sums.
        const RUN: usize = 256;
        for img in v.chunks_mut(c * hw) {
            let runs: Vec<(usize, Vec<f32>, Vec<f32>)> = (0..hw.div_ceil(RUN))
                .into_par_iter()
                .map(|r| {
                    let (p0, n) = (r * RUN, RUN.min(hw - r * RUN));
                    let (mut mean, mut var) = (vec![0f32; n], vec![0f32; n]);
                    for ch in 0..c {
                        for (m, x) in mean.iter_mut().zip(&img[ch * hw + p0..][..n]) {
                            *m += x;
                        }
                    }
                    mean.iter_mut().for_each(|m| *m /= c as f32);
                    for ch in 0..c {
                        let xs = &img[ch * hw + p0..][..n];
                        for ((s, x), m) in var.iter_mut().zip(xs).zip(&mean) {
                            *s += (x - m) * (x - m);
                        }
                    }
                    let inv = var
                        .iter()
                        .map(|s| 1.0 / (s / c as f32 + self.eps).sqrt())
                        .collect();
                    (p0, mean, inv)
                })
                .collect();
            img.par_chunks_mut(hw).enumerate().for_each(|(ch, plane)| {
                let (g, bt) = (self.weight[ch], self.bias[ch]);
                for (p0, mean, inv) in &runs {
                    for ((x, m), i) in plane[*p0..][..mean.len()].iter_mut().zip(mean).zip(inv) {
                        *x = (*x - m) * i * g + bt;
                    }
                }
            });
        }
        Tensor::from_vec(v, (b, c, h, w), x.device())
    }
}

/// The random-Fourier position encoding of points in `[0, 1]²`: `[sin, cos](2π (2p − 1) G)`.
struct PositionEncoding {
    gaussian: Tensor,
}

impl PositionEncoding {
    /// The encoding of every cell centre of a `gh × gw` grid, row by row: `[1, gh·gw, 2·feats]`.
    fn grid(&self, gh: usize, gw: usize) -> candle_core::Result<Tensor> {
        let centres: Vec<f32> = (0..gh)
            .flat_map(|y| {
                (0..gw)
                    .flat_map(move |x| [(x as f32 + 0.5) / gw as f32, (y as f32 + 0.5) / gh as f32])
            })
            .collect();
        let dev = self.gaussian.device();
        self.encode(&Tensor::from_vec(centres, (gh * gw, 2), dev)?)?
            .unsqueeze(0)
    }

    /// `[n, 2]` → `[n, 2 · feats]`.
    fn encode(&self, points: &Tensor) -> candle_core::Result<Tensor> {
        let c = ((points * 2.0)? - 1.0)?.matmul(&self.gaussian)?;
        let c = (c * (2.0 * std::f64::consts::PI))?;
        Tensor::cat(&[c.sin()?, c.cos()?], D::Minus1)
    }
}

/// A linear layer's `[in, out]` weight and bias as plain values.
fn weights_of(l: &Linear) -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
    let w = data(&l.weight_t)?;
    let b = match &l.bias {
        Some(b) => data(b)?,
        None => vec![0.0; l.weight_t.dim(1)?],
    };
    Ok((w, b))
}

/// The decoder's attentions between its handful of tokens and the image's thousands, on
/// the image's tokens as rows (`keys`, `[n, c]`), re-associated so that no projection of
/// the image is ever made (`n × c × i` each; SAM's decoder spent most of a click on them):
/// a head's scores `q_h · (keys W_h + b)ᵀ` are `(q_h W_hᵀ) · keysᵀ`, and its output
/// `P_h (keys V_h + b)` is `(P_h keys) V_h + b` (each row of `P_h` sums to 1). The
/// products are then with the tokens' `heads × t` rows instead of the projections' `i`
/// columns. The sums are the same ones in another order (within 1e-4 of the reference).
///
/// Tokens to image: the tokens (projected by the layer's `q`) attend to the image with its
/// positions (`k` of `keys + pe`: the position encoding's share, `pe W_k + b_k`, is the
/// same for every click and kept per grid) and its values (`v` of `keys`).
struct ToImage {
    wk: Vec<f32>,
    bk: Vec<f32>,
    wv: Vec<f32>,
    bv: Vec<f32>,
    /// `pe W_k + b_k` (`[n, i]`) of the model's own grid.
    pe_k: Vec<f32>,
    i: usize,
}

impl ToImage {
    fn new(att: &Attention, pe: &[f32], c: usize) -> candle_core::Result<Self> {
        let (wk, bk) = weights_of(&att.k)?;
        let (wv, bv) = weights_of(&att.v)?;
        let i = att.internal;
        let pe_k = crate::kernels::linear_rows(pe, pe.len() / c, c, &wk, i, Some(&bk));
        Ok(Self {
            wk,
            bk,
            wv,
            bv,
            pe_k,
            i,
        })
    }

    /// `pe W_k + b_k` for another grid's position encoding.
    fn pe_k_for(&self, pe: &[f32], c: usize) -> Vec<f32> {
        crate::kernels::linear_rows(pe, pe.len() / c, c, &self.wk, self.i, Some(&self.bk))
    }

    /// Projected token queries `[t, i]` against `keys` `[n, c]` → `[t, i]` (before the
    /// output projection).
    fn forward(&self, q: &[f32], keys: &[f32], pe_k: &[f32], c: usize) -> Vec<f32> {
        use crate::kernels::{matmul, matmul_nt, softmax_segments};
        use rayon::prelude::*;
        let (i, heads) = (self.i, DECODER_HEADS);
        let d = i / heads;
        let (t, n) = (q.len() / i, keys.len() / c);
        let ht = heads * t;
        // G: row `h·t + j` is token j's head-h query taken back through W_k: `q_h W_hᵀ`.
        let mut g = vec![0f32; ht * c];
        for (r, row) in g.chunks_mut(c).enumerate() {
            let (h, j) = (r / t, r % t);
            let qh = &q[j * i + h * d..][..d];
            for (ch, o) in row.iter_mut().enumerate() {
                *o = dot(qh, &self.wk[ch * i + h * d..][..d]);
            }
        }
        // Scores `[h·t, n]`: G keysᵀ, plus each head's queries against the positions' share.
        let mut s = vec![0f32; ht * n];
        matmul_nt(ht, n, c, &mut s, n, false, &g, c, keys, c);
        for h in 0..heads {
            matmul_nt(
                t,
                n,
                d,
                &mut s[h * t * n..],
                n,
                true,
                &q[h * d..],
                i,
                &pe_k[h * d..],
                i,
            );
        }
        s.par_chunks_mut(n)
            .for_each(|row| softmax_segments(row, n, (d as f32).powf(-0.5)));
        // R = P keys `[h·t, c]`; the output `R_h V_h + b_v`.
        let mut r = vec![0f32; ht * c];
        matmul(ht, c, n, &mut r, c, false, &s, n, 1, keys, c);
        let mut o = vec![0f32; t * i];
        for (j, row) in o.chunks_mut(i).enumerate() {
            for h in 0..heads {
                let rr = &r[(h * t + j) * c..][..c];
                for dd in 0..d {
                    let col = h * d + dd;
                    let mut acc = self.bv[col];
                    for (ch, x) in rr.iter().enumerate() {
                        acc += x * self.wv[ch * i + col];
                    }
                    row[col] = acc;
                }
            }
        }
        o
    }
}

/// Image to tokens, re-associated as [`ToImage`]: each pixel's scores against a head's
/// token keys are `(keys + pe) (W_q,h k_hᵀ) + b_q,h k_hᵀ` (one product with `[c, h·t]`),
/// and its output through the projection out, `Σ_h P_h (v_h W_out,h)`, one product with
/// `[h·t, c]`.
struct ToToken {
    wq: Vec<f32>,
    bq: Vec<f32>,
    wout: Vec<f32>,
    bout: Vec<f32>,
    i: usize,
}

impl ToToken {
    fn new(att: &Attention) -> candle_core::Result<Self> {
        let (wq, bq) = weights_of(&att.q)?;
        let (wout, bout) = weights_of(&att.out)?;
        Ok(Self {
            wq,
            bq,
            wout,
            bout,
            i: att.internal,
        })
    }

    /// The tokens' keys and values `[t, i]` and the image `keys + pe` `[n, c]` → the
    /// attention's output through its projection `[n, c]`.
    fn forward(&self, kt: &[f32], vt: &[f32], keys_pe: &[f32], c: usize) -> Vec<f32> {
        use crate::kernels::{linear_rows, softmax_segments};
        use rayon::prelude::*;
        let (i, heads) = (self.i, DECODER_HEADS);
        let d = i / heads;
        let (t, n) = (kt.len() / i, keys_pe.len() / c);
        let ht = heads * t;
        // A `[c, h·t]`: W_q,h k_h[j]; and the bias's share b_q,h · k_h[j].
        let mut a = vec![0f32; c * ht];
        for (ch, row) in a.chunks_mut(ht).enumerate() {
            for (r, o) in row.iter_mut().enumerate() {
                let (h, j) = (r / t, r % t);
                *o = dot(&self.wq[ch * i + h * d..][..d], &kt[j * i + h * d..][..d]);
            }
        }
        let cst: Vec<f32> = (0..ht)
            .map(|r| {
                let (h, j) = (r / t, r % t);
                dot(&self.bq[h * d..][..d], &kt[j * i + h * d..][..d])
            })
            .collect();
        let mut s = linear_rows(keys_pe, n, c, &a, ht, Some(&cst));
        s.par_chunks_mut(ht * 64)
            .for_each(|rows| softmax_segments(rows, t, (d as f32).powf(-0.5)));
        // B `[h·t, c]`: v_h[j] W_out,h.
        let mut b = vec![0f32; ht * c];
        for (r, row) in b.chunks_mut(c).enumerate() {
            let (h, j) = (r / t, r % t);
            for dd in 0..d {
                let v = vt[j * i + h * d + dd];
                for (o, w) in row.iter_mut().zip(&self.wout[(h * d + dd) * c..][..c]) {
                    *o += v * w;
                }
            }
        }
        linear_rows(&s, n, ht, &b, c, Some(&self.bout))
    }
}

/// The decoder's image side of one two-way layer: its two attentions and the LayerNorm
/// after the image's.
struct ImageLayer {
    to_image: ToImage,
    to_token: ToToken,
    norm: (Vec<f32>, Vec<f32>),
}

/// The decoder's upscaling, on the image's tokens as rows: each 2×2 stride-2 transposed
/// convolution is one product (every input pixel's four taps side by side, `[in, 4 · out]`)
/// whose rows are laid at their pixels; the channel LayerNorm between is a row's norm, and
/// the masks are each output pixel's product with a mask token's hypernetwork output.
struct Upscale {
    w1: Vec<f32>,
    b1: Vec<f32>,
    c4: usize,
    norm: (Vec<f32>, Vec<f32>),
    w2: Vec<f32>,
    b2: Vec<f32>,
    c8: usize,
}

impl Upscale {
    fn new(c: usize, c4: usize, c8: usize, md: &VarBuilder) -> candle_core::Result<Self> {
        // `[in, out, 2, 2]` → `[in, (ky · 2 + kx) · out + o]`; the bias once per tap.
        let taps =
            |cin: usize, cout: usize, n: &str| -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
                let w = md.get((cin, cout, 2, 2), &format!("{n}.weight"))?;
                let w = data(&w.permute((0, 2, 3, 1))?)?;
                let b = data(&md.get(cout, &format!("{n}.bias"))?)?;
                Ok((w, b.repeat(4)))
            };
        let (w1, b1) = taps(c, c4, "upscale_conv1")?;
        let (w2, b2) = taps(c4, c8, "upscale_conv2")?;
        let norm = (
            data(&md.get(c4, "upscale_layer_norm.weight")?)?,
            data(&md.get(c4, "upscale_layer_norm.bias")?)?,
        );
        Ok(Self {
            w1,
            b1,
            c4,
            norm,
            w2,
            b2,
            c8,
        })
    }

    /// Image tokens `[gh · gw, c]` and hypernetwork outputs `[masks, c8]` → mask logits
    /// `[masks, 4gh, 4gw]`.
    fn forward(&self, keys: &[f32], c: usize, (gh, gw): (usize, usize), hyper: &[f32]) -> Vec<f32> {
        use crate::kernels::linear_rows;
        use rayon::prelude::*;
        let (c4, c8) = (self.c4, self.c8);
        // Up ×2: `[gh · gw, 4 · c4]`, each pixel's taps laid on the 2×2 block it paints,
        // normalised and through GELU.
        let t1 = linear_rows(keys, gh * gw, c, &self.w1, 4 * c4, Some(&self.b1));
        let (w1, w2) = (2 * gw, 4 * gw);
        let mut u1 = vec![0f32; 4 * gh * gw * c4];
        u1.par_chunks_mut(2 * w1 * c4)
            .enumerate()
            .for_each(|(iy, rows)| {
                for ix in 0..gw {
                    let src = &t1[(iy * gw + ix) * 4 * c4..][..4 * c4];
                    for (tap, px) in src.chunks(c4).enumerate() {
                        let (ky, kx) = (tap / 2, tap % 2);
                        rows[(ky * w1 + 2 * ix + kx) * c4..][..c4].copy_from_slice(px);
                    }
                }
                add_layer_norm_rows(rows, &[], c4, &self.norm.0, &self.norm.1, 1e-6);
                gelu_inplace(rows);
            });
        // Up ×2 again, through GELU, and each output pixel's product with each mask's
        // hypernetwork output, two output rows per input row.
        let mut t2 = linear_rows(&u1, 4 * gh * gw, c4, &self.w2, 4 * c8, Some(&self.b2));
        t2.par_chunks_mut(1 << 14).for_each(gelu_inplace);
        // Each pixel's products with the masks' hypernetwork outputs, per tap as one
        // product with a block-diagonal `[4 · c8, 4 · masks]`, then laid on the planes.
        let masks = hyper.len() / c8;
        let mut hb = vec![0f32; 4 * c8 * 4 * masks];
        for tap in 0..4 {
            for o in 0..c8 {
                for m in 0..masks {
                    hb[(tap * c8 + o) * 4 * masks + tap * masks + m] = hyper[m * c8 + o];
                }
            }
        }
        let px = linear_rows(&t2, 4 * gh * gw, 4 * c8, &hb, 4 * masks, None);
        let plane = 16 * gh * gw;
        let mut logits = vec![0f32; masks * plane];
        logits
            .par_chunks_mut(plane)
            .enumerate()
            .for_each(|(m, out)| {
                for (p, v) in px.chunks(4 * masks).enumerate() {
                    let (y, x) = (p / w1, p % w1);
                    for tap in 0..4 {
                        out[(2 * y + tap / 2) * w2 + 2 * x + tap % 2] = v[tap * masks + m];
                    }
                }
            });
        logits
    }
}

/// Image planes `[c, hw]` plus a per-channel `add` → rows `[hw, c]`, in blocks of pixels.
fn planes_to_rows(planes: &[f32], c: usize, add: &[f32]) -> Vec<f32> {
    use rayon::prelude::*;
    let hw = planes.len() / c;
    const BLOCK: usize = 64;
    let mut rows = vec![0f32; hw * c];
    rows.par_chunks_mut(BLOCK * c)
        .enumerate()
        .for_each(|(b, out)| {
            let p0 = b * BLOCK;
            let n = out.len() / c;
            for (ch, a) in add.iter().enumerate() {
                for (i, v) in planes[ch * hw + p0..][..n].iter().enumerate() {
                    out[i * c + ch] = v + a;
                }
            }
        });
    rows
}

/// `f` over the `ws × ws` windows of `[b, h, w, c]` (padded with zeros at the bottom and
/// right to whole windows, as SAM's and TinyViT's blocks do; `f` takes and gives
/// `[windows, ws, ws, c]`), put back and cropped.
pub(super) fn in_windows(
    x: &Tensor,
    ws: usize,
    f: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    let (ph, pw) = (h.div_ceil(ws) * ws, w.div_ceil(ws) * ws);
    let t = x
        .pad_with_zeros(1, 0, ph - h)?
        .pad_with_zeros(2, 0, pw - w)?;
    let (nh, nw) = (ph / ws, pw / ws);
    let windows = t
        .reshape((b, nh, ws, nw, ws, c))?
        .permute((0, 1, 3, 2, 4, 5))?
        .contiguous()?
        .reshape((b * nh * nw, ws, ws, c))?;
    f(&windows)?
        .reshape((b, nh, nw, ws, ws, c))?
        .permute((0, 1, 3, 2, 4, 5))?
        .contiguous()?
        .reshape((b, ph, pw, c))?
        .narrow(1, 0, h)?
        .narrow(2, 0, w)?
        .contiguous()
}

/// One block of the image encoder.
struct VisionBlock {
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    rel_h: Tensor,
    rel_w: Tensor,
    heads: usize,
    /// 0: global attention.
    window: usize,
    norm2: LayerNorm,
    lin1: Linear,
    lin2: Linear,
}

/// `table[q - k + size - 1]` for every query and key index along one axis: `[size, size, d]`.
fn rel_table(table: &Tensor, size: usize) -> candle_core::Result<Tensor> {
    let idx: Vec<u32> = (0..size)
        .flat_map(|q| (0..size).map(move |k| (q + size - 1 - k) as u32))
        .collect();
    let idx = Tensor::from_vec(idx, size * size, table.device())?;
    table
        .index_select(&idx, 0)?
        .reshape((size, size, table.dim(1)?))
}

impl VisionBlock {
    /// Attention over `[n, h, w, c]` groups (windows, or the whole grid), on the engine's
    /// blocked attention with the decomposed relative positions added to each block of
    /// scores: `q · Rh[qy, ky] + q · Rw[qx, kx]` (the unscaled query, as the reference).
    fn attend(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, h, w, c) = x.dims4()?;
        let heads = self.heads;
        let d = c / heads;
        let hw = h * w;
        // `[n, hw, 3, heads · d]`: q, k and v token-major, each head's columns together.
        let qkv = self
            .qkv
            .forward(&x.reshape((n, hw, c))?)?
            .reshape((n, hw, 3, c))?;
        let part = |i: usize| data(&qkv.i((.., .., i, ..))?);
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        // `[size, size, d]`: the table's row for each (query, key) index along an axis.
        let rh = data(&rel_table(&self.rel_h, h)?)?;
        let rw = data(&rel_table(&self.rel_w, w)?)?;
        let shape = AttentionShape {
            b: n,
            n: hw,
            m: hw,
            heads,
            d,
        };
        let bias = |bi: usize, head: usize, r0: usize, scores: &mut [f32]| {
            let (mut bh, mut bw) = (vec![0f32; h], vec![0f32; w]);
            for (i, row) in scores.chunks_mut(hw).enumerate() {
                let qi = r0 + i;
                let (qy, qx) = (qi / w, qi % w);
                let qv = &q[(bi * hw + qi) * c + head * d..][..d];
                for (ky, o) in bh.iter_mut().enumerate() {
                    *o = dot(qv, &rh[(qy * h + ky) * d..][..d]);
                }
                for (kx, o) in bw.iter_mut().enumerate() {
                    *o = dot(qv, &rw[(qx * w + kx) * d..][..d]);
                }
                for (seg, b) in row.chunks_mut(w).zip(&bh) {
                    for (s, bx) in seg.iter_mut().zip(&bw) {
                        *s += b + bx;
                    }
                }
            }
        };
        let scale = (d as f32).powf(-0.5);
        let o = attention_tokens_biased(&q, &k, &v, shape, scale, &bias);
        let o = Tensor::from_vec(o, (n, hw, c), x.device())?;
        self.proj.forward(&o)?.reshape((n, h, w, c))
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let t = self.norm1.forward(x)?;
        let t = if self.window == 0 {
            self.attend(&t)?
        } else {
            in_windows(&t, self.window, |w| self.attend(w))?
        };
        let x = (x + t)?;
        let m = self
            .lin2
            .forward(&gelu(&self.lin1.forward(&self.norm2.forward(&x)?)?)?)?;
        x + m
    }
}

/// SAM's attention: projections to `internal` channels, 8 heads.
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    internal: usize,
}

impl Attention {
    fn new(
        vb: VarBuilder,
        dim: usize,
        shapes: &HashMap<String, Vec<usize>>,
        p: &str,
    ) -> Result<Self> {
        let internal = shapes
            .get(&format!("{p}.q_proj.weight"))
            .ok_or_else(|| bad(format!("SAM without {p}.q_proj")))?[0];
        Ok(Self {
            q: linear(dim, internal, vb.pp("q_proj"))?,
            k: linear(dim, internal, vb.pp("k_proj"))?,
            v: linear(dim, internal, vb.pp("v_proj"))?,
            out: linear(internal, dim, vb.pp("out_proj"))?,
            internal,
        })
    }

    fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
        let (q, k, v) = (self.q.forward(q)?, self.k.forward(k)?, self.v.forward(v)?);
        let scale = ((self.internal / DECODER_HEADS) as f64).powf(-0.5);
        let o = crate::kernels::attention(&q, &k, &v, DECODER_HEADS, scale, false, 1 << 28)?;
        self.out.forward(&o)
    }
}

struct TwoWayBlock {
    self_attn: Attention,
    norm1: LayerNorm,
    to_image: Attention,
    norm2: LayerNorm,
    lin1: Linear,
    lin2: Linear,
    norm3: LayerNorm,
    norm4: LayerNorm,
    to_token: Attention,
    skip_first_pe: bool,
}

impl TwoWayBlock {
    /// One layer: the tokens (`[1, t, c]`) through candle, the image's tokens as rows
    /// (`keys`, `[n, c]`, updated in place) through the re-associated image side, with the
    /// grid's position encoding `pe` (`[n, c]`) and its share of the keys `pe_k`.
    fn forward(
        &self,
        side: &ImageLayer,
        (pe, pe_k): (&[f32], &[f32]),
        queries: &Tensor,
        keys: &mut [f32],
        query_pe: &Tensor,
    ) -> candle_core::Result<Tensor> {
        use rayon::prelude::*;
        let (_, t, c) = queries.dims3()?;
        let dev = queries.device();
        let queries = if self.skip_first_pe {
            self.self_attn.forward(queries, queries, queries)?
        } else {
            let q = (queries + query_pe)?;
            (queries + self.self_attn.forward(&q, &q, queries)?)?
        };
        let queries = self.norm1.forward(&queries)?;
        // Tokens to image.
        let tq = data(&self.to_image.q.forward(&(&queries + query_pe)?)?)?;
        let o = side.to_image.forward(&tq, keys, pe_k, c);
        let o = Tensor::from_vec(o, (1, t, self.to_image.internal), dev)?;
        let queries = self
            .norm2
            .forward(&(&queries + self.to_image.out.forward(&o)?)?)?;
        let mlp = self.lin2.forward(&self.lin1.forward(&queries)?.relu()?)?;
        let queries = self.norm3.forward(&(queries + mlp)?)?;
        // Image to tokens.
        let kt = data(&self.to_token.k.forward(&(&queries + query_pe)?)?)?;
        let vt = data(&self.to_token.v.forward(&queries)?)?;
        let keys_pe: Vec<f32> = keys.par_iter().zip(pe).map(|(a, b)| a + b).collect();
        let o = side.to_token.forward(&kt, &vt, &keys_pe, c);
        add_layer_norm_rows(keys, &o, c, &side.norm.0, &side.norm.1, 1e-5);
        Ok(queries)
    }
}

/// A ReLU MLP: `proj_in`, hidden `layers`, `proj_out`.
struct Mlp {
    layers: Vec<Linear>,
}

impl Mlp {
    fn new(vb: VarBuilder, shapes: &HashMap<String, Vec<usize>>, p: &str) -> Result<Self> {
        let shape = |n: &str| {
            shapes
                .get(&format!("{p}.{n}.weight"))
                .cloned()
                .ok_or_else(|| bad(format!("SAM without {p}.{n}")))
        };
        let lin = |n: &str| -> Result<Linear> {
            let s = shape(n)?;
            Ok(linear(s[1], s[0], vb.pp(n))?)
        };
        let mut layers = vec![lin("proj_in")?];
        let mut i = 0;
        while shapes.contains_key(&format!("{p}.layers.{i}.weight")) {
            layers.push(lin(&format!("layers.{i}"))?);
            i += 1;
        }
        layers.push(lin("proj_out")?);
        Ok(Self { layers })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        let last = self.layers.len() - 1;
        for (i, l) in self.layers.iter().enumerate() {
            x = l.forward(&x)?;
            if i < last {
                x = x.relu()?;
            }
        }
        Ok(x)
    }
}

/// A point prompt, in the input image's pixels (the image as the encoder saw it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub x: f32,
    pub y: f32,
    /// Part of the object (true) or not.
    pub positive: bool,
}

/// What the decoder gives: `[n, 256, 256]` mask logits over the encoder's input and a
/// predicted IoU per mask.
pub struct Masks {
    pub logits: Tensor,
    pub iou: Vec<f32>,
}

/// Which image encoder a SAM has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderKind {
    /// SAM's ViT-B/L/H.
    Vit,
    /// MobileSAM's TinyViT ([`super::tiny_vit`]).
    TinyVit,
}

/// What the file's shapes say (for a TinyViT: its last stage's width, heads and window,
/// and its blocks in all).
#[derive(Debug, Clone, PartialEq)]
pub struct SamConfig {
    pub encoder: EncoderKind,
    /// The encoder's input side (1024) and patch (16).
    pub image_size: usize,
    pub patch: usize,
    pub width: usize,
    pub depth: usize,
    pub heads: usize,
    pub window: usize,
    /// Blocks with global attention.
    pub global: Vec<usize>,
    /// The embedding's channels (256).
    pub channels: usize,
}

/// SAM's ViT encoder, before the neck.
struct Vit {
    patch_embed: Conv2d,
    pos_embed: Tensor,
    blocks: Vec<VisionBlock>,
}

impl Vit {
    /// The encoder's blocks from the tensors (transformers' names), and what they say.
    fn load(
        ve: &VarBuilder,
        shapes: &HashMap<String, Vec<usize>>,
        channels: usize,
    ) -> Result<(Self, SamConfig)> {
        let shape = |k: &str| {
            shapes
                .get(k)
                .cloned()
                .ok_or_else(|| bad(format!("SAM without {k}")))
        };
        let pw = shape("vision_encoder.patch_embed.projection.weight")?;
        let (width, patch) = (pw[0], pw[2]);
        let pos = shape("vision_encoder.pos_embed")?;
        let grid = pos[1];
        let mut blocks = Vec::new();
        let mut global = Vec::new();
        let mut window = 0;
        while shapes.contains_key(&format!(
            "vision_encoder.layers.{}.attn.qkv.weight",
            blocks.len()
        )) {
            let i = blocks.len();
            let p = format!("vision_encoder.layers.{i}");
            let rel = shape(&format!("{p}.attn.rel_pos_h"))?;
            let size = rel[0].div_ceil(2);
            let heads = width / rel[1];
            let win = if size == grid {
                global.push(i);
                0
            } else {
                window = size;
                size
            };
            let vb = ve.pp(format!("layers.{i}"));
            let mlp = shape(&format!("{p}.mlp.lin1.weight"))?[0];
            blocks.push(VisionBlock {
                norm1: candle_nn::layer_norm(width, 1e-6, vb.pp("layer_norm1"))?,
                qkv: linear(width, 3 * width, vb.pp("attn.qkv"))?,
                proj: linear(width, width, vb.pp("attn.proj"))?,
                rel_h: vb.get((rel[0], rel[1]), "attn.rel_pos_h")?,
                rel_w: vb.get(shape(&format!("{p}.attn.rel_pos_w"))?, "attn.rel_pos_w")?,
                heads,
                window: win,
                norm2: candle_nn::layer_norm(width, 1e-6, vb.pp("layer_norm2"))?,
                lin1: linear(width, mlp, vb.pp("mlp.lin1"))?,
                lin2: linear(mlp, width, vb.pp("mlp.lin2"))?,
            });
        }
        if blocks.is_empty() {
            return Err(bad("SAM without image encoder blocks"));
        }
        let config = SamConfig {
            encoder: EncoderKind::Vit,
            image_size: grid * patch,
            patch,
            width,
            depth: blocks.len(),
            heads: blocks[0].heads,
            window,
            global,
            channels,
        };
        let vit = Self {
            patch_embed: conv2d(
                3,
                width,
                patch,
                Conv2dConfig {
                    stride: patch,
                    ..Default::default()
                },
                ve.pp("patch_embed.projection"),
            )?,
            pos_embed: ve.get((1, grid, grid, width), "pos_embed")?,
            blocks,
        };
        Ok((vit, config))
    }

    /// `[1, 3, S, S]` → `[1, width, S / patch, S / patch]`.
    fn forward(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = self
            .patch_embed
            .forward(pixels)?
            .permute((0, 2, 3, 1))?
            .broadcast_add(&self.pos_embed)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        x.permute((0, 3, 1, 2))?.contiguous()
    }
}

enum Encoder {
    Vit(Vit),
    Tiny(TinyVit),
}

pub struct Sam {
    pub config: SamConfig,
    encoder: Encoder,
    neck_conv1: Conv2d,
    neck_norm1: ChannelNorm,
    neck_conv2: Conv2d,
    neck_norm2: ChannelNorm,
    pe: PositionEncoding,
    point_embed: Vec<Tensor>,
    not_a_point: Tensor,
    no_mask: Tensor,
    iou_token: Tensor,
    mask_tokens: Tensor,
    layers: Vec<TwoWayBlock>,
    final_attn: Attention,
    final_norm: LayerNorm,
    /// The image side of each layer, and of the final attention (`[k | v]`).
    image_layers: Vec<ImageLayer>,
    last: ToImage,
    /// The position encoding of the model's grid, as rows `[g², c]`.
    pe_rows: Vec<f32>,
    up: Upscale,
    hyper: Vec<Mlp>,
    iou_head: Mlp,
}

impl Sam {
    /// Builds SAM from a state dict (transformers' or the original checkpoint's names).
    pub fn from_state_dict(sd: StateDict, origin: &str) -> Result<Self> {
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        let original = sd.keys().any(|k| k.starts_with("image_encoder."));
        // MobileSAM: the encoder's tensors (all but its neck) go to TinyViT as named.
        let mut tiny = sd
            .contains_key("image_encoder.patch_embed.seq.0.c.weight")
            .then(StateDict::new);
        for (k, t) in sd {
            if let Some(enc) = tiny.as_mut()
                && let Some(rest) = k.strip_prefix("image_encoder.")
                && !rest.starts_with("neck.")
            {
                enc.insert(rest.to_string(), t);
                continue;
            }
            let k = if original { hf_name(&k) } else { k };
            // The prompt encoder's copy of the shared position encoding (tied).
            if k == "prompt_encoder.shared_embedding.positional_embedding" {
                tensors
                    .entry("shared_image_embedding.positional_embedding".into())
                    .or_insert(t);
                continue;
            }
            tensors.insert(k, t);
        }
        let shapes: HashMap<String, Vec<usize>> = tensors
            .iter()
            .map(|(k, t)| (k.clone(), t.dims().to_vec()))
            .collect();
        let shape = |k: &str| {
            shapes
                .get(k)
                .cloned()
                .ok_or_else(|| bad(format!("SAM without {k}")))
        };
        let weights = Weights::from_tensors(tensors, origin);
        let vb = weights.var_builder(DType::F32, &Device::Cpu);
        let ve = vb.pp("vision_encoder");
        let channels = shape("vision_encoder.neck.conv1.weight")?[0];
        let (encoder, config) = match tiny {
            Some(sd) => {
                let t = TinyVit::from_state_dict(sd)?;
                let c = &t.config;
                let config = SamConfig {
                    encoder: EncoderKind::TinyVit,
                    image_size: tiny_vit::IMAGE_SIZE,
                    patch: 16,
                    width: t.width(),
                    depth: c.depths.iter().sum(),
                    heads: *c.heads.last().unwrap_or(&0),
                    window: *c.windows.last().unwrap_or(&0),
                    global: vec![],
                    channels,
                };
                (Encoder::Tiny(t), config)
            }
            None => {
                let (vit, config) = Vit::load(&ve, &shapes, channels)?;
                (Encoder::Vit(vit), config)
            }
        };
        let width = config.width;
        let g = shape("shared_image_embedding.positional_embedding")?;
        let pe = PositionEncoding {
            gaussian: vb.get((g[0], g[1]), "shared_image_embedding.positional_embedding")?,
        };
        let pr = vb.pp("prompt_encoder");
        let point_embed = (0..4)
            .map(|i| pr.get((1, channels), &format!("point_embed.{i}.weight")))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let md = vb.pp("mask_decoder");
        let mut layers = Vec::new();
        while shapes.contains_key(&format!(
            "mask_decoder.transformer.layers.{}.self_attn.q_proj.weight",
            layers.len()
        )) {
            let i = layers.len();
            let p = format!("mask_decoder.transformer.layers.{i}");
            let vb = md.pp(format!("transformer.layers.{i}"));
            let mlp = shape(&format!("{p}.mlp.lin1.weight"))?[0];
            let ln = |n: &str| candle_nn::layer_norm(channels, 1e-5, vb.pp(n));
            layers.push(TwoWayBlock {
                self_attn: Attention::new(
                    vb.pp("self_attn"),
                    channels,
                    &shapes,
                    &format!("{p}.self_attn"),
                )?,
                norm1: ln("layer_norm1")?,
                to_image: Attention::new(
                    vb.pp("cross_attn_token_to_image"),
                    channels,
                    &shapes,
                    &format!("{p}.cross_attn_token_to_image"),
                )?,
                norm2: ln("layer_norm2")?,
                lin1: linear(channels, mlp, vb.pp("mlp.lin1"))?,
                lin2: linear(mlp, channels, vb.pp("mlp.lin2"))?,
                norm3: ln("layer_norm3")?,
                norm4: ln("layer_norm4")?,
                to_token: Attention::new(
                    vb.pp("cross_attn_image_to_token"),
                    channels,
                    &shapes,
                    &format!("{p}.cross_attn_image_to_token"),
                )?,
                skip_first_pe: i == 0,
            });
        }
        let mask_tokens = shape("mask_decoder.mask_tokens.weight")?[0];
        let c4 = shape("mask_decoder.upscale_conv1.weight")?[1];
        let c8 = shape("mask_decoder.upscale_conv2.weight")?[1];
        let hyper = (0..mask_tokens)
            .map(|i| {
                Mlp::new(
                    md.pp(format!("output_hypernetworks_mlps.{i}")),
                    &shapes,
                    &format!("mask_decoder.output_hypernetworks_mlps.{i}"),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let grid = config.image_size / config.patch;
        let image_pe = pe.grid(grid, grid)?;
        let pe_rows = data(&image_pe)?;
        let image_layers = layers
            .iter()
            .map(|l| -> candle_core::Result<ImageLayer> {
                let norm = (
                    data(l.norm4.weight())?,
                    data(l.norm4.bias().expect("a LayerNorm with a bias"))?,
                );
                Ok(ImageLayer {
                    to_image: ToImage::new(&l.to_image, &pe_rows, channels)?,
                    to_token: ToToken::new(&l.to_token)?,
                    norm,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let final_attn = Attention::new(
            md.pp("transformer.final_attn_token_to_image"),
            channels,
            &shapes,
            "mask_decoder.transformer.final_attn_token_to_image",
        )?;
        let last = ToImage::new(&final_attn, &pe_rows, channels)?;
        let sam = Self {
            config,
            encoder,
            neck_conv1: conv2d_no_bias(
                width,
                channels,
                1,
                Default::default(),
                ve.pp("neck.conv1"),
            )?,
            neck_norm1: ChannelNorm::new(channels, 1e-6, ve.pp("neck.layer_norm1"))?,
            neck_conv2: conv2d_no_bias(
                channels,
                channels,
                3,
                Conv2dConfig {
                    padding: 1,
                    ..Default::default()
                },
                ve.pp("neck.conv2"),
            )?,
            neck_norm2: ChannelNorm::new(channels, 1e-6, ve.pp("neck.layer_norm2"))?,
            pe,
            point_embed,
            not_a_point: pr.get((1, channels), "not_a_point_embed.weight")?,
            no_mask: pr.get((1, channels), "no_mask_embed.weight")?,
            iou_token: md.get((1, channels), "iou_token.weight")?,
            mask_tokens: md.get((mask_tokens, channels), "mask_tokens.weight")?,
            layers,
            final_attn,
            final_norm: candle_nn::layer_norm(
                channels,
                1e-5,
                md.pp("transformer.layer_norm_final_attn"),
            )?,
            image_layers,
            last,
            pe_rows,
            up: Upscale::new(channels, c4, c8, &md)?,
            hyper,
            iou_head: Mlp::new(
                md.pp("iou_prediction_head"),
                &shapes,
                "mask_decoder.iou_prediction_head",
            )?,
        };
        // The mask-input path (`prompt_encoder.mask_embed`) is read but not used yet.
        for n in ["conv1", "conv2", "conv3", "layer_norm1", "layer_norm2"] {
            for w in ["weight", "bias"] {
                let k = format!("prompt_encoder.mask_embed.{n}.{w}");
                if let Some(s) = shapes.get(&k) {
                    vb.get(s.clone(), &k)?;
                }
            }
        }
        weights.check_all_used()?;
        Ok(sam)
    }

    /// The image embedding `[1, C, g, g]` of a normalised, padded `[1, 3, S, S]` input.
    pub fn embed(&self, pixels: &Tensor) -> Result<Tensor> {
        let s = self.config.image_size;
        let (b, _, h, w) = pixels.dims4()?;
        if b != 1 || h != s || w != s {
            return Err(EngineError::InvalidInput(format!(
                "SAM's encoder takes one {s}×{s} image (got {b} of {h}×{w})"
            )));
        }
        let x = match &self.encoder {
            Encoder::Vit(vit) => vit.forward(pixels)?,
            Encoder::Tiny(tiny) => tiny.forward(pixels)?,
        };
        let x = self.neck_norm1.forward(&self.neck_conv1.forward(&x)?)?;
        Ok(self.neck_norm2.forward(&self.neck_conv2.forward(&x)?)?)
    }

    /// Points (and a box, `[x0, y0, x1, y1]`) in the encoder input's pixels → masks.
    pub fn decode(
        &self,
        embedding: &Tensor,
        points: &[Point],
        bbox: Option<[f32; 4]>,
        multimask: bool,
    ) -> Result<Masks> {
        let dev = embedding.device();
        let c = self.config.channels;
        let s = self.config.image_size as f32;
        let (_, _, gh, gw) = embedding.dims4()?;
        // Sparse prompts.
        let mut sparse = Vec::new();
        let mut coords: Vec<f32> = Vec::new();
        let mut labels: Vec<i32> = Vec::new();
        for p in points {
            coords.extend([(p.x + 0.5) / s, (p.y + 0.5) / s]);
            labels.push(p.positive as i32);
        }
        if bbox.is_none() {
            coords.extend([0.5 / s, 0.5 / s]);
            labels.push(-1);
        }
        if !labels.is_empty() {
            let n = labels.len();
            let pe = self.pe.encode(&Tensor::from_vec(coords, (n, 2), dev)?)?;
            for (i, &l) in labels.iter().enumerate() {
                let e = pe.i(i..i + 1)?;
                sparse.push(match l {
                    -1 => self.not_a_point.clone(),
                    0 => (e + &self.point_embed[0])?,
                    _ => (e + &self.point_embed[1])?,
                });
            }
        }
        if let Some([x0, y0, x1, y1]) = bbox {
            let corners = Tensor::from_vec(
                vec![
                    (x0 + 0.5) / s,
                    (y0 + 0.5) / s,
                    (x1 + 0.5) / s,
                    (y1 + 0.5) / s,
                ],
                (2, 2),
                dev,
            )?;
            let pe = self.pe.encode(&corners)?;
            sparse.push((pe.i(0..1)? + &self.point_embed[2])?);
            sparse.push((pe.i(1..2)? + &self.point_embed[3])?);
        }
        let tokens = Tensor::cat(
            &[
                &[self.iou_token.clone(), self.mask_tokens.clone()][..],
                &sparse[..],
            ]
            .concat(),
            0,
        )?
        .unsqueeze(0)?; // [1, t, c]
        // The image with its dense prompt as rows `[hw, c]`; the position encoding's terms
        // of the grid (the model's own, computed at load, for any embedding of its size).
        let nm = data(&self.no_mask)?;
        let mut keys = planes_to_rows(&data(embedding)?, c, &nm);
        let g = self.config.image_size / self.config.patch;
        let own = (gh, gw) == (g, g);
        let other_pe;
        let pe = if own {
            &self.pe_rows
        } else {
            other_pe = data(&self.pe.grid(gh, gw)?)?;
            &other_pe
        };
        // The keys' share of the positions, the model's own unless the grid is another.
        let pe_k = |a: &ToImage| -> Option<Vec<f32>> { (!own).then(|| a.pe_k_for(pe, c)) };
        let mut queries = tokens.clone();
        for (layer, side) in self.layers.iter().zip(&self.image_layers) {
            let other = pe_k(&side.to_image);
            let pe_k = other.as_deref().unwrap_or(&side.to_image.pe_k);
            queries = layer.forward(side, (pe, pe_k), &queries, &mut keys, &tokens)?;
        }
        // The final tokens-to-image attention.
        let (_, t, _) = tokens.dims3()?;
        let other = pe_k(&self.last);
        let fq = data(&self.final_attn.q.forward(&(&queries + &tokens)?)?)?;
        let o = self
            .last
            .forward(&fq, &keys, other.as_deref().unwrap_or(&self.last.pe_k), c);
        let o = self
            .final_attn
            .out
            .forward(&Tensor::from_vec(o, (1, t, self.last.i), dev)?)?;
        let queries = self.final_norm.forward(&(&queries + o)?)?;
        let n_masks = self.hyper.len();
        let iou_out = queries.i((.., 0, ..))?;
        // The masks asked for: each one's hypernetwork output against the upscaled image.
        let (first, count) = if multimask { (1, n_masks - 1) } else { (0, 1) };
        let mut hyper = Vec::new();
        for m in first..first + count {
            hyper.extend(data(&self.hyper[m].forward(&queries.i((
                ..,
                1 + m,
                ..,
            ))?)?)?);
        }
        let logits = self.up.forward(&keys, c, (gh, gw), &hyper);
        let masks = Tensor::from_vec(logits, (count, 4 * gh, 4 * gw), dev)?;
        let iou = self
            .iou_head
            .forward(&iou_out)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let (first, count) = if multimask { (1, n_masks - 1) } else { (0, 1) };
        Ok(Masks {
            logits: masks,
            iou: iou[first..first + count].to_vec(),
        })
    }
}
