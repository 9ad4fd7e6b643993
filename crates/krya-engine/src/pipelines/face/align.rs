//! Face alignment and pasting back, as facexlib's `FaceRestoreHelper` does it
//! (xinntao/facexlib@260620ae93:facexlib/utils/face_restoration_helper.py):
//!
//! - the five landmarks are fitted to the 512 template (scaled to the model's face size) by
//!   a similarity (rotation, uniform scale, translation), found as OpenCV's
//!   `estimateAffinePartial2D` with LMEDS finds it (`similarity_lmeds`);
//! - the face is cut out by `warpAffine` (bilinear, outside the image the grey
//!   (132, 133, 135));
//! - the restored face goes back under a soft mask: 1 inside, falling to 0 towards the
//!   crop's edges. facexlib warps a square of ones into the output, erodes it by `w` =
//!   √area / 20 on each side and blurs it over `2w + 1`; the mask here is that one made in
//!   the face's own frame (where √area is the face size), so pasting needs only the face
//!   and its mask, whatever the output's size, and output rows can stream past it.

/// A 2×3 affine map `[x', y'] = [[a, b, c], [d, e, f]] · [x, y, 1]`.
pub type Affine = [[f64; 3]; 2];

/// facexlib's five-point template for a 512 face (eyes, nose, mouth corners).
pub const TEMPLATE_512: [[f64; 2]; 5] = [
    [192.98138, 239.94708],
    [318.90277, 240.1936],
    [256.63416, 314.01935],
    [201.26117, 371.41043],
    [313.08905, 371.15118],
];

/// facexlib's grey outside the image, RGB.
pub const BORDER: [f32; 3] = [132.0 / 255.0, 133.0 / 255.0, 135.0 / 255.0];

/// The similarity that best maps `src` onto `dst` (least squares).
pub fn similarity(src: &[[f64; 2]], dst: &[[f64; 2]]) -> Affine {
    let n = src.len() as f64;
    let mean = |p: &[[f64; 2]]| {
        let s = p.iter().fold([0.0, 0.0], |a, q| [a[0] + q[0], a[1] + q[1]]);
        [s[0] / n, s[1] / n]
    };
    let (ms, md) = (mean(src), mean(dst));
    let (mut a, mut b, mut norm) = (0.0, 0.0, 0.0);
    for (p, q) in src.iter().zip(dst) {
        let (px, py) = (p[0] - ms[0], p[1] - ms[1]);
        let (qx, qy) = (q[0] - md[0], q[1] - md[1]);
        a += px * qx + py * qy;
        b += px * qy - py * qx;
        norm += px * px + py * py;
    }
    let (a, b) = (a / norm, b / norm);
    [
        [a, -b, md[0] - (a * ms[0] - b * ms[1])],
        [b, a, md[1] - (b * ms[0] + a * ms[1])],
    ]
}

/// The similarity OpenCV's `estimateAffinePartial2D(src, dst, method=LMEDS)` finds, as
/// facexlib aligns faces with it: of the maps that carry two of the points exactly (OpenCV
/// samples pairs at random, up to 2,000 times; every pair of a handful of points is among
/// them), the one whose median squared error is least; then the points it fits within
/// `2.5 · 1.4826 · (1 + 5 / (n − 2)) · √median` decide a least-squares fit (OpenCV refines on
/// them with Levenberg–Marquardt, which reaches the same minimum).
pub fn similarity_lmeds(src: &[[f64; 2]], dst: &[[f64; 2]]) -> Affine {
    let n = src.len();
    if n < 3 {
        return similarity(src, dst);
    }
    let errors = |m: &Affine| -> Vec<f64> {
        src.iter()
            .zip(dst)
            .map(|(p, q)| {
                let (x, y) = apply(m, p[0], p[1]);
                (x - q[0]).powi(2) + (y - q[1]).powi(2)
            })
            .collect()
    };
    let mut best: Option<(f64, Affine)> = None;
    for i in 0..n {
        for j in i + 1..n {
            let m = similarity(&[src[i], src[j]], &[dst[i], dst[j]]);
            if !m.iter().flatten().all(|v| v.is_finite()) {
                continue;
            }
            let mut e = errors(&m);
            e.sort_by(f64::total_cmp);
            let median = e[n / 2];
            if best.is_none_or(|(b, _)| median < b) {
                best = Some((median, m));
            }
        }
    }
    let Some((median, m)) = best else {
        return similarity(src, dst);
    };
    let sigma = (2.5 * 1.4826 * (1.0 + 5.0 / (n as f64 - 2.0)) * median.sqrt()).max(0.001);
    let (s, d): (Vec<_>, Vec<_>) = src
        .iter()
        .zip(dst)
        .zip(errors(&m))
        .filter(|(_, e)| *e <= sigma * sigma)
        .map(|((p, q), _)| (*p, *q))
        .unzip();
    if s.len() < 2 { m } else { similarity(&s, &d) }
}

