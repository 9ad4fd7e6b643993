//! Attention without a score matrix in memory: softmax(q kᵀ · scale) v for one head and
//! block of queries at a time, over blocks of keys, with the softmax computed online
//! (the running maximum and sum of each query row, the output rescaled when the maximum
//! grows), as FlashAttention does on GPUs.
//!
//! Per task (a head and `QB` queries) and block of `KB` keys:
//! 1. `s = q kᵀ` (`QB × KB`, in L2): register tiles of `MR` queries × `NV` vectors of
//!    keys, one broadcast query element against the key vectors per step, over `d`. The
//!    keys are transposed once per head into tiles of `KT` keys (`[m / KT][d][KT]`), so a
//!    register tile's keys are one contiguous 16 KB block that stays in L1 (a plain
//!    `[d][m]` transpose put its rows 16 KB apart, all in the same L1 sets).
//! 2. Per row: the block's maximum, `p = e^(s − max)` in place, the running sum; the
//!    row's output scaled by `e^(old max − new max)` when it grew.
//! 3. `o += p v` (`QB × d`): register tiles of `MR` queries × `NV` vectors of `d`, one
//!    broadcast `p` against a row of `v` per key (values copied per head, rows `d` apart).
//!
//! The scale is folded into the packed queries. The matrix-library path computed the
//! whole `QB × m` score block (2 MB at 4096 keys), repacked both operands of both products
//! per block, and soft-maxed it in a separate pass.

use rayon::prelude::*;

use super::simd::{Vector, per_isa};
use super::{AttentionShape, SendPtr, exp, exp_sum, row_max};

/// Queries per register tile.
const MR: usize = 6;

/// Queries per task (a multiple of `MR`): their scaled queries (`QB × d`, 12 KB at
/// `d = 64`) stay in L1 beside a tile of keys. Measured on a Zen 4 at 4096 tokens: 48 beat
/// 96 (167 against 147 GFLOP/s at `KB` = 256).
const QB: usize = 8 * MR;

/// Keys per tile of the transposed keys (`d × KT`, 16 KB at `d = 64`: a register tile's
/// keys, contiguous, so they stay in L1 while the query rows pass).
const KT: usize = 64;

/// Keys per block (a multiple of `KT`): the scores of a task's block (`QB × KB`, 48 KB) and
/// the block's values (`KB × d`, 64 KB at `d = 64`) stay in L2. Measured as for `QB`: 64
/// and 128 were slower (143, 151 GFLOP/s), 512 the same.
const KB: usize = 256;

/// Whether [`attention`] runs `m` keys of heads of `d`: AVX2 (or AVX-512), `d` a multiple
/// of 8 (AVX-512 runs heads whose `d` is a multiple of 16, AVX2 the others), and more than
/// one key block. With one block or less (77 prompt tokens) the online softmax has nothing
/// to save and its per-head copies cost more than they do (cross-attention at 4096 × 77:
/// 4.1 against 3.7 ms for the blocked matrix-library path).
pub fn applies(m: usize, d: usize) -> bool {
    super::simd::lanes().is_some() && d.is_multiple_of(8) && m > KB
}

