//! Super-resolution against spandrel: tiny random-weight models in each key layout and
//! format (`tools/golden/upscale.py`), detected from their tensors and run natively; every
//! output within 1e-4 of spandrel's. Then the tiler: with overlaps that cover the receptive
//! field, tiled equals whole; at default settings no tile border shows as a step.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use krya_engine::CancelToken;
use krya_engine::pipelines::upscale::tile::{self, Alpha, Image, Pixels, TileOptions};
use krya_engine::pipelines::upscale::{Architecture, LoadOptions, Upscaler};
use serde_json::Value;

mod common;
use common::max_abs_diff;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/upscale")
}

fn reference() -> &'static HashMap<String, Tensor> {
    static R: OnceLock<HashMap<String, Tensor>> = OnceLock::new();
    R.get_or_init(|| {
        candle_core::safetensors::load(dir().join("reference.safetensors"), &Device::Cpu).unwrap()
    })
}

fn r(name: &str) -> &'static Tensor {
    reference()
        .get(name)
        .unwrap_or_else(|| panic!("no reference tensor {name}"))
}

fn cases() -> Vec<Value> {
    serde_json::from_str(&std::fs::read_to_string(dir().join("cases.json")).unwrap()).unwrap()
}

fn load(file: &str, options: &LoadOptions) -> Upscaler {
    Upscaler::load(&dir().join(file), options).unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn every_layout_matches_spandrel() {
    let cases = cases();
    assert_eq!(cases.len(), 9, "cases in cases.json");
    let mut checked = 0;
    for c in &cases {
        let name = c["name"].as_str().unwrap();
        let options = match c.get("blend") {
            Some(twin) => LoadOptions {
                denoise: c["denoise"].as_f64(),
                denoise_twin: Some(dir().join(twin.as_str().unwrap())),
            },
            None => LoadOptions::default(),
        };
        let m = load(c["file"].as_str().unwrap(), &options);
        let want_arch = match c["architecture"].as_str().unwrap() {
            "ESRGAN" => Architecture::Esrgan,
            "Compact" => Architecture::Compact,
            a => panic!("{a}"),
        };
        assert_eq!(m.architecture, want_arch, "{name}");
        assert_eq!(
            m.scale() as u64,
            c["scale"].as_u64().unwrap(),
            "{name}: scale"
        );
        assert_eq!(
            m.net.channels() as u64,
            c["input_channels"].as_u64().unwrap(),
            "{name}"
        );
        // spandrel's descriptor clamps its output to [0, 1].
        let got = m
            .net
            .forward(r(&format!("{name}.input")))
            .unwrap()
            .clamp(0f32, 1f32)
            .unwrap();
        let d = max_abs_diff(&got, r(&format!("{name}.output")));
        assert!(d <= 1e-4, "{name}: max abs diff {d}");
        checked += 1;
    }
    assert_eq!(checked, 9);
}

/// SwinIR with each of its reconstructions, and HAT (`tools/golden/swinir.py`): detected from the
/// tensors (buffers included, as the official files store them), padded to whole windows,
/// within 1e-4 of spandrel's network.
#[test]
fn swinir_and_hat_match_spandrel() {
    let reference =
        candle_core::safetensors::load(dir().join("swinir_reference.safetensors"), &Device::Cpu)
            .unwrap();
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(dir().join("swinir_cases.json")).unwrap())
            .unwrap();
    assert_eq!(cases.len(), 6);
    for c in &cases {
        let name = c["name"].as_str().unwrap();
        let m = load(c["file"].as_str().unwrap(), &LoadOptions::default());
        let want = match c["architecture"].as_str().unwrap() {
            "SwinIR" => Architecture::SwinIr,
            "HAT" => Architecture::Hat,
            a => panic!("{a}"),
        };
        assert_eq!(m.architecture, want, "{name}");
        assert_eq!(m.scale() as u64, c["scale"].as_u64().unwrap(), "{name}");
        // Unclamped, as the network makes it (values up to 3 here).
        let got = m.net.forward(&reference[&format!("{name}.input")]).unwrap();
        let d = max_abs_diff(&got, &reference[&format!("{name}.output")]);
        assert!(d <= 1e-4, "{name}: max abs diff {d}");
    }
}

