//! BLIP's captioner as transformers' `BlipForConditionalGeneration` runs it
//! (huggingface/transformers@00fd12d:src/transformers/models/blip/modeling_blip.py,
//! modeling_blip_text.py): a ViT (pre-LN, a fused `qkv` projection, exact GELU, a final
//! `post_layernorm`) whose every token a BERT decoder attends to after its causal
//! self-attention, and BERT's LM head, whose decoder is tied to the word embeddings where
//! the file does not store it.

use candle_core::{D, IndexOp, Module, Tensor};
use candle_nn::{Conv2dConfig, LayerNorm, VarBuilder, layer_norm};
use serde::Deserialize;

use crate::Result;
use crate::kernels::{self, Conv2d, Linear, conv2d, linear};

#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub image_size: usize,
    pub patch_size: usize,
    #[serde(default = "vision_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "gelu")]
    pub hidden_act: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub encoder_hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "text_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "gelu")]
    pub hidden_act: String,
    #[serde(default = "bos")]
    pub bos_token_id: u32,
    #[serde(default = "sep")]
    pub sep_token_id: u32,
    #[serde(default)]
    pub pad_token_id: u32,
}

/// `BlipConfig` (the parts captioning reads). The defaults are transformers'.
#[derive(Debug, Clone, Deserialize)]
pub struct BlipConfig {
    pub vision_config: VisionConfig,
    pub text_config: TextConfig,
}

fn vision_eps() -> f64 {
    1e-5
}
fn text_eps() -> f64 {
    1e-12
}
fn gelu() -> String {
    "gelu".into()
}
fn bos() -> u32 {
    30522
}
fn sep() -> u32 {
    102
}

fn check_act(name: &str) -> Result<()> {
    match name {
        "gelu" => Ok(()),
        other => Err(crate::invalid!(
            "BLIP: activation {other:?} is not supported"
        )),
    }
}

/// `[b, n, heads·d]` attention through the engine's kernel.
fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    causal: bool,
) -> candle_core::Result<Tensor> {
    let d = q.dim(D::Minus1)? / heads;
    kernels::attention(q, k, v, heads, (d as f64).powf(-0.5), causal, 1 << 28)
}

struct VisionLayer {
    qkv: Linear,
    projection: Linear,
    ln1: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    ln2: LayerNorm,
    heads: usize,
}

impl VisionLayer {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let c = x.dim(D::Minus1)?;
        let qkv = self.qkv.forward(&self.ln1.forward(x)?)?;
        let (q, k, v) = (
            qkv.narrow(D::Minus1, 0, c)?.contiguous()?,
            qkv.narrow(D::Minus1, c, c)?.contiguous()?,
            qkv.narrow(D::Minus1, 2 * c, c)?.contiguous()?,
        );
        let h = (x + self
            .projection
            .forward(&attend(&q, &k, &v, self.heads, false)?)?)?;
        let m = self
            .fc2
            .forward(&kernels::gelu(&self.fc1.forward(&self.ln2.forward(&h)?)?)?)?;
        h + m
    }
}

/// BLIP's ViT.
pub struct Vision {
    patch: Conv2d,
    class_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<VisionLayer>,
    post_layernorm: LayerNorm,
    pub config: VisionConfig,
}

impl Vision {
    fn new(c: VisionConfig, vb: VarBuilder) -> Result<Self> {
        check_act(&c.hidden_act)?;
        let h = c.hidden_size;
        let e = vb.pp("embeddings");
        let patches = (c.image_size / c.patch_size).pow(2);
        let ln = |vb: VarBuilder| layer_norm(h, c.layer_norm_eps, vb);
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let vb = vb.pp(format!("encoder.layers.{i}"));
                Ok(VisionLayer {
                    qkv: linear(h, 3 * h, vb.pp("self_attn.qkv"))?,
                    projection: linear(h, h, vb.pp("self_attn.projection"))?,
                    ln1: ln(vb.pp("layer_norm1"))?,
                    fc1: linear(h, c.intermediate_size, vb.pp("mlp.fc1"))?,
                    fc2: linear(c.intermediate_size, h, vb.pp("mlp.fc2"))?,
                    ln2: ln(vb.pp("layer_norm2"))?,
                    heads: c.num_attention_heads,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            patch: conv2d(
                3,
                h,
                c.patch_size,
                Conv2dConfig {
                    stride: c.patch_size,
                    ..Default::default()
                },
                e.pp("patch_embedding"),
            )?,
            class_embedding: e.get((1, 1, h), "class_embedding")?,
            position_embedding: e.get((1, patches + 1, h), "position_embedding")?,
            layers,
            post_layernorm: ln(vb.pp("post_layernorm"))?,
            config: c,
        })
    }

