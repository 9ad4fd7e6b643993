//! The models a server offers: the curated list shipped in the repo
//! (`models/registry.toml`) plus the models added on this machine
//! (`DATA_DIR/models.json`, which `krya models add` writes through `write_local`, so the
//! CLI and the server read one file). API clients name models only by these ids: a request
//! can never make the server read an arbitrary path, and only administrators see where a
//! model's files are.
//!
//! A source is a Hugging Face repo id, a local folder or file, or a URL of one file (the
//! curated upscalers and face models are GitHub release assets, pinned by sha256 and
//! size). A URL's file is downloaded on first use into `DATA_DIR/models/` under the URL's
//! file name ([`local_file`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use krya_engine::EngineError;
use krya_engine::model::{ModelSource, download, hub};
use serde::{Deserialize, Serialize};

const CURATED: &str = include_str!("../../../../models/registry.toml");

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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
    /// What it can do, from its files (or, not downloaded yet, from its curated family or
    /// list).
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    /// A URL source's sha256 (lower-case hex): the download must match it.
    #[serde(default)]
    pub sha256: Option<String>,
    /// A URL source's size in bytes.
    #[serde(default)]
    pub size: Option<u64>,
    /// The weights' licence (SPDX id where there is one).
    #[serde(default)]
    pub license: Option<String>,
    /// realesr-general-x4v3's denoising twin (another entry's id), which its `denoise`
    /// strength blends with.
    #[serde(default)]
    pub denoise_twin: Option<String>,
    /// A face restorer with a fidelity weight (CodeFormer): the enhancer's `fidelity`.
    #[serde(default)]
    pub fidelity: bool,
}

/// A kind of work a model can do; `GET /api/models?capability=` filters by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    Txt2img,
    Img2img,
    Inpaint,
    /// Few-step (distilled) models: fast enough for the live canvas.
    Realtime,
    /// Super-resolution models (ESRGAN, SRVGGNetCompact): the enhancer's.
    Upscale,
    /// Face restorers (GFPGAN): the enhancer's `face_restore`.
    FaceRestore,
    /// Face detectors (RetinaFace): what face restoration finds faces with.
    FaceDetect,
    /// Instruction editing (InstructPix2Pix): the editor's `instruct`.
    Instruct,
    /// Click-to-segment masks (Segment Anything): `POST /api/segment`.
    Segment,
    /// Object removal (LaMa): the editor's `erase`.
    Erase,
    /// Background removal (IS-Net): the editor's `remove_background` and
    /// `replace_background`.
    Matte,
    /// A LoRA (an adapter file for a base family): applied by `loras` in requests and by
    /// `<lora:ID:WEIGHT>` in prompts.
    Lora,
    /// Image captioning (BLIP): `POST /api/caption`.
    Caption,
}

impl Capability {
    pub const ALL: [Capability; 13] = [
        Capability::Txt2img,
        Capability::Img2img,
        Capability::Inpaint,
        Capability::Realtime,
        Capability::Upscale,
        Capability::FaceRestore,
        Capability::FaceDetect,
        Capability::Instruct,
        Capability::Segment,
        Capability::Erase,
        Capability::Matte,
        Capability::Lora,
        Capability::Caption,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Capability::Txt2img => "txt2img",
            Capability::Img2img => "img2img",
            Capability::Inpaint => "inpaint",
            Capability::Realtime => "realtime",
            Capability::Upscale => "upscale",
            Capability::FaceRestore => "face_restore",
            Capability::FaceDetect => "face_detect",
            Capability::Instruct => "instruct",
            Capability::Segment => "segment",
            Capability::Erase => "erase",
            Capability::Matte => "matte",
            Capability::Lora => "lora",
            Capability::Caption => "caption",
        }
    }

    pub fn parse(s: &str) -> Option<Capability> {
        Self::ALL.into_iter().find(|c| c.name() == s)
    }
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

/// Where URL sources' files are kept.
pub fn models_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("models")
}

/// Where a URL source's file is (or will be once downloaded).
pub fn url_file(data_dir: &Path, url: &str) -> Result<PathBuf, EngineError> {
    Ok(models_dir(data_dir).join(download::file_name(url)?))
}

