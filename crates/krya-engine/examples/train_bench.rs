//! The engine's side of the LoRA training benchmark (`tools/bench/train.sh`): one training
//! step of the UNet whose config `train_torch.py` wrote (SD 1.5's shapes, random weights),
//! at the same latent size, batch 1, a rank-16 LoRA on the attention projections: forward,
//! loss, backward, AdamW. Prints the median step time and the process's peak memory.
//!
//!     cargo run --release -p krya-engine --example train_bench -- DIR [--runs 2] [--size 64]

use candle_core::{DType, Device, Tensor};
use krya_engine::pipelines::stable_diffusion::unet::{UNet2DConditionModel, UNetConfig};
use krya_engine::pipelines::train::lora::{LoraConfig, inject};
use krya_engine::pipelines::train::recipe::{Batch, Recipe, Trainer};

fn peak_gib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0)
}

fn main() -> krya_engine::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = std::path::PathBuf::from(args.first().expect("DIR"));
    let opt = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1)?.parse().ok())
            .unwrap_or(default)
    };
    let (runs, size) = (opt("--runs", 2), opt("--size", 64));
    let dev = Device::Cpu;
    let config =
        UNetConfig::from_json(&std::fs::read_to_string(dir.join("unet/config.json")).unwrap())?;
    let mut unet = UNet2DConditionModel::new(
        config,
        krya_engine::weights::random_var_builder(DType::F32, &dev),
    )?;
    let lora = LoraConfig {
        rank: 16,
        alpha: 16.0,
        ..Default::default()
    };
    let trained = inject(&mut unet, &lora, &mut |_, inp, out| {
        Ok((
            (Tensor::randn(0f32, 1.0, (16, inp), &dev)? / 16.0)?,
            Tensor::zeros((out, 16), DType::F32, &dev)?,
        ))
    })?;
    let alphas: Vec<f64> = (0..1000).map(|i| 1.0 - i as f64 / 1000.0 * 0.99).collect();
    let mut trainer = Trainer::new(&trained, Recipe::default(), &alphas)?;
    let x = Tensor::randn(0f32, 1.0, (1, 4, size, size), &dev)?;
    let ctx = Tensor::randn(0f32, 1.0, (1, 77, 768), &dev)?;
    let noise = Tensor::randn(0f32, 1.0, (1, 4, size, size), &dev)?;
    let batch = Batch {
        latents: &x,
        context: &ctx,
        noise: &noise,
        offset_noise: None,
        timesteps: &[500],
        mask: None,
        added: None,
    };
    trainer.step(&unet, &batch)?; // warm-up
    let mut times = Vec::new();
    for _ in 0..runs {
        let t = std::time::Instant::now();
        trainer.step(&unet, &batch)?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    println!(
        "krya ({} threads): step {:.2} s, peak {:.2} GiB",
        rayon::current_num_threads(),
        times[times.len() / 2],
        peak_gib()
    );
    Ok(())
}
