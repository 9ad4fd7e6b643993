//! The engine's side of the upscaler benchmark (`tools/bench/upscale.sh`): the median time
//! of an upscaler's forward on one square tile, per model file given.
//!
//!   cargo run --release -p krya-engine --example upscale_bench -- [--size 256] [--runs 3] FILE...

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use krya_engine::pipelines::upscale::{LoadOptions, Upscaler};

/// The allocator and settings the `krya` binary runs with (see its `main.rs`): freed
/// memory kept for reuse rather than faulted in and zeroed again for every layer's output,
/// and candle's element-wise pool not spinning between them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay`.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() {
    // SAFETY: sets an allocator option; valid at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // SAFETY: no other thread exists yet to read the environment concurrently.
        unsafe { std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "1000") };
    }
    let mut size = 256;
    let mut runs = 3;
    let mut files = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--size" => size = args.next().unwrap().parse().unwrap(),
            "--runs" => runs = args.next().unwrap().parse().unwrap(),
            _ => files.push(a),
        }
    }
    let x = Tensor::rand(0f32, 1f32, (1, 3, size, size), &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    for file in files {
        let m = Upscaler::load(std::path::Path::new(&file), &LoadOptions::default()).unwrap();
        m.net.forward(&x).unwrap();
        let mut times: Vec<f64> = (0..runs)
            .map(|_| {
                let t = Instant::now();
                m.net.forward(&x).unwrap();
                t.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "{{\"file\": {file:?}, \"architecture\": {:?}, \"size\": {size}, \"median_s\": {:.4}, \"runs\": {runs}}}",
            m.architecture.name(),
            times[runs / 2]
        );
    }
}
