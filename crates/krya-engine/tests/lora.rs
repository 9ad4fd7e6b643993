//! LoRAs against diffusers (`tools/golden/lora.py`): kohya and PEFT files through
//! diffusers' `load_lora_weights` (alone, together with a negative weight, and SDXL's SGM
//! layout over both text encoders), and LyCORIS (LoHa, LoKr, Tucker LoCon, full diff) and
//! DoRA merged by ComfyUI's math. Images agree within the engine's pixel tolerances; the
//! base model is untouched by a patched copy; a file that does not fit names its key.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, IndexOp, Tensor};
use krya_engine::model::{self, ModelSource};
use krya_engine::pipelines::lora::{self, LoraFile, Strength};
use krya_engine::{CancelToken, GenerateRequest, StableDiffusion};
use serde_json::Value;

mod common;
use common::image_differs;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn load(name: &str) -> StableDiffusion {
    let source = ModelSource::parse(dir().join(name).to_str().unwrap()).unwrap();
    model::load(&source, &Device::Cpu, DType::F32).unwrap()
}

fn file(name: &str) -> LoraFile {
    LoraFile::load(&dir().join("lora").join(name)).unwrap()
}

fn request(case: &Value) -> GenerateRequest {
    GenerateRequest {
        prompt: case["prompt"].as_str().unwrap().to_string(),
        negative_prompt: case["negative_prompt"].as_str().map(String::from),
        width: Some(case["width"].as_u64().unwrap() as usize),
        height: Some(case["height"].as_u64().unwrap() as usize),
        steps: Some(case["steps"].as_u64().unwrap() as usize),
        guidance: Some(case["guidance"].as_f64().unwrap()),
        seed: case["seed"].as_u64().unwrap(),
        batch: case["batch"].as_u64().unwrap() as usize,
        ..Default::default()
    }
}

fn generate(m: &StableDiffusion, case: &Value) -> Vec<image::RgbImage> {
    m.generate(&request(case), &mut |_| {}, &CancelToken::new())
        .unwrap()
        .images
}

#[test]
fn lora_images_match_diffusers() {
    let reference =
        candle_core::safetensors::load(dir().join("lora/reference.safetensors"), &Device::Cpu)
            .unwrap();
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(dir().join("lora/cases.json")).unwrap())
            .unwrap();
    let mut models: HashMap<String, StableDiffusion> = HashMap::new();
    let mut files: HashMap<String, LoraFile> = HashMap::new();
    for case in &cases {
        let id = case["id"].as_str().unwrap();
        let name = case["model"].as_str().unwrap();
        let base = models.entry(name.into()).or_insert_with(|| load(name));
        let specs: Vec<(String, f32)> = case["loras"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l[0].as_str().unwrap().to_string(),
                    l[1].as_f64().unwrap() as f32,
                )
            })
            .collect();
        for (f, _) in &specs {
            files.entry(f.clone()).or_insert_with(|| file(f));
        }
        let loras: Vec<(&LoraFile, Strength)> = specs
            .iter()
            .map(|(f, w)| (&files[f], Strength::new(*w)))
            .collect();
        let (patched, bytes) = lora::apply(base, &loras).unwrap();
        assert_eq!(bytes == 0, loras.is_empty(), "{id}: {bytes} bytes patched");
        let images = generate(&patched, case);
        let want = &reference[&format!("case.{id}")];
        assert_eq!(images.len(), want.dim(0).unwrap(), "{id}: batch");
        for (i, img) in images.iter().enumerate() {
            if let Some(e) = image_differs(img, &want.i(i).unwrap()) {
                panic!("{id} image {i}: {e}");
            }
        }
    }
    // The base model was never changed: it still gives the image without LoRAs, exactly.
    let none = cases.iter().find(|c| c["id"] == "sd1_none").unwrap();
    let want: Vec<u8> = reference["case.sd1_none"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let again = generate(&models["sd1"], none);
    let direct = generate(&load("sd1"), none);
    assert_eq!(again[0].as_raw(), direct[0].as_raw());
    assert!(
        image_differs(
            &again[0],
            &Tensor::from_vec(want, (48, 64, 3), &Device::Cpu).unwrap()
        )
        .is_none()
    );
}

