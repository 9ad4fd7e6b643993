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
    // The generator draws at least 16 values at a time.
    let n: usize = dims.iter().product();
    let flat = rng.randn(vec![n.max(16)], &Device::Cpu).unwrap();
    (flat.narrow(0, 0, n).unwrap().reshape(dims).unwrap() * scale).unwrap()
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

/// Ten steps against diffusers + peft (`tools/golden/train_lora.py`): the same init, data,
/// noise and timesteps; AdamW after a warm-up, clipping, min-SNR, noise offset, a batch of
/// two. Step one's gradients agree tightly, each step's loss and the final weights to 1e-3.
#[test]
fn training_matches_diffusers_and_peft_step_by_step() {
    matches_unet_reference("reference.safetensors", &[]);
}

/// The same with the resnets' 3×3 convolutions trained too (LoCon; peft's Conv2d LoRA: a
/// k×k `down` with the layer's stride and padding, a 1×1 `up`).
#[test]
fn conv_layers_train_as_peft_trains_them() {
    matches_unet_reference("reference_conv.safetensors", &["conv1", "conv2"]);
}

fn matches_unet_reference(file: &str, more_targets: &[&str]) {
    use krya_engine::pipelines::train::recipe::{Batch, Trainer};
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let r = candle_core::safetensors::load(dir.join("train").join(file), &Device::Cpu).unwrap();
    let recipe: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("train/recipe.json")).unwrap())
            .unwrap();
    let sd = model::load(
        &ModelSource::Folder(dir.join("sd1")),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let alphas = sd.scheduler_config.alphas_cumprod().unwrap();
    let want_alphas: Vec<f32> = r["alphas_cumprod"].to_vec1().unwrap();
    for (a, b) in alphas.iter().zip(&want_alphas) {
        assert!((*a as f32 - b).abs() < 1e-6, "alphas_cumprod {a} vs {b}");
    }
    let mut u = sd.unet.clone();
    let mut config = golden_config(&recipe, "targets");
    config
        .targets
        .extend(more_targets.iter().map(|t| t.to_string()));
    let trained = inject(&mut u, &config, &mut |name, _, _| {
        Ok((
            r[&format!("init.{name}.down")].clone(),
            r[&format!("init.{name}.up")].clone(),
        ))
    })
    .unwrap();
    let mut trainer = Trainer::new(&trained, golden_recipe(&recipe), &alphas).unwrap();
    let want_loss: Vec<f64> = r["loss"].to_vec1().unwrap();
    for (step, want) in want_loss.iter().enumerate() {
        let get = |k: &str| r[&format!("step{step}.{k}")].clone();
        let timesteps = golden_timesteps(&get("timesteps"));
        let (latents, context, noise, offset) = (
            get("latents"),
            get("context"),
            get("noise"),
            get("offset_noise"),
        );
        let batch = Batch {
            latents: &latents,
            context: &context,
            noise: &noise,
            offset_noise: Some(&offset),
            timesteps: &timesteps,
            mask: None,
            added: None,
        };
        if step == 0 {
            // A mask weighs each latent pixel's error: all ones is no mask, and a mask and
            // its complement split the loss in two.
            let scalar = |mask: Option<&Tensor>| -> f32 {
                let b = Batch { mask, ..batch };
                trainer.loss(&u, &b).unwrap().to_scalar::<f32>().unwrap()
            };
            let (_, _, h, w) = latents.dims4().unwrap();
            let left: Vec<f32> = (0..h * w)
                .map(|i| if i % w < w / 2 { 1.0 } else { 0.0 })
                .collect();
            let left = Tensor::from_vec(left, (1, 1, h, w), &Device::Cpu).unwrap();
            let ones = left.ones_like().unwrap();
            let right = (&ones - &left).unwrap();
            let full = scalar(None);
            assert!((scalar(Some(&ones)) - full).abs() <= 1e-6 * full.abs());
            let (a, b) = (scalar(Some(&left)), scalar(Some(&right)));
            assert!(
                a > 0.0 && b > 0.0 && ((a + b) - full).abs() < 1e-5 * full.abs(),
                "{a} + {b} vs {full}"
            );
            let (_, grads) = trainer.gradients(&u, &batch).unwrap();
            for (name, b) in &trained.layers {
                for (what, v) in [("down", &b.down), ("up", &b.up)] {
                    let e = rel(
                        grads.get(v.as_tensor()).unwrap(),
                        &r[&format!("grad0.{name}.{what}")],
                    );
                    assert!(
                        e < 1e-4,
                        "step 1 gradient of {name}.{what}: relative error {e}"
                    );
                }
            }
        }
        assert_loss(trainer.step(&u, &batch).unwrap(), *want, step);
    }
    assert_final(&trained, &r, "final");
}

