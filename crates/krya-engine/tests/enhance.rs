//! The enhancer from file bytes to PNG bytes with the tiny compact model (×4): sizes for
//! every scale, the model's values, alpha upscaled and kept, 16-bit kept, EXIF
//! orientation applied, the colour profile carried over, and bad requests refused.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use image::{ImageEncoder, Rgb, Rgba};
use krya_engine::CancelToken;
use krya_engine::pipelines::upscale::enhance::{self, EnhanceOptions, plan};
use krya_engine::pipelines::upscale::tile::{Alpha, TileOptions};
use krya_engine::pipelines::upscale::{LoadOptions, Upscaler};

fn model(file: &str) -> Upscaler {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/upscale")
        .join(file);
    Upscaler::load(&path, &LoadOptions::default()).unwrap()
}

fn options(scale: usize) -> EnhanceOptions {
    EnhanceOptions {
        scale,
        tile: TileOptions {
            tile: 16,
            overlap: 8,
            blend: true,
        },
        ..Default::default()
    }
}

/// Runs the enhancer on `bytes`; the decoded PNG output.
fn run(m: &Upscaler, bytes: &[u8], o: &EnhanceOptions) -> (Vec<u8>, image::DynamicImage) {
    let input = enhance::decode(bytes, o.max_input_pixels).unwrap();
    let mut out = Vec::new();
    let mut last = (0, 0);
    enhance::enhance(
        m,
        &input,
        o,
        &CancelToken::new(),
        &mut |d, t| last = (d, t),
        &mut out,
    )
    .unwrap();
    assert_eq!(last.0, last.1, "progress ends at its total");
    let img = image::load_from_memory_with_format(&out, image::ImageFormat::Png).unwrap();
    (out, img)
}

fn png(img: &image::DynamicImage) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

fn test_image(w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            (x * 255 / w) as u8,
            (y * 255 / h) as u8,
            ((x * 7 + y * 3) % 256) as u8,
        ])
    })
}

/// The model's own output for an 8-bit RGB image, as 8-bit values.
fn direct(m: &Upscaler, img: &image::RgbImage) -> Vec<u8> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let planes: Vec<f32> = (0..3)
        .flat_map(|c| img.pixels().map(move |p| p.0[c] as f32 / 255.0))
        .collect();
    let x = Tensor::from_vec(planes, (1, 3, h, w), &Device::Cpu).unwrap();
    let y = m.net.forward(&x).unwrap().clamp(0f32, 1f32).unwrap();
    let (_, _, oh, ow) = y.dims4().unwrap();
    let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
    let mut out = vec![0u8; oh * ow * 3];
    for c in 0..3 {
        for i in 0..oh * ow {
            out[i * 3 + c] = (v[c * oh * ow + i] * 255.0).round() as u8;
        }
    }
    out
}

#[test]
fn scales_and_values() {
    let m = model("compact.safetensors");
    let img = test_image(30, 22);
    let bytes = png(&image::DynamicImage::ImageRgb8(img.clone()));
    for (scale, size) in [
        (0, (120, 88)),
        (1, (30, 22)),
        (2, (60, 44)),
        (4, (120, 88)),
        (8, (240, 176)),
    ] {
        let (_, out) = run(&m, &bytes, &options(scale));
        assert_eq!((out.width(), out.height()), size, "scale {scale}");
        assert_eq!(out.color(), image::ColorType::Rgb8);
    }
    // ×4: the model's values (the tiles' overlap covers its receptive field).
    let (_, out) = run(&m, &bytes, &options(4));
    let want = direct(&m, &img);
    let got = out.to_rgb8().into_raw();
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(
        worst <= 1,
        "largest difference to the model's own output: {worst}/255"
    );
    // ×2 from the ×4 model: 2×2 blocks of its output averaged.
    let (_, half) = run(&m, &bytes, &options(2));
    let half = half.to_rgb8();
    let full = out.to_rgb8();
    for (x, y) in [(0, 0), (17, 9), (59, 43)] {
        for c in 0..3 {
            let mean: f32 = [(0, 0), (1, 0), (0, 1), (1, 1)]
                .iter()
                .map(|(dx, dy)| full.get_pixel(2 * x + dx, 2 * y + dy).0[c] as f32)
                .sum::<f32>()
                / 4.0;
            let got = half.get_pixel(x, y).0[c] as f32;
            assert!(
                (got - mean).abs() <= 1.0,
                "({x}, {y}) channel {c}: {got} vs {mean}"
            );
        }
    }
}

