//! 3×3 stride-1 convolutions by Winograd's F(2×2, 3×3) over the padded-row layout of
//! [`super::conv3x3_s1`]: each 2×2 block of output pixels ("tile") from its 4×4 input
//! window as `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`, 16 multiplications per tile, input channel
//! and output channel instead of 36, so 2.25× fewer FLOPs than the direct kernel. The 16
//! element-wise products summed over input channels are 16 independent matrix products
//! `M[ξ] (cout × tiles) = U[ξ] (cout × cin) · V[ξ] (cin × tiles)`.
//!
//! Per task (`MC` output channels × `NB` tiles) and block of `KC` input channels:
//! the block's input windows transformed (`V`, `16 × KC × NB`, vectorised over tiles: even
//! and odd columns split first so every access is unit-stride), the block's weights
//! transformed from the direct kernel's packed copy (`U`, `16 × MC × KC`: the layer keeps
//! no second copy), then the 16 products in register tiles of 6 output channels × 4
//! vectors of tiles (the direct kernel's shape) into `M` (`16 × MC × NB`, in L2). After the
//! last block `M` is transformed back to pixels, the bias added.
//!
//! F(2×2, 3×3)'s matrices hold only 0, ±1 and ±½: its coefficients are exact in binary
//! floating point, and its transforms add a few additions' rounding to the sums' (results
//! stay within 1e-5 of the definition in f64, tested; the golden tests hold unchanged).
//! Larger tiles (F(4×4, 3×3): 4× fewer multiplications) lose digits to their ±2, ±4
//! points and are not used.

use rayon::prelude::*;

use super::SendPtr;
use super::direct::{Geometry, MR};
use super::simd::{Vector, per_isa};

/// The 16 transformed positions of a tile.
const XI: usize = 16;

/// Output channels per task (a multiple of `MR`).
const MC: usize = 8 * MR;

/// Tiles per task: `M` (`16 × MC × NB` floats) takes 393 KB of L2, and a transformed
/// weight is used by this many tiles before it is transformed again.
const NB: usize = 128;

/// Input channels per block: `V` takes 131 KB, one position's `KC × NB` (8 KB) stays in L1
/// while the task's output channels pass.
const KC: usize = 16;

/// Whether [`conv`] takes `h × w` images: even sizes (whole tiles) and enough tiles that
/// each transformed weight is used often (at 8², 16 tiles, the direct kernel is faster).
pub fn applies(h: usize, w: usize) -> bool {
    super::simd::lanes().is_some()
        && h.is_multiple_of(2)
        && w.is_multiple_of(2)
        && (h / 2) * (w / 2) >= 64
}

/// `out = conv3x3(padded, weights) + bias` as [`super::direct::conv`] computes it (same
/// arguments; `g.n` is not used), for geometries that [`applies`] to.
pub fn conv(padded: &[f32], packed: &[f32], bias: Option<&[f32]>, g: Geometry, out: &mut [f32]) {
    assert!(applies(g.h, g.w));
    let wp = g.w + 2;
    let (th, tw) = (g.h / 2, g.w / 2);
    let tiles = th * tw;
    let rows = g.cout.div_ceil(MR) * MR;
    assert!(g.cin > 0 && padded.len() >= (g.cin - 1) * g.plane + (g.h + 2) * wp);
    assert!(packed.len() >= rows * g.cin * 9 && out.len() >= g.cout * g.h * g.w);
    assert!(bias.is_none_or(|b| b.len() >= g.cout));
    let tasks: Vec<(usize, usize)> = (0..rows)
        .step_by(MC)
        .flat_map(|m0| (0..tiles).step_by(NB).map(move |t0| (m0, t0)))
        .collect();
    let out = SendPtr(out.as_mut_ptr());
    tasks
        .par_iter()
        .for_each_init(Scratch::default, |s, &(m0, t0)| {
            let (mc, nb) = (MC.min(rows - m0), NB.min(tiles - t0));
            let nbp = nb.next_multiple_of(16);
            s.m.resize(XI * mc * nbp, 0.0);
            s.v.clear();
            s.v.resize(XI * KC * nbp, 0.0);
            s.u.resize(XI * mc * KC, 0.0);
            for c0 in (0..g.cin).step_by(KC) {
                let kc = KC.min(g.cin - c0);
                for ci in 0..kc {
                    let plane = &padded[(c0 + ci) * g.plane..][..(g.h + 2) * wp];
                    let split = &mut s.split;
                    transform_input(plane, wp, tw, t0, nb, &mut s.v, ci, kc * nbp, nbp, split);
                }
                transform_weights(packed, g.cin, (m0, mc), (c0, kc), &mut s.u);
                let b = Block {
                    mc,
                    kc,
                    nbp,
                    accumulate: c0 > 0,
                };
                // SAFETY: `u` holds `16 × mc × kc`, `v` `16 × kc × nbp` and `m`
                // `16 × mc × nbp` floats, as `products` reads and writes them.
                unsafe { products(s.u.as_ptr(), s.v.as_ptr(), s.m.as_mut_ptr(), b) };
            }
            for r in 0..mc.min(g.cout.saturating_sub(m0)) {
                let co = m0 + r;
                // SAFETY: channel `co < cout` of `out` (`cout × h × w`, asserted); only this
                // task writes its tiles `t0..t0 + nb`.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(out.get().add(co * g.h * g.w), g.h * g.w)
                };
                let add = bias.map_or(0.0, |b| b[co]);
                transform_output(&s.m, mc * nbp, r * nbp, t0, nb, tw, g.w, add, dst);
            }
        });
}

