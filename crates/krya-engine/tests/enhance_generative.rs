//! Generative enhance and the sharpen post-filter, with the tiny compact upscaler (×4) and
//! the tiny SD 1.5 model of the golden set: one latent tile is exactly the engine's plain
//! image-to-image of the upscaled image; many tiles give one seamless image; resemblance
//! pulls the colours back to the upscaled input; sharpen is the unsharp mask of the plain
//! output.

use std::path::PathBuf;

use candle_core::{DType, Device};
use krya_engine::model::{self, ModelSource};
use krya_engine::pipelines::stable_diffusion::tiles::LatentTiles;
use krya_engine::pipelines::upscale::enhance::{self, EnhanceOptions, Generative};
use krya_engine::pipelines::upscale::filter::gaussian_blur;
use krya_engine::pipelines::upscale::tile::TileOptions;
use krya_engine::pipelines::upscale::{LoadOptions, Upscaler};
use krya_engine::{CancelToken, EngineError, GenerateRequest, StableDiffusion};

fn golden() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn upscaler() -> Upscaler {
    Upscaler::load(
        &golden().join("upscale/compact.safetensors"),
        &LoadOptions::default(),
    )
    .unwrap()
}

fn sd() -> StableDiffusion {
    let source = ModelSource::parse(golden().join("sd15").to_str().unwrap()).unwrap();
    model::load(&source, &Device::Cpu, DType::F32).unwrap()
}

fn options() -> EnhanceOptions {
    EnhanceOptions {
        scale: 4,
        tile: TileOptions {
            tile: 16,
            overlap: 8,
            blend: true,
        },
        ..Default::default()
    }
}

fn input(w: u32, h: u32) -> enhance::Decoded {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 255 / w) as u8,
            (y * 255 / h) as u8,
            ((x * 37 + y * 11) % 256) as u8,
        ])
    });
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    enhance::decode(&png, 1 << 20).unwrap()
}

fn generative(sd: &StableDiffusion) -> Generative<'_> {
    Generative {
        model: sd,
        prompt: "a red fox".into(),
        negative_prompt: None,
        creativity: 0.6,
        resemblance: 0.0,
        seed: 7,
        steps: Some(5),
        guidance: Some(3.0),
        tiles: None,
    }
}

fn decode(png: &[u8]) -> image::RgbImage {
    image::load_from_memory(png).unwrap().into_rgb8()
}

/// Plain enhance of `d` (no re-drawing), decoded.
fn plain(m: &Upscaler, d: &enhance::Decoded, o: &EnhanceOptions) -> image::RgbImage {
    let mut out = Vec::new();
    enhance::enhance(m, d, o, &CancelToken::new(), &mut |_, _| {}, &mut out).unwrap();
    decode(&out)
}

fn generate(
    m: &Upscaler,
    g: &Generative,
    d: &enhance::Decoded,
) -> (image::RgbImage, Vec<(usize, usize)>) {
    let mut out = Vec::new();
    let mut seen = Vec::new();
    enhance::enhance_generative(
        m,
        g,
        d,
        &options(),
        &CancelToken::new(),
        &mut |a, b| seen.push((a, b)),
        &mut out,
    )
    .unwrap();
    (decode(&out), seen)
}

fn mean_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32
}

fn values(img: &image::RgbImage) -> Vec<f32> {
    img.as_raw().iter().map(|v| *v as f32 / 255.0).collect()
}

#[test]
fn one_tile_is_plain_img2img_of_the_upscaled_image() {
    let (m, sd) = (upscaler(), sd());
    let g = generative(&sd);
    // 8² × 4 = 32²: the tiny model's native size, one latent tile.
    let d = input(8, 8);
    let (got, seen) = generate(&m, &g, &d);
    let upscaled = plain(&m, &d, &options());
    let mut steps = 0;
    let want = sd
        .generate(
            &GenerateRequest {
                prompt: g.prompt.clone(),
                steps: g.steps,
                guidance: g.guidance,
                seed: g.seed,
                init_image: Some(upscaled.clone()),
                strength: g.creativity,
                preview_every: 0,
                ..Default::default()
            },
            &mut |p| steps = p.total,
            &CancelToken::new(),
        )
        .unwrap()
        .images
        .remove(0);
    assert_eq!(got.dimensions(), (32, 32));
    assert_eq!(
        got.as_raw(),
        want.as_raw(),
        "one tile must be plain img2img"
    );
    assert_ne!(got.as_raw(), upscaled.as_raw(), "it was re-drawn");
    // Progress: the upscaler's one tile, then the denoising steps, to the end.
    let (done, total) = *seen.last().unwrap();
    assert_eq!(done, total);
    assert!(steps >= 3);
    assert_eq!(total, 1 + steps);
}

