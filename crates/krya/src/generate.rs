//! `krya generate`: one request to the native engine, with a progress bar, written as PNGs
//! carrying A1111's `parameters` chunk.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Tensor;
use indicatif::{ProgressBar, ProgressStyle};
use krya_engine::model::ModelSource;
use krya_engine::pipelines::lora;
use krya_engine::{CancelToken, GenerateRequest, SchedulerKind, device, image_io, model};

use crate::{CliError, models};

#[derive(clap::Args)]
pub struct Args {
    /// A registered name, a Hugging Face repo id, a diffusers folder or a checkpoint file.
    #[arg(long)]
    model: String,
    #[arg(long)]
    prompt: String,
    #[arg(long)]
    negative_prompt: Option<String>,
    /// Denoising steps (default: the model's; 1 for turbo models).
    #[arg(long)]
    steps: Option<usize>,
    /// Classifier-free guidance scale; <= 1 turns guidance off (default: the model's).
    #[arg(long)]
    guidance: Option<f64>,
    /// euler | euler_a | ddim | dpmpp_2m | dpmpp_2m_karras | lcm | pndm (default: the model's own).
    #[arg(long)]
    scheduler: Option<String>,
    /// Seed of the first image; image i uses seed + i (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    width: Option<usize>,
    #[arg(long)]
    height: Option<usize>,
    /// Images to generate (1-4 per request in the studio; up to 64 here).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Start from this image (image-to-image).
    #[arg(long)]
    init_image: Option<PathBuf>,
    /// How much of the init image to repaint, 0-1.
    #[arg(long, default_value_t = 0.8)]
    strength: f64,
    /// Inpainting mask (white = repaint), the init image's size.
    #[arg(long)]
    mask: Option<PathBuf>,
    /// Initial latent noise, float32 .npy of shape [batch, latent_channels, H/f, W/f].
    #[arg(long)]
    init_noise: Option<PathBuf>,
    /// Skip this many final text-encoder layers.
    #[arg(long, default_value_t = 0)]
    clip_skip: usize,
    /// Instruction-editing models (InstructPix2Pix, with --init-image): how strongly the
    /// output keeps to the image (default 1.5).
    #[arg(long)]
    image_guidance: Option<f64>,
    /// A LoRA to apply: a registered name or a .safetensors file, with an optional weight
    /// (`style.safetensors:0.8`; default 1). Repeatable. `<lora:NAME:WEIGHT>` in the prompt
    /// does the same.
    #[arg(long = "lora", value_name = "NAME_OR_FILE[:WEIGHT]")]
    loras: Vec<String>,
    /// Output PNG; with --batch B > 1 the files are OUT-1.png ... OUT-B.png.
    #[arg(long)]
    out: PathBuf,
    /// Where registered model names are looked up (as `krya serve`).
    #[command(flatten)]
    settings: crate::serve::Settings,
}

fn must_exist(p: &Option<PathBuf>, what: &str) -> Result<(), CliError> {
    if let Some(p) = p
        && !p.is_file()
    {
        return Err(CliError::user(format!(
            "{what} {} does not exist or is not a file",
            p.display()
        )));
    }
    Ok(())
}

/// Output paths: OUT itself, or OUT-1.png ... OUT-B.png for a batch.
pub fn output_paths(out: &Path, batch: usize) -> Vec<PathBuf> {
    if batch == 1 {
        return vec![out.to_path_buf()];
    }
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let ext = out
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "png".into());
    (1..=batch)
        .map(|i| out.with_file_name(format!("{stem}-{i}.{ext}")))
        .collect()
}

