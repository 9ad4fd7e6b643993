//! LaMa's generator (big-lama), as advimman/lama@786f5936b2:saicinpainting/training/modules/
//! ffc.py builds `FFCResNetGenerator` with the big-lama configuration (spandrel's copy is the
//! golden reference): a 7×7 convolution, strided 3×3 convolutions down (the last splits its
//! output into a local and a global part), residual blocks of fast Fourier convolutions,
//! transposed convolutions up, a 7×7 convolution and a sigmoid. Every spatial convolution
//! pads by reflection.
//!
//! A fast Fourier convolution keeps two streams: local features meet 3×3 convolutions, and
//! global ones also go through the spectral transform (a 1×1 convolution, then a 1×1
//! convolution in the frequency domain of a 2-D real FFT, then back, then a 1×1). Each
//! stream's output is `local_in → · + global_in → ·`, batch-normed and rectified.
//!
//! The widths, the number of downsamplings and of blocks, and the local/global split come
//! from the tensors. Batch norms are folded into the convolutions before them; the two
//! convolutions into the local stream are one convolution over both streams.

use candle_core::{Module, Tensor};
use candle_nn::Conv2dConfig;

use crate::kernels::{self, Conv2d, conv2d_from, fft};
use crate::model::state_dict::{self, StateDict};
use crate::{EngineError, Result};

fn bad(m: impl Into<String>) -> EngineError {
    EngineError::bad_model(std::path::PathBuf::new(), m)
}

/// The key every LaMa's second layer has (after its prefix), as spandrel detects it.
const MARK: &str = "1.bn_l.running_mean";

/// Whether the tensor names are a LaMa generator.
pub fn detect<'a>(mut names: impl Iterator<Item = &'a String>) -> bool {
    names.any(|n| n.ends_with(MARK) && prefix_of(n).is_some())
}

/// The prefix before the sequence's indices: `model.model.` (spandrel), `generator.model.`
/// (the training checkpoint) or `model.` (the generator alone).
fn prefix_of(key: &str) -> Option<&str> {
    let p = key.strip_suffix(MARK)?;
    ["model.model.", "generator.model.", "model.", ""]
        .into_iter()
        .find(|&c| p == c)
}

/// The spectral transform of the global stream (stride 1, no local Fourier unit).
struct Spectral {
    /// 1×1, halving the channels, batch norm folded; ReLU after.
    conv1: Conv2d,
    /// The Fourier unit's 1×1 over interleaved real and imaginary parts, batch norm folded;
    /// ReLU after.
    fu: Conv2d,
    /// 1×1 back to the output's channels (the stream's batch norm scale folded in).
    conv2: Conv2d,
}

impl Spectral {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.conv1.forward(x)?.relu()?;
        let (n, c, h, w) = x.dims4()?;
        let spec = fft::rfft2(&x)?;
        let f = spec.dim(4)?;
        let spec = self
            .fu
            .forward(&spec.reshape((n, 2 * c, h, f))?)?
            .relu()?
            .reshape((n, c, 2, h, f))?;
        let fu = fft::irfft2(&spec, w)?;
        self.conv2.forward(&(x + fu)?)
    }
}

/// One `FFC_BN_ACT`: the local output from both streams, the global output from the local
/// stream's convolution and the spectral transform, each batch-normed (folded) and rectified.
struct Ffc {
    /// Into the local stream: over `cat(local, global)`.
    to_local: Option<Conv2d>,
    /// Local → global.
    l2g: Option<Conv2d>,
    g2g: Option<Spectral>,
    /// The global stream's batch-norm shift (its scale is in `l2g` and `g2g`).
    g_shift: Option<Tensor>,
}

type Streams = (Option<Tensor>, Option<Tensor>);

impl Ffc {
    fn forward(&self, (l, g): &Streams) -> candle_core::Result<Streams> {
        let both = match (l, g) {
            (Some(l), Some(g)) => Some(Tensor::cat(&[l, g], 1)?),
            (Some(x), None) | (None, Some(x)) => Some(x.clone()),
            (None, None) => None,
        };
        let local = match (&self.to_local, &both) {
            (Some(c), Some(x)) => Some(c.forward(x)?.relu()?),
            _ => None,
        };
        let mut global = match (&self.l2g, l) {
            (Some(c), Some(l)) => Some(c.forward(l)?),
            _ => None,
        };
        if let (Some(s), Some(g)) = (&self.g2g, g) {
            let y = s.forward(g)?;
            global = Some(match global {
                Some(a) => (a + y)?,
                None => y,
            });
        }
        let global = match (global, &self.g_shift) {
            (Some(y), Some(shift)) => {
                Some(y.broadcast_add(&shift.reshape((1, (), 1, 1))?)?.relu()?)
            }
            (y, _) => y,
        };
        Ok((local, global))
    }
}

