//! Tells the tests which SIMD kernels this machine can run: the kernel tests of a path
//! the CPU lacks are reported as ignored, never as a pass that tested nothing. (Tests run
//! where they are built.)

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rustc-check-cfg=cfg(krya_no_avx2)");
    println!("cargo::rustc-check-cfg=cfg(krya_no_avx512)");
    #[cfg(target_arch = "x86_64")]
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64") {
        if !(std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma"))
        {
            println!("cargo::rustc-cfg=krya_no_avx2");
        }
        if !std::arch::is_x86_feature_detected!("avx512f") {
            println!("cargo::rustc-cfg=krya_no_avx512");
        }
    }
}
