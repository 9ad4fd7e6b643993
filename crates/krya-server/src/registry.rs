//! The models a server offers: the curated list shipped in the repo
//! (`models/registry.toml`) plus the models added on this machine
//! (`DATA_DIR/models.json`, written by `krya models add`). API clients name models only by
//! these ids: a request can never make the server read an arbitrary path.

use std::collections::BTreeMap;
use std::path::Path;

use krya_engine::model::{ModelSource, hub};
use serde::{Deserialize, Serialize};

const CURATED: &str = include_str!("../../../models/registry.toml");

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelEntry {
    pub id: String,
    pub name: String,
    /// A Hugging Face repo id, a diffusers folder or a checkpoint file.
    pub source: String,
    #[serde(default)]
    pub family: Option<String>,
    #[serde(default)]
    pub resolution: Option<u32>,
    #[serde(default)]
    pub default_steps: Option<u32>,
    #[serde(default)]
    pub default_cfg: Option<f64>,
    #[serde(default)]
    pub fast: bool,
    /// Added on this machine rather than shipped.
    #[serde(default)]
    pub local: bool,
    /// Its files are here (a folder or file that exists, or a repo in the HF cache).
    #[serde(default)]
    pub installed: bool,
}

#[derive(Deserialize)]
struct Curated {
    models: Vec<ModelEntry>,
}

fn curated() -> Vec<ModelEntry> {
    toml::from_str::<Curated>(CURATED)
        .expect("models/registry.toml is checked by a test")
        .models
}

fn installed(source: &str) -> bool {
    match ModelSource::parse(source) {
        Ok(ModelSource::Folder(_)) | Ok(ModelSource::Checkpoint(_)) => true,
        Ok(ModelSource::Hub { repo, revision }) => hub::cached_snapshot(&repo, &revision).is_some(),
        Err(_) => false,
    }
}

/// The square size a diffusers folder (or cached repo) was trained at, from its own
/// configs: the UNet's `sample_size` times the VAE's downscaling, 2^(blocks - 1).
fn native_resolution(source: &str) -> Option<u32> {
    let dir = match ModelSource::parse(source).ok()? {
        ModelSource::Folder(d) => d,
        ModelSource::Hub { repo, revision } => hub::cached_snapshot(&repo, &revision)?,
        ModelSource::Checkpoint(_) => return None,
    };
    let read = |p: &str| -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(dir.join(p)).ok()?).ok()
    };
    let sample = read("unet/config.json")?["sample_size"].as_u64()?;
    let blocks = read("vae/config.json")?["block_out_channels"]
        .as_array()?
        .len() as u32;
    Some((sample << blocks.saturating_sub(1)) as u32)
}

