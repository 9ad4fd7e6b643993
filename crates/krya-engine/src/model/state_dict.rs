//! A model file's tensors by name, whatever it was saved as: `.safetensors`, or a PyTorch
//! pickle (`.pth`, `.pt`, `.ckpt`; the zip format of torch ≥ 1.6, which candle's restricted
//! unpickler reads without running any code from the file).
//!
//! Checkpoints from training code wrap their state dict; it is unwrapped as spandrel does
//! (chaiNNer-org/spandrel@b0c3eb2d04:libs/spandrel/spandrel/__helpers/canonicalize.py): the
//! first of `params_ema`, `params`, `state_dict`, `model_state_dict`, `model`, `net` that
//! holds tensors, and a prefix every key shares (`module.` from DataParallel, `netG.`) is
//! dropped.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::{EngineError, Result};

/// Tensors by name (sorted, so messages and iteration are stable).
pub type StateDict = BTreeMap<String, Tensor>;

/// Keys a training checkpoint keeps its weights under, in the order they are preferred
/// (the EMA copy first, as Real-ESRGAN's and GFPGAN's loaders do).
const WRAPPERS: [&str; 7] = [
    "params_ema",
    "params-ema",
    "params",
    "state_dict",
    "model_state_dict",
    "model",
    "net",
];

/// Prefixes dropped when every key has them.
const PREFIXES: [&str; 2] = ["module.", "netG."];

/// A file's extension, lower-case ("" without one).
fn extension(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// Reads every tensor of `path`, as f32 on the CPU.
pub fn read(path: &Path) -> Result<StateDict> {
    let bad = |m: String| EngineError::bad_model(path, m);
    let ext = extension(path);
    let tensors: Vec<(String, Tensor)> = match ext.as_str() {
        "safetensors" => candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| bad(format!("not a readable safetensors file: {e}")))?
            .into_iter()
            .collect(),
        "pth" | "pt" | "ckpt" | "bin" => read_pickle(path)?,
        _ => {
            return Err(bad(
                "a model file must be .safetensors or a PyTorch .pth/.pt/.ckpt".into(),
            ));
        }
    };
    if tensors.is_empty() {
        return Err(bad("holds no tensors".into()));
    }
    let mut dict = StateDict::new();
    for (name, t) in tensors {
        let t = if t.dtype() == DType::F32 {
            t
        } else {
            t.to_dtype(DType::F32)?
        };
        dict.insert(name, t);
    }
    Ok(strip_prefix(dict))
}

/// A pickle's state dict: under the first wrapper key that holds tensors, else the top
/// level.
fn read_pickle(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bad = |m: String| EngineError::bad_model(path, m);
    // Not a zip archive: a pickle from before torch 1.6, which is not read here.
    let mut head = [0u8; 2];
    std::io::Read::read_exact(
        &mut std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?,
        &mut head,
    )
    .map_err(|e| EngineError::io(path, e))?;
    if &head != b"PK" {
        return Err(bad(
            "an old-format PyTorch pickle (before torch 1.6); convert it to .safetensors".into(),
        ));
    }
    for key in WRAPPERS {
        if let Ok(t) = candle_core::pickle::read_all_with_key(path, Some(key))
            && !t.is_empty()
        {
            return Ok(t);
        }
    }
    candle_core::pickle::read_all(path)
        .map_err(|e| bad(format!("not a readable PyTorch file: {e}")))
}

