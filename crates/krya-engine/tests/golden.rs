//! Fidelity against diffusers: tiny random models made by `tools/golden/make.py`, and
//! diffusers' outputs for each component and for full pipelines from the same seeds.
//! Components must agree to 1e-4; images to a mean of 0.5/255 and a maximum of 3/255.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{DType, Device, IndexOp, Tensor};
use krya_engine::model::{self, ModelSource};
use krya_engine::pipelines::stable_diffusion::tokenizer::ClipTokenizer;
use krya_engine::pipelines::stable_diffusion::unet::AddedCond;
use krya_engine::{CancelToken, GenerateRequest, SchedulerKind, StableDiffusion, image_io};
use serde_json::Value;

mod common;
use common::{image_differs, max_abs_diff};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn reference() -> &'static HashMap<String, Tensor> {
    static R: OnceLock<HashMap<String, Tensor>> = OnceLock::new();
    R.get_or_init(|| {
        candle_core::safetensors::load(dir().join("reference.safetensors"), &Device::Cpu).unwrap()
    })
}

fn r(name: &str) -> &'static Tensor {
    reference()
        .get(name)
        .unwrap_or_else(|| panic!("no reference tensor {name}"))
}

fn load(name: &str) -> StableDiffusion {
    let source = ModelSource::parse(dir().join(name).to_str().unwrap()).unwrap();
    model::load(&source, &Device::Cpu, DType::F32).unwrap()
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
    let d = max_abs_diff(got, want);
    assert!(d <= tol, "{what}: max abs diff {d} > {tol}");
}

const MODELS: &[&str] = &[
    "sd1",
    "inpaint",
    "sd2v",
    "turbo",
    "sdxl",
    "sdxl_inpaint",
    "lcm",
];

#[test]
fn tokenizers_match_transformers() {
    let prompts = [
        "a photo of a cat, highly detailed",
        "",
        "Portrait of an ASTRONAUT riding a horse!! 42 times",
    ];
    for name in MODELS {
        let m = load(name);
        for (k, tok) in m.tokenizers.iter().enumerate() {
            let want: Vec<Vec<i64>> = r(&format!("{name}.te{k}.ids")).to_vec2().unwrap();
            for (p, w) in prompts.iter().zip(want) {
                let got: Vec<i64> = tok.encode_padded(p).into_iter().map(i64::from).collect();
                assert_eq!(got, w, "{name} tokenizer {k} on {p:?}");
            }
        }
    }
}

#[test]
fn bundled_clip_tokenizer_matches_transformers() {
    let prompts: Vec<String> = serde_json::from_str(
        &std::fs::read_to_string(dir().join("clip_tokenizer_prompts.json")).unwrap(),
    )
    .unwrap();
    for (pad, key) in [("<|endoftext|>", "eot"), ("!", "bang")] {
        let tok = ClipTokenizer::standard_clip(pad).unwrap();
        let want: Vec<Vec<i64>> = r(&format!("clip_tokenizer.{key}")).to_vec2().unwrap();
        for (p, w) in prompts.iter().zip(want) {
            let got: Vec<i64> = tok.encode_padded(p).into_iter().map(i64::from).collect();
            assert_eq!(got, w, "pad {pad:?}, prompt {p:?}");
        }
    }
}

#[test]
fn single_file_checkpoint_loads_every_tensor() {
    // Loading fails if any UNet, VAE or text-encoder tensor of the file is left unused;
    // the pipeline case `ckpt_sd1` compares its image with diffusers' on the source folder.
    let m = load("sd1_checkpoint.safetensors");
    assert_eq!(m.vae_scale_factor(), 2);
    assert_eq!(m.unet.config.block_out_channels, vec![32, 64]);
    assert_eq!(m.text_encoders[0].config.vocab_size, 49408);
    let file_elements: u64 =
        candle_core::safetensors::load(dir().join("sd1_checkpoint.safetensors"), &Device::Cpu)
            .unwrap()
            .values()
            .map(|t| t.elem_count() as u64)
            .sum();
    assert_eq!(m.parameter_count, file_elements);
}