/// `‖a − b‖ / ‖b‖`.
fn rel(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .sqrt()
        .unwrap();
    let n = b.sqr().unwrap().sum_all().unwrap().sqrt().unwrap();
    (d / n).unwrap().to_scalar::<f32>().unwrap()
}

/// A reference's timesteps (int64) as the trainer takes them.
fn golden_timesteps(t: &Tensor) -> Vec<usize> {
    t.to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|t| t as usize)
        .collect()
}

/// Step `step`'s loss is the reference's within 1e-3 (relative).
fn assert_loss(loss: f32, want: f64, step: usize) {
    let loss = loss as f64;
    assert!(
        (loss - want).abs() / want.abs() < 1e-3,
        "step {}: loss {loss} vs {want}",
        step + 1
    );
}

/// Every branch's weights are the reference's `{prefix}.{layer}.down/up` within 1e-3.
fn assert_final(
    layers: &krya_engine::pipelines::train::lora::Trainable,
    r: &std::collections::HashMap<String, Tensor>,
    prefix: &str,
) {
    for (name, b) in &layers.layers {
        for (what, v) in [("down", &b.down), ("up", &b.up)] {
            let e = rel(v.as_tensor(), &r[&format!("{prefix}.{name}.{what}")]);
            assert!(e < 1e-3, "{name}.{what} after 10 steps: relative error {e}");
        }
    }
}

/// The LoRA of a reference recipe (`targets_key`: its layers).
fn golden_config(recipe: &serde_json::Value, targets_key: &str) -> LoraConfig {
    LoraConfig {
        rank: recipe["rank"].as_u64().unwrap() as usize,
        alpha: recipe["alpha"].as_f64().unwrap(),
        targets: recipe[targets_key]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect(),
    }
}

/// The optimiser of a reference recipe.
fn golden_recipe(recipe: &serde_json::Value) -> krya_engine::pipelines::train::recipe::Recipe {
    use krya_engine::pipelines::train::recipe::{Prediction, Recipe};
    Recipe {
        lr: recipe["lr"].as_f64().unwrap(),
        beta1: 0.9,
        beta2: 0.999,
        eps: recipe["eps"].as_f64().unwrap(),
        weight_decay: recipe["weight_decay"].as_f64().unwrap(),
        warmup_steps: recipe["warmup"].as_u64().unwrap() as usize,
        max_grad_norm: recipe["max_grad_norm"].as_f64(),
        snr_gamma: recipe["snr_gamma"].as_f64(),
        noise_offset: recipe["noise_offset"].as_f64().unwrap(),
        prediction: Prediction::Epsilon,
        text_lr: recipe["te_lr"].as_f64(),
    }
}