#[test]
fn files_that_are_not_upscalers_are_refused_with_their_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let not_sr = tmp.path().join("other.safetensors");
    let t = Tensor::zeros((4, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(&HashMap::from([("linear.weight".to_string(), t)]), &not_sr)
        .unwrap();
    let e = Upscaler::load(&not_sr, &LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not a super-resolution model"), "{e}");
    assert!(e.contains("other.safetensors"), "{e}");
    // Not a zip: an old-format pickle.
    let old = tmp.path().join("old.pth");
    std::fs::write(&old, b"\x80\x02}q\x00.").unwrap();
    let e = Upscaler::load(&old, &LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("before torch 1.6"), "{e}");
    // Denoise needs a compact model with a twin.
    let e = Upscaler::load(
        &dir().join("esrgan_x2.safetensors"),
        &LoadOptions {
            denoise: Some(0.5),
            denoise_twin: Some(dir().join("compact_wdn.safetensors")),
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("SRVGGNetCompact"), "{e}");
}

/// `t` (`[1, 3, h, w]` in [0, 1]) as 16-bit interleaved pixels, exactly (65535 steps).
fn as_u16(t: &Tensor) -> (usize, usize, Vec<u16>) {
    let (_, _, h, w) = t.dims4().unwrap();
    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    let mut px = vec![0u16; h * w * 3];
    for c in 0..3 {
        for i in 0..h * w {
            px[i * 3 + c] = (v[c * h * w + i] * 65535.0).round() as u16;
        }
    }
    (w, h, px)
}

/// The tiler's output as `[1, 3, H, W]`, checking rows arrive in order, each once.
fn tiled(m: &Upscaler, w: usize, h: usize, px: &[u16], options: &TileOptions) -> Tensor {
    let image = Image {
        width: w,
        height: h,
        channels: 3,
        pixels: Pixels::U16(px),
        alpha: Alpha::None,
    };
    let mut out: Vec<f32> = Vec::new();
    let mut next_row = 0;
    let mut tiles = 0;
    let (ow, oh) = tile::upscale(
        m,
        &image,
        options,
        &CancelToken::new(),
        &mut |done, total| {
            tiles = total;
            assert!(done <= total);
        },
        &mut |rows| {
            assert_eq!(rows.y, next_row, "rows out of order");
            next_row += rows.rows;
            out.extend_from_slice(rows.data);
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(next_row, oh);
    assert!(tiles > 1, "one tile only");
    let mut planes = vec![0f32; out.len()];
    for i in 0..ow * oh {
        for c in 0..3 {
            planes[c * ow * oh + i] = out[i * 3 + c];
        }
    }
    Tensor::from_vec(planes, (1, 3, oh, ow), &Device::Cpu).unwrap()
}

fn whole(m: &Upscaler, input: &Tensor) -> Tensor {
    m.net.forward(input).unwrap().clamp(0f32, 1f32).unwrap()
}

#[test]
fn tiles_with_enough_overlap_equal_the_whole_image() {
    let m = load("compact.safetensors", &LoadOptions::default());
    let (w, h, px) = as_u16(r("compact_big.input"));
    // The 16-bit input is the reference input rounded to 1/65535.
    let input = Tensor::from_vec(
        (0..3)
            .flat_map(|c| (0..w * h).map(move |i| (c, i)))
            .map(|(c, i)| px[i * 3 + c] as f32 / 65535.0)
            .collect::<Vec<_>>(),
        (1, 3, h, w),
        &Device::Cpu,
    )
    .unwrap();
    let want = whole(&m, &input);
    let radius = m.net.receptive_radius();
    for blend in [false, true] {
        // Blending writes half the overlap past the core: the rest must cover the radius.
        let overlap = if blend { 2 * radius } else { radius };
        let options = TileOptions {
            tile: 24,
            overlap,
            blend,
        };
        let got = tiled(&m, w, h, &px, &options);
        let d = max_abs_diff(&got, &want);
        assert!(d <= 1.0 / 255.0, "blend {blend}: max abs diff {d}");
        assert!(
            d <= 1e-5,
            "blend {blend}: max abs diff {d} (expected exact)"
        );
    }
    // And the whole image matches spandrel's on the unrounded input.
    let d = max_abs_diff(&whole(&m, r("compact_big.input")), r("compact_big.output"));
    assert!(d <= 1e-4, "{d}");
}

/// The largest jump between horizontally or vertically neighbouring output pixels of
/// `d` (one channel plane, `w` wide), across a tile border and elsewhere.
fn jumps(d: &[f32], w: usize, h: usize, bx: &[usize], by: &[usize]) -> (f32, f32) {
    let (mut border, mut elsewhere) = (0f32, 0f32);
    for y in 0..h {
        for x in 0..w {
            let v = d[y * w + x];
            if x + 1 < w {
                let j = (d[y * w + x + 1] - v).abs();
                if bx.contains(&(x + 1)) {
                    border = border.max(j);
                } else {
                    elsewhere = elsewhere.max(j);
                }
            }
            if y + 1 < h {
                let j = (d[(y + 1) * w + x] - v).abs();
                if by.contains(&(y + 1)) {
                    border = border.max(j);
                } else {
                    elsewhere = elsewhere.max(j);
                }
            }
        }
    }
    (border, elsewhere)
}

/// An RRDBNet sees far wider than the overlap, so tiles differ from the whole image a
/// little (less context near a tile's edge than in its middle). A seam is that difference
/// jumping at a tile border: it does with hard joins, and blended it does not, its largest
/// jump across a border no larger than anywhere else.
#[test]
fn default_tiles_show_no_step_at_their_borders() {
    let m = load("esrgan_new.pth", &LoadOptions::default());
    let (w, h) = (64, 56);
    let mut px = vec![0u16; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                // Smooth gradients with some texture.
                let v = 0.5
                    + 0.3 * ((x as f32 * 0.21 + c as f32).sin() * (y as f32 * 0.17).cos())
                    + 0.1 * (((x * 7 + y * 13 + c * 5) % 17) as f32 / 17.0 - 0.5);
                px[(y * w + x) * 3 + c] = (v.clamp(0.0, 1.0) * 65535.0).round() as u16;
            }
        }
    }
    let input = Tensor::from_vec(
        (0..3)
            .flat_map(|c| (0..w * h).map(move |i| (c, i)))
            .map(|(c, i)| px[i * 3 + c] as f32 / 65535.0)
            .collect::<Vec<_>>(),
        (1, 3, h, w),
        &Device::Cpu,
    )
    .unwrap();
    let want = whole(&m, &input);
    let s = m.scale();
    // Tile cores as the tiler cuts them: even parts of at most `tile`.
    let borders = |len: usize, tile: usize| -> Vec<usize> {
        let n = len.div_ceil(tile);
        let size = len.div_ceil(n);
        (1..n).map(|i| i * size * s).collect()
    };
    let (ow, oh) = (w * s, h * s);
    let mut found = Vec::new();
    for blend in [false, true] {
        let options = TileOptions {
            tile: 20,
            overlap: 8,
            blend,
        };
        let got = tiled(&m, w, h, &px, &options);
        let (bx, by) = (borders(w, 20), borders(h, 20));
        let d = (&got - &want).unwrap();
        let mut worst = (0f32, 0f32);
        for c in 0..3 {
            let plane: Vec<f32> = d
                .narrow(1, c, 1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let (b, e) = jumps(&plane, ow, oh, &bx, &by);
            worst = (worst.0.max(b), worst.1.max(e));
        }
        println!(
            "blend {blend}: largest jump of the difference {} across tile borders, {} elsewhere",
            worst.0, worst.1
        );
        found.push(worst);
    }
    let (hard, blended) = (found[0], found[1]);
    assert!(
        hard.1 > 0.0,
        "tiles equal the whole image: nothing was tested"
    );
    assert!(
        hard.0 > 1.2 * hard.1,
        "hard joins were expected to show a step: {hard:?}"
    );
    assert!(
        blended.0 <= blended.1,
        "a step at tile borders: {} there, {} elsewhere",
        blended.0,
        blended.1
    );
}
