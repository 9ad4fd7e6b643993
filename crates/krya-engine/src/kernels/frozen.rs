//! Frozen layers in a gradient's graph (LoRA training): the layer's forward through the
//! engine's own kernels, and a backward that gives only the input's gradient. candle's own
//! ops would also build (and keep) a gradient for every frozen weight — a weight-sized
//! buffer and a product per layer (research note: lora-training.md, trap 2) — and its CPU
//! convolution backward is a direct loop; here the input's gradient of a convolution is the
//! engine's transposed convolution.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::conv::{ConvWeight, conv_transpose2d_slice};
use super::{Conv2d, GroupNorm, Linear};

thread_local! {
    /// A frozen 3×3 convolution's weight, unpacked for its backward.
    static UNPACKED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The input of a custom op (made contiguous before it) as an untracked tensor, so the
/// layer takes its fast path.
fn input(storage: &CpuStorage, layout: &Layout) -> candle_core::Result<Tensor> {
    Tensor::from_slice(
        slice(storage, layout)?,
        layout.shape(),
        &candle_core::Device::Cpu,
    )
}

/// A custom op's contiguous f32 input, in its storage.
fn slice<'a>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = storage else {
        candle_core::bail!("the training ops run on f32")
    };
    let Some((a, b)) = layout.contiguous_offsets() else {
        candle_core::bail!("the training ops take contiguous inputs")
    };
    Ok(&v[a..b])
}

fn output(y: Tensor) -> candle_core::Result<(CpuStorage, Shape)> {
    let shape = y.shape().clone();
    Ok((CpuStorage::F32(y.flatten_all()?.to_vec1::<f32>()?), shape))
}

/// A frozen linear layer as one recorded op.
pub(crate) struct FrozenLinear {
    pub(crate) layer: Linear,
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        // The kernel on the input's storage, its output the op's own (no copy either way).
        let mut dims = layout.dims().to_vec();
        let k = *dims.last().unwrap_or(&0);
        let out = self.layer.frozen_rows(slice(storage, layout)?, k)?;
        *dims.last_mut().unwrap() = self.layer.weight_t.dim(1)?;
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        // y = x Wᵀ + b  ⇒  dx = dy W = dy (Wᵀ)ᵀ: the stored `Wᵀ` read transposed, not
        // copied.
        let w = self.layer.weight_t.t()?;
        let g = grad.detach().contiguous()?;
        let dims = g.dims().to_vec();
        let rows = g.elem_count() / dims[dims.len() - 1];
        let mut shape = dims.clone();
        *shape.last_mut().unwrap() = w.dim(1)?;
        Ok(Some(
            g.reshape((rows, dims[dims.len() - 1]))?
                .matmul(&w)?
                .reshape(shape)?,
        ))
    }
}

/// A frozen convolution (groups 1, dilation 1) as one recorded op.
pub(crate) struct FrozenConv {
    pub(crate) layer: Conv2d,
}

impl CustomOp1 for FrozenConv {
    fn name(&self) -> &'static str {
        "frozen-conv2d"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        output(self.layer.forward_frozen(&input(storage, layout)?)?)
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let c = &self.layer.cfg;
        let (_, _, h, w) = arg.dims4()?;
        let (_, _, oh, _) = grad.dims4()?;
        let (cout, cin, k, kw) = self.layer.dims()?;
        // The transposed convolution gives back the input's size with this output padding.
        let made = (oh - 1) * c.stride + k;
        let op = (h + 2 * c.padding).saturating_sub(made);
        let g = grad.detach().contiguous()?;
        let transposed = |wv: &[f32]| {
            conv_transpose2d_slice(&g, wv, (cout, cin, k, kw), None, c.stride, c.padding, op)
        };
        let dx = match &self.layer.weight {
            ConvWeight::Plain(weight) => super::with_slice(&weight.contiguous()?, transposed)??,
            // `[out, in, 3, 3]` unpacked into a buffer kept for the next layer's backward
            // (no fresh pages for every layer of every step).
            ConvWeight::Packed { packed, cout, cin } => UNPACKED.with(|buf| {
                let mut buf = buf.borrow_mut();
                let n = cout * cin * 9;
                if buf.len() < n {
                    buf.resize(n, 0.0);
                }
                super::direct::unpack_into(packed, *cout, *cin, &mut buf);
                transposed(&buf[..n])
            })?,
        };
        let (_, _, dh, dw) = dx.dims4()?;
        Ok(Some(if (dh, dw) == (h, w) {
            dx
        } else {
            dx.narrow(2, 0, h)?.narrow(3, 0, w)?.contiguous()?
        }))
    }
}

/// Attention in a gradient's graph: the forward through the engine's kernel (no score
/// matrix kept), the backward recomputing each block of queries' scores (FlashAttention's
/// recipe): `P = softmax(q kᵀ·s)`, `dV = Pᵀ dO`, `dS = P ⊙ (dO Vᵀ − rowsum(dO ⊙ O))`,
/// `dQ = dS K·s`, `dK = dSᵀ Q·s`. Token-major `[b, n, heads·d]` as `attention` takes them.
pub(crate) struct AttentionOp {
    pub(crate) heads: usize,
    pub(crate) scale: f64,
    pub(crate) causal: bool,
}

