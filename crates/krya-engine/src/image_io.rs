//! Images in and out of the engine: loading with limits, tensors in diffusers' value ranges,
//! latent previews, and PNG files carrying A1111's `parameters` text chunk.

use std::io::Write;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use image::{GrayImage, ImageReader, RgbImage};

use crate::{EngineError, Result, invalid};

/// Largest image the engine decodes (pixels), checked from the header before decoding.
pub const MAX_PIXELS: u64 = 8192 * 8192;

/// Reads an image file, refusing huge ones before decoding.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    Ok(decode_limited(path)?.to_rgb8())
}

/// Reads a mask the way diffusers' mask processor does: PIL's "L" conversion
/// (ITU-R 601-2 luma with PIL's integer rounding). White is painted, black kept.
pub fn load_mask(path: &Path) -> Result<GrayImage> {
    let img = decode_limited(path)?;
    if let image::DynamicImage::ImageLuma8(g) = img {
        return Ok(g);
    }
    let rgb = img.to_rgb8();
    Ok(GrayImage::from_fn(rgb.width(), rgb.height(), |x, y| {
        let p = rgb.get_pixel(x, y).0;
        let l = (p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000) >> 16;
        image::Luma([l as u8])
    }))
}

fn decode_limited(path: &Path) -> Result<image::DynamicImage> {
    let reader = ImageReader::open(path)
        .map_err(|e| EngineError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| EngineError::io(path, e))?;
    if reader.format().is_none() {
        return Err(invalid!(
            "{} is not an image this engine reads (PNG, JPEG, WebP)",
            path.display()
        ));
    }
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| invalid!("{}: {e}", path.display()))?;
    if w as u64 * h as u64 > MAX_PIXELS {
        return Err(invalid!(
            "{} is {w}x{h}, larger than the {MAX_PIXELS} pixels allowed",
            path.display()
        ));
    }
    let mut reader = ImageReader::open(path)
        .map_err(|e| EngineError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| EngineError::io(path, e))?;
    reader.no_limits();
    reader
        .decode()
        .map_err(|e| invalid!("{}: {e}", path.display()))
}

/// An RGB image as `[1, 3, h, w]` in [-1, 1], resized (Lanczos3) when its size differs.
pub fn to_tensor(img: &RgbImage, width: usize, height: usize, device: &Device) -> Result<Tensor> {
    let resized;
    let img = if img.width() as usize != width || img.height() as usize != height {
        resized = image::imageops::resize(
            img,
            width as u32,
            height as u32,
            image::imageops::FilterType::Lanczos3,
        );
        &resized
    } else {
        img
    };
    let data: Vec<f32> = img
        .as_raw()
        .iter()
        .map(|&v| v as f32 / 255.0 * 2.0 - 1.0)
        .collect();
    Ok(Tensor::from_vec(data, (height, width, 3), device)?
        .permute((2, 0, 1))?
        .unsqueeze(0)?
        .contiguous()?)
}

/// A mask as `[1, 1, h, w]` of 0/1 (values >= 0.5 after /255 become 1), nearest-resized.
pub fn mask_to_tensor(
    mask: &GrayImage,
    width: usize,
    height: usize,
    device: &Device,
) -> Result<Tensor> {
    if mask.width() as usize != width || mask.height() as usize != height {
        return Err(invalid!(
            "the mask is {}x{} but the image is {width}x{height}; give a mask of the same size",
            mask.width(),
            mask.height()
        ));
    }
    let data: Vec<f32> = mask
        .as_raw()
        .iter()
        .map(|&v| if v as f32 / 255.0 >= 0.5 { 1.0 } else { 0.0 })
        .collect();
    Ok(Tensor::from_vec(data, (1, 1, height, width), device)?)
}

/// `[3, h, w]` in about [-1, 1] to 8-bit RGB: `round(clamp(x / 2 + 0.5, 0, 1) * 255)`.
pub fn from_tensor(x: &Tensor) -> Result<RgbImage> {
    let (c, h, w) = x.dims3()?;
    if c != 3 {
        return Err(invalid!("expected 3 image channels, got {c}"));
    }
    let x = ((x.to_dtype(DType::F32)? / 2.0)? + 0.5)?.clamp(0f32, 1f32)?;
    let v: Vec<f32> = x.permute((1, 2, 0))?.flatten_all()?.to_vec1()?;
    let bytes = v
        .iter()
        .map(|&p| (p * 255.0).round_ties_even() as u8)
        .collect();
    Ok(RgbImage::from_raw(w as u32, h as u32, bytes).expect("sized buffer"))
}

