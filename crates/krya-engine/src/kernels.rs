//! CPU kernels for the layers that dominate Stable Diffusion's time, used in place of
//! candle's generic ones for f32 tensors on the CPU (anything else falls back to candle).
//!
//! - `Conv2d`: 3×3 stride-1 convolutions without im2col. The input is copied once into a
//!   zero-padded buffer whose rows are `w + 2` wide; in that layout a kernel tap `(kh, kw)`
//!   reads a plain contiguous slice starting `kh * (w + 2) + kw` further on, so the
//!   convolution is nine matrix products `W[:, :, kh, kw] @ padded[.., shifted]` accumulated
//!   into one output (the two padding columns of each output row are computed and
//!   dropped: 2/(w + 2) wasted). With AVX2 or AVX-512 the weights are packed once per layer
//!   and the taps summed by Winograd's F(2×2, 3×3) ([`winograd`]: 16 multiplications per
//!   2×2 output block instead of 36) at even sizes of 16² and up, by the direct kernel of
//!   [`direct`] (register tiles of 6 output channels × 64 pixels read straight from that
//!   layout) otherwise; elsewhere by nine matrix products. 1×1 convolutions are one matrix
//!   product into the output.
//!   candle 0.11 builds an im2col tile per 512 output pixels with strided writes instead.
//! - `GroupNorm`: statistics and normalisation in two passes over each group's contiguous
//!   block (a group's channels are adjacent in NCHW), the affine and an optional SiLU fused
//!   into the second; candle does it in about eight full-tensor operations.
//!
//! - `geglu`: the transformer feed-forward's `a * gelu(b)` in one pass, with an erf
//!   (a rational approximation, within 1e-6 of libm's) that vectorises.
//! - `attention`: softmax(q kᵀ · scale) v per head and block of queries over blocks of keys
//!   with an online softmax ([`flash`]): no score matrix beyond one 48 × 256 block, instead
//!   of a full one (hundreds of MB at 512²) written, scaled, soft-maxed and read again.
//!
//! Element-wise loops are compiled three times, plainly, for AVX2+FMA and for AVX-512
//! (chosen at run time), so the compiler vectorises them on the machines that have it.
//!
//! Summation order differs from candle's and PyTorch's, as any two BLAS libraries do: the
//! golden tests (components within 1e-4 of diffusers) hold unchanged.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use rayon::prelude::*;

pub mod direct;
mod simd;

/// Defines `fn $name(args) -> R` compiled three times, for AVX-512, for AVX2+FMA and as
/// built, and picks one per call by what the CPU has: the element-wise loops inside are then
/// vectorised 16 or 8 wide, and `mul_add` is one instruction rather than a call to libm's
/// `fmaf`. The body is an `#[inline(always)]` function, so each variant really holds it:
/// a closure handed to a `target_feature` function is inlined only when LLVM's cost model
/// agrees, and a long one was not (it ran as SSE code calling `fmaf`, 5× slower).
macro_rules! simd_fn {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$doc])*
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the feature was detected on this CPU.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the features were detected on this CPU.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

pub mod flash;
pub mod winograd;

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
        gemm_raw(
            (m, n, k),
            (dst.as_mut_ptr(), dst_rs, accumulate),
            (lhs.as_ptr(), lhs_rs, lhs_cs),
            (rhs.as_ptr(), rhs_rs, 1),
            1.0,
            gemm::Parallelism::Rayon(rayon::current_num_threads()),
        );
    }
}

/// `dst = scale · lhs (m × k) @ rhs (k × n)` (+ `dst` when `accumulate`) on raw operands:
/// `dst` as (pointer, row stride, accumulate), `lhs` and `rhs` as (pointer, row stride,
/// column stride).
///
/// # Safety
/// Every element those strides address lies within its operand's allocation, and no other
/// thread touches `dst`'s elements meanwhile.
unsafe fn gemm_raw(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs, accumulate): (*mut f32, usize, bool),
    (lhs, lhs_rs, lhs_cs): (*const f32, usize, usize),
    (rhs, rhs_rs, rhs_cs): (*const f32, usize, usize),
    scale: f32,
    par: gemm::Parallelism,
) {
    // SAFETY: the caller's promise.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            par,
        );
    }
}

/// A raw pointer shared by tasks that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: users write disjoint ranges only, and the buffer outlives the tasks.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    /// The pointer (a method, so closures capture the whole `SendPtr`, not its field).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Padded pixels (`h × (w + 2)`) up to which a 3×3 convolution takes the small-image path.
const SMALL_CONV: usize = 2048;

/// Floats of one task's im2col tile (16 MB).
const COL_TILE: usize = 1 << 22;

/// Output tiles (`mt` channels × `nt` pixels, from `(m0, n0)`) for products over im2col
/// tiles of `k` rows: tiles of at most `COL_TILE` floats, and at least two tasks per
/// thread (fewer output channels per task when there are few pixel tiles).
fn col_tiles(cout: usize, n: usize, k: usize) -> (usize, usize, Vec<(usize, usize)>) {
    let nt = (COL_TILE / k).max(64).min(n);
    let threads = rayon::current_num_threads();
    let mut mt = cout;
    while mt > 64 && n.div_ceil(nt) * cout.div_ceil(mt) < 2 * threads {
        mt = (mt / 2).div_ceil(16) * 16;
    }
    let tiles = (0..cout)
        .step_by(mt)
        .flat_map(|m0| (0..n).step_by(nt).map(move |n0| (m0, n0)))
        .collect();
    (mt, nt, tiles)
}

