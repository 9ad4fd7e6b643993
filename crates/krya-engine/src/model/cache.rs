//! Loaded models kept for reuse, of any kind (Stable Diffusion pipelines, tiny
//! autoencoders, and the upscalers, segmenters and captioners to come), under one memory
//! budget: the least recently used model is dropped when a new one would exceed it. A model
//! larger than the whole budget is still loaded (alone): refusing to run would help nobody.
//!
//! Loads are locked per key, not globally: a multi-GB download of one model never holds up
//! the load of another, and two callers asking for the same model at once load it once
//! (the second waits for the first and takes its result).

use std::any::{Any, TypeId};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::Result;
use crate::pipelines::stable_diffusion::StableDiffusion;

/// A cached model: the key the caller gave plus the model's type, so one source loaded as
/// two kinds of model (a folder's pipeline and its tiny autoencoder) are two entries.
type Key = (TypeId, String);

struct Entry {
    key: Key,
    bytes: u64,
    model: Arc<dyn Any + Send + Sync>,
}

pub struct ModelCache {
    budget: u64,
    /// Most recently used last.
    entries: Mutex<VecDeque<Entry>>,
    /// One lock per key being loaded; dropped from the map when its load ends.
    loading: Mutex<HashMap<Key, Arc<Mutex<()>>>>,
}

impl ModelCache {
    pub fn new(budget_bytes: u64) -> Self {
        Self {
            budget: budget_bytes,
            entries: Mutex::new(VecDeque::new()),
            loading: Mutex::new(HashMap::new()),
        }
    }

    /// The cached model of type `T` for `key`, or the result of `load` (which returns the
    /// model and its size in bytes), evicting least recently used models to stay within
    /// the budget.
    pub fn get_or_load<T: Any + Send + Sync>(
        &self,
        key: &str,
        load: impl FnOnce() -> Result<(T, u64)>,
    ) -> Result<Arc<T>> {
        let key: Key = (TypeId::of::<T>(), key.to_string());
        if let Some(m) = self.touch(&key) {
            return Ok(m);
        }
        let lock = self
            .loading
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .clone();
        let result = {
            let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
            // Loaded by the caller we waited for.
            match self.touch(&key) {
                Some(m) => Ok(m),
                None => load().map(|(model, bytes)| self.insert(key.clone(), model, bytes)),
            }
        };
        let mut loading = self.loading.lock().unwrap();
        // The last one out removes the lock (the map holds one reference, `lock` another).
        if loading.get(&key).is_some_and(|l| Arc::strong_count(l) == 2) {
            loading.remove(&key);
        }
        result
    }

    fn insert<T: Any + Send + Sync>(&self, key: Key, model: T, bytes: u64) -> Arc<T> {
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
            key,
            bytes,
            model: model.clone(),
        });
        model
    }

    fn touch<T: Any + Send + Sync>(&self, key: &Key) -> Option<Arc<T>> {
        let mut entries = self.entries.lock().unwrap();
        let pos = entries.iter().position(|e| &e.key == key)?;
        let e = entries.remove(pos).unwrap();
        let m = e.model.clone();
        entries.push_back(e);
        m.downcast().ok()
    }

    /// Keys of cached models, least recently used first.
    pub fn keys(&self) -> Vec<String> {
        self.entries
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.key.1.clone())
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    use super::ModelCache;

    #[test]
    fn loads_of_different_models_run_at_once() {
        let cache = Arc::new(ModelCache::new(1 << 20));
        // Each load waits until the other has started: with one global load lock this
        // would never finish.
        let both = Arc::new(Barrier::new(2));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        for key in ["a", "b"] {
            let (cache, both, done) = (cache.clone(), both.clone(), done_tx.clone());
            std::thread::spawn(move || {
                let m = cache.get_or_load(key, || {
                    both.wait();
                    Ok((key.to_string(), 10))
                });
                done.send(m.map(|m| (*m).clone())).unwrap();
            });
        }
        let mut got: Vec<String> = (0..2)
            .map(|_| {
                done_rx
                    .recv_timeout(Duration::from_secs(10))
                    .expect("the two loads waited for each other")
                    .unwrap()
            })
            .collect();
        got.sort();
        assert_eq!(got, ["a", "b"]);
        assert_eq!(cache.used_bytes(), 20);
    }

    #[test]
    fn the_same_model_loads_once() {
        let cache = Arc::new(ModelCache::new(1 << 20));
        let loads = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (cache, loads) = (cache.clone(), loads.clone());
                std::thread::spawn(move || {
                    cache
                        .get_or_load("m", || {
                            loads.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(100));
                            Ok((7u32, 4))
                        })
                        .unwrap()
                })
            })
            .collect();
        let models: Vec<Arc<u32>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert!(models.iter().all(|m| Arc::ptr_eq(m, &models[0])));
        // Another type under the same key is another model.
        let s = cache
            .get_or_load("m", || Ok(("text".to_string(), 4)))
            .unwrap();
        assert_eq!(*s, "text");
        assert_eq!(cache.keys(), ["m", "m"]);
        // A failed load caches nothing and the next caller tries again.
        assert!(
            cache
                .get_or_load::<u64>("bad", || Err(crate::invalid!("no")))
                .is_err()
        );
        assert_eq!(*cache.get_or_load("bad", || Ok((3u64, 1))).unwrap(), 3);
        assert!(cache.loading.lock().unwrap().is_empty());
    }

    #[test]
    fn least_recently_used_models_go_first() {
        let cache = ModelCache::new(25);
        cache.get_or_load("a", || Ok((1u8, 10))).unwrap();
        cache.get_or_load("b", || Ok((2u8, 10))).unwrap();
        cache.get_or_load("a", || Ok((9u8, 10))).unwrap();
        cache.get_or_load("c", || Ok((3u8, 10))).unwrap();
        assert_eq!(cache.keys(), ["a", "c"]);
        assert_eq!(cache.used_bytes(), 20);
    }
}