    /// `[b, 3, size, size]` normalised pixels → `[b, 1 + patches, hidden]` (after the final
    /// LayerNorm: what the decoder attends to).
    pub fn forward(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let b = pixels.dim(0)?;
        let p = self.patch.forward(pixels)?; // [b, h, gh, gw]
        let h = p.dim(1)?;
        let p = p.flatten_from(2)?.transpose(1, 2)?;
        let cls = self.class_embedding.broadcast_as((b, 1, h))?;
        let mut x = Tensor::cat(&[&cls, &p], 1)?.broadcast_add(&self.position_embedding)?;
        for l in &self.layers {
            x = l.forward(&x)?;
        }
        self.post_layernorm.forward(&x)
    }
}

/// BERT's attention block: the attention, then `LayerNorm(dense(out) + input)`.
struct BertAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    dense: Linear,
    norm: LayerNorm,
}

impl BertAttention {
    fn new(vb: VarBuilder, hidden: usize, kv_in: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            query: linear(hidden, hidden, vb.pp("self.query"))?,
            key: linear(kv_in, hidden, vb.pp("self.key"))?,
            value: linear(kv_in, hidden, vb.pp("self.value"))?,
            dense: linear(hidden, hidden, vb.pp("output.dense"))?,
            norm: layer_norm(hidden, eps, vb.pp("output.LayerNorm"))?,
        })
    }

    fn keys(&self, kv: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((self.key.forward(kv)?, self.value.forward(kv)?))
    }

    fn forward(
        &self,
        x: &Tensor,
        kv: &(Tensor, Tensor),
        heads: usize,
        causal: bool,
    ) -> candle_core::Result<Tensor> {
        let q = self.query.forward(x)?;
        let o = attend(&q, &kv.0, &kv.1, heads, causal)?;
        self.norm.forward(&(self.dense.forward(&o)? + x)?)
    }
}

struct TextLayer {
    attention: BertAttention,
    cross: BertAttention,
    intermediate: Linear,
    output: Linear,
    norm: LayerNorm,
}

/// BLIP's text decoder (`BlipTextLMHeadModel`).
pub struct TextDecoder {
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    embed_norm: LayerNorm,
    layers: Vec<TextLayer>,
    transform: Linear,
    transform_norm: LayerNorm,
    decoder: Linear,
    pub config: TextConfig,
}

/// The image's keys and values for each decoder layer's cross-attention: computed once
/// per image, reused for every token.
pub struct ImageKeys(Vec<(Tensor, Tensor)>);