/// The shape of a square convolution for [`conv_im2col`]: input `cin × h × w`, kernel
/// `k × k`, output `oh × ow`.
#[derive(Clone, Copy, Debug)]
pub struct ConvShape {
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvShape {
    fn out(&self) -> (usize, usize) {
        let o = |x: usize| (x + 2 * self.pad - self.k) / self.stride + 1;
        (o(self.h), o(self.w))
    }
}

/// Any other square convolution (groups and dilation 1) as one product per output tile
/// over an im2col tile gathered from the input: the UNet's and VAE's stride-2
/// downsamplers. candle's own im2col took 17% of the VAE encoder's time.
pub fn conv_im2col(
    x: &[f32],
    b: usize,
    g: ConvShape,
    weight: &[f32],
    bias: Option<&[f32]>,
    cout: usize,
) -> Vec<f32> {
    let ConvShape {
        cin,
        h,
        w,
        k,
        stride,
        pad,
    } = g;
    let (oh, ow) = g.out();
    let (kk, npix) = (cin * k * k, oh * ow);
    let mut out = uninit(b * cout * npix);
    if let Some(bias) = bias {
        out.par_chunks_mut(npix)
            .enumerate()
            .for_each(|(i, row)| row.fill(bias[i % cout]));
    }
    assert!(x.len() >= b * cin * h * w);
    for (bi, out) in out.chunks_exact_mut(cout * npix).enumerate() {
        let xs = &x[bi * cin * h * w..(bi + 1) * cin * h * w];
        tile_products(
            cout,
            npix,
            kk,
            weight,
            out,
            bias.is_some(),
            |col, p0, nn| {
                for (r, row) in col.chunks_exact_mut(nn).enumerate() {
                    let (ci, kh, kw) = (r / (k * k), r / k % k, r % k);
                    let plane = &xs[ci * h * w..(ci + 1) * h * w];
                    // Output pixels p0.. row by row of the output.
                    let (mut j, mut oy, mut ox) = (0, p0 / ow, p0 % ow);
                    while j < nn {
                        let seg = (ow - ox).min(nn - j);
                        let dst = &mut row[j..j + seg];
                        match (oy * stride + kh).checked_sub(pad).filter(|&iy| iy < h) {
                            None => dst.fill(0.0),
                            Some(iy) => {
                                let src = &plane[iy * w..(iy + 1) * w];
                                for (t, v) in dst.iter_mut().enumerate() {
                                    let ix = ((ox + t) * stride + kw).checked_sub(pad);
                                    *v = ix.and_then(|ix| src.get(ix)).copied().unwrap_or(0.0);
                                }
                            }
                        }
                        (j, oy, ox) = (j + seg, oy + 1, 0);
                    }
                }
            },
        );
    }
    out
}

/// `dst` (`cout × n`, plus its contents when `accumulate`) = `weight` (`cout × k`) @ an
/// im2col matrix (`k × n`) that is never made whole: the output is cut into tiles of
/// (output channels, pixels) by [`col_tiles`], and each task has `fill(tile, n0, nn)` write
/// the `k` rows of its pixels `n0..n0 + nn` into a tile of its own, then runs one product
/// on its thread.
fn tile_products(
    cout: usize,
    n: usize,
    k: usize,
    weight: &[f32],
    dst: &mut [f32],
    accumulate: bool,
    fill: impl Fn(&mut [f32], usize, usize) + Sync,
) {
    let (mt, nt, tiles) = col_tiles(cout, n, k);
    assert!(dst.len() >= cout * n && weight.len() >= cout * k);
    let dst = SendPtr(dst.as_mut_ptr());
    tiles
        .par_iter()
        .for_each_init(Vec::new, |col: &mut Vec<f32>, &(m0, n0)| {
            let (mm, nn) = (mt.min(cout - m0), nt.min(n - n0));
            col.resize(k * nn, 0.0);
            fill(col, n0, nn);
            // SAFETY: tiles are disjoint rectangles of `dst` (`cout × n`, asserted); the
            // weight rows `m0..m0 + mm` of `k` floats and the tile are within their slices.
            unsafe {
                gemm_raw(
                    (mm, nn, k),
                    (dst.get().add(m0 * n + n0), n, accumulate),
                    (weight.as_ptr().add(m0 * k), k, 1),
                    (col.as_ptr(), nn, 1),
                    1.0,
                    gemm::Parallelism::None,
                );
            }
        });
}

/// A 3×3 convolution's weights as [`conv3x3_s1`] takes them.
#[derive(Clone, Copy, Debug)]
pub enum Weights3x3<'a> {
    /// `[cout, cin, 3, 3]`, summed by matrix products.
    Plain(&'a [f32]),
    /// Packed by [`direct::pack`] (needs [`direct::lanes`]), summed by Winograd's
    /// F(2×2, 3×3) where [`winograd::applies`], else by the direct kernel.
    Packed(&'a [f32]),
    /// Packed, summed by the direct kernel always (benchmarks and tests).
    PackedDirect(&'a [f32]),
}

/// `x` (`[cin, h, w]` planes, `b` of them) convolved with 3×3 `weight` (`[cout, cin, 3, 3]`),
/// padding 1, stride 1: `[b, cout, h, w]`.
pub fn conv3x3_s1(
    x: &[f32],
    b: usize,
    cin: usize,
    h: usize,
    w: usize,
    weight: Weights3x3,
    bias: Option<&[f32]>,
    cout: usize,
) -> Vec<f32> {
    let wp = w + 2;
    let plane = (h + 2) * wp;
    // The packed weights, and whether Winograd may sum them (else the direct kernel does).
    let direct = match weight {
        Weights3x3::Packed(p) => Some((p, true)),
        Weights3x3::PackedDirect(p) => Some((p, false)),
        Weights3x3::Plain(_) => None,
    };
    // Output pixels computed per channel: `h` rows of `wp`, for the direct kernel rounded
    // up to whole vectors (the extra ones read zeros past the planes and are dropped).
    let n = match direct {
        Some(_) => (h * wp).next_multiple_of(direct::lanes().expect("packed without AVX2")),
        None => h * wp,
    };
    // Planes `stride` floats apart: for the direct kernel an odd number of cache lines,
    // so that the same pixels of consecutive channels fall in different cache sets (at
    // 256² and 512² the planes are 16 bytes more than a multiple of 4 KiB: sixteen
    // channels' rows competed for the same few sets of L1, 128 → 128 at 512² ran at 60%
    // of the other shapes' speed).
    let stride = match direct {
        Some(_) => (plane.div_ceil(16) | 1) * 16,
        None => plane,
    };
    // The last tap of the last channel reads `2 · wp + 2 + n` floats into its plane.
    // Every float is written below: the borders with zeros, the rest with the input.
    let tail = (2 * wp + 2 + n).saturating_sub(stride);
    let mut padded = uninit(cin * stride + tail);
    padded[cin * stride..].fill(0.0);
    let (mut acc, weight) = match weight {
        Weights3x3::Plain(w) => (uninit(cout * n), w),
        Weights3x3::Packed(_) | Weights3x3::PackedDirect(_) => (Vec::new(), &[][..]),
    };
    let mut out = uninit(b * cout * h * w);
    for bi in 0..b {
        let src = &x[bi * cin * h * w..(bi + 1) * cin * h * w];
        padded[..cin * stride]
            .par_chunks_mut(stride)
            .zip(src.par_chunks(h * w))
            .for_each(|(p, s)| {
                p[..wp + 1].fill(0.0);
                for y in 0..h {
                    let row = (y + 1) * wp;
                    p[row + 1..row + 1 + w].copy_from_slice(&s[y * w..(y + 1) * w]);
                    // The right border of this row and the left one of the next.
                    p[row + w + 1..row + wp + 1].fill(0.0);
                }
                p[(h + 1) * wp + 1..].fill(0.0);
            });
        if let Some((packed, winograd)) = direct {
            let g = direct::Geometry {
                cin,
                cout,
                plane: stride,
                h,
                w,
                n,
            };
            let out = &mut out[bi * cout * h * w..(bi + 1) * cout * h * w];
            if winograd && winograd::applies(h, w) {
                winograd::conv(&padded, packed, bias, g, out);
            } else {
                direct::conv(&padded, packed, bias, g, out);
            }
            continue;
        }
        if n <= SMALL_CONV {
            // The nine taps' products in one, over im2col tiles of each pixel's nine
            // shifted rows per input channel (`[cin · 9, pixels]`, the order of the
            // weight's own `[cout, cin · 9]` rows). At 8² to 32² the nine products with
            // `k = cin` have too few pixels to keep two threads busy (1280 → 1280 at 8²:
            // 14.0 → 7.7 ms; at 64² and above the nine products are as fast).
            let padded = &padded;
            tile_products(cout, n, cin * 9, weight, &mut acc, false, |col, n0, nn| {
                for (row, dst) in col.chunks_exact_mut(nn).enumerate() {
                    let (ci, tap) = (row / 9, row % 9);
                    let at = ci * plane + (tap / 3) * wp + tap % 3 + n0;
                    dst.copy_from_slice(&padded[at..at + nn]);
                }
            });
        } else {
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
    weight: ConvWeight,
    bias: Option<Tensor>,
    cfg: Conv2dConfig,
}

/// A convolution's weight as loaded, or packed for the direct 3×3 kernel instead (so the
/// layer holds one copy: the UNet's 3×3 weights are half its 3.4 GB).
#[derive(Clone, Debug)]
enum ConvWeight {
    Plain(Tensor),
    Packed {
        packed: std::sync::Arc<Vec<f32>>,
        cout: usize,
        cin: usize,
    },
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
    let direct_3x3 = k == 3
        && (cfg.stride, cfg.padding, cfg.dilation, cfg.groups) == (1, 1, 1, 1)
        && cpu_f32(&weight)
        && direct::lanes().is_some();
    let weight = if direct_3x3 {
        ConvWeight::Packed {
            packed: std::sync::Arc::new(direct::pack(&data(&weight)?, cout, cin)),
            cout,
            cin,
        }
    } else {
        ConvWeight::Plain(weight)
    };
    Ok(Conv2d {
        weight,
        bias: None,
        cfg,
    })
}

/// The CPU kernel a convolution takes.
#[derive(Clone, Copy, Debug)]
enum Fast {
    Conv3x3,
    Conv1x1,
    Im2col,
}

impl Conv2d {
    /// The weight as a `[cout, cin / groups, k, k]` tensor (unpacked when packed).
    pub fn weight(&self) -> candle_core::Result<Tensor> {
        match &self.weight {
            ConvWeight::Plain(w) => Ok(w.clone()),
            ConvWeight::Packed { packed, cout, cin } => Tensor::from_vec(
                direct::unpack(packed, *cout, *cin),
                (*cout, *cin, 3, 3),
                &Device::Cpu,
            ),
        }
    }

    /// `(cout, cin / groups, kh, kw)`.
    fn dims(&self) -> candle_core::Result<(usize, usize, usize, usize)> {
        match &self.weight {
            ConvWeight::Plain(w) => w.dims4(),
            ConvWeight::Packed { cout, cin, .. } => Ok((*cout, *cin, 3, 3)),
        }
    }

    /// Which fast kernel applies, if any.
    fn fast(&self, x: &Tensor) -> Option<Fast> {
        let c = &self.cfg;
        let (_, _, kh, kw) = self.dims().ok()?;
        let (_, _, h, w) = x.dims4().ok()?;
        let weight_ok = match &self.weight {
            ConvWeight::Plain(w) => cpu_f32(w),
            ConvWeight::Packed { .. } => true,
        };
        let plain = c.groups == 1 && c.dilation == 1 && kh == kw && cpu_f32(x) && weight_ok;
        match (kh, c.stride, c.padding) {
            _ if !plain || h + 2 * c.padding < kh || w + 2 * c.padding < kw => None,
            (3, 1, 1) => Some(Fast::Conv3x3),
            (1, 1, 0) => Some(Fast::Conv1x1),
            _ => Some(Fast::Im2col),
        }
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let Some(k) = self.fast(x) else {
            let c = &self.cfg;
            let weight = self.weight()?.to_device(x.device())?.to_dtype(x.dtype())?;
            let y = x.conv2d(&weight, c.padding, c.stride, c.dilation, c.groups)?;
            return match &self.bias {
                Some(b) => {
                    let b = b.to_device(x.device())?.to_dtype(x.dtype())?;
                    y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)
                }
                None => Ok(y),
            };
        };
        let (b, cin, h, w) = x.dims4()?;
        let (cout, _, kk, _) = self.dims()?;
        let bias = self.bias.as_ref().map(data).transpose()?;
        let shape = ConvShape {
            cin,
            h,
            w,
            k: kk,
            stride: self.cfg.stride,
            pad: self.cfg.padding,
        };
        let (oh, ow) = shape.out();
        let bias = bias.as_deref();
        let out = match (&self.weight, k) {
            (ConvWeight::Packed { packed, .. }, _) => with_slice(x, |xs| {
                conv3x3_s1(xs, b, cin, h, w, Weights3x3::Packed(packed), bias, cout)
            })?,
            (ConvWeight::Plain(weight), k) => with_slice(weight, |wt| {
                with_slice(x, |xs| match k {
                    Fast::Conv3x3 => {
                        conv3x3_s1(xs, b, cin, h, w, Weights3x3::Plain(wt), bias, cout)
                    }
                    Fast::Conv1x1 => conv1x1(xs, b, cin, h * w, wt, bias, cout),
                    Fast::Im2col => conv_im2col(xs, b, shape, wt, bias, cout),
                })
            })??,
        };
        Tensor::from_vec(out, (b, cout, oh, ow), x.device())
    }
}

/// A linear layer that keeps its weight transposed (`[in, out]`, contiguous). `x @ Wᵀ`
/// with the stored `[out, in]` weight makes the matrix library repack the whole weight on
/// every call, which dominates when few rows go through (77 prompt tokens); with `Wᵀ`
/// already in the order it reads, it streams the weight as it is.
#[derive(Clone, Debug)]
pub struct Linear {
    weight_t: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    fn new(weight: Tensor, bias: Option<Tensor>) -> candle_core::Result<Linear> {
        Ok(Linear {
            weight_t: weight.t()?.contiguous()?,
            bias,
        })
    }
}

/// `candle_nn::linear` (weights named and initialised alike), stored transposed.
pub fn linear(cin: usize, cout: usize, vb: VarBuilder) -> candle_core::Result<Linear> {
    let l = candle_nn::linear(cin, cout, vb)?;
    Linear::new(l.weight().clone(), l.bias().cloned())
}

/// `candle_nn::linear_b`, stored transposed.
pub fn linear_b(
    cin: usize,
    cout: usize,
    bias: bool,
    vb: VarBuilder,
) -> candle_core::Result<Linear> {
    let l = candle_nn::linear_b(cin, cout, bias, vb)?;
    Linear::new(l.weight().clone(), l.bias().cloned())
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let k = *dims.last().unwrap_or(&0);
        let rows = x.elem_count() / k.max(1);
        let n = self.weight_t.dim(1)?;
        let mut shape = dims;
        *shape.last_mut().unwrap() = n;
        if !(cpu_f32(x) && cpu_f32(&self.weight_t)) || rows == 0 || k == 0 {
            let y = x.reshape((rows, k))?.matmul(&self.weight_t)?;
            let y = match &self.bias {
                Some(b) => y.broadcast_add(b)?,
                None => y,
            };
            return y.reshape(shape);
        }
        let bias = self.bias.as_ref().map(data).transpose()?;
        let out = with_slice(&self.weight_t, |w| {
            with_slice(x, |xs| linear_rows(xs, rows, k, w, n, bias.as_deref()))
        })??;
        Tensor::from_vec(out, shape, x.device())
    }
}

/// Rows below which [`linear_rows`] splits the output's columns itself.
const FEW_ROWS: usize = 512;

/// `x (rows × k) @ w (k × n) + bias`. With few rows (77 prompt tokens) the matrix library's
/// own split leaves one thread mostly idle (77 × 1024 → 4096: 133 GFLOP/s on two threads,
/// 137 on one); column blocks of the output, one product per task, reach 250.
fn linear_rows(
    x: &[f32],
    rows: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let mut out = uninit(rows * n);
    if let Some(b) = bias {
        out.par_chunks_mut(n).for_each(|r| r.copy_from_slice(b));
    }
    let threads = rayon::current_num_threads();
    if rows >= FEW_ROWS || threads == 1 {
        matmul(rows, n, k, &mut out, n, bias.is_some(), x, k, 1, w, n);
        return out;
    }
    let cw = n.div_ceil(4 * threads).div_ceil(16) * 16;
    assert!(x.len() >= rows * k && w.len() >= k * n);
    let dst = SendPtr(out.as_mut_ptr());
    (0..n.div_ceil(cw)).into_par_iter().for_each(|j| {
        let (n0, nn) = (j * cw, cw.min(n - j * cw));
        // SAFETY: each task writes its own columns `n0..n0 + nn` of `out` (`rows × n`);
        // `x` and `w` hold `rows × k` and `k × n` floats (asserted).
        unsafe {
            gemm_raw(
                (rows, nn, k),
                (dst.get().add(n0), n, bias.is_some()),
                (x.as_ptr(), k, 1),
                (w.as_ptr().add(n0), n, 1),
                1.0,
                gemm::Parallelism::None,
            );
        }
    });
    out
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

/// erf for f32 as a rational function of degree 13/8 on [-4, 4] (±1 beyond), the
/// approximation XLA and Eigen use: within a few ulp, no exp, vectorisable.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2.mul_add(-2.726_142_3e-10, 2.770_681_4e-8);
    p = x2.mul_add(p, -2.101_024e-6);
    p = x2.mul_add(p, -5.692_506_4e-5);
    p = x2.mul_add(p, -7.349_906_3e-4);
    p = x2.mul_add(p, -2.954_600e-3);
    p = x2.mul_add(p, -1.609_603_3e-2);
    let mut q = x2.mul_add(-1.456_607_2e-5, -2.133_740_6e-4);
    q = x2.mul_add(q, -1.682_827e-3);
    q = x2.mul_add(q, -7.373_329e-3);
    q = x2.mul_add(q, -1.426_474e-2);
    x * p / q
}

/// e^x for f32 (Cephes' expf: Cody-Waite reduction by ln 2, a degree-5 polynomial, the
/// exponent set directly): within 2 ulp, no call, so loops over it vectorise (softmax,
/// SiLU).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.7);
    // n = round(x / ln 2), by the 1.5 * 2^23 trick: `t`'s low mantissa bits hold n.
    let t = x * std::f32::consts::LOG2_E + 12_582_912.0;
    let n = t - 12_582_912.0;
    let r = n.mul_add(-0.693_359_4, x);
    let r = n.mul_add(2.121_944_4e-4, r);
    let mut p = r.mul_add(1.987_569_1e-4, 1.398_199_9e-3);
    p = r.mul_add(p, 8.333_452e-3);
    p = r.mul_add(p, 4.166_579_6e-2);
    p = r.mul_add(p, 0.166_666_65);
    p = r.mul_add(p, 0.5);
    let e = (p * r).mul_add(r, r) + 1.0;
    // 2^n from t's bits by integer arithmetic (`n as i32` would be a saturating
    // conversion, compiled as a scalar compare and move per lane).
    let pow2 = t.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127) << 23;
    e * f32::from_bits(pow2)
}

/// GEGLU: `h` is `[rows, 2d]`; each row becomes `h[..d] * gelu(h[d..])` (exact GELU).
pub fn geglu_rows(h: &[f32], d: usize) -> Vec<f32> {
    let rows = h.len() / (2 * d);
    let mut out = uninit(rows * d);
    out.par_chunks_mut(d)
        .zip(h.par_chunks(2 * d))
        .for_each(|(o, row)| geglu_row(o, row));
    out
}

simd_fn! {
    /// One row of [`geglu_rows`]: `o = a * gelu(g)` for `row = [a, g]`.
    fn geglu_row(o: &mut [f32], row: &[f32]) {
        let (a, g) = row.split_at(o.len());
        for ((o, a), g) in o.iter_mut().zip(a).zip(g) {
            *o = a * (0.5 * g * (1.0 + erf(g * std::f32::consts::FRAC_1_SQRT_2)));
        }
    }
}

/// `a * gelu(b)` for the two halves of the last dimension of `h`.
pub fn geglu(h: &Tensor) -> candle_core::Result<Tensor> {
    let dims = h.dims().to_vec();
    let last = *dims.last().unwrap_or(&0);
    if !cpu_f32(h) || last % 2 == 1 {
        let half = last / 2;
        let n = dims.len() - 1;
        return h.narrow(n, 0, half)? * h.narrow(n, half, half)?.gelu_erf()?;
    }
    let out = with_slice(h, |v| geglu_rows(v, last / 2))?;
    let mut shape = dims;
    *shape.last_mut().unwrap() = last / 2;
    Tensor::from_vec(out, shape, h.device())
}

simd_fn! {
    /// Exact GELU, `x Φ(x)`, in place.
    fn gelu_inplace(v: &mut [f32]) {
        for x in v {
            *x = 0.5 * *x * (1.0 + erf(*x * std::f32::consts::FRAC_1_SQRT_2));
        }
    }
}

/// Exact (erf) GELU: candle's `gelu_erf` calls libm's `erf` element by element.
pub fn gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    if !cpu_f32(x) {
        return x.gelu_erf();
    }
    let mut v = data(x)?;
    v.par_chunks_mut(1 << 14).for_each(gelu_inplace);
    Tensor::from_vec(v, x.dims(), x.device())
}