/// A cheap RGB rendering of one latent `[c, h, w]`: a fixed linear map for 4-channel SD
/// latents (the factors community UIs use), the first three channels otherwise.
pub fn latent_preview(latent: &Tensor) -> Result<RgbImage> {
    let (c, h, w) = latent.dims3()?;
    let z = latent.to_dtype(DType::F32)?.reshape((c, h * w))?;
    let rgb = if c == 4 {
        const F: [[f32; 3]; 4] = [
            [0.3512, 0.2297, 0.3227],
            [0.3250, 0.4974, 0.2350],
            [-0.2829, 0.1762, 0.2721],
            [-0.2120, -0.2616, -0.7177],
        ];
        let m = Tensor::from_vec(
            F.iter().flatten().copied().collect::<Vec<_>>(),
            (4, 3),
            z.device(),
        )?;
        m.t()?.matmul(&z)?
    } else {
        z.narrow(0, 0, c.min(3))?
            .pad_with_zeros(0, 0, 3 - c.min(3))?
    };
    from_tensor(&rgb.reshape((3, h, w))?)
}

/// The A1111 `parameters` text: prompt, negative prompt, then a settings line.
pub fn a1111_parameters(
    prompt: &str,
    negative: Option<&str>,
    settings: &[(&str, String)],
) -> String {
    let mut s = prompt.to_string();
    if let Some(n) = negative.filter(|n| !n.is_empty()) {
        s.push_str(&format!("\nNegative prompt: {n}"));
    }
    let line = settings
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    s.push('\n');
    s.push_str(&line);
    s
}

/// Encodes an image as PNG with a `parameters` chunk (iTXt, so any Unicode prompt survives).
pub fn png_bytes(img: &RgbImage, parameters: &str) -> Result<Vec<u8>> {
    encode_png(img, png::ColorType::Rgb, parameters)
}

/// [`png_bytes`] of an image with an alpha channel.
pub fn png_bytes_rgba(img: &image::RgbaImage, parameters: &str) -> Result<Vec<u8>> {
    encode_png(img, png::ColorType::Rgba, parameters)
}

fn encode_png<P: image::Pixel<Subpixel = u8>>(
    img: &image::ImageBuffer<P, Vec<u8>>,
    color: png::ColorType,
    parameters: &str,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, img.width(), img.height());
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        if parameters.is_ascii() {
            enc.add_text_chunk("parameters".into(), parameters.into())
                .map_err(|e| invalid!("png: {e}"))?;
        } else {
            enc.add_itxt_chunk("parameters".into(), parameters.into())
                .map_err(|e| invalid!("png: {e}"))?;
        }
        let mut w = enc.write_header().map_err(|e| invalid!("png: {e}"))?;
        w.write_image_data(img.as_raw())
            .map_err(|e| invalid!("png: {e}"))?;
    }
    Ok(out)
}

/// Writes [`png_bytes`] to `path` atomically (a temporary file renamed into place).
pub fn write_png(path: &Path, img: &RgbImage, parameters: &str) -> Result<()> {
    let bytes = png_bytes(img, parameters)?;
    let tmp = path.with_extension("png.part");
    let mut f = std::fs::File::create(&tmp).map_err(|e| EngineError::io(&tmp, e))?;
    f.write_all(&bytes).map_err(|e| EngineError::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| EngineError::io(path, e))
}

/// Reads the `parameters` text of a PNG (tEXt, zTXt or iTXt).
pub fn read_png_parameters(bytes: &[u8]) -> Option<String> {
    let dec = png::Decoder::new(std::io::Cursor::new(bytes));
    let reader = dec.read_info().ok()?;
    let info = reader.info();
    info.uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == "parameters")
        .map(|t| t.text.clone())
        .or_else(|| {
            info.utf8_text
                .iter()
                .find(|t| t.keyword == "parameters")
                .and_then(|t| t.get_text().ok())
        })
        .or_else(|| {
            info.compressed_latin1_text
                .iter()
                .find(|t| t.keyword == "parameters")
                .and_then(|t| t.get_text().ok())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_parameters_round_trip() {
        let img = RgbImage::from_pixel(8, 8, image::Rgb([10, 20, 30]));
        for text in ["a cat\nSteps: 4, Seed: 1", "ein Kätzchen 🐱\nSteps: 1"] {
            let bytes = png_bytes(&img, text).unwrap();
            assert_eq!(read_png_parameters(&bytes).as_deref(), Some(text));
            let back = image::load_from_memory(&bytes).unwrap().to_rgb8();
            assert_eq!(back, img);
        }
    }

    #[test]
    fn tensor_round_trip_is_exact() {
        let img = RgbImage::from_fn(16, 8, |x, y| {
            image::Rgb([(x * 16) as u8, (y * 30) as u8, 200])
        });
        let t = to_tensor(&img, 16, 8, &Device::Cpu).unwrap();
        assert_eq!(from_tensor(&t.squeeze(0).unwrap()).unwrap(), img);
    }
}
