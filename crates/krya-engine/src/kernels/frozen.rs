//! Frozen layers in a gradient's graph (LoRA training): the layer's forward through the
//! engine's own kernels, and a backward that gives only the input's gradient. candle's own
//! ops would also build (and keep) a gradient for every frozen weight — a weight-sized
//! buffer and a product per layer (research note: lora-training.md, trap 2) — and its CPU
//! convolution backward is a direct loop; here the input's gradient of a convolution is the
//! engine's transposed convolution.

use candle_core::{CpuStorage, CustomOp1, Layout, Module, Shape, Tensor};

use super::{Conv2d, Linear, conv_transpose2d};

/// The input of a custom op (made contiguous before it) as an untracked tensor, so the
/// layer takes its fast path.
fn input(storage: &CpuStorage, layout: &Layout) -> candle_core::Result<Tensor> {
    let CpuStorage::F32(v) = storage else {
        candle_core::bail!("frozen layers run on f32")
    };
    let Some((a, b)) = layout.contiguous_offsets() else {
        candle_core::bail!("frozen layers take contiguous inputs")
    };
    let t = Tensor::from_slice(&v[a..b], layout.shape(), &candle_core::Device::Cpu)?;
    Ok(t)
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
        output(self.layer.forward(&input(storage, layout)?)?)
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        // y = x Wᵀ + b  ⇒  dx = dy W, with W `[out, in]` = (Wᵀ)ᵀ.
        let w = self.layer.weight_t.t()?.contiguous()?;
        let g = grad.detach();
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
    /// `[out, in, k, k]`, unpacked once for the backward.
    pub(crate) weight: Tensor,
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
        output(self.layer.forward(&input(storage, layout)?)?)
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
        let k = self.weight.dim(2)?;
        // The transposed convolution gives back the input's size with this output padding.
        let made = (oh - 1) * c.stride + k;
        let op = (h + 2 * c.padding).saturating_sub(made);
        let g = grad.detach().contiguous()?;
        let dx = conv_transpose2d(&g, &self.weight, None, c.stride, c.padding, op)?;
        let (_, _, dh, dw) = dx.dims4()?;
        Ok(Some(if (dh, dw) == (h, w) {
            dx
        } else {
            dx.narrow(2, 0, h)?.narrow(3, 0, w)?.contiguous()?
        }))
    }
}
