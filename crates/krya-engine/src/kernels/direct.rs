//! A direct 3×3 stride-1 convolution over the padded-row layout of [`super::conv3x3_s1`].
//!
//! In that layout tap `(kh, kw)` of output pixel `p` reads input `p + kh·(w + 2) + kw` of
//! each channel's plane, so a tile of `NV` vectors of consecutive output pixels needs, per
//! input channel and tap, `NV` plain (unaligned) loads: no im2col, no packing of the
//! input. The weights are packed once per layer into `[cout / MR][cin][9][MR]`, so the
//! `MR` output channels of a register tile read one small contiguous block per channel.
//!
//! The register tile is `MR` output channels × `NV` vectors of pixels (`MR · NV`
//! accumulators: 6 × 4 zmm with AVX-512, 6 × 2 ymm with AVX2), each step one broadcast
//! weight against the pixel vectors. Around it the usual blocking: input channels in
//! blocks of `KC`, so one pixel tile's input rows (`KC × 3 × (16 · NV + 2)` floats) stay in L1
//! while every `MR`-block of the task's output channels passes over them, and the task's
//! weights for that block (`MC × KC × 9`) stay in L2 while its pixel tiles pass.
//! Tasks are (output channels, pixels) rectangles, run on Rayon's threads.
//!
//! The matrix-library path did nine products of `k = cin`, each reading and writing the
//! whole output and repacking both operands.

use rayon::prelude::*;

use super::SendPtr;
use super::simd::{Vector, per_isa};

/// Output channels per register tile.
pub const MR: usize = 6;

/// Input channels per block: one pixel tile's input rows (`KC × 3 × 5` cache lines with
/// AVX-512) and a register tile's weights (`MR × KC × 9` floats) take 19 KB of L1.
/// Measured on a Zen 4 (32 KB L1): 16 beat 8 and 32 at the UNet's shapes.
const KC: usize = 16;

/// Output channels per task (a multiple of `MR`): their weights for one input block
/// (`MC × KC × 9` floats, 55 KB) stay in L2 while the task's pixel tiles pass.
const MC: usize = 16 * MR;

/// Pixels per task at most: the task's accumulator (`MC × NC`, 196 KB) stays in L2
/// across input blocks.
const NC: usize = 512;

/// Weights `[cout, cin, 3, 3]` packed for the kernel: `[cout.div_ceil(MR)][cin][9][MR]`,
/// the missing channels of the last block zero.
pub fn pack(weight: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    assert_eq!(weight.len(), cout * cin * 9);
    let blocks = cout.div_ceil(MR);
    let mut packed = vec![0.0; blocks * cin * 9 * MR];
    for (co, w) in weight.chunks_exact(cin * 9).enumerate() {
        let (blk, i) = (co / MR, co % MR);
        for (ct, v) in w.iter().enumerate() {
            packed[(blk * cin * 9 + ct) * MR + i] = *v;
        }
    }
    packed
}

/// The `[cout, cin, 3, 3]` weights back from [`pack`].
pub fn unpack(packed: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    let mut weight = super::uninit(cout * cin * 9);
    unpack_into(packed, cout, cin, &mut weight);
    weight
}

/// [`unpack`] into `weight` (`cout · cin · 9` floats), an output channel per task.
pub fn unpack_into(packed: &[f32], cout: usize, cin: usize, weight: &mut [f32]) {
    use rayon::prelude::*;
    weight[..cout * cin * 9]
        .par_chunks_exact_mut(cin * 9)
        .enumerate()
        .for_each(|(co, w)| {
            let (blk, i) = (co / MR, co % MR);
            for (ct, v) in w.iter_mut().enumerate() {
                *v = packed[(blk * cin * 9 + ct) * MR + i];
            }
        });
}

pub use super::simd::lanes;

/// The geometry of one convolution: `cin` planes `plane` floats apart holding `h + 2`
/// rows of `w + 2` (the input with its zero border), `cout` output channels; `n` pixels
/// of `h` rows of `w + 2` are computed per channel (`n ≥ h · (w + 2)`, a multiple of
/// [`lanes`]) and the two border columns of each row dropped.
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    pub cin: usize,
    pub cout: usize,
    pub plane: usize,
    pub h: usize,
    pub w: usize,
    pub n: usize,
}

