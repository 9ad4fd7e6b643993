//! IS-Net (DIS), as xuebinqin/DIS@b6764e2038:IS-Net/models/isnet.py defines `ISNetDIS`: a
//! strided 3×3 convolution, six encoder stages of residual U-blocks (RSU7…RSU4, then two
//! dilated RSU4F) with 2×2 max pools between them, five decoder stages fed by the stage
//! below (scaled up bilinearly) and the encoder's skip, and a 3×3 side convolution per
//! stage. The matte is the first side output (the finest), scaled to the input's size.
//!
//! An RSU of depth `L` encodes with `L − 1` convolutions, pooling before each after the
//! first, a dilated one at the bottom, and decodes back up concatenating each level's
//! features; the `F` variant keeps the size and dilates instead (1, 2, 4, 8). Which stages
//! are `F` is the architecture's (stages 5, 6 and 5d), as in the reference; every width
//! and each stage's depth come from the tensors. Batch norms are folded into their
//! convolutions at load.

use candle_core::{Module, Tensor};
use candle_nn::Conv2dConfig;

use crate::kernels::{Conv2d, conv2d_from};
use crate::model::state_dict::{self, StateDict};
use crate::{EngineError, Result};

fn bad(m: impl Into<String>) -> EngineError {
    EngineError::bad_model(std::path::PathBuf::new(), m)
}

/// Whether the tensor names are an `ISNetDIS`.
pub fn detect<'a>(mut names: impl Iterator<Item = &'a String>) -> bool {
    let mut found = [false; 3];
    for n in names.by_ref() {
        let n = n.strip_prefix("module.").unwrap_or(n);
        match n {
            "conv_in.weight" => found[0] = true,
            "stage6.rebnconvin.conv_s1.weight" => found[1] = true,
            "side1.weight" => found[2] = true,
            _ => {}
        }
    }
    found.iter().all(|&f| f)
}

/// A 3×3 convolution, its batch norm folded in, then ReLU (`REBNCONV`).
struct ReBnConv(Conv2d);

impl ReBnConv {
    fn load(sd: &mut StateDict, prefix: &str, dilation: usize) -> Result<Self> {
        let mut get = |k: &str| {
            sd.remove(&format!("{prefix}.{k}"))
                .ok_or_else(|| bad(format!("IS-Net without {prefix}.{k}")))
        };
        let w = get("conv_s1.weight")?;
        let b = get("conv_s1.bias")?;
        let bn = state_dict::take_batch_norm(sd, &format!("{prefix}.bn_s1"))?;
        let (w, b) = state_dict::fold_batch_norm(&w, Some(&b), &bn)?;
        let cfg = Conv2dConfig {
            padding: dilation,
            dilation,
            ..Default::default()
        };
        Ok(Self(conv2d_from(w, Some(b), cfg)?))
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.0.forward(x)?.relu()
    }
}

/// `MaxPool2d(2, stride=2, ceil_mode=True)`: an odd side's last window is the one pixel
/// left, which repeating the edge gives.
fn pool(x: &Tensor) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let x = if h % 2 == 1 {
        x.pad_with_same(2, 0, 1)?
    } else {
        x.clone()
    };
    let x = if w % 2 == 1 {
        x.pad_with_same(3, 0, 1)?
    } else {
        x
    };
    x.max_pool2d(2)
}

/// `_upsample_like`: bilinear, half-pixel centres, to `like`'s size.
fn upsample_like(x: &Tensor, like: &Tensor) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = like.dims4()?;
    if x.dims()[2..] == [h, w] {
        return Ok(x.clone());
    }
    x.upsample_bilinear2d(h, w, false)
}

/// A residual U-block: `input`, the encoder's convolutions (`enc[0]` on the input's
/// features, the last dilated), and the decoder's (`dec[i]` makes level `i`'s features).
struct Rsu {
    input: ReBnConv,
    enc: Vec<ReBnConv>,
    dec: Vec<ReBnConv>,
    /// The `F` variant: no pooling, dilations instead.
    flat: bool,
}