/// softmax(q kᵀ · scale) v, token-major as [`super::attention_tokens`] (no causal mask);
/// needs [`applies`]`(m, d)`.
pub fn attention(q: &[f32], k: &[f32], v: &[f32], shape: AttentionShape, scale: f32) -> Vec<f32> {
    let AttentionShape { b, n, m, heads, d } = shape;
    let c = heads * d;
    assert!(applies(m, d));
    assert!(q.len() >= b * n * c && k.len() >= b * m * c && v.len() >= b * m * c);
    // Keys transposed per head in tiles of `KT`: key `j`, element `dd` at
    // `kt[bh][j / KT][dd][j % KT]`, the last tile padded with zero keys; values per head
    // as `vp[bh][j][dd]`. Each a plain copy (m · c floats), beside n · m · c of work.
    let tiles = m.div_ceil(KT);
    let mut kt = vec![0f32; b * heads * tiles * d * KT];
    let mut vp = super::uninit(b * heads * m * d);
    kt.par_chunks_mut(tiles * d * KT)
        .zip(vp.par_chunks_mut(m * d))
        .enumerate()
        .for_each(|(bh, (kt, vp))| {
            let (bi, h) = (bh / heads, bh % heads);
            for j in 0..m {
                let row = (bi * m + j) * c + h * d;
                let tile = &mut kt[(j / KT) * d * KT + j % KT..];
                for (dd, x) in k[row..][..d].iter().enumerate() {
                    tile[dd * KT] = *x;
                }
                vp[j * d..][..d].copy_from_slice(&v[row..][..d]);
            }
        });
    let mut out = super::uninit(b * n * c);
    let blocks = n.div_ceil(QB);
    let tasks: Vec<(usize, usize)> = (0..b * heads)
        .flat_map(|bh| (0..blocks).map(move |blk| (bh, blk)))
        .collect();
    let out_ptr = SendPtr(out.as_mut_ptr());
    tasks
        .into_par_iter()
        .for_each_init(Scratch::default, |s, (bh, blk)| {
            let (bi, h) = (bh / heads, bh % heads);
            let r0 = blk * QB;
            let rows = QB.min(n - r0);
            let rp = rows.next_multiple_of(MR);
            let kb = KB.min(tiles * KT);
            s.q.clear();
            s.q.resize(rp * d, 0.0);
            for r in 0..rows {
                let src = &q[(bi * n + r0 + r) * c + h * d..][..d];
                for (x, y) in s.q[r * d..][..d].iter_mut().zip(src) {
                    *x = y * scale;
                }
            }
            s.s.resize(rp * kb, 0.0);
            s.o.clear();
            s.o.resize(rp * d, 0.0);
            s.max.clear();
            s.max.resize(rp, f32::NEG_INFINITY);
            s.sum.clear();
            s.sum.resize(rp, 0.0);
            let kt = &kt[bh * tiles * d * KT..][..tiles * d * KT];
            let vp = &vp[bh * m * d..][..m * d];
            for j0 in (0..m).step_by(kb) {
                let keys = kb.min(m - j0);
                let geometry = Block {
                    rows: rp,
                    d,
                    keys,
                    s_stride: kb,
                };
                // SAFETY: `s.q` is `rp × d`, `kt` holds whole tiles of keys `j0..j0 + keys`
                // (`j0` a multiple of `KT`), `s.s` is `rp × kb`, `s.o` is `rp × d`, and `vp`
                // holds keys `j0..j0 + keys` (rows `d` apart).
                unsafe {
                    scores(
                        s.q.as_ptr(),
                        kt.as_ptr().add(j0 * d),
                        s.s.as_mut_ptr(),
                        geometry,
                    );
                }
                online_softmax(&mut s.s, &mut s.o, &mut s.max, &mut s.sum, kb, keys, d);
                // SAFETY: as above.
                unsafe {
                    accumulate(
                        s.s.as_ptr(),
                        vp.as_ptr().add(j0 * d),
                        s.o.as_mut_ptr(),
                        geometry,
                    );
                }
            }
            for r in 0..rows {
                let inv = 1.0 / s.sum[r];
                // SAFETY: row `r0 + r` of batch `bi`, head `h`'s `d` columns: within `out`
                // (`b · n · c`), and only this task writes them.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(
                        out_ptr.get().add((bi * n + r0 + r) * c + h * d),
                        d,
                    )
                };
                for (x, y) in dst.iter_mut().zip(&s.o[r * d..][..d]) {
                    *x = y * inv;
                }
            }
        });
    out
}

/// A task's buffers, kept per thread between tasks.
#[derive(Default)]
struct Scratch {
    /// Queries × scale, `rp × d`.
    q: Vec<f32>,
    /// Scores, then probabilities, of one key block: `rp × kb`.
    s: Vec<f32>,
    /// Unnormalised output: `rp × d`.
    o: Vec<f32>,
    /// Running maximum and sum of each row.
    max: Vec<f32>,
    sum: Vec<f32>,
}

/// The sizes and strides of one key block's products.
#[derive(Clone, Copy, Debug)]
struct Block {
    /// Query rows (a multiple of `MR`), the head's width, keys in the block.
    rows: usize,
    d: usize,
    keys: usize,
    /// Row stride of the scores.
    s_stride: usize,
}

simd_fn! {
    /// Turns one block's scores (`s`, rows `kb` apart, the first `keys` of each valid) into
    /// `e^(s − max)` against each row's running maximum, updating the maxima and sums and
    /// rescaling the rows of `o` (`d` wide) whose maximum grew.
    fn online_softmax(
        s: &mut [f32],
        o: &mut [f32],
        max: &mut [f32],
        sum: &mut [f32],
        kb: usize,
        keys: usize,
        d: usize,
    ) {
        for (r, row) in s.chunks_exact_mut(kb).enumerate() {
            let row = &mut row[..keys];
            let block_max = row_max(row);
            let new = max[r].max(block_max);
            if new > max[r] {
                // The first block: max is -inf, sum and o are 0, and so stay.
                let alpha = exp(max[r] - new);
                sum[r] *= alpha;
                o[r * d..][..d].iter_mut().for_each(|x| *x *= alpha);
                max[r] = new;
            }
            let total = exp_sum(row, new);
            sum[r] += total;
        }
    }
}

per_isa! {
    /// `s = q kᵀ` for one key block: `q` is `rows × d`, `kt` the block's first tile of
    /// transposed keys (whole tiles, zero past the last key).
    ///
    /// # Safety
    /// The pointers hold what [`Block`] says.
    unsafe fn scores(q: *const f32, kt: *const f32, s: *mut f32, g: Block) => scores_body::<4, 2>
}