/// With the text encoder trained too (diffusers' `--train_text_encoder`, peft's LoRA on its
/// attention, its own learning rate, one optimiser and one clipping over both), each step's
/// text states come from the encoder with its LoRA on the reference's token ids, in the
/// graph: after ten steps the losses and both models' LoRA weights match.
#[test]
fn text_encoder_training_matches_diffusers_and_peft() {
    use krya_engine::pipelines::train::lora::inject_text;
    use krya_engine::pipelines::train::recipe::{Batch, Trainer};
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let r =
        candle_core::safetensors::load(dir.join("train/reference_te.safetensors"), &Device::Cpu)
            .unwrap();
    let recipe: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("train/recipe_te.json")).unwrap())
            .unwrap();
    let sd = model::load(
        &ModelSource::Folder(dir.join("sd1")),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let init = |prefix: &'static str| {
        let r = &r;
        move |name: &str, _: usize, _: usize| {
            Ok((
                r[&format!("{prefix}.{name}.down")].clone(),
                r[&format!("{prefix}.{name}.up")].clone(),
            ))
        }
    };
    let mut u = sd.unet.clone();
    let unet_lora = inject(
        &mut u,
        &golden_config(&recipe, "targets"),
        &mut init("init"),
    )
    .unwrap();
    let mut te = sd.text_encoders[0].clone();
    let te_lora = inject_text(
        &mut te,
        &golden_config(&recipe, "te_targets"),
        &mut init("te_init"),
    )
    .unwrap();
    assert_eq!(te_lora.layers.len(), 8);
    let alphas = sd.scheduler_config.alphas_cumprod().unwrap();
    let mut trainer =
        Trainer::with_text(&unet_lora, Some(&te_lora), golden_recipe(&recipe), &alphas).unwrap();
    let want_loss: Vec<f64> = r["loss"].to_vec1().unwrap();
    for (step, want) in want_loss.iter().enumerate() {
        let get = |k: &str| r[&format!("step{step}.{k}")].clone();
        let ids: Vec<Vec<u32>> = get("ids")
            .to_vec2::<i64>()
            .unwrap()
            .into_iter()
            .map(|row| row.into_iter().map(|t| t as u32).collect())
            .collect();
        let timesteps = golden_timesteps(&get("timesteps"));
        let context = te.forward(&ids, &Device::Cpu).unwrap().last_hidden_state;
        let (latents, noise, offset) = (get("latents"), get("noise"), get("offset_noise"));
        let batch = Batch {
            latents: &latents,
            context: &context,
            noise: &noise,
            offset_noise: Some(&offset),
            timesteps: &timesteps,
            mask: None,
            added: None,
        };
        assert_loss(trainer.step(&u, &batch).unwrap(), *want, step);
    }
    assert_final(&unet_lora, &r, "final");
    assert_final(&te_lora, &r, "te_final");
}

/// On the tiny SDXL UNet with its added conditioning (the pooled text state and the size
/// `time_ids`), as diffusers' SDXL LoRA script passes it: every loss and the final weights.
#[test]
fn sdxl_training_matches_diffusers_and_peft() {
    use krya_engine::pipelines::train::recipe::{Batch, Trainer};
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let r =
        candle_core::safetensors::load(dir.join("train/reference_sdxl.safetensors"), &Device::Cpu)
            .unwrap();
    let recipe: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("train/recipe.json")).unwrap())
            .unwrap();
    let sd = model::load(
        &ModelSource::Folder(dir.join("sdxl")),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let mut u = sd.unet.clone();
    let trained = inject(
        &mut u,
        &golden_config(&recipe, "targets"),
        &mut |name, _, _| {
            Ok((
                r[&format!("init.{name}.down")].clone(),
                r[&format!("init.{name}.up")].clone(),
            ))
        },
    )
    .unwrap();
    let alphas = sd.scheduler_config.alphas_cumprod().unwrap();
    let mut trainer = Trainer::new(&trained, golden_recipe(&recipe), &alphas).unwrap();
    let want_loss: Vec<f64> = r["loss"].to_vec1().unwrap();
    for (step, want) in want_loss.iter().enumerate() {
        let get = |k: &str| r[&format!("step{step}.{k}")].clone();
        let timesteps = golden_timesteps(&get("timesteps"));
        let (latents, context, noise, offset) = (
            get("latents"),
            get("context"),
            get("noise"),
            get("offset_noise"),
        );
        let (pooled, time_ids) = (get("pooled"), get("time_ids"));
        let batch = Batch {
            latents: &latents,
            context: &context,
            noise: &noise,
            offset_noise: Some(&offset),
            timesteps: &timesteps,
            mask: None,
            added: Some((&pooled, &time_ids)),
        };
        assert_loss(trainer.step(&u, &batch).unwrap(), *want, step);
    }
    assert_final(&trained, &r, "final");
}

