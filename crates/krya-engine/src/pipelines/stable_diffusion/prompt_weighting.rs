//! A1111-style prompt emphasis: `(word)` ×1.1, `((word))` ×1.21, `[word]` ÷1.1,
//! `(word:1.3)` an explicit weight, `\(` and `\)` literal brackets.
//!
//! The encoder's output for each token is multiplied by its weight, then the whole is
//! rescaled to keep its original mean, as A1111 does. A prompt with no emphasis gives
//! exactly diffusers' embeddings.

use candle_core::{DType, Tensor};

/// A piece of prompt text and its weight.
#[derive(Debug, Clone, PartialEq)]
pub struct Weighted {
    pub text: String,
    pub weight: f64,
}

const UP: f64 = 1.1;

/// Splits a prompt into weighted pieces (adjacent pieces of equal weight are merged).
pub fn parse(prompt: &str) -> Vec<Weighted> {
    let mut out: Vec<Weighted> = Vec::new();
    // Open brackets: (position in `out` where the group starts, kind).
    let mut stack: Vec<(usize, char)> = Vec::new();
    let mut text = String::new();
    let flush = |text: &mut String, out: &mut Vec<Weighted>| {
        if !text.is_empty() {
            out.push(Weighted {
                text: std::mem::take(text),
                weight: 1.0,
            });
        }
    };
    let scale = |out: &mut Vec<Weighted>, from: usize, m: f64| {
        for w in &mut out[from..] {
            w.weight *= m;
        }
    };
    let mut chars = prompt.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n) => text.push(n),
                None => text.push('\\'),
            },
            '(' | '[' => {
                flush(&mut text, &mut out);
                stack.push((out.len(), c));
            }
            ':' if stack.last().is_some_and(|(_, k)| *k == '(') => {
                // `(text:1.3)`: a number up to the closing bracket sets the weight.
                let rest: String = chars.clone().take_while(|&ch| ch != ')').collect();
                match rest.trim().parse::<f64>() {
                    Ok(w) if chars.clone().nth(rest.chars().count()) == Some(')') => {
                        for _ in 0..=rest.chars().count() {
                            chars.next();
                        }
                        flush(&mut text, &mut out);
                        let (from, _) = stack.pop().unwrap();
                        scale(&mut out, from, w);
                    }
                    _ => text.push(':'),
                }
            }
            ')' if stack.last().is_some_and(|(_, k)| *k == '(') => {
                flush(&mut text, &mut out);
                let (from, _) = stack.pop().unwrap();
                scale(&mut out, from, UP);
            }
            ']' if stack.last().is_some_and(|(_, k)| *k == '[') => {
                flush(&mut text, &mut out);
                let (from, _) = stack.pop().unwrap();
                scale(&mut out, from, 1.0 / UP);
            }
            _ => text.push(c),
        }
    }
    flush(&mut text, &mut out);
    // Unclosed brackets still emphasise what follows them, as in A1111.
    while let Some((from, kind)) = stack.pop() {
        scale(&mut out, from, if kind == '(' { UP } else { 1.0 / UP });
    }
    let mut merged: Vec<Weighted> = Vec::new();
    for w in out {
        match merged.last_mut() {
            Some(last) if last.weight == w.weight => last.text.push_str(&w.text),
            _ => merged.push(w),
        }
    }
    if merged.is_empty() {
        merged.push(Weighted {
            text: String::new(),
            weight: 1.0,
        });
    }
    merged
}

/// Whether any piece has a weight other than 1.
pub fn has_emphasis(pieces: &[Weighted]) -> bool {
    pieces.iter().any(|p| p.weight != 1.0)
}

/// Multiplies each token's embedding `[batch, seq, dim]` by its weight `[seq]`, then
/// restores the original mean (A1111's `EmbeddingsWithFixes` behaviour).
pub fn apply(embeddings: &Tensor, weights: &[f32]) -> candle_core::Result<Tensor> {
    let dtype = embeddings.dtype();
    let z = embeddings.to_dtype(DType::F32)?;
    let original_mean = z.mean_all()?.to_scalar::<f32>()?;
    let w = Tensor::from_slice(weights, (1, weights.len(), 1), z.device())?;
    let z = z.broadcast_mul(&w)?;
    let new_mean = z.mean_all()?.to_scalar::<f32>()?;
    let z = if new_mean != 0.0 {
        (z * (original_mean / new_mean) as f64)?
    } else {
        z
    };
    z.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(text: &str, weight: f64) -> Weighted {
        Weighted {
            text: text.into(),
            weight,
        }
    }

    fn close(a: &[Weighted], b: &[Weighted]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.text == y.text && (x.weight - y.weight).abs() < 1e-9)
    }

    #[test]
    fn parses_a1111_emphasis() {
        assert!(close(&parse("a cat"), &[w("a cat", 1.0)]));
        assert!(close(
            &parse("a (cat) sat"),
            &[w("a ", 1.0), w("cat", 1.1), w(" sat", 1.0)]
        ));
        assert!(close(&parse("((cat))"), &[w("cat", 1.1 * 1.1)]));
        assert!(close(&parse("[dog]"), &[w("dog", 1.0 / 1.1)]));
        assert!(close(
            &parse("a (red cat:1.3), x"),
            &[w("a ", 1.0), w("red cat", 1.3), w(", x", 1.0)]
        ));
        assert!(close(&parse("(a (b:2))"), &[w("a ", 1.1), w("b", 2.2)]));
        assert!(close(&parse(r"\(literal\)"), &[w("(literal)", 1.0)]));
        assert!(close(&parse("(time: noon)"), &[w("time: noon", 1.1)]));
        assert!(close(&parse("(unclosed"), &[w("unclosed", 1.1)]));
    }

    #[test]
    fn weighting_scales_tokens_and_keeps_the_mean() {
        let z = Tensor::from_vec(
            vec![1f32, 2., 3., 4., 5., 6.],
            (1, 3, 2),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let out = apply(&z, &[1.0, 2.0, 1.0]).unwrap();
        let v: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
        // Weighted: [1,2,6,8,5,6] (mean 14/3); rescaled to the original mean 3.5.
        let k = 3.5 / (28.0 / 6.0);
        let want = [1.0 * k, 2.0 * k, 6.0 * k, 8.0 * k, 5.0 * k, 6.0 * k];
        for (a, b) in v.iter().zip(want) {
            assert!((a - b as f32).abs() < 1e-5, "{v:?}");
        }
    }
}
