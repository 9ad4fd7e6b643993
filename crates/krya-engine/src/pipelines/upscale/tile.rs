//! Running an upscaler over an image of any size, a row of tiles at a time, in bounded
//! memory.
//!
//! The image is cut into a grid of tile cores of even sizes (at most `tile` input pixels a
//! side, as chaiNNer's `auto_split` does). Each tile reads `overlap` more pixels of context
//! on every side (clamped to the image), and writes its output over its core widened by
//! `overlap / 2` on the sides it shares with a neighbour; across that shared band of
//! `overlap` pixels the two tiles are blended with complementary half-sine weights
//! (`(1 − cos πt) / 2` and one minus it), so every output pixel's weights sum to one and no
//! tile border shows as a step. A pixel a tile writes is at least `overlap / 2` pixels from
//! the edge of what the tile read: when that covers the model's receptive field, the tiled
//! output is the whole image's output (the seam test). `blend: false` writes each core
//! alone (RealESRGANer's way: context, hard joins).
//!
//! Alpha, where the image has it, is upscaled by the model as a grey image of its own, or
//! kept as the constant it is.
//!
//! Output rows are accumulated for the current row of tiles only, then handed to a sink as
//! soon as no later tile can touch them: memory is one band of output rows
//! (`(tile + overlap) · scale` rows of the output's width) whatever the image's height.

use candle_core::{Device, Tensor};

use super::Upscaler;
use crate::{CancelToken, EngineError, Result};

/// How an image is cut.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TileOptions {
    /// The largest tile core, in input pixels a side.
    pub tile: usize,
    /// Context read around each core, in input pixels; half of it is blended.
    pub overlap: usize,
    /// Feather the overlaps (else each core is written alone).
    pub blend: bool,
}

impl Default for TileOptions {
    fn default() -> Self {
        Self {
            tile: 256,
            overlap: 16,
            blend: true,
        }
    }
}

/// Pixels to upscale: interleaved, `channels` per pixel, 8 or 16 bits.
#[derive(Clone, Copy)]
pub enum Pixels<'a> {
    U8(&'a [u8]),
    U16(&'a [u16]),
}

/// What becomes of an input's fourth channel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Alpha {
    /// No alpha in the output (an RGB input, or its alpha dropped).
    None,
    /// The same value everywhere (an alpha channel that is all opaque, say): kept as is.
    Constant(f32),
    /// Upscaled by the model too, as a grey image of its own (RealESRGANer's
    /// `alpha_upsampler="realesrgan"`: the output's luma, 0.299 R + 0.587 G + 0.114 B).
    Model,
}

/// An input image: RGB, with alpha as its fourth channel when it has one.
#[derive(Clone, Copy)]
pub struct Image<'a> {
    pub width: usize,
    pub height: usize,
    /// Channels per pixel in `pixels`: 3, or 4 with alpha.
    pub channels: usize,
    pub pixels: Pixels<'a>,
    pub alpha: Alpha,
}

impl Image<'_> {
    fn value(&self, at: usize) -> f32 {
        match self.pixels {
            Pixels::U8(p) => p[at] as f32 / 255.0,
            Pixels::U16(p) => p[at] as f32 / 65535.0,
        }
    }

    /// Channels `first..first + 3` of the crop `[x0, x1) × [y0, y1)` as `[1, 3, h, w]` in
    /// `[0, 1]`; `first` 3 (alpha) repeats the one channel three times.
    fn crop(&self, x0: usize, x1: usize, y0: usize, y1: usize, first: usize) -> Result<Tensor> {
        let (w, h) = (x1 - x0, y1 - y0);
        let mut planes = vec![0f32; 3 * w * h];
        for c in 0..3 {
            let channel = if first == 3 { 3 } else { first + c };
            let plane = &mut planes[c * w * h..(c + 1) * w * h];
            for y in 0..h {
                let row = (y0 + y) * self.width;
                for x in 0..w {
                    plane[y * w + x] = self.value((row + x0 + x) * self.channels + channel);
                }
            }
        }
        Ok(Tensor::from_vec(planes, (1, 3, h, w), &Device::Cpu)?)
    }
}

/// Finished output rows: `rows` rows from row `y`, `width` pixels of `channels`
/// interleaved values (RGB, or RGBA) in `[0, 1]`.
pub struct Rows<'a> {
    pub y: usize,
    pub rows: usize,
    pub width: usize,
    pub channels: usize,
    pub data: &'a [f32],
}

/// Tile cores along one axis: `n` even parts of `len`, each at most `tile`.
fn cores(len: usize, tile: usize) -> Vec<(usize, usize)> {
    let n = len.div_ceil(tile.max(1)).max(1);
    let size = len.div_ceil(n);
    (0..n)
        .map(|i| (i * size, ((i + 1) * size).min(len)))
        .filter(|(a, b)| a < b)
        .collect()
}

/// The weight of output coordinate `o` (output pixels) of a tile whose core is
/// `[c0, c1)` (input pixels) among `len`, with blend bands of `b` input pixels around
/// inner borders, at scale `s`.
fn weight(o: usize, c0: usize, c1: usize, len: usize, b: usize, s: usize) -> f32 {
    let ramp = |border: usize, o: usize| -> f32 {
        // t from 0 to 1 across [border − b, border + b) in output pixels, at pixel centres.
        let start = (border - b) * s;
        let t = (o - start) as f64 + 0.5;
        let t = t / (2 * b * s) as f64;
        ((1.0 - (std::f64::consts::PI * t).cos()) / 2.0) as f32
    };
    if b == 0 {
        return 1.0;
    }
    if c0 > 0 && o < (c0 + b) * s {
        return ramp(c0, o);
    }
    if c1 < len && o >= (c1 - b) * s {
        return 1.0 - ramp(c1, o);
    }
    1.0
}

