//! The engine's side of the editor's model benchmark (`tools/bench/erase_matte.sh`): the
//! median time of big-lama's generator on one 512² input and of IS-Net on one 1024² input.
//!
//!   cargo run --release -p krya-engine --example erase_matte_bench -- [--runs 3] DIR

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use krya_engine::model::state_dict;
use krya_engine::pipelines::erase::lama::Lama;
use krya_engine::pipelines::matte::isnet::IsNet;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn main() {
    let mut runs = 3;
    let mut dir = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().unwrap().parse().unwrap(),
            _ => dir = Some(PathBuf::from(a)),
        }
    }
    let dir = dir.expect("the directory erase_matte_torch.py wrote");
    let lama = Lama::from_state_dict(state_dict::read(&dir.join("big-lama.safetensors")).unwrap())
        .unwrap();
    let x = Tensor::rand(0f32, 1f32, (1, 4, 512, 512), &Device::Cpu).unwrap();
    let t_lama = time(runs, || {
        lama.forward(&x).unwrap();
    });
    let net =
        IsNet::from_state_dict(state_dict::read(&dir.join("isnet.safetensors")).unwrap()).unwrap();
    let y = (Tensor::rand(0f32, 1f32, (1, 3, 1024, 1024), &Device::Cpu).unwrap() - 0.5).unwrap();
    let t_isnet = time(runs, || {
        net.forward(&y).unwrap();
    });
    println!(
        "krya ({} threads): lama 512² {t_lama:.3} s, isnet 1024² {t_isnet:.3} s",
        rayon::current_num_threads()
    );
}
