//! Micro-benchmarks of the hot kernels at SD 2.1 / SD-Turbo UNet shapes, each beside
//! candle's own operation for the same work, measured alternately in the same run:
//!
//!     cargo bench -p krya-engine --bench kernels            # every kernel
//!     cargo bench -p krya-engine --bench kernels -- conv    # names containing "conv"
//!
//! Prints the median of each and the ratio (ours / candle's), plus GFLOP/s where the work
//! is matrix products. Not a test: nothing here can fail, a slower figure is what shows.

use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::Conv2dConfig;
use krya_engine::kernels;

/// The allocator and its setting that the `krya` binary uses (see its `main.rs`), so that
/// large outputs reuse freed memory here as they do there instead of faulting in fresh
/// pages on every call.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn median_s(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[t.len() / 2]
}

/// Times ours and theirs (named `against`) alternately (`rounds` times each, median of
/// all).
fn compare(
    name: &str,
    against: &str,
    flops: Option<f64>,
    rounds: usize,
    mut ours: impl FnMut(),
    mut theirs: impl FnMut(),
) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        a.push(median_s(3, &mut ours));
        b.push(median_s(3, &mut theirs));
    }
    a.sort_by(|x, y| x.partial_cmp(y).unwrap());
    b.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let (a, b) = (a[a.len() / 2], b[b.len() / 2]);
    let rate = |s: f64| {
        flops
            .map(|f| format!(" ({:.0} GFLOP/s)", f / s / 1e9))
            .unwrap_or_default()
    };
    println!(
        "{name:<40} ours {:>8.2} ms{}  {against} {:>8.2} ms{}  ratio {:.2}",
        a * 1e3,
        rate(a),
        b * 1e3,
        rate(b),
        a / b
    );
}

