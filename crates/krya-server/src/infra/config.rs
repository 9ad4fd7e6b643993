//! Settings, layered: built-in defaults, then `krya.toml`, then `KRYA__SECTION__KEY`
//! environment variables, then command-line flags. Unknown keys are errors (a typo must not
//! silently fall back to a default). Secrets are redacted in `Debug`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: Server,
    pub accounts: Accounts,
    pub limits: Limits,
    pub database: Database,
    pub storage: Storage,
    pub models: Models,
    pub jobs: Jobs,
    pub webhooks: Webhooks,
    pub realtime: Realtime,
    pub log: Log,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// What to log: a level (`error`, `warn`, `info`, `debug`, `trace`) or per-target
    /// directives (`info,sqlx=warn,krya_server=debug`); `KRYA_LOG` overrides it.
    pub level: String,
    /// `plain` (one readable line per event) or `json` (one object per line).
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Plain,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Where the embedded database and files live.
    pub data_dir: PathBuf,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: u64,
    /// Largest upload (`POST /api/assets`), in bytes.
    pub max_upload_bytes: u64,
    /// Most pixels an uploaded image may have (checked before decoding).
    pub max_upload_pixels: u64,
    /// How often an open event stream re-checks its token, in seconds.
    pub stream_auth_check_secs: f64,
    /// A request's headers must arrive within this many seconds of the connection being
    /// ready for one (an idle keep-alive connection is closed after it too).
    pub header_read_timeout_secs: f64,
    /// A refresh token used again this many seconds after its rotation (two tabs
    /// refreshing at once) is refused without revoking every session; later reuse is
    /// treated as theft.
    pub refresh_reuse_secs: u64,
    /// A request's handler (reading its body included) must answer within this many
    /// seconds, else 408. Streams (events, the live canvas) are answered at once and run on.
    pub request_timeout_secs: f64,
    /// Session cookies carry `Secure` (browsers accept it on `http://localhost` too). Turn
    /// off only for plain-http hosts that are not loopback (the server warns at start).
    pub secure_cookies: bool,
    /// Proxies (addresses or ranges, `10.0.0.0/8`) whose `Forwarded`/`X-Forwarded-For`
    /// and `X-Forwarded-Proto` are believed; the client's address is the nearest hop that
    /// is not one of them.
    pub trusted_proxies: Vec<String>,
    /// Host names (with or without port) requests may name: a web page elsewhere cannot
    /// reach this server through DNS rebinding. Empty: `localhost`, `127.0.0.1` and `[::1]`
    /// when listening on loopback, any name otherwise.
    pub allowed_hosts: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Accounts {
    /// Who may register: `open` (anyone), `invite` (with an invite an admin made) or
    /// `closed` (only `krya users create`).
    pub registration: Registration,
}

