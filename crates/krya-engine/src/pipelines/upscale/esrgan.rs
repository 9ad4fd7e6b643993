//! RRDBNet (ESRGAN, Real-ESRGAN x4plus / x2plus / x4plus_anime_6B and the community
//! ESRGAN models), as XPixelGroup/BasicSR@8d56e3a045:basicsr/archs/rrdbnet_arch.py defines
//! it and chaiNNer-org/spandrel@b0c3eb2d04:libs/spandrel/spandrel/architectures/ESRGAN
//! loads it.
//!
//! Three key layouts name the same weights; all are read into the Real-ESRGAN names here:
//!
//! | Real-ESRGAN (basicsr) | BSRGAN / RealSR | old ESRGAN (one `nn.Sequential`) |
//! |---|---|---|
//! | `conv_first` | `conv_first` | `model.0` |
//! | `body.i.rdbj.convk` | `RRDB_trunk.i.RDBj.convk` | `model.1.sub.i.RDBj.convk.0` |
//! | `conv_body` | `trunk_conv` | `model.1.sub.{blocks}` |
//! | `conv_up1`, `conv_up2`… | `upconv1`, `upconv2`… | `model.3`, `model.6`… |
//! | `conv_hr` | `HRconv` | `model.{3u+2}` |
//! | `conv_last` | `conv_last` | `model.{3u+4}` |
//!
//! Everything else comes from the tensors' shapes: features, growth channels, blocks, the
//! number of ×2 upsampling layers `u`, and pixel-unshuffled input (Real-ESRGAN x2plus takes
//! 12 channels: the image unshuffled by 2; a ×1 model 48, by 4), so the scale is
//! `2^u / unshuffle`. An old-layout ×3 model (one ×3 upsampling layer) cannot be told from
//! a ×2 one by its weights; it reads as ×2, as in spandrel.

