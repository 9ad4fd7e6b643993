//! A kind of work that exists only in this test, `echo` (it copies an uploaded file in N
//! progress steps), goes through the whole life of a job on the server's one runner, with
//! no line of the runner knowing it: submission through `POST /api/jobs` (validation that
//! names the field, credits reserved), fair claims, progress events that carry the kind,
//! listing and filters, cancel (refunded), deferred polls, a signed webhook, failure
//! (refunded), delete, and a worker process killed with SIGKILL mid-task, after which the
//! job completes exactly once, on its second attempt, charged once.

#[path = "../common/mod.rs"]
mod common;
mod edit;
mod enhance;
mod kinds;
mod moderation;
mod train;

use std::time::Duration;

use common::client::*;
use common::*;
use kinds::*;
use krya_server::Config;
use serde_json::{Value, json};

fn config(dir: &std::path::Path) -> Config {
    let mut c = Config::default();
    c.server.data_dir = dir.to_path_buf();
    c.jobs.poll_ms = 50;
    c.jobs.lease_secs = 1.0;
    c.jobs.retry_base_ms = 50;
    c.webhooks.allow_private = true;
    c
}

/// The server on `config`, with the echo kind.
fn start(config: Config, dir: tempfile::TempDir) -> Server {
    let (base, stop, handle) = start_with_tasks(config, tasks());
    Server::from_parts(base, stop, handle, dir)
}

fn upload(c: &Client) -> (String, Vec<u8>) {
    let png = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../krya-engine/tests/golden/init.png"
    ))
    .unwrap();
    let (st, a) = c.upload(png.clone(), "image/png");
    assert_eq!(st, 201, "{a}");
    (a["id"].as_str().unwrap().to_string(), png)
}

fn submit(c: &Client, params: Value) -> Value {
    let (st, j) = c.post("/api/jobs", json!({"kind": "echo", "params": params}));
    assert_eq!(st, 202, "{j}");
    assert_eq!(j["kind"], "echo");
    // The runner may have claimed it before the answer was written.
    assert!(
        ["pending", "processing"].contains(&j["status"].as_str().unwrap()),
        "{j}"
    );
    j
}

