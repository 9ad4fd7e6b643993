//! `krya serve` and `krya worker` as processes: a server killed with SIGKILL mid-job
//! finishes the job after restart (one set of images, charged once); `krya worker`
//! processes take jobs from PostgreSQL and write images to S3 (moto) while `krya serve`
//! only serves the API, and a worker killed mid-job is replaced by another; `krya users
//! create --admin`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[path = "../../krya-server/tests/common/mod.rs"]
mod common;
mod process;
#[path = "../../krya-server/tests/common/s3.rs"]
mod s3;

use process::*;

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

fn call(method: &str, url: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let mut req = ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .header("Content-Type", "application/json");
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut r = agent().run(req.body(body).unwrap()).unwrap();
    let s = r.status().as_u16();
    (
        s,
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap_or(Value::Null),
    )
}

fn register(base: &str, email: &str) -> String {
    let (s, b) = call(
        "POST",
        &format!("{base}/api/auth/register"),
        None,
        Some(json!({"email": email, "password": "password123", "name": "Test"})),
    );
    assert_eq!(s, 201, "{b}");
    b["access_token"].as_str().unwrap().to_string()
}

/// A job long enough to be caught mid-run on the tiny model.
const LONG: &str = r#"{"prompt": "a long job", "model": "tiny", "width": 64, "height": 64, "steps": 60, "seed": 77}"#;

