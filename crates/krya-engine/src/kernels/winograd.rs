//! 3×3 stride-1 convolutions by Winograd's F(2×2, 3×3) over the padded-row layout of
//! [`super::conv3x3_s1`]: each 2×2 block of output pixels ("tile") from its 4×4 input
//! window as `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`, 16 multiplications per tile, input channel
//! and output channel instead of 36, so 2.25× fewer FLOPs than the direct kernel. The 16
//! element-wise products summed over input channels are 16 independent matrix products
//! `M[ξ] (cout × tiles) = U[ξ] (cout × cin) · V[ξ] (cin × tiles)`.
//!
//! Each transform is done once per call, in its own parallel phase: the weights
//! (`U`, `16 × MC × KC` per block of output and input channels, from the direct kernel's
//! packed copy: the layer keeps no second one) up front; then per chunk of tiles the input
//! windows (`V`, `16 × KC × NB` per block of tiles and input channels, vectorised over
//! tiles: even and odd columns split first so every access is unit-stride); then the
//! products, tasks of `MC` output channels × `NB` tiles summing over the input blocks in
//! register tiles of 6 output channels × 4 vectors of tiles (the direct kernel's shape)
//! into `M` (`16 × MC × NB`, in L2), transformed back to pixels with the bias at the end.
//! The products prefetch the next operands as they go (they come from L3).
//!
//! F(2×2, 3×3)'s matrices hold only 0, ±1 and ±½: its coefficients are exact in binary
//! floating point, and its transforms add a few additions' rounding to the sums' (results
//! stay within 1e-5 of the definition in f64, tested; the golden tests hold unchanged).
//! Larger tiles (F(4×4, 3×3): 4× fewer multiplications) lose digits to their ±2, ±4
//! points and are not used.

use rayon::prelude::*;

use super::SendPtr;
use super::direct::{Geometry, MR};
use super::simd::{LINE, Vector, per_isa, prefetch};

/// The 16 transformed positions of a tile.
const XI: usize = 16;

/// Output channels per task (a multiple of `MR`).
const MC: usize = 8 * MR;

/// Tiles per task: `M` (`16 × MC × NB` floats) takes 393 KB of L2.
const NB: usize = 128;

/// Input channels per block: one position's `V` (`KC × NB`, 16 KB) stays in L1 while the
/// task's output channels pass, and each register tile sums 32 channels between loading
/// and storing its accumulators (16 and 64: 5% slower at 64² and 128², as fast at 16²).
const KC: usize = 32;

/// Whether [`conv`] takes `h × w` images: even sizes (whole tiles) and enough tiles that
/// each transformed weight is used often (at 8², 16 tiles, the direct kernel is faster).
pub fn applies(h: usize, w: usize) -> bool {
    super::simd::lanes().is_some()
        && h.is_multiple_of(2)
        && w.is_multiple_of(2)
        && (h / 2) * (w / 2) >= 64
}

/// Floats of transformed input held at once (32 MB): the image's tiles go in chunks of
/// whole tile blocks whose `V` fits (at least one block). The unit tests use four slabs, so
/// their images take several chunks.
const V_CHUNK: usize = if cfg!(test) { 4 * V_SLAB } else { 1 << 23 };

/// Floats of one (tile block, input block) slab of `V`: `16 × KC × NB`.
const V_SLAB: usize = XI * KC * NB;

/// Floats of one (output block, input block) slab of `U`: `16 × MC × KC`.
const U_SLAB: usize = XI * MC * KC;

