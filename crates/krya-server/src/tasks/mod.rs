//! Kinds of work. Each kind is one `Task`: how a request is checked and priced, and how
//! one attempt runs. A kind lives in a folder (or file) of its own and is listed once, in
//! `builtin()`; the runner (`runner.rs`) does the rest for every kind alike: claiming in
//! fair order, leases and heartbeats, cancel, retries, credits, progress events, output
//! assets and webhooks. `docs/architecture.md` walks a job through it.
//!
//! Most kinds keep everything in the job itself (`jobs.params`, output assets). Image
//! generation also keeps its `generations` row (the feed, likes and search read it), which
//! the hooks `started`, `progressed`, `completed`, `failed`, `requeued`, `cancelled` and
//! `deleted`
//! keep in step, inside the runner's own transactions.

pub mod caption;
pub mod edit;
pub mod enhance;
pub mod image;
pub mod lora;
pub mod runner;
pub mod train;
pub mod webhook;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use krya_engine::CancelToken;
use krya_engine::model::cache::ModelCache;
use tokio::sync::mpsc;

use crate::infra::error::{ApiError, internal, invalid};
use crate::persistence::blobs::Blobs;
use crate::persistence::db::Db;
use crate::persistence::registry::{self, Capability};

/// Which of a worker's slots runs a kind. Slots claim and run independently, so a long
/// kind never holds up the kinds of another slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    /// The engine: one job at a time (it uses every core, or the GPU).
    Compute,
    /// Long work that must not hold up the engine's queue (training): one at a time, in a
    /// slot of its own.
    Exclusive,
    /// Work that mostly waits on the network (webhook deliveries, remote providers):
    /// `jobs.io_slots` at a time.
    Io,
}

/// A request checked by its kind: what is stored and what it costs.
pub struct Prepared {
    pub params: serde_json::Value,
    pub cost: i64,
    /// Uploaded assets the job reads (checked to be the caller's at submission).
    pub inputs: Vec<String>,
}

/// A claimed job, as its task sees it.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    pub kind: String,
    /// The record the job works on: the generation for images, else the job itself.
    pub ref_id: String,
    pub user_id: String,
    /// This attempt, from 1.
    pub attempt: i64,
    pub max_attempts: i64,
    pub params: serde_json::Value,
    /// What an earlier `Outcome::PollAt` left for this run.
    pub state: Option<serde_json::Value>,
    pub cost: i64,
    pub webhook_url: Option<String>,
}

/// One output file of a job, stored by the runner as an asset.
pub struct Output {
    /// `image`, `mask`, `video`, `audio`, `mesh`, `lora`, `dataset` or `text`.
    pub kind: &'static str,
    pub mime: &'static str,
    /// The file's extension in storage keys.
    pub ext: &'static str,
    pub body: Body,
    /// A small WebP for lists.
    pub thumbnail: Option<Vec<u8>>,
    /// A zoomable copy of a large image (`krya_engine::pyramid`'s levels of tiles), stored
    /// beside the file as [`tiles_key`] of its key, served by `GET /api/assets/:id/tiles`.
    pub tiles: Option<Body>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub duration_ms: Option<i64>,
    /// The asset it was made from (the upscaled image's source, the img2img init image).
    pub parent_id: Option<String>,
    /// What the kind's own record wants to keep (an image's seed).
    pub meta: serde_json::Value,
}

/// Where the tile pyramid of the file stored under `key` is kept: `a1-0.png` →
/// `a1-0-tiles.bin`.
pub fn tiles_key(key: &str) -> String {
    let stem = match key.rsplit_once('.') {
        Some((stem, ext)) if !ext.contains('/') => stem,
        _ => key,
    };
    format!("{stem}-tiles.bin")
}

/// Where a kind keeps what outlives an attempt (a training's checkpoint, loss log and
/// samples): under its `blob_prefix`, so deleting the job deletes it, but kept when an
/// interrupted attempt's files are cleared.
pub fn state_prefix(task: &dyn Task, job: &Job) -> String {
    format!("{}{STATE}", task.blob_prefix(job))
}

const STATE: &str = "state/";

