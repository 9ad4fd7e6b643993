//! `krya enhance IN OUT`: an image made 1×–8× larger by a super-resolution model, tile by
//! tile in bounded memory, optionally sharpened or re-drawn by an image model
//! (`--generative M`), written as a PNG, with a progress bar.

use std::path::PathBuf;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use krya_engine::CancelToken;
use krya_engine::pipelines::upscale::enhance::{self, EnhanceOptions};
use krya_engine::pipelines::upscale::tile::TileOptions;
use krya_engine::pipelines::upscale::{LoadOptions, Upscaler};

use crate::CliError;
use krya_server::persistence::registry::{self, Capability, ModelEntry};

#[derive(clap::Args)]
pub struct Args {
    /// The image to enhance (PNG, JPEG, WebP, TIFF…).
    input: PathBuf,
    /// Where to write the PNG.
    output: PathBuf,
    /// The upscaler: a `.pth` or `.safetensors` file of an ESRGAN (RRDBNet) or
    /// SRVGGNetCompact network (its architecture and scale are read from its weights), or a
    /// model's name (`krya models add`, or a curated one such as realesrgan-x4plus,
    /// downloaded on first use).
    #[arg(long)]
    model: String,
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
    /// The denoising twin of `--model` (realesr-general-wdn-x4v3): a file or a name; a
    /// curated model knows its own.
    #[arg(long)]
    denoise_model: Option<String>,
    /// Restore faces: find them, repaint them and paste them into the output.
    #[arg(long)]
    face_restore: bool,
    /// The face restorer for --face-restore (GFPGAN v1.3/v1.4, CodeFormer): a file or a
    /// name; default the first installed one, else gfpgan-1.4, downloaded on first use.
    #[arg(long, value_name = "MODEL")]
    face_model: Option<String>,
    /// CodeFormer's fidelity weight, 0-1: 0 repaints faces the most, 1 keeps them closest
    /// to the input (default 0.5).
    #[arg(long)]
    fidelity: Option<f32>,
    /// The face detector for --face-restore (RetinaFace, MobileNet-0.25 or ResNet-50): a file or a name;
    /// default the first installed one, else retinaface-mobilenet.
    #[arg(long, value_name = "MODEL")]
    face_detector: Option<String>,
    /// Unsharp-mask amount after upscaling, 0-4.
    #[arg(long, default_value_t = 0.0)]
    sharpen: f32,
    /// Generative enhance: re-draw detail with this image model (a registered name, a hub
    /// id, a diffusers folder or a checkpoint) over overlapping tiles.
    #[arg(long, value_name = "MODEL")]
    generative: Option<String>,
    /// With --generative: how much is re-drawn, 0-1.
    #[arg(long, default_value_t = 0.35)]
    creativity: f64,
    /// With --generative: how much of the upscaled image's colours and large shapes stay, 0-1.
    #[arg(long, default_value_t = 0.5)]
    resemblance: f64,
    /// With --generative: what the image shows.
    #[arg(long, default_value = "")]
    prompt: String,
    /// With --generative: the seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where registered model names are looked up (as `krya serve`).
    #[command(flatten)]
    settings: crate::serve::Settings,
}

