//! MultiDiffusion (Bar-Tal et al., 2023, as diffusers' `StableDiffusionPanoramaPipeline`):
//! a latent larger than the UNet was trained on is denoised as overlapping tiles. At every
//! step the UNet sees each tile alone and the tiles' predictions are blended into one
//! prediction for the whole latent, which the scheduler steps as usual, so the tiles agree
//! at every step and no seam forms. The panorama pipeline averages overlapping views
//! uniformly; here each tile's weight falls off over the band it shares with a neighbour
//! (half-sine, as the upscaler's tiler), so a tile's edge, where it has least context,
//! counts least.
//!
//! A latent no larger than one tile runs the UNet once on the whole, exactly as without
//! tiling: the one-tile case is plain image-to-image.

use candle_core::{DType, Device, Tensor};

use crate::{Result, invalid};

/// How a latent is cut, in latent pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatentTiles {
    /// A tile's side, at most (the model's native size / 8, say 64 for SD 1.5).
    pub tile: usize,
    /// Neighbouring tiles share at least this much.
    pub overlap: usize,
}

/// Tile spans `[start, end)` along an axis of `len`: one when `len <= tile`, else the
/// fewest tiles of side `tile` that overlap by at least `overlap`, spread evenly from the
/// start to the end.
pub fn spans(len: usize, tile: usize, overlap: usize) -> Vec<(usize, usize)> {
    if len <= tile {
        return vec![(0, len)];
    }
    let stride = tile - overlap;
    let n = (len - overlap).div_ceil(stride);
    (0..n)
        .map(|i| {
            let start = ((len - tile) * i + (n - 1) / 2) / (n - 1);
            (start, start + tile)
        })
        .collect()
}

/// A tile's weights along one axis: 1 inside, rising as a half sine over the band shared
/// with the previous span and falling over the band shared with the next.
fn ramp(spans: &[(usize, usize)], i: usize) -> Vec<f32> {
    let (a, b) = spans[i];
    let mut w = vec![1f32; b - a];
    let half_sine = |t: f32| (1.0 - (std::f32::consts::PI * t).cos()) / 2.0;
    if i > 0 {
        let band = spans[i - 1].1 - a;
        for (x, v) in w.iter_mut().enumerate().take(band) {
            *v *= half_sine((x as f32 + 0.5) / band as f32);
        }
    }
    if i + 1 < spans.len() {
        let band = b - spans[i + 1].0;
        let n = w.len();
        for x in 0..band {
            w[n - 1 - x] *= half_sine((x as f32 + 0.5) / band as f32);
        }
    }
    w
}

/// One tile: where it is and its weights, normalised so that all tiles' weights sum to one
/// at every latent pixel.
pub struct Tile {
    pub y: usize,
    pub x: usize,
    pub h: usize,
    pub w: usize,
    weight: Tensor,
}

/// The tiles of an `h × w` latent; empty when one tile covers it (run the UNet on the
/// whole).
pub fn layout(h: usize, w: usize, t: LatentTiles, dtype: DType, dev: &Device) -> Result<Vec<Tile>> {
    if t.tile < 8 || t.overlap >= t.tile {
        return Err(invalid!(
            "latent tiles: a tile of {} needs at least 8 latent pixels and more than its overlap of {}",
            t.tile,
            t.overlap
        ));
    }
    let (ys, xs) = (spans(h, t.tile, t.overlap), spans(w, t.tile, t.overlap));
    if ys.len() == 1 && xs.len() == 1 {
        return Ok(Vec::new());
    }
    let mut total = vec![0f32; h * w];
    let mut raw = Vec::new();
    for (i, &(y0, y1)) in ys.iter().enumerate() {
        let wy = ramp(&ys, i);
        for (j, &(x0, x1)) in xs.iter().enumerate() {
            let wx = ramp(&xs, j);
            let mut wt = Vec::with_capacity((y1 - y0) * (x1 - x0));
            for (dy, a) in wy.iter().enumerate() {
                for (dx, b) in wx.iter().enumerate() {
                    total[(y0 + dy) * w + x0 + dx] += a * b;
                    wt.push(a * b);
                }
            }
            raw.push((y0, x0, y1 - y0, x1 - x0, wt));
        }
    }
    raw.into_iter()
        .map(|(y, x, th, tw, mut wt)| {
            for dy in 0..th {
                for dx in 0..tw {
                    wt[dy * tw + dx] /= total[(y + dy) * w + x + dx];
                }
            }
            Ok(Tile {
                y,
                x,
                h: th,
                w: tw,
                weight: Tensor::from_vec(wt, (1, 1, th, tw), dev)?.to_dtype(dtype)?,
            })
        })
        .collect()
}

/// The blend of `predict` run on each tile of `input` (`[n, c, h, w]`): tile outputs
/// `[n, c', th, tw]`, weighted and summed into `[n, c', h, w]`.
pub fn blend(
    tiles: &[Tile],
    input: &Tensor,
    predict: &mut dyn FnMut(&Tensor, &Tile) -> Result<Tensor>,
) -> Result<Tensor> {
    let (_, _, h, w) = input.dims4()?;
    let mut sum: Option<Tensor> = None;
    for t in tiles {
        let crop = input.narrow(2, t.y, t.h)?.narrow(3, t.x, t.w)?;
        let out = predict(&crop, t)?.broadcast_mul(&t.weight)?;
        let out =
            out.pad_with_zeros(2, t.y, h - t.y - t.h)?
                .pad_with_zeros(3, t.x, w - t.x - t.w)?;
        sum = Some(match sum {
            None => out,
            Some(s) => (s + out)?,
        });
    }
    sum.ok_or_else(|| invalid!("latent tiles: no tile"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_cover_and_overlap() {
        assert_eq!(spans(40, 64, 16), vec![(0, 40)]);
        assert_eq!(spans(64, 64, 16), vec![(0, 64)]);
        for (len, tile, ov) in [(65, 64, 16), (128, 64, 16), (200, 64, 16), (97, 32, 8)] {
            let s = spans(len, tile, ov);
            assert_eq!(s[0].0, 0);
            assert_eq!(s.last().unwrap().1, len);
            for p in s.windows(2) {
                assert!(p[0].1 >= p[1].0 + ov, "{len}: {s:?}");
                assert!(p[1].0 > p[0].0);
            }
            assert!(s.iter().all(|(a, b)| b - a == tile));
        }
    }

    #[test]
    fn weights_sum_to_one_and_fall_at_shared_edges() {
        let tiles = layout(
            40,
            72,
            LatentTiles {
                tile: 32,
                overlap: 8,
            },
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(tiles.len(), 2 * 3);
        let ones = Tensor::ones((1, 1, 40, 72), DType::F32, &Device::Cpu).unwrap();
        let sum = blend(&tiles, &ones, &mut |x, _| Ok(x.clone())).unwrap();
        let v = sum.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|s| (s - 1.0).abs() < 1e-5));
        // A tile's own weight at its shared left edge is small, in its middle one.
        let first_row = tiles[1]
            .weight
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(first_row[0] < 0.1);
        // A constant prediction blends to itself; a tile-dependent one to a mix.
        let mixed = blend(&tiles, &ones, &mut |x, t| Ok((x * t.x as f64)?)).unwrap();
        let m = mixed.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(m[0], 0.0);
        assert!((m[71] - 40.0).abs() < 1e-4);
    }
}
