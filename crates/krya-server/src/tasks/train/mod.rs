//! The `train` kind (seed §2.7, `POST /api/train/model`): a LoRA trained natively on the
//! caller's uploaded images (`krya_engine::pipelines::train`), in the runner's exclusive
//! slot so that it never holds up the engine's queue.
//!
//! What outlives an attempt is kept under the job's state prefix (`tasks::state_prefix`):
//! the last checkpoint (the LoRA, AdamW's moments and the losses so far), the loss log and
//! the sample images. A worker killed mid-run leaves its last checkpoint there and the next
//! attempt goes on from it; a cancelled training is resumed by a new job that names it
//! (`resume_from`) and starts from its checkpoint. Every step's draws come from the seed and
//! the step number, so a resumed run ends with the weights of one never stopped.
//!
//! The result is a kohya-format `.safetensors` (A1111 and ComfyUI load it) stored as a
//! `lora` asset of the caller's, usable at once by its asset id wherever LoRAs are named
//! (`tasks::lora`); the images and captions it learned from are a `dataset` asset beside it.

pub mod http;

use std::time::Instant;

use krya_engine::pipelines::train::export::Metadata;
use krya_engine::pipelines::train::lora::LoraConfig;
use krya_engine::pipelines::train::recipe::{Prediction, Recipe};
use krya_engine::pipelines::train::run::{self as engine, Checkpoint, Example, Plan};
use krya_engine::{CancelToken, EngineError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Body, Outcome, Output, Prepared, RunContext, Services, Slot, Task, job_seed};
use crate::infra::error::{ApiError, internal, invalid};
use crate::persistence::blobs::Blobs;
use crate::persistence::registry::{self, Capability};

pub const KIND: &str = "train";

/// At most this many images in one training.
pub const MAX_IMAGES: usize = 50;
/// Images are decoded up to this many pixels.
const MAX_INPUT_PIXELS: u64 = 8192 * 8192;
const MAX_STEPS: u32 = 20_000;

/// What is trained: each preset sets the rank, the steps, the learning rate, caption
/// dropout, whether the loss is masked to the subject and whether the text encoder trains
/// too (kohya and ai-toolkit's usual values for SD 1.5; the research note's suggestion:
/// a person or product with the text encoder, a style without).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// A person or a character: their face and build, not their backgrounds (masked loss
    /// where a background-removal model is installed).
    Person,
    /// A product: its shape, colours and labels.
    Product,
    /// A look: palette, medium, brushwork.
    #[default]
    Style,
    /// A thing or creature that is not a person.
    Object,
}

/// A preset's settings.
struct Defaults {
    rank: u32,
    steps: u32,
    learning_rate: f64,
    caption_dropout: f64,
    masked: bool,
    text_encoder: bool,
}

impl Preset {
    fn defaults(self) -> Defaults {
        let (rank, steps, learning_rate, caption_dropout, masked, text_encoder) = match self {
            Preset::Person => (16, 1200, 1e-4, 0.05, true, true),
            Preset::Product => (16, 1000, 1e-4, 0.05, false, true),
            Preset::Style => (32, 1500, 1e-4, 0.1, false, false),
            Preset::Object => (8, 800, 1e-4, 0.05, false, false),
        };
        Defaults {
            rank,
            steps,
            learning_rate,
            caption_dropout,
            masked,
            text_encoder,
        }
    }
}

/// One training image.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainImage {
    /// An uploaded image (`POST /api/assets`).
    pub id: String,
    /// What it shows (`POST /api/caption` writes one); the trigger word goes before it.
    #[serde(default)]
    pub caption: String,
    /// An uploaded mask, white where the subject is: the loss counts only there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<String>,
}

