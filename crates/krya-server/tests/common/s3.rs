//! A local S3-compatible server for tests: moto's `moto_server` (PyPI `moto[server]`), found
//! at `$KRYA_MOTO_SERVER`, `/var/tmp/krya-moto/bin/moto_server` (where `.ci/run` installs
//! it) or on `PATH`, started on a free loopback port with one bucket.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Moto {
    child: Child,
    pub endpoint: String,
    pub bucket: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Keys stored under `prefix` (ListObjectsV2; moto does not check signatures).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let xml = agent
            .get(format!(
                "{}/{}?list-type=2&prefix={prefix}",
                self.endpoint, self.bucket
            ))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        xml.split("<Key>")
            .skip(1)
            .map(|s| s.split("</Key>").next().unwrap().to_string())
            .collect()
    }
}

pub fn start_moto() -> Moto {
    let exe = std::env::var("KRYA_MOTO_SERVER").ok().unwrap_or_else(|| {
        let ci = "/var/tmp/krya-moto/bin/moto_server";
        if std::path::Path::new(ci).exists() {
            ci.to_string()
        } else {
            "moto_server".to_string()
        }
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(&exe)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {exe} ({e}): install it with `python3 -m venv /var/tmp/krya-moto && /var/tmp/krya-moto/bin/pip install 'moto[server]'` (.ci/run does)"));
    let endpoint = format!("http://127.0.0.1:{port}");
    let moto = Moto {
        child,
        endpoint,
        bucket: "krya-test".into(),
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let t0 = Instant::now();
    loop {
        if let Ok(r) = agent
            .put(format!("{}/{}", moto.endpoint, moto.bucket))
            .send("")
        {
            assert!(
                r.status().is_success(),
                "creating the bucket: {}",
                r.status()
            );
            return moto;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "moto_server did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
