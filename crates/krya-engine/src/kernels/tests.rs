//! Each kernel against candle's (or a float64 definition) on awkward shapes.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use super::*;

fn close(a: &Tensor, b: &Tensor, tol: f32) {
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let m = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .max(1.0);
    assert!(d / m < tol, "max diff {d} (scale {m})");
}

#[test]
fn transposed_convolutions_equal_candles() {
    let dev = Device::Cpu;
    for (b, cin, cout, h, w, k, stride, padding, output_padding) in [
        (1, 6, 5, 7, 9, 3, 2, 1, 1),
        (2, 4, 3, 5, 4, 2, 2, 0, 0),
        (1, 3, 4, 6, 5, 4, 3, 2, 1),
        (1, 5, 2, 4, 4, 3, 1, 1, 0),
    ] {
        let x = Tensor::randn(0f32, 1.0, (b, cin, h, w), &dev).unwrap();
        let weight = Tensor::randn(0f32, 1.0, (cin, cout, k, k), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1.0, cout, &dev).unwrap();
        let ours =
            conv_transpose2d(&x, &weight, Some(&bias), stride, padding, output_padding).unwrap();
        let theirs = x
            .conv_transpose2d(&weight, padding, output_padding, stride, 1)
            .unwrap()
            .broadcast_add(&bias.reshape((1, cout, 1, 1)).unwrap())
            .unwrap();
        close(&ours, &theirs, 1e-5);
    }
}

#[test]
fn depthwise_convolutions_equal_candles() {
    let dev = Device::Cpu;
    // 3×3 stride 1 and 2 (odd and even sides), a 5×5 and an unpadded one, a batch of two.
    for (b, c, h, w, k, stride, padding) in [
        (1, 6, 9, 7, 3, 1, 1),
        (2, 4, 8, 10, 3, 2, 1),
        (1, 3, 7, 7, 3, 2, 1),
        (1, 5, 6, 9, 5, 1, 2),
        (1, 2, 5, 4, 3, 1, 0),
    ] {
        let weight = Tensor::randn(0f32, 1.0, (c, 1, k, k), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1.0, c, &dev).unwrap();
        let cfg = Conv2dConfig {
            padding,
            stride,
            groups: c,
            ..Default::default()
        };
        let ours = conv2d_from(weight.clone(), Some(bias.clone()), cfg).unwrap();
        let x = Tensor::randn(0f32, 1.0, (b, c, h, w), &dev).unwrap();
        assert!(matches!(ours.fast(&x), Some(Fast::Depthwise)));
        let theirs = candle_nn::Conv2d::new(weight, Some(bias), cfg);
        close(
            &ours.forward(&x).unwrap(),
            &theirs.forward(&x).unwrap(),
            1e-5,
        );
    }
}

#[test]
fn reflection_padded_convolutions_equal_padding_first() {
    let dev = Device::Cpu;
    // 3×3 stride 1 in the kernel's own padding (direct; Winograd at 16 × 20), a strided and
    // a 7×7 one through padding first; sides of 2 are the smallest reflection allows.
    for (cin, cout, h, w, k, stride, padding) in [
        (5, 7, 9, 6, 3, 1, 1),
        (8, 16, 16, 20, 3, 1, 1),
        (3, 4, 2, 2, 3, 1, 1),
        (4, 6, 9, 8, 3, 2, 1),
        (4, 3, 10, 12, 7, 1, 3),
    ] {
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let cfg = Conv2dConfig {
            padding,
            stride,
            ..Default::default()
        };
        let ours = conv2d(cin, cout, k, cfg, vb.pp("c"))
            .unwrap()
            .reflect_padded();
        let weight = vm.data().lock().unwrap()["c.weight"].as_tensor().clone();
        let plain = Conv2dConfig { padding: 0, ..cfg };
        let theirs = candle_nn::Conv2d::new(weight, ours.bias.clone(), plain);
        let x = Tensor::randn(0f32, 1.0, (1, cin, h, w), &dev).unwrap();
        let padded = reflect_pad(&x, padding).unwrap();
        close(
            &ours.forward(&x).unwrap(),
            &theirs.forward(&padded).unwrap(),
            1e-5,
        );
    }
    // A side no longer than the padding cannot be mirrored: an error, not zeros.
    let vm = candle_nn::VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
    let cfg = Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    let c = conv2d(2, 2, 3, cfg, vb).unwrap().reflect_padded();
    let x = Tensor::zeros((1, 2, 1, 5), DType::F32, &dev).unwrap();
    assert!(c.forward(&x).is_err());
}

