//! The kinds of work these tests register and the server does not know: `echo` (copies an
//! uploaded file in N progress steps), `train` (long work in the exclusive slot) and `wait`
//! (I/O-slot work that mostly waits).

use std::sync::Mutex;
use std::time::Duration;

use krya_server::ApiError;
use krya_server::tasks::{
    Outcome, Output, Prepared, ProgressMsg, Registry, RunContext, Services, Slot, Task,
};
use serde_json::{Value, json};

/// Jobs in the order the echo task started them (this process's runners only).
pub static STARTED: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EchoParams {
    /// The uploaded file to copy.
    asset: String,
    steps: u32,
    #[serde(default)]
    step_ms: u64,
    /// Times to answer "not done yet" before running.
    #[serde(default)]
    polls: u32,
    /// Fail for good instead of copying.
    #[serde(default)]
    fail: bool,
}

pub struct Echo;

#[async_trait::async_trait]
impl Task for Echo {
    fn kind(&self) -> &'static str {
        "echo"
    }

    async fn prepare(&self, _: &Services, _: &str, params: Value) -> Result<Prepared, ApiError> {
        let p: EchoParams = serde_json::from_value(params.clone()).map_err(|e| {
            ApiError::new(krya_server::ErrorCode::InvalidInput, format!("params: {e}"))
        })?;
        if !(1..=1000).contains(&p.steps) {
            return Err(ApiError::new(
                krya_server::ErrorCode::InvalidInput,
                "params.steps: must be from 1 to 1000",
            ));
        }
        Ok(Prepared {
            cost: 1 + p.steps as i64 / 100,
            inputs: vec![p.asset],
            params,
        })
    }

    async fn run(&self, ctx: RunContext) -> Outcome {
        let p: EchoParams = serde_json::from_value(ctx.job.params.clone()).unwrap();
        let polled = ctx
            .job
            .state
            .as_ref()
            .map_or(0, |s| s["polled"].as_u64().unwrap());
        if polled < p.polls as u64 {
            return Outcome::PollAt {
                at_ms: krya_server::jobs::now_ms() + 30,
                state: json!({"polled": polled + 1}),
            };
        }
        STARTED.lock().unwrap().push(ctx.job.id.clone());
        if p.fail {
            return Outcome::failed("invalid-input", "params.fail: asked to fail");
        }
        let bytes = match ctx.input(&p.asset).await {
            Ok(b) => b,
            Err(outcome) => return outcome,
        };
        let progress = ctx.progress();
        for step in 1..=p.steps as usize {
            if ctx.cancel.is_cancelled() {
                return Outcome::Cancelled;
            }
            tokio::time::sleep(Duration::from_millis(p.step_ms)).await;
            let _ = progress.send(ProgressMsg::step(step, p.steps as usize, None));
        }
        // Stored from a temporary file, as large outputs are (deleted once stored).
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &bytes).unwrap();
        Outcome::Done(vec![Output {
            kind: "image",
            mime: "image/png",
            ext: "png",
            body: krya_server::tasks::Body::File(file.into_temp_path()),
            thumbnail: None,
            tiles: None,
            width: None,
            height: None,
            duration_ms: None,
            parent_id: Some(p.asset),
            meta: json!({"attempt": ctx.job.attempt}),
        }])
    }
}

/// Long work in a slot of its own: runs until the test lets it end.
pub struct Long;

pub static LONG_MAY_END: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[async_trait::async_trait]
impl Task for Long {
    fn kind(&self) -> &'static str {
        "long"
    }

    fn slot(&self) -> Slot {
        Slot::Exclusive
    }

    async fn prepare(&self, _: &Services, _: &str, params: Value) -> Result<Prepared, ApiError> {
        Ok(Prepared {
            params,
            cost: 1,
            inputs: vec![],
        })
    }

    async fn run(&self, ctx: RunContext) -> Outcome {
        while !LONG_MAY_END.load(std::sync::atomic::Ordering::SeqCst) {
            if ctx.cancel.is_cancelled() {
                return Outcome::Cancelled;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Outcome::Done(vec![])
    }
}

/// Work that mostly waits (a remote provider): several run at once.
pub struct Wait;

/// When each `wait` job ran.
pub static WAITED: Mutex<Vec<(std::time::Instant, std::time::Instant)>> = Mutex::new(Vec::new());

#[async_trait::async_trait]
impl Task for Wait {
    fn kind(&self) -> &'static str {
        "wait"
    }

    fn slot(&self) -> Slot {
        Slot::Io
    }

    async fn prepare(&self, _: &Services, _: &str, params: Value) -> Result<Prepared, ApiError> {
        Ok(Prepared {
            params,
            cost: 0,
            inputs: vec![],
        })
    }

    async fn run(&self, _: RunContext) -> Outcome {
        let start = std::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(500)).await;
        WAITED
            .lock()
            .unwrap()
            .push((start, std::time::Instant::now()));
        Outcome::Done(vec![])
    }
}

pub fn tasks() -> Registry {
    krya_server::tasks::builtin()
        .with(Echo)
        .with(Long)
        .with(Wait)
}
