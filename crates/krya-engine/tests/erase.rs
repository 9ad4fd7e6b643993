//! LaMa against spandrel's `FFCResNetGenerator` (`tools/golden/lama.py`): the FFT op against
//! `torch.fft` (even and odd widths, the inverse ignoring the imaginary parts of the bins
//! that must be real), the generator's output on a tiny random-weight big-lama within 1e-4,
//! and erasing an image as LaMa predicts it (pixels outside the mask exactly the input's).

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use image::{GrayImage, RgbImage};
use krya_engine::kernels::{self, fft};
use krya_engine::model::state_dict;
use krya_engine::pipelines::erase::{Eraser, lama};

mod common;
use common::max_abs_diff;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/erase")
}

fn reference() -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join("reference.safetensors"), &Device::Cpu).unwrap()
}

#[test]
fn fft_matches_torch() {
    let r = reference();
    for case in ["even", "odd"] {
        let x = &r[&format!("fft.{case}.x")];
        let spec = fft::rfft2(x).unwrap();
        let d = max_abs_diff(&spec, &r[&format!("fft.{case}.spec")]);
        assert!(d < 1e-5, "{case}: rfft2 differs by {d}");
        let w = x.dim(3).unwrap();
        let back = fft::irfft2(&spec, w).unwrap();
        let d = max_abs_diff(&back, x);
        assert!(d < 1e-5, "{case}: the round trip differs by {d}");
        let inv = fft::irfft2(&r[&format!("fft.{case}.inv_spec")], w).unwrap();
        let d = max_abs_diff(&inv, &r[&format!("fft.{case}.inv")]);
        assert!(d < 1e-5, "{case}: irfft2 differs by {d}");
    }
    // A spectrum of the wrong width is an error, not a panic.
    let s = Tensor::zeros((1, 2, 4, 3), DType::F32, &Device::Cpu).unwrap();
    assert!(fft::irfft2(&s, 10).is_err());
}

#[test]
fn reflect_pad_matches_torch_semantics() {
    let x = Tensor::arange(0f32, 12., &Device::Cpu)
        .unwrap()
        .reshape((1, 1, 3, 4))
        .unwrap();
    let p = kernels::reflect_pad(&x, 2).unwrap();
    let rows: Vec<Vec<f32>> = p.squeeze(0).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
    // F.pad(x, (2, 2, 2, 2), mode="reflect") on arange(12).view(3, 4).
    assert_eq!(rows[0], [10., 9., 8., 9., 10., 11., 10., 9.]);
    assert_eq!(rows[2], [2., 1., 0., 1., 2., 3., 2., 1.]);
    assert_eq!(rows[6], [2., 1., 0., 1., 2., 3., 2., 1.]);
    assert!(kernels::reflect_pad(&x, 3).is_err());
}

#[test]
fn lama_matches_spandrel() {
    let r = reference();
    let sd = state_dict::read(&dir().join("lama.safetensors")).unwrap();
    assert!(lama::detect(sd.keys()));
    let net = lama::Lama::from_state_dict(sd).unwrap();
    assert_eq!(net.multiple(), 8);
    let y = net.forward(&r["net.x"]).unwrap();
    let d = max_abs_diff(&y, &r["net.y"]);
    assert!(d < 1e-4, "the generator's output differs by {d}");
}

#[test]
fn erase_matches_lamas_prediction_and_keeps_the_rest() {
    let r = reference();
    let eraser = Eraser::load(&dir().join("lama.safetensors")).unwrap();
    let bytes = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    let (h, w) = (29, 37);
    let image = RgbImage::from_raw(w, h, bytes(&r["erase.image"])).unwrap();
    let mask = GrayImage::from_raw(w, h, bytes(&r["erase.mask"])).unwrap();
    let pred = RgbImage::from_raw(w, h, bytes(&r["erase.pred"])).unwrap();
    let out = eraser.erase(&image, &mask).unwrap();
    let mut worst = 0;
    for (x, y, m) in mask.enumerate_pixels() {
        let (o, i) = (out.get_pixel(x, y).0, image.get_pixel(x, y).0);
        if m.0[0] == 0 {
            assert_eq!(o, i, "({x}, {y}) is outside the mask but changed");
        } else {
            let p = pred.get_pixel(x, y).0;
            for c in 0..3 {
                worst = worst.max((o[c] as i32 - p[c] as i32).abs());
            }
        }
    }
    assert!(
        worst <= 1,
        "masked pixels differ from LaMa's by up to {worst}"
    );
    // The masked area is filled with something other than the input.
    assert_ne!(out, image);

    // Bad masks are clear errors.
    let empty = GrayImage::new(w, h);
    assert!(
        eraser
            .erase(&image, &empty)
            .unwrap_err()
            .to_string()
            .contains("nothing is masked")
    );
    let small = GrayImage::new(w - 1, h);
    assert!(
        eraser
            .erase(&image, &small)
            .unwrap_err()
            .to_string()
            .contains("differs")
    );
}
