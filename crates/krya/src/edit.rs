//! `krya edit`: the editor's operations on one image, as `POST /api/edit/image` runs them:
//! `--instruction` (InstructPix2Pix), `--mask` (inpaint), `--aspect`/`--extend`
//! (outpaint) or `--restyle`, with a progress bar; the result is a PNG carrying its
//! parameters.

use std::path::PathBuf;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use krya_engine::pipelines::edit::{self, Extend, MaskOptions};
use krya_engine::pipelines::erase;
use krya_engine::{CancelToken, GenerateRequest, image_io};

use crate::CliError;

#[derive(clap::Args)]
pub struct Args {
    /// The image to edit.
    input: PathBuf,
    /// Where the PNG goes.
    #[arg(long)]
    out: PathBuf,
    /// A registered name, a Hugging Face repo id, a diffusers folder or a checkpoint file
    /// (an InstructPix2Pix model for --instruction). To erase: a LaMa file or name (the
    /// default: the first installed, else big-lama, downloaded), or an inpainting model.
    #[arg(long)]
    model: Option<String>,
    /// Change the image as this says ("make it winter"), with an InstructPix2Pix model.
    #[arg(long)]
    instruction: Option<String>,
    /// Inpaint where this mask (the image's size) is white, as --prompt says.
    #[arg(long)]
    mask: Option<PathBuf>,
    /// Outpaint to this aspect, W:H (16:9), the short side grown evenly.
    #[arg(long)]
    aspect: Option<String>,
    /// Outpaint by these pixels: LEFT,TOP,RIGHT,BOTTOM.
    #[arg(long, value_name = "L,T,R,B")]
    extend: Option<String>,
    /// Re-draw the whole image by --strength, as --prompt says.
    #[arg(long)]
    restyle: bool,
    /// With --mask: remove what it covers, filled in from its surroundings: with LaMa, or
    /// with an image model's inpainting (no prompt; the mask grown more). `krya erase` is
    /// the same.
    #[arg(long)]
    pub erase: bool,
    /// What to paint (inpaint, outpaint, restyle).
    #[arg(long, default_value = "")]
    prompt: String,
    #[arg(long)]
    negative_prompt: Option<String>,
    /// How much is re-drawn, 0-1 (default 1; 0.6 with --restyle).
    #[arg(long)]
    strength: Option<f64>,
    /// Pixels the mask is grown by (default 4; 12 to erase with an image model).
    #[arg(long)]
    grow: Option<u32>,
    /// The mask's feather, in pixels (inpaint, outpaint).
    #[arg(long, default_value_t = 4.0)]
    blur: f32,
    /// With --instruction: how strongly the output keeps to the image (default 1.5).
    #[arg(long)]
    image_guidance: Option<f64>,
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long)]
    guidance: Option<f64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where registered model names are looked up (as `krya serve`).
    #[command(flatten)]
    settings: crate::serve::Settings,
}

/// What the flags ask for.
enum Operation {
    Instruct,
    Inpaint(PathBuf),
    Outpaint(Extend),
    Restyle,
}

/// `n` whole numbers split at `sep`.
fn numbers(s: &str, sep: char, n: usize) -> Option<Vec<u32>> {
    crate::numbers(s, sep).filter(|v: &Vec<u32>| v.len() == n)
}

