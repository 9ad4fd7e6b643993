//! Convolutions: 3×3 stride 1 (direct and Winograd kernels, or nine products), 1×1 as one
//! product, any other square one over im2col tiles; the `Conv2d` layer that picks one.

use candle_core::{Device, Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use rayon::prelude::*;

use super::*;

/// Padded pixels (`h × (w + 2)`) up to which a 3×3 convolution takes the small-image path.
pub(crate) const SMALL_CONV: usize = 2048;

/// Floats of one task's im2col tile (16 MB).
pub(crate) const COL_TILE: usize = 1 << 22;

/// Output tiles (`mt` channels × `nt` pixels, from `(m0, n0)`) for products over im2col
/// tiles of `k` rows: tiles of at most `COL_TILE` floats, and at least two tasks per
/// thread (fewer output channels per task when there are few pixel tiles).
pub(crate) fn col_tiles(cout: usize, n: usize, k: usize) -> (usize, usize, Vec<(usize, usize)>) {
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
    pub(crate) fn out(&self) -> (usize, usize) {
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
pub(crate) fn tile_products(
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
    conv3x3_s1_padded(x, b, cin, h, w, weight, bias, cout, false)
}

/// [`conv3x3_s1`], padded with zeros or by reflection (`padding_mode="reflect"`: the row or
/// column inside the edge, mirrored; `h` and `w` at least 2).
#[allow(clippy::too_many_arguments)]
pub fn conv3x3_s1_padded(
    x: &[f32],
    b: usize,
    cin: usize,
    h: usize,
    w: usize,
    weight: Weights3x3,
    bias: Option<&[f32]>,
    cout: usize,
    reflect: bool,
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
        pad_planes(
            src,
            h,
            w,
            stride,
            &mut padded[..cin * stride],
            |_, v| v,
            reflect,
        );
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

/// Copies planes `src` (`c × h × w`) into `padded` (`c` planes `stride` floats apart, rows
/// `w + 2` wide, zero borders (or, with `reflect`, borders mirroring the row or column inside
/// the edge), zeros to the end of each plane), each value through `f` (given its plane's
/// index).
fn pad_planes(
    src: &[f32],
    h: usize,
    w: usize,
    stride: usize,
    padded: &mut [f32],
    f: impl Fn(usize, f32) -> f32 + Sync,
    reflect: bool,
) {
    let wp = w + 2;
    padded
        .par_chunks_mut(stride)
        .zip(src.par_chunks(h * w))
        .enumerate()
        .for_each(|(c, (p, s))| {
            p[..wp + 1].fill(0.0);
            for y in 0..h {
                let row = (y + 1) * wp;
                for (d, v) in p[row + 1..row + 1 + w]
                    .iter_mut()
                    .zip(&s[y * w..(y + 1) * w])
                {
                    *d = f(c, *v);
                }
                // The right border of this row and the left one of the next.
                p[row + w + 1..row + wp + 1].fill(0.0);
            }
            p[(h + 1) * wp + 1..].fill(0.0);
            if reflect && h >= 2 && w >= 2 {
                for y in 1..=h {
                    let row = y * wp;
                    p[row] = p[row + 2];
                    p[row + w + 1] = p[row + w - 1];
                }
                p.copy_within(2 * wp..3 * wp, 0);
                p.copy_within((h - 1) * wp..h * wp, (h + 1) * wp);
            }
        });
}

/// Pads the last two dimensions of `x` by `p` by reflection (`F.pad(…, mode="reflect")`: the
/// edge itself is not repeated; each side must be longer than `p`).
pub fn reflect_pad(x: &Tensor, p: usize) -> candle_core::Result<Tensor> {
    if p == 0 {
        return Ok(x.clone());
    }
    let mut x = x.clone();
    let rank = x.rank();
    for dim in [rank - 2, rank - 1] {
        let n = x.dim(dim)?;
        if n <= p {
            candle_core::bail!("reflection padding of {p} needs a side longer than {p}, got {n}");
        }
        let idx: Vec<u32> = (0..n + 2 * p)
            .map(|i| {
                let i = i as i64 - p as i64;
                let r = if i < 0 {
                    -i
                } else if i >= n as i64 {
                    2 * (n as i64 - 1) - i
                } else {
                    i
                };
                r as u32
            })
            .collect();
        let idx = Tensor::new(idx.as_slice(), x.device())?;
        x = x.index_select(&idx, dim)?;
    }
    Ok(x)
}

/// Where the direct and Winograd kernels read an `h × w` image's planes: `stride` floats
/// apart (as [`conv3x3_s1`] lays them out), `n` output pixels computed per plane.
struct Layout {
    h: usize,
    w: usize,
    stride: usize,
    n: usize,
}

impl Layout {
    fn new(h: usize, w: usize, lanes: usize) -> Self {
        let wp = w + 2;
        let plane = (h + 2) * wp;
        Layout {
            h,
            w,
            stride: (plane.div_ceil(16) | 1) * 16,
            n: (h * wp).next_multiple_of(lanes),
        }
    }

    /// A buffer of `c` padded planes, with what the kernels read past the last. A kernel
    /// reads a little past its last plane, into the head of the next (planes not written
    /// yet): those reads make only dropped pixels, but are zeros.
    fn buffer(&self, c: usize) -> Vec<f32> {
        let stride = self.stride;
        let reach = 2 * (self.w + 2) + 2 + self.n;
        let mut padded = uninit(c * stride + reach.saturating_sub(stride));
        padded[c * stride..].fill(0.0);
        for p in padded[..c * stride].chunks_mut(stride) {
            let head = p.len().min(reach.saturating_sub(stride));
            p[..head].fill(0.0);
        }
        padded
    }

    /// `src` (`c × h × w`) into `c` planes of `padded`, each value through `f` (given its
    /// plane's index).
    fn pad(&self, src: &[f32], padded: &mut [f32], f: impl Fn(usize, f32) -> f32 + Sync) {
        let c = src.len() / (self.h * self.w);
        pad_planes(
            src,
            self.h,
            self.w,
            self.stride,
            &mut padded[..c * self.stride],
            f,
            false,
        );
    }
}

/// A packed 3×3 convolution, as the one-pass kernels below run it.
struct Packed3x3 {
    packed: std::sync::Arc<Vec<f32>>,
    cin: usize,
    cout: usize,
    bias: Option<Vec<f32>>,
}

impl Packed3x3 {
    /// Each of `convs`, or `None` when one is not a packed 3×3.
    fn all(convs: &[Conv2d]) -> candle_core::Result<Option<Vec<Self>>> {
        let mut layers = Vec::with_capacity(convs.len());
        for conv in convs {
            let ConvWeight::Packed { packed, cout, cin } = &conv.weight else {
                return Ok(None);
            };
            layers.push(Self {
                packed: packed.clone(),
                cin: *cin,
                cout: *cout,
                bias: conv.bias.as_ref().map(data).transpose()?,
            });
        }
        Ok(Some(layers))
    }

    /// Over the first `cin` planes of `padded`: `cout × h × w` into `out`, by Winograd
    /// where it applies, else the direct kernel.
    fn run(&self, l: &Layout, padded: &[f32], out: &mut [f32]) {
        let g = direct::Geometry {
            cin: self.cin,
            cout: self.cout,
            plane: l.stride,
            h: l.h,
            w: l.w,
            n: l.n,
        };
        let bias = self.bias.as_deref();
        if winograd::applies(l.h, l.w) {
            winograd::conv(padded, &self.packed, bias, g, out);
        } else {
            direct::conv(padded, &self.packed, bias, g, out);
        }
    }
}

/// A chain of 3×3 convolutions, each but the last followed by a PReLU (`slopes[k]`: one per
/// output channel), as SRVGGNetCompact's body: each output goes, through its PReLU, straight
/// into the next layer's padded buffer (no separate activation passes, no padding copy).
/// `None` where the fast kernels do not apply; the numbers are those of the layers and
/// `x.relu() + a · x.min(0)` run one by one.
pub fn conv_prelu_chain(
    x: &Tensor,
    convs: &[Conv2d],
    slopes: &[Vec<f32>],
) -> candle_core::Result<Option<Tensor>> {
    let (b, c0, h, w) = x.dims4()?;
    let Some(lanes) = direct::lanes() else {
        return Ok(None);
    };
    if !cpu_f32(x) || convs.is_empty() || slopes.len() + 1 != convs.len() {
        return Ok(None);
    }
    let Some(layers) = Packed3x3::all(convs)? else {
        return Ok(None);
    };
    // Each takes what the one before makes, and each PReLU has a slope per channel.
    let (mut cin, mut widest) = (c0, c0);
    for (k, l) in layers.iter().enumerate() {
        if l.cin != cin || slopes.get(k).is_some_and(|s| s.len() != l.cout) {
            return Ok(None);
        }
        cin = l.cout;
        widest = widest.max(cin);
    }
    let layout = Layout::new(h, w, lanes);
    let mut bufs = [layout.buffer(widest), layout.buffer(widest)];
    let cout = cin;
    let mut out = uninit(b * cout * h * w);
    let mut y = Vec::new();
    with_slice(x, |xs| {
        for bi in 0..b {
            layout.pad(
                &xs[bi * c0 * h * w..(bi + 1) * c0 * h * w],
                &mut bufs[0],
                |_, v| v,
            );
            for (k, l) in layers.iter().enumerate() {
                let [first, second] = &mut bufs;
                let (src, dst) = if k % 2 == 0 {
                    (&*first, second)
                } else {
                    (&*second, first)
                };
                if k + 1 < layers.len() {
                    y.resize(l.cout * h * w, 0.0);
                    l.run(&layout, src, &mut y);
                    let a = &slopes[k];
                    layout.pad(&y, dst, |ch, v| if v >= 0.0 { v } else { a[ch] * v });
                } else {
                    l.run(
                        &layout,
                        src,
                        &mut out[bi * cout * h * w..(bi + 1) * cout * h * w],
                    );
                }
            }
        }
    })?;
    Ok(Some(Tensor::from_vec(out, (b, cout, h, w), x.device())?))
}

/// ESRGAN's residual dense block in one pass over one padded buffer: convolution `k` sees
/// the block's input and the outputs of the convolutions before it (each through a leaky
/// ReLU of `slope`), the last one's output is scaled by `scale` and added to the input.
/// `torch.cat` and the per-layer padding copies are gone: each output is written once,
/// padded, beside the channels before it, where the next convolution reads them all.
/// `None` where the fast kernels do not apply (the caller runs the layers one by one); the
/// numbers are those of the layers run one by one.
pub fn dense_block(
    x: &Tensor,
    convs: &[Conv2d],
    slope: f32,
    scale: f32,
) -> candle_core::Result<Option<Tensor>> {
    let (b, c0, h, w) = x.dims4()?;
    let Some(lanes) = direct::lanes() else {
        return Ok(None);
    };
    if !cpu_f32(x) || convs.is_empty() {
        return Ok(None);
    }
    let Some(layers) = Packed3x3::all(convs)? else {
        return Ok(None);
    };
    // The input grows by each output but the last's, which has the input's channels.
    let mut cin = c0;
    for (k, l) in layers.iter().enumerate() {
        if l.cin != cin {
            return Ok(None);
        }
        if k + 1 < layers.len() {
            cin += l.cout;
        } else if l.cout != c0 {
            return Ok(None);
        }
    }
    let layout = Layout::new(h, w, lanes);
    let mut padded = layout.buffer(cin);
    let mut out = uninit(b * c0 * h * w);
    let mut y = Vec::new();
    with_slice(x, |xs| {
        for bi in 0..b {
            let xb = &xs[bi * c0 * h * w..(bi + 1) * c0 * h * w];
            layout.pad(xb, &mut padded, |_, v| v);
            for (k, l) in layers.iter().enumerate() {
                y.resize(l.cout * h * w, 0.0);
                l.run(&layout, &padded, &mut y);
                if k + 1 < layers.len() {
                    let dst = &mut padded[l.cin * layout.stride..];
                    layout.pad(&y, dst, |_, v| v.max(v * slope));
                } else {
                    out[bi * c0 * h * w..(bi + 1) * c0 * h * w]
                        .par_chunks_mut(h * w)
                        .zip(y.par_chunks(h * w).zip(xb.par_chunks(h * w)))
                        .for_each(|(o, (y, x))| {
                            for ((o, y), x) in o.iter_mut().zip(y).zip(x) {
                                *o = y * scale + x;
                            }
                        });
                }
            }
        }
    })?;
    Ok(Some(Tensor::from_vec(out, (b, c0, h, w), x.device())?))
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
    pub(crate) weight: ConvWeight,
    pub(crate) bias: Option<Tensor>,
    pub(crate) cfg: Conv2dConfig,
    /// Padded by reflection instead of zeros (`padding_mode="reflect"`).
    pub(crate) reflect: bool,
    /// A trainable LoRA branch (LoCon: `down` a `[rank, in, k, k]` convolution with the
    /// layer's stride and padding, `up` a `[out, rank, 1, 1]` one), added to the output.
    pub(crate) lora: Option<super::LoraBranch>,
}

/// A convolution's weight as loaded, or packed for the direct 3×3 kernel instead (so the
/// layer holds one copy: the UNet's 3×3 weights are half its 3.4 GB).
#[derive(Clone, Debug)]
pub(crate) enum ConvWeight {
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
    conv2d_from(weight, None, cfg)
}

/// A convolution from its weight `[cout, cin / groups, k, k]` and bias (for weights
/// transformed at load, e.g. with a batch norm folded in), with the fast CPU paths.
pub fn conv2d_from(
    weight: Tensor,
    bias: Option<Tensor>,
    cfg: Conv2dConfig,
) -> candle_core::Result<Conv2d> {
    let (cout, cin, k, _) = weight.dims4()?;
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
        bias,
        cfg,
        reflect: false,
        lora: None,
    })
}

/// The CPU kernel a convolution takes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Fast {
    Conv3x3,
    Conv1x1,
    Im2col,
    FewOutputs,
    Depthwise,
}

/// Output channels up to which a large kernel runs as [`conv_few_outputs`].
const FEW_OUTPUTS: usize = 4;

/// A stride-1 convolution with few output channels (LaMa's and the upscalers' last 7×7
/// to RGB), row by row: every output channel's row accumulated over each input row the
/// kernel covers, shifted per tap (a product with `cout` rows leaves im2col's gather, 49
/// times the input, as the whole cost: 1.0 → 0.35 s for LaMa's at 512²).
pub fn conv_few_outputs(
    x: &[f32],
    b: usize,
    g: ConvShape,
    weight: &[f32],
    bias: Option<&[f32]>,
    cout: usize,
) -> Vec<f32> {
    let (k, cin) = (g.k, g.cin);
    let (hp, wp) = (g.h + 2 * g.pad, g.w + 2 * g.pad);
    let (oh, ow) = g.out();
    // Zero-padded planes (the input as it is when there is no padding).
    let padded: std::borrow::Cow<[f32]> = if g.pad == 0 {
        std::borrow::Cow::Borrowed(x)
    } else {
        let mut p = vec![0f32; b * cin * hp * wp];
        for (dst, src) in p.chunks_mut(hp * wp).zip(x.chunks(g.h * g.w)) {
            for y in 0..g.h {
                dst[(y + g.pad) * wp + g.pad..][..g.w].copy_from_slice(&src[y * g.w..][..g.w]);
            }
        }
        std::borrow::Cow::Owned(p)
    };
    let mut out = vec![0f32; b * cout * oh * ow];
    // One task per image row: every output channel of it.
    let mut rows: Vec<(usize, usize, Vec<f32>)> = (0..b * oh)
        .into_par_iter()
        .map(|r| {
            let (bi, y) = (r / oh, r % oh);
            let mut acc = vec![0f32; cout * ow];
            for (o, a) in acc.chunks_mut(ow).enumerate() {
                a.fill(bias.map_or(0.0, |b| b[o]));
            }
            for ci in 0..cin {
                for ky in 0..k {
                    let src = &padded[((bi * cin + ci) * hp + y + ky) * wp..][..wp];
                    for kx in 0..k {
                        let src = &src[kx..kx + ow];
                        for (o, a) in acc.chunks_mut(ow).enumerate() {
                            let wv = weight[((o * cin + ci) * k + ky) * k + kx];
                            for (d, s) in a.iter_mut().zip(src) {
                                *d += wv * s;
                            }
                        }
                    }
                }
            }
            (bi, y, acc)
        })
        .collect();
    for (bi, y, acc) in rows.drain(..) {
        for (o, a) in acc.chunks(ow).enumerate() {
            out[((bi * cout + o) * oh + y) * ow..][..ow].copy_from_slice(a);
        }
    }
    out
}

/// A depthwise convolution (`groups == cin == cout`, weight `[c, 1, k, k]`): each channel's
/// plane convolved with its own kernel, zero-padded, any stride; one task per plane.
/// candle runs groups as one convolution each (MobileSAM's at 256²: thousands of calls).
pub fn conv_depthwise(
    x: &[f32],
    b: usize,
    g: ConvShape,
    weight: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let (k, c, s) = (g.k, g.cin, g.stride);
    let (hp, wp) = (g.h + 2 * g.pad, g.w + 2 * g.pad);
    let (oh, ow) = g.out();
    let mut out = vec![0f32; b * c * oh * ow];
    out.par_chunks_mut(oh * ow)
        .zip(x.par_chunks(g.h * g.w))
        .enumerate()
        .for_each(|(i, (dst, src))| {
            let ch = i % c;
            let mut padded = vec![0f32; hp * wp];
            for y in 0..g.h {
                padded[(y + g.pad) * wp + g.pad..][..g.w].copy_from_slice(&src[y * g.w..][..g.w]);
            }
            let kw = &weight[ch * k * k..][..k * k];
            dst.fill(bias.map_or(0.0, |b| b[ch]));
            for (y, row) in dst.chunks_mut(ow).enumerate() {
                for ky in 0..k {
                    let line = &padded[(y * s + ky) * wp..][..wp];
                    for kx in 0..k {
                        let wv = kw[ky * k + kx];
                        if s == 1 {
                            for (d, v) in row.iter_mut().zip(&line[kx..kx + ow]) {
                                *d += wv * v;
                            }
                        } else {
                            for (xo, d) in row.iter_mut().enumerate() {
                                *d += wv * line[xo * s + kx];
                            }
                        }
                    }
                }
            }
        });
    out
}

impl Conv2d {
    /// The same convolution, padded by reflection (PyTorch's `padding_mode="reflect"`).
    pub fn reflect_padded(mut self) -> Self {
        self.reflect = true;
        self
    }

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

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The same convolution with another weight `[cout, cin / groups, k, k]` and bias (a
    /// LoRA merged in), packed again for the fast kernels.
    pub fn with_weight(&self, weight: Tensor, bias: Option<Tensor>) -> candle_core::Result<Self> {
        Ok(Conv2d {
            reflect: self.reflect,
            ..conv2d_from(weight, bias, self.cfg)?
        })
    }

    /// `(cout, cin / groups, kh, kw)`.
    pub(crate) fn dims(&self) -> candle_core::Result<(usize, usize, usize, usize)> {
        match &self.weight {
            ConvWeight::Plain(w) => w.dims4(),
            ConvWeight::Packed { cout, cin, .. } => Ok((*cout, *cin, 3, 3)),
        }
    }

    /// Which fast kernel applies, if any.
    pub(crate) fn fast(&self, x: &Tensor) -> Option<Fast> {
        let c = &self.cfg;
        let (cout, cin_g, kh, kw) = self.dims().ok()?;
        let (_, cin, h, w) = x.dims4().ok()?;
        let weight_ok = match &self.weight {
            ConvWeight::Plain(w) => cpu_f32(w),
            ConvWeight::Packed { .. } => true,
        };
        let depthwise = c.groups > 1 && cin_g == 1 && cout == c.groups && cin == c.groups;
        let plain =
            (c.groups == 1 || depthwise) && c.dilation == 1 && kh == kw && cpu_f32(x) && weight_ok;
        match (kh, c.stride, c.padding) {
            _ if depthwise && plain && h + 2 * c.padding >= kh && w + 2 * c.padding >= kw => {
                Some(Fast::Depthwise)
            }
            _ if !plain || h + 2 * c.padding < kh || w + 2 * c.padding < kw => None,
            (3, 1, 1) => Some(Fast::Conv3x3),
            (1, 1, 0) => Some(Fast::Conv1x1),
            (k, 1, _) if k > 3 && cout <= FEW_OUTPUTS => Some(Fast::FewOutputs),
            _ => Some(Fast::Im2col),
        }
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let Some(l) = &self.lora else {
            return self.forward_frozen(x);
        };
        // Training a LoRA on the layer: its branch through candle's convolutions (whose
        // backward gives the branch's gradients), beside the frozen layer.
        let c = &self.cfg;
        let branch = x
            .contiguous()?
            .conv2d(
                l.down.as_tensor(),
                c.padding,
                c.stride,
                c.dilation,
                c.groups,
            )?
            .conv2d(l.up.as_tensor(), 0, 1, 1, 1)?;
        self.forward_frozen(x)? + (branch * l.scale)?
    }
}

impl Conv2d {
    /// Puts a trainable LoRA branch on the layer (`None` takes it off).
    pub fn set_lora(&mut self, lora: Option<super::LoraBranch>) {
        self.lora = lora;
    }

    /// The layer without its LoRA branch.
    pub(crate) fn forward_frozen(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // In a gradient's graph (training): one op, the engine's kernels forward, the input's
        // gradient by the engine's transposed convolution (none for the frozen weight).
        let c = &self.cfg;
        let plain_weight = match &self.weight {
            ConvWeight::Plain(w) => !w.track_op(),
            ConvWeight::Packed { .. } => true,
        };
        if x.track_op()
            && matches!(x.device(), Device::Cpu)
            && x.dtype() == DType::F32
            && plain_weight
            && (c.groups, c.dilation) == (1, 1)
            && !self.reflect
        {
            return x.contiguous()?.apply_op1(super::frozen::FrozenConv {
                layer: self.clone(),
            });
        }
        let fast = self.fast(x);
        // Reflection padding: in the direct 3×3 kernel's own padding, else padded first.
        let (_, _, h, w) = x.dims4()?;
        let own = matches!(fast, Some(Fast::Conv3x3)) && h >= 2 && w >= 2;
        if self.reflect && self.cfg.padding > 0 && !own {
            let inner = Conv2d {
                weight: self.weight.clone(),
                bias: self.bias.clone(),
                cfg: Conv2dConfig {
                    padding: 0,
                    ..self.cfg
                },
                reflect: false,
                lora: None,
            };
            return inner.forward(&reflect_pad(x, self.cfg.padding)?);
        }
        let Some(k) = fast else {
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
                conv3x3_s1_padded(
                    xs,
                    b,
                    cin,
                    h,
                    w,
                    Weights3x3::Packed(packed),
                    bias,
                    cout,
                    self.reflect,
                )
            })?,
            (ConvWeight::Plain(weight), k) => with_slice(weight, |wt| {
                with_slice(x, |xs| match k {
                    Fast::Conv3x3 => conv3x3_s1_padded(
                        xs,
                        b,
                        cin,
                        h,
                        w,
                        Weights3x3::Plain(wt),
                        bias,
                        cout,
                        self.reflect,
                    ),
                    Fast::Conv1x1 => conv1x1(xs, b, cin, h * w, wt, bias, cout),
                    Fast::Im2col => conv_im2col(xs, b, shape, wt, bias, cout),
                    Fast::FewOutputs => conv_few_outputs(xs, b, shape, wt, bias, cout),
                    Fast::Depthwise => conv_depthwise(xs, b, shape, wt, bias),
                })
            })??,
        };
        Tensor::from_vec(out, (b, cout, oh, ow), x.device())
    }
}

