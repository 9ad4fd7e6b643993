//! Krya's server: the REST API (seed §6) behind `krya serve`, and the job runner behind
//! `krya worker`.
//!
//! The tree, by part:
//! - `http/`: the route table (`router`, and so the OpenAPI document `openapi`) and the
//!   handlers of accounts and sessions (`auth`, `account`), models, uploads and files
//!   (`media`), the feed, event streams (`events`) and the studio's files (`studio`);
//! - `tasks/`: the kinds of work (one `Task` each: `image`, `webhook`) and the `runner`
//!   that runs any kind (claims, leases, retries, credits, events, the webhook outbox);
//! - `persistence/`: the database and its migrations (`db`), file or S3 storage
//!   (`blobs`), the model and style registry (`registry`);
//! - `infra/`: layered settings (`config`), the one error type and its table of codes
//!   (`error`), row ids and time (`ids`), credits, login throttling;
//! - features that span parts, each a folder with its record, its handlers and its
//!   protocol: `jobs/` (the job record, the durable queue, the jobs API), `generations/`
//!   (the image API), `realtime/` (the live canvas over WebSocket).
//!
//! `launch` serves on a given listener until a shutdown signal, so tests run the real
//! server on `127.0.0.1:0`.

pub mod generations;
pub mod http;
pub mod infra;
pub mod jobs;
pub mod persistence;
pub mod realtime;
pub mod tasks;

use std::future::Future;
use std::sync::Arc;

use http::{events, router, studio};
pub use infra::config::Config;
pub use infra::error::{ApiError, ErrorCode};
use infra::throttle;
use persistence::{blobs, db};
use tasks::runner;

/// Shared state of a running server.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: db::Db,
    pub blobs: blobs::Blobs,
    pub bus: events::Bus,
    /// The Host allow-list and trusted proxies, parsed.
    pub guard: Arc<http::guard::Guard>,
    /// Request limits per address and user (`[limits]`).
    pub limits: Arc<http::limits::Limits>,
    /// Requests on users' behalf.
    pub outbound: infra::outbound::Outbound,
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
    /// Tile pyramids' indexes read lately (by blob key), so a viewer's tiles cost one read
    /// each.
    pub pyramids: http::tiles::Indexes,
    /// Segmentation models and the latest image embeddings (`POST /api/segment`).
    pub segments: Arc<http::segment::SegmentCache>,
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
            model_mirror: self.config.models.mirror.clone(),
            allow_private_webhooks: self.config.webhooks.allow_private,
            outbound: self.outbound.clone(),
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
    let stale = tasks::enhance::remove_stale_temp_files(
        &config.server.data_dir,
        std::time::Duration::from_secs(86_400),
    );
    if stale > 0 {
        tracing::info!(
            files = stale,
            "removed temporary outputs left by a stopped process"
        );
    }
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
    let guard = Arc::new(http::guard::Guard::new(&config.server).map_err(std::io::Error::other)?);
    db.prepare_search().await;
    let blobs = open_blobs(&config)?;
    let limits = Arc::new(http::limits::Limits::new(&config.limits));
    let outbound = infra::outbound::Outbound::new(
        config.webhooks.allow_private,
        std::time::Duration::from_secs(10),
    );
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
        outbound,
        guard,
        limits,
        login_throttle: Default::default(),
        pyramids: Default::default(),
        segments: Default::default(),
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
    if !config.server.secure_cookies && !listener.local_addr()?.ip().is_loopback() {
        tracing::warn!(
            "server.secure_cookies is off on a non-loopback address: session cookies travel without Secure; put TLS in front and turn it back on"
        );
    }
    let listen = listener.local_addr()?;
    let state = state(config, studio, tasks, stop_rx).await?;
    http::signup::prepare_setup(&state.db, &state.config.server.data_dir, listen)
        .await
        .map_err(std::io::Error::other)?;
    let runner = runner_for(&state);
    let handle = tokio::spawn(runner.clone().run());
    // Uploads no job used are removed, and finished deliveries past their retention: at
    // start, then hourly.
    let sweeper = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
            loop {
                every.tick().await;
                if let Err(e) = http::storage::sweep(&state).await {
                    tracing::warn!(error = %e.message, "sweeping unused uploads");
                }
                if let Err(e) = http::storage::prune_jobs(&state).await {
                    tracing::warn!(error = %e.message, "pruning finished jobs");
                }
            }
        })
    };
    let realtime = state.realtime.clone();
    if let Some(r) = &realtime {
        r.start();
    }
    let header_timeout =
        std::time::Duration::from_secs_f64(state.config.server.header_read_timeout_secs.max(0.1));
    http::serve::serve(
        listener,
        router::router(state),
        header_timeout,
        async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        },
    )
    .await;
    if let Some(r) = &realtime {
        // Render threads end after the frame in hand.
        r.stop();
    }
    runner.stop();
    sweeper.abort();
    // A job stuck inside a long step is left to its lease (it runs again elsewhere).
    let _ = tokio::time::timeout(std::time::Duration::from_secs(12), handle).await;
    Ok(())
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