/// A training request. Left out, the settings come from the preset and the base model.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainRequest {
    /// The LoRA's name in the library.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub preset: Preset,
    /// A word that calls up what was trained (`zkx person`), put before every caption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// The base model (SD 1.x, 2.x or XL; `GET /api/models?capability=txt2img`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// 1 to 50 images, each with its caption.
    #[serde(default)]
    pub images: Vec<TrainImage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 20000)]
    pub steps: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 128)]
    pub rank: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    /// The side of the square whose area the images are trained at (the model's own by
    /// default); other aspect ratios go to buckets of that area.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 32, maximum = 2048)]
    pub resolution: Option<u32>,
    /// Counts the loss only on the subject: each image's `mask`, or one made by the
    /// background-removal model (`matte_model`). Person trainings do by default where
    /// such a model is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masked_loss: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matte_model: Option<String>,
    /// Trains a LoRA on the text encoder too (at half the learning rate), so the trigger
    /// word's meaning is learned as well: person and product trainings do by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_text_encoder: Option<bool>,
    /// Trains the resnets' 3×3 convolutions too (LoCon, kohya's `conv_dim`): more of a
    /// style's texture is learned, in a larger file. Off by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_conv_layers: Option<bool>,
    /// The prompt of the sample images (the trigger word goes before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_prompt: Option<String>,
    /// A sample image every this many steps (0: none; default a fifth of the steps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_every: Option<u32>,
    /// A checkpoint every this many steps (default a tenth of the steps): what a resumed
    /// training goes on from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_every: Option<u32>,
    /// -1 or left out: random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// A cancelled or failed training of the caller's to go on from its last checkpoint,
    /// with its settings (the other fields are then left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_from: Option<String>,
    // Resolved at submission: what the run uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(read_only)]
    pub caption_dropout: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(read_only)]
    pub family: Option<String>,
}

/// The loss log of a training, kept beside its checkpoint and read by
/// `GET /api/train/model/:id`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainLog {
    /// Each step's loss, from step 1.
    pub losses: Vec<f32>,
    /// The steps that have a sample image.
    pub samples: Vec<usize>,
    /// The steps attempts went on from (a checkpoint after a crash or a cancel).
    pub resumed_at: Vec<usize>,
    /// The step of the last checkpoint.
    pub checkpoint_step: Option<usize>,
    /// This attempt's pace.
    pub seconds_per_step: Option<f64>,
    /// The loss on fixed draws before and after training (what it learned, without the
    /// noise of each step's own draws).
    pub eval_loss: Option<(f32, f32)>,
}

const CHECKPOINT: &str = "checkpoint.safetensors";
const LOG: &str = "log.json";

/// A training's state prefix (`jobs/{id}/state/`).
pub(crate) fn state_dir(job_id: &str) -> String {
    super::job_state_prefix(job_id)
}

pub(crate) fn sample_key(job_id: &str, step: usize) -> String {
    format!("{}samples/{step:06}.png", state_dir(job_id))
}

/// A training's loss log (empty before its first step).
pub(crate) async fn read_log(blobs: &Blobs, job_id: &str) -> Result<TrainLog, String> {
    match blobs
        .get(&format!("{}{LOG}", state_dir(job_id)))
        .await
        .map_err(|e| e.to_string())?
    {
        Some(b) => serde_json::from_slice(&b).map_err(|e| e.to_string()),
        None => Ok(TrainLog::default()),
    }
}

pub struct TrainTask;

fn cost(steps: u32) -> i64 {
    // A credit per started 100 steps.
    (steps as i64 + 99) / 100
}