/// Lanes of the partial maxima and sums below: the compiler does not reorder reductions
/// over floats, so they are written as 16 independent ones (one vector's worth).
const LANES: usize = 16;

/// The largest entry of `row`, as lane-wise partial maxima (so it vectorises inside a
/// `simd_fn!`).
#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut mx = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            // Not `f32::max`: its NaN rule costs a compare and blend per vector.
            mx[i] = if c[i] > mx[i] { c[i] } else { mx[i] };
        }
    }
    chunks
        .remainder()
        .iter()
        .chain(&mx)
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b))
}

/// Each entry `x` of `row` replaced by `e^(x − max)`; returns their sum.
#[inline(always)]
fn exp_sum(row: &mut [f32], max: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            c[i] = exp(c[i] - max);
            acc[i] += c[i];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for v in chunks.into_remainder() {
        *v = exp(*v - max);
        sum += *v;
    }
    sum
}

simd_fn! {
    /// Each `m`-long row of `scores` replaced by its softmax over its first
    /// `first + i` entries (row `i`; the rest become 0): `first = m` for all of them, a
    /// causal mask otherwise.
    fn softmax_rows(scores: &mut [f32], m: usize, first: usize) {
        for (i, row) in scores.chunks_mut(m).enumerate() {
            let (row, masked) = row.split_at_mut((first + i).min(m));
            masked.fill(0.0);
            let max = row_max(row);
            let sum = exp_sum(row, max);
            let inv = 1.0 / sum;
            row.iter_mut().for_each(|v| *v *= inv);
        }
    }
}

