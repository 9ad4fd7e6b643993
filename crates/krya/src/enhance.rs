//! `krya enhance IN OUT`: an image made 1×–8× larger by a super-resolution model, tile by
//! tile in bounded memory, written as a PNG, with a progress bar.

use std::path::PathBuf;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use krya_engine::CancelToken;
use krya_engine::pipelines::upscale::enhance::{self, EnhanceOptions};
use krya_engine::pipelines::upscale::tile::TileOptions;
use krya_engine::pipelines::upscale::{LoadOptions, Upscaler};

use crate::CliError;

#[derive(clap::Args)]
pub struct Args {
    /// The image to enhance (PNG, JPEG, WebP, TIFF…).
    input: PathBuf,
    /// Where to write the PNG.
    output: PathBuf,
    /// The model: a `.pth` or `.safetensors` file of an ESRGAN (RRDBNet) or
    /// SRVGGNetCompact network (its architecture and scale are read from its weights).
    #[arg(long)]
    model: PathBuf,
    /// 1, 2, 4 or 8 (default: the model's own).
    #[arg(long)]
    scale: Option<usize>,
    /// Tile size in input pixels.
    #[arg(long, default_value_t = 256)]
    tile: usize,
    /// Context read around each tile, in input pixels (half of it is blended).
    #[arg(long, default_value_t = 16)]
    overlap: usize,
    /// realesr-general-x4v3's denoise strength, 0-1: blends the model with its denoising
    /// twin (`--denoise-model`).
    #[arg(long)]
    denoise: Option<f64>,
    /// The denoising twin of `--model` (realesr-general-wdn-x4v3).
    #[arg(long)]
    denoise_model: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<(), CliError> {
    for (p, what) in [(&a.input, "input image"), (&a.model, "model")] {
        if !p.is_file() {
            return Err(CliError::user(format!(
                "{what} {} does not exist or is not a file",
                p.display()
            )));
        }
    }
    if let Some(dir) = a.output.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.is_dir()
    {
        return Err(CliError::user(format!(
            "output folder {} does not exist",
            dir.display()
        )));
    }
    if !(8..=4096).contains(&a.tile) {
        return Err(CliError::user(format!(
            "--tile must be from 8 to 4096 (got {})",
            a.tile
        )));
    }
    let bytes = std::fs::read(&a.input)
        .map_err(|e| CliError::user(format!("{}: {e}", a.input.display())))?;
    let options = EnhanceOptions {
        scale: a.scale.unwrap_or(0),
        tile: TileOptions {
            tile: a.tile,
            overlap: a.overlap,
            blend: true,
        },
        ..Default::default()
    };
    let input = enhance::decode(&bytes, options.max_input_pixels)?;
    let t0 = Instant::now();
    let model = Upscaler::load(
        &a.model,
        &LoadOptions {
            denoise: a.denoise,
            denoise_twin: a.denoise_model.clone(),
        },
    )?;
    // The scale and size are checked before anything is written.
    let plan = enhance::plan(options.scale, model.scale())?;
    let (ow, oh) = (input.width * plan.scale, input.height * plan.scale);
    if ow.max(oh) > options.max_side {
        return Err(CliError::user(format!(
            "--scale {}: the output would be {ow}×{oh}; at most {} px a side",
            plan.scale, options.max_side
        )));
    }
    eprintln!(
        "{} ×{} from {} ({:.1}s); {}×{} → {ow}×{oh}",
        model.architecture.name(),
        model.scale(),
        a.model.display(),
        t0.elapsed().as_secs_f64(),
        input.width,
        input.height
    );
    let bar = ProgressBar::new(1).with_style(
        ProgressStyle::with_template(
            "{spinner} tile {pos}/{len} [{bar:30}] {elapsed_precise} (eta {eta})",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    // Written to a file beside the output, renamed once complete: a failure leaves no
    // half-written PNG under the output's name.
    let partial = a.output.with_extension("partial.png");
    let file = std::fs::File::create(&partial)
        .map_err(|e| CliError::user(format!("{}: {e}", partial.display())))?;
    let t1 = Instant::now();
    let result = enhance::enhance(
        &model,
        &input,
        &options,
        &CancelToken::new(),
        &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
        std::io::BufWriter::new(file),
    );
    bar.finish_and_clear();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(e.into());
    }
    std::fs::rename(&partial, &a.output)
        .map_err(|e| CliError::user(format!("{}: {e}", a.output.display())))?;
    println!("{}", a.output.display());
    eprintln!(
        "enhanced to {ow}×{oh} in {:.1}s",
        t1.elapsed().as_secs_f64()
    );
    Ok(())
}
