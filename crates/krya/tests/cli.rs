//! The `krya` binary end to end: generation from the committed tiny models, the PNG it
//! writes, the model registry, and each bad-input case (one line on stderr, exit 2).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../krya-engine/tests/golden")
        .join(name)
}

fn krya(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_krya"))
        .args(args)
        .env("KRYA_HOME", home)
        .env("HF_HUB_CACHE", home.join("hf"))
        // Never the real hub: offline, and a closed loopback port if anything asked.
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_ENDPOINT", "http://127.0.0.1:1")
        .env_remove("HF_HOME")
        .output()
        .expect("run krya")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit status 2 and exactly one `krya:` line on stderr containing `needle`.
fn assert_user_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("krya:")).collect();
    assert_eq!(lines.len(), 1, "stderr: {err}");
    assert!(
        lines[0].contains(needle),
        "{needle:?} not in {:?}",
        lines[0]
    );
    assert!(!err.contains("panicked"), "{err}");
}

fn png_parameters(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    krya_engine::image_io::read_png_parameters(&bytes).expect("parameters chunk")
}

#[test]
fn generate_writes_pngs_with_parameters() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cat.png");
    let model = golden("sd1");
    let run = |out: &Path| {
        let args = "generate --prompt a~(cat:1.2) --negative-prompt blurry --steps 2 --guidance 5 --scheduler dpmpp_2m_karras --seed 9 --width 32 --height 24 --batch 2";
        let mut v: Vec<String> = args.split(' ').map(|a| a.replace('~', " ")).collect();
        v.extend([
            "--model".into(),
            model.to_str().unwrap().into(),
            "--out".into(),
            out.to_str().unwrap().into(),
        ]);
        krya(
            tmp.path(),
            &v.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    };
    let o = run(&out);
    assert!(o.status.success(), "{}", stderr(&o));
    for (i, seed) in [(1, 9), (2, 10)] {
        let p = tmp.path().join(format!("cat-{i}.png"));
        let img = image::open(&p).unwrap();
        assert_eq!((img.width(), img.height()), (32, 24));
        let params = png_parameters(&p);
        assert_eq!(
            params,
            format!(
                "a (cat:1.2)\nNegative prompt: blurry\nSteps: 2, Sampler: DPM++ 2M Karras, CFG scale: 5, Seed: {seed}, Size: 32x24, Model: sd1"
            )
        );
    }
    // The same seed and inputs give the same bytes.
    let again = tmp.path().join("again.png");
    let o = run(&again);
    assert!(o.status.success(), "{}", stderr(&o));
    for i in 1..=2 {
        let (a, b) = (
            tmp.path().join(format!("again-{i}.png")),
            tmp.path().join(format!("cat-{i}.png")),
        );
        assert!(
            std::fs::read(a).unwrap() == std::fs::read(b).unwrap(),
            "image {i} differs between identical runs"
        );
    }
}

