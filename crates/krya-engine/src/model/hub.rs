//! The Hugging Face cache, shared with diffusers and `huggingface_hub`: a repo's files live
//! in `$HF_HUB_CACHE/models--owner--name/snapshots/<commit>/`, with `refs/<revision>`
//! holding the commit. Honours `HF_HUB_CACHE`, then `HF_HOME/hub`, then
//! `~/.cache/huggingface/hub`.

use std::path::{Path, PathBuf};

use super::download::{self, Expect, http_agent, offline};
use crate::{EngineError, Result};

/// The hub cache folder this process uses.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(p).join("hub");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache/huggingface/hub")
}

/// The cache folder of one model repo.
pub fn repo_dir(repo: &str) -> PathBuf {
    cache_dir().join(format!("models--{}", repo.replace('/', "--")))
}

/// The snapshot folder of `repo` at `revision` if it is in the cache.
pub fn cached_snapshot(repo: &str, revision: &str) -> Option<PathBuf> {
    let dir = repo_dir(repo);
    let commit = std::fs::read_to_string(dir.join("refs").join(revision))
        .ok()
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| revision.to_string());
    let snap = dir.join("snapshots").join(commit);
    // A pipeline repo has model_index.json; a single-component repo (a TAESD) config.json;
    // an adapter repo (a LoRA) its one weights file.
    (snap.join("model_index.json").is_file()
        || snap.join("config.json").is_file()
        || crate::pipelines::lora::file_in_folder(&snap).is_some())
    .then_some(snap)
}

/// The cached snapshot, or a readable error saying how to get it.
pub fn require_snapshot(repo: &str, revision: &str) -> Result<PathBuf> {
    cached_snapshot(repo, revision).ok_or_else(|| {
        EngineError::NotFound(format!(
            "model {repo} is not in the Hugging Face cache ({}); download it there (diffusers or `huggingface-cli download {repo}`), or give a local folder",
            cache_dir().display()
        ))
    })
}

/// The hub's base URL: `HF_ENDPOINT`, as huggingface_hub reads it.
pub fn endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "https://huggingface.co".into())
        .trim_end_matches('/')
        .to_string()
}

/// Progress of a pull, reported as bytes arrive.
#[derive(Debug, Clone)]
pub struct PullProgress<'a> {
    pub file: &'a str,
    /// Bytes of this file on disk so far (a resumed file starts above 0).
    pub done: u64,
    pub total: Option<u64>,
    pub file_index: usize,
    pub files: usize,
}

/// One file of a repo listing.
#[derive(Debug, Clone)]
struct RemoteFile {
    path: String,
    size: Option<u64>,
    sha256: Option<String>,
    /// The blob id (git sha1) of small non-LFS files.
    blob_id: Option<String>,
}

/// Whether a file name is safetensors weights (or their shard index), and if so whether it
/// is the fp16 variant. Other variants (`.ema.`, `.non_ema.`) are `None`, as are non-weights.
fn weight_variant(name: &str) -> Option<bool> {
    let plain = |stem: &str| !stem.contains('.');
    if let Some(stem) = name.strip_suffix(".safetensors") {
        return match stem.strip_suffix(".fp16") {
            Some(s) if plain(s) => Some(true),
            _ if plain(stem) => Some(false),
            _ => None,
        };
    }
    if let Some(stem) = name.strip_suffix(".safetensors.index.json") {
        return plain(stem).then_some(false);
    }
    if let Some(stem) = name.strip_suffix(".safetensors.index.fp16.json") {
        return plain(stem).then_some(true);
    }
    None
}

fn is_weights_name(name: &str) -> bool {
    name.contains(".safetensors")
        || [".bin", ".ckpt", ".msgpack", ".onnx", ".pt", ".pth", ".h5"]
            .iter()
            .any(|e| name.ends_with(e))
}

/// An adapter repo's weights: diffusers' `pytorch_lora_weights.safetensors`, else the only
/// `.safetensors` file at the root (the rule `lora::file_in_folder` reads the snapshot by).
fn adapter_file(all: &[RemoteFile]) -> Option<RemoteFile> {
    let root: Vec<&RemoteFile> = all
        .iter()
        .filter(|f| !f.path.contains('/') && f.path.ends_with(".safetensors"))
        .collect();
    root.iter()
        .find(|f| f.path == crate::pipelines::lora::DIFFUSERS_FILE)
        .or_else(|| (root.len() == 1).then(|| &root[0]))
        .map(|f| (*f).clone())
}

