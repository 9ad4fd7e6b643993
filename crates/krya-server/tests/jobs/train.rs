//! The train kind through `POST /api/train/model` on the tiny model: a training runs to its
//! steps with a loss per step, samples and a checkpoint, and ends with a kohya LoRA and a
//! dataset asset; a training cancelled after a checkpoint and resumed (`resume_from`) ends
//! with exactly the weights of the one never stopped, and its log says where it went on
//! from; the LoRA is the owner's at once (listed under `capability=lora`, applied by its id
//! in an image request, refused to anyone else); a person's training masks its loss to the
//! subject (the background-removal model's matte), which changes what it learns; bad
//! requests get a 422 naming the field.

use super::*;

fn picture(w: u32, h: u32, k: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 255 / w) as u8,
            ((y + 7 * k) * 255 / (h + 7 * k)) as u8,
            ((x + y) * 40 + 60 * k) as u8,
        ])
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

fn uploads(c: &Client) -> Vec<String> {
    [(48, 32), (32, 48), (40, 40)]
        .iter()
        .enumerate()
        .map(|(k, (w, h))| {
            let (st, a) = c.upload(picture(*w, *h, k as u32), "image/png");
            assert_eq!(st, 201, "{a}");
            a["id"].as_str().unwrap().to_string()
        })
        .collect()
}

fn request(images: &[String], steps: u32) -> Value {
    let images: Vec<Value> = images
        .iter()
        .zip(["a red sofa", "a cat", ""])
        .map(|(id, caption)| json!({"id": id, "caption": caption}))
        .collect();
    json!({
        "name": "Sofa", "preset": "object", "trigger": "zkx", "model": "tiny", "images": images,
        "steps": steps, "rank": 4, "learning_rate": 3e-3, "resolution": 32,
        "sample_every": steps / 2, "checkpoint_every": 4, "seed": 5, "sample_prompt": "a sofa",
    })
}

fn training(c: &Client, id: &str) -> Value {
    let (st, t) = c.get(&format!("/api/train/model/{id}"));
    assert_eq!(st, 200, "{t}");
    t
}

fn wait_training(c: &Client, id: &str) -> Value {
    c.wait_job(id);
    training(c, id)
}

/// The tensors of a safetensors file, by name.
fn tensors(bytes: &[u8]) -> std::collections::BTreeMap<String, Vec<f32>> {
    candle_core::safetensors::load_buffer(bytes, &candle_core::Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, t)| {
            let v = t
                .to_dtype(candle_core::DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            (k, v)
        })
        .collect()
}

