//! diffusers' `AutoencoderTiny` (TAESD, `madebyollin/taesd` and `taesdxl`): a small
//! encoder/decoder for UNet-space latents, used for live previews and real-time streaming
//! where the full VAE is too slow. Built from the model's own `config.json`.

use candle_core::{Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::kernels::{Conv2d, conv2d, conv2d_no_bias};
use serde::Deserialize;

use super::blocks::conv;
use crate::{Result, invalid};

#[derive(Debug, Clone, Deserialize)]
pub struct TinyVaeConfig {
    #[serde(default = "d_3")]
    pub in_channels: usize,
    #[serde(default = "d_3")]
    pub out_channels: usize,
    #[serde(default = "d_64x4")]
    pub encoder_block_out_channels: Vec<usize>,
    #[serde(default = "d_64x4")]
    pub decoder_block_out_channels: Vec<usize>,
    #[serde(default = "d_relu")]
    pub act_fn: String,
    #[serde(default = "d_nearest")]
    pub upsample_fn: String,
    #[serde(default = "d_4")]
    pub latent_channels: usize,
    #[serde(default = "d_2")]
    pub upsampling_scaling_factor: usize,
    #[serde(default = "d_enc")]
    pub num_encoder_blocks: Vec<usize>,
    #[serde(default = "d_dec")]
    pub num_decoder_blocks: Vec<usize>,
}

fn d_2() -> usize {
    2
}
fn d_3() -> usize {
    3
}
fn d_4() -> usize {
    4
}
fn d_64x4() -> Vec<usize> {
    vec![64; 4]
}
fn d_relu() -> String {
    "relu".into()
}
fn d_nearest() -> String {
    "nearest".into()
}
fn d_enc() -> Vec<usize> {
    vec![1, 3, 3, 3]
}
fn d_dec() -> Vec<usize> {
    vec![3, 3, 3, 1]
}

impl TinyVaeConfig {
    /// Pixels per latent along each side.
    pub fn scale_factor(&self) -> usize {
        self.upsampling_scaling_factor
            .pow(self.num_decoder_blocks.len().saturating_sub(1) as u32)
    }
}

#[derive(Clone, Copy)]
enum Act {
    Relu,
    Silu,
}

impl Act {
    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Act::Relu => x.relu(),
            Act::Silu => x.silu(),
        }
    }
}

/// `AutoencoderTinyBlock`: three 3×3 convs with activations, a skip, then ReLU.
struct Block {
    convs: [Conv2d; 3],
    skip: Option<Conv2d>,
    act: Act,
}

impl Block {
    fn new(vb: VarBuilder, cin: usize, cout: usize, act: Act) -> Result<Self> {
        Ok(Self {
            convs: [
                conv(vb.pp("conv.0"), cin, cout, 3, 1, 1)?,
                conv(vb.pp("conv.2"), cout, cout, 3, 1, 1)?,
                conv(vb.pp("conv.4"), cout, cout, 3, 1, 1)?,
            ],
            skip: if cin != cout {
                Some(conv2d_no_bias(
                    cin,
                    cout,
                    1,
                    Default::default(),
                    vb.pp("skip"),
                )?)
            } else {
                None
            },
            act,
        })
    }
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.act.apply(&self.convs[0].forward(x)?)?;
        let h = self.act.apply(&self.convs[1].forward(&h)?)?;
        let h = self.convs[2].forward(&h)?;
        let skip = match &self.skip {
            Some(s) => s.forward(x)?,
            None => x.clone(),
        };
        (h + skip)?.relu()
    }
}

/// One entry of an `nn.Sequential`, in order (indices count parameter-free layers too).
enum Layer {
    Conv(Conv2d),
    Act(Act),
    Block(Block),
    Upsample(usize),
}

fn run(layers: &[Layer], mut x: Tensor) -> candle_core::Result<Tensor> {
    for l in layers {
        x = match l {
            Layer::Conv(c) => c.forward(&x)?,
            Layer::Act(a) => a.apply(&x)?,
            Layer::Block(b) => b.forward(&x)?,
            Layer::Upsample(f) => {
                let (_, _, h, w) = x.dims4()?;
                x.upsample_nearest2d(h * f, w * f)?
            }
        };
    }
    Ok(x)
}

