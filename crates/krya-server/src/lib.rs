//! Krya's server: the REST API (seed §6) behind `krya serve`.
//!
//! Layout: `config` (layered settings: defaults, `krya.toml`, `KRYA__SECTION__KEY`
//! environment, flags), `error` (the one error type and its table of stable codes),
//! `router` (the route table). `launch` serves on a given listener until a shutdown signal,
//! so tests run the real server on `127.0.0.1:0`.

pub mod auth;
pub mod config;
pub mod db;
pub mod error;
pub mod router;
pub mod throttle;

use std::future::Future;

pub use config::Config;
pub use error::{ApiError, ErrorCode};

/// Shared state of a running server.
#[derive(Clone)]
pub struct AppState {
    pub config: std::sync::Arc<Config>,
    pub db: db::Db,
    /// Failed logins per account and per client address.
    pub login_throttle: std::sync::Arc<throttle::LoginThrottle>,
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

/// Serves the API on `listener` until `shutdown` completes, then drains open requests.
pub async fn launch(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let db = open_database(&config)
        .await
        .map_err(std::io::Error::other)?;
    let state = AppState {
        config: std::sync::Arc::new(config),
        db,
        login_throttle: Default::default(),
    };
    // Client addresses reach handlers (login throttling per address).
    let app = router::router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