fn life_of_a_job(s: &Server) {
    let c = Client::register(&s.base, "ann@example.com");
    let other = Client::register(&s.base, "bob@example.com");
    let events = sse(&c);
    let (asset, png) = upload(&c);

    // Bad requests name the field; an unknown kind names the kinds.
    for (body, needle) in [
        (
            json!({"kind": "echo", "params": {"asset": asset, "steps": 0}}),
            "params.steps",
        ),
        (
            json!({"kind": "echo", "params": {"asset": asset}}),
            "params",
        ),
        (
            json!({"kind": "echo", "params": {"asset": "nope", "steps": 2}}),
            "params",
        ),
        (
            json!({"kind": "teleport", "params": {}}),
            "kind: must be one of caption, echo, edit, enhance, image, long, train, wait",
        ),
        (json!({"kind": "webhook", "params": {}}), "kind"),
        (json!({"kind": "image", "params": {"prompt": "x"}}), "kind"),
    ] {
        let (st, e) = c.post("/api/jobs", body.clone());
        assert_eq!(
            (st, e["error"]["code"].as_str()),
            (422, Some("invalid-input")),
            "{body}: {e}"
        );
        assert!(
            e["error"]["message"].as_str().unwrap().starts_with(needle),
            "{body}: {e}"
        );
    }
    assert_eq!(c.credits(), 50, "a refused request cost something");

    // Submit, progress events with the kind, completion with the copied file as output.
    let (hook_url, hooks) = webhook_receiver();
    let (st, j) = c.post(
        "/api/jobs",
        json!({"kind": "echo", "params": {"asset": asset, "steps": 5, "step_ms": 20}, "webhook_url": hook_url}),
    );
    assert_eq!(st, 202, "{j}");
    let id = j["id"].as_str().unwrap().to_string();
    assert_eq!(j["cost"], 1);
    assert_eq!(c.credits(), 49);
    let mut seen = Vec::new();
    loop {
        let (e, d) = events
            .recv_timeout(Duration::from_secs(60))
            .expect("events until completed");
        if d["id"] != id {
            continue;
        }
        assert_eq!(d["kind"], "echo", "{e}: {d}");
        seen.push(e.clone());
        if e == "progress" {
            assert_eq!(d["progress"]["total"], 5);
        }
        if e == "completed" {
            assert_eq!(d["outputs"].as_array().unwrap().len(), 1, "{d}");
            break;
        }
    }
    assert_eq!(seen.first().map(String::as_str), Some("queued"), "{seen:?}");
    assert!(
        seen.contains(&"started".to_string()) && seen.contains(&"progress".to_string()),
        "{seen:?}"
    );
    let done = c.wait_job(&id);
    assert_eq!(
        (done["status"].as_str(), done["attempts"].as_i64()),
        (Some("completed"), Some(1))
    );
    assert_eq!(done["progress"], json!({"step": 5, "total": 5}));
    assert_eq!(done["params"]["steps"], 5);
    let out = &done["outputs"][0];
    assert_eq!(
        (
            out["kind"].as_str(),
            out["parent_id"].as_str(),
            out["job_id"].as_str()
        ),
        (Some("image"), Some(asset.as_str()), Some(id.as_str()))
    );
    assert_eq!(
        c.bytes(out["url"].as_str().unwrap()),
        (200, png.clone()),
        "the output is the copied file"
    );
    assert_eq!(
        other.bytes(out["url"].as_str().unwrap()).0,
        404,
        "outputs are private"
    );
    assert_eq!(
        other.get(&format!("/api/jobs/{id}")).0,
        404,
        "jobs are private"
    );
    assert_eq!(c.credits(), 49, "completed: charged once");

    // The webhook: the first delivery gets a 500 and is retried.
    let mut bodies = Vec::new();
    while bodies.len() < 2 {
        let (_, body) = hooks
            .recv_timeout(Duration::from_secs(30))
            .expect("webhook deliveries");
        bodies.push(serde_json::from_str::<Value>(&body).unwrap());
    }
    for b in &bodies {
        assert_eq!(
            (b["type"].as_str(), b["id"].as_str(), b["kind"].as_str()),
            (Some("job.completed"), Some(id.as_str()), Some("echo")),
            "{b}"
        );
    }

    // Deferred polls hold no slot and are not attempts.
    let polled = submit(&c, json!({"asset": asset, "steps": 1, "polls": 3}));
    let polled = c.wait_job(polled["id"].as_str().unwrap());
    assert_eq!(
        (polled["status"].as_str(), polled["attempts"].as_i64()),
        (Some("completed"), Some(1)),
        "{polled}"
    );

    // Failure: refunded, the error on the job.
    assert_eq!(c.credits(), 48);
    // It answers "not done yet" for a while (40 polls 30 ms apart: long enough that the
    // file below is written first even on a loaded machine; 5 were not, once in CI); a
    // file an earlier attempt left (as a worker killed while storing would) goes when it
    // fails.
    let failed = submit(
        &c,
        json!({"asset": asset, "steps": 1, "fail": true, "polls": 40}),
    );
    assert_eq!(failed["cost"], 1);
    let left = s
        .dir
        .path()
        .join(format!("blobs/jobs/{}", failed["id"].as_str().unwrap()));
    std::fs::create_dir_all(&left).unwrap();
    std::fs::write(left.join("a1-0.png"), b"partial").unwrap();
    let failed = c.wait_job(failed["id"].as_str().unwrap());
    assert!(
        !left.join("a1-0.png").exists(),
        "a failed job keeps no files"
    );
    assert_eq!(failed["status"], "failed");
    assert_eq!(
        failed["error"],
        json!({"code": "invalid-input", "message": "params.fail: asked to fail"})
    );
    assert_eq!(c.credits(), 48, "a failed job is refunded");

    // Cancel while running: refunded, stopped, said in an event.
    let long = submit(&c, json!({"asset": asset, "steps": 200, "step_ms": 20}));
    let long_id = long["id"].as_str().unwrap().to_string();
    assert_eq!(long["cost"], 3);
    c.wait_until(&format!("/api/jobs/{long_id}"), |j| {
        j["progress"]["step"].as_i64().unwrap_or(0) >= 2
    });
    let (st, cancelled) = c.post(&format!("/api/jobs/{long_id}/cancel"), Value::Null);
    assert_eq!(
        (st, cancelled["status"].as_str()),
        (200, Some("cancelled")),
        "{cancelled}"
    );
    assert_eq!(c.credits(), 48, "a cancelled job is refunded");
    let (st, again) = c.post(&format!("/api/jobs/{long_id}/cancel"), Value::Null);
    assert_eq!(
        (st, again["error"]["code"].as_str()),
        (409, Some("conflict"))
    );
    loop {
        let (e, d) = events
            .recv_timeout(Duration::from_secs(30))
            .expect("a cancelled event");
        if d["id"] == long_id.as_str() && e == "cancelled" {
            assert_eq!(d["kind"], "echo");
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let stopped = c.get(&format!("/api/jobs/{long_id}")).1;
    assert!(
        stopped["progress"]["step"].as_i64().unwrap() < 200,
        "the job ran on: {stopped}"
    );
    assert!(stopped["outputs"].as_array().unwrap().is_empty());

    // Listing: newest first, by kind and status, in pages.
    let (_, img) = c.post(
        "/api/generate/image",
        json!({"prompt": "a boat", "model": "tiny", "steps": 1}),
    );
    c.wait(img["id"].as_str().unwrap());
    let (st, all) = c.get("/api/jobs?limit=100");
    assert_eq!(st, 200);
    let kinds: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["image", "echo", "echo", "echo", "echo"], "{all}");
    let image_job = &all["items"][0];
    assert_eq!(
        image_job["ref_id"], img["id"],
        "an image job names its generation"
    );
    assert_eq!(
        image_job["outputs"].as_array().unwrap().len(),
        1,
        "image outputs are assets too"
    );
    // Search by prompt reaches any kind that has one; the kinds are listed.
    let (_, boats) = c.get("/api/jobs?q=BOAT");
    assert_eq!(
        (
            boats["items"].as_array().unwrap().len(),
            &boats["items"][0]["prompt"]
        ),
        (1, &json!("a boat"))
    );
    assert!(
        c.get("/api/jobs?q=a%20fox").1["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        c.get("/api/jobs?model=tiny").1["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(
        c.get("/api/jobs?model=sd-turbo").1["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        c.get("/api/jobs/kinds").1["kinds"],
        json!([
            "caption", "echo", "edit", "enhance", "image", "long", "train", "wait"
        ])
    );
    let (_, echoes) = c.get("/api/jobs?kind=echo&status=completed");
    assert_eq!(echoes["items"].as_array().unwrap().len(), 2);
    let (_, page) = c.get("/api/jobs?kind=echo&limit=3");
    assert_eq!(page["items"].as_array().unwrap().len(), 3);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, rest) = c.get(&format!("/api/jobs?kind=echo&limit=3&cursor={cursor}"));
    assert_eq!(
        (
            rest["items"].as_array().unwrap().len(),
            &rest["next_cursor"]
        ),
        (1, &Value::Null)
    );
    for (q, field) in [
        ("kind=teleport", "kind"),
        ("status=sleeping", "status"),
        ("limit=0", "limit"),
        ("cursor=abc", "cursor"),
    ] {
        let (st, e) = c.get(&format!("/api/jobs?{q}"));
        assert_eq!(st, 422, "{q}: {e}");
        assert!(
            e["error"]["message"].as_str().unwrap().starts_with(field),
            "{q}: {e}"
        );
    }
    assert!(
        other.get("/api/jobs").1["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Sharing works on any kind: public, it is in the feed with its output, liked and
    // remixed by its id; private again, it is gone from others' sight.
    let out_url = out["url"].as_str().unwrap();
    assert_eq!(other.bytes(out_url).0, 404);
    let patch = |c: &Client, public: bool| {
        c.send(
            "PATCH",
            &format!("/api/jobs/{id}"),
            json!({"is_public": public}),
            &[],
        )
    };
    assert_eq!(patch(&other, true).0, 404);
    let (st, shared) = patch(&c, true);
    assert_eq!(
        (st, &shared["outputs"][0]["visibility"]),
        (200, &json!("public")),
        "{shared}"
    );
    let (_, feed) = other.get("/api/feed?kind=echo");
    let item = &feed["items"][0];
    assert_eq!(
        (item["id"].as_str(), item["kind"].as_str()),
        (Some(id.as_str()), Some("echo")),
        "{feed}"
    );
    assert_eq!(item["outputs"][0]["url"], out["url"]);
    assert_eq!(other.bytes(out_url), (200, png.clone()));
    let (_, l) = other.post(&format!("/api/feed/{id}/like"), Value::Null);
    assert_eq!(
        (l["liked"].as_bool(), l["likes_count"].as_i64()),
        (Some(true), Some(1))
    );
    // Another's upload is not the remixer's to use; with their own, the remix runs.
    let (st, e) = other.post(&format!("/api/feed/{id}/remix"), json!({}));
    assert_eq!(st, 422, "{e}");
    let (theirs, _) = upload(&other);
    let (st, r) = other.post(&format!("/api/feed/{id}/remix"), json!({"asset": theirs}));
    assert_eq!(st, 202, "{r}");
    assert_eq!(r["id"], r["job_id"]);
    let remixed = other.wait_job(r["id"].as_str().unwrap());
    assert_eq!(
        (
            remixed["status"].as_str(),
            remixed["params"]["steps"].as_i64()
        ),
        (Some("completed"), Some(5))
    );
    let (_, mine) = other.get(&format!("/api/feed/{}", r["id"].as_str().unwrap()));
    assert_eq!(
        (mine["remix_of"].as_str(), mine["is_public"].as_bool()),
        (Some(id.as_str()), Some(false))
    );
    assert_eq!(patch(&c, false).0, 200);
    assert_eq!(other.get(&format!("/api/feed/{id}")).0, 404);
    assert_eq!(other.bytes(out_url).0, 404);

    // Delete: the job, its output rows and files are gone.
    let before = files(&s.dir.path().join("blobs/jobs"));
    assert!(before >= 1);
    assert_eq!(
        c.send("DELETE", &format!("/api/jobs/{id}"), Value::Null, &[])
            .0,
        204
    );
    assert_eq!(c.get(&format!("/api/jobs/{id}")).0, 404);
    assert_eq!(c.bytes(out["url"].as_str().unwrap()).0, 404);
    assert_eq!(files(&s.dir.path().join("blobs/jobs")), before - 1);
}

fn files(dir: &std::path::Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| {
            if e.path().is_dir() {
                files(&e.path())
            } else {
                1
            }
        })
        .sum()
}

fn with_tiny_model(dir: &tempfile::TempDir) {
    std::fs::write(
        dir.path().join("models.json"),
        json!({"tiny": concat!(env!("CARGO_MANIFEST_DIR"), "/../krya-engine/tests/golden/turbo")})
            .to_string(),
    )
    .unwrap();
}

#[test]
fn life_of_a_job_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    with_tiny_model(&dir);
    let s = start(config(dir.path()), dir);
    life_of_a_job(&s);
}

#[test]
fn life_of_a_job_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    with_tiny_model(&dir);
    let (url, schema) = postgres_schema();
    let mut c = config(dir.path());
    c.database.url = url;
    let s = start(c, dir);
    life_of_a_job(&s);
    drop(s);
    pg_exec(format!("DROP SCHEMA {schema} CASCADE"));
}

/// One user's burst of echo jobs does not hold up another user's one, nor one user's
/// images their echo job: claims are fair across users and kinds.
#[test]
fn claims_are_fair_across_users_and_kinds() {
    let dir = tempfile::tempdir().unwrap();
    with_tiny_model(&dir);
    let mut c = config(dir.path());
    // Nothing runs until every job is queued.
    c.jobs.in_process = false;
    let db_url = format!("sqlite://{}", dir.path().join("krya.db").display());
    let s = start(c.clone(), dir);
    let x = Client::register(&s.base, "x@example.com");
    let y = Client::register(&s.base, "y@example.com");
    let (xa, _) = upload(&x);
    let (ya, _) = upload(&y);
    let burst: Vec<String> = (0..5)
        .map(|_| {
            submit(&x, json!({"asset": xa, "steps": 1}))["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let images: Vec<String> = (0..2)
        .map(|_| {
            let (st, g) = y.post(
                "/api/generate/image",
                json!({"prompt": "a boat", "model": "tiny", "steps": 1}),
            );
            assert_eq!(st, 202, "{g}");
            g["id"].as_str().unwrap().to_string()
        })
        .collect();
    let single = submit(&y, json!({"asset": ya, "steps": 1}))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, view) = y.get(&format!("/api/jobs/{single}"));
    // Behind x's first job and y's first image (ranks are per user and kind), not behind
    // x's burst nor y's second image.
    assert_eq!(view["queue_position"], 2, "{view}");
    // A worker in this process runs them all.
    let mut wc = c;
    wc.database.url = db_url;
    wc.jobs.in_process = true;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = std::thread::spawn(move || {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(krya_server::run_worker_with(wc, tasks(), async {
                let _ = stop_rx.await;
            }))
    });
    for id in &burst {
        x.wait_job(id);
    }
    y.wait_job(&single);
    for g in &images {
        y.wait(g);
    }
    let _ = stop_tx.send(());
    worker.join().unwrap().unwrap();
    // Only this test's jobs: other tests run echo jobs at the same time.
    let ours: Vec<&String> = burst.iter().chain([&single]).collect();
    let started: Vec<String> = STARTED
        .lock()
        .unwrap()
        .iter()
        .filter(|id| ours.contains(id))
        .cloned()
        .collect();
    let pos = |id: &String| started.iter().position(|s| s == id).unwrap();
    // x and y take turns; y's turns go to its kinds in turn: x0, y's first image, x1,
    // y's echo job (not its second image), x2, ...
    let order: Vec<usize> = [&burst[0], &burst[1], &single, &burst[2]]
        .iter()
        .map(|id| pos(id))
        .collect();
    assert_eq!(order, [0, 1, 2, 3], "{started:?}");
}

/// Slots keep work apart: a long job in the exclusive slot does not hold up the engine's
/// queue, and jobs that mostly wait run several at once in the I/O slots.
#[test]
fn slots_keep_long_and_waiting_work_apart() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(config(dir.path()), dir);
    let c = Client::register(&s.base, "slots@example.com");
    let (asset, _) = upload(&c);
    let (st, train) = c.post("/api/jobs", json!({"kind": "long", "params": {}}));
    assert_eq!(st, 202, "{train}");
    let train = train["id"].as_str().unwrap().to_string();
    c.wait_until(&format!("/api/jobs/{train}"), |j| {
        j["status"] == "processing"
    });
    let echo = submit(&c, json!({"asset": asset, "steps": 2}));
    let echo = c.wait_job(echo["id"].as_str().unwrap());
    assert_eq!(echo["status"], "completed");
    assert_eq!(
        c.get(&format!("/api/jobs/{train}")).1["status"],
        "processing",
        "the long job ended early"
    );
    let waits: Vec<String> = (0..3)
        .map(|_| {
            let (st, j) = c.post("/api/jobs", json!({"kind": "wait", "params": {}}));
            assert_eq!(st, 202, "{j}");
            j["id"].as_str().unwrap().to_string()
        })
        .collect();
    for w in &waits {
        assert_eq!(c.wait_job(w)["status"], "completed");
    }
    let ran = WAITED.lock().unwrap().clone();
    let last_start = ran.iter().map(|r| r.0).max().unwrap();
    let first_end = ran.iter().map(|r| r.1).min().unwrap();
    assert!(
        last_start < first_end,
        "the waiting jobs ran one after another"
    );
    LONG_MAY_END.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(c.wait_job(&train)["status"], "completed");
}

/// Run by `a_worker_killed_mid_task_*` as a process of its own: a `krya worker` with the
/// echo kind, on the database and data directory it is given.
#[test]
#[ignore = "a worker process for the crash test"]
fn echo_worker_process() {
    let (Ok(db), Ok(data)) = (
        std::env::var("KRYA_TEST_DB"),
        std::env::var("KRYA_TEST_DATA"),
    ) else {
        return;
    };
    let mut c = config(std::path::Path::new(&data));
    c.database.url = db;
    c.jobs.kinds = vec!["echo".into()];
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(krya_server::run_worker_with(
            c,
            tasks(),
            std::future::pending::<()>(),
        ))
        .unwrap();
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill(); // SIGKILL
        let _ = self.0.wait();
    }
}

fn worker_process(db: &str, data: &std::path::Path) -> Killed {
    Killed(
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "echo_worker_process", "--nocapture"])
            .env("KRYA_TEST_DB", db)
            .env("KRYA_TEST_DATA", data)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn a_worker_killed_mid_task(db_url: Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let mut c = config(&data);
    c.jobs.in_process = false;
    let db = db_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", data.join("krya.db").display()));
    c.database.url = db.clone();
    let s = start(c, dir);
    let u = Client::register(&s.base, "crash@example.com");
    let (asset, png) = upload(&u);
    let job = submit(&u, json!({"asset": asset, "steps": 40, "step_ms": 50}));
    let id = job["id"].as_str().unwrap().to_string();
    let victim = worker_process(&db, &data);
    let seen = u.wait_until(&format!("/api/jobs/{id}"), |j| {
        j["progress"]["step"].as_i64().unwrap_or(0) >= 3
    });
    drop(victim);
    assert_eq!(seen["attempts"], 1);
    let step = seen["progress"]["step"].as_i64().unwrap();
    assert!(step < 40, "the job finished before the kill");
    let _rescuer = worker_process(&db, &data);
    let done = u.wait_job(&id);
    assert_eq!(
        (done["status"].as_str(), done["attempts"].as_i64()),
        (Some("completed"), Some(2)),
        "{done}"
    );
    let outputs = done["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 1, "one set of outputs: {done}");
    assert_eq!(u.bytes(outputs[0]["url"].as_str().unwrap()), (200, png));
    // One file: the interrupted attempt left none behind.
    assert_eq!(files(&data.join("blobs/jobs").join(&id)), 1);
    assert_eq!(u.credits(), 50 - 1, "charged more than once");
    let (_, usage) = u.get("/api/user/usage");
    assert_eq!(usage["credits_used_today"], 1, "{usage}");
}

#[test]
fn a_worker_killed_mid_task_on_sqlite() {
    a_worker_killed_mid_task(None);
}

#[test]
fn a_worker_killed_mid_task_on_postgres() {
    let (url, schema) = postgres_schema();
    a_worker_killed_mid_task(Some(url));
    pg_exec(format!("DROP SCHEMA {schema} CASCADE"));
}
