//! RetinaFace, as facexlib runs it (xinntao/facexlib@260620ae93:facexlib/detection/
//! retinaface.py, retinaface_net.py, retinaface_utils.py): a backbone (MobileNetV1 ×0.25, or
//! torchvision's ResNet-50 up to its fourth stage, GFPGANer's default), a three-level FPN, an
//! SSH context module per level, and per
//! level 1×1 heads for two anchors a cell: face score (softmax of two), box and five
//! landmarks, decoded against the prior boxes (`min_sizes [[16,32],[64,128],[256,512]]`,
//! `steps [8,16,32]`, variances 0.1 and 0.2), thresholded and suppressed (IoU 0.4).
//!
//! Input: BGR minus (104, 117, 123), unscaled, as facexlib's `detect_faces`. Batch norms are
//! folded into their convolutions at load. Which backbone a file holds is read from its
//! keys (`body.stage1…`), never its name; `module.` prefixes are dropped.

use candle_core::{D, IndexOp, Tensor};

use crate::model::state_dict::{self, StateDict};
use crate::{EngineError, Result};

fn bad(m: impl Into<String>) -> EngineError {
    EngineError::bad_model(std::path::PathBuf::new(), m)
}

/// A convolution with its batch norm folded in, and its activation.
struct ConvBn {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: usize,
    groups: usize,
    /// LeakyReLU slope (0: ReLU); `None`: no activation.
    act: Option<f64>,
}

/// Tensors taken by name; what is left at the end was not read.
struct Take(StateDict);

impl Take {
    fn get(&mut self, k: &str) -> Result<Tensor> {
        self.0
            .remove(k)
            .ok_or_else(|| bad(format!("RetinaFace without {k}")))
    }

    /// `{conv}.weight` and the batch norm `{bn}.*`, folded.
    fn conv_bn(
        &mut self,
        conv: &str,
        bn: &str,
        stride: usize,
        groups: usize,
        act: Option<f64>,
    ) -> Result<ConvBn> {
        let w = self.get(&format!("{conv}.weight"))?;
        let bn = state_dict::take_batch_norm(&mut self.0, bn)?;
        let k = w.dim(2)?;
        let (weight, bias) = state_dict::fold_batch_norm(&w, None, &bn)?;
        Ok(ConvBn {
            weight,
            bias: bias.reshape((1, (), 1, 1))?,
            stride,
            padding: k / 2,
            groups,
            act,
        })
    }
}

impl ConvBn {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = x
            .conv2d(&self.weight, self.padding, self.stride, 1, self.groups)?
            .broadcast_add(&self.bias)?;
        match self.act {
            None => Ok(y),
            Some(0.0) => y.relu(),
            Some(s) => y.maximum(&(&y * s)?),
        }
    }
}

enum Body {
    /// Stages of layers, run in turn; the outputs of stages 1–3 feed the FPN.
    Mobile(Vec<Vec<ConvBn>>),
    /// ResNet-50: a 7×7 stride-2 convolution and a 3×3 stride-2 max pool, then four stages of
    /// bottlenecks; the outputs of stages 2–4 feed the FPN.
    Resnet {
        stem: ConvBn,
        stages: Vec<Vec<Bottleneck>>,
    },
}

/// A ResNet bottleneck: 1×1, 3×3 (with the stage's stride), 1×1 to four times the width,
/// added to the input (through a strided 1×1 where the shape changes), ReLU.
struct Bottleneck {
    c1: ConvBn,
    c2: ConvBn,
    c3: ConvBn,
    down: Option<ConvBn>,
}

impl Bottleneck {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.c3.forward(&self.c2.forward(&self.c1.forward(x)?)?)?;
        let id = match &self.down {
            Some(d) => d.forward(x)?,
            None => x.clone(),
        };
        (y + id)?.relu()
    }
}

struct Ssh {
    c3: ConvBn,
    c5_1: ConvBn,
    c5_2: ConvBn,
    c7_2: ConvBn,
    c7_3: ConvBn,
}

struct Head {
    weight: Tensor,
    bias: Tensor,
}

/// Which backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backbone {
    MobileNet025,
    ResNet50,
}

/// A face: its box `[x1, y1, x2, y2]`, score, and five landmarks (left eye, right eye,
/// nose, left and right mouth corners), in input pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub bbox: [f32; 4],
    pub score: f32,
    pub landmarks: [[f32; 2]; 5],
}

pub struct RetinaFace {
    pub backbone: Backbone,
    body: Body,
    fpn_out: [ConvBn; 3],
    fpn_merge: [ConvBn; 2],
    ssh: Vec<Ssh>,
    class: Vec<Head>,
    bbox: Vec<Head>,
    landmark: Vec<Head>,
}

