//! CPU kernels for the layers that dominate Stable Diffusion's time, used in place of
//! candle's generic ones for f32 tensors on the CPU (anything else falls back to candle).
//!
//! - `Conv2d`: 3×3 stride-1 convolutions without im2col. The input is copied once into a
//!   zero-padded buffer whose rows are `w + 2` wide; in that layout a kernel tap `(kh, kw)`
//!   reads a plain contiguous slice starting `kh * (w + 2) + kw` further on, so the
//!   convolution is nine matrix products `W[:, :, kh, kw] @ padded[.., shifted]` accumulated
//!   into one output (the two padding columns of each output row are computed and
//!   dropped: 2/(w + 2) wasted). 1×1 convolutions are one matrix product into the output.
//!   candle 0.11 builds an im2col tile per 512 output pixels with strided writes instead.
//! - `GroupNorm`: statistics and normalisation in two passes over each group's contiguous
//!   block (a group's channels are adjacent in NCHW), the affine and an optional SiLU fused
//!   into the second; candle does it in about eight full-tensor operations.
//!
//! Summation order differs from candle's and PyTorch's, as any two BLAS libraries do: the
//! golden tests (components within 1e-4 of diffusers) hold unchanged.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use rayon::prelude::*;

fn cpu_f32(x: &Tensor) -> bool {
    matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32
}

/// The contiguous f32 data of a CPU tensor.
fn data(x: &Tensor) -> candle_core::Result<Vec<f32>> {
    x.flatten_all()?.to_vec1::<f32>()
}

/// Runs `f` on the tensor's contiguous f32 slice without copying it when it is already
/// contiguous.
fn with_slice<R>(x: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => {
            let start = layout.start_offset();
            Ok(f(&v[start..start + layout.shape().elem_count()]))
        }
        _ => {
            drop(storage);
            Ok(f(&data(&x)?))
        }
    }
}

/// A `Vec` of `n` floats the caller overwrites entirely before reading.
fn uninit(n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: f32 has no invalid bit patterns, and every element is written by the
    // caller (a gemm with read_dst = false, or a full copy) before it is read.
    unsafe { v.set_len(n) };
    v
}

/// `dst = lhs (m × k) @ rhs (k × n)` (+ `dst` when `accumulate`), row strides given.
#[allow(clippy::too_many_arguments)]
fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: &[f32],
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: &[f32],
    rhs_rs: usize,
) {
    assert!(dst.len() >= (m - 1) * dst_rs + n);
    assert!(lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    assert!(rhs.len() >= (k - 1) * rhs_rs + n);
    // SAFETY: the asserts bound every index the product touches within the slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            1,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(rayon::current_num_threads()),
        );
    }
}

/// `x` (`[cin, h, w]` planes, `b` of them) convolved with 3×3 `weight` (`[cout, cin, 3, 3]`),
/// padding 1, stride 1: `[b, cout, h, w]`.
pub fn conv3x3_s1(
    x: &[f32],
    b: usize,
    cin: usize,
    h: usize,
    w: usize,
    weight: &[f32],
    bias: Option<&[f32]>,
    cout: usize,
) -> Vec<f32> {
    let wp = w + 2;
    let plane = (h + 2) * wp;
    let n = h * wp;
    // Two more than the planes: the last tap of the last channel reads that far.
    let mut padded = vec![0f32; cin * plane + 2];
    let mut acc = uninit(cout * n);
    let mut out = uninit(b * cout * h * w);
    for bi in 0..b {
        let src = &x[bi * cin * h * w..(bi + 1) * cin * h * w];
        padded[..cin * plane]
            .par_chunks_mut(plane)
            .zip(src.par_chunks(h * w))
            .for_each(|(p, s)| {
                for y in 0..h {
                    p[(y + 1) * wp + 1..(y + 1) * wp + 1 + w]
                        .copy_from_slice(&s[y * w..(y + 1) * w]);
                }
            });
        for tap in 0..9 {
            let (kh, kw) = (tap / 3, tap % 3);
            matmul(
                cout,
                n,
                cin,
                &mut acc,
                n,
                tap > 0,
                &weight[tap..],
                cin * 9,
                9,
                &padded[kh * wp + kw..],
                plane,
            );
        }
        out[bi * cout * h * w..(bi + 1) * cout * h * w]
            .par_chunks_mut(h * w)
            .enumerate()
            .for_each(|(co, o)| {
                let a = &acc[co * n..(co + 1) * n];
                let add = bias.map_or(0.0, |b| b[co]);
                for y in 0..h {
                    let (row, src) = (&mut o[y * w..(y + 1) * w], &a[y * wp..y * wp + w]);
                    for (d, s) in row.iter_mut().zip(src) {
                        *d = s + add;
                    }
                }
            });
    }
    out
}

