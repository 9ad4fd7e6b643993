//! Background removal (capability `matte`): a soft alpha matte for an image's foreground,
//! at the image's own size. [`isnet`] is the network (IS-Net, Apache-2.0).
//!
//! As the reference's `IS-Net/Inference.py`: the image (0–255) is scaled bilinearly to the
//! network's square input (1024², half-pixel centres, no antialiasing), truncated to bytes,
//! divided by 255 and centred at 0.5 (its deviation is 1); the first side output's sigmoid
//! is scaled bilinearly back to the image's size and stretched to span 0–1 (min–max).

pub mod isnet;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use image::{GrayImage, RgbImage, RgbaImage};

use crate::model::state_dict;
use crate::{EngineError, Result};
use isnet::IsNet;

/// The side the reference runs IS-Net at.
pub const INPUT_SIZE: usize = 1024;

/// Whether a file's tensors make a matting model (from their names only).
pub fn detect_file(path: &Path) -> bool {
    state_dict::shapes_cached(path).is_some_and(|s| isnet::detect(s.keys()))
}

/// A loaded matting model and the square side it runs at.
pub struct Matter {
    pub net: IsNet,
    pub size: usize,
}

impl Matter {
    /// Loads an IS-Net file (`.pth` as released, or `.safetensors`).
    pub fn load(path: &Path) -> Result<Self> {
        let sd = state_dict::read(path)?;
        if !isnet::detect(sd.keys()) {
            return Err(EngineError::bad_model(
                path,
                "not a background-removal model this engine reads (IS-Net)",
            ));
        }
        let net = IsNet::from_state_dict(sd).map_err(|e| e.in_file(path))?;
        Ok(Self {
            net,
            size: INPUT_SIZE,
        })
    }

    /// The network's input for `image`: `[1, 3, size, size]`.
    pub fn preprocess(&self, image: &RgbImage) -> Result<Tensor> {
        let (w, h) = image.dimensions();
        let x = Tensor::from_vec(
            image.as_raw().clone(),
            (h as usize, w as usize, 3),
            &Device::Cpu,
        )?
        .to_dtype(DType::F32)?
        .permute((2, 0, 1))?
        .unsqueeze(0)?
        .contiguous()?
        .upsample_bilinear2d(self.size, self.size, false)?;
        // `.type(torch.uint8)`: truncation (the values are within 0–255).
        Ok(((x.floor()? / 255.0)? - 0.5)?)
    }

    /// The matte in `[0, 1]` at the image's size, `[h, w]`.
    pub fn alpha(&self, image: &RgbImage) -> Result<Tensor> {
        let (w, h) = image.dimensions();
        let logits = self.net.forward(&self.preprocess(image)?)?;
        let a: Vec<f32> = candle_nn::ops::sigmoid(&logits)?
            .upsample_bilinear2d(h as usize, w as usize, false)?
            .flatten_all()?
            .to_vec1()?;
        let lo = a.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = a.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // A constant matte has no range: it stays as it is rather than dividing by zero.
        let range = if hi > lo { hi - lo } else { 1.0 };
        let lo = if hi > lo { lo } else { 0.0 };
        let a = a.into_iter().map(|v| (v - lo) / range).collect();
        Ok(Tensor::from_vec(a, (h as usize, w as usize), &Device::Cpu)?)
    }

    /// The matte as bytes (0 background, 255 foreground), truncated as the reference saves it.
    pub fn matte(&self, image: &RgbImage) -> Result<GrayImage> {
        let (w, h) = image.dimensions();
        let values: Vec<f32> = self.alpha(image)?.flatten_all()?.to_vec1()?;
        let bytes = values.iter().map(|v| (v * 255.0) as u8).collect();
        Ok(GrayImage::from_raw(w, h, bytes).expect("matte size"))
    }
}

/// The image with `matte` as its alpha channel.
pub fn cut_out(image: &RgbImage, matte: &GrayImage) -> RgbaImage {
    RgbaImage::from_fn(image.width(), image.height(), |x, y| {
        let [r, g, b] = image.get_pixel(x, y).0;
        image::Rgba([r, g, b, matte.get_pixel(x, y).0[0]])
    })
}

/// The foreground over `background` (the same size), weighted by the matte.
pub fn composite(image: &RgbImage, matte: &GrayImage, background: &RgbImage) -> RgbImage {
    RgbImage::from_fn(image.width(), image.height(), |x, y| {
        let a = matte.get_pixel(x, y).0[0] as f32 / 255.0;
        let (f, b) = (image.get_pixel(x, y).0, background.get_pixel(x, y).0);
        image::Rgb(std::array::from_fn(|c| {
            (f[c] as f32 * a + b[c] as f32 * (1.0 - a)).round() as u8
        }))
    })
}
