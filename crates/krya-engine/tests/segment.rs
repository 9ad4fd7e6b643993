//! Segment Anything against transformers' `SamModel` (`tools/golden/sam.py`): a tiny
//! random-weight model of the reference's structure (windowed blocks with padding, a global
//! block, the two-way decoder), read from transformers' names and from the original
//! checkpoint's; the image embedding and each prompt's mask logits and IoU scores within
//! 1e-4 (points, a negative point, a box with a point, a box alone; one mask or three).

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use krya_engine::model::state_dict;
use krya_engine::pipelines::segment::sam::{EncoderKind, Point, Sam};
use serde_json::Value;

mod common;
use common::max_abs_diff;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/segment")
}

fn close(name: &str, got: &Tensor, want: &Tensor) {
    let d = max_abs_diff(got, want);
    let scale = max_abs_diff(want, &want.zeros_like().unwrap()).max(1.0);
    assert!(
        d <= 1e-4 * scale,
        "{name}: max diff {d} (values up to {scale})"
    );
}

#[test]
fn sam_matches_transformers() {
    let reference =
        candle_core::safetensors::load(dir().join("reference.safetensors"), &Device::Cpu).unwrap();
    let cases: serde_json::Map<String, Value> =
        serde_json::from_str(&std::fs::read_to_string(dir().join("cases.json")).unwrap()).unwrap();
    for file in ["sam.safetensors", "sam_original.safetensors"] {
        let path = dir().join(file);
        let sam = Sam::from_state_dict(state_dict::read(&path).unwrap(), file)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let c = &sam.config;
        assert_eq!(
            (
                c.image_size,
                c.patch,
                c.width,
                c.depth,
                c.heads,
                c.window,
                c.channels
            ),
            (64, 8, 32, 3, 2, 3, 32),
            "{file}"
        );
        assert_eq!(c.encoder, EncoderKind::Vit);
        assert_eq!(c.global, vec![1], "{file}");
        let embedding = sam.embed(&reference["pixel_values"]).unwrap();
        close(
            &format!("{file} embedding"),
            &embedding,
            &reference["image_embeddings"],
        );
        for (name, case) in &cases {
            let coords = case["points"].as_array().unwrap();
            let labels = case["labels"].as_array().unwrap();
            let points: Vec<Point> = coords
                .iter()
                .zip(labels)
                .map(|(p, l)| Point {
                    x: p[0].as_f64().unwrap() as f32,
                    y: p[1].as_f64().unwrap() as f32,
                    positive: l.as_i64() == Some(1),
                })
                .collect();
            let bbox = case["box"].as_array().map(|b| {
                let v: Vec<f32> = b.iter().map(|x| x.as_f64().unwrap() as f32).collect();
                [v[0], v[1], v[2], v[3]]
            });
            let multimask = case["multimask"].as_bool().unwrap();
            // From the reference's embedding, so each case checks the decoder alone.
            let masks = sam
                .decode(&reference["image_embeddings"], &points, bbox, multimask)
                .unwrap();
            close(
                &format!("{file} {name} masks"),
                &masks.logits,
                &reference[&format!("{name}.masks")],
            );
            let iou = Tensor::new(masks.iou.as_slice(), &Device::Cpu).unwrap();
            close(
                &format!("{file} {name} iou"),
                &iou,
                &reference[&format!("{name}.iou")],
            );
        }
    }
    let e = Sam::from_state_dict(
        state_dict::read(&dir().join("sam.safetensors")).unwrap(),
        "x",
    )
    .unwrap()
    .embed(&Tensor::zeros((1, 3, 32, 32), candle_core::DType::F32, &Device::Cpu).unwrap())
    .err()
    .unwrap();
    assert!(e.to_string().contains("64×64"), "{e}");
}

