//! A server with the committed tiny model (`tiny`, and `broken`: a folder that is not a
//! model), on SQLite or a PostgreSQL schema of its own, and what the engine itself makes
//! of a request on that model.
#![allow(dead_code)]

use std::path::PathBuf;

use krya_engine::model::ModelSource;
use krya_engine::{CancelToken, GenerateRequest, device, model};
use krya_server::Config;
use serde_json::json;

use super::*;

pub fn tiny_model() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../krya-engine/tests/golden/turbo"
    ))
}

/// A server with the tiny model registered as `tiny` (and `broken`: a folder that is not a
/// model), on SQLite or the given database URL.
pub fn server(database_url: Option<String>) -> Server {
    server_with(database_url, |_| {})
}

pub fn server_with(database_url: Option<String>, adjust: impl FnOnce(&mut Config)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("not-a-model");
    std::fs::create_dir(&broken).unwrap();
    std::fs::write(
        dir.path().join("models.json"),
        json!({"tiny": tiny_model(), "broken": broken}).to_string(),
    )
    .unwrap();
    let mut config = Config::default();
    config.server.data_dir = dir.path().to_path_buf();
    config.server.max_upload_bytes = 2 * 1024 * 1024;
    config.server.max_upload_pixels = 4 * 1024 * 1024;
    config.jobs.poll_ms = 50;
    config.jobs.lease_secs = 2.0;
    config.jobs.retry_base_ms = 100;
    config.server.stream_auth_check_secs = 0.2;
    // The webhook receiver in these tests is on loopback.
    config.webhooks.allow_private = true;
    if let Some(url) = database_url {
        config.database.url = url;
    }
    adjust(&mut config);
    Server::start(config, dir)
}

/// What the engine itself makes of a request on the tiny model.
pub fn engine_images(req: &GenerateRequest) -> Vec<image::RgbImage> {
    let dev = device::best_device().unwrap();
    let m = model::load(
        &ModelSource::Folder(tiny_model()),
        &dev,
        device::default_dtype(&dev),
    )
    .unwrap();
    m.generate(req, &mut |_| {}, &CancelToken::new())
        .unwrap()
        .images
}

pub fn png_rgb(bytes: &[u8]) -> image::RgbImage {
    assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
    image::load_from_memory(bytes).unwrap().to_rgb8()
}

/// Submit, follow, fetch and check the images of one generation, on one database.

/// Runs `f` on a server over a PostgreSQL schema of its own.
pub fn on_postgres(f: impl FnOnce(&Server)) {
    let (url, schema) = postgres_schema();
    f(&server(Some(url)));
    pg_exec(format!("DROP SCHEMA {schema} CASCADE"));
}

pub fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out
}