/// A transposed convolution (`nn.ConvTranspose2d`, groups 1, dilation 1) on the CPU in f32:
/// one matrix product of every tap's `[out, in]` weight with the input's `[in, h·w]`
/// pixels, each tap's products then added into the output at its offset (`y·stride −
/// padding + ky`). The same sums as candle's `conv_transpose2d`, several times faster (it
/// is the whole of LaMa's up-sampling: 2.2 → 0.9 s at 512²).
///
/// `x` `[b, in, h, w]`, `weight` `[in, out, k, k]` → `[b, out, (h − 1)·stride − 2·padding + k +
/// output_padding, …]`.
pub fn conv_transpose2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    output_padding: usize,
) -> candle_core::Result<Tensor> {
    let (_, cin, _, _) = x.dims4()?;
    let dims = weight.dims4()?;
    if dims.0 != cin || !cpu_f32(x) {
        let y = x.conv_transpose2d(weight, padding, output_padding, stride, 1)?;
        return match bias {
            Some(bias) => y.broadcast_add(&bias.reshape((1, (), 1, 1))?),
            None => Ok(y),
        };
    }
    let weight = weight.contiguous()?;
    with_slice(&weight, |wv| {
        conv_transpose2d_slice(x, wv, dims, bias, stride, padding, output_padding)
    })?
}

