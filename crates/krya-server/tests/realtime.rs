//! The live canvas over a real WebSocket (`/ws/realtime`) on the real server with the
//! committed tiny model (and its TAESD): frames match diffusers' reference, every message
//! type, malformed and oversized input keep the connection usable, unauthenticated
//! connections close with 4401, users never see each other's frames, the per-user session
//! limit, and latest-wins under a burst of inputs.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use krya_server::Config;
use serde::Serialize;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn golden(name: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../krya-engine/tests/golden"
    ))
    .join(name)
}

/// The Hugging Face hub is unreachable here: an empty cache and a closed loopback port.
/// Set once, before the first server starts (every test starts one through `server`).
fn unreachable_hub() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let cache = std::env::temp_dir().join(format!("krya-realtime-hf-{}", std::process::id()));
        // SAFETY: runs before any server (the only reader of these variables) exists;
        // other tests wait in `call_once` meanwhile.
        unsafe {
            std::env::set_var("HF_HUB_CACHE", cache);
            std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:1");
            std::env::remove_var("HF_HUB_OFFLINE");
        }
    });
}

fn server(adjust: impl FnOnce(&mut Config)) -> Server {
    unreachable_hub();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("models.json"),
        json!({"tiny": golden("turbo"), "plain": golden("sd1"), "kohya": golden("lora/sd1_kohya.safetensors")}).to_string(),
    )
    .unwrap();
    let mut config = Config::default();
    config.server.data_dir = dir.path().to_path_buf();
    config.jobs.in_process = false;
    // Quality 100: the frames can be compared with diffusers' pixels.
    config.realtime.jpeg_quality = 100;
    config.realtime.max_frame_bytes = 64 * 1024;
    adjust(&mut config);
    Server::start(config, dir)
}

fn register(base: &str, email: &str) -> String {
    let mut r = post(
        &agent(),
        &format!("{base}/api/auth/register"),
        &json!({"email": email, "password": "password123", "name": "T"}).to_string(),
    );
    assert_eq!(r.status(), 201);
    json(&mut r)["access_token"].as_str().unwrap().to_string()
}

async fn connect(base: &str, token: Option<&str>) -> Ws {
    let mut url = format!("{}/ws/realtime", base.replace("http://", "ws://"));
    if let Some(t) = token {
        url.push_str(&format!("?token={t}"));
    }
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Data {
    Bytes(serde_bytes::ByteBuf),
    Other(Value),
}

#[derive(serde::Deserialize)]
struct Raw {
    #[serde(rename = "type")]
    kind: String,
    data: Option<Data>,
    frame_id: Option<u64>,
    input_frame_id: Option<u64>,
    latency_ms: Option<f64>,
}

/// A server message as JSON, `data` bytes as an array of numbers.
fn decode(bytes: &[u8]) -> Value {
    let r: Raw = rmp_serde::from_slice(bytes).unwrap();
    let data = match r.data {
        Some(Data::Bytes(b)) => json!(b.into_vec()),
        Some(Data::Other(v)) => v,
        None => Value::Null,
    };
    json!({"type": r.kind, "data": data, "frame_id": r.frame_id, "input_frame_id": r.input_frame_id, "latency_ms": r.latency_ms})
}

/// The next message as JSON (`data` bytes as an array), within `secs`.
async fn next(ws: &mut Ws, secs: u64) -> Option<Value> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(secs), ws.next())
            .await
            .ok()??;
        match m.unwrap() {
            Message::Binary(b) => return Some(decode(&b)),
            Message::Close(c) => {
                return Some(json!({"type": "close", "code": c.map(|c| u16::from(c.code))}));
            }
            _ => continue,
        }
    }
}

/// Messages until one of `kind` arrives (statuses in between are skipped).
async fn next_of(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let m = next(ws, 60)
            .await
            .unwrap_or_else(|| panic!("no {kind} message"));
        if m["type"] == kind {
            return m;
        }
        assert_ne!(m["type"], "error", "unexpected error: {m}");
    }
}

#[derive(Serialize)]
struct Generate<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    data: GenerateData<'a>,
}

#[derive(Serialize, Default)]
struct GenerateData<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    canvas_data: Option<&'a serde_bytes::Bytes>,
    #[serde(skip_serializing_if = "Option::is_none")]
    strength: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    height: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    steps: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frame_id: Option<u64>,
}