/// The inverse of an invertible affine map.
pub fn invert(m: &Affine) -> Affine {
    let [[a, b, c], [d, e, f]] = *m;
    let det = a * e - b * d;
    let (ia, ib, id, ie) = (e / det, -b / det, -d / det, a / det);
    [[ia, ib, -(ia * c + ib * f)], [id, ie, -(id * c + ie * f)]]
}

pub fn apply(m: &Affine, x: f64, y: f64) -> (f64, f64) {
    (
        m[0][0] * x + m[0][1] * y + m[0][2],
        m[1][0] * x + m[1][1] * y + m[1][2],
    )
}

/// `cv2.warpAffine(src, m, (size, size))` for three channels: pixel `(x, y)` of the result
/// is `src` at `m⁻¹(x, y)`, bilinear, with `border` for taps outside. `src(x, y, c)` reads
/// the source (`w × h`). The result is interleaved RGB.
pub fn warp(
    src: &dyn Fn(usize, usize, usize) -> f32,
    (w, h): (usize, usize),
    m: &Affine,
    size: usize,
    border: [f32; 3],
) -> Vec<f32> {
    let inv = invert(m);
    let mut out = vec![0f32; size * size * 3];
    for y in 0..size {
        for x in 0..size {
            let (sx, sy) = apply(&inv, x as f64, y as f64);
            let px = bilinear(
                &|xi, yi, c| {
                    if xi < 0 || yi < 0 || xi >= w as i64 || yi >= h as i64 {
                        border[c]
                    } else {
                        src(xi as usize, yi as usize, c)
                    }
                },
                sx,
                sy,
            );
            out[(y * size + x) * 3..][..3].copy_from_slice(&px);
        }
    }
    out
}

/// Three channels at `(x, y)` from four taps `at(xi, yi, c)`.
fn bilinear(at: &dyn Fn(i64, i64, usize) -> f32, x: f64, y: f64) -> [f32; 3] {
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = ((x - x0) as f32, (y - y0) as f32);
    let (x0, y0) = (x0 as i64, y0 as i64);
    std::array::from_fn(|c| {
        let top = at(x0, y0, c) * (1.0 - fx) + at(x0 + 1, y0, c) * fx;
        let bottom = at(x0, y0 + 1, c) * (1.0 - fx) + at(x0 + 1, y0 + 1, c) * fx;
        top * (1.0 - fy) + bottom * fy
    })
}

/// The paste mask in the face's frame (`size²`): ones `w = size / 20` in from each edge,
/// blurred with OpenCV's Gaussian of `2w + 1` taps (σ = 0.3·(w − 1) + 0.8).
pub fn soft_mask(size: usize) -> Vec<f32> {
    let w = (size / 20).max(1);
    let k = 2 * w + 1;
    let sigma = 0.3 * (w as f64 - 1.0) + 0.8;
    let mut kernel: Vec<f64> = (0..k)
        .map(|i| {
            let d = i as f64 - w as f64;
            (-(d * d) / (2.0 * sigma * sigma)).exp()
        })
        .collect();
    let sum: f64 = kernel.iter().sum();
    kernel.iter_mut().for_each(|v| *v /= sum);
    // Separable: the mask is a product of two identical 1-D profiles.
    let inside = |i: i64| (i >= w as i64 && i < (size - w) as i64) as u8 as f64;
    let profile: Vec<f64> = (0..size as i64)
        .map(|i| {
            kernel
                .iter()
                .enumerate()
                .map(|(j, kv)| kv * inside(i + j as i64 - w as i64))
                .sum()
        })
        .collect();
    let mut mask = vec![0f32; size * size];
    for y in 0..size {
        for x in 0..size {
            mask[y * size + x] = (profile[y] * profile[x]) as f32;
        }
    }
    mask
}

/// A restored face ready to be pasted into an output `scale` times the input's size.
pub struct Pasted {
    /// Interleaved RGB, `size²`, in `[0, 1]`.
    pub face: Vec<f32>,
    pub size: usize,
    /// Input pixels → face pixels.
    pub to_face: Affine,
    /// Output rows and columns the face can touch, `[y0, y1) × [x0, x1)`.
    pub rows: (usize, usize),
    pub cols: (usize, usize),
}