/// Every model, local ones first, then curated, each with its installed state. Local
/// entries are `DATA_DIR/models.json` plus `configured` (settings `[models.local]` and
/// `krya serve --model NAME=SOURCE`, which win); a local entry with a curated id replaces
/// the curated one.
pub fn list(
    data_dir: &Path,
    configured: &BTreeMap<String, String>,
) -> Result<Vec<ModelEntry>, String> {
    let path = data_dir.join("models.json");
    let mut local: BTreeMap<String, String> = match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| format!("{} is not valid JSON: {e}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    local.extend(configured.iter().map(|(k, v)| (k.clone(), v.clone())));
    let curated = curated();
    let mut out: Vec<ModelEntry> = local
        .into_iter()
        .map(|(id, source)| {
            // A local name for a curated repo keeps the curated defaults.
            let known = curated.iter().find(|c| c.source == source || c.id == id);
            ModelEntry {
                name: known.map(|k| k.name.clone()).unwrap_or_else(|| id.clone()),
                family: known.and_then(|k| k.family.clone()),
                resolution: known.and_then(|k| k.resolution),
                default_steps: known.and_then(|k| k.default_steps),
                default_cfg: known.and_then(|k| k.default_cfg),
                fast: known.is_some_and(|k| k.fast),
                local: true,
                installed: false,
                id,
                source,
            }
        })
        .collect();
    for c in curated {
        if !out.iter().any(|m| m.id == c.id) {
            out.push(c);
        }
    }
    for m in &mut out {
        m.installed = installed(&m.source);
        if m.resolution.is_none() {
            m.resolution = native_resolution(&m.source);
        }
    }
    Ok(out)
}

/// The model with this id.
pub fn find(
    data_dir: &Path,
    configured: &BTreeMap<String, String>,
    id: &str,
) -> Result<Option<ModelEntry>, String> {
    Ok(list(data_dir, configured)?.into_iter().find(|m| m.id == id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curated_registry_parses_and_ids_are_unique() {
        let c = curated();
        assert!(c.len() >= 5);
        let mut ids: Vec<_> = c.iter().map(|m| m.id.as_str()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), c.len());
        for m in &c {
            assert!(
                matches!(ModelSource::parse(&m.source), Ok(ModelSource::Hub { .. })),
                "{}",
                m.id
            );
        }
    }

    #[test]
    fn local_models_come_first_and_override() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("tiny");
        std::fs::create_dir(&model).unwrap();
        std::fs::write(
            dir.path().join("models.json"),
            serde_json::json!({"tiny": model, "sd-turbo": model}).to_string(),
        )
        .unwrap();
        let extra = BTreeMap::from([("flagged".to_string(), model.display().to_string())]);
        let all = list(dir.path(), &extra).unwrap();
        assert!(
            all.iter()
                .any(|m| m.id == "flagged" && m.local && m.installed)
        );
        let all: Vec<_> = all.into_iter().filter(|m| m.id != "flagged").collect();
        assert_eq!(all[0].id, "sd-turbo");
        assert!(all[0].local && all[0].installed && all[0].fast);
        assert_eq!(all[1].id, "tiny");
        assert_eq!(all.iter().filter(|m| m.id == "sd-turbo").count(), 1);
        assert!(
            find(dir.path(), &extra, "sdxl")
                .unwrap()
                .is_some_and(|m| !m.local)
        );
        std::fs::write(dir.path().join("models.json"), "{").unwrap();
        assert!(list(dir.path(), &extra).is_err());
    }
}

const STYLES: &str = include_str!("../../../presets/styles.toml");

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Style {
    pub id: String,
    pub name: String,
    pub prompt: String,
    pub negative: String,
}

#[derive(Deserialize)]
struct Styles {
    styles: Vec<Style>,
}

/// The style presets shipped in `presets/styles.toml`.
pub fn styles() -> Vec<Style> {
    toml::from_str::<Styles>(STYLES)
        .expect("presets/styles.toml is checked by a test")
        .styles
}

impl Style {
    /// The prompt and negative prompt this style makes of the user's.
    pub fn apply(&self, prompt: &str, negative: Option<&str>) -> (String, Option<String>) {
        let p = self.prompt.replace("{prompt}", prompt);
        let n = match (negative.filter(|n| !n.is_empty()), self.negative.is_empty()) {
            (Some(n), false) => Some(format!("{n}, {}", self.negative)),
            (Some(n), true) => Some(n.to_string()),
            (None, false) => Some(self.negative.clone()),
            (None, true) => None,
        };
        (p, n)
    }
}

#[cfg(test)]
mod style_tests {
    #[test]
    fn styles_parse_and_apply() {
        let s = super::styles();
        assert!(s.iter().all(|s| s.prompt.contains("{prompt}")));
        let photo = s.iter().find(|s| s.id == "photo").unwrap();
        let (p, n) = photo.apply("a cat", Some("dogs"));
        assert!(p.starts_with("a cat, professional photograph"));
        assert!(n.unwrap().starts_with("dogs, drawing"));
        let none = s.iter().find(|s| s.id == "none").unwrap();
        assert_eq!(none.apply("a cat", None), ("a cat".to_string(), None));
    }
}