#[inline(always)]
unsafe fn scores_body<V: Vector, const NV: usize>(
    q: *const f32,
    kt: *const f32,
    s: *mut f32,
    g: Block,
) {
    let vectors = g.keys.div_ceil(V::LANES);
    // `NV` vectors divide a tile, so a register tile never straddles two.
    debug_assert!(KT.is_multiple_of(NV * V::LANES));
    for t in (0..vectors).step_by(NV) {
        let j = t * V::LANES;
        // SAFETY: the caller's promise.
        unsafe {
            let kt = kt.add(j / KT * g.d * KT + j % KT);
            match (vectors - t).min(NV) {
                1 => scores_tiles::<V, 1>(q, kt, s.add(j), g),
                2 => scores_tiles::<V, 2>(q, kt, s.add(j), g),
                3 => scores_tiles::<V, 3>(q, kt, s.add(j), g),
                _ => scores_tiles::<V, NV>(q, kt, s.add(j), g),
            }
        }
    }
}

/// The score tiles of all query rows for `NV` vectors of keys.
#[inline(always)]
unsafe fn scores_tiles<V: Vector, const NV: usize>(
    q: *const f32,
    kt: *const f32,
    s: *mut f32,
    g: Block,
) {
    // SAFETY (whole body): the caller's promise bounds every pointer below.
    unsafe {
        for r0 in (0..g.rows).step_by(MR) {
            let mut c = [[V::zero(); NV]; MR];
            let qr = q.add(r0 * g.d);
            for dd in 0..g.d {
                let mut kv = [V::zero(); NV];
                for (j, x) in kv.iter_mut().enumerate() {
                    *x = V::load(kt.add(dd * KT + j * V::LANES));
                }
                for (i, row) in c.iter_mut().enumerate() {
                    let a = V::splat(qr.add(i * g.d + dd));
                    for (acc, x) in row.iter_mut().zip(&kv) {
                        *acc = V::fma(a, *x, *acc);
                    }
                }
            }
            for (i, row) in c.iter().enumerate() {
                for (j, acc) in row.iter().enumerate() {
                    acc.store(s.add((r0 + i) * g.s_stride + j * V::LANES));
                }
            }
        }
    }
}

per_isa! {
    /// `o += p v` for one key block: `p` is `rows × keys` (rows `s_stride` apart), `v` the
    /// block's first value row (`keys` rows of `d`), `o` is `rows × d`.
    ///
    /// # Safety
    /// The pointers hold what [`Block`] says.
    unsafe fn accumulate(p: *const f32, v: *const f32, o: *mut f32, g: Block)
        => accumulate_body::<4, 2> if g.d.is_multiple_of(16)
}

#[inline(always)]
unsafe fn accumulate_body<V: Vector, const NV: usize>(
    p: *const f32,
    v: *const f32,
    o: *mut f32,
    g: Block,
) {
    let vectors = g.d / V::LANES;
    for t in (0..vectors).step_by(NV) {
        let x = t * V::LANES;
        // SAFETY: the caller's promise.
        unsafe {
            match (vectors - t).min(NV) {
                1 => accumulate_tiles::<V, 1>(p, v.add(x), o.add(x), g),
                2 => accumulate_tiles::<V, 2>(p, v.add(x), o.add(x), g),
                3 => accumulate_tiles::<V, 3>(p, v.add(x), o.add(x), g),
                _ => accumulate_tiles::<V, NV>(p, v.add(x), o.add(x), g),
            }
        }
    }
}

/// The output tiles of all query rows for `NV` vectors of the head's columns.
#[inline(always)]
unsafe fn accumulate_tiles<V: Vector, const NV: usize>(
    p: *const f32,
    v: *const f32,
    o: *mut f32,
    g: Block,
) {
    // SAFETY (whole body): the caller's promise bounds every pointer below.
    unsafe {
        for r0 in (0..g.rows).step_by(MR) {
            let mut c = [[V::zero(); NV]; MR];
            for (i, row) in c.iter_mut().enumerate() {
                for (j, acc) in row.iter_mut().enumerate() {
                    *acc = V::load(o.add((r0 + i) * g.d + j * V::LANES));
                }
            }
            let pr = p.add(r0 * g.s_stride);
            for key in 0..g.keys {
                let mut vv = [V::zero(); NV];
                for (j, x) in vv.iter_mut().enumerate() {
                    *x = V::load(v.add(key * g.d + j * V::LANES));
                }
                for (i, row) in c.iter_mut().enumerate() {
                    let a = V::splat(pr.add(i * g.s_stride + key));
                    for (acc, x) in row.iter_mut().zip(&vv) {
                        *acc = V::fma(a, *x, *acc);
                    }
                }
            }
            for (i, row) in c.iter().enumerate() {
                for (j, acc) in row.iter().enumerate() {
                    acc.store(o.add((r0 + i) * g.d + j * V::LANES));
                }
            }
        }
    }
}
