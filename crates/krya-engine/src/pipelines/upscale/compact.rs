//! SRVGGNetCompact (realesr-general-x4v3, realesr-animevideov3), as
//! xinntao/Real-ESRGAN@a4abfb2979:realesrgan/archs/srvgg_arch.py defines it: 3×3
//! convolutions at the input's size, each followed by a per-channel PReLU, a last one to
//! `out · scale²` channels, a pixel shuffle, and the nearest-upsampled input added.
//!
//! Keys `body.{2i}` (convolutions) and `body.{2i+1}` (PReLU weights, one per channel); the
//! number of convolutions, the features and the scale come from the shapes, as spandrel's
//! `Compact` architecture reads them (the last bias has `out · scale²` entries, `out` the
//! first of the input channels, 3, 4 or 1 that leaves a perfect square).
//!
//! Denoise strength: realesr-general-x4v3 ships with a twin trained to remove noise
//! (`realesr-general-wdn-x4v3`); Real-ESRGAN blends the two weight sets key by key,
//! `dn · x4v3 + (1 − dn) · wdn` (its `dni`), which [`blend`] does at load time.

use candle_core::{Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use super::{Arch, layout_error, pixel_shuffle};
use crate::Result;
use crate::kernels::{Conv2d, conv2d};
use crate::model::state_dict::StateDict;

#[derive(Debug, Clone, PartialEq)]
pub struct CompactConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub features: usize,
    /// Convolutions between the first and the last.
    pub convs: usize,
    pub scale: usize,
}

/// Whether `sd` holds an SRVGGNetCompact (a first conv and a per-channel PReLU after it).
pub fn detect(sd: &super::Shapes) -> bool {
    match (sd.get("body.0.weight"), sd.get("body.1.weight")) {
        (Some(w0), Some(w1)) => w0.len() == 4 && w1.len() == 1,
        _ => false,
    }
}

pub fn config(sd: &StateDict) -> Result<CompactConfig> {
    let highest = sd
        .keys()
        .filter_map(|k| k.strip_prefix("body."))
        .filter_map(|r| r.split('.').next()?.parse::<usize>().ok())
        .max()
        .unwrap_or(0);
    if highest < 2 || highest % 2 != 0 {
        return Err(layout_error(format!(
            "SRVGGNetCompact whose last layer is body.{highest}"
        )));
    }
    let first = sd["body.0.weight"].dims().to_vec();
    let (features, in_channels) = (first[0], first[1]);
    let last = sd
        .get(&format!("body.{highest}.bias"))
        .ok_or_else(|| layout_error(format!("SRVGGNetCompact without body.{highest}.bias")))?
        .dims1()?;
    let (out_channels, scale) = [in_channels, 3, 4, 1]
        .into_iter()
        .filter(|c| last % c == 0)
        .find_map(|c| {
            let s = ((last / c) as f64).sqrt().round() as usize;
            (s * s == last / c).then_some((c, s))
        })
        .ok_or_else(|| {
            layout_error(format!(
                "SRVGGNetCompact whose last layer makes {last} channels"
            ))
        })?;
    Ok(CompactConfig {
        in_channels,
        out_channels,
        features,
        convs: (highest - 2) / 2,
        scale,
    })
}

/// `dn · a + (1 − dn) · b` for every tensor: the two weight sets must match key for key.
pub fn blend(a: &StateDict, b: &StateDict, dn: f64) -> Result<StateDict> {
    if a.len() != b.len() {
        return Err(layout_error(
            "the denoise twin does not have the model's tensors",
        ));
    }
    a.iter()
        .map(|(k, ta)| {
            let tb = b
                .get(k)
                .ok_or_else(|| layout_error(format!("the denoise twin has no {k}")))?;
            if ta.dims() != tb.dims() {
                return Err(layout_error(format!(
                    "{k}: {:?} in the model, {:?} in its denoise twin",
                    ta.dims(),
                    tb.dims()
                )));
            }
            Ok((k.clone(), ((ta * dn)? + (tb * (1.0 - dn))?)?))
        })
        .collect()
}