/// The names and shapes of `path`'s tensors, their data unread (unwrapped and
/// prefix-stripped as `read` does).
pub fn shapes(path: &Path) -> Result<BTreeMap<String, Vec<usize>>> {
    let bad = |m: String| EngineError::bad_model(path, m);
    let ext = extension(path);
    let names: BTreeMap<String, Vec<usize>> = match ext.as_str() {
        "safetensors" => {
            // SAFETY: the file is mapped read-only; the engine does not write model files.
            let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }
                .map_err(|e| bad(format!("not a readable safetensors file: {e}")))?;
            st.tensors()
                .into_iter()
                .map(|(n, v)| (n, v.shape().to_vec()))
                .collect()
        }
        "pth" | "pt" | "ckpt" | "bin" => {
            let info = WRAPPERS
                .iter()
                .find_map(|k| {
                    candle_core::pickle::read_pth_tensor_info(path, false, Some(k))
                        .ok()
                        .filter(|t| !t.is_empty())
                })
                .map(Ok)
                .unwrap_or_else(|| {
                    candle_core::pickle::read_pth_tensor_info(path, false, None)
                        .map_err(|e| bad(format!("not a readable PyTorch file: {e}")))
                })?;
            info.into_iter()
                .map(|t| (t.name, t.layout.shape().dims().to_vec()))
                .collect()
        }
        _ => return Err(bad("not a model file".into())),
    };
    Ok(strip_prefix(names))
}

/// What `shapes` says of `path` (`None`: not a model file it reads), kept per file until
/// its size or modification time changes: model lists ask what every listed file holds on
/// every listing, and a pickle's names cost a parse.
pub fn shapes_cached(path: &Path) -> Option<std::sync::Arc<BTreeMap<String, Vec<usize>>>> {
    type Entry = (
        u64,
        std::time::SystemTime,
        Option<std::sync::Arc<BTreeMap<String, Vec<usize>>>>,
    );
    static SEEN: std::sync::Mutex<Option<std::collections::HashMap<std::path::PathBuf, Entry>>> =
        std::sync::Mutex::new(None);
    let meta = std::fs::metadata(path).ok()?;
    let stamp = (meta.len(), meta.modified().ok()?);
    if let Some((len, at, shapes)) = SEEN.lock().unwrap().get_or_insert_default().get(path)
        && (*len, *at) == stamp
    {
        return shapes.clone();
    }
    let shapes = shapes(path).ok().map(std::sync::Arc::new);
    SEEN.lock()
        .unwrap()
        .get_or_insert_default()
        .insert(path.to_path_buf(), (stamp.0, stamp.1, shapes.clone()));
    shapes
}

/// The map without a prefix every key shares (`module.`, `netG.`).
fn strip_prefix<V>(dict: BTreeMap<String, V>) -> BTreeMap<String, V> {
    for p in PREFIXES {
        if !dict.is_empty() && dict.keys().all(|k| k.starts_with(p)) {
            return dict
                .into_iter()
                .map(|(k, v)| (k[p.len()..].to_string(), v))
                .collect();
        }
    }
    dict
}

/// A batch norm's running statistics at `{prefix}.*` (PyTorch's default eps, 1e-5) as the
/// affine map it is at inference: `(scale, shift)`, one value per channel, so that
/// `bn(x) = x · scale + shift`. The tensors are taken out of `sd`.
pub fn take_batch_norm(sd: &mut StateDict, prefix: &str) -> Result<(Tensor, Tensor)> {
    let mut get = |name: &str| {
        sd.remove(&format!("{prefix}.{name}")).ok_or_else(|| {
            EngineError::bad_model(
                std::path::PathBuf::new(),
                format!("no tensor {prefix}.{name}"),
            )
        })
    };
    let gamma = get("weight")?;
    let beta = get("bias")?;
    let mean = get("running_mean")?;
    let var = get("running_var")?;
    sd.remove(&format!("{prefix}.num_batches_tracked"));
    let scale = (gamma / (var + 1e-5)?.sqrt()?)?;
    let shift = (beta - (mean * &scale)?)?;
    Ok((scale, shift))
}

/// A convolution's weight and optional bias with a batch norm `(scale, shift)` after it
/// folded in: `(w · scale, b · scale + shift)`.
pub fn fold_batch_norm(
    weight: &Tensor,
    bias: Option<&Tensor>,
    (scale, shift): &(Tensor, Tensor),
) -> Result<(Tensor, Tensor)> {
    let w = weight.broadcast_mul(&scale.reshape(((), 1, 1, 1))?)?;
    let b = match bias {
        Some(b) => ((b * scale)? + shift)?,
        None => shift.clone(),
    };
    Ok((w, b))
}
