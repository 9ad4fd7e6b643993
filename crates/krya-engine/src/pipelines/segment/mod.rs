//! Segmentation (capability `segment`): Segment Anything ([`sam`]), prompted by points and
//! boxes on an image embedding computed once per image.
//!
//! As the reference's `SamPredictor`: the image is scaled so its longer side is the
//! encoder's input (1024; `int(side · scale + 0.5)`), normalised by ImageNet's mean and
//! deviation on 0–255, and padded with zeros at the right and bottom; prompts are scaled
//! the same way. The low-resolution logits are scaled up bilinearly to the input, cropped
//! to the image, scaled bilinearly to the image's own size, and cut at 0.

pub mod sam;
pub mod tiny_vit;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use image::{GrayImage, RgbImage};

use crate::model::state_dict;
use crate::{EngineError, Result};
use sam::{Point, Sam};

const MEAN: [f32; 3] = [123.675, 116.28, 103.53];
const STD: [f32; 3] = [58.395, 57.12, 57.375];

/// Whether a file's tensors make a segmentation model (from their names only).
pub fn detect_file(path: &Path) -> bool {
    state_dict::shapes_cached(path).is_some_and(|s| sam::detect(s.keys()))
}

/// A loaded SAM.
pub struct Segmenter {
    pub sam: Sam,
}

/// An image's embedding, and where the image sits in the encoder's input.
pub struct Embedded {
    pub embedding: Tensor,
    /// The image's own size, and its size scaled into the encoder's input.
    pub size: (u32, u32),
    pub scaled: (u32, u32),
}

impl Embedded {
    /// Bytes it holds (for a cache's budget).
    pub fn bytes(&self) -> usize {
        self.embedding.elem_count() * 4
    }
}

/// A mask for a prompt, with the model's estimate of its quality.
pub struct Segment {
    /// 255 inside, 0 outside, at the image's size.
    pub mask: GrayImage,
    pub score: f32,
}

/// The size an image of `w × h` is scaled to so its longer side is `side`.
pub fn scaled_size(w: u32, h: u32, side: u32) -> (u32, u32) {
    let scale = side as f64 / w.max(h) as f64;
    let r = |v: u32| ((v as f64 * scale + 0.5) as u32).clamp(1, side);
    (r(w), r(h))
}

impl Segmenter {
    /// Loads a SAM file (`.pth` as released, or `.safetensors` in either naming).
    pub fn load(path: &Path) -> Result<Self> {
        let sd = state_dict::read(path)?;
        if !sam::detect(sd.keys()) {
            return Err(EngineError::bad_model(
                path,
                "not a segmentation model this engine reads (Segment Anything)",
            ));
        }
        let sam =
            Sam::from_state_dict(sd, &path.display().to_string()).map_err(|e| e.in_file(path))?;
        Ok(Self { sam })
    }

    /// Runs the image encoder on `image` (the slow part: once per image).
    pub fn embed(&self, image: &RgbImage) -> Result<Embedded> {
        let side = self.sam.config.image_size as u32;
        let (w, h) = image.dimensions();
        let (sw, sh) = scaled_size(w, h, side);
        let scaled = if (sw, sh) == (w, h) {
            image.clone()
        } else {
            image::imageops::resize(image, sw, sh, image::imageops::FilterType::Triangle)
        };
        let s = side as usize;
        let mut planes = vec![0f32; 3 * s * s];
        for (x, y, p) in scaled.enumerate_pixels() {
            for c in 0..3 {
                planes[c * s * s + y as usize * s + x as usize] =
                    (p.0[c] as f32 - MEAN[c]) / STD[c];
            }
        }
        let pixels = Tensor::from_vec(planes, (1, 3, s, s), &Device::Cpu)?;
        Ok(Embedded {
            embedding: self.sam.embed(&pixels)?,
            size: (w, h),
            scaled: (sw, sh),
        })
    }

    /// Low-resolution logits `[n, 256, 256]` → logits at the image's size `[n, h, w]`:
    /// scaled up to the encoder's input, cropped to the scaled image, scaled to `size`
    /// (bilinear, half-pixel centres, as the reference's `postprocess_masks`).
    pub fn postprocess(
        &self,
        logits: &Tensor,
        size: (u32, u32),
        scaled: (u32, u32),
    ) -> Result<Tensor> {
        let side = self.sam.config.image_size;
        let full = logits
            .unsqueeze(0)?
            .upsample_bilinear2d(side, side, false)?;
        let cropped = full
            .narrow(2, 0, scaled.1 as usize)?
            .narrow(3, 0, scaled.0 as usize)?
            .contiguous()?;
        Ok(cropped
            .upsample_bilinear2d(size.1 as usize, size.0 as usize, false)?
            .squeeze(0)?)
    }

    /// The mask for points (in the image's pixels; at least one, or a box) and a box
    /// (`[x0, y0, x1, y1]`). One positive point and no box asks for three masks and keeps
    /// the best scored, as SAM's demo does; more prompts are unambiguous: one mask.
    pub fn segment(
        &self,
        e: &Embedded,
        points: &[Point],
        bbox: Option<[f32; 4]>,
    ) -> Result<Segment> {
        if points.is_empty() && bbox.is_none() {
            return Err(EngineError::InvalidInput(
                "points: give at least one point or a box".into(),
            ));
        }
        let (w, h) = (e.size.0 as f32, e.size.1 as f32);
        let inside = |x: f32, y: f32| {
            x.is_finite() && y.is_finite() && (0.0..=w).contains(&x) && (0.0..=h).contains(&y)
        };
        if points.iter().any(|p| !inside(p.x, p.y)) {
            return Err(EngineError::InvalidInput(format!(
                "points: each must lie within the {w}×{h} image"
            )));
        }
        if let Some([x0, y0, x1, y1]) = bbox
            && !(inside(x0, y0) && inside(x1, y1) && x0 < x1 && y0 < y1)
        {
            return Err(EngineError::InvalidInput(format!(
                "box: must be [x0, y0, x1, y1] within the {w}×{h} image, x0 < x1 and y0 < y1"
            )));
        }
        let k = e.scaled.0 as f32 / w;
        let scaled: Vec<Point> = points
            .iter()
            .map(|p| Point {
                x: p.x * k,
                y: p.y * k,
                positive: p.positive,
            })
            .collect();
        let bbox = bbox.map(|b| b.map(|v| v * k));
        let multimask = points.len() == 1 && bbox.is_none();
        let masks = self.sam.decode(&e.embedding, &scaled, bbox, multimask)?;
        let best = masks
            .iou
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .unwrap_or(0);
        let own = self.postprocess(&masks.logits.narrow(0, best, 1)?, e.size, e.scaled)?;
        let values: Vec<f32> = own.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
        let mask = GrayImage::from_raw(
            e.size.0,
            e.size.1,
            values
                .iter()
                .map(|&v| if v > 0.0 { 255 } else { 0 })
                .collect(),
        )
        .expect("size");
        Ok(Segment {
            mask,
            score: masks.iou[best],
        })
    }
}
