//! The job runner: inside `krya serve` (embedded default) or alone as `krya worker`. It
//! claims jobs from the shared queue, runs them on the native engine, writes the images
//! to blob storage and ends the job and its generation in one transaction.
//!
//! Exactly one set of results: blobs are written under keys that name the attempt, the
//! image rows are inserted only by the transaction that wins the job's end (the job must
//! still be this worker's, the generation still active), and a losing or interrupted
//! attempt's blobs are deleted (by itself, or by the next attempt).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use krya_engine::model::cache::{ModelCache, model_bytes};
use krya_engine::model::{ModelSource, hub};
use krya_engine::{CancelToken, EngineError, GenerateRequest, SchedulerKind, device, model};
use tokio::sync::{Notify, mpsc};

use crate::blobs::Blobs;
use crate::config;
use crate::db::Db;
use crate::events::Bus;
use crate::generations::{Generation, random_id, refund};
use crate::jobs::Claimed;
use crate::{media, registry, webhooks};

/// Inputs were checked against the upload limit when uploaded; this bounds decoding again.
const MAX_INPUT_PIXELS: u64 = 8192 * 8192;

/// Cancel tokens of the generations running in this process, by generation id.
pub type Running = Arc<Mutex<HashMap<String, CancelToken>>>;

pub struct Worker {
    pub db: Db,
    pub blobs: Blobs,
    pub bus: Bus,
    pub data_dir: PathBuf,
    /// Models named in the settings (`[models.local]`).
    pub local_models: std::collections::BTreeMap<String, String>,
    pub config: config::Jobs,
    pub id: String,
    pub cache: Arc<ModelCache>,
    pub running: Running,
    pub wake: Arc<Notify>,
    pub stopping: Arc<AtomicBool>,
}

/// One finished image: PNG (with parameters), WebP thumbnail, size, seed.
struct Output {
    png: Vec<u8>,
    thumb: Vec<u8>,
    width: u32,
    height: u32,
    seed: u64,
}

enum Outcome {
    Done(Vec<Output>),
    /// Bad input or an unusable model: no retry.
    Permanent(&'static str, String),
    /// Worth another attempt.
    Transient(String),
    Cancelled,
}

impl Worker {
    fn lease_ms(&self) -> i64 {
        (self.config.lease_secs * 1000.0) as i64
    }

    /// Runs jobs until `stop` is set, finishing (or handing back) the current one first.
    pub async fn run(self: Arc<Self>) {
        while !self.stopping.load(Ordering::SeqCst) {
            match self
                .db
                .claim_job(&self.id, self.lease_ms(), crate::jobs::IMAGE)
                .await
            {
                Ok(Some(job)) => {
                    if let Err(e) = self.process(&job).await {
                        // The lease runs out and the job is tried again.
                        eprintln!("job {} ({}): {e}", job.id, job.ref_id);
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => eprintln!("claiming a job: {e}"),
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(self.config.poll_ms)) => {}
            }
        }
    }

    /// Stops after the current job; a running generation is handed back to the queue.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for t in self.running.lock().unwrap().values() {
            t.cancel();
        }
        self.wake.notify_one();
    }

    async fn process(&self, job: &Claimed) -> Result<(), String> {
        let db = &self.db;
        let Some(g) = db
            .generation(&job.ref_id)
            .await
            .map_err(|e| e.to_string())?
        else {
            // Deleted meanwhile.
            let mut tx = db.pool.begin().await.map_err(|e| e.to_string())?;
            Db::finish_job(&mut tx, &job.id, &self.id, "cancelled", None)
                .await
                .map_err(|e| e.to_string())?;
            return tx.commit().await.map_err(|e| e.to_string());
        };
        if !g.is_active() {
            let mut tx = db.pool.begin().await.map_err(|e| e.to_string())?;
            let status = if g.status == "completed" {
                "completed"
            } else {
                "cancelled"
            };
            Db::finish_job(&mut tx, &job.id, &self.id, status, None)
                .await
                .map_err(|e| e.to_string())?;
            return tx.commit().await.map_err(|e| e.to_string());
        }
        if job.attempts > job.max_attempts {
            let msg = format!(
                "the job was interrupted {} times; giving up",
                job.max_attempts
            );
            return self.fail(job, &g, "worker-lost", &msg).await;
        }
        sqlx::query("UPDATE generations SET status = 'processing', started_at = COALESCE(started_at, $1) WHERE id = $2 AND status IN ('pending', 'processing')")
            .bind(crate::auth::now())
            .bind(&g.id)
            .execute(&db.pool)
            .await
            .map_err(|e| e.to_string())?;
        self.bus.publish(
            &g.user_id,
            "started",
            &g.id,
            serde_json::json!({"status": "processing", "attempt": job.attempts}),
        );
        let prefix = format!("generations/{}/", g.id);
        let mine = format!("{prefix}a{}-", job.attempts);
        if job.attempts > 1 {
            // What an interrupted attempt left behind.
            for key in self.blobs.list(&prefix).await.map_err(|e| e.to_string())? {
                if !key.starts_with(&mine) {
                    self.blobs.delete(&key).await.map_err(|e| e.to_string())?;
                }
            }
        }

        let outcome = self.render(job, &g).await?;
        match outcome {
            Outcome::Done(outputs) => self.complete(job, &g, outputs, &mine).await,
            Outcome::Permanent(code, msg) => self.fail(job, &g, code, &msg).await,
            Outcome::Transient(msg) if job.attempts < job.max_attempts => {
                let delay =
                    self.config.retry_base_ms as i64 * (1i64 << (job.attempts - 1).clamp(0, 10));
                self.requeue(job, &g, delay, &msg).await
            }
            Outcome::Transient(msg) => self.fail(job, &g, "internal", &msg).await,
            Outcome::Cancelled if self.stopping.load(Ordering::SeqCst) => {
                self.requeue(job, &g, 0, "the worker stopped").await
            }
            // Cancelled by its owner (already ended and refunded) or taken over by another
            // worker after a lost lease.
            Outcome::Cancelled => Ok(()),
        }
    }