use candle_core::{Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use super::{Arch, layout_error, leaky_relu, pixel_unshuffle, reflect_pad_to_multiple};
use crate::Result;
use crate::kernels::{Conv2d, conv2d};
use crate::model::state_dict::StateDict;

/// Hyper-parameters read from a state dict.
#[derive(Debug, Clone, PartialEq)]
pub struct EsrganConfig {
    /// Channels the network's first convolution takes (image channels × unshuffle²).
    pub in_channels: usize,
    pub out_channels: usize,
    pub features: usize,
    pub growth: usize,
    pub blocks: usize,
    /// ×2 nearest-neighbour upsampling layers.
    pub upsamplings: usize,
    /// The input is pixel-unshuffled by this (1: not).
    pub unshuffle: usize,
}

impl EsrganConfig {
    /// The image's scale factor.
    pub fn scale(&self) -> usize {
        (1 << self.upsamplings) / self.unshuffle
    }

    pub fn image_channels(&self) -> usize {
        self.in_channels / (self.unshuffle * self.unshuffle)
    }
}

/// Whether tensors of these names and shapes are an RRDBNet, in any of its layouts.
pub fn detect(sd: &super::Shapes) -> bool {
    let has = |k: &str| sd.contains_key(k);
    (has("conv_first.weight") && has("body.0.rdb1.conv1.weight"))
        || (has("conv_first.weight") && has("RRDB_trunk.0.RDB1.conv1.weight"))
        || (has("model.0.weight") && has("model.1.sub.0.RDB1.conv1.0.weight"))
}

/// `sd` with its keys in the Real-ESRGAN layout, and the hyper-parameters.
pub fn canonical(sd: StateDict) -> Result<(StateDict, EsrganConfig)> {
    if sd.keys().any(|k| k.contains(".conv1x1.")) {
        return Err(layout_error(
            "ESRGAN+ (RDB blocks with conv1x1) is not supported yet",
        ));
    }
    let sd = if sd.contains_key("model.0.weight") {
        from_old(sd)?
    } else {
        sd.into_iter().map(|(k, v)| (from_bsrgan(&k), v)).collect()
    };
    let dims = |k: &str| -> Result<Vec<usize>> {
        Ok(sd
            .get(k)
            .ok_or_else(|| layout_error(format!("RRDBNet without {k}")))?
            .dims()
            .to_vec())
    };
    let first = dims("conv_first.weight")?;
    let last = dims("conv_last.weight")?;
    let growth = dims("body.0.rdb1.conv1.weight")?[0];
    let count = |prefix: &str, suffix: &str| {
        (0..)
            .take_while(|i| sd.contains_key(&format!("{prefix}{i}{suffix}")))
            .count()
    };
    let blocks = count("body.", ".rdb1.conv1.weight");
    let upsamplings = (1..)
        .take_while(|i| sd.contains_key(&format!("conv_up{i}.weight")))
        .count();
    let (in_channels, out_channels) = (first[1], last[0]);
    // Real-ESRGAN's ×2 and ×1 models unshuffle the image by 2 or 4 before the network.
    let unshuffle = if in_channels == out_channels * 4 {
        2
    } else if in_channels == out_channels * 16 {
        4
    } else {
        1
    };
    let config = EsrganConfig {
        in_channels,
        out_channels,
        features: first[0],
        growth,
        blocks,
        upsamplings,
        unshuffle,
    };
    if config.blocks == 0 || (1 << upsamplings) < unshuffle {
        return Err(layout_error(format!(
            "an RRDBNet that cannot be read: {config:?}"
        )));
    }
    Ok((sd, config))
}

/// A BSRGAN/RealSR key in the Real-ESRGAN layout (others unchanged).
fn from_bsrgan(k: &str) -> String {
    if let Some(rest) = k.strip_prefix("RRDB_trunk.") {
        // RRDB_trunk.i.RDBj.… → body.i.rdbj.…
        return format!("body.{}", rest.replacen(".RDB", ".rdb", 1));
    }
    for (old, new) in [
        ("trunk_conv.", "conv_body."),
        ("upconv", "conv_up"),
        ("HRconv.", "conv_hr."),
    ] {
        if let Some(rest) = k.strip_prefix(old) {
            return format!("{new}{rest}");
        }
    }
    k.to_string()
}

/// The old layout's keys in the Real-ESRGAN layout.
fn from_old(sd: StateDict) -> Result<StateDict> {
    // `model.1.sub.N` with the largest N is the trunk convolution after N blocks.
    let blocks = sd
        .keys()
        .filter_map(|k| k.strip_prefix("model.1.sub."))
        .filter_map(|r| r.split('.').next()?.parse::<usize>().ok())
        .max()
        .ok_or_else(|| layout_error("old ESRGAN layout without blocks"))?;
    // The top-level indices after the shortcut block: upsampling convs at 3, 6, …, then the
    // HR conv and the last conv, 2 apart.
    let mut top: Vec<usize> = sd
        .keys()
        .filter_map(|k| k.strip_prefix("model."))
        .filter_map(|r| r.split('.').next()?.parse::<usize>().ok())
        .filter(|i| *i >= 2)
        .collect();
    top.sort_unstable();
    top.dedup();
    let last = *top
        .last()
        .ok_or_else(|| layout_error("old ESRGAN layout without its last layers"))?;
    if last < 4 || (last - 4) % 3 != 0 {
        return Err(layout_error(format!(
            "old ESRGAN layout with its last layer at model.{last}"
        )));
    }
    let ups = (last - 4) / 3;
    let mut out = StateDict::new();
    for (k, v) in sd {
        let rest = k
            .strip_prefix("model.")
            .ok_or_else(|| layout_error(format!("unexpected key {k}")))?;
        let (index, tail) = rest.split_once('.').unwrap_or((rest, ""));
        let new = match index.parse::<usize>() {
            Ok(0) => format!("conv_first.{tail}"),
            Ok(1) => {
                let sub = tail
                    .strip_prefix("sub.")
                    .ok_or_else(|| layout_error(format!("unexpected key {k}")))?;
                let (block, inner) = sub.split_once('.').unwrap_or((sub, ""));
                if block == blocks.to_string() {
                    format!("conv_body.{inner}")
                } else {
                    // i.RDBj.convk.0.weight → body.i.rdbj.convk.weight
                    let inner = inner.replacen("RDB", "rdb", 1).replacen(".0.", ".", 1);
                    format!("body.{block}.{inner}")
                }
            }
            Ok(i) if i % 3 == 0 && i / 3 >= 1 && i / 3 <= ups => {
                format!("conv_up{}.{tail}", i / 3)
            }
            Ok(i) if i == 3 * ups + 2 => format!("conv_hr.{tail}"),
            Ok(i) if i == 3 * ups + 4 => format!("conv_last.{tail}"),
            _ => return Err(layout_error(format!("unexpected key {k}"))),
        };
        out.insert(new, v);
    }
    Ok(out)
}

struct DenseBlock {
    convs: Vec<Conv2d>,
}

impl DenseBlock {
    fn new(nf: usize, gc: usize, vb: VarBuilder) -> Result<Self> {
        let cfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let convs = (1..=5)
            .map(|k| {
                let cout = if k < 5 { gc } else { nf };
                conv2d(nf + (k - 1) * gc, cout, 3, cfg, vb.pp(format!("conv{k}")))
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self { convs })
    }

    /// Each convolution sees the block's input and every earlier output; the last one's
    /// output, scaled by 0.2, is added to the input. In one pass over one buffer on the
    /// CPU ([`crate::kernels::dense_block`]), else layer by layer.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(y) = crate::kernels::dense_block(x, &self.convs, 0.2, 0.2)? {
            return Ok(y);
        }
        self.forward_layers(x)
    }

    fn forward_layers(&self, x: &Tensor) -> Result<Tensor> {
        let mut feats = vec![x.clone()];
        for conv in &self.convs[..4] {
            let y = leaky_relu(&conv.forward(&Tensor::cat(&feats, 1)?)?, 0.2)?;
            feats.push(y);
        }
        let y = self.convs[4].forward(&Tensor::cat(&feats, 1)?)?;
        Ok(((y * 0.2)? + x)?)
    }
}

