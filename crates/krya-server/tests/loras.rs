//! LoRAs through the API: files registered as models are listed with capability `lora`
//! (SDXL's told by its keys); `loras` and `<lora:ID:WEIGHT>` in the prompt give exactly the
//! engine's image with the same LoRAs merged; the base model is untouched afterwards; the
//! image's parameters keep the tags; bad references are 422s, a LoRA that does not fit the
//! model fails the job with the key that does not fit.

mod common;

use std::path::PathBuf;

use common::client::*;
use common::tiny::*;
use krya_engine::model::ModelSource;
use krya_engine::pipelines::lora::{self, LoraFile, Strength};
use krya_engine::{CancelToken, GenerateRequest, device, image_io, model};
use serde_json::{Value, json};

fn golden(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../krya-engine/tests/golden")
        .join(p)
}

fn request() -> GenerateRequest {
    GenerateRequest {
        prompt: "a red fox".into(),
        width: Some(32),
        height: Some(32),
        steps: Some(2),
        guidance: Some(4.0),
        seed: 7,
        preview_every: 0,
        ..Default::default()
    }
}

fn engine(loras: &[(&str, f32)]) -> image::RgbImage {
    let dev = device::best_device().unwrap();
    let base = model::load(
        &ModelSource::Folder(golden("sd1")),
        &dev,
        device::default_dtype(&dev),
    )
    .unwrap();
    let files: Vec<LoraFile> = loras
        .iter()
        .map(|(f, _)| LoraFile::load(&golden(&format!("lora/{f}"))).unwrap())
        .collect();
    let list: Vec<(&LoraFile, Strength)> = files
        .iter()
        .zip(loras)
        .map(|(f, (_, w))| (f, Strength::new(*w)))
        .collect();
    let (m, _) = lora::apply(&base, &list).unwrap();
    m.generate(&request(), &mut |_| {}, &CancelToken::new())
        .unwrap()
        .images
        .remove(0)
}

fn body(prompt: &str, loras: Value) -> Value {
    json!({"prompt": prompt, "model": "sd1", "width": 32, "height": 32, "steps": 2, "cfg_scale": 4.0, "seed": 7, "loras": loras})
}

fn image_of(c: &Client, g: &Value) -> (image::RgbImage, String) {
    assert_eq!(g["status"], "completed", "{g}");
    let (s, png) = c.bytes(g["images"][0]["url"].as_str().unwrap());
    assert_eq!(s, 200);
    let params = image_io::read_png_parameters(&png).unwrap();
    (png_rgb(&png), params)
}

#[test]
fn loras_apply_by_field_and_prompt_tag() {
    let s = server_with(None, |c| {
        for (id, path) in [
            ("sd1", golden("sd1")),
            ("kohya", golden("lora/sd1_kohya.safetensors")),
            ("peft", golden("lora/sd1_peft.safetensors")),
            ("xl-style", golden("lora/sdxl_kohya.safetensors")),
        ] {
            c.models.local.insert(id.into(), path.display().to_string());
        }
    });
    let c = Client::setup_admin(&s.base, s.dir.path(), "ann@example.com");

    let (st, list) = c.get("/api/models?capability=lora");
    assert_eq!(st, 200, "{list}");
    let ids: Vec<&str> = list["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["kohya", "peft", "xl-style"], "{list}");
    let xl = &list["models"][2];
    assert_eq!(xl["family"], "sdxl", "{xl}");

    // Two LoRAs: one by field, one by tag; the image is the engine's with both merged.
    let (st, g) = c.post(
        "/api/generate/image",
        body(
            "a red fox <lora:peft:-0.5>",
            json!([{"id": "kohya", "weight": 0.8}]),
        ),
    );
    assert_eq!(st, 202, "{g}");
    let (img, params) = image_of(&c, &c.wait(g["id"].as_str().unwrap()));
    assert!(
        img.as_raw()
            == engine(&[
                ("sd1_kohya.safetensors", 0.8),
                ("sd1_peft.safetensors", -0.5)
            ])
            .as_raw(),
        "the image differs from the engine's with the same LoRAs"
    );
    assert!(
        params.starts_with("a red fox <lora:kohya:0.8> <lora:peft:-0.5>\n"),
        "{params}"
    );
    // The base model afterwards: exactly its own image (the merged copy left it alone).
    let (st, g) = c.post("/api/generate/image", body("a red fox", json!([])));
    assert_eq!(st, 202, "{g}");
    let (img, _) = image_of(&c, &c.wait(g["id"].as_str().unwrap()));
    assert!(
        img.as_raw() == engine(&[]).as_raw(),
        "the base model changed"
    );

    // Bad references are refused before anything is queued.
    for (prompt, loras, field) in [
        ("a fox", json!([{"id": "nope"}]), "loras"),
        ("a fox <lora:nope:1>", json!([]), "prompt"),
        ("a fox", json!([{"id": "kohya", "weight": 9}]), "loras"),
        ("a fox", json!([{"id": "sd1"}]), "loras"),
        ("a fox <lora:kohya:lots>", json!([]), "prompt"),
    ] {
        let (st, e) = c.post("/api/generate/image", body(prompt, loras));
        assert_eq!(st, 422, "{prompt}: {e}");
        assert_eq!(e["error"]["code"], "invalid-input", "{e}");
        assert!(
            e["error"]["message"].as_str().unwrap().starts_with(field),
            "{prompt}: {e}"
        );
    }
    let mut nine = json!([{"id": "kohya"}]);
    for _ in 0..8 {
        nine.as_array_mut().unwrap().push(json!({"id": "kohya"}));
    }
    let (st, e) = c.post("/api/generate/image", body("a fox", nine));
    assert_eq!(st, 422, "{e}");
    // A LoRA model is not an image model.
    let (st, e) = c.post(
        "/api/generate/image",
        json!({"prompt": "a fox", "model": "kohya"}),
    );
    assert_eq!(st, 422, "{e}");

    // An SDXL LoRA on this (familyless, tiny) SD 1.x model: the job fails with the key.
    let (st, g) = c.post(
        "/api/generate/image",
        body("a red fox", json!([{"id": "xl-style"}])),
    );
    assert_eq!(st, 202, "{g}");
    let g = c.wait(g["id"].as_str().unwrap());
    assert_eq!(g["status"], "failed", "{g}");
    assert_eq!(g["error"]["code"], "invalid-input", "{g}");
    let m = g["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("sdxl_kohya.safetensors") && m.contains("lora_te1_"),
        "{m}"
    );
}