#[test]
fn plans_and_refusals() {
    assert_eq!(plan(0, 4).unwrap().scale, 4);
    assert_eq!(
        (plan(8, 4).unwrap().passes, plan(8, 4).unwrap().reduce),
        (2, 2)
    );
    assert_eq!(
        (plan(8, 2).unwrap().passes, plan(8, 2).unwrap().reduce),
        (3, 1)
    );
    assert_eq!(
        (plan(1, 4).unwrap().passes, plan(1, 4).unwrap().reduce),
        (1, 4)
    );
    assert!(plan(3, 4).is_err());
    assert!(
        plan(2, 1)
            .unwrap_err()
            .to_string()
            .contains("does not enlarge")
    );
    let m = model("compact.safetensors");
    // Over the largest side.
    let bytes = png(&image::DynamicImage::ImageRgb8(test_image(30, 22)));
    let input = enhance::decode(&bytes, u64::MAX).unwrap();
    let o = EnhanceOptions {
        max_side: 100,
        ..options(4)
    };
    let e = enhance::enhance(
        &m,
        &input,
        &o,
        &CancelToken::new(),
        &mut |_, _| {},
        Vec::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("120×88") && e.contains("at most 100"), "{e}");
    // Too many pixels, refused from the header; not an image.
    let e = enhance::decode(&bytes, 600).unwrap_err().to_string();
    assert!(e.contains("more than 600 pixels"), "{e}");
    let e = enhance::decode(b"hello", 600).unwrap_err().to_string();
    assert!(e.starts_with("image:"), "{e}");
}

#[test]
fn alpha_is_upscaled_and_kept() {
    let m = model("compact.safetensors");
    let (w, h) = (20u32, 18u32);
    let rgba = image::RgbaImage::from_fn(w, h, |x, y| {
        Rgba([
            (x * 12) as u8,
            (y * 14) as u8,
            90,
            if x < 10 { 255 } else { (y * 14) as u8 },
        ])
    });
    let (_, out) = run(
        &m,
        &png(&image::DynamicImage::ImageRgba8(rgba.clone())),
        &options(4),
    );
    assert_eq!(out.color(), image::ColorType::Rgba8);
    let out = out.to_rgba8();
    // The alpha plane, as a grey RGB image through the model, is the output's alpha (the
    // luma of what the model makes of it).
    let grey = image::RgbImage::from_fn(w, h, |x, y| {
        let a = rgba.get_pixel(x, y).0[3];
        Rgb([a, a, a])
    });
    let want = direct(&m, &grey);
    let mut worst = 0u8;
    for (i, p) in out.pixels().enumerate() {
        let luma = 0.299 * want[i * 3] as f32
            + 0.587 * want[i * 3 + 1] as f32
            + 0.114 * want[i * 3 + 2] as f32;
        worst = worst.max((p.0[3] as f32 - luma).abs().round() as u8);
    }
    assert!(worst <= 2, "alpha differs by {worst}/255");
    // Opaque where the input was.
    assert!(out.get_pixel(8, 8).0[3] >= 250);
    // All-opaque alpha stays exactly opaque.
    let opaque =
        image::RgbaImage::from_fn(w, h, |x, y| Rgba([(x * 12) as u8, (y * 14) as u8, 90, 255]));
    let input = enhance::decode(&png(&image::DynamicImage::ImageRgba8(opaque)), u64::MAX).unwrap();
    assert_eq!(input.alpha, Alpha::Constant(1.0));
    let (_, out) = run(
        &m,
        &png(&image::DynamicImage::ImageRgba8(image::RgbaImage::from_fn(
            w,
            h,
            |x, y| Rgba([(x * 12) as u8, (y * 14) as u8, 90, 255]),
        ))),
        &options(2),
    );
    assert!(out.to_rgba8().pixels().all(|p| p.0[3] == 255));
}