/// Whether these names make a RetinaFace.
pub fn detect(names: &mut dyn Iterator<Item = &String>) -> bool {
    let mut heads = false;
    let mut ssh = false;
    for k in names {
        let k = k.strip_prefix("module.").unwrap_or(k);
        heads |= k.starts_with("LandmarkHead.");
        ssh |= k.starts_with("ssh1.");
    }
    heads && ssh
}

fn head(t: &mut Take, name: &str) -> Result<Head> {
    Ok(Head {
        weight: t.get(&format!("{name}.conv1x1.weight"))?,
        bias: t
            .get(&format!("{name}.conv1x1.bias"))?
            .reshape((1, (), 1, 1))?,
    })
}

impl RetinaFace {
    pub fn from_state_dict(sd: StateDict) -> Result<Self> {
        let sd: StateDict = sd
            .into_iter()
            .map(|(k, v)| {
                (
                    k.strip_prefix("module.").map(str::to_string).unwrap_or(k),
                    v,
                )
            })
            .collect();
        let mobile = sd.contains_key("body.stage1.0.0.weight");
        let mut t = Take(sd);
        let leaky = 0.1;
        let (backbone, body) = if mobile {
            // MobileNetV1 ×0.25: a strided conv, then depthwise-separable pairs.
            let strides: [&[usize]; 3] = [&[2, 1, 2, 1, 2, 1], &[2, 1, 1, 1, 1, 1], &[2, 1]];
            let mut stages = Vec::new();
            for (s, strides) in strides.iter().enumerate() {
                let mut layers = Vec::new();
                for (i, &stride) in strides.iter().enumerate() {
                    let p = format!("body.stage{}.{i}", s + 1);
                    if s == 0 && i == 0 {
                        layers.push(t.conv_bn(
                            &format!("{p}.0"),
                            &format!("{p}.1"),
                            stride,
                            1,
                            Some(leaky),
                        )?);
                    } else {
                        let channels =
                            t.0.get(&format!("{p}.0.weight"))
                                .ok_or_else(|| bad(format!("RetinaFace without {p}.0.weight")))?
                                .dim(0)?;
                        layers.push(t.conv_bn(
                            &format!("{p}.0"),
                            &format!("{p}.1"),
                            stride,
                            channels,
                            Some(leaky),
                        )?);
                        layers.push(t.conv_bn(
                            &format!("{p}.3"),
                            &format!("{p}.4"),
                            1,
                            1,
                            Some(leaky),
                        )?);
                    }
                }
                stages.push(layers);
            }
            (Backbone::MobileNet025, Body::Mobile(stages))
        } else if t.0.contains_key("body.layer1.0.conv1.weight") {
            let stem = t.conv_bn("body.conv1", "body.bn1", 2, 1, Some(0.0))?;
            let mut stages = Vec::new();
            for s in 1..=4 {
                let stride = if s == 1 { 1 } else { 2 };
                let count = (0..)
                    .take_while(|i| t.0.contains_key(&format!("body.layer{s}.{i}.conv1.weight")))
                    .count();
                let mut blocks = Vec::new();
                for i in 0..count {
                    let p = format!("body.layer{s}.{i}");
                    let stride = if i == 0 { stride } else { 1 };
                    let down = if t.0.contains_key(&format!("{p}.downsample.0.weight")) {
                        Some(t.conv_bn(
                            &format!("{p}.downsample.0"),
                            &format!("{p}.downsample.1"),
                            stride,
                            1,
                            None,
                        )?)
                    } else {
                        None
                    };
                    blocks.push(Bottleneck {
                        c1: t.conv_bn(
                            &format!("{p}.conv1"),
                            &format!("{p}.bn1"),
                            1,
                            1,
                            Some(0.0),
                        )?,
                        c2: t.conv_bn(
                            &format!("{p}.conv2"),
                            &format!("{p}.bn2"),
                            stride,
                            1,
                            Some(0.0),
                        )?,
                        c3: t.conv_bn(&format!("{p}.conv3"), &format!("{p}.bn3"), 1, 1, None)?,
                        down,
                    });
                }
                if blocks.is_empty() {
                    return Err(bad(format!("RetinaFace (ResNet) without body.layer{s}")));
                }
                stages.push(blocks);
            }
            (Backbone::ResNet50, Body::Resnet { stem, stages })
        } else {
            return Err(bad(
                "RetinaFace whose backbone is neither MobileNetV1 nor ResNet",
            ));
        };
        // The FPN and SSH use LeakyReLU 0.1 at 64 channels or fewer, else ReLU.
        let out =
            t.0.get("fpn.output1.0.weight")
                .ok_or_else(|| bad("RetinaFace without fpn.output1.0.weight"))?
                .dim(0)?;
        let act = Some(if out <= 64 { 0.1 } else { 0.0 });
        let mut conv =
            |p: &str, act: Option<f64>| t.conv_bn(&format!("{p}.0"), &format!("{p}.1"), 1, 1, act);
        let fpn_out = [
            conv("fpn.output1", act)?,
            conv("fpn.output2", act)?,
            conv("fpn.output3", act)?,
        ];
        let fpn_merge = [conv("fpn.merge1", act)?, conv("fpn.merge2", act)?];
        let mut ssh = Vec::new();
        for i in 1..=3 {
            let p = format!("ssh{i}");
            ssh.push(Ssh {
                c3: conv(&format!("{p}.conv3X3"), None)?,
                c5_1: conv(&format!("{p}.conv5X5_1"), act)?,
                c5_2: conv(&format!("{p}.conv5X5_2"), None)?,
                c7_2: conv(&format!("{p}.conv7X7_2"), act)?,
                c7_3: conv(&format!("{p}.conv7x7_3"), None)?,
            });
        }
        let mut heads = |name: &str| -> Result<Vec<Head>> {
            (0..3)
                .map(|i| head(&mut t, &format!("{name}.{i}")))
                .collect()
        };
        let (class, bbox, landmark) = (
            heads("ClassHead")?,
            heads("BboxHead")?,
            heads("LandmarkHead")?,
        );
        // MobileNet's classifier (`fc`) is not part of the detector; anything else is.
        let left: Vec<_> =
            t.0.keys()
                .filter(|k| !k.starts_with("body.fc."))
                .cloned()
                .collect();
        if !left.is_empty() {
            return Err(bad(format!(
                "RetinaFace with tensors it does not use: {}",
                left.join(", ")
            )));
        }
        Ok(Self {
            backbone,
            body,
            fpn_out,
            fpn_merge,
            ssh,
            class,
            bbox,
            landmark,
        })
    }