/// Which files of a diffusers repo a pipeline needs: `model_index.json`, each component's
/// configs and tokenizer files, and one set of safetensors weights per component (the fp16
/// variant where the repo has one: half the download, converted on load).
fn wanted_files(all: &[RemoteFile], components: &[String]) -> Vec<RemoteFile> {
    let mut out: Vec<RemoteFile> = all
        .iter()
        .filter(|f| f.path == "model_index.json")
        .cloned()
        .collect();
    for c in components {
        // The component "" is the repo's root (a single-component repo).
        let prefix = if c.is_empty() {
            String::new()
        } else {
            format!("{c}/")
        };
        let in_dir: Vec<(&RemoteFile, &str)> = all
            .iter()
            .filter_map(|f| {
                f.path
                    .strip_prefix(&prefix)
                    .filter(|n| !n.contains('/'))
                    .map(|n| (f, n))
            })
            .collect();
        let has_fp16 = in_dir.iter().any(|(_, n)| weight_variant(n) == Some(true));
        for (f, name) in in_dir {
            let keep = match weight_variant(name) {
                Some(fp16) => fp16 == has_fp16,
                None => {
                    !is_weights_name(name) && (name.ends_with(".json") || name.ends_with(".txt"))
                }
            };
            if keep {
                out.push(f.clone());
            }
        }
    }
    out
}

fn auth(
    req: ureq::RequestBuilder<ureq::typestate::WithoutBody>,
) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
    match std::env::var("HF_TOKEN") {
        Ok(t) if !t.is_empty() => req.header("Authorization", format!("Bearer {t}")),
        _ => req,
    }
}

fn net_error(url: &str, e: ureq::Error) -> EngineError {
    EngineError::Download(format!(
        "cannot reach the Hugging Face hub at {url} ({e}); check the network, or use a cached or local model"
    ))
}

