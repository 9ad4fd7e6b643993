//! Element-wise math that vectorises: erf, exp, exact GELU and GEGLU.

use candle_core::Tensor;
use rayon::prelude::*;

use super::*;

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
    if h.track_op() && last % 2 == 0 && h.device().is_cpu() && h.dtype() == candle_core::DType::F32
    {
        // Training: one recorded op (kernel forward, one-pass backward).
        return h.contiguous()?.apply_op1(super::frozen::GegluOp);
    }
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

/// GEGLU's backward: for rows `h = [a, g]` and the output's gradient `go` (`[rows, d]`),
/// `[go · gelu(g), go · a · gelu'(g)]` with `gelu'(x) = Φ(x) + x φ(x)`.
pub fn geglu_backward_rows(h: &[f32], go: &[f32], d: usize) -> Vec<f32> {
    let rows = h.len() / (2 * d);
    let mut out = uninit(rows * 2 * d);
    out.par_chunks_mut(2 * d)
        .zip(h.par_chunks(2 * d))
        .zip(go.par_chunks(d))
        .for_each(|((o, row), go)| geglu_backward_row(o, row, go));
    out
}

simd_fn! {
    /// One row of [`geglu_backward_rows`].
    fn geglu_backward_row(o: &mut [f32], row: &[f32], go: &[f32]) {
        let d = go.len();
        let (a, g) = row.split_at(d);
        let (da, dg) = o.split_at_mut(d);
        for i in 0..d {
            let x = g[i];
            let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
            // φ(x) = e^(−x²/2) / √(2π)
            let pdf = exp(-0.5 * x * x) * 0.398_942_3;
            da[i] = go[i] * x * cdf;
            dg[i] = go[i] * a[i] * (cdf + x * pdf);
        }
    }
}
