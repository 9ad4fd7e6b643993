//! A data directory made by the release before the job runner (commit aa8eba6; made by
//! `tools/upgrade/make_fixture.py`) opens with this server with every account, generation,
//! image file, upload, like and credit intact; its migrated jobs show in the jobs API with
//! their costs; and the two generations it left pending run after the upgrade, one to
//! completion and one to a refunded failure.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::client::*;
use common::*;
use krya_server::Config;
use serde_json::Value;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn a_data_directory_from_the_last_release_upgrades_intact() {
    let fixture = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/data-aa8eba6"
    ));
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("manifest.json")).unwrap())
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture, dir.path());
    let broken = dir.path().join("not-a-model");
    std::fs::create_dir(&broken).unwrap();
    let mut config = Config::default();
    config.server.data_dir = dir.path().to_path_buf();
    config.jobs.poll_ms = 50;
    config.models.local = BTreeMap::from([
        (
            "tiny".to_string(),
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../krya-engine/tests/golden/turbo"
            )
            .to_string(),
        ),
        ("broken".to_string(), broken.display().to_string()),
    ]);
    let s = Server::start(config, dir);
    let users: BTreeMap<String, Client> = ["ann@example.com", "bob@example.com"]
        .into_iter()
        .map(|e| (e.to_string(), Client::login(&s.base, e)))
        .collect();

    // The generations it left pending run now: bob's completes, ann's fails and is refunded.
    for p in manifest["pending"].as_array().unwrap() {
        let c = &users[p["owner"].as_str().unwrap()];
        let g = c.wait(p["id"].as_str().unwrap());
        let want = if p["model"] == "tiny" {
            "completed"
        } else {
            "failed"
        };
        assert_eq!(g["status"], want, "{g}");
        let (_, jobs) = c.get("/api/jobs?kind=image&limit=100");
        let job = jobs["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["ref_id"] == p["id"])
            .unwrap()
            .clone();
        assert_eq!(
            job["cost"], p["credits_used"],
            "the migrated job's cost: {job}"
        );
    }
    let refunded = manifest["pending"][1]["credits_used"].as_i64().unwrap();
    assert_eq!(
        users["ann@example.com"].credits(),
        manifest["credits"]["ann@example.com"].as_i64().unwrap() + refunded
    );
    assert_eq!(
        users["bob@example.com"].credits(),
        manifest["credits"]["bob@example.com"].as_i64().unwrap()
    );

    // Every generation as it was, with its image files, likes and cost.
    for g in manifest["generations"].as_array().unwrap() {
        let c = &users[g["owner"].as_str().unwrap()];
        let id = g["id"].as_str().unwrap();
        let (st, now) = c.get(&format!("/api/generate/image/{id}"));
        assert_eq!(st, 200, "{now}");
        for f in ["status", "credits_used", "is_public", "likes_count"] {
            assert_eq!(now[f], g[f], "{id}: {f}");
        }
        let images: Vec<&str> = now["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap())
            .collect();
        let want: Vec<&str> = g["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_str().unwrap())
            .collect();
        assert_eq!(images, want, "{id}");
        for (i, image) in images.iter().enumerate() {
            let file =
                std::fs::read(fixture.join(format!("blobs/generations/{id}/a1-{i}.png"))).unwrap();
            assert_eq!(
                c.bytes(&format!("/api/images/{image}")),
                (200, file),
                "{id} image {i}"
            );
        }
        // Its job is in the jobs API, with the cost its generation was charged.
        let (_, jobs) = c.get("/api/jobs?kind=image&limit=100");
        let job = jobs["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["ref_id"] == id)
            .unwrap()
            .clone();
        assert_eq!(
            (&job["status"], &job["cost"]),
            (&g["status"], &g["credits_used"]),
            "{job}"
        );
        // Its request is the job's params now, and its files are its job's output assets,
        // with their sizes read from the store.
        let (_, generation) = c.get(&format!("/api/generate/image/{id}"));
        assert_eq!(job["params"]["prompt"], generation["prompt"], "{job}");
        assert_eq!(job["params"]["seed"], generation["seed"], "{job}");
        let outputs = job["outputs"].as_array().unwrap();
        assert_eq!(outputs.len(), images.len(), "{job}");
        for (i, o) in outputs.iter().enumerate() {
            let file =
                std::fs::read(fixture.join(format!("blobs/generations/{id}/a1-{i}.png"))).unwrap();
            assert_eq!(o["bytes"].as_u64(), Some(file.len() as u64), "{o}");
            assert_eq!(o["job_id"], job["id"]);
            assert_eq!(c.bytes(o["url"].as_str().unwrap()), (200, file), "{o}");
        }
    }
    let ann = &users["ann@example.com"];
    let (_, list) = ann.get("/api/generate/images?limit=100");
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        5,
        "three made before, a capture, one pending then"
    );
    // The capture (a generation without a job then) has one now, and deletes like the rest.
    let capture = manifest["capture"].as_str().unwrap();
    let (_, jobs) = ann.get("/api/jobs?kind=image&limit=100");
    let job = jobs["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["ref_id"] == capture)
        .expect("the capture's job")
        .clone();
    assert_eq!(
        (&job["status"], &job["cost"]),
        (&serde_json::json!("completed"), &serde_json::json!(0))
    );
    assert_eq!(
        ann.send(
            "DELETE",
            &format!("/api/generate/image/{capture}"),
            Value::Null,
            &[]
        )
        .0,
        204
    );
    assert_eq!(ann.get(&format!("/api/generate/image/{capture}")).0, 404);
    let asset = manifest["asset"].as_str().unwrap();
    let upload = std::fs::read(fixture.join(format!("blobs/assets/{asset}"))).unwrap();
    assert_eq!(ann.bytes(&format!("/api/assets/{asset}")), (200, upload));
    // The public one is in the feed with its like.
    let mut r = agent().get(format!("{}/api/feed", s.base)).call().unwrap();
    let feed = json(&mut r);
    let public = &manifest["generations"][0];
    let item = feed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["ref_id"] == public["id"])
        .expect("the public generation in the feed");
    assert_eq!(item["likes_count"], 1);
    // Its like moved to its job: its liker sees it liked, and unliking counts down.
    let liker = users
        .values()
        .find(|c| {
            c.get(&format!("/api/feed/{}", item["id"].as_str().unwrap()))
                .1["liked"]
                == true
        })
        .expect("its liker");
    let (_, l) = liker.post(
        &format!("/api/feed/{}/like", item["id"].as_str().unwrap()),
        Value::Null,
    );
    assert_eq!(
        (l["liked"].as_bool(), l["likes_count"].as_i64()),
        (Some(false), Some(0))
    );
    // Its files are public assets: anyone reads them.
    let first = std::fs::read(fixture.join(format!(
        "blobs/generations/{}/a1-0.png",
        public["id"].as_str().unwrap()
    )))
    .unwrap();
    let mut r = agent()
        .get(format!(
            "{}{}",
            s.base,
            item["outputs"][0]["url"].as_str().unwrap()
        ))
        .call()
        .unwrap();
    assert_eq!(r.body_mut().read_to_vec().unwrap(), first);
    // The upgrade runs at every start and finds nothing more to do: no second asset for
    // any file.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut config = Config::default();
        config.server.data_dir = s.dir.path().to_path_buf();
        let db = krya_server::open_database(&config).await.unwrap();
        let blobs = krya_server::open_blobs(&config).unwrap();
        let count = || async {
            use sqlx::Row;
            sqlx::query("SELECT COUNT(*) AS n FROM assets")
                .fetch_one(&db.pool)
                .await
                .unwrap()
                .get::<i64, _>("n")
        };
        let before = count().await;
        krya_server::generations::upgrade::run(&db, &*blobs)
            .await
            .unwrap();
        assert_eq!(count().await, before);
    });
}