/// Requests allowed per client address and, where signed in, per user (0: no limit);
/// beyond them 429 with `Retry-After`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Registrations per address per hour.
    pub register_per_hour: u32,
    /// Sign-in attempts per address per minute (failures are throttled besides).
    pub login_per_minute: u32,
    /// Uploads per user and per address per minute.
    pub uploads_per_minute: u32,
    /// Submitted jobs (images, batches, remixes, jobs of any kind, captures) per user and
    /// per address per minute.
    pub submissions_per_minute: u32,
    /// Storage per user (uploads and outputs), in MiB; uploads and submissions beyond it
    /// are refused.
    pub storage_mb_per_user: u64,
    /// Uploads no job used are removed after this many hours.
    pub unused_upload_hours: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    Open,
    Invite,
    Closed,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Database {
    /// Empty: SQLite at `data_dir/krya.db`. Or `postgres://user@host/db`.
    pub url: String,
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// Empty: files under `data_dir/blobs`. Or `s3://bucket/prefix`.
    pub url: String,
    pub endpoint: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |s: &str| if s.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("Storage")
            .field("url", &self.url)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &redact(&self.secret_access_key))
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Models {
    /// Memory for loaded models, in MiB; the least recently used is dropped beyond it.
    pub cache_budget_mb: u64,
    /// Models offered besides the curated list and `DATA_DIR/models.json`: name = source
    /// (a diffusers folder, a `.safetensors` checkpoint or a Hugging Face repo id).
    #[serde(default)]
    pub local: std::collections::BTreeMap<String, String>,
    /// Where models that are one file at a URL (the curated upscalers and face models) are
    /// fetched from instead: `https://host/path` from `MIRROR/host/path`, for hosts that
    /// reach the internet only through a mirror of their own. Files must still match their
    /// pinned sums. Empty: from the URL itself.
    #[serde(default)]
    pub mirror: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Jobs {
    /// Run jobs inside `krya serve`. Turn off when `krya worker` processes run them.
    pub in_process: bool,
    /// A running job's lease, in seconds: a job whose worker stops heartbeating is taken
    /// by another worker this long after the last heartbeat.
    pub lease_secs: f64,
    /// Attempts per job (crashes and transient errors) before it fails.
    pub max_attempts: u32,
    /// How often an idle worker looks for jobs, in milliseconds.
    pub poll_ms: u64,
    /// First retry delay after a transient error, in milliseconds (doubles each attempt).
    pub retry_base_ms: u64,
    /// The kinds of work this process runs (`image`, `webhook`, ...); empty: every kind. A
    /// CPU-only worker can leave GPU-only kinds to others.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Jobs that mostly wait on the network (webhooks, remote providers) run at once.
    #[serde(default = "default_io_slots")]
    pub io_slots: usize,
    /// Finished jobs nobody lists (webhook deliveries) are deleted after this many days.
    pub retention_days: u64,
}

fn default_io_slots() -> usize {
    4
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Webhooks {
    /// Allow webhook URLs that resolve to loopback, private or link-local addresses. Off by
    /// default: on a shared server they would let users probe the host's own network.
    pub allow_private: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Realtime {
    /// Serve the live canvas (`/ws/realtime`) from this process.
    pub enabled: bool,
    /// Threads rendering frames; each serves its sessions in turn.
    pub workers: usize,
    /// Open canvas sessions per user.
    pub sessions_per_user: usize,
    /// Largest canvas frame accepted, in bytes (larger: an error message; more than four
    /// times this closes the connection).
    pub max_frame_bytes: u64,
    /// Most pixels a canvas frame may have (checked before decoding).
    pub max_frame_pixels: u64,
    /// Quality of the JPEG frames sent back, 1 to 100.
    pub jpeg_quality: u8,
    /// Credits charged per minute of rendering (the frames' render time); 0 keeps the live
    /// canvas free. Either way each session's render time shows in usage.
    pub credits_per_minute: f64,
}

/// `KRYA_HOME`, else `$XDG_DATA_HOME/krya`, else `~/.local/share/krya`: the one default
/// of `krya serve`, `krya worker` and `krya models`.
fn default_data_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("KRYA_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_DATA_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(p).join("krya");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/krya")
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: Server {
                listen: "127.0.0.1:7860".parse().unwrap(),
                data_dir: default_data_dir(),
                max_body_bytes: 20 * 1024 * 1024,
                max_upload_bytes: 20 * 1024 * 1024,
                max_upload_pixels: 4096 * 4096,
                stream_auth_check_secs: 30.0,
                header_read_timeout_secs: 30.0,
                refresh_reuse_secs: 10,
                request_timeout_secs: 120.0,
                secure_cookies: true,
                trusted_proxies: Vec::new(),
                allowed_hosts: Vec::new(),
            },
            accounts: Accounts {
                registration: Registration::Open,
            },
            limits: Limits {
                register_per_hour: 10,
                login_per_minute: 30,
                uploads_per_minute: 60,
                submissions_per_minute: 60,
                storage_mb_per_user: 10 * 1024,
                unused_upload_hours: 24,
            },
            database: Database { url: String::new() },
            storage: Storage {
                url: String::new(),
                endpoint: String::new(),
                region: "us-east-1".into(),
                access_key_id: String::new(),
                secret_access_key: String::new(),
            },
            models: Models {
                cache_budget_mb: 8192,
                local: Default::default(),
                mirror: String::new(),
            },
            jobs: Jobs {
                in_process: true,
                lease_secs: 30.0,
                max_attempts: 3,
                poll_ms: 1000,
                retry_base_ms: 2000,
                kinds: Vec::new(),
                io_slots: 4,
                retention_days: 30,
            },
            webhooks: Webhooks {
                allow_private: false,
            },
            realtime: Realtime {
                enabled: true,
                workers: 1,
                sessions_per_user: 2,
                max_frame_bytes: 4 * 1024 * 1024,
                max_frame_pixels: 2048 * 2048,
                jpeg_quality: 80,
                credits_per_minute: 0.0,
            },
            log: Log {
                level: "info".into(),
                format: LogFormat::Plain,
            },
        }
    }
}

/// The commented example `krya default-config` prints; every key with its default.
pub const EXAMPLE: &str = r#"# Krya settings. Every key is optional; shown with its default.
# Override any key with an environment variable KRYA__SECTION__KEY (e.g. KRYA__SERVER__LISTEN),
# and some with flags (`krya serve --listen ... --data-dir ...`).