#[test]
fn model_cache_evicts_least_recently_used() {
    use krya_engine::model::cache::{ModelCache, model_bytes};
    let loads = std::cell::Cell::new(0);
    let loader = |name: &'static str| {
        let loads = &loads;
        move || {
            loads.set(loads.get() + 1);
            let m = load(name);
            let b = model_bytes(&m);
            Ok((m, b))
        }
    };
    let sd1 = load("sd1");
    let one = model_bytes(&sd1);
    assert_eq!(one, sd1.parameter_count * 4);
    assert!(one > 100_000);
    // Room for two models of this size, not three.
    let cache = ModelCache::new(one * 2 + one / 2);
    let a = cache.get_or_load("sd1", loader("sd1")).unwrap();
    let a2 = cache.get_or_load("sd1", loader("sd1")).unwrap();
    assert!(std::sync::Arc::ptr_eq(&a, &a2));
    assert_eq!(loads.get(), 1);
    cache.get_or_load("lcm", loader("lcm")).unwrap();
    cache.get_or_load("sd1", loader("sd1")).unwrap(); // sd1 is now the most recent
    cache.get_or_load("inpaint", loader("inpaint")).unwrap(); // evicts lcm
    assert_eq!(cache.keys(), vec!["sd1".to_string(), "inpaint".to_string()]);
    assert_eq!(loads.get(), 3);
    assert!(cache.used_bytes() <= one * 2 + one / 2);
}

#[test]
fn text_encoders_match_transformers() {
    for name in MODELS {
        let m = load(name);
        for (k, enc) in m.text_encoders.iter().enumerate() {
            let ids: Vec<Vec<u32>> = r(&format!("{name}.te{k}.ids"))
                .to_vec2::<i64>()
                .unwrap()
                .into_iter()
                .map(|row| row.into_iter().map(|v| v as u32).collect())
                .collect();
            let out = enc.forward(&ids, &Device::Cpu).unwrap();
            assert_close(
                &format!("{name} te{k} last"),
                &out.last_hidden_state,
                r(&format!("{name}.te{k}.last")),
                1e-4,
            );
            let n = out.hidden_states.len();
            assert_close(
                &format!("{name} te{k} penultimate"),
                &out.hidden_states[n - 2],
                r(&format!("{name}.te{k}.penultimate")),
                1e-4,
            );
            assert_close(
                &format!("{name} te{k} pooled"),
                &out.pooled,
                r(&format!("{name}.te{k}.pooled")),
                1e-4,
            );
        }
    }
}

#[test]
fn unets_match_diffusers() {
    for name in MODELS {
        let m = load(name);
        let key = |s: &str| format!("{name}.unet.{s}");
        let text_embeds = reference().get(&key("text_embeds"));
        let time_ids = reference().get(&key("time_ids"));
        let added = match (text_embeds, time_ids) {
            (Some(t), Some(i)) => Some(AddedCond {
                text_embeds: t,
                time_ids: i,
            }),
            _ => None,
        };
        let out = m
            .unet
            .forward(
                r(&key("sample")),
                421.5,
                r(&key("context")),
                reference().get(&key("timestep_cond")),
                added,
            )
            .unwrap();
        assert_close(&format!("{name} unet"), &out, r(&key("out")), 1e-4);
    }
}

#[test]
fn vaes_match_diffusers() {
    for name in MODELS {
        let m = load(name);
        let (mean, std) = m.vae.encode(r(&format!("{name}.vae.image"))).unwrap();
        assert_close(
            &format!("{name} vae mean"),
            &mean,
            r(&format!("{name}.vae.mean")),
            1e-4,
        );
        assert_close(
            &format!("{name} vae std"),
            &std,
            r(&format!("{name}.vae.std")),
            1e-4,
        );
        let dec = m.vae.decode(r(&format!("{name}.vae.latents"))).unwrap();
        assert_close(
            &format!("{name} vae decode"),
            &dec,
            r(&format!("{name}.vae.decoded")),
            1e-4,
        );
    }
}

