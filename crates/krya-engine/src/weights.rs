//! Where a component's tensors come from, and a check that every tensor of a file is used.
//!
//! candle's `VarBuilder` silently ignores tensors that no layer asks for, which hides
//! architecture mismatches (an SDXL UNet whose `add_embedding` is never loaded still
//! "works"). `Weights` records every name a model asks for; `check_all_used` then fails on
//! leftovers, so a config that does not describe its weights is an error, not a bad image.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use candle_nn::var_builder::SimpleBackend;

use crate::{EngineError, Result};

/// How a tensor the model asks for is made from a stored one.
#[derive(Clone, Debug)]
pub enum Source {
    /// The stored tensor as it is.
    Same(String),
    /// The stored tensor with trailing size-1 dims dropped (1×1 conv weights used as linear).
    Squeeze(String),
    /// Rows `start..start+len` along dim 0 (a fused qkv projection split in three).
    Rows {
        name: String,
        start: usize,
        len: usize,
    },
    /// The stored matrix transposed (OpenCLIP's `x @ P` projection as a linear weight).
    Transpose(String),
}

enum Store {
    /// Names used as they are stored.
    Direct(MmapedSafetensors),
    /// Model names mapped onto the stored ones (single-file checkpoints).
    Mapped {
        st: Arc<MmapedSafetensors>,
        map: HashMap<String, Source>,
    },
    /// Tensors in memory (tests, random weights).
    Memory(HashMap<String, Tensor>),
}

struct Tracked {
    store: Store,
    used: Mutex<HashSet<String>>,
    /// Elements of the tensors handed out (for memory accounting).
    elements: std::sync::atomic::AtomicU64,
}

impl Tracked {
    fn load(&self, name: &str, dev: &Device) -> candle_core::Result<Tensor> {
        let t = match &self.store {
            Store::Direct(st) => st.load(name, dev)?,
            Store::Memory(m) => m.get(name).cloned().ok_or_else(|| {
                candle_core::Error::CannotFindTensor {
                    path: name.to_string(),
                }
                .bt()
            })?,
            Store::Mapped { st, map } => {
                let src = map.get(name).ok_or_else(|| {
                    candle_core::Error::CannotFindTensor {
                        path: name.to_string(),
                    }
                    .bt()
                })?;
                match src {
                    Source::Same(n) => st.load(n, dev)?,
                    Source::Squeeze(n) => {
                        let t = st.load(n, dev)?;
                        let mut dims = t.dims().to_vec();
                        while dims.len() > 2 && dims.last() == Some(&1) {
                            dims.pop();
                        }
                        t.reshape(dims)?
                    }
                    Source::Rows { name, start, len } => {
                        st.load(name, dev)?.narrow(0, *start, *len)?.contiguous()?
                    }
                    Source::Transpose(n) => st.load(n, dev)?.t()?.contiguous()?,
                }
            }
        };
        if self.used.lock().unwrap().insert(name.to_string()) {
            self.elements
                .fetch_add(t.elem_count() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(t)
    }

    fn contains(&self, name: &str) -> bool {
        match &self.store {
            Store::Direct(st) => st.get(name).is_ok(),
            Store::Memory(m) => m.contains_key(name),
            Store::Mapped { map, .. } => map.contains_key(name),
        }
    }

    fn names(&self) -> Vec<String> {
        match &self.store {
            Store::Direct(st) => st.tensors().into_iter().map(|(n, _)| n).collect(),
            Store::Memory(m) => m.keys().cloned().collect(),
            Store::Mapped { map, .. } => map.keys().cloned().collect(),
        }
    }
}

struct Backend(Arc<Tracked>);

impl SimpleBackend for Backend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.0.load(name, dev)?.to_dtype(dtype)?;
        if t.shape() != &s {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: s,
                got: t.shape().clone(),
            }
            .bt());
        }
        Ok(t)
    }
    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.load(name, dev)?.to_dtype(dtype)
    }
    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains(name)
    }
}

