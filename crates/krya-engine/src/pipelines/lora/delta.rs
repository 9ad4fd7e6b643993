//! The weight change each adapter algorithm makes, in f32, as ComfyUI's `calculate_weight`
//! and LyCORIS's functional modules compute it (scaled once by `alpha / rank`).

use candle_core::{DType, Tensor};

use super::format::{Factor, Kind, Module};
use crate::{EngineError, Result};

/// `Σ_i Σ_j left[p, i] · core[i, j, k] · right[j, r]` as `[p, r, k]`: a Tucker-decomposed
/// convolution (LoCon's `lora_mid`, LoHa's `hada_t*`, LoKr's `lokr_t2`).
fn tucker(left: &Tensor, core: &Tensor, right: &Tensor) -> candle_core::Result<Tensor> {
    let (i, j) = (core.dim(0)?, core.dim(1)?);
    let k = core.elem_count() / (i * j);
    let p = left.dim(0)?;
    let r = right.dim(1)?;
    left.matmul(&core.reshape((i, j * k))?)? // [p, j·k]
        .reshape((p, j, k))?
        .transpose(1, 2)?
        .reshape((p * k, j))?
        .matmul(right)? // [p·k, r]
        .reshape((p, k, r))?
        .transpose(1, 2)?
        .contiguous()
}

/// A tensor as a matrix of `rows` rows.
fn rows(t: &Tensor, rows: usize) -> candle_core::Result<Tensor> {
    t.reshape((rows, t.elem_count() / rows.max(1)))
}

/// The module's rank (the rows of its down projection), if it has one.
fn rank(kind: &Kind) -> candle_core::Result<Option<usize>> {
    Ok(match kind {
        Kind::LoRa { down, .. } => Some(down.dim(0)?),
        Kind::LoHa { w1b, .. } => Some(w1b.dim(0)?),
        Kind::LoKr { w1, w2, .. } => match (w1, w2) {
            (Factor::Product { b, .. }, _) | (_, Factor::Product { b, .. }) => Some(b.dim(0)?),
            // Both factors whole: LyCORIS forces alpha = rank, a scale of one.
            _ => None,
        },
        Kind::Full { .. } => None,
    })
}

/// `ΔW · alpha / rank` for a layer whose weight has `dims` (`[out, in]` or
/// `[out, in, kh, kw]`), in that shape.
pub(crate) fn delta(
    m: &Module,
    dims: &[usize],
    default_alpha: Option<f32>,
) -> std::result::Result<Tensor, String> {
    compute(m, dims, default_alpha).map_err(|e| e.to_string())
}

fn compute(m: &Module, dims: &[usize], default_alpha: Option<f32>) -> Result<Tensor> {
    let out = dims[0];
    let numel: usize = dims.iter().product();
    let taps: usize = dims[2..].iter().product();
    let d = match &m.kind {
        Kind::LoRa { down, up, mid } => {
            let r = down.dim(0)?;
            let up = rows(up, up.dim(0)?)?;
            match mid {
                Some(mid) => tucker(&up, mid, &rows(down, r)?)?.reshape(((), numel / out))?,
                None => up.matmul(&rows(down, r)?)?,
            }
        }
        Kind::LoHa {
            w1a,
            w1b,
            w2a,
            w2b,
            t1,
            t2,
        } => {
            let factor = |a: &Tensor, b: &Tensor, t: &Option<Tensor>| -> Result<Tensor> {
                Ok(match t {
                    Some(t) => tucker(&a.t()?, t, b)?.reshape(((), numel / out))?,
                    None => a.matmul(b)?,
                })
            };
            (factor(w1a, w1b, t1)? * factor(w2a, w2b, t2)?)?
        }
        Kind::LoKr { w1, w2, t2 } => {
            let w1 = match w1 {
                Factor::Whole(w) => w.clone(),
                Factor::Product { a, b } => a.matmul(b)?,
            };
            let w2 = match (w2, t2) {
                (Factor::Product { a, b }, Some(t)) => tucker(&a.t()?, t, b)?,
                (Factor::Product { a, b }, None) => a.matmul(b)?,
                (Factor::Whole(w), _) => w.clone(),
            };
            let (a, b) = (w1.dim(0)?, w1.elem_count() / w1.dim(0)?);
            let c = w2.dim(0)?;
            let dd = w2.elem_count() / (c * taps.max(1));
            // kron(w1, w2) over the two matrix dims, w2's kernel taps kept innermost.
            w1.reshape((a, 1, b, 1, 1))?
                .broadcast_mul(&w2.reshape((1, c, 1, dd, taps.max(1)))?)?
                .reshape((a * c, b * dd * taps.max(1)))?
        }
        Kind::Full { diff } => diff.clone(),
    };
    if d.elem_count() != numel {
        return Err(EngineError::InvalidInput(format!(
            "its change has shape {:?}, the layer's weight {dims:?}",
            d.dims()
        )));
    }
    let scale = match (rank(&m.kind)?, m.alpha.or(default_alpha)) {
        (Some(r), Some(alpha)) => alpha / r as f32,
        _ => 1.0,
    };
    Ok((d.to_dtype(DType::F32)?.reshape(dims)? * scale as f64)?)
}