/// A transposed 3×3 stride-2 convolution (batch norm folded), then ReLU.
struct Up {
    weight: Tensor,
    bias: Tensor,
}

/// Tensors by name below the generator's prefix.
struct Take(StateDict);

impl Take {
    fn get(&mut self, k: &str) -> Result<Tensor> {
        self.0
            .remove(k)
            .ok_or_else(|| bad(format!("LaMa without {k}")))
    }

    fn has(&self, k: &str) -> bool {
        self.0.contains_key(k)
    }

    fn bn(&mut self, p: &str) -> Result<(Tensor, Tensor)> {
        state_dict::take_batch_norm(&mut self.0, p)
    }

    /// `FFC_BN_ACT` at `p` (`{p}.ffc.*`, `{p}.bn_l`, `{p}.bn_g`).
    fn ffc(&mut self, p: &str, stride: usize, pad: usize) -> Result<Ffc> {
        let conv = |w: Tensor, b: Option<Tensor>, stride: usize| -> Result<Conv2d> {
            let cfg = Conv2dConfig {
                stride,
                padding: pad,
                ..Default::default()
            };
            Ok(conv2d_from(w, b, cfg)?.reflect_padded())
        };
        let l2l = self.0.remove(&format!("{p}.ffc.convl2l.weight"));
        let g2l = self.0.remove(&format!("{p}.ffc.convg2l.weight"));
        let to_local = if l2l.is_some() || g2l.is_some() {
            let bn = self.bn(&format!("{p}.bn_l"))?;
            let w = match (l2l, g2l) {
                (Some(a), Some(b)) => Tensor::cat(&[a, b], 1)?,
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => unreachable!(),
            };
            let (w, b) = state_dict::fold_batch_norm(&w, None, &bn)?;
            Some(conv(w, Some(b), stride)?)
        } else {
            None
        };
        let l2g = self.0.remove(&format!("{p}.ffc.convl2g.weight"));
        let s = format!("{p}.ffc.convg2g");
        let has_g2g = self.has(&format!("{s}.conv1.0.weight"));
        if has_g2g && stride != 1 {
            return Err(bad(format!(
                "LaMa's spectral transform {s} with stride {stride}"
            )));
        }
        if self.has(&format!("{s}.lfu.conv_layer.weight")) {
            return Err(bad(format!(
                "LaMa with a local Fourier unit ({s}.lfu), which big-lama has not"
            )));
        }
        let (l2g, g2g, g_shift) = if l2g.is_some() || has_g2g {
            let (scale, shift) = self.bn(&format!("{p}.bn_g"))?;
            let fold = |w: &Tensor| w.broadcast_mul(&scale.reshape(((), 1, 1, 1))?);
            let l2g = match l2g {
                Some(w) => Some(conv(fold(&w)?, None, stride)?),
                None => None,
            };
            let g2g = if has_g2g {
                let w1 = self.get(&format!("{s}.conv1.0.weight"))?;
                let bn1 = self.bn(&format!("{s}.conv1.1"))?;
                let (w1, b1) = state_dict::fold_batch_norm(&w1, None, &bn1)?;
                let wf = self.get(&format!("{s}.fu.conv_layer.weight"))?;
                let bnf = self.bn(&format!("{s}.fu.bn"))?;
                let (wf, bf) = state_dict::fold_batch_norm(&wf, None, &bnf)?;
                let w2 = fold(&self.get(&format!("{s}.conv2.weight"))?)?;
                let one = Conv2dConfig::default();
                Some(Spectral {
                    conv1: conv2d_from(w1, Some(b1), one)?,
                    fu: conv2d_from(wf, Some(bf), one)?,
                    conv2: conv2d_from(w2, None, one)?,
                })
            } else {
                None
            };
            (l2g, g2g, Some(shift))
        } else {
            (None, None, None)
        };
        Ok(Ffc {
            to_local,
            l2g,
            g2g,
            g_shift,
        })
    }
}

