//! Krya's server: the REST API (seed §6) behind `krya serve`, and the job runner behind
//! `krya worker`.
//!
//! Layout, by part:
//! - HTTP: `router` (the route table, and so the OpenAPI document), the handlers of `auth`
//!   (accounts, sessions, API keys), `account`, `generations` (the image API), `jobs::http`
//!   (every kind's jobs), `models`, `media` (uploads and image files), `feed`, `events`
//!   (SSE), `realtime` (the live canvas over WebSocket), `studio` (the web studio's files);
//! - work: `tasks` (the kinds of work, one `Task` each), `runner` (runs any kind: claims,
//!   leases, retries, credits, events, webhooks), `webhooks` (signing, the outbox);
//! - persistence: `db` (the database and its migrations), `jobs` (the job record and the
//!   durable queue), `blobs` (file or S3 storage), `registry` (models and styles);
//! - infrastructure: `config` (layered settings), `error` (the one error type and its
//!   table of stable codes), `ids` (row ids and time), `credits` (allowances, usage,
//!   refunds), `throttle`.
//! `launch` serves on a given listener until a shutdown signal, so tests run the real
//! server on `127.0.0.1:0`.

pub mod account;
pub mod auth;
pub mod blobs;
pub mod config;
pub mod credits;
pub mod db;
pub mod error;
pub mod events;
pub mod feed;
pub mod generations;
pub mod ids;
pub mod jobs;
pub mod media;
pub mod models;
pub mod openapi;
pub mod realtime;
pub mod registry;
pub mod router;
pub mod runner;
pub mod studio;
pub mod tasks;
pub mod throttle;
pub mod webhooks;

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
    /// Jobs running in this process (to cancel them at once).
    pub running: runner::Running,
    /// Wakes the in-process runner when a job is submitted.
    pub wake: Arc<runner::Wake>,
    /// The kinds of work this server knows.
    pub tasks: tasks::Registry,
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

impl AppState {
    /// What tasks may use.
    pub fn services(&self) -> tasks::Services {
        tasks::Services {
            db: self.db.clone(),
            blobs: self.blobs.clone(),
            cache: self.cache.clone(),
            data_dir: self.config.server.data_dir.clone(),
            local_models: self.config.models.local.clone(),
            allow_private_webhooks: self.config.webhooks.allow_private,
        }
    }
}

async fn state(
    config: Config,
    studio: studio::Studio,
    tasks: tasks::Registry,
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
    let blobs = open_blobs(&config)?;
    generations::upgrade::run(&db, &*blobs)
        .await
        .map_err(std::io::Error::other)?;
    Ok(AppState {
        blobs,
        config: Arc::new(config),
        cache,
        realtime,
        db,
        bus,
        login_throttle: Default::default(),
        running: Default::default(),
        wake: Default::default(),
        tasks,
        shutting_down,
        studio,
    })
}

/// The runner for the kinds this process runs (`jobs.kinds`; all when empty).
fn runner_for(state: &AppState) -> Arc<runner::Runner> {
    Arc::new(runner::Runner {
        services: state.services(),
        bus: state.bus.clone(),
        tasks: state.tasks.restricted(&state.config.jobs.kinds),
        config: state.config.jobs.clone(),
        id: runner::runner_id(),
        running: state.running.clone(),
        wake: state.wake.clone(),
        stopping: Default::default(),
    })
}

/// Serves the API (and `studio`, the web UI, at every other path) on `listener` until
/// `shutdown` completes, then drains open requests. Jobs run in this process too unless
/// `jobs.in_process` is off (webhook deliveries always do).
pub async fn launch(
    listener: tokio::net::TcpListener,
    config: Config,
    studio: studio::Studio,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    launch_with(listener, config, studio, tasks::builtin(), shutdown).await
}

/// `launch` with these kinds of work (tests add kinds of their own).
pub async fn launch_with(
    listener: tokio::net::TcpListener,
    mut config: Config,
    studio: studio::Studio,
    tasks: tasks::Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if !config.jobs.in_process {
        // Deliveries only: the work itself is left to `krya worker` processes.
        config.jobs.kinds = vec![tasks::webhook::KIND.to_string()];
    }
    let state = state(config, studio, tasks, stop_rx).await?;
    let runner = runner_for(&state);
    let handle = tokio::spawn(runner.clone().run());
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
    if let Some(r) = &realtime {
        // Render threads end after the frame in hand.
        r.stop();
    }
    runner.stop();
    // A job stuck inside a long step is left to its lease (it runs again elsewhere).
    let _ = tokio::time::timeout(std::time::Duration::from_secs(12), handle).await;
    served
}

/// Runs jobs only (`krya worker`), against the configured database and storage, until
/// `shutdown` completes; the job in hand is handed back to the queue.
pub async fn run_worker(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    run_worker_with(config, tasks::builtin(), shutdown).await
}

/// `run_worker` with these kinds of work.
pub async fn run_worker_with(
    config: Config,
    tasks: tasks::Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let state = state(config, studio::Studio::default(), tasks, stop_rx).await?;
    let runner = runner_for(&state);
    let handle = tokio::spawn(runner.clone().run());
    shutdown.await;
    runner.stop();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(12), handle).await;
    Ok(())
}
