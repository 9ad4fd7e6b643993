//! The live canvas (seed §6.2): `GET /ws/realtime`, where a client streams its canvas and
//! parameters and gets rendered frames back as fast as the engine makes them.
//!
//! Layout: `protocol` is the wire format. A `Hub` holds the open sessions and runs the
//! render threads (`realtime.workers`). Each session keeps only its **latest** input: an
//! input that arrives while a frame renders replaces the one waiting, so a stale input is
//! never rendered, and an input identical to the last rendered one is not rendered again.
//! Render threads take sessions with waiting input in turn (round-robin), so one busy
//! canvas cannot starve the others. `connection` runs one WebSocket connection over any
//! `Stream`/`Sink` of messages (tests drive it with a real socket); `input` checks and
//! applies what a message carries; `capture` saves a frame to the gallery.

pub mod capture;
mod connection;
mod input;
mod meter;
pub use krya_core::protocol;

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use futures_util::{Sink, SinkExt, Stream, StreamExt};

use krya_engine::model::ModelSource;
use krya_engine::model::cache::ModelCache;
use krya_engine::pipelines::stable_diffusion::stream::{
    FrameRequest, MAX_STEPS, Stream as EngineStream,
};
use krya_engine::{CancelToken, EngineError, model};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::infra::config::Realtime as RealtimeConfig;
use crate::persistence::registry::ModelEntry;
use crate::tasks::lora::{self, LoraRef};
use crate::{AppState, http::auth, persistence::registry};
pub use connection::{serve_session, ws};
use input::*;
pub use krya_core::protocol::{check_canvas_header, decode_canvas, encode_jpeg};
pub use meter::ACTION as METER_ACTION;
use protocol::{ClientMessage, Params, ProtocolError, Status, StatusData};

/// WebSocket close code for a connection without a valid session or token.
pub const CLOSE_UNAUTHORIZED: u16 = 4401;
/// Close code when a user already has `realtime.sessions_per_user` canvases open.
pub const CLOSE_TOO_MANY: u16 = 4429;
/// Close code when the user's credits ran out (`realtime.credits_per_minute`).
pub const CLOSE_NO_CREDITS: u16 = 4402;

/// What a session renders: its parameters, resolved to values.
#[derive(Debug, Clone, PartialEq)]
struct Settings {
    prompt: String,
    strength: f64,
    seed: u64,
    model: Option<String>,
    size: Option<(u32, u32)>,
    steps: usize,
    /// The session's `loras` (its prompt's tags are added when it renders).
    loras: Vec<LoraRef>,
}

/// A canvas as received: its bytes (decoded only if it is rendered) and their hash.
#[derive(Clone)]
struct Canvas {
    bytes: Arc<Vec<u8>>,
    hash: u64,
}

/// One input to render.
#[derive(Clone)]
struct Job {
    settings: Settings,
    canvas: Option<Canvas>,
    input_frame_id: Option<u64>,
    received: Instant,
}

impl Job {
    fn key(&self) -> (Settings, Option<u64>) {
        (self.settings.clone(), self.canvas.as_ref().map(|c| c.hash))
    }
}

#[derive(Default)]
struct SessionState {
    settings: Option<Settings>,
    canvas: Option<Canvas>,
    /// The latest input not yet rendered.
    pending: Option<Job>,
    /// What was last taken for rendering (an identical input is not rendered again).
    last_key: Option<(Settings, Option<u64>)>,
    rendering: bool,
    /// A loader thread is opening a model for this session (it is skipped meanwhile).
    loading: bool,
    /// Inputs replaced before they were rendered.
    dropped: u64,
    /// When recent frames were made (for fps).
    sent: VecDeque<Instant>,
    last_latency: Option<f64>,
    last_status: Option<(Status, Instant)>,
    /// Said in every status while the session's stream is open (no TAESD: slower frames).
    notice: Option<String>,
}