/// Where a job's files are kept (`Task::blob_prefix`'s default).
pub fn job_prefix(job_id: &str) -> String {
    format!("jobs/{job_id}/")
}

/// [`state_prefix`] of a job of a kind that keeps the default prefix, by its id alone.
pub fn job_state_prefix(job_id: &str) -> String {
    format!("{}{STATE}", job_prefix(job_id))
}

/// An output's file: in memory, or (large ones) a temporary file stored a part at a time
/// and deleted once dropped.
pub enum Body {
    Bytes(Vec<u8>),
    File(tempfile::TempPath),
}

impl Body {
    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Body::Bytes(b) => b.len() as u64,
            Body::File(p) => std::fs::metadata(p).map_or(0, |m| m.len()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An output once stored: its asset id and storage keys.
pub struct Stored<'a> {
    pub output: &'a Output,
    pub asset_id: String,
    pub key: String,
    pub thumb_key: Option<String>,
}

/// How one attempt ended.
pub enum Outcome {
    Done(Vec<Output>),
    /// Bad input or an unusable model: no retry, refunded.
    Failed {
        code: &'static str,
        message: String,
    },
    /// Worth another attempt (after the configured backoff), until the attempt limit.
    Retry(String),
    /// Its cancel token fired: cancelled by its owner, taken over, or the worker stops.
    Cancelled,
    /// Not done yet (a remote provider is still working): run again at `at_ms` with
    /// `state`, without holding a slot meanwhile. Not counted as an attempt.
    PollAt {
        at_ms: i64,
        state: serde_json::Value,
    },
}

impl Outcome {
    pub fn failed(code: &'static str, message: impl Into<String>) -> Outcome {
        Outcome::Failed {
            code,
            message: message.into(),
        }
    }
}

/// What a task may use: narrow services, never the whole server.
#[derive(Clone)]
pub struct Services {
    pub db: Db,
    pub blobs: Blobs,
    pub cache: Arc<ModelCache>,
    pub data_dir: PathBuf,
    /// Models named in the settings (`[models.local]`).
    pub local_models: BTreeMap<String, String>,
    /// `[models] mirror`: where one-file models are downloaded from ("": their URLs).
    pub model_mirror: String,
    pub allow_private_webhooks: bool,
    /// The client for requests on users' behalf (refuses non-public addresses unless
    /// `webhooks.allow_private`).
    pub outbound: crate::infra::outbound::Outbound,
}

/// Progress as a task reports it: step of total, a preview image (a data URL), and what
/// it is doing when that is not its steps (`"Downloading gfpgan-1.4"`, counted in MB).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProgressMsg {
    pub step: usize,
    pub total: usize,
    pub preview: Option<String>,
    pub stage: Option<String>,
}

impl ProgressMsg {
    /// Step `step` of `total` of the work itself.
    pub fn step(step: usize, total: usize, preview: Option<String>) -> Self {
        Self {
            step,
            total,
            preview,
            stage: None,
        }
    }

    /// `done` of `total` (0: not known) of a stage before the work (a download).
    pub fn stage(stage: impl Into<String>, done: usize, total: usize) -> Self {
        Self {
            step: done,
            total,
            preview: None,
            stage: Some(stage.into()),
        }
    }
}

/// What `Task::run` gets.
pub struct RunContext {
    pub job: Job,
    pub cancel: CancelToken,
    pub services: Services,
    progress: mpsc::UnboundedSender<ProgressMsg>,
}

impl RunContext {
    pub(crate) fn new(
        job: Job,
        cancel: CancelToken,
        services: Services,
        progress: mpsc::UnboundedSender<ProgressMsg>,
    ) -> Self {
        Self {
            job,
            cancel,
            services,
            progress,
        }
    }

    /// Reports progress; the runner stores it and sends events (at most every 200 ms,
    /// and always the last step). Callable from any thread.
    pub fn progress(&self) -> mpsc::UnboundedSender<ProgressMsg> {
        self.progress.clone()
    }

