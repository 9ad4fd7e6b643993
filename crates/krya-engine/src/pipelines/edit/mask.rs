//! Masks as the editor uses them: 8-bit, 255 = change, 0 = keep. A painted mask is made
//! hard (at half), grown, then feathered; the feathered mask says how much of the new
//! picture each pixel takes, and its non-zero pixels are what the model repaints.

use image::GrayImage;

use crate::pipelines::upscale::filter::gaussian_blur;

/// `mask` with every pixel of at least 128 set (255) and the rest cleared.
pub fn hard(mask: &GrayImage) -> GrayImage {
    GrayImage::from_fn(mask.width(), mask.height(), |x, y| {
        image::Luma([if mask.get_pixel(x, y).0[0] >= 128 {
            255
        } else {
            0
        }])
    })
}

/// Whether no pixel is set.
pub fn is_empty(mask: &GrayImage) -> bool {
    mask.as_raw().iter().all(|&v| v == 0)
}

/// A hard mask grown by `r` pixels (a square of side `2r + 1` around each set pixel), in
/// time independent of `r`: per row then per column, a pixel is set when a running count
/// of set pixels over its window is not zero.
pub fn grow(mask: &GrayImage, r: u32) -> GrayImage {
    if r == 0 {
        return mask.clone();
    }
    let (w, h) = (mask.width() as usize, mask.height() as usize);
    let r = r as usize;
    let line = |get: &dyn Fn(usize) -> bool, len: usize, set: &mut dyn FnMut(usize)| {
        // prefix[i] = set pixels before i.
        let mut prefix = vec![0u32; len + 1];
        for i in 0..len {
            prefix[i + 1] = prefix[i] + get(i) as u32;
        }
        for i in 0..len {
            let (a, b) = (i.saturating_sub(r), (i + r + 1).min(len));
            if prefix[b] > prefix[a] {
                set(i);
            }
        }
    };
    let src = mask.as_raw();
    let mut rows = vec![0u8; w * h];
    for y in 0..h {
        line(&|x| src[y * w + x] != 0, w, &mut |x| rows[y * w + x] = 255);
    }
    let mut out = vec![0u8; w * h];
    for x in 0..w {
        line(&|y| rows[y * w + x] != 0, h, &mut |y| out[y * w + x] = 255);
    }
    GrayImage::from_raw(w as u32, h as u32, out).expect("size")
}

/// A mask feathered by a Gaussian of standard deviation `sigma` pixels (edges repeated),
/// rounded to 8 bits: set pixels far inside stay 255, and the blend falls to 0 within
/// `ceil(3σ)` pixels outside.
pub fn feather(mask: &GrayImage, sigma: f32) -> GrayImage {
    // A feather wider than any image would only cost time; NaN and below zero: none.
    let sigma = if sigma.is_finite() {
        sigma.min(256.0)
    } else {
        0.0
    };
    if sigma <= 0.0 {
        return mask.clone();
    }
    let (w, h) = (mask.width() as usize, mask.height() as usize);
    let values: Vec<f32> = mask.as_raw().iter().map(|&v| v as f32 / 255.0).collect();
    let blurred = gaussian_blur(&values, w, h, 1, 1, sigma);
    let out = blurred
        .iter()
        .map(|v| (v * 255.0).round().clamp(0.0, 255.0) as u8)
        .collect();
    GrayImage::from_raw(w as u32, h as u32, out).expect("size")
}

/// The smallest rectangle `(x0, y0, x1, y1)` (end exclusive) holding every set pixel.
pub fn bounds(mask: &GrayImage) -> Option<(u32, u32, u32, u32)> {
    let mut b: Option<(u32, u32, u32, u32)> = None;
    for (x, y, p) in mask.enumerate_pixels() {
        if p.0[0] != 0 {
            b = Some(match b {
                None => (x, y, x + 1, y + 1),
                Some((x0, y0, x1, y1)) => (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1)),
            });
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grow_is_a_square_and_feather_stays_near() {
        let mut m = GrayImage::new(21, 15);
        m.put_pixel(10, 7, image::Luma([255]));
        let g = grow(&m, 3);
        assert_eq!(bounds(&g), Some((7, 4, 14, 11)));
        assert_eq!(g.as_raw().iter().filter(|&&v| v == 255).count(), 49);
        let f = feather(&g, 1.0);
        assert_eq!(f.get_pixel(10, 7).0[0], 255);
        // Within ceil(3σ) of the grown square, never beyond.
        let (x0, y0, x1, y1) = bounds(&f).unwrap();
        assert!(
            x0 >= 4 && y0 >= 1 && x1 <= 17 && y1 <= 14,
            "{:?}",
            bounds(&f)
        );
        assert!(is_empty(&GrayImage::new(3, 3)));
        assert_eq!(
            hard(&GrayImage::from_raw(2, 1, vec![127, 128]).unwrap()).as_raw(),
            &[0, 255]
        );
    }
}
