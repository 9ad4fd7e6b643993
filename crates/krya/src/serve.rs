//! `krya serve`: the API server on the embedded default (SQLite and files under the data
//! directory) or the configured database and storage.

use std::net::SocketAddr;
use std::path::PathBuf;

use krya_server::config::{Config, Overrides};

use crate::CliError;

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Where the database and files live.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Settings file (default: DATA_DIR/krya.toml when it exists).
    #[arg(long)]
    config: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<(), CliError> {
    let flags = Overrides {
        listen: a.listen,
        data_dir: a.data_dir.clone(),
    };
    let file = match &a.config {
        Some(p) => Some(p.clone()),
        None => {
            let dir = a
                .data_dir
                .clone()
                .unwrap_or_else(|| Config::default().server.data_dir);
            Some(dir.join("krya.toml")).filter(|p| p.is_file())
        }
    };
    let config = Config::load(file.as_deref(), std::env::vars(), &flags)
        .map_err(|e| CliError::user(e.to_string()))?;
    std::fs::create_dir_all(&config.server.data_dir).map_err(|e| {
        CliError::user(format!(
            "cannot create data directory {}: {e}",
            config.server.data_dir.display()
        ))
    })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError {
            message: e.to_string(),
            status: 1,
        })?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .map_err(|e| {
                CliError::user(format!("cannot listen on {}: {e}", config.server.listen))
            })?;
        let addr = listener.local_addr().map_err(|e| CliError {
            message: e.to_string(),
            status: 1,
        })?;
        println!("Krya listening on http://{addr}");
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        krya_server::launch(listener, config, shutdown)
            .await
            .map_err(|e| CliError {
                message: e.to_string(),
                status: 1,
            })
    })
}
