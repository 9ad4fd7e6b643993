//! An image file in, a larger PNG out, in bounded memory: what `krya enhance` and the
//! enhance job run.
//!
//! - **Input**: decoded with pixel limits checked from the header first; EXIF orientation
//!   applied (a portrait photo stays upright); 16-bit images stay 16-bit; an alpha channel
//!   is upscaled by the model as a grey image of its own (or kept, when it is one value);
//!   the colour profile (ICC) is carried to the output.
//! - **Scale**: the model's own, or 1×, 2×, 4×, 8×: a scale the model passes over shoot is
//!   reached by averaging blocks of output pixels (area downscaling: ×4 model, 2× asked →
//!   2×2 blocks), one it falls short of by running it again on its own output (8× with a ×4
//!   model: ×4, then ×4 averaged to ×2). The output is at most `max_side` pixels a side.
//! - **Output**: rows stream from the tiler into the PNG encoder; the last pass never holds
//!   its output (an earlier pass's, the next one's input, is held).

use std::io::Write;

use image::{DynamicImage, ImageDecoder, ImageReader};

use super::Upscaler;
use super::tile::{self, Alpha, Image, Pixels, Rows, TileOptions};
use crate::{CancelToken, EngineError, Result};

/// The largest output side (Krea's enhancer goes to 22K).
pub const MAX_SIDE: usize = 22_000;

#[derive(Debug, Clone)]
pub struct EnhanceOptions {
    /// 1, 2, 4 or 8; 0: the model's own.
    pub scale: usize,
    pub tile: TileOptions,
    /// The output's longest side, at most.
    pub max_side: usize,
    /// The input's pixels, at most (checked before decoding).
    pub max_input_pixels: u64,
}

impl Default for EnhanceOptions {
    fn default() -> Self {
        Self {
            scale: 0,
            tile: TileOptions::default(),
            max_side: MAX_SIDE,
            max_input_pixels: 8192 * 8192,
        }
    }
}

/// Pixels held in memory, interleaved.
#[derive(Debug, Clone)]
pub enum Buffer {
    U8(Vec<u8>),
    U16(Vec<u16>),
}

/// A decoded image, oriented, RGB or RGBA.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub width: usize,
    pub height: usize,
    /// 3 or 4.
    pub channels: usize,
    pub pixels: Buffer,
    pub alpha: Alpha,
    pub icc: Option<Vec<u8>>,
}

impl Decoded {
    fn image(&self) -> Image<'_> {
        Image {
            width: self.width,
            height: self.height,
            channels: self.channels,
            pixels: match &self.pixels {
                Buffer::U8(p) => Pixels::U8(p),
                Buffer::U16(p) => Pixels::U16(p),
            },
            alpha: self.alpha,
        }
    }

    pub fn is_16_bit(&self) -> bool {
        matches!(self.pixels, Buffer::U16(_))
    }

    /// The image as 8-bit RGB (oriented, alpha dropped): a thumbnail's source.
    pub fn to_rgb8(&self) -> image::RgbImage {
        let (w, h, c) = (self.width as u32, self.height as u32, self.channels);
        image::RgbImage::from_fn(w, h, |x, y| {
            let at = (y as usize * self.width + x as usize) * c;
            image::Rgb(match &self.pixels {
                Buffer::U8(p) => [p[at], p[at + 1], p[at + 2]],
                Buffer::U16(p) => [
                    (p[at] >> 8) as u8,
                    (p[at + 1] >> 8) as u8,
                    (p[at + 2] >> 8) as u8,
                ],
            })
        })
    }
}