/// One open canvas.
pub struct Session {
    user_id: String,
    state: Mutex<SessionState>,
    /// Statuses and errors for the connection's writer. Bounded: a client that stops
    /// reading is disconnected rather than buffered without end.
    control: mpsc::Sender<Vec<u8>>,
    /// The newest frame not yet written: a newer frame replaces it, so a slow client
    /// gets the latest picture, never a backlog.
    frame: Mutex<Option<Vec<u8>>>,
    frame_ready: tokio::sync::Notify,
    /// Becomes true when the connection must end (either side, or the server).
    ending: tokio::sync::watch::Sender<bool>,
    /// The close code the connection ends with: the first reason given wins.
    close_code: std::sync::atomic::AtomicU16,
    next_frame: AtomicU64,
    /// Time spent rendering this session's frames, in microseconds (what it is charged for).
    rendered_us: AtomicU64,
    /// The engine stream (model, TAESD, cached prompt); render and loader threads only.
    stream: Mutex<Option<EngineStream>>,
    stream_loras: Mutex<Vec<LoraRef>>,
    /// The user's own trained LoRAs (`lora::own_entries`), read when the canvas opens.
    pub(crate) own_loras: Mutex<Vec<crate::persistence::registry::ModelEntry>>,
}

impl Session {
    fn new(user_id: String) -> (Arc<Session>, mpsc::Receiver<Vec<u8>>) {
        let (control, rx) = mpsc::channel(256);
        let session = Arc::new(Session {
            user_id,
            state: Mutex::default(),
            control,
            frame: Mutex::new(None),
            frame_ready: tokio::sync::Notify::new(),
            ending: tokio::sync::watch::channel(false).0,
            close_code: std::sync::atomic::AtomicU16::new(1000),
            next_frame: AtomicU64::new(1),
            rendered_us: AtomicU64::new(0),
            stream: Mutex::new(None),
            stream_loras: Mutex::new(Vec::new()),
            own_loras: Mutex::new(Vec::new()),
        });
        (session, rx)
    }

    fn send(&self, bytes: Vec<u8>) {
        if self.control.try_send(bytes).is_err() {
            // Hundreds of messages unread: the client is gone or not reading.
            self.end_with(1008);
        }
    }

    fn send_error(&self, e: &ProtocolError) {
        self.send(protocol::error(e));
    }

    fn send_frame(&self, bytes: Vec<u8>) {
        *self.frame.lock().unwrap() = Some(bytes);
        self.frame_ready.notify_one();
    }

    fn end(&self) {
        self.end_with(1000);
    }

    /// Ends the connection with `code` (unless another reason came first).
    fn end_with(&self, code: u16) {
        let _ = self
            .close_code
            .compare_exchange(1000, code, Ordering::SeqCst, Ordering::SeqCst);
        self.ending.send_replace(true);
    }