/// A task's buffers, kept per thread between tasks.
#[derive(Default)]
struct Scratch {
    /// Transformed weights of one input block: `[16][mc / MR][kc][MR]`.
    u: Vec<f32>,
    /// Transformed input windows of one input block: `[16][KC][nbp]`.
    v: Vec<f32>,
    /// The products: `[16][mc][nbp]`.
    m: Vec<f32>,
    /// Even and odd columns of four input rows.
    split: Vec<f32>,
}

/// The sizes of one input block's products.
#[derive(Clone, Copy, Debug)]
struct Block {
    mc: usize,
    kc: usize,
    /// Tiles, rounded up to whole AVX-512 vectors (the extra lanes are zero).
    nbp: usize,
    /// Whether to add to what `m` holds (every block after the first).
    accumulate: bool,
}

simd_fn! {
    /// `Bᵀ d B` of tiles `t0..t0 + nb` (of `tw` a row) of one padded plane (rows `wp`
    /// apart), into `v[ξ · xi_stride + ci · nbp + lane]`. Every loop is unit-stride over
    /// tiles: the four rows' even and odd columns are split first, the row transform runs
    /// on those, the column transform pairs column `2i` with `2i + 2` (the next even one).
    fn transform_input(
        plane: &[f32],
        wp: usize,
        tw: usize,
        t0: usize,
        nb: usize,
        v: &mut [f32],
        ci: usize,
        xi_stride: usize,
        nbp: usize,
        split: &mut Vec<f32>,
    ) {
        let mut t = t0;
        while t < t0 + nb {
            let (ty, tx0) = (t / tw, t % tw);
            let len = (tw - tx0).min(t0 + nb - t);
            // Columns 2·tx0 .. 2·(tx0 + len) + 1 of rows 2·ty .. 2·ty + 3, split into
            // even and odd (`l` each): d[r][even | odd].
            let l = len + 1;
            split.resize(16 * l, 0.0);
            let (d, e) = split.split_at_mut(8 * l);
            for r in 0..4 {
                let row = &plane[(2 * ty + r) * wp + 2 * tx0..][..2 * l];
                let (even, odd) = d[2 * r * l..][..2 * l].split_at_mut(l);
                for ((x, y), p) in even.iter_mut().zip(odd.iter_mut()).zip(row.chunks_exact(2)) {
                    *x = p[0];
                    *y = p[1];
                }
            }
            // Bᵀ d on each column: rows (d0 − d2, d1 + d2, d2 − d1, d1 − d3).
            for parity in 0..2 {
                let row = |r: usize| &d[(2 * r + parity) * l..][..l];
                let (d0, d1, d2, d3) = (row(0), row(1), row(2), row(3));
                let (e0, rest) = e[parity * 4 * l..][..4 * l].split_at_mut(l);
                let (e1, rest) = rest.split_at_mut(l);
                let (e2, e3) = rest.split_at_mut(l);
                let (e0, e1, e2, e3) = (&mut e0[..l], &mut e1[..l], &mut e2[..l], &mut e3[..l]);
                for i in 0..l {
                    e0[i] = d0[i] - d2[i];
                    e1[i] = d1[i] + d2[i];
                    e2[i] = d2[i] - d1[i];
                    e3[i] = d1[i] - d3[i];
                }
            }
            // (Bᵀ d) B on each row r: columns (c0 − c2, c1 + c2, c2 − c1, c1 − c3) with
            // c0 = even[i], c1 = odd[i], c2 = even[i + 1], c3 = odd[i + 1].
            let lane0 = ci * nbp + t - t0;
            for r in 0..4 {
                let even = &e[r * l..][..l];
                let odd = &e[(4 + r) * l..][..l];
                let (c0, c2) = (&even[..len], &even[1..=len]);
                let (c1, c3) = (&odd[..len], &odd[1..=len]);
                let at = |k: usize| (r * 4 + k) * xi_stride + lane0;
                for ((x, a), b) in v[at(0)..][..len].iter_mut().zip(c0).zip(c2) {
                    *x = a - b;
                }
                for ((x, a), b) in v[at(1)..][..len].iter_mut().zip(c1).zip(c2) {
                    *x = a + b;
                }
                for ((x, a), b) in v[at(2)..][..len].iter_mut().zip(c2).zip(c1) {
                    *x = a - b;
                }
                for ((x, a), b) in v[at(3)..][..len].iter_mut().zip(c1).zip(c3) {
                    *x = a - b;
                }
            }
            t += len;
        }
    }
}

