//! IS-Net against the reference's own modules (`tools/golden/isnet.py`): a tiny random-weight
//! IS-Net's first side output within 1e-4 on an input whose sizes pool to odd sides, and the
//! matte of a picture as `Inference.py` makes it (input, matte at the image's size).

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use image::{GrayImage, RgbImage};
use krya_engine::model::state_dict;
use krya_engine::pipelines::matte::{self, Matter, isnet};

mod common;
use common::max_abs_diff;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/matte")
}

fn reference() -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join("reference.safetensors"), &Device::Cpu).unwrap()
}

#[test]
fn isnet_matches_reference() {
    let r = reference();
    let sd = state_dict::read(&dir().join("isnet.safetensors")).unwrap();
    assert!(isnet::detect(sd.keys()));
    let net = isnet::IsNet::from_state_dict(sd).unwrap();
    let d1 = net.forward(&r["net.x"]).unwrap();
    let d = max_abs_diff(&d1, &r["net.d1"]);
    assert!(d < 1e-4, "d1 differs by {d}");
}

#[test]
fn matte_matches_inference_py() {
    let r = reference();
    let mut m = Matter::load(&dir().join("isnet.safetensors")).unwrap();
    m.size = 64;
    let bytes: Vec<u8> = r["matte.image"].flatten_all().unwrap().to_vec1().unwrap();
    let image = RgbImage::from_raw(50, 40, bytes).unwrap();
    let input = m.preprocess(&image).unwrap();
    let d = max_abs_diff(&input, &r["matte.input"]);
    // Truncating to bytes can fall either side of a whole number: one level at most.
    assert!(
        d <= 1.0 / 255.0 + 1e-6,
        "the network's input differs by {d}"
    );
    let alpha = m.alpha(&image).unwrap();
    let d = max_abs_diff(&alpha, &r["matte.alpha"]);
    assert!(d < 2e-3, "the matte differs by {d}");

    // Bytes, and the cut-out's alpha is the matte.
    let matte = m.matte(&image).unwrap();
    assert_eq!(matte.dimensions(), (50, 40));
    let a: Vec<f32> = r["matte.alpha"].flatten_all().unwrap().to_vec1().unwrap();
    let worst = matte
        .as_raw()
        .iter()
        .zip(&a)
        .map(|(&b, &v)| (b as i32 - (v * 255.0) as i32).abs())
        .max()
        .unwrap();
    assert!(worst <= 1, "matte bytes differ by {worst}");
    let cut = matte::cut_out(&image, &matte);
    assert_eq!(cut.get_pixel(3, 4).0[3], matte.get_pixel(3, 4).0[0]);
    assert_eq!(&cut.get_pixel(3, 4).0[..3], &image.get_pixel(3, 4).0);
}

#[test]
fn composite_weights_by_the_matte() {
    let fg = RgbImage::from_pixel(2, 1, image::Rgb([200, 100, 0]));
    let bg = RgbImage::from_pixel(2, 1, image::Rgb([0, 0, 255]));
    let mut matte = GrayImage::new(2, 1);
    matte.put_pixel(0, 0, image::Luma([255]));
    let out = matte::composite(&fg, &matte, &bg);
    assert_eq!(out.get_pixel(0, 0).0, [200, 100, 0]);
    assert_eq!(out.get_pixel(1, 0).0, [0, 0, 255]);
    matte.put_pixel(1, 0, image::Luma([128]));
    let half = matte::composite(&fg, &matte, &bg).get_pixel(1, 0).0;
    assert_eq!(half, [100, 50, 127]);
}
