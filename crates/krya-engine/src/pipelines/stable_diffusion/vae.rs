//! diffusers' `AutoencoderKL`, built from the model's `vae/config.json`. The latent channels,
//! scale factor (2^(blocks-1)), scaling and shift factors all come from that config.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use crate::kernels::{Conv2d, GroupNorm, group_norm};
use serde::Deserialize;

use super::blocks::{Act, Attention, Downsample2D, ResnetBlock2D, ResnetParams, Upsample2D, conv};
use crate::Result;

#[derive(Debug, Clone, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "d_3")]
    pub in_channels: usize,
    #[serde(default = "d_3")]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_1")]
    pub layers_per_block: usize,
    #[serde(default = "d_silu")]
    pub act_fn: String,
    #[serde(default = "d_4")]
    pub latent_channels: usize,
    #[serde(default = "d_32")]
    pub norm_num_groups: usize,
    #[serde(default = "d_scale")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default = "d_true")]
    pub use_quant_conv: bool,
    #[serde(default = "d_true")]
    pub use_post_quant_conv: bool,
    #[serde(default = "d_true")]
    pub mid_block_add_attention: bool,
    #[serde(default)]
    pub down_block_types: Vec<String>,
    #[serde(default)]
    pub up_block_types: Vec<String>,
}

fn d_1() -> usize {
    1
}
fn d_3() -> usize {
    3
}
fn d_4() -> usize {
    4
}
fn d_32() -> usize {
    32
}
fn d_true() -> bool {
    true
}
fn d_silu() -> String {
    "silu".into()
}
fn d_scale() -> f64 {
    0.18215
}

impl VaeConfig {
    /// Pixels per latent along each side.
    pub fn scale_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

struct MidBlock {
    resnet0: ResnetBlock2D,
    attn: Option<(GroupNorm, Attention)>,
    resnet1: ResnetBlock2D,
}

impl MidBlock {
    fn new(vb: VarBuilder, ch: usize, p: &ResnetParams, attention: bool) -> Result<Self> {
        let attn = if attention {
            let vb = vb.pp("attentions.0");
            Some((
                group_norm(p.groups, ch, 1e-6, vb.pp("group_norm"))?,
                Attention::new(vb, ch, None, 1, ch, true)?,
            ))
        } else {
            None
        };
        Ok(Self {
            resnet0: ResnetBlock2D::new(vb.pp("resnets.0"), ch, ch, p)?,
            attn,
            resnet1: ResnetBlock2D::new(vb.pp("resnets.1"), ch, ch, p)?,
        })
    }
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = self.resnet0.forward(x, None)?;
        if let Some((norm, attn)) = &self.attn {
            let (b, c, h, w) = x.dims4()?;
            let t = norm.forward(&x)?.reshape((b, c, h * w))?.transpose(1, 2)?;
            let t = attn.forward(&t, None)?;
            x = (t.transpose(1, 2)?.reshape((b, c, h, w))? + x)?;
        }
        self.resnet1.forward(&x, None)
    }
}

struct Encoder {
    conv_in: Conv2d,
    blocks: Vec<(Vec<ResnetBlock2D>, Option<Downsample2D>)>,
    mid: MidBlock,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    act: Act,
}

struct Decoder {
    conv_in: Conv2d,
    mid: MidBlock,
    blocks: Vec<(Vec<ResnetBlock2D>, Option<Upsample2D>)>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    act: Act,
}

pub struct AutoencoderKL {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    pub config: VaeConfig,
}