#[test]
#[cfg_attr(
    krya_no_avx2,
    ignore = "this CPU has no AVX2 and FMA: the SIMD kernels are not tested here"
)]
fn convolutions_equal_candles() {
    let dev = Device::Cpu;
    for (b, cin, cout, h, w, k, stride, padding) in [
        (2, 5, 7, 9, 6, 3, 1, 1),
        (1, 16, 8, 4, 11, 3, 1, 1),
        (2, 6, 4, 5, 3, 1, 1, 0),
        (1, 4, 3, 6, 6, 3, 2, 1),
        // Other strides, paddings and kernels go through im2col tiles.
        (2, 5, 7, 9, 8, 3, 2, 0),
        (1, 3, 4, 7, 10, 4, 3, 2),
        // Two pixel tiles (388 of 10800 rows each), the second from mid-row.
        (1, 1200, 20, 40, 40, 3, 2, 1),
        // The small-image path cut into 2 × 2 tiles of uneven sizes (130 output
        // channels, 16 · 18 padded pixels, 227 per im2col tile of 2048 · 9 rows).
        (1, 2048, 130, 16, 16, 3, 1, 1),
        // Nine products over the whole image (40 · 62 padded pixels > SMALL_CONV).
        (1, 8, 5, 40, 60, 3, 1, 1),
        // Few outputs of a large kernel, row by row (with and without padding).
        (2, 6, 3, 12, 17, 7, 1, 3),
        (1, 5, 1, 9, 8, 5, 1, 0),
    ] {
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let cfg = Conv2dConfig {
            padding,
            stride,
            ..Default::default()
        };
        let ours = conv2d(cin, cout, k, cfg, vb.pp("c")).unwrap();
        // The weight as loaded (ours may hold it packed only).
        let weight = vm.data().lock().unwrap()["c.weight"].as_tensor().clone();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(&ours.weight().unwrap()), flat(&weight));
        let theirs = candle_nn::Conv2d::new(weight, ours.bias.clone(), cfg);
        let x = Tensor::randn(0f32, 1.0, (b, cin, h, w), &dev).unwrap();
        close(
            &ours.forward(&x).unwrap(),
            &theirs.forward(&x).unwrap(),
            1e-5,
        );
        // Another dtype falls back to candle's convolution with the weight unpacked.
        let x64 = x.to_dtype(DType::F64).unwrap();
        close(
            &ours.forward(&x64).unwrap().to_dtype(DType::F32).unwrap(),
            &theirs.forward(&x).unwrap(),
            1e-5,
        );
        // A non-contiguous input takes the same path.
        let xt = Tensor::randn(0f32, 1.0, (b, cin, w, h), &dev)
            .unwrap()
            .transpose(2, 3)
            .unwrap();
        close(
            &ours.forward(&xt).unwrap(),
            &theirs.forward(&xt).unwrap(),
            1e-5,
        );
    }
}

#[test]
#[cfg_attr(
    krya_no_avx2,
    ignore = "this CPU has no AVX2 and FMA: the SIMD kernels are not tested here"
)]
fn linear_equals_candles() {
    let dev = Device::Cpu;
    // Few rows (columns split per task, 37 of them: uneven blocks) and many rows.
    for (rows, cin, cout, bias) in [(7, 24, 37, true), (3, 5, 200, false), (600, 24, 37, true)] {
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let theirs = if bias {
            candle_nn::linear(cin, cout, vb.pp("l")).unwrap()
        } else {
            candle_nn::linear_no_bias(cin, cout, vb.pp("l")).unwrap()
        };
        let ours = Linear::new(theirs.weight().clone(), theirs.bias().cloned()).unwrap();
        let x = Tensor::randn(0f32, 1.0, (1, rows, cin), &dev).unwrap();
        close(
            &ours.forward(&x).unwrap(),
            &theirs.forward(&x).unwrap(),
            1e-5,
        );
    }
}

