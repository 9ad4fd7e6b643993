//! Uploads end to end: a file (raw or as a form) stored as sent, image-to-image and
//! inpainting from it with the engine's own result, and every kind of bad input (wrong
//! types, oversized bodies, decompression bombs, others' assets) refused with the API's
//! error, on SQLite and PostgreSQL.

mod common;

use common::client::*;
use common::tiny::*;
use common::*;
use krya_engine::GenerateRequest;
use serde_json::{Value, json};

/// A small PNG claiming `w` x `h` pixels: a decompression bomb's header.
fn png_bomb(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    // An empty zlib stream stands in for the pixels: no decoder may get that far.
    for (kind, data) in [
        (&b"IHDR"[..], &ihdr[..]),
        (b"IDAT", &[0x78, 0x9c, 0x03, 0, 0, 0, 0, 1]),
        (b"IEND", &[]),
    ] {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut chunk = kind.to_vec();
        chunk.extend_from_slice(data);
        out.extend_from_slice(&chunk);
        out.extend_from_slice(&crc32(&chunk).to_be_bytes());
    }
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn uploads_img2img_and_bad_input(s: &Server) {
    let a = Client::register(&s.base, "ann@example.com");
    let init = std::fs::read(tiny_model().join("../init.png")).unwrap();
    // Content type is sniffed, not trusted.
    let (st, asset) = a.upload(init.clone(), "text/plain");
    assert_eq!(st, 201, "{asset}");
    assert_eq!(asset["mime"], "image/png");
    let aid = asset["id"].as_str().unwrap();
    let (st, back) = a.bytes(&format!("/api/assets/{aid}"));
    assert_eq!((st, back == init), (200, true));
    a.check_ranges(&format!("/api/assets/{aid}"), &init);
    // The same file as a form (field `file`), as browsers and most HTTP clients send it.
    let boundary = "----krya-test-boundary";
    let mut form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"init.png\"\r\n\
         Content-Type: image/png\r\n\r\n"
    )
    .into_bytes();
    form.extend_from_slice(&init);
    form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let (st, formed) = a.upload(form, &format!("multipart/form-data; boundary={boundary}"));
    assert_eq!(st, 201, "{formed}");
    assert_eq!(
        (&formed["mime"], &formed["width"], &formed["bytes"]),
        (&asset["mime"], &asset["width"], &asset["bytes"])
    );
    let (st, back) = a.bytes(&format!("/api/assets/{}", formed["id"].as_str().unwrap()));
    assert_eq!(
        (st, back == init),
        (200, true),
        "the form's file is stored as sent"
    );
    // A form without the field, or without a boundary: an error that names the field.
    for (body, ct) in [
        (
            &b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--b--\r\n"[..],
            "multipart/form-data; boundary=b",
        ),
        (&b"--b--\r\n"[..], "multipart/form-data"),
    ] {
        let (st, e) = a.upload(body.to_vec(), ct);
        assert_eq!(
            (st, e["error"]["code"].as_str()),
            (422, Some("invalid-input")),
            "{e}"
        );
        assert!(
            e["error"]["message"].as_str().unwrap().starts_with("file"),
            "{e}"
        );
    }
    let (st, sub) = a.post("/api/generate/image", json!({"prompt": "a painting", "model": "tiny", "steps": 4, "strength": 0.5, "seed": 11, "init_image": aid, "cfg_scale": 0}));
    assert_eq!(st, 202, "{sub}");
    let g = a.wait(sub["id"].as_str().unwrap());
    assert_eq!(g["status"], "completed", "{g}");
    let init_img = image::load_from_memory(&init).unwrap().to_rgb8();
    let expected = engine_images(&GenerateRequest {
        prompt: "a painting".into(),
        steps: Some(4),
        guidance: Some(0.0),
        seed: 11,
        init_image: Some(init_img.clone()),
        strength: 0.5,
        preview_every: 0,
        ..Default::default()
    });
    let png = a.bytes(g["images"][0]["url"].as_str().unwrap()).1;
    assert!(
        png_rgb(&png).as_raw() == expected[0].as_raw(),
        "img2img result differs from the engine's"
    );

    // Image-to-image without a size renders, and is priced, at the init image's size.
    let png = |w: u32, h: u32| {
        let mut out = Vec::new();
        image::RgbImage::from_pixel(w, h, image::Rgb([40, 90, 160]))
            .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    };
    let (st, big) = a.upload(png(2048, 1024), "image/png");
    assert_eq!(st, 201, "{big}");
    let credits = a.credits();
    // `broken` fails at load, so nothing renders at this size on the tiny model.
    let (st, sub) = a.post(
        "/api/generate/image",
        json!({"prompt": "x", "model": "broken", "init_image": big["id"], "batch_size": 2}),
    );
    assert_eq!(st, 202, "{sub}");
    let g = a
        .get(&format!(
            "/api/generate/image/{}",
            sub["id"].as_str().unwrap()
        ))
        .1;
    assert_eq!(
        (
            g["width"].as_i64(),
            g["height"].as_i64(),
            g["credits_used"].as_i64()
        ),
        (Some(2048), Some(1024), Some(4)),
        "2 images of 2 started megapixels: {g}"
    );
    // (The failure may already have refunded them: it comes fast.)
    assert_eq!(a.wait(sub["id"].as_str().unwrap())["status"], "failed");
    assert_eq!(a.credits(), credits, "not refunded");
    let (st, wide) = a.upload(png(3000, 1000), "image/png");
    assert_eq!(st, 201);
    let (st, e) = a.post(
        "/api/generate/image",
        json!({"prompt": "x", "model": "tiny", "init_image": wide["id"]}),
    );
    assert_eq!(st, 422);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("init_image"),
        "{e}"
    );

    // Uploads: bombs, truncation, non-images, size.
    let (st, e) = a.upload(png_bomb(100_000, 100_000), "image/png");
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (413, Some("too-large")),
        "{e}"
    );
    let (st, e) = a.upload(init[..init.len() / 2].to_vec(), "image/png");
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (422, Some("invalid-input")),
        "{e}"
    );
    let (st, e) = a.upload(b"GIF89a not accepted".to_vec(), "image/png");
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (415, Some("unsupported-media-type")),
        "{e}"
    );
    let (st, e) = a.upload(vec![0u8; 3 * 1024 * 1024], "image/png");
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (413, Some("too-large")),
        "{e}"
    );
    let (st, _) = a.upload(Vec::new(), "image/png");
    assert_eq!(st, 422);
    // A client that promises 1000 bytes, sends 10 and stops.
    {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(s.base.trim_start_matches("http://")).unwrap();
        write!(tcp, "POST /api/assets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n", a.token).unwrap();
        tcp.write_all(&init[..10]).unwrap();
        tcp.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        let _ = tcp.read_to_string(&mut answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
            "{answer}"
        );
    }
    let (st, listed) = a.get("/api/health");
    assert_eq!(st, 200, "{listed}");

    // Each validation rule names its field.
    let base = json!({"prompt": "x", "model": "tiny"});
    let cases: Vec<(Value, &str)> = vec![
        (json!({"prompt": "  "}), "prompt"),
        (json!({"model": "no-such-model"}), "model"),
        (json!({"width": 100, "height": 64}), "width"),
        (json!({"width": 64, "height": 4096}), "height"),
        (json!({"steps": 0}), "steps"),
        (json!({"steps": 151}), "steps"),
        (json!({"cfg_scale": -1}), "cfg_scale"),
        (json!({"seed": -5}), "seed"),
        (json!({"batch_size": 5}), "batch_size"),
        (json!({"scheduler": "warp"}), "scheduler"),
        (json!({"aspect_ratio": "9:1"}), "aspect_ratio"),
        (json!({"style": "nope"}), "style"),
        (json!({"init_image": aid, "strength": 2}), "strength"),
        (json!({"mask": aid}), "mask"),
        (json!({"init_image": "ffff"}), "init_image"),
        (json!({"webhook_url": "ftp://x"}), "webhook_url"),
        (json!({"clip_skip": 9}), "clip_skip"),
    ];
    for (over, field) in cases {
        let mut req = base.clone();
        for (k, v) in over.as_object().unwrap() {
            req[k] = v.clone();
        }
        let (st, e) = a.post("/api/generate/image", req.clone());
        assert_eq!(st, 422, "{req} -> {e}");
        assert_eq!(e["error"]["code"], "invalid-input");
        assert!(
            e["error"]["message"].as_str().unwrap().starts_with(field),
            "{req} -> {e}"
        );
    }
    let (st, e) = a.post(
        "/api/generate/image",
        json!({"prompt": "x", "colour": "red"}),
    );
    assert_eq!(st, 422, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("colour"));
    let mut r =
        a.a.post(format!("{}/api/generate/image", s.base))
            .header("Authorization", format!("Bearer {}", a.token))
            .header("Content-Type", "application/json")
            .send("{\"prompt\": ")
            .unwrap();
    assert_eq!(
        (
            r.status().as_u16(),
            json(&mut r)["error"]["code"].as_str().map(str::to_string)
        ),
        (400, Some("invalid-json".into()))
    );
    let mut r =
        a.a.post(format!("{}/api/generate/image", s.base))
            .header("Authorization", format!("Bearer {}", a.token))
            .header("Content-Type", "text/plain")
            .send("{}")
            .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(json(&mut r)["error"]["code"], "unsupported-media-type");
    // Unauthenticated.
    let mut r = post(
        &a.a,
        &format!("{}/api/generate/image", s.base),
        "{\"prompt\":\"x\"}",
    );
    assert_eq!(
        (
            r.status().as_u16(),
            json(&mut r)["error"]["code"].as_str().map(str::to_string)
        ),
        (401, Some("unauthorized".into()))
    );
    // A 50 MB body: refused with 413 (the body is drained so the client reads it), and
    // the server is fine.
    let big = vec![b' '; 50 * 1024 * 1024];
    let mut r =
        a.a.post(format!("{}/api/generate/image", s.base))
            .header("Authorization", format!("Bearer {}", a.token))
            .header("Content-Type", "application/json")
            .send(&big[..])
            .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(json(&mut r)["error"]["code"], "too-large");
    assert_eq!(a.get("/api/health").0, 200);
    assert_eq!(
        a.get("/api/styles").1["styles"].as_array().unwrap().len() > 3,
        true
    );
}

#[test]
fn uploads_img2img_and_bad_input_on_sqlite() {
    uploads_img2img_and_bad_input(&server(None));
}

#[test]
fn uploads_img2img_and_bad_input_on_postgres() {
    on_postgres(uploads_img2img_and_bad_input);
}