pub fn run(a: Args) -> Result<(), CliError> {
    crate::check_input_output(&a.input, &a.output)?;
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
        sharpen: a.sharpen,
        ..Default::default()
    };
    if !(0.0..=4.0).contains(&a.sharpen) {
        return Err(CliError::user(format!(
            "--sharpen must be from 0 to 4 (got {})",
            a.sharpen
        )));
    }
    if a.generative.is_some() {
        for (flag, v) in [
            ("--creativity", a.creativity),
            ("--resemblance", a.resemblance),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(CliError::user(format!(
                    "{flag} must be from 0 to 1 (got {v})"
                )));
            }
        }
    }
    let mut options = options;
    if !a.face_restore
        && (a.face_model.is_some() || a.face_detector.is_some() || a.fidelity.is_some())
    {
        return Err(CliError::user(
            "--face-model, --face-detector and --fidelity are for --face-restore",
        ));
    }
    if let Some(f) = a.fidelity
        && !(0.0..=1.0).contains(&f)
    {
        return Err(CliError::user(format!(
            "--fidelity must be from 0 to 1 (got {f})"
        )));
    }
    let config = a.settings.config()?;
    let (model_path, entry) = weights(&config, Some(&a.model), Capability::Upscale)?;
    let twin = match (&a.denoise_model, entry.and_then(|e| e.denoise_twin)) {
        (Some(m), _) => Some(weights(&config, Some(m), Capability::Upscale)?.0),
        (None, Some(id)) if a.denoise.is_some_and(|d| d < 1.0) => {
            Some(weights(&config, Some(&id), Capability::Upscale)?.0)
        }
        _ => None,
    };
    if a.face_restore {
        let (restorer, _) = weights(&config, a.face_model.as_deref(), Capability::FaceRestore)?;
        let (detector, _) = weights(&config, a.face_detector.as_deref(), Capability::FaceDetect)?;
        let mut faces = krya_engine::pipelines::face::Faces::load(&restorer, &detector)?;
        if let Some(f) = a.fidelity {
            if !faces.restorer.has_fidelity() {
                return Err(CliError::user(format!(
                    "--fidelity is for CodeFormer; {} has no fidelity weight",
                    restorer.display()
                )));
            }
            faces.fidelity = f;
        }
        options.faces = Some(std::sync::Arc::new(faces));
    }
    let input = enhance::decode(&bytes, options.max_input_pixels)?;
    let t0 = Instant::now();
    let model = Upscaler::load(
        &model_path,
        &LoadOptions {
            denoise: a.denoise,
            denoise_twin: twin,
        },
    )?;
    // The scale and size are checked before anything is written.
    let plan = enhance::plan(options.scale, model.scale())?;
    let (ow, oh) = (input.width * plan.scale, input.height * plan.scale);
    let max = if a.generative.is_some() {
        enhance::GENERATIVE_MAX_SIDE
    } else {
        options.max_side
    };
    if ow.max(oh) > max {
        return Err(CliError::user(format!(
            "--scale {}: the output would be {ow}×{oh}; at most {max} px a side{}",
            plan.scale,
            if a.generative.is_some() {
                " with --generative"
            } else {
                ""
            }
        )));
    }
    let sd = a
        .generative
        .as_deref()
        .map(|m| crate::generate::load_image_model(m, &a.settings))
        .transpose()?;
    eprintln!(
        "{} ×{} from {} ({:.1}s); {}×{} → {ow}×{oh}",
        model.architecture.name(),
        model.scale(),
        a.model,
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
    let mut progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let out = std::io::BufWriter::new(file);
    let cancel = CancelToken::new();
    let result = match &sd {
        None => enhance::enhance(&model, &input, &options, &cancel, &mut progress, out),
        Some(sd) => {
            let g = enhance::Generative {
                model: sd,
                prompt: a.prompt.clone(),
                negative_prompt: None,
                creativity: a.creativity,
                resemblance: a.resemblance,
                seed: a.seed,
                steps: None,
                guidance: None,
                tiles: None,
            };
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {pos}/{len} (tiles, then steps) [{bar:30}] {elapsed_precise} (eta {eta})",
                )
                .unwrap()
                .progress_chars("=> "),
            );
            enhance::enhance_generative(&model, &g, &input, &options, &cancel, &mut progress, out)
        }
    };
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

/// What `spec` names, as a weights file: a file, or a model's name (its file downloaded on
/// first use, with a progress bar); no name: the default model for `capability`. The
/// entry comes back when it was a name.
/// A one-file model for `capability` that `spec` names (a file or a registered name; none:
/// the first installed one), downloaded first when it is a URL's, with a progress bar.
pub(crate) fn weights(
    config: &krya_server::infra::config::Config,
    spec: Option<&str>,
    capability: Capability,
) -> Result<(PathBuf, Option<ModelEntry>), CliError> {
    let (what, a) = match capability {
        Capability::Upscale => ("upscaler", "an"),
        Capability::FaceRestore => ("face restorer", "a"),
        Capability::Segment => ("segmentation model", "a"),
        Capability::Erase => ("object-removal model", "an"),
        Capability::Matte => ("background-removal model", "a"),
        _ => ("face detector", "a"),
    };
    let (data_dir, local) = (&config.server.data_dir, &config.models.local);
    let entry = match spec {
        Some(s) if std::path::Path::new(s).is_file() => return Ok((PathBuf::from(s), None)),
        Some(s) => registry::find(data_dir, local, s)
            .map_err(CliError::user)?
            .ok_or_else(|| {
                CliError::user(format!(
                    "{what} {s:?} is neither a file nor a model's name (see `krya models list`)"
                ))
            })?,
        None => registry::default_for(data_dir, local, capability)
            .map_err(CliError::user)?
            .ok_or_else(|| CliError::user(format!("no {what} is installed")))?,
    };
    // A URL of one file says what it is once it is here.
    let mut entry = entry;
    if entry.capabilities.is_empty() && krya_engine::model::download::is_url(&entry.source) {
        crate::models::fetch_with_progress(config, &entry)?;
        if let Some(e) = registry::find(data_dir, local, &entry.id).map_err(CliError::user)? {
            entry = e;
        }
    }
    if !entry.capabilities.contains(&capability) {
        return Err(CliError::user(format!("{} is not {a} {what}", entry.id)));
    }
    let path = crate::models::fetch_with_progress(config, &entry)?;
    Ok((path, Some(entry)))
}
