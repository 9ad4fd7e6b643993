//! BERT's uncased WordPiece tokenizer, as BLIP's processor uses it (`bert-base-uncased`
//! plus the decoder's `[DEC]`): lower-case, split on whitespace and punctuation, then the
//! longest vocabulary pieces first (`##` marks a word's continuation); decoding skips the
//! special tokens, glues `##` pieces and tidies the spaces before punctuation
//! (transformers' `clean_up_tokenization`).

use std::collections::HashMap;

use crate::Result;

pub struct WordPiece {
    vocab: HashMap<String, u32>,
    tokens: Vec<String>,
    unk: u32,
}

/// Longer words are one `[UNK]` (BERT's `max_input_chars_per_word`).
const MAX_WORD_CHARS: usize = 100;

impl WordPiece {
    /// From a `vocab.txt`: one token a line, its id the line's number.
    pub fn from_vocab(text: &str) -> Result<Self> {
        let tokens: Vec<String> = text
            .lines()
            .map(|l| l.trim_end_matches('\r').to_string())
            .collect();
        let vocab: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let unk = *vocab
            .get("[UNK]")
            .ok_or_else(|| crate::invalid!("vocab.txt has no [UNK] token"))?;
        Ok(Self { vocab, tokens, unk })
    }

    pub fn id(&self, token: &str) -> Option<u32> {
        self.vocab.get(token).copied()
    }

    fn words(text: &str) -> Vec<String> {
        let mut words = Vec::new();
        let mut cur = String::new();
        for ch in text.chars().flat_map(char::to_lowercase) {
            if ch.is_whitespace() || ch.is_control() {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            } else if ch.is_ascii_punctuation() || (!ch.is_alphanumeric() && !ch.is_ascii()) {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
                words.push(ch.to_string());
            } else {
                cur.push(ch);
            }
        }
        if !cur.is_empty() {
            words.push(cur);
        }
        words
    }

    /// The ids of `text`'s pieces (no special tokens added).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        for word in Self::words(text) {
            let chars: Vec<char> = word.chars().collect();
            if chars.len() > MAX_WORD_CHARS {
                out.push(self.unk);
                continue;
            }
            let mut pieces = Vec::new();
            let mut start = 0;
            while start < chars.len() {
                let found = (start + 1..=chars.len()).rev().find_map(|end| {
                    let s: String = chars[start..end].iter().collect();
                    let key = if start > 0 { format!("##{s}") } else { s };
                    self.vocab.get(&key).map(|&id| (id, end))
                });
                match found {
                    Some((id, end)) => {
                        pieces.push(id);
                        start = end;
                    }
                    None => {
                        pieces = vec![self.unk];
                        break;
                    }
                }
            }
            out.extend(pieces);
        }
        out
    }

    /// Text from ids, skipping the special tokens (`[…]`).
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut text = String::new();
        for &id in ids {
            let Some(t) = self.tokens.get(id as usize) else {
                continue;
            };
            if t.starts_with('[') && t.ends_with(']') {
                continue;
            }
            match t.strip_prefix("##") {
                Some(rest) => text.push_str(rest),
                None => {
                    if !text.is_empty() {
                        text.push(' ');
                    }
                    text.push_str(t);
                }
            }
        }
        for (from, to) in [
            (" .", "."),
            (" ?", "?"),
            (" !", "!"),
            (" ,", ","),
            (" ' ", "'"),
            (" n't", "n't"),
            (" 'm", "'m"),
            (" 's", "'s"),
            (" 've", "'ve"),
            (" 're", "'re"),
        ] {
            text = text.replace(from, to);
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_longest_first_and_back() {
        let wp = WordPiece::from_vocab(
            "[PAD]\n[UNK]\n[CLS]\n[SEP]\na\nphoto\nof\ncat\n##s\n##ting\n.\nsit\n",
        )
        .unwrap();
        assert_eq!(
            wp.encode("A photo of cats sitting."),
            vec![4, 5, 6, 7, 8, 11, 9, 10]
        );
        assert_eq!(wp.encode("dogs"), vec![1]);
        assert_eq!(wp.decode(&[2, 4, 5, 6, 7, 8, 10, 3]), "a photo of cats.");
    }
}
