//! The generation API end to end on the real server (127.0.0.1:0) with its in-process
//! worker running the engine on the committed tiny model: results equal the engine's own
//! output for the same request, credits are reserved and refunded, idempotency keys,
//! cursors, events, cancel, isolation between users, the feed, load and fairness. The core
//! flow runs on SQLite, PostgreSQL and S3. Uploads and webhooks have files of their own.

mod common;
#[path = "common/s3.rs"]
mod s3;

use std::time::{Duration, Instant};

use common::client::*;
use common::tiny::*;
use common::*;
use krya_engine::{GenerateRequest, image_io};
use serde_json::{Value, json};

fn generate_and_check(c: &Client) -> String {
    let before = c.credits();
    let (s, body) = c.post(
        "/api/generate/image",
        json!({"prompt": "a red fox", "negative_prompt": "blurry", "model": "tiny", "width": 64, "height": 48, "steps": 3, "cfg_scale": 5.0, "seed": 42, "batch_size": 2, "scheduler": "euler"}),
    );
    assert_eq!(s, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    assert!(
        ["pending", "processing"].contains(&body["status"].as_str().unwrap()),
        "{body}"
    );
    assert!(
        body["queue_position"].is_number() && body["estimated_time"].is_number(),
        "{body}"
    );
    let g = c.wait(&id);
    assert_eq!(g["status"], "completed", "{g}");
    assert_eq!(g["seed"], 42);
    assert_eq!(g["credits_used"], 2);
    assert_eq!(g["progress"]["step"], 3);
    assert_eq!(g["progress"]["total"], 3);
    assert_eq!(c.credits(), before - 2);
    let images = g["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);

    let expected = engine_images(&GenerateRequest {
        prompt: "a red fox".into(),
        negative_prompt: Some("blurry".into()),
        width: Some(64),
        height: Some(48),
        steps: Some(3),
        guidance: Some(5.0),
        scheduler: Some(krya_engine::SchedulerKind::parse("euler").unwrap()),
        seed: 42,
        batch: 2,
        preview_every: 0,
        ..Default::default()
    });
    for (i, img) in images.iter().enumerate() {
        assert_eq!(
            (img["width"].as_i64(), img["height"].as_i64()),
            (Some(64), Some(48))
        );
        let (s, png) = c.bytes(img["url"].as_str().unwrap());
        assert_eq!(s, 200);
        let params = image_io::read_png_parameters(&png).expect("parameters chunk");
        assert!(
            params.starts_with("a red fox\nNegative prompt: blurry\n"),
            "{params}"
        );
        assert!(
            params.contains(&format!("Seed: {}", 42 + i))
                && params.contains("Steps: 3")
                && params.contains("Model: tiny"),
            "{params}"
        );
        let got = png_rgb(&png);
        assert_eq!(got.dimensions(), (64, 48));
        assert!(
            got.as_raw() == expected[i].as_raw(),
            "image {i} differs from the engine's output for the same request"
        );
        let (s, thumb) = c.bytes(img["thumbnail_url"].as_str().unwrap());
        assert_eq!(s, 200);
        assert!(thumb.len() > 12 && &thumb[0..4] == b"RIFF" && &thumb[8..12] == b"WEBP");
        let t = image::load_from_memory(&thumb).unwrap();
        assert_eq!((t.width(), t.height()), (64, 48));
    }
    id
}

/// Cursor pagination, idempotency keys and batches.
fn listing_idempotency_batch(c: &Client) {
    let req = json!({"prompt": "a cat", "model": "tiny", "width": 64, "height": 64, "steps": 1, "seed": 1});
    let (s1, a) = c.send(
        "POST",
        "/api/generate/image",
        req.clone(),
        &[("Idempotency-Key", "k-1")],
    );
    let (s2, b) = c.send(
        "POST",
        "/api/generate/image",
        req.clone(),
        &[("Idempotency-Key", "k-1")],
    );
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(
        a["id"], b["id"],
        "a retried POST with the same key made a second job"
    );
    let before = c.credits();
    let (s, batch) = c.post(
        "/api/generate/image/batch",
        json!({"requests": [req.clone(), req.clone(), req.clone()]}),
    );
    assert_eq!(s, 202, "{batch}");
    assert_eq!(batch["items"].as_array().unwrap().len(), 3);
    assert_eq!(c.credits(), before - 3);
    let (s, e) = c.post(
        "/api/generate/image/batch",
        json!({"requests": [req.clone(), req.clone(), req.clone(), req.clone(), req.clone()]}),
    );
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (422, Some("invalid-input"))
    );
    let (s, e) = c.post(
        "/api/generate/image/batch",
        json!({"requests": [req.clone(), {"prompt": ""}]}),
    );
    assert_eq!(s, 422);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("requests[1].prompt"),
        "{e}"
    );
    for i in batch["items"].as_array().unwrap() {
        c.wait(i["id"].as_str().unwrap());
    }
    c.wait(a["id"].as_str().unwrap());

    // 5 generations in all (1 earlier + 1 + 3): pages of 2.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (s, page) = c.get(&format!("/api/generate/images?limit=2{cursor}"));
        assert_eq!(s, 200, "{page}");
        for it in page["items"].as_array().unwrap() {
            seen.push(it["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(n) => cursor = format!("&cursor={n}"),
            None => break,
        }
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((seen.len(), unique.len()), (5, 5), "{seen:?}");
    let (s, _) = c.get("/api/generate/images?cursor=garbage");
    assert_eq!(s, 422);
    let (s, page) = c.get("/api/generate/images?model=nope");
    assert_eq!((s, page["items"].as_array().unwrap().len()), (200, 0));
}

#[test]
fn generation_on_sqlite() {
    let s = server(None);
    let c = Client::setup_admin(&s.base, s.dir.path(), "ann@example.com");
    let (st, models) = c.get("/api/models");
    assert_eq!(st, 200);
    let models = models["models"].as_array().unwrap();
    let tiny = models.iter().find(|m| m["id"] == "tiny").unwrap();
    assert_eq!(
        (tiny["installed"].as_bool(), tiny["local"].as_bool()),
        (Some(true), Some(true))
    );
    assert!(
        models
            .iter()
            .any(|m| m["id"] == "sd-turbo" && m["local"] == false)
    );
    // Each aspect ratio's size at the model's native pixel count, as a submission with
    // `aspect_ratio` gets it (the studio shows these).
    let sizes = |m: &Value| -> Vec<(String, u64, u64)> {
        m["aspect_ratios"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["ratio"].as_str().unwrap().to_string(),
                    a["width"].as_u64().unwrap(),
                    a["height"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let turbo = models.iter().find(|m| m["id"] == "sd-turbo").unwrap();
    let want: Vec<(String, u64, u64)> = [
        ("1:1", 512, 512),
        ("16:9", 704, 384),
        ("9:16", 384, 704),
        ("4:3", 576, 448),
        ("3:4", 448, 576),
    ]
    .iter()
    .map(|(r, w, h)| (r.to_string(), *w, *h))
    .collect();
    assert_eq!(sizes(turbo), want);
    assert_eq!(
        sizes(tiny)[..2],
        [("1:1".to_string(), 16, 16), ("16:9".to_string(), 24, 16)]
    );
    // Where a model's files are is for administrators only (ann, made through the setup link, is one).
    assert!(
        tiny["source"].as_str().unwrap().ends_with("golden/turbo"),
        "{tiny}"
    );
    let bob = Client::register(&s.base, "bob@example.com");
    let mut anonymous = agent()
        .get(format!("{}/api/models", s.base))
        .call()
        .unwrap();
    assert_eq!(anonymous.status(), 200);
    for seen in [bob.get("/api/models").1, json(&mut anonymous)] {
        let seen = seen["models"].as_array().unwrap();
        assert_eq!(seen.len(), models.len());
        assert!(seen.iter().all(|m| m.get("source").is_none()), "{seen:?}");
    }
    // Capabilities come from the files (a trailing schedule: fast enough for the canvas).
    let caps = |m: &Value| m["capabilities"].as_array().unwrap().clone();
    assert_eq!(
        caps(tiny),
        json!(["txt2img", "img2img", "inpaint", "realtime"])
            .as_array()
            .unwrap()
            .clone()
    );
    let (st, live) = c.get("/api/models?capability=realtime");
    assert_eq!(st, 200);
    let live: Vec<_> = live["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        live.contains(&"tiny".to_string()) && live.contains(&"sd-turbo".to_string()),
        "{live:?}"
    );
    assert!(
        !live.contains(&"sd-1.5".to_string()) && !live.contains(&"broken".to_string()),
        "{live:?}"
    );
    let (st, e) = c.get("/api/models?capability=flying");
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (422, Some("invalid-input")),
        "{e}"
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("capability"),
        "{e}"
    );
    generate_and_check(&c);
    listing_idempotency_batch(&c);
    // Exactly one set of files per image: no leftovers from attempts.
    let blobs: Vec<_> = walk(&s.dir.path().join("blobs/generations"));
    assert_eq!(blobs.len(), 2 * (2 + 1 + 3), "{blobs:?}");
}

#[test]
fn generation_on_postgres() {
    let (url, schema) = postgres_schema();
    {
        let s = server(Some(url));
        let c = Client::register(&s.base, "pat@example.com");
        generate_and_check(&c);
        listing_idempotency_batch(&c);
    }
    pg_exec(format!("DROP SCHEMA {schema} CASCADE"));
}

fn events_cancel_credits_and_failures(s: &Server) {
    let a = Client::setup_admin(&s.base, s.dir.path(), "ann@example.com");
    let mut b = Client::register(&s.base, "bob@example.com");
    let a_events = sse(&a);
    let b_events = sse(&b);
    let (st, sub) = a.post("/api/generate/image", json!({"prompt": "a boat", "model": "tiny", "width": 64, "height": 64, "steps": 4, "seed": 3}));
    assert_eq!(st, 202);
    let id = sub["id"].as_str().unwrap();
    let mut kinds = Vec::new();
    let mut steps = Vec::new();
    let mut preview = false;
    loop {
        let (e, d) = a_events
            .recv_timeout(Duration::from_secs(60))
            .expect("events until completed");
        assert_eq!(d["id"], id);
        if e == "progress" {
            steps.push(d["progress"]["step"].as_i64().unwrap());
            if let Some(p) = d["preview"].as_str() {
                use base64::Engine;
                let jpeg = base64::engine::general_purpose::STANDARD
                    .decode(p.strip_prefix("data:image/jpeg;base64,").expect(p))
                    .unwrap();
                // Through the model's TAESD: the picture's own size, not one pixel a latent.
                let img = image::load_from_memory(&jpeg).unwrap();
                assert_eq!(
                    (img.width(), img.height()),
                    (64, 64),
                    "a preview of one pixel per latent"
                );
                preview = true;
            }
        }
        kinds.push(e.clone());
        if e == "completed" {
            assert_eq!(d["images"].as_array().unwrap().len(), 1);
            break;
        }
    }
    assert_eq!(&kinds[..2], ["queued", "started"], "{kinds:?}");
    assert_eq!(steps.last(), Some(&4), "{steps:?}");
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
    assert!(preview, "no preview image in the progress events");
    // B's stream saw nothing of A's.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        b_events.try_recv().is_err(),
        "user B received user A's events"
    );
    // B signs out: B's open stream ends (the reader thread's channel closes).
    assert_eq!(b.post("/api/auth/logout", Value::Null).0, 204);
    assert!(
        matches!(
            b_events.recv_timeout(Duration::from_secs(10)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        ),
        "a stream outlived its revoked token"
    );
    let (st, again) = b.post(
        "/api/auth/login",
        json!({"email": "bob@example.com", "password": "password123"}),
    );
    assert_eq!(st, 200);
    b.token = again["access_token"].as_str().unwrap().to_string();

    // Cancel a long job while it runs: refunded, no images, the worker moves on.
    let credits = a.credits();
    let (st, sub) = a.post("/api/generate/image", json!({"prompt": "a long one", "model": "tiny", "width": 64, "height": 64, "steps": 100, "seed": 5}));
    assert_eq!(st, 202);
    let id = sub["id"].as_str().unwrap().to_string();
    assert_eq!(a.credits(), credits - 1);
    let t0 = Instant::now();
    loop {
        let (e, d) = a_events.recv_timeout(Duration::from_secs(60)).unwrap();
        if e == "progress" && d["id"] == id.as_str() {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60));
    }
    let (st, g) = a.post(&format!("/api/generate/image/{id}/cancel"), Value::Null);
    assert_eq!((st, g["status"].as_str()), (200, Some("cancelled")), "{g}");
    assert_eq!(a.credits(), credits);
    let (st, e) = a.post(&format!("/api/generate/image/{id}/cancel"), Value::Null);
    assert_eq!((st, e["error"]["code"].as_str()), (409, Some("conflict")));
    // The worker stops at its next step and takes the next job.
    let (_, next) = a.post(
        "/api/generate/image",
        json!({"prompt": "after", "model": "tiny", "width": 64, "height": 64, "steps": 1}),
    );
    let after = a.wait(next["id"].as_str().unwrap());
    assert_eq!(after["status"], "completed");
    let g = a.get(&format!("/api/generate/image/{id}")).1;
    assert_eq!(
        (g["status"].as_str(), g["images"].as_array().unwrap().len()),
        (Some("cancelled"), 0)
    );
    assert!((g["progress"]["step"].as_i64().unwrap()) < 100, "{g}");

    // A job whose model cannot load fails with a code and is refunded.
    let credits = a.credits();
    let (st, sub) = a.post(
        "/api/generate/image",
        json!({"prompt": "x", "model": "broken", "width": 64, "height": 64}),
    );
    assert_eq!(st, 202);
    let g = a.wait(sub["id"].as_str().unwrap());
    assert_eq!(g["status"], "failed");
    assert_eq!(g["error"]["code"], "model-unavailable", "{g}");
    assert_eq!(a.credits(), credits);

    // Too few credits: 402. The administrator (ann) can take B's away.
    let bid = b.user["id"].as_str().unwrap();
    let (st, _) = b.post(
        &format!("/api/admin/users/{bid}/credits"),
        json!({"amount": 5}),
    );
    assert_eq!(st, 403);
    let (st, u) = a.post(
        &format!("/api/admin/users/{bid}/credits"),
        json!({"amount": -48}),
    );
    assert_eq!((st, u["credits_remaining"].as_i64()), (200, Some(2)), "{u}");
    let (st, e) = b.post(
        "/api/generate/image",
        json!({"prompt": "x", "model": "tiny", "width": 64, "height": 64, "batch_size": 3}),
    );
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (402, Some("insufficient-credits")),
        "{e}"
    );
    let (st, usage) = b.get("/api/user/usage");
    assert_eq!(
        (
            st,
            usage["credits_remaining"].as_i64(),
            usage["daily_allowance"].as_i64()
        ),
        (200, Some(2), Some(50))
    );
    let (st, sub) = b.get("/api/user/subscription");
    assert_eq!((st, sub["tier"].as_str()), (200, Some("free")));
    // Usage shows A's charges and refunds netted: 1 + 1 (cancelled, refunded) + 1 + 1 (failed, refunded).
    let usage = a.get("/api/user/usage").1;
    assert_eq!(usage["credits_used_today"], 2, "{usage}");
}

/// 20 clients submit 200 jobs at once; then one user's burst of 40 must not starve
/// another user's single job.
fn load_and_fairness(s: &Server) {
    let clients: Vec<Client> = (0..20)
        .map(|i| Client::register(&s.base, &format!("u{i}@example.com")))
        .collect();
    let req = json!({"prompt": "load", "model": "tiny", "width": 32, "height": 32, "steps": 1});
    let ids: Vec<Vec<String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = clients
            .iter()
            .map(|c| {
                let req = req.clone();
                scope.spawn(move || {
                    (0..10)
                        .map(|_| {
                            let (st, b) = c.post("/api/generate/image", req.clone());
                            assert_eq!(st, 202, "{b}");
                            b["id"].as_str().unwrap().to_string()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (c, mine) in clients.iter().zip(&ids) {
        let mut listed = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = c.get(&format!("/api/generate/images?limit=100{cursor}")).1;
            listed.extend(
                page["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i["id"].as_str().unwrap().to_string()),
            );
            match page["next_cursor"].as_str() {
                Some(n) => cursor = format!("&cursor={n}"),
                None => break,
            }
        }
        listed.sort();
        let mut want = mine.clone();
        want.sort();
        assert_eq!(listed, want, "a user's list is not exactly their jobs");
        for id in mine {
            let g = c.wait(id);
            assert_eq!(g["status"], "completed", "{g}");
            assert_eq!(g["images"].as_array().unwrap().len(), 1);
        }
        assert_eq!(c.credits(), 50 - 10);
    }
    assert_eq!(walk(&s.dir.path().join("blobs/generations")).len(), 2 * 200);

    // Fairness: a burst of 40 from one user, then one job from another.
    let (x, y) = (&clients[0], &clients[1]);
    let burst: Vec<String> = (0..40)
        .map(|_| {
            x.post("/api/generate/image", req.clone()).1["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let (_, one) = y.post("/api/generate/image", req.clone());
    let (_, view) = y.get(&format!(
        "/api/generate/image/{}",
        one["id"].as_str().unwrap()
    ));
    if view["status"] == "pending" {
        assert!(view["queue_position"].as_i64().unwrap() <= 1, "{view}");
    }
    y.wait(one["id"].as_str().unwrap());
    let still_waiting = x.get("/api/generate/images?status=pending&limit=100").1["items"]
        .as_array()
        .unwrap()
        .len();
    assert!(
        still_waiting > 20,
        "the single job waited behind the burst ({still_waiting} of 40 still pending)"
    );
    for id in &burst {
        x.wait(id);
    }
}

#[test]
fn events_cancel_credits_and_failures_on_sqlite() {
    events_cancel_credits_and_failures(&server(None));
}

#[test]
fn events_cancel_credits_and_failures_on_postgres() {
    on_postgres(events_cancel_credits_and_failures);
}

#[test]
fn load_and_fairness_on_sqlite() {
    load_and_fairness(&server(None));
}

#[test]
fn load_and_fairness_on_postgres() {
    on_postgres(load_and_fairness);
}

/// Images and uploads on S3 (moto): generated, served with access checks, deleted.
#[test]
fn generation_on_s3() {
    let moto = s3::start_moto();
    let s = server_with(None, |c| {
        c.storage.url = format!("s3://{}/k", moto.bucket);
        c.storage.endpoint = moto.endpoint.clone();
        c.storage.access_key_id = "test".into();
        c.storage.secret_access_key = "test".into();
    });
    let a = Client::register(&s.base, "s3@example.com");
    let id = generate_and_check(&a);
    assert_eq!(
        moto.keys(&format!("k/generations/{id}/")).len(),
        4,
        "2 PNGs + 2 thumbnails"
    );
    let init = std::fs::read(tiny_model().join("../init.png")).unwrap();
    let (st, asset) = a.upload(init.clone(), "image/png");
    assert_eq!(st, 201);
    let aid = asset["id"].as_str().unwrap();
    assert_eq!(a.bytes(&format!("/api/assets/{aid}")).1, init);
    // Streamed from S3 in ranges too.
    a.check_ranges(&format!("/api/assets/{aid}"), &init);
    let g = a.get(&format!("/api/generate/image/{id}")).1;
    let url = g["images"][0]["url"].as_str().unwrap();
    let png = a.bytes(url).1;
    a.check_ranges(url, &png);
    assert_eq!(moto.keys(&format!("k/assets/{aid}")).len(), 1);
    let b = Client::register(&s.base, "other@example.com");
    assert_eq!(b.bytes(g["images"][0]["url"].as_str().unwrap()).0, 404);
    assert_eq!(
        a.send(
            "DELETE",
            &format!("/api/generate/image/{id}"),
            Value::Null,
            &[]
        )
        .0,
        204
    );
    assert!(
        moto.keys(&format!("k/generations/{id}/")).is_empty(),
        "files left after delete"
    );
    assert!(
        s.dir.path().join("blobs").read_dir().is_err(),
        "wrote to the file store"
    );
}
