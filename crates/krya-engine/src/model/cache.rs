//! Loaded models kept for reuse, bounded by a memory budget: the least recently used model
//! is dropped when a new one would exceed it. A model larger than the whole budget is still
//! loaded (alone): refusing to run would help nobody.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::Result;
use crate::pipelines::stable_diffusion::StableDiffusion;

struct Entry {
    key: String,
    bytes: u64,
    model: Arc<StableDiffusion>,
}

pub struct ModelCache {
    budget: u64,
    /// Most recently used last.
    entries: Mutex<VecDeque<Entry>>,
    /// Serialises loads so two callers never load the same model twice at once.
    loading: Mutex<()>,
}

impl ModelCache {
    pub fn new(budget_bytes: u64) -> Self {
        Self {
            budget: budget_bytes,
            entries: Mutex::new(VecDeque::new()),
            loading: Mutex::new(()),
        }
    }

    /// The cached model for `key`, or the result of `load` (which returns the model and its
    /// size in bytes), evicting least recently used models to stay within the budget.
    pub fn get_or_load(
        &self,
        key: &str,
        load: impl FnOnce() -> Result<(StableDiffusion, u64)>,
    ) -> Result<Arc<StableDiffusion>> {
        if let Some(m) = self.touch(key) {
            return Ok(m);
        }
        let _guard = self.loading.lock().unwrap();
        if let Some(m) = self.touch(key) {
            return Ok(m);
        }
        let (model, bytes) = load()?;
        let model = Arc::new(model);
        let mut entries = self.entries.lock().unwrap();
        let mut used: u64 = entries.iter().map(|e| e.bytes).sum();
        while used + bytes > self.budget {
            match entries.pop_front() {
                Some(old) => used -= old.bytes,
                None => break,
            }
        }
        entries.push_back(Entry {
            key: key.to_string(),
            bytes,
            model: model.clone(),
        });
        Ok(model)
    }

    fn touch(&self, key: &str) -> Option<Arc<StableDiffusion>> {
        let mut entries = self.entries.lock().unwrap();
        let pos = entries.iter().position(|e| e.key == key)?;
        let e = entries.remove(pos).unwrap();
        let m = e.model.clone();
        entries.push_back(e);
        Some(m)
    }

    /// Keys of cached models, least recently used first.
    pub fn keys(&self) -> Vec<String> {
        self.entries
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.key.clone())
            .collect()
    }

    pub fn used_bytes(&self) -> u64 {
        self.entries.lock().unwrap().iter().map(|e| e.bytes).sum()
    }
}

/// Bytes a model's weights take in memory at `dtype`, from its components' parameter counts.
pub fn model_bytes(m: &StableDiffusion) -> u64 {
    m.parameter_count * m.dtype.size_in_bytes() as u64
}