    /// The bytes of an uploaded asset of the job's owner, or why the job cannot have them.
    pub async fn input(&self, asset_id: &str) -> Result<Vec<u8>, Outcome> {
        let asset = self
            .services
            .db
            .asset(asset_id, &self.job.user_id)
            .await
            .map_err(|e| Outcome::Retry(e.to_string()))?
            .ok_or_else(|| {
                Outcome::failed(
                    "invalid-input",
                    format!("the uploaded file {asset_id} was deleted"),
                )
            })?;
        match self.services.blobs.get(&asset.blob_key).await {
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) => Err(Outcome::failed(
                "invalid-input",
                format!("the uploaded file {asset_id} is missing"),
            )),
            Err(e) => Err(Outcome::Retry(e.to_string())),
        }
    }
}

/// Whether the runner should run a claimed job (a kind with a record of its own may have
/// ended it meanwhile).
pub enum Start {
    Run,
    /// End the job with this status without running it.
    Skip(&'static str),
}

/// A kind of work.
#[async_trait::async_trait]
pub trait Task: Send + Sync + 'static {
    /// Its name in the API, in events and in the queue (lowercase letters and `_`).
    fn kind(&self) -> &'static str;

    fn slot(&self) -> Slot {
        Slot::Compute
    }

    /// Checks a `POST /api/jobs` request of `user_id`'s (errors name the field) and prices
    /// it. Kinds with an endpoint of their own (images) are not submitted this way.
    async fn prepare(
        &self,
        _services: &Services,
        _user_id: &str,
        _params: serde_json::Value,
    ) -> Result<Prepared, ApiError> {
        Err(crate::infra::error::invalid(
            "kind",
            format!(
                "{} jobs are submitted through their own endpoint",
                self.kind()
            ),
        ))
    }

    /// Checks what can only be seen in the request's uploads (a mask with nothing
    /// painted), once they are known to be the caller's: before any credit is taken.
    async fn check_inputs(
        &self,
        _services: &Services,
        _user_id: &str,
        _params: &serde_json::Value,
    ) -> Result<(), ApiError> {
        Ok(())
    }

    /// Runs one attempt.
    async fn run(&self, ctx: RunContext) -> Outcome;

    /// The word events and webhooks name the job's record by (`generation.completed`).
    fn subject(&self) -> &'static str {
        "job"
    }

    /// Whether the job's owner hears of it (events, webhooks): not for deliveries.
    fn notifies(&self) -> bool {
        true
    }

    /// Where its output files are stored (attempt-named files go under it).
    fn blob_prefix(&self, job: &Job) -> String {
        job_prefix(&job.id)
    }

    /// The delay before retry `attempt + 1` after a transient failure.
    fn retry_delay_ms(&self, attempt: i64, base_ms: u64) -> i64 {
        base_ms as i64 * (1i64 << (attempt - 1).clamp(0, 10))
    }

    // Hooks for a kind with a record of its own; each runs in the runner's transaction
    // where one is given, so the record and the job end together.

    async fn started(&self, _services: &Services, _job: &Job) -> Result<Start, sqlx::Error> {
        Ok(Start::Run)
    }

    async fn progressed(&self, _db: &Db, _job: &Job, _step: usize, _total: usize) {}

    /// The job completed with `outputs` stored: the event data, or `None` when the
    /// record has ended meanwhile (the transaction is then rolled back).
    async fn completed(
        &self,
        _tx: &mut sqlx::AnyConnection,
        _job: &Job,
        outputs: &[Stored<'_>],
    ) -> Result<Option<serde_json::Value>, sqlx::Error> {
        let assets: Vec<_> = outputs
            .iter()
            .map(|s| crate::jobs::output_json(s))
            .collect();
        Ok(Some(
            serde_json::json!({"status": "completed", "outputs": assets}),
        ))
    }

    /// The job failed for good; `false` when the record had ended meanwhile.
    async fn failed(
        &self,
        _tx: &mut sqlx::AnyConnection,
        _job: &Job,
        _code: &str,
        _message: &str,
    ) -> Result<bool, sqlx::Error> {
        Ok(true)
    }

    async fn requeued(&self, _tx: &mut sqlx::AnyConnection, _job: &Job) -> Result<(), sqlx::Error> {
        Ok(())
    }

    /// Its owner cancelled it; `false` when the record had ended meanwhile.
    async fn cancelled(
        &self,
        _tx: &mut sqlx::AnyConnection,
        _job: &Job,
    ) -> Result<bool, sqlx::Error> {
        Ok(true)
    }

    /// It completed, its end committed: what the kind kept only while it ran can go (a
    /// training's checkpoint).
    async fn ended(&self, _services: &Services, _job: &Job) {}

    /// Its owner deleted it (its files under `blob_prefix` go too).
    async fn deleted(&self, _tx: &mut sqlx::AnyConnection, _job: &Job) -> Result<(), sqlx::Error> {
        Ok(())
    }
}