/// `out = conv3x3(padded, weights) + bias` as [`super::direct::conv`] computes it (same
/// arguments; `g.n` is not used), for geometries that [`applies`] to.
///
/// Each transform is done once: `U` for all blocks up front (when there are several tile
/// blocks to use it; with one, each task transforms its own), then per chunk of tile blocks
/// their `V` (tasks of one tile block × one input block), then the products (tasks of one
/// output block × one tile block) reading both. Transforming inside the product tasks
/// repeated `V` for every output block and `U` for every tile block: 20% of the UNet's
/// time went to those repeats.
pub fn conv(padded: &[f32], packed: &[f32], bias: Option<&[f32]>, g: Geometry, out: &mut [f32]) {
    assert!(applies(g.h, g.w));
    let wp = g.w + 2;
    let tw = g.w / 2;
    let tiles = (g.h / 2) * tw;
    let rows = g.cout.div_ceil(MR) * MR;
    assert!(g.cin > 0 && padded.len() >= (g.cin - 1) * g.plane + (g.h + 2) * wp);
    assert!(packed.len() >= rows * g.cin * 9 && out.len() >= g.cout * g.h * g.w);
    assert!(bias.is_none_or(|b| b.len() >= g.cout));
    let (mblocks, tblocks, cblocks) = (rows.div_ceil(MC), tiles.div_ceil(NB), g.cin.div_ceil(KC));
    let m_range = |mb: usize| (mb * MC, MC.min(rows - mb * MC));
    let c_range = |cb: usize| (cb * KC, KC.min(g.cin - cb * KC));
    let t_range = |tb: usize| (tb * NB, NB.min(tiles - tb * NB));
    let shared_u = (tblocks > 1).then(|| {
        // Every slab is written (16 × mc × kc floats of it) before the products read it.
        let mut u = super::uninit(mblocks * cblocks * U_SLAB);
        u.par_chunks_mut(cblocks * U_SLAB)
            .enumerate()
            .for_each_init(Vec::new, |tmp, (mb, u)| {
                let (m0, mc) = m_range(mb);
                for (cb, u) in u.chunks_mut(U_SLAB).enumerate() {
                    let (c0, kc) = c_range(cb);
                    transform_weights(packed, g.cin, m0, mc, c0, kc, u, tmp);
                }
            });
        u
    });
    let per_chunk = (V_CHUNK / (cblocks * V_SLAB)).clamp(1, tblocks);
    // Every slab's `16 × kc × nbp` floats are written (the lanes past the tiles zeroed).
    let mut v = super::uninit(per_chunk * cblocks * V_SLAB);
    let out = SendPtr(out.as_mut_ptr());
    for tb0 in (0..tblocks).step_by(per_chunk) {
        let chunk = per_chunk.min(tblocks - tb0);
        v[..chunk * cblocks * V_SLAB]
            .par_chunks_mut(V_SLAB)
            .enumerate()
            .for_each_init(Vec::new, |split, (i, slab)| {
                let ((t0, nb), (c0, kc)) = (t_range(tb0 + i / cblocks), c_range(i % cblocks));
                let nbp = nb.next_multiple_of(16);
                let slab = &mut slab[..XI * kc * nbp];
                for ci in 0..kc {
                    let plane = &padded[(c0 + ci) * g.plane..][..(g.h + 2) * wp];
                    transform_input(plane, wp, tw, t0, nb, slab, ci, kc * nbp, nbp, split);
                }
                for row in slab.chunks_exact_mut(nbp) {
                    row[nb..].fill(0.0);
                }
            });
        let tasks: Vec<(usize, usize)> = (0..mblocks)
            .flat_map(|mb| (tb0..tb0 + chunk).map(move |tb| (mb, tb)))
            .collect();
        let v = &v;
        tasks
            .par_iter()
            .for_each_init(Scratch::default, |s, &(mb, tb)| {
                let ((m0, mc), (t0, nb)) = (m_range(mb), t_range(tb));
                let nbp = nb.next_multiple_of(16);
                s.m.resize(XI * mc * nbp, 0.0);
                for cb in 0..cblocks {
                    let u = match &shared_u {
                        Some(u) => &u[(mb * cblocks + cb) * U_SLAB..][..U_SLAB],
                        None => {
                            s.u.resize(U_SLAB, 0.0);
                            let (c0, kc) = c_range(cb);
                            let (u, tmp) = (&mut s.u, &mut s.tmp);
                            transform_weights(packed, g.cin, m0, mc, c0, kc, u, tmp);
                            &s.u[..]
                        }
                    };
                    let slab = |cb: usize| ((tb - tb0) * cblocks + cb) * V_SLAB;
                    let vs = &v[slab(cb)..][..V_SLAB];
                    // The next block's operands, fetched while this one's products run.
                    let mut ahead = Ahead::NONE;
                    if cb + 1 < cblocks {
                        let (c1, k1) = c_range(cb + 1);
                        ahead.v = v[slab(cb + 1)..].as_ptr();
                        match &shared_u {
                            Some(u) => ahead.u = u[(mb * cblocks + cb + 1) * U_SLAB..].as_ptr(),
                            None => {
                                ahead.w = packed[(m0 / MR * g.cin + c1) * 9 * MR..].as_ptr();
                                ahead.w_ranges = mc / MR;
                                ahead.w_stride = g.cin * 9 * MR;
                                ahead.w_lines = k1 * 9 * MR / LINE;
                            }
                        }
                    }
                    let b = Block {
                        mc,
                        kc: c_range(cb).1,
                        nbp,
                        accumulate: cb > 0,
                    };
                    // SAFETY: `u` holds `16 × mc × kc`, `vs` `16 × kc × nbp` and `m`
                    // `16 × mc × nbp` floats, as `products` reads and writes them.
                    unsafe { products(u.as_ptr(), vs.as_ptr(), s.m.as_mut_ptr(), b, ahead) };
                }
                for r in 0..mc.min(g.cout.saturating_sub(m0)) {
                    let co = m0 + r;
                    // SAFETY: channel `co < cout` of `out` (`cout × h × w`, asserted); only
                    // this task writes its tiles `t0..t0 + nb`.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(out.get().add(co * g.h * g.w), g.h * g.w)
                    };
                    let add = bias.map_or(0.0, |b| b[co]);
                    transform_output(&s.m, mc * nbp, r * nbp, t0, nb, tw, g.w, add, dst);
                }
            });
    }
}