/// A LaMa generator.
pub struct Lama {
    input: Ffc,
    down: Vec<Ffc>,
    /// Residual blocks: two FFCs each, added to the block's input on both streams.
    blocks: Vec<(Ffc, Ffc)>,
    up: Vec<Up>,
    out: Conv2d,
}

impl Lama {
    pub fn from_state_dict(sd: StateDict) -> Result<Self> {
        let prefix = sd
            .keys()
            .find(|k| k.ends_with(MARK))
            .and_then(|k| prefix_of(k))
            .ok_or_else(|| bad(format!("not a LaMa generator (no …{MARK})")))?
            .to_string();
        let mut t = Take(
            sd.into_iter()
                .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?.to_string(), v)))
                .collect(),
        );
        // 0: ReflectionPad2d(3); 1: the 7×7 FFC.
        let input = t.ffc("1", 1, 3)?;
        let mut i = 2;
        let mut down = Vec::new();
        while t.has(&format!("{i}.ffc.convl2l.weight"))
            && !t.has(&format!("{i}.conv1.ffc.convl2l.weight"))
        {
            down.push(t.ffc(&i.to_string(), 2, 1)?);
            i += 1;
        }
        let mut blocks = Vec::new();
        while t.has(&format!("{i}.conv1.bn_l.running_mean")) {
            blocks.push((
                t.ffc(&format!("{i}.conv1"), 1, 1)?,
                t.ffc(&format!("{i}.conv2"), 1, 1)?,
            ));
            i += 1;
        }
        // The concatenation of the streams has no weights.
        i += 1;
        let mut up = Vec::new();
        while t.has(&format!("{}.running_mean", i + 1)) {
            let w = t.get(&format!("{i}.weight"))?;
            let b = t.get(&format!("{i}.bias"))?;
            let (scale, shift) = t.bn(&(i + 1).to_string())?;
            // A transposed convolution's weight is [in, out, k, k]: scale the outputs.
            let weight = w.broadcast_mul(&scale.reshape((1, (), 1, 1))?)?;
            let bias = ((b * &scale)? + shift)?;
            up.push(Up { weight, bias });
            i += 3;
        }
        // ReflectionPad2d(3), then the 7×7 convolution.
        i += 1;
        let w = t.get(&format!("{i}.weight"))?;
        let b = t.get(&format!("{i}.bias"))?;
        let cfg = Conv2dConfig {
            padding: 3,
            ..Default::default()
        };
        let out = conv2d_from(w, Some(b), cfg)?.reflect_padded();
        if down.is_empty() || up.len() != down.len() {
            return Err(bad(format!(
                "LaMa with {} downsamplings and {} upsamplings",
                down.len(),
                up.len()
            )));
        }
        if let Some(k) = t.0.keys().next() {
            return Err(bad(format!("LaMa with an unexpected tensor {prefix}{k}")));
        }
        Ok(Self {
            input,
            down,
            blocks,
            up,
            out,
        })
    }

    /// How many times the generator halves the image: sides must be multiples of `2^n`.
    pub fn multiple(&self) -> usize {
        1 << self.down.len()
    }

    /// `cat(image · (1 − mask), mask)` `[1, 4, H, W]` → the generator's prediction `[1, 3, H,
    /// W]` in `[0, 1]` (before it is composited into the image).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut s: Streams = (Some(x.clone()), None);
        s = self.input.forward(&s)?;
        for d in &self.down {
            s = d.forward(&s)?;
        }
        for (c1, c2) in &self.blocks {
            let y = c2.forward(&c1.forward(&s)?)?;
            s = match (s, y) {
                ((Some(l), Some(g)), (Some(yl), Some(yg))) => (Some((l + yl)?), Some((g + yg)?)),
                _ => return Err(bad("LaMa block without both streams")),
            };
        }
        let mut h = match s {
            (Some(l), Some(g)) => Tensor::cat(&[l, g], 1)?,
            (Some(x), None) | (None, Some(x)) => x,
            (None, None) => return Err(bad("LaMa without features")),
        };
        for u in &self.up {
            h = kernels::conv_transpose2d(&h, &u.weight, Some(&u.bias), 2, 1, 1)?.relu()?;
        }
        Ok(candle_nn::ops::sigmoid(&self.out.forward(&h)?)?)
    }
}
