//! Image captioning as a job (`POST /api/caption`): a BLIP model describes an uploaded
//! image, optionally continuing a prompt ("a photography of"); the caption is the job's
//! output, a `text` asset, and is in its `completed` event. Training captions its dataset
//! with it, and the A1111 `interrogate` endpoint and a node will call it.

pub mod http;

use std::sync::Arc;

use krya_engine::pipelines::caption::{Captioner, MAX_NEW_TOKENS};
use serde::{Deserialize, Serialize};

use super::{Body, Outcome, Output, Prepared, RunContext, Services, Stored, Task, model_source};
use crate::infra::error::{ApiError, internal, invalid};
use crate::persistence::registry::{self, Capability};

pub const KIND: &str = "caption";

/// Decoding is bounded even for a client that asks for more.
pub const MAX_TOKENS: u32 = 75;

/// What `POST /api/caption` takes.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptionRequest {
    /// The uploaded image (`POST /api/assets`).
    pub image: String,
    /// A captioning model (`GET /api/models?capability=caption`); default the first
    /// installed one.
    #[serde(default)]
    pub model: Option<String>,
    /// Words the caption starts with (conditional captioning, e.g. "a photography of").
    #[serde(default)]
    #[schema(max_length = 200)]
    pub prompt: Option<String>,
    /// The most words-pieces to add (1 to 75; default 20).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 75)]
    pub max_tokens: Option<u32>,
}

pub struct CaptionTask;

/// A captioning model, loaded once through the model cache.
fn captioner(
    entry: &registry::ModelEntry,
    services: &Services,
) -> Result<Arc<Captioner>, krya_engine::EngineError> {
    let dir = match krya_engine::model::ModelSource::parse(&entry.source)? {
        krya_engine::model::ModelSource::Folder(d) => d,
        krya_engine::model::ModelSource::Hub { repo, revision } => {
            match krya_engine::model::hub::cached_snapshot(&repo, &revision) {
                Some(d) => d,
                None => krya_engine::model::hub::pull(&repo, &revision, &mut |_| {})?,
            }
        }
        krya_engine::model::ModelSource::Checkpoint(p) => {
            return Err(krya_engine::EngineError::bad_model(
                &p,
                "a captioning model is a folder (config.json, model.safetensors, vocab.txt)",
            ));
        }
    };
    services.cache.get_or_load(&dir.display().to_string(), || {
        let c = Captioner::load(&dir)?;
        let bytes = c.parameter_count * 4;
        Ok((c, bytes))
    })
}

#[async_trait::async_trait]
impl Task for CaptionTask {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn prepare(
        &self,
        services: &Services,
        user_id: &str,
        params: serde_json::Value,
    ) -> Result<Prepared, ApiError> {
        let mut r: CaptionRequest =
            serde_json::from_value(params).map_err(|e| invalid("params", e.to_string()))?;
        if r.prompt.as_ref().is_some_and(|p| p.chars().count() > 200) {
            return Err(invalid("prompt", "must be at most 200 characters"));
        }
        if let Some(n) = r.max_tokens
            && !(1..=MAX_TOKENS).contains(&n)
        {
            return Err(invalid(
                "max_tokens",
                format!("must be from 1 to {MAX_TOKENS}"),
            ));
        }
        services
            .db
            .asset_size(&r.image, user_id)
            .await
            .map_err(internal)?
            .ok_or_else(|| invalid("image", format!("no uploaded file {}", r.image)))?;
        // The model is fixed now, so a retry captions with the same one.
        let entry = model_source(
            services,
            "model",
            r.model.as_deref(),
            Capability::Caption,
            "a captioning model",
        )?;
        r.model = Some(entry.id);
        Ok(Prepared {
            cost: 1,
            inputs: vec![r.image.clone()],
            params: serde_json::to_value(&r).map_err(internal)?,
        })
    }

    async fn run(&self, ctx: RunContext) -> Outcome {
        let r: CaptionRequest = match serde_json::from_value(ctx.job.params.clone()) {
            Ok(r) => r,
            Err(e) => return Outcome::failed("invalid-input", e.to_string()),
        };
        let bytes = match ctx.input(&r.image).await {
            Ok(b) => b,
            Err(o) => return o,
        };
        let entry = match model_source(
            &ctx.services,
            "model",
            r.model.as_deref(),
            Capability::Caption,
            "a captioning model",
        ) {
            Ok(e) => e,
            Err(e) => return Outcome::failed("model-unavailable", e.message),
        };
        let services = ctx.services.clone();
        let cancel = ctx.cancel.clone();
        let progress = ctx.progress();
        let parent = r.image.clone();
        let work =
            tokio::task::spawn_blocking(move || -> Result<Output, krya_engine::EngineError> {
                let image = crate::http::media::decode_limited(&bytes, 8192 * 8192)
                    .map_err(|e| krya_engine::EngineError::InvalidInput(e.message))?
                    .to_rgb8();
                let c = captioner(&entry, &services)?;
                cancel.check()?;
                let text = c.caption(
                    &image,
                    r.prompt.as_deref().filter(|p| !p.trim().is_empty()),
                    r.max_tokens.map_or(MAX_NEW_TOKENS, |n| n as usize),
                )?;
                let _ = progress.send(super::ProgressMsg::step(1, 1, None));
                Ok(Output {
                    kind: "text",
                    mime: "text/plain",
                    ext: "txt",
                    body: Body::Bytes(text.clone().into_bytes()),
                    thumbnail: None,
                    tiles: None,
                    width: None,
                    height: None,
                    duration_ms: None,
                    parent_id: Some(parent),
                    meta: serde_json::json!({"caption": text, "model": entry.id}),
                })
            })
            .await;
        super::engine_outcome(work, "captioning")
    }

    /// The caption is in the event itself (and the output asset holds it as text).
    async fn completed(
        &self,
        _tx: &mut sqlx::AnyConnection,
        _job: &super::Job,
        outputs: &[Stored<'_>],
    ) -> Result<Option<serde_json::Value>, sqlx::Error> {
        let assets: Vec<_> = outputs
            .iter()
            .map(|s| crate::jobs::output_json(s))
            .collect();
        let caption = outputs.first().map(|s| s.output.meta["caption"].clone());
        Ok(Some(
            serde_json::json!({"status": "completed", "outputs": assets, "caption": caption}),
        ))
    }
}