simd_fn! {
    /// Sum and sum of squares of a block, in f64, as lane-wise partial sums (vectorised).
    fn moments(block: &[f32]) -> (f64, f64) {
        let (mut s, mut ss) = ([0f64; 8], [0f64; 8]);
        let mut chunks = block.chunks_exact(8);
        for c in &mut chunks {
            for i in 0..8 {
                let v = c[i] as f64;
                s[i] += v;
                ss[i] = v.mul_add(v, ss[i]);
            }
        }
        let (mut s1, mut s2) = (s.iter().sum::<f64>(), ss.iter().sum::<f64>());
        for &v in chunks.remainder() {
            s1 += v as f64;
            s2 += v as f64 * v as f64;
        }
        (s1, s2)
    }
}

/// Query rows per attention block: 128 × 4096 keys of scores is 2 MB, about L2.
const QUERY_BLOCK: usize = 128;

/// The shape of an attention: `b` batches of `n` queries and `m` keys, `heads` heads of
/// `d` each, token-major (`[b, n, heads · d]`, as linear layers make them).
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    pub b: usize,
    pub n: usize,
    pub m: usize,
    pub heads: usize,
    pub d: usize,
}

/// Scaled dot-product attention on token-major queries `[b, n, heads · d]` and keys and
/// values `[b, m, heads · d]` (contiguous): `[b, n, heads · d]`. Heads are read and written
/// in place through strides, so no transposed copies are made. `causal`: query `i` sees
/// keys `0..=i` only (CLIP's text encoder); its other scores are never computed.
pub fn attention_tokens(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: AttentionShape,
    scale: f32,
    causal: bool,
) -> Vec<f32> {
    if !causal && flash::applies(shape.m, shape.d) {
        return flash::attention(q, k, v, shape, scale);
    }
    attention_tokens_gemm(q, k, v, shape, scale, causal)
}

