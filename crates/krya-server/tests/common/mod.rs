//! Shared by the server's integration tests: the real server on 127.0.0.1:0, an HTTP
//! client, and a PostgreSQL schema per run.
#![allow(dead_code)]

pub mod client;
pub mod tiny;

use std::time::Duration;

use krya_server::Config;

pub type Running = (
    String,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<std::io::Result<()>>,
);

pub fn start_with(config: Config) -> Running {
    start_serving(config, Default::default())
}

/// The server with a web studio's files beside the API.
pub fn start_serving(config: Config, studio: krya_server::http::studio::Studio) -> Running {
    start_full(config, studio, krya_server::tasks::builtin())
}

/// The server with these kinds of work (tests add kinds of their own).
pub fn start_with_tasks(config: Config, tasks: krya_server::tasks::Registry) -> Running {
    start_full(config, Default::default(), tasks)
}

/// The server with its request limits as `config` sets them (`start_with` and the others
/// lift them: tests make many accounts and jobs from one address).
pub fn start_limited(config: Config) -> Running {
    launch_in_thread(config, Default::default(), krya_server::tasks::builtin())
}

fn start_full(
    mut config: Config,
    studio: krya_server::http::studio::Studio,
    tasks: krya_server::tasks::Registry,
) -> Running {
    config.limits = krya_server::infra::config::Limits {
        register_per_hour: 0,
        login_per_minute: 0,
        uploads_per_minute: 0,
        submissions_per_minute: 0,
        ..config.limits.clone()
    };
    launch_in_thread(config, studio, tasks)
}

fn launch_in_thread(
    config: Config,
    studio: krya_server::http::studio::Studio,
    tasks: krya_server::tasks::Registry,
) -> Running {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            krya_server::launch_with(listener, config, studio, tasks, async move {
                let _ = stop_rx.await;
            })
            .await
        })
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    (format!("http://{addr}"), stop_tx, handle)
}

/// A server for one test, stopped (and joined) when dropped, with its data directory.
pub struct Server {
    pub base: String,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    pub dir: tempfile::TempDir,
}

impl Server {
    pub fn start(config: Config, dir: tempfile::TempDir) -> Server {
        let (base, stop, handle) = start_with(config);
        Server::from_parts(base, stop, handle, dir)
    }

    pub fn from_parts(
        base: String,
        stop: tokio::sync::oneshot::Sender<()>,
        handle: std::thread::JoinHandle<std::io::Result<()>>,
        dir: tempfile::TempDir,
    ) -> Server {
        Server {
            base,
            stop: Some(stop),
            handle: Some(handle),
            dir,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

pub fn json(resp: &mut ureq::http::Response<ureq::Body>) -> serde_json::Value {
    serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap()
}

/// A server on SQLite in a fresh data directory.
pub fn start() -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<std::io::Result<()>>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.server.data_dir = dir.path().to_path_buf();
    let (a, b, c) = start_with(config);
    (a, b, c, dir)
}

/// Runs one statement on the test database.
pub fn pg_exec(sql: String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(PG)
            .await
            .expect("PostgreSQL on 127.0.0.1:5432 (database test)");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap();
    });
}

pub const PG: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A PostgreSQL URL whose connections use a schema of their own (created here), and the schema.
pub fn postgres_schema() -> (String, String) {
    let schema = format!(
        "krya_test_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    pg_exec(format!("CREATE SCHEMA {schema}"));
    (format!("{PG}?options=-c%20search_path%3D{schema}"), schema)
}

pub fn post(a: &ureq::Agent, url: &str, body: &str) -> ureq::http::Response<ureq::Body> {
    a.post(url)
        .header("Content-Type", "application/json")
        .send(body)
        .unwrap()
}

/// One request over a raw connection (to send any `Host` and forwarding headers): the
/// status, the header block (lowercased) and the body.
pub fn raw(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let addr = base.trim_start_matches("http://");
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    tcp.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head[9..12].parse().unwrap();
    (status, head.to_lowercase(), body.to_string())
}