#[test]
fn tiny_vae_matches_diffusers() {
    let taesd =
        model::diffusers::load_tiny_vae(&dir().join("taesd"), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(taesd.config.scale_factor(), 4);
    let enc = taesd.encode(r("taesd.image")).unwrap();
    assert_close("taesd encode", &enc, r("taesd.encoded"), 1e-4);
    let dec = taesd.decode(r("taesd.latents")).unwrap();
    assert_close("taesd decode", &dec, r("taesd.decoded"), 1e-4);
}

/// Runs one case of `cases.json` and compares its images with diffusers'.
fn run_case(case: &Value, models: &mut HashMap<String, StableDiffusion>) {
    let id = case["id"].as_str().unwrap();
    let model_name = case["model"].as_str().unwrap();
    let m = models
        .entry(model_name.to_string())
        .or_insert_with(|| load(model_name));
    let mode = case["mode"].as_str().unwrap();
    let mut req = GenerateRequest {
        prompt: case["prompt"].as_str().unwrap().to_string(),
        negative_prompt: case["negative_prompt"].as_str().map(String::from),
        width: Some(case["width"].as_u64().unwrap() as usize),
        height: Some(case["height"].as_u64().unwrap() as usize),
        steps: Some(case["steps"].as_u64().unwrap() as usize),
        guidance: Some(case["guidance"].as_f64().unwrap()),
        scheduler: case["scheduler"]
            .as_str()
            .map(|s| SchedulerKind::parse(s).unwrap()),
        seed: case["seed"].as_u64().unwrap(),
        batch: case["batch"].as_u64().unwrap() as usize,
        strength: case["strength"].as_f64().unwrap_or(1.0),
        ..Default::default()
    };
    if case["init_noise"].as_bool() == Some(true) {
        req.init_noise = Some(Tensor::read_npy(dir().join(format!("{id}.noise.npy"))).unwrap());
    }
    if mode != "txt2img" {
        req.init_image = Some(image_io::load_rgb(&dir().join("init.png")).unwrap());
    }
    if mode == "inpaint" {
        req.mask = Some(image_io::load_mask(&dir().join("mask.png")).unwrap());
    }
    let mut steps_seen = 0;
    let out = m
        .generate(&req, &mut |p| steps_seen = p.step, &CancelToken::new())
        .unwrap();
    assert!(steps_seen > 0, "{id}: no step reported");
    let want = r(&format!("case.{id}"));
    assert_eq!(out.images.len(), want.dim(0).unwrap(), "{id}: batch size");
    let bad: Vec<String> = out
        .images
        .iter()
        .enumerate()
        .filter_map(|(i, img)| {
            image_differs(img, &want.i(i).unwrap()).map(|e| format!("image {i}: {e}"))
        })
        .collect();
    assert!(bad.is_empty(), "{id}: {}", bad.join("; "));
}

/// Real-time frames (`realtime::Stream`) equal diffusers' text-to-image and img2img
/// pipelines with `vae = AutoencoderTiny` and a freshly seeded generator; the same frame
/// twice is the same image (fixed noise), and the prompt is encoded once for many frames.
#[test]
fn stream_frames_match_diffusers() {
    use krya_engine::pipelines::stable_diffusion::stream::{FrameRequest, Stream};
    use std::sync::Arc;
    let refs =
        candle_core::safetensors::load(dir().join("stream.safetensors"), &Device::Cpu).unwrap();
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(dir().join("stream_cases.json")).unwrap())
            .unwrap();
    // Exactly the frames make.py wrote, each with its reference: a case lost from either
    // file fails here instead of passing untested.
    assert_eq!(cases.len(), 7);
    let ids: std::collections::BTreeSet<String> = cases
        .iter()
        .map(|c| format!("stream.{}", c["id"].as_str().unwrap()))
        .collect();
    assert_eq!(ids, refs.keys().cloned().collect());
    let canvas = Arc::new(image_io::load_rgb(&dir().join("stream_canvas.png")).unwrap());
    let mut streams: HashMap<String, Stream> = HashMap::new();
    let mut bad = Vec::new();
    for case in &cases {
        let (id, name) = (
            case["id"].as_str().unwrap(),
            case["model"].as_str().unwrap(),
        );
        let stream = streams.entry(name.to_string()).or_insert_with(|| {
            let taesd = model::diffusers::load_tiny_vae(
                &dir().join(name).join("taesd"),
                &Device::Cpu,
                DType::F32,
            )
            .unwrap();
            Stream::new(Arc::new(load(name)), Some(Arc::new(taesd))).unwrap()
        });
        let frame = FrameRequest {
            prompt: case["prompt"].as_str().unwrap().to_string(),
            seed: case["seed"].as_u64().unwrap(),
            strength: case["strength"].as_f64().unwrap_or(1.0),
            steps: case["steps"].as_u64().unwrap() as usize,
            width: case["width"].as_u64().unwrap() as usize,
            height: case["height"].as_u64().unwrap() as usize,
            canvas: case["strength"].is_f64().then(|| canvas.clone()),
        };
        let img = stream.render(&frame, &CancelToken::new()).unwrap();
        assert!(stream.has_prompt(&frame.prompt), "{id}: prompt not cached");
        if let Some(e) = image_differs(&img, &refs[&format!("stream.{id}")]) {
            bad.push(format!("{id}: {e}"));
        }
        let again = stream.render(&frame, &CancelToken::new()).unwrap();
        assert_eq!(img, again, "{id}: the same frame rendered twice differs");
    }
    assert!(
        bad.is_empty(),
        "frames differ from diffusers:\n{}",
        bad.join("\n")
    );
}

