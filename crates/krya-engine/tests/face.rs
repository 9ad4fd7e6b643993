//! Face restoration against spandrel's GFPGANv1Clean: tiny random-weight models
//! (`tools/golden/face.py`), one in the released layout (`params_ema` in a `.pth`, SFT on
//! half of the channels, a style code per layer), one with SFT on all channels and a single
//! style code; sized from their shapes and run natively, within 1e-4 of the reference.
//! RetinaFace against facexlib (raw outputs and detections), and the alignment against
//! OpenCV (the similarity fit and the warp). Then the whole: an upscale with faces restored
//! changes the face and leaves the rest.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use krya_engine::pipelines::face::{self, FaceRestorer, Restorer, align};

mod common;
use common::max_abs_diff;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/face")
}

#[test]
fn gfpgan_matches_spandrel() {
    let reference =
        candle_core::safetensors::load(dir().join("reference.safetensors"), &Device::Cpu).unwrap();
    for (case, file, sft_half) in [
        ("gfpgan", "gfpgan.pth", true),
        ("gfpgan_whole", "gfpgan_whole.safetensors", false),
    ] {
        let m = FaceRestorer::load(&dir().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let Restorer::Gfpgan(net) = &m.net else {
            panic!("{file} is not read as GFPGAN")
        };
        let c = &net.config;
        assert_eq!(
            (c.out_size, c.num_style_feat, c.num_mlp),
            (32, 16, 2),
            "{case}"
        );
        assert_eq!((c.sft_half, c.different_w), (sft_half, sft_half), "{case}");
        let x = &reference[&format!("{case}.input")];
        let want = &reference[&format!("{case}.output")];
        let got = net.forward(x).unwrap();
        let d = max_abs_diff(&got, want);
        let scale = max_abs_diff(want, &want.zeros_like().unwrap());
        assert!(
            d <= 1e-4 * scale.max(1.0),
            "{case}: max diff {d} (values up to {scale})"
        );
        // The same face gives the same pixels: the stored noise, not fresh noise.
        assert_eq!(max_abs_diff(&net.forward(x).unwrap(), &got), 0.0);
    }
}

#[test]
fn gfpgan_refuses_other_files_and_sizes() {
    let up =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/upscale/compact.safetensors");
    let e = FaceRestorer::load(&up).err().unwrap();
    assert!(
        e.to_string().contains("not a face restoration model"),
        "{e}"
    );
    let m = FaceRestorer::load(&dir().join("gfpgan.pth")).unwrap();
    let e = m
        .restore(
            &Tensor::zeros((1, 3, 16, 16), candle_core::DType::F32, &Device::Cpu).unwrap(),
            0.5,
        )
        .err()
        .unwrap();
    assert!(e.to_string().contains("32×32"), "{e}");
}

/// CodeFormer against spandrel-extra-arches' copy of the reference, at fidelity 0, 0.5
/// and 1 (`tools/golden/codeformer.py`): a tiny model of the released structure (four
/// levels to a 16×16 code grid, fusion at three sizes), read from a `params_ema` `.pth`.
#[test]
fn codeformer_matches_reference() {
    let reference =
        candle_core::safetensors::load(dir().join("codeformer.safetensors"), &Device::Cpu).unwrap();
    let m = FaceRestorer::load(&dir().join("codeformer.pth")).unwrap();
    assert!(m.has_fidelity());
    let Restorer::CodeFormer(net) = &m.net else {
        panic!("codeformer.pth is not read as CodeFormer")
    };
    let c = &net.config;
    assert_eq!(
        (c.size, c.grid, c.dim, c.layers, c.codes, c.code_dim),
        (128, 16, 64, 2, 64, 256)
    );
    assert_eq!(c.fused, vec![32, 64, 128]);
    let x = &reference["input"];
    let want: Vec<u32> = reference["codes"]
        .flatten_all()
        .unwrap()
        .to_dtype(candle_core::DType::U32)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(net.codes(x).unwrap(), want);
    let mut outputs = Vec::new();
    for w in [0.0, 0.5, 1.0] {
        let want = &reference[&format!("w{w:?}.output")];
        let got = net.forward(x, w).unwrap();
        let d = max_abs_diff(&got, want);
        let scale = max_abs_diff(want, &want.zeros_like().unwrap());
        assert!(
            d <= 1e-4 * scale.max(1.0),
            "w {w}: max diff {d} (values up to {scale})"
        );
        outputs.push(got);
    }
    // The weight matters: each fidelity gives another face.
    assert!(max_abs_diff(&outputs[0], &outputs[1]) > 1e-2);
    assert!(max_abs_diff(&outputs[1], &outputs[2]) > 1e-2);
    let e = m
        .restore(
            &Tensor::zeros((1, 3, 64, 64), candle_core::DType::F32, &Device::Cpu).unwrap(),
            0.5,
        )
        .err()
        .unwrap();
    assert!(e.to_string().contains("128×128"), "{e}");
}

fn reference() -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join("reference.safetensors"), &Device::Cpu).unwrap()
}