pub struct AutoencoderTiny {
    encoder: Vec<Layer>,
    decoder: Vec<Layer>,
    pub config: TinyVaeConfig,
    /// Weights loaded (set by the loader; the model cache's budget counts them).
    pub parameter_count: u64,
}

impl AutoencoderTiny {
    pub fn new(config: TinyVaeConfig, vb: VarBuilder) -> Result<Self> {
        let c = &config;
        let act = match c.act_fn.as_str() {
            "relu" => Act::Relu,
            "silu" | "swish" => Act::Silu,
            other => return Err(invalid!("tiny VAE activation {other:?} is not supported")),
        };
        if c.upsample_fn != "nearest" {
            return Err(invalid!(
                "tiny VAE upsampling {:?} is not supported",
                c.upsample_fn
            ));
        }
        if c.encoder_block_out_channels.len() != c.num_encoder_blocks.len()
            || c.decoder_block_out_channels.len() != c.num_decoder_blocks.len()
        {
            return Err(invalid!(
                "tiny VAE config: block channel and count lists differ in length"
            ));
        }
        let e = vb.pp("encoder.layers");
        let mut encoder = Vec::new();
        for (i, (&ch, &n)) in c
            .encoder_block_out_channels
            .iter()
            .zip(&c.num_encoder_blocks)
            .enumerate()
        {
            let idx = encoder.len();
            encoder.push(Layer::Conv(if i == 0 {
                conv(e.pp(idx), c.in_channels, ch, 3, 1, 1)?
            } else {
                conv2d_no_bias(
                    ch,
                    ch,
                    3,
                    Conv2dConfig {
                        padding: 1,
                        stride: 2,
                        ..Default::default()
                    },
                    e.pp(idx),
                )?
            }));
            for _ in 0..n {
                let idx = encoder.len();
                encoder.push(Layer::Block(Block::new(e.pp(idx), ch, ch, act)?));
            }
        }
        let idx = encoder.len();
        let last = *c.encoder_block_out_channels.last().unwrap_or(&64);
        encoder.push(Layer::Conv(conv(
            e.pp(idx),
            last,
            c.latent_channels,
            3,
            1,
            1,
        )?));

        let d = vb.pp("decoder.layers");
        let first = *c.decoder_block_out_channels.first().unwrap_or(&64);
        let mut decoder = vec![
            Layer::Conv(conv(d.pp(0), c.latent_channels, first, 3, 1, 1)?),
            Layer::Act(act),
        ];
        let n = c.num_decoder_blocks.len();
        for (i, (&ch, &blocks)) in c
            .decoder_block_out_channels
            .iter()
            .zip(&c.num_decoder_blocks)
            .enumerate()
        {
            let last = i + 1 == n;
            for _ in 0..blocks {
                let idx = decoder.len();
                decoder.push(Layer::Block(Block::new(d.pp(idx), ch, ch, act)?));
            }
            if !last {
                decoder.push(Layer::Upsample(c.upsampling_scaling_factor));
            }
            let idx = decoder.len();
            let out = if last { c.out_channels } else { ch };
            // Only the final conv has a bias, as in diffusers.
            let cfg = Conv2dConfig {
                padding: 1,
                ..Default::default()
            };
            decoder.push(Layer::Conv(if last {
                conv2d(ch, out, 3, cfg, d.pp(idx))?
            } else {
                conv2d_no_bias(ch, out, 3, cfg, d.pp(idx))?
            }));
        }
        Ok(Self {
            parameter_count: 0,
            encoder,
            decoder,
            config,
        })
    }

    /// UNet-space latents from images in [-1, 1].
    pub fn encode(&self, image: &Tensor) -> Result<Tensor> {
        Ok(run(&self.encoder, ((image + 1.0)? / 2.0)?)?)
    }

    /// Images in [-1, 1] from UNet-space latents (soft-clamped to ±3 first, as TAESD).
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let x = ((latents / 3.0)?.tanh()? * 3.0)?;
        let x = run(&self.decoder, x)?;
        Ok(((x * 2.0)? - 1.0)?)
    }
}
