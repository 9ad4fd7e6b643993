//! GFPGAN v1.3/v1.4 ("clean" architecture, TencentARC/GFPGAN@7552a7791c:
//! gfpgan/archs/gfpganv1_clean_arch.py and stylegan2_clean_arch.py; spandrel's `GFPGAN`): a
//! U-Net encoder reads the aligned face, its bottom becomes one style code per StyleGAN2
//! layer, and its decoder levels give a scale and a shift (SFT) for half of the channels of
//! each upsampling layer of a StyleGAN2 generator, which paints the restored face.
//!
//! - ResBlocks resample bilinearly (`align_corners=False`), ×0.5 going down, ×2 going up.
//! - ModulatedConv2d: the weight scaled per input channel by the style, demodulated per
//!   output channel (`rsqrt(Σw² + 1e-8)`); "upsample" is a bilinear ×2 before the conv.
//! - StyleConv: `lrelu(conv · √2 + strength · noise + bias, 0.2)`. The noise is the
//!   model's stored `noises.noise{i}` (the reference's `randomize_noise=False`), so the same
//!   face restores to the same pixels (the reference draws fresh noise unless told not to).
//!
//! Sizes, channels, SFT half or whole and one or many style codes come from the shapes.
//! `style_mlp` and the U-Net's intermediate `toRGB` heads are in the files but unused at
//! inference (`input_is_latent=True`, `return_rgb` discarded): read and ignored.
//!
//! Input and output are `[1, 3, S, S]` RGB in `[-1, 1]`.

