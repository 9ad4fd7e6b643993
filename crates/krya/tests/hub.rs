//! `krya models pull` and hub model names against a fake Hugging Face hub on 127.0.0.1:
//! the cache layout diffusers shares, fp16 variants preferred, progress, resume after an
//! interrupted transfer, a corrupt file caught by its sha256, and the offline errors.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use sha2::Digest;

const REPO: &str = "tiny-org/tiny-turbo";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../krya-engine/tests/golden")
        .join(name)
}

#[derive(Default)]
struct Faults {
    /// Serve only this many bytes of the file, once, then drop the connection.
    interrupt: Option<(String, usize)>,
    /// Serve this file with one byte changed.
    corrupt: Option<String>,
}

struct Hub {
    port: u16,
    /// (path, Range header) of each file request.
    requests: Arc<Mutex<Vec<(String, Option<String>)>>>,
    faults: Arc<Mutex<Faults>>,
}

/// The repo's files: the golden turbo model, plus files a pull must skip.
fn repo_files() -> HashMap<String, Vec<u8>> {
    let root = golden("turbo");
    let mut files = HashMap::new();
    fn walk(dir: &Path, root: &Path, out: &mut HashMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, root, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    walk(&root, &root, &mut files);
    // An fp16-named variant of the text encoder (same tensors) is preferred over the plain file.
    let te = files.remove("text_encoder/model.safetensors").unwrap();
    files.insert("text_encoder/model.fp16.safetensors".into(), te.clone());
    files.insert("text_encoder/model.safetensors".into(), vec![0; 16]);
    files.insert("unet/diffusion_pytorch_model.bin".into(), vec![1; 16]);
    files.insert(
        "unet/diffusion_pytorch_model.non_ema.safetensors".into(),
        vec![2; 16],
    );
    files.insert("sd_turbo.safetensors".into(), vec![3; 16]);
    files
}

fn sha256(b: &[u8]) -> String {
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn start_hub() -> Hub {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let files = Arc::new(repo_files());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let faults = Arc::new(Mutex::new(Faults::default()));
    let (r, f) = (requests.clone(), faults.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (files, r, f) = (files.clone(), r.clone(), f.clone());
            std::thread::spawn(move || serve(stream, &files, &r, &f));
        }
    });
    Hub {
        port,
        requests,
        faults,
    }
}

fn serve(
    mut s: TcpStream,
    files: &HashMap<String, Vec<u8>>,
    requests: &Mutex<Vec<(String, Option<String>)>>,
    faults: &Mutex<Faults>,
) {
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("range")
        {
            range = Some(v.trim().to_string());
        }
    }
    let respond = |s: &mut TcpStream, status: &str, body: &[u8], extra: &str| {
        let _ = write!(
            s,
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
            body.len()
        );
        let _ = s.write_all(body);
    };
    if path == format!("/api/models/{REPO}/revision/main?blobs=true") {
        let siblings: Vec<serde_json::Value> = files
            .iter()
            .map(|(name, data)| {
                if name.ends_with(".safetensors") {
                    serde_json::json!({"rfilename": name, "size": data.len(), "lfs": {"sha256": sha256(data), "size": data.len()}})
                } else {
                    serde_json::json!({"rfilename": name, "size": data.len(), "blobId": sha256(data)[..40].to_string()})
                }
            })
            .collect();
        let body = serde_json::json!({"id": REPO, "sha": COMMIT, "siblings": siblings}).to_string();
        return respond(
            &mut s,
            "200 OK",
            body.as_bytes(),
            "Content-Type: application/json\r\n",
        );
    }
    let Some(file) = path.strip_prefix(&format!("/{REPO}/resolve/{COMMIT}/")) else {
        return respond(&mut s, "404 Not Found", b"{}", "");
    };
    requests
        .lock()
        .unwrap()
        .push((file.to_string(), range.clone()));
    let Some(data) = files.get(file) else {
        return respond(&mut s, "404 Not Found", b"", "");
    };
    let mut data = data.clone();
    if faults.lock().unwrap().corrupt.as_deref() == Some(file) {
        let mid = data.len() / 2;
        data[mid] ^= 0xff;
    }
    let start: usize = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.trim_end_matches('-').parse().ok())
        .unwrap_or(0);
    let body = &data[start..];
    let interrupt = {
        let mut f = faults.lock().unwrap();
        match &f.interrupt {
            Some((p, n)) if p == file => {
                let n = *n;
                f.interrupt = None;
                Some(n)
            }
            _ => None,
        }
    };
    let status = if start > 0 {
        "206 Partial Content"
    } else {
        "200 OK"
    };
    let extra = format!("ETag: \"{}\"\r\nX-Repo-Commit: {COMMIT}\r\n", sha256(&data));
    match interrupt {
        Some(n) => {
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
                body.len()
            );
            let _ = s.write_all(&body[..n]);
            let _ = s.flush();
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        None => respond(&mut s, status, body, &extra),
    }
}