impl TrainRequest {
    /// Checks a new training and fills in what the preset and the model decide.
    fn resolve(mut self, services: &Services) -> Result<Self, ApiError> {
        let name = self.name.trim().to_string();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(invalid("name", "must be 1 to 100 characters"));
        }
        self.name = name;
        if let Some(t) = &self.trigger {
            let t = t.trim();
            if t.chars().count() > 50 || t.contains(',') || t.contains('<') {
                return Err(invalid(
                    "trigger",
                    "must be at most 50 characters, without commas or '<'",
                ));
            }
            self.trigger = (!t.is_empty()).then(|| t.to_string());
        }
        if self.images.is_empty() || self.images.len() > MAX_IMAGES {
            return Err(invalid(
                "images",
                format!("must hold 1 to {MAX_IMAGES} images"),
            ));
        }
        for (i, im) in self.images.iter().enumerate() {
            if im.caption.chars().count() > 1000 {
                return Err(invalid(
                    &format!("images[{i}].caption"),
                    "must be at most 1000 characters",
                ));
            }
        }
        if self
            .sample_prompt
            .as_ref()
            .is_some_and(|p| p.chars().count() > 1000)
        {
            return Err(invalid("sample_prompt", "must be at most 1000 characters"));
        }
        let d = self.preset.defaults();
        let steps = self.steps.unwrap_or(d.steps);
        if !(1..=MAX_STEPS).contains(&steps) {
            return Err(invalid("steps", format!("must be from 1 to {MAX_STEPS}")));
        }
        let rank = self.rank.unwrap_or(d.rank);
        if !(1..=128).contains(&rank) {
            return Err(invalid("rank", "must be from 1 to 128"));
        }
        let lr = self.learning_rate.unwrap_or(d.learning_rate);
        if !(lr > 0.0 && lr <= 0.01) {
            return Err(invalid("learning_rate", "must be above 0 and at most 0.01"));
        }
        for (field, v) in [
            ("sample_every", self.sample_every),
            ("checkpoint_every", self.checkpoint_every),
        ] {
            if v.is_some_and(|v| v > steps) {
                return Err(invalid(field, "must be at most the steps"));
            }
        }
        if self.checkpoint_every == Some(0) {
            return Err(invalid("checkpoint_every", "must be at least 1"));
        }
        let entry = super::model_source(
            services,
            "model",
            self.model.as_deref(),
            Capability::Txt2img,
            "an image model",
        )?;
        let sdxl = entry.family.as_deref() == Some("sdxl");
        if sdxl && self.train_text_encoder == Some(true) {
            return Err(invalid(
                "train_text_encoder",
                format!(
                    "{} is an SDXL model: its text encoders do not train yet (its UNet does)",
                    entry.id
                ),
            ));
        }
        let resolution = self.resolution.unwrap_or(entry.resolution.unwrap_or(512));
        if !(32..=2048).contains(&resolution) || resolution % 8 != 0 {
            return Err(invalid(
                "resolution",
                "must be a multiple of 8 from 32 to 2048",
            ));
        }
        let all_masked = self.images.iter().all(|i| i.mask.is_some());
        let matte = || {
            super::model_source(
                services,
                "matte_model",
                self.matte_model.as_deref(),
                Capability::Matte,
                "a background-removal model",
            )
        };
        let (masked, matte_model) = match self.masked_loss {
            Some(false) => (false, None),
            Some(true) if all_masked => (true, None),
            Some(true) => (true, Some(matte()?.id)),
            None if all_masked => (true, None),
            // The preset's default only where a model is here: never a download for it.
            None if d.masked => match matte() {
                Ok(e) if e.installed => (true, Some(e.id)),
                _ => (false, None),
            },
            None => (false, None),
        };
        self.family = entry.family.clone();
        self.model = Some(entry.id);
        self.steps = Some(steps);
        self.rank = Some(rank);
        self.learning_rate = Some(lr);
        self.resolution = Some(resolution);
        self.masked_loss = Some(masked);
        self.train_text_encoder = Some(self.train_text_encoder.unwrap_or(d.text_encoder && !sdxl));
        self.train_conv_layers = Some(self.train_conv_layers.unwrap_or(false));
        self.matte_model = matte_model;
        self.sample_every = Some(self.sample_every.unwrap_or((steps / 5).max(1)));
        self.checkpoint_every = Some(self.checkpoint_every.unwrap_or((steps / 10).max(1)));
        self.caption_dropout = Some(d.caption_dropout);
        self.seed = Some(job_seed(self.seed)?);
        Ok(self)
    }

    fn plan(&self, sample_steps: usize) -> Plan {
        let rank = self.rank.unwrap_or(16) as usize;
        let mut lora = LoraConfig {
            rank,
            alpha: rank as f64,
            ..Default::default()
        };
        if self.train_conv_layers == Some(true) {
            lora.targets.extend(["conv1", "conv2"].map(String::from));
        }
        Plan {
            lora,
            recipe: Recipe {
                lr: self.learning_rate.unwrap_or(1e-4),
                warmup_steps: (self.steps.unwrap_or(1) as usize / 20).min(100),
                snr_gamma: Some(5.0),
                noise_offset: 0.05,
                prediction: Prediction::Epsilon,
                text_lr: Some(self.learning_rate.unwrap_or(1e-4) / 2.0),
                ..Default::default()
            },
            steps: self.steps.unwrap_or(1) as usize,
            resolution: self.resolution.unwrap_or(512) as usize,
            caption_dropout: self.caption_dropout.unwrap_or(0.0),
            trigger: self.trigger.clone(),
            seed: self.seed.unwrap_or(0) as u64,
            checkpoint_every: self.checkpoint_every.unwrap_or(0) as usize,
            sample_every: self.sample_every.unwrap_or(0) as usize,
            sample_prompt: self.sample_prompt.clone().unwrap_or_default(),
            sample_steps,
            // diffusers' text-encoder targets: the attention's projections.
            text: (self.train_text_encoder == Some(true)).then(|| LoraConfig {
                rank,
                alpha: rank as f64,
                targets: ["q_proj", "k_proj", "v_proj", "out_proj"]
                    .map(String::from)
                    .to_vec(),
            }),
        }
    }
}

