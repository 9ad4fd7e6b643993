//! `krya serve` (the API server), `krya worker` (jobs only), `krya migrate` and
//! `krya users create`: all on the embedded default (SQLite and files under the data
//! directory) or the configured database and storage.

use std::net::SocketAddr;
use std::path::PathBuf;

use krya_server::infra::config::{Config, Overrides};

use crate::CliError;

/// Where settings come from.
#[derive(clap::Args, Default)]
pub struct Settings {
    /// Where the database, files and registered models live.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Settings file (default: DATA_DIR/krya.toml when it exists).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
}

impl Settings {
    /// The data directory `krya serve` would use with these settings.
    pub fn data_dir(&self) -> Result<PathBuf, CliError> {
        Ok(self.config()?.server.data_dir)
    }

    /// The settings `krya serve` would run with.
    pub fn config(&self) -> Result<Config, CliError> {
        resolve(self, None, vec![])
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Offer a model under NAME: a diffusers folder, a .safetensors checkpoint or a Hugging
    /// Face repo id (repeatable).
    #[arg(long = "model", value_name = "NAME=SOURCE", value_parser = parse_model)]
    models: Vec<(String, String)>,
    #[command(flatten)]
    settings: Settings,
}

fn parse_model(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, source))
            if !name.is_empty()
                && !source.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) =>
        {
            Ok((name.to_string(), source.to_string()))
        }
        _ => Err(format!(
            "expected NAME=SOURCE (a name of letters, digits, '-', '_', '.'), got {s:?}"
        )),
    }
}

#[derive(clap::Subcommand)]
pub enum Users {
    /// Create an account (`--admin` for an administrator).
    Create {
        #[arg(long)]
        email: String,
        #[arg(long)]
        name: String,
        /// The password (or set KRYA_PASSWORD).
        #[arg(long, env = "KRYA_PASSWORD", hide_env_values = true)]
        password: String,
        #[arg(long)]
        admin: bool,
        #[command(flatten)]
        settings: Settings,
    },
}

fn internal(e: impl std::fmt::Display) -> CliError {
    CliError {
        message: e.to_string(),
        status: 1,
    }
}

/// The settings: defaults, then the settings file, then `KRYA__…` variables, then flags.
fn resolve(
    s: &Settings,
    listen: Option<SocketAddr>,
    models: Vec<(String, String)>,
) -> Result<Config, CliError> {
    let flags = Overrides {
        listen,
        data_dir: s.data_dir.clone(),
        models,
    };
    let file = match &s.config {
        Some(p) => Some(p.clone()),
        None => {
            let dir = s
                .data_dir
                .clone()
                .unwrap_or_else(|| Config::default().server.data_dir);
            Some(dir.join("krya.toml")).filter(|p| p.is_file())
        }
    };
    Config::load(file.as_deref(), std::env::vars(), &flags)
        .map_err(|e| CliError::user(e.to_string()))
}

/// `resolve`, with the data directory created.
fn load(
    s: &Settings,
    listen: Option<SocketAddr>,
    models: Vec<(String, String)>,
) -> Result<Config, CliError> {
    let config = resolve(s, listen, models)?;
    std::fs::create_dir_all(&config.server.data_dir).map_err(|e| {
        CliError::user(format!(
            "cannot create data directory {}: {e}",
            config.server.data_dir.display()
        ))
    })?;
    Ok(config)
}

/// Logs to stderr through `tracing`: the server's requests and jobs, and what sqlx and
/// object_store report, at `log.level` (or `KRYA_LOG`), as plain lines or JSON.
fn init_logging(c: &krya_server::infra::config::Log) -> Result<(), CliError> {
    use krya_server::infra::config::LogFormat;
    use tracing_subscriber::EnvFilter;
    let (what, directives) = match std::env::var("KRYA_LOG") {
        Ok(v) if !v.is_empty() => ("KRYA_LOG", v),
        _ => ("log.level", c.level.clone()),
    };
    let filter = EnvFilter::try_new(&directives)
        .map_err(|e| CliError::user(format!("{what}: {directives:?} is not a log level ({e})")))?;
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second call (tests run several servers in one process) keeps the first.
    let _ = match c.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Plain => builder.try_init(),
    };
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(internal)
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

pub fn run(a: Args) -> Result<(), CliError> {
    let mut models = a.models;
    // A folder or file given relative to here keeps working whatever the server's cwd.
    for (_, source) in &mut models {
        if let Ok(p) = std::fs::canonicalize(&*source) {
            *source = p.display().to_string();
        }
    }
    let config = load(&a.settings, a.listen, models)?;
    init_logging(&config.log)?;
    let rt = runtime()?;
    let result = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .map_err(|e| {
                CliError::user(format!("cannot listen on {}: {e}", config.server.listen))
            })?;
        let addr = listener.local_addr().map_err(internal)?;
        println!("Krya listening on http://{addr}");
        let studio = krya_server::http::studio::Studio::new(krya_studio::FILES);
        krya_server::launch(listener, config, studio, shutdown_signal())
            .await
            .map_err(internal)
    });
    // An engine step still running on a blocking thread must not keep the process alive.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

pub fn worker(s: Settings) -> Result<(), CliError> {
    let config = load(&s, None, vec![])?;
    init_logging(&config.log)?;
    let rt = runtime()?;
    let result = rt.block_on(async move {
        println!("Krya worker running jobs from {}", describe_db(&config));
        krya_server::run_worker(config, shutdown_signal())
            .await
            .map_err(internal)
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

fn describe_db(c: &Config) -> String {
    if c.database.url.is_empty() {
        c.server.data_dir.join("krya.db").display().to_string()
    } else {
        // Never print credentials.
        let url = &c.database.url;
        match (url.find("://"), url.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!("{}://…{}", &url[..s], &url[at..]),
            _ => url.clone(),
        }
    }
}

pub fn migrate(s: Settings) -> Result<(), CliError> {
    let config = load(&s, None, vec![])?;
    init_logging(&config.log)?;
    runtime()?.block_on(async move {
        krya_server::open_database(&config)
            .await
            .map_err(|e| CliError::user(format!("{}: {e}", describe_db(&config))))?;
        println!("database {} is up to date", describe_db(&config));
        Ok(())
    })
}

pub fn users(cmd: Users) -> Result<(), CliError> {
    match cmd {
        Users::Create {
            email,
            name,
            password,
            admin,
            settings,
        } => {
            let config = load(&settings, None, vec![])?;
            runtime()?.block_on(async move {
                let db = krya_server::open_database(&config)
                    .await
                    .map_err(|e| CliError::user(format!("{}: {e}", describe_db(&config))))?;
                let user =
                    krya_server::http::auth::create_user(&db, &email, &name, &password, admin)
                        .await
                        .map_err(|e| CliError::user(e.message))?;
                println!(
                    "created {}{} ({})",
                    user.email,
                    if user.is_admin { " (admin)" } else { "" },
                    user.handle
                );
                Ok(())
            })
        }
    }
}
