//! Two-dimensional real FFTs over the last two dimensions, as `torch.fft.rfftn(x,
//! dim=(-2, -1), norm="ortho")` and `torch.fft.irfftn(X, s=(h, w), dim=(-2, -1),
//! norm="ortho")` compute them (candle has no FFT): a real FFT along each row (`w` values to
//! `w/2 + 1` bins), then a complex FFT along each of those columns; the inverse in the
//! opposite order. Both are scaled by `1/√(h·w)` ("ortho"), so the pair round-trips.
//!
//! A spectrum is a real tensor `[…, 2, h, w/2 + 1]`: real parts, then imaginary parts. Flattening
//! `[n, c, 2, h, f]` into `[n, 2c, h, f]` interleaves them per channel (`c0.re, c0.im, c1.re, …`),
//! which is how LaMa's Fourier unit stacks them for its convolution.
//!
//! As NumPy and torch, the inverse ignores the imaginary parts of the bins that must be
//! real for a real signal (the first column, and the last when `w` is even).

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use realfft::RealFftPlanner;
use realfft::num_complex::Complex;

/// `[…, h, w]` → its spectrum `[…, 2, h, w/2 + 1]` (f32, CPU).
pub fn rfft2(x: &Tensor) -> candle_core::Result<Tensor> {
    let dims = x.dims().to_vec();
    let r = dims.len();
    if r < 2 {
        candle_core::bail!("rfft2 needs at least two dimensions, got {dims:?}");
    }
    let (h, w) = (dims[r - 2], dims[r - 1]);
    let f = w / 2 + 1;
    let data: Vec<f32> = x
        .flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1()?;
    let mut planner = RealFftPlanner::<f32>::new();
    let rows = planner.plan_fft_forward(w);
    let cols = rustfft_plan(h, false);
    let scale = 1.0 / ((h * w) as f32).sqrt();
    let mut out = vec![0f32; data.len() / (h * w) * 2 * h * f];
    out.par_chunks_mut(2 * h * f)
        .zip(data.par_chunks(h * w))
        .for_each(|(out, plane)| {
            let mut spec = vec![Complex::new(0f32, 0.0); h * f];
            let mut input = rows.make_input_vec();
            let mut scratch = rows.make_scratch_vec();
            for y in 0..h {
                input.copy_from_slice(&plane[y * w..(y + 1) * w]);
                rows.process_with_scratch(&mut input, &mut spec[y * f..(y + 1) * f], &mut scratch)
                    .expect("sizes match the plan");
            }
            columns(&*cols, &mut spec, h, f);
            let (re, im) = out.split_at_mut(h * f);
            for (i, c) in spec.iter().enumerate() {
                re[i] = c.re * scale;
                im[i] = c.im * scale;
            }
        });
    let mut shape = dims[..r - 2].to_vec();
    shape.extend([2, h, f]);
    Tensor::from_vec(out, shape, &Device::Cpu)
}

/// A spectrum `[…, 2, h, w/2 + 1]` → the real signal `[…, h, w]` it is the transform of.
pub fn irfft2(spec: &Tensor, w: usize) -> candle_core::Result<Tensor> {
    let dims = spec.dims().to_vec();
    let r = dims.len();
    if r < 3 || dims[r - 3] != 2 || dims[r - 1] != w / 2 + 1 {
        candle_core::bail!("irfft2 of a {dims:?} spectrum to width {w}");
    }
    let (h, f) = (dims[r - 2], dims[r - 1]);
    let data: Vec<f32> = spec
        .flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1()?;
    let mut planner = RealFftPlanner::<f32>::new();
    let rows = planner.plan_fft_inverse(w);
    let cols = rustfft_plan(h, true);
    let scale = 1.0 / ((h * w) as f32).sqrt();
    let mut out = vec![0f32; data.len() / (2 * h * f) * h * w];
    out.par_chunks_mut(h * w)
        .zip(data.par_chunks(2 * h * f))
        .for_each(|(out, planes)| {
            let (re, im) = planes.split_at(h * f);
            let mut spec: Vec<Complex<f32>> = re
                .iter()
                .zip(im)
                .map(|(&re, &im)| Complex::new(re, im))
                .collect();
            columns(&*cols, &mut spec, h, f);
            let mut output = rows.make_output_vec();
            let mut scratch = rows.make_scratch_vec();
            for y in 0..h {
                let row = &mut spec[y * f..(y + 1) * f];
                row[0].im = 0.0;
                if w % 2 == 0 {
                    row[f - 1].im = 0.0;
                }
                rows.process_with_scratch(row, &mut output, &mut scratch)
                    .expect("sizes match the plan and the real bins are real");
                for (o, v) in out[y * w..(y + 1) * w].iter_mut().zip(&output) {
                    *o = v * scale;
                }
            }
        });
    let mut shape = dims[..r - 3].to_vec();
    shape.extend([h, w]);
    Tensor::from_vec(out, shape, &Device::Cpu)
}

fn rustfft_plan(len: usize, inverse: bool) -> std::sync::Arc<dyn rustfft::Fft<f32>> {
    let direction = match inverse {
        true => rustfft::FftDirection::Inverse,
        false => rustfft::FftDirection::Forward,
    };
    rustfft::FftPlanner::<f32>::new().plan_fft(len, direction)
}

/// A complex FFT of length `h` along each of the `f` columns of `spec` (`[h, f]`, rows
/// contiguous), in place: transposed so the columns are contiguous, transformed together.
fn columns(fft: &dyn rustfft::Fft<f32>, spec: &mut [Complex<f32>], h: usize, f: usize) {
    let mut t = vec![Complex::new(0f32, 0.0); h * f];
    for y in 0..h {
        for x in 0..f {
            t[x * h + y] = spec[y * f + x];
        }
    }
    let mut scratch = vec![Complex::new(0f32, 0.0); fft.get_inplace_scratch_len()];
    fft.process_with_scratch(&mut t, &mut scratch);
    for y in 0..h {
        for x in 0..f {
            spec[y * f + x] = t[x * h + y];
        }
    }
}
