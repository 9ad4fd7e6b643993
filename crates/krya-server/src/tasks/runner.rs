//! The job runner: inside `krya serve` (embedded default) or alone as `krya worker`. One
//! loop per slot (`tasks::Slot`) claims jobs of the kinds this process runs, in fair order,
//! and runs each through its `Task`; everything around the task is done here, the same for
//! every kind:
//!
//! - the lease, extended by heartbeats; a job whose heartbeat fails (cancelled, ended or
//!   taken over) gets its cancel token fired and stops at the task's next check;
//! - retries of transient failures with the backoff from the settings, up to the attempt
//!   limit, and deferred runs (`Outcome::PollAt`) that hold no slot meanwhile;
//! - progress: stored on the job, sent as events (at most every 200 ms, and the last step);
//! - outputs: written to blob storage under keys that name the attempt, recorded as assets
//!   by the transaction that wins the job's end (the job must still be this worker's), and
//!   deleted when that transaction loses (or by the next attempt);
//! - credits: reserved at submission, refunded by the transaction that fails the job;
//! - the job's webhook, enqueued in that same transaction (an outbox), and its events.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use krya_engine::CancelToken;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::http::events::Bus;
use crate::infra::config;
use crate::jobs::{self, Claimed};
use crate::persistence::db::Db;
use crate::tasks::{
    Job, Outcome, ProgressMsg, Registry, RunContext, Services, Slot, Start, Stored, Task,
};

/// Wakes every idle slot loop when a job is submitted. A watch channel, not a `Notify`:
/// each loop sees every wake-up, and one sent while a loop is busy is not lost.
#[derive(Default)]
pub struct Wake(tokio::sync::watch::Sender<u64>);

impl Wake {
    pub fn notify(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// Cancel tokens of the jobs running in this process, by the id of their record (the
/// generation for images, else the job).
pub type Running = Arc<Mutex<HashMap<String, CancelToken>>>;

pub struct Runner {
    pub services: Services,
    pub bus: Bus,
    pub tasks: Registry,
    pub config: config::Jobs,
    pub id: String,
    pub running: Running,
    pub wake: Arc<Wake>,
    pub stopping: Arc<AtomicBool>,
}

impl Runner {
    fn lease_ms(&self) -> i64 {
        (self.config.lease_secs * 1000.0) as i64
    }

    fn db(&self) -> &Db {
        &self.services.db
    }

    /// Runs jobs until `stop`, one loop per slot that has kinds; each finishes (or hands
    /// back) its current job first.
    pub async fn run(self: Arc<Self>) {
        let io = self.config.io_slots.max(1);
        let loops: Vec<_> = [(Slot::Compute, 1), (Slot::Exclusive, 1), (Slot::Io, io)]
            .into_iter()
            .filter(|(s, _)| !self.tasks.kinds(*s).is_empty())
            .flat_map(|(s, n)| std::iter::repeat_n(s, n))
            .map(|s| tokio::spawn(self.clone().run_slot(s)))
            .collect();
        for l in loops {
            let _ = l.await;
        }
    }

    async fn run_slot(self: Arc<Self>, slot: Slot) {
        let kinds = self.tasks.kinds(slot);
        let mut wake = self.wake.subscribe();
        while !self.stopping.load(Ordering::SeqCst) {
            match self.db().claim_job(&self.id, self.lease_ms(), &kinds).await {
                Ok(Some(job)) => {
                    let span = tracing::info_span!("job", id = %job.id, kind = %job.kind, attempt = job.attempts);
                    if let Err(e) = self.process(job).instrument(span.clone()).await {
                        // The lease runs out and the job is tried again.
                        span.in_scope(
                            || tracing::warn!(error = %e, "the job's end was not recorded"),
                        );
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "claiming a job failed"),
            }
            tokio::select! {
                _ = wake.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(self.config.poll_ms)) => {}
            }
        }
    }

    /// Stops after the current jobs; running ones are handed back to the queue.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for t in self.running.lock().unwrap().values() {
            t.cancel();
        }
        self.wake.notify();
    }