/// [`conv_transpose2d`] with the weight `[in, out, kh, kw]` (`dims`) as a slice (a frozen
/// convolution's backward unpacks its packed weight into a buffer it keeps).
pub(crate) fn conv_transpose2d_slice(
    x: &Tensor,
    wv: &[f32],
    (win, cout, kh, kw): (usize, usize, usize, usize),
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    output_padding: usize,
) -> candle_core::Result<Tensor> {
    let (b, cin, h, w) = x.dims4()?;
    if win != cin || wv.len() < win * cout * kh * kw {
        candle_core::bail!(
            "conv_transpose2d: a [{win}, {cout}, {kh}, {kw}] weight for {cin} inputs"
        )
    }
    let oh = ((h - 1) * stride + kh + output_padding).saturating_sub(2 * padding);
    let ow = ((w - 1) * stride + kw + output_padding).saturating_sub(2 * padding);
    let (kk, hw) = (kh * kw, h * w);
    let bias = bias.map(data).transpose()?;
    let x = x.contiguous()?;
    let mut out = vec![0f32; b * cout * oh * ow];
    {
        with_slice(&x, |xv| {
            // Every tap's products, `[tap][out][h·w]`.
            let mut y = uninit(kk * cout * hw);
            for bi in 0..b {
                let xb = &xv[bi * cin * hw..][..cin * hw];
                for t in 0..kk {
                    // The tap's `[out, in]` weight read in place from `[in, out, k, k]`
                    // (row stride k·k, column stride out·k·k): no permuted copy of it.
                    super::products::matmul(
                        cout,
                        hw,
                        cin,
                        &mut y[t * cout * hw..][..cout * hw],
                        hw,
                        false,
                        &wv[t..],
                        kk,
                        cout * kk,
                        xb,
                        hw,
                    );
                }
                out[bi * cout * oh * ow..(bi + 1) * cout * oh * ow]
                    .par_chunks_mut(oh * ow)
                    .enumerate()
                    .for_each(|(o, plane)| {
                        plane.fill(bias.as_ref().map_or(0.0, |b| b[o]));
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let tap = &y[((ky * kw + kx) * cout + o) * hw..][..hw];
                                for iy in 0..h {
                                    let oy = (iy * stride + ky) as isize - padding as isize;
                                    if oy < 0 || oy >= oh as isize {
                                        continue;
                                    }
                                    let row = &mut plane[oy as usize * ow..][..ow];
                                    for (ix, v) in tap[iy * w..(iy + 1) * w].iter().enumerate() {
                                        let ox = (ix * stride + kx) as isize - padding as isize;
                                        if ox >= 0 && (ox as usize) < ow {
                                            row[ox as usize] += v;
                                        }
                                    }
                                }
                            }
                        }
                    });
            }
        })?;
    }
    Tensor::from_vec(out, (b, cout, oh, ow), &Device::Cpu)
}