fn krya(home: &Path, endpoint: &str, offline: bool, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_krya"));
    c.args(args)
        .env("KRYA_HOME", home)
        .env("HF_HUB_CACHE", home.join("hub"))
        .env("HF_ENDPOINT", endpoint)
        .env_remove("HF_HOME")
        .env_remove("HF_TOKEN");
    if offline {
        c.env("HF_HUB_OFFLINE", "1");
    } else {
        c.env_remove("HF_HUB_OFFLINE");
    }
    c.output().unwrap()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn pull_fills_the_shared_cache_and_generates_offline() {
    let hub = start_hub();
    let url = format!("http://127.0.0.1:{}", hub.port);
    let tmp = tempfile::tempdir().unwrap();
    let o = krya(tmp.path(), &url, false, &["models", "pull", REPO]);
    assert!(o.status.success(), "{}", err(&o));
    let e = err(&o);
    assert!(
        e.contains("pulled unet/diffusion_pytorch_model.safetensors"),
        "progress lines: {e}"
    );

    // The layout huggingface_hub uses: refs, snapshots linking into blobs named by sha256.
    let repo_dir = tmp.path().join("hub/models--tiny-org--tiny-turbo");
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
        COMMIT
    );
    let unet = repo_dir.join(format!(
        "snapshots/{COMMIT}/unet/diffusion_pytorch_model.safetensors"
    ));
    let target = std::fs::read_link(&unet).unwrap();
    let want =
        sha256(&std::fs::read(golden("turbo/unet/diffusion_pytorch_model.safetensors")).unwrap());
    assert_eq!(target, PathBuf::from(format!("../../../blobs/{want}")));
    let fetched: Vec<String> = hub
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|(p, _)| p.clone())
        .collect();
    assert!(
        fetched.contains(&"text_encoder/model.fp16.safetensors".to_string()),
        "{fetched:?}"
    );
    for skipped in [
        "text_encoder/model.safetensors",
        "unet/diffusion_pytorch_model.bin",
        "unet/diffusion_pytorch_model.non_ema.safetensors",
        "sd_turbo.safetensors",
    ] {
        assert!(
            !fetched.iter().any(|p| p == skipped),
            "{skipped} should not be fetched: {fetched:?}"
        );
    }

    // Offline, the repo id now loads from the cache and gives the folder's image.
    let a = tmp.path().join("a.png");
    let b = tmp.path().join("b.png");
    let generate = |model: &str, out: &Path| {
        krya(
            tmp.path(),
            "http://127.0.0.1:1",
            true,
            &[
                "generate",
                "--model",
                model,
                "--prompt",
                "a cat",
                "--seed",
                "4",
                "--out",
                out.to_str().unwrap(),
            ],
        )
    };
    let o = generate(REPO, &a);
    assert!(o.status.success(), "{}", err(&o));
    let o = generate(golden("turbo").to_str().unwrap(), &b);
    assert!(o.status.success(), "{}", err(&o));
    let strip = |p: &Path| image::open(p).unwrap().to_rgb8().into_raw();
    assert!(
        strip(&a) == strip(&b),
        "the pulled model differs from its source folder"
    );

    // A second pull fetches nothing.
    let before = hub.requests.lock().unwrap().len();
    assert!(
        krya(tmp.path(), &url, false, &["models", "pull", REPO])
            .status
            .success()
    );
    assert_eq!(hub.requests.lock().unwrap().len(), before);
}

#[test]
fn interrupted_pull_resumes_and_corruption_is_caught() {
    let hub = start_hub();
    let url = format!("http://127.0.0.1:{}", hub.port);
    let tmp = tempfile::tempdir().unwrap();
    let file = "unet/diffusion_pytorch_model.safetensors";
    hub.faults.lock().unwrap().interrupt = Some((file.into(), 100_000));
    let o = krya(tmp.path(), &url, false, &["models", "pull", REPO]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("transfer interrupted"), "{}", err(&o));
    let o = krya(tmp.path(), &url, false, &["models", "pull", REPO]);
    assert!(o.status.success(), "{}", err(&o));
    let ranges: Vec<Option<String>> = hub
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| p == file)
        .map(|(_, r)| r.clone())
        .collect();
    assert_eq!(ranges, vec![None, Some("bytes=100000-".to_string())]);
    let pulled = tmp.path().join(format!(
        "hub/models--tiny-org--tiny-turbo/snapshots/{COMMIT}/{file}"
    ));
    assert!(std::fs::read(pulled).unwrap() == std::fs::read(golden("turbo").join(file)).unwrap());

    let tmp2 = tempfile::tempdir().unwrap();
    hub.faults.lock().unwrap().corrupt = Some("vae/diffusion_pytorch_model.safetensors".into());
    let o = krya(tmp2.path(), &url, false, &["models", "pull", REPO]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("checksum mismatch"), "{}", err(&o));
    let blobs: Vec<_> =
        std::fs::read_dir(tmp2.path().join("hub/models--tiny-org--tiny-turbo/blobs"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
    assert!(
        !blobs
            .iter()
            .any(|n| n.to_string_lossy().ends_with(".incomplete")),
        "{blobs:?}"
    );
}

#[test]
fn offline_and_unreachable_hub_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png");
    let o = krya(
        tmp.path(),
        "http://127.0.0.1:1",
        false,
        &[
            "generate",
            "--model",
            REPO,
            "--prompt",
            "x",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    let line = err(&o);
    assert!(
        line.contains("cannot reach the Hugging Face hub") && line.lines().count() == 1,
        "{line}"
    );
    let o = krya(
        tmp.path(),
        "http://127.0.0.1:1",
        true,
        &[
            "generate",
            "--model",
            REPO,
            "--prompt",
            "x",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err(&o).contains("is not in the Hugging Face cache"),
        "{}",
        err(&o)
    );
    let hub = start_hub();
    let o = krya(
        tmp.path(),
        &format!("http://127.0.0.1:{}", hub.port),
        false,
        &["models", "pull", "tiny-org/missing"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("does not exist on the hub"), "{}", err(&o));
}