fn main() {
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_default();
    let want = |name: &str| name.contains(&filter);
    // SAFETY: sets an allocator option (mi_option_purge_delay = -1: keep freed memory).
    unsafe { libmimalloc_sys::mi_option_set(15, -1) };
    let dev = Device::Cpu;
    let vb = krya_engine::weights::random_var_builder(DType::F32, &dev);
    println!("threads: {}", rayon::current_num_threads());

    // 3×3 convolutions of the UNet's levels at 512² (latents 64², 32², 16², 8²), then of
    // the VAE decoder's upper levels at 512².
    let levels = [(320, 64), (640, 32), (1280, 16), (1280, 8)];
    for (c, s) in levels
        .into_iter()
        .chain([(512, 128), (256, 256), (128, 512)])
    {
        let name = format!("conv3x3 {c}->{c} at {s}x{s}");
        if !want(&name) {
            continue;
        }
        let cfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let ours = kernels::conv2d(c, c, 3, cfg, vb.pp(&name)).unwrap();
        let w = ours.weight().unwrap();
        let b = ours.bias().unwrap().clone();
        let theirs = candle_nn::Conv2d::new(w, Some(b), cfg);
        let x = Tensor::randn(0f32, 1.0, (1, c, s, s), &dev).unwrap();
        let flops = 18.0 * (c * c * s * s) as f64;
        compare(
            &name,
            "candle",
            Some(flops),
            5,
            || drop(ours.forward(&x).unwrap()),
            || drop(theirs.forward(&x).unwrap()),
        );
    }

    // The direct 3×3 kernel against the nine matrix products it replaced, same shapes.
    for (c, s) in levels
        .into_iter()
        .chain([(512, 128), (256, 256), (128, 512)])
    {
        let name = format!("direct conv3x3 {c}->{c} at {s}x{s}");
        let winograd = format!("winograd conv3x3 {c}->{c} at {s}x{s}");
        if !(want(&name) || want(&winograd)) || kernels::direct::lanes().is_none() {
            continue;
        }
        let w = Tensor::randn(0f32, 0.05, (c, c, 3, 3), &dev).unwrap();
        let w = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let packed = kernels::direct::pack(&w, c, c);
        let x = Tensor::randn(0f32, 1.0, (1, c, s, s), &dev).unwrap();
        let x = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let flops = 18.0 * (c * c * s * s) as f64;
        let conv = |wt: kernels::Weights3x3| drop(kernels::conv3x3_s1(&x, 1, c, s, s, wt, None, c));
        if want(&name) {
            compare(
                &name,
                "gemm",
                Some(flops),
                5,
                || conv(kernels::Weights3x3::PackedDirect(&packed)),
                || conv(kernels::Weights3x3::Plain(&w)),
            );
        }
        // Winograd's F(2×2, 3×3) where it applies (GFLOP/s counted as the direct
        // convolution's work).
        if want(&winograd) && kernels::winograd::applies(s, s) {
            compare(
                &winograd,
                "direct",
                Some(flops),
                5,
                || conv(kernels::Weights3x3::Packed(&packed)),
                || conv(kernels::Weights3x3::PackedDirect(&packed)),
            );
        }
    }

    // Group norm + SiLU (32 groups), as in every resnet block.
    for (c, s) in [(320, 64), (640, 32)] {
        let name = format!("group_norm+silu {c} at {s}x{s}");
        if !want(&name) {
            continue;
        }
        let ours = kernels::group_norm(32, c, 1e-5, vb.pp(&name)).unwrap();
        let theirs = candle_nn::group_norm(32, c, 1e-5, vb.pp(&name)).unwrap();
        let x = Tensor::randn(0f32, 1.0, (1, c, s, s), &dev).unwrap();
        compare(
            &name,
            "candle",
            None,
            5,
            || drop(ours.forward_silu(&x).unwrap()),
            || drop(theirs.forward(&x).unwrap().silu().unwrap()),
        );
    }

    // Self-attention of levels 0 and 1 at 512² (4096 tokens, 5 heads of 64; 1024, 10 × 64):
    // the online-softmax kernel against the blocked matrix-library path it replaced (which
    // cross-attention to 77 prompt tokens still takes).
    for (n, m, h) in [(4096, 4096, 5), (1024, 1024, 10)] {
        let d = 64;
        let name = format!("attention {n}x{m} tokens, {h}x{d}");
        if !want(&name) {
            continue;
        }
        let shape = kernels::AttentionShape {
            b: 1,
            n,
            m,
            heads: h,
            d,
        };
        let q: Vec<f32> = Tensor::randn(0f32, 1.0, n * h * d, &dev)
            .unwrap()
            .to_vec1()
            .unwrap();
        let kv = || -> Vec<f32> {
            Tensor::randn(0f32, 1.0, m * h * d, &dev)
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let (k, v) = (kv(), kv());
        let scale = (d as f32).powf(-0.5);
        let flops = 4.0 * (h * n * m * d) as f64;
        compare(
            &name,
            "gemm",
            Some(flops),
            3,
            || drop(kernels::attention_tokens(&q, &k, &v, shape, scale, false)),
            || {
                drop(kernels::attention_tokens_gemm(
                    &q, &k, &v, shape, scale, false,
                ))
            },
        );
    }

    // The feed-forward's GEGLU at level 0 (4096 tokens, inner 1280 x 2).
    let name = "geglu 4096x2560";
    if want(name) {
        let x = Tensor::randn(0f32, 1.0, (1, 4096, 2560), &dev).unwrap();
        compare(
            name,
            "candle",
            None,
            5,
            || drop(kernels::geglu(&x).unwrap()),
            || {
                drop(
                    (x.narrow(2, 0, 1280).unwrap()
                        * x.narrow(2, 1280, 1280).unwrap().gelu_erf().unwrap())
                    .unwrap(),
                )
            },
        );
    }

    // A projection of 77 prompt tokens (OpenCLIP-H's MLP, 1024 -> 4096), then the UNet
    // transformer's projections at level 0 (4096 tokens of 320: attention, GEGLU in, out).
    for (rows, cin, cout) in [
        (77, 1024, 4096),
        (4096, 320, 320),
        (4096, 320, 2560),
        (4096, 1280, 320),
    ] {
        let name = format!("linear {rows}x{cin} -> {cout}");
        if !want(&name) {
            continue;
        }
        let vp = vb.pp(&name);
        let ours = kernels::linear(cin, cout, vp.clone()).unwrap();
        let theirs = candle_nn::linear(cin, cout, vp).unwrap();
        let x = Tensor::randn(0f32, 1.0, (1, rows, cin), &dev).unwrap();
        let flops = 2.0 * (rows * cin * cout) as f64;
        compare(
            &name,
            "candle",
            Some(flops),
            5,
            || drop(ours.forward(&x).unwrap()),
            || drop(theirs.forward(&x).unwrap()),
        );
    }
}
