//! LoRAs in requests: `loras: [{id, weight}]` and A1111's `<lora:ID:WEIGHT>` in prompts,
//! checked when a request comes in, and the base model with them merged when it runs.
//!
//! A LoRA set's patched model is cached beside its base (`ModelCache`, keyed by the base
//! and every file and weight): switching between sets never reloads the base, and a set
//! used again is not merged again. The base itself is never changed (`lora::apply` shares
//! its untouched tensors), so a request without LoRAs gets exactly the base's images.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use krya_engine::model::cache::ModelCache;
use krya_engine::pipelines::lora::{self, LoraFile, Strength};
use krya_engine::{EngineError, StableDiffusion};
use serde::{Deserialize, Serialize};

use crate::infra::error::{ApiError, invalid};
use crate::persistence::registry::{self, Capability, ModelEntry};

/// At most this many LoRAs in one request.
pub const MAX_LORAS: usize = 8;

/// One LoRA of a request.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoraRef {
    /// A model id of capability `lora` (`GET /api/models?capability=lora`).
    pub id: String,
    /// How strongly it applies: 1 as trained, 0 not at all, negative away from it.
    #[serde(default = "one")]
    #[schema(minimum = -5, maximum = 5)]
    pub weight: f32,
    /// The text encoder's weight where it differs from the UNet's (A1111's
    /// `<lora:ID:TE:UNET>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = -5, maximum = 5)]
    pub text_weight: Option<f32>,
}

fn one() -> f32 {
    1.0
}

impl LoraRef {
    fn strength(&self) -> Strength {
        Strength {
            unet: self.weight,
            text: self.text_weight.unwrap_or(self.weight),
        }
    }
}