/// An RGB 0-255 HWC image as `[1, 3, H, W]`, and as the detector takes it: BGR minus
/// facexlib's means.
fn detector_input(rgb: &Tensor) -> (Tensor, Tensor) {
    let image = rgb
        .permute((2, 0, 1))
        .unwrap()
        .contiguous()
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mean = Tensor::new(&[104f32, 117., 123.], &Device::Cpu)
        .unwrap()
        .reshape((1, 3, 1, 1))
        .unwrap();
    let bgr = image.flip(&[1]).unwrap().broadcast_sub(&mean).unwrap();
    (image, bgr)
}

#[test]
fn retinaface_matches_facexlib() {
    let r = reference();
    let net = face::load_detector(&dir().join("retinaface.pth")).unwrap();
    let (image, bgr) = detector_input(&r["retina.image"]);
    let (loc, conf, landms) = net.forward(&bgr).unwrap();
    for (name, got) in [("loc", &loc), ("conf", &conf), ("landms", &landms)] {
        let want = &r[&format!("retina.{name}")];
        let d = max_abs_diff(got, want);
        assert!(d < 1e-4, "{name}: {d}");
    }
    // Detections: thresholded, sorted, suppressed, decoded to pixels.
    let dets = net.detect(&image, 0.5).unwrap();
    let want: Vec<Vec<f32>> = r["retina.dets"].to_vec2().unwrap();
    assert_eq!(dets.len(), want.len());
    assert!(dets.len() > 3, "the random detector finds several boxes");
    for (d, w) in dets.iter().zip(&want) {
        let got: Vec<f32> = d
            .bbox
            .iter()
            .chain([d.score].iter())
            .chain(d.landmarks.iter().flatten())
            .copied()
            .collect();
        for (g, e) in got.iter().zip(w) {
            assert!((g - e).abs() < 1e-3, "{got:?} vs {w:?}");
        }
    }
}

#[test]
fn alignment_matches_opencv() {
    let r = reference();
    let marks: Vec<[f64; 2]> = r["align.landmarks"]
        .to_vec2::<f32>()
        .unwrap()
        .iter()
        .map(|p| [p[0] as f64, p[1] as f64])
        .collect();
    let template: Vec<[f64; 2]> = align::TEMPLATE_512
        .iter()
        .map(|p| [p[0] * 32.0 / 512.0, p[1] * 32.0 / 512.0])
        .collect();
    let m = align::similarity_lmeds(&marks, &template);
    let cv: Vec<Vec<f32>> = r["align.matrix"].to_vec2().unwrap();
    // OpenCV's LMEDS on five noisy points (plain least squares is off by several percent).
    for row in 0..2 {
        for col in 0..3 {
            assert!(
                (m[row][col] - cv[row][col] as f64).abs() < 1e-3,
                "{m:?} vs {cv:?}"
            );
        }
    }
    let ls = align::similarity(&marks, &template);
    assert!(
        (ls[0][0] - cv[0][0] as f64).abs() > 0.01,
        "the points are noisy enough to tell"
    );
    // The warp itself, with OpenCV's matrix: bilinear, the grey outside.
    let cvm: align::Affine = [
        [cv[0][0] as f64, cv[0][1] as f64, cv[0][2] as f64],
        [cv[1][0] as f64, cv[1][1] as f64, cv[1][2] as f64],
    ];
    let img: Vec<Vec<Vec<f32>>> = r["align.image"].to_vec3().unwrap();
    let (h, w) = (img.len(), img[0].len());
    let src = |x: usize, y: usize, c: usize| img[y][x][c] / 255.0;
    let crop = align::warp(&src, (w, h), &cvm, 32, align::BORDER);
    let want: Vec<f32> = r["align.crop"].flatten_all().unwrap().to_vec1().unwrap();
    let diffs: Vec<f32> = crop
        .iter()
        .zip(&want)
        .map(|(a, b)| (a * 255.0 - b).abs())
        .collect();
    let worst = diffs.iter().copied().fold(0f32, f32::max);
    let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
    // OpenCV interpolates 8-bit images with 5-bit fixed-point weights and rounds.
    assert!(worst <= 2.0 && mean < 0.5, "worst {worst}, mean {mean}");
}