impl candle_core::CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (q, k, v) = (input(s1, l1)?, input(s2, l2)?, input(s3, l3)?);
        output(super::attention(
            &q,
            &k,
            &v,
            self.heads,
            self.scale,
            self.causal,
            1 << 28,
        )?)
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, n, c) = q.dims3()?;
        let m = k.dim(1)?;
        let h = self.heads;
        let d = c / h;
        let split = |t: &Tensor, len: usize| -> candle_core::Result<Tensor> {
            t.detach()
                .reshape((b, len, h, d))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (split(q, n)?, split(k, m)?, split(v, m)?);
        let (o, dout) = (split(o, n)?, split(grad, n)?);
        // rowsum(dO ⊙ O) = rowsum(dP ⊙ P), per query.
        let delta = (&dout * &o)?.sum_keepdim(3)?; // [b, h, n, 1]
        let rows = ((256usize << 20) / (b * h * m * 4).max(1)).clamp(1, n);
        let (mut dq, mut dk, mut dv) = (Vec::new(), k.zeros_like()?, v.zeros_like()?);
        let kt = k.t()?.contiguous()?;
        let vt = v.t()?.contiguous()?;
        for start in (0..n).step_by(rows) {
            let len = rows.min(n - start);
            let qb = q.narrow(2, start, len)?;
            let s = (qb.matmul(&kt)? * self.scale)?;
            // Soft-maxed by the engine's kernel (row `i` of the block over its first
            // `start + i + 1` keys when causal), each head's block a task.
            let mut p = super::data(&s)?;
            let first = if self.causal { start + 1 } else { m };
            p.par_chunks_mut(len * m)
                .for_each(|blk| super::attention::softmax_rows(blk, m, first));
            let p = Tensor::from_vec(p, s.dims(), q.device())?;
            let db = dout.narrow(2, start, len)?;
            dv = (dv + p.t()?.matmul(&db)?)?;
            let dp = db.matmul(&vt)?;
            let ds = (p * dp.broadcast_sub(&delta.narrow(2, start, len)?)?)?;
            dq.push((ds.matmul(&k)? * self.scale)?);
            dk = (dk + (ds.t()?.matmul(&qb)? * self.scale)?)?;
        }
        let dq = Tensor::cat(&dq, 2)?;
        let merge = |t: Tensor, len: usize| -> candle_core::Result<Tensor> {
            t.transpose(1, 2)?.reshape((b, len, c))
        };
        Ok((
            Some(merge(dq, n)?),
            Some(merge(dk, m)?),
            Some(merge(dv, m)?),
        ))
    }
}

/// A frozen group norm in a gradient's graph: the kernel forward, and the input's gradient
/// `(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)) / σ` per group, `dx̂ = dy·γ` (no gradient for γ, β).
pub(crate) struct GroupNormOp {
    pub(crate) norm: GroupNorm,
}

impl CustomOp1 for GroupNormOp {
    fn name(&self) -> &'static str {
        "frozen-group-norm"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        output(self.norm.run(&input(storage, layout)?, false)?)
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let dims = arg.dims().to_vec();
        let (b, c) = (dims[0], dims[1]);
        let g = self.norm.groups;
        let x = arg.detach().reshape((b, g, ()))?;
        let mean = x.mean_keepdim(2)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(2)?;
        let inv = (var + self.norm.eps)?.sqrt()?.recip()?;
        let xhat = xc.broadcast_mul(&inv)?;
        let mut wshape = vec![1; dims.len()];
        wshape[1] = c;
        let dxhat = grad
            .detach()
            .broadcast_mul(&self.norm.weight.reshape(wshape)?)?
            .reshape((b, g, ()))?;
        let m1 = dxhat.mean_keepdim(2)?;
        let m2 = (&dxhat * &xhat)?.mean_keepdim(2)?;
        let dx = dxhat
            .broadcast_sub(&m1)?
            .sub(&xhat.broadcast_mul(&m2)?)?
            .broadcast_mul(&inv)?;
        Ok(Some(dx.reshape(dims)?))
    }
}

/// GEGLU (`a · gelu(g)` over the two halves of the last dimension) as one recorded op:
/// the kernel's forward, and a backward in one pass (candle's composed form keeps both
/// halves as strided copies and records four ops).
pub(crate) struct GegluOp;

impl CustomOp1 for GegluOp {
    fn name(&self) -> &'static str {
        "geglu"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let h = slice(storage, layout)?;
        let mut dims = layout.dims().to_vec();
        let last = dims.last_mut().expect("geglu takes a last dimension");
        *last /= 2;
        let out = super::math::geglu_rows(h, *last);
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let dims = arg.dims().to_vec();
        let d = dims[dims.len() - 1] / 2;
        let h = arg.detach().contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let go = grad
            .detach()
            .contiguous()?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let dh = super::math::geglu_backward_rows(&h, &go, d);
        Ok(Some(Tensor::from_vec(dh, dims, arg.device())?))
    }
}
