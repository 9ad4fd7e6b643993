//! The enhance kind through `POST /api/enhance/image` with the tiny compact upscaler (×4)
//! registered as a local model: it is listed with the `upscale` capability (and not for
//! images), the job runs with progress per tile, its output is a PNG of the scaled size
//! whose parent is the input, it is priced by output size, the generative mode gives the
//! engine's pixels, and bad requests get a 422 naming the field. The curated upscalers
//! and face models are downloaded on first use, held to their pinned sums.

use super::*;

fn golden(p: &str) -> String {
    format!(
        "{}/../krya-engine/tests/golden/{p}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn enhance(s: &Server) {
    let c = Client::register(&s.base, "enhance@example.com");
    // Listed as an upscaler, and only as one (after it, the curated ones, not installed).
    let (_, models) = c.get("/api/models?capability=upscale");
    let installed: Vec<&str> = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["installed"] == true)
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(installed, ["sharp"], "{models}");
    assert_eq!(models["models"][0]["id"], "sharp", "{models}");
    let (_, images) = c.get("/api/models?capability=img2img");
    assert!(!images.to_string().contains("\"face\""), "{images}");
    let (_, images) = c.get("/api/models?capability=txt2img");
    assert!(!images.to_string().contains("\"sharp\""), "{images}");
    let (st, e) = c.post(
        "/api/generate/image",
        json!({"prompt": "x", "model": "sharp"}),
    );
    assert_eq!(
        (st, &e["error"]["code"]),
        (422, &json!("invalid-input")),
        "{e}"
    );

    let (input, _) = upload(&c); // 64×48
    let before = c.credits();
    let (st, j) = c.post(
        "/api/enhance/image",
        json!({"image": input, "model": "sharp", "tile": 64}),
    );
    assert_eq!(st, 202, "{j}");
    assert_eq!(j["kind"], "enhance");
    let id = j["id"].as_str().unwrap();
    let done = c.wait_until(&format!("/api/enhance/{id}"), |j| {
        ["completed", "failed", "cancelled"].contains(&j["status"].as_str().unwrap())
    });
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["cost"], 1);
    assert_eq!(c.credits(), before - 1);
    let out = &done["outputs"][0];
    assert_eq!(
        (out["width"].as_i64(), out["height"].as_i64()),
        (Some(256), Some(192)),
        "{out}"
    );
    assert_eq!(out["parent_id"], input.as_str());
    assert_eq!(out["mime"], "image/png");
    let (st, bytes) = c.bytes(out["url"].as_str().unwrap());
    assert_eq!(st, 200);
    let img = image::load_from_memory(&bytes).unwrap();
    assert_eq!((img.width(), img.height()), (256, 192));
    // Its zoomable copy: one level here (it fits in a tile), the PNG's pixels in JPEG.
    let out_id = out["id"].as_str().unwrap();
    let (st, info) = c.get(&format!("/api/assets/{out_id}/tiles"));
    assert_eq!(st, 200, "{info}");
    assert_eq!(
        info,
        json!({"width": 256, "height": 192, "tile": 512, "levels": 1})
    );
    let (st, jpeg) = c.bytes(&format!("/api/assets/{out_id}/tiles/0/0/0"));
    assert_eq!(st, 200);
    let tile = image::load_from_memory(&jpeg).unwrap().into_rgb8();
    assert_eq!(tile.dimensions(), (256, 192));
    let png = img.to_rgb8();
    let diff: f64 = tile
        .as_raw()
        .iter()
        .zip(png.as_raw())
        .map(|(a, b)| (*a as f64 - *b as f64).abs())
        .sum::<f64>()
        / png.as_raw().len() as f64;
    // (The random model's output is noise, JPEG's hardest picture.)
    assert!(diff < 8.0, "mean difference {diff}");
    for bad in ["1/0/0", "0/1/0", "0/0/x"] {
        let (st, _) = c.bytes(&format!("/api/assets/{out_id}/tiles/{bad}"));
        assert_eq!(st, 404, "{bad}");
    }
    let stranger = Client::register(&s.base, "stranger-tiles@example.com");
    assert_eq!(stranger.get(&format!("/api/assets/{out_id}/tiles")).0, 404);
    assert_eq!(
        c.get(&format!("/api/assets/{input}/tiles")).0,
        404,
        "an upload has none"
    );
    // The same job through /api/jobs; an image job is not an enhance job.
    assert_eq!(c.get(&format!("/api/jobs/{id}")).1["kind"], "enhance");
    assert_eq!(c.get("/api/enhance/nope").0, 404);

    // 2× from the ×4 model.
    let (st, j) = c.post(
        "/api/enhance/image",
        json!({"image": input, "model": "sharp", "scale": 2}),
    );
    assert_eq!(st, 202, "{j}");
    let done = c.wait_job(j["id"].as_str().unwrap());
    assert_eq!(done["outputs"][0]["width"], 128, "{done}");

    // Generative: upscaled (×4 averaged to 1×), then re-drawn by the tiny turbo model over
    // latent tiles; the pixels are the engine's for the same settings.
    let before = c.credits();
    let (st, j) = c.post(
        "/api/enhance/image",
        json!({"image": input, "model": "sharp", "scale": 1, "mode": "generative",
               "prompt": "a fox", "creativity": 0.5, "resemblance": 0.25, "seed": 3,
               "sharpen": 0.5}),
    );
    assert_eq!(st, 202, "{j}");
    let done = c.wait_job(j["id"].as_str().unwrap());
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["cost"], 2, "an upscale credit and a re-draw credit");
    assert_eq!(c.credits(), before - 2);
    let out = &done["outputs"][0];
    assert_eq!(out["parent_id"], input.as_str());
    // The job records what re-drew it (the model chosen by default).
    let params = &done["params"];
    assert_eq!(params["mode"], "generative", "{params}");
    assert_eq!(params["diffusion_model"], "tiny", "{params}");
    assert_eq!(params["seed"], 3, "{params}");
    let (_, bytes) = c.bytes(out["url"].as_str().unwrap());
    let got = image::load_from_memory(&bytes).unwrap().into_rgb8();
    // What the engine makes of it, with a LoRA merged into the image model or not.
    let redraw = |lora: Option<f32>| {
        use krya_engine::pipelines::upscale::enhance as e;
        let up = krya_engine::pipelines::upscale::Upscaler::load(
            std::path::Path::new(&golden("upscale/compact.safetensors")),
            &Default::default(),
        )
        .unwrap();
        let source = krya_engine::model::ModelSource::parse(&golden("turbo")).unwrap();
        let mut sd =
            krya_engine::model::load(&source, &candle_core::Device::Cpu, candle_core::DType::F32)
                .unwrap();
        if let Some(w) = lora {
            use krya_engine::pipelines::lora;
            let f = lora::LoraFile::load(std::path::Path::new(&golden(
                "lora/turbo_kohya.safetensors",
            )))
            .unwrap();
            sd = lora::apply(&sd, &[(&f, lora::Strength::new(w))]).unwrap().0;
        }
        let (_, upload_bytes) = c.bytes(&format!("/api/assets/{input}"));
        let d = e::decode(&upload_bytes, 1 << 24).unwrap();
        let g = e::Generative {
            model: &sd,
            prompt: "a fox".into(),
            negative_prompt: None,
            creativity: 0.5,
            resemblance: 0.25,
            seed: 3,
            steps: None,
            guidance: None,
            tiles: None,
        };
        let options = e::EnhanceOptions {
            scale: 1,
            sharpen: 0.5,
            ..Default::default()
        };
        let mut png = Vec::new();
        e::enhance_generative(
            &up,
            &g,
            &d,
            &options,
            &krya_engine::CancelToken::new(),
            &mut |_, _| {},
            &mut png,
        )
        .unwrap();
        image::load_from_memory(&png).unwrap().into_rgb8()
    };
    assert_eq!((got.width(), got.height()), (64, 48));
    assert!(
        got.as_raw() == redraw(None).as_raw(),
        "the server's pixels are the engine's"
    );
    // With a LoRA (by field; a tag in the prompt would do the same): the engine's with it.
    let (st, j) = c.post(
        "/api/enhance/image",
        json!({"image": input, "model": "sharp", "scale": 1, "mode": "generative",
               "prompt": "a fox", "creativity": 0.5, "resemblance": 0.25, "seed": 3,
               "sharpen": 0.5, "loras": [{"id": "style", "weight": 0.6}]}),
    );
    assert_eq!(st, 202, "{j}");
    let done = c.wait_job(j["id"].as_str().unwrap());
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["params"]["loras"][0]["id"], "style", "{done}");
    let (_, bytes) = c.bytes(done["outputs"][0]["url"].as_str().unwrap());
    let with = image::load_from_memory(&bytes).unwrap().into_rgb8();
    assert!(
        with.as_raw() == redraw(Some(0.6)).as_raw(),
        "the LoRA's re-draw differs from the engine's"
    );
    assert!(with.as_raw() != got.as_raw());
    for (body, field) in [
        (
            json!({"image": input, "model": "sharp", "loras": [{"id": "style"}]}),
            "loras",
        ),
        (
            json!({"image": input, "model": "sharp", "mode": "generative", "loras": [{"id": "nope"}]}),
            "loras",
        ),
        (
            json!({"image": input, "model": "sharp", "mode": "generative", "prompt": "<lora:nope:1>"}),
            "prompt",
        ),
    ] {
        let (st, e) = c.post("/api/enhance/image", body);
        assert_eq!(st, 422, "{e}");
        assert!(
            e["error"]["message"].as_str().unwrap().starts_with(field),
            "{e}"
        );
    }

    // Face models are listed by what they do (CodeFormer with its fidelity weight); a
    // face-restored job records its restorer.
    for (cap, want) in [
        ("face_restore", &[("face", false), ("former", true)][..]),
        ("face_detect", &[("finder", false)][..]),
    ] {
        let (_, m) = c.get(&format!("/api/models?capability={cap}"));
        let got: Vec<(&str, bool)> = m["models"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["installed"] == true)
            .map(|m| (m["id"].as_str().unwrap(), m["fidelity"] == true))
            .collect();
        assert_eq!(got, want, "{cap}: {m}");
    }
    let (st, j) = c.post(
        "/api/enhance/image",
        json!({"image": input, "model": "sharp", "scale": 2, "face_restore": true,
               "face_model": "former", "fidelity": 0.8}),
    );
    assert_eq!(st, 202, "{j}");
    let done = c.wait_job(j["id"].as_str().unwrap());
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        (&done["params"]["face_model"], &done["params"]["fidelity"]),
        (&json!("former"), &json!(0.8)),
        "{done}"
    );
    let (st, j) = c.post(
        "/api/enhance/image",
        json!({"image": input, "model": "sharp", "scale": 2, "face_restore": true}),
    );
    assert_eq!(st, 202, "{j}");
    let done = c.wait_job(j["id"].as_str().unwrap());
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["params"]["face_model"], "face", "{done}");

    // Bad requests, each naming its field.
    for (body, field) in [
        (
            json!({"image": input, "model": "sharp", "scale": 3}),
            "scale",
        ),
        (
            json!({"image": input, "model": "tiny", "scale": 2}),
            "model",
        ),
        (json!({"image": input, "model": "nope"}), "model"),
        (json!({"image": "nope", "model": "sharp"}), "image"),
        (json!({"image": input, "model": "sharp", "tile": 8}), "tile"),
        (
            json!({"image": input, "model": "sharp", "colour": 1}),
            "params",
        ),
        (
            json!({"image": input, "model": "sharp", "mode": "paint"}),
            "params",
        ),
        (
            json!({"image": input, "model": "sharp", "sharpen": 5}),
            "sharpen",
        ),
        (
            json!({"image": input, "model": "sharp", "prompt": "a fox"}),
            "prompt",
        ),
        (
            json!({"image": input, "model": "sharp", "face_restore": true, "face_model": "sharp"}),
            "face_model",
        ),
        (
            json!({"image": input, "model": "sharp", "face_model": "face"}),
            "face_model",
        ),
        (
            json!({"image": input, "model": "sharp", "fidelity": 0.5}),
            "fidelity",
        ),
        (
            json!({"image": input, "model": "sharp", "face_restore": true, "face_model": "face", "fidelity": 0.5}),
            "fidelity",
        ),
        (
            json!({"image": input, "model": "sharp", "face_restore": true, "face_model": "former", "fidelity": 2}),
            "fidelity",
        ),
        (
            json!({"image": input, "model": "sharp", "mode": "generative", "creativity": 2}),
            "creativity",
        ),
        (
            json!({"image": input, "model": "sharp", "mode": "generative", "diffusion_model": "sharp"}),
            "diffusion_model",
        ),
        (
            json!({"image": input, "model": "sharp", "mode": "generative", "seed": -5}),
            "seed",
        ),
    ] {
        let (st, e) = c.post("/api/enhance/image", body.clone());
        assert_eq!(st, 422, "{body}: {e}");
        let m = e["error"]["message"].as_str().unwrap();
        assert!(m.starts_with(field), "{body}: {m}");
    }
    // Another user's upload is not the caller's to enhance.
    let other = Client::register(&s.base, "other-enhance@example.com");
    let (st, _) = other.post(
        "/api/enhance/image",
        json!({"image": input, "model": "sharp"}),
    );
    assert_eq!(st, 422);
}