/// A model without a TAESD streams through its own VAE: each frame is the image-to-image
/// generation diffusers would make with the model's own autoencoder.
#[test]
fn stream_without_a_tiny_vae_uses_the_models_own() {
    use krya_engine::pipelines::stable_diffusion::stream::{FrameRequest, Stream};
    use std::sync::Arc;
    let m = Arc::new(load("sd1"));
    let mut stream = Stream::new(m.clone(), None).unwrap();
    assert!(!stream.has_tiny_vae());
    let frame = FrameRequest {
        prompt: "a photo of a cat".into(),
        seed: 5,
        strength: 0.6,
        steps: 2,
        width: 64,
        height: 48,
        canvas: Some(Arc::new(
            image_io::load_rgb(&dir().join("init.png")).unwrap(),
        )),
    };
    let img = stream.render(&frame, &CancelToken::new()).unwrap();
    let req = stream.request(&frame).unwrap();
    assert_eq!(
        req.steps,
        Some(4),
        "2 steps at strength 0.6 run a schedule of 4"
    );
    let want = m
        .generate(&req, &mut |_| {}, &CancelToken::new())
        .unwrap()
        .images
        .remove(0);
    assert_eq!(img, want);
}

/// Models whose scheduler files are as their repos ship them run their own scheduler:
/// SD 1.5's `PNDMScheduler` (once run as Euler) and the `DPMSolverMultistepScheduler`
/// config diffusers writes, with `-Infinity` in it (once refused as invalid JSON). A
/// config without `_class_name` takes the class that `model_index.json` names, as diffusers.
#[test]
fn scheduler_configs_as_repos_ship_them() {
    assert_eq!(
        SchedulerKind::from_config(&load("sd15").scheduler_config).unwrap(),
        SchedulerKind::Pndm
    );
    let dpm =
        std::fs::read_to_string(dir().join("sd1_dpm/scheduler/scheduler_config.json")).unwrap();
    assert!(dpm.contains("-Infinity"), "{dpm}");
    assert_eq!(
        SchedulerKind::from_config(&load("sd1_dpm").scheduler_config).unwrap(),
        SchedulerKind::DpmPp2m
    );

    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("no_class");
    std::fs::create_dir_all(folder.join("scheduler")).unwrap();
    for c in ["unet", "vae", "text_encoder", "tokenizer"] {
        std::os::unix::fs::symlink(dir().join("sd1").join(c), folder.join(c)).unwrap();
    }
    std::fs::copy(
        dir().join("sd15/model_index.json"),
        folder.join("model_index.json"),
    )
    .unwrap();
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(dir().join("sd15/scheduler/scheduler_config.json")).unwrap(),
    )
    .unwrap();
    let mut config = config.as_object().unwrap().clone();
    config.remove("_class_name");
    std::fs::write(
        folder.join("scheduler/scheduler_config.json"),
        Value::Object(config).to_string(),
    )
    .unwrap();
    let m = model::diffusers::load(&folder, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(
        SchedulerKind::from_config(&m.scheduler_config).unwrap(),
        SchedulerKind::Pndm
    );
}