impl Pasted {
    /// `face` (restored, `size²` RGB) cut from the input by `to_face`, for an output of
    /// `(width, height)` that is `scale` times the input.
    pub fn new(
        face: Vec<f32>,
        size: usize,
        to_face: Affine,
        scale: f64,
        (width, height): (usize, usize),
    ) -> Self {
        let back = invert(&to_face);
        let corners = [
            (0.0, 0.0),
            (size as f64, 0.0),
            (0.0, size as f64),
            (size as f64, size as f64),
        ]
        .map(|(u, v)| apply(&back, u, v))
        .map(|(x, y)| ((x + 0.5) * scale - 0.5, (y + 0.5) * scale - 0.5));
        let span = |f: fn(&(f64, f64)) -> f64, len: usize| {
            let lo = corners.iter().map(f).fold(f64::INFINITY, f64::min);
            let hi = corners.iter().map(f).fold(f64::NEG_INFINITY, f64::max);
            (
                (lo.floor().max(0.0) as usize).min(len),
                ((hi.ceil() + 1.0).max(0.0) as usize).min(len),
            )
        };
        Self {
            face,
            size,
            to_face,
            rows: span(|c| c.1, height),
            cols: span(|c| c.0, width),
        }
    }
}

/// Pastes faces into output rows as they pass: row `y` of `channels` interleaved values;
/// `mask` is `soft_mask(size)` for the faces' size.
pub fn paste_row(
    faces: &[Pasted],
    mask: &[f32],
    scale: f64,
    y: usize,
    row: &mut [f32],
    channels: usize,
) {
    for f in faces {
        if y < f.rows.0 || y >= f.rows.1 {
            continue;
        }
        let s = f.size as i64;
        let in_face = |xi: i64, yi: i64| xi >= 0 && yi >= 0 && xi < s && yi < s;
        let iy = (y as f64 + 0.5) / scale - 0.5;
        for x in f.cols.0..f.cols.1 {
            let ix = (x as f64 + 0.5) / scale - 0.5;
            let (u, v) = apply(&f.to_face, ix, iy);
            let m = bilinear(
                &|xi, yi, _| {
                    if in_face(xi, yi) {
                        mask[(yi * s + xi) as usize]
                    } else {
                        0.0
                    }
                },
                u,
                v,
            )[0];
            if m <= 0.0 {
                continue;
            }
            let clamp = |v: i64| v.clamp(0, s - 1) as usize;
            let px = bilinear(
                &|xi, yi, c| f.face[(clamp(yi) * f.size + clamp(xi)) * 3 + c],
                u,
                v,
            );
            for (c, p) in px.iter().enumerate() {
                let o = &mut row[x * channels + c];
                *o = m * p + (1.0 - m) * *o;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similarity_recovers_a_known_transform() {
        let (theta, s, t): (f64, f64, [f64; 2]) = (0.3, 1.7, [12.0, -5.0]);
        let m: Affine = [
            [s * theta.cos(), -s * theta.sin(), t[0]],
            [s * theta.sin(), s * theta.cos(), t[1]],
        ];
        let src = TEMPLATE_512;
        let dst: Vec<[f64; 2]> = src
            .iter()
            .map(|p| {
                let (x, y) = apply(&m, p[0], p[1]);
                [x, y]
            })
            .collect();
        let fit = similarity(&src, &dst);
        for r in 0..2 {
            for c in 0..3 {
                assert!((fit[r][c] - m[r][c]).abs() < 1e-9, "{fit:?} vs {m:?}");
            }
        }
        let back = invert(&fit);
        let (x, y) = apply(&back, dst[2][0], dst[2][1]);
        assert!((x - src[2][0]).abs() < 1e-9 && (y - src[2][1]).abs() < 1e-9);
    }

    #[test]
    fn the_mask_is_one_inside_and_falls_to_zero_at_the_edges() {
        let m = soft_mask(100);
        assert!((m[50 * 100 + 50] - 1.0).abs() < 1e-6);
        assert!(m[0] < 1e-3);
        assert!(
            m[50 * 100 + 5] > 0.3 && m[50 * 100 + 5] < 0.7,
            "{}",
            m[50 * 100 + 5]
        );
        // Symmetric.
        assert!((m[50 * 100 + 3] - m[50 * 100 + 96]).abs() < 1e-6);
    }
}