#[test]
fn enhance_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("models.json"),
        json!({"tiny": golden("turbo"), "sharp": golden("upscale/compact.safetensors"),
               "face": golden("face/gfpgan.pth"), "finder": golden("face/retinaface.pth"),
               "former": golden("face/codeformer.pth"), "style": golden("lora/turbo_kohya.safetensors")})
        .to_string(),
    )
    .unwrap();
    let s = start(config(dir.path()), dir);
    enhance(&s);
}

/// A file server on 127.0.0.1 standing in for GitHub (the `[models] mirror`): `files` maps
/// a path to its bytes.
fn mirror(files: Vec<(String, Vec<u8>)>) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut reader = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = match files.iter().find(|(p, _)| p == path) {
                Some((_, b)) => ("200 OK", b.clone()),
                None => ("404 Not Found", Vec::new()),
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(&body);
        }
    });
    base
}

/// The curated upscalers and face models are offered before they are here (with their
/// size and licence), fetched on first use, and held to their pinned sums: a file that is
/// not the one the list pins fails the job and is not kept.
#[test]
fn curated_models_download_on_first_use() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    std::fs::write(
        data.join("models.json"),
        json!({"sharp": golden("upscale/compact.safetensors"), "face": golden("face/gfpgan.pth")})
            .to_string(),
    )
    .unwrap();
    let retina = std::fs::read(golden("face/retinaface.pth")).unwrap();
    let base = mirror(vec![
        (
            "/github.com/xinntao/facexlib/releases/download/v0.1.0/detection_mobilenet0.25_Final.pth"
                .into(),
            retina.clone(),
        ),
        (
            // Not the pinned x4plus.
            "/github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth"
                .into(),
            std::fs::read(golden("upscale/compact.safetensors")).unwrap(),
        ),
    ]);
    let mut cfg = config(&data);
    cfg.models.mirror = base;
    let s = start(cfg, dir);
    let c = Client::register(&s.base, "curated@example.com");

    let (_, models) = c.get("/api/models?capability=upscale");
    let models = models["models"].as_array().unwrap().clone();
    assert_eq!(models[0]["id"], "sharp");
    let x4 = models
        .iter()
        .find(|m| m["id"] == "realesrgan-x4plus")
        .unwrap();
    assert_eq!(
        (&x4["installed"], &x4["size"], &x4["license"]),
        (&json!(false), &json!(67040989), &json!("BSD-3-Clause")),
        "{x4}"
    );
    assert!(
        x4.get("source").is_none(),
        "only administrators see sources"
    );

    let (input, _) = upload(&c);
    let (st, j) = c.post(
        "/api/enhance/image",
        json!({"image": input, "model": "realesrgan-x4plus", "scale": 1}),
    );
    assert_eq!(st, 202, "{j}");
    let done = c.wait_job(j["id"].as_str().unwrap());
    assert_eq!(done["status"], "failed", "{done}");
    let m = done["error"]["message"].as_str().unwrap();
    assert!(m.contains("size mismatch"), "{m}");
    assert_eq!(done["error"]["code"], "model-unavailable", "{done}");
    let kept: Vec<_> = std::fs::read_dir(data.join("models"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        !kept
            .iter()
            .any(|n| n.to_string_lossy().contains("RealESRGAN")),
        "{kept:?}"
    );

    // No detector is installed: the curated one is fetched for the first face job.
    let (_, d) = c.get("/api/models?capability=face_detect");
    assert_eq!(d["models"][0]["id"], "retinaface-mobilenet", "{d}");
    assert_eq!(d["models"][0]["installed"], false, "{d}");
    let events = sse(&c);
    let (st, j) = c.post(
        "/api/enhance/image",
        json!({"image": input, "model": "sharp", "scale": 1, "face_restore": true}),
    );
    assert_eq!(st, 202, "{j}");
    let done = c.wait_job(j["id"].as_str().unwrap());
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        done["params"]["face_model"], "face",
        "installed first: {done}"
    );
    // The download is a stage of the job's progress, before its tiles.
    let mut stages = Vec::new();
    while let Ok((event, data)) = events.recv_timeout(std::time::Duration::from_secs(5)) {
        if data["id"] == j["id"] && event == "progress" {
            stages.push(data["stage"].as_str().unwrap_or("tiles").to_string());
        }
        if data["id"] == j["id"] && event == "completed" {
            break;
        }
    }
    assert_eq!(
        stages.first().map(String::as_str),
        Some("Downloading retinaface-mobilenet"),
        "{stages:?}"
    );
    assert_eq!(
        stages.last().map(String::as_str),
        Some("tiles"),
        "{stages:?}"
    );
    assert_eq!(
        std::fs::read(data.join("models/detection_mobilenet0.25_Final.pth")).unwrap(),
        retina
    );
    let (_, d) = c.get("/api/models?capability=face_detect");
    assert_eq!(d["models"][0]["installed"], true, "{d}");

    // Denoise needs a model with a denoising twin.
    let (st, e) = c.post(
        "/api/enhance/image",
        json!({"image": input, "model": "sharp", "denoise": 0.5}),
    );
    assert_eq!(st, 422, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("denoise"),
        "{e}"
    );
}