#[test]
fn pipelines_match_diffusers() {
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(dir().join("cases.json")).unwrap()).unwrap();
    // Exactly the cases make.py wrote, each with its reference image.
    assert_eq!(cases.len(), 33);
    let ids: std::collections::BTreeSet<String> = cases
        .iter()
        .map(|c| format!("case.{}", c["id"].as_str().unwrap()))
        .collect();
    let refs: std::collections::BTreeSet<String> = reference()
        .keys()
        .filter(|k| k.starts_with("case."))
        .cloned()
        .collect();
    assert_eq!(ids, refs);
    let mut models = HashMap::new();
    let mut failures = Vec::new();
    for case in &cases {
        let id = case["id"].as_str().unwrap().to_string();
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_case(case, &mut models)));
        if let Err(e) = result {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("{id}: {msg}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from diffusers:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn same_seed_gives_identical_png_bytes() {
    let m = load("turbo");
    let req = GenerateRequest {
        prompt: "a cat".into(),
        width: Some(32),
        height: Some(32),
        seed: 5,
        ..Default::default()
    };
    let png = |req: &GenerateRequest| {
        let out = m.generate(req, &mut |_| {}, &CancelToken::new()).unwrap();
        image_io::png_bytes(&out.images[0], "a cat").unwrap()
    };
    let a = png(&req);
    assert_eq!(a, png(&req));
    assert_ne!(
        a,
        png(&GenerateRequest {
            seed: 6,
            ..req.clone()
        })
    );
}

#[test]
fn previews_use_taesd_when_attached() {
    let mut m = load("sd1");
    let req = GenerateRequest {
        prompt: "a cat".into(),
        width: Some(32),
        height: Some(24),
        steps: Some(2),
        ..Default::default()
    };
    let mut plain = Vec::new();
    m.generate(
        &req,
        &mut |p| plain.push(p.preview.cloned().unwrap()),
        &CancelToken::new(),
    )
    .unwrap();
    // Without TAESD: the latent map, one pixel per latent (sd1's VAE factor is 4).
    assert_eq!(plain[0].dimensions(), (8, 6));
    m.preview_vae = Some(std::sync::Arc::new(
        model::diffusers::load_tiny_vae(&dir().join("taesd"), &Device::Cpu, DType::F32).unwrap(),
    ));
    let mut tiny = Vec::new();
    m.generate(
        &req,
        &mut |p| tiny.push(p.preview.cloned().unwrap()),
        &CancelToken::new(),
    )
    .unwrap();
    assert_eq!(tiny.len(), 2);
    // TAESD decodes the estimate to full size, one preview per step.
    assert_eq!(tiny[1].dimensions(), (32, 24));
    assert_ne!(tiny[0], tiny[1], "previews should follow the steps");
}

#[test]
fn cancel_stops_at_the_next_step() {
    let m = load("sd1");
    let cancel = CancelToken::new();
    let req = GenerateRequest {
        prompt: "a cat".into(),
        width: Some(32),
        height: Some(32),
        steps: Some(10),
        ..Default::default()
    };
    let mut seen = 0;
    let err = m
        .generate(
            &req,
            &mut |p| {
                seen = p.step;
                if p.step == 2 {
                    cancel.cancel();
                }
            },
            &cancel,
        )
        .err()
        .expect("cancelled");
    assert_eq!(err.code(), "cancelled");
    assert_eq!(seen, 2);
}

/// InstructPix2Pix (a UNet with 8 input channels) against diffusers'
/// `StableDiffusionInstructPix2PixPipeline` (`tools/golden/pix2pix.py`): three-way guidance
/// with image guidance, a negative prompt and a batch on DDIM, and no guidance.
#[test]
fn instruct_pix2pix_matches_diffusers() {
    let m = load("pix2pix");
    assert!(m.is_instruct_unet() && !m.is_inpainting_unet());
    let reference =
        candle_core::safetensors::load(dir().join("pix2pix/reference.safetensors"), &Device::Cpu)
            .unwrap();
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(dir().join("pix2pix/cases.json")).unwrap())
            .unwrap();
    let init = image_io::load_rgb(&dir().join("init.png")).unwrap();
    for case in &cases {
        let id = case["id"].as_str().unwrap();
        let req = GenerateRequest {
            prompt: case["prompt"].as_str().unwrap().to_string(),
            negative_prompt: case["negative_prompt"].as_str().map(String::from),
            steps: Some(case["steps"].as_u64().unwrap() as usize),
            guidance: Some(case["guidance"].as_f64().unwrap()),
            image_guidance: Some(case["image_guidance"].as_f64().unwrap()),
            scheduler: case["scheduler"]
                .as_str()
                .map(|s| SchedulerKind::parse(s).unwrap()),
            seed: case["seed"].as_u64().unwrap(),
            batch: case["batch"].as_u64().unwrap() as usize,
            init_image: Some(init.clone()),
            ..Default::default()
        };
        let out = m.generate(&req, &mut |_| {}, &CancelToken::new()).unwrap();
        let want = &reference[&format!("case.{id}")];
        assert_eq!(out.images.len(), want.dim(0).unwrap(), "{id}: batch size");
        for (i, img) in out.images.iter().enumerate() {
            assert_eq!(img.dimensions(), (64, 48), "{id}: the init image's size");
            if let Some(e) = image_differs(img, &want.i(i).unwrap()) {
                panic!("{id} image {i}: {e}");
            }
        }
    }
    // A mask, or no image, is refused.
    let e = m
        .generate(
            &GenerateRequest {
                prompt: "x".into(),
                ..Default::default()
            },
            &mut |_| {},
            &CancelToken::new(),
        )
        .err()
        .unwrap();
    assert!(e.to_string().contains("instruction-editing"), "{e}");
}
