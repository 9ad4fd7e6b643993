//! CLIP's byte-level BPE tokenizer, read from a model's own tokenizer files
//! (`vocab.json` + `merges.txt`, or `tokenizer.json`) and `tokenizer_config.json` /
//! `special_tokens_map.json` for the pad token and maximum length.
//!
//! Follows transformers' `CLIPTokenizer`: whitespace folded, lower-cased, split with
//! CLIP's regex, bytes mapped to printable characters, BPE with a `</w>` end-of-word mark.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use serde_json::Value;

use crate::{EngineError, Result};

const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";

pub struct ClipTokenizer {
    vocab: HashMap<String, u32>,
    ranks: HashMap<(String, String), usize>,
    byte_map: [char; 256],
    pattern: regex::Regex,
    pub bos_id: u32,
    pub eos_id: u32,
    pub pad_id: u32,
    /// Sequence length fed to the text encoder, start and end tokens included.
    pub max_len: usize,
    /// Special tokens (start, end, and e.g. SD 2.x's `!` pad token): transformers splits
    /// them out of the text before BPE, whole.
    specials: Vec<(String, u32)>,
    cache: Mutex<HashMap<String, Vec<u32>>>,
}

fn bytes_to_unicode() -> [char; 256] {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut map = ['\0'; 256];
    let mut extra = 0;
    for b in 0..256u32 {
        map[b as usize] = if printable.contains(&b) {
            char::from_u32(b).unwrap()
        } else {
            extra += 1;
            char::from_u32(255 + extra).unwrap()
        };
    }
    map
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
    crate::model::config_json::from_str(&text)
        .map_err(|e| EngineError::bad_model(path, format!("invalid JSON: {e}")))
}

/// A special token in tokenizer_config/special_tokens_map: a string or `{"content": ...}`.
fn token_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o
            .get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        _ => None,
    }
}