/// A 1×1 convolution: `[b, cout, hw] = weight [cout, cin] @ x [b, cin, hw]` (+ bias).
pub fn conv1x1(
    x: &[f32],
    b: usize,
    cin: usize,
    hw: usize,
    weight: &[f32],
    bias: Option<&[f32]>,
    cout: usize,
) -> Vec<f32> {
    let mut out = uninit(b * cout * hw);
    for bi in 0..b {
        let dst = &mut out[bi * cout * hw..(bi + 1) * cout * hw];
        matmul(
            cout,
            hw,
            cin,
            dst,
            hw,
            false,
            weight,
            cin,
            1,
            &x[bi * cin * hw..],
            hw,
        );
        if let Some(bias) = bias {
            dst.par_chunks_mut(hw)
                .zip(bias.par_iter())
                .for_each(|(row, b)| row.iter_mut().for_each(|v| *v += b));
        }
    }
    out
}

/// A 2-D convolution layer (weights named as `candle_nn::conv2d` loads them).
#[derive(Clone, Debug)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    cfg: Conv2dConfig,
}

/// `candle_nn::conv2d`, with the fast CPU paths.
pub fn conv2d(
    cin: usize,
    cout: usize,
    k: usize,
    cfg: Conv2dConfig,
    vb: VarBuilder,
) -> candle_core::Result<Conv2d> {
    let bound = 1. / (cin as f64).sqrt();
    let bias = vb.get_with_hints(
        cout,
        "bias",
        candle_nn::Init::Uniform {
            lo: -bound,
            up: bound,
        },
    )?;
    Ok(Conv2d {
        bias: Some(bias),
        ..conv2d_no_bias(cin, cout, k, cfg, vb)?
    })
}

/// `candle_nn::conv2d_no_bias`, with the fast CPU paths.
pub fn conv2d_no_bias(
    cin: usize,
    cout: usize,
    k: usize,
    cfg: Conv2dConfig,
    vb: VarBuilder,
) -> candle_core::Result<Conv2d> {
    let weight = vb.get_with_hints(
        (cout, cin / cfg.groups, k, k),
        "weight",
        candle_nn::init::DEFAULT_KAIMING_NORMAL,
    )?;
    Ok(Conv2d {
        weight,
        bias: None,
        cfg,
    })
}

impl Conv2d {
    /// Which fast kernel applies, if any.
    fn fast(&self, x: &Tensor) -> Option<usize> {
        let c = &self.cfg;
        let (_, _, kh, kw) = self.weight.dims4().ok()?;
        let plain =
            c.groups == 1 && c.dilation == 1 && kh == kw && cpu_f32(x) && cpu_f32(&self.weight);
        match kh {
            3 if plain && c.stride == 1 && c.padding == 1 => Some(3),
            1 if plain && c.stride == 1 && c.padding == 0 => Some(1),
            _ => None,
        }
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let Some(k) = self.fast(x) else {
            let c = &self.cfg;
            let y = x.conv2d(&self.weight, c.padding, c.stride, c.dilation, c.groups)?;
            return match &self.bias {
                Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?),
                None => Ok(y),
            };
        };
        let (b, cin, h, w) = x.dims4()?;
        let cout = self.weight.dim(0)?;
        let bias = self.bias.as_ref().map(data).transpose()?;
        let out = with_slice(&self.weight, |wt| {
            with_slice(x, |xs| match k {
                3 => conv3x3_s1(xs, b, cin, h, w, wt, bias.as_deref(), cout),
                _ => conv1x1(xs, b, cin, h * w, wt, bias.as_deref(), cout),
            })
        })??;
        Tensor::from_vec(out, (b, cout, h, w), x.device())
    }
}

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
            let (mut s, mut ss) = (0f64, 0f64);
            for v in block.iter() {
                let v = *v as f64;
                s += v;
                ss += v * v;
            }
            let n = block.len() as f64;
            let mean = s / n;
            let var = (ss / n - mean * mean).max(0.0);
            let rstd = 1.0 / (var + eps).sqrt();
            let g = bg % groups;
            for (j, ch) in block.chunks_mut(spatial).enumerate() {
                let ci = g * per + j;
                let scale = (rstd * gamma[ci] as f64) as f32;
                let shift = (beta[ci] as f64 - mean * rstd * gamma[ci] as f64) as f32;
                if silu {
                    for v in ch.iter_mut() {
                        let y = *v * scale + shift;
                        *v = y / (1.0 + (-y).exp());
                    }
                } else {
                    for v in ch.iter_mut() {
                        *v = *v * scale + shift;
                    }
                }
            }
        });
}

