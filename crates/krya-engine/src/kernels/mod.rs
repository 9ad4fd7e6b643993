//! CPU kernels for the layers that dominate Stable Diffusion's time, used in place of
//! candle's generic ones for f32 tensors on the CPU (anything else falls back to candle).
//!
//! - `Conv2d`: 3×3 stride-1 convolutions without im2col. The input is copied once into a
//!   zero-padded buffer whose rows are `w + 2` wide; in that layout a kernel tap `(kh, kw)`
//!   reads a plain contiguous slice starting `kh * (w + 2) + kw` further on, so the
//!   convolution is nine matrix products `W[:, :, kh, kw] @ padded[.., shifted]` accumulated
//!   into one output (the two padding columns of each output row are computed and
//!   dropped: 2/(w + 2) wasted). With AVX2 or AVX-512 the weights are packed once per layer
//!   and the taps summed by Winograd's F(2×2, 3×3) ([`winograd`]: 16 multiplications per
//!   2×2 output block instead of 36) at even sizes of 16² and up, by the direct kernel of
//!   [`direct`] (register tiles of 6 output channels × 64 pixels read straight from that
//!   layout) otherwise; elsewhere by nine matrix products. 1×1 convolutions are one matrix
//!   product into the output.
//!   candle 0.11 builds an im2col tile per 512 output pixels with strided writes instead.
//! - `GroupNorm`: statistics and normalisation in two passes over each group's contiguous
//!   block (a group's channels are adjacent in NCHW), the affine and an optional SiLU fused
//!   into the second; candle does it in about eight full-tensor operations.
//!
//! - `geglu`: the transformer feed-forward's `a * gelu(b)` in one pass, with an erf
//!   (a rational approximation, within 1e-6 of libm's) that vectorises.
//! - `attention`: softmax(q kᵀ · scale) v per head and block of queries over blocks of keys
//!   with an online softmax ([`flash`]): no score matrix beyond one 48 × 256 block, instead
//!   of a full one (hundreds of MB at 512²) written, scaled, soft-maxed and read again.
//!
//! Element-wise loops are compiled three times, plainly, for AVX2+FMA and for AVX-512
//! (chosen at run time), so the compiler vectorises them on the machines that have it.
//!
//! Summation order differs from candle's and PyTorch's, as any two BLAS libraries do: the
//! golden tests (components within 1e-4 of diffusers) hold unchanged.
//!
//! Layout: `conv` (the `Conv2d` layer and its paths), `direct` and `winograd` (its 3×3
//! kernels), `linear`, `norm`, `attention` and `flash` (its online-softmax kernel), `math`
//! (erf, exp, GELU, GEGLU), `products` (the matrix products under all of them), `simd`
//! (vector types shared by the hand-written kernels); this file holds the element-wise
//! helpers and `simd_fn!`.

use candle_core::{DType, Device, Tensor};

pub mod direct;
mod simd;

/// Defines `fn $name(args) -> R` compiled three times, for AVX-512, for AVX2+FMA and as
/// built, and picks one per call by what the CPU has: the element-wise loops inside are then
/// vectorised 16 or 8 wide, and `mul_add` is one instruction rather than a call to libm's
/// `fmaf`. The body is an `#[inline(always)]` function, so each variant really holds it:
/// a closure handed to a `target_feature` function is inlined only when LLVM's cost model
/// agrees, and a long one was not (it ran as SSE code calling `fmaf`, 5× slower).
macro_rules! simd_fn {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$doc])*
        pub(crate) fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the feature was detected on this CPU.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the features were detected on this CPU.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

pub mod fft;
pub mod flash;
pub mod winograd;

mod attention;
mod conv;
mod frozen;
mod linear;
mod math;
mod norm;
mod products;
#[cfg(test)]
mod tests;

pub use attention::*;
pub use conv::*;
pub use linear::*;
pub use math::*;
pub use norm::*;
pub(crate) use products::*;

/// Whether the engine's own CPU kernels take `x`: f32 on the CPU, and not part of a
/// gradient's graph (training): a tracked tensor goes through candle's ops, which record
/// their backward steps, where the kernels record none.
pub(crate) fn cpu_f32(x: &Tensor) -> bool {
    matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32 && !x.track_op()
}

/// The contiguous f32 data of a CPU tensor.
pub(crate) fn data(x: &Tensor) -> candle_core::Result<Vec<f32>> {
    x.flatten_all()?.to_vec1::<f32>()
}

/// Runs `f` on the tensor's contiguous f32 slice without copying it when it is already
/// contiguous.
pub(crate) fn with_slice<R>(x: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => {
            let start = layout.start_offset();
            Ok(f(&v[start..start + layout.shape().elem_count()]))
        }
        _ => {
            drop(storage);
            Ok(f(&data(&x)?))
        }
    }
}

/// A `Vec` of `n` floats the caller overwrites entirely before reading.
pub(crate) fn uninit(n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: f32 has no invalid bit patterns, and every element is written by the
    // caller (a gemm with read_dst = false, or a full copy) before it is read.
    unsafe { v.set_len(n) };
    v
}
