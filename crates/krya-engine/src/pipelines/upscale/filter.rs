//! Post-filters on interleaved `[0, 1]` pixels: a Gaussian blur of a whole image, and an
//! unsharp mask that streams rows (it holds only the rows its kernel spans, so it sits
//! between the tiler and the PNG encoder at any size).
//!
//! Both blur separably with a sampled, normalised Gaussian of radius `ceil(3σ)`, edges
//! repeated. Only colour channels are filtered; an alpha channel passes through.

use crate::{EngineError, Result};

/// The sampled Gaussian `exp(−x²/2σ²)`, `x ∈ [−r, r]`, summing to one.
pub fn gaussian_kernel(sigma: f32) -> Vec<f32> {
    let r = (3.0 * sigma).ceil().max(1.0) as i64;
    let mut k: Vec<f32> = (-r..=r)
        .map(|x| (-(x * x) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let s: f32 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= s);
    k
}

/// One row blurred horizontally (colour channels `0..colour` of `channels`).
fn blur_row(row: &[f32], width: usize, channels: usize, colour: usize, k: &[f32], out: &mut [f32]) {
    let r = (k.len() / 2) as i64;
    for x in 0..width {
        for c in 0..channels {
            out[x * channels + c] = if c < colour {
                k.iter()
                    .enumerate()
                    .map(|(i, kv)| {
                        let sx = (x as i64 + i as i64 - r).clamp(0, width as i64 - 1) as usize;
                        kv * row[sx * channels + c]
                    })
                    .sum()
            } else {
                row[x * channels + c]
            };
        }
    }
}

/// The Gaussian blur of a whole `width × height` image (colour channels only).
pub fn gaussian_blur(
    pixels: &[f32],
    width: usize,
    height: usize,
    channels: usize,
    colour: usize,
    sigma: f32,
) -> Vec<f32> {
    let k = gaussian_kernel(sigma);
    let stride = width * channels;
    let mut horizontal = vec![0f32; pixels.len()];
    for y in 0..height {
        blur_row(
            &pixels[y * stride..][..stride],
            width,
            channels,
            colour,
            &k,
            &mut horizontal[y * stride..][..stride],
        );
    }
    let r = (k.len() / 2) as i64;
    let mut out = horizontal.clone();
    for y in 0..height {
        for i in 0..stride {
            if i % channels >= colour {
                continue;
            }
            out[y * stride + i] = k
                .iter()
                .enumerate()
                .map(|(j, kv)| {
                    let sy = (y as i64 + j as i64 - r).clamp(0, height as i64 - 1) as usize;
                    kv * horizontal[sy * stride + i]
                })
                .sum();
        }
    }
    out
}

/// An unsharp mask over rows as they come: `x + amount · (x − blur_σ(x))`, clamped to
/// `[0, 1]`. Row `y` leaves once row `y + r` has come (or the image has ended).
pub struct Sharpen {
    width: usize,
    height: usize,
    channels: usize,
    colour: usize,
    amount: f32,
    kernel: Vec<f32>,
    /// Rows `first..first + originals.len()` as they came, and blurred horizontally.
    first: usize,
    originals: std::collections::VecDeque<Vec<f32>>,
    blurred: std::collections::VecDeque<Vec<f32>>,
    received: usize,
    emitted: usize,
    out: Vec<f32>,
}

impl Sharpen {
    pub fn new(width: usize, height: usize, channels: usize, amount: f32, sigma: f32) -> Self {
        Self {
            width,
            height,
            channels,
            colour: channels.min(3),
            amount,
            kernel: gaussian_kernel(sigma),
            first: 0,
            originals: Default::default(),
            blurred: Default::default(),
            received: 0,
            emitted: 0,
            out: vec![0.0; width * channels],
        }
    }

    /// Takes `data` (whole rows) and hands every row that can now be finished to `emit`.
    pub fn push(&mut self, data: &[f32], emit: &mut dyn FnMut(&[f32]) -> Result<()>) -> Result<()> {
        let stride = self.width * self.channels;
        if !data.len().is_multiple_of(stride) {
            return Err(EngineError::InvalidInput("sharpen: a partial row".into()));
        }
        for row in data.chunks_exact(stride) {
            let mut b = vec![0f32; stride];
            blur_row(
                row,
                self.width,
                self.channels,
                self.colour,
                &self.kernel,
                &mut b,
            );
            self.originals.push_back(row.to_vec());
            self.blurred.push_back(b);
            self.received += 1;
            self.drain(emit, false)?;
        }
        Ok(())
    }

    /// Hands on the rows still held (the image's last `r`); every row has come.
    pub fn finish(&mut self, emit: &mut dyn FnMut(&[f32]) -> Result<()>) -> Result<()> {
        if self.received != self.height {
            return Err(EngineError::InvalidInput(format!(
                "sharpen: {} of {} rows came",
                self.received, self.height
            )));
        }
        self.drain(emit, true)
    }

    fn drain(&mut self, emit: &mut dyn FnMut(&[f32]) -> Result<()>, end: bool) -> Result<()> {
        let r = self.kernel.len() / 2;
        let stride = self.width * self.channels;
        while self.emitted < self.height && (end || self.received > self.emitted + r) {
            let y = self.emitted;
            let last = self.received - 1;
            for i in 0..stride {
                let x = self.originals[y - self.first][i];
                self.out[i] = if i % self.channels < self.colour {
                    let blur: f32 = self
                        .kernel
                        .iter()
                        .enumerate()
                        .map(|(j, kv)| {
                            let sy = (y + j).saturating_sub(r).min(last);
                            kv * self.blurred[sy - self.first][i]
                        })
                        .sum();
                    (x + self.amount * (x - blur)).clamp(0.0, 1.0)
                } else {
                    x
                };
            }
            emit(&self.out)?;
            self.emitted += 1;
            // Rows no later output row reaches are dropped.
            while self.first + r < self.emitted && !self.originals.is_empty() {
                self.originals.pop_front();
                self.blurred.pop_front();
                self.first += 1;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(w: usize, h: usize, c: usize) -> Vec<f32> {
        (0..w * h * c)
            .map(|i| ((i * 7919 % 1000) as f32) / 1000.0)
            .collect()
    }

    #[test]
    fn kernel_is_normalised_and_symmetric() {
        let k = gaussian_kernel(1.5);
        assert_eq!(k.len(), 2 * 5 + 1);
        assert!((k.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(k[0], k[10]);
    }

    #[test]
    fn streamed_sharpen_equals_the_whole_image_formula() {
        let (w, h, c) = (13, 17, 4);
        let px = image(w, h, c);
        let blur = gaussian_blur(&px, w, h, c, 3, 1.2);
        let want: Vec<f32> = px
            .iter()
            .zip(&blur)
            .enumerate()
            .map(|(i, (x, b))| {
                if i % c < 3 {
                    (x + 0.7 * (x - b)).clamp(0.0, 1.0)
                } else {
                    *x
                }
            })
            .collect();
        for chunk in [1, 3, 17] {
            let mut s = Sharpen::new(w, h, c, 0.7, 1.2);
            let mut got = Vec::new();
            let mut emit = |r: &[f32]| {
                got.extend_from_slice(r);
                Ok(())
            };
            for rows in px.chunks(chunk * w * c) {
                s.push(rows, &mut emit).unwrap();
            }
            s.finish(&mut emit).unwrap();
            assert_eq!(got.len(), want.len());
            let d = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(d < 1e-6, "chunks of {chunk}: {d}");
            // At most the kernel's rows are held.
            assert!(s.originals.len() <= 2 * 4 + 1);
        }
    }

    #[test]
    fn a_step_edge_gains_contrast() {
        let (w, h) = (16, 4);
        let px: Vec<f32> = (0..w * h)
            .flat_map(|i| [if i % w < 8 { 0.3 } else { 0.6 }; 3])
            .collect();
        let mut s = Sharpen::new(w, h, 3, 1.0, 1.0);
        let mut got = Vec::new();
        let mut emit = |r: &[f32]| {
            got.extend_from_slice(r);
            Ok(())
        };
        s.push(&px, &mut emit).unwrap();
        s.finish(&mut emit).unwrap();
        assert!(got[7 * 3] < 0.3 && got[8 * 3] > 0.6);
        // Flat parts stay.
        assert!((got[0] - 0.3).abs() < 1e-6 && (got[15 * 3] - 0.6).abs() < 1e-6);
    }
}