/// The one file an entry's weights are in: a local file as it is, a URL's downloaded first
/// (from under `mirror` when it is not empty; checked against the entry's sha256 and size;
/// `on_progress` gets bytes done and the total, and stops it by returning an error). A
/// folder or repo is not one file.
pub fn local_file(
    data_dir: &Path,
    entry: &ModelEntry,
    mirror: &str,
    on_progress: &mut dyn FnMut(u64, Option<u64>) -> krya_engine::Result<()>,
) -> Result<PathBuf, EngineError> {
    if download::is_url(&entry.source) {
        let dest = url_file(data_dir, &entry.source)?;
        let expect = download::Expect {
            sha256: entry.sha256.as_deref(),
            size: entry.size,
        };
        return download::fetch_url(&entry.source, mirror, &dest, expect, on_progress);
    }
    match ModelSource::parse(&entry.source)? {
        ModelSource::Checkpoint(p) => Ok(p),
        _ => Err(EngineError::InvalidInput(format!(
            "model {} is a folder or a repo, not one weights file",
            entry.id
        ))),
    }
}

/// The one file a LoRA entry's weights are in: a file (a URL's downloaded first), or the
/// adapter file of a folder or a (cached) hub repo.
pub fn lora_file(
    data_dir: &Path,
    entry: &ModelEntry,
    mirror: &str,
) -> Result<PathBuf, EngineError> {
    let in_dir = |dir: PathBuf| {
        krya_engine::pipelines::lora::file_in_folder(&dir).ok_or_else(|| {
            EngineError::InvalidInput(format!(
                "model {}: {} holds no single LoRA .safetensors file",
                entry.id,
                dir.display()
            ))
        })
    };
    if download::is_url(&entry.source) {
        return local_file(data_dir, entry, mirror, &mut |_, _| Ok(()));
    }
    match ModelSource::parse(&entry.source)? {
        ModelSource::Checkpoint(p) => Ok(p),
        ModelSource::Folder(d) => in_dir(d),
        ModelSource::Hub { repo, revision } => match hub::cached_snapshot(&repo, &revision) {
            Some(d) => in_dir(d),
            None => in_dir(hub::pull(&repo, &revision, &mut |_| {})?),
        },
    }
}

/// A downloaded URL source's file as a source `ModelSource::parse` reads, else `source`.
fn resolved(data_dir: &Path, source: &str) -> String {
    match download::is_url(source).then(|| url_file(data_dir, source)) {
        Some(Ok(p)) if p.is_file() => p.display().to_string(),
        _ => source.to_string(),
    }
}

fn installed(source: &str) -> bool {
    match ModelSource::parse(source) {
        Ok(ModelSource::Folder(_)) | Ok(ModelSource::Checkpoint(_)) => true,
        Ok(ModelSource::Hub { repo, revision }) => hub::cached_snapshot(&repo, &revision).is_some(),
        Err(_) => false,
    }
}

/// What a model's own files say about it.
#[derive(Debug, Default, PartialEq)]
struct FromFiles {
    /// The square size it was trained at: the UNet's `sample_size` times the VAE's
    /// downscaling, 2^(blocks - 1).
    resolution: Option<u32>,
    /// A Stable Diffusion pipeline (a diffusers folder with a UNet, or a checkpoint).
    diffusion: bool,
    /// Distilled for few steps: an LCM scheduler or UNet, or a trailing (turbo) schedule.
    fast: bool,
    /// A super-resolution model (one file whose tensors make an upscaler).
    upscale: bool,
    /// A face restorer or detector (one file).
    face: Option<krya_engine::pipelines::face::FaceModel>,
    /// An instruction-editing UNet (InstructPix2Pix: the image's latents beside the noisy
    /// ones).
    instruct: bool,
    /// An inpainting UNet (a mask and the masked image's latents too): it only inpaints.
    inpainting: bool,
    /// A segmentation model (one file).
    segment: bool,
    /// An object-removal model (one file).
    erase: bool,
    /// A background-removal model (one file).
    matte: bool,
    /// A LoRA, and the base family its keys are for when they tell.
    lora: Option<Option<&'static str>>,
    /// The base family a diffusion model's configs say (`sd1`, `sd2`, `sdxl`).
    family: Option<&'static str>,
    /// A captioning model (a BLIP folder).
    caption: bool,
}