#[async_trait::async_trait]
impl Task for TrainTask {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn slot(&self) -> Slot {
        Slot::Exclusive
    }

    async fn prepare(
        &self,
        services: &Services,
        user_id: &str,
        params: serde_json::Value,
    ) -> Result<Prepared, ApiError> {
        let r: TrainRequest =
            serde_json::from_value(params).map_err(|e| invalid("params", e.to_string()))?;
        let r = match r.resume_from.clone() {
            Some(from) => resumed(services, user_id, &r, &from).await?,
            None => r.resolve(services)?,
        };
        let mut inputs = Vec::new();
        for (i, im) in r.images.iter().enumerate() {
            for (field, id) in [("id", Some(&im.id)), ("mask", im.mask.as_ref())] {
                let Some(id) = id else { continue };
                services
                    .db
                    .asset_size(id, user_id)
                    .await
                    .map_err(internal)?
                    .ok_or_else(|| {
                        invalid(
                            &format!("images[{i}].{field}"),
                            format!("no uploaded file {id}"),
                        )
                    })?;
                inputs.push(id.clone());
            }
        }
        Ok(Prepared {
            cost: cost(r.steps.unwrap_or(1)),
            inputs,
            params: serde_json::to_value(&r).map_err(internal)?,
        })
    }

    async fn run(&self, ctx: RunContext) -> Outcome {
        let r: TrainRequest = match serde_json::from_value(ctx.job.params.clone()) {
            Ok(r) => r,
            Err(e) => return Outcome::failed("invalid-input", e.to_string()),
        };
        let mut files = Vec::with_capacity(r.images.len());
        for im in &r.images {
            let image = match ctx.input(&im.id).await {
                Ok(b) => b,
                Err(o) => return o,
            };
            let mask = match &im.mask {
                Some(m) => match ctx.input(m).await {
                    Ok(b) => Some(b),
                    Err(o) => return o,
                },
                None => None,
            };
            files.push((image, mask, im.caption.clone()));
        }
        let blobs = ctx.services.blobs.clone();
        let dir = state_dir(&ctx.job.id);
        // This job's own checkpoint (an earlier attempt's), else the one it resumes: the
        // checkpoint and the job it is from.
        let mut from = None;
        for id in std::iter::once(ctx.job.id.as_str()).chain(r.resume_from.as_deref()) {
            match blobs.get(&format!("{}{CHECKPOINT}", state_dir(id))).await {
                Ok(Some(b)) => {
                    from = Some((b, id.to_string()));
                    break;
                }
                Ok(None) => {}
                Err(e) => return Outcome::Retry(e.to_string()),
            }
        }
        let mut log = TrainLog::default();
        if let Some((_, id)) = &from {
            match read_log(&blobs, id).await {
                Ok(l) => log = l,
                Err(e) => return Outcome::Retry(e),
            }
            // A resumed training shows the samples of the one it goes on from as its own.
            if *id != ctx.job.id
                && let Err(e) = copy_samples(&blobs, id, &ctx.job.id).await
            {
                return Outcome::Retry(e);
            }
        }
        let base = match super::model_source(
            &ctx.services,
            "model",
            r.model.as_deref(),
            Capability::Txt2img,
            "an image model",
        ) {
            Ok(e) => e,
            Err(e) => return Outcome::failed("model-unavailable", e.message),
        };
        let matte = match r.matte_model.as_deref() {
            Some(id) => {
                match registry::find(&ctx.services.data_dir, &ctx.services.local_models, id) {
                    Ok(Some(e)) => Some(e),
                    _ => {
                        return Outcome::failed(
                            "model-unavailable",
                            format!("the background-removal model {id} is no longer offered"),
                        );
                    }
                }
            }
            None => None,
        };
        let run = Run {
            services: ctx.services.clone(),
            rt: tokio::runtime::Handle::current(),
            progress: ctx.progress(),
            cancel: ctx.cancel.clone(),
            job_id: ctx.job.id.clone(),
            attempt: ctx.job.attempt,
            dir,
        };
        let work = tokio::task::spawn_blocking(move || {
            run.train(r, base, matte, files, from.map(|(b, _)| b), log)
        })
        .await;
        match work {
            Ok(Ok(outputs)) => Outcome::Done(outputs),
            // Only the errors are read.
            other => super::engine_outcome(other.map(|r| r.map(|mut v| v.remove(0))), "training"),
        }
    }