    /// Loads inputs and the model, then runs the engine off the async threads, reporting
    /// progress and heartbeating the lease.
    async fn render(&self, job: &Claimed, g: &Generation) -> Result<Outcome, String> {
        let mut images = Vec::new();
        for id in [&g.params.init_image, &g.params.mask].into_iter().flatten() {
            let Some(asset) = self
                .db
                .asset(id, &g.user_id)
                .await
                .map_err(|e| e.to_string())?
            else {
                return Ok(Outcome::Permanent(
                    "invalid-input",
                    format!("the uploaded image {id} was deleted"),
                ));
            };
            match self.blobs.get(&asset.blob_key).await {
                Ok(Some(bytes)) => images.push(bytes),
                Ok(None) => {
                    return Ok(Outcome::Permanent(
                        "invalid-input",
                        format!("the uploaded image {id} is missing"),
                    ));
                }
                Err(e) => return Ok(Outcome::Transient(e.to_string())),
            }
        }
        let (data_dir, local) = (self.data_dir.clone(), self.local_models.clone());
        let model_id = g.model.clone();
        let entry =
            tokio::task::spawn_blocking(move || registry::find(&data_dir, &local, &model_id))
                .await
                .map_err(|e| e.to_string())??;
        let Some(entry) = entry else {
            return Ok(Outcome::Permanent(
                "model-unavailable",
                format!("model {:?} is no longer offered here", g.model),
            ));
        };

        let token = CancelToken::new();
        self.running
            .lock()
            .unwrap()
            .insert(g.id.clone(), token.clone());
        let heartbeat = {
            let (db, id, owner, token) = (
                self.db.clone(),
                job.id.clone(),
                self.id.clone(),
                token.clone(),
            );
            let lease = self.lease_ms();
            let every = Duration::from_millis((lease / 3).clamp(100, 5000) as u64);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    // Cancelled, ended or taken over: stop at the next step.
                    if let Ok(false) = db.heartbeat(&id, &owner, lease).await {
                        token.cancel();
                        return;
                    }
                }
            })
        };
        let (ptx, prx) = mpsc::unbounded_channel::<(usize, usize, Option<String>)>();
        let progress = tokio::spawn(report_progress(
            self.db.clone(),
            self.bus.clone(),
            g.user_id.clone(),
            g.id.clone(),
            prx,
        ));

        let (g2, cache, tok) = (g.clone(), self.cache.clone(), token.clone());
        let result =
            tokio::task::spawn_blocking(move || run_engine(&g2, &entry, images, &cache, &tok, ptx))
                .await;
        heartbeat.abort();
        let _ = progress.await;
        self.running.lock().unwrap().remove(&g.id);
        Ok(match result {
            Ok(Ok(outputs)) => Outcome::Done(outputs),
            Ok(Err(EngineError::Cancelled)) => Outcome::Cancelled,
            Ok(Err(e @ (EngineError::Tensor(_) | EngineError::Io { .. }))) => {
                Outcome::Transient(e.to_string())
            }
            Ok(Err(e @ EngineError::Download(_))) => {
                Outcome::Permanent("model-unavailable", e.to_string())
            }
            Ok(Err(e)) => Outcome::Permanent(
                if e.code() == "invalid-input" {
                    "invalid-input"
                } else {
                    "model-unavailable"
                },
                e.to_string(),
            ),
            Err(e) => Outcome::Transient(format!("the engine stopped: {e}")),
        })
    }

    async fn complete(
        &self,
        job: &Claimed,
        g: &Generation,
        outputs: Vec<Output>,
        mine: &str,
    ) -> Result<(), String> {
        let mut keys = Vec::new();
        for (i, o) in outputs.iter().enumerate() {
            let (png, thumb) = (format!("{mine}{i}.png"), format!("{mine}{i}-thumb.webp"));
            for (k, b) in [(&png, &o.png), (&thumb, &o.thumb)] {
                if let Err(e) = self.blobs.put(k, b.clone()).await {
                    self.delete_blobs(keys.iter().flat_map(|(a, b)| [a, b]))
                        .await;
                    return self
                        .requeue(job, g, self.config.retry_base_ms as i64, &e.to_string())
                        .await;
                }
            }
            keys.push((png, thumb));
        }
        let data = self
            .commit_images(job, g, &outputs, &keys)
            .await
            .map_err(|e| e.to_string())?;
        let Some(data) = data else {
            self.delete_blobs(keys.iter().flat_map(|(a, b)| [a, b]))
                .await;
            return Ok(());
        };
        self.bus.publish(&g.user_id, "completed", &g.id, data);
        Ok(())
    }

    async fn commit_images(
        &self,
        job: &Claimed,
        g: &Generation,
        outputs: &[Output],
        keys: &[(String, String)],
    ) -> Result<Option<serde_json::Value>, sqlx::Error> {
        let mut tx = self.db.pool.begin().await?;
        if !Db::finish_job(&mut tx, &job.id, &self.id, "completed", None).await? {
            return Ok(None);
        }
        let (w, h) = outputs
            .first()
            .map(|o| (o.width as i64, o.height as i64))
            .unwrap_or((0, 0));
        let r = sqlx::query("UPDATE generations SET status = 'completed', width = $1, height = $2, progress_step = progress_total, completed_at = $3 WHERE id = $4 AND status IN ('pending', 'processing')")
            .bind(w)
            .bind(h)
            .bind(crate::auth::now())
            .bind(&g.id)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() != 1 {
            return Ok(None);
        }
        let mut images = Vec::new();
        for (i, (o, (png, thumb))) in outputs.iter().zip(keys).enumerate() {
            let id = random_id();
            images.push(crate::generations::image_json(
                &id,
                o.width as i64,
                o.height as i64,
                o.seed as i64,
            ));
            sqlx::query("INSERT INTO images (id, generation_id, idx, seed, width, height, png_key, thumb_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
                .bind(&id)
                .bind(&g.id)
                .bind(i as i64)
                .bind(o.seed as i64)
                .bind(o.width as i64)
                .bind(o.height as i64)
                .bind(png)
                .bind(thumb)
                .execute(&mut *tx)
                .await?;
        }
        let data = serde_json::json!({"status": "completed", "images": images});
        webhooks::enqueue(&mut tx, g, "completed", &data).await?;
        tx.commit().await?;
        Ok(Some(data))
    }

    async fn delete_blobs<'a>(&self, keys: impl Iterator<Item = &'a String>) {
        for k in keys {
            if let Err(e) = self.blobs.delete(k).await {
                eprintln!("deleting {k}: {e}");
            }
        }
    }

    /// Ends the job and its generation as failed, refunding the credits.
    async fn fail(
        &self,
        job: &Claimed,
        g: &Generation,
        code: &str,
        message: &str,
    ) -> Result<(), String> {
        let data =
            serde_json::json!({"status": "failed", "error": {"code": code, "message": message}});
        let ended = async {
            let mut tx = self.db.pool.begin().await?;
            if !Db::finish_job(&mut tx, &job.id, &self.id, "failed", Some(message)).await? {
                return Ok(false);
            }
            let r = sqlx::query("UPDATE generations SET status = 'failed', error_code = $1, error_message = $2, completed_at = $3 WHERE id = $4 AND status IN ('pending', 'processing')")
                .bind(code)
                .bind(message)
                .bind(crate::auth::now())
                .bind(&g.id)
                .execute(&mut *tx)
                .await?;
            if r.rows_affected() != 1 {
                return Ok(false);
            }
            refund(&mut tx, g).await?;
            webhooks::enqueue(&mut tx, g, "failed", &data).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(true)
        }
        .await
        .map_err(|e| e.to_string())?;
        if ended {
            self.bus.publish(&g.user_id, "failed", &g.id, data);
        }
        Ok(())
    }

    /// Hands the job back to the queue after `delay_ms`.
    async fn requeue(
        &self,
        job: &Claimed,
        g: &Generation,
        delay_ms: i64,
        why: &str,
    ) -> Result<(), String> {
        let done = async {
            let mut tx = self.db.pool.begin().await?;
            if !Db::retry_job(&mut tx, &job.id, &self.id, delay_ms, why).await? {
                return Ok(false);
            }
            sqlx::query("UPDATE generations SET status = 'pending', progress_step = 0 WHERE id = $1 AND status = 'processing'")
                .bind(&g.id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(true)
        }
        .await
        .map_err(|e| e.to_string())?;
        if done {
            self.bus.publish(
                &g.user_id,
                "queued",
                &g.id,
                serde_json::json!({"status": "pending", "retry_in_ms": delay_ms}),
            );
            self.wake.notify_one();
        }
        Ok(())
    }
}

