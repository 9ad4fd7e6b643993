//! An API client for the integration tests: a signed-in user, their requests, their
//! event stream, and a loopback webhook receiver.
#![allow(dead_code)]

use std::io::BufRead;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{agent, json, post};

pub struct Client {
    pub a: ureq::Agent,
    pub base: String,
    pub token: String,
    pub user: Value,
}

impl Client {
    pub fn register(base: &str, email: &str) -> Client {
        let a = agent();
        let mut r = post(
            &a,
            &format!("{base}/api/auth/register"),
            &json!({"email": email, "password": "password123", "name": email.split('@').next().unwrap()}).to_string(),
        );
        assert_eq!(r.status(), 201);
        let body = json(&mut r);
        Client {
            a,
            base: base.to_string(),
            token: body["access_token"].as_str().unwrap().to_string(),
            user: body["user"].clone(),
        }
    }

    /// The server's first administrator, made through the setup link the server wrote to
    /// `DATA_DIR/setup-link` (password `password123`).
    pub fn setup_admin(base: &str, data_dir: &std::path::Path, email: &str) -> Client {
        // Answered once the server serves, which is after it wrote the link.
        let a = agent();
        assert_eq!(
            a.get(format!("{base}/api/health")).call().unwrap().status(),
            200
        );
        let link = std::fs::read_to_string(data_dir.join("setup-link")).expect("a setup link");
        let token = link
            .trim()
            .split("token=")
            .nth(1)
            .expect("a token in the link");
        let a = agent();
        let mut r = post(
            &a,
            &format!("{base}/api/auth/setup"),
            &json!({"token": token, "email": email, "password": "password123", "name": email.split('@').next().unwrap()}).to_string(),
        );
        assert_eq!(r.status(), 201, "setup");
        let body = json(&mut r);
        assert_eq!(body["user"]["is_admin"], true);
        Client {
            a,
            base: base.to_string(),
            token: body["access_token"].as_str().unwrap().to_string(),
            user: body["user"].clone(),
        }
    }