fn from_files(source: &str) -> Option<FromFiles> {
    let dir = match ModelSource::parse(source).ok()? {
        ModelSource::Folder(d) => d,
        ModelSource::Hub { repo, revision } => hub::cached_snapshot(&repo, &revision)?,
        ModelSource::Checkpoint(path) => {
            // An upscaler or a face model is told from a checkpoint by its tensors' names
            // and shapes.
            let upscale = krya_engine::pipelines::upscale::detect_file(&path).is_some();
            let face = krya_engine::pipelines::face::detect_file(&path);
            let segment = krya_engine::pipelines::segment::detect_file(&path);
            let erase = krya_engine::pipelines::erase::detect_file(&path);
            let matte = krya_engine::pipelines::matte::detect_file(&path);
            let lora = krya_engine::pipelines::lora::detect_file(&path);
            return Some(FromFiles {
                diffusion: !upscale
                    && face.is_none()
                    && !segment
                    && !erase
                    && !matte
                    && lora.is_none(),
                lora,
                segment,
                erase,
                matte,
                upscale,
                face,
                ..Default::default()
            });
        }
    };
    let read = |p: &str| -> Option<serde_json::Value> {
        krya_engine::model::config_json::from_str(&std::fs::read_to_string(dir.join(p)).ok()?).ok()
    };
    if krya_engine::pipelines::caption::detect_dir(&dir) {
        return Some(FromFiles {
            caption: true,
            ..Default::default()
        });
    }
    if !dir.join("unet/config.json").is_file()
        && let Some(file) = krya_engine::pipelines::lora::file_in_folder(&dir)
    {
        return Some(FromFiles {
            lora: krya_engine::pipelines::lora::detect_file(&file),
            ..Default::default()
        });
    }
    let unet = read("unet/config.json")?;
    let scheduler = read("scheduler/scheduler_config.json").unwrap_or_default();
    let sample = unet["sample_size"].as_u64();
    let vae = read("vae/config.json").unwrap_or_default();
    let blocks = vae["block_out_channels"].as_array().map(|a| a.len() as u32);
    let latent = vae["latent_channels"].as_u64().unwrap_or(4);
    Some(FromFiles {
        instruct: unet["in_channels"].as_u64() == Some(2 * latent),
        inpainting: unet["in_channels"].as_u64() == Some(2 * latent + 1),
        segment: false,
        erase: false,
        matte: false,
        resolution: sample
            .zip(blocks)
            .map(|(s, b)| (s << b.saturating_sub(1)) as u32),
        diffusion: true,
        upscale: false,
        face: None,
        lora: None,
        caption: false,
        // SDXL's UNet takes pooled text and size conditioning; SD 1.x and 2.x are told by
        // the width of the text they attend to (CLIP-L's 768, OpenCLIP-H's 1024).
        family: if unet["addition_embed_type"] == "text_time" {
            Some("sdxl")
        } else {
            match unet["cross_attention_dim"].as_u64() {
                Some(768) => Some("sd1"),
                Some(1024) => Some("sd2"),
                _ => None,
            }
        },
        fast: scheduler["_class_name"] == "LCMScheduler"
            || scheduler["timestep_spacing"] == "trailing"
            || unet["time_cond_proj_dim"].is_u64(),
    })
}

/// The capabilities of a Stable Diffusion model: every one generates from text, from an
/// image and inpaints (an inpainting UNet natively, any other by blending latents); the
/// distilled ones are fast enough for the live canvas.
fn diffusion_capabilities(fast: bool) -> Vec<Capability> {
    let mut c = vec![
        Capability::Txt2img,
        Capability::Img2img,
        Capability::Inpaint,
    ];
    if fast {
        c.push(Capability::Realtime);
    }
    c
}