/// The predictor around the model: logits scaled up, cropped and scaled to the image as the
/// reference's post-processing does (1e-4); a picture's mask at its own size, the best
/// scored of the three a single click asks for; prompts outside the image refused.
#[test]
fn predictor_postprocesses_as_the_reference_and_checks_prompts() {
    use krya_engine::pipelines::segment::{Segmenter, scaled_size};
    let reference =
        candle_core::safetensors::load(dir().join("reference.safetensors"), &Device::Cpu).unwrap();
    let seg = Segmenter::load(&dir().join("sam_original.safetensors")).unwrap();
    assert_eq!(scaled_size(48, 30, 64), (64, 40));
    let got = seg
        .postprocess(&reference["point.masks"], (48, 30), (64, 40))
        .unwrap();
    close("post", &got, &reference["post.masks"].squeeze(0).unwrap());

    let img = image::RgbImage::from_fn(48, 30, |x, y| {
        image::Rgb([(x * 5) as u8, (y * 8) as u8, 90])
    });
    let e = seg.embed(&img).unwrap();
    assert_eq!((e.size, e.scaled), ((48, 30), (64, 40)));
    assert_eq!(e.embedding.dims(), &[1, 32, 8, 8]);
    let click = Point {
        x: 12.0,
        y: 9.0,
        positive: true,
    };
    let s = seg.segment(&e, &[click], None).unwrap();
    assert_eq!(s.mask.dimensions(), (48, 30));
    let k = 64.0 / 48.0;
    let three = seg
        .sam
        .decode(
            &e.embedding,
            &[Point {
                x: 12.0 * k,
                y: 9.0 * k,
                positive: true,
            }],
            None,
            true,
        )
        .unwrap();
    let best = (0..3)
        .max_by(|&a, &b| three.iou[a].total_cmp(&three.iou[b]))
        .unwrap();
    assert_eq!(s.score, three.iou[best]);
    let want = seg
        .postprocess(
            &three.logits.narrow(0, best, 1).unwrap(),
            (48, 30),
            (64, 40),
        )
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let want: Vec<u8> = want
        .iter()
        .map(|&v| if v > 0.0 { 255 } else { 0 })
        .collect();
    assert_eq!(s.mask.as_raw(), &want);
    for (points, bbox, says) in [
        (vec![], None, "at least one point"),
        (
            vec![Point {
                x: 60.0,
                y: 2.0,
                positive: true,
            }],
            None,
            "within the 48×30 image",
        ),
        (vec![], Some([10.0, 10.0, 5.0, 20.0]), "x0 < x1"),
    ] {
        let e = seg.segment(&e, &points, bbox).err().unwrap();
        assert!(e.to_string().contains(says), "{e}");
    }
}

/// MobileSAM (`tools/golden/mobile_sam.py`): the reference's TinyViT at a 1024² input with
/// narrow stages (MBConv, windows padded at 128², 64² and 64², a stride-1 last merging),
/// batch norms with running statistics, its classifier head in the file, and SAM's decoder
/// on its embedding; the embedding and each case's logits and scores within 1e-4. A tensor
/// the encoder does not know is refused by name.
#[test]
fn mobile_sam_matches_the_reference() {
    let reference = candle_core::safetensors::load(
        dir().join("mobile_sam_reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let path = dir().join("mobile_sam.safetensors");
    let sam = Sam::from_state_dict(state_dict::read(&path).unwrap(), "mobile_sam").unwrap();
    let c = &sam.config;
    assert_eq!(c.encoder, EncoderKind::TinyVit);
    assert_eq!(
        (
            c.image_size,
            c.patch,
            c.width,
            c.depth,
            c.heads,
            c.window,
            c.channels
        ),
        (1024, 16, 32, 6, 4, 7, 32)
    );
    // The input: the small random planes repeated 16 times along each side.
    let pixels = reference["pixels_small"]
        .upsample_nearest2d(1024, 1024)
        .unwrap();
    let embedding = sam.embed(&pixels).unwrap();
    close(
        "mobile_sam embedding",
        &embedding,
        &reference["image_embeddings"],
    );
    // The cases of the script: a positive point (three masks), a box with a negative point.
    let p = |x: f32, y: f32, positive: bool| Point { x, y, positive };
    let cases = [
        ("point", vec![p(300.5, 700.25, true)], None, true),
        (
            "box_point",
            vec![p(500.0, 410.0, false)],
            Some([100.0, 200.0, 800.0, 900.0]),
            false,
        ),
    ];
    for (name, points, bbox, multimask) in cases {
        let masks = sam
            .decode(&reference["image_embeddings"], &points, bbox, multimask)
            .unwrap();
        // Every 4th logit along each side (as the script keeps them).
        let idx = Tensor::arange_step(0u32, 256, 4, &Device::Cpu).unwrap();
        let every4 = masks
            .logits
            .index_select(&idx, 1)
            .unwrap()
            .index_select(&idx, 2)
            .unwrap();
        close(
            &format!("mobile_sam {name} masks"),
            &every4,
            &reference[&format!("{name}.masks")],
        );
        let iou = Tensor::new(masks.iou.as_slice(), &Device::Cpu).unwrap();
        close(
            &format!("mobile_sam {name} iou"),
            &iou,
            &reference[&format!("{name}.iou")],
        );
    }
    let mut sd = state_dict::read(&path).unwrap();
    sd.insert(
        "image_encoder.extra.weight".into(),
        Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let e = Sam::from_state_dict(sd, "x").err().unwrap().to_string();
    assert!(e.contains("image_encoder.extra.weight"), "{e}");
}
