//! Object removal (capability `erase`): LaMa ([`lama`], Apache-2.0) fills what a mask covers
//! from the rest of the image, with no prompt.
//!
//! As LaMa's own prediction and IOPaint run it: the mask is made binary, the image (RGB in
//! `[0, 1]`) has the masked pixels zeroed and the mask appended as a fourth channel, both are
//! padded at the bottom and right to a multiple of 8 by mirroring (NumPy's `symmetric`),
//! and the prediction is cut back, truncated to bytes and pasted where the mask is set:
//! every other pixel is the input's, exactly. An image larger than [`CROP_TRIGGER`] is
//! erased in the crop around the mask with [`CROP_MARGIN`] pixels of context
//! (IOPaint's `hd_strategy` "crop"), so its cost follows the mask, not the photo.

pub mod lama;

use std::path::Path;

use candle_core::{Device, Tensor};
use image::{GrayImage, RgbImage};

use crate::model::state_dict;
use crate::pipelines::edit::mask;
use crate::{EngineError, Result};
use lama::Lama;

/// Images whose longer side is above this are erased in a crop around the mask.
pub const CROP_TRIGGER: u32 = 800;
/// Context kept around the mask's bounds in that crop.
pub const CROP_MARGIN: u32 = 128;

/// Whether a file's tensors make an object-removal model (from their names only).
pub fn detect_file(path: &Path) -> bool {
    state_dict::shapes_cached(path).is_some_and(|s| lama::detect(s.keys()))
}

/// A loaded LaMa.
pub struct Eraser {
    pub lama: Lama,
}

/// Indices `0..n + extra` into `0..n`, mirrored past the end with the edge repeated.
fn symmetric(n: usize, extra: usize) -> Vec<u32> {
    (0..n + extra)
        .map(|i| {
            let j = i % (2 * n);
            (if j < n { j } else { 2 * n - 1 - j }) as u32
        })
        .collect()
}

impl Eraser {
    pub fn load(path: &Path) -> Result<Self> {
        let sd = state_dict::read(path)?;
        if !lama::detect(sd.keys()) {
            return Err(EngineError::bad_model(
                path,
                "not an object-removal model this engine reads (LaMa)",
            ));
        }
        let lama = Lama::from_state_dict(sd).map_err(|e| e.in_file(path))?;
        Ok(Self { lama })
    }

    /// `image` with what `mask` covers (pixels of at least 128) filled in. The mask must be
    /// the image's size and not empty.
    pub fn erase(&self, image: &RgbImage, mask: &GrayImage) -> Result<RgbImage> {
        if image.dimensions() != mask.dimensions() {
            return Err(EngineError::InvalidInput(format!(
                "mask: {}×{} differs from the image's {}×{}",
                mask.width(),
                mask.height(),
                image.width(),
                image.height()
            )));
        }
        let hard = mask::hard(mask);
        let Some((x0, y0, x1, y1)) = mask::bounds(&hard) else {
            return Err(EngineError::InvalidInput(
                "mask: nothing is masked, so nothing would be erased".into(),
            ));
        };
        let (w, h) = image.dimensions();
        let (cx0, cy0, cx1, cy1) = if w.max(h) > CROP_TRIGGER {
            (
                x0.saturating_sub(CROP_MARGIN),
                y0.saturating_sub(CROP_MARGIN),
                (x1 + CROP_MARGIN).min(w),
                (y1 + CROP_MARGIN).min(h),
            )
        } else {
            (0, 0, w, h)
        };
        let crop = image::imageops::crop_imm(image, cx0, cy0, cx1 - cx0, cy1 - cy0).to_image();
        let crop_mask = image::imageops::crop_imm(&hard, cx0, cy0, cx1 - cx0, cy1 - cy0).to_image();
        let filled = self.predict(&crop, &crop_mask)?;
        let mut out = image.clone();
        for (x, y, m) in crop_mask.enumerate_pixels() {
            if m.0[0] != 0 {
                out.put_pixel(cx0 + x, cy0 + y, *filled.get_pixel(x, y));
            }
        }
        Ok(out)
    }

    /// The generator's picture for `image` with the binary `mask` (255 = fill), at the
    /// image's size (pixels outside the mask are the network's too).
    pub fn predict(&self, image: &RgbImage, mask: &GrayImage) -> Result<RgbImage> {
        let (w, h) = (image.width() as usize, image.height() as usize);
        let m = self.lama.multiple().max(8);
        let (pw, ph) = (w.div_ceil(m) * m, h.div_ceil(m) * m);
        let mut planes = vec![0f32; 4 * h * w];
        for (x, y, p) in image.enumerate_pixels() {
            let i = y as usize * w + x as usize;
            let masked = mask.get_pixel(x, y).0[0] != 0;
            for c in 0..3 {
                planes[c * h * w + i] = if masked { 0.0 } else { p.0[c] as f32 / 255.0 };
            }
            planes[3 * h * w + i] = masked as u8 as f32;
        }
        let dev = Device::Cpu;
        let x = Tensor::from_vec(planes, (1, 4, h, w), &dev)?
            .index_select(&Tensor::new(symmetric(h, ph - h).as_slice(), &dev)?, 2)?
            .index_select(&Tensor::new(symmetric(w, pw - w).as_slice(), &dev)?, 3)?;
        let y = self.lama.forward(&x)?.narrow(2, 0, h)?.narrow(3, 0, w)?;
        let values: Vec<f32> = y.squeeze(0)?.permute((1, 2, 0))?.flatten_all()?.to_vec1()?;
        let bytes = values
            .iter()
            .map(|v| (v * 255.0).clamp(0.0, 255.0) as u8)
            .collect();
        Ok(RgbImage::from_raw(w as u32, h as u32, bytes).expect("size"))
    }
}
