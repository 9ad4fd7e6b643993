//! `krya bench`: median time of each model component, on real or random weights.

use std::time::Instant;

use candle_core::Tensor;
use krya_engine::model::diffusers::{self, RandomComponents};
use krya_engine::model::{self, ModelSource};
use krya_engine::pipelines::stable_diffusion::unet::AddedCond;
use krya_engine::{device, rng::TorchRng};

use crate::{CliError, models};

#[derive(clap::Args)]
pub struct Args {
    /// A model (as for generate); with --random-weights, a folder with only config files will do.
    #[arg(long)]
    model: String,
    /// Build the architecture from its configs with random weights.
    #[arg(long)]
    random_weights: bool,
    #[arg(long, default_value_t = 512)]
    width: usize,
    #[arg(long, default_value_t = 512)]
    height: usize,
    /// Comma-separated: text-encoder, unet, vae-decode, vae-encode.
    #[arg(long, default_value = "text-encoder,unet,vae-decode,vae-encode")]
    components: String,
    /// Timed runs per component (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Untimed runs first.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Where registered model names are looked up (as `krya serve`).
    #[command(flatten)]
    settings: crate::serve::Settings,
}

const COMPONENTS: &[&str] = &["text-encoder", "unet", "vae-decode", "vae-encode"];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn time_it(
    runs: usize,
    warmup: usize,
    mut f: impl FnMut() -> Result<(), CliError>,
) -> Result<Vec<f64>, CliError> {
    for _ in 0..warmup {
        f()?;
    }
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f()?;
            Ok(t.elapsed().as_secs_f64())
        })
        .collect()
}

fn e(err: candle_core::Error) -> CliError {
    CliError {
        message: err.to_string(),
        status: 1,
    }
}

pub fn run(a: Args) -> Result<(), CliError> {
    let wanted: Vec<&str> = a
        .components
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if let Some(bad) = wanted.iter().find(|c| !COMPONENTS.contains(c)) {
        return Err(CliError::user(format!(
            "unknown component {bad:?}; use {}",
            COMPONENTS.join(", ")
        )));
    }
    if a.runs == 0 {
        return Err(CliError::user("--runs must be at least 1"));
    }
    let dev = device::best_device()?;
    let dtype = device::default_dtype(&dev);
    let (name, source) = models::resolve(&a.model, &a.settings)?;
    let t0 = Instant::now();
    let c = if a.random_weights {
        let ModelSource::Folder(dir) = &source else {
            return Err(CliError::user(
                "--random-weights needs a folder with unet/, vae/ and text_encoder*/ config.json files",
            ));
        };
        diffusers::load_random(dir, &dev, dtype)?
    } else {
        let m = model::load(&source, &dev, dtype)?;
        RandomComponents {
            text_encoders: m.text_encoders,
            unet: m.unet,
            vae: m.vae,
        }
    };
    let load_s = t0.elapsed().as_secs_f64();
    let f = c.vae.config.scale_factor();
    if !a.width.is_multiple_of(f) || !a.height.is_multiple_of(f) {
        return Err(CliError::user(format!(
            "width and height must be multiples of {f}"
        )));
    }
    let (lh, lw, lc) = (a.height / f, a.width / f, c.vae.config.latent_channels);
    let mut rng = TorchRng::new(0);
    let mut randn = |shape: &[usize]| -> Result<Tensor, CliError> {
        rng.randn(shape.to_vec(), &dev)
            .and_then(|t| t.to_dtype(dtype))
            .map_err(e)
    };
    let sync = |t: &Tensor| -> Result<(), CliError> { t.device().synchronize().map_err(e) };

    let mut results: Vec<(String, f64, Vec<f64>)> = Vec::new();
    for comp in &wanted {
        let times = match *comp {
            "text-encoder" => {
                let ids: Vec<Vec<u32>> = vec![
                    (0..77u32)
                        .map(|i| (i * 7919) % c.text_encoders[0].config.vocab_size as u32)
                        .collect(),
                ];
                time_it(a.runs, a.warmup, || {
                    for enc in &c.text_encoders {
                        sync(&enc.forward(&ids, &dev)?.last_hidden_state)?;
                    }
                    Ok(())
                })?
            }
            "unet" => {
                let sample = randn(&[1, c.unet.config.in_channels, lh, lw])?;
                let ctx_dim: usize = c.text_encoders.iter().map(|t| t.config.hidden_size).sum();
                let ctx = randn(&[1, 77, ctx_dim])?;
                let added = match c.unet.added_cond_dims() {
                    Some((input, tdim)) => Some((
                        randn(&[1, input - 6 * tdim])?,
                        Tensor::new(
                            &[[
                                a.height as f32,
                                a.width as f32,
                                0.,
                                0.,
                                a.height as f32,
                                a.width as f32,
                            ]],
                            &dev,
                        )
                        .map_err(e)?,
                    )),
                    None => None,
                };
                let cond = match c.unet.config.time_cond_proj_dim {
                    Some(d) => Some(randn(&[1, d])?),
                    None => None,
                };
                time_it(a.runs, a.warmup, || {
                    let added = added.as_ref().map(|(t, i)| AddedCond {
                        text_embeds: t,
                        time_ids: i,
                    });
                    sync(&c.unet.forward(&sample, 999.0, &ctx, cond.as_ref(), added)?)
                })?
            }
            "vae-decode" => {
                let z = randn(&[1, lc, lh, lw])?;
                time_it(a.runs, a.warmup, || sync(&c.vae.decode(&z)?))?
            }
            "vae-encode" => {
                let x = randn(&[1, 3, a.height, a.width])?;
                time_it(a.runs, a.warmup, || sync(&c.vae.encode(&x)?.0))?
            }
            _ => unreachable!(),
        };
        results.push((comp.to_string(), median(times.clone()), times));
    }

    let device_name = if dev.is_cpu() {
        format!("cpu ({} threads)", candle_core::utils::get_num_threads())
    } else {
        format!("{dev:?}")
    };
    if a.json {
        let comps: serde_json::Map<String, serde_json::Value> = results
            .iter()
            .map(|(n, m, t)| (n.clone(), serde_json::json!({"median_s": m, "runs_s": t})))
            .collect();
        let out = serde_json::json!({
            "engine": "krya", "model": name, "random_weights": a.random_weights, "width": a.width, "height": a.height,
            "device": device_name, "dtype": format!("{:?}", dtype).to_lowercase(), "load_s": load_s, "components": comps,
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap());
    } else {
        println!(
            "krya bench: {name} at {}x{} on {device_name}, {:?}, median of {} (load {load_s:.1}s)",
            a.width, a.height, dtype, a.runs
        );
        for (n, m, _) in &results {
            println!("{n:<14} {m:>9.3} s");
        }
    }
    Ok(())
}