#[test]
#[cfg_attr(
    krya_no_avx2,
    ignore = "this CPU has no AVX2 and FMA: the SIMD kernels are not tested here"
)]
fn erf_and_geglu_match_the_exact_ones() {
    let mut worst = 0f32;
    for i in -6000..=6000 {
        let x = i as f32 / 1000.0;
        let want = libm_erf(x as f64) as f32;
        worst = worst.max((erf(x) - want).abs());
    }
    assert!(worst < 1e-6, "erf off by {worst}");
    let dev = Device::Cpu;
    let h = Tensor::randn(0f32, 2.0, (2, 5, 16), &dev).unwrap();
    let want =
        (h.narrow(2, 0, 8).unwrap() * h.narrow(2, 8, 8).unwrap().gelu_erf().unwrap()).unwrap();
    close(&geglu(&h).unwrap(), &want, 1e-5);
    let x = Tensor::randn(0f32, 3.0, (3, 7, 1000), &dev).unwrap();
    close(&gelu(&x).unwrap(), &x.gelu_erf().unwrap(), 1e-6);
}

#[test]
#[cfg_attr(
    krya_no_avx2,
    ignore = "this CPU has no AVX2 and FMA: the SIMD kernels are not tested here"
)]
fn exp_is_within_two_ulp() {
    let mut worst = 0f64;
    for i in -87_000..=88_000 {
        let x = i as f32 / 1000.0;
        let want = (x as f64).exp();
        worst = worst.max(((exp(x) as f64) - want).abs() / want);
    }
    assert!(worst < 3e-7, "relative error {worst}");
    assert_eq!(exp(0.0), 1.0);
    assert!(exp(-200.0) >= 0.0 && exp(-200.0) < 1e-37);
}

/// erf in f64 by its Taylor series (exact enough on [-6, 6] for a 1e-6 check).
fn libm_erf(x: f64) -> f64 {
    if x.abs() > 5.0 {
        return x.signum();
    }
    let (mut term, mut sum) = (x, x);
    for n in 1..200 {
        term *= -x * x / n as f64;
        sum += term / (2 * n + 1) as f64;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

#[test]
#[cfg_attr(
    krya_no_avx2,
    ignore = "this CPU has no AVX2 and FMA: the SIMD kernels are not tested here"
)]
fn attention_equals_candles() {
    let dev = Device::Cpu;
    for (b, h, n, m, d, causal) in [
        (2, 3, 70, 70, 8, false),
        (1, 2, 5, 77, 16, false),
        (1, 1, 130, 9, 4, false),
        (2, 2, 77, 77, 8, true),
        (1, 1, 300, 300, 4, true),
        // The online-softmax kernel: several query and key blocks, both partial, key
        // counts that are no whole vector, a `d` of 2.5 AVX-512 vectors.
        (1, 2, 200, 600, 64, false),
        (2, 1, 100, 300, 40, false),
    ] {
        let q = Tensor::randn(0f32, 1.0, (b, n, h * d), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (b, m, h * d), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (b, m, h * d), &dev).unwrap();
        let heads = |t: &Tensor| {
            let len = t.dim(1).unwrap();
            t.reshape((b, len, h, d))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let scale = (d as f64).powf(-0.5);
        let mut scores = (heads(&q).matmul(&heads(&k).t().unwrap()).unwrap() * scale).unwrap();
        if causal {
            let mask: Vec<f32> = (0..n)
                .flat_map(|i| (0..m).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
                .collect();
            let mask = Tensor::from_vec(mask, (n, m), &dev).unwrap();
            scores = scores.broadcast_add(&mask).unwrap();
        }
        let want = candle_nn::ops::softmax_last_dim(&scores)
            .unwrap()
            .matmul(&heads(&v))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, n, h * d))
            .unwrap();
        close(
            &attention(&q, &k, &v, h, scale, causal, usize::MAX).unwrap(),
            &want,
            1e-5,
        );
        let narrow = simd::with_avx2(|| attention(&q, &k, &v, h, scale, causal, usize::MAX));
        close(&narrow.unwrap(), &want, 1e-5);
        // The candle path (taken off the CPU), in chunks of 7 query rows.
        let chunked = attention(
            &q.to_dtype(DType::F64).unwrap(),
            &k.to_dtype(DType::F64).unwrap(),
            &v.to_dtype(DType::F64).unwrap(),
            h,
            scale,
            causal,
            7 * b * h * m * 8,
        )
        .unwrap();
        close(&chunked.to_dtype(DType::F32).unwrap(), &want, 1e-5);
    }
}

