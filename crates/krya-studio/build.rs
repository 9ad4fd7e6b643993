//! Builds the studio (`web/`) with npm into `OUT_DIR/dist` and writes `files.rs`, the list
//! of its files as `include_bytes!`. See `src/lib.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let web = manifest.join("../../web");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    let dist = out.join("dist");
    println!("cargo::rerun-if-env-changed=KRYA_SKIP_WEB");
    // Only paths that exist: a missing one would rerun this script on every build.
    for p in [
        "src",
        "public",
        "index.html",
        "package.json",
        "package-lock.json",
        "vite.config.ts",
        "tsconfig.json",
        "scripts/compress.mjs",
    ] {
        if web.join(p).exists() {
            println!("cargo::rerun-if-changed={}", web.join(p).display());
        }
    }
    let files = if std::env::var_os("KRYA_SKIP_WEB").is_some_and(|v| v != "0") {
        Vec::new()
    } else {
        build(&web, &dist);
        let mut files = Vec::new();
        walk(&dist, &dist, &mut files);
        files.sort();
        files
    };
    let mut code = String::from(
        "/// The studio's files: path relative to the site root, and contents.\npub static FILES: &[(&str, &[u8])] = &[\n",
    );
    for (rel, abs) in &files {
        code.push_str(&format!("    ({rel:?}, include_bytes!({abs:?})),\n"));
    }
    code.push_str("];\n");
    std::fs::write(out.join("files.rs"), code).unwrap();
}

fn npm() -> Command {
    Command::new(if cfg!(windows) { "npm.cmd" } else { "npm" })
}

fn run(mut cmd: Command, what: &str) {
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("cannot run npm ({e}): the studio needs Node.js 20+ and npm, or set KRYA_SKIP_WEB=1 to build the API alone")
    });
    assert!(
        status.success(),
        "{what} failed ({status}); see the output above"
    );
}

fn modified(p: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn build(web: &Path, dist: &Path) {
    // Two builds at once (say `cargo test` and `cargo build --release`) share web/: one
    // installs and builds at a time.
    let lock = std::fs::File::create(std::env::temp_dir().join("krya-studio-build.lock")).unwrap();
    lock.lock().unwrap();
    let installed = modified(&web.join("node_modules/.package-lock.json"));
    if installed.is_none() || installed < modified(&web.join("package-lock.json")) {
        let mut ci = npm();
        ci.current_dir(web)
            .args(["ci", "--prefer-offline", "--no-audit", "--no-fund"]);
        run(ci, "npm ci");
    }
    let mut b = npm();
    b.current_dir(web)
        .args(["run", "build", "--", "--emptyOutDir", "--outDir"])
        .arg(dist);
    run(b, "npm run build (web/)");
    // Brotli and gzip copies of the text files, made once here, sent as the browser asks.
    let mut c = Command::new("node");
    c.current_dir(web).arg("scripts/compress.mjs").arg(dist);
    run(c, "node scripts/compress.mjs");
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(root, &path, out);
        } else {
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            out.push((rel, path.display().to_string()));
        }
    }
}
