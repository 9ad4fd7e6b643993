//! The editor's inpaint and outpaint with the tiny SD 1.5 model of the golden set: where
//! the model works at the image's own size, the result inside the mask is exactly the
//! engine's plain inpainting and every pixel the feathered mask does not reach is the
//! input's own; outpainting keeps the original's pixels outside the blend band and gives
//! the canvas its new size.

use std::path::PathBuf;

use candle_core::{DType, Device};
use image::{GrayImage, RgbImage};
use krya_engine::model::{self, ModelSource};
use krya_engine::pipelines::edit::{self, Extend, MaskOptions, mask};
use krya_engine::{CancelToken, EngineError, GenerateRequest, StableDiffusion};

fn sd() -> StableDiffusion {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/sd15");
    let source = ModelSource::parse(dir.to_str().unwrap()).unwrap();
    model::load(&source, &Device::Cpu, DType::F32).unwrap()
}

fn picture(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 255 / w) as u8,
            (y * 255 / h) as u8,
            ((x * 37 + y * 11) % 256) as u8,
        ])
    })
}

fn request() -> GenerateRequest {
    GenerateRequest {
        prompt: "a red fox".into(),
        steps: Some(4),
        guidance: Some(3.0),
        seed: 5,
        strength: 1.0,
        ..Default::default()
    }
}

#[test]
fn inpaint_is_the_engines_inside_and_the_input_outside() {
    let sd = sd();
    let (w, h) = (sd.defaults.width as u32, sd.defaults.height as u32);
    let image = picture(w, h);
    let painted = GrayImage::from_fn(w, h, |x, y| {
        let inside = (w / 4..3 * w / 4).contains(&x) && (h / 4..3 * h / 4).contains(&y);
        image::Luma([if inside { 255 } else { 0 }])
    });
    let options = MaskOptions { grow: 1, blur: 1.0 };
    let out = edit::inpaint(
        &sd,
        &request(),
        &image,
        &painted,
        options,
        &CancelToken::new(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(out.dimensions(), (w, h));
    let soft = mask::feather(&mask::grow(&mask::hard(&painted), 1), 1.0);
    // The context around the mask covers the whole (small) image at the model's own size,
    // so the engine runs once on the image with the mask the feather reaches.
    assert_eq!(
        edit::region(mask::bounds(&soft).unwrap(), (w, h)),
        (0, 0, w, h)
    );
    let reach = GrayImage::from_fn(w, h, |x, y| {
        image::Luma([if soft.get_pixel(x, y).0[0] > 0 {
            255
        } else {
            0
        }])
    });
    let plain = sd
        .generate(
            &GenerateRequest {
                init_image: Some(image.clone()),
                mask: Some(reach),
                ..request()
            },
            &mut |_| {},
            &CancelToken::new(),
        )
        .unwrap()
        .images
        .remove(0);
    let (mut kept, mut drawn, mut changed) = (0, 0, 0);
    for (x, y, p) in out.enumerate_pixels() {
        match soft.get_pixel(x, y).0[0] {
            0 => {
                assert_eq!(p, image.get_pixel(x, y), "({x}, {y}) is outside the mask");
                kept += 1;
            }
            255 => {
                assert_eq!(p, plain.get_pixel(x, y), "({x}, {y}) is the engine's");
                drawn += 1;
                changed += (p != image.get_pixel(x, y)) as usize;
            }
            _ => {}
        }
    }
    assert!(
        kept > 0 && drawn > 0 && changed > drawn / 2,
        "{kept} {drawn} {changed}"
    );
}

#[test]
fn outpaint_extends_the_canvas_and_keeps_the_original() {
    let sd = sd();
    let image = picture(40, 64);
    let extend = Extend::to_aspect(40, 64, 16, 9);
    assert_eq!((extend.left, extend.right), (37, 37));
    let options = MaskOptions { grow: 2, blur: 2.0 };
    let out = edit::outpaint(
        &sd,
        &request(),
        &image,
        extend,
        options,
        &CancelToken::new(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(out.dimensions(), (114, 64));
    let (canvas, new_area) = edit::extend_canvas(&image, extend);
    let soft = mask::feather(&mask::grow(&new_area, 2), 2.0);
    let (mut kept, mut redrawn) = (0, 0);
    for (x, y, p) in out.enumerate_pixels() {
        if soft.get_pixel(x, y).0[0] == 0 {
            assert_eq!(
                p,
                image.get_pixel(x - 37, y),
                "({x}, {y}) is the original's"
            );
            kept += 1;
        } else if new_area.get_pixel(x, y).0[0] == 255 {
            redrawn += (p != canvas.get_pixel(x, y)) as usize;
        }
    }
    // Most of the original is kept exactly; the new sides are drawn, not the edge fill.
    assert!(kept >= (40 - 2 * 9) * 64, "{kept}");
    assert!(redrawn > 37 * 64, "{redrawn}");
}

#[test]
fn edit_refuses_bad_masks() {
    let sd = sd();
    let image = picture(64, 64);
    let run = |m: &GrayImage| {
        edit::inpaint(
            &sd,
            &request(),
            &image,
            m,
            MaskOptions::default(),
            &CancelToken::new(),
            &mut |_| {},
        )
        .err()
        .unwrap()
    };
    for (m, says) in [
        (GrayImage::new(32, 64), "is 32×64 but the image is 64×64"),
        (
            GrayImage::from_pixel(64, 64, image::Luma([100])),
            "is empty",
        ),
    ] {
        let e = run(&m);
        assert!(
            matches!(&e, EngineError::InvalidInput(s) if s.starts_with("mask: ") && s.contains(says)),
            "{e}"
        );
    }
    let e = edit::outpaint(
        &sd,
        &request(),
        &image,
        Extend::default(),
        MaskOptions::default(),
        &CancelToken::new(),
        &mut |_| {},
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("extend:"), "{e}");
}