struct Rrdb {
    blocks: [DenseBlock; 3],
}

impl Rrdb {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = x.clone();
        for b in &self.blocks {
            y = b.forward(&y)?;
        }
        Ok(((y * 0.2)? + x)?)
    }
}

pub struct Esrgan {
    pub config: EsrganConfig,
    conv_first: Conv2d,
    body: Vec<Rrdb>,
    conv_body: Conv2d,
    ups: Vec<Conv2d>,
    conv_hr: Conv2d,
    conv_last: Conv2d,
}

impl Esrgan {
    pub fn new(config: EsrganConfig, vb: VarBuilder) -> Result<Self> {
        let c = &config;
        let cfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let nf = c.features;
        let body = (0..c.blocks)
            .map(|i| {
                let vb = vb.pp(format!("body.{i}"));
                Ok(Rrdb {
                    blocks: [
                        DenseBlock::new(nf, c.growth, vb.pp("rdb1"))?,
                        DenseBlock::new(nf, c.growth, vb.pp("rdb2"))?,
                        DenseBlock::new(nf, c.growth, vb.pp("rdb3"))?,
                    ],
                })
            })
            .collect::<Result<_>>()?;
        let ups = (1..=c.upsamplings)
            .map(|i| conv2d(nf, nf, 3, cfg, vb.pp(format!("conv_up{i}"))))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            conv_first: conv2d(c.in_channels, nf, 3, cfg, vb.pp("conv_first"))?,
            body,
            conv_body: conv2d(nf, nf, 3, cfg, vb.pp("conv_body"))?,
            ups,
            conv_hr: conv2d(nf, nf, 3, cfg, vb.pp("conv_hr"))?,
            conv_last: conv2d(nf, c.out_channels, 3, cfg, vb.pp("conv_last"))?,
            config,
        })
    }
}

impl Arch for Esrgan {
    fn scale(&self) -> usize {
        self.config.scale()
    }

    fn channels(&self) -> usize {
        self.config.image_channels()
    }

    /// Each 3×3 convolution reaches one pixel further: two in the first and trunk convs, 15
    /// per block (3 dense blocks of 5), and the layers after upsampling reach less than one
    /// input pixel each (an unshuffled input's pixels are `unshuffle` image pixels wide).
    fn receptive_radius(&self) -> usize {
        let c = &self.config;
        let low = 2 + 15 * c.blocks + c.upsamplings + 2;
        low * c.unshuffle
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let (_, _, h, w) = x.dims4()?;
        // spandrel pads these models' input to a multiple of 4 whatever the unshuffle
        // (their `SizeRequirements(multiple_of=4)`), which changes the pixels at the
        // bottom and right edges: the same is done here.
        let x = if c.unshuffle > 1 {
            pixel_unshuffle(&reflect_pad_to_multiple(x, 4)?, c.unshuffle)?
        } else {
            x.clone()
        };
        let feat = self.conv_first.forward(&x)?;
        let mut trunk = feat.clone();
        for b in &self.body {
            trunk = b.forward(&trunk)?;
        }
        let mut feat = (feat + self.conv_body.forward(&trunk)?)?;
        for up in &self.ups {
            let (_, _, fh, fw) = feat.dims4()?;
            feat = leaky_relu(&up.forward(&feat.upsample_nearest2d(fh * 2, fw * 2)?)?, 0.2)?;
        }
        let out = self
            .conv_last
            .forward(&leaky_relu(&self.conv_hr.forward(&feat)?, 0.2)?)?;
        if c.unshuffle > 1 {
            let s = self.scale();
            return Ok(out.narrow(2, 0, h * s)?.narrow(3, 0, w * s)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// The one-pass block gives the layers' numbers exactly, at a Winograd size and at a
    /// direct-kernel one.
    #[test]
    fn the_fused_dense_block_is_the_layers() {
        let dev = Device::Cpu;
        let vb = VarBuilder::from_varmap(&candle_nn::VarMap::new(), DType::F32, &dev);
        let block = DenseBlock::new(8, 4, vb).unwrap();
        for (h, w) in [(20, 18), (7, 5)] {
            let x = Tensor::randn(0f32, 1f32, (2, 8, h, w), &dev).unwrap();
            let fused = block.forward(&x).unwrap();
            let layers = block.forward_layers(&x).unwrap();
            let values = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            if crate::kernels::direct::lanes().is_some() {
                assert!(values(fused) == values(layers), "{h}×{w}");
            }
        }
    }
}
