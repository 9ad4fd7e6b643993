//! Super-resolution: models that make an image 1×–4× larger, and the tiler that runs them
//! over images of any size in bounded memory.
//!
//! A model file is read whatever its format (`model::state_dict`), and its architecture,
//! scale and sizes come from its tensors' names and shapes, as spandrel detects them
//! (never from the file's name): [`esrgan`] (RRDBNet in its three key layouts),
//! [`compact`] (SRVGGNetCompact), [`swinir`] (SwinIR, all four reconstructions) and
//! [`hat`] (HAT, SwinIR's layout with convolution branches and overlapping attention). Each is an [`Arch`]: NCHW f32 in `[0, 1]` in, the image
//! `scale` times larger out, unclamped. [`tile`] cuts an image into overlapping tiles,
//! runs them, and blends the overlaps into output rows that it hands on as they are done.
//!
//! Layout: `mod.rs` (loading, detection, shared tensor helpers), `esrgan.rs`, `compact.rs`,
//! `swinir.rs`, `hat.rs`,
//! `tile.rs`, `filter.rs` (blur and the streaming unsharp mask), `enhance.rs` (file in, PNG
//! out: scales, alpha, 16-bit, EXIF, the generative mode).

pub mod compact;
pub mod enhance;
pub mod esrgan;
pub mod filter;
pub mod hat;
pub mod swinir;
pub mod tile;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::model::state_dict::{self, StateDict};
use crate::weights::Weights;
use crate::{EngineError, Result};

/// A super-resolution network.
pub trait Arch: Send + Sync {
    /// How many times larger the output is.
    fn scale(&self) -> usize;
    /// Image channels it takes and makes (3 for every model here).
    fn channels(&self) -> usize;
    /// How far (in input pixels) an output pixel's value can depend on the input: tiles
    /// with at least this much context on every side give the whole image's values.
    fn receptive_radius(&self) -> usize;
    /// `[1, C, H, W]` in `[0, 1]` → `[1, C, H·scale, W·scale]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
}

/// Which architecture a model is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Esrgan,
    Compact,
    SwinIr,
    Hat,
}

impl Architecture {
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Esrgan => "ESRGAN (RRDBNet)",
            Architecture::Compact => "SRVGGNetCompact",
            Architecture::SwinIr => "SwinIR",
            Architecture::Hat => "HAT",
        }
    }
}

/// Tensor names and their shapes: what detection reads.
pub type Shapes = std::collections::BTreeMap<String, Vec<usize>>;

/// The architecture tensors of these names and shapes make (SRVGGNetCompact is tried
/// first, as in spandrel's registry).
pub fn detect_shapes(sd: &Shapes) -> Option<Architecture> {
    if compact::detect(sd) {
        Some(Architecture::Compact)
    } else if hat::detect(sd) {
        Some(Architecture::Hat)
    } else if swinir::detect(sd) {
        Some(Architecture::SwinIr)
    } else if esrgan::detect(sd) {
        Some(Architecture::Esrgan)
    } else {
        None
    }
}

/// The architecture `sd` holds.
pub fn detect(sd: &StateDict) -> Option<Architecture> {
    detect_shapes(
        &sd.iter()
            .map(|(k, t)| (k.clone(), t.dims().to_vec()))
            .collect(),
    )
}

/// The upscaler architecture a model file holds, from its tensors' names and shapes only
/// (nothing else is read: a multi-gigabyte checkpoint is not loaded to find it is none).
pub fn detect_file(path: &Path) -> Option<Architecture> {
    detect_shapes(state_dict::shapes_cached(path)?.as_ref())
}

/// A loaded upscaler.
pub struct Upscaler {
    pub architecture: Architecture,
    pub net: Box<dyn Arch>,
    /// Where it was loaded from (for messages).
    pub source: PathBuf,
}

/// What to load besides the file itself.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// realesr-general-x4v3's denoise strength: blend the weights with its twin's
    /// (`dn · model + (1 − dn) · twin`); needs `denoise_twin`. 1 (or `None`): the model alone.
    pub denoise: Option<f64>,
    pub denoise_twin: Option<PathBuf>,
}

impl Upscaler {
    /// Loads a model file (`.safetensors` or `.pth`), detecting its architecture.
    pub fn load(path: &Path, options: &LoadOptions) -> Result<Upscaler> {
        let sd = state_dict::read(path)?;
        let sd = match (options.denoise, &options.denoise_twin) {
            (Some(dn), _) if !(0.0..=1.0).contains(&dn) => {
                return Err(EngineError::InvalidInput(format!(
                    "denoise: must be from 0 to 1 (got {dn})"
                )));
            }
            (Some(dn), Some(twin)) if dn < 1.0 => {
                if detect(&sd) != Some(Architecture::Compact) {
                    return Err(EngineError::InvalidInput(
                        "denoise: only SRVGGNetCompact models (realesr-general-x4v3) blend with a denoise twin".into(),
                    ));
                }
                let other = state_dict::read(twin)?;
                compact::blend(&sd, &other, dn).map_err(|e| e.in_file(twin))?
            }
            (Some(dn), None) if dn < 1.0 => {
                return Err(EngineError::InvalidInput(
                    "denoise: this model has no denoise twin to blend with".into(),
                ));
            }
            _ => sd,
        };
        Self::from_state_dict(sd, path).map_err(|e| e.in_file(path))
    }