impl AutoencoderKL {
    pub fn new(config: VaeConfig, vb: VarBuilder) -> Result<Self> {
        let c = &config;
        let act = Act::parse(&c.act_fn)?;
        let p = ResnetParams {
            temb_channels: None,
            groups: c.norm_num_groups,
            eps: 1e-6,
            act,
            output_scale_factor: 1.0,
        };
        let n = c.block_out_channels.len();
        let last = c.block_out_channels[n - 1];
        let lc = c.latent_channels;

        let e = vb.pp("encoder");
        let mut blocks = vec![];
        let mut out_ch = c.block_out_channels[0];
        for i in 0..n {
            let in_ch = out_ch;
            out_ch = c.block_out_channels[i];
            let vb = e.pp(format!("down_blocks.{i}"));
            let resnets = (0..c.layers_per_block)
                .map(|j| {
                    ResnetBlock2D::new(
                        vb.pp(format!("resnets.{j}")),
                        if j == 0 { in_ch } else { out_ch },
                        out_ch,
                        &p,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let down = if i + 1 < n {
                Some(Downsample2D::new(vb.pp("downsamplers.0"), out_ch, 0)?)
            } else {
                None
            };
            blocks.push((resnets, down));
        }
        let encoder = Encoder {
            conv_in: conv(
                e.pp("conv_in"),
                c.in_channels,
                c.block_out_channels[0],
                3,
                1,
                1,
            )?,
            blocks,
            mid: MidBlock::new(e.pp("mid_block"), last, &p, c.mid_block_add_attention)?,
            norm_out: group_norm(c.norm_num_groups, last, 1e-6, e.pp("conv_norm_out"))?,
            conv_out: conv(e.pp("conv_out"), last, 2 * lc, 3, 1, 1)?,
            act,
        };

        let d = vb.pp("decoder");
        let rev: Vec<usize> = c.block_out_channels.iter().rev().copied().collect();
        let mut blocks = vec![];
        let mut out_ch = rev[0];
        for i in 0..n {
            let prev = out_ch;
            out_ch = rev[i];
            let vb = d.pp(format!("up_blocks.{i}"));
            let resnets = (0..=c.layers_per_block)
                .map(|j| {
                    ResnetBlock2D::new(
                        vb.pp(format!("resnets.{j}")),
                        if j == 0 { prev } else { out_ch },
                        out_ch,
                        &p,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let up = if i + 1 < n {
                Some(Upsample2D::new(vb.pp("upsamplers.0"), out_ch)?)
            } else {
                None
            };
            blocks.push((resnets, up));
        }
        let decoder = Decoder {
            conv_in: conv(d.pp("conv_in"), lc, last, 3, 1, 1)?,
            mid: MidBlock::new(d.pp("mid_block"), last, &p, c.mid_block_add_attention)?,
            blocks,
            norm_out: group_norm(
                c.norm_num_groups,
                c.block_out_channels[0],
                1e-6,
                d.pp("conv_norm_out"),
            )?,
            conv_out: conv(
                d.pp("conv_out"),
                c.block_out_channels[0],
                c.out_channels,
                3,
                1,
                1,
            )?,
            act,
        };
        Ok(Self {
            encoder,
            decoder,
            quant_conv: if c.use_quant_conv {
                Some(conv(vb.pp("quant_conv"), 2 * lc, 2 * lc, 1, 1, 0)?)
            } else {
                None
            },
            post_quant_conv: if c.use_post_quant_conv {
                Some(conv(vb.pp("post_quant_conv"), lc, lc, 1, 1, 0)?)
            } else {
                None
            },
            config,
        })
    }

    /// The posterior's mean and standard deviation for images in [-1, 1].
    pub fn encode(&self, image: &Tensor) -> Result<(Tensor, Tensor)> {
        let e = &self.encoder;
        let mut x = e.conv_in.forward(image)?;
        for (resnets, down) in &e.blocks {
            for r in resnets {
                x = r.forward(&x, None)?;
            }
            if let Some(d) = down {
                x = d.forward(&x)?;
            }
        }
        x = e.mid.forward(&x)?;
        x = e
            .conv_out
            .forward(&e.act.apply(&e.norm_out.forward(&x)?)?)?;
        if let Some(q) = &self.quant_conv {
            x = q.forward(&x)?;
        }
        let lc = self.config.latent_channels;
        let mean = x.narrow(1, 0, lc)?;
        let logvar = x.narrow(1, lc, lc)?.clamp(-30f32, 20f32)?;
        let std = (logvar * 0.5)?.exp()?;
        Ok((mean, std))
    }

    /// Decodes raw (unscaled) latents to images in about [-1, 1].
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let d = &self.decoder;
        let mut x = match &self.post_quant_conv {
            Some(p) => p.forward(latents)?,
            None => latents.clone(),
        };
        x = d.conv_in.forward(&x)?;
        x = d.mid.forward(&x)?;
        for (resnets, up) in &d.blocks {
            for r in resnets {
                x = r.forward(&x, None)?;
            }
            if let Some(u) = up {
                x = u.forward(&x, None)?;
            }
        }
        Ok(d.conv_out
            .forward(&d.act.apply(&d.norm_out.forward(&x)?)?)?)
    }

    /// Latents as the UNet sees them from raw ones: `(z - shift) * scaling`.
    pub fn scale_latents(&self, z: &Tensor) -> Result<Tensor> {
        let shift = self.config.shift_factor.unwrap_or(0.0);
        Ok(z.affine(
            self.config.scaling_factor,
            -shift * self.config.scaling_factor,
        )?)
    }

    /// Raw latents from UNet-space ones: `z / scaling + shift`.
    pub fn unscale_latents(&self, z: &Tensor) -> Result<Tensor> {
        let shift = self.config.shift_factor.unwrap_or(0.0);
        Ok(z.affine(1.0 / self.config.scaling_factor, shift)?)
    }
}