/// Stores progress and publishes it, at most every 200 ms (and always the last step).
async fn report_progress(
    db: Db,
    bus: Bus,
    user_id: String,
    id: String,
    mut rx: mpsc::UnboundedReceiver<(usize, usize, Option<String>)>,
) {
    let mut last = Instant::now() - Duration::from_secs(1);
    let mut pending: Option<(usize, usize, Option<String>)> = None;
    loop {
        let msg = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await;
        let closed = matches!(msg, Ok(None));
        if let Ok(Some(m)) = msg {
            let keep_preview = m.2.is_none() && pending.as_ref().is_some_and(|p| p.2.is_some());
            let old_preview = if keep_preview {
                pending.take().and_then(|p| p.2)
            } else {
                None
            };
            pending = Some((m.0, m.1, m.2.or(old_preview)));
        }
        let due = last.elapsed() >= Duration::from_millis(200)
            || pending.as_ref().is_some_and(|p| p.0 == p.1)
            || closed;
        if due && let Some((step, total, preview)) = pending.take() {
            last = Instant::now();
            let _ = sqlx::query("UPDATE generations SET progress_step = $1, progress_total = $2 WHERE id = $3 AND status = 'processing'")
                .bind(step as i64)
                .bind(total as i64)
                .bind(&id)
                .execute(&db.pool)
                .await;
            bus.publish(&user_id, "progress", &id, serde_json::json!({"status": "processing", "progress": {"step": step, "total": total}, "preview": preview}));
        }
        if closed {
            return;
        }
    }
}

