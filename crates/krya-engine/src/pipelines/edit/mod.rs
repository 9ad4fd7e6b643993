//! The editor's diffusion operations (seed §2.5) over the Stable Diffusion engine:
//! inpainting a painted mask, outpainting (the canvas extended, the new area filled), and
//! whole-image edits (restyling by image-to-image, editing by instruction with an
//! InstructPix2Pix model) at the model's own size.
//!
//! As A1111's "only masked" and InvokeAI's canvas do, the model sees the part of the
//! image around the mask, not the whole: the mask's bounding box with context around it,
//! scaled to the model's native pixel count (a small area gains detail, a large photo
//! is not run at 4000 px) and to multiples of its latent cell. The result is scaled back
//! and blended in under the feathered mask, so every pixel the mask does not reach is the
//! input's own, exactly.
//!
//! The mask is made hard (at half), grown by `grow` pixels, then feathered by a Gaussian
//! of `blur` pixels; the model repaints every pixel the feathered mask reaches.

pub mod mask;

use image::{GrayImage, RgbImage, imageops::FilterType};

use crate::pipelines::stable_diffusion::{GenerateRequest, StableDiffusion, StepProgress};
use crate::{CancelToken, EngineError, Result};

/// What erasing steers away from (its negative prompt; its prompt is empty).
pub const ERASE_NEGATIVE: &str = "object, person, animal, text, watermark, logo, frame";
/// Pixels an erase's mask is grown by: an object's edge and shadow go with it.
pub const ERASE_GROW: u32 = 12;

/// How a painted mask is prepared.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaskOptions {
    /// Pixels the mask is grown by.
    pub grow: u32,
    /// The feather's standard deviation, in pixels.
    pub blur: f32,
}

impl Default for MaskOptions {
    fn default() -> Self {
        Self { grow: 4, blur: 4.0 }
    }
}

/// Context around the mask's bounds the model sees: a quarter of the area's longer side,
/// at least this many pixels.
const MIN_CONTEXT: u32 = 32;

/// The rectangle `(x0, y0, x1, y1)` the model sees for a mask with these bounds: the
/// bounds with context on every side, within the image.
pub fn region(bounds: (u32, u32, u32, u32), size: (u32, u32)) -> (u32, u32, u32, u32) {
    let (x0, y0, x1, y1) = bounds;
    let pad = ((x1 - x0).max(y1 - y0) / 4).max(MIN_CONTEXT);
    (
        x0.saturating_sub(pad),
        y0.saturating_sub(pad),
        (x1 + pad).min(size.0),
        (y1 + pad).min(size.1),
    )
}

/// The size the model works at for a `w × h` area: its native pixel count, the aspect
/// kept, each side a multiple of `cell`, at most 2048 and at least one cell.
pub fn work_size(w: u32, h: u32, native: u64, cell: u32) -> (u32, u32) {
    // At most 2048 a side, the aspect kept.
    let s = (native as f64 / (w as f64 * h as f64))
        .sqrt()
        .min(2048.0 / w.max(h) as f64);
    let side = |v: u32| {
        let cells = ((v as f64 * s) / cell as f64).round().max(1.0) as u32;
        (cells * cell).min(2048 / cell * cell)
    };
    (side(w), side(h))
}

