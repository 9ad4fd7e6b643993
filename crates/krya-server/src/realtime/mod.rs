//! The live canvas (seed §6.2): `GET /ws/realtime`, where a client streams its canvas and
//! parameters and gets rendered frames back as fast as the engine makes them.
//!
//! Layout: `protocol` is the wire format. A `Hub` holds the open sessions and runs the
//! render threads (`realtime.workers`). Each session keeps only its **latest** input: an
//! input that arrives while a frame renders replaces the one waiting, so a stale input is
//! never rendered, and an input identical to the last rendered one is not rendered again.
//! Render threads take sessions with waiting input in turn (round-robin), so one busy
//! canvas cannot starve the others. `serve_session` runs one connection over any
//! `Stream`/`Sink` of WebSocket messages (tests drive it with a real socket).

pub mod capture;
pub mod protocol;

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use image::RgbImage;
use krya_engine::model::ModelSource;
use krya_engine::model::cache::ModelCache;
use krya_engine::pipelines::stable_diffusion::vae_tiny::AutoencoderTiny;
use krya_engine::realtime::{FrameRequest, MAX_STEPS, Stream as EngineStream};
use krya_engine::{CancelToken, EngineError, device, model};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::config::Realtime as RealtimeConfig;
use crate::registry::ModelEntry;
use crate::{AppState, auth, media, registry};
use protocol::{ClientMessage, Params, ProtocolError, Status, StatusData};

/// WebSocket close code for a connection without a valid session or token.
pub const CLOSE_UNAUTHORIZED: u16 = 4401;
/// Close code when a user already has `realtime.sessions_per_user` canvases open.
pub const CLOSE_TOO_MANY: u16 = 4429;

/// What a session renders: its parameters, resolved to values.
#[derive(Debug, Clone, PartialEq)]
struct Settings {
    prompt: String,
    strength: f64,
    seed: u64,
    model: Option<String>,
    size: Option<(u32, u32)>,
    steps: usize,
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
    /// Inputs replaced before they were rendered.
    dropped: u64,
    /// When recent frames were sent (for fps).
    sent: VecDeque<Instant>,
    last_latency: Option<f64>,
    last_status: Option<(Status, Instant)>,
}

/// One open canvas.
pub struct Session {
    user_id: String,
    state: Mutex<SessionState>,
    /// Encoded messages for the connection's writer, and whether each is a frame.
    out: mpsc::UnboundedSender<(Vec<u8>, bool)>,
    /// Frames handed to the writer and not yet written: beyond two, new frames are skipped
    /// rather than queued behind a slow client.
    in_flight: Arc<AtomicUsize>,
    next_frame: AtomicU64,
    closed: AtomicBool,
    /// The engine stream (model, TAESD, cached prompt); only render threads touch it.
    stream: Mutex<Option<EngineStream>>,
}

impl Session {
    fn send(&self, bytes: Vec<u8>) {
        let _ = self.out.send((bytes, false));
    }

    /// Hands a frame to the writer unless two are still unwritten (a slow client gets the
    /// newest frames, not a backlog); false when skipped.
    fn send_frame(&self, bytes: Vec<u8>) -> bool {
        if self.in_flight.load(Ordering::SeqCst) >= 2 {
            return false;
        }
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let _ = self.out.send((bytes, true));
        true
    }

    fn send_error(&self, e: &ProtocolError) {
        self.send(protocol::error(e));
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
    /// Tiny autoencoders by source, shared by every session of a model family.
    tiny: Mutex<HashMap<String, Arc<AutoencoderTiny>>>,
    sessions: Mutex<Sessions>,
    work: Condvar,
    /// Frames rendered (all sessions), for tests and metrics.
    pub frames_rendered: AtomicU64,
}

pub type Realtime = Arc<Hub>;

impl Hub {
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
            tiny: Default::default(),
            sessions: Mutex::new(Sessions {
                list: Vec::new(),
                next: 0,
                stopping: false,
            }),
            work: Condvar::new(),
            frames_rendered: AtomicU64::new(0),
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

    pub fn stop(&self) {
        self.sessions.lock().unwrap().stopping = true;
        self.work.notify_all();
    }

    fn register(&self, s: &Arc<Session>) -> bool {
        let mut all = self.sessions.lock().unwrap();
        let open = all.list.iter().filter(|x| x.user_id == s.user_id).count();
        if open >= self.config.sessions_per_user {
            return false;
        }
        all.list.push(s.clone());
        true
    }