/// Decodes `bytes` (any format the `image` crate reads), refusing more than `max_pixels`
/// before decoding.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<Decoded> {
    let invalid = |m: String| EngineError::InvalidInput(m);
    let reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| invalid(format!("image: {e}")))?;
    if reader.format().is_none() {
        return Err(invalid(
            "image: not an image format this server reads".into(),
        ));
    }
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| invalid(format!("image: {e}")))?;
    let (w, h) = decoder.dimensions();
    if w as u64 * h as u64 > max_pixels {
        return Err(invalid(format!(
            "image: {w}×{h} is more than {max_pixels} pixels"
        )));
    }
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let icc = decoder.icc_profile().ok().flatten();
    let mut img =
        DynamicImage::from_decoder(decoder).map_err(|e| invalid(format!("image: {e}")))?;
    img.apply_orientation(orientation);
    let color = img.color();
    let has_alpha = color.has_alpha();
    let sixteen = color.bytes_per_pixel() / color.channel_count() > 1;
    let (width, height) = (img.width() as usize, img.height() as usize);
    let channels = if has_alpha { 4 } else { 3 };
    let pixels = match (sixteen, has_alpha) {
        (false, false) => Buffer::U8(img.into_rgb8().into_raw()),
        (false, true) => Buffer::U8(img.into_rgba8().into_raw()),
        (true, false) => Buffer::U16(img.into_rgb16().into_raw()),
        (true, true) => Buffer::U16(img.into_rgba16().into_raw()),
    };
    let alpha = if has_alpha {
        let (first, all_same) = match &pixels {
            Buffer::U8(p) => (
                p[3] as f32 / 255.0,
                p.chunks_exact(4).all(|px| px[3] == p[3]),
            ),
            Buffer::U16(p) => (
                p[3] as f32 / 65535.0,
                p.chunks_exact(4).all(|px| px[3] == p[3]),
            ),
        };
        if all_same {
            Alpha::Constant(first)
        } else {
            Alpha::Model
        }
    } else {
        Alpha::None
    };
    Ok(Decoded {
        width,
        height,
        channels,
        pixels,
        alpha,
        icc,
    })
}

/// How a scale is reached with a model: passes of it, then an average over blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub scale: usize,
    pub passes: usize,
    /// Output pixels averaged a side after the last pass.
    pub reduce: usize,
}

/// The plan for `scale` (0: the model's own) with a model of scale `model`.
pub fn plan(scale: usize, model: usize) -> Result<Plan> {
    let scale = if scale == 0 { model } else { scale };
    if ![1, 2, 4, 8].contains(&scale) {
        return Err(EngineError::InvalidInput(format!(
            "scale: must be 1, 2, 4 or 8 (got {scale})"
        )));
    }
    let (mut passes, mut reach) = (1, model);
    while reach < scale && passes < 3 {
        passes += 1;
        reach *= model;
    }
    if model < 2 && scale > 1 {
        return Err(EngineError::InvalidInput(format!(
            "scale: this model does not enlarge (×{model}); choose scale 1 or another model"
        )));
    }
    if reach < scale || reach % scale != 0 {
        return Err(EngineError::InvalidInput(format!(
            "scale: a ×{model} model cannot make ×{scale}"
        )));
    }
    Ok(Plan {
        scale,
        passes,
        reduce: reach / scale,
    })
}

/// Output rows of one pass as the values of `bits`-bit pixels, `reduce`² blocks averaged.
struct Reducer {
    reduce: usize,
    channels: usize,
}

impl Reducer {
    /// `rows` (a multiple of `reduce` of them) averaged into `rows / reduce` rows.
    fn apply<'a>(&self, rows: &'a Rows, scratch: &'a mut Vec<f32>) -> (&'a [f32], usize, usize) {
        let k = self.reduce;
        if k == 1 {
            return (rows.data, rows.rows, rows.width);
        }
        let (w, c) = (rows.width / k, self.channels);
        let n = rows.rows / k;
        scratch.clear();
        scratch.resize(n * w * c, 0.0);
        let inv = 1.0 / (k * k) as f32;
        for y in 0..n {
            for dy in 0..k {
                let src = &rows.data[(y * k + dy) * rows.width * c..][..rows.width * c];
                let dst = &mut scratch[y * w * c..(y + 1) * w * c];
                for x in 0..w {
                    for dx in 0..k {
                        for ch in 0..c {
                            dst[x * c + ch] += src[(x * k + dx) * c + ch];
                        }
                    }
                }
            }
        }
        for v in scratch.iter_mut() {
            *v *= inv;
        }
        (scratch, n, w)
    }
}