fn generate(d: GenerateData) -> Message {
    Message::Binary(
        rmp_serde::to_vec_named(&Generate {
            kind: "generate",
            data: d,
        })
        .unwrap()
        .into(),
    )
}

fn packed(v: Value) -> Message {
    Message::Binary(rmp_serde::to_vec_named(&v).unwrap().into())
}

/// A 32x24 canvas: the golden one, with pixel `(k % 32, 0)` changed so every `k` differs.
fn canvas(k: u32) -> Vec<u8> {
    let mut img = image::open(golden("stream_canvas.png")).unwrap().to_rgb8();
    if k > 0 {
        img.put_pixel(
            k % 32,
            (k / 32) % 24,
            image::Rgb([(k * 37 % 256) as u8, 0, 255]),
        );
    }
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

fn frame_rgb(m: &Value) -> image::RgbImage {
    let bytes: Vec<u8> = m["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap() as u8)
        .collect();
    assert!(bytes.starts_with(&[0xFF, 0xD8]), "frames are JPEG");
    image::load_from_memory(&bytes).unwrap().to_rgb8()
}

/// A reference frame of `stream.safetensors` as an image (its tensor is height × width × 3).
fn reference(case: &str) -> image::RgbImage {
    let t = candle_core::safetensors::load(golden("stream.safetensors"), &candle_core::Device::Cpu)
        .unwrap();
    let t = &t[&format!("stream.{case}")];
    let (h, w, c) = t.dims3().unwrap();
    assert_eq!(c, 3);
    let bytes: Vec<u8> = t.flatten_all().unwrap().to_vec1().unwrap();
    image::RgbImage::from_raw(w as u32, h as u32, bytes).unwrap()
}

/// Mean absolute difference per channel value, in 1/255; the sizes must be equal first.
fn mean_abs_diff(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions(), "frame size");
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .sum::<f64>()
        / a.as_raw().len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_match_diffusers_and_bad_input_keeps_the_connection() {
    let s = server(|_| {});
    let token = register(&s.base, "ann@example.com");
    let mut ws = connect(&s.base, Some(&token)).await;
    let hello = next(&mut ws, 10).await.unwrap();
    assert_eq!(
        (hello["type"].as_str(), hello["data"]["status"].as_str()),
        (Some("status"), Some("ready"))
    );

    // The golden frame `turbo_canvas_1_05`: diffusers' img2img with TAESD, seed 7.
    let png = canvas(0);
    let input = |frame_id| GenerateData {
        prompt: Some("a lighthouse at dusk"),
        canvas_data: Some(serde_bytes::Bytes::new(&png)),
        strength: Some(0.5),
        seed: Some(7),
        model: Some("tiny"),
        steps: Some(1),
        frame_id: Some(frame_id),
        ..Default::default()
    };
    ws.send(generate(input(1))).await.unwrap();
    let f = next_of(&mut ws, "frame").await;
    assert_eq!(
        (f["input_frame_id"].as_u64(), f["frame_id"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(f["latency_ms"].as_f64().unwrap() > 0.0);
    let img = frame_rgb(&f);
    assert_eq!(img.dimensions(), (32, 24), "rendered at the canvas's size");
    let d = mean_abs_diff(&img, &reference("turbo_canvas_1_05"));
    assert!(
        d < 4.0,
        "the frame differs from diffusers by {d:.2}/255 on average"
    );

    // The same input again renders nothing: no frame arrives.
    ws.send(generate(input(2))).await.unwrap();
    let quiet = tokio::time::timeout(Duration::from_millis(800), next_of(&mut ws, "frame")).await;
    assert!(
        quiet.is_err(),
        "an unchanged input was rendered again: {quiet:?}"
    );

    // update_params changes the prompt: a new frame, the golden `turbo_canvas_2_07`
    // once the seed, strength and steps follow.
    ws.send(packed(json!({"type": "update_params", "data": {"prompt": "a red barn in a field", "strength": 0.7, "seed": 8, "steps": 2}}))).await.unwrap();
    let f = next_of(&mut ws, "frame").await;
    assert_eq!(
        f["input_frame_id"],
        Value::Null,
        "an update_params answers no client frame"
    );
    let d = mean_abs_diff(&frame_rgb(&f), &reference("turbo_canvas_2_07"));
    assert!(d < 4.0, "after update_params: {d:.2}/255");
    // A generate without canvas_data keeps the canvas: back to `turbo_canvas_1_05`.
    ws.send(generate(GenerateData {
        prompt: Some("a lighthouse at dusk"),
        strength: Some(0.5),
        seed: Some(7),
        steps: Some(1),
        frame_id: Some(20),
        ..Default::default()
    }))
    .await
    .unwrap();
    let f = next_of(&mut ws, "frame").await;
    let d = mean_abs_diff(&frame_rgb(&f), &reference("turbo_canvas_1_05"));
    assert!(
        d < 4.0,
        "an absent canvas_data dropped the canvas: {d:.2}/255"
    );

    // Text only: no canvas.
    ws.send(generate(GenerateData {
        prompt: Some("a lighthouse at dusk"),
        seed: Some(5),
        steps: Some(1),
        width: Some(32),
        height: Some(24),
        frame_id: Some(3),
        canvas_data: Some(serde_bytes::Bytes::new(&[])),
        ..Default::default()
    }))
    .await
    .unwrap();
    let f = next_of(&mut ws, "frame").await;
    let d = mean_abs_diff(&frame_rgb(&f), &reference("turbo_text"));
    assert!(d < 4.0, "text only: {d:.2}/255");

    // Bad input: an error naming the problem, and the connection stays usable.
    let big = vec![0u8; 100 * 1024];
    let bad: Vec<(Message, &str, &str)> = vec![
        (
            Message::Binary(b"\xc1 not msgpack".to_vec().into()),
            "invalid-message",
            "",
        ),
        (
            packed(json!({"type": "dance", "data": {}})),
            "unknown-type",
            "dance",
        ),
        (
            Message::Text("{\"type\":\"generate\"}".into()),
            "invalid-message",
            "binary",
        ),
        (
            packed(json!({"type": "update_params", "data": {"strength": 2.0}})),
            "invalid-input",
            "strength",
        ),
        (
            packed(json!({"type": "update_params", "data": {"steps": 9}})),
            "invalid-input",
            "steps",
        ),
        (
            packed(json!({"type": "update_params", "data": {"width": 30, "height": 24}})),
            "invalid-input",
            "width",
        ),
        (
            generate(GenerateData {
                canvas_data: Some(serde_bytes::Bytes::new(&big)),
                ..Default::default()
            }),
            "too-large",
            "canvas_data",
        ),
        (
            generate(GenerateData {
                canvas_data: Some(serde_bytes::Bytes::new(b"GIF89a....")),
                ..Default::default()
            }),
            "unsupported-media-type",
            "canvas_data",
        ),
    ];
    for (msg, code, needle) in bad {
        ws.send(msg).await.unwrap();
        let e = next_of(&mut ws, "error").await;
        assert_eq!(e["data"]["code"], code, "{e}");
        assert!(
            e["data"]["message"].as_str().unwrap().contains(needle),
            "{e}"
        );
    }
    // A model that does not exist: the error comes from the render.
    ws.send(generate(GenerateData {
        model: Some("nope"),
        frame_id: Some(4),
        ..input(4)
    }))
    .await
    .unwrap();
    let e = next_of(&mut ws, "error").await;
    assert!(
        e["data"]["message"].as_str().unwrap().contains("nope"),
        "{e}"
    );
    ws.send(generate(GenerateData {
        frame_id: Some(5),
        ..input(5)
    }))
    .await
    .unwrap();
    let f = next_of(&mut ws, "frame").await;
    assert_eq!(f["input_frame_id"], 5, "usable after every bad message");
    save_to_gallery(&s.base, &token, &f).await;
}

/// "Save to gallery": a frame, uploaded, becomes a completed generation of the caller's,
/// with its parameters in the PNG.
async fn save_to_gallery(base: &str, token: &str, frame: &Value) {
    let jpeg: Vec<u8> = frame["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap() as u8)
        .collect();
    let (base, t) = (base.to_string(), format!("Bearer {token}"));
    let (g, png, listed, jpeg) = tokio::task::spawn_blocking(move || {
        let a = agent();
        let send = |path: &str, body: Value| {
            let mut r = a.post(format!("{base}{path}")).header("Authorization", &t).header("Content-Type", "application/json").send(body.to_string()).unwrap();
            (r.status().as_u16(), json(&mut r))
        };
        let mut r = a.post(format!("{base}/api/assets")).header("Authorization", &t).header("Content-Type", "image/jpeg").send(&jpeg[..]).unwrap();
        assert_eq!(r.status(), 201);
        let asset = json(&mut r)["id"].as_str().unwrap().to_string();
        let (st, g) = send("/api/realtime/captures", json!({"image": asset, "prompt": "a lighthouse at dusk", "model": "tiny", "seed": 7, "strength": 0.5, "steps": 1}));
        assert_eq!(st, 201, "{g}");
        let (st, e) = send("/api/realtime/captures", json!({"image": "nope", "prompt": "x", "model": "tiny"}));
        assert_eq!(st, 422);
        assert!(e["error"]["message"].as_str().unwrap().starts_with("image:"), "{e}");
        // An upload the server did not render for this user is not a capture.
        let other = std::fs::read(golden("init.png")).unwrap();
        let mut r = a.post(format!("{base}/api/assets")).header("Authorization", &t).header("Content-Type", "image/png").send(&other[..]).unwrap();
        assert_eq!(r.status(), 201);
        let other = json(&mut r)["id"].as_str().unwrap().to_string();
        let (st, e) = send("/api/realtime/captures", json!({"image": other, "prompt": "not rendered", "model": "tiny"}));
        assert_eq!(st, 422, "{e}");
        assert!(e["error"]["message"].as_str().unwrap().contains("not a frame this server rendered"), "{e}");
        let url = format!("{base}{}", g["images"][0]["url"].as_str().unwrap());
        let png = a.get(url).header("Authorization", &t).call().unwrap().body_mut().read_to_vec().unwrap();
        let listed = json(&mut a.get(format!("{base}/api/generate/images")).header("Authorization", &t).call().unwrap());
        // The capture is an image job like any other: listed, its picture an asset made
        // from the canvas upload, and deleted the same way.
        let jobs = json(&mut a.get(format!("{base}/api/jobs?kind=image")).header("Authorization", &t).call().unwrap());
        let job = &jobs["items"][0];
        assert_eq!((&job["ref_id"], &job["status"], &job["cost"]), (&g["id"], &json!("completed"), &json!(0)), "{jobs}");
        let out = &job["outputs"][0];
        assert_eq!((out["parent_id"].as_str(), out["kind"].as_str()), (Some(asset.as_str()), Some("image")), "{job}");
        let same = a.get(format!("{base}{}", out["url"].as_str().unwrap())).header("Authorization", &t).call().unwrap().body_mut().read_to_vec().unwrap();
        assert_eq!(same, png, "the output asset is the saved PNG");
        let (st, again) = send("/api/realtime/captures", json!({"image": asset, "prompt": "to delete", "model": "tiny"}));
        assert_eq!(st, 201, "{again}");
        let r = a.delete(format!("{base}/api/generate/image/{}", again["id"].as_str().unwrap())).header("Authorization", &t).call().unwrap();
        assert_eq!(r.status(), 204);
        (g, png, listed, jpeg)
    })
    .await
    .unwrap();
    assert_eq!(
        (
            g["status"].as_str(),
            g["credits_used"].as_i64(),
            g["is_public"].as_bool()
        ),
        (Some("completed"), Some(0), Some(false))
    );
    assert_eq!(listed["items"][0]["id"], g["id"]);
    let params = krya_engine::image_io::read_png_parameters(&png).unwrap();
    assert!(
        params.starts_with("a lighthouse at dusk")
            && params.contains("Seed: 7")
            && params.contains("Source: live canvas"),
        "{params}"
    );
    let stored = image::load_from_memory(&png).unwrap().to_rgb8();
    assert_eq!(
        stored,
        image::load_from_memory(&jpeg).unwrap().to_rgb8(),
        "the saved image is the frame"
    );
}

/// A model without a TAESD of its own, whose TAESD cannot be downloaded: frames come from
/// the model's own VAE, and every status says so.
/// The engine's own frame for the golden SD 1.x model (a LoRA merged when given): the
/// image-to-image render of `png` with the prompt, seed and strength these tests send.
fn engine_frame(png: &[u8], lora: Option<f32>) -> image::RgbImage {
    let mut model = krya_engine::model::load(
        &krya_engine::model::ModelSource::Folder(golden("sd1")),
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
    )
    .unwrap();
    if let Some(w) = lora {
        use krya_engine::pipelines::lora;
        let f = lora::LoraFile::load(&golden("lora/sd1_kohya.safetensors")).unwrap();
        model = lora::apply(&model, &[(&f, lora::Strength::new(w))])
            .unwrap()
            .0;
    }
    let mut stream = krya_engine::pipelines::stable_diffusion::stream::Stream::new(
        std::sync::Arc::new(model),
        None,
    )
    .unwrap();
    stream
        .render(
            &krya_engine::pipelines::stable_diffusion::stream::FrameRequest {
                prompt: "a lighthouse at dusk".into(),
                seed: 7,
                strength: 0.5,
                steps: 2,
                width: 32,
                height: 24,
                canvas: Some(std::sync::Arc::new(
                    image::load_from_memory(png).unwrap().to_rgb8(),
                )),
            },
            &krya_engine::CancelToken::new(),
        )
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_without_taesd_streams_through_its_own_vae() {
    let s = server(|_| {});
    let token = register(&s.base, "plain@example.com");
    let mut ws = connect(&s.base, Some(&token)).await;
    assert_eq!(next(&mut ws, 10).await.unwrap()["data"]["status"], "ready");
    let png = canvas(0);
    ws.send(generate(GenerateData {
        prompt: Some("a lighthouse at dusk"),
        canvas_data: Some(serde_bytes::Bytes::new(&png)),
        strength: Some(0.5),
        seed: Some(7),
        model: Some("plain"),
        steps: Some(2),
        frame_id: Some(1),
        ..Default::default()
    }))
    .await
    .unwrap();
    let mut notices = Vec::new();
    let frame = loop {
        let m = next(&mut ws, 120).await.expect("a frame");
        assert_ne!(
            m["type"], "error",
            "the hub being unreachable failed the canvas: {m}"
        );
        if m["type"] == "status" {
            notices.push(m["data"]["detail"].clone());
        }
        if m["type"] == "frame" {
            break m;
        }
    };
    assert!(
        notices.iter().any(|d| d
            .as_str()
            .is_some_and(|d| d.contains("no tiny autoencoder") && d.contains("own VAE"))),
        "no status said the model's own VAE is used: {notices:?}"
    );
    // The frame is the model's own image-to-image result (engine side, same request).
    let img = frame_rgb(&frame);
    let want = engine_frame(&png, None);
    let d = mean_abs_diff(&img, &want);
    assert!(d < 4.0, "the frame differs from the engine's by {d:.2}/255");
    // Later statuses keep saying it.
    ws.send(packed(
        json!({"type": "update_params", "data": {"seed": 8}}),
    ))
    .await
    .unwrap();
    let status = loop {
        let m = next(&mut ws, 120).await.expect("a status");
        if m["type"] == "status" {
            break m;
        }
    };
    assert!(
        status["data"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("own VAE")),
        "{status}"
    );
}

/// The next frame of a session (statuses skipped); an error fails the test.
async fn next_frame(ws: &mut Ws) -> Value {
    loop {
        let m = next(ws, 120).await.expect("a frame");
        assert_ne!(m["type"], "error", "{m}");
        if m["type"] == "frame" {
            break m;
        }
    }
}

/// `loras` in the session's parameters and `<lora:ID:WEIGHT>` in its prompt render the
/// engine's frame with the LoRA merged, the same either way; dropping them renders the base
/// model's frame again; an unknown LoRA is an error that names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loras_apply_to_the_live_canvas() {
    let s = server(|_| {});
    let token = register(&s.base, "lora@example.com");
    let mut ws = connect(&s.base, Some(&token)).await;
    assert_eq!(next(&mut ws, 10).await.unwrap()["data"]["status"], "ready");
    let png = canvas(0);
    ws.send(packed(json!({"type": "generate", "data": {
        "prompt": "a lighthouse at dusk", "canvas_data": serde_bytes::Bytes::new(&png),
        "strength": 0.5, "seed": 7, "model": "plain", "steps": 2, "frame_id": 1,
        "loras": [{"id": "kohya", "weight": 0.8}],
    }})))
    .await
    .unwrap();
    let with = frame_rgb(&next_frame(&mut ws).await);
    let (want, base) = (engine_frame(&png, Some(0.8)), engine_frame(&png, None));
    let d = mean_abs_diff(&with, &want);
    assert!(
        d < 4.0,
        "the frame differs from the engine's with the LoRA by {d:.2}/255"
    );
    assert!(
        mean_abs_diff(&with, &base) > 10.0,
        "the LoRA changed little"
    );

    // Without it: the base model's frame.
    ws.send(packed(
        json!({"type": "update_params", "data": {"loras": []}}),
    ))
    .await
    .unwrap();
    let without = frame_rgb(&next_frame(&mut ws).await);
    assert!(mean_abs_diff(&without, &base) < 4.0);
    // As a prompt tag: the same frame as by the field.
    ws.send(packed(json!({"type": "update_params", "data": {"prompt": "a lighthouse at dusk <lora:kohya:0.8>"}})))
        .await
        .unwrap();
    let tagged = frame_rgb(&next_frame(&mut ws).await);
    assert_eq!(tagged.as_raw(), with.as_raw());

    // An unknown one, and a bad weight.
    ws.send(packed(json!({"type": "update_params", "data": {"prompt": "a lighthouse", "loras": [{"id": "nope"}]}})))
        .await
        .unwrap();
    let e = next_of(&mut ws, "error").await;
    assert!(
        e["data"]["message"].as_str().unwrap().contains("nope"),
        "{e}"
    );
    ws.send(packed(
        json!({"type": "update_params", "data": {"loras": [{"id": "kohya", "weight": 50}]}}),
    ))
    .await
    .unwrap();
    let e = next_of(&mut ws, "error").await;
    assert!(
        e["data"]["message"].as_str().unwrap().starts_with("loras:"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_close_with_4401() {
    let s = server(|_| {});
    for token in [None, Some("not-a-token")] {
        let mut ws = connect(&s.base, token).await;
        let m = next(&mut ws, 10).await.unwrap();
        assert_eq!(
            (m["type"].as_str(), m["code"].as_u64()),
            (Some("close"), Some(4401)),
            "{token:?}: {m}"
        );
    }
    // The session cookie works too.
    let token = register(&s.base, "c@example.com");
    let url = format!("{}/ws/realtime", s.base.replace("http://", "ws://"));
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .unwrap();
    req.headers_mut()
        .insert("cookie", format!("krya_session={token}").parse().unwrap());
    let mut ws = tokio_tungstenite::connect_async(req).await.unwrap().0;
    assert_eq!(next(&mut ws, 10).await.unwrap()["data"]["status"], "ready");
}

async fn connect_with(base: &str, headers: &[(&'static str, String)]) -> Ws {
    let url = format!("{}/ws/realtime", base.replace("http://", "ws://"));
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(*k, v.parse().unwrap());
    }
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

/// The cookie only works from the studio's own pages; a canvas ends when its token stops
/// being valid (4401) and when the server shuts down (1001).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_revoked_and_shutdown_connections_close() {
    let mut s = server(|c| c.server.stream_auth_check_secs = 0.2);
    let token = register(&s.base, "e@example.com");
    let host = s.base.trim_start_matches("http://").to_string();
    let cookie = format!("krya_session={token}");
    let mut evil = connect_with(
        &s.base,
        &[
            ("cookie", cookie.clone()),
            ("origin", "http://evil.example".into()),
        ],
    )
    .await;
    assert_eq!(
        next(&mut evil, 10).await.unwrap()["code"],
        4401,
        "a cross-site page used the cookie"
    );
    let mut own = connect_with(
        &s.base,
        &[("cookie", cookie), ("origin", format!("http://{host}"))],
    )
    .await;
    assert_eq!(next(&mut own, 10).await.unwrap()["data"]["status"], "ready");

    // Logging out ends the canvas opened with that session.
    let mut ws = connect(&s.base, Some(&token)).await;
    assert_eq!(next(&mut ws, 10).await.unwrap()["data"]["status"], "ready");
    let base = s.base.clone();
    let t = token.clone();
    tokio::task::spawn_blocking(move || {
        let r = agent()
            .post(format!("{base}/api/auth/logout"))
            .header("Authorization", format!("Bearer {t}"))
            .send("")
            .unwrap();
        assert_eq!(r.status(), 204);
    })
    .await
    .unwrap();
    let m = next_of_close(&mut ws).await;
    assert_eq!(m["code"], 4401, "{m}");

    // Shutdown: open canvases are told, with 1001.
    let t2 = register(&s.base, "f@example.com");
    let mut ws = connect(&s.base, Some(&t2)).await;
    assert_eq!(next(&mut ws, 10).await.unwrap()["data"]["status"], "ready");
    let stop = s.stop.take().unwrap();
    stop.send(()).unwrap();
    let m = next_of_close(&mut ws).await;
    assert_eq!(m["code"], 1001, "{m}");
}

async fn next_of_close(ws: &mut Ws) -> Value {
    loop {
        let m = next(ws, 20)
            .await
            .expect("the server closed without a close frame");
        if m["type"] == "close" {
            return m;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_see_only_their_frames_and_sessions_are_limited() {
    let s = server(|c| c.realtime.sessions_per_user = 2);
    let (ta, tb) = (
        register(&s.base, "a@example.com"),
        register(&s.base, "b@example.com"),
    );
    let (mut a, mut b) = (
        connect(&s.base, Some(&ta)).await,
        connect(&s.base, Some(&tb)).await,
    );
    for ws in [&mut a, &mut b] {
        assert_eq!(next(ws, 10).await.unwrap()["data"]["status"], "ready");
    }
    // Both stream at once; each gets frames only for its own inputs.
    let pngs: Vec<Vec<u8>> = (0..6).map(canvas).collect();
    for k in 0..3 {
        for (ws, base) in [(&mut a, 100u64), (&mut b, 200u64)] {
            let data = GenerateData {
                prompt: Some("a red barn in a field"),
                canvas_data: Some(serde_bytes::Bytes::new(
                    &pngs[k as usize + if base == 100 { 0 } else { 3 }],
                )),
                model: Some("tiny"),
                frame_id: Some(base + k),
                ..Default::default()
            };
            ws.send(generate(data)).await.unwrap();
        }
    }
    for (ws, base) in [(&mut a, 100u64), (&mut b, 200u64)] {
        let mut last = 0;
        while last != base + 2 {
            let f = next_of(ws, "frame").await;
            last = f["input_frame_id"].as_u64().unwrap();
            assert!(
                (base..base + 3).contains(&last),
                "a frame for someone else's input: {last}"
            );
        }
    }
    // A third canvas for A is refused and closed; B is unaffected. The second is ready
    // (registered) before the third connects, or the two race for the last place.
    let mut a2 = connect(&s.base, Some(&ta)).await;
    assert_eq!(next(&mut a2, 10).await.unwrap()["data"]["status"], "ready");
    let mut a3 = connect(&s.base, Some(&ta)).await;
    let e = next(&mut a3, 10).await.unwrap();
    assert_eq!(e["data"]["code"], "too-many-sessions", "{e}");
    let c = next(&mut a3, 10).await.unwrap();
    assert_eq!(c["code"], 4429, "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_renders_the_latest_input_not_a_backlog() {
    let s = server(|_| {});
    let token = register(&s.base, "d@example.com");
    let mut ws = connect(&s.base, Some(&token)).await;
    next(&mut ws, 10).await.unwrap();
    let pngs: Vec<Vec<u8>> = (1..=100).map(canvas).collect();
    for (k, png) in pngs.iter().enumerate() {
        let data = GenerateData {
            prompt: Some("a lighthouse at dusk"),
            canvas_data: Some(serde_bytes::Bytes::new(png)),
            model: Some("tiny"),
            steps: Some(2),
            frame_id: Some(k as u64 + 1),
            ..Default::default()
        };
        ws.send(generate(data)).await.unwrap();
    }
    let mut answered = Vec::new();
    while answered.last() != Some(&100) {
        let f = next_of(&mut ws, "frame").await;
        answered.push(f["input_frame_id"].as_u64().unwrap());
    }
    assert!(
        answered.windows(2).all(|w| w[0] < w[1]),
        "frames answer inputs in order: {answered:?}"
    );
    println!("{} renders for 100 inputs: {answered:?}", answered.len());
    assert!(
        answered.len() <= 20,
        "{} renders for 100 inputs: {answered:?}",
        answered.len()
    );
    // Nothing more is rendered afterwards.
    let quiet = tokio::time::timeout(Duration::from_millis(800), next_of(&mut ws, "frame")).await;
    assert!(quiet.is_err(), "rendered after the last input: {quiet:?}");
}

fn usage(base: &str, token: &str) -> Value {
    let mut r = agent()
        .get(format!("{base}/api/user/usage"))
        .header("Authorization", format!("Bearer {token}"))
        .call()
        .unwrap();
    json(&mut r)
}

/// Renders `n` distinct frames on one connection, then closes it.
async fn render_frames(base: &str, token: &str, n: u32) {
    let mut ws = connect(base, Some(token)).await;
    assert_eq!(next(&mut ws, 10).await.unwrap()["data"]["status"], "ready");
    for k in 0..n {
        let prompt = format!("a lighthouse, take {k}");
        let data = GenerateData {
            prompt: Some(&prompt),
            model: Some("tiny"),
            steps: Some(2),
            frame_id: Some(k as u64 + 1),
            ..Default::default()
        };
        ws.send(generate(data)).await.unwrap();
        let f = next_of(&mut ws, "frame").await;
        assert_eq!(f["input_frame_id"], k + 1);
    }
    ws.close(None).await.unwrap();
}

/// The live canvas is metered: a session is charged `credits_per_minute` for its frames'
/// render time, which usage shows; a balance that runs out ends the canvas with an
/// `insufficient-credits` error and close code 4402; without credits a canvas does not open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_rendering_is_metered_and_shown_in_usage() {
    // 600 credits a minute: one per 100 ms of rendering.
    let s = server(|c| {
        c.realtime.credits_per_minute = 600.0;
        c.server.stream_auth_check_secs = 0.2;
    });
    let token = register(&s.base, "meter@example.com");
    let (base, t) = (s.base.clone(), token.clone());
    let before = tokio::task::spawn_blocking(move || usage(&base, &t))
        .await
        .unwrap();
    assert_eq!(before["live_credits_per_minute"], 600.0);
    let started = std::time::Instant::now();
    render_frames(&s.base, &token, 6).await;
    let wall = started.elapsed().as_secs_f64();
    // The last settlement runs as the connection ends and rounds the fraction up: wait
    // for it (a settlement during the session can make the usage row first, with the
    // fraction still owed; waiting for the row alone once read that one in CI).
    let (base, t) = (s.base.clone(), token.clone());
    let spent = before["credits_remaining"].as_i64().unwrap();
    let after = tokio::task::spawn_blocking(move || {
        let mut last = Value::Null;
        for _ in 0..200 {
            let u = usage(&base, &t);
            let live: f64 = u["history"]
                .as_array()
                .unwrap_or_else(|| panic!("{u}"))
                .iter()
                .map(|d| d["live_seconds"].as_f64().unwrap_or(0.0))
                .sum();
            let used = spent - u["credits_remaining"].as_i64().unwrap();
            if live > 0.0 && used >= ((live * 1000.0).round() / 100.0).ceil() as i64 {
                return u;
            }
            last = u;
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no final live-canvas settlement was recorded: {last}");
    })
    .await
    .unwrap();
    let live: f64 = after["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["live_seconds"].as_f64().unwrap())
        .sum();
    assert!(live > 0.0 && live <= wall, "{live} s rendered in {wall} s");
    let used = before["credits_remaining"].as_i64().unwrap()
        - after["credits_remaining"].as_i64().unwrap();
    // Charged for what usage shows (milliseconds there, microseconds when charging),
    // the last fraction rounded up.
    let ms = (live * 1000.0).round();
    let expected = [
        (ms / 100.0).ceil() as i64,
        ((ms + 1.0) / 100.0).ceil() as i64,
    ];
    assert!(
        expected.contains(&used),
        "charged {used} for {ms} ms (expected {expected:?})"
    );
    assert_eq!(
        after["credits_used_today"].as_i64().unwrap(),
        used,
        "{after}"
    );
    drop(s);

    // So dear that the first frame costs more than the day's credits: the canvas ends,
    // and the next one does not open.
    let s = server(|c| {
        c.realtime.credits_per_minute = 60_000_000.0;
        c.server.stream_auth_check_secs = 0.2;
    });
    let token = register(&s.base, "broke@example.com");
    let mut ws = connect(&s.base, Some(&token)).await;
    next(&mut ws, 10).await.unwrap();
    let data = GenerateData {
        prompt: Some("a lighthouse"),
        model: Some("tiny"),
        steps: Some(2),
        ..Default::default()
    };
    ws.send(generate(data)).await.unwrap();
    next_of(&mut ws, "frame").await;
    let mut error = None;
    let close = loop {
        let m = next(&mut ws, 20).await.expect("the canvas stayed open");
        match m["type"].as_str() {
            Some("error") => error = Some(m),
            Some("close") => break m,
            _ => {}
        }
    };
    assert_eq!(close["code"], 4402, "{close}");
    let error = error.expect("an error before the close");
    assert_eq!(error["data"]["code"], "insufficient-credits", "{error}");
    let (base, t) = (s.base.clone(), token.clone());
    let u = tokio::task::spawn_blocking(move || usage(&base, &t))
        .await
        .unwrap();
    assert_eq!(u["credits_remaining"], 0, "{u}");
    let mut ws = connect(&s.base, Some(&token)).await;
    let m = next(&mut ws, 10).await.unwrap();
    assert_eq!(m["data"]["code"], "insufficient-credits", "{m}");
    assert_eq!(next(&mut ws, 10).await.unwrap()["code"], 4402);
}