/// [`attention_tokens`] by two matrix-library products per block of queries, the block's
/// scores (`QUERY_BLOCK × m`) soft-maxed in between: for causal masks and for heads the
/// online-softmax kernel does not take. Public for the kernel benchmark.
pub fn attention_tokens_gemm(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: AttentionShape,
    scale: f32,
    causal: bool,
) -> Vec<f32> {
    let AttentionShape { b, n, m, heads, d } = shape;
    let c = heads * d;
    assert!(q.len() >= b * n * c && k.len() >= b * m * c && v.len() >= b * m * c);
    let mut out = uninit(b * n * c);
    let blocks = n.div_ceil(QUERY_BLOCK);
    // Each (batch and head, block of queries) is one task writing its own part of `out`.
    let tasks: Vec<(usize, usize)> = (0..b * heads)
        .flat_map(|bh| (0..blocks).map(move |blk| (bh, blk)))
        .collect();
    let out_ptr = SendPtr(out.as_mut_ptr());
    tasks.into_par_iter().for_each_init(
        || Vec::<f32>::new(),
        |scores, (bh, blk)| {
            let (bi, h) = (bh / heads, bh % heads);
            let r0 = blk * QUERY_BLOCK;
            let rows = QUERY_BLOCK.min(n - r0);
            // Keys this block can see.
            let keys = if causal { m.min(r0 + rows) } else { m };
            scores.resize(rows * keys, 0.0);
            let q0 = (bi * n + r0) * c + h * d;
            let kv0 = bi * m * c + h * d;
            // SAFETY: rows `r0..r0 + rows` and keys `..keys` of head `h` in batch `bi` lie
            // within the asserted lengths (row stride `c`, `d` columns from `h · d`); this
            // task alone writes those rows' head-`h` columns of `out`.
            unsafe {
                // scores = q kᵀ (rows × keys): kᵀ is k read with its strides swapped.
                gemm_raw(
                    (rows, keys, d),
                    (scores.as_mut_ptr(), keys, false),
                    (q.as_ptr().add(q0), c, 1),
                    (k.as_ptr().add(kv0), 1, c),
                    scale,
                    gemm::Parallelism::None,
                );
                softmax_rows(scores, keys, if causal { r0 + 1 } else { keys });
                gemm_raw(
                    (rows, d, keys),
                    (out_ptr.get().add(q0), c, false),
                    (scores.as_ptr(), keys, 1),
                    (v.as_ptr().add(kv0), c, 1),
                    1.0,
                    gemm::Parallelism::None,
                );
            }
        },
    );
    out
}