/// A product task's buffers, kept per thread between tasks.
#[derive(Default)]
struct Scratch {
    /// Transformed weights of one input block when not shared: `[16][mc / MR][kc][MR]`.
    u: Vec<f32>,
    /// The products: `[16][mc][nbp]`.
    m: Vec<f32>,
    /// The weight transform's gathered taps and first half.
    tmp: Vec<f32>,
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

simd_fn! {
    /// `G g Gᵀ` of output channels `m0..m0 + mc` and input channels `c0..c0 + kc` from the
    /// direct kernel's packing (`[cout / MR][cin][9][MR]`), into `u[ξ][(co − m0) / MR][ci][MR]`.
    /// Per block of `MR` output channels the taps are first gathered tap-major (`tmp`:
    /// `[9][kc · MR]`), so every step below is one vector loop over the block's `kc · MR`
    /// weights, whose `U` rows are contiguous too.
    fn transform_weights(
        packed: &[f32],
        cin: usize,
        m0: usize,
        mc: usize,
        c0: usize,
        kc: usize,
        u: &mut [f32],
        tmp: &mut Vec<f32>,
    ) {
        let (blocks, n) = (mc / MR, kc * MR);
        tmp.resize(15 * n, 0.0);
        let half = |a: f32, b: f32, c: f32, sign: f32| 0.5 * (a + sign * b + c);
        for blk in 0..blocks {
            let src = &packed[((m0 / MR + blk) * cin + c0) * 9 * MR..][..kc * 9 * MR];
            let (taps, a) = tmp.split_at_mut(9 * n);
            for (ci, s) in src.chunks_exact(9 * MR).enumerate() {
                for (k, s) in s.chunks_exact(MR).enumerate() {
                    taps[k * n + ci * MR..][..MR].copy_from_slice(s);
                }
            }
            // G g: rows (g0, (g0 + g1 + g2) / 2, (g0 − g1 + g2) / 2, g2) per column kw;
            // rows 1 and 2 computed into `a` (`[2][3][n]`), rows 0 and 3 are taps.
            let tap = |kh: usize, kw: usize| &taps[(kh * 3 + kw) * n..][..n];
            for (i, sign) in [1.0, -1.0].into_iter().enumerate() {
                for kw in 0..3 {
                    let (g0, g1, g2) = (tap(0, kw), tap(1, kw), tap(2, kw));
                    let row = &mut a[(i * 3 + kw) * n..][..n];
                    for (l, x) in row.iter_mut().enumerate() {
                        *x = half(g0[l], g1[l], g2[l], sign);
                    }
                }
            }
            // (G g) Gᵀ: the same on each row's three columns.
            for r in 0..4 {
                let col = |kw: usize| match r {
                    0 => tap(0, kw),
                    3 => tap(2, kw),
                    _ => &a[((r - 1) * 3 + kw) * n..][..n],
                };
                let (a0, a1, a2) = (col(0), col(1), col(2));
                let at = |k: usize| ((r * 4 + k) * blocks + blk) * n;
                u[at(0)..][..n].copy_from_slice(a0);
                for (l, x) in u[at(1)..][..n].iter_mut().enumerate() {
                    *x = half(a0[l], a1[l], a2[l], 1.0);
                }
                for (l, x) in u[at(2)..][..n].iter_mut().enumerate() {
                    *x = half(a0[l], a1[l], a2[l], -1.0);
                }
                u[at(3)..][..n].copy_from_slice(a2);
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
            // Sixteen tiles at a time: each position's values are contiguous, so the sums
            // run over whole vectors; only the final interleave of even and odd columns
            // shuffles.
            for i0 in (0..len).step_by(16) {
                let n = 16.min(len - i0);
                let mut x = [[0f32; 16]; XI];
                for (xi, x) in x.iter_mut().enumerate() {
                    x[..n].copy_from_slice(&m[xi * xi_stride + lane0 + i0..][..n]);
                }
                // M A: columns (m0 + m1 + m2, m1 − m2 − m3) of each row r, then Aᵀ on
                // those: output rows (s0 + s1 + s2, s1 − s2 − s3).
                let mut y = [[0f32; 16]; 4];
                for l in 0..16 {
                    let s0 = |r: usize| x[4 * r][l] + x[4 * r + 1][l] + x[4 * r + 2][l];
                    let s1 = |r: usize| x[4 * r + 1][l] - x[4 * r + 2][l] - x[4 * r + 3][l];
                    y[0][l] = s0(0) + s0(1) + s0(2) + add;
                    y[1][l] = s1(0) + s1(1) + s1(2) + add;
                    y[2][l] = s0(1) - s0(2) - s0(3) + add;
                    y[3][l] = s1(1) - s1(2) - s1(3) + add;
                }
                let (top, bottom) = (&mut top[2 * i0..][..2 * n], &mut bottom[2 * i0..][..2 * n]);
                for (row, (even, odd)) in [(top, (y[0], y[1])), (bottom, (y[2], y[3]))] {
                    for (p, (e, o)) in row.chunks_exact_mut(2).zip(even.iter().zip(&odd)) {
                        p[0] = *e;
                        p[1] = *o;
                    }
                }
            }
            t += len;
        }
    }
}

per_isa! {
    /// `m[ξ] (+)= u[ξ] v[ξ]` for the 16 positions of one input block, prefetching what
    /// comes next.
    ///
    /// # Safety
    /// The pointers hold what [`Block`] says (see the call in [`conv`]).
    unsafe fn products(u: *const f32, v: *const f32, m: *mut f32, b: Block, ahead: Ahead)
        => products_body::<4, 2>
}

/// The next input block's operands, to prefetch while one block's products run: the
/// starts of its `V` and `U` slabs (null when there is none, or no shared `U`), and when
/// its `U` is still to be transformed, the packed weights it comes from (`w_ranges`
/// blocks of `w_lines` lines, `w_stride` floats apart).
#[derive(Clone, Copy)]
struct Ahead {
    v: *const f32,
    u: *const f32,
    w: *const f32,
    w_ranges: usize,
    w_stride: usize,
    w_lines: usize,
}

impl Ahead {
    const NONE: Ahead = Ahead {
        v: std::ptr::null(),
        u: std::ptr::null(),
        w: std::ptr::null(),
        w_ranges: 0,
        w_stride: 0,
        w_lines: 0,
    };
}

/// Lines `first..first + share` of `lines` from `at` (none when `at` is null), as a
/// register tile's prefetch stream.
fn stream(at: *const f32, lines: usize, first: usize, share: usize) -> (*const f32, usize) {
    let n = if at.is_null() {
        0
    } else {
        share.min(lines.saturating_sub(first))
    };
    (at.wrapping_add(first * LINE), n)
}

/// Operands come from L3 (phase one wrote `V`, maybe on another core; `U` and the packed
/// weights are shared by every task), and their first loads stalled the register tiles (a
/// fifth of these products' time, and the weight transform of 1280 channels at 16² waited
/// on memory): each register-tile call prefetches a share of the next position's `V` and
/// `U` (the next block's at the last position) and of the next block's packed weights.
#[inline(always)]
unsafe fn products_body<V: Vector, const NV: usize>(
    u: *const f32,
    v: *const f32,
    m: *mut f32,
    b: Block,
    ahead: Ahead,
) {
    let vectors = b.nbp / V::LANES;
    let calls = vectors.div_ceil(NV) * (b.mc / MR);
    let (v_lines, u_lines) = (b.kc * b.nbp / LINE, b.mc * b.kc / LINE);
    let (v_share, u_share) = (v_lines.div_ceil(calls), u_lines.div_ceil(calls));
    let per_range = (XI * calls / ahead.w_ranges.max(1)).max(1);
    let w_share = ahead.w_lines.div_ceil(per_range);
    for xi in 0..XI {
        let (v_next, u_next) = if xi + 1 < XI {
            (
                v.wrapping_add((xi + 1) * b.kc * b.nbp),
                u.wrapping_add((xi + 1) * b.mc * b.kc),
            )
        } else {
            (ahead.v, ahead.u)
        };
        // SAFETY: the caller's promise; each position's operands are contiguous blocks.
        unsafe {
            let (u, v, m) = (
                u.add(xi * b.mc * b.kc),
                v.add(xi * b.kc * b.nbp),
                m.add(xi * b.mc * b.nbp),
            );
            let mut call = 0;
            for t in (0..vectors).step_by(NV) {
                let j = t * V::LANES;
                let (v, m) = (v.add(j), m.add(j));
                for blk in 0..b.mc / MR {
                    let g = xi * calls + call;
                    let (range, part) = (g / per_range, g % per_range);
                    let w = if range < ahead.w_ranges {
                        ahead.w.wrapping_add(range * ahead.w_stride)
                    } else {
                        std::ptr::null()
                    };
                    let pf = [
                        stream(v_next, v_lines, call * v_share, v_share),
                        stream(u_next, u_lines, call * u_share, u_share),
                        stream(w, ahead.w_lines, part * w_share, w_share),
                    ];
                    call += 1;
                    let (u, m) = (u.add(blk * b.kc * MR), m.add(blk * MR * b.nbp));
                    match (vectors - t).min(NV) {
                        1 => tile::<V, 1>(u, v, m, b, pf),
                        2 => tile::<V, 2>(u, v, m, b, pf),
                        3 => tile::<V, 3>(u, v, m, b, pf),
                        _ => tile::<V, NV>(u, v, m, b, pf),
                    }
                }
            }
        }
    }
}

/// One register tile: `MR` output channels × `NV` vectors of tiles of one position, `u`
/// its channels' `[kc][MR]` weights, `v` `kc` rows `nbp` apart, `m` `MR` rows `nbp` apart;
/// per input channel one line of each prefetch stream (start, lines).
#[inline(always)]
unsafe fn tile<V: Vector, const NV: usize>(
    u: *const f32,
    v: *const f32,
    m: *mut f32,
    b: Block,
    pf: [(*const f32, usize); 3],
) {
    // SAFETY (whole body): the caller's promise bounds every pointer below.
    unsafe {
        let mut c = [[V::zero(); NV]; MR];
        if b.accumulate {
            for (i, row) in c.iter_mut().enumerate() {
                for (j, acc) in row.iter_mut().enumerate() {
                    *acc = V::load(m.add(i * b.nbp + j * V::LANES));
                }
            }
        }
        for ci in 0..b.kc {
            for (at, lines) in pf {
                if ci < lines {
                    prefetch(at.wrapping_add(ci * LINE));
                }
            }
            let mut x = [V::zero(); NV];
            for (j, x) in x.iter_mut().enumerate() {
                *x = V::load(v.add(ci * b.nbp + j * V::LANES));
            }
            for (i, row) in c.iter_mut().enumerate() {
                let a = V::splat(u.add(ci * MR + i));
                for (acc, x) in row.iter_mut().zip(&x) {
                    *acc = V::fma(a, *x, *acc);
                }
            }
        }
        for (i, row) in c.iter().enumerate() {
            for (j, acc) in row.iter().enumerate() {
                acc.store(m.add(i * b.nbp + j * V::LANES));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Weights3x3, direct};

    /// Both vector widths against the definition: output channels not a multiple of `MR`
    /// or `MC`, input channels not a multiple of `KC`, tile rows split between tasks, tasks
    /// of fewer than `NB` tiles, non-square images; weights transformed up front (several
    /// tile blocks) and per task (one, with several input blocks), inputs in several chunks.
    #[test]
    fn winograd_matches_the_definition() {
        if direct::lanes().is_none() {
            return;
        }
        let shapes = [
            (3, 7, 16, 16),
            (40, 13, 16, 16),
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
