//! A cancel token shared between the caller (CLI, server job) and a running pipeline,
//! checked between denoising steps.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    /// `Err(Cancelled)` once cancelled: the pipeline calls it at every step.
    pub fn check(&self) -> crate::Result<()> {
        if self.is_cancelled() {
            Err(crate::EngineError::Cancelled)
        } else {
            Ok(())
        }
    }
}