[server]
# Address to listen on.
listen = "127.0.0.1:7860"
# Where the embedded database (krya.db) and files (blobs/) live. Default: $KRYA_HOME,
# else ~/.local/share/krya.
# data_dir = "/var/lib/krya"
# Largest request body accepted, in bytes.
max_body_bytes = 20971520
# Largest upload (POST /api/assets), in bytes, and most pixels an uploaded image may have
# (read from its header before decoding).
max_upload_bytes = 20971520
max_upload_pixels = 16777216
# How often an open event stream (/api/events) re-checks its token, in seconds: a stream
# opened with a token that was since revoked or expired ends.
stream_auth_check_secs = 30.0
# A refresh token used again this many seconds after it was exchanged (two tabs refreshing at
# once) is refused without revoking the user's sessions; any later reuse revokes them all.
refresh_reuse_secs = 10
# A request must be read and answered within this many seconds, else 408 (a slow client
# cannot hold a handler). Event streams and the live canvas are answered at once and run on.
request_timeout_secs = 120.0
# A request's headers must arrive within this many seconds (a client sending them slowly, or
# a keep-alive connection left idle, is closed).
header_read_timeout_secs = 30.0
# Session cookies carry Secure (browsers accept it on http://localhost too). Turn it off only
# for a plain-http host that is not loopback; the server warns at start when it is off.
secure_cookies = true
# Proxies (addresses or ranges) whose Forwarded / X-Forwarded-For / X-Forwarded-Proto headers
# are believed, e.g. ["127.0.0.1", "10.0.0.0/8"]. Empty: the TCP peer is the client.
trusted_proxies = []
# Host names requests may name (against DNS rebinding), e.g. ["krya.example.com"]. Empty:
# localhost, 127.0.0.1 and [::1] when listening on loopback, any name otherwise.
allowed_hosts = []

[accounts]
# Who may register: "open" (anyone), "invite" (with an invite link an admin made) or "closed"
# (only `krya users create`). The first administrator is made with `krya users create --admin`
# or through the one-time setup link the server logs at start while it has none.
registration = "open"

[limits]
# Requests allowed per client address and, where signed in, per user; beyond them 429 with
# Retry-After. 0: no limit.
register_per_hour = 10
login_per_minute = 30
uploads_per_minute = 60
# Jobs submitted: images, batches, remixes, jobs of any kind, live-canvas captures.
submissions_per_minute = 60
# Storage per user (uploads and outputs), in MiB: uploads and submissions beyond it are
# refused until the user deletes something. 0: no quota.
storage_mb_per_user = 10240
# Uploads no job used are removed after this many hours. 0: kept.
unused_upload_hours = 24

[database]
# Empty: SQLite at data_dir/krya.db. For many workers: "postgres://krya@db-host/krya".
url = ""

[storage]
# Empty: files under data_dir/blobs. For many workers: "s3://bucket/prefix".
url = ""
# S3-compatible endpoint (empty: AWS), region and keys.
endpoint = ""
region = "us-east-1"
access_key_id = ""
secret_access_key = ""

[models]
# Memory for loaded models, in MiB; the least recently used model is dropped beyond it.
cache_budget_mb = 8192
# Fetch the one-file models (upscalers, face models: GitHub release assets) from a mirror
# instead: https://host/path from MIRROR/host/path. They must still match their sums.
mirror = ""

# Models offered besides the curated list (models/registry.toml) and those added with
# `krya models add` (DATA_DIR/models.json): name = folder, checkpoint or repo id. Also
# `krya serve --model NAME=SOURCE`.
[models.local]
# my-model = "/models/my-model.safetensors"

[jobs]
# Run generation jobs inside `krya serve`. Set false when `krya worker` processes (on GPU
# machines, sharing the PostgreSQL database and S3 storage) run them.
in_process = true
# Seconds a running job's lease lasts without a heartbeat; then another worker takes it.
lease_secs = 30.0
# Attempts per job (worker crashes and transient errors) before it fails and is refunded.
max_attempts = 3
# How often an idle worker looks for new jobs, in milliseconds.
poll_ms = 1000
# First retry delay after a transient error, in milliseconds; doubles each attempt.
retry_base_ms = 2000
# The kinds of work this process runs ("image", "webhook", ...); empty: every kind.
kinds = []
# Jobs that mostly wait on the network (webhook deliveries, remote providers) run at once.
io_slots = 4
# Finished jobs nobody lists (webhook deliveries) are deleted after this many days. 0: kept.
retention_days = 30

[webhooks]
# Allow webhook URLs on loopback, private or link-local addresses (refused by default: on a
# shared server they would let users reach the host's own network).
allow_private = false