/// Upscales `input` as `options` say and writes the PNG to `out`; `progress(done, total)`
/// counts tiles over all passes. Returns the output's size.
pub fn enhance<W: Write>(
    model: &Upscaler,
    input: &Decoded,
    options: &EnhanceOptions,
    cancel: &CancelToken,
    progress: &mut dyn FnMut(usize, usize),
    out: W,
) -> Result<(usize, usize)> {
    let plan = plan(options.scale, model.scale())?;
    let (ow, oh) = (input.width * plan.scale, input.height * plan.scale);
    if ow.max(oh) > options.max_side {
        return Err(EngineError::InvalidInput(format!(
            "scale: the output would be {ow}×{oh}; at most {} px a side",
            options.max_side
        )));
    }
    // Tiles per pass, for progress over the whole run.
    let per_pass = |w: usize, h: usize| {
        let t = options.tile.tile.max(8);
        w.div_ceil(t) * h.div_ceil(t)
    };
    let s = model.scale();
    let mut total = 0;
    let (mut w, mut h) = (input.width, input.height);
    for _ in 0..plan.passes {
        total += per_pass(w, h);
        (w, h) = (w * s, h * s);
    }
    let mut base = 0;
    let mut report = |done: usize, base: usize| progress(base + done, total);
    let mut current: std::borrow::Cow<Decoded> = std::borrow::Cow::Borrowed(input);
    for _ in 1..plan.passes {
        let next = hold(model, &current, options, cancel, &mut |d, _| {
            report(d, base)
        })?;
        base += per_pass(current.width, current.height);
        current = std::borrow::Cow::Owned(next);
    }
    let reducer = Reducer {
        reduce: plan.reduce,
        channels: current
            .channels
            .min(if current.alpha == Alpha::None { 3 } else { 4 }),
    };
    let sixteen = current.is_16_bit();
    let mut info = png::Info::with_size(ow as u32, oh as u32);
    info.color_type = if reducer.channels == 4 {
        png::ColorType::Rgba
    } else {
        png::ColorType::Rgb
    };
    info.bit_depth = if sixteen {
        png::BitDepth::Sixteen
    } else {
        png::BitDepth::Eight
    };
    info.icc_profile = input.icc.as_deref().map(std::borrow::Cow::Borrowed);
    let png_error =
        |e: png::EncodingError| EngineError::InvalidInput(format!("writing the PNG: {e}"));
    let mut encoder = png::Encoder::with_info(out, info).map_err(png_error)?;
    encoder.set_compression(png::Compression::Fast);
    let mut header = encoder.write_header().map_err(png_error)?;
    let mut writer = header.stream_writer().map_err(png_error)?;
    let mut scratch = Vec::new();
    let mut bytes = Vec::new();
    let size = tile::upscale(
        model,
        &current.image(),
        &options.tile,
        cancel,
        &mut |d, _| report(d, base),
        &mut |rows| {
            let (values, _, _) = reducer.apply(&rows, &mut scratch);
            bytes.clear();
            if sixteen {
                for v in values {
                    bytes.extend_from_slice(&((v * 65535.0).round() as u16).to_be_bytes());
                }
            } else {
                bytes.extend(values.iter().map(|v| (v * 255.0).round() as u8));
            }
            writer
                .write_all(&bytes)
                .map_err(|e| EngineError::InvalidInput(format!("writing the PNG: {e}")))
        },
    )?;
    writer.finish().map_err(png_error)?;
    header.finish().map_err(png_error)?;
    debug_assert_eq!(size, (ow * plan.reduce, oh * plan.reduce));
    Ok((ow, oh))
}

/// One pass whose output is held in memory (the input of the next).
fn hold(
    model: &Upscaler,
    input: &Decoded,
    options: &EnhanceOptions,
    cancel: &CancelToken,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Decoded> {
    let s = model.scale();
    let channels = if input.alpha == Alpha::None { 3 } else { 4 };
    let n = input.width * s * input.height * s * channels;
    let mut pixels = match input.pixels {
        Buffer::U8(_) => Buffer::U8(Vec::with_capacity(n)),
        Buffer::U16(_) => Buffer::U16(Vec::with_capacity(n)),
    };
    tile::upscale(
        model,
        &input.image(),
        &options.tile,
        cancel,
        progress,
        &mut |rows| {
            match &mut pixels {
                Buffer::U8(p) => p.extend(rows.data.iter().map(|v| (v * 255.0).round() as u8)),
                Buffer::U16(p) => p.extend(rows.data.iter().map(|v| (v * 65535.0).round() as u16)),
            }
            Ok(())
        },
    )?;
    Ok(Decoded {
        width: input.width * s,
        height: input.height * s,
        channels,
        pixels,
        // An alpha upscaled once is upscaled again; a constant stays constant.
        alpha: input.alpha,
        icc: input.icc.clone(),
    })
}
