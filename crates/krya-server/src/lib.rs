//! Krya's server: the REST API (seed §6) behind `krya serve`, and the job runner behind
//! `krya worker`.
//!
//! Layout: `config` (layered settings), `error` (the one error type and its table of
//! stable codes), `router` (the route table), `db` + `jobs` (the database and the durable
//! queue in it), `auth` (accounts, sessions, API keys), `generations` (the image API and
//! credits), `media` (uploads and image files), `blobs` (file or S3 storage), `worker`
//! (runs jobs on the engine), `events` (SSE), `webhooks`, `registry` (models and styles),
//! `realtime` (the live canvas over WebSocket), `studio` (the web studio's files).
//! `launch` serves on a given listener until a shutdown signal, so tests run the real
//! server on `127.0.0.1:0`.

pub mod account;
pub mod auth;
pub mod blobs;
pub mod config;
pub mod db;
pub mod error;
pub mod events;
pub mod feed;
pub mod generations;
pub mod jobs;
pub mod media;
pub mod models;
pub mod openapi;
pub mod realtime;
pub mod registry;
pub mod router;
pub mod studio;
pub mod throttle;
pub mod webhooks;
pub mod worker;

use std::future::Future;
use std::sync::Arc;

pub use config::Config;
pub use error::{ApiError, ErrorCode};

/// Shared state of a running server.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: db::Db,
    pub blobs: blobs::Blobs,
    pub bus: events::Bus,
    /// Failed logins per account and per client address.
    pub login_throttle: Arc<throttle::LoginThrottle>,
    /// Generations running in this process (to cancel them at once).
    pub running: worker::Running,
    /// Wakes the in-process worker when a job is submitted.
    pub wake: Arc<tokio::sync::Notify>,
    /// Becomes true when the server shuts down: long-lived streams (SSE) end then, so a
    /// graceful shutdown does not wait for clients that never hang up.
    pub shutting_down: tokio::sync::watch::Receiver<bool>,
    /// The web studio served outside `/api/` (empty: API only).
    pub studio: studio::Studio,
    /// Loaded models, shared by the job worker and the live canvas.
    pub cache: Arc<krya_engine::model::cache::ModelCache>,
    /// The live canvas (`None` when `realtime.enabled` is off).
    pub realtime: Option<realtime::Realtime>,
}

/// Connects the configured database (SQLite at `data_dir/krya.db` when none is set) and
/// runs its migrations.
pub async fn open_database(config: &Config) -> Result<db::Db, sqlx::Error> {
    let url = if config.database.url.is_empty() {
        format!(
            "sqlite://{}",
            config.server.data_dir.join("krya.db").display()
        )
    } else {
        config.database.url.clone()
    };
    db::Db::connect(&url).await
}

/// Opens the configured blob store: files under `data_dir/blobs` when `storage.url` is
/// empty, else an S3-compatible bucket (`s3://bucket/prefix`).
pub fn open_blobs(config: &Config) -> std::io::Result<blobs::Blobs> {
    if config.storage.url.is_empty() {
        Ok(Arc::new(blobs::FileStore::new(
            config.server.data_dir.join("blobs"),
        )))
    } else {
        Ok(Arc::new(
            blobs::S3Store::new(&config.storage).map_err(std::io::Error::other)?,
        ))
    }
}

async fn state(
    config: Config,
    studio: studio::Studio,
    shutting_down: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<AppState> {
    std::fs::create_dir_all(&config.server.data_dir)?;
    let db = open_database(&config)
        .await
        .map_err(std::io::Error::other)?;
    let bus = match db.backend {
        db::Backend::Postgres => events::Bus::postgres(db.clone(), &config.database.url)
            .await
            .map_err(std::io::Error::other)?,
        db::Backend::Sqlite => events::Bus::default(),
    };
    let cache = Arc::new(krya_engine::model::cache::ModelCache::new(
        config.models.cache_budget_mb * 1024 * 1024,
    ));
    let realtime = config.realtime.enabled.then(|| {
        realtime::Hub::new(
            config.realtime.clone(),
            config.server.data_dir.clone(),
            config.models.local.clone(),
            cache.clone(),
        )
    });
    Ok(AppState {
        blobs: open_blobs(&config)?,
        config: Arc::new(config),
        cache,
        realtime,
        db,
        bus,
        login_throttle: Default::default(),
        running: Default::default(),
        wake: Default::default(),
        shutting_down,
        studio,
    })
}

fn worker_for(state: &AppState) -> Arc<worker::Worker> {
    let c = &state.config;
    Arc::new(worker::Worker {
        db: state.db.clone(),
        blobs: state.blobs.clone(),
        bus: state.bus.clone(),
        data_dir: c.server.data_dir.clone(),
        local_models: c.models.local.clone(),
        config: c.jobs.clone(),
        id: worker::worker_id(),
        cache: state.cache.clone(),
        running: state.running.clone(),
        wake: state.wake.clone(),
        stopping: Default::default(),
    })
}

/// Starts delivering queued webhooks (every process does; the queue shares them out).
fn spawn_dispatcher(
    state: &AppState,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(webhooks::dispatch(
        state.db.clone(),
        format!("hooks-{}", worker::worker_id()),
        std::time::Duration::from_millis(state.config.jobs.poll_ms),
        state.config.webhooks.allow_private,
        stop,
    ))
}

/// Serves the API (and `studio`, the web UI, at every other path) on `listener` until
/// `shutdown` completes, then drains open requests. Jobs run in this process too unless
/// `jobs.in_process` is off.
pub async fn launch(
    listener: tokio::net::TcpListener,
    config: Config,
    studio: studio::Studio,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let state = state(config, studio, stop_rx).await?;
    let worker = state.config.jobs.in_process.then(|| worker_for(&state));
    let handle = worker.clone().map(|w| tokio::spawn(w.run()));
    let hooks_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hooks = spawn_dispatcher(&state, hooks_stop.clone());
    let realtime = state.realtime.clone();
    if let Some(r) = &realtime {
        r.start();
    }
    // Client addresses reach handlers (login throttling per address).
    let app = router::router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    // No Nagle delay: a live-canvas frame must not wait for the ACK of the message before.
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        })
        .await;
    hooks_stop.store(true, std::sync::atomic::Ordering::SeqCst);
    if let Some(r) = &realtime {
        // Render threads end after the frame in hand.
        r.stop();
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(12), hooks).await;
    if let (Some(w), Some(h)) = (worker, handle) {
        w.stop();
        // A job stuck inside a long step is left to its lease (it runs again elsewhere).
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), h).await;
    }
    served
}

/// Runs jobs only (`krya worker`), against the configured database and storage, until
/// `shutdown` completes; the job in hand is handed back to the queue.
pub async fn run_worker(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let state = state(config, studio::Studio::default(), stop_rx).await?;
    let w = worker_for(&state);
    let handle = tokio::spawn(w.clone().run());
    let hooks_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hooks = spawn_dispatcher(&state, hooks_stop.clone());
    shutdown.await;
    hooks_stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(12), hooks).await;
    w.stop();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), handle).await;
    Ok(())
}