fn wait_until(base: &str, token: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        let (s, g) = call(
            "GET",
            &format!("{base}/api/generate/image/{id}"),
            Some(token),
            None,
        );
        assert_eq!(s, 200, "{g}");
        if done(&g) {
            return g;
        }
        assert!(t0.elapsed() < Duration::from_secs(180), "timed out: {g}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn files_under(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().count())
        .unwrap_or(0)
}

/// Kills `victim` with SIGKILL once job `id` has made progress; returns the progress seen.
fn kill_mid_job(victim: Proc, base: &str, token: &str, id: &str) -> i64 {
    let g = wait_until(base, token, id, |g| {
        g["status"] == "processing" && g["progress"]["step"].as_i64().unwrap_or(0) >= 1
    });
    drop(victim); // Child::kill is SIGKILL on Unix.
    g["progress"]["step"].as_i64().unwrap()
}

#[test]
fn server_killed_mid_job_finishes_it_after_restart() {
    let data = data_dir();
    let (server, base) = serve(data.path(), &[]);
    let token = register(&base, "crash@example.com");
    let (s, sub) = call(
        "POST",
        &format!("{base}/api/generate/image"),
        Some(&token),
        Some(serde_json::from_str(LONG).unwrap()),
    );
    assert_eq!(s, 202, "{sub}");
    let id = sub["id"].as_str().unwrap().to_string();
    let step = kill_mid_job(server, &base, &token, &id);
    assert!(step < 60, "the job finished before the kill");

    let (_server, base) = serve(data.path(), &[]);
    let g = wait_until(&base, &token, &id, |g| {
        g["status"] != "pending" && g["status"] != "processing"
    });
    assert_eq!(g["status"], "completed", "{g}");
    assert_eq!(g["images"].as_array().unwrap().len(), 1);
    // One PNG and one thumbnail: one set of images.
    assert_eq!(
        files_under(&data.path().join("blobs/generations").join(&id)),
        2
    );
    let (_, me) = call("GET", &format!("{base}/api/auth/me"), Some(&token), None);
    assert_eq!(me["credits_remaining"], 49, "charged more than once: {me}");
    let (_, usage) = call("GET", &format!("{base}/api/user/usage"), Some(&token), None);
    assert_eq!(usage["credits_used_today"], 1);
}

/// A training whose server is killed with SIGKILL after a checkpoint goes on from that
/// checkpoint when the server is back (its log says from which step), not from zero.
#[test]
fn server_killed_mid_training_goes_on_from_its_checkpoint() {
    let data = data_dir();
    let (server, base) = serve(data.path(), &[]);
    let token = register(&base, "trainer@example.com");
    let mut images = Vec::new();
    for k in 0..2u32 {
        let img = image::RgbImage::from_fn(32, 32, |x, y| {
            image::Rgb([(x * 8) as u8, (y * 8) as u8, (k * 120) as u8])
        });
        let mut png = Vec::new();
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let mut r = agent()
            .post(format!("{base}/api/assets"))
            .header("Authorization", format!("Bearer {token}"))
            .header("Content-Type", "image/png")
            .send(&png[..])
            .unwrap();
        let a: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        images.push(json!({"id": a["id"], "caption": "a pattern"}));
    }
    let (s, sub) = call(
        "POST",
        &format!("{base}/api/train/model"),
        Some(&token),
        Some(
            json!({"name": "Pattern", "model": "tiny", "images": images, "steps": 400,
                    "rank": 2, "resolution": 32, "checkpoint_every": 5, "sample_every": 0, "seed": 1}),
        ),
    );
    assert_eq!(s, 202, "{sub}");
    let id = sub["id"].as_str().unwrap().to_string();
    let get = |base: &str| {
        call(
            "GET",
            &format!("{base}/api/train/model/{id}"),
            Some(&token),
            None,
        )
        .1
    };
    let t0 = Instant::now();
    let seen = loop {
        let t = get(&base);
        if let Some(step) = t["training"]["checkpoint_step"].as_u64() {
            break step;
        }
        assert!(
            t["status"] != "completed" && t0.elapsed() < Duration::from_secs(120),
            "{t}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(server); // SIGKILL

    let (_server, base) = serve(data.path(), &[]);
    let t0 = Instant::now();
    let t = loop {
        let t = get(&base);
        if !["pending", "processing"].contains(&t["status"].as_str().unwrap()) {
            break t;
        }
        assert!(t0.elapsed() < Duration::from_secs(300), "timed out: {t}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["attempts"], 2, "{t}");
    let from = t["training"]["resumed_at"][0].as_u64().unwrap_or(0);
    assert!(
        from >= seen && from < 400,
        "went on from {from} (a checkpoint at {seen} was seen): {t}"
    );
    assert_eq!(
        t["training"]["resumed_at"].as_array().unwrap().len(),
        1,
        "{t}"
    );
    assert_eq!(t["training"]["losses"].as_array().unwrap().len(), 400);
}

#[test]
fn workers_share_a_postgres_queue() {
    let schema = format!("krya_cli_{}_{}", std::process::id(), rand_suffix());
    common::pg_exec(format!("CREATE SCHEMA {schema}"));
    let url = format!("{}?options=-c%20search_path%3D{schema}", common::PG);
    let data = data_dir();
    // Images go to S3 (moto): the workers and the server share no disk.
    let moto = s3::start_moto();
    let env = [
        ("KRYA__DATABASE__URL", url.clone()),
        ("KRYA__JOBS__IN_PROCESS", "false".to_string()),
        ("KRYA__STORAGE__URL", format!("s3://{}/k", moto.bucket)),
        ("KRYA__STORAGE__ENDPOINT", moto.endpoint.clone()),
        ("KRYA__STORAGE__ACCESS_KEY_ID", "test".into()),
        ("KRYA__STORAGE__SECRET_ACCESS_KEY", "test".into()),
    ];
    let (_server, base) = serve(data.path(), &env);
    let token = register(&base, "worker@example.com");

    // No worker yet: the job waits in the queue.
    let (_, sub) = call(
        "POST",
        &format!("{base}/api/generate/image"),
        Some(&token),
        Some(serde_json::from_str(LONG).unwrap()),
    );
    let id = sub["id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(500));
    let (_, g) = call(
        "GET",
        &format!("{base}/api/generate/image/{id}"),
        Some(&token),
        None,
    );
    assert_eq!(
        (g["status"].as_str(), g["queue_position"].as_i64()),
        (Some("pending"), Some(0)),
        "{g}"
    );

    // A worker takes it; killed mid-job, a second worker finishes it.
    let w1 = worker(data.path(), &env);
    kill_mid_job(w1, &base, &token, &id);
    let _w2 = worker(data.path(), &env);
    let _w3 = worker(data.path(), &env);
    let g = wait_until(&base, &token, &id, |g| g["status"] == "completed");
    assert_eq!(g["images"].as_array().unwrap().len(), 1);
    assert_eq!(
        moto.keys(&format!("k/generations/{id}/")).len(),
        2,
        "one PNG and one thumbnail"
    );
    assert!(
        !data.path().join("blobs").exists(),
        "something wrote to the local disk"
    );
    // The server serves the image the worker stored.
    let png = agent()
        .get(format!("{base}{}", g["images"][0]["url"].as_str().unwrap()))
        .header("Authorization", format!("Bearer {token}"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_vec()
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"));

    // Two workers share a burst: every job done once, and its events reach the server's
    // event stream although another process ran it.
    let events = sse(&base, &token);
    let ids: Vec<String> = (0..8)
        .map(|_| {
            let (s, b) = call(
                "POST",
                &format!("{base}/api/generate/image"),
                Some(&token),
                Some(
                    json!({"prompt": "q", "model": "tiny", "width": 64, "height": 64, "steps": 1}),
                ),
            );
            assert_eq!(s, 202);
            b["id"].as_str().unwrap().to_string()
        })
        .collect();
    for id in &ids {
        let g = wait_until(&base, &token, id, |g| g["status"] == "completed");
        assert_eq!(g["images"].as_array().unwrap().len(), 1);
    }
    let mut completed = std::collections::HashSet::new();
    while completed.len() < ids.len() {
        let (event, data) = events
            .recv_timeout(Duration::from_secs(30))
            .expect("completed events from the workers");
        if event == "completed" {
            completed.insert(data["id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(completed, ids.iter().cloned().collect());
    let (_, me) = call("GET", &format!("{base}/api/auth/me"), Some(&token), None);
    assert_eq!(me["credits_remaining"], 50 - 9);
    drop(_w2);
    drop(_w3);
    drop(_server);
    common::pg_exec(format!("DROP SCHEMA {schema} CASCADE"));
}

/// The server's event stream, read on a thread: `(event, data)` pairs.
fn sse(base: &str, token: &str) -> std::sync::mpsc::Receiver<(String, Value)> {
    let r = agent()
        .get(format!("{base}/api/events"))
        .header("Authorization", format!("Bearer {token}"))
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut event = String::new();
        for line in BufReader::new(r.into_body().into_reader()).lines() {
            let Ok(line) = line else { return };
            if let Some(e) = line.strip_prefix("event:") {
                event = e.trim().to_string();
            } else if let Some(d) = line.strip_prefix("data:")
                && tx
                    .send((
                        event.clone(),
                        serde_json::from_str(d.trim()).unwrap_or(Value::Null),
                    ))
                    .is_err()
            {
                return;
            }
        }
    });
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap().0, "ready");
    rx
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000
}

#[test]
fn users_create_admin() {
    let data = data_dir();
    let out = krya(data.path(), &[("KRYA_PASSWORD", "password123".into())])
        .args([
            "users",
            "create",
            "--email",
            "Root@Example.com",
            "--name",
            "Root",
            "--admin",
            "--data-dir",
        ])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("root@example.com (admin)"));
    let again = krya(data.path(), &[("KRYA_PASSWORD", "password123".into())])
        .args([
            "users",
            "create",
            "--email",
            "root@example.com",
            "--name",
            "Root",
            "--data-dir",
        ])
        .arg(data.path())
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let out = krya(data.path(), &[])
        .args(["migrate", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    // The admin can sign in on the server; a later registrant is not an admin.
    let (_server, base) = serve(data.path(), &[]);
    let (s, login) = call(
        "POST",
        &format!("{base}/api/auth/login"),
        None,
        Some(json!({"email": "root@example.com", "password": "password123"})),
    );
    assert_eq!((s, login["user"]["is_admin"].as_bool()), (200, Some(true)));
    let token = register(&base, "second@example.com");
    let (_, me) = call("GET", &format!("{base}/api/auth/me"), Some(&token), None);
    assert_eq!(me["is_admin"], false);
}
