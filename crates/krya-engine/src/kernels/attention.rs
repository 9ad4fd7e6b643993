//! Attention: softmax(q kᵀ · scale) v over token-major tensors, by blocks of queries with
//! an online softmax over key blocks ([`super::flash`]), or blocked products.

use candle_core::Tensor;
use rayon::prelude::*;

use super::*;

/// Lanes of the partial maxima and sums below: the compiler does not reorder reductions
/// over floats, so they are written as 16 independent ones (one vector's worth).
pub(crate) const LANES: usize = 16;

/// The largest entry of `row`, as lane-wise partial maxima (so it vectorises inside a
/// `simd_fn!`).
#[inline(always)]
pub(crate) fn row_max(row: &[f32]) -> f32 {
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
pub(crate) fn exp_sum(row: &mut [f32], max: f32) -> f32 {
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
pub(crate) const QUERY_BLOCK: usize = 128;

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
    blocked(q, k, v, shape, scale, causal, None)
}

/// What [`attention_tokens_biased`] adds to a block of scores: `(batch, head, first query,
/// scores)`, the scores `rows × m`, already scaled.
pub type ScoreBias<'a> = &'a (dyn Fn(usize, usize, usize, &mut [f32]) + Sync);

/// [`attention_tokens_gemm`] with `bias` added to each block's scores before the softmax
/// (relative positions: SAM's decomposed ones), so the scores never leave the block.
pub fn attention_tokens_biased(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: AttentionShape,
    scale: f32,
    bias: ScoreBias,
) -> Vec<f32> {
    blocked(q, k, v, shape, scale, false, Some(bias))
}

fn blocked(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: AttentionShape,
    scale: f32,
    causal: bool,
    bias: Option<ScoreBias>,
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
                if let Some(bias) = bias {
                    bias(bi, h, r0, scores);
                }
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
    let cpu = |t: &Tensor| matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32;
    if (q.track_op() || k.track_op() || v.track_op()) && cpu(q) && cpu(k) && cpu(v) {
        // Training: one recorded op, the kernel forward and a blocked backward.
        return q.contiguous()?.apply_op3(
            &k.contiguous()?,
            &v.contiguous()?,
            super::frozen::AttentionOp {
                heads,
                scale,
                causal,
            },
        );
    }
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
        // candle's fused softmax records no backward step; the composed one does.
        let p = if scores.track_op() {
            candle_nn::ops::softmax(&scores, candle_core::D::Minus1)?
        } else {
            candle_nn::ops::softmax_last_dim(&scores)?
        };
        p.matmul(&v)
    };
    let chunks = (0..n)
        .step_by(rows)
        .map(|start| attend(start, rows.min(n - start)))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Tensor::cat(&chunks, 2)?.transpose(1, 2)?.reshape((b, n, c))
}

/// `a · b` in sixteen lanes (so it vectorises).
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

simd_fn! {
    /// Each `m`-long segment of `scores` scaled and replaced by its softmax.
    fn softmax_segments(scores: &mut [f32], m: usize, scale: f32) {
        for seg in scores.chunks_mut(m) {
            seg.iter_mut().for_each(|v| *v *= scale);
            let max = row_max(seg);
            let inv = 1.0 / exp_sum(seg, max);
            seg.iter_mut().for_each(|v| *v *= inv);
        }
    }
}