impl TextDecoder {
    fn new(c: TextConfig, vb: VarBuilder) -> Result<Self> {
        check_act(&c.hidden_act)?;
        let h = c.hidden_size;
        let bert = vb.pp("bert");
        let e = bert.pp("embeddings");
        let word_embeddings = e.get((c.vocab_size, h), "word_embeddings.weight")?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let vb = bert.pp(format!("encoder.layer.{i}"));
                Ok(TextLayer {
                    attention: BertAttention::new(vb.pp("attention"), h, h, c.layer_norm_eps)?,
                    cross: BertAttention::new(
                        vb.pp("crossattention"),
                        h,
                        c.encoder_hidden_size,
                        c.layer_norm_eps,
                    )?,
                    intermediate: linear(h, c.intermediate_size, vb.pp("intermediate.dense"))?,
                    output: linear(c.intermediate_size, h, vb.pp("output.dense"))?,
                    norm: layer_norm(h, c.layer_norm_eps, vb.pp("output.LayerNorm"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let p = vb.pp("cls.predictions");
        // Tied to the word embeddings unless stored (older exports store both, and the
        // decoder's bias beside the head's own).
        let weight = if p.contains_tensor("decoder.weight") {
            p.get((c.vocab_size, h), "decoder.weight")?
        } else {
            word_embeddings.clone()
        };
        let bias = if p.contains_tensor("bias") {
            let b = p.get(c.vocab_size, "bias")?;
            if p.contains_tensor("decoder.bias") {
                p.get(c.vocab_size, "decoder.bias")?;
            }
            b
        } else {
            p.get(c.vocab_size, "decoder.bias")?
        };
        Ok(Self {
            position_embeddings: e
                .get((c.max_position_embeddings, h), "position_embeddings.weight")?,
            embed_norm: layer_norm(h, c.layer_norm_eps, e.pp("LayerNorm"))?,
            word_embeddings,
            layers,
            transform: linear(h, h, p.pp("transform.dense"))?,
            transform_norm: layer_norm(h, c.layer_norm_eps, p.pp("transform.LayerNorm"))?,
            decoder: Linear::new(weight, Some(bias))?,
            config: c,
        })
    }

    pub fn image_keys(&self, image: &Tensor) -> candle_core::Result<ImageKeys> {
        Ok(ImageKeys(
            self.layers
                .iter()
                .map(|l| l.cross.keys(image))
                .collect::<candle_core::Result<_>>()?,
        ))
    }

    /// Next-token logits `[vocab]` after `ids` (one sequence), attending to the image.
    pub fn next_logits(&self, ids: &[u32], image: &ImageKeys) -> Result<Tensor> {
        let n = ids.len();
        if n > self.config.max_position_embeddings {
            return Err(crate::invalid!(
                "BLIP: {n} tokens is more than the decoder's {} positions",
                self.config.max_position_embeddings
            ));
        }
        let dev = self.word_embeddings.device();
        let idx = Tensor::from_slice(ids, n, dev)?;
        let x = (self.word_embeddings.index_select(&idx, 0)?
            + self.position_embeddings.narrow(0, 0, n)?)?;
        let mut x = self.embed_norm.forward(&x.unsqueeze(0)?)?;
        let heads = self.config.num_attention_heads;
        for (l, kv) in self.layers.iter().zip(&image.0) {
            let own = l.attention.keys(&x)?;
            let a = l.attention.forward(&x, &own, heads, true)?;
            let a = l.cross.forward(&a, kv, heads, false)?;
            let m = l
                .output
                .forward(&kernels::gelu(&l.intermediate.forward(&a)?)?)?;
            x = l.norm.forward(&(m + a)?)?;
        }
        let last = x.i((0, n - 1))?.unsqueeze(0)?;
        let t = self
            .transform_norm
            .forward(&kernels::gelu(&self.transform.forward(&last)?)?)?;
        Ok(self.decoder.forward(&t)?.squeeze(0)?)
    }
}

/// The captioning model.
pub struct Blip {
    pub vision: Vision,
    pub text: TextDecoder,
}

impl Blip {
    pub fn new(config: BlipConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            vision: Vision::new(config.vision_config, vb.pp("vision_model"))?,
            text: TextDecoder::new(config.text_config, vb.pp("text_decoder"))?,
        })
    }

    /// Greedy decoding from `prompt` (token ids starting with the decoder's bos) for at
    /// most `max_new_tokens`, stopping after the separator (transformers' `generate` with
    /// its default greedy search). Returns every id, the prompt's included.
    pub fn generate(
        &self,
        pixels: &Tensor,
        prompt: &[u32],
        max_new_tokens: usize,
    ) -> Result<Vec<u32>> {
        let image = self.vision.forward(pixels)?;
        let keys = self.text.image_keys(&image)?;
        let mut ids = prompt.to_vec();
        for _ in 0..max_new_tokens {
            let logits = self.text.next_logits(&ids, &keys)?;
            let next = logits.argmax(0)?.to_scalar::<u32>()?;
            ids.push(next);
            if next == self.text.config.sep_token_id {
                break;
            }
        }
        Ok(ids)
    }
}