/// Inpaints `image` where `mask` is set (same size; 255 = repaint), as `request` says
/// (prompt, strength, seed, steps…; its image, mask and size are set here). Pixels the
/// feathered mask does not reach are returned unchanged.
pub fn inpaint(
    model: &StableDiffusion,
    request: &GenerateRequest,
    image: &RgbImage,
    mask: &GrayImage,
    options: MaskOptions,
    cancel: &CancelToken,
    on_step: &mut dyn FnMut(StepProgress),
) -> Result<RgbImage> {
    if mask.dimensions() != image.dimensions() {
        let ((mw, mh), (iw, ih)) = (mask.dimensions(), image.dimensions());
        return Err(EngineError::InvalidInput(format!(
            "mask: is {mw}×{mh} but the image is {iw}×{ih}; give a mask of the same size"
        )));
    }
    let hard = mask::hard(mask);
    if mask::is_empty(&hard) {
        return Err(EngineError::InvalidInput(
            "mask: is empty; paint what to change".into(),
        ));
    }
    let soft = mask::feather(&mask::grow(&hard, options.grow), options.blur);
    let bounds = mask::bounds(&soft).expect("a grown mask is not empty");
    let (x0, y0, x1, y1) = region(bounds, image.dimensions());
    let (rw, rh) = (x1 - x0, y1 - y0);
    let native = (model.defaults.width * model.defaults.height) as u64;
    let (ww, wh) = work_size(rw, rh, native, model.vae_scale_factor() as u32);
    let crop = image::imageops::crop_imm(image, x0, y0, rw, rh).to_image();
    let area = image::imageops::resize(&crop, ww, wh, FilterType::Lanczos3);
    // What the model repaints: every pixel the feathered mask reaches, at the work size
    // (any overlap with a reached pixel counts).
    let reach = GrayImage::from_fn(rw, rh, |x, y| {
        image::Luma([if soft.get_pixel(x0 + x, y0 + y).0[0] > 0 {
            255
        } else {
            0
        }])
    });
    let work_mask = if (ww, wh) == (rw, rh) {
        reach
    } else {
        // Scaled down, a reached pixel must not vanish between samples: grown first by
        // the scale's ratio.
        let ratio = rw.div_ceil(ww).max(rh.div_ceil(wh));
        mask::hard(&image::imageops::resize(
            &mask::grow(&reach, ratio),
            ww,
            wh,
            FilterType::Triangle,
        ))
    };
    let req = GenerateRequest {
        width: None,
        height: None,
        batch: 1,
        init_image: Some(area),
        mask: Some(work_mask),
        init_noise: None,
        ..request.clone()
    };
    let drawn = model.generate(&req, on_step, cancel)?;
    let drawn = drawn.images.into_iter().next().expect("one image");
    let drawn = if (ww, wh) == (rw, rh) {
        drawn
    } else {
        image::imageops::resize(&drawn, rw, rh, FilterType::Lanczos3)
    };
    Ok(blend(image, &drawn, &soft, (x0, y0)))
}

/// `request` (image-to-image, or an instruction for an InstructPix2Pix model) run on the
/// whole of `image`, at the model's native pixel count (the aspect kept, whole latent
/// cells), the result scaled back to the image's size.
pub fn whole(
    model: &StableDiffusion,
    request: &GenerateRequest,
    image: &RgbImage,
    cancel: &CancelToken,
    on_step: &mut dyn FnMut(StepProgress),
) -> Result<RgbImage> {
    let (w, h) = image.dimensions();
    let native = (model.defaults.width * model.defaults.height) as u64;
    let (ww, wh) = work_size(w, h, native, model.vae_scale_factor() as u32);
    let input = if (ww, wh) == (w, h) {
        image.clone()
    } else {
        image::imageops::resize(image, ww, wh, FilterType::Lanczos3)
    };
    let req = GenerateRequest {
        width: None,
        height: None,
        batch: 1,
        init_image: Some(input),
        mask: None,
        init_noise: None,
        ..request.clone()
    };
    let out = model.generate(&req, on_step, cancel)?;
    let out = out.images.into_iter().next().expect("one image");
    Ok(if (ww, wh) == (w, h) {
        out
    } else {
        image::imageops::resize(&out, w, h, FilterType::Lanczos3)
    })
}

/// `image` with `drawn` (placed at `at`) blended in by `soft`: a pixel whose mask is 0
/// is the image's own, one whose mask is 255 the drawn one.
pub fn blend(image: &RgbImage, drawn: &RgbImage, soft: &GrayImage, at: (u32, u32)) -> RgbImage {
    let mut out = image.clone();
    for (x, y, p) in drawn.enumerate_pixels() {
        let (ix, iy) = (at.0 + x, at.1 + y);
        let m = soft.get_pixel(ix, iy).0[0] as u32;
        if m == 0 {
            continue;
        }
        let o = out.get_pixel_mut(ix, iy);
        for c in 0..3 {
            o.0[c] = ((p.0[c] as u32 * m + o.0[c] as u32 * (255 - m) + 127) / 255) as u8;
        }
    }
    out
}

/// Pixels added on each side of an image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extend {
    pub left: u32,
    pub top: u32,
    pub right: u32,
    pub bottom: u32,
}