fn train(s: &Server) {
    let c = Client::register(&s.base, "trainer@example.com");
    let images = uploads(&c);

    // Bad requests name the field.
    for (change, field) in [
        (json!({"images": []}), "images"),
        (json!({"steps": 0}), "steps"),
        (json!({"rank": 500}), "rank"),
        (json!({"name": " "}), "name"),
        (json!({"trigger": "a, b"}), "trigger"),
        (json!({"model": "nope"}), "model"),
        (json!({"resolution": 33}), "resolution"),
        (json!({"checkpoint_every": 0}), "checkpoint_every"),
        (json!({"images": [{"id": "nope"}]}), "images[0].id"),
        (json!({"resume_from": "nope"}), "resume_from"),
    ] {
        let mut body = request(&images, 8);
        for (k, v) in change.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (st, e) = c.post("/api/train/model", body.clone());
        assert_eq!(st, 422, "{body}: {e}");
        assert!(
            e["error"]["message"].as_str().unwrap().contains(field),
            "{field}: {e}"
        );
    }

    // A whole run.
    let before = c.credits();
    let (st, j) = c.post("/api/train/model", request(&images, 24));
    assert_eq!(st, 202, "{j}");
    assert_eq!(j["kind"], "train");
    assert_eq!(c.credits(), before - 1, "a credit per 100 steps");
    let whole = j["id"].as_str().unwrap().to_string();
    let t = wait_training(&c, &whole);
    assert_eq!(t["status"], "completed", "{t}");
    let tr = &t["training"];
    let losses = tr["losses"].as_array().unwrap();
    assert_eq!(losses.len(), 24, "{tr}");
    assert!(losses.iter().all(|l| l.as_f64().unwrap().is_finite()));
    assert_eq!(tr["resumed_at"], json!([]));
    assert_eq!(
        tr["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["step"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [12, 24]
    );
    let (st, png) = c.bytes(tr["samples"][1]["url"].as_str().unwrap());
    assert_eq!(st, 200);
    assert_eq!(image::load_from_memory(&png).unwrap().width(), 32);
    let lora = tr["lora"].as_str().unwrap().to_string();
    let output = |kind: &str| {
        let all = t["outputs"].as_array().unwrap();
        assert_eq!(all.len(), 2, "{t}");
        all.iter()
            .find(|o| o["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}: {t}"))
            .clone()
    };
    assert_eq!(output("lora")["id"], lora.as_str());
    let (_, file) = c.bytes(&format!("/api/assets/{lora}"));
    let whole_weights = tensors(&file);
    assert!(
        whole_weights
            .keys()
            .any(|k| k.starts_with("lora_unet_") && k.ends_with(".lora_up.weight")),
        "{:?}",
        whole_weights.keys().collect::<Vec<_>>()
    );
    let (_, dataset) = c.bytes(output("dataset")["url"].as_str().unwrap());
    let dataset: Value = serde_json::from_slice(&dataset).unwrap();
    assert_eq!(dataset["images"][1]["caption"], "a cat", "{dataset}");

    // Cancelled after a checkpoint, then resumed: the same weights as the whole run.
    let (st, j) = c.post("/api/train/model", request(&images, 24));
    assert_eq!(st, 202, "{j}");
    let stopped = j["id"].as_str().unwrap().to_string();
    c.wait_until(&format!("/api/train/model/{stopped}"), |t| {
        t["training"]["checkpoint_step"].as_u64().is_some()
            || t["status"] != "processing" && t["status"] != "pending"
    });
    let (st, cancelled) = c.post(&format!("/api/jobs/{stopped}/cancel"), json!({}));
    assert_eq!(
        st, 200,
        "the training ended before it was cancelled: {cancelled}"
    );
    c.wait_until(&format!("/api/train/model/{stopped}"), |t| {
        t["status"] == "cancelled"
    });
    // Resumed with its own settings only.
    let (st, e) = c.post(
        "/api/train/model",
        json!({"resume_from": stopped, "steps": 30}),
    );
    assert_eq!(st, 422, "{e}");
    let (st, j) = c.post("/api/train/model", json!({"resume_from": stopped}));
    assert_eq!(st, 202, "{j}");
    let resumed = j["id"].as_str().unwrap().to_string();
    let t = wait_training(&c, &resumed);
    assert_eq!(t["status"], "completed", "{t}");
    // It went on from the stopped one's last checkpoint (written as it stopped).
    let at = training(&c, &stopped)["training"]["checkpoint_step"]
        .as_u64()
        .unwrap();
    assert!((4..24).contains(&at), "{t}");
    assert_eq!(t["training"]["resumed_at"], json!([at]), "{t}");
    assert_eq!(t["training"]["losses"].as_array().unwrap().len(), 24);
    let (_, file) = c.bytes(&format!(
        "/api/assets/{}",
        t["training"]["lora"].as_str().unwrap()
    ));
    let resumed_weights = tensors(&file);
    assert_eq!(resumed_weights.len(), whole_weights.len());
    for (k, v) in &whole_weights {
        assert!(resumed_weights[k] == *v, "{k} differs after the resume");
    }
    // Only a stopped training is resumed.
    let (st, e) = c.post("/api/train/model", json!({"resume_from": whole}));
    assert_eq!(st, 422, "{e}");

    // A person: the loss counts only the subject, found by the background-removal model
    // (installed here, so it is the default), which changes what is learned.
    let person = |masked: Option<bool>| {
        let mut body = request(&images, 3);
        body["preset"] = json!("person");
        body["checkpoint_every"] = json!(3);
        if let Some(m) = masked {
            body["masked_loss"] = json!(m);
        }
        let (st, j) = c.post("/api/train/model", body);
        assert_eq!(st, 202, "{j}");
        let t = wait_training(&c, j["id"].as_str().unwrap());
        assert_eq!(t["status"], "completed", "{t}");
        let (_, file) = c.bytes(&format!(
            "/api/assets/{}",
            t["training"]["lora"].as_str().unwrap()
        ));
        (t["params"].clone(), tensors(&file))
    };
    let (p, masked) = person(None);
    assert_eq!(
        (&p["masked_loss"], &p["matte_model"]),
        (&json!(true), &json!("isnet")),
        "{p}"
    );
    // A person's text encoder trains too: its layers are in the file, as kohya names them.
    assert_eq!(p["train_text_encoder"], true, "{p}");
    assert!(
        masked
            .keys()
            .any(|k| k.starts_with("lora_te_text_model_encoder_layers_0_self_attn_q_proj")),
        "{:?}",
        masked.keys().collect::<Vec<_>>()
    );
    let (p, plain) = person(Some(false));
    assert_eq!(p["masked_loss"], false, "{p}");
    assert!(masked != plain, "the mask changed nothing");

    // An SDXL model trains its UNet (saved under the SGM names kohya uses); its text
    // encoders do not train yet.
    let mut body = request(&images, 3);
    body["model"] = json!("xl");
    body["checkpoint_every"] = json!(3);
    body["train_text_encoder"] = json!(true);
    let (st, e) = c.post("/api/train/model", body.clone());
    assert_eq!(st, 422, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("train_text_encoder"),
        "{e}"
    );
    body.as_object_mut().unwrap().remove("train_text_encoder");
    // And its resnets' convolutions (LoCon).
    body["train_conv_layers"] = json!(true);
    let (st, j) = c.post("/api/train/model", body);
    assert_eq!(st, 202, "{j}");
    let t = wait_training(&c, j["id"].as_str().unwrap());
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["params"]["train_text_encoder"], false, "{t}");
    let (_, file) = c.bytes(&format!(
        "/api/assets/{}",
        t["training"]["lora"].as_str().unwrap()
    ));
    let keys = tensors(&file);
    assert!(
        keys.keys()
            .any(|k| k.starts_with("lora_unet_input_blocks_")),
        "not SGM names"
    );
    // A resnet's first convolution, in SGM's names (`in_layers.2`), its `down` 4-D.
    assert!(
        keys.keys()
            .any(|k| k.contains("_in_layers_2.lora_down.weight")),
        "no convolution layers: {:?}",
        keys.keys().collect::<Vec<_>>()
    );

    // The LoRA is the owner's at once: listed, and applied by its id.
    let (_, list) = c.get("/api/models?capability=lora");
    let own = list["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == lora.as_str())
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(
        (own["name"].as_str(), own["own"].as_bool()),
        (Some("Sofa"), Some(true))
    );
    let (_, page) = c.get("/api/train/models");
    assert_eq!(page["items"].as_array().unwrap().len(), 6, "{page}");
    let generate = |c: &Client, loras: Value| {
        c.post(
            "/api/generate/image",
            json!({"prompt": "zkx, a sofa", "model": "tiny", "width": 32, "height": 32, "steps": 2, "seed": 3, "loras": loras}),
        )
    };
    let image_of = |g: &Value| {
        let g = c.wait(g["id"].as_str().unwrap());
        assert_eq!(g["status"], "completed", "{g}");
        c.bytes(g["images"][0]["url"].as_str().unwrap()).1
    };
    let (st, g) = generate(&c, json!([{"id": lora, "weight": 1.0}]));
    assert_eq!(st, 202, "{g}");
    let with = image_of(&g);
    let (_, g) = generate(&c, json!([]));
    let without = image_of(&g);
    assert!(
        png_rgb(&with).as_raw() != png_rgb(&without).as_raw(),
        "the trained LoRA changed nothing"
    );
    let other = Client::register(&s.base, "other@example.com");
    let (st, e) = generate(&other, json!([{"id": lora}]));
    assert_eq!(st, 422, "another user's LoRA: {e}");
    assert_eq!(other.get(&format!("/api/train/model/{whole}")).0, 404);
}

fn png_rgb(bytes: &[u8]) -> image::RgbImage {
    image::load_from_memory(bytes).unwrap().to_rgb8()
}

#[test]
fn train_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/../krya-engine/tests/golden");
    std::fs::write(
        dir.path().join("models.json"),
        json!({"tiny": format!("{golden}/turbo"), "xl": format!("{golden}/sdxl"),
               "isnet": format!("{golden}/matte/isnet.safetensors")})
        .to_string(),
    )
    .unwrap();
    let s = start(config(dir.path()), dir);
    train(&s);
}
