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
        // The server may answer and close first (it has read all it needs to refuse).
        let _ = tcp.write_all(&init[..10]);
        let _ = tcp.shutdown(std::net::Shutdown::Write);
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

/// A noise PNG of about `side² · 3` bytes (noise does not compress).
fn noise_png(side: u32, seed: u8) -> Vec<u8> {
    let mut x = seed as u32 + 1;
    let img = image::RgbImage::from_fn(side, side, |_, _| {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        image::Rgb([(x >> 16) as u8, (x >> 8) as u8, (x >> 24) as u8])
    });
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// Deleting uploads; the storage quota for uploads and submissions; and uploads no job used
/// removed after a while, at the next start, while a used one stays.
#[test]
fn uploads_are_deleted_counted_and_swept() {
    use krya_server::Config;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("models.json"),
        json!({"tiny": tiny_model()}).to_string(),
    )
    .unwrap();
    let mut config = Config::default();
    config.server.data_dir = dir.path().to_path_buf();
    config.jobs.poll_ms = 50;
    config.limits.storage_mb_per_user = 1;
    config.limits.unused_upload_hours = 1;
    let (base, stop, handle) = start_with(config.clone());
    let a = Client::register(&base, "ann@example.com");
    let b = Client::register(&base, "bob@example.com");
    let big = noise_png(500, 1);
    assert!(
        big.len() > 400_000 && big.len() < 1024 * 1024,
        "{}",
        big.len()
    );
    let (st, first) = a.upload(big.clone(), "image/png");
    assert_eq!(st, 201, "{first}");
    let first = first["id"].as_str().unwrap().to_string();
    // A second would pass 1 MiB.
    let (st, e) = a.upload(noise_png(500, 2), "image/png");
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (403, Some("quota-exceeded")),
        "{e}"
    );
    assert_eq!(
        b.upload(noise_png(500, 2), "image/png").0,
        201,
        "bob has his own"
    );
    // Deleting: not another's; gone with its file; then there is room again.
    let path = format!("/api/assets/{first}");
    assert_eq!(b.send("DELETE", &path, Value::Null, &[]).0, 404);
    let blobs = dir.path().join("blobs/assets");
    let before = std::fs::read_dir(&blobs).unwrap().count();
    assert_eq!(a.send("DELETE", &path, Value::Null, &[]).0, 204);
    assert_eq!(a.bytes(&path).0, 404);
    assert_eq!(std::fs::read_dir(&blobs).unwrap().count(), before - 1);
    let small = std::fs::read(tiny_model().join("../init.png")).unwrap();
    let (_, used) = a.upload(small.clone(), "image/png");
    let (_, unused) = a.upload(small.clone(), "image/png");
    let (used, unused) = (used["id"].as_str().unwrap(), unused["id"].as_str().unwrap());
    let (st, g) = a.post(
        "/api/generate/image",
        json!({"prompt": "x", "model": "tiny", "init_image": used, "strength": 0.5, "steps": 2}),
    );
    assert_eq!(st, 202, "{g}");
    let g = a.wait(g["id"].as_str().unwrap());
    assert_eq!(g["status"], "completed", "{g}");
    // An output is deleted with its job, not alone.
    let job = &a.get("/api/jobs?kind=image").1["items"][0];
    let out = job["outputs"][0]["id"].as_str().unwrap();
    assert_eq!(
        a.send("DELETE", &format!("/api/assets/{out}"), Value::Null, &[])
            .0,
        409
    );
    stop.send(()).unwrap();
    handle.join().unwrap().unwrap();

    // Two hours later (the rows made older), the next start removes the unused upload.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let db = krya_server::open_database(&config).await.unwrap();
        sqlx::query("UPDATE assets SET created_at = created_at - 7200")
            .execute(&db.pool)
            .await
            .unwrap();
        // A delivery finished long ago is pruned; a user's job of the same age is not.
        sqlx::query("INSERT INTO jobs (id, kind, ref_id, user_id, status, attempts, max_attempts, run_after, created_at, completed_at) \
                     VALUES ('old-delivery', 'webhook', 'x', 'u', 'completed', 1, 5, 0, 0, 0)")
            .execute(&db.pool)
            .await
            .unwrap();
        sqlx::query("UPDATE jobs SET completed_at = 0 WHERE kind = 'image'")
            .execute(&db.pool)
            .await
            .unwrap();
    });
    let count = |sql: &'static str| {
        let config = config.clone();
        rt.block_on(async move {
            use sqlx::Row;
            let db = krya_server::open_database(&config).await.unwrap();
            sqlx::query(sql)
                .fetch_one(&db.pool)
                .await
                .unwrap()
                .get::<i64, _>("n")
        })
    };
    let images = count("SELECT COUNT(*) AS n FROM jobs WHERE kind = 'image'");
    let (base, stop, handle) = start_with(config.clone());
    let a = Client::login(&base, "ann@example.com");
    assert_eq!(a.bytes(&format!("/api/assets/{unused}")).0, 404);
    assert_eq!(a.bytes(&format!("/api/assets/{used}")), (200, small));
    assert_eq!(
        count("SELECT COUNT(*) AS n FROM jobs WHERE id = 'old-delivery'"),
        0
    );
    assert_eq!(
        count("SELECT COUNT(*) AS n FROM jobs WHERE kind = 'image'"),
        images
    );
    stop.send(()).unwrap();
    handle.join().unwrap().unwrap();
}