/// `--lora FILE[:WEIGHT]` and `<lora:NAME:WEIGHT>` in the prompt apply the same LoRA (a
/// registered name or a path); weight 0 is the base model's image; the recorded parameters
/// keep the tags; a missing file or a LoRA for another base is one line, exit 2.
#[test]
fn generate_applies_loras_from_flags_and_prompt_tags() {
    let tmp = tempfile::tempdir().unwrap();
    let model = golden("sd1");
    let lora = golden("lora/sd1_kohya.safetensors");
    let add = krya(
        tmp.path(),
        &["models", "add", "kohya", lora.to_str().unwrap()],
    );
    assert!(add.status.success(), "{}", stderr(&add));
    let run = |name: &str, prompt: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let mut args = vec![
            "generate",
            "--prompt",
            prompt,
            "--steps",
            "2",
            "--seed",
            "4",
            "--width",
            "32",
            "--height",
            "32",
            "--model",
            model.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        (krya(tmp.path(), &args), out)
    };
    let (o, plain) = run("plain.png", "a cat", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let spec = format!("{}:0.7", lora.display());
    let (o, flag) = run("flag.png", "a cat", &["--lora", &spec]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (o, tag) = run("tag.png", "a cat <lora:kohya:0.7>", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (o, zero) = run("zero.png", "a cat", &["--lora", "kohya:0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let pixels = |p: &Path| image::open(p).unwrap().to_rgb8().into_raw();
    assert_eq!(pixels(&flag), pixels(&tag));
    assert_ne!(pixels(&flag), pixels(&plain));
    assert_eq!(pixels(&zero), pixels(&plain));
    assert!(png_parameters(&tag).starts_with("a cat <lora:kohya:0.7>\n"));
    assert!(png_parameters(&flag).starts_with(&format!("a cat <lora:{}:0.7>\n", lora.display())));

    let (o, _) = run("x.png", "a cat", &["--lora", "nowhere.safetensors"]);
    assert_user_error(&o, "nowhere.safetensors");
    let xl = golden("lora/sdxl_kohya.safetensors");
    let (o, _) = run("x.png", "a cat", &["--lora", xl.to_str().unwrap()]);
    assert_user_error(&o, "the file says it is for sdxl");
    let (o, _) = run("x.png", "a cat <lora:kohya:lots>", &[]);
    assert_user_error(&o, "not a weight");
}

#[test]
fn turbo_defaults_and_registry_names() {
    let tmp = tempfile::tempdir().unwrap();
    let model = golden("turbo");
    let o = krya(
        tmp.path(),
        &["models", "add", "tiny-turbo", model.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let list = krya(tmp.path(), &["models", "list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains("tiny-turbo") && text.contains(" MB "),
        "{text}"
    );
    let out = tmp.path().join("t.png");
    let o = krya(
        tmp.path(),
        &[
            "generate",
            "--model",
            "tiny-turbo",
            "--prompt",
            "a cat",
            "--seed",
            "1",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // A turbo model (trailing Euler schedule) defaults to one step without guidance, at
    // its UNet's sample size times the VAE factor (8 x 2).
    let params = png_parameters(&out);
    assert!(
        params.contains("Steps: 1, Sampler: Euler, CFG scale: 0,")
            && params.contains("Size: 16x16, Model: tiny-turbo"),
        "{params}"
    );
    let o = krya(tmp.path(), &["models", "rm", "tiny-turbo"]);
    assert!(o.status.success());
    assert_user_error(
        &krya(tmp.path(), &["models", "rm", "tiny-turbo"]),
        "no model named",
    );
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let sd1 = golden("sd1");
    let sd1 = sd1.to_str().unwrap();
    let out = t.join("o.png");
    let out = out.to_str().unwrap();
    let base = |extra: &[&str]| {
        let mut v = vec![
            "generate", "--model", sd1, "--prompt", "x", "--steps", "1", "--out", out,
        ];
        v.extend_from_slice(extra);
        krya(t, &v)
    };
    assert_user_error(
        &base(&["--width", "30", "--height", "32"]),
        "multiples of 4",
    );
    assert_user_error(
        &base(&["--scheduler", "heun"]),
        "unknown scheduler \"heun\"",
    );
    assert_user_error(
        &base(&["--init-image", "/nonexistent.png"]),
        "init image /nonexistent.png does not exist",
    );
    let not_image = t.join("notes.png");
    std::fs::write(&not_image, b"hello, not a picture").unwrap();
    assert_user_error(
        &base(&["--init-image", not_image.to_str().unwrap()]),
        "notes.png",
    );
    let init = golden("init.png");
    let small_mask = t.join("mask.png");
    image::GrayImage::new(8, 8).save(&small_mask).unwrap();
    assert_user_error(
        &base(&[
            "--init-image",
            init.to_str().unwrap(),
            "--mask",
            small_mask.to_str().unwrap(),
        ]),
        "the mask is 8x8 but the image is 64x48",
    );
    assert_user_error(
        &base(&["--mask", small_mask.to_str().unwrap()]),
        "--mask needs --init-image",
    );
    let noise = golden("sd1_init_noise.noise.npy");
    assert_user_error(
        &base(&[
            "--init-noise",
            noise.to_str().unwrap(),
            "--width",
            "32",
            "--height",
            "32",
        ]),
        "init noise has shape",
    );
    assert_user_error(
        &krya(
            t,
            &[
                "generate",
                "--model",
                "nobody/nothing",
                "--prompt",
                "x",
                "--out",
                out,
            ],
        ),
        "not in the Hugging Face cache",
    );
    assert_user_error(
        &krya(
            t,
            &[
                "generate",
                "--model",
                "./no-such-dir",
                "--prompt",
                "x",
                "--out",
                out,
            ],
        ),
        "is not a folder",
    );
    assert_user_error(&base(&["--batch", "0"]), "--batch must be between 1 and 64");
    let broken = t.join("broken");
    std::fs::create_dir_all(broken.join("unet")).unwrap();
    std::fs::create_dir_all(broken.join("vae")).unwrap();
    std::fs::write(broken.join("unet/config.json"), "{ not json").unwrap();
    assert_user_error(
        &krya(
            t,
            &[
                "generate",
                "--model",
                broken.to_str().unwrap(),
                "--prompt",
                "x",
                "--out",
                out,
            ],
        ),
        "unet config",
    );
    assert!(!Path::new(out).exists(), "no output on failure");
}

#[test]
fn bench_reports_each_component() {
    let tmp = tempfile::tempdir().unwrap();
    let model = golden("sdxl");
    let o = krya(
        tmp.path(),
        &[
            "bench",
            "--model",
            model.to_str().unwrap(),
            "--random-weights",
            "--width",
            "32",
            "--height",
            "32",
            "--runs",
            "2",
            "--warmup",
            "0",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["random_weights"], true);
    for c in ["text-encoder", "unet", "vae-decode", "vae-encode"] {
        let runs = v["components"][c]["runs_s"].as_array().unwrap();
        assert_eq!(runs.len(), 2, "{c}");
        let median = v["components"][c]["median_s"].as_f64().unwrap();
        assert!(
            median > 0.0 && runs.iter().all(|r| r.as_f64().unwrap() > 0.0),
            "{c}: {v}"
        );
    }
    assert_user_error(
        &krya(
            tmp.path(),
            &[
                "bench",
                "--model",
                model.to_str().unwrap(),
                "--components",
                "unet,flux",
            ],
        ),
        "unknown component \"flux\"",
    );
}

#[test]
fn single_file_checkpoints_generate_and_bad_files_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = golden("sd1_checkpoint.safetensors");
    let out = tmp.path().join("c.png");
    let o = krya(
        tmp.path(),
        &[
            "generate",
            "--model",
            ckpt.to_str().unwrap(),
            "--prompt",
            "a cat",
            "--steps",
            "2",
            "--width",
            "32",
            "--height",
            "32",
            "--seed",
            "1",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        png_parameters(&out).ends_with("Model: sd1_checkpoint"),
        "{}",
        png_parameters(&out)
    );
    let junk = tmp.path().join("junk.safetensors");
    std::fs::write(&junk, b"definitely not safetensors").unwrap();
    assert_user_error(
        &krya(
            tmp.path(),
            &[
                "generate",
                "--model",
                junk.to_str().unwrap(),
                "--prompt",
                "x",
                "--out",
                out.to_str().unwrap(),
            ],
        ),
        "cannot read safetensors",
    );
    let pickle = tmp.path().join("old.ckpt");
    std::fs::write(&pickle, b"PK").unwrap();
    assert_user_error(
        &krya(
            tmp.path(),
            &[
                "generate",
                "--model",
                pickle.to_str().unwrap(),
                "--prompt",
                "x",
                "--out",
                out.to_str().unwrap(),
            ],
        ),
        "only .safetensors checkpoints",
    );
}

#[test]
fn serve_prints_its_address_and_answers_health() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // A model added with the CLI for this data directory is one the server offers.
    let added = krya(
        tmp.path(),
        &[
            "models",
            "--data-dir",
            data.to_str().unwrap(),
            "add",
            "mine",
            golden("turbo").to_str().unwrap(),
        ],
    );
    assert!(added.status.success(), "{}", stderr(&added));
    let listed = krya(
        tmp.path(),
        &["models", "list", "--data-dir", data.to_str().unwrap()],
    );
    assert!(String::from_utf8_lossy(&listed.stdout).contains("mine"));
    let elsewhere = krya(tmp.path(), &["models", "list"]);
    assert!(
        !String::from_utf8_lossy(&elsewhere.stdout).contains("mine"),
        "KRYA_HOME is another data directory"
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_krya"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .env("KRYA_HOME", tmp.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("Krya listening on ")
        .expect("address line")
        .to_string();
    let body = ureq::get(format!("{url}/api/health"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let models: serde_json::Value = serde_json::from_str(
        &ureq::get(format!("{url}/api/models"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap(),
    )
    .unwrap();
    child.kill().unwrap();
    let _ = child.wait();
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    let mine = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "mine")
        .unwrap_or_else(|| panic!("the added model is not offered: {models}"));
    assert_eq!(
        (&mine["installed"], &mine["local"]),
        (&serde_json::json!(true), &serde_json::json!(true))
    );
    assert!(
        mine.get("source").is_none(),
        "anyone can see the server's paths: {mine}"
    );
    assert!(data.is_dir(), "the data directory is created");

    // A typo in the settings is one readable line, exit 2.
    std::fs::write(data.join("krya.toml"), "[server]\nlisen = 1\n").unwrap();
    let o = krya(tmp.path(), &["serve", "--data-dir", data.to_str().unwrap()]);
    assert_user_error(&o, "lisen");
    let o = krya(tmp.path(), &["default-config"]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("[server]"));
}

/// `krya enhance`: the tiny compact model (×4) takes an image to 2× and 4× (its own
/// scale by default), written as a PNG of that size, sharpened or re-drawn when asked; bad
/// requests are one line and exit 2, and leave no output behind.
#[test]
fn enhance_writes_the_larger_png_and_refuses_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let model = golden("upscale/compact.safetensors");
    let model = model.to_str().unwrap();
    let input = golden("init.png");
    let input = input.to_str().unwrap();
    for (scale, size) in [(None, (256, 192)), (Some("2"), (128, 96))] {
        let out = t.join("big.png");
        let mut args = vec![
            "enhance",
            input,
            out.to_str().unwrap(),
            "--model",
            model,
            "--tile",
            "32",
        ];
        if let Some(s) = scale {
            args.extend(["--scale", s]);
        }
        let o = krya(t, &args);
        assert!(o.status.success(), "{}", stderr(&o));
        let img = image::open(&out).unwrap();
        assert_eq!((img.width(), img.height()), size, "scale {scale:?}");
        std::fs::remove_file(&out).unwrap();
    }
    // Sharpened, and re-drawn by the tiny turbo model: the same size, other pixels.
    let turbo = golden("turbo");
    let mut outputs = Vec::new();
    for extra in [
        &[][..],
        &["--sharpen", "1"][..],
        &[
            "--generative",
            turbo.to_str().unwrap(),
            "--creativity",
            "0.5",
            "--seed",
            "3",
        ][..],
    ] {
        let out = t.join("one.png");
        let mut args = vec![
            "enhance",
            input,
            out.to_str().unwrap(),
            "--model",
            model,
            "--scale",
            "1",
        ];
        args.extend(extra);
        let o = krya(t, &args);
        assert!(o.status.success(), "{extra:?}: {}", stderr(&o));
        let img = image::open(&out).unwrap().into_rgb8();
        assert_eq!(img.dimensions(), (64, 48), "{extra:?}");
        outputs.push(img.into_raw());
    }
    // Faces: the tiny GFPGAN and the random RetinaFace (whose scores stay under the 0.97
    // GFPGANer asks for: no face, the plain output), and the flags checked.
    let (gfpgan, retina) = (golden("face/gfpgan.pth"), golden("face/retinaface.pth"));
    let out = t.join("faces.png");
    let o = krya(
        t,
        &[
            "enhance",
            input,
            out.to_str().unwrap(),
            "--model",
            model,
            "--scale",
            "1",
            "--face-restore",
            "--face-model",
            gfpgan.to_str().unwrap(),
            "--face-detector",
            retina.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        image::open(&out).unwrap().into_rgb8().into_raw(),
        outputs[0]
    );
    assert_user_error(
        &krya(
            t,
            &[
                "enhance",
                input,
                out.to_str().unwrap(),
                "--model",
                model,
                "--face-model",
                gfpgan.to_str().unwrap(),
            ],
        ),
        "--face-model, --face-detector and --fidelity are for --face-restore",
    );
    assert_user_error(
        &krya(
            t,
            &[
                "enhance",
                input,
                out.to_str().unwrap(),
                "--model",
                model,
                "--face-restore",
                "--face-model",
                retina.to_str().unwrap(),
                "--face-detector",
                retina.to_str().unwrap(),
            ],
        ),
        "not a face restoration model",
    );
    // CodeFormer takes a fidelity weight; GFPGAN has none.
    let codeformer = golden("face/codeformer.pth");
    let with_fidelity = |restorer: &std::path::Path, w: &str| {
        krya(
            t,
            &[
                "enhance",
                input,
                out.to_str().unwrap(),
                "--model",
                model,
                "--scale",
                "1",
                "--face-restore",
                "--face-model",
                restorer.to_str().unwrap(),
                "--face-detector",
                retina.to_str().unwrap(),
                "--fidelity",
                w,
            ],
        )
    };
    let o = with_fidelity(&codeformer, "0.7");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_user_error(
        &with_fidelity(&gfpgan, "0.7"),
        "--fidelity is for CodeFormer",
    );
    assert_user_error(
        &with_fidelity(&codeformer, "1.5"),
        "--fidelity must be from 0 to 1",
    );
    assert_ne!(outputs[0], outputs[1], "sharpened");
    assert_ne!(outputs[0], outputs[2], "re-drawn");
    let out = t.join("never.png");
    let out = out.to_str().unwrap();
    assert_user_error(
        &krya(
            t,
            &["enhance", input, out, "--model", model, "--scale", "3"],
        ),
        "scale: must be 1, 2, 4 or 8",
    );
    assert_user_error(
        &krya(
            t,
            &[
                "enhance",
                input,
                out,
                "--model",
                model,
                "--generative",
                turbo.to_str().unwrap(),
                "--creativity",
                "2",
            ],
        ),
        "--creativity must be from 0 to 1",
    );
    assert_user_error(
        &krya(t, &["enhance", "/nonexistent.png", out, "--model", model]),
        "input image /nonexistent.png does not exist",
    );
    let notes = t.join("notes.png");
    std::fs::write(&notes, b"hello, not a picture").unwrap();
    assert_user_error(
        &krya(
            t,
            &["enhance", notes.to_str().unwrap(), out, "--model", model],
        ),
        "image:",
    );
    // A name that is neither a file nor a model; a curated model not downloaded, offline;
    // a model that is no upscaler.
    assert_user_error(
        &krya(t, &["enhance", input, out, "--model", "nope"]),
        "upscaler \"nope\" is neither a file nor a model's name",
    );
    assert_user_error(
        &krya(t, &["enhance", input, out, "--model", "realesrgan-x4plus"]),
        "RealESRGAN_x4plus.pth is not downloaded and HF_HUB_OFFLINE is set; download https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth",
    );
    assert_user_error(
        &krya(t, &["enhance", input, out, "--model", "gfpgan-1.4"]),
        "gfpgan-1.4 is not an upscaler",
    );
    // A model file that is no upscaler: the SD test model's UNet weights.
    let unet = golden("sd1/unet/diffusion_pytorch_model.safetensors");
    assert_user_error(
        &krya(
            t,
            &["enhance", input, out, "--model", unet.to_str().unwrap()],
        ),
        "not a super-resolution model",
    );
    assert!(!Path::new(out).exists());
    assert!(!t.join("never.partial.png").exists());
}

/// `krya edit`: an instruction with the tiny InstructPix2Pix model, an outpaint to 16:9 and
/// an inpaint with the tiny SD model, each a PNG saying what made it; a wrong combination,
/// a model that cannot follow instructions and a mask of another size are one line, exit 2.
#[test]
fn edit_follows_instructions_and_refuses_bad_input() {
    let home = tempfile::tempdir().unwrap();
    let t = home.path();
    let input = golden("init.png"); // 64×48
    let input = input.to_str().unwrap();
    let out = t.join("edited.png");
    let ip2p = golden("pix2pix");
    let sd = golden("sd15");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "edit",
            input,
            "--out",
            out.to_str().unwrap(),
            "--steps",
            "2",
        ];
        args.extend(extra);
        krya(t, &args)
    };
    for (extra, size, what) in [
        (
            vec![
                "--model",
                ip2p.to_str().unwrap(),
                "--instruction",
                "make it winter",
            ],
            (64, 48),
            "instruct",
        ),
        (
            vec!["--model", sd.to_str().unwrap(), "--aspect", "16:9"],
            (86, 48),
            "outpaint",
        ),
    ] {
        let o = run(&extra);
        assert!(o.status.success(), "{extra:?}: {}", stderr(&o));
        assert_eq!(image::image_dimensions(&out).unwrap(), size, "{extra:?}");
        assert!(
            png_parameters(&out).contains(&format!("Edit: {what}")),
            "{}",
            png_parameters(&out)
        );
    }
    // krya erase: the mask's part painted over, the PNG saying so.
    let stroke = t.join("stroke.png");
    image::GrayImage::from_fn(64, 48, |x, y| {
        image::Luma([if (20..40).contains(&x) && (16..32).contains(&y) {
            255
        } else {
            0
        }])
    })
    .save(&stroke)
    .unwrap();
    let o = krya(
        t,
        &[
            "erase",
            input,
            "--mask",
            stroke.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--model",
            sd.to_str().unwrap(),
            "--steps",
            "2",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        png_parameters(&out).contains("Edit: erase"),
        "{}",
        png_parameters(&out)
    );
    let small = t.join("small-mask.png");
    image::GrayImage::from_pixel(8, 8, image::Luma([255]))
        .save(&small)
        .unwrap();
    for (extra, says) in [
        (vec!["--model", sd.to_str().unwrap()], "give one of"),
        (
            vec!["--model", sd.to_str().unwrap(), "--instruction", "snow"],
            "needs an instruction-editing model",
        ),
        (
            vec!["--model", ip2p.to_str().unwrap(), "--restyle"],
            "use --instruction",
        ),
        (
            vec![
                "--model",
                sd.to_str().unwrap(),
                "--mask",
                small.to_str().unwrap(),
            ],
            "mask: is 8×8 but the image is 64×48",
        ),
        (
            vec!["--model", sd.to_str().unwrap(), "--aspect", "wide"],
            "--aspect must be W:H",
        ),
        (
            vec!["--model", sd.to_str().unwrap(), "--erase"],
            "--erase needs --mask",
        ),
    ] {
        assert_user_error(&run(&extra), says);
    }
}

/// `krya segment`: the tiny SAM's mask for a click is a black-and-white PNG of the image's
/// size; bad points and boxes are one line, exit 2.
#[test]
fn segment_writes_the_mask_and_refuses_bad_prompts() {
    let home = tempfile::tempdir().unwrap();
    let t = home.path();
    let input = golden("init.png"); // 64×48
    let sam = golden("segment/sam_original.safetensors");
    let out = t.join("mask.png");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "segment",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--model",
            sam.to_str().unwrap(),
        ];
        args.extend(extra);
        krya(t, &args)
    };
    let o = run(&[
        "--point",
        "20,15",
        "--point",
        "50,40,0",
        "--box",
        "2,2,60,44",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mask = image::open(&out).unwrap().into_luma8();
    assert_eq!(mask.dimensions(), (64, 48));
    assert!(mask.as_raw().iter().all(|&v| v == 0 || v == 255));
    for (extra, says) in [
        (vec![], "give at least one --point"),
        (vec!["--point", "20"], "must be X,Y"),
        (vec!["--point", "20,15,3"], "LABEL 1 or 0"),
        (vec!["--point", "200,15"], "points: each must lie within"),
        (vec!["--box", "1,2,3"], "must be X0,Y0,X1,Y1"),
    ] {
        assert_user_error(&run(&extra), says);
    }
}