#[test]
fn many_tiles_make_one_image() {
    let (m, sd) = (upscaler(), sd());
    let d = input(24, 16);
    let tiled = Generative {
        tiles: Some(LatentTiles {
            tile: 8,
            overlap: 4,
        }),
        ..generative(&sd)
    };
    let whole = Generative {
        tiles: Some(LatentTiles {
            tile: 64,
            overlap: 8,
        }),
        ..generative(&sd)
    };
    let (a, _) = generate(&m, &tiled, &d);
    let (b, _) = generate(&m, &tiled, &d);
    let (w, _) = generate(&m, &whole, &d);
    assert_eq!(a.dimensions(), (96, 64));
    assert_eq!(a.as_raw(), b.as_raw(), "same seed, same image");
    assert_ne!(a.as_raw(), w.as_raw(), "the tiles were used");
    // Another seed's whole image is much further away than the tiled one: the tiles
    // denoise one latent, they do not paint separate pictures.
    let (other, _) = generate(
        &m,
        &Generative {
            seed: 8,
            ..Generative {
                tiles: whole.tiles,
                ..generative(&sd)
            }
        },
        &d,
    );
    let (va, vw, vo) = (values(&a), values(&w), values(&other));
    let near = mean_abs(&va, &vw);
    let far = mean_abs(&vo, &vw);
    assert!(near < far, "tiled {near} vs another seed {far}");
}

#[test]
fn resemblance_puts_the_upscaled_colours_back() {
    let (m, sd) = (upscaler(), sd());
    let d = input(8, 8);
    let upscaled = values(&plain(&m, &d, &options()));
    let low = |v: &[f32]| gaussian_blur(v, 32, 32, 3, 3, 4.0);
    let (free, _) = generate(&m, &generative(&sd), &d);
    let (kept, _) = generate(
        &m,
        &Generative {
            resemblance: 1.0,
            ..generative(&sd)
        },
        &d,
    );
    let target = low(&upscaled);
    let free_off = mean_abs(&low(&values(&free)), &target);
    let kept_off = mean_abs(&low(&values(&kept)), &target);
    assert!(
        kept_off < free_off * 0.5,
        "resemblance 1: {kept_off}, 0: {free_off}"
    );
}

#[test]
fn generative_refusals() {
    let (m, sd) = (upscaler(), sd());
    let run = |g: &Generative, d: &enhance::Decoded| {
        enhance::enhance_generative(
            &m,
            g,
            d,
            &options(),
            &CancelToken::new(),
            &mut |_, _| {},
            Vec::new(),
        )
        .unwrap_err()
    };
    let d = input(8, 8);
    let e = run(
        &Generative {
            creativity: 1.5,
            ..generative(&sd)
        },
        &d,
    );
    assert!(
        matches!(&e, EngineError::InvalidInput(m) if m.contains("creativity")),
        "{e}"
    );
    let e = run(&generative(&sd), &input(600, 8));
    assert!(
        matches!(&e, EngineError::InvalidInput(m) if m.contains("2048")),
        "{e}"
    );
}

#[test]
fn sharpen_is_the_unsharp_mask_of_the_plain_output() {
    let m = upscaler();
    let d = input(12, 10);
    let flat = values(&plain(&m, &d, &options()));
    let sharp = values(&plain(
        &m,
        &d,
        &EnhanceOptions {
            sharpen: 0.8,
            ..options()
        },
    ));
    let blur = gaussian_blur(&flat, 48, 40, 3, 3, enhance::SHARPEN_SIGMA);
    let want: Vec<f32> = flat
        .iter()
        .zip(&blur)
        .map(|(x, b)| (x + 0.8 * (x - b)).clamp(0.0, 1.0))
        .collect();
    // The plain output was rounded to 8 bits before this reference sharpened it.
    let worst = sharp
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst <= 2.5 / 255.0, "{worst}");
    assert!(mean_abs(&sharp, &flat) > 1.0 / 255.0, "it sharpened");
    let e = enhance::enhance(
        &m,
        &d,
        &EnhanceOptions {
            sharpen: 9.0,
            ..options()
        },
        &CancelToken::new(),
        &mut |_, _| {},
        Vec::new(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("sharpen"), "{e}");
}