use candle_core::{D, Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::kernels::{Conv2d, Linear, conv2d, conv2d_no_bias, linear};
use crate::pipelines::upscale::leaky_relu;
use crate::{EngineError, Result};

/// What the file's shapes say.
#[derive(Debug, Clone, PartialEq)]
pub struct GfpganConfig {
    /// The face's side: 512 for the released models.
    pub out_size: usize,
    pub log_size: usize,
    pub num_style_feat: usize,
    pub num_mlp: usize,
    /// SFT on half of the decoder's channels (v1.3/v1.4) or all of them.
    pub sft_half: bool,
    /// A style code per layer (v1.3/v1.4) or one for all.
    pub different_w: bool,
    /// Channels at 4×4, 8×8, …, S×S: the U-Net's and the generator's.
    pub unet: Vec<usize>,
    pub dec: Vec<usize>,
}

/// Whether tensors of these names make a GFPGAN (as spandrel detects it).
pub fn detect(sd: &crate::pipelines::upscale::Shapes) -> bool {
    sd.contains_key("toRGB.0.weight")
        && sd.contains_key("stylegan_decoder.style_mlp.1.weight")
        && sd.contains_key("conv_body_first.weight")
}

fn bad(m: impl Into<String>) -> EngineError {
    EngineError::bad_model(std::path::PathBuf::new(), m)
}

/// The configuration from the shapes.
pub fn config(sd: &crate::pipelines::upscale::Shapes) -> Result<GfpganConfig> {
    let count = |prefix: &str| {
        sd.keys()
            .filter_map(|k| k.strip_prefix(prefix))
            .filter_map(|r| r.split('.').next()?.parse::<usize>().ok())
            .max()
            .map_or(0, |n| n + 1)
    };
    let ups = count("conv_body_up.");
    if ups == 0 || count("conv_body_down.") != ups {
        return Err(bad("GFPGAN whose encoder and decoder differ in depth"));
    }
    let log_size = ups + 2;
    let shape = |k: &str| {
        sd.get(k)
            .cloned()
            .ok_or_else(|| bad(format!("GFPGAN without {k}")))
    };
    let modulation = shape("stylegan_decoder.style_conv1.modulated_conv.modulation.weight")?;
    let num_style_feat = modulation[1];
    let linear_out = shape("final_linear.weight")?[0];
    let different_w = linear_out != num_style_feat;
    if different_w && linear_out != (2 * log_size - 2) * num_style_feat {
        return Err(bad(format!(
            "GFPGAN whose style code has {linear_out} values for {log_size} levels"
        )));
    }
    let up_out = shape(&format!("conv_body_up.{}.conv2.weight", ups - 1))?[0];
    let sft_out = shape(&format!("condition_scale.{}.2.weight", ups - 1))?[0];
    // The style MLP's linear layers are every other module after the norm (1, 3, …).
    let num_mlp = sd
        .keys()
        .filter(|k| k.starts_with("stylegan_decoder.style_mlp.") && k.ends_with(".weight"))
        .count();
    // Channels per level (4×4 first): the U-Net's from its blocks' outputs, the
    // generator's from its upsampling convolutions.
    let mut unet = vec![shape("final_conv.weight")?[0]];
    let mut dec = vec![shape("stylegan_decoder.constant_input.weight")?[1]];
    for n in 0..ups {
        unet.push(shape(&format!("conv_body_up.{n}.conv2.weight"))?[0]);
        dec.push(
            shape(&format!(
                "stylegan_decoder.style_convs.{}.modulated_conv.weight",
                2 * n
            ))?[1],
        );
    }
    if shape("conv_body_first.weight")?[0] != unet[ups] {
        return Err(bad("GFPGAN whose first layer does not fit its top level"));
    }
    Ok(GfpganConfig {
        out_size: 1 << log_size,
        log_size,
        num_style_feat,
        num_mlp,
        sft_half: sft_out == up_out,
        different_w,
        unet,
        dec,
    })
}

/// Bilinear resampling by `factor` (0.5 or 2), as `F.interpolate(..., align_corners=False)`.
fn resample(x: &Tensor, factor: f64) -> candle_core::Result<Tensor> {
    x.upsample_bilinear2d_with_scale(factor, factor, false)
}

struct ResBlock {
    conv1: Conv2d,
    conv2: Conv2d,
    skip: Conv2d,
    factor: f64,
}

impl ResBlock {
    fn new(cin: usize, cout: usize, factor: f64, vb: VarBuilder) -> Result<Self> {
        let pad = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        Ok(Self {
            conv1: conv2d(cin, cin, 3, pad, vb.pp("conv1"))?,
            conv2: conv2d(cin, cout, 3, pad, vb.pp("conv2"))?,
            skip: conv2d_no_bias(cin, cout, 1, Default::default(), vb.pp("skip"))?,
            factor,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let out = leaky_relu(&self.conv1.forward(x)?, 0.2)?;
        let out = resample(&out, self.factor)?;
        let out = leaky_relu(&self.conv2.forward(&out)?, 0.2)?;
        let skip = self.skip.forward(&resample(x, self.factor)?)?;
        out + skip
    }
}

/// StyleGAN2's modulated convolution (batch of one).
struct ModulatedConv {
    modulation: Linear,
    /// `[out, in, k, k]`.
    weight: Tensor,
    demodulate: bool,
    upsample: bool,
}

impl ModulatedConv {
    fn new(
        cin: usize,
        cout: usize,
        k: usize,
        style: usize,
        demodulate: bool,
        upsample: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            modulation: linear(style, cin, vb.pp("modulation"))?,
            weight: vb.get((1, cout, cin, k, k), "weight")?.squeeze(0)?,
            demodulate,
            upsample,
        })
    }

    fn forward(&self, x: &Tensor, style: &Tensor) -> candle_core::Result<Tensor> {
        let (cout, cin, k, _) = self.weight.dims4()?;
        let s = self.modulation.forward(style)?.reshape((1, cin, 1, 1))?;
        let mut w = self.weight.broadcast_mul(&s)?;
        if self.demodulate {
            let d = (w
                .sqr()?
                .sum_keepdim(D::Minus1)?
                .sum_keepdim(2)?
                .sum_keepdim(1)?
                + 1e-8)?
                .sqrt()?
                .recip()?;
            w = w.broadcast_mul(&d)?;
        }
        debug_assert_eq!(w.dims()[0], cout);
        let x = if self.upsample {
            resample(x, 2.0)?
        } else {
            x.clone()
        };
        x.conv2d(&w.contiguous()?, k / 2, 1, 1, 1)
    }
}

struct StyleConv {
    conv: ModulatedConv,
    /// The noise's strength, `[1]`.
    strength: Tensor,
    bias: Tensor,
}

impl StyleConv {
    fn new(cin: usize, cout: usize, style: usize, upsample: bool, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: ModulatedConv::new(cin, cout, 3, style, true, upsample, vb.pp("modulated_conv"))?,
            strength: vb.get(1, "weight")?,
            bias: vb.get((1, cout, 1, 1), "bias")?,
        })
    }

    fn forward(&self, x: &Tensor, style: &Tensor, noise: &Tensor) -> candle_core::Result<Tensor> {
        let out = (self.conv.forward(x, style)? * std::f64::consts::SQRT_2)?;
        let out = out.broadcast_add(&noise.broadcast_mul(&self.strength)?)?;
        leaky_relu(&out.broadcast_add(&self.bias)?, 0.2)
    }
}

