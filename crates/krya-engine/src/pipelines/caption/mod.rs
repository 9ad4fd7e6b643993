//! Image captioning (capability `caption`): BLIP base and large ([`blip`], BSD-3-Clause),
//! read from a Hugging Face folder (`config.json`, `model.safetensors`, `vocab.txt`,
//! `preprocessor_config.json`) as transformers' `BlipForConditionalGeneration` and
//! `BlipProcessor` run it: the image resized straight to the model's square (no crop),
//! bicubic, scaled to `[0, 1]` and normalised; greedy decoding from `[DEC]` (or from a
//! prompt, as conditional captioning), stopping at `[SEP]`.

pub mod blip;
pub mod wordpiece;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use image::RgbImage;

use crate::weights::Weights;
use crate::{EngineError, Result};
use blip::{Blip, BlipConfig};
use wordpiece::WordPiece;

/// transformers' default for `generate` (new tokens after the prompt).
pub const MAX_NEW_TOKENS: usize = 20;

/// OpenAI CLIP's mean and deviation, BLIP's processor's defaults.
const MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
const STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// Whether a folder holds a BLIP captioner (its config says so).
pub fn detect_dir(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|c| {
            c["model_type"] == "blip"
                && c["architectures"]
                    .as_array()
                    .is_none_or(|a| a.iter().any(|x| x == "BlipForConditionalGeneration"))
        })
}

/// A loaded captioner.
pub struct Captioner {
    pub model: Blip,
    pub tokenizer: WordPiece,
    mean: [f32; 3],
    std: [f32; 3],
    /// Parameters loaded, for the model cache's budget.
    pub parameter_count: u64,
}

impl Captioner {
    pub fn load(dir: &Path) -> Result<Self> {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .map_err(|e| EngineError::bad_model(dir, format!("cannot read {name}: {e}")))
        };
        if !detect_dir(dir) {
            return Err(EngineError::bad_model(
                dir,
                "not a captioning model this engine reads (BLIP: config.json with model_type \"blip\")",
            ));
        }
        let config: BlipConfig = serde_json::from_str(&read("config.json")?)
            .map_err(|e| EngineError::bad_model(dir, format!("config.json: {e}")))?;
        // The hub's BLIP repos have `model.safetensors`, older snapshots only
        // `pytorch_model.bin` (read without running code from it).
        let weights = if dir.join("model.safetensors").is_file() {
            Weights::mmap(&[dir.join("model.safetensors")])?
        } else {
            let bin = dir.join("pytorch_model.bin");
            let sd = crate::model::state_dict::read(&bin)?;
            Weights::from_tensors(sd.into_iter().collect(), &bin.display().to_string())
        };
        let vb = weights.var_builder(DType::F32, &Device::Cpu);
        let model = Blip::new(config, vb).map_err(|e| e.in_file(dir))?;
        weights.check_all_used()?;
        let tokenizer = WordPiece::from_vocab(&read("vocab.txt")?)?;
        let (mut mean, mut std) = (MEAN, STD);
        if let Ok(p) = read("preprocessor_config.json")
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&p)
        {
            let three = |v: &serde_json::Value| -> Option<[f32; 3]> {
                let a = v.as_array()?;
                Some([
                    a.first()?.as_f64()? as f32,
                    a.get(1)?.as_f64()? as f32,
                    a.get(2)?.as_f64()? as f32,
                ])
            };
            mean = three(&v["image_mean"]).unwrap_or(mean);
            std = three(&v["image_std"]).unwrap_or(std);
        }
        Ok(Self {
            model,
            tokenizer,
            mean,
            std,
            parameter_count: weights.loaded_elements(),
        })
    }

    /// `[1, 3, size, size]`: the image resized to the model's square, bicubic, normalised.
    pub fn pixels(&self, image: &RgbImage) -> Result<Tensor> {
        let s = self.model.vision.config.image_size as u32;
        let img = image::imageops::resize(image, s, s, image::imageops::FilterType::CatmullRom);
        let n = (s * s) as usize;
        let mut data = vec![0f32; 3 * n];
        for (i, p) in img.pixels().enumerate() {
            for c in 0..3 {
                data[c * n + i] = (p[c] as f32 / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        Ok(Tensor::from_vec(
            data,
            (1, 3, s as usize, s as usize),
            &Device::Cpu,
        )?)
    }

    /// The token ids decoding starts from: `[DEC]`, then the prompt's pieces.
    pub fn prompt_ids(&self, prompt: Option<&str>) -> Vec<u32> {
        let mut ids = vec![self.model.text.config.bos_token_id];
        if let Some(p) = prompt {
            ids.extend(self.tokenizer.encode(p));
        }
        ids
    }

    /// A caption of `image` (continuing `prompt` when given, which the caption starts with).
    pub fn caption(
        &self,
        image: &RgbImage,
        prompt: Option<&str>,
        max_new_tokens: usize,
    ) -> Result<String> {
        let ids = self.model.generate(
            &self.pixels(image)?,
            &self.prompt_ids(prompt),
            max_new_tokens,
        )?;
        Ok(self.tokenizer.decode(&ids))
    }
}