/// The model an entry names, from the cache or loaded (a hub model is downloaded first).
pub(crate) fn load_model(
    entry: &registry::ModelEntry,
    cache: &ModelCache,
) -> Result<Arc<krya_engine::StableDiffusion>, EngineError> {
    cache.get_or_load(&entry.source, || {
        let mut source = ModelSource::parse(&entry.source)?;
        if let ModelSource::Hub { repo, revision } = &source
            && hub::cached_snapshot(repo, revision).is_none()
        {
            source = ModelSource::Folder(hub::pull(repo, revision, &mut |_| {})?);
        }
        let dev = device::best_device()?;
        let mut m = model::load(&source, &dev, device::default_dtype(&dev))?;
        m.name = entry.id.clone();
        let bytes = model_bytes(&m);
        Ok((m, bytes))
    })
}

fn run_engine(
    g: &Generation,
    entry: &registry::ModelEntry,
    inputs: Vec<Vec<u8>>,
    cache: &ModelCache,
    cancel: &CancelToken,
    progress: mpsc::UnboundedSender<(usize, usize, Option<String>)>,
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
    let model = load_model(entry, cache)?;
    cancel.check()?;
    let (prompt, negative) = match g
        .params
        .style
        .as_deref()
        .and_then(|s| registry::styles().into_iter().find(|x| x.id == s))
    {
        Some(style) => style.apply(&g.prompt, g.negative_prompt.as_deref()),
        None => (g.prompt.clone(), g.negative_prompt.clone()),
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
    };
    let mut last_preview = Instant::now() - Duration::from_secs(1);
    let out = model.generate(
        &req,
        &mut |p| {
            // Previews at most ~4 a second: encoding is cheap, but the stream is for people.
            let preview = match p.preview {
                Some(img)
                    if last_preview.elapsed() >= Duration::from_millis(250)
                        || p.step == p.total =>
                {
                    last_preview = Instant::now();
                    media::preview_data_url(img)
                }
                _ => None,
            };
            let _ = progress.send((p.step, p.total, preview));
        },
        cancel,
    )?;
    let mut outputs = Vec::new();
    for (i, img) in out.images.iter().enumerate() {
        let params = out.parameters_text(&req, &entry.id, i);
        let png = krya_engine::image_io::png_bytes(img, &params)?;
        let thumb = media::thumbnail_webp(img, 384)
            .map_err(|e| EngineError::InvalidInput(format!("thumbnail: {e}")))?;
        outputs.push(Output {
            png,
            thumb,
            width: img.width(),
            height: img.height(),
            seed: out.seeds[i],
        });
    }
    Ok(outputs)
}

pub fn worker_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "krya".into());
    format!("{host}-{}-{}", std::process::id(), &random_id()[..8])
}