struct ToRgb {
    conv: ModulatedConv,
    bias: Tensor,
}

impl ToRgb {
    fn new(cin: usize, style: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: ModulatedConv::new(cin, 3, 1, style, false, false, vb.pp("modulated_conv"))?,
            bias: vb.get((1, 3, 1, 1), "bias")?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        style: &Tensor,
        skip: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let out = self.conv.forward(x, style)?.broadcast_add(&self.bias)?;
        match skip {
            Some(s) => out + resample(s, 2.0)?,
            None => Ok(out),
        }
    }
}

pub struct Gfpgan {
    pub config: GfpganConfig,
    first: Conv2d,
    down: Vec<ResBlock>,
    final_conv: Conv2d,
    final_linear: Linear,
    up: Vec<ResBlock>,
    /// Per level: (scale, shift) heads, each conv → lrelu → conv.
    condition: Vec<[(Conv2d, Conv2d); 2]>,
    constant: Tensor,
    style_conv1: StyleConv,
    to_rgb1: ToRgb,
    style_convs: Vec<StyleConv>,
    to_rgbs: Vec<ToRgb>,
    noises: Vec<Tensor>,
}

impl Gfpgan {
    pub fn new(config: GfpganConfig, vb: VarBuilder) -> Result<Self> {
        let c = &config;
        // Channels at a resolution of 2^i.
        let unet = |i: usize| c.unet[i - 2];
        let dec = |i: usize| c.dec[i - 2];
        let unet_top = unet(c.log_size);
        let pad = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let first = conv2d(3, unet_top, 1, Default::default(), vb.pp("conv_body_first"))?;
        let mut down = Vec::new();
        let mut cin = unet_top;
        for (n, i) in (3..=c.log_size).rev().enumerate() {
            let cout = unet(i - 1);
            down.push(ResBlock::new(
                cin,
                cout,
                0.5,
                vb.pp(format!("conv_body_down.{n}")),
            )?);
            cin = cout;
        }
        let final_conv = conv2d(cin, unet(2), 3, pad, vb.pp("final_conv"))?;
        let latents = if c.different_w {
            (2 * c.log_size - 2) * c.num_style_feat
        } else {
            c.num_style_feat
        };
        let final_linear = linear(unet(2) * 16, latents, vb.pp("final_linear"))?;
        let mut up = Vec::new();
        let mut condition = Vec::new();
        let mut cin = unet(2);
        for (n, i) in (3..=c.log_size).enumerate() {
            let cout = unet(i);
            up.push(ResBlock::new(
                cin,
                cout,
                2.0,
                vb.pp(format!("conv_body_up.{n}")),
            )?);
            let sft = if c.sft_half { cout } else { 2 * cout };
            let head = |name: &str| -> Result<(Conv2d, Conv2d)> {
                let vb = vb.pp(format!("{name}.{n}"));
                Ok((
                    conv2d(cout, cout, 3, pad, vb.pp("0"))?,
                    conv2d(cout, sft, 3, pad, vb.pp("2"))?,
                ))
            };
            condition.push([head("condition_scale")?, head("condition_shift")?]);
            // The U-Net's own RGB heads: trained, unused at inference.
            vb.pp(format!("toRGB.{n}")).get((3, cout, 1, 1), "weight")?;
            vb.pp(format!("toRGB.{n}")).get(3, "bias")?;
            cin = cout;
        }
        let d = vb.pp("stylegan_decoder");
        let nsf = c.num_style_feat;
        for i in 0..c.num_mlp {
            let l = d.pp(format!("style_mlp.{}", 2 * i + 1));
            l.get((nsf, nsf), "weight")?;
            l.get(nsf, "bias")?;
        }
        let constant = d.get((1, dec(2), 4, 4), "constant_input.weight")?;
        let style_conv1 = StyleConv::new(dec(2), dec(2), nsf, false, d.pp("style_conv1"))?;
        let to_rgb1 = ToRgb::new(dec(2), nsf, d.pp("to_rgb1"))?;
        let (mut style_convs, mut to_rgbs) = (Vec::new(), Vec::new());
        let mut cin = dec(2);
        for (n, i) in (3..=c.log_size).enumerate() {
            let cout = dec(i);
            style_convs.push(StyleConv::new(
                cin,
                cout,
                nsf,
                true,
                d.pp(format!("style_convs.{}", 2 * n)),
            )?);
            style_convs.push(StyleConv::new(
                cout,
                cout,
                nsf,
                false,
                d.pp(format!("style_convs.{}", 2 * n + 1)),
            )?);
            to_rgbs.push(ToRgb::new(cout, nsf, d.pp(format!("to_rgbs.{n}")))?);
            cin = cout;
        }
        let noises = (0..(c.log_size - 2) * 2 + 1)
            .map(|i| {
                let r = 1 << ((i + 5) / 2);
                d.get((1, 1, r, r), &format!("noises.noise{i}"))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            config,
            first,
            down,
            final_conv,
            final_linear,
            up,
            condition,
            constant,
            style_conv1,
            to_rgb1,
            style_convs,
            to_rgbs,
            noises,
        })
    }

