//! The real server on 127.0.0.1:0: health, the JSON error shape for unknown routes and
//! methods, and a graceful shutdown.

use std::time::Duration;

use krya_server::{Config, launch};

fn start() -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<std::io::Result<()>>,
) {
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
            launch(listener, Config::default(), async move {
                let _ = stop_rx.await;
            })
            .await
        })
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    (format!("http://{addr}"), stop_tx, handle)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

fn json(resp: &mut ureq::http::Response<ureq::Body>) -> serde_json::Value {
    serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap()
}

#[test]
fn health_errors_and_shutdown() {
    let (base, stop, handle) = start();
    let a = agent();
    let mut r = a.get(format!("{base}/api/health")).call().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json(&mut r)["status"], "ok");

    let mut r = a.get(format!("{base}/api/no-such-thing")).call().unwrap();
    assert_eq!(r.status(), 404);
    let body = json(&mut r);
    assert_eq!(body["error"]["code"], "not-found");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/api/no-such-thing")
    );

    let mut r = a.post(format!("{base}/api/health")).send("").unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(json(&mut r)["error"]["code"], "method-not-allowed");

    stop.send(()).unwrap();
    handle.join().unwrap().unwrap();
    assert!(
        a.get(format!("{base}/api/health")).call().is_err(),
        "server still answering after shutdown"
    );
}

#[test]
fn databases_connect_and_migrate() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("krya.db").display());
        let db = krya_server::db::Db::connect(&url).await.unwrap();
        assert_eq!(db.probe().await.unwrap(), 0);
    });
}