#[test]
fn sixteen_bit_stays_sixteen_bit() {
    let m = model("compact.safetensors");
    let img = image::ImageBuffer::<Rgb<u16>, _>::from_fn(14, 12, |x, y| {
        Rgb([(x * 4000) as u16, (y * 5000) as u16, 1234])
    });
    let (_, out) = run(&m, &png(&image::DynamicImage::ImageRgb16(img)), &options(4));
    assert_eq!(out.color(), image::ColorType::Rgb16);
    assert_eq!((out.width(), out.height()), (56, 48));
    // Values use the 16-bit range (not 8-bit values scaled up).
    let fine = out
        .to_rgb16()
        .into_raw()
        .iter()
        .filter(|v| **v % 257 != 0)
        .count();
    assert!(fine > 1000, "{fine} values off the 8-bit grid");
}

/// A JPEG whose EXIF says "rotate 90° clockwise to show" (orientation 6).
fn jpeg_with_orientation(img: &image::RgbImage, orientation: u16) -> Vec<u8> {
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    // APP1 "Exif\0\0", a big-endian TIFF header, IFD0 with one entry: 0x0112 SHORT 1.
    let mut tiff = b"MM\x00\x2a\x00\x00\x00\x08".to_vec();
    tiff.extend_from_slice(&1u16.to_be_bytes());
    tiff.extend_from_slice(&0x0112u16.to_be_bytes());
    tiff.extend_from_slice(&3u16.to_be_bytes());
    tiff.extend_from_slice(&1u32.to_be_bytes());
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_be_bytes());
    let mut app1 = b"Exif\x00\x00".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xff, 0xe1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[test]
fn exif_orientation_is_applied() {
    let m = model("compact.safetensors");
    // Wide as stored; upright it is tall.
    let img = test_image(24, 10);
    let (_, out) = run(&m, &jpeg_with_orientation(&img, 6), &options(2));
    assert_eq!(
        (out.width(), out.height()),
        (20, 48),
        "the rotation was not applied"
    );
    let (_, plain) = run(&m, &jpeg_with_orientation(&img, 1), &options(2));
    assert_eq!((plain.width(), plain.height()), (48, 20));
}

#[test]
fn the_colour_profile_is_kept() {
    let m = model("compact.safetensors");
    let img = test_image(12, 10);
    let profile: Vec<u8> = (0..200u32).map(|i| (i * 37 % 251) as u8).collect();
    let mut bytes = Vec::new();
    let mut encoder = image::codecs::png::PngEncoder::new(&mut bytes);
    encoder.set_icc_profile(profile.clone()).unwrap();
    encoder
        .write_image(img.as_raw(), 12, 10, image::ExtendedColorType::Rgb8)
        .unwrap();
    let (out, _) = run(&m, &bytes, &options(2));
    let mut decoder = image::codecs::png::PngDecoder::new(std::io::Cursor::new(&out)).unwrap();
    use image::ImageDecoder;
    assert_eq!(decoder.icc_profile().unwrap(), Some(profile));
}

/// The progress preview: the output at most 256 px a side, each pixel the output's nearest
/// (the first output row and column that fall in it), drawn as the rows are made.
#[test]
fn the_preview_is_a_small_picture_of_the_output() {
    use std::sync::{Arc, Mutex};
    let m = model("compact.safetensors");
    let img = image::DynamicImage::ImageRgb8(test_image(100, 80));
    let preview = Arc::new(Mutex::new(image::RgbImage::new(0, 0)));
    let o = EnhanceOptions {
        preview: Some(preview.clone()),
        ..options(4)
    };
    let (_, out) = run(&m, &png(&img), &o);
    let out = out.into_rgb8();
    let p = preview.lock().unwrap();
    let k = 256.0 / 400.0;
    assert_eq!(p.dimensions(), (256, 205));
    let mut checked = 0;
    for y in 0..320u32 {
        let py = (y as f64 * k) as u32;
        if py >= 205 || (y > 0 && ((y - 1) as f64 * k) as u32 == py) {
            continue;
        }
        for px in 0..256u32 {
            let x = ((px as f64 / k) as u32).min(399);
            assert_eq!(p.get_pixel(px, py), out.get_pixel(x, y), "({px}, {py})");
            checked += 1;
        }
    }
    assert_eq!(checked, 256 * 205);
}
