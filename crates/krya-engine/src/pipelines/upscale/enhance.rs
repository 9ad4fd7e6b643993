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
//! - **Output**: rows stream from the tiler, through the unsharp mask when asked for
//!   (`filter::Sharpen`, which holds only its kernel's rows), into the PNG encoder; the last
//!   pass never holds its output (an earlier pass's, the next one's input, is held).
//! - **Generative** (`enhance_generative`, "Krya Enhance"): the upscaled image is re-drawn
//!   by the Stable Diffusion engine's image-to-image over overlapping latent tiles
//!   (MultiDiffusion, `stable_diffusion::tiles`) at `creativity` strength; `resemblance`
//!   puts the upscaled image's low frequencies (colour, large shapes) back. One tile is the
//!   engine's plain image-to-image. Held in memory, so at most `GENERATIVE_MAX_SIDE`.

use std::io::Write;

use image::{DynamicImage, ImageDecoder, ImageReader};

use super::Upscaler;
use super::filter::{Sharpen, gaussian_blur};
use super::tile::{self, Alpha, Image, Pixels, Rows, TileOptions};
use crate::pipelines::face::{self, Faces, align};
use crate::pipelines::stable_diffusion::tiles::LatentTiles;
use crate::pyramid;
use crate::{CancelToken, EngineError, GenerateOptions, GenerateRequest, Result, StableDiffusion};

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
    /// Unsharp-mask amount, 0 (none) to 4, over σ = `SHARPEN_SIGMA` output pixels.
    pub sharpen: f32,
    /// Restore faces: found in the input, repainted, pasted into the output.
    pub faces: Option<std::sync::Arc<Faces>>,
    /// Filled, as the output's rows are made, with a small picture of it (at most
    /// `PREVIEW_SIDE` a side; sized when the run starts): progress previews read it.
    pub preview: Option<std::sync::Arc<std::sync::Mutex<image::RgbImage>>>,
    /// Also write a zoomable copy of the output here: [`crate::pyramid`]'s levels of JPEG
    /// tiles, made from the PNG's rows as they go (transparent pixels over black).
    pub pyramid: Option<std::path::PathBuf>,
}

/// The preview's longest side.
pub const PREVIEW_SIDE: usize = 256;

/// The unsharp mask's blur, in output pixels.
pub const SHARPEN_SIGMA: f32 = 1.0;