    async fn process(&self, claimed: Claimed) -> Result<(), String> {
        let e = |e: sqlx::Error| e.to_string();
        let Some(task) = self.tasks.get(&claimed.kind).cloned() else {
            return Err(format!("no task for kind {:?}", claimed.kind));
        };
        let job = Job {
            params: claimed
                .params
                .as_deref()
                .and_then(|p| serde_json::from_str(p).ok())
                .unwrap_or_default(),
            state: claimed
                .payload
                .as_deref()
                .and_then(|p| serde_json::from_str(p).ok()),
            id: claimed.id,
            kind: claimed.kind,
            ref_id: claimed.ref_id,
            user_id: claimed.user_id,
            attempt: claimed.attempts,
            max_attempts: claimed.max_attempts,
            cost: claimed.cost,
            webhook_url: claimed.webhook_url,
        };
        if let Start::Skip(status) = task.started(&self.services, &job).await.map_err(e)? {
            let mut tx = self.db().pool.begin().await.map_err(e)?;
            Db::finish_job(&mut tx, &job.id, &self.id, status, None)
                .await
                .map_err(e)?;
            return tx.commit().await.map_err(e);
        }
        if job.attempt > job.max_attempts {
            let msg = format!(
                "the job was interrupted {} times; giving up",
                job.max_attempts
            );
            return self.fail(&*task, &job, "worker-lost", &msg).await;
        }
        tracing::info!(record = %job.ref_id, "started");
        self.publish(
            &*task,
            &job,
            "started",
            serde_json::json!({"status": "processing", "attempt": job.attempt}),
        );
        let prefix = task.blob_prefix(&job);
        let mine = format!("{prefix}a{}-", job.attempt);
        if job.attempt > 1 {
            // What an interrupted attempt left behind (but the kind's state, which its
            // next attempt goes on from: a training's checkpoint).
            let state = crate::tasks::state_prefix(&*task, &job);
            for key in self
                .services
                .blobs
                .list(&prefix)
                .await
                .map_err(|e| e.to_string())?
            {
                if !key.starts_with(&mine) && !key.starts_with(&state) {
                    self.services
                        .blobs
                        .delete(&key)
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
        }

        let outcome = self.attempt(task.clone(), &job).await;
        match outcome {
            Outcome::Done(outputs) => self.complete(&*task, &job, outputs, &mine).await,
            Outcome::Failed { code, message } => self.fail(&*task, &job, code, &message).await,
            Outcome::Retry(msg) if job.attempt < job.max_attempts => {
                let delay = task.retry_delay_ms(job.attempt, self.config.retry_base_ms);
                self.requeue(&*task, &job, delay, &msg).await
            }
            Outcome::Retry(msg) => self.fail(&*task, &job, "internal", &msg).await,
            Outcome::PollAt { at_ms, state } => {
                let mut tx = self.db().pool.begin().await.map_err(e)?;
                Db::defer_job(&mut tx, &job.id, &self.id, at_ms, &state.to_string())
                    .await
                    .map_err(e)?;
                tx.commit().await.map_err(e)
            }
            Outcome::Cancelled if self.stopping.load(Ordering::SeqCst) => {
                self.requeue(&*task, &job, 0, "the worker stopped").await
            }
            // Cancelled by its owner (already ended and refunded) or taken over by another
            // worker after a lost lease.
            Outcome::Cancelled => Ok(()),
        }
    }

    /// Runs one attempt with a heartbeat keeping the lease and progress reported.
    async fn attempt(&self, task: Arc<dyn Task>, job: &Job) -> Outcome {
        let token = CancelToken::new();
        self.running
            .lock()
            .unwrap()
            .insert(job.ref_id.clone(), token.clone());
        let heartbeat = {
            let (db, id, owner, token) = (
                self.db().clone(),
                job.id.clone(),
                self.id.clone(),
                token.clone(),
            );
            let lease = self.lease_ms();
            let every = Duration::from_millis((lease / 3).clamp(100, 5000) as u64);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    // Cancelled, ended or taken over: stop at the next check.
                    if let Ok(false) = db.heartbeat(&id, &owner, lease).await {
                        token.cancel();
                        return;
                    }
                }
            })
        };
        let (ptx, prx) = mpsc::unbounded_channel::<ProgressMsg>();
        let progress = tokio::spawn(report_progress(
            self.db().clone(),
            self.bus.clone(),
            task.clone(),
            job.clone(),
            prx,
        ));
        let ctx = RunContext::new(job.clone(), token, self.services.clone(), ptx);
        // A panicking task costs its attempt, not the runner.
        let outcome = tokio::spawn({
            let task = task.clone();
            async move { task.run(ctx).await }
        })
        .await
        .unwrap_or_else(|e| Outcome::Retry(format!("the task stopped: {e}")));
        heartbeat.abort();
        let _ = progress.await;
        self.running.lock().unwrap().remove(&job.ref_id);
        outcome
    }

    async fn complete(
        &self,
        task: &dyn Task,
        job: &Job,
        outputs: Vec<crate::tasks::Output>,
        mine: &str,
    ) -> Result<(), String> {
        let mut stored = Vec::new();
        let mut keys = Vec::new();
        for (i, o) in outputs.iter().enumerate() {
            let key = format!("{mine}{i}.{}", o.ext);
            let thumb_key = o
                .thumbnail
                .as_ref()
                .map(|_| format!("{mine}{i}-thumb.webp"));
            let blobs = &self.services.blobs;
            let mut written = match &o.body {
                crate::tasks::Body::Bytes(b) => blobs.put(&key, b.clone()).await,
                crate::tasks::Body::File(p) => blobs.put_file(&key, p).await,
            };
            if written.is_ok() {
                keys.push(key.clone());
                if let (Some(k), Some(b)) = (&thumb_key, &o.thumbnail) {
                    written = blobs.put(k, b.clone()).await;
                    if written.is_ok() {
                        keys.push(k.clone());
                    }
                }
            }
            if let (true, Some(tiles)) = (written.is_ok(), &o.tiles) {
                let k = crate::tasks::tiles_key(&key);
                written = match tiles {
                    crate::tasks::Body::Bytes(b) => blobs.put(&k, b.clone()).await,
                    crate::tasks::Body::File(p) => blobs.put_file(&k, p).await,
                };
                if written.is_ok() {
                    keys.push(k);
                }
            }
            if let Err(e) = written {
                self.delete_blobs(&keys).await;
                let delay = task.retry_delay_ms(job.attempt, self.config.retry_base_ms);
                return self.requeue(task, job, delay, &e.to_string()).await;
            }
            stored.push(Stored {
                output: o,
                asset_id: crate::infra::ids::random_id(),
                key,
                thumb_key,
            });
        }
        let data = self
            .commit_outputs(task, job, &stored)
            .await
            .map_err(|e| e.to_string())?;
        let Some(data) = data else {
            self.delete_blobs(&keys).await;
            return Ok(());
        };
        tracing::info!(outputs = stored.len(), "completed");
        task.ended(&self.services, job).await;
        self.publish(task, job, "completed", data);
        Ok(())
    }

    /// Ends the job as completed with its outputs recorded, in one transaction; `None`
    /// when the job (or its record) is no longer this worker's to end.
    async fn commit_outputs(
        &self,
        task: &dyn Task,
        job: &Job,
        outputs: &[Stored<'_>],
    ) -> Result<Option<serde_json::Value>, sqlx::Error> {
        let mut tx = self.db().pool.begin().await?;
        if !Db::finish_job(&mut tx, &job.id, &self.id, "completed", None).await? {
            return Ok(None);
        }
        for s in outputs {
            jobs::insert_output(&mut tx, job, s).await?;
        }
        let Some(data) = task.completed(&mut tx, job, outputs).await? else {
            return Ok(None);
        };
        if task.notifies() {
            crate::tasks::webhook::outbox::enqueue(&mut tx, task, job, "completed", &data).await?;
        }
        tx.commit().await?;
        Ok(Some(data))
    }

    async fn delete_blobs(&self, keys: &[String]) {
        for k in keys {
            if let Err(e) = self.services.blobs.delete(k).await {
                tracing::warn!(key = %k, error = %e, "deleting a file failed");
            }
        }
    }

    /// Ends the job as failed, refunding its credits.
    async fn fail(
        &self,
        task: &dyn Task,
        job: &Job,
        code: &str,
        message: &str,
    ) -> Result<(), String> {
        let data =
            serde_json::json!({"status": "failed", "error": {"code": code, "message": message}});
        let ended = async {
            let mut tx = self.db().pool.begin().await?;
            if !Db::finish_job(&mut tx, &job.id, &self.id, "failed", Some((code, message))).await? {
                return Ok(false);
            }
            if !task.failed(&mut tx, job, code, message).await? {
                return Ok(false);
            }
            crate::infra::credits::refund(&mut tx, job).await?;
            if task.notifies() {
                crate::tasks::webhook::outbox::enqueue(&mut tx, task, job, "failed", &data).await?;
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(true)
        }
        .await
        .map_err(|e| e.to_string())?;
        if ended {
            tracing::info!(code, error = message, "failed");
            // A failed job keeps no files: what its attempts left is removed (but its
            // state, from which it may be resumed: a training's checkpoint).
            let prefix = task.blob_prefix(job);
            let state = crate::tasks::state_prefix(task, job);
            for key in self.services.blobs.list(&prefix).await.unwrap_or_default() {
                if !key.starts_with(&state) {
                    let _ = self.services.blobs.delete(&key).await;
                }
            }
        }
        if ended {
            self.publish(task, job, "failed", data);
        }
        Ok(())
    }

    /// Hands the job back to the queue after `delay_ms`.
    async fn requeue(
        &self,
        task: &dyn Task,
        job: &Job,
        delay_ms: i64,
        why: &str,
    ) -> Result<(), String> {
        let done = async {
            let mut tx = self.db().pool.begin().await?;
            if !Db::retry_job(&mut tx, &job.id, &self.id, delay_ms, why).await? {
                return Ok(false);
            }
            task.requeued(&mut tx, job).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(true)
        }
        .await
        .map_err(|e| e.to_string())?;
        if done {
            tracing::info!(delay_ms, why, "queued again");
            self.publish(
                task,
                job,
                "queued",
                serde_json::json!({"status": "pending", "retry_in_ms": delay_ms}),
            );
            self.wake.notify();
        }
        Ok(())
    }

    fn publish(&self, task: &dyn Task, job: &Job, event: &'static str, data: serde_json::Value) {
        if task.notifies() {
            self.bus
                .publish(&job.user_id, event, &job.ref_id, with_kind(data, &job.kind));
        }
    }
}

pub use krya_core::events::with_kind;

/// Stores progress and publishes it, at most every 200 ms (and always the last step).
async fn report_progress(
    db: Db,
    bus: Bus,
    task: Arc<dyn Task>,
    job: Job,
    mut rx: mpsc::UnboundedReceiver<ProgressMsg>,
) {
    let mut last = Instant::now() - Duration::from_secs(1);
    let mut pending: Option<ProgressMsg> = None;
    loop {
        let msg = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await;
        let closed = matches!(msg, Ok(None));
        if let Ok(Some(mut m)) = msg {
            // A newer step without a picture keeps the one not sent yet.
            if m.preview.is_none() {
                m.preview = pending.take().and_then(|p| p.preview);
            }
            pending = Some(m);
        }
        let due = last.elapsed() >= Duration::from_millis(200)
            || pending
                .as_ref()
                .is_some_and(|p| p.step == p.total && p.stage.is_none())
            || closed;
        if due
            && let Some(ProgressMsg {
                step,
                total,
                preview,
                stage,
            }) = pending.take()
        {
            last = Instant::now();
            // The job's record counts its own steps; a stage before them (a download) is
            // told in events only.
            if stage.is_none() {
                let _ = sqlx::query("UPDATE jobs SET progress_step = $1, progress_total = $2 WHERE id = $3 AND status = 'processing'")
                    .bind(step as i64)
                    .bind(total as i64)
                    .bind(&job.id)
                    .execute(&db.pool)
                    .await;
                task.progressed(&db, &job, step, total).await;
            }
            if task.notifies() {
                let mut data = serde_json::json!({"status": "processing", "progress": {"step": step, "total": total}, "preview": preview});
                if let Some(s) = stage {
                    data["stage"] = s.into();
                }
                bus.publish(
                    &job.user_id,
                    "progress",
                    &job.ref_id,
                    with_kind(data, &job.kind),
                );
            }
        }
        if closed {
            return;
        }
    }
}

pub fn runner_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "krya".into());
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &crate::infra::ids::random_id()[..8]
    )
}
