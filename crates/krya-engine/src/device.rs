//! Device and precision choice: CPU in f32 by default; CUDA or Metal (behind the cargo
//! features of the same name) in f16 when present.

use candle_core::DType;
pub use candle_core::Device;

use crate::Result;

/// The best available device: CUDA, then Metal, then the CPU.
pub fn best_device() -> Result<Device> {
    #[cfg(feature = "cuda")]
    if candle_core::utils::cuda_is_available() {
        return Ok(Device::new_cuda(0)?);
    }
    #[cfg(feature = "metal")]
    if candle_core::utils::metal_is_available() {
        return Ok(Device::new_metal(0)?);
    }
    Ok(Device::Cpu)
}

/// f32 on the CPU (half precision is slow there), f16 on accelerators.
pub fn default_dtype(device: &Device) -> DType {
    if device.is_cpu() {
        DType::F32
    } else {
        DType::F16
    }
}
