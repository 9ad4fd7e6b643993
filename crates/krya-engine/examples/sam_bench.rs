//! The engine's side of the SAM benchmark (`tools/bench/sam.sh`): the median time of the
//! image embedding of one 1024² input and of one click's decode on it.
//!
//!   cargo run --release -p krya-engine --example sam_bench -- [--runs 3] [--clicks 10] FILE

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use krya_engine::pipelines::segment::Segmenter;
use krya_engine::pipelines::segment::sam::Point;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() {
    let mut runs = 3;
    let mut clicks = 10;
    let mut file = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().unwrap().parse().unwrap(),
            "--clicks" => clicks = args.next().unwrap().parse().unwrap(),
            _ => file = Some(a),
        }
    }
    let seg = Segmenter::load(std::path::Path::new(&file.expect("a SAM file"))).unwrap();
    let side = seg.sam.config.image_size;
    let x = Tensor::randn(0f32, 1f32, (1, 3, side, side), &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    // `--runs 0`: a random embedding, for profiling the decoder alone.
    let emb = if runs == 0 {
        let (c, g) = (seg.sam.config.channels, side / seg.sam.config.patch);
        Tensor::randn(0f32, 1f32, (1, c, g, g), &Device::Cpu).unwrap()
    } else {
        seg.sam.embed(&x).unwrap()
    };
    let embed = median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                seg.sam.embed(&x).unwrap();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    );
    let click = [Point {
        x: 500.0,
        y: 400.0,
        positive: true,
    }];
    let decode = median(
        (0..clicks)
            .map(|_| {
                let t = Instant::now();
                seg.sam.decode(&emb, &click, None, true).unwrap();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    );
    println!(
        "krya ({} threads): embed {side}² {embed:.3} s, click decode {:.1} ms",
        rayon::current_num_threads(),
        decode * 1000.0
    );
}
