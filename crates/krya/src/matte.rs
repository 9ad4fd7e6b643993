//! `krya matte`: the image's foreground on a transparent background (a PNG with alpha), or
//! the matte alone, with a background-removal model (IS-Net), as the editor's
//! `remove_background` runs it.

use std::path::PathBuf;
use std::time::Instant;

use krya_engine::image_io;
use krya_engine::pipelines::matte::{self, Matter};
use krya_server::persistence::registry::Capability;

use crate::CliError;

#[derive(clap::Args)]
pub struct Args {
    /// The image.
    input: PathBuf,
    /// Where the PNG goes: the image with the matte as its alpha channel.
    #[arg(long)]
    out: PathBuf,
    /// Write the matte itself (white = foreground) instead of the cut-out.
    #[arg(long)]
    matte_only: bool,
    /// An IS-Net file (.pth or .safetensors) or a registered name (default: the first
    /// installed, else isnet-general-use, downloaded).
    #[arg(long)]
    model: Option<String>,
    /// Where registered model names are looked up (as `krya serve`).
    #[command(flatten)]
    settings: crate::serve::Settings,
}

pub fn run(a: Args) -> Result<(), CliError> {
    crate::check_input_output(&a.input, &a.out)?;
    let image = image_io::load_rgb(&a.input)?;
    let config = a.settings.config()?;
    let (path, _) = crate::enhance::weights(&config, a.model.as_deref(), Capability::Matte)?;
    let t0 = Instant::now();
    let m = Matter::load(&path)?;
    let alpha = m.matte(&image)?;
    let saved = if a.matte_only {
        alpha.save(&a.out)
    } else {
        matte::cut_out(&image, &alpha).save(&a.out)
    };
    saved.map_err(|e| CliError::user(format!("{}: {e}", a.out.display())))?;
    println!("{}", a.out.display());
    eprintln!(
        "matte {}×{} in {:.1}s",
        alpha.width(),
        alpha.height(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
