//! The training forward pass: a LoRA on the tiny SD 1.x UNet's attention gets a gradient
//! for every parameter, and those gradients are the loss's finite differences (which they
//! would not be if any op on the way — the fused softmax, the fused layer norm, the engine's
//! CPU kernels — recorded no backward step); with `up` zero the UNet gives its inference
//! output.

use std::path::PathBuf;

use candle_core::{DType, Device, IndexOp, Tensor, Var};
use krya_engine::model::{self, ModelSource};
use krya_engine::pipelines::train::lora::{LoraConfig, inject};
use krya_engine::rng::TorchRng;

fn unet() -> krya_engine::pipelines::stable_diffusion::unet::UNet2DConditionModel {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/sd1");
    model::load(&ModelSource::Folder(dir), &Device::Cpu, DType::F32)
        .unwrap()
        .unet
}

fn randn(rng: &mut TorchRng, dims: &[usize], scale: f64) -> Tensor {
    (rng.randn(dims.to_vec(), &Device::Cpu).unwrap() * scale).unwrap()
}

struct Case {
    sample: Tensor,
    context: Tensor,
    target: Tensor,
}

fn loss(
    u: &krya_engine::pipelines::stable_diffusion::unet::UNet2DConditionModel,
    c: &Case,
) -> Tensor {
    let out = u.forward(&c.sample, 500.0, &c.context, None, None).unwrap();
    (out - &c.target)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
}

#[test]
fn lora_gradients_are_the_losses_finite_differences() {
    let mut rng = TorchRng::new(3);
    let case = Case {
        sample: randn(&mut rng, &[1, 4, 8, 8], 1.0),
        context: randn(&mut rng, &[1, 5, 32], 1.0),
        target: randn(&mut rng, &[1, 4, 8, 8], 1.0),
    };
    let plain = unet();
    let want = plain
        .forward(&case.sample, 500.0, &case.context, None, None)
        .unwrap();

    // `up` zero: the inference output (through candle's ops from the first branch on).
    let mut zero = plain.clone();
    let config = LoraConfig::default();
    inject(&mut zero, &config, &mut |_, inp, out| {
        Ok((
            randn(&mut rng, &[4, inp], 0.3),
            Tensor::zeros((out, 4), DType::F32, &Device::Cpu)?,
        ))
    })
    .unwrap();
    let got = zero
        .forward(&case.sample, 500.0, &case.context, None, None)
        .unwrap();
    let d = (got - &want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d < 1e-4, "a zero LoRA changed the output by {d}");

    let mut u = plain.clone();
    let trained = inject(&mut u, &config, &mut |_, inp, out| {
        Ok((
            randn(&mut rng, &[4, inp], 0.3),
            randn(&mut rng, &[out, 4], 0.3),
        ))
    })
    .unwrap();
    // Self- and cross-attention of the four transformers: 4 projections each.
    assert_eq!(
        trained.layers.len(),
        32,
        "{:?}",
        trained.layers.iter().map(|l| &l.0).collect::<Vec<_>>()
    );
    let l = loss(&u, &case);
    let grads = l.backward().unwrap();
    for (name, b) in &trained.layers {
        for (what, v) in [("down", &b.down), ("up", &b.up)] {
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{name}.{what}: no gradient"));
            let n = g
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(n > 0.0, "{name}.{what}: a zero gradient");
        }
    }
    // Central differences on a few elements: the first branch (before every other op) and
    // the last (after them), both kinds of weight.
    let eps = 1e-2f32;
    let firsts = [
        &trained.layers[0].1,
        &trained.layers[trained.layers.len() - 1].1,
    ];
    for b in firsts {
        for v in [&b.down, &b.up] {
            let g = grads.get(v.as_tensor()).unwrap();
            for (r, c) in [(0usize, 0usize), (1, 2)] {
                let analytic = g.i((r, c)).unwrap().to_scalar::<f32>().unwrap();
                let base = v.as_tensor().copy().unwrap();
                let bump = |delta: f32, var: &Var| {
                    let mut w: Vec<Vec<f32>> = base.to_vec2().unwrap();
                    w[r][c] += delta;
                    var.set(&Tensor::new(w, &Device::Cpu).unwrap()).unwrap();
                    loss(&u, &case).to_scalar::<f32>().unwrap()
                };
                let numeric = (bump(eps, v) - bump(-eps, v)) / (2.0 * eps);
                v.set(&base).unwrap();
                let err = (numeric - analytic).abs() / analytic.abs().max(1e-3);
                assert!(
                    err < 2e-2,
                    "element ({r}, {c}): {analytic} vs finite difference {numeric}"
                );
            }
        }
    }
}