    /// The engine stream, even if a render thread panicked while holding it.
    /// The LoRAs merged into the open stream's model. Written with the stream, under its
    /// lock, and read under it.
    fn stream_loras(&self) -> std::sync::MutexGuard<'_, Vec<LoraRef>> {
        self.stream_loras.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stream(&self) -> std::sync::MutexGuard<'_, Option<EngineStream>> {
        self.stream.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Sessions {
    list: Vec<Arc<Session>>,
    /// Where the next round-robin scan starts.
    next: usize,
    stopping: bool,
}

/// The open sessions and the threads rendering for them.
pub struct Hub {
    config: RealtimeConfig,
    data_dir: std::path::PathBuf,
    local_models: std::collections::BTreeMap<String, String>,
    cache: Arc<ModelCache>,
    sessions: Mutex<Sessions>,
    work: Condvar,
    /// Frames rendered (all sessions), for tests and metrics.
    pub frames_rendered: AtomicU64,
    /// Per user, the hashes of the latest frames sent: a capture must be one of them.
    recent: Mutex<std::collections::HashMap<String, std::collections::VecDeque<[u8; 32]>>>,
}

/// Frames per user a capture may be made of.
const RECENT_FRAMES: usize = 64;

fn frame_hash(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

pub type Realtime = Arc<Hub>;

/// What a render turn produced.
enum Rendered {
    Frame(Vec<u8>),
    /// The session's model is being opened on a loader thread; the job waits for it.
    Loading,
}

impl Hub {
    fn remember(&self, user_id: &str, frame: &[u8]) {
        let mut recent = self.recent.lock().unwrap();
        let list = recent.entry(user_id.to_string()).or_default();
        list.push_back(frame_hash(frame));
        while list.len() > RECENT_FRAMES {
            list.pop_front();
        }
    }

    /// Whether `bytes` are one of the latest frames this server sent the user.
    pub fn rendered_for(&self, user_id: &str, bytes: &[u8]) -> bool {
        let h = frame_hash(bytes);
        self.recent
            .lock()
            .unwrap()
            .get(user_id)
            .is_some_and(|l| l.contains(&h))
    }

    pub fn new(
        config: RealtimeConfig,
        data_dir: std::path::PathBuf,
        local_models: std::collections::BTreeMap<String, String>,
        cache: Arc<ModelCache>,
    ) -> Realtime {
        Arc::new(Hub {
            config,
            data_dir,
            local_models,
            cache,
            sessions: Mutex::new(Sessions {
                list: Vec::new(),
                next: 0,
                stopping: false,
            }),
            work: Condvar::new(),
            frames_rendered: AtomicU64::new(0),
            recent: Default::default(),
        })
    }

    /// Starts the render threads; they end after `stop`.
    pub fn start(self: &Arc<Self>) -> Vec<std::thread::JoinHandle<()>> {
        (0..self.config.workers.max(1))
            .map(|i| {
                let hub = self.clone();
                std::thread::Builder::new()
                    .name(format!("krya-realtime-{i}"))
                    .spawn(move || hub.render_loop())
                    .expect("spawn a render thread")
            })
            .collect()
    }

    /// Ends the render threads (after the frame in hand) and every open session.
    pub fn stop(&self) {
        let mut all = self.sessions.lock().unwrap();
        all.stopping = true;
        for s in &all.list {
            s.end_with(1001);
        }
        drop(all);
        self.work.notify_all();
    }

    /// Wakes a render thread. The sessions lock is taken first: a thread between its scan
    /// and its wait holds it, so the wake-up cannot fall in that gap and be lost.
    fn wake(&self) {
        drop(self.sessions.lock().unwrap());
        self.work.notify_one();
    }

    fn register(&self, s: &Arc<Session>) -> bool {
        let mut all = self.sessions.lock().unwrap();
        let open = all.list.iter().filter(|x| x.user_id == s.user_id).count();
        if open >= self.config.sessions_per_user || all.stopping {
            return false;
        }
        all.list.push(s.clone());
        true
    }

    fn unregister(&self, s: &Arc<Session>) {
        s.end();
        let mut all = self.sessions.lock().unwrap();
        all.list.retain(|x| !Arc::ptr_eq(x, s));
    }

    /// Sessions that want a frame now: rendering or with input waiting. More of them than
    /// render threads means each gets only a share (the saturation flag).
    fn demand(&self) -> usize {
        let all = self.sessions.lock().unwrap();
        all.list
            .iter()
            .filter(|s| {
                let st = s.state.lock().unwrap();
                st.rendering || st.pending.is_some()
            })
            .count()
    }

    /// Takes the next session with waiting input, in turn; blocks until there is one.
    fn next_job(&self) -> Option<(Arc<Session>, Job)> {
        let mut all = self.sessions.lock().unwrap();
        loop {
            if all.stopping {
                return None;
            }
            let n = all.list.len();
            for k in 0..n {
                let i = (all.next + k) % n;
                let s = all.list[i].clone();
                let mut st = s.state.lock().unwrap();
                if st.rendering || st.loading {
                    continue;
                }
                if let Some(job) = st.pending.take() {
                    st.rendering = true;
                    st.last_key = Some(job.key());
                    drop(st);
                    all.next = (i + 1) % n;
                    return Some((s, job));
                }
            }
            all = self.work.wait(all).unwrap();
        }
    }

    fn render_loop(self: Arc<Self>) {
        while let Some((session, job)) = self.next_job() {
            self.announce(&session, Status::Generating, None);
            // A panic in a render (a bug, an engine failure) costs this frame, not the
            // thread: every session would otherwise lose its renderer.
            let started = Instant::now();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.render(&session, &job)
            }))
            .unwrap_or_else(|_| {
                *session.stream() = None;
                Err(ProtocolError::new(
                    "internal",
                    "rendering this frame failed; the next input starts afresh",
                ))
            });
            let more = {
                let mut st = session.state.lock().unwrap();
                st.rendering = false;
                // A failed input may be sent again (a download can succeed later).
                if result.is_err() {
                    st.last_key = None;
                }
                st.pending.is_some()
            };
            match result {
                Ok(Rendered::Frame(jpeg)) => {
                    self.frames_rendered.fetch_add(1, Ordering::SeqCst);
                    session
                        .rendered_us
                        .fetch_add(started.elapsed().as_micros() as u64, Ordering::SeqCst);
                    self.remember(&session.user_id, &jpeg);
                    let latency = job.received.elapsed().as_secs_f64() * 1000.0;
                    let id = session.next_frame.fetch_add(1, Ordering::SeqCst);
                    session.send_frame(protocol::frame(&jpeg, id, job.input_frame_id, latency));
                    let mut st = session.state.lock().unwrap();
                    let now = Instant::now();
                    st.sent.push_back(now);
                    while st
                        .sent
                        .front()
                        .is_some_and(|t| now - *t > Duration::from_secs(1))
                    {
                        st.sent.pop_front();
                    }
                    st.last_latency = Some(latency);
                }
                Ok(Rendered::Loading) => continue,
                Err(e) => {
                    session.send_error(&e);
                    self.announce(&session, Status::Error, Some(e.message.clone()));
                }
            }
            if !more {
                self.announce(&session, Status::Ready, None);
            } else {
                // Streaming without pause: a status a second keeps fps visible.
                let stale = session
                    .state
                    .lock()
                    .unwrap()
                    .last_status
                    .is_none_or(|(_, t)| t.elapsed() > Duration::from_secs(1));
                if stale {
                    self.announce(&session, Status::Generating, None);
                }
            }
        }
    }

    /// Sends a status when it changes (or `detail` says something new).
    fn announce(&self, s: &Session, status: Status, detail: Option<String>) {
        let saturated = self.demand() > self.config.workers.max(1);
        let data = {
            let mut st = s.state.lock().unwrap();
            if detail.is_none()
                && st
                    .last_status
                    .is_some_and(|(last, t)| last == status && t.elapsed() < Duration::from_secs(1))
            {
                return;
            }
            st.last_status = Some((status, Instant::now()));
            StatusData {
                status,
                fps: st.sent.len() as f64,
                latency_ms: st.last_latency,
                saturated,
                detail: detail.or_else(|| st.notice.clone()),
            }
        };
        s.send(protocol::status(&data));
    }

    fn model_entry(&self, id: Option<&str>) -> Result<ModelEntry, ProtocolError> {
        let models = registry::list(&self.data_dir, &self.local_models)
            .map_err(|e| ProtocolError::new("internal", e))?;
        let entry = match id {
            Some(id) => models.into_iter().find(|m| m.id == id).ok_or_else(|| {
                ProtocolError::new(
                    "invalid-input",
                    format!("model: no model {id:?} (see GET /api/models)"),
                )
            })?,
            // The first installed distilled model, else the first installed one.
            None => {
                let mut installed: Vec<_> = models
                    .into_iter()
                    .filter(|m| {
                        m.installed
                            && m.capabilities
                                .contains(&crate::persistence::registry::Capability::Txt2img)
                    })
                    .collect();
                installed.sort_by_key(|m| !m.fast);
                installed.into_iter().next().ok_or_else(|| {
                    ProtocolError::new(
                        "model-unavailable",
                        "model: no model is installed; name one (see GET /api/models)",
                    )
                })?
            }
        };
        Ok(entry)
    }

    /// Opens an engine stream for a model: the model (downloaded if need be) and its TAESD,
    /// else (none cached and the hub unreachable) the model's own VAE, with a notice
    /// saying so.
    fn open_stream(
        &self,
        model_id: Option<&str>,
        loras: &[LoraRef],
        own: &[crate::persistence::registry::ModelEntry],
    ) -> Result<(EngineStream, Option<String>), ProtocolError> {
        let entry = self.model_entry(model_id)?;
        let unavailable = |e: EngineError| match e {
            EngineError::InvalidInput(m) => ProtocolError::new("invalid-input", m),
            e => ProtocolError::new("model-unavailable", format!("model {}: {e}", entry.id)),
        };
        if !loras.is_empty() {
            let mut models = registry::list(&self.data_dir, &self.local_models)
                .map_err(|e| ProtocolError::new("internal", e))?;
            models.extend_from_slice(own);
            let ids: Vec<lora::LoraRef> = loras.to_vec();
            lora::check(&models, &entry, "", &ids)
                .map_err(|e| ProtocolError::new("invalid-input", e.message))?;
        }
        let m = crate::tasks::image::load_model(&entry, &self.cache).map_err(unavailable)?;
        let m = lora::with_loras(
            m,
            &entry,
            loras,
            own,
            &self.cache,
            &self.data_dir,
            &self.local_models,
            "",
        )
        .map_err(unavailable)?;
        let source = ModelSource::parse(&entry.source).map_err(unavailable)?;
        let tiny_source = model::tiny_vae_source(&source, &m);
        let (tiny, notice) = match crate::tasks::image::tiny_vae(&self.cache, &tiny_source) {
            Ok(t) => (Some(t), None),
            // The model's own `taesd/` is broken: that is the model's fault, say it.
            Err(e) if matches!(tiny_source, ModelSource::Folder(_)) => return Err(unavailable(e)),
            Err(e) => (
                None,
                Some(format!(
                    "no tiny autoencoder (TAESD) for {} ({e}): frames use the model's own VAE, which is slower",
                    entry.id
                )),
            ),
        };
        let stream = EngineStream::new(m, tiny).map_err(unavailable)?;
        Ok((stream, notice))
    }

    /// Opens the session's model on a thread of its own, so a load (or a download) never
    /// holds up the render threads and the other sessions. `job` waits for it (unless newer
    /// input replaces it meanwhile); it is queued again before the loader starts, so a
    /// loader that fails at once cannot be overtaken by the re-queueing.
    fn start_loading(self: &Arc<Self>, session: &Arc<Session>, job: &Job, loras: Vec<LoraRef>) {
        let model_id = job.settings.model.clone();
        {
            let mut st = session.state.lock().unwrap();
            st.last_key = None;
            if st.pending.is_none() {
                st.pending = Some(job.clone());
            }
            if st.loading {
                return;
            }
            st.loading = true;
        }
        let what = model_id
            .clone()
            .unwrap_or_else(|| "the default model".into());
        self.announce(session, Status::Generating, Some(format!("loading {what}")));
        let (hub, s) = (self.clone(), session.clone());
        std::thread::spawn(move || {
            let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let own = s
                    .own_loras
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                hub.open_stream(model_id.as_deref(), &loras, &own)
            }))
            .unwrap_or_else(|_| Err(ProtocolError::new("internal", "loading the model failed")));
            let (failed, notice) = match opened {
                Ok((stream, notice)) => {
                    let mut guard = s.stream();
                    *s.stream_loras() = loras;
                    *guard = Some(stream);
                    (None, notice)
                }
                Err(e) => (Some(e), None),
            };
            {
                let mut st = s.state.lock().unwrap();
                st.loading = false;
                st.notice = notice.clone();
                if failed.is_some() {
                    // Not retried by itself: the user changes something, or sends again.
                    st.pending = None;
                    st.last_key = None;
                }
            }
            if let Some(e) = failed {
                s.send_error(&e);
                hub.announce(&s, Status::Error, Some(e.message.clone()));
            } else if notice.is_some() {
                // Said before the first frame; later statuses repeat it.
                hub.announce(&s, Status::Generating, notice);
            }
            hub.wake();
        });
    }

    /// Renders one job to JPEG bytes (or starts opening its model).
    fn render(
        self: &Arc<Self>,
        session: &Arc<Session>,
        job: &Job,
    ) -> Result<Rendered, ProtocolError> {
        // The prompt's `<lora:…>` tags are LoRAs too.
        let (prompt, loras) = lora::split(&job.settings.prompt, &job.settings.loras)
            .map_err(|e| ProtocolError::new("invalid-input", format!("prompt: {e}")))?;
        let loras: Vec<LoraRef> = loras.into_iter().map(|(l, _)| l).collect();
        let mut guard = session.stream();
        // The same model and LoRAs as the last frame: no look-up (this runs every frame).
        let ready = guard.as_ref().is_some_and(|s| {
            job.settings
                .model
                .as_deref()
                .is_none_or(|id| s.model().name == id)
        }) && *session.stream_loras() == loras;
        if !ready {
            drop(guard);
            self.start_loading(session, job, loras);
            return Ok(Rendered::Loading);
        }
        let stream = guard.as_mut().unwrap();
        let canvas = match &job.canvas {
            Some(c) => Some(Arc::new(decode_canvas(
                &c.bytes,
                self.config.max_frame_pixels,
            )?)),
            None => None,
        };
        let m = stream.model();
        let f = m.vae_scale_factor() as u32;
        let (w, h) = match (job.settings.size, &canvas) {
            (Some(s), _) => s,
            // The canvas's size, down to what the model can make and at most 2048 a side.
            (None, Some(c)) => {
                let side = |v: u32| (v.min(MAX_SIDE) / f * f).max(f);
                (side(c.width()), side(c.height()))
            }
            (None, None) => (m.defaults.width as u32, m.defaults.height as u32),
        };
        if w % f != 0 || h % f != 0 {
            return Err(ProtocolError::new(
                "invalid-input",
                format!("width, height: must be multiples of {f} for this model (got {w}x{h})"),
            ));
        }
        let frame = FrameRequest {
            prompt,
            seed: job.settings.seed,
            strength: job.settings.strength,
            steps: job.settings.steps,
            width: w as usize,
            height: h as usize,
            canvas,
        };
        let img = stream
            .render(&frame, &CancelToken::new())
            .map_err(|e| match e {
                EngineError::InvalidInput(m) => ProtocolError::new("invalid-input", m),
                e => ProtocolError::new("internal", format!("rendering failed: {e}")),
            })?;
        Ok(Rendered::Frame(encode_jpeg(
            &img,
            self.config.jpeg_quality,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> Realtime {
        Hub::new(
            crate::Config::default().realtime,
            std::env::temp_dir(),
            Default::default(),
            Arc::new(ModelCache::new(0)),
        )
    }

    type Out = mpsc::Receiver<Vec<u8>>;

    fn new_session(user: &str) -> (Arc<Session>, Out) {
        Session::new(user.into())
    }

    fn session(hub: &Hub, user: &str) -> (Arc<Session>, Out) {
        let (s, rx) = new_session(user);
        assert!(hub.register(&s));
        (s, rx)
    }

    fn prompt(p: &str) -> Vec<u8> {
        rmp_serde::to_vec_named(
            &serde_json::json!({"type": "update_params", "data": {"prompt": p}}),
        )
        .unwrap()
    }

    /// What `render_loop` does when a frame is done.
    fn done(s: &Session) {
        s.state.lock().unwrap().rendering = false;
    }

    #[test]
    fn a_slow_reader_gets_the_newest_frame() {
        let (s, _rx) = new_session("u");
        s.send_frame(vec![1]);
        s.send_frame(vec![2]);
        assert_eq!(s.frame.lock().unwrap().take(), Some(vec![2]));
        // And a client that reads nothing is let go instead of buffered.
        for _ in 0..300 {
            s.send(vec![0; 8]);
        }
        assert!(*s.ending.borrow(), "an unread session was kept");
    }

    #[test]
    fn sessions_take_turns_and_the_latest_input_wins() {
        let hub = hub();
        let (a, _ra) = session(&hub, "u1");
        let (b, _rb) = session(&hub, "u2");
        let (c, mut rc) = session(&hub, "u3");
        for s in [&a, &b, &c] {
            handle(&hub, s, &prompt("first")).unwrap();
        }
        // Three inputs to A while it waits: only the newest is rendered.
        handle(&hub, &a, &prompt("second")).unwrap();
        handle(&hub, &a, &prompt("third")).unwrap();
        assert_eq!(a.state.lock().unwrap().dropped, 2);
        let (s1, j1) = hub.next_job().unwrap();
        assert!(Arc::ptr_eq(&s1, &a));
        assert_eq!(j1.settings.prompt, "third");
        // While A renders, A is not taken again; B and C are, in turn.
        handle(&hub, &a, &prompt("fourth")).unwrap();
        let (s2, _) = hub.next_job().unwrap();
        assert!(Arc::ptr_eq(&s2, &b));
        done(&a);
        done(&b);
        // A has new input again, but C has waited longer: C first, then A.
        let (s3, _) = hub.next_job().unwrap();
        assert!(Arc::ptr_eq(&s3, &c));
        let (s4, j4) = hub.next_job().unwrap();
        assert!(Arc::ptr_eq(&s4, &a));
        assert_eq!(j4.settings.prompt, "fourth");
        done(&a);
        done(&c);
        // Saturation: with one render thread, a second session wanting frames is told.
        handle(&hub, &b, &prompt("b again")).unwrap();
        let (s5, _) = hub.next_job().unwrap();
        assert!(Arc::ptr_eq(&s5, &a) || Arc::ptr_eq(&s5, &b));
        handle(&hub, &c, &prompt("c again")).unwrap();
        while rc.try_recv().is_ok() {}
        hub.announce(&c, Status::Ready, Some("check".into()));
        let status: serde_json::Value = rmp_serde::from_slice(&rc.try_recv().unwrap()).unwrap();
        assert_eq!(status["data"]["saturated"], true, "{status}");
        done(&s5);
        // The same input again is not queued; a change is.
        handle(&hub, &a, &prompt("fourth")).unwrap();
        assert!(
            a.state.lock().unwrap().pending.is_none(),
            "an unchanged input was queued"
        );
        handle(&hub, &a, &prompt("fifth")).unwrap();
        assert!(a.state.lock().unwrap().pending.is_some());
        // Sessions per user are limited.
        let limit = crate::Config::default().realtime.sessions_per_user;
        let extra: Vec<_> = (0..limit - 1).map(|_| session(&hub, "u1")).collect();
        let (over, _rx) = new_session("u1");
        assert!(!hub.register(&over), "{} sessions allowed", extra.len() + 2);
        hub.unregister(&a);
        assert!(hub.register(&over), "a closed session frees its place");
    }
}