/// The models named in `DATA_DIR/models.json` (name -> source); none when it is absent.
pub fn read_local(data_dir: &Path) -> Result<BTreeMap<String, String>, String> {
    let path = data_dir.join("models.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| {
            format!(
                "{} is not valid JSON ({e}); fix or delete it",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Replaces `DATA_DIR/models.json` (written aside, then renamed: never half a file).
pub fn write_local(data_dir: &Path, models: &BTreeMap<String, String>) -> Result<(), String> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    let path = data_dir.join("models.json");
    let tmp = path.with_extension("json.part");
    let text = serde_json::to_string_pretty(models).map_err(|e| e.to_string())?;
    std::fs::write(&tmp, text).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Every model, local ones first, then curated, each with its installed state and
/// capabilities. Local entries are `DATA_DIR/models.json` plus `configured` (settings
/// `[models.local]` and `krya serve --model NAME=SOURCE`, which win); a local entry with a
/// curated id replaces the curated one.
pub fn list(
    data_dir: &Path,
    configured: &BTreeMap<String, String>,
) -> Result<Vec<ModelEntry>, String> {
    let mut out = entries(data_dir, configured)?;
    out.iter_mut().for_each(|m| describe(data_dir, m));
    Ok(out)
}

/// The model with this id (only its own files are read).
pub fn find(
    data_dir: &Path,
    configured: &BTreeMap<String, String>,
    id: &str,
) -> Result<Option<ModelEntry>, String> {
    let mut m = entries(data_dir, configured)?
        .into_iter()
        .find(|m| m.id == id);
    m.iter_mut().for_each(|m| describe(data_dir, m));
    Ok(m)
}

/// The model a request that names none gets for `capability`: the first installed one,
/// else the first that is one file to download on first use (a curated upscaler or face
/// model; never a whole image model).
pub fn default_for(
    data_dir: &Path,
    configured: &BTreeMap<String, String>,
    capability: Capability,
) -> Result<Option<ModelEntry>, String> {
    let all = list(data_dir, configured)?;
    let able = |m: &&ModelEntry| m.capabilities.contains(&capability);
    let installed = all.iter().filter(able).find(|m| m.installed);
    let first = installed.or_else(|| {
        all.iter()
            .filter(able)
            .find(|m| download::is_url(&m.source))
    });
    Ok(first.cloned())
}

/// The entries, as named: local ones first, then the curated ones not replaced.
fn entries(
    data_dir: &Path,
    configured: &BTreeMap<String, String>,
) -> Result<Vec<ModelEntry>, String> {
    let mut local = read_local(data_dir)?;
    local.extend(configured.iter().map(|(k, v)| (k.clone(), v.clone())));
    let curated = curated();
    let mut out: Vec<ModelEntry> = local
        .into_iter()
        .map(|(id, source)| {
            let known = curated.iter().find(|c| c.source == source || c.id == id);
            match known {
                // A local name for a curated model keeps what the curated entry knows.
                // (Its pins and list of capabilities only when it names the same file.)
                Some(k) => {
                    let same = k.source == source;
                    ModelEntry {
                        local: true,
                        installed: false,
                        capabilities: k
                            .capabilities
                            .clone()
                            .into_iter()
                            .filter(|_| same)
                            .collect(),
                        sha256: k.sha256.clone().filter(|_| same),
                        size: k.size.filter(|_| same),
                        license: k.license.clone().filter(|_| same),
                        denoise_twin: k.denoise_twin.clone().filter(|_| same),
                        fidelity: k.fidelity && same,
                        id,
                        source,
                        ..k.clone()
                    }
                }
                None => ModelEntry {
                    name: id.clone(),
                    local: true,
                    id,
                    source,
                    ..Default::default()
                },
            }
        })
        .collect();
    for c in curated {
        if !out.iter().any(|m| m.id == c.id) {
            out.push(c);
        }
    }
    Ok(out)
}

/// Fills in what a model's files say: installed state, speed, size and capabilities.
fn describe(data_dir: &Path, m: &mut ModelEntry) {
    // A URL's file, where it has been downloaded.
    let source = resolved(data_dir, &m.source);
    m.installed = installed(&source);
    let files = from_files(&source);
    if let Some(f) = &files {
        m.fast |= f.fast;
        m.resolution = m.resolution.or(f.resolution);
    }
    // Not downloaded yet: a curated entry's family says what it is.
    let diffusion = files.as_ref().map_or(m.family.is_some(), |f| f.diffusion);
    if diffusion {
        m.capabilities = diffusion_capabilities(m.fast);
    }
    if files.as_ref().is_some_and(|f| f.instruct) {
        m.capabilities = vec![Capability::Instruct];
    }
    if files.as_ref().is_some_and(|f| f.inpainting) {
        m.capabilities = vec![Capability::Inpaint];
    }
    if files.as_ref().is_some_and(|f| f.segment) {
        m.capabilities = vec![Capability::Segment];
    }
    if files.as_ref().is_some_and(|f| f.erase) {
        m.capabilities = vec![Capability::Erase];
    }
    if files.as_ref().is_some_and(|f| f.matte) {
        m.capabilities = vec![Capability::Matte];
    }
    if files.as_ref().is_some_and(|f| f.upscale) {
        m.capabilities = vec![Capability::Upscale];
    }
    if files.as_ref().is_some_and(|f| f.caption) {
        m.capabilities = vec![Capability::Caption];
    }
    if let Some(f) = &files {
        if let Some(family) = f.lora {
            m.capabilities = vec![Capability::Lora];
            m.family = m.family.take().or(family.map(String::from));
        } else if f.diffusion {
            m.family = m.family.take().or(f.family.map(String::from));
        }
    }
    use krya_engine::pipelines::face::FaceModel;
    match files.as_ref().and_then(|f| f.face) {
        Some(FaceModel::Restorer { fidelity }) => {
            m.capabilities = vec![Capability::FaceRestore];
            m.fidelity = fidelity;
        }
        Some(FaceModel::Detector) => m.capabilities = vec![Capability::FaceDetect],
        None => {}
    }
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
            if download::is_url(&m.source) {
                // One file: an https release asset, pinned where a sum is published, and
                // saying what it can do before it is downloaded.
                assert!(m.source.starts_with("https://"), "{}", m.id);
                assert!(download::file_name(&m.source).is_ok(), "{}", m.id);
                assert!(
                    m.sha256.as_ref().is_none_or(|h| h.len() == 64
                        && h.chars()
                            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())),
                    "{}",
                    m.id
                );
                assert!(
                    !m.capabilities.is_empty() && m.license.is_some(),
                    "{}",
                    m.id
                );
            } else {
                assert!(
                    matches!(ModelSource::parse(&m.source), Ok(ModelSource::Hub { .. })),
                    "{}",
                    m.id
                );
            }
            if let Some(twin) = &m.denoise_twin {
                assert!(c.iter().any(|t| &t.id == twin), "{}", m.id);
            }
        }
        let pinned = c.iter().filter(|m| m.sha256.is_some()).count();
        assert!(pinned >= 8, "{pinned}");
        // Not downloaded: offered by what the list says.
        let dir = tempfile::tempdir().unwrap();
        let all = list(dir.path(), &BTreeMap::new()).unwrap();
        let x4 = all.iter().find(|m| m.id == "realesrgan-x4plus").unwrap();
        assert_eq!(
            (x4.installed, &x4.capabilities[..]),
            (false, &[Capability::Upscale][..])
        );
        assert_eq!(
            url_file(dir.path(), &x4.source).unwrap(),
            dir.path().join("models/RealESRGAN_x4plus.pth")
        );
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
        // An empty folder is no model: it can do nothing.
        assert!(
            all.iter()
                .find(|m| m.id == "tiny")
                .unwrap()
                .capabilities
                .is_empty()
        );
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

    fn golden(name: &str) -> String {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../krya-engine/tests/golden/").to_string() + name
    }

    #[test]
    fn capabilities_come_from_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let models = BTreeMap::from([
            ("turbo".to_string(), golden("turbo")),
            ("lcm".to_string(), golden("lcm")),
            ("sd1".to_string(), golden("sd1")),
            ("ckpt".to_string(), golden("sd1_checkpoint.safetensors")),
        ]);
        write_local(dir.path(), &models).unwrap();
        assert_eq!(read_local(dir.path()).unwrap(), models);
        let all = list(dir.path(), &BTreeMap::new()).unwrap();
        let caps = |id: &str| {
            let m = all.iter().find(|m| m.id == id).unwrap();
            m.capabilities.iter().map(|c| c.name()).collect::<Vec<_>>()
        };
        let full = ["txt2img", "img2img", "inpaint", "realtime"];
        assert_eq!(caps("turbo"), full, "a trailing (turbo) schedule");
        assert_eq!(caps("lcm"), full, "an LCM scheduler");
        assert_eq!(caps("sd1"), full[..3]);
        assert_eq!(caps("ckpt"), full[..3]);
        // Curated and not downloaded: from its family and flags.
        assert_eq!(caps("sd-turbo"), full);
        let sd1 = all.iter().find(|m| m.id == "sd1").unwrap();
        assert_eq!(sd1.resolution, Some(32), "sample_size 8 times 2^2");
        assert!(!sd1.fast);
    }
}

const STYLES: &str = include_str!("../../../../presets/styles.toml");

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
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