/// Downloads the files a diffusers pipeline (or a single-component repo, such as a TAESD)
/// needs from `repo` into the HF cache, resuming partial files and verifying sha256 sums
/// where the hub gives them. Returns the snapshot.
pub fn pull(
    repo: &str,
    revision: &str,
    on_progress: &mut dyn FnMut(PullProgress),
) -> Result<PathBuf> {
    if offline() {
        return require_snapshot(repo, revision);
    }
    let base = endpoint();
    let agent = http_agent();
    let url = format!("{base}/api/models/{repo}/revision/{revision}?blobs=true");
    let mut resp = auth(agent.get(&url))
        .call()
        .map_err(|e| net_error(&base, e))?;
    match resp.status().as_u16() {
        200 => {}
        401 | 403 => {
            return Err(EngineError::Download(format!(
                "{repo}: access denied by the hub (gated or private: set HF_TOKEN)"
            )));
        }
        404 => {
            return Err(EngineError::NotFound(format!(
                "{repo}@{revision} does not exist on the hub"
            )));
        }
        s => {
            return Err(EngineError::Download(format!(
                "{repo}: the hub answered HTTP {s}"
            )));
        }
    }
    let info: serde_json::Value = serde_json::from_str(
        &resp
            .body_mut()
            .read_to_string()
            .map_err(|e| net_error(&base, e))?,
    )
    .map_err(|e| EngineError::Download(format!("{repo}: unreadable hub listing ({e})")))?;
    let commit = info["sha"]
        .as_str()
        .ok_or_else(|| EngineError::Download(format!("{repo}: the hub listing has no commit")))?
        .to_string();
    let all: Vec<RemoteFile> = info["siblings"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| {
                    Some(RemoteFile {
                        path: s["rfilename"].as_str()?.to_string(),
                        size: s["lfs"]["size"].as_u64().or(s["size"].as_u64()),
                        sha256: s["lfs"]["sha256"].as_str().map(str::to_string),
                        blob_id: s["blobId"].as_str().map(str::to_string),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let pipeline = all.iter().any(|f| f.path == "model_index.json");
    // An adapter repo (a LoRA): its one weights file, nothing else.
    let adapter = (!pipeline && !all.iter().any(|f| f.path == "config.json"))
        .then(|| adapter_file(&all))
        .flatten();
    if !pipeline && !all.iter().any(|f| f.path == "config.json") && adapter.is_none() {
        return Err(EngineError::InvalidInput(format!(
            "{repo} is neither a diffusers repo (no model_index.json or config.json) nor a LoRA repo (one .safetensors file at its root)"
        )));
    }
    let dir = repo_dir(repo);
    let snapshot = dir.join("snapshots").join(&commit);
    let blobs = dir.join("blobs");
    std::fs::create_dir_all(&blobs).map_err(|e| EngineError::io(&blobs, e))?;

    let components: Vec<String> = if pipeline {
        // model_index.json first: it names the components.
        let index = all
            .iter()
            .find(|f| f.path == "model_index.json")
            .unwrap()
            .clone();
        fetch_file(
            &agent,
            &base,
            repo,
            &commit,
            &index,
            &blobs,
            &snapshot,
            0,
            1,
            on_progress,
        )?;
        let index_json: serde_json::Value = super::config_json::from_str(
            &std::fs::read_to_string(snapshot.join("model_index.json"))
                .map_err(|e| EngineError::io(&snapshot, e))?,
        )
        .map_err(|e| {
            EngineError::Download(format!("{repo}: model_index.json is not JSON ({e})"))
        })?;
        index_json
            .as_object()
            .map(|o| {
                o.iter()
                    .filter(|(k, v)| !k.starts_with('_') && v.is_array())
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default()
    } else {
        vec![String::new()]
    };
    let files: Vec<RemoteFile> = match adapter {
        Some(f) => vec![f],
        None => wanted_files(&all, &components)
            .into_iter()
            .filter(|f| f.path != "model_index.json")
            .collect(),
    };
    let n = files.len();
    for (i, f) in files.iter().enumerate() {
        fetch_file(
            &agent,
            &base,
            repo,
            &commit,
            f,
            &blobs,
            &snapshot,
            i,
            n,
            on_progress,
        )?;
    }
    let refs = dir.join("refs");
    std::fs::create_dir_all(&refs).map_err(|e| EngineError::io(&refs, e))?;
    if revision != commit {
        std::fs::write(refs.join(revision), &commit).map_err(|e| EngineError::io(&refs, e))?;
    }
    Ok(snapshot)
}

#[allow(clippy::too_many_arguments)]
fn fetch_file(
    agent: &ureq::Agent,
    base: &str,
    repo: &str,
    commit: &str,
    f: &RemoteFile,
    blobs: &Path,
    snapshot: &Path,
    file_index: usize,
    files: usize,
    on_progress: &mut dyn FnMut(PullProgress),
) -> Result<()> {
    if f.path.split('/').any(|p| p == ".." || p.is_empty()) {
        return Err(EngineError::Download(format!(
            "{repo}: refusing the file name {:?}",
            f.path
        )));
    }
    let link = snapshot.join(&f.path);
    if link.exists() {
        return Ok(());
    }
    // Blobs are named by their hash as the hub's ETag gives it: sha256 for LFS files.
    let blob_name = f
        .sha256
        .clone()
        .or_else(|| f.blob_id.clone())
        .unwrap_or_else(|| format!("{commit}-{}", f.path.replace('/', "-")));
    let blob = blobs.join(&blob_name);
    if !blob.exists() {
        let part = blobs.join(format!("{blob_name}.incomplete"));
        let url = format!("{base}/{repo}/resolve/{commit}/{}", f.path);
        let label = format!("{repo}/{}", f.path);
        let expect = Expect {
            sha256: f.sha256.as_deref(),
            size: f.size,
        };
        download::transfer(agent, &url, &auth, &part, &label, expect, &mut |done| {
            on_progress(PullProgress {
                file: &f.path,
                done,
                total: f.size,
                file_index,
                files,
            });
            Ok(())
        })
        .map_err(|e| match e {
            // The listing was read from this hub a moment ago: a file it lists is there.
            EngineError::NotFound(m) => EngineError::Download(m),
            e => e,
        })?;
        std::fs::rename(&part, &blob).map_err(|e| EngineError::io(&blob, e))?;
    }
    let parent = link.parent().unwrap();
    std::fs::create_dir_all(parent).map_err(|e| EngineError::io(parent, e))?;
    let depth = f.path.matches('/').count() + 2;
    let rel: PathBuf = std::iter::repeat_n("..", depth)
        .collect::<PathBuf>()
        .join("blobs")
        .join(&blob_name);
    #[cfg(unix)]
    std::os::unix::fs::symlink(&rel, &link).map_err(|e| EngineError::io(&link, e))?;
    #[cfg(not(unix))]
    std::fs::copy(&blob, &link)
        .map(|_| ())
        .map_err(|e| EngineError::io(&link, e))?;
    let _ = rel;
    Ok(())
}