/// A group norm layer (weights named as `candle_nn::group_norm` loads them).
#[derive(Clone, Debug)]
pub struct GroupNorm {
    inner: candle_nn::GroupNorm,
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
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
    fn run(&self, x: &Tensor, silu: bool) -> candle_core::Result<Tensor> {
        let dims = x.dims();
        let fast =
            cpu_f32(x) && cpu_f32(&self.weight) && dims.len() >= 2 && dims[1] % self.groups == 0;
        if !fast {
            let y = self.inner.forward(x)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &Tensor, b: &Tensor, tol: f32) {
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let m = b
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .max(1.0);
        assert!(d / m < tol, "max diff {d} (scale {m})");
    }

    #[test]
    fn convolutions_equal_candles() {
        let dev = Device::Cpu;
        for (b, cin, cout, h, w, k, stride, padding) in [
            (2, 5, 7, 9, 6, 3, 1, 1),
            (1, 16, 8, 4, 11, 3, 1, 1),
            (2, 6, 4, 5, 3, 1, 1, 0),
            (1, 4, 3, 6, 6, 3, 2, 1),
        ] {
            let vm = candle_nn::VarMap::new();
            let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
            let cfg = Conv2dConfig {
                padding,
                stride,
                ..Default::default()
            };
            let ours = conv2d(cin, cout, k, cfg, vb.pp("c")).unwrap();
            let theirs = candle_nn::Conv2d::new(ours.weight.clone(), ours.bias.clone(), cfg);
            let x = Tensor::randn(0f32, 1.0, (b, cin, h, w), &dev).unwrap();
            close(
                &ours.forward(&x).unwrap(),
                &theirs.forward(&x).unwrap(),
                1e-5,
            );
            // A non-contiguous input takes the same path.
            let xt = Tensor::randn(0f32, 1.0, (b, cin, w, h), &dev)
                .unwrap()
                .transpose(2, 3)
                .unwrap();
            close(
                &ours.forward(&xt).unwrap(),
                &theirs.forward(&xt).unwrap(),
                1e-5,
            );
        }
    }

    #[test]
    fn group_norm_equals_candles() {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let gn = group_norm(4, 12, 1e-6, vb.pp("n")).unwrap();
        let gamma = Tensor::randn(1f32, 0.5, 12, &dev).unwrap();
        let beta = Tensor::randn(0f32, 0.5, 12, &dev).unwrap();
        let gn = GroupNorm {
            inner: candle_nn::GroupNorm::new(gamma.clone(), beta.clone(), 12, 4, 1e-6).unwrap(),
            weight: gamma,
            bias: beta,
            ..gn
        };
        // Offset data: the variance must not suffer from cancellation.
        let x = (Tensor::randn(0f32, 2.0, (2, 12, 5, 7), &dev).unwrap() + 30.0).unwrap();
        let want = gn.inner.forward(&x).unwrap();
        close(&gn.forward(&x).unwrap(), &want, 1e-4);
        close(&gn.forward_silu(&x).unwrap(), &want.silu().unwrap(), 1e-4);
        let tokens = Tensor::randn(0f32, 1.0, (2, 12, 9), &dev).unwrap();
        close(
            &gn.forward(&tokens).unwrap(),
            &gn.inner.forward(&tokens).unwrap(),
            1e-4,
        );
    }
}