    /// Completed and recorded: the checkpoint is no longer needed (the loss log and the
    /// samples stay, for the page that shows the training).
    async fn ended(&self, services: &Services, job: &super::Job) {
        let key = format!("{}{CHECKPOINT}", state_dir(&job.id));
        if let Err(e) = services.blobs.delete(&key).await {
            tracing::warn!(%key, error = %e, "deleting a finished training's checkpoint failed");
        }
    }
}

/// The sample images of training `from`, copied to training `to`'s state.
async fn copy_samples(blobs: &Blobs, from: &str, to: &str) -> Result<(), String> {
    let prefix = format!("{}samples/", state_dir(from));
    for key in blobs.list(&prefix).await.map_err(|e| e.to_string())? {
        let Some(bytes) = blobs.get(&key).await.map_err(|e| e.to_string())? else {
            continue;
        };
        let name = key.trim_start_matches(&prefix);
        let dest = format!("{}samples/{name}", state_dir(to));
        blobs.put(&dest, bytes).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A resumed training: the settings of the one it goes on from (the caller's, stopped,
/// with a checkpoint).
async fn resumed(
    services: &Services,
    user_id: &str,
    r: &TrainRequest,
    from: &str,
) -> Result<TrainRequest, ApiError> {
    let alone = TrainRequest {
        resume_from: r.resume_from.clone(),
        ..Default::default()
    };
    if serde_json::to_value(r).map_err(internal)?
        != serde_json::to_value(&alone).map_err(internal)?
    {
        return Err(invalid(
            "resume_from",
            "a resumed training keeps its settings: send resume_from alone",
        ));
    }
    let old = services
        .db
        .job(from)
        .await
        .map_err(internal)?
        .filter(|j| j.user_id == user_id && j.kind == KIND)
        .ok_or_else(|| invalid("resume_from", format!("no training {from}")))?;
    if !matches!(old.status.as_str(), "cancelled" | "failed") {
        return Err(invalid(
            "resume_from",
            format!(
                "training {from} is {}: only a stopped one is resumed",
                old.status
            ),
        ));
    }
    let has = services
        .blobs
        .size(&format!("{}{CHECKPOINT}", state_dir(from)))
        .await
        .map_err(internal)?
        .is_some();
    if !has {
        return Err(invalid(
            "resume_from",
            format!("training {from} stopped before its first checkpoint: start it again"),
        ));
    }
    let mut p: TrainRequest = old
        .params
        .as_deref()
        .and_then(|p| serde_json::from_str(p).ok())
        .ok_or_else(|| internal(format!("training {from} has no settings")))?;
    p.resume_from = Some(from.to_string());
    Ok(p)
}

/// One attempt's training, on a blocking thread.
struct Run {
    services: Services,
    rt: tokio::runtime::Handle,
    progress: tokio::sync::mpsc::UnboundedSender<super::ProgressMsg>,
    cancel: CancelToken,
    job_id: String,
    attempt: i64,
    dir: String,
}

impl Run {
    /// Whether the job is still this attempt's: not deleted, not taken over by another
    /// worker after this one lost its lease (cancelled by its owner it still is: its last
    /// checkpoint is what a resume goes on from).
    fn still_mine(&self) -> bool {
        match self.rt.block_on(self.services.db.job(&self.job_id)) {
            Ok(Some(j)) => j.attempts == self.attempt && j.status != "completed",
            _ => false,
        }
    }

    /// Writes the training's state, unless the job is no longer this attempt's (a late
    /// write must not overwrite the next attempt's, or outlive a deleted job).
    fn put(&self, key: String, bytes: Vec<u8>) -> Result<(), EngineError> {
        if !self.still_mine() {
            return Err(EngineError::Cancelled);
        }
        self.rt
            .block_on(self.services.blobs.put(&key, bytes))
            .map_err(|e| EngineError::Io {
                path: key.into(),
                source: std::io::Error::other(e.0),
            })
    }

    fn write_log(&self, log: &TrainLog) -> Result<(), EngineError> {
        let bytes =
            serde_json::to_vec(log).map_err(|e| EngineError::InvalidInput(e.to_string()))?;
        self.put(format!("{}{LOG}", self.dir), bytes)
    }

    fn train(
        &self,
        r: TrainRequest,
        base: registry::ModelEntry,
        matte: Option<registry::ModelEntry>,
        files: Vec<(Vec<u8>, Option<Vec<u8>>, String)>,
        checkpoint: Option<Vec<u8>>,
        mut log: TrainLog,
    ) -> Result<Vec<Output>, EngineError> {
        let decode = |b: &[u8]| {
            crate::http::media::decode_limited(b, MAX_INPUT_PIXELS)
                .map_err(|e| EngineError::InvalidInput(e.message))
        };
        let matter = match &matte {
            Some(e) => {
                let path = super::fetch_file(
                    &self.services.data_dir,
                    e,
                    &self.services.model_mirror,
                    &self.progress,
                    &self.cancel,
                )?;
                Some(
                    self.services
                        .cache
                        .get_or_load(&path.display().to_string(), || {
                            let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                            Ok((krya_engine::pipelines::matte::Matter::load(&path)?, bytes))
                        })?,
                )
            }
            None => None,
        };
        // Each image no larger than twice the training's side (its bucket is at most that
        // wide), so fifty large uploads are not held at full size.
        let side = 2 * r.resolution.unwrap_or(512);
        let shrink = |img: image::DynamicImage| {
            if img.width().max(img.height()) > side {
                img.resize(side, side, image::imageops::FilterType::Lanczos3)
            } else {
                img
            }
        };
        let mut examples = Vec::with_capacity(files.len());
        for (i, (image, mask, caption)) in files.iter().enumerate() {
            self.cancel.check()?;
            let image = shrink(decode(image)?).to_rgb8();
            let mask = match (mask, &matter) {
                (Some(m), _) => Some(shrink(decode(m)?).to_luma8()),
                (None, Some(m)) => {
                    let stage = "Finding the subject";
                    let _ = self
                        .progress
                        .send(super::ProgressMsg::stage(stage, i, files.len()));
                    Some(m.matte(&image)?)
                }
                (None, None) => None,
            };
            examples.push(Example {
                image,
                caption: caption.clone(),
                mask,
            });
        }
        // Training runs on the CPU in f32 (whatever device serves images).
        let model = super::image::load_model_cpu(&base, &self.services.cache)?;
        let sample_steps = base.default_steps.unwrap_or(20).clamp(1, 30) as usize;
        let v = model.scheduler_config.prediction_type
            == krya_engine::schedulers::PredictionType::VPrediction;
        let mut plan = r.plan(sample_steps);
        if v {
            plan.recipe.prediction = Prediction::Velocity;
        }
        let resume = checkpoint.map(|b| Checkpoint::from_bytes(&b)).transpose()?;
        if let Some(c) = &resume {
            // What the log had past the checkpoint was lost with the attempt.
            log.losses.clone_from(&c.losses);
            log.samples.retain(|s| *s <= c.step);
            log.resumed_at.push(c.step);
            log.checkpoint_step = Some(c.step);
        } else {
            log = TrainLog::default();
        }
        let first = resume.as_ref().map_or(0, |c| c.step);
        let started = Instant::now();
        let mut written = Instant::now();
        let log = std::sync::Mutex::new(log);
        let mut on_step = |p: engine::Progress| -> Result<(), EngineError> {
            let mut l = log.lock().unwrap();
            l.losses.push(p.loss);
            let pace = started.elapsed().as_secs_f64() / (p.step - first).max(1) as f64;
            l.seconds_per_step = Some(pace);
            let mut preview = None;
            if let Some(img) = p.sample {
                self.put(
                    sample_key(&self.job_id, p.step),
                    krya_engine::image_io::png_bytes(img, "")?,
                )?;
                l.samples.push(p.step);
                preview = crate::http::media::preview_data_url(img);
            }
            if preview.is_some() || p.step == p.total || written.elapsed().as_millis() >= 1000 {
                self.write_log(&l)?;
                written = Instant::now();
            }
            let _ = self
                .progress
                .send(super::ProgressMsg::step(p.step, p.total, preview));
            Ok(())
        };
        let mut on_checkpoint = |c: &Checkpoint| -> Result<(), EngineError> {
            self.put(format!("{}{CHECKPOINT}", self.dir), c.to_bytes()?)?;
            let mut l = log.lock().unwrap();
            l.checkpoint_step = Some(c.step);
            self.write_log(&l)
        };
        let trained = engine::train(
            &model,
            &examples,
            &plan,
            resume,
            &mut on_step,
            &mut on_checkpoint,
            &self.cancel,
        )?;
        let meta = Metadata {
            family: engine::family_of(&model).into(),
            v_prediction: v,
            name: r.name.clone(),
            trigger: r.trigger.clone(),
            steps: plan.steps,
            resolution: plan.resolution,
            rank: plan.lora.rank,
            alpha: plan.lora.alpha,
            base_model: base.id.clone(),
        };
        let bytes = trained.kohya(&model, &meta)?;
        let mut l = log.into_inner().unwrap();
        l.eval_loss = Some(trained.eval);
        self.write_log(&l)?;
        let dataset = serde_json::json!({
            "name": r.name, "trigger": r.trigger, "images": r.images,
        });
        let lora = Output {
            kind: "lora",
            mime: "application/octet-stream",
            ext: "safetensors",
            body: Body::Bytes(bytes),
            thumbnail: None,
            tiles: None,
            width: None,
            height: None,
            duration_ms: None,
            parent_id: None,
            meta: serde_json::json!({
                "name": r.name, "family": meta.family, "trigger": r.trigger, "base_model": base.id,
            }),
        };
        let dataset = Output {
            kind: "dataset",
            mime: "application/json",
            ext: "json",
            body: Body::Bytes(dataset.to_string().into_bytes()),
            thumbnail: None,
            tiles: None,
            width: None,
            height: None,
            duration_ms: None,
            parent_id: None,
            meta: serde_json::Value::Null,
        };
        Ok(vec![lora, dataset])
    }
}

/// The user's trained LoRAs, as the LoRA lists and requests see them: `(asset id, name,
/// family)`, newest first.
pub(crate) async fn user_loras(
    db: &crate::persistence::db::Db,
    user_id: &str,
) -> Result<Vec<(String, String, Option<String>, String)>, sqlx::Error> {
    use sqlx::Row;
    let rows = sqlx::query(
        "SELECT a.id, a.blob_key, j.params FROM assets a JOIN jobs j ON j.id = a.job_id \
         WHERE a.user_id = $1 AND a.kind = 'lora' AND j.kind = 'train' AND j.status = 'completed' \
         ORDER BY a.created_at DESC, a.id",
    )
    .bind(user_id)
    .fetch_all(&db.pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let params: Option<String> = r.try_get("params")?;
        let p: TrainRequest = params
            .as_deref()
            .and_then(|p| serde_json::from_str(p).ok())
            .unwrap_or_default();
        out.push((r.try_get("id")?, p.name, p.family, r.try_get("blob_key")?));
    }
    Ok(out)
}
