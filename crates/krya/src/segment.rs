//! `krya segment`: the mask of an object, from clicks and a box, with Segment Anything (as
//! `POST /api/segment`), written as a black-and-white PNG of the image's size.

use std::path::PathBuf;
use std::time::Instant;

use krya_engine::image_io;
use krya_engine::pipelines::segment::Segmenter;
use krya_engine::pipelines::segment::sam::Point;
use krya_server::persistence::registry::Capability;

use crate::CliError;

#[derive(clap::Args)]
pub struct Args {
    /// The image.
    input: PathBuf,
    /// Where the mask goes (PNG: white inside, black outside).
    #[arg(long)]
    out: PathBuf,
    /// A click in the image's pixels, X,Y or X,Y,LABEL (1 adds, the default; 0 removes);
    /// repeat it for more.
    #[arg(long = "point", value_name = "X,Y[,LABEL]")]
    points: Vec<String>,
    /// A box around the object: X0,Y0,X1,Y1.
    #[arg(long = "box", value_name = "X0,Y0,X1,Y1")]
    bbox: Option<String>,
    /// A Segment Anything or MobileSAM file (.pth, .pt or .safetensors) or a registered name
    /// (default: the first installed, else mobile-sam, downloaded).
    #[arg(long)]
    model: Option<String>,
    /// Where registered model names are looked up (as `krya serve`).
    #[command(flatten)]
    settings: crate::serve::Settings,
}

pub fn run(a: Args) -> Result<(), CliError> {
    crate::check_input_output(&a.input, &a.out)?;
    let mut points = Vec::new();
    for p in &a.points {
        let v = crate::numbers::<f32>(p, ',')
            .filter(|v| v.len() == 2 || (v.len() == 3 && (v[2] == 0.0 || v[2] == 1.0)))
            .ok_or_else(|| {
                CliError::user(format!(
                    "--point {p:?} must be X,Y or X,Y,LABEL (LABEL 1 or 0)"
                ))
            })?;
        points.push(Point {
            x: v[0],
            y: v[1],
            positive: v.get(2).is_none_or(|&l| l == 1.0),
        });
    }
    let bbox = match &a.bbox {
        Some(b) => Some(
            crate::numbers::<f32>(b, ',')
                .filter(|v| v.len() == 4)
                .map(|v| [v[0], v[1], v[2], v[3]])
                .ok_or_else(|| CliError::user(format!("--box {b:?} must be X0,Y0,X1,Y1")))?,
        ),
        None => None,
    };
    if points.is_empty() && bbox.is_none() {
        return Err(CliError::user("give at least one --point or a --box"));
    }
    let image = image_io::load_rgb(&a.input)?;
    let config = a.settings.config()?;
    let (path, _) = crate::enhance::weights(&config, a.model.as_deref(), Capability::Segment)?;
    let t0 = Instant::now();
    let seg = Segmenter::load(&path)?;
    let e = seg.embed(&image)?;
    let read = t0.elapsed();
    let t1 = Instant::now();
    let s = seg.segment(&e, &points, bbox)?;
    s.mask
        .save(&a.out)
        .map_err(|e| CliError::user(format!("{}: {e}", a.out.display())))?;
    println!("{}", a.out.display());
    eprintln!(
        "mask {}×{} (score {:.3}); image read in {:.2}s, mask in {:.0} ms",
        s.mask.width(),
        s.mask.height(),
        s.score,
        read.as_secs_f64(),
        t1.elapsed().as_secs_f64() * 1000.0
    );
    Ok(())
}