/// What a request runs with: the prompt the engine encodes (without its LoRA tags) and its
/// LoRAs, `loras` first and then the tags (the field each came from, for errors).
pub fn split(
    prompt: &str,
    loras: &[LoraRef],
) -> Result<(String, Vec<(LoraRef, &'static str)>), EngineError> {
    let (prompt, tags) = lora::prompt::extract(prompt)?;
    let mut out: Vec<(LoraRef, &'static str)> =
        loras.iter().map(|l| (l.clone(), "loras")).collect();
    out.extend(tags.into_iter().map(|t| {
        (
            LoraRef {
                id: t.name,
                weight: t.strength.unet,
                text_weight: (t.strength.text != t.strength.unet).then_some(t.strength.text),
            },
            "prompt",
        )
    }));
    Ok((prompt, out))
}

/// The prompt to record with an image: the engine's, with every LoRA as a tag, so that
/// pasting it into A1111 (or back into Krya) applies the same LoRAs.
pub fn recorded_prompt(prompt: &str, loras: &[LoraRef]) -> String {
    let mut p = prompt.to_string();
    for l in loras {
        match l.text_weight {
            Some(t) => p.push_str(&format!(" <lora:{}:{t}:{}>", l.id, l.weight)),
            None => p.push_str(&format!(" <lora:{}:{}>", l.id, l.weight)),
        }
    }
    p
}

/// Checks a request's LoRAs (`loras`, then the prompt's `<lora:ID:WEIGHT>` tags): each an
/// offered model of capability `lora`, for the base's family where both say theirs.
pub fn check(
    models: &[ModelEntry],
    base: &ModelEntry,
    prompt: &str,
    loras: &[LoraRef],
) -> Result<(), ApiError> {
    let (_, out) = split(prompt, loras).map_err(|e| invalid("prompt", e.to_string()))?;
    if out.len() > MAX_LORAS {
        return Err(invalid(
            "loras",
            format!("at most {MAX_LORAS} LoRAs per request (prompt tags included)"),
        ));
    }
    for (l, field) in &out {
        let weights = [Some(l.weight), l.text_weight];
        if weights
            .iter()
            .flatten()
            .any(|w| !(w.is_finite() && (-5.0..=5.0).contains(w)))
        {
            return Err(invalid(
                field,
                format!("LoRA {:?}: weights must be from -5 to 5", l.id),
            ));
        }
        let entry = models.iter().find(|m| m.id == l.id).ok_or_else(|| {
            invalid(
                field,
                format!("no LoRA {:?} (see GET /api/models?capability=lora)", l.id),
            )
        })?;
        if !entry.capabilities.contains(&Capability::Lora) {
            return Err(invalid(field, format!("{:?} is not a LoRA", l.id)));
        }
        if let (Some(a), Some(b)) = (&entry.family, &base.family)
            && a != b
        {
            return Err(invalid(
                field,
                format!("LoRA {:?} is for {a} models; {} is {b}", l.id, base.id),
            ));
        }
    }
    Ok(())
}

/// The LoRA ids a request names (`loras` and the prompt's tags; none when the prompt's
/// tags do not parse, which `check` reports).
pub fn ids_in(prompt: &str, loras: &[LoraRef]) -> Vec<String> {
    split(prompt, loras)
        .map(|(_, l)| l.into_iter().map(|(l, _)| l.id).collect())
        .unwrap_or_default()
}

/// The LoRAs `user_id` trained (`tasks::train`), as entries of capability `lora` named by
/// their asset ids: all of them, or (`wanted`) those a request names. Each file is copied
/// once out of blob storage to `DATA_DIR/loras/USER/` (assets never change, so a copy stays
/// good) for the engine to read; listing all of them also removes the copies of LoRAs
/// since deleted. One whose file is missing is left out (a warning), not an error.
pub(crate) async fn own_entries(
    services: &super::Services,
    user_id: &str,
    wanted: Option<&[String]>,
) -> Result<Vec<ModelEntry>, String> {
    if wanted.is_some_and(|w| w.is_empty()) {
        return Ok(Vec::new());
    }
    let rows = super::train::user_loras(&services.db, user_id)
        .await
        .map_err(|e| e.to_string())?;
    let dir = services.data_dir.join("loras").join(user_id);
    if wanted.is_none() {
        // Copies of LoRAs no longer listed (deleted, their job deleted).
        if let Ok(mut rd) = tokio::fs::read_dir(&dir).await {
            while let Ok(Some(e)) = rd.next_entry().await {
                let name = e.file_name().to_string_lossy().into_owned();
                let id = name.split('.').next().unwrap_or_default();
                if !rows.iter().any(|r| r.0 == id) {
                    let _ = tokio::fs::remove_file(e.path()).await;
                }
            }
        }
    }
    let mut out = Vec::with_capacity(rows.len());
    for (id, name, family, key) in rows {
        if wanted.is_some_and(|w| !w.contains(&id)) {
            continue;
        }
        let path = dir.join(format!("{id}.safetensors"));
        if !path.is_file() {
            let bytes = match services.blobs.get(&key).await.map_err(|e| e.to_string())? {
                Some(b) => b,
                None => {
                    tracing::warn!(lora = %id, %key, "a trained LoRA's file is missing");
                    continue;
                }
            };
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(|e| e.to_string())?;
            let part = dir.join(format!("{id}.part-{}", crate::infra::ids::random_id()));
            tokio::fs::write(&part, bytes)
                .await
                .map_err(|e| e.to_string())?;
            tokio::fs::rename(&part, &path)
                .await
                .map_err(|e| e.to_string())?;
        }
        out.push(ModelEntry {
            id,
            name,
            source: path.display().to_string(),
            family,
            installed: true,
            capabilities: vec![Capability::Lora],
            ..Default::default()
        });
    }
    Ok(out)
}

/// `base` with `loras` merged, through the model cache; `base` itself without any. A LoRA
/// is one of the user's own (`own`, from [`own_entries`]) or one the server offers.
#[allow(clippy::too_many_arguments)]
pub(crate) fn with_loras(
    base: Arc<StableDiffusion>,
    base_entry: &ModelEntry,
    loras: &[LoraRef],
    own: &[ModelEntry],
    cache: &ModelCache,
    data_dir: &Path,
    local: &BTreeMap<String, String>,
    mirror: &str,
) -> Result<Arc<StableDiffusion>, EngineError> {
    if loras.is_empty() {
        return Ok(base);
    }
    let mut files = Vec::with_capacity(loras.len());
    let mut key = format!("{}+lora", base_entry.source);
    for l in loras {
        let entry = match own.iter().find(|e| e.id == l.id) {
            Some(e) => Some(e.clone()),
            None => registry::find(data_dir, local, &l.id).map_err(EngineError::InvalidInput)?,
        };
        let entry = entry
            .filter(|e| e.capabilities.contains(&Capability::Lora))
            .ok_or_else(|| {
                EngineError::InvalidInput(format!("LoRA {:?} is no longer offered here", l.id))
            })?;
        let path = registry::lora_file(data_dir, &entry, mirror)?;
        let file = cache.get_or_load(&path.display().to_string(), || {
            let f = LoraFile::load(&path)?;
            let bytes = f.bytes();
            Ok((f, bytes))
        })?;
        let s = l.strength();
        key.push_str(&format!("|{}={}:{}", path.display(), s.unet, s.text));
        files.push((file, s));
    }
    cache.get_or_load(&key, || {
        let list: Vec<(&LoraFile, Strength)> =
            files.iter().map(|(f, s)| (f.as_ref(), *s)).collect();
        let (mut m, bytes) = lora::apply(&base, &list)?;
        m.name = base.name.clone();
        Ok((m, bytes))
    })
}