/// The kinds a server (or worker) knows, by name.
#[derive(Clone, Default)]
pub struct Registry {
    tasks: BTreeMap<&'static str, Arc<dyn Task>>,
}

impl Registry {
    pub fn with(mut self, task: impl Task) -> Self {
        let kind = task.kind();
        assert!(
            !kind.is_empty() && kind.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "kind {kind:?}: lowercase letters and '_' only"
        );
        self.tasks.insert(kind, Arc::new(task));
        self
    }

    pub fn get(&self, kind: &str) -> Option<&Arc<dyn Task>> {
        self.tasks.get(kind)
    }

    /// Kinds run in `slot`, in name order.
    pub fn kinds(&self, slot: Slot) -> Vec<&'static str> {
        self.tasks
            .iter()
            .filter(|(_, t)| t.slot() == slot)
            .map(|(k, _)| *k)
            .collect()
    }

    /// Every kind, in name order.
    pub fn all_kinds(&self) -> Vec<&'static str> {
        self.tasks.keys().copied().collect()
    }

    /// The kinds a worker runs: `only` (from settings; empty means all), known kinds only.
    pub fn restricted(&self, only: &[String]) -> Registry {
        if only.is_empty() {
            return self.clone();
        }
        Registry {
            tasks: self
                .tasks
                .iter()
                .filter(|(k, _)| only.iter().any(|o| o == *k))
                .map(|(k, t)| (*k, t.clone()))
                .collect(),
        }
    }
}

/// The model `id` names, which must have `capability` (`what` says what that is), or,
/// without an id, the first installed one that has it, else the first that is one file to
/// download (a curated face model, fetched on first use). Errors name `field`.
pub(crate) fn model_source(
    services: &Services,
    field: &str,
    id: Option<&str>,
    capability: Capability,
    what: &str,
) -> Result<registry::ModelEntry, ApiError> {
    let list = format!("GET /api/models?capability={}", capability.name());
    let entry = match id {
        Some(id) => registry::find(&services.data_dir, &services.local_models, id)
            .map_err(internal)?
            .ok_or_else(|| invalid(field, format!("no model {id:?} (see GET /api/models)")))?,
        None => registry::default_for(&services.data_dir, &services.local_models, capability)
            .map_err(internal)?
            .ok_or_else(|| invalid(field, format!("no {what} is installed (see {list})")))?,
    };
    if !entry.capabilities.contains(&capability) {
        return Err(invalid(
            field,
            format!("{} is not {what} (see {list})", entry.id),
        ));
    }
    Ok(entry)
}

/// A model's weights file, downloaded first where it is a URL's (in the job, off the async
/// runtime), the download reported as a stage of the job's progress, in MB, and stopped by
/// `cancel`.
pub(crate) fn fetch_file(
    data_dir: &std::path::Path,
    e: &registry::ModelEntry,
    mirror: &str,
    progress: &tokio::sync::mpsc::UnboundedSender<ProgressMsg>,
    cancel: &krya_engine::CancelToken,
) -> Result<PathBuf, krya_engine::EngineError> {
    let mut shown = None;
    registry::local_file(data_dir, e, mirror, &mut |done, total| {
        let mb = |b: u64| (b / 1_000_000) as usize;
        // A message per megabyte: the runner sends at most five a second.
        if shown != Some(mb(done)) {
            shown = Some(mb(done));
            let stage = format!("Downloading {}", e.id);
            let total = total.map_or(0, mb);
            let _ = progress.send(ProgressMsg::stage(stage, mb(done), total));
        }
        if total.is_some_and(|t| done == t) {
            tracing::info!(model = %e.id, bytes = done, "model downloaded");
        }
        cancel.check()
    })
}