    /// A model from tensors already read (`origin` names them in messages).
    pub fn from_state_dict(sd: StateDict, origin: &Path) -> Result<Upscaler> {
        let architecture = detect(&sd).ok_or_else(|| {
            layout_error(
                "not a super-resolution model this engine reads (ESRGAN/RRDBNet, SRVGGNetCompact, SwinIR or HAT)",
            )
        })?;
        let (sd, net): (
            StateDict,
            Box<dyn FnOnce(&Weights) -> Result<Box<dyn Arch>>>,
        ) = match architecture {
            Architecture::Esrgan => {
                let (sd, config) = esrgan::canonical(sd)?;
                (
                    sd,
                    Box::new(move |w: &Weights| {
                        let vb = w.var_builder(DType::F32, &Device::Cpu);
                        Ok(Box::new(esrgan::Esrgan::new(config, vb)?) as Box<dyn Arch>)
                    }),
                )
            }
            Architecture::Hat => {
                let (sd, config) = hat::canonical(sd)?;
                (
                    sd,
                    Box::new(move |w: &Weights| {
                        let vb = w.var_builder(DType::F32, &Device::Cpu);
                        Ok(Box::new(hat::Hat::new(config, vb)?) as Box<dyn Arch>)
                    }),
                )
            }
            Architecture::SwinIr => {
                let (sd, config) = swinir::canonical(sd)?;
                (
                    sd,
                    Box::new(move |w: &Weights| {
                        let vb = w.var_builder(DType::F32, &Device::Cpu);
                        Ok(Box::new(swinir::SwinIr::new(config, vb)?) as Box<dyn Arch>)
                    }),
                )
            }
            Architecture::Compact => {
                let config = compact::config(&sd)?;
                (
                    sd,
                    Box::new(move |w: &Weights| {
                        let vb = w.var_builder(DType::F32, &Device::Cpu);
                        Ok(Box::new(compact::Compact::new(config, vb)?) as Box<dyn Arch>)
                    }),
                )
            }
        };
        let weights =
            Weights::from_tensors(sd.into_iter().collect(), &origin.display().to_string());
        let net = net(&weights)?;
        // Every tensor of the file is a layer's: a layout read wrongly is an error here.
        weights.check_all_used()?;
        Ok(Upscaler {
            architecture,
            net,
            source: origin.to_path_buf(),
        })
    }

    pub fn scale(&self) -> usize {
        self.net.scale()
    }
}

/// A model file that is not laid out as expected (its path is added by the loader).
pub(crate) fn layout_error(message: impl Into<String>) -> EngineError {
    EngineError::bad_model(PathBuf::new(), message)
}

/// LeakyReLU with `slope` below 1: `max(x, slope · x)`.
pub(crate) fn leaky_relu(x: &Tensor, slope: f64) -> candle_core::Result<Tensor> {
    x.maximum(&(x * slope)?)
}

/// `[B, C·s², H, W]` → `[B, C, H·s, W·s]`, as `torch.nn.PixelShuffle`.
pub(crate) fn pixel_shuffle(x: &Tensor, s: usize) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let c = c / (s * s);
    x.reshape(vec![b, c, s, s, h, w])?
        .permute(vec![0, 1, 4, 2, 5, 3])?
        .contiguous()?
        .reshape((b, c, h * s, w * s))
}

/// `[B, C, H·s, W·s]` → `[B, C·s², H, W]`, as `torch.pixel_unshuffle` (channel
/// `c·s² + dy·s + dx`).
pub(crate) fn pixel_unshuffle(x: &Tensor, s: usize) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (h, w) = (h / s, w / s);
    x.reshape(vec![b, c, h, s, w, s])?
        .permute(vec![0, 1, 3, 5, 2, 4])?
        .contiguous()?
        .reshape((b, c * s * s, h, w))
}

/// Pads the bottom and right edges to multiples of `m` by reflection (without repeating
/// the edge pixel), as `F.pad(..., mode="reflect")`; past what reflection reaches (an image
/// narrower than the padding) by repeating, as spandrel's `pad_tensor` does.
pub(crate) fn reflect_pad_to_multiple(x: &Tensor, m: usize) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let reflect = |n: usize, to: usize| -> Vec<u32> {
        (0..to)
            .map(|i| if i < n { i } else { (2 * (n - 1)).saturating_sub(i) } as u32)
            .collect()
    };
    let (th, tw) = (h.div_ceil(m) * m, w.div_ceil(m) * m);
    let mut y = x.clone();
    if th != h {
        let idx = Tensor::new(reflect(h, th), x.device())?;
        y = y.index_select(&idx, 2)?;
    }
    if tw != w {
        let idx = Tensor::new(reflect(w, tw), x.device())?;
        y = y.index_select(&idx, 3)?;
    }
    Ok(y)
}
