//! Face restoration, as GFPGANer runs it: faces are found in the input ([`retinaface`]),
//! each is aligned to the five-point template and cut out ([`align`]), repainted by the
//! restorer ([`gfpgan`]: GFPGAN v1.3/v1.4, clean architecture; or [`codeformer`], with its
//! fidelity weight), and pasted back under a soft mask into the upscaled output as its rows
//! pass ([`align::paste_row`]).
//!
//! Every model is detected from its tensors' names and sized from their shapes, as
//! spandrel does, never from a file name.

pub mod align;
pub mod codeformer;
pub mod gfpgan;
pub mod retinaface;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::model::state_dict;
use crate::pipelines::upscale::enhance::{Buffer, Decoded};
use crate::weights::Weights;
use crate::{EngineError, Result};

use align::Pasted;
use retinaface::RetinaFace;

/// The network of a face restorer.
pub enum Restorer {
    Gfpgan(gfpgan::Gfpgan),
    CodeFormer(codeformer::CodeFormer),
}

/// A loaded face restorer.
pub struct FaceRestorer {
    pub net: Restorer,
    pub source: PathBuf,
}

/// CodeFormer's fidelity weight when none is asked for (its CLI's default).
pub const DEFAULT_FIDELITY: f32 = 0.5;

impl FaceRestorer {
    /// Loads a GFPGAN or CodeFormer file (`.pth`, as released, or `.safetensors`).
    pub fn load(path: &Path) -> Result<Self> {
        let sd = state_dict::read(path)?;
        let shapes = sd
            .iter()
            .map(|(k, t)| (k.clone(), t.dims().to_vec()))
            .collect();
        let at = |e: EngineError| e.in_file(path);
        let origin = path.display().to_string();
        let net = if gfpgan::detect(&shapes) {
            let config = gfpgan::config(&shapes).map_err(at)?;
            let weights = Weights::from_tensors(sd.into_iter().collect(), &origin);
            let net = gfpgan::Gfpgan::new(config, weights.var_builder(DType::F32, &Device::Cpu))
                .map_err(at)?;
            weights.check_all_used().map_err(at)?;
            Restorer::Gfpgan(net)
        } else if codeformer::detect(&shapes) {
            Restorer::CodeFormer(codeformer::CodeFormer::from_state_dict(sd, &origin).map_err(at)?)
        } else {
            return Err(EngineError::bad_model(
                path,
                "not a face restoration model this engine reads (GFPGAN v1.3/v1.4, CodeFormer)",
            ));
        };
        Ok(Self {
            net,
            source: path.to_path_buf(),
        })
    }

    /// The face side the model takes and makes.
    pub fn size(&self) -> usize {
        match &self.net {
            Restorer::Gfpgan(n) => n.config.out_size,
            Restorer::CodeFormer(n) => n.config.size,
        }
    }

    /// Whether the model takes a fidelity weight (CodeFormer).
    pub fn has_fidelity(&self) -> bool {
        matches!(self.net, Restorer::CodeFormer(_))
    }

    /// `[1, 3, S, S]` RGB in `[0, 1]` → the restored face, the same, clamped. `fidelity`
    /// (0 to 1) is CodeFormer's weight `w`; GFPGAN has none.
    pub fn restore(&self, face: &Tensor, fidelity: f32) -> Result<Tensor> {
        let x = ((face * 2.0)? - 1.0)?;
        let y = match &self.net {
            Restorer::Gfpgan(n) => n.forward(&x)?,
            Restorer::CodeFormer(n) => n.forward(&x, fidelity.clamp(0.0, 1.0) as f64)?,
        };
        Ok(((y + 1.0)? / 2.0)?.clamp(0f32, 1f32)?)
    }
}

/// What a face model file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaceModel {
    /// Repaints aligned faces (GFPGAN; CodeFormer, which takes a fidelity weight).
    Restorer { fidelity: bool },
    /// Finds faces and their landmarks (RetinaFace).
    Detector,
}

/// The face model tensors of these names and shapes make.
pub fn detect_shapes(sd: &crate::pipelines::upscale::Shapes) -> Option<FaceModel> {
    if gfpgan::detect(sd) {
        Some(FaceModel::Restorer { fidelity: false })
    } else if codeformer::detect(sd) {
        Some(FaceModel::Restorer { fidelity: true })
    } else if retinaface::detect(&mut sd.keys()) {
        Some(FaceModel::Detector)
    } else {
        None
    }
}

/// The face model a file holds, from its tensors' names only.
pub fn detect_file(path: &Path) -> Option<FaceModel> {
    detect_shapes(state_dict::shapes_cached(path)?.as_ref())
}

