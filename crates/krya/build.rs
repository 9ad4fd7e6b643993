//! A binary built with `KRYA_SKIP_WEB=1` has no studio: its studio tests are reported as
//! ignored, never as passed.

fn main() {
    println!("cargo::rerun-if-env-changed=KRYA_SKIP_WEB");
    println!("cargo::rustc-check-cfg=cfg(krya_no_studio)");
    if std::env::var_os("KRYA_SKIP_WEB").is_some_and(|v| v != "0") {
        println!("cargo::rustc-cfg=krya_no_studio");
    }
}