/// softmax(q kᵀ · scale) v for token-major `[b, n, heads · d]` queries and `[b, m, heads · d]`
/// keys and values (`causal` as in [`attention_tokens`]): `[b, n, heads · d]`. On the CPU
/// kernel when it applies, else with candle (queries in chunks whose scores stay within
/// `chunk_bytes`).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
    causal: bool,
    chunk_bytes: usize,
) -> candle_core::Result<Tensor> {
    let (b, n, c) = q.dims3()?;
    let m = k.dim(1)?;
    let d = c / heads;
    if cpu_f32(q) && cpu_f32(k) && cpu_f32(v) {
        let shape = AttentionShape { b, n, m, heads, d };
        let out = with_slice(q, |qs| {
            with_slice(k, |ks| {
                with_slice(v, |vs| {
                    attention_tokens(qs, ks, vs, shape, scale as f32, causal)
                })
            })
        })???;
        return Tensor::from_vec(out, (b, n, c), q.device());
    }
    let split = |t: &Tensor| -> candle_core::Result<Tensor> {
        let len = t.dim(1)?;
        t.reshape((b, len, heads, d))?.transpose(1, 2)?.contiguous()
    };
    let (q, k, v) = (split(q)?, split(k)?, split(v)?);
    let kt = k.t()?;
    // Queries in chunks that keep the score matrix within `chunk_bytes`.
    let row_bytes = (b * heads * m * q.dtype().size_in_bytes()).max(1);
    let rows = (chunk_bytes / row_bytes).clamp(1, n);
    let attend = |start: usize, len: usize| -> candle_core::Result<Tensor> {
        let mut scores = (q.narrow(2, start, len)?.matmul(&kt)? * scale)?;
        if causal {
            let mask: Vec<f32> = (start..start + len)
                .flat_map(|i| (0..m).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
                .collect();
            let mask = Tensor::from_vec(mask, (len, m), q.device())?.to_dtype(q.dtype())?;
            scores = scores.broadcast_add(&mask)?;
        }
        candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v)
    };
    let chunks = (0..n)
        .step_by(rows)
        .map(|start| attend(start, rows.min(n - start)))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Tensor::cat(&chunks, 2)?.transpose(1, 2)?.reshape((b, n, c))
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
            // Other strides, paddings and kernels go through im2col tiles.
            (2, 5, 7, 9, 8, 3, 2, 0),
            (1, 3, 4, 7, 10, 4, 3, 2),
            // Two pixel tiles (388 of 10800 rows each), the second from mid-row.
            (1, 1200, 20, 40, 40, 3, 2, 1),
            // The small-image path cut into 2 × 2 tiles of uneven sizes (130 output
            // channels, 16 · 18 padded pixels, 227 per im2col tile of 2048 · 9 rows).
            (1, 2048, 130, 16, 16, 3, 1, 1),
            // Nine products over the whole image (40 · 62 padded pixels > SMALL_CONV).
            (1, 8, 5, 40, 60, 3, 1, 1),
        ] {
            let vm = candle_nn::VarMap::new();
            let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
            let cfg = Conv2dConfig {
                padding,
                stride,
                ..Default::default()
            };
            let ours = conv2d(cin, cout, k, cfg, vb.pp("c")).unwrap();
            // The weight as loaded (ours may hold it packed only).
            let weight = vm.data().lock().unwrap()["c.weight"].as_tensor().clone();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(flat(&ours.weight().unwrap()), flat(&weight));
            let theirs = candle_nn::Conv2d::new(weight, ours.bias.clone(), cfg);
            let x = Tensor::randn(0f32, 1.0, (b, cin, h, w), &dev).unwrap();
            close(
                &ours.forward(&x).unwrap(),
                &theirs.forward(&x).unwrap(),
                1e-5,
            );
            // Another dtype falls back to candle's convolution with the weight unpacked.
            let x64 = x.to_dtype(DType::F64).unwrap();
            close(
                &ours.forward(&x64).unwrap().to_dtype(DType::F32).unwrap(),
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
    fn linear_equals_candles() {
        let dev = Device::Cpu;
        // Few rows (columns split per task, 37 of them: uneven blocks) and many rows.
        for (rows, cin, cout, bias) in [(7, 24, 37, true), (3, 5, 200, false), (600, 24, 37, true)]
        {
            let vm = candle_nn::VarMap::new();
            let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
            let theirs = if bias {
                candle_nn::linear(cin, cout, vb.pp("l")).unwrap()
            } else {
                candle_nn::linear_no_bias(cin, cout, vb.pp("l")).unwrap()
            };
            let ours = Linear::new(theirs.weight().clone(), theirs.bias().cloned()).unwrap();
            let x = Tensor::randn(0f32, 1.0, (1, rows, cin), &dev).unwrap();
            close(
                &ours.forward(&x).unwrap(),
                &theirs.forward(&x).unwrap(),
                1e-5,
            );
        }
    }

    #[test]
    fn erf_and_geglu_match_the_exact_ones() {
        let mut worst = 0f32;
        for i in -6000..=6000 {
            let x = i as f32 / 1000.0;
            let want = libm_erf(x as f64) as f32;
            worst = worst.max((erf(x) - want).abs());
        }
        assert!(worst < 1e-6, "erf off by {worst}");
        let dev = Device::Cpu;
        let h = Tensor::randn(0f32, 2.0, (2, 5, 16), &dev).unwrap();
        let want =
            (h.narrow(2, 0, 8).unwrap() * h.narrow(2, 8, 8).unwrap().gelu_erf().unwrap()).unwrap();
        close(&geglu(&h).unwrap(), &want, 1e-5);
        let x = Tensor::randn(0f32, 3.0, (3, 7, 1000), &dev).unwrap();
        close(&gelu(&x).unwrap(), &x.gelu_erf().unwrap(), 1e-6);
    }

    #[test]
    fn exp_is_within_two_ulp() {
        let mut worst = 0f64;
        for i in -87_000..=88_000 {
            let x = i as f32 / 1000.0;
            let want = (x as f64).exp();
            worst = worst.max(((exp(x) as f64) - want).abs() / want);
        }
        assert!(worst < 3e-7, "relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-200.0) >= 0.0 && exp(-200.0) < 1e-37);
    }

    /// erf in f64 by its Taylor series (exact enough on [-6, 6] for a 1e-6 check).
    fn libm_erf(x: f64) -> f64 {
        if x.abs() > 5.0 {
            return x.signum();
        }
        let (mut term, mut sum) = (x, x);
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn attention_equals_candles() {
        let dev = Device::Cpu;
        for (b, h, n, m, d, causal) in [
            (2, 3, 70, 70, 8, false),
            (1, 2, 5, 77, 16, false),
            (1, 1, 130, 9, 4, false),
            (2, 2, 77, 77, 8, true),
            (1, 1, 300, 300, 4, true),
            // The online-softmax kernel: several query and key blocks, both partial, key
            // counts that are no whole vector, a `d` of 2.5 AVX-512 vectors.
            (1, 2, 200, 600, 64, false),
            (2, 1, 100, 300, 40, false),
        ] {
            let q = Tensor::randn(0f32, 1.0, (b, n, h * d), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (b, m, h * d), &dev).unwrap();
            let v = Tensor::randn(0f32, 1.0, (b, m, h * d), &dev).unwrap();
            let heads = |t: &Tensor| {
                let len = t.dim(1).unwrap();
                t.reshape((b, len, h, d))
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap()
                    .contiguous()
                    .unwrap()
            };
            let scale = (d as f64).powf(-0.5);
            let mut scores = (heads(&q).matmul(&heads(&k).t().unwrap()).unwrap() * scale).unwrap();
            if causal {
                let mask: Vec<f32> = (0..n)
                    .flat_map(|i| (0..m).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
                    .collect();
                let mask = Tensor::from_vec(mask, (n, m), &dev).unwrap();
                scores = scores.broadcast_add(&mask).unwrap();
            }
            let want = candle_nn::ops::softmax_last_dim(&scores)
                .unwrap()
                .matmul(&heads(&v))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .reshape((b, n, h * d))
                .unwrap();
            close(
                &attention(&q, &k, &v, h, scale, causal, usize::MAX).unwrap(),
                &want,
                1e-5,
            );
            let narrow = simd::with_avx2(|| attention(&q, &k, &v, h, scale, causal, usize::MAX));
            close(&narrow.unwrap(), &want, 1e-5);
            // The candle path (taken off the CPU), in chunks of 7 query rows.
            let chunked = attention(
                &q.to_dtype(DType::F64).unwrap(),
                &k.to_dtype(DType::F64).unwrap(),
                &v.to_dtype(DType::F64).unwrap(),
                h,
                scale,
                causal,
                7 * b * h * m * 8,
            )
            .unwrap();
            close(&chunked.to_dtype(DType::F32).unwrap(), &want, 1e-5);
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
