//! Captioning through the API: a BLIP folder is listed with capability `caption`; `POST
//! /api/caption` on an upload gives the engine's caption for the same image (unconditional
//! and continuing a prompt) as a `text` asset and in the job's `completed` event; bad
//! requests are 422s naming their field.

mod common;

use std::path::PathBuf;

use common::client::*;
use common::tiny::*;
use krya_engine::pipelines::caption::Captioner;
use serde_json::json;

fn golden(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../krya-engine/tests/golden")
        .join(p)
}

#[test]
fn captions_are_the_engines() {
    let s = server_with(None, |c| {
        c.models
            .local
            .insert("blip".into(), golden("caption").display().to_string());
    });
    let c = Client::setup_admin(&s.base, s.dir.path(), "ann@example.com");
    let (_, list) = c.get("/api/models?capability=caption");
    let ids: Vec<(&str, bool)> = list["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_str().unwrap(), m["installed"] == true))
        .collect();
    // This one, and the curated BLIPs (downloaded on first use).
    assert_eq!(
        ids,
        [("blip", true), ("blip-base", false), ("blip-large", false)],
        "{list}"
    );

    let png = std::fs::read(golden("init.png")).unwrap();
    let (st, asset) = c.upload(png.clone(), "image/png");
    assert_eq!(st, 201, "{asset}");
    let image = asset["id"].as_str().unwrap();
    let engine = Captioner::load(&golden("caption")).unwrap();
    let picture = image::load_from_memory(&png).unwrap().to_rgb8();
    for (prompt, max) in [(None, None), (Some("a photo of"), Some(8))] {
        let mut body = json!({"image": image});
        if let Some(p) = prompt {
            body["prompt"] = json!(p);
        }
        if let Some(m) = max {
            body["max_tokens"] = json!(m);
        }
        let (st, j) = c.post("/api/caption", body);
        assert_eq!(st, 202, "{j}");
        let done = c.wait_job(j["id"].as_str().unwrap());
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(
            done["params"]["model"], "blip",
            "the default model is recorded"
        );
        let out = &done["outputs"][0];
        assert_eq!(
            (out["kind"].as_str(), out["mime"].as_str()),
            (Some("text"), Some("text/plain"))
        );
        assert_eq!(out["parent_id"], image);
        let (_, text) = c.bytes(out["url"].as_str().unwrap());
        let want = engine
            .caption(&picture, prompt, max.unwrap_or(20) as usize)
            .unwrap();
        assert_eq!(String::from_utf8(text).unwrap(), want);
        if let Some(p) = prompt {
            assert!(want.starts_with(p), "{want}");
        }
        assert_eq!(
            c.get(&format!("/api/caption/{}", j["id"].as_str().unwrap()))
                .1["id"],
            j["id"]
        );
    }

    for (body, field) in [
        (json!({"image": image, "max_tokens": 0}), "max_tokens"),
        (json!({"image": image, "model": "tiny"}), "model"),
        (json!({"image": "nope"}), "image"),
        (json!({"image": image, "prompt": "x".repeat(201)}), "prompt"),
    ] {
        let (st, e) = c.post("/api/caption", body);
        assert_eq!(st, 422, "{e}");
        assert!(
            e["error"]["message"].as_str().unwrap().starts_with(field),
            "{e}"
        );
    }
}
