//! What the engine's fidelity tests share.
#![allow(dead_code)] // each test binary uses some of these

use candle_core::Tensor;

/// The largest absolute difference between two tensors of one shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// How an 8-bit image differs from diffusers' (`[h, w, 3]` u8), beyond a mean of 0.5/255
/// or a maximum of 3/255; `None` when it matches.
pub fn image_differs(img: &image::RgbImage, want: &Tensor) -> Option<String> {
    let want: Vec<u8> = want.flatten_all().unwrap().to_vec1().unwrap();
    let got = img.as_raw();
    if got.len() != want.len() {
        return Some(format!("{} values, want {}", got.len(), want.len()));
    }
    let diffs: Vec<f64> = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (*a as f64 - *b as f64).abs())
        .collect();
    let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
    let max = diffs.iter().cloned().fold(0.0, f64::max);
    (mean > 0.5 || max > 3.0).then(|| format!("mean abs diff {mean:.3}/255, max {max}/255"))
}