/// An upscale with faces restored: pixels of the detected faces' paste areas change, the
/// rest of the image is the plain upscale's, byte for byte.
#[test]
fn enhance_restores_faces_and_leaves_the_rest() {
    use krya_engine::CancelToken;
    use krya_engine::pipelines::upscale::enhance::{self, EnhanceOptions};
    use krya_engine::pipelines::upscale::{LoadOptions, Upscaler};

    let r = reference();
    let rgb: Vec<u8> = r["retina.image"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| *v as u8)
        .collect();
    let img = image::RgbImage::from_raw(100, 72, rgb).unwrap();
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let input = enhance::decode(&png, 1 << 20).unwrap();
    let up = Upscaler::load(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/upscale/compact.safetensors"),
        &LoadOptions::default(),
    )
    .unwrap();
    let mut faces =
        face::Faces::load(&dir().join("gfpgan.pth"), &dir().join("retinaface.pth")).unwrap();
    // The random detector's scores are low: restore its best face only (the score above
    // the second best).
    let image_t = r["retina.image"]
        .permute((2, 0, 1))
        .unwrap()
        .contiguous()
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let found = faces.detector.detect(&image_t, 0.5).unwrap();
    faces.threshold = found[1].score;
    // Its landmarks are close together: a small face.
    faces.min_eye_distance = 1.0;
    let run = |o: &EnhanceOptions| {
        let mut out = Vec::new();
        enhance::enhance(
            &up,
            &input,
            o,
            &CancelToken::new(),
            &mut |_, _| {},
            &mut out,
        )
        .unwrap();
        image::load_from_memory(&out).unwrap().into_rgb8()
    };
    let plain = run(&EnhanceOptions::default());
    let faces = std::sync::Arc::new(faces);
    let restored = run(&EnhanceOptions {
        faces: Some(faces.clone()),
        ..Default::default()
    });
    assert_eq!(restored.dimensions(), (400, 288));
    let pasted = face::restore_faces(&faces, &input, 4.0, (400, 288), &CancelToken::new()).unwrap();
    assert_eq!(pasted.len(), 1);
    let touched = |x: usize, y: usize| {
        pasted
            .iter()
            .any(|p| (p.rows.0..p.rows.1).contains(&y) && (p.cols.0..p.cols.1).contains(&x))
    };
    let (mut changed, mut outside) = (0, 0);
    for (x, y, px) in restored.enumerate_pixels() {
        let before = plain.get_pixel(x, y);
        if touched(x as usize, y as usize) {
            changed += (px != before) as usize;
        } else {
            outside += 1;
            assert_eq!(px, before, "({x}, {y}) is outside every face");
        }
    }
    assert!(changed > 100, "faces pasted: {changed} pixels changed");
    assert!(
        outside > 1000,
        "the face's area is not the whole image: {outside} outside"
    );
}

/// facexlib's ResNet-50 RetinaFace (GFPGANer's default detector) with weights from
/// `tools/golden/retinaface_r50.py`'s formula, made again here to the bit: its raw outputs
/// within 1e-4 of facexlib's.
#[test]
fn resnet50_retinaface_matches_facexlib() {
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("r50.json")).unwrap()).unwrap();
    let mut sd = krya_engine::model::state_dict::StateDict::new();
    for (k, t) in manifest["floats"].as_array().unwrap().iter().enumerate() {
        let name = t["name"].as_str().unwrap();
        let shape: Vec<usize> = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n as u64)
            .map(|i| {
                let h = (i * 2_654_435_761 + k as u64 * 40_503 + 12_345) % (1u64 << 32);
                let u = h as f64 / (1u64 << 32) as f64;
                let v = if shape.len() > 1 {
                    let fan_in: usize = shape[1..].iter().product();
                    (u - 0.5) * (2.0 * (3.0 / fan_in as f64).sqrt())
                } else if name.ends_with("running_var") || name.ends_with(".weight") {
                    0.5 + u
                } else {
                    (u - 0.5) / 5.0
                };
                v as f32
            })
            .collect();
        sd.insert(
            name.to_string(),
            Tensor::from_vec(values, shape, &Device::Cpu).unwrap(),
        );
    }
    let net = face::retinaface::RetinaFace::from_state_dict(sd).unwrap();
    assert_eq!(net.backbone, face::retinaface::Backbone::ResNet50);
    let r = candle_core::safetensors::load(dir().join("r50_reference.safetensors"), &Device::Cpu)
        .unwrap();
    let (_, bgr) = detector_input(&r["image"]);
    let (loc, conf, landms) = net.forward(&bgr).unwrap();
    for (name, got) in [("loc", &loc), ("conf", &conf), ("landms", &landms)] {
        let d = max_abs_diff(got, &r[name]);
        assert!(d < 1e-4, "{name}: {d}");
    }
}