    /// The three feature maps the FPN takes.
    fn body(&self, x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let mut outs = Vec::new();
        match &self.body {
            Body::Mobile(stages) => {
                let mut x = x.clone();
                for stage in stages {
                    for l in stage {
                        x = l.forward(&x)?;
                    }
                    outs.push(x.clone());
                }
            }
            Body::Resnet { stem, stages } => {
                // The max pool pads with zeros: after a ReLU that is its -∞.
                let x = stem.forward(x)?;
                let mut x = x
                    .pad_with_zeros(2, 1, 1)?
                    .pad_with_zeros(3, 1, 1)?
                    .max_pool2d_with_stride(3, 2)?;
                for (s, stage) in stages.iter().enumerate() {
                    for b in stage {
                        x = b.forward(&x)?;
                    }
                    if s > 0 {
                        outs.push(x.clone());
                    }
                }
            }
        }
        Ok(outs)
    }

    /// Raw outputs for `[1, 3, H, W]` (BGR minus the means): boxes `[1, P, 4]`, face
    /// probabilities `[1, P, 2]` and landmarks `[1, P, 10]` for every prior.
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let f = self.body(x)?;
        let o1 = self.fpn_out[0].forward(&f[0])?;
        let o2 = self.fpn_out[1].forward(&f[1])?;
        let o3 = self.fpn_out[2].forward(&f[2])?;
        let o2 = self.fpn_merge[1].forward(&(o2.clone() + nearest(&o3, &o2)?)?)?;
        let o1 = self.fpn_merge[0].forward(&(o1.clone() + nearest(&o2, &o1)?)?)?;
        let mut parts: [Vec<Tensor>; 3] = Default::default();
        for (i, feat) in [o1, o2, o3].iter().enumerate() {
            let s = &self.ssh[i];
            let a = s.c3.forward(feat)?;
            let b1 = s.c5_1.forward(feat)?;
            let b = s.c5_2.forward(&b1)?;
            let c = s.c7_3.forward(&s.c7_2.forward(&b1)?)?;
            let feat = Tensor::cat(&[a, b, c], 1)?.relu()?;
            for (k, (heads, n)) in [(&self.bbox, 4), (&self.class, 2), (&self.landmark, 10)]
                .into_iter()
                .enumerate()
            {
                let h = &heads[i];
                let y = feat.conv2d(&h.weight, 0, 1, 1, 1)?.broadcast_add(&h.bias)?;
                parts[k].push(y.permute((0, 2, 3, 1))?.contiguous()?.reshape((1, (), n))?);
            }
        }
        let [boxes, class, landmarks] = parts;
        Ok((
            Tensor::cat(&boxes, 1)?,
            candle_nn::ops::softmax(&Tensor::cat(&class, 1)?, D::Minus1)?,
            Tensor::cat(&landmarks, 1)?,
        ))
    }

    /// Faces in an RGB image (`[1, 3, H, W]`, values 0–255), as `detect_faces(image,
    /// conf_threshold, 0.4)` finds them: best first.
    pub fn detect(&self, rgb: &Tensor, threshold: f32) -> Result<Vec<Detection>> {
        let (_, _, h, w) = rgb.dims4()?;
        let mean = Tensor::new(&[104f32, 117., 123.], rgb.device())?.reshape((1, 3, 1, 1))?;
        let bgr = Tensor::cat(
            &[rgb.i((.., 2..3))?, rgb.i((.., 1..2))?, rgb.i((.., 0..1))?],
            1,
        )?;
        let (loc, conf, landm) = self.forward(&bgr.broadcast_sub(&mean)?)?;
        let loc: Vec<Vec<f32>> = loc.squeeze(0)?.to_vec2()?;
        let conf: Vec<Vec<f32>> = conf.squeeze(0)?.to_vec2()?;
        let landm: Vec<Vec<f32>> = landm.squeeze(0)?.to_vec2()?;
        let priors = priors(h, w);
        if priors.len() != loc.len() {
            return Err(EngineError::InvalidInput(format!(
                "RetinaFace: {} priors for {} predictions",
                priors.len(),
                loc.len()
            )));
        }
        let (v0, v1) = (0.1f32, 0.2f32);
        let (wf, hf) = (w as f32, h as f32);
        let mut found: Vec<Detection> = Vec::new();
        for (p, ((l, c), m)) in priors.iter().zip(loc.iter().zip(&conf).zip(&landm)) {
            let score = c[1];
            if score <= threshold {
                continue;
            }
            let (cx, cy) = (p[0] + l[0] * v0 * p[2], p[1] + l[1] * v0 * p[3]);
            let (bw, bh) = (p[2] * (l[2] * v1).exp(), p[3] * (l[3] * v1).exp());
            let (x1, y1) = (cx - bw / 2.0, cy - bh / 2.0);
            let bbox = [x1 * wf, y1 * hf, (x1 + bw) * wf, (y1 + bh) * hf];
            let landmarks = std::array::from_fn(|k| {
                [
                    (p[0] + m[2 * k] * v0 * p[2]) * wf,
                    (p[1] + m[2 * k + 1] * v0 * p[3]) * hf,
                ]
            });
            found.push(Detection {
                bbox,
                score,
                landmarks,
            });
        }
        // Best first (a stable sort, as numpy's argsort of the reversed order keeps ties
        // in index order only approximately: ties are rare in floats), then NMS.
        found.sort_by(|a, b| b.score.total_cmp(&a.score));
        let mut kept: Vec<Detection> = Vec::new();
        for d in found {
            if kept.iter().all(|k| iou(&k.bbox, &d.bbox) <= 0.4) {
                kept.push(d);
            }
        }
        Ok(kept)
    }
}

fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let area = |r: &[f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    inter / (area(a) + area(b) - inter)
}

/// The prior boxes `[cx, cy, w, h]` (fractions of the image) for an `h × w` input, in the
/// heads' order: per level, per cell (row-major), per anchor size.
pub fn priors(h: usize, w: usize) -> Vec<[f32; 4]> {
    let mut out = Vec::new();
    for (step, sizes) in [
        (8usize, [16f64, 32.]),
        (16, [64., 128.]),
        (32, [256., 512.]),
    ] {
        let (fh, fw) = (h.div_ceil(step), w.div_ceil(step));
        for i in 0..fh {
            for j in 0..fw {
                // In double precision, then rounded, as facexlib's Python floats are.
                for s in sizes {
                    out.push([
                        ((j as f64 + 0.5) * step as f64 / w as f64) as f32,
                        ((i as f64 + 0.5) * step as f64 / h as f64) as f32,
                        (s / w as f64) as f32,
                        (s / h as f64) as f32,
                    ]);
                }
            }
        }
    }
    out
}

/// `F.interpolate(x, size=like's, mode="nearest")`: source index `floor(i · in / out)`.
fn nearest(x: &Tensor, like: &Tensor) -> candle_core::Result<Tensor> {
    let (_, _, ih, iw) = x.dims4()?;
    let (_, _, oh, ow) = like.dims4()?;
    let rows: Vec<u32> = (0..oh).map(|i| (i * ih / oh) as u32).collect();
    let cols: Vec<u32> = (0..ow).map(|j| (j * iw / ow) as u32).collect();
    let dev = x.device();
    x.index_select(&Tensor::new(rows, dev)?, 2)?
        .index_select(&Tensor::new(cols, dev)?, 3)
}
