//! Model files fetched over HTTP(S): the hub's repo files ([`super::hub`]) and single files
//! named by a URL (the curated upscalers and face models, published as GitHub release
//! assets). A transfer goes into a `.part` file beside its destination, resumes from
//! where an interrupted one stopped (an HTTP `Range` request), is checked against the
//! expected size and sha256, and only then takes its name: a file under its final name is
//! always whole.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::Digest;

use crate::{EngineError, Result};

/// What a downloaded file must be, where known.
#[derive(Debug, Clone, Copy, Default)]
pub struct Expect<'a> {
    /// Lower-case hex.
    pub sha256: Option<&'a str>,
    pub size: Option<u64>,
}

/// `HF_HUB_OFFLINE` (as huggingface_hub reads it) also stops URL downloads.
pub(crate) fn offline() -> bool {
    matches!(
        std::env::var("HF_HUB_OFFLINE").as_deref(),
        Ok("1") | Ok("true") | Ok("TRUE") | Ok("yes")
    )
}

/// The client for downloads: a minute without a byte is a stalled transfer; a whole body
/// has no time limit (ureq's `timeout_recv_body` is one budget for the body: a 350 MB file
/// on a slow line would never finish).
pub(crate) fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(std::time::Duration::from_secs(15)))
        .timeout_per_read(Some(std::time::Duration::from_secs(60)))
        .build()
        .into()
}

type Request = ureq::RequestBuilder<ureq::typestate::WithoutBody>;

/// Appends `url`'s bytes to `part` (from its current length, by a `Range` request), then
/// checks the whole file against `expect`; a file whose sha256 differs is removed. `label`
/// names the file in errors; `prepare` adds headers (the hub's token); `on_bytes` gets the
/// bytes on disk so far, and stops the transfer by returning an error (a cancelled job's:
/// the part stays, to be resumed).
pub(crate) fn transfer(
    agent: &ureq::Agent,
    url: &str,
    prepare: &dyn Fn(Request) -> Request,
    part: &Path,
    label: &str,
    expect: Expect,
    on_bytes: &mut dyn FnMut(u64) -> Result<()>,
) -> Result<()> {
    let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let mut req = prepare(agent.get(url));
    if have > 0 {
        req = req.header("Range", format!("bytes={have}-"));
    }
    let resp = req.call().map_err(|e| {
        EngineError::Download(format!(
            "{label}: cannot reach {} ({e}); check the network",
            host(url)
        ))
    })?;
    let status = resp.status().as_u16();
    let append = |p: &Path| {
        std::fs::OpenOptions::new()
            .append(true)
            .open(p)
            .map_err(|e| EngineError::io(p, e))
    };
    let (mut file, start) = match status {
        206 | 416 => (append(part)?, have),
        200 => (
            std::fs::File::create(part).map_err(|e| EngineError::io(part, e))?,
            0,
        ),
        401 | 403 => {
            return Err(EngineError::Download(format!(
                "{label}: access denied by {} (HTTP {status})",
                host(url)
            )));
        }
        404 => {
            return Err(EngineError::NotFound(format!(
                "{label}: not found at {url}"
            )));
        }
        s => {
            return Err(EngineError::Download(format!(
                "{label}: {} answered HTTP {s}",
                host(url)
            )));
        }
    };
    let mut done = start;
    let mut buf = vec![0u8; 1 << 16];
    if status != 416 {
        let mut reader = resp.into_body().into_reader();
        loop {
            let n = reader.read(&mut buf).map_err(|e| {
                EngineError::Download(format!(
                    "{label}: transfer interrupted after {done} bytes ({e}); run the pull again to resume"
                ))
            })?;
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n])
                .map_err(|e| EngineError::io(part, e))?;
            done += n as u64;
            on_bytes(done)?;
        }
    }
    file.sync_all().map_err(|e| EngineError::io(part, e))?;
    drop(file);
    // The body arrived whole (an early close is an error above): a size other than the
    // expected one is another file.
    if let Some(t) = expect.size
        && done != t
    {
        let _ = std::fs::remove_file(part);
        return Err(EngineError::Download(format!(
            "{label}: size mismatch (expected {t} bytes, got {done}); the partial file was removed"
        )));
    }
    if let Some(want) = expect.sha256 {
        let got = sha256_file(part)?;
        if !got.eq_ignore_ascii_case(want) {
            let _ = std::fs::remove_file(part);
            return Err(EngineError::Download(format!(
                "{label}: checksum mismatch (expected sha256 {want}, got {got}); the partial file was removed"
            )));
        }
    }
    Ok(())
}

