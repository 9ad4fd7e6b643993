//! The CLIP text encoder (transformers' `CLIPTextModel` / `CLIPTextModelWithProjection`),
//! built from the model's own `text_encoder*/config.json`.
//!
//! Activation, sizes, the end-of-text position rule and the projection all come from the
//! config: SD 2.x and SDXL use exact GELU where SD 1.x uses quick GELU.

use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::{VarBuilder, embedding};

use crate::kernels::{LayerNorm, Linear, layer_norm, linear, linear_b};
use serde::Deserialize;

use crate::Result;
use crate::pipelines::lora::{Layer, Visit};

#[derive(Debug, Clone, Deserialize)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_ln_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub projection_dim: Option<usize>,
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default = "default_eos")]
    pub eos_token_id: u32,
}

fn default_act() -> String {
    "quick_gelu".into()
}
fn default_ln_eps() -> f64 {
    1e-5
}
fn default_eos() -> u32 {
    2
}

impl ClipTextConfig {
    pub fn has_projection(&self) -> bool {
        self.architectures
            .iter()
            .any(|a| a.contains("WithProjection"))
    }
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    QuickGelu,
    Gelu,
    GeluTanh,
    Relu,
}

impl Activation {
    fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "quick_gelu" => Activation::QuickGelu,
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => {
                return Err(crate::invalid!(
                    "text encoder activation {other:?} is not supported"
                ));
            }
        })
    }
    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::QuickGelu => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
            Activation::Gelu => crate::kernels::gelu(x),
            Activation::GeluTanh => x.gelu(),
            Activation::Relu => x.relu(),
        }
    }
}

#[derive(Clone)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(c: &ClipTextConfig, vb: VarBuilder) -> Result<Self> {
        let h = c.hidden_size;
        Ok(Self {
            q: linear(h, h, vb.pp("q_proj"))?,
            k: linear(h, h, vb.pp("k_proj"))?,
            v: linear(h, h, vb.pp("v_proj"))?,
            out: linear(h, h, vb.pp("out_proj"))?,
            heads: c.num_attention_heads,
            head_dim: h / c.num_attention_heads,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (q, k, v) = (self.q.forward(x)?, self.k.forward(x)?, self.v.forward(x)?);
        let scale = (self.head_dim as f64).powf(-0.5);
        let o = crate::kernels::attention(&q, &k, &v, self.heads, scale, true, 1 << 28)?;
        self.out.forward(&o)
    }
}

#[derive(Clone)]
struct EncoderLayer {
    ln1: LayerNorm,
    attn: Attention,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl EncoderLayer {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = (x + self.attn.forward(&self.ln1.forward(x)?)?)?;
        let m = self
            .fc2
            .forward(&self.act.apply(&self.fc1.forward(&self.ln2.forward(&h)?)?)?)?;
        h + m
    }
}

#[derive(Clone)]
pub struct ClipTextModel {
    token_embedding: candle_nn::Embedding,
    position_embedding: candle_nn::Embedding,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    projection: Option<Linear>,
    pub config: ClipTextConfig,
}

/// What the SD pipelines need from one encoder pass.
pub struct ClipOutput {
    /// The embeddings output and each layer's output, before the final layer norm
    /// (transformers' `hidden_states`, `num_hidden_layers + 1` entries).
    pub hidden_states: Vec<Tensor>,
    /// The last layer's output after the final layer norm.
    pub last_hidden_state: Tensor,
    /// The end-of-text token's final state, projected when the model has a projection.
    pub pooled: Tensor,
}

impl ClipTextModel {
    /// The layers a LoRA can change, named as transformers' `CLIPTextModel` names them
    /// (`text_model.encoder.layers.{i}.self_attn.q_proj`, `text_projection`).
    pub fn visit_layers(&mut self, f: &mut Visit) -> Result<()> {
        for (i, l) in self.layers.iter_mut().enumerate() {
            let p = format!("text_model.encoder.layers.{i}");
            f(
                &format!("{p}.self_attn.q_proj"),
                Layer::Linear(&mut l.attn.q),
            )?;
            f(
                &format!("{p}.self_attn.k_proj"),
                Layer::Linear(&mut l.attn.k),
            )?;
            f(
                &format!("{p}.self_attn.v_proj"),
                Layer::Linear(&mut l.attn.v),
            )?;
            f(
                &format!("{p}.self_attn.out_proj"),
                Layer::Linear(&mut l.attn.out),
            )?;
            f(&format!("{p}.mlp.fc1"), Layer::Linear(&mut l.fc1))?;
            f(&format!("{p}.mlp.fc2"), Layer::Linear(&mut l.fc2))?;
        }
        if let Some(p) = &mut self.projection {
            f("text_projection", Layer::Linear(p))?;
        }
        Ok(())
    }