[realtime]
# Serve the live canvas (WebSocket /ws/realtime) from this process.
enabled = true
# Threads rendering frames; each serves the sessions with new input in turn.
workers = 1
# Open canvas sessions per user.
sessions_per_user = 2
# Largest canvas frame accepted, in bytes (a larger one gets an error message; a message over
# four times this closes the connection), and most pixels it may have.
max_frame_bytes = 4194304
max_frame_pixels = 4194304
# Quality of the JPEG frames sent back, 1 to 100.
jpeg_quality = 80
# Credits per minute of rendering (the time frames take to render, settled every few seconds
# and when a session ends); 0 keeps the live canvas free. Usage shows the minutes either way.
credits_per_minute = 0.0

[log]
# What to log: a level (error, warn, info, debug, trace) or per-target directives such as
# "info,sqlx=warn,krya_server=debug". The KRYA_LOG environment variable overrides it.
level = "info"
# "plain" (a readable line per event) or "json" (an object per line, for log collectors).
format = "plain"
"#;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0}: {1}")]
    Parse(String, String),
}

/// Values set on the command line (highest precedence).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    /// `--model NAME=SOURCE` flags.
    pub models: Vec<(String, String)>,
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

impl Config {
    /// Builds the settings from defaults, `file` (if given), `env` (pairs such as
    /// `KRYA__SERVER__LISTEN=...`; other names are ignored) and `flags`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = toml::Table::try_from(Config::default())
            .map_err(|e| ConfigError::Parse("defaults".into(), e.to_string()))?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::Read(path.to_path_buf(), e))?;
            let t: toml::Table = text.parse().map_err(|e: toml::de::Error| {
                ConfigError::Parse(path.display().to_string(), e.to_string())
            })?;
            merge(&mut table, t);
        }
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("KRYA__") else {
                continue;
            };
            let parts: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
            let [section, key] = parts.as_slice() else {
                return Err(ConfigError::Parse(
                    name.clone(),
                    "expected KRYA__SECTION__KEY".into(),
                ));
            };
            // Numbers and booleans as TOML reads them; anything else as a string.
            let v = format!("v = {value}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(value));
            let mut t = toml::Table::new();
            let mut inner = toml::Table::new();
            inner.insert(key.clone(), v);
            t.insert(section.clone(), toml::Value::Table(inner));
            merge(&mut table, t);
        }
        let mut config: Config = table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse("settings".into(), e.to_string()))?;
        if let Some(l) = flags.listen {
            config.server.listen = l;
        }
        if let Some(d) = &flags.data_dir {
            config.server.data_dir = d.clone();
        }
        config.models.local.extend(flags.models.iter().cloned());
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_is_valid_and_matches_the_defaults() {
        let parsed: toml::Table = EXAMPLE.parse().unwrap();
        let mut table = toml::Table::try_from(Config::default()).unwrap();
        merge(&mut table, parsed);
        let c: Config = table.try_into().unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("krya.toml");
        std::fs::write(&file, "[server]\nlisten = \"127.0.0.1:9000\"\nmax_body_bytes = 10\n[database]\nurl = \"postgres://a@b/c\"\n").unwrap();
        let env = vec![
            ("KRYA__SERVER__MAX_BODY_BYTES".to_string(), "20".to_string()),
            (
                "KRYA__STORAGE__SECRET_ACCESS_KEY".to_string(),
                "hunter2".to_string(),
            ),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        let flags = Overrides {
            listen: Some("127.0.0.1:9100".parse().unwrap()),
            data_dir: Some("/tmp/k".into()),
            models: vec![("tiny".into(), "/m/tiny".into())],
        };
        let c = Config::load(Some(&file), env, &flags).unwrap();
        assert_eq!(c.server.listen.port(), 9100); // flag beats file
        assert_eq!(c.server.max_body_bytes, 20); // env beats file
        assert_eq!(c.database.url, "postgres://a@b/c"); // file beats default
        assert_eq!(c.models.cache_budget_mb, 8192); // default
        assert_eq!(c.server.data_dir, PathBuf::from("/tmp/k"));
        assert_eq!(c.models.local["tiny"], "/m/tiny");
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("hunter2") && debug.contains("<redacted>"),
            "{debug}"
        );
    }

    #[test]
    fn typos_and_bad_values_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("krya.toml");
        std::fs::write(&file, "[server]\nlisen = \"127.0.0.1:9000\"\n").unwrap();
        let e = Config::load(Some(&file), vec![], &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("lisen"), "{e}");
        let e = Config::load(
            None,
            vec![("KRYA__SERVER__LISTEN".into(), "nowhere".into())],
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("listen") || e.contains("socket"), "{e}");
        let e = Config::load(
            Some(Path::new("/nonexistent/krya.toml")),
            vec![],
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("/nonexistent/krya.toml"), "{e}");
    }
}
