//! The real-time wire format (seed §6.2; `docs/realtime.md`): binary WebSocket messages,
//! each one MessagePack map `{type, data, ...}`. Parsing checks everything a client can get
//! wrong and says which field; encoding writes maps with field names, so any MessagePack
//! library reads them.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// What a client can send.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    Generate(Generate),
    UpdateParams(Params),
}

/// `generate`: new input (the canvas, or none for text only) and any parameters.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Generate {
    #[serde(flatten)]
    pub params: Params,
    /// PNG, JPEG or WebP bytes; absent or empty: text only.
    pub canvas_data: Option<ByteBuf>,
    /// The client's id for this input; frames say which input they answer.
    pub frame_id: Option<u64>,
}

/// Parameters a client may change (`update_params`, or along with `generate`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Params {
    pub prompt: Option<String>,
    pub strength: Option<f64>,
    pub seed: Option<i64>,
    pub model: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub steps: Option<u32>,
    /// LoRAs to apply (replacing the session's; `<lora:ID:WEIGHT>` in the prompt adds more).
    pub loras: Option<Vec<LoraParam>>,
}

/// One LoRA of a session: a model id of capability `lora` and its weight (default 1).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LoraParam {
    pub id: String,
    #[serde(default = "one")]
    pub weight: f32,
}

fn one() -> f32 {
    1.0
}