/// The weight after one adapter: `W + m·ΔW`, or with DoRA's magnitude the ComfyUI rule
/// `W + m·(magnitude · (W + ΔW) / ‖W + ΔW‖ − W)`, the norm taken over the axis the
/// magnitude's shape names (LyCORIS and PEFT store it per output row, older LyCORIS and
/// ComfyUI per input column).
pub(crate) fn merge(
    weight: &Tensor,
    delta: &Tensor,
    multiplier: f32,
    dora_scale: Option<&Tensor>,
) -> std::result::Result<Tensor, String> {
    let run = || -> Result<Tensor> {
        let m = multiplier as f64;
        let Some(scale) = dora_scale else {
            return Ok((weight + (delta * m)?)?);
        };
        let dims = weight.dims();
        let (out, inp) = (dims[0], dims[1]);
        let s = scale.to_dtype(DType::F32)?;
        let calc = (weight + delta)?;
        let sq = calc.sqr()?;
        let (norm, shape) = if s.elem_count() == out && s.dims().first() == Some(&out) {
            let n = sq.reshape((out, ()))?.sum_keepdim(1)?.sqrt()?;
            let mut shape = vec![1; dims.len()];
            shape[0] = out;
            (n, shape)
        } else if s.elem_count() == inp {
            let n = sq
                .transpose(0, 1)?
                .contiguous()?
                .reshape((inp, ()))?
                .sum_keepdim(1)?
                .sqrt()?;
            let mut shape = vec![1; dims.len()];
            shape[1] = inp;
            (n, shape)
        } else {
            return Err(EngineError::InvalidInput(format!(
                "its dora_scale has shape {:?}, which fits neither {out} outputs nor {inp} inputs",
                s.dims()
            )));
        };
        let norm = (norm.reshape(shape.as_slice())? + f32::EPSILON as f64)?;
        let decomposed = calc.broadcast_mul(&s.reshape(shape.as_slice())?.broadcast_div(&norm)?)?;
        Ok((weight + ((decomposed - weight)? * m)?)?)
    };
    run().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipelines::lora::format::Component;
    use candle_core::Device;

    fn module(kind: Kind, alpha: Option<f32>) -> Module {
        Module {
            key: "k".into(),
            component: Component::Unet,
            name: "n".into(),
            kind,
            alpha,
            dora_scale: None,
            bias: None,
        }
    }

    fn randn(dims: &[usize], seed: u64) -> Tensor {
        let n: usize = dims.iter().product();
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let v: Vec<f32> = (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() < 1e-5, "{i}: {x} vs {y}");
        }
    }

    /// The Tucker forms and LoKr's Kronecker product against their definitions written out
    /// as loops (ComfyUI's einsums).
    #[test]
    fn tucker_and_kron_follow_their_definitions() {
        let (out, inp, r, k) = (5, 3, 2, 9);
        let up = randn(&[out, r, 1, 1], 1);
        let mid = randn(&[r, r, 3, 3], 2);
        let down = randn(&[r, inp, 1, 1], 3);
        let m = module(
            Kind::LoRa {
                down: down.clone(),
                up: up.clone(),
                mid: Some(mid.clone()),
            },
            Some(4.0),
        );
        let got = values(&compute(&m, &[out, inp, 3, 3], None).unwrap());
        let (u, t, dn) = (values(&up), values(&mid), values(&down));
        let mut want = vec![0f32; out * inp * k];
        for o in 0..out {
            for i in 0..inp {
                for kk in 0..k {
                    let mut s = 0.0;
                    for a in 0..r {
                        for b in 0..r {
                            s += u[o * r + a] * t[(a * r + b) * k + kk] * dn[b * inp + i];
                        }
                    }
                    want[(o * inp + i) * k + kk] = s * 2.0; // alpha 4 / rank 2
                }
            }
        }
        close(&got, &want);

        // LoKr: w1 [2, 3] whole, w2 = a·b [3, 2·9], a conv of 6 outputs and 6 inputs.
        let w1 = randn(&[2, 3], 4);
        let (a, b) = (randn(&[3, 1], 5), randn(&[1, 2 * k], 6));
        let m = module(
            Kind::LoKr {
                w1: Factor::Whole(w1.clone()),
                w2: Factor::Product {
                    a: a.clone(),
                    b: b.clone(),
                },
                t2: None,
            },
            Some(0.5),
        );
        let got = values(&compute(&m, &[6, 6, 3, 3], None).unwrap());
        let w2 = values(&a.matmul(&b).unwrap());
        let w1 = values(&w1);
        let mut want = vec![0f32; 6 * 6 * k];
        for i in 0..2 {
            for j in 0..3 {
                for kc in 0..3 {
                    for l in 0..2 {
                        for t in 0..k {
                            want[((i * 3 + kc) * 6 + j * 2 + l) * k + t] =
                                w1[i * 3 + j] * w2[(kc * 2 + l) * k + t] * 0.5;
                        }
                    }
                }
            }
        }
        close(&got, &want);
    }

    /// DoRA at multiplier one is the magnitude times the normalised merged weight, over
    /// rows or columns by the magnitude's shape; at zero it is the weight.
    #[test]
    fn dora_normalises_over_the_axis_its_shape_names() {
        let w = randn(&[4, 3], 7);
        let d = randn(&[4, 3], 8);
        let rows_scale = randn(&[4, 1], 9);
        let got = values(&merge(&w, &d, 1.0, Some(&rows_scale)).unwrap());
        let calc = values(&(&w + &d).unwrap());
        let s = values(&rows_scale);
        for o in 0..4 {
            let n = (0..3).map(|i| calc[o * 3 + i].powi(2)).sum::<f32>().sqrt();
            for i in 0..3 {
                assert!((got[o * 3 + i] - calc[o * 3 + i] * s[o] / n).abs() < 1e-5);
            }
        }
        let cols_scale = randn(&[1, 3], 10);
        let got = values(&merge(&w, &d, 1.0, Some(&cols_scale)).unwrap());
        let s = values(&cols_scale);
        for i in 0..3 {
            let n = (0..4).map(|o| calc[o * 3 + i].powi(2)).sum::<f32>().sqrt();
            for o in 0..4 {
                assert!((got[o * 3 + i] - calc[o * 3 + i] * s[i] / n).abs() < 1e-5);
            }
        }
        close(
            &values(&merge(&w, &d, 0.0, Some(&cols_scale)).unwrap()),
            &values(&w),
        );
        assert!(merge(&w, &d, 1.0, Some(&randn(&[5], 1))).is_err());
    }
}
