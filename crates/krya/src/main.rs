//! `krya`: the Krya binary.
//!
//! Layout: `serve` (the API server, `worker`, `migrate`, `users`), `default-config`, `generate` (text/image-to-image and inpainting on the native engine),
//! `models` (the local model registry and the Hugging Face cache), `bench` (component timings), `realtime` (the live
//! canvas's load client and I/O benchmark). Errors the user can fix
//! print one line and exit with status 2; anything else exits with 1.

mod bench;
mod edit;
mod enhance;
mod generate;
mod matte;
mod models;
mod realtime;
mod segment;
mod serve;

use std::process::ExitCode;

/// mimalloc keeps freed memory for reuse: the engine allocates and frees tens of MB per
/// operation, which with the system allocator means fresh pages (faulted in and zeroed by
/// the kernel) every time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "krya",
    version,
    about = "Krya: a self-hostable AI creative studio"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate images with a local model.
    Generate(generate::Args),
    /// Make an image larger (1×-8×) with a super-resolution model, tile by tile.
    Enhance(enhance::Args),
    /// Edit an image: by instruction (InstructPix2Pix), inpaint a mask, outpaint, restyle.
    Edit(edit::Args),
    /// Remove what a mask covers, with LaMa or an inpainting model (`krya edit --erase`).
    Erase(edit::Args),
    /// Cut the subject out: a PNG with the background transparent (IS-Net).
    Matte(matte::Args),
    /// A mask of the object at points (or in a box), with Segment Anything.
    Segment(segment::Args),
    /// Run the API server (and, unless jobs.in_process is off, its jobs).
    Serve(serve::Args),
    /// Run jobs only, from the configured (shared) database and storage.
    Worker(serve::Settings),
    /// Bring the database up to date (also done at start).
    Migrate(serve::Settings),
    /// Manage accounts.
    #[command(subcommand)]
    Users(serve::Users),
    /// Print a commented example krya.toml with every setting and its default.
    DefaultConfig,
    /// Print the HTTP API's OpenAPI document (as GET /api/openapi.json serves it).
    Openapi,
    /// Time each model component (text encoder, UNet, VAE) on real or random weights.
    Bench(bench::Args),
    /// Manage models: list, add, remove, pull (in DATA_DIR/models.json, as `serve` reads).
    Models(models::Args),
    /// The live canvas: a load client, and the per-frame I/O benchmark.
    #[command(subcommand)]
    Realtime(realtime::Command),
}

/// An error with the exit status it calls for.
pub struct CliError {
    pub message: String,
    /// 2: the user's input or environment; 1: an internal failure.
    pub status: u8,
}

impl CliError {
    pub fn user(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            status: 2,
        }
    }
}

/// The numbers of a flag's value split at `sep` (`16:9`, `20,15,1`), or none when one is not
/// a number.
pub fn numbers<T: std::str::FromStr>(s: &str, sep: char) -> Option<Vec<T>> {
    s.split(sep).map(|x| x.trim().parse().ok()).collect()
}

/// An input image that is a file and an output whose folder exists, or why not.
pub fn check_input_output(input: &std::path::Path, out: &std::path::Path) -> Result<(), CliError> {
    if !input.is_file() {
        return Err(CliError::user(format!(
            "input image {} does not exist or is not a file",
            input.display()
        )));
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.is_dir()
    {
        return Err(CliError::user(format!(
            "output folder {} does not exist",
            dir.display()
        )));
    }
    Ok(())
}

impl From<krya_engine::EngineError> for CliError {
    fn from(e: krya_engine::EngineError) -> Self {
        let status = if e.is_user_error() { 2 } else { 1 };
        Self {
            message: e.to_string(),
            status,
        }
    }
}

/// mimalloc's `mi_option_purge_delay`: how long freed memory waits before it is given
/// back to the OS. The engine frees and reallocates the same large buffers every step, so
/// memory is kept (-1) instead of being faulted in and zeroed again.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> ExitCode {
    // SAFETY: sets an allocator option; valid at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    // candle's element-wise thread pool spins 25,000 rounds before a worker sleeps; between
    // the matrix products (which run on rayon) that spinning takes a core from the other
    // pool: 29% of the text encoder's samples in `perf`, and 0.30 -> 0.22 s at 1,000.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // SAFETY: no other thread exists yet to read the environment concurrently.
        unsafe { std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "1000") };
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Enhance(args) => enhance::run(args),
        Command::Edit(args) => edit::run(args),
        Command::Erase(mut args) => {
            args.erase = true;
            edit::run(args)
        }
        Command::Segment(args) => segment::run(args),
        Command::Matte(args) => matte::run(args),
        Command::Models(cmd) => models::run(cmd),
        Command::Bench(args) => bench::run(args),
        Command::Realtime(cmd) => realtime::run(cmd),
        Command::Serve(args) => serve::run(args),
        Command::Worker(s) => serve::worker(s),
        Command::Migrate(s) => serve::migrate(s),
        Command::Users(cmd) => serve::users(cmd),
        Command::DefaultConfig => {
            print!("{}", krya_server::infra::config::EXAMPLE);
            Ok(())
        }
        Command::Openapi => {
            println!("{}", krya_server::http::router::openapi_document());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One readable line: the first line of the message.
            let line = e.message.lines().next().unwrap_or("error").to_string();
            eprintln!("krya: {line}");
            ExitCode::from(e.status)
        }
    }
}
