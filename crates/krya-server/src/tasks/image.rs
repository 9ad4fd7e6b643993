//! Image generation (txt2img, img2img, inpaint, batch) as a task: the engine run for one
//! attempt, and the `generations` row and its `images` kept in step with the job. Requests
//! come through `POST /api/generate/image` (`generations/`), which stores the generation
//! and enqueues its job.

use std::sync::Arc;

use krya_engine::model::cache::{ModelCache, model_bytes};
use krya_engine::model::{ModelSource, hub};
use krya_engine::pipelines::stable_diffusion::vae_tiny::AutoencoderTiny;
use krya_engine::{CancelToken, EngineError, GenerateRequest, SchedulerKind, device, model};
use tokio::sync::mpsc;

use super::{Job, Outcome, Output, ProgressMsg, RunContext, Services, Start, Stored, Task};
use crate::generations::Generation;
use crate::infra::ids::random_id;
use crate::persistence::db::Db;
use crate::{http::media, persistence::registry};

/// Inputs were checked against the upload limit when uploaded; this bounds decoding again.
const MAX_INPUT_PIXELS: u64 = 8192 * 8192;

pub const KIND: &str = "image";

pub struct ImageTask;

#[async_trait::async_trait]
impl Task for ImageTask {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn subject(&self) -> &'static str {
        "generation"
    }

    fn blob_prefix(&self, job: &Job) -> String {
        format!("generations/{}/", job.ref_id)
    }

    async fn started(&self, s: &Services, job: &Job) -> Result<Start, sqlx::Error> {
        let Some(g) = s.db.generation(&job.ref_id).await? else {
            // Deleted meanwhile.
            return Ok(Start::Skip("cancelled"));
        };
        if !g.is_active() {
            return Ok(Start::Skip(if g.status == "completed" {
                "completed"
            } else {
                "cancelled"
            }));
        }
        sqlx::query("UPDATE generations SET status = 'processing', started_at = COALESCE(started_at, $1) WHERE id = $2 AND status IN ('pending', 'processing')")
            .bind(crate::http::auth::now())
            .bind(&g.id)
            .execute(&s.db.pool)
            .await?;
        Ok(Start::Run)
    }

    async fn run(&self, ctx: RunContext) -> Outcome {
        let g = match ctx.services.db.generation(&ctx.job.ref_id).await {
            Ok(Some(g)) => g,
            Ok(None) => return Outcome::Cancelled,
            Err(e) => return Outcome::Retry(e.to_string()),
        };
        let mut inputs = Vec::new();
        for id in [&g.params.init_image, &g.params.mask].into_iter().flatten() {
            match ctx.input(id).await {
                Ok(bytes) => inputs.push(bytes),
                Err(outcome) => return outcome,
            }
        }
        let (data_dir, local) = (
            ctx.services.data_dir.clone(),
            ctx.services.local_models.clone(),
        );
        let model_id = g.model.clone();
        let entry =
            tokio::task::spawn_blocking(move || registry::find(&data_dir, &local, &model_id)).await;
        let entry = match entry {
            Ok(Ok(Some(e))) => e,
            Ok(Ok(None)) => {
                return Outcome::failed(
                    "model-unavailable",
                    format!("model {:?} is no longer offered here", g.model),
                );
            }
            Ok(Err(e)) => return Outcome::Retry(e),
            Err(e) => return Outcome::Retry(e.to_string()),
        };
        let init_id = g.params.init_image.clone();
        let (cache, cancel, progress) = (
            ctx.services.cache.clone(),
            ctx.cancel.clone(),
            ctx.progress(),
        );
        let ids = crate::tasks::lora::ids_in(&g.prompt, &g.params.loras);
        let own_loras = match crate::tasks::lora::own_entries(
            &ctx.services,
            &ctx.job.user_id,
            Some(&ids),
        )
        .await
        {
            Ok(v) => v,
            Err(e) => return Outcome::Retry(e),
        };
        let models = Models {
            data_dir: ctx.services.data_dir.clone(),
            local: ctx.services.local_models.clone(),
            mirror: ctx.services.model_mirror.clone(),
            own_loras,
        };
        let result = tokio::task::spawn_blocking(move || {
            run_engine(&g, &entry, inputs, &cache, &models, &cancel, progress)
        })
        .await;
        match result {
            Ok(Ok(mut outputs)) => {
                for o in &mut outputs {
                    o.parent_id = init_id.clone();
                }
                Outcome::Done(outputs)
            }
            Ok(Err(EngineError::Cancelled)) => Outcome::Cancelled,
            Ok(Err(e @ (EngineError::Tensor(_) | EngineError::Io { .. }))) => {
                Outcome::Retry(e.to_string())
            }
            Ok(Err(e @ EngineError::Download(_))) => {
                Outcome::failed("model-unavailable", e.to_string())
            }
            Ok(Err(e)) => Outcome::failed(
                if e.code() == "invalid-input" {
                    "invalid-input"
                } else {
                    "model-unavailable"
                },
                e.to_string(),
            ),
            Err(e) => Outcome::Retry(format!("the engine stopped: {e}")),
        }
    }

    async fn progressed(&self, db: &Db, job: &Job, step: usize, total: usize) {
        let _ = sqlx::query("UPDATE generations SET progress_step = $1, progress_total = $2 WHERE id = $3 AND status = 'processing'")
            .bind(step as i64)
            .bind(total as i64)
            .bind(&job.ref_id)
            .execute(&db.pool)
            .await;
    }

    async fn completed(
        &self,
        tx: &mut sqlx::AnyConnection,
        job: &Job,
        outputs: &[Stored<'_>],
    ) -> Result<Option<serde_json::Value>, sqlx::Error> {
        let (w, h) = outputs
            .first()
            .map(|s| {
                (
                    s.output.width.unwrap_or(0) as i64,
                    s.output.height.unwrap_or(0) as i64,
                )
            })
            .unwrap_or((0, 0));
        let r = sqlx::query("UPDATE generations SET status = 'completed', width = $1, height = $2, progress_step = progress_total, completed_at = $3 WHERE id = $4 AND status IN ('pending', 'processing')")
            .bind(w)
            .bind(h)
            .bind(crate::http::auth::now())
            .bind(&job.ref_id)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() != 1 {
            return Ok(None);
        }
        let mut images = Vec::new();
        for (i, s) in outputs.iter().enumerate() {
            let id = random_id();
            let seed = s.output.meta["seed"].as_i64().unwrap_or(0);
            let (w, h) = (
                s.output.width.unwrap_or(0) as i64,
                s.output.height.unwrap_or(0) as i64,
            );
            images.push(crate::generations::image_json(&id, w, h, seed));
            sqlx::query("INSERT INTO images (id, generation_id, idx, seed, width, height, png_key, thumb_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
                .bind(&id)
                .bind(&job.ref_id)
                .bind(i as i64)
                .bind(seed)
                .bind(w)
                .bind(h)
                .bind(&s.key)
                .bind(s.thumb_key.as_deref().unwrap_or(&s.key))
                .execute(&mut *tx)
                .await?;
        }
        Ok(Some(
            serde_json::json!({"status": "completed", "images": images}),
        ))
    }

    async fn failed(
        &self,
        tx: &mut sqlx::AnyConnection,
        job: &Job,
        code: &str,
        message: &str,
    ) -> Result<bool, sqlx::Error> {
        let r = sqlx::query("UPDATE generations SET status = 'failed', error_code = $1, error_message = $2, completed_at = $3 WHERE id = $4 AND status IN ('pending', 'processing')")
            .bind(code)
            .bind(message)
            .bind(crate::http::auth::now())
            .bind(&job.ref_id)
            .execute(&mut *tx)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn requeued(&self, tx: &mut sqlx::AnyConnection, job: &Job) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE generations SET status = 'pending', progress_step = 0 WHERE id = $1 AND status = 'processing'")
            .bind(&job.ref_id)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    async fn deleted(&self, tx: &mut sqlx::AnyConnection, job: &Job) -> Result<(), sqlx::Error> {
        for sql in [
            "DELETE FROM images WHERE generation_id = $1",
            "DELETE FROM generations WHERE id = $1",
        ] {
            sqlx::query(sql).bind(&job.ref_id).execute(&mut *tx).await?;
        }
        Ok(())
    }

    async fn cancelled(
        &self,
        tx: &mut sqlx::AnyConnection,
        job: &Job,
    ) -> Result<bool, sqlx::Error> {
        let r = sqlx::query("UPDATE generations SET status = 'cancelled', completed_at = $1 WHERE id = $2 AND status IN ('pending', 'processing')")
            .bind(crate::http::auth::now())
            .bind(&job.ref_id)
            .execute(&mut *tx)
            .await?;
        Ok(r.rows_affected() == 1)
    }
}

/// The model an entry names, from the cache or loaded (a hub model is downloaded first).
pub(crate) fn load_model(
    entry: &registry::ModelEntry,
    cache: &ModelCache,
) -> Result<Arc<krya_engine::StableDiffusion>, EngineError> {
    load_model_on(entry, cache, device::best_device()?, &entry.source)
}

/// The model on the CPU in f32, as training runs it: on a CPU build the very copy
/// [`load_model`] gives, beside a GPU build's a copy of its own.
pub(crate) fn load_model_cpu(
    entry: &registry::ModelEntry,
    cache: &ModelCache,
) -> Result<Arc<krya_engine::StableDiffusion>, EngineError> {
    let key = if device::best_device()?.is_cpu() {
        entry.source.clone()
    } else {
        format!("{}#cpu", entry.source)
    };
    load_model_on(entry, cache, device::Device::Cpu, &key)
}

fn load_model_on(
    entry: &registry::ModelEntry,
    cache: &ModelCache,
    dev: device::Device,
    key: &str,
) -> Result<Arc<krya_engine::StableDiffusion>, EngineError> {
    cache.get_or_load(key, || {
        let mut source = ModelSource::parse(&entry.source)?;
        if let ModelSource::Hub { repo, revision } = &source
            && hub::cached_snapshot(repo, revision).is_none()
        {
            source = ModelSource::Folder(hub::pull(repo, revision, &mut |_| {})?);
        }
        let mut m = model::load(&source, &dev, device::default_dtype(&dev))?;
        m.name = entry.id.clone();
        // Step previews through the model's tiny autoencoder when one is here (its own
        // `taesd/`, or TAESD in the HF cache); never downloaded just for previews.
        let tiny = model::tiny_vae_source(&source, &m);
        let here = match &tiny {
            ModelSource::Folder(_) => true,
            ModelSource::Hub { repo, revision } => hub::cached_snapshot(repo, revision).is_some(),
            ModelSource::Checkpoint(_) => false,
        };
        if here && let Ok(t) = tiny_vae(cache, &tiny) {
            m.preview_vae = Some(t);
        }
        let bytes = model_bytes(&m);
        Ok((m, bytes))
    })
}

/// A tiny autoencoder (TAESD) through the model cache: one copy, shared by the models that
/// preview through it and the live canvas's sessions. A hub one is downloaded when it is
/// not cached yet (`model::load_tiny_vae`).
pub(crate) fn tiny_vae(
    cache: &ModelCache,
    source: &ModelSource,
) -> Result<Arc<AutoencoderTiny>, EngineError> {
    cache.get_or_load(&format!("{source:?}"), || {
        let dev = device::best_device()?;
        let dtype = device::default_dtype(&dev);
        let t = model::load_tiny_vae(source, &dev, dtype)?;
        let bytes = t.parameter_count * dtype.size_in_bytes() as u64;
        Ok((t, bytes))
    })
}

/// Where the models a run names are found (LoRAs are looked up by id when it runs).
pub(crate) struct Models {
    pub data_dir: std::path::PathBuf,
    pub local: std::collections::BTreeMap<String, String>,
    pub mirror: String,
    /// The user's own LoRAs (`lora::own_entries`).
    pub own_loras: Vec<registry::ModelEntry>,
}

fn run_engine(
    g: &Generation,
    entry: &registry::ModelEntry,
    inputs: Vec<Vec<u8>>,
    cache: &ModelCache,
    models: &Models,
    cancel: &CancelToken,
    progress: mpsc::UnboundedSender<ProgressMsg>,
) -> Result<Vec<Output>, EngineError> {
    let decode = |b: &[u8]| {
        media::decode_limited(b, MAX_INPUT_PIXELS).map_err(|e| EngineError::InvalidInput(e.message))
    };
    let mut inputs = inputs.iter();
    let init_image = match &g.params.init_image {
        Some(_) => Some(decode(inputs.next().unwrap())?.to_rgb8()),
        None => None,
    };
    let mask = match &g.params.mask {
        Some(_) => Some(decode(inputs.next().unwrap())?.to_luma8()),
        None => None,
    };
    let (prompt, loras) = crate::tasks::lora::split(&g.prompt, &g.params.loras)?;
    let loras: Vec<_> = loras.into_iter().map(|(l, _)| l).collect();
    let model = crate::tasks::lora::with_loras(
        load_model(entry, cache)?,
        entry,
        &loras,
        &models.own_loras,
        cache,
        &models.data_dir,
        &models.local,
        &models.mirror,
    )?;
    cancel.check()?;
    let (prompt, negative) = match g
        .params
        .style
        .as_deref()
        .and_then(|s| registry::styles().into_iter().find(|x| x.id == s))
    {
        Some(style) => style.apply(&prompt, g.negative_prompt.as_deref()),
        None => (prompt, g.negative_prompt.clone()),
    };
    let req = GenerateRequest {
        prompt,
        negative_prompt: negative,
        width: (g.width > 0).then_some(g.width as usize),
        height: (g.height > 0).then_some(g.height as usize),
        steps: g.params.steps.map(|s| s as usize),
        guidance: g.params.cfg_scale,
        scheduler: g
            .params
            .scheduler
            .as_deref()
            .map(SchedulerKind::parse)
            .transpose()?,
        seed: g.seed as u64,
        batch: g.batch_size as usize,
        init_image,
        strength: g.params.strength.unwrap_or(0.75),
        mask,
        init_noise: None,
        clip_skip: g.params.clip_skip as usize,
        preview_every: 1,
        image_guidance: None,
    };
    let out = model.generate(&req, &mut crate::tasks::step_reporter(&progress), cancel)?;
    let recorded = GenerateRequest {
        prompt: crate::tasks::lora::recorded_prompt(&req.prompt, &loras),
        ..req.clone()
    };
    let mut outputs = Vec::new();
    for (i, img) in out.images.iter().enumerate() {
        let params = out.parameters_text(&recorded, &entry.id, i);
        let png = krya_engine::image_io::png_bytes(img, &params)?;
        let thumb = media::thumbnail_webp(img, 384)
            .map_err(|e| EngineError::InvalidInput(format!("thumbnail: {e}")))?;
        outputs.push(Output {
            kind: "image",
            mime: "image/png",
            ext: "png",
            body: crate::tasks::Body::Bytes(png),
            thumbnail: Some(thumb),
            tiles: None,
            width: Some(img.width()),
            height: Some(img.height()),
            duration_ms: None,
            parent_id: None,
            meta: serde_json::json!({"seed": out.seeds[i]}),
        });
    }
    Ok(outputs)
}