/// A whole run on the tiny SDXL model: its images' pooled states and size conditioning go
/// in, the loss on fixed draws falls, and the kohya file (SGM names) applies to the model.
#[test]
fn an_sdxl_run_trains_and_saves() {
    use krya_engine::CancelToken;
    use krya_engine::pipelines::train::export::Metadata;
    use krya_engine::pipelines::train::run::train;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let sd = model::load(
        &ModelSource::Folder(dir.join("sdxl")),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let mut p = plan(30);
    p.recipe.lr = 1e-2;
    let trained = train(
        &sd,
        &pictures(),
        &p,
        None,
        &mut |_| Ok(()),
        &mut |_| Ok(()),
        &CancelToken::new(),
    )
    .unwrap();
    let (before, after) = trained.eval;
    assert!(
        after < before,
        "the fixed-draw loss went from {before} to {after}"
    );
    let meta = Metadata {
        family: "sdxl".into(),
        ..Default::default()
    };
    let bytes = trained.kohya(&sd, &meta).unwrap();
    let keys = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
    assert!(
        keys.keys()
            .any(|k| k.starts_with("lora_unet_input_blocks_")),
        "{:?}",
        keys.keys()
    );
    let file = krya_engine::pipelines::lora::LoraFile::from_bytes(&bytes, "xl").unwrap();
    krya_engine::pipelines::lora::apply(
        &sd,
        &[(&file, krya_engine::pipelines::lora::Strength::new(1.0))],
    )
    .unwrap();
}

/// A trained LoRA (linear and convolution layers) saved as kohya does (SD 1.x with diffusers' names, SDXL with the SGM
/// ones) loads back through the engine's own LoRA loader and, merged into the base, gives
/// what the UNet with its training branches gives.
#[test]
fn saved_loras_load_back_as_kohya_files() {
    use krya_engine::pipelines::lora::{self, LoraFile, Strength};
    use krya_engine::pipelines::train::export::{Metadata, kohya_bytes};
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut rng = TorchRng::new(5);
    for (name, family) in [("sd1", "sd1"), ("sdxl", "sdxl")] {
        let sd = model::load(
            &ModelSource::Folder(dir.join(name)),
            &Device::Cpu,
            DType::F32,
        )
        .unwrap();
        let mut u = sd.unet.clone();
        let config = LoraConfig {
            rank: 3,
            alpha: 1.5,
            // And the resnets' convolutions (LoCon).
            targets: [
                "to_q", "to_k", "to_v", "to_out.0", "ff.net.2", "conv1", "conv2",
            ]
            .map(String::from)
            .to_vec(),
        };
        let trained = inject(&mut u, &config, &mut |_, inp, out| {
            Ok((
                randn(&mut rng, &[3, inp], 0.3),
                randn(&mut rng, &[out, 3], 0.3),
            ))
        })
        .unwrap();
        let meta = Metadata {
            family: family.into(),
            name: "tiny-style".into(),
            trigger: Some("zkx style".into()),
            steps: 10,
            resolution: 64,
            rank: 3,
            alpha: 1.5,
            base_model: name.into(),
            ..Default::default()
        };
        let bytes = kohya_bytes(&trained, None, &sd.unet, &meta).unwrap();
        let file = LoraFile::from_bytes(&bytes, "tiny-style.safetensors").unwrap();
        assert_eq!(file.base_hint(), Some(family));
        assert_eq!(file.metadata["modelspec.trigger_phrase"], "zkx style");
        assert_eq!(file.metadata["ss_network_dim"], "3");
        assert!(file.modules.iter().all(|m| m.key.starts_with("lora_unet_")));
        if family == "sdxl" {
            assert!(
                file.modules
                    .iter()
                    .any(|m| m.key.starts_with("lora_unet_input_blocks_")),
                "SGM names"
            );
        }
        let (merged, _) = lora::apply(&sd, &[(&file, Strength::new(1.0))]).unwrap();
        let c = &sd.unet.config;
        let ctx = match &c.cross_attention_dim {
            serde_json::Value::Number(n) => n.as_u64().unwrap() as usize,
            _ => panic!(),
        };
        let sample = randn(&mut rng, &[1, c.in_channels, 8, 8], 1.0);
        let context = randn(&mut rng, &[1, 5, ctx], 1.0);
        let added = sd.unet.added_cond_dims().map(|(input, tdim)| {
            let pooled = input - 6 * tdim;
            (
                randn(&mut rng, &[1, pooled], 1.0),
                randn(&mut rng, &[1, 6], 100.0),
            )
        });
        let run = |u: &krya_engine::pipelines::stable_diffusion::unet::UNet2DConditionModel| {
            let a = added.as_ref().map(|(p, t)| {
                krya_engine::pipelines::stable_diffusion::unet::AddedCond {
                    text_embeds: p,
                    time_ids: t,
                }
            });
            u.forward(&sample, 300.0, &context, None, a)
                .unwrap()
                .detach()
        };
        let d = (run(&u) - run(&merged.unet))
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            d < 1e-4,
            "{name}: the merged file differs from the trained branches by {d}"
        );
    }
}