    pub fn new(config: ClipTextConfig, vb: VarBuilder) -> Result<Self> {
        // transformers 5 saves `CLIPTextModel` keys without the `text_model.` prefix.
        let tm = if vb.contains_tensor("text_model.embeddings.token_embedding.weight") {
            vb.pp("text_model")
        } else {
            vb.clone()
        };
        let c = &config;
        let act = Activation::parse(&c.hidden_act)?;
        let ln = |vb: VarBuilder| layer_norm(c.hidden_size, c.layer_norm_eps, vb);
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let vb = tm.pp(format!("encoder.layers.{i}"));
                Ok(EncoderLayer {
                    ln1: ln(vb.pp("layer_norm1"))?,
                    attn: Attention::new(c, vb.pp("self_attn"))?,
                    ln2: ln(vb.pp("layer_norm2"))?,
                    fc1: linear(c.hidden_size, c.intermediate_size, vb.pp("mlp.fc1"))?,
                    fc2: linear(c.intermediate_size, c.hidden_size, vb.pp("mlp.fc2"))?,
                    act,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let projection = if c.has_projection() {
            let dim = c.projection_dim.unwrap_or(c.hidden_size);
            Some(linear_b(
                c.hidden_size,
                dim,
                false,
                vb.pp("text_projection"),
            )?)
        } else {
            None
        };
        Ok(Self {
            token_embedding: embedding(
                c.vocab_size,
                c.hidden_size,
                tm.pp("embeddings.token_embedding"),
            )?,
            position_embedding: embedding(
                c.max_position_embeddings,
                c.hidden_size,
                tm.pp("embeddings.position_embedding"),
            )?,
            layers,
            final_layer_norm: ln(tm.pp("final_layer_norm"))?,
            projection,
            config,
        })
    }

    /// Dimension of `pooled`.
    pub fn pooled_dim(&self) -> usize {
        if self.projection.is_some() {
            self.config
                .projection_dim
                .unwrap_or(self.config.hidden_size)
        } else {
            self.config.hidden_size
        }
    }

    /// Runs the encoder on a batch of token ids `[batch, seq]`.
    pub fn forward(&self, ids: &[Vec<u32>], device: &Device) -> Result<ClipOutput> {
        let b = ids.len();
        let s = ids[0].len();
        if s > self.config.max_position_embeddings {
            return Err(crate::invalid!(
                "{s} tokens exceed the text encoder's {} positions",
                self.config.max_position_embeddings
            ));
        }
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let input = Tensor::from_vec(flat, (b, s), device)?;
        let pos = Tensor::arange(0u32, s as u32, device)?;
        let mut x = self
            .token_embedding
            .forward(&input)?
            .broadcast_add(&self.position_embedding.forward(&pos)?)?;
        let mut hidden_states = vec![x.clone()];
        for layer in &self.layers {
            x = layer.forward(&x)?;
            hidden_states.push(x.clone());
        }
        let last = self.final_layer_norm.forward(&x)?;
        // transformers: a legacy config (eos_token_id == 2) takes the highest id's position
        // (the end token has the highest id in CLIP's vocabulary); otherwise the first end token.
        let positions: Vec<usize> = ids
            .iter()
            .map(|row| {
                if self.config.eos_token_id == 2 {
                    row.iter()
                        .enumerate()
                        .max_by_key(|(i, v)| (**v, std::cmp::Reverse(*i)))
                        .map(|(i, _)| i)
                        .unwrap_or(0)
                } else {
                    row.iter()
                        .position(|&t| t == self.config.eos_token_id)
                        .unwrap_or(0)
                }
            })
            .collect();
        let pooled = positions
            .iter()
            .enumerate()
            .map(|(i, &p)| last.i((i, p)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut pooled = Tensor::stack(&pooled, 0)?;
        if let Some(p) = &self.projection {
            pooled = p.forward(&pooled)?;
        }
        Ok(ClipOutput {
            hidden_states,
            last_hidden_state: last,
            pooled,
        })
    }

    /// Applies the final layer norm to an intermediate hidden state (clip skip).
    pub fn final_norm(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.final_layer_norm.forward(hidden)?)
    }

    pub fn dtype(&self) -> DType {
        self.token_embedding.embeddings().dtype()
    }
}