pub fn run(a: Args) -> Result<(), CliError> {
    crate::check_input_output(&a.input, &a.out)?;
    if a.erase && a.mask.is_none() {
        return Err(CliError::user("--erase needs --mask (white = remove)"));
    }
    if a.erase && !a.prompt.is_empty() {
        return Err(CliError::user("--erase takes no --prompt"));
    }
    let chosen = [
        a.instruction.is_some(),
        a.mask.is_some(),
        a.aspect.is_some() || a.extend.is_some(),
        a.restyle,
    ];
    if chosen.iter().filter(|&&c| c).count() != 1 || (a.aspect.is_some() && a.extend.is_some()) {
        return Err(CliError::user(
            "give one of --instruction, --mask, --aspect or --extend, --restyle",
        ));
    }
    if a.strength.is_some_and(|s| !(0.0..=1.0).contains(&s)) {
        return Err(CliError::user("--strength must be from 0 to 1"));
    }
    if !(0.0..=64.0).contains(&a.blur) || a.grow.is_some_and(|g| g > 256) {
        return Err(CliError::user(
            "--blur must be from 0 to 64 and --grow from 0 to 256",
        ));
    }
    let image = image_io::load_rgb(&a.input)?;
    let (w, h) = image.dimensions();
    let operation = if a.instruction.is_some() {
        Operation::Instruct
    } else if let Some(m) = &a.mask {
        if !m.is_file() {
            return Err(CliError::user(format!(
                "mask {} does not exist or is not a file",
                m.display()
            )));
        }
        Operation::Inpaint(m.clone())
    } else if let Some(s) = &a.aspect {
        let v = numbers(s, ':', 2)
            .filter(|v| v.iter().all(|x| (1..=100).contains(x)))
            .ok_or_else(|| CliError::user("--aspect must be W:H, each from 1 to 100 (16:9)"))?;
        Operation::Outpaint(Extend::to_aspect(w, h, v[0], v[1]))
    } else if let Some(s) = &a.extend {
        let v = numbers(s, ',', 4)
            .ok_or_else(|| CliError::user("--extend must be LEFT,TOP,RIGHT,BOTTOM in pixels"))?;
        Operation::Outpaint(Extend {
            left: v[0],
            top: v[1],
            right: v[2],
            bottom: v[3],
        })
    } else {
        Operation::Restyle
    };
    if let (true, Operation::Inpaint(mask)) = (a.erase, &operation) {
        let config = a.settings.config()?;
        if let Some(path) = lama_file(&config, a.model.as_deref())? {
            return erase_with_lama(&a, &path, &image, mask);
        }
    }
    let model = a
        .model
        .clone()
        .ok_or_else(|| CliError::user("--model is needed: an image model (`krya models list`)"))?;
    let m = crate::generate::load_image_model(&model, &a.settings)?;
    if matches!(operation, Operation::Instruct) != m.is_instruct_unet() {
        return Err(CliError::user(if m.is_instruct_unet() {
            format!("{model} is an instruction-editing model: use --instruction")
        } else {
            format!(
                "--instruction needs an instruction-editing model (InstructPix2Pix); {model} is not one"
            )
        }));
    }
    let negative_prompt = match (&a.negative_prompt, a.erase) {
        (None, true) => Some(edit::ERASE_NEGATIVE.to_string()),
        (n, _) => n.clone(),
    };
    let request = GenerateRequest {
        prompt: a.instruction.clone().unwrap_or_else(|| a.prompt.clone()),
        negative_prompt,
        steps: a.steps,
        guidance: a.guidance,
        seed: a.seed,
        strength: a.strength.unwrap_or(if a.restyle { 0.6 } else { 1.0 }),
        image_guidance: a.image_guidance,
        preview_every: 0,
        ..Default::default()
    };
    let options = MaskOptions {
        grow: a.grow.unwrap_or(if a.erase { edit::ERASE_GROW } else { 4 }),
        blur: a.blur,
    };
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{spinner} step {pos}/{len} [{bar:30}] {elapsed_precise}")
            .unwrap()
            .progress_chars("=> "),
    );
    let mut on_step = |p: krya_engine::StepProgress| {
        bar.set_length(p.total as u64);
        bar.set_position(p.step as u64);
    };
    let cancel = CancelToken::new();
    let t0 = Instant::now();
    let (out, what) = match &operation {
        Operation::Instruct | Operation::Restyle => (
            edit::whole(&m, &request, &image, &cancel, &mut on_step)?,
            if a.restyle { "restyle" } else { "instruct" },
        ),
        Operation::Inpaint(path) => {
            let mask = image_io::load_mask(path)?;
            (
                edit::inpaint(&m, &request, &image, &mask, options, &cancel, &mut on_step)?,
                if a.erase { "erase" } else { "inpaint" },
            )
        }
        Operation::Outpaint(e) => (
            edit::outpaint(&m, &request, &image, *e, options, &cancel, &mut on_step)?,
            "outpaint",
        ),
    };
    bar.finish_and_clear();
    let parameters = format!(
        "{}\nEdit: {what}, Model: {}, Seed: {}",
        request.prompt, m.name, request.seed
    );
    image_io::write_png(&a.out, &out, &parameters)?;
    println!("{}", a.out.display());
    eprintln!(
        "{what}: {}×{} in {:.1}s",
        out.width(),
        out.height(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The LaMa file `spec` names (a file, or a registered object-removal model), or the
/// default one when there is no `spec`; `None` when `spec` is another kind of model (an
/// image model erases by inpainting).
fn lama_file(
    config: &krya_server::infra::config::Config,
    spec: Option<&str>,
) -> Result<Option<PathBuf>, CliError> {
    use krya_server::persistence::registry::{self, Capability};
    let named_lama = match spec {
        None => true,
        Some(s) if std::path::Path::new(s).is_file() => {
            return Ok(erase::detect_file(std::path::Path::new(s)).then(|| PathBuf::from(s)));
        }
        Some(s) => registry::find(&config.server.data_dir, &config.models.local, s)
            .map_err(CliError::user)?
            .is_some_and(|e| e.capabilities.contains(&Capability::Erase)),
    };
    if !named_lama {
        return Ok(None);
    }
    let (path, _) = crate::enhance::weights(config, spec, Capability::Erase)?;
    Ok(Some(path))
}

fn erase_with_lama(
    a: &Args,
    model: &std::path::Path,
    image: &image::RgbImage,
    mask: &std::path::Path,
) -> Result<(), CliError> {
    if a.strength.is_some() || a.steps.is_some() || a.guidance.is_some() {
        return Err(CliError::user(
            "LaMa takes no --strength, --steps or --guidance (an image model does)",
        ));
    }
    // As the API: the mask made hard and grown by --grow (default 4) before LaMa fills it.
    let mask = edit::mask::grow(
        &edit::mask::hard(&image_io::load_mask(mask)?),
        a.grow.unwrap_or(4),
    );
    let t0 = Instant::now();
    let eraser = erase::Eraser::load(model)?;
    let out = eraser.erase(image, &mask)?;
    let parameters = format!("Edit: erase, Model: {}", model.display());
    image_io::write_png(&a.out, &out, &parameters)?;
    println!("{}", a.out.display());
    eprintln!(
        "erase (LaMa): {}×{} in {:.1}s",
        out.width(),
        out.height(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
