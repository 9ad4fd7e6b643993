//! `krya models`: the models this machine offers, kept in `DATA_DIR/models.json`, the very
//! file `krya serve` reads (both resolve the data directory the same way: `--data-dir`,
//! then `krya.toml`, then `KRYA__SERVER__DATA_DIR`, `KRYA_HOME`, `$XDG_DATA_HOME/krya`,
//! `~/.local/share/krya`), and the Hugging Face cache.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use krya_engine::model::{ModelSource, download, hub};
use krya_server::persistence::registry;

use crate::CliError;
use crate::serve::Settings;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// List registered models and models in the Hugging Face cache, with sizes.
    List,
    /// Register NAME for a folder, a checkpoint file, a Hugging Face repo id, or the URL of
    /// one weights file (downloaded now into DATA_DIR/models/).
    Add { name: String, source: String },
    /// Forget a registered name (files are left alone).
    Rm { name: String },
    /// Download a Hugging Face repo (owner/name[@revision]) into the HF cache, or a
    /// listed model that is one file (such as realesrgan-x4plus) into DATA_DIR/models/:
    /// resumable, verified against the sha256 sums the hub or the list gives.
    Pull { repo: String },
}

pub fn load_registry(data_dir: &Path) -> Result<BTreeMap<String, String>, CliError> {
    registry::read_local(data_dir).map_err(CliError::user)
}

fn save_registry(data_dir: &Path, reg: &BTreeMap<String, String>) -> Result<(), CliError> {
    registry::write_local(data_dir, reg).map_err(CliError::user)
}

/// What `--model M` names: a name registered in `data_dir` first, then a path or repo id.
pub fn resolve(spec: &str, settings: &Settings) -> Result<(String, ModelSource), CliError> {
    let reg = load_registry(&settings.data_dir()?)?;
    if let Some(src) = reg.get(spec) {
        return Ok((
            spec.to_string(),
            ModelSource::parse(src).map_err(CliError::from)?,
        ));
    }
    let source = ModelSource::parse(spec)?;
    let name = match &source {
        ModelSource::Folder(p) | ModelSource::Checkpoint(p) => p
            .file_name()
            .map(|n| {
                n.to_string_lossy()
                    .trim_end_matches(".safetensors")
                    .to_string()
            })
            .unwrap_or_else(|| spec.to_string()),
        ModelSource::Hub { repo, .. } => repo.clone(),
    };
    Ok((name, source))
}

/// Downloads a repo with a progress bar (and a line per file when stderr is not a terminal).
pub fn pull_with_progress(repo: &str, revision: &str) -> Result<PathBuf, CliError> {
    use std::io::IsTerminal;
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} (eta {eta})",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    let tty = std::io::stderr().is_terminal();
    let mut current = String::new();
    let mut last: Option<(String, u64)> = None;
    let result = hub::pull(repo, revision, &mut |p| {
        if p.file != current {
            if let Some((f, n)) = last.take()
                && !tty
            {
                eprintln!("pulled {f} ({})", human(n));
            }
            current = p.file.to_string();
            bar.set_message(format!("[{}/{}] {}", p.file_index + 1, p.files, p.file));
            bar.set_length(p.total.unwrap_or(0));
        }
        bar.set_position(p.done);
        last = Some((p.file.to_string(), p.done));
    });
    bar.finish_and_clear();
    if let (Some((f, n)), false) = (last, tty) {
        eprintln!("pulled {f} ({})", human(n));
    }
    Ok(result?)
}

/// The weights file of a model that is one file, downloaded first (with a progress bar, or
/// a line when stderr is not a terminal) when it is a URL's and not here yet.
pub fn fetch_with_progress(
    config: &krya_server::infra::config::Config,
    entry: &registry::ModelEntry,
) -> Result<PathBuf, CliError> {
    use std::io::IsTerminal;
    let bar = indicatif::ProgressBar::new(entry.size.unwrap_or(0)).with_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} (eta {eta})",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    bar.set_message(entry.id.clone());
    let mut fetched = None;
    let (data_dir, mirror) = (&config.server.data_dir, &config.models.mirror);
    let result = registry::local_file(data_dir, entry, mirror, &mut |done, total| {
        if let Some(t) = total {
            bar.set_length(t);
        }
        bar.set_position(done);
        fetched = Some(done);
        Ok(())
    });
    bar.finish_and_clear();
    if let (Some(n), false, Ok(p)) = (fetched, std::io::stderr().is_terminal(), &result) {
        eprintln!("downloaded {} ({}) to {}", entry.id, human(n), p.display());
    }
    Ok(result?)
}

fn dir_size(p: &Path) -> u64 {
    let Ok(meta) = std::fs::metadata(p) else {
        return 0;
    };
    if meta.is_file() {
        return meta.len();
    }
    std::fs::read_dir(p)
        .map(|rd| rd.flatten().map(|e| dir_size(&e.path())).sum())
        .unwrap_or(0)
}

fn human(bytes: u64) -> String {
    let mut v = bytes as f64;
    for unit in ["B", "KB", "MB", "GB"] {
        if v < 1024.0 {
            return format!("{v:.1} {unit}");
        }
        v /= 1024.0;
    }
    format!("{v:.1} TB")
}