impl Rsu {
    fn load(sd: &mut StateDict, prefix: &str, flat: bool) -> Result<Self> {
        let depth = (1..)
            .take_while(|i| sd.contains_key(&format!("{prefix}.rebnconv{i}.conv_s1.weight")))
            .count();
        if depth < 2 {
            return Err(bad(format!("IS-Net stage {prefix} without its U-block")));
        }
        let input = ReBnConv::load(sd, &format!("{prefix}.rebnconvin"), 1)?;
        let mut enc = Vec::new();
        for i in 1..=depth {
            let dilation = match flat {
                true => 1 << (i - 1),
                false if i == depth => 2,
                false => 1,
            };
            enc.push(ReBnConv::load(
                sd,
                &format!("{prefix}.rebnconv{i}"),
                dilation,
            )?);
        }
        let mut dec = Vec::new();
        for i in 1..depth {
            let dilation = if flat { 1 << (i - 1) } else { 1 };
            dec.push(ReBnConv::load(
                sd,
                &format!("{prefix}.rebnconv{i}d"),
                dilation,
            )?);
        }
        Ok(Self {
            input,
            enc,
            dec,
            flat,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let xin = self.input.forward(x)?;
        let depth = self.enc.len();
        // Encoder: level i's features (before pooling into level i + 1).
        let mut levels = vec![self.enc[0].forward(&xin)?];
        for (i, conv) in self.enc.iter().enumerate().skip(1) {
            let prev = &levels[i - 1];
            let input = if self.flat || i == depth - 1 {
                prev.clone()
            } else {
                pool(prev)?
            };
            levels.push(conv.forward(&input)?);
        }
        // Decoder: from the bottom two levels up.
        let mut d = levels[depth - 1].clone();
        for i in (0..depth - 1).rev() {
            let below = if self.flat {
                d
            } else {
                upsample_like(&d, &levels[i])?
            };
            d = self.dec[i].forward(&Tensor::cat(&[&below, &levels[i]], 1)?)?;
        }
        d + xin
    }
}

/// An IS-Net.
pub struct IsNet {
    conv_in: Conv2d,
    /// Encoder stages 1–6, then decoder stages 5d…1d.
    encoder: Vec<Rsu>,
    decoder: Vec<Rsu>,
    side1: Conv2d,
}

impl IsNet {
    pub fn from_state_dict(sd: StateDict) -> Result<Self> {
        let mut sd: StateDict = sd
            .into_iter()
            .map(|(k, v)| match k.strip_prefix("module.") {
                Some(k) => (k.to_string(), v),
                None => (k, v),
            })
            .collect();
        let conv = |sd: &mut StateDict, name: &str, stride: usize| -> Result<Conv2d> {
            let w = sd
                .remove(&format!("{name}.weight"))
                .ok_or_else(|| bad(format!("IS-Net without {name}.weight")))?;
            let b = sd.remove(&format!("{name}.bias"));
            let cfg = Conv2dConfig {
                padding: 1,
                stride,
                ..Default::default()
            };
            Ok(conv2d_from(w, b, cfg)?)
        };
        let conv_in = conv(&mut sd, "conv_in", 2)?;
        let encoder = (1..=6)
            .map(|i| Rsu::load(&mut sd, &format!("stage{i}"), i >= 5))
            .collect::<Result<Vec<_>>>()?;
        let decoder = (1..=5)
            .rev()
            .map(|i| Rsu::load(&mut sd, &format!("stage{i}d"), i == 5))
            .collect::<Result<Vec<_>>>()?;
        let side1 = conv(&mut sd, "side1", 1)?;
        Ok(Self {
            conv_in,
            encoder,
            decoder,
            side1,
        })
    }

    /// `[1, 3, H, W]` (the image in `[0, 1]` minus 0.5) → the matte's logits `[1, 1, H, W]`
    /// (the reference's `d1` before its sigmoid).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        let mut skips = Vec::new();
        for (i, stage) in self.encoder.iter().enumerate() {
            if i > 0 {
                h = pool(&h)?;
            }
            h = stage.forward(&h)?;
            skips.push(h.clone());
        }
        // skips[5] is stage 6's output; the decoder takes it up against stages 5…1.
        for (i, stage) in self.decoder.iter().enumerate() {
            let skip = &skips[4 - i];
            let up = upsample_like(&h, skip)?;
            h = stage.forward(&Tensor::cat(&[&up, skip], 1)?)?;
        }
        let d1 = self.side1.forward(&h)?;
        Ok(upsample_like(&d1, x)?)
    }
}