/// Upscales `image` tile by tile, handing finished rows to `sink` from top to bottom;
/// `progress(done, total)` after each tile. Returns the output size.
pub fn upscale(
    model: &Upscaler,
    image: &Image,
    options: &TileOptions,
    cancel: &CancelToken,
    progress: &mut dyn FnMut(usize, usize),
    sink: &mut dyn FnMut(Rows) -> Result<()>,
) -> Result<(usize, usize)> {
    let s = model.scale();
    let (w, h) = (image.width, image.height);
    let with_alpha = image.alpha != Alpha::None;
    if w == 0 || h == 0 || image.channels < 3 || (with_alpha && image.channels < 4) {
        return Err(EngineError::InvalidInput(
            "image: needs width, height and three channels (four with alpha)".into(),
        ));
    }
    let oc = if with_alpha { 4 } else { 3 };
    let tile = options.tile.max(8);
    let overlap = options.overlap;
    let xs = cores(w, tile);
    let ys = cores(h, tile);
    // The blend band's half-width, kept inside the smallest core.
    let smallest = xs.iter().chain(&ys).map(|(a, b)| b - a).min().unwrap_or(1);
    let b = if options.blend {
        (overlap / 2).min(smallest / 2)
    } else {
        0
    };
    let (ow, oh) = (w * s, h * s);
    let total = xs.len() * ys.len();
    let mut done = 0;
    // Rows [acc_y, acc_y + acc.len() / (ow·oc)) of the output, summed over tiles so far.
    let mut acc: Vec<f32> = Vec::new();
    let mut acc_y = 0usize;
    for (ty, &(cy0, cy1)) in ys.iter().enumerate() {
        // Output rows this row of tiles writes.
        let wy0 = if cy0 > 0 { cy0 - b } else { 0 } * s;
        let wy1 = if cy1 < h { cy1 + b } else { h } * s;
        let need = (wy1 - acc_y) * ow * oc;
        if acc.len() < need {
            acc.resize(need, 0.0);
        }
        for &(cx0, cx1) in &xs {
            if cancel.is_cancelled() {
                return Err(EngineError::Cancelled);
            }
            let rx0 = cx0.saturating_sub(overlap);
            let rx1 = (cx1 + overlap).min(w);
            let ry0 = cy0.saturating_sub(overlap);
            let ry1 = (cy1 + overlap).min(h);
            let run = |first: usize| -> Result<Vec<f32>> {
                let out = model.net.forward(&image.crop(rx0, rx1, ry0, ry1, first)?)?;
                let (_, c, th, tw) = out.dims4()?;
                if c != 3 || th != (ry1 - ry0) * s || tw != (rx1 - rx0) * s {
                    return Err(EngineError::InvalidInput(format!(
                        "the model made a {c}×{th}×{tw} tile from {}×{}",
                        ry1 - ry0,
                        rx1 - rx0
                    )));
                }
                Ok(out.flatten_all()?.to_vec1()?)
            };
            let out = run(0)?;
            let alpha = match image.alpha {
                Alpha::Model => Some(run(3)?),
                _ => None,
            };
            let (th, tw) = ((ry1 - ry0) * s, (rx1 - rx0) * s);
            let plane = th * tw;
            let wx0 = if cx0 > 0 { cx0 - b } else { 0 } * s;
            let wx1 = if cx1 < w { cx1 + b } else { w } * s;
            let wxs: Vec<f32> = (wx0..wx1).map(|o| weight(o, cx0, cx1, w, b, s)).collect();
            for oy in wy0..wy1 {
                let wy = weight(oy, cy0, cy1, h, b, s);
                let src_row = (oy - ry0 * s) * tw;
                let dst_row = (oy - acc_y) * ow * oc;
                for (i, ox) in (wx0..wx1).enumerate() {
                    let k = wy * wxs[i];
                    let src = src_row + ox - rx0 * s;
                    let dst = dst_row + ox * oc;
                    acc[dst] += k * out[src];
                    acc[dst + 1] += k * out[plane + src];
                    acc[dst + 2] += k * out[2 * plane + src];
                    match (image.alpha, &alpha) {
                        (Alpha::Model, Some(a)) => {
                            // Clamped first, as RealESRGANer clamps the model's output
                            // before taking its grey.
                            let v = |i: usize| a[i].clamp(0.0, 1.0);
                            let luma = 0.299 * v(src)
                                + 0.587 * v(plane + src)
                                + 0.114 * v(2 * plane + src);
                            acc[dst + 3] += k * luma;
                        }
                        (Alpha::Constant(v), _) => acc[dst + 3] += k * v,
                        _ => {}
                    }
                }
            }
            done += 1;
            progress(done, total);
        }
        // Rows no later tile reaches are finished.
        let last = ty + 1 == ys.len();
        let finished_to = if last { oh } else { (cy1 - b) * s };
        let rows = finished_to - acc_y;
        let n = rows * ow * oc;
        for v in &mut acc[..n] {
            *v = v.clamp(0.0, 1.0);
        }
        sink(Rows {
            y: acc_y,
            rows,
            width: ow,
            channels: oc,
            data: &acc[..n],
        })?;
        acc.drain(..n);
        acc_y = finished_to;
    }
    Ok((ow, oh))
}