pub fn run(args: Args) -> Result<(), CliError> {
    let config = args.settings.config()?;
    let data_dir = config.server.data_dir.clone();
    match args.command {
        Command::List => {
            let reg = load_registry(&data_dir)?;
            println!("{:<28} {:>10}  SOURCE", "NAME", "SIZE");
            let file_size = |url: &str| match registry::url_file(&data_dir, url) {
                Ok(p) if p.is_file() => human(dir_size(&p)),
                _ => "not pulled".into(),
            };
            for (name, src) in &reg {
                if download::is_url(src) {
                    println!("{name:<28} {:>10}  {src}", file_size(src));
                    continue;
                }
                let size = match ModelSource::parse(src) {
                    Ok(ModelSource::Folder(p)) | Ok(ModelSource::Checkpoint(p)) => {
                        human(dir_size(&p))
                    }
                    Ok(ModelSource::Hub { repo, .. }) => {
                        let d = hub::repo_dir(&repo);
                        if d.is_dir() {
                            human(dir_size(&d.join("blobs")))
                        } else {
                            "not pulled".into()
                        }
                    }
                    Err(_) => "missing".into(),
                };
                println!("{name:<28} {size:>10}  {src}");
            }
            // The listed upscalers and face models (one file each, pulled on first use).
            for m in registry::list(&data_dir, &BTreeMap::new()).map_err(CliError::user)? {
                if !m.local && download::is_url(&m.source) {
                    println!("{:<28} {:>10}  {}", m.id, file_size(&m.source), m.name);
                }
            }
            // Repos that diffusers or `krya models pull` put in the shared cache.
            if let Ok(rd) = std::fs::read_dir(hub::cache_dir()) {
                let mut repos: Vec<_> = rd
                    .flatten()
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_prefix("models--"))
                            .map(|n| (n.replacen("--", "/", 1), e.path()))
                    })
                    .filter(|(repo, _)| !reg.values().any(|v| v == repo))
                    .collect();
                repos.sort();
                for (repo, path) in repos {
                    println!(
                        "{repo:<28} {:>10}  (Hugging Face cache)",
                        human(dir_size(&path.join("blobs")))
                    );
                }
            }
            Ok(())
        }
        Command::Add { name, source } => {
            if name.is_empty() || name.contains('/') || Path::new(&name).exists() {
                return Err(CliError::user(format!(
                    "{name:?} cannot be a model name: use a short name without '/' that is not a path"
                )));
            }
            if download::is_url(&source) {
                // A curated file's URL keeps its pins.
                let curated = registry::list(&data_dir, &BTreeMap::new())
                    .map_err(CliError::user)?
                    .into_iter()
                    .find(|m| !m.local && m.source == source);
                let entry = registry::ModelEntry {
                    id: name.clone(),
                    source: source.clone(),
                    sha256: curated.as_ref().and_then(|c| c.sha256.clone()),
                    size: curated.as_ref().and_then(|c| c.size),
                    ..Default::default()
                };
                let path = fetch_with_progress(&config, &entry)?;
                let mut reg = load_registry(&data_dir)?;
                reg.insert(name.clone(), source.clone());
                save_registry(&data_dir, &reg)?;
                println!("added {name} -> {source} ({})", path.display());
                return Ok(());
            }
            let parsed = ModelSource::parse(&source)?;
            let stored = match parsed {
                ModelSource::Folder(p) | ModelSource::Checkpoint(p) => std::fs::canonicalize(&p)
                    .unwrap_or(p)
                    .to_string_lossy()
                    .into_owned(),
                ModelSource::Hub { .. } => source,
            };
            let mut reg = load_registry(&data_dir)?;
            reg.insert(name.clone(), stored.clone());
            save_registry(&data_dir, &reg)?;
            println!("added {name} -> {stored}");
            Ok(())
        }
        Command::Pull { repo } => {
            if !repo.contains('/')
                && let Some(entry) = registry::find(&data_dir, &config.models.local, &repo)
                    .map_err(CliError::user)?
                && download::is_url(&entry.source)
            {
                let path = fetch_with_progress(&config, &entry)?;
                println!("{}", path.display());
                return Ok(());
            }
            let (repo, revision) = match ModelSource::parse(&repo)? {
                ModelSource::Hub { repo, revision } => (repo, revision),
                _ => {
                    return Err(CliError::user(format!(
                        "{repo:?} is a local path; pull takes a Hugging Face repo id (owner/name)"
                    )));
                }
            };
            let snapshot = pull_with_progress(&repo, &revision)?;
            println!("{}", snapshot.display());
            Ok(())
        }
        Command::Rm { name } => {
            let mut reg = load_registry(&data_dir)?;
            if reg.remove(&name).is_none() {
                return Err(CliError::user(format!(
                    "no model named {name:?} is registered (see `krya models list`)"
                )));
            }
            save_registry(&data_dir, &reg)?;
            println!("removed {name}");
            Ok(())
        }
    }
}