impl Default for EnhanceOptions {
    fn default() -> Self {
        Self {
            scale: 0,
            tile: TileOptions::default(),
            max_side: MAX_SIDE,
            max_input_pixels: 8192 * 8192,
            sharpen: 0.0,
            faces: None,
            preview: None,
            pyramid: None,
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

/// The plan for a request and the output's size, checked against `max_side`.
fn check(
    model: &Upscaler,
    input: &Decoded,
    options: &EnhanceOptions,
) -> Result<(Plan, usize, usize)> {
    let plan = plan(options.scale, model.scale())?;
    let (ow, oh) = (input.width * plan.scale, input.height * plan.scale);
    if ow.max(oh) > options.max_side {
        return Err(EngineError::InvalidInput(format!(
            "scale: the output would be {ow}×{oh}; at most {} px a side",
            options.max_side
        )));
    }
    if !(0.0..=4.0).contains(&options.sharpen) {
        return Err(EngineError::InvalidInput(format!(
            "sharpen: must be from 0 to 4 (got {})",
            options.sharpen
        )));
    }
    Ok((plan, ow, oh))
}

/// Tiles over all of a plan's passes.
fn tiles_in(model: &Upscaler, input: &Decoded, plan: &Plan, options: &EnhanceOptions) -> usize {
    let t = options.tile.tile.max(8);
    let (mut w, mut h, mut total) = (input.width, input.height, 0);
    for _ in 0..plan.passes {
        total += w.div_ceil(t) * h.div_ceil(t);
        (w, h) = (w * model.scale(), h * model.scale());
    }
    total
}

/// Runs a plan's passes over `input`: the last pass's rows, reduced, go to `emit` as they
/// are done (interleaved `[0, 1]` values, `channels` of them a pixel: 3, or 4 with alpha);
/// `progress(done)` counts tiles over all passes. Returns `channels`.
fn upscale_rows(
    model: &Upscaler,
    input: &Decoded,
    plan: &Plan,
    options: &EnhanceOptions,
    cancel: &CancelToken,
    progress: &mut dyn FnMut(usize),
    emit: &mut dyn FnMut(&[f32]) -> Result<()>,
) -> Result<usize> {
    let per_pass = |w: usize, h: usize| {
        let t = options.tile.tile.max(8);
        w.div_ceil(t) * h.div_ceil(t)
    };
    let mut base = 0;
    let mut current: std::borrow::Cow<Decoded> = std::borrow::Cow::Borrowed(input);
    for _ in 1..plan.passes {
        let next = hold(model, &current, options, cancel, &mut |d, _| {
            progress(base + d)
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
    let mut scratch = Vec::new();
    tile::upscale(
        model,
        &current.image(),
        &options.tile,
        cancel,
        &mut |d, _| progress(base + d),
        &mut |rows| emit(reducer.apply(&rows, &mut scratch).0),
    )?;
    Ok(reducer.channels)
}

fn png_error(e: png::EncodingError) -> EngineError {
    EngineError::InvalidInput(format!("writing the PNG: {e}"))
}

/// What a PNG is made of.
struct PngSpec<'a> {
    size: (usize, usize),
    /// 3 (RGB) or 4 (RGBA).
    channels: usize,
    sixteen: bool,
    icc: Option<&'a [u8]>,
    /// Unsharp-mask amount (0: none).
    sharpen: f32,
    /// Where to write the tile pyramid, if anywhere.
    pyramid: Option<&'a std::path::Path>,
}

/// Writes a PNG to `out` whose rows `body` hands, as `[0, 1]` values, to the sink it is
/// given (through the unsharp mask when asked for), in order, every row once.
fn write_png<W: Write>(
    out: W,
    spec: PngSpec,
    body: impl FnOnce(&mut dyn FnMut(&[f32]) -> Result<()>) -> Result<()>,
) -> Result<()> {
    let (width, height) = spec.size;
    let mut info = png::Info::with_size(width as u32, height as u32);
    info.color_type = if spec.channels == 4 {
        png::ColorType::Rgba
    } else {
        png::ColorType::Rgb
    };
    info.bit_depth = if spec.sixteen {
        png::BitDepth::Sixteen
    } else {
        png::BitDepth::Eight
    };
    info.icc_profile = spec.icc.map(std::borrow::Cow::Borrowed);
    let mut encoder = png::Encoder::with_info(out, info).map_err(png_error)?;
    encoder.set_compression(png::Compression::Fast);
    let mut header = encoder.write_header().map_err(png_error)?;
    let mut writer = header.stream_writer().map_err(png_error)?;
    let mut bytes = Vec::new();
    let sixteen = spec.sixteen;
    let mut tiles = match spec.pyramid {
        Some(path) => {
            let file = std::fs::File::create(path).map_err(|e| EngineError::io(path, e))?;
            let out = std::io::BufWriter::new(file);
            Some(pyramid::Writer::new(out, width, height, pyramid::TILE)?)
        }
        None => None,
    };
    let channels = spec.channels;
    let mut rgb = Vec::new();
    let mut put = |values: &[f32]| -> Result<()> {
        if let Some(t) = &mut tiles {
            for row in values.chunks_exact(width * channels) {
                rgb.clear();
                for px in row.chunks_exact(channels) {
                    let a = if channels == 4 { px[3] } else { 1.0 };
                    rgb.extend(px[..3].iter().map(|v| (v * a * 255.0).round() as u8));
                }
                t.push_row(&rgb)?;
            }
        }
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
    };
    let mut sharpen = (spec.sharpen > 0.0)
        .then(|| Sharpen::new(width, height, spec.channels, spec.sharpen, SHARPEN_SIGMA));
    body(&mut |values| match &mut sharpen {
        Some(s) => s.push(values, &mut put),
        None => put(values),
    })?;
    if let Some(s) = &mut sharpen {
        s.finish(&mut put)?;
    }
    writer.finish().map_err(png_error)?;
    header.finish().map_err(png_error)?;
    if let Some(t) = tiles {
        t.finish()?;
    }
    Ok(())
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
    let (plan, ow, oh) = check(model, input, options)?;
    let total = tiles_in(model, input, &plan, options);
    let channels = input
        .channels
        .min(if input.alpha == Alpha::None { 3 } else { 4 });
    let faces = restored_faces(input, options, plan.scale, (ow, oh), cancel)?;
    let mut stage = RowStage::new(
        &faces,
        plan.scale,
        (ow, oh),
        channels,
        options.preview.as_ref(),
    );
    let spec = PngSpec {
        size: (ow, oh),
        channels,
        sixteen: input.is_16_bit(),
        icc: input.icc.as_deref(),
        sharpen: options.sharpen,
        pyramid: options.pyramid.as_deref(),
    };
    write_png(out, spec, |sink| {
        upscale_rows(
            model,
            input,
            &plan,
            options,
            cancel,
            &mut |d| progress(d, total),
            &mut |values| sink(stage.apply(values)),
        )
        .map(|_| ())
    })?;
    Ok((ow, oh))
}

/// The input's faces restored, when the options ask for it.
fn restored_faces(
    input: &Decoded,
    options: &EnhanceOptions,
    scale: usize,
    out: (usize, usize),
    cancel: &CancelToken,
) -> Result<Vec<align::Pasted>> {
    match &options.faces {
        Some(f) => face::restore_faces(f, input, scale as f64, out, cancel),
        None => Ok(Vec::new()),
    }
}

/// What output rows go through before the PNG: restored faces pasted in, and the preview
/// drawn.
struct RowStage<'a> {
    faces: &'a [align::Pasted],
    mask: Vec<f32>,
    scale: f64,
    width: usize,
    channels: usize,
    y: usize,
    rows: Vec<f32>,
    /// The preview and its size over the output's.
    preview: Option<(std::sync::Arc<std::sync::Mutex<image::RgbImage>>, f64)>,
}

impl<'a> RowStage<'a> {
    fn new(
        faces: &'a [align::Pasted],
        scale: usize,
        (width, height): (usize, usize),
        channels: usize,
        preview: Option<&std::sync::Arc<std::sync::Mutex<image::RgbImage>>>,
    ) -> Self {
        let preview = preview.map(|p| {
            let k = (PREVIEW_SIDE as f64 / width.max(height) as f64).min(1.0);
            let size = |n: usize| ((n as f64 * k).round() as u32).max(1);
            *p.lock().unwrap() = image::RgbImage::new(size(width), size(height));
            (p.clone(), k)
        });
        Self {
            faces,
            mask: faces
                .first()
                .map_or(Vec::new(), |f| align::soft_mask(f.size)),
            scale: scale as f64,
            width,
            channels,
            y: 0,
            rows: Vec::new(),
            preview,
        }
    }

    /// `values` (whole rows, the next ones) with the faces pasted in.
    fn apply<'b>(&'b mut self, values: &'b [f32]) -> &'b [f32] {
        let stride = self.width * self.channels;
        let n = values.len() / stride;
        let out = if self.faces.is_empty() {
            values
        } else {
            self.rows.clear();
            self.rows.extend_from_slice(values);
            for (i, row) in self.rows.chunks_exact_mut(stride).enumerate() {
                align::paste_row(
                    self.faces,
                    &self.mask,
                    self.scale,
                    self.y + i,
                    row,
                    self.channels,
                );
            }
            &self.rows
        };
        if let Some((p, k)) = &self.preview {
            // Nearest sampling: each preview row from the first output row in it.
            let mut img = p.lock().unwrap();
            let (pw, ph) = img.dimensions();
            for (i, row) in out.chunks_exact(stride).enumerate() {
                let y = self.y + i;
                let py = (y as f64 * k) as u32;
                if py >= ph || (y > 0 && ((y - 1) as f64 * k) as u32 == py) {
                    continue;
                }
                for px in 0..pw {
                    let x = ((px as f64 / k) as usize).min(self.width - 1);
                    let at = x * self.channels;
                    let rgb = std::array::from_fn(|c| (row[at + c] * 255.0).round() as u8);
                    img.put_pixel(px, py, image::Rgb(rgb));
                }
            }
        }
        self.y += n;
        out
    }
}

/// Generative enhance's largest output side: the model's autoencoder runs on the whole
/// image (a tiled autoencoder is what would lift it).
pub const GENERATIVE_MAX_SIDE: usize = 2048;

/// What generative enhance ("Krya Enhance") re-draws with.
pub struct Generative<'a> {
    pub model: &'a StableDiffusion,
    pub prompt: String,
    pub negative_prompt: Option<String>,
    /// The image-to-image strength, 0 to 1: how much is re-drawn.
    pub creativity: f64,
    /// 0 to 1: how much of the upscaled image's colour and large shapes (its content
    /// coarser than the autoencoder's 8 px cells) is put back into the re-drawn one.
    pub resemblance: f64,
    pub seed: u64,
    /// Default: the model's own steps divided by `creativity`, so that as many denoise.
    pub steps: Option<usize>,
    pub guidance: Option<f64>,
    /// Latent tiles (default: the model's native size, a quarter shared).
    pub tiles: Option<LatentTiles>,
}

/// Upscales `input` as `options` say, then re-draws detail with `generative`'s model over
/// overlapping latent tiles (`GenerateOptions::tiles`), and writes an 8-bit PNG.
/// `progress(done, total)` counts the upscaler's tiles, then the denoising steps.
pub fn enhance_generative<W: Write>(
    model: &Upscaler,
    generative: &Generative,
    input: &Decoded,
    options: &EnhanceOptions,
    cancel: &CancelToken,
    progress: &mut dyn FnMut(usize, usize),
    out: W,
) -> Result<(usize, usize)> {
    let (plan, ow, oh) = check(model, input, options)?;
    if ow.max(oh) > GENERATIVE_MAX_SIDE {
        return Err(EngineError::InvalidInput(format!(
            "scale: generative enhance makes at most {GENERATIVE_MAX_SIDE} px a side (this would be {ow}×{oh}); upscale without it, or choose a smaller scale"
        )));
    }
    for (name, v) in [
        ("creativity", generative.creativity),
        ("resemblance", generative.resemblance),
    ] {
        if !(0.0..=1.0).contains(&v) {
            return Err(EngineError::InvalidInput(format!(
                "{name}: must be from 0 to 1 (got {v})"
            )));
        }
    }
    let tiles = tiles_in(model, input, &plan, options);
    let mut upscaled = Vec::new();
    let channels = upscale_rows(
        model,
        input,
        &plan,
        options,
        cancel,
        &mut |d| progress(d, tiles + 1),
        &mut |values| {
            upscaled.extend_from_slice(values);
            Ok(())
        },
    )?;
    let rgb = image::RgbImage::from_fn(ow as u32, oh as u32, |x, y| {
        let at = (y as usize * ow + x as usize) * channels;
        image::Rgb(std::array::from_fn(|c| {
            (upscaled[at + c] * 255.0).round() as u8
        }))
    });
    let drawn = redraw(generative, &rgb, cancel, &mut |step, total| {
        progress(tiles + step, tiles + total)
    })?;
    // The re-drawn colours, with the upscaled image's low frequencies put back by
    // `resemblance`; alpha as upscaled.
    let mut values = upscaled;
    let r = generative.resemblance as f32;
    let (blur_up, blur_drawn) = if r > 0.0 {
        let sigma = generative.model.vae_scale_factor() as f32;
        let drawn_values: Vec<f32> = drawn
            .pixels()
            .flat_map(|p| p.0.map(|v| v as f32 / 255.0))
            .collect();
        (
            gaussian_blur(&values, ow, oh, channels, 3, sigma),
            gaussian_blur(&drawn_values, ow, oh, 3, 3, sigma),
        )
    } else {
        (Vec::new(), Vec::new())
    };
    for (i, p) in drawn.pixels().enumerate() {
        for c in 0..3 {
            let mut v = p.0[c] as f32 / 255.0;
            if r > 0.0 {
                v += r * (blur_up[i * channels + c] - blur_drawn[i * 3 + c]);
            }
            values[i * channels + c] = v.clamp(0.0, 1.0);
        }
    }
    let faces = restored_faces(input, options, plan.scale, (ow, oh), cancel)?;
    let mut stage = RowStage::new(
        &faces,
        plan.scale,
        (ow, oh),
        channels,
        options.preview.as_ref(),
    );
    let spec = PngSpec {
        size: (ow, oh),
        channels,
        sixteen: false,
        icc: input.icc.as_deref(),
        sharpen: options.sharpen,
        pyramid: options.pyramid.as_deref(),
    };
    write_png(out, spec, |sink| sink(stage.apply(&values)))?;
    Ok((ow, oh))
}

/// `image` re-drawn by image-to-image at `creativity` over latent tiles; a side that is not
/// a multiple of the model's 8 px cells is padded (edge repeated) and cropped back.
/// `on_step(step, total)` after each denoising step.
pub fn redraw(
    g: &Generative,
    image: &image::RgbImage,
    cancel: &CancelToken,
    on_step: &mut dyn FnMut(usize, usize),
) -> Result<image::RgbImage> {
    let sd = g.model;
    if g.creativity == 0.0 {
        return Ok(image.clone());
    }
    // Enough steps that image-to-image at this strength takes at least the model's own
    // number (a one-step turbo model at 0.35 runs 3, denoising 1).
    let steps = g.steps.unwrap_or_else(|| {
        sd.defaults
            .steps
            .max((sd.defaults.steps as f64 / g.creativity).ceil() as usize)
    });
    let f = sd.vae_scale_factor() as u32;
    let (w, h) = image.dimensions();
    let (pw, ph) = (w.div_ceil(f) * f, h.div_ceil(f) * f);
    let padded = if (pw, ph) == (w, h) {
        image.clone()
    } else {
        image::RgbImage::from_fn(pw, ph, |x, y| *image.get_pixel(x.min(w - 1), y.min(h - 1)))
    };
    let req = GenerateRequest {
        prompt: g.prompt.clone(),
        negative_prompt: g.negative_prompt.clone(),
        steps: Some(steps),
        guidance: g.guidance,
        seed: g.seed,
        init_image: Some(padded),
        strength: g.creativity,
        preview_every: 0,
        ..Default::default()
    };
    let native = sd.defaults.width.min(sd.defaults.height) / f as usize;
    let tiles = g.tiles.unwrap_or(LatentTiles {
        tile: native,
        overlap: native / 4,
    });
    let mut out = sd.generate_with(
        &req,
        GenerateOptions {
            tiles: Some(tiles),
            ..Default::default()
        },
        &mut |p| on_step(p.step, p.total),
        cancel,
    )?;
    let drawn = out.images.swap_remove(0);
    Ok(if (pw, ph) == (w, h) {
        drawn
    } else {
        image::imageops::crop_imm(&drawn, 0, 0, w, h).to_image()
    })
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
