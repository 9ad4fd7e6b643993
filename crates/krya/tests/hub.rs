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

mod process;

const REPO: &str = "tiny-org/tiny-turbo";
/// An adapter repo: a LoRA's one file (diffusers' name) and a model card.
const LORA_REPO: &str = "tiny-org/tiny-lora";
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

/// The TAESD repo a model without its own `taesd/` falls back to: a single-component repo
/// (config.json and weights at its root), here the tiny TAESD that fits the turbo model.
const TAESD_REPO: &str = "madebyollin/taesd";

/// Single files served by URL (`{hub}/{FILES_REPO}/resolve/{COMMIT}/{path}`): a model that
/// is one file, and what a mirror of GitHub serves.
const FILES_REPO: &str = "files/one";

impl Hub {
    /// The paths of the files requested so far.
    fn fetched(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|(p, _)| p.clone())
            .collect()
    }
}

fn taesd_files() -> HashMap<String, Vec<u8>> {
    ["config.json", "diffusion_pytorch_model.safetensors"]
        .iter()
        .map(|f| {
            (
                f.to_string(),
                std::fs::read(golden("turbo/taesd").join(f)).unwrap(),
            )
        })
        .collect()
}

fn start_hub() -> Hub {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let files: Arc<HashMap<String, HashMap<String, Vec<u8>>>> = Arc::new(
        [
            (REPO.to_string(), repo_files()),
            (TAESD_REPO.to_string(), taesd_files()),
            (
                LORA_REPO.to_string(),
                HashMap::from([
                    (
                        "pytorch_lora_weights.safetensors".to_string(),
                        std::fs::read(golden("lora/sd1_peft.safetensors")).unwrap(),
                    ),
                    ("README.md".to_string(), b"# a tiny LoRA".to_vec()),
                ]),
            ),
            (
                FILES_REPO.to_string(),
                HashMap::from([
                    (
                        "compact.safetensors".to_string(),
                        std::fs::read(golden("upscale/compact.safetensors")).unwrap(),
                    ),
                    // What a mirror serves for the curated x4plus: not the pinned file.
                    (
                        "github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth"
                            .to_string(),
                        std::fs::read(golden("upscale/compact.safetensors")).unwrap(),
                    ),
                ]),
            ),
        ]
        .into(),
    );
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
    repos: &HashMap<String, HashMap<String, Vec<u8>>>,
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
    let listing = path
        .strip_prefix("/api/models/")
        .and_then(|p| p.strip_suffix("/revision/main?blobs=true"));
    if let Some(files) = listing.and_then(|repo| repos.get(repo)) {
        let repo = listing.unwrap();
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
        let body = serde_json::json!({"id": repo, "sha": COMMIT, "siblings": siblings}).to_string();
        return respond(
            &mut s,
            "200 OK",
            body.as_bytes(),
            "Content-Type: application/json\r\n",
        );
    }
    let found = repos.iter().find_map(|(repo, files)| {
        path.strip_prefix(&format!("/{repo}/resolve/{COMMIT}/"))
            .map(|f| (files, f))
    });
    let Some((files, file)) = found else {
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
    krya_with(home, endpoint, offline, args, &[])
}

fn krya_with(
    home: &Path,
    endpoint: &str,
    offline: bool,
    args: &[&str],
    env: &[(&str, &str)],
) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_krya"));
    c.args(args)
        .envs(env.iter().copied())
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
    let fetched = hub.fetched();
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

/// A LoRA repo (no model_index.json or config.json: one weights file) pulls its file only,
/// and `--lora OWNER/NAME:WEIGHT` then applies it offline, as the file itself does.
#[test]
fn lora_repos_pull_their_one_file() {
    let hub = start_hub();
    let url = format!("http://127.0.0.1:{}", hub.port);
    let tmp = tempfile::tempdir().unwrap();
    let o = krya(tmp.path(), &url, false, &["models", "pull", LORA_REPO]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(hub.fetched(), ["pytorch_lora_weights.safetensors"]);
    let sd1 = golden("sd1");
    let run = |out: &str, lora: &str| {
        let out = tmp.path().join(out);
        let o = krya(
            tmp.path(),
            &url,
            true,
            &[
                "generate",
                "--prompt",
                "a cat",
                "--steps",
                "2",
                "--seed",
                "3",
                "--width",
                "32",
                "--height",
                "32",
                "--model",
                sd1.to_str().unwrap(),
                "--lora",
                lora,
                "--out",
                out.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{}", err(&o));
        image::open(out).unwrap().to_rgb8().into_raw()
    };
    let file = golden("lora/sd1_peft.safetensors");
    assert!(
        run("hub.png", &format!("{LORA_REPO}:0.5"))
            == run("file.png", &format!("{}:0.5", file.display())),
        "the pulled LoRA differs from its file"
    );
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

/// The live canvas on a model that has no `taesd/` of its own: the model comes from the hub
/// on first use, and its tiny autoencoder from the TAESD repo of its latent space (a
/// single-component repo); the frame is still diffusers' frame.
#[test]
fn live_canvas_fetches_model_and_tiny_autoencoder_from_the_hub() {
    use futures_util::{SinkExt, StreamExt};
    let hub = start_hub();
    let url = format!("http://127.0.0.1:{}", hub.port);
    let data = tempfile::tempdir().unwrap();
    std::fs::write(
        data.path().join("models.json"),
        serde_json::json!({"hubtiny": REPO}).to_string(),
    )
    .unwrap();
    let (_server, base) = process::serve(
        data.path(),
        &[
            ("HF_ENDPOINT", url.clone()),
            ("HF_HUB_OFFLINE", "0".into()),
            ("KRYA__REALTIME__JPEG_QUALITY", "100".into()),
        ],
    );
    let a: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = a
        .post(format!("{base}/api/auth/register"))
        .header("Content-Type", "application/json")
        .send(r#"{"email":"h@example.com","password":"password123","name":"H"}"#)
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    let token = v["access_token"].as_str().unwrap().to_string();
    let canvas = std::fs::read(golden("stream_canvas.png")).unwrap();

    #[derive(serde::Serialize)]
    struct Msg<'a> {
        #[serde(rename = "type")]
        t: &'a str,
        data: Data<'a>,
    }
    #[derive(serde::Serialize)]
    struct Data<'a> {
        prompt: &'a str,
        canvas_data: &'a serde_bytes::Bytes,
        strength: f64,
        seed: i64,
        model: &'a str,
        steps: u32,
        frame_id: u64,
    }
    #[derive(serde::Deserialize)]
    struct Reply {
        #[serde(rename = "type")]
        t: String,
        data: Option<serde_bytes::ByteBuf>,
    }
    let frame = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let ws_url = format!(
            "{}/ws/realtime?token={token}",
            base.replace("http://", "ws://")
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
        let msg = Msg {
            t: "generate",
            data: Data {
                prompt: "a lighthouse at dusk",
                canvas_data: serde_bytes::Bytes::new(&canvas),
                strength: 0.5,
                seed: 7,
                model: "hubtiny",
                steps: 1,
                frame_id: 1,
            },
        };
        let bytes = rmp_serde::to_vec_named(&msg).unwrap();
        ws.send(tokio_tungstenite::tungstenite::Message::Binary(
            bytes.into(),
        ))
        .await
        .unwrap();
        loop {
            let m = tokio::time::timeout(std::time::Duration::from_secs(120), ws.next())
                .await
                .expect("a frame within 2 minutes")
                .unwrap()
                .unwrap();
            if let tokio_tungstenite::tungstenite::Message::Binary(b) = m {
                // Statuses and errors carry maps; a frame carries bytes.
                if let Ok(r) = rmp_serde::from_slice::<Reply>(&b)
                    && r.t == "frame"
                {
                    return r.data.unwrap().into_vec();
                }
                let text = String::from_utf8_lossy(&b).to_string();
                assert!(!text.contains("error"), "the server refused: {text}");
            }
        }
    });
    let img = image::load_from_memory(&frame).unwrap().to_rgb8();
    let refs =
        candle_core::safetensors::load(golden("stream.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let want: Vec<u8> = refs["stream.turbo_canvas_1_05"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let diff = img
        .as_raw()
        .iter()
        .zip(&want)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .sum::<f64>()
        / want.len() as f64;
    assert!(
        diff < 4.0,
        "the frame differs from diffusers by {diff:.2}/255"
    );
    let cache = data
        .path()
        .join("hf/models--madebyollin--taesd/snapshots")
        .join(COMMIT);
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        assert!(cache.join(f).is_file(), "{f} is not in the HF cache");
    }
    let fetched = hub.fetched();
    assert!(
        !fetched.iter().any(|p| p.starts_with("taesd/")),
        "the pipeline repo's own taesd/ is not part of a pull: {fetched:?}"
    );
}

#[test]
fn one_file_models_download_by_url_and_by_name() {
    let hub = start_hub();
    let url = format!("http://127.0.0.1:{}", hub.port);
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let file = format!("{url}/{FILES_REPO}/resolve/{COMMIT}/compact.safetensors");
    // `models add` with a URL downloads the file now; an interrupted transfer resumes.
    hub.faults.lock().unwrap().interrupt = Some(("compact.safetensors".into(), 5000));
    let o = krya(home, &url, false, &["models", "add", "sharp", &file]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("transfer interrupted"), "{}", err(&o));
    let o = krya(home, &url, false, &["models", "add", "sharp", &file]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(err(&o).contains("downloaded sharp"), "{}", err(&o));
    let ranges: Vec<Option<String>> = hub
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|(_, r)| r.clone())
        .collect();
    assert_eq!(ranges, vec![None, Some("bytes=5000-".to_string())]);
    let kept = home.join("models/compact.safetensors");
    assert!(
        std::fs::read(&kept).unwrap()
            == std::fs::read(golden("upscale/compact.safetensors")).unwrap()
    );

    // Used by its name, offline, with no further request.
    let out = home.join("big.png");
    let o = krya(
        home,
        &url,
        true,
        &[
            "enhance",
            golden("init.png").to_str().unwrap(),
            out.to_str().unwrap(),
            "--model",
            "sharp",
            "--scale",
            "2",
        ],
    );
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(image::image_dimensions(&out).unwrap(), (128, 96));
    assert_eq!(hub.requests.lock().unwrap().len(), 2);
    let o = krya(home, &url, true, &["models", "list"]);
    let listed = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("sharp ") && l.contains("KB") && l.contains(&file)),
        "{listed}"
    );
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("realesrgan-x4plus ") && l.contains("not pulled")),
        "{listed}"
    );

    // A curated model through a mirror must still be the file the list pins.
    let mirror = format!("{url}/{FILES_REPO}/resolve/{COMMIT}");
    let o = krya_with(
        home,
        &url,
        false,
        &["models", "pull", "realesrgan-x4plus"],
        &[("KRYA__MODELS__MIRROR", &mirror)],
    );
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("size mismatch"), "{}", err(&o));
    assert!(!home.join("models/RealESRGAN_x4plus.pth").exists());
    assert!(!home.join("models/RealESRGAN_x4plus.pth.part").exists());
}
