//! The vector types the hand-written kernels ([`super::direct`], [`super::flash`]) are
//! generic over, and the run-time choice between them.
//!
//! A kernel's loops are written once against [`Vector`] and instantiated per instruction
//! set by [`per_isa!`], inside a `target_feature` function, so every intrinsic inlines.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// A vector of `LANES` floats and the operations the kernels use.
pub trait Vector: Copy {
    const LANES: usize;
    unsafe fn zero() -> Self;
    unsafe fn load(p: *const f32) -> Self;
    /// `*p` in every lane.
    unsafe fn splat(p: *const f32) -> Self;
    /// `a · b + c`.
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
    unsafe fn store(self, p: *mut f32);
}

/// A `Vector` type over one of `core::arch`'s vectors: its features, lanes and intrinsics.
macro_rules! vector {
    ($name:ident($raw:ty), $features:literal, $lanes:literal,
     $zero:ident, $load:ident, $splat:ident, $fma:ident, $store:ident) => {
        #[cfg(target_arch = "x86_64")]
        #[derive(Clone, Copy)]
        pub struct $name($raw);

        #[cfg(target_arch = "x86_64")]
        impl Vector for $name {
            const LANES: usize = $lanes;
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn zero() -> Self {
                Self($zero())
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn load(p: *const f32) -> Self {
                // SAFETY: the caller's promise.
                Self(unsafe { $load(p) })
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn splat(p: *const f32) -> Self {
                // SAFETY: the caller's promise.
                Self($splat(unsafe { *p }))
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
                Self($fma(a.0, b.0, c.0))
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn store(self, p: *mut f32) {
                // SAFETY: the caller's promise.
                unsafe { $store(p, self.0) }
            }
        }
    };
}

vector!(
    Avx512(__m512),
    "avx512f",
    16,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_set1_ps,
    _mm512_fmadd_ps,
    _mm512_storeu_ps
);

vector!(
    Avx2(__m256),
    "avx2,fma",
    8,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_set1_ps,
    _mm256_fmadd_ps,
    _mm256_storeu_ps
);

/// Floats per cache line.
pub const LINE: usize = 16;

/// Asks for the cache line holding `p` to be brought into L1: a hint, which neither faults
/// (any address will do) nor changes a result.
#[inline(always)]
pub fn prefetch(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing architecturally and never faults.
    unsafe {
        _mm_prefetch::<_MM_HINT_T0>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// The floats per vector of the widest kernels this CPU runs (16 with AVX-512, 8 with
/// AVX2 + FMA), or `None` when it has neither. Sizes made multiples of it suit both.
pub fn lanes() -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return Some(Avx512::LANES);
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Some(Avx2::LANES);
        }
    }
    None
}

/// Whether AVX-512 is there and to be used (not when a test asks for the AVX2 kernels).
#[cfg(target_arch = "x86_64")]
pub fn use_avx512() -> bool {
    is_x86_feature_detected!("avx512f") && !force_avx2()
}

#[cfg(test)]
static FORCE_AVX2: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Runs `f` with the AVX2 kernels on an AVX-512 machine too (tests of both widths). The
/// flag is global: one test at a time holds it, and a kernel that runs meanwhile in another
/// test is only the narrower one (same results within rounding).
#[cfg(test)]
pub fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    use std::sync::atomic::Ordering;
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    FORCE_AVX2.store(true, Ordering::Relaxed);
    let r = f();
    FORCE_AVX2.store(false, Ordering::Relaxed);
    r
}

#[cfg(all(target_arch = "x86_64", test))]
fn force_avx2() -> bool {
    FORCE_AVX2.load(std::sync::atomic::Ordering::Relaxed)
}

#[cfg(all(target_arch = "x86_64", not(test)))]
fn force_avx2() -> bool {
    false
}

/// Defines `unsafe fn $name(args)` that runs `$body::<Avx512, $nv512>(args)` compiled for
/// AVX-512 when [`use_avx512`] (and `$wide`, a condition on the arguments, holds), else
/// `$body::<Avx2, $nv2>(args)` compiled for AVX2 + FMA (`$nv`: the vectors per register tile
/// at that width). Callers check [`lanes`] first.
macro_rules! per_isa {
    ($(#[$doc:meta])* unsafe fn $name:ident($($arg:ident: $ty:ty),* $(,)?)
     => $body:ident::<$nv512:literal, $nv2:literal>) => {
        $crate::kernels::simd::per_isa! {
            $(#[$doc])* unsafe fn $name($($arg: $ty),*)
                => $body::<$nv512, $nv2> if true
        }
    };
    ($(#[$doc:meta])* unsafe fn $name:ident($($arg:ident: $ty:ty),* $(,)?)
     => $body:ident::<$nv512:literal, $nv2:literal> if $wide:expr) => {
        $(#[$doc])*
        unsafe fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                use $crate::kernels::simd::{Avx2, Avx512};
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) {
                    // SAFETY: the caller's promise.
                    unsafe { $body::<Avx512, $nv512>($($arg),*) }
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    // SAFETY: the caller's promise.
                    unsafe { $body::<Avx2, $nv2>($($arg),*) }
                }
                if $wide && $crate::kernels::simd::use_avx512() {
                    // SAFETY: the feature was detected; the rest is the caller's promise.
                    return unsafe { avx512($($arg),*) };
                }
                // SAFETY: the caller checked `lanes()`, so AVX2 and FMA are there.
                unsafe { avx2($($arg),*) }
            }
            #[cfg(not(target_arch = "x86_64"))]
            unreachable!("lanes() is None off x86_64")
        }
    };
}
pub(crate) use per_isa;