fn pictures() -> Vec<krya_engine::pipelines::train::run::Example> {
    use krya_engine::pipelines::train::run::Example;
    let pic = |w: u32, h: u32, k: u32| {
        image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                ((x * 7 + k * 40) % 256) as u8,
                ((y * 5 + k * 90) % 256) as u8,
                ((x + y) * 3 % 256) as u8,
            ])
        })
    };
    vec![
        Example {
            image: pic(64, 32, 0),
            caption: "a red sofa".into(),
            mask: None,
        },
        Example {
            image: pic(48, 64, 1),
            caption: "a cat".into(),
            mask: None,
        },
        Example {
            image: pic(40, 40, 2),
            caption: "".into(),
            mask: None,
        },
    ]
}

fn plan(steps: usize) -> krya_engine::pipelines::train::run::Plan {
    use krya_engine::pipelines::train::recipe::Recipe;
    krya_engine::pipelines::train::run::Plan {
        lora: LoraConfig::default(),
        recipe: Recipe {
            lr: 3e-3,
            warmup_steps: 2,
            snr_gamma: Some(5.0),
            noise_offset: 0.05,
            ..Default::default()
        },
        steps,
        resolution: 48,
        caption_dropout: 0.1,
        trigger: Some("zkx".into()),
        seed: 9,
        checkpoint_every: 5,
        sample_every: 0,
        sample_prompt: "a cat".into(),
        sample_steps: 2,
        text: None,
    }
}

