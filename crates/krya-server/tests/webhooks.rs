//! Webhooks end to end: a generation's end is POSTed to its URL, signed the Standard
//! Webhooks way, retried after a failure, and delivered once, on SQLite and PostgreSQL.

mod common;

use std::time::Duration;

use common::client::*;
use common::tiny::*;
use common::*;
use serde_json::{Value, json};

/// A generation's end reaches its webhook: signed, retried after a 500, delivered once.
fn webhooks_are_signed_and_retried(s: &Server) {
    use base64::Engine;
    use hmac::{KeyInit, Mac};
    let a = Client::register(&s.base, "hook@example.com");
    let secret = a.get("/api/user/webhook-secret").1["secret"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(
        a.get("/api/user/webhook-secret").1["secret"],
        secret.as_str(),
        "the secret changed"
    );
    let (url, deliveries) = webhook_receiver();
    let (st, sub) = a.post("/api/generate/image", json!({"prompt": "hook", "model": "tiny", "width": 64, "height": 64, "steps": 1, "webhook_url": url}));
    assert_eq!(st, 202);
    let id = sub["id"].as_str().unwrap();
    let first = deliveries
        .recv_timeout(Duration::from_secs(60))
        .expect("a delivery");
    let second = deliveries
        .recv_timeout(Duration::from_secs(10))
        .expect("a retry after the 500");
    for (headers, body) in [first, second] {
        let h = |k: &str| {
            headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("no {k} header"))
        };
        let key = base64::engine::general_purpose::STANDARD
            .decode(secret.trim_start_matches("whsec_"))
            .unwrap();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{}.{}.{}", h("webhook-id"), h("webhook-timestamp"), body).as_bytes());
        let expected = format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        );
        assert_eq!(
            h("webhook-signature"),
            expected,
            "signature does not verify"
        );
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["id"].as_str(), v["status"].as_str()),
            (Some("generation.completed"), Some(id), Some("completed"))
        );
        assert_eq!(v["images"].as_array().unwrap().len(), 1);
        // A tampered body does not verify.
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{}.{}.{}x", h("webhook-id"), h("webhook-timestamp"), body).as_bytes());
        assert_ne!(
            format!(
                "v1,{}",
                base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
            ),
            h("webhook-signature")
        );
    }
    // Delivered: no more attempts.
    assert!(deliveries.recv_timeout(Duration::from_secs(2)).is_err());
}

#[test]
fn webhooks_are_signed_and_retried_on_sqlite() {
    webhooks_are_signed_and_retried(&server(None));
}

#[test]
fn webhooks_are_signed_and_retried_on_postgres() {
    on_postgres(webhooks_are_signed_and_retried);
}

/// The outbound client checks addresses where it connects: a name that resolves to this
/// host (`localhost`) and literal loopback addresses are refused with no connection made,
/// whatever was checked before; with `allow_private` the request gets through, and a
/// redirect is answered, never followed.
#[test]
fn outbound_requests_refuse_private_addresses_at_connect_time() {
    use krya_server::infra::outbound::{Outbound, OutboundError};
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let timeout = std::time::Duration::from_secs(3);
    rt.block_on(async {
        let strict = Outbound::new(false, timeout);
        for url in [
            format!("http://localhost:{port}/hook"),
            format!("http://127.0.0.1:{port}/hook"),
            format!("http://[::ffff:127.0.0.1]:{port}/hook"),
            format!("http://0.0.0.0:{port}/hook"),
        ] {
            match strict.post(&url, &[], "{}".into()).await {
                Err(OutboundError::Refused(_)) => {}
                other => panic!("{url}: {other:?}"),
            }
        }
    });
    assert!(
        listener.accept().is_err(),
        "a refused request reached the listener"
    );
    listener.set_nonblocking(false).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        s.write_all(
            b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    });
    let status = rt.block_on(async {
        Outbound::new(true, timeout)
            .post(
                &format!("http://localhost:{port}/hook"),
                &[("x-test", "1".to_string())],
                "{}".into(),
            )
            .await
            .unwrap()
    });
    assert_eq!(status, 302, "the redirect is not followed");
    let request = server.join().unwrap();
    assert!(request.starts_with("POST /hook"), "{request}");
    assert!(request.to_lowercase().contains("x-test: 1"), "{request}");
}