/// Why a message was refused: a stable code and a message naming the field.
#[derive(Debug, Clone, PartialEq)]
pub struct ProtocolError {
    pub code: &'static str,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

#[derive(Deserialize)]
struct Kind {
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct Envelope<T> {
    data: T,
}

/// At most `n` characters of something a client sent (errors echo it, bounded).
fn clip(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn malformed(e: impl std::fmt::Display) -> ProtocolError {
    ProtocolError::new(
        "invalid-message",
        format!("not a valid message: {}", clip(&e.to_string(), 200)),
    )
}

/// Reads one client message.
pub fn parse(bytes: &[u8]) -> Result<ClientMessage, ProtocolError> {
    let Kind { kind } = rmp_serde::from_slice(bytes).map_err(malformed)?;
    match kind.as_str() {
        "generate" => {
            let e: Envelope<Generate> = rmp_serde::from_slice(bytes).map_err(malformed)?;
            Ok(ClientMessage::Generate(e.data))
        }
        "update_params" => {
            let e: Envelope<Params> = rmp_serde::from_slice(bytes).map_err(malformed)?;
            Ok(ClientMessage::UpdateParams(e.data))
        }
        other => Err(ProtocolError::new(
            "unknown-type",
            format!(
                "type: unknown message type {:?} (generate, update_params)",
                clip(other, 40)
            ),
        )),
    }
}

/// `status` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ready,
    Generating,
    Error,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusData {
    pub status: Status,
    /// Frames sent to this session in the last second.
    pub fps: f64,
    /// The last frame's input-to-frame time.
    pub latency_ms: Option<f64>,
    /// More sessions want frames than the engine renders at once: each gets a share.
    pub saturated: bool,
    /// What is happening, when it takes a while (loading a model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ServerMessage<'a> {
    Frame {
        data: &'a serde_bytes::Bytes,
        frame_id: u64,
        input_frame_id: Option<u64>,
        latency_ms: f64,
        /// The picture's type (`image/jpeg`).
        mime: &'static str,
    },
    Status {
        data: &'a StatusData,
    },
    Error {
        data: ErrorData<'a>,
    },
}

#[derive(Serialize)]
struct ErrorData<'a> {
    message: &'a str,
    code: &'a str,
}

fn encode(m: &ServerMessage) -> Vec<u8> {
    rmp_serde::to_vec_named(m).expect("server messages always serialise")
}

/// A `frame` message: the rendered JPEG and the input it answers.
pub fn frame(jpeg: &[u8], frame_id: u64, input_frame_id: Option<u64>, latency_ms: f64) -> Vec<u8> {
    encode(&ServerMessage::Frame {
        data: serde_bytes::Bytes::new(jpeg),
        frame_id,
        input_frame_id,
        latency_ms,
        mime: "image/jpeg",
    })
}

pub fn status(data: &StatusData) -> Vec<u8> {
    encode(&ServerMessage::Status { data })
}

pub fn error(e: &ProtocolError) -> Vec<u8> {
    encode(&ServerMessage::Error {
        data: ErrorData {
            message: &e.message,
            code: e.code,
        },
    })
}

/// A canvas's format and size from its header, before anything is decoded.
pub fn check_canvas_header(bytes: &[u8], max_pixels: u64) -> Result<(), ProtocolError> {
    crate::images::check_header(bytes, max_pixels, "canvas_data")
        .map(|_| ())
        .map_err(|e| ProtocolError::new(e.code.as_str(), e.message))
}

/// A canvas's pixels (PNG, JPEG or WebP), refusing more than `max_pixels` before decoding.
pub fn decode_canvas(bytes: &[u8], max_pixels: u64) -> Result<image::RgbImage, ProtocolError> {
    crate::images::decode_limited(bytes, max_pixels, "canvas_data")
        .map(|img| img.into_rgb8())
        .map_err(|e| ProtocolError::new(e.code.as_str(), e.message))
}

/// A rendered frame as JPEG (what the wire carries).
pub fn encode_jpeg(img: &image::RgbImage, quality: u8) -> Result<Vec<u8>, ProtocolError> {
    let (w, h) = img.dimensions();
    let side = |v: u32| u16::try_from(v).ok().filter(|v| *v > 0);
    let (Some(w16), Some(h16)) = (side(w), side(h)) else {
        return Err(ProtocolError::new(
            "invalid-input",
            format!("a {w}x{h} frame cannot be sent as JPEG"),
        ));
    };
    let mut out = Vec::with_capacity(img.as_raw().len() / 8);
    jpeg_encoder::Encoder::new(&mut out, quality.clamp(1, 100))
        .encode(img.as_raw(), w16, h16, jpeg_encoder::ColorType::Rgb)
        .map_err(|e| ProtocolError::new("internal", format!("encoding the frame: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(v: serde_json::Value) -> Vec<u8> {
        rmp_serde::to_vec_named(&v).unwrap()
    }

    #[test]
    fn parses_both_kinds_and_names_what_is_wrong() {
        let m = parse(&msg(serde_json::json!({"type": "update_params", "data": {"prompt": "a fox", "strength": 0.4}}))).unwrap();
        assert_eq!(
            m,
            ClientMessage::UpdateParams(Params {
                prompt: Some("a fox".into()),
                strength: Some(0.4),
                ..Default::default()
            })
        );
        // canvas_data as MessagePack bin, as browsers send a Uint8Array.
        #[derive(Serialize)]
        struct G<'a> {
            #[serde(rename = "type")]
            t: &'a str,
            data: D<'a>,
        }
        #[derive(Serialize)]
        struct D<'a> {
            prompt: &'a str,
            canvas_data: &'a serde_bytes::Bytes,
            frame_id: u64,
        }
        let bytes = rmp_serde::to_vec_named(&G {
            t: "generate",
            data: D {
                prompt: "x",
                canvas_data: serde_bytes::Bytes::new(&[1, 2, 3]),
                frame_id: 7,
            },
        })
        .unwrap();
        let ClientMessage::Generate(g) = parse(&bytes).unwrap() else {
            panic!()
        };
        assert_eq!(g.canvas_data.unwrap().into_vec(), vec![1, 2, 3]);
        assert_eq!(
            (g.frame_id, g.params.prompt.as_deref()),
            (Some(7), Some("x"))
        );

        assert_eq!(parse(b"\xc1garbage").unwrap_err().code, "invalid-message");
        assert_eq!(
            parse(&msg(serde_json::json!({"data": {}})))
                .unwrap_err()
                .code,
            "invalid-message"
        );
        let e = parse(&msg(serde_json::json!({"type": "dance", "data": {}}))).unwrap_err();
        assert_eq!(e.code, "unknown-type");
        assert!(e.message.contains("dance"), "{}", e.message);
        let e = parse(&msg(
            serde_json::json!({"type": "generate", "data": {"strength": "high"}}),
        ))
        .unwrap_err();
        assert_eq!(e.code, "invalid-message");
        // What a client sent is echoed bounded, however long it was.
        let long = "x".repeat(1 << 20);
        for m in [
            serde_json::json!({"type": long, "data": {}}),
            serde_json::json!({"type": "generate", "data": {"strength": long}}),
        ] {
            assert!(parse(&msg(m)).unwrap_err().message.len() < 400);
        }
    }

    #[test]
    fn server_messages_are_named_maps() {
        #[derive(Deserialize)]
        struct F {
            #[serde(rename = "type")]
            t: String,
            data: ByteBuf,
            frame_id: u64,
            input_frame_id: Option<u64>,
            latency_ms: f64,
            mime: String,
        }
        let f: F = rmp_serde::from_slice(&frame(&[9, 8], 3, Some(41), 12.5)).unwrap();
        assert_eq!(
            (f.t.as_str(), f.frame_id, f.input_frame_id),
            ("frame", 3, Some(41))
        );
        assert_eq!(
            (f.data.into_vec(), f.latency_ms, f.mime.as_str()),
            (vec![9, 8], 12.5, "image/jpeg")
        );
        let s = status(&StatusData {
            status: Status::Ready,
            fps: 0.0,
            latency_ms: None,
            saturated: false,
            detail: None,
        });
        let v: serde_json::Value = rmp_serde::from_slice(&s).unwrap();
        assert_eq!(v["data"]["status"], "ready");
        let e = error(&ProtocolError::new("too-large", "canvas_data: too big"));
        let v: serde_json::Value = rmp_serde::from_slice(&e).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["data"]["code"].as_str()),
            (Some("error"), Some("too-large"))
        );
    }
}