/// The lower-case hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut h = sha2::Sha256::new();
    let mut r = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf).map_err(|e| EngineError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

/// Where `url` is fetched from: itself, or under `mirror` when that is set
/// (`https://github.com/a/b.pth` from `MIRROR/github.com/a/b.pth`), for hosts that reach
/// the internet only through a mirror of their own (as `HF_ENDPOINT` for the hub).
pub fn mirrored(url: &str, mirror: &str) -> String {
    if mirror.is_empty() {
        return url.to_string();
    }
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    format!("{}/{rest}", mirror.trim_end_matches('/'))
}

/// Whether `s` is an `http://` or `https://` URL (a source downloaded as one file).
pub fn is_url(s: &str) -> bool {
    s.starts_with("https://") || s.starts_with("http://")
}

/// A file already at `dest`: used if it has the expected size (its sum was checked when it
/// was downloaded; another file of the same name put there is refused).
fn here(dest: &Path, expect: Expect) -> Result<PathBuf> {
    let len = std::fs::metadata(dest)
        .map_err(|e| EngineError::io(dest, e))?
        .len();
    match expect.size {
        Some(want) if want != len => Err(EngineError::Download(format!(
            "{} is {len} bytes, not the {want} of the file it should be; remove it to download the right one",
            dest.display()
        ))),
        _ => Ok(dest.to_path_buf()),
    }
}

/// The name a URL's file is kept under: the last segment of its path, when it is a plain
/// file name (letters, digits, `.`, `-`, `_`, `+`), else an error.
pub fn file_name(url: &str) -> Result<String> {
    let path = url
        .split_once("://")
        .map_or(url, |(_, r)| r)
        .split(['?', '#'])
        .next()
        .unwrap_or("");
    let name = path.rsplit('/').next().unwrap_or("");
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c));
    if !plain || !path.contains('/') {
        return Err(EngineError::InvalidInput(format!(
            "{url}: the URL does not end in a file name"
        )));
    }
    Ok(name.to_string())
}