/// `out[co][y][x] = bias[co] + Σ_ci,kh,kw weight[co][ci][kh][kw] · input[ci][y + kh][x + kw]`
/// over the padded input, the weights `packed` by [`pack`]; `out` is `cout × h × w`.
///
/// `padded` must hold `(cin - 1) · plane + 2 · (w + 2) + 2 + n` floats.
pub fn conv(padded: &[f32], packed: &[f32], bias: Option<&[f32]>, g: Geometry, out: &mut [f32]) {
    let rows = g.cout.div_ceil(MR) * MR;
    let wp = g.w + 2;
    let lanes = lanes().expect("the direct kernel needs AVX2 or AVX-512");
    // Task sizes go in steps of 4 vectors (an AVX-512 tile).
    let nr = 4 * lanes;
    assert!(g.n.is_multiple_of(lanes) && g.n >= g.h * wp);
    assert!(g.cin > 0 && padded.len() >= (g.cin - 1) * g.plane + 2 * wp + 2 + g.n);
    assert!(packed.len() >= rows * g.cin * 9 && out.len() >= g.cout * g.h * g.w);
    assert!(bias.is_none_or(|b| b.len() >= g.cout));
    // Pixels per task: enough tasks for every thread, at most NC.
    let threads = rayon::current_num_threads();
    let cgroups = rows.div_ceil(MC);
    let mut nc = (g.n.div_ceil(nr).div_ceil(8) * nr).min(NC);
    while nc > nr && cgroups * g.n.div_ceil(nc) < 4 * threads {
        nc = (nc / nr).div_ceil(2) * nr;
    }
    let tasks: Vec<(usize, usize)> = (0..rows)
        .step_by(MC)
        .flat_map(|m0| (0..g.n).step_by(nc).map(move |n0| (m0, n0)))
        .collect();
    let out = SendPtr(out.as_mut_ptr());
    tasks
        .par_iter()
        .for_each_init(Vec::new, |acc: &mut Vec<f32>, &(m0, n0)| {
            let (mm, nn) = (MC.min(rows - m0), nc.min(g.n - n0));
            // Every element is written by the first input-channel block before it is read.
            acc.resize(mm * nn, 0.0);
            // SAFETY: the reads stay within `padded` and `packed` by the asserts above,
            // the writes within `acc` (`mm × nn`).
            unsafe {
                task(
                    padded.as_ptr(),
                    packed.as_ptr(),
                    g,
                    (acc.as_mut_ptr(), nn),
                    (m0, mm),
                    (n0, nn),
                )
            };
            // The task's pixels `n0..n0 + nn` of rows `m0..`, without the border columns.
            for (r, a) in acc
                .chunks_exact(nn)
                .enumerate()
                .take(g.cout.saturating_sub(m0))
            {
                let co = m0 + r;
                let add = bias.map_or(0.0, |b| b[co]);
                let mut p = n0;
                while p < (n0 + nn).min(g.h * wp) {
                    let (y, x) = (p / wp, p % wp);
                    let seg = (wp - x).min(n0 + nn - p);
                    let keep = seg.min(g.w.saturating_sub(x));
                    // SAFETY: pixel (y, x..x + keep) of channel `co < cout` is within `out`
                    // (asserted), and only this task writes this channel's pixels `n0..`.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(
                            out.get().add((co * g.h + y) * g.w + x),
                            keep,
                        )
                    };
                    for (d, s) in dst.iter_mut().zip(&a[p - n0..p - n0 + keep]) {
                        *d = s + add;
                    }
                    p += seg;
                }
            }
        });
}

per_isa! {
    /// One task: output rows `m0..m0 + mm` (multiples of `MR`), pixels `n0..n0 + nn`.
    ///
    /// # Safety
    /// As asserted by [`conv`]; no other thread writes the task's rectangle.
    unsafe fn task(
        x: *const f32,
        w: *const f32,
        g: Geometry,
        acc: (*mut f32, usize),
        m: (usize, usize),
        p: (usize, usize),
    ) => task_body::<4, 2>
}

/// The blocked loops of one task (see the module docs), `NV` vectors per tile.
#[inline(always)]
unsafe fn task_body<V: Vector, const NV: usize>(
    x: *const f32,
    w: *const f32,
    g: Geometry,
    (acc, ld): (*mut f32, usize),
    (m0, mm): (usize, usize),
    (n0, nn): (usize, usize),
) {
    let nr = V::LANES * NV;
    for c0 in (0..g.cin).step_by(KC) {
        let kc = KC.min(g.cin - c0);
        for p0 in (n0..n0 + nn).step_by(nr) {
            // The last tile of a task may have fewer vectors.
            let nv = (n0 + nn - p0).min(nr) / V::LANES;
            for r0 in (m0..m0 + mm).step_by(MR) {
                let args = (
                    // SAFETY: the caller's promise; `r0` is a multiple of `MR`.
                    unsafe { x.add(c0 * g.plane + p0) },
                    unsafe { w.add((r0 / MR * g.cin + c0) * 9 * MR) },
                    unsafe { acc.add((r0 - m0) * ld + p0 - n0) },
                    ld,
                );
                // SAFETY: as above.
                unsafe {
                    match nv {
                        1 => tile::<V, 1>(args, g, kc, c0 > 0),
                        2 => tile::<V, 2>(args, g, kc, c0 > 0),
                        3 => tile::<V, 3>(args, g, kc, c0 > 0),
                        _ => tile::<V, NV>(args, g, kc, c0 > 0),
                    }
                }
            }
        }
    }
}

