//! BLIP captioning against transformers (`tools/golden/blip.py`): the image embeddings and
//! the first step's logits of a tiny random `BlipForConditionalGeneration`, and greedy
//! `generate` (unconditional, from a prompt, and capped) token for token, decoded to the
//! same text; the processor's resize within a bicubic's rounding.

use std::path::PathBuf;

use candle_core::{Device, IndexOp};
use krya_engine::image_io;
use krya_engine::pipelines::caption::{Captioner, MAX_NEW_TOKENS, detect_dir};
use serde_json::Value;

mod common;
use common::max_abs_diff;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

#[test]
fn blip_matches_transformers_token_for_token() {
    let folder = dir().join("caption");
    assert!(detect_dir(&folder) && !detect_dir(&dir().join("sd1")));
    let c = Captioner::load(&folder).unwrap();
    let r =
        candle_core::safetensors::load(folder.join("reference.safetensors"), &Device::Cpu).unwrap();
    let pixels = &r["pixel_values"];
    let embeds = c.model.vision.forward(pixels).unwrap();
    let d = max_abs_diff(&embeds, &r["image_embeds"]);
    assert!(d < 1e-4, "image embeddings differ by {d}");
    let keys = c.model.text.image_keys(&embeds).unwrap();
    let first = c
        .model
        .text
        .next_logits(&c.prompt_ids(None), &keys)
        .unwrap();
    let d = max_abs_diff(&first, &r["first_logits"]);
    assert!(d < 1e-4, "first logits differ by {d}");

    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(folder.join("cases.json")).unwrap()).unwrap();
    for case in &cases {
        let id = case["id"].as_str().unwrap();
        let want: Vec<u32> = case["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as u32)
            .collect();
        let prompt = c.prompt_ids(case["prompt"].as_str());
        assert_eq!(
            prompt[..],
            want[..prompt.len()],
            "{id}: the prompt's tokens"
        );
        let max = case["max_new_tokens"]
            .as_u64()
            .map_or(MAX_NEW_TOKENS, |m| m as usize);
        let got = c.model.generate(pixels, &prompt, max).unwrap();
        assert_eq!(got, want, "{id}: tokens");
        assert_eq!(
            c.tokenizer.decode(&got),
            case["text"].as_str().unwrap(),
            "{id}: text"
        );
    }

    // The processor's pixels: the same resize up to bicubic rounding differences.
    let img = image_io::load_rgb(&dir().join("init.png")).unwrap();
    let ours = c.pixels(&img).unwrap();
    let mean = (ours.i(0).unwrap() - pixels.i(0).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(mean < 0.02, "pixels differ by {mean} on average");
}