pub fn run(a: Args) -> Result<(), CliError> {
    // Cheap checks first, before a model is loaded.
    let scheduler = a
        .scheduler
        .as_deref()
        .map(SchedulerKind::parse)
        .transpose()?;
    must_exist(&a.init_image, "init image")?;
    must_exist(&a.mask, "mask")?;
    must_exist(&a.init_noise, "init noise file")?;
    if a.mask.is_some() && a.init_image.is_none() {
        return Err(CliError::user(
            "--mask needs --init-image (the image to inpaint)",
        ));
    }
    if !(1..=64).contains(&a.batch) {
        return Err(CliError::user(format!(
            "--batch must be between 1 and 64 (got {})",
            a.batch
        )));
    }
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.is_dir()
    {
        return Err(CliError::user(format!(
            "output folder {} does not exist",
            dir.display()
        )));
    }
    let init_image = a
        .init_image
        .as_deref()
        .map(image_io::load_rgb)
        .transpose()?;
    let mask = a.mask.as_deref().map(image_io::load_mask).transpose()?;
    let init_noise = match &a.init_noise {
        Some(p) => Some(Tensor::read_npy(p).map_err(|e| {
            CliError::user(format!("{}: not a float32 .npy file ({e})", p.display()))
        })?),
        None => None,
    };
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 % 4_294_967_296)
            .unwrap_or(0)
    });

    // LoRAs from the flags and the prompt's tags, read before the (slower) model load.
    let (prompt, tags) = lora::prompt::extract(&a.prompt)?;
    let mut loras = Vec::new();
    for spec in &a.loras {
        let (name, weight) = split_weight(spec)?;
        loras.push((load_lora(name, &a.settings)?, lora::Strength::new(weight)));
    }
    for t in tags {
        loras.push((load_lora(&t.name, &a.settings)?, t.strength));
    }

    let mut m = load_image_model(&a.model, &a.settings)?;
    if !loras.is_empty() {
        let list: Vec<_> = loras.iter().map(|(f, s)| (f, *s)).collect();
        let name = m.name.clone();
        m = lora::apply(&m, &list)?.0;
        m.name = name;
    }

    let req = GenerateRequest {
        prompt,
        negative_prompt: a.negative_prompt.clone(),
        width: a.width,
        height: a.height,
        steps: a.steps,
        guidance: a.guidance,
        scheduler,
        seed,
        batch: a.batch,
        init_image,
        strength: a.strength,
        mask,
        init_noise,
        clip_skip: a.clip_skip,
        preview_every: 0,
        image_guidance: a.image_guidance,
    };
    // Validate against the model before the progress bar appears.
    let (_, _, steps, _, _) = m.resolve(&req)?;
    let bar = ProgressBar::new(steps as u64).with_style(
        ProgressStyle::with_template(
            "{spinner} step {pos}/{len} [{bar:30}] {elapsed_precise} (eta {eta})",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    let cancel = CancelToken::new();
    let t1 = Instant::now();
    let out = m.generate(
        &req,
        &mut |p| {
            bar.set_length(p.total as u64);
            bar.set_position(p.step as u64);
        },
        &cancel,
    )?;
    bar.finish_and_clear();

    // The recorded prompt keeps A1111's tags (those given as flags added), so pasting the
    // parameters back applies the same LoRAs.
    let mut shown = a.prompt.clone();
    for spec in &a.loras {
        let (name, weight) = split_weight(spec)?;
        shown.push_str(&format!(" <lora:{name}:{weight}>"));
    }
    let shown = GenerateRequest {
        prompt: shown,
        ..req.clone()
    };
    let paths = output_paths(&a.out, out.images.len());
    for (i, (img, path)) in out.images.iter().zip(&paths).enumerate() {
        let params = out.parameters_text(&shown, &m.name, i);
        image_io::write_png(path, img, &params)?;
        println!("{}", path.display());
    }
    eprintln!(
        "generated {} image(s) in {:.1}s (seed {seed})",
        out.images.len(),
        t1.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `NAME_OR_FILE[:WEIGHT]`: the weight is what follows the last colon when it is a number.
fn split_weight(spec: &str) -> Result<(&str, f32), CliError> {
    if let Some((name, w)) = spec.rsplit_once(':')
        && let Ok(w) = w.trim().parse::<f32>()
    {
        if !w.is_finite() {
            return Err(CliError::user(format!(
                "--lora {spec}: the weight must be a number"
            )));
        }
        return Ok((name, w));
    }
    Ok((spec, 1.0))
}

/// The LoRA file `spec` names: a registered name, else a path.
fn load_lora(spec: &str, settings: &crate::serve::Settings) -> Result<lora::LoraFile, CliError> {
    let (_, source) = models::resolve(spec, settings).map_err(|_| {
        CliError::user(format!(
            "LoRA {spec:?} is neither a registered model nor a .safetensors file"
        ))
    })?;
    let dir = match source {
        ModelSource::Checkpoint(path) => return Ok(lora::LoraFile::load(&path)?),
        ModelSource::Folder(dir) => dir,
        ModelSource::Hub { repo, revision } => {
            match krya_engine::model::hub::cached_snapshot(&repo, &revision) {
                Some(d) => d,
                None => models::pull_with_progress(&repo, &revision)?,
            }
        }
    };
    let path = lora::file_in_folder(&dir).ok_or_else(|| {
        CliError::user(format!(
            "LoRA {spec:?}: {} holds no single .safetensors file",
            dir.display()
        ))
    })?;
    Ok(lora::LoraFile::load(&path)?)
}

/// The image model `spec` names (a registered name, a hub id, a folder or a checkpoint),
/// pulled first when it is a hub model not cached yet, loaded with a spinner.
pub fn load_image_model(
    spec: &str,
    settings: &crate::serve::Settings,
) -> Result<krya_engine::StableDiffusion, CliError> {
    let (name, mut source) = models::resolve(spec, settings)?;
    // A hub model not in the cache yet is pulled first (or fails with the offline error).
    if let ModelSource::Hub { repo, revision } = &source
        && krya_engine::model::hub::cached_snapshot(repo, revision).is_none()
    {
        source = ModelSource::Folder(models::pull_with_progress(repo, revision)?);
    }
    let dev = device::best_device()?;
    let dtype = device::default_dtype(&dev);
    let spinner = ProgressBar::new_spinner().with_message(format!("loading {name}"));
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let t0 = Instant::now();
    let mut m = model::load(&source, &dev, dtype)?;
    m.name = name.clone();
    spinner.finish_and_clear();
    eprintln!("loaded {name} in {:.1}s", t0.elapsed().as_secs_f64());
    Ok(m)
}