/// A number field within `lo..=hi`, or the 422 naming it.
pub(crate) fn in_range(field: &str, v: Option<f64>, lo: f64, hi: f64) -> Result<(), ApiError> {
    match v {
        Some(x) if !(lo..=hi).contains(&x) => {
            Err(invalid(field, format!("must be from {lo} to {hi}")))
        }
        _ => Ok(()),
    }
}

/// A request's seed: the one asked for, or (left out or -1) a random one, drawn once so a
/// retry and the job's record have it.
pub(crate) fn job_seed(seed: Option<i64>) -> Result<i64, ApiError> {
    match seed {
        None | Some(-1) => Ok(rand::random::<u32>() as i64),
        Some(s) if (0..=u32::MAX as i64).contains(&s) => Ok(s),
        Some(_) => Err(invalid(
            "seed",
            "must be -1 (random) or from 0 to 4294967295",
        )),
    }
}

/// Sends an image pipeline's steps as progress, with a preview at most about four times a
/// second and at the last step (encoding is cheap, but the stream is for people).
pub(crate) fn step_reporter(
    progress: &mpsc::UnboundedSender<ProgressMsg>,
) -> impl FnMut(krya_engine::StepProgress) + '_ {
    let mut pacer = PreviewPacer::default();
    move |p| {
        let preview = p
            .preview
            .filter(|_| pacer.due(p.step == p.total))
            .and_then(crate::http::media::preview_data_url);
        let _ = progress.send(ProgressMsg::step(p.step, p.total, preview));
    }
}

/// When a progress event may carry a new picture: about four a second, and the last.
pub(crate) struct PreviewPacer {
    shown: Option<std::time::Instant>,
}

impl Default for PreviewPacer {
    fn default() -> Self {
        Self { shown: None }
    }
}

impl PreviewPacer {
    pub(crate) fn due(&mut self, last: bool) -> bool {
        let due = last
            || self
                .shown
                .is_none_or(|t| t.elapsed() >= std::time::Duration::from_millis(250));
        if due {
            self.shown = Some(std::time::Instant::now());
        }
        due
    }
}

/// How an engine job's attempt ended: a disk's or a tensor's trouble is worth another try,
/// bad input and a model that cannot be had are not (`what` names the work in a crash).
pub(crate) fn engine_outcome(
    work: Result<Result<Output, krya_engine::EngineError>, tokio::task::JoinError>,
    what: &str,
) -> Outcome {
    use krya_engine::EngineError as E;
    match work {
        Ok(Ok(out)) => Outcome::Done(vec![out]),
        Ok(Err(E::Cancelled)) => Outcome::Cancelled,
        Ok(Err(e @ (E::Tensor(_) | E::Io { .. }))) => Outcome::Retry(e.to_string()),
        Ok(Err(e @ E::Download(_))) => Outcome::failed("model-unavailable", e.to_string()),
        Ok(Err(e)) if e.code() == "invalid-input" => {
            Outcome::failed("invalid-input", e.to_string())
        }
        Ok(Err(e)) => Outcome::failed("model-unavailable", e.to_string()),
        Err(e) => Outcome::Retry(format!("{what} stopped: {e}")),
    }
}

/// The bytes of the caller's upload `id` (for checks before a job is queued).
pub(crate) async fn own_upload(
    services: &Services,
    user_id: &str,
    field: &str,
    id: &str,
) -> Result<Vec<u8>, ApiError> {
    let asset = services
        .db
        .asset(id, user_id)
        .await
        .map_err(internal)?
        .ok_or_else(|| invalid(field, format!("no uploaded file {id}")))?;
    services
        .blobs
        .get(&asset.blob_key)
        .await
        .map_err(internal)?
        .ok_or_else(|| invalid(field, format!("the uploaded file {id} is missing")))
}

/// The kinds Krya ships: one line each.
pub fn builtin() -> Registry {
    Registry::default()
        .with(image::ImageTask)
        .with(enhance::EnhanceTask)
        .with(edit::EditTask)
        .with(caption::CaptionTask)
        .with(train::TrainTask)
        .with(webhook::WebhookTask)
}
