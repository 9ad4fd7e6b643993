//! `krya` as a process for the binary's tests: `krya serve` on a free port with the
//! committed tiny model, `krya worker`, and a child that is killed when dropped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::json;

pub fn tiny_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../krya-engine/tests/golden/turbo")
}

pub fn krya(data: &Path, env: &[(&str, String)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_krya"));
    c.env("KRYA_HOME", data)
        .env("HF_HUB_CACHE", data.join("hf"))
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_ENDPOINT", "http://127.0.0.1:1")
        .env_remove("HF_HOME")
        .env("KRYA__JOBS__LEASE_SECS", "1")
        .env("KRYA__JOBS__POLL_MS", "50");
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `krya serve` on a free port; returns it and its base URL.
pub fn serve(data: &Path, env: &[(&str, String)]) -> (Proc, String) {
    let mut child = krya(data, env)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("Krya listening on ")
        .expect(&line)
        .to_string();
    (Proc(child), base)
}

pub fn worker(data: &Path, env: &[(&str, String)]) -> Proc {
    let child = krya(data, env)
        .args(["worker", "--data-dir"])
        .arg(data)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    Proc(child)
}

pub fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("models.json"),
        json!({"tiny": tiny_model()}).to_string(),
    )
    .unwrap();
    dir
}