/// The tensors of one model component, with a record of which were used.
#[derive(Clone)]
pub struct Weights {
    tracked: Arc<Tracked>,
    /// What to name in errors: the file or folder the tensors came from.
    pub origin: PathBuf,
}

impl Weights {
    /// Memory-maps one or more safetensors files.
    pub fn mmap(paths: &[PathBuf]) -> Result<Self> {
        let origin = paths.first().cloned().unwrap_or_default();
        // SAFETY: the files are opened read-only; a file changed under a running model is
        // outside what the engine promises, as with every mmap-based loader.
        let st = unsafe { MmapedSafetensors::multi(paths) }.map_err(|e| {
            EngineError::bad_model(&origin, format!("cannot read safetensors: {e}"))
        })?;
        Ok(Self::new(Store::Direct(st), origin))
    }

    /// Model names mapped onto tensors of a shared memory-mapped file.
    pub fn mapped(st: Arc<MmapedSafetensors>, map: HashMap<String, Source>, origin: &Path) -> Self {
        Self::new(Store::Mapped { st, map }, origin.to_path_buf())
    }

    pub fn from_tensors(tensors: HashMap<String, Tensor>, origin: &str) -> Self {
        Self::new(Store::Memory(tensors), PathBuf::from(origin))
    }

    fn new(store: Store, origin: PathBuf) -> Self {
        Self {
            tracked: Arc::new(Tracked {
                store,
                used: Mutex::new(HashSet::new()),
                elements: Default::default(),
            }),
            origin,
        }
    }

    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(
            Box::new(Backend(self.tracked.clone())),
            dtype,
            device.clone(),
        )
    }

    /// Parameters loaded so far.
    pub fn loaded_elements(&self) -> u64 {
        self.tracked
            .elements
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tracked.contains(name)
    }

    pub fn names(&self) -> Vec<String> {
        self.tracked.names()
    }

    /// Fails when a stored tensor was never asked for: the config does not describe the
    /// weights. Buffers that hold no learned values (`position_ids`) are allowed.
    pub fn check_all_used(&self) -> Result<()> {
        let used = self.tracked.used.lock().unwrap();
        let mut unused: Vec<String> = self
            .names()
            .into_iter()
            .filter(|n| !used.contains(n) && !n.ends_with("position_ids"))
            .collect();
        if unused.is_empty() {
            return Ok(());
        }
        unused.sort();
        let n = unused.len();
        unused.truncate(5);
        Err(EngineError::bad_model(
            &self.origin,
            format!(
                "{n} tensors are not used by the architecture its config describes (e.g. {})",
                unused.join(", ")
            ),
        ))
    }
}

/// Random weights as `candle_nn::VarMap` draws them (each layer's own initialisation), but
/// as plain tensors: a `VarMap`'s are `Var`s, which the kernels treat as part of a
/// gradient's graph (training) and hand to candle's slower ops. For speed measurements.
pub fn random_var_builder(dtype: DType, device: &Device) -> VarBuilder<'static> {
    struct Random;
    impl SimpleBackend for Random {
        fn get(
            &self,
            s: Shape,
            _: &str,
            init: candle_nn::Init,
            dtype: DType,
            dev: &Device,
        ) -> candle_core::Result<Tensor> {
            Ok(init.var(s, dtype, dev)?.as_detached_tensor())
        }
        fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
            Err(candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }
            .bt())
        }
        fn contains_tensor(&self, _: &str) -> bool {
            false
        }
    }
    VarBuilder::from_backend(Box::new(Random), dtype, device.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_weights_are_plain_tensors() {
        let vb = random_var_builder(DType::F32, &Device::Cpu);
        let l = candle_nn::linear(4, 3, vb.pp("x")).unwrap();
        assert!(!l.weight().track_op() && !l.weight().is_variable());
        let std = l
            .weight()
            .flatten_all()
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap();
        assert!(std.to_scalar::<f32>().unwrap() > 0.0, "drawn, not zeros");
    }
}