    fn unregister(&self, s: &Arc<Session>) {
        s.closed.store(true, Ordering::SeqCst);
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
                if st.rendering {
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
            let result = self.render(&session, &job);
            let more = {
                let mut st = session.state.lock().unwrap();
                st.rendering = false;
                st.pending.is_some()
            };
            match result {
                Ok(jpeg) => {
                    self.frames_rendered.fetch_add(1, Ordering::SeqCst);
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
            if more {
                self.work.notify_one();
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
                detail,
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
                let mut installed: Vec<_> = models.into_iter().filter(|m| m.installed).collect();
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

    /// The session's engine stream for `model`, loading the model and its TAESD if needed.
    fn stream_for<'a>(
        &self,
        session: &Session,
        guard: &'a mut Option<EngineStream>,
        model_id: Option<&str>,
    ) -> Result<&'a mut EngineStream, ProtocolError> {
        // The same model as the last frame: no look-up (this runs every frame).
        if guard
            .as_ref()
            .is_some_and(|s| model_id.is_none_or(|id| s.model().name == id))
        {
            return Ok(guard.as_mut().unwrap());
        }
        let entry = self.model_entry(model_id)?;
        self.announce(
            session,
            Status::Generating,
            Some(format!("loading {}", entry.id)),
        );
        let unavailable = |e: EngineError| match e {
            EngineError::InvalidInput(m) => ProtocolError::new("invalid-input", m),
            e => ProtocolError::new("model-unavailable", format!("model {}: {e}", entry.id)),
        };
        let m = crate::worker::load_model(&entry, &self.cache).map_err(unavailable)?;
        let source = ModelSource::parse(&entry.source).map_err(unavailable)?;
        let tiny_source = model::tiny_vae_source(&source, &m);
        let key = format!("{tiny_source:?}");
        let cached = self.tiny.lock().unwrap().get(&key).cloned();
        let tiny = match cached {
            Some(t) => t,
            None => {
                let dev = device::best_device().map_err(unavailable)?;
                let t = Arc::new(
                    model::load_tiny_vae(&tiny_source, &dev, device::default_dtype(&dev))
                        .map_err(unavailable)?,
                );
                self.tiny.lock().unwrap().insert(key, t.clone());
                t
            }
        };
        *guard = Some(EngineStream::new(m, tiny).map_err(unavailable)?);
        Ok(guard.as_mut().unwrap())
    }

    /// Renders one job to JPEG bytes.
    fn render(&self, session: &Session, job: &Job) -> Result<Vec<u8>, ProtocolError> {
        let mut guard = session.stream.lock().unwrap();
        let stream = self.stream_for(session, &mut guard, job.settings.model.as_deref())?;
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
            // The canvas's size, down to what the model can make.
            (None, Some(c)) => ((c.width() / f * f).max(f), (c.height() / f * f).max(f)),
            (None, None) => (m.defaults.width as u32, m.defaults.height as u32),
        };
        if w % f != 0 || h % f != 0 {
            return Err(ProtocolError::new(
                "invalid-input",
                format!("width, height: must be multiples of {f} for this model (got {w}x{h})"),
            ));
        }
        let frame = FrameRequest {
            prompt: job.settings.prompt.clone(),
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
        Ok(encode_jpeg(&img, self.config.jpeg_quality))
    }
}

/// A canvas's pixels (PNG, JPEG or WebP), refusing more than `max_pixels` before decoding.
pub fn decode_canvas(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, ProtocolError> {
    let img = media::decode_limited(bytes, max_pixels).map_err(|e| {
        ProtocolError::new(
            "invalid-input",
            e.message.replacen("file:", "canvas_data:", 1),
        )
    })?;
    Ok(img.into_rgb8())
}

/// A rendered frame as JPEG (what the wire carries).
pub fn encode_jpeg(img: &RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(img.as_raw().len() / 8);
    let enc = jpeg_encoder::Encoder::new(&mut out, quality.clamp(1, 100));
    enc.encode(
        img.as_raw(),
        img.width() as u16,
        img.height() as u16,
        jpeg_encoder::ColorType::Rgb,
    )
    .expect("an RGB image within JPEG's size limits encodes");
    out
}

fn invalid(message: impl Into<String>) -> ProtocolError {
    ProtocolError::new("invalid-input", message)
}

/// Checks a client's parameters and applies them over `base`.
fn apply(base: &Settings, p: &Params) -> Result<Settings, ProtocolError> {
    let mut s = base.clone();
    if let Some(prompt) = &p.prompt {
        if prompt.chars().count() > 4000 {
            return Err(invalid("prompt: must be at most 4000 characters"));
        }
        s.prompt = prompt.trim().to_string();
    }
    if let Some(v) = p.strength {
        if !(v.is_finite() && v > 0.0 && v <= 1.0) {
            return Err(invalid("strength: must be above 0 and at most 1"));
        }
        s.strength = v;
    }
    match p.seed {
        None => {}
        Some(-1) => s.seed = rand::random::<u32>() as u64,
        Some(v) if (0..=u32::MAX as i64).contains(&v) => s.seed = v as u64,
        Some(_) => return Err(invalid("seed: must be -1 (random) or from 0 to 4294967295")),
    }
    if let Some(m) = &p.model {
        s.model = Some(m.clone()).filter(|m| !m.is_empty());
    }
    match (p.width, p.height) {
        (None, None) => {}
        (Some(w), Some(h)) => {
            for (name, v) in [("width", w), ("height", h)] {
                if !(8..=2048).contains(&v) || v % 8 != 0 {
                    return Err(invalid(format!(
                        "{name}: must be a multiple of 8 from 8 to 2048"
                    )));
                }
            }
            s.size = Some((w, h));
        }
        _ => return Err(invalid("width, height: give both or neither")),
    }
    if let Some(v) = p.steps {
        if !(1..=MAX_STEPS as u32).contains(&v) {
            return Err(invalid(format!("steps: must be from 1 to {MAX_STEPS}")));
        }
        s.steps = v as usize;
    }
    Ok(s)
}

fn hash_bytes(b: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

/// Applies one message to a session: new settings and/or canvas, queued as its latest
/// input when anything changed.
fn handle(hub: &Hub, s: &Session, bytes: &[u8]) -> Result<(), ProtocolError> {
    let msg = protocol::parse(bytes)?;
    let (params, canvas, frame_id, is_generate) = match msg {
        ClientMessage::Generate(g) => (g.params, Some(g.canvas_data), g.frame_id, true),
        ClientMessage::UpdateParams(p) => (p, None, None, false),
    };
    let canvas = match canvas {
        Some(Some(b)) if !b.is_empty() => {
            let b = b.into_vec();
            if b.len() as u64 > hub.config.max_frame_bytes {
                return Err(ProtocolError::new(
                    "too-large",
                    format!(
                        "canvas_data: {} bytes, more than the {} allowed",
                        b.len(),
                        hub.config.max_frame_bytes
                    ),
                ));
            }
            check_canvas_header(&b, hub.config.max_frame_pixels)?;
            Some(Some(Canvas {
                hash: hash_bytes(&b),
                bytes: Arc::new(b),
            }))
        }
        // generate without a canvas: text only from now on.
        Some(_) => Some(None),
        None => None,
    };
    let mut st = s.state.lock().unwrap();
    let base = st.settings.clone().unwrap_or_else(|| Settings {
        prompt: String::new(),
        strength: 0.5,
        seed: rand::random::<u32>() as u64,
        model: None,
        size: None,
        steps: 1,
    });
    let settings = apply(&base, &params)?;
    st.settings = Some(settings.clone());
    if let Some(c) = canvas {
        st.canvas = c;
    }
    let job = Job {
        settings,
        canvas: st.canvas.clone(),
        input_frame_id: frame_id,
        received: Instant::now(),
    };
    let key = job.key();
    let changed = match &st.pending {
        Some(p) => p.key() != key || is_generate,
        None => st.last_key.as_ref() != Some(&key),
    };
    if changed {
        if st.pending.replace(job).is_some() {
            st.dropped += 1;
        }
        drop(st);
        hub.work.notify_one();
    }
    Ok(())
}

/// The format and size from the header, before anything is decoded.
pub fn check_canvas_header(bytes: &[u8], max_pixels: u64) -> Result<(), ProtocolError> {
    let (_, format) = media::sniff(bytes).ok_or_else(|| {
        ProtocolError::new(
            "unsupported-media-type",
            "canvas_data: not a PNG, JPEG or WebP image",
        )
    })?;
    let (w, h) = image::ImageReader::with_format(std::io::Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| invalid(format!("canvas_data: unreadable image ({e})")))?;
    if w as u64 * h as u64 > max_pixels {
        return Err(ProtocolError::new(
            "too-large",
            format!("canvas_data: {w}x{h} is more than the {max_pixels} pixels allowed"),
        ));
    }
    Ok(())
}

/// Runs one connection until either side closes: reads messages into the session, writes
/// what the render threads send.
pub async fn serve_session<S, E>(hub: Realtime, user_id: String, socket: S)
where
    S: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin + Send + 'static,
{
    let (mut sink, mut incoming) = socket.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<(Vec<u8>, bool)>();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let session = Arc::new(Session {
        user_id,
        state: Mutex::default(),
        out: tx,
        in_flight: in_flight.clone(),
        next_frame: AtomicU64::new(1),
        closed: AtomicBool::new(false),
        stream: Mutex::new(None),
    });
    if !hub.register(&session) {
        let e = ProtocolError::new(
            "too-many-sessions",
            format!(
                "you have {} live canvases open already; close one",
                hub.config.sessions_per_user
            ),
        );
        let _ = sink.send(Message::Binary(protocol::error(&e).into())).await;
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: CLOSE_TOO_MANY,
                reason: "too many sessions".into(),
            })))
            .await;
        return;
    }
    hub.announce(&session, Status::Ready, None);
    let writer = tokio::spawn(async move {
        while let Some((bytes, is_frame)) = rx.recv().await {
            if sink.send(Message::Binary(bytes.into())).await.is_err() {
                break;
            }
            if is_frame {
                in_flight.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _ = sink.close().await;
    });
    while let Some(msg) = incoming.next().await {
        let Ok(msg) = msg else { break };
        let result = match msg {
            Message::Binary(b) => handle(&hub, &session, &b),
            Message::Text(_) => Err(ProtocolError::new(
                "invalid-message",
                "messages are binary MessagePack, not text",
            )),
            Message::Close(_) => break,
            _ => Ok(()),
        };
        if let Err(e) = result {
            session.send_error(&e);
        }
    }
    hub.unregister(&session);
    // The writer ends when the session (the last sender) is dropped.
    drop(session);
    let _ = writer.await;
}

#[derive(Deserialize)]
pub struct WsQuery {
    token: Option<String>,
}

/// `GET /ws/realtime`: authenticated by the session cookie, a bearer token, or
/// `?token=` (an access token or API key: browsers cannot set headers on a WebSocket).
pub async fn ws(
    State(state): State<AppState>,
    mut headers: HeaderMap,
    Query(q): Query<WsQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    if let Some(t) = q.token.filter(|t| !t.is_empty())
        && let Ok(v) = HeaderValue::from_str(&format!("Bearer {t}"))
    {
        headers.insert(header::AUTHORIZATION, v);
    }
    let user = auth::current_user(&state, &headers).await;
    let hub = state.realtime.clone();
    let limit = (state.config.realtime.max_frame_bytes as usize).saturating_mul(4) + 4096;
    upgrade
        .max_message_size(limit)
        .on_upgrade(move |socket: WebSocket| async move {
            match (user, hub) {
                (Ok(user), Some(hub)) => serve_session(hub, user.id, socket).await,
                (user, hub) => {
                    let (code, reason) = match (user, hub) {
                        (Err(_), _) => (CLOSE_UNAUTHORIZED, "sign in first"),
                        _ => (1013, "the live canvas is off on this server"),
                    };
                    let mut socket = socket;
                    let _ = socket
                        .send(Message::Close(Some(CloseFrame {
                            code,
                            reason: reason.into(),
                        })))
                        .await;
                }
            }
        })
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

    type Out = mpsc::UnboundedReceiver<(Vec<u8>, bool)>;

    fn new_session(user: &str) -> (Arc<Session>, Out) {
        let (tx, rx) = mpsc::unbounded_channel();
        let s = Arc::new(Session {
            user_id: user.into(),
            state: Mutex::default(),
            out: tx,
            in_flight: Default::default(),
            next_frame: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            stream: Mutex::new(None),
        });
        (s, rx)
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
    fn sessions_take_turns_and_the_latest_input_wins() {
        let hub = hub();
        let (a, _ra) = session(&hub, "u1");
        let (b, _rb) = session(&hub, "u2");
        let (c, _rc) = session(&hub, "u3");
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