/// A LoRA weight of zero changes nothing; the same LoRA at two weights gives two models.
#[test]
fn weights_scale_the_change() {
    let base = load("sd1");
    let f = file("sd1_kohya.safetensors");
    let req = GenerateRequest {
        prompt: "a cat".into(),
        steps: Some(2),
        seed: 1,
        ..Default::default()
    };
    let run = |m: &StableDiffusion| {
        m.generate(&req, &mut |_| {}, &CancelToken::new())
            .unwrap()
            .images
            .remove(0)
    };
    let plain = run(&base);
    let (zero, bytes) = lora::apply(&base, &[(&f, Strength::new(0.0))]).unwrap();
    assert_eq!(bytes, 0);
    assert_eq!(run(&zero).as_raw(), plain.as_raw());
    let (half, _) = lora::apply(&base, &[(&f, Strength::new(0.5))]).unwrap();
    let (full, _) = lora::apply(&base, &[(&f, Strength::new(1.0))]).unwrap();
    let (a, b) = (run(&half), run(&full));
    assert_ne!(a.as_raw(), plain.as_raw());
    assert_ne!(a.as_raw(), b.as_raw());
    // Only the text encoder's half: the UNet is the base's.
    let (text_only, _) = lora::apply(
        &base,
        &[(
            &f,
            Strength {
                unet: 0.0,
                text: 1.0,
            },
        )],
    )
    .unwrap();
    assert_ne!(run(&text_only).as_raw(), plain.as_raw());
}

/// Files that do not fit the model are refused with the key that does not fit.
#[test]
fn a_file_for_another_model_names_its_key() {
    let sd1 = load("sd1");
    let sdxl = load("sdxl");
    let xl_file = file("sdxl_kohya.safetensors");
    let e = lora::apply(&sd1, &[(&xl_file, Strength::new(1.0))])
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("sdxl_kohya.safetensors") && e.contains("lora_"),
        "{e}"
    );
    assert!(e.contains("(the file says it is for sdxl)"), "{e}");
    let e = lora::apply(
        &sdxl,
        &[(&file("sd1_kohya.safetensors"), Strength::new(1.0))],
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("matches no layer") || e.contains("does not fit"),
        "{e}"
    );

    // Not a safetensors file; a key of no adapter format; a module missing its up weight.
    let e = LoraFile::from_bytes(b"\x10\0\0\0\0\0\0\0{not json at all", "junk.safetensors")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("junk.safetensors"), "{e}");
    let t = |dims: &[usize]| Tensor::zeros(dims, DType::F32, &Device::Cpu).unwrap();
    let e = LoraFile::from_tensors(
        HashMap::from([("model.diffusion_model.out.2.weight".into(), t(&[4, 4]))]),
        HashMap::new(),
        "ckpt.safetensors",
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("model.diffusion_model.out.2.weight"), "{e}");
    let e = LoraFile::from_tensors(
        HashMap::from([(
            "lora_unet_conv_in.lora_down.weight".into(),
            t(&[2, 4, 3, 3]),
        )]),
        HashMap::new(),
        "half.safetensors",
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("lora_unet_conv_in.lora_down.weight") && e.contains("up"),
        "{e}"
    );
    // Right names, wrong shapes.
    let bad = LoraFile::from_tensors(
        HashMap::from([
            (
                "lora_unet_conv_in.lora_down.weight".into(),
                t(&[2, 5, 3, 3]),
            ),
            ("lora_unet_conv_in.lora_up.weight".into(), t(&[32, 2, 1, 1])),
        ]),
        HashMap::new(),
        "shapes.safetensors",
    )
    .unwrap();
    let e = lora::apply(&sd1, &[(&bad, Strength::new(1.0))])
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("lora_unet_conv_in") && e.contains("conv_in"),
        "{e}"
    );
}