/// One register tile: `MR` output rows × `NV` vectors from `acc` (row stride `ld`),
/// over `kc` input channels from `x` (planes `g.plane` apart) and their packed weights
/// `w`; adds to what `acc` holds when `accumulate`.
#[inline(always)]
unsafe fn tile<V: Vector, const NV: usize>(
    (x, w, acc, ld): (*const f32, *const f32, *mut f32, usize),
    g: Geometry,
    kc: usize,
    accumulate: bool,
) {
    // SAFETY (whole body): the caller's promise bounds every pointer below.
    unsafe {
        let mut c = [[V::zero(); NV]; MR];
        if accumulate {
            for (i, row) in c.iter_mut().enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = V::load(acc.add(i * ld + j * V::LANES));
                }
            }
        }
        let wp = g.w + 2;
        let offsets = [0, 1, 2, wp, wp + 1, wp + 2, 2 * wp, 2 * wp + 1, 2 * wp + 2];
        for ci in 0..kc {
            let (xc, wc) = (x.add(ci * g.plane), w.add(ci * 9 * MR));
            for (tap, off) in offsets.iter().enumerate() {
                let mut xv = [V::zero(); NV];
                for (j, v) in xv.iter_mut().enumerate() {
                    *v = V::load(xc.add(off + j * V::LANES));
                }
                for (i, row) in c.iter_mut().enumerate() {
                    let b = V::splat(wc.add(tap * MR + i));
                    for (v, xj) in row.iter_mut().zip(&xv) {
                        *v = V::fma(*xj, b, *v);
                    }
                }
            }
        }
        for (i, row) in c.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                v.store(acc.add(i * ld + j * V::LANES));
            }
        }
    }
}

#[cfg(test)]
pub mod tests {
    /// The convolution by its definition, in f64.
    fn reference(
        x: &[f32],
        wt: &[f32],
        bias: &[f32],
        (cin, cout, h, w): (usize, usize, usize, usize),
    ) -> Vec<f64> {
        let mut out = vec![0f64; cout * h * w];
        for co in 0..cout {
            for y in 0..h {
                for xx in 0..w {
                    let mut s = bias[co] as f64;
                    for ci in 0..cin {
                        for kh in 0..3 {
                            for kw in 0..3 {
                                let (iy, ix) =
                                    ((y + kh).wrapping_sub(1), (xx + kw).wrapping_sub(1));
                                if iy < h && ix < w {
                                    s += wt[((co * cin + ci) * 3 + kh) * 3 + kw] as f64
                                        * x[(ci * h + iy) * w + ix] as f64;
                                }
                            }
                        }
                    }
                    out[(co * h + y) * w + xx] = s;
                }
            }
        }
        out
    }

    /// `conv3x3_s1` with the weights as `weights` makes them from the packed ones, at both
    /// vector widths, against the definition on random data, for each `(cin, cout, h, w)`.
    pub fn check_against_definition(
        shapes: &[(usize, usize, usize, usize)],
        mut seed: u64,
        weights: for<'a> fn(&'a [f32]) -> super::super::Weights3x3<'a>,
    ) {
        use super::super::{conv3x3_s1, simd};
        let mut rnd = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        for &(cin, cout, h, w) in shapes {
            let x: Vec<f32> = (0..cin * h * w).map(|_| rnd()).collect();
            let wt: Vec<f32> = (0..cout * cin * 9).map(|_| rnd()).collect();
            let bias: Vec<f32> = (0..cout).map(|_| rnd()).collect();
            let want = reference(&x, &wt, &bias, (cin, cout, h, w));
            let packed = super::pack(&wt, cout, cin);
            let conv = || conv3x3_s1(&x, 1, cin, h, w, weights(&packed), Some(&bias), cout);
            for (avx2, got) in [(false, conv()), (true, simd::with_avx2(conv))] {
                assert_eq!(got.len(), want.len());
                for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (*g as f64 - e).abs() < 1e-5 * (1.0 + e.abs()) * (cin as f64).sqrt(),
                        "{cin}->{cout} at {h}x{w} (avx2 {avx2}): [{i}] {g} vs {e}"
                    );
                }
            }
        }
    }

    /// Both vector widths against the definition: output channels not a multiple of `MR`,
    /// input channels not a multiple of `KC`, tasks ending in tiles of 1 to 3 vectors,
    /// one-pixel images.
    #[test]
    fn direct_kernel_matches_the_definition() {
        if super::lanes().is_none() {
            return;
        }
        let shapes = [
            (3, 7, 5, 9),
            (37, 13, 11, 4),
            (20, 6, 1, 1),
            (17, 100, 12, 30),
            (2, 1, 2, 70),
        ];
        check_against_definition(&shapes, 7, |p| super::super::Weights3x3::PackedDirect(p));
    }
}
