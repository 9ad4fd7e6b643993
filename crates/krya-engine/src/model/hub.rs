//! The Hugging Face cache, shared with diffusers and `huggingface_hub`: a repo's files live
//! in `$HF_HUB_CACHE/models--owner--name/snapshots/<commit>/`, with `refs/<revision>`
//! holding the commit. Honours `HF_HUB_CACHE`, then `HF_HOME/hub`, then
//! `~/.cache/huggingface/hub`.

use std::path::PathBuf;

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
    snap.join("model_index.json").is_file().then_some(snap)
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
