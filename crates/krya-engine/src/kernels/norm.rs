//! Group normalisation in two passes per group, with the affine and an optional SiLU fused.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::*;

/// `x` (`[b, c, ...]` contiguous) group-normalised in place: statistics per group block,
/// then `(x - mean) / sqrt(var + eps) * gamma[c] + beta[c]`, then SiLU when `silu`.
pub fn group_norm_inplace(
    x: &mut [f32],
    b: usize,
    c: usize,
    spatial: usize,
    groups: usize,
    eps: f64,
    gamma: &[f32],
    beta: &[f32],
    silu: bool,
) {
    let per = c / groups;
    x.par_chunks_mut(per * spatial)
        .take(b * groups)
        .enumerate()
        .for_each(|(bg, block)| {
            let (s, ss) = moments(block);
            let n = block.len() as f64;
            let mean = s / n;
            let var = (ss / n - mean * mean).max(0.0);
            let rstd = 1.0 / (var + eps).sqrt();
            let g = bg % groups;
            for (j, ch) in block.chunks_mut(spatial).enumerate() {
                let ci = g * per + j;
                let scale = (rstd * gamma[ci] as f64) as f32;
                let shift = (beta[ci] as f64 - mean * rstd * gamma[ci] as f64) as f32;
                scale_shift(ch, scale, shift, silu);
            }
        });
}

simd_fn! {
    /// `v * scale + shift`, then SiLU when `silu`, in place.
    fn scale_shift(ch: &mut [f32], scale: f32, shift: f32, silu: bool) {
        if silu {
            for v in ch.iter_mut() {
                let y = *v * scale + shift;
                *v = y / (1.0 + exp(-y));
            }
        } else {
            for v in ch.iter_mut() {
                *v = *v * scale + shift;
            }
        }
    }
}

/// `candle_nn::LayerNorm` whose input may be part of a gradient's graph: candle's fused
/// layer norm records no backward step, so a tracked input takes the composed one.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    inner: candle_nn::LayerNorm,
    eps: f64,
}

/// `candle_nn::layer_norm` (weights named alike).
pub fn layer_norm(
    size: usize,
    eps: f64,
    vb: candle_nn::VarBuilder,
) -> candle_core::Result<LayerNorm> {
    Ok(LayerNorm {
        inner: candle_nn::layer_norm(size, eps, vb)?,
        eps,
    })
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if !x.track_op() {
            return self.inner.forward(x);
        }
        let bias = match self.inner.bias() {
            Some(b) => b.clone(),
            None => self.inner.weight().zeros_like()?,
        };
        candle_nn::ops::layer_norm_slow(x, self.inner.weight(), &bias, self.eps as f32)
    }
}

/// A group norm layer (weights named as `candle_nn::group_norm` loads them).
#[derive(Clone, Debug)]
pub struct GroupNorm {
    pub(crate) inner: candle_nn::GroupNorm,
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
    pub(crate) groups: usize,
    pub(crate) eps: f64,
}

pub fn group_norm(
    groups: usize,
    channels: usize,
    eps: f64,
    vb: VarBuilder,
) -> candle_core::Result<GroupNorm> {
    let weight = vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.))?;
    let bias = vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.))?;
    Ok(GroupNorm {
        inner: candle_nn::GroupNorm::new(weight.clone(), bias.clone(), channels, groups, eps)?,
        weight,
        bias,
        groups,
        eps,
    })
}

impl GroupNorm {
    pub(crate) fn run(&self, x: &Tensor, silu: bool) -> candle_core::Result<Tensor> {
        let dims = x.dims();
        let fast =
            cpu_f32(x) && cpu_f32(&self.weight) && dims.len() >= 2 && dims[1] % self.groups == 0;
        if !fast {
            let frozen = x.track_op()
                && matches!(x.device(), Device::Cpu)
                && x.dtype() == DType::F32
                && !self.weight.track_op()
                && dims.len() >= 2
                && dims[1] % self.groups == 0;
            let y = if frozen {
                // Training: one op, the kernel forward and its own backward.
                x.contiguous()?
                    .apply_op1(super::frozen::GroupNormOp { norm: self.clone() })?
            } else {
                self.inner.forward(x)?
            };
            return if silu { y.silu() } else { Ok(y) };
        }
        let (b, c) = (dims[0], dims[1]);
        let spatial: usize = dims[2..].iter().product();
        let mut v = data(x)?;
        let (g, be) = (data(&self.weight)?, data(&self.bias)?);
        group_norm_inplace(&mut v, b, c, spatial, self.groups, self.eps, &g, &be, silu);
        Tensor::from_vec(v, dims, x.device())
    }

    /// The norm followed by SiLU, in one pass.
    pub fn forward_silu(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.run(x, true)
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.run(x, false)
    }
}

simd_fn! {
    /// One row of [`add_layer_norm_rows`]: sums in lane-wise partials (so they vectorise).
    fn add_layer_norm_row(row: &mut [f32], add: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
        const L: usize = 8;
        if !add.is_empty() {
            for (a, b) in row.iter_mut().zip(add) {
                *a += b;
            }
        }
        let c = row.len() as f32;
        let (mut s1, mut s2) = ([0f32; L], [0f32; L]);
        let mut chunks = row.chunks_exact(L);
        for ch in &mut chunks {
            for i in 0..L {
                s1[i] += ch[i];
            }
        }
        let mean = (s1.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()) / c;
        let mut chunks = row.chunks_exact(L);
        for ch in &mut chunks {
            for i in 0..L {
                s2[i] += (ch[i] - mean) * (ch[i] - mean);
            }
        }
        let tail: f32 = chunks.remainder().iter().map(|v| (v - mean) * (v - mean)).sum();
        let var = (s2.iter().sum::<f32>() + tail) / c;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
            *v = (*v - mean) * inv * g + b;
        }
    }
}

/// `x ← LayerNorm(x + add)` over rows of `c` (`add` may be empty: no sum), with `gamma`,
/// `beta` and `eps`; one pass per row, rows in parallel.
pub fn add_layer_norm_rows(
    x: &mut [f32],
    add: &[f32],
    c: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) {
    x.par_chunks_mut(c * 16).enumerate().for_each(|(r, rows)| {
        for (i, row) in rows.chunks_mut(c).enumerate() {
            let add = if add.is_empty() {
                add
            } else {
                &add[(r * 16 + i) * c..][..c]
            };
            add_layer_norm_row(row, add, gamma, beta, eps);
        }
    });
}
