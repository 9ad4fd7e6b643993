//! Linear layers that keep their weight transposed, and products of few rows split by
//! output columns.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::*;

/// A linear layer that keeps its weight transposed (`[in, out]`, contiguous). `x @ Wᵀ`
/// with the stored `[out, in]` weight makes the matrix library repack the whole weight on
/// every call, which dominates when few rows go through (77 prompt tokens); with `Wᵀ`
/// already in the order it reads, it streams the weight as it is.
#[derive(Clone, Debug)]
pub struct Linear {
    pub(crate) weight_t: Tensor,
    pub(crate) bias: Option<Tensor>,
    /// A LoRA being trained: `y = W x + b + scale · up(down(x))`.
    pub(crate) lora: Option<LoraBranch>,
}

/// The trainable low-rank branch of a layer (`down` `[rank, in]`, `up` `[out, rank]`, as
/// PEFT's `lora_A`/`lora_B`), added to the frozen layer's output times `scale`.
#[derive(Clone, Debug)]
pub struct LoraBranch {
    pub down: candle_core::Var,
    pub up: candle_core::Var,
    pub scale: f64,
}

impl Linear {
    pub(crate) fn new(weight: Tensor, bias: Option<Tensor>) -> candle_core::Result<Linear> {
        Ok(Linear {
            weight_t: weight.t()?.contiguous()?,
            bias,
            lora: None,
        })
    }

    /// Input and output widths.
    pub fn dims(&self) -> candle_core::Result<(usize, usize)> {
        self.weight_t.dims2()
    }

    /// Trains a LoRA on this layer (`None`: the frozen layer alone again).
    pub fn set_lora(&mut self, lora: Option<LoraBranch>) {
        self.lora = lora;
    }

    /// The weight as stored in a state dict, `[out, in]`.
    pub fn weight(&self) -> candle_core::Result<Tensor> {
        self.weight_t.t()
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The same layer with another weight `[out, in]` and bias (a LoRA merged in).
    pub fn with_weight(&self, weight: Tensor, bias: Option<Tensor>) -> candle_core::Result<Self> {
        Linear::new(weight, bias)
    }
}

/// `candle_nn::linear` (weights named and initialised alike), stored transposed.
pub fn linear(cin: usize, cout: usize, vb: VarBuilder) -> candle_core::Result<Linear> {
    let l = candle_nn::linear(cin, cout, vb)?;
    Linear::new(l.weight().clone(), l.bias().cloned())
}

/// `candle_nn::linear_b`, stored transposed.
pub fn linear_b(
    cin: usize,
    cout: usize,
    bias: bool,
    vb: VarBuilder,
) -> candle_core::Result<Linear> {
    let l = candle_nn::linear_b(cin, cout, bias, vb)?;
    Linear::new(l.weight().clone(), l.bias().cloned())
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // In a gradient's graph (training): the frozen layer as one op with the engine's
        // kernel forward and an input-only backward (no gradient for the frozen weight).
        let y = if x.track_op()
            && matches!(x.device(), candle_core::Device::Cpu)
            && x.dtype() == candle_core::DType::F32
            && !self.weight_t.track_op()
        {
            x.contiguous()?.apply_op1(super::frozen::FrozenLinear {
                layer: Linear {
                    lora: None,
                    ..self.clone()
                },
            })?
        } else {
            self.frozen(x)?
        };
        match &self.lora {
            None => Ok(y),
            Some(l) => {
                let h = x.broadcast_matmul(&l.down.as_tensor().t()?)?;
                y + (h.broadcast_matmul(&l.up.as_tensor().t()?)? * l.scale)?
            }
        }
    }
}

impl Linear {
    fn frozen(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let k = *dims.last().unwrap_or(&0);
        let rows = x.elem_count() / k.max(1);
        let (kw, n) = self.weight_t.dims2()?;
        if k != kw {
            return Err(candle_core::Error::ShapeMismatchBinaryOp {
                lhs: x.shape().clone(),
                rhs: self.weight_t.shape().clone(),
                op: "linear",
            }
            .bt());
        }
        let mut shape = dims;
        *shape.last_mut().unwrap() = n;
        if !(cpu_f32(x) && cpu_f32(&self.weight_t)) || rows == 0 || k == 0 {
            let y = x.reshape((rows, k))?.matmul(&self.weight_t)?;
            let y = match &self.bias {
                Some(b) => y.broadcast_add(b)?,
                None => y,
            };
            return y.reshape(shape);
        }
        let out = with_slice(x, |xs| self.frozen_rows(xs, k))??;
        Tensor::from_vec(out, shape, x.device())
    }

    /// The frozen layer on rows of `k` inputs (`x` on the CPU in f32, `k` its input size):
    /// the output rows (the training op runs it on its input's storage).
    pub(crate) fn frozen_rows(&self, x: &[f32], k: usize) -> candle_core::Result<Vec<f32>> {
        let (kw, n) = self.weight_t.dims2()?;
        if k != kw || k == 0 {
            candle_core::bail!("linear: {k} inputs for a layer of {kw}")
        }
        let bias = self.bias.as_ref().map(data).transpose()?;
        with_slice(&self.weight_t, |w| {
            linear_rows(x, x.len() / k, k, w, n, bias.as_deref())
        })
    }
}

/// Rows below which [`linear_rows`] splits the output's columns itself.
pub(crate) const FEW_ROWS: usize = 512;

/// `x (rows × k) @ w (k × n) + bias`. With few rows (77 prompt tokens) the matrix library's
/// own split leaves one thread mostly idle (77 × 1024 → 4096: 133 GFLOP/s on two threads,
/// 137 on one); column blocks of the output, one product per task, reach 250.
pub(crate) fn linear_rows(
    x: &[f32],
    rows: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let mut out = uninit(rows * n);
    if let Some(b) = bias {
        out.par_chunks_mut(n).for_each(|r| r.copy_from_slice(b));
    }
    let threads = rayon::current_num_threads();
    if rows >= FEW_ROWS || threads == 1 {
        matmul(rows, n, k, &mut out, n, bias.is_some(), x, k, 1, w, n);
        return out;
    }
    let cw = n.div_ceil(4 * threads).div_ceil(16) * 16;
    assert!(x.len() >= rows * k && w.len() >= k * n);
    let dst = SendPtr(out.as_mut_ptr());
    (0..n.div_ceil(cw)).into_par_iter().for_each(|j| {
        let (n0, nn) = (j * cw, cw.min(n - j * cw));
        // SAFETY: each task writes its own columns `n0..n0 + nn` of `out` (`rows × n`);
        // `x` and `w` hold `rows × k` and `k × n` floats (asserted).
        unsafe {
            gemm_raw(
                (rows, nn, k),
                (dst.get().add(n0), n, bias.is_some()),
                (x.as_ptr(), k, 1),
                (w.as_ptr().add(n0), n, 1),
                1.0,
                gemm::Parallelism::None,
            );
        }
    });
    out
}