impl ClipTokenizer {
    /// Loads the tokenizer from a diffusers `tokenizer/` (or `tokenizer_2/`) folder.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let (vocab, merges) = if dir.join("vocab.json").exists() && dir.join("merges.txt").exists()
        {
            let vocab = read_json(&dir.join("vocab.json"))?;
            let merges_path = dir.join("merges.txt");
            let merges = std::fs::read_to_string(&merges_path)
                .map_err(|e| EngineError::io(&merges_path, e))?;
            let merges = merges
                .lines()
                .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>();
            (vocab, merges)
        } else if dir.join("tokenizer.json").exists() {
            let tj = read_json(&dir.join("tokenizer.json"))?;
            let model = &tj["model"];
            let merges = model["merges"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|m| match m {
                            Value::String(s) => Some(s.clone()),
                            Value::Array(p) => {
                                Some(format!("{} {}", p.first()?.as_str()?, p.get(1)?.as_str()?))
                            }
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            (model["vocab"].clone(), merges)
        } else {
            return Err(EngineError::bad_model(
                dir,
                "no vocab.json + merges.txt or tokenizer.json",
            ));
        };
        let vocab: HashMap<String, u32> = vocab
            .as_object()
            .ok_or_else(|| EngineError::bad_model(dir, "vocab is not a JSON object"))?
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_u64()? as u32)))
            .collect();
        let mut config = serde_json::Map::new();
        for name in ["special_tokens_map.json", "tokenizer_config.json"] {
            let p = dir.join(name);
            if p.exists()
                && let Value::Object(o) = read_json(&p)?
            {
                config.extend(o);
            }
        }
        Self::from_parts(vocab, &merges, &config, dir)
    }

    /// CLIP's own vocabulary (bundled: single-file checkpoints carry no tokenizer), with
    /// the given pad token: `<|endoftext|>` for SD 1.x and SDXL's first encoder, `!` for
    /// OpenCLIP encoders (SD 2.x, SDXL's second).
    pub fn standard_clip(pad_token: &str) -> Result<Self> {
        const MERGES: &str = include_str!("../../../assets/clip_merges.txt");
        let merges: Vec<String> = MERGES.lines().skip(1).map(str::to_string).collect();
        // CLIP's vocabulary lists the byte symbols in `bytes_to_unicode`'s dict order:
        // the printable bytes first, then the others.
        let map = bytes_to_unicode();
        let printable = |b: usize| {
            (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
        };
        let order: Vec<usize> = (0..256)
            .filter(|&b| printable(b))
            .chain((0..256).filter(|&b| !printable(b)))
            .collect();
        let bytes: Vec<char> = order.iter().map(|&b| map[b]).collect();
        let mut tokens: Vec<String> = bytes.iter().map(|c| c.to_string()).collect();
        tokens.extend(bytes.iter().map(|c| format!("{c}</w>")));
        tokens.extend(merges.iter().map(|m| m.replacen(' ', "", 1)));
        tokens.push(BOS.into());
        tokens.push(EOS.into());
        let vocab = tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| (t, i as u32))
            .collect();
        let mut config = serde_json::Map::new();
        config.insert("pad_token".into(), Value::String(pad_token.into()));
        Self::from_parts(
            vocab,
            &merges,
            &config,
            Path::new("<bundled CLIP tokenizer>"),
        )
    }

    fn from_parts(
        vocab: HashMap<String, u32>,
        merges: &[String],
        config: &serde_json::Map<String, Value>,
        dir: &Path,
    ) -> Result<Self> {
        let mut ranks = HashMap::new();
        for (rank, line) in merges.iter().enumerate() {
            if let Some((a, b)) = line.split_once(' ') {
                ranks.insert((a.to_string(), b.to_string()), rank);
            }
        }
        let id_of = |tok: &str| -> Result<u32> {
            vocab.get(tok).copied().ok_or_else(|| {
                EngineError::bad_model(dir, format!("token {tok:?} is not in the vocabulary"))
            })
        };
        let bos_id = id_of(
            &config
                .get("bos_token")
                .and_then(token_text)
                .unwrap_or(BOS.into()),
        )?;
        let eos_id = id_of(
            &config
                .get("eos_token")
                .and_then(token_text)
                .unwrap_or(EOS.into()),
        )?;
        let pad_id = match config.get("pad_token").and_then(token_text) {
            Some(t) => id_of(&t)?,
            None => eos_id,
        };
        let max_len = config
            .get("model_max_length")
            .and_then(|v| v.as_f64())
            .filter(|&v| (2.0..1e6).contains(&v))
            .map(|v| v as usize)
            .unwrap_or(77);

        // Start/end markers typed into a prompt are the special tokens, not text.
        let mut specials = vec![(BOS.to_string(), bos_id), (EOS.to_string(), eos_id)];
        for key in ["pad_token", "unk_token"] {
            if let Some(t) = config.get(key).and_then(token_text)
                && !specials.iter().any(|(s, _)| *s == t)
            {
                specials.push((t.clone(), id_of(&t)?));
            }
        }
        let pattern = regex::Regex::new(
            r"(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
        )
        .expect("static regex");
        Ok(Self {
            vocab,
            ranks,
            byte_map: bytes_to_unicode(),
            pattern,
            bos_id,
            eos_id,
            pad_id,
            max_len,
            specials,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Token ids of `text` without start, end or padding tokens.
    pub fn encode_words(&self, text: &str) -> Vec<u32> {
        let text = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase();
        let mut ids = Vec::new();
        self.encode_segment(&text, &mut ids);
        ids
    }

    fn encode_segment(&self, text: &str, ids: &mut Vec<u32>) {
        // Split on the first special token found, encode both sides.
        let hit = self
            .specials
            .iter()
            .filter_map(|(s, id)| text.find(s.as_str()).map(|p| (p, s.len(), *id)))
            .min();
        if let Some((pos, len, id)) = hit {
            self.encode_segment(&text[..pos], ids);
            ids.push(id);
            self.encode_segment(&text[pos + len..], ids);
            return;
        }
        for m in self.pattern.find_iter(text) {
            let word: String = m
                .as_str()
                .bytes()
                .map(|b| self.byte_map[b as usize])
                .collect();
            ids.extend(self.bpe(&word));
        }
    }

    /// `[bos] + ids (truncated) + [eos] + [pad]*` of exactly `max_len`, as the SD pipelines
    /// call the tokenizer (`padding="max_length", truncation=True`).
    pub fn encode_padded(&self, text: &str) -> Vec<u32> {
        self.pad(self.encode_words(text))
    }

    /// Wraps word ids with start/end tokens and pads to `max_len`.
    pub fn pad(&self, mut words: Vec<u32>) -> Vec<u32> {
        words.truncate(self.max_len - 2);
        let mut ids = Vec::with_capacity(self.max_len);
        ids.push(self.bos_id);
        ids.extend(words);
        ids.push(self.eos_id);
        ids.resize(self.max_len, self.pad_id);
        ids
    }

    fn bpe(&self, word: &str) -> Vec<u32> {
        if let Some(ids) = self.cache.lock().unwrap().get(word) {
            return ids.clone();
        }
        let chars: Vec<char> = word.chars().collect();
        let mut parts: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
        if let Some(last) = parts.last_mut() {
            last.push_str("</w>");
        }
        loop {
            let best = parts
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| {
                    self.ranks
                        .get(&(w[0].clone(), w[1].clone()))
                        .map(|&r| (r, i))
                })
                .min();
            let Some((_, _)) = best else { break };
            let (first, second) = {
                let (_, i) = best.unwrap();
                (parts[i].clone(), parts[i + 1].clone())
            };
            // Merge every occurrence of the best pair, left to right.
            let mut merged = Vec::with_capacity(parts.len());
            let mut i = 0;
            while i < parts.len() {
                if i + 1 < parts.len() && parts[i] == first && parts[i + 1] == second {
                    merged.push(format!("{first}{second}"));
                    i += 2;
                } else {
                    merged.push(parts[i].clone());
                    i += 1;
                }
            }
            parts = merged;
        }
        let unk = self.eos_id;
        let ids: Vec<u32> = parts
            .iter()
            .map(|p| self.vocab.get(p).copied().unwrap_or(unk))
            .collect();
        self.cache
            .lock()
            .unwrap()
            .insert(word.to_string(), ids.clone());
        ids
    }
}