pub struct Compact {
    pub config: CompactConfig,
    convs: Vec<Conv2d>,
    /// The PReLU after each convolution but the last: a slope per channel.
    slopes: Vec<Vec<f32>>,
}

impl Compact {
    pub fn new(config: CompactConfig, vb: VarBuilder) -> Result<Self> {
        let c = &config;
        let cfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let mut convs = vec![conv2d(c.in_channels, c.features, 3, cfg, vb.pp("body.0"))?];
        for i in 0..c.convs {
            convs.push(conv2d(
                c.features,
                c.features,
                3,
                cfg,
                vb.pp(format!("body.{}", 2 * i + 2)),
            )?);
        }
        let last = 2 * c.convs + 2;
        convs.push(conv2d(
            c.features,
            c.out_channels * c.scale * c.scale,
            3,
            cfg,
            vb.pp(format!("body.{last}")),
        )?);
        let slopes = (0..=c.convs)
            .map(|i| {
                vb.pp(format!("body.{}", 2 * i + 1))
                    .get(c.features, "weight")?
                    .to_vec1::<f32>()
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            config,
            convs,
            slopes,
        })
    }
}

impl Compact {
    /// The body layer by layer (what the one-pass chain computes, without the fast kernels).
    fn forward_layers(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = x.clone();
        let n = self.convs.len();
        for (i, conv) in self.convs.iter().enumerate() {
            y = conv.forward(&y)?;
            if i + 1 < n {
                let a = &self.slopes[i];
                let a = Tensor::new(a.as_slice(), y.device())?.reshape((1, a.len(), 1, 1))?;
                y = prelu(&y, &a)?;
            }
        }
        Ok(y)
    }
}

/// PReLU: `x` where positive, `a · x` elsewhere, `a` per channel.
fn prelu(x: &Tensor, a: &Tensor) -> candle_core::Result<Tensor> {
    x.relu()? + x.minimum(0f32)?.broadcast_mul(a)?
}

impl Arch for Compact {
    fn scale(&self) -> usize {
        self.config.scale
    }

    fn channels(&self) -> usize {
        self.config.in_channels
    }

    /// One pixel per 3×3 convolution.
    fn receptive_radius(&self) -> usize {
        self.convs.len()
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match crate::kernels::conv_prelu_chain(x, &self.convs, &self.slopes)? {
            Some(y) => y,
            None => self.forward_layers(x)?,
        };
        let s = self.config.scale;
        let y = pixel_shuffle(&y, s)?;
        let (_, _, h, w) = x.dims4()?;
        Ok((y + x.upsample_nearest2d(h * s, w * s)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// The one-pass chain gives the layers' numbers exactly, at a Winograd size and at a
    /// direct-kernel one.
    #[test]
    fn the_chain_is_the_layers() {
        let dev = Device::Cpu;
        let vb = VarBuilder::from_varmap(&candle_nn::VarMap::new(), DType::F32, &dev);
        let config = CompactConfig {
            in_channels: 3,
            out_channels: 3,
            features: 8,
            convs: 3,
            scale: 2,
        };
        let mut m = Compact::new(config, vb).unwrap();
        // Slopes of both signs, as trained ones have.
        m.slopes = (0..m.slopes.len())
            .map(|i| {
                (0..8)
                    .map(|c| (c as f32 - 3.0) * 0.1 + i as f32 * 0.05)
                    .collect()
            })
            .collect();
        for (h, w) in [(20, 18), (7, 5)] {
            let x = Tensor::randn(0f32, 1f32, (2, 3, h, w), &dev).unwrap();
            let chain = crate::kernels::conv_prelu_chain(&x, &m.convs, &m.slopes).unwrap();
            let Some(chain) = chain else {
                return; // no AVX2: the layers run one by one anyway
            };
            let layers = m.forward_layers(&x).unwrap();
            let values = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(values(chain) == values(layers), "{h}×{w}");
        }
    }
}