impl Extend {
    /// What a `w × h` image needs on each side to reach the aspect `aw:ah`, added evenly
    /// to both ends of the short dimension (nothing when it is there).
    pub fn to_aspect(w: u32, h: u32, aw: u32, ah: u32) -> Extend {
        let (w64, h64) = (w as u64, h as u64);
        if w64 * ah as u64 >= h64 * aw as u64 {
            // Wider than the aspect: add height.
            let nh = (w64 * ah as u64).div_ceil(aw as u64) as u32;
            let add = nh - h;
            Extend {
                top: add / 2,
                bottom: add - add / 2,
                ..Default::default()
            }
        } else {
            let nw = (h64 * aw as u64).div_ceil(ah as u64) as u32;
            let add = nw - w;
            Extend {
                left: add / 2,
                right: add - add / 2,
                ..Default::default()
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Extend::default()
    }
}

/// The image on a larger canvas (`extend` on each side), the new area filled with the
/// nearest edge pixel, and the mask of the new area.
pub fn extend_canvas(image: &RgbImage, e: Extend) -> (RgbImage, GrayImage) {
    let (w, h) = image.dimensions();
    let (nw, nh) = (w + e.left + e.right, h + e.top + e.bottom);
    let inside = |x: u32, y: u32| x >= e.left && x < e.left + w && y >= e.top && y < e.top + h;
    let canvas = RgbImage::from_fn(nw, nh, |x, y| {
        let sx = (x as i64 - e.left as i64).clamp(0, w as i64 - 1) as u32;
        let sy = (y as i64 - e.top as i64).clamp(0, h as i64 - 1) as u32;
        *image.get_pixel(sx, sy)
    });
    let mask = GrayImage::from_fn(nw, nh, |x, y| {
        image::Luma([if inside(x, y) { 0 } else { 255 }])
    });
    (canvas, mask)
}

/// Outpaints: `image` on a canvas extended by `extend`, the new area drawn to continue it.
/// The original's pixels are kept exactly wherever the feathered mask of the new area
/// does not reach (all but a band `grow` + 3·`blur` pixels wide along its edges).
pub fn outpaint(
    model: &StableDiffusion,
    request: &GenerateRequest,
    image: &RgbImage,
    extend: Extend,
    options: MaskOptions,
    cancel: &CancelToken,
    on_step: &mut dyn FnMut(StepProgress),
) -> Result<RgbImage> {
    if extend.is_empty() {
        return Err(EngineError::InvalidInput(
            "extend: add pixels on at least one side".into(),
        ));
    }
    let (w, h) = image.dimensions();
    let nw = w as u64 + extend.left as u64 + extend.right as u64;
    let nh = h as u64 + extend.top as u64 + extend.bottom as u64;
    if nw.max(nh) > 8192 {
        return Err(EngineError::InvalidInput(format!(
            "extend: the canvas would be {nw}×{nh}; at most 8192 px a side"
        )));
    }
    let (canvas, mask) = extend_canvas(image, extend);
    inpaint(model, request, &canvas, &mask, options, cancel, on_step)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_sizes_and_aspects() {
        assert_eq!(
            region((100, 100, 140, 120), (1000, 800)),
            (68, 68, 172, 152)
        );
        assert_eq!(region((0, 0, 400, 200), (400, 300)), (0, 0, 400, 300));
        // The native count at the area's aspect, in cells of 8.
        assert_eq!(work_size(1000, 500, 512 * 512, 8), (728, 360));
        assert_eq!(work_size(10, 10, 64 * 64, 8), (64, 64));
        // Very wide: held to 2048 along the long side, the aspect kept.
        assert_eq!(work_size(8192, 256, 512 * 512, 8), (2048, 64));
        assert_eq!(
            Extend::to_aspect(100, 100, 16, 9),
            Extend {
                left: 39,
                right: 39,
                top: 0,
                bottom: 0
            }
        );
        assert_eq!(
            Extend::to_aspect(160, 40, 16, 9),
            Extend {
                top: 25,
                bottom: 25,
                left: 0,
                right: 0
            }
        );
        assert!(Extend::to_aspect(160, 90, 16, 9).is_empty());
        let img = RgbImage::from_fn(3, 2, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let (c, m) = extend_canvas(
            &img,
            Extend {
                left: 1,
                top: 0,
                right: 2,
                bottom: 1,
            },
        );
        assert_eq!(c.dimensions(), (6, 3));
        assert_eq!(c.get_pixel(0, 0).0, [0, 0, 7]);
        assert_eq!(c.get_pixel(5, 2).0, [2, 1, 7]);
        assert_eq!(
            (
                m.get_pixel(1, 0).0[0],
                m.get_pixel(4, 0).0[0],
                m.get_pixel(1, 2).0[0]
            ),
            (0, 255, 255)
        );
    }
}