/// Downloads `url` (from under `mirror` when it is not empty, see [`mirrored`]) to `dest`
/// unless it is there: resumable, checked against `expect` (a mirror's file too), and
/// renamed into place only when whole. Two processes fetching the same file take turns (a
/// lock on the `.part` file); the second finds the first's file. `on_progress` gets the
/// bytes on disk and the total when known, and stops the download by returning an error.
pub fn fetch_url(
    url: &str,
    mirror: &str,
    dest: &Path,
    expect: Expect,
    on_progress: &mut dyn FnMut(u64, Option<u64>) -> Result<()>,
) -> Result<PathBuf> {
    if dest.is_file() {
        return here(dest, expect);
    }
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if offline() {
        return Err(EngineError::NotFound(format!(
            "{name} is not downloaded and HF_HUB_OFFLINE is set; download {url} to {}",
            dest.display()
        )));
    }
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
    }
    let mut part_name = dest.as_os_str().to_owned();
    part_name.push(".part");
    let part = PathBuf::from(part_name);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&part)
        .map_err(|e| EngineError::io(&part, e))?;
    lock.lock().map_err(|e| EngineError::io(&part, e))?;
    if dest.is_file() {
        // Another process finished it while this one waited.
        let _ = std::fs::remove_file(&part);
        return here(dest, expect);
    }
    let agent = http_agent();
    let url = &mirrored(url, mirror);
    transfer(&agent, url, &|r| r, &part, &name, expect, &mut |done| {
        on_progress(done, expect.size)
    })?;
    std::fs::rename(&part, dest).map_err(|e| EngineError::io(dest, e))?;
    drop(lock);
    Ok(dest.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::sync::{Arc, Mutex};

    /// A server on 127.0.0.1 answering every GET with `body` (from a `Range` start when
    /// asked); it records each request's `Range` header.
    fn serve(body: Vec<u8>) -> (String, Arc<Mutex<Vec<Option<String>>>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/files/x4.pth", listener.local_addr().unwrap());
        let ranges = Arc::new(Mutex::new(Vec::new()));
        let seen = ranges.clone();
        std::thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                let mut reader = BufReader::new(s.try_clone().unwrap());
                let mut range = None;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                        break;
                    }
                    if let Some(r) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        range = r.trim().trim_end_matches('-').parse::<usize>().ok();
                    }
                }
                seen.lock()
                    .unwrap()
                    .push(range.map(|r| format!("bytes={r}-")));
                let start = range.unwrap_or(0);
                let status = if start > 0 {
                    "206 Partial Content"
                } else {
                    "200 OK"
                };
                let rest = &body[start..];
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    rest.len()
                );
                let _ = s.write_all(rest);
            }
        });
        (url, ranges)
    }

    #[test]
    fn fetches_once_resumes_and_refuses_a_wrong_sum() {
        let body: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let sum: String = sha2::Sha256::digest(&body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let (url, ranges) = serve(body.clone());
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("models/x4.pth");
        let expect = Expect {
            sha256: Some(&sum),
            size: Some(body.len() as u64),
        };
        let mut last = (0, None);
        let got = fetch_url(&url, "", &dest, expect, &mut |d, t| {
            last = (d, t);
            Ok(())
        })
        .unwrap();
        assert_eq!(std::fs::read(&got).unwrap(), body);
        assert_eq!(last, (body.len() as u64, Some(body.len() as u64)));
        // Here already: no second request; another file under its name is refused.
        fetch_url(&url, "", &dest, expect, &mut |_, _| Ok(())).unwrap();
        assert_eq!(ranges.lock().unwrap().len(), 1);
        let other = Expect {
            sha256: None,
            size: Some(5),
        };
        let e = fetch_url(&url, "", &dest, other, &mut |_, _| Ok(()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("remove it"), "{e}");

        // An interrupted earlier transfer is resumed from where it stopped.
        let resumed = dir.path().join("models/again.pth");
        std::fs::write(dir.path().join("models/again.pth.part"), &body[..1000]).unwrap();
        fetch_url(&url, "", &resumed, expect, &mut |_, _| Ok(())).unwrap();
        assert_eq!(std::fs::read(&resumed).unwrap(), body);
        assert_eq!(ranges.lock().unwrap()[1].as_deref(), Some("bytes=1000-"));

        // Stopped by its caller (a cancelled job): the part is kept for the next try.
        let stopped = dir.path().join("models/stopped.pth");
        let e = fetch_url(&url, "", &stopped, expect, &mut |_, _| {
            Err(crate::EngineError::Cancelled)
        })
        .unwrap_err();
        assert!(matches!(e, crate::EngineError::Cancelled), "{e}");
        assert!(!stopped.exists() && dir.path().join("models/stopped.pth.part").exists());

        // A file that is not what the list pins is refused and not kept.
        let wrong = dir.path().join("models/wrong.pth");
        let bad = "0".repeat(64);
        let e = fetch_url(
            &url,
            "",
            &wrong,
            Expect {
                sha256: Some(&bad),
                size: None,
            },
            &mut |_, _| Ok(()),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("checksum mismatch"), "{e}");
        assert!(!wrong.exists() && !dir.path().join("models/wrong.pth.part").exists());
        // So is one of another size.
        let short = dir.path().join("models/short.pth");
        let e = fetch_url(
            &url,
            "",
            &short,
            Expect {
                sha256: None,
                size: Some(10),
            },
            &mut |_, _| Ok(()),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("size mismatch"), "{e}");
        assert!(!short.exists());
    }

    #[test]
    fn file_names_come_from_the_url_path() {
        let n = |u| file_name(u).ok();
        assert_eq!(
            n("https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth")
                .as_deref(),
            Some("RealESRGAN_x4plus.pth")
        );
        assert_eq!(
            n("http://127.0.0.1:9/a/b.safetensors?download=true").as_deref(),
            Some("b.safetensors")
        );
        for bad in [
            "https://example.com",
            "https://example.com/",
            "https://example.com/a/..",
            "https://example.com/a/%2e%2e",
            "https://example.com/a/.hidden",
        ] {
            assert_eq!(n(bad), None, "{bad}");
        }
        assert_eq!(host("https://github.com/x/y"), "github.com");
        assert!(is_url("https://x/y") && is_url("http://x/y") && !is_url("/x/y"));
        assert_eq!(
            mirrored("https://github.com/a/b.pth", ""),
            "https://github.com/a/b.pth"
        );
        assert_eq!(
            mirrored("https://github.com/a/b.pth", "http://10.0.0.1:8/m/"),
            "http://10.0.0.1:8/m/github.com/a/b.pth"
        );
    }
}