/// `G g Gᵀ` of output channels `m0..m0 + mc` and input channels `c0..c0 + kc` from the
/// direct kernel's packing (`[cout / MR][cin][9][MR]`), into `u[ξ][(co − m0) / MR][ci][MR]`.
fn transform_weights(
    packed: &[f32],
    cin: usize,
    (m0, mc): (usize, usize),
    (c0, kc): (usize, usize),
    u: &mut [f32],
) {
    let blocks = mc / MR;
    for blk in 0..blocks {
        for ci in 0..kc {
            let src = &packed[((m0 / MR + blk) * cin + c0 + ci) * 9 * MR..][..9 * MR];
            // Tap (kh, kw) of the block's MR channels: `MR` consecutive floats, so each
            // step below is one short vector operation over the channels.
            let tap = |kh: usize, kw: usize| -> [f32; MR] {
                src[(kh * 3 + kw) * MR..][..MR].try_into().unwrap()
            };
            let comb = |a: [f32; MR], b: [f32; MR], c: [f32; MR], sign: f32| -> [f32; MR] {
                std::array::from_fn(|i| 0.5 * (a[i] + sign * b[i] + c[i]))
            };
            // G g: rows (g0, (g0 + g1 + g2) / 2, (g0 − g1 + g2) / 2, g2), per column kw.
            let mut a = [[[0f32; MR]; 3]; 4];
            for kw in 0..3 {
                let (g0, g1, g2) = (tap(0, kw), tap(1, kw), tap(2, kw));
                a[0][kw] = g0;
                a[1][kw] = comb(g0, g1, g2, 1.0);
                a[2][kw] = comb(g0, g1, g2, -1.0);
                a[3][kw] = g2;
            }
            // (G g) Gᵀ: the same on each row's columns.
            for (r, a) in a.iter().enumerate() {
                let f = [
                    a[0],
                    comb(a[0], a[1], a[2], 1.0),
                    comb(a[0], a[1], a[2], -1.0),
                    a[2],
                ];
                for (k, x) in f.iter().enumerate() {
                    u[(((r * 4 + k) * blocks + blk) * kc + ci) * MR..][..MR].copy_from_slice(x);
                }
            }
        }
    }
}

simd_fn! {
    /// `Aᵀ M A + bias` of one output channel (`m[ξ · xi_stride + off + lane]`) into its
    /// pixels: tile `t` (of `tw` a row) is output rows `2·ty, 2·ty + 1`, columns
    /// `2·tx, 2·tx + 1` of `dst` (rows `w` apart).
    fn transform_output(
        m: &[f32],
        xi_stride: usize,
        off: usize,
        t0: usize,
        nb: usize,
        tw: usize,
        w: usize,
        add: f32,
        dst: &mut [f32],
    ) {
        let mut t = t0;
        while t < t0 + nb {
            let (ty, tx0) = (t / tw, t % tw);
            let len = (tw - tx0).min(t0 + nb - t);
            let lane0 = off + t - t0;
            let (top, bottom) = dst[2 * ty * w..][..2 * w].split_at_mut(w);
            let top = &mut top[2 * tx0..][..2 * len];
            let bottom = &mut bottom[2 * tx0..][..2 * len];
            for i in 0..len {
                let x = |r: usize, k: usize| m[(r * 4 + k) * xi_stride + lane0 + i];
                // M A: columns (m0 + m1 + m2, m1 − m2 − m3) of each row.
                let mut s = [[0f32; 2]; 4];
                for (r, s) in s.iter_mut().enumerate() {
                    s[0] = x(r, 0) + x(r, 1) + x(r, 2);
                    s[1] = x(r, 1) - x(r, 2) - x(r, 3);
                }
                for j in 0..2 {
                    top[2 * i + j] = s[0][j] + s[1][j] + s[2][j] + add;
                    bottom[2 * i + j] = s[1][j] - s[2][j] - s[3][j] + add;
                }
            }
            t += len;
        }
    }
}