/// The two models face restoration takes.
pub struct Faces {
    pub detector: RetinaFace,
    pub restorer: FaceRestorer,
    /// Faces scoring at least this are restored (`CONFIDENCE`)…
    pub threshold: f32,
    /// …whose eyes are at least this far apart, in input pixels (`MIN_EYE_DISTANCE`).
    pub min_eye_distance: f32,
    /// CodeFormer's fidelity weight (`DEFAULT_FIDELITY`); GFPGAN ignores it.
    pub fidelity: f32,
}

impl std::fmt::Debug for Faces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Faces({})", self.restorer.source.display())
    }
}

impl Faces {
    pub fn load(restorer: &Path, detector: &Path) -> Result<Self> {
        Ok(Self {
            detector: load_detector(detector)?,
            restorer: FaceRestorer::load(restorer)?,
            threshold: CONFIDENCE,
            min_eye_distance: MIN_EYE_DISTANCE,
            fidelity: DEFAULT_FIDELITY,
        })
    }
}

/// The face detector (RetinaFace) from a file.
pub fn load_detector(path: &Path) -> Result<RetinaFace> {
    let sd = state_dict::read(path)?;
    if !retinaface::detect(&mut sd.keys()) {
        return Err(EngineError::bad_model(
            path,
            "not a face detection model this engine reads (RetinaFace)",
        ));
    }
    RetinaFace::from_state_dict(sd).map_err(|e| e.in_file(path))
}

/// GFPGANer's settings: faces scoring at least this, eyes at least this far apart.
pub const CONFIDENCE: f32 = 0.97;
pub const MIN_EYE_DISTANCE: f32 = 5.0;
/// Detection runs on the input at most this long a side (scaled down, boxes scaled back):
/// RetinaFace at 8K costs gigabytes and finds nothing a 1600 px view misses.
pub const DETECT_SIDE: usize = 1600;

/// Finds the faces of `input`, restores each, and readies them to be pasted into an output
/// `scale` times larger, of `out` size.
pub fn restore_faces(
    faces: &Faces,
    input: &Decoded,
    scale: f64,
    out: (usize, usize),
    cancel: &crate::CancelToken,
) -> Result<Vec<Pasted>> {
    let (w, h) = (input.width, input.height);
    let c = input.channels;
    let value = |x: usize, y: usize, ch: usize| -> f32 {
        let at = (y * w + x) * c + ch;
        match &input.pixels {
            Buffer::U8(p) => p[at] as f32 / 255.0,
            Buffer::U16(p) => p[at] as f32 / 65535.0,
        }
    };
    // The detector's view: RGB 0–255, at most DETECT_SIDE a side.
    let shrink = (DETECT_SIDE as f64 / w.max(h) as f64).min(1.0);
    let rgb8 = input.to_rgb8();
    let view = if shrink < 1.0 {
        image::imageops::resize(
            &rgb8,
            ((w as f64 * shrink).round() as u32).max(1),
            ((h as f64 * shrink).round() as u32).max(1),
            image::imageops::FilterType::Triangle,
        )
    } else {
        rgb8
    };
    let (vw, vh) = (view.width() as usize, view.height() as usize);
    let planes: Vec<f32> = (0..3)
        .flat_map(|ch| view.pixels().map(move |p| p.0[ch] as f32))
        .collect();
    let x = Tensor::from_vec(planes, (1, 3, vh, vw), &Device::Cpu)?;
    let size = faces.restorer.size();
    let template: Vec<[f64; 2]> = align::TEMPLATE_512
        .iter()
        .map(|p| [p[0] * size as f64 / 512.0, p[1] * size as f64 / 512.0])
        .collect();
    let mut pasted = Vec::new();
    let restorer = &faces.restorer;
    for d in faces.detector.detect(&x, faces.threshold)? {
        cancel.check()?;
        let marks: Vec<[f64; 2]> = d
            .landmarks
            .iter()
            .map(|p| [p[0] as f64 / shrink, p[1] as f64 / shrink])
            .collect();
        let eyes =
            ((marks[0][0] - marks[1][0]).powi(2) + (marks[0][1] - marks[1][1]).powi(2)).sqrt();
        if eyes < faces.min_eye_distance as f64 {
            continue;
        }
        let to_face = align::similarity_lmeds(&marks, &template);
        let crop = align::warp(&value, (w, h), &to_face, size, align::BORDER);
        let planes: Vec<f32> = (0..3)
            .flat_map(|ch| crop.chunks_exact(3).map(move |p| p[ch]))
            .collect();
        let restored = restorer.restore(
            &Tensor::from_vec(planes, (1, 3, size, size), &Device::Cpu)?,
            faces.fidelity,
        )?;
        let v: Vec<f32> = restored.flatten_all()?.to_vec1()?;
        let face: Vec<f32> = (0..size * size)
            .flat_map(|i| [v[i], v[size * size + i], v[2 * size * size + i]])
            .collect();
        pasted.push(Pasted::new(face, size, to_face, scale, out));
    }
    Ok(pasted)
}