/// Images go to their aspect ratio's bucket; cancelled mid-way, a run leaves a
/// checkpoint from which it resumes to the very weights of the run that was never stopped;
/// samples come every few steps.
#[test]
fn a_run_learns_and_resumes_exactly() {
    use krya_engine::CancelToken;
    use krya_engine::pipelines::train::run::{Checkpoint, buckets, train};
    // kohya's buckets in steps of 16, aspect ratios up to 2:1.
    assert_eq!(buckets(64, 16), [(48, 80), (64, 64), (80, 48)]);
    assert_eq!(buckets(48, 16), [(32, 64), (48, 48), (64, 32)]);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let sd = model::load(
        &ModelSource::Folder(dir.join("sd1")),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let examples = pictures();
    // The UNet alone, then with the text encoder training too.
    for text in [false, true] {
        let plan = |steps| {
            let mut p = plan(steps);
            if text {
                p.text = Some(LoraConfig {
                    targets: ["q_proj", "k_proj", "v_proj", "out_proj"]
                        .map(String::from)
                        .to_vec(),
                    ..LoraConfig::default()
                });
                p.recipe.text_lr = Some(1e-3);
            }
            p
        };
        let whole = train(
            &sd,
            &examples,
            &plan(20),
            None,
            &mut |_| Ok(()),
            &mut |_| Ok(()),
            &CancelToken::new(),
        )
        .unwrap();
        assert_eq!(whole.losses.len(), 20);
        assert_eq!(whole.text.is_some(), text);

        // Cancelled after step 12: the checkpoint says 12 steps; resumed, it ends where the
        // whole run ended.
        let cancel = CancelToken::new();
        let mut saved: Vec<Vec<u8>> = Vec::new();
        let stopped = train(
            &sd,
            &examples,
            &plan(20),
            None,
            &mut |p| {
                if p.step == 12 {
                    cancel.cancel();
                }
                Ok(())
            },
            &mut |c| {
                saved.push(c.to_bytes()?);
                Ok(())
            },
            &cancel,
        );
        assert!(matches!(stopped, Err(krya_engine::EngineError::Cancelled)));
        // Periodic checkpoints at 5 and 10, then the one of the cancel.
        let steps: Vec<usize> = saved
            .iter()
            .map(|b| Checkpoint::from_bytes(b).unwrap().step)
            .collect();
        assert_eq!(steps, [5, 10, 12]);
        let last = Checkpoint::from_bytes(saved.last().unwrap()).unwrap();
        assert_eq!(last.losses[..], whole.losses[..12]);
        let mut samples = 0;
        let mut p = plan(20);
        p.sample_every = 4;
        let resumed = train(
            &sd,
            &examples,
            &p,
            Some(last),
            &mut |pr| {
                samples += pr.sample.is_some() as usize;
                assert!(pr.step > 12);
                Ok(())
            },
            &mut |_| Ok(()),
            &CancelToken::new(),
        )
        .unwrap();
        assert_eq!(samples, 2, "samples at steps 16 and 20");
        assert_eq!(resumed.losses, whole.losses);
        // The loss where the whole run started, carried by the checkpoint.
        assert_eq!(resumed.eval.0, whole.eval.0);
        let layers = |t: &krya_engine::pipelines::train::run::Trained| {
            let mut all: Vec<_> = t.trainable.layers.clone();
            all.extend(t.text.iter().flat_map(|x| x.layers.clone()));
            all
        };
        let (a, b) = (layers(&whole), layers(&resumed));
        assert_eq!(a.len(), b.len());
        for ((n, a), (_, b)) in a.iter().zip(&b) {
            let d = (a.up.as_tensor() - b.up.as_tensor())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(d, 0.0, "{n}: the resumed run's weights differ");
        }
        // The kohya file carries the text encoder's layers when it trained.
        let meta = krya_engine::pipelines::train::export::Metadata {
            family: "sd1".into(),
            ..Default::default()
        };
        let file = krya_engine::pipelines::lora::LoraFile::from_bytes(
            &whole.kohya(&sd, &meta).unwrap(),
            "t",
        )
        .unwrap();
        let (_, bytes) = krya_engine::pipelines::lora::apply(
            &sd,
            &[(&file, krya_engine::pipelines::lora::Strength::new(1.0))],
        )
        .unwrap();
        assert!(bytes > 0);
        if text {
            let names = candle_core::safetensors::load_buffer(
                &whole.kohya(&sd, &meta).unwrap(),
                &Device::Cpu,
            )
            .unwrap();
            assert_eq!(
                names
                    .keys()
                    .filter(|k| k.starts_with("lora_te_") && k.ends_with(".lora_up.weight"))
                    .count(),
                8
            );
        }
    }
}

/// A longer run lowers the loss on fixed draws (every image, five timesteps, the same noise)
/// by more than a fifth.
#[test]
fn a_longer_run_learns_its_images() {
    use krya_engine::CancelToken;
    use krya_engine::pipelines::train::run::{Example, train};
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let sd = model::load(
        &ModelSource::Folder(dir.join("sd1")),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let target = image::RgbImage::from_fn(48, 48, |x, y| {
        image::Rgb(if (x / 12 + y / 12) % 2 == 0 {
            [230, 40, 40]
        } else {
            [20, 20, 200]
        })
    });
    let examples = vec![Example {
        image: target,
        caption: "a cat".into(),
        mask: None,
    }];
    let mut p = plan(80);
    p.recipe.lr = 1e-2;
    p.caption_dropout = 0.0;
    p.sample_steps = 4;
    let trained = train(
        &sd,
        &examples,
        &p,
        None,
        &mut |_| Ok(()),
        &mut |_| Ok(()),
        &CancelToken::new(),
    )
    .unwrap();
    let (before, after) = trained.eval;
    assert!(
        after < 0.8 * before,
        "the fixed-draw loss went from {before} to {after}"
    );
}