per_isa! {
    /// `m[ξ] (+)= u[ξ] v[ξ]` for the 16 positions of one input block.
    ///
    /// # Safety
    /// The pointers hold what [`Block`] says (see the call in [`conv`]).
    unsafe fn products(u: *const f32, v: *const f32, m: *mut f32, b: Block)
        => products_body::<4, 2>
}

#[inline(always)]
unsafe fn products_body<V: Vector, const NV: usize>(
    u: *const f32,
    v: *const f32,
    m: *mut f32,
    b: Block,
) {
    let vectors = b.nbp / V::LANES;
    for xi in 0..XI {
        // SAFETY: the caller's promise; each position's operands are contiguous blocks.
        unsafe {
            let (u, v, m) = (
                u.add(xi * b.mc * b.kc),
                v.add(xi * b.kc * b.nbp),
                m.add(xi * b.mc * b.nbp),
            );
            for t in (0..vectors).step_by(NV) {
                let j = t * V::LANES;
                let (v, m) = (v.add(j), m.add(j));
                match (vectors - t).min(NV) {
                    1 => tiles::<V, 1>(u, v, m, b),
                    2 => tiles::<V, 2>(u, v, m, b),
                    3 => tiles::<V, 3>(u, v, m, b),
                    _ => tiles::<V, NV>(u, v, m, b),
                }
            }
        }
    }
}

/// The register tiles of every `MR` output channels for `NV` vectors of tiles of one
/// position: `u` is `[mc / MR][kc][MR]`, `v` `kc` rows `nbp` apart, `m` `mc` rows `nbp`
/// apart.
#[inline(always)]
unsafe fn tiles<V: Vector, const NV: usize>(u: *const f32, v: *const f32, m: *mut f32, b: Block) {
    // SAFETY (whole body): the caller's promise bounds every pointer below.
    unsafe {
        for blk in 0..b.mc / MR {
            let mut c = [[V::zero(); NV]; MR];
            let mr = m.add(blk * MR * b.nbp);
            if b.accumulate {
                for (i, row) in c.iter_mut().enumerate() {
                    for (j, acc) in row.iter_mut().enumerate() {
                        *acc = V::load(mr.add(i * b.nbp + j * V::LANES));
                    }
                }
            }
            let ub = u.add(blk * b.kc * MR);
            for ci in 0..b.kc {
                let mut x = [V::zero(); NV];
                for (j, x) in x.iter_mut().enumerate() {
                    *x = V::load(v.add(ci * b.nbp + j * V::LANES));
                }
                for (i, row) in c.iter_mut().enumerate() {
                    let a = V::splat(ub.add(ci * MR + i));
                    for (acc, x) in row.iter_mut().zip(&x) {
                        *acc = V::fma(a, *x, *acc);
                    }
                }
            }
            for (i, row) in c.iter().enumerate() {
                for (j, acc) in row.iter().enumerate() {
                    acc.store(mr.add(i * b.nbp + j * V::LANES));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Weights3x3, direct};

    /// Both vector widths against the definition: output channels not a multiple of `MR`
    /// or `MC`, input channels not a multiple of `KC`, tile rows split between tasks, tasks
    /// of fewer than `NB` tiles, non-square images.
    #[test]
    fn winograd_matches_the_definition() {
        if direct::lanes().is_none() {
            return;
        }
        let shapes = [
            (3, 7, 16, 16),
            (37, 53, 20, 30),
            (20, 100, 48, 12),
            (1, 1, 2, 256),
        ];
        for &(cin, cout, h, w) in &shapes {
            assert!(super::applies(h, w), "{cin}->{cout} at {h}x{w}");
        }
        direct::tests::check_against_definition(&shapes, 11, |p| Weights3x3::Packed(p));
    }
}