#[test]
#[cfg_attr(
    krya_no_avx2,
    ignore = "this CPU has no AVX2 and FMA: the SIMD kernels are not tested here"
)]
fn group_norm_equals_candles() {
    let dev = Device::Cpu;
    let vm = candle_nn::VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
    let gn = group_norm(4, 12, 1e-6, vb.pp("n")).unwrap();
    let gamma = Tensor::randn(1f32, 0.5, 12, &dev).unwrap();
    let beta = Tensor::randn(0f32, 0.5, 12, &dev).unwrap();
    let gn = GroupNorm {
        inner: candle_nn::GroupNorm::new(gamma.clone(), beta.clone(), 12, 4, 1e-6).unwrap(),
        weight: gamma,
        bias: beta,
        ..gn
    };
    // Offset data: the variance must not suffer from cancellation.
    let x = (Tensor::randn(0f32, 2.0, (2, 12, 5, 7), &dev).unwrap() + 30.0).unwrap();
    let want = gn.inner.forward(&x).unwrap();
    close(&gn.forward(&x).unwrap(), &want, 1e-4);
    close(&gn.forward_silu(&x).unwrap(), &want.silu().unwrap(), 1e-4);
    let tokens = Tensor::randn(0f32, 1.0, (2, 12, 9), &dev).unwrap();
    close(
        &gn.forward(&tokens).unwrap(),
        &gn.inner.forward(&tokens).unwrap(),
        1e-4,
    );
}

/// The AVX-512 kernels, where the CPU has them (the tests above take them by default).
#[test]
#[cfg_attr(
    krya_no_avx512,
    ignore = "this CPU has no AVX-512: those kernels are not tested here"
)]
#[cfg(target_arch = "x86_64")]
fn the_avx512_kernels_are_the_ones_tested() {
    assert!(
        simd::use_avx512(),
        "the tests above took another path than AVX-512"
    );
}

/// GEGLU in a gradient's graph (one op with its own backward) gives the value and the
/// gradient candle's composed form gives.
#[test]
fn geglu_op_backward_matches_the_composed_one() {
    let dev = Device::Cpu;
    let h = candle_core::Var::from_tensor(&Tensor::randn(0f32, 2.0, (2, 5, 16), &dev).unwrap())
        .unwrap();
    let w = Tensor::randn(0f32, 1.0, (2, 5, 8), &dev).unwrap();
    let composed =
        (h.narrow(2, 0, 8).unwrap() * h.narrow(2, 8, 8).unwrap().gelu_erf().unwrap()).unwrap();
    let op = geglu(h.as_tensor()).unwrap();
    close(&op, &composed, 1e-5);
    let grad = |y: &Tensor| {
        let loss = (y * &w).unwrap().sum_all().unwrap();
        loss.backward().unwrap().get(h.as_tensor()).unwrap().clone()
    };
    close(&grad(&op), &grad(&composed), 1e-5);
}