    /// Signs in an existing account (password `password123`, as `register` makes them).
    pub fn login(base: &str, email: &str) -> Client {
        let a = agent();
        let mut r = post(
            &a,
            &format!("{base}/api/auth/login"),
            &json!({"email": email, "password": "password123"}).to_string(),
        );
        assert_eq!(r.status(), 200, "login {email}");
        let body = json(&mut r);
        Client {
            a,
            base: base.to_string(),
            token: body["access_token"].as_str().unwrap().to_string(),
            user: body["user"].clone(),
        }
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let mut r = self
            .a
            .get(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .call()
            .unwrap();
        let s = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap();
        (s, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A GET with extra headers: the status, the answer's headers and its bytes.
    pub fn fetch(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, ureq::http::HeaderMap, Vec<u8>) {
        let mut req = self
            .a
            .get(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut r = req.call().unwrap();
        let h = r.headers().clone();
        (r.status().as_u16(), h, r.body_mut().read_to_vec().unwrap())
    }

    /// A file is served streamed with an ETag (304 on If-None-Match) and one Range at a
    /// time (206; 416 past its end; the whole file when If-Range names another version).
    pub fn check_ranges(&self, path: &str, full: &[u8]) {
        let n = full.len();
        let (st, h, body) = self.fetch(path, &[]);
        assert_eq!((st, body.as_slice()), (200, full), "{path}");
        assert_eq!(h["accept-ranges"], "bytes");
        assert_eq!(h["content-length"], n.to_string().as_str());
        let tag = h["etag"].to_str().unwrap().to_string();
        assert!(tag.starts_with('"') && tag.len() > 10, "{tag}");
        let (st, h, body) = self.fetch(path, &[("If-None-Match", &tag)]);
        assert_eq!((st, body.len()), (304, 0));
        assert_eq!(h["etag"], tag.as_str());
        let (st, h, body) = self.fetch(path, &[("Range", "bytes=0-9")]);
        assert_eq!((st, body.as_slice()), (206, &full[..10]));
        assert_eq!(h["content-range"], format!("bytes 0-9/{n}").as_str());
        let (st, _, body) = self.fetch(path, &[("Range", "bytes=-5")]);
        assert_eq!((st, body.as_slice()), (206, &full[n - 5..]));
        let (st, h, _) = self.fetch(path, &[("Range", &format!("bytes={n}-"))]);
        assert_eq!(st, 416);
        assert_eq!(h["content-range"], format!("bytes */{n}").as_str());
        let (st, _, body) = self.fetch(path, &[("Range", "bytes=0-9"), ("If-Range", "\"old\"")]);
        assert_eq!((st, body.len()), (200, n));
    }

    pub fn bytes(&self, path: &str) -> (u16, Vec<u8>) {
        let mut r = self
            .a
            .get(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .call()
            .unwrap();
        (r.status().as_u16(), r.body_mut().read_to_vec().unwrap())
    }

    pub fn send(
        &self,
        method: &str,
        path: &str,
        body: Value,
        extra: &[(&str, &str)],
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let mut req = ureq::http::Request::builder()
            .method(method)
            .uri(url)
            .header("Authorization", format!("Bearer {}", self.token))
            .header("Content-Type", "application/json");
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let mut r = self.a.run(req.body(body).unwrap()).unwrap();
        let s = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap();
        (s, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send("POST", path, body, &[])
    }

    pub fn upload(&self, bytes: Vec<u8>, content_type: &str) -> (u16, Value) {
        let mut r = self
            .a
            .post(format!("{}/api/assets", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .header("Content-Type", content_type)
            .send(bytes)
            .unwrap();
        let s = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap();
        (s, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Polls until the generation has ended.
    pub fn wait(&self, id: &str) -> Value {
        self.wait_until(&format!("/api/generate/image/{id}"), |g| {
            ["completed", "failed", "cancelled"].contains(&g["status"].as_str().unwrap())
        })
    }

    /// Polls the job until it has ended.
    pub fn wait_job(&self, id: &str) -> Value {
        self.wait_until(&format!("/api/jobs/{id}"), |j| {
            ["completed", "failed", "cancelled"].contains(&j["status"].as_str().unwrap())
        })
    }

    /// Polls `path` until `done` holds for its body (two minutes at most).
    pub fn wait_until(&self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let t0 = Instant::now();
        loop {
            let (s, v) = self.get(path);
            assert_eq!(s, 200, "{v}");
            if done(&v) {
                return v;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "{path} did not get there: {v}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn credits(&self) -> i64 {
        self.get("/api/auth/me").1["credits_remaining"]
            .as_i64()
            .unwrap()
    }
}

/// Reads an SSE stream on a thread: `(event, data)` pairs on the returned channel.
pub fn sse(c: &Client) -> std::sync::mpsc::Receiver<(String, Value)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let r =
        c.a.get(format!("{}/api/events", c.base))
            .header("Authorization", format!("Bearer {}", c.token))
            .call()
            .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    std::thread::spawn(move || {
        let reader = std::io::BufReader::new(r.into_body().into_reader());
        let mut event = String::new();
        for line in reader.lines() {
            let Ok(line) = line else { return };
            if let Some(e) = line.strip_prefix("event:") {
                event = e.trim().to_string();
            } else if let Some(d) = line.strip_prefix("data:") {
                let v = serde_json::from_str(d.trim()).unwrap_or(Value::Null);
                if tx.send((event.clone(), v)).is_err() {
                    return;
                }
            }
        }
    });
    // The stream says it is ready once subscribed.
    let (e, _) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(e, "ready");
    rx
}

/// A loopback receiver that answers 500 to the first delivery and 200 after; it hands
/// each request's headers and body to the test.
pub fn webhook_receiver() -> (
    String,
    std::sync::mpsc::Receiver<(Vec<(String, String)>, String)>,
) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
            let mut headers = Vec::new();
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.trim_end().split_once(": ") {
                    if k.eq_ignore_ascii_case("content-length") {
                        len = v.parse().unwrap();
                    }
                    headers.push((k.to_ascii_lowercase(), v.to_string()));
                }
            }
            let mut body = vec![0u8; len];
            reader.read_exact(&mut body).unwrap();
            let status = if n == 0 {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            if tx
                .send((headers, String::from_utf8(body).unwrap()))
                .is_err()
            {
                return;
            }
        }
    });
    (url, rx)
}