    /// `[1, 3, S, S]` in `[-1, 1]` → the restored face, `[1, 3, S, S]`, about `[-1, 1]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let (b, _, h, w) = x.dims4()?;
        if b != 1 || h != c.out_size || w != c.out_size {
            return Err(EngineError::InvalidInput(format!(
                "GFPGAN restores one {0}×{0} face at a time (got {b} of {h}×{w})",
                c.out_size
            )));
        }
        let mut feat = leaky_relu(&self.first.forward(x)?, 0.2)?;
        let mut skips = Vec::new();
        for d in &self.down {
            feat = d.forward(&feat)?;
            skips.insert(0, feat.clone());
        }
        feat = leaky_relu(&self.final_conv.forward(&feat)?, 0.2)?;
        let code = self.final_linear.forward(&feat.flatten_from(1)?)?;
        let nl = 2 * c.log_size - 2;
        let latent = if c.different_w {
            code.reshape((1, nl, c.num_style_feat))?
        } else {
            code.unsqueeze(1)?.repeat((1, nl, 1))?
        };
        let mut conditions = Vec::new();
        for (i, up) in self.up.iter().enumerate() {
            feat = (feat + &skips[i])?;
            feat = up.forward(&feat)?;
            for (a, b2) in &self.condition[i] {
                let y = b2.forward(&leaky_relu(&a.forward(&feat)?, 0.2)?)?;
                conditions.push(y);
            }
        }
        let style = |i: usize| latent.narrow(1, i, 1).and_then(|t| t.squeeze(1));
        let mut out = self
            .style_conv1
            .forward(&self.constant, &style(0)?, &self.noises[0])?;
        let mut skip = self.to_rgb1.forward(&out, &style(1)?, None)?;
        let mut i = 1;
        for (n, to_rgb) in self.to_rgbs.iter().enumerate() {
            out = self.style_convs[2 * n].forward(&out, &style(i)?, &self.noises[2 * n + 1])?;
            if i < conditions.len() {
                let (scale, shift) = (&conditions[i - 1], &conditions[i]);
                out = if c.sft_half {
                    let ch = out.dim(1)?;
                    let same = out.narrow(1, 0, ch / 2)?;
                    let sft = out.narrow(1, ch / 2, ch - ch / 2)?;
                    let sft = ((sft * scale)? + shift)?;
                    Tensor::cat(&[same, sft], 1)?
                } else {
                    ((out * scale)? + shift)?
                };
            }
            out = self.style_convs[2 * n + 1].forward(
                &out,
                &style(i + 1)?,
                &self.noises[2 * n + 2],
            )?;
            skip = to_rgb.forward(&out, &style(i + 2)?, Some(&skip))?;
            i += 2;
        }
        Ok(skip)
    }
}
