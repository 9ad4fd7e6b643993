//! The studio (web/): its lint, its Vitest units, and the whole of it end to end in Chromium
//! (playwright-core, `web/e2e/studio.mjs`) against a real `krya serve` on a free port with
//! the committed tiny model. Screenshots of every page at 1440 and 390 px land in
//! `CARGO_TARGET_TMPDIR/studio/`.
//!
//! Needs Node.js and Debian's `chromium` (`/usr/bin/chromium`, or `CHROMIUM`); `.ci/run`
//! installs it. Under `KRYA_SKIP_WEB=1` (a binary without the studio) they are reported as
//! ignored.

use std::path::{Path, PathBuf};
use std::process::Command;

mod process;

use process::*;

fn web() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../web")
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start ({e}); the studio tests need Node.js"));
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
}

#[test]
#[cfg_attr(krya_no_studio, ignore = "KRYA_SKIP_WEB: the studio was not built")]
fn studio_units() {
    // node_modules is there: building krya built the studio.
    run(
        Command::new("npm")
            .current_dir(web())
            .args(["test", "--", "--reporter=verbose"]),
        "vitest",
    );
}

/// The React hooks rules (rules of hooks, exhaustive dependencies, no state set
/// synchronously in an effect, pure renders) and other correctness rules, with oxlint
/// (`web/.oxlintrc.json`; typescript-eslint does not accept TypeScript 7 yet).
#[test]
#[cfg_attr(krya_no_studio, ignore = "KRYA_SKIP_WEB: the studio was not built")]
fn studio_lint() {
    run(
        Command::new("npm").current_dir(web()).args(["run", "lint"]),
        "oxlint",
    );
}

#[test]
#[cfg_attr(krya_no_studio, ignore = "KRYA_SKIP_WEB: the studio was not built")]
fn studio_end_to_end_in_chromium() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: install Debian's chromium (apt-get install -y chromium) or set CHROMIUM"
    );
    let data = data_dir();
    // And an upscaler for the enhancer: the tiny compact model (×4).
    let models = data.path().join("models.json");
    let mut listed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&models).unwrap()).unwrap();
    listed["sharp"] = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../krya-engine/tests/golden/upscale/compact.safetensors")
        .to_string_lossy()
        .into();
    // And a segmentation model for the editor's click to segment: the tiny SAM.
    listed["sam"] = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../krya-engine/tests/golden/segment/sam_original.safetensors")
        .to_string_lossy()
        .into();
    // And a second one to pick in the editor: the tiny MobileSAM (listed after "sam").
    listed["sam-mobile"] = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../krya-engine/tests/golden/segment/mobile_sam.safetensors")
        .to_string_lossy()
        .into();
    // And an instruction-editing model for the editor: the tiny InstructPix2Pix.
    listed["ip2p"] = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../krya-engine/tests/golden/pix2pix")
        .to_string_lossy()
        .into();
    // And a LoRA for the tiny model, for /image's LoRA picker.
    listed["style"] = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../krya-engine/tests/golden/lora/turbo_kohya.safetensors")
        .to_string_lossy()
        .into();
    // And a captioning model, which writes /train's captions: the tiny BLIP.
    listed["blip"] = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../krya-engine/tests/golden/caption")
        .to_string_lossy()
        .into();
    // And the editor's object-removal and background-removal models: tiny LaMa and IS-Net.
    for (name, file) in [
        ("lama", "erase/lama.safetensors"),
        ("isnet", "matte/isnet.safetensors"),
    ] {
        listed[name] = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../krya-engine/tests/golden")
            .join(file)
            .to_string_lossy()
            .into();
    }
    std::fs::write(&models, listed.to_string()).unwrap();
    let (_server, base) = serve(data.path(), &[]);
    // The studio's page and scripts go out compressed at build time where the browser
    // accepts it (the run below loads them so).
    let r = ureq::get(format!("{base}/"))
        .header("Accept-Encoding", "br")
        .call()
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "br");
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("studio");
    std::fs::create_dir_all(&shots).unwrap();
    run(
        Command::new("node")
            .current_dir(web())
            .arg("e2e/studio.mjs")
            .arg(&base)
            .arg(&shots)
            .env("CHROMIUM", &chromium)
            // The first administrator comes through the setup link the server wrote.
            .env("KRYA_SETUP_LINK", data.path().join("setup-link")),
        "the end-to-end run in Chromium",
    );
    // Every page at both widths.
    for page in [
        "login",
        "image",
        "app",
        "feed",
        "feed-item",
        "profile",
        "settings",
        "realtime",
        "edit",
        "train-new",
        "train",
    ] {
        for w in [1440, 390] {
            let f = shots.join(format!("{page}-{w}.png"));
            let bytes = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            assert!(
                bytes.starts_with(b"\x89PNG"),
                "{} is not a PNG",
                f.display()
            );
        }
    }
}
