//! `krya realtime load`: a load client for the live canvas (`/ws/realtime`) that streams
//! drawn canvases at a fixed rate and reports fps, input-to-frame latency and how many
//! inputs were never rendered, then sends a burst and checks that the last frame answers
//! the last input. `krya realtime bench-io`: the server's own work per frame besides the
//! model (read the message, decode the canvas, encode the JPEG, write the message).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use image::{Rgb, RgbImage};
use krya_core::protocol;
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Message;

use crate::CliError;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Stream canvases to a running server and report fps, latency and dropped inputs.
    Load(LoadArgs),
    /// Time the server's per-frame work besides the model, at a given size.
    BenchIo(IoArgs),
}

#[derive(clap::Args)]
pub struct LoadArgs {
    /// The server (http://host:port).
    #[arg(long, default_value = "http://127.0.0.1:7860")]
    url: String,
    /// An API key or access token.
    #[arg(long, env = "KRYA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Sign in with these instead (with --register, create the account first).
    #[arg(long)]
    email: Option<String>,
    #[arg(long, env = "KRYA_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    #[arg(long)]
    register: bool,
    /// The model to render with (default: the server's first installed one).
    #[arg(long)]
    model: Option<String>,
    #[arg(long, default_value = "a lighthouse at dusk, oil painting")]
    prompt: String,
    /// Canvas size sent (and rendered).
    #[arg(long, default_value_t = 64)]
    width: u32,
    #[arg(long, default_value_t = 64)]
    height: u32,
    #[arg(long, default_value_t = 1)]
    steps: u32,
    #[arg(long, default_value_t = 0.5)]
    strength: f64,
    /// Inputs to stream, and how many a second.
    #[arg(long, default_value_t = 300)]
    inputs: u64,
    #[arg(long, default_value_t = 30.0)]
    rate: f64,
    /// Inputs sent at once afterwards (0: no burst).
    #[arg(long, default_value_t = 100)]
    burst: u64,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct IoArgs {
    #[arg(long, default_value_t = 512)]
    width: u32,
    #[arg(long, default_value_t = 512)]
    height: u32,
    #[arg(long, default_value_t = 200)]
    runs: usize,
    /// JPEG quality of the frames (as `realtime.jpeg_quality`).
    #[arg(long, default_value_t = 80)]
    quality: u8,
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: Command) -> Result<(), CliError> {
    match cmd {
        Command::Load(a) => load(a),
        Command::BenchIo(a) => bench_io(a),
    }
}

fn fail(e: impl std::fmt::Display) -> CliError {
    CliError::user(e.to_string())
}

/// A drawing: a soft gradient with a disc that moves with `k`, as a stroke would.
pub fn canvas(width: u32, height: u32, k: u64) -> RgbImage {
    let (cx, cy) = (
        (k as f64 * 3.0) % width as f64,
        height as f64 / 2.0 + (k as f64 / 7.0).sin() * height as f64 / 4.0,
    );
    let r = (width.min(height) as f64 / 6.0).max(2.0);
    RgbImage::from_fn(width, height, |x, y| {
        let (dx, dy) = (x as f64 - cx, y as f64 - cy);
        if dx * dx + dy * dy < r * r {
            Rgb([230, 80, 40])
        } else {
            Rgb([
                (40 + 120 * x / width.max(1)) as u8,
                (60 + 100 * y / height.max(1)) as u8,
                160,
            ])
        }
    })
}

#[derive(Serialize)]
struct GenerateMsg<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    data: GenerateData<'a>,
}

#[derive(Serialize)]
struct GenerateData<'a> {
    prompt: &'a str,
    canvas_data: &'a serde_bytes::Bytes,
    strength: f64,
    seed: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    width: u32,
    height: u32,
    steps: u32,
    frame_id: u64,
}

#[derive(Deserialize)]
struct Incoming {
    #[serde(rename = "type")]
    kind: String,
    input_frame_id: Option<u64>,
    data: Option<IncomingData>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IncomingData {
    Map(HashMap<String, serde_json::Value>),
    /// A frame's bytes (only counted here).
    Other(serde::de::IgnoredAny),
}

fn sign_in(a: &LoadArgs) -> Result<String, CliError> {
    if let Some(t) = &a.token {
        return Ok(t.clone());
    }
    let (Some(email), Some(password)) = (&a.email, &a.password) else {
        return Err(CliError::user(
            "give --token (an API key) or --email and --password",
        ));
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let base = a.url.trim_end_matches('/');
    let body = serde_json::json!({"email": email, "password": password, "name": "load client"});
    if a.register {
        agent
            .post(format!("{base}/api/auth/register"))
            .send_json(&body)
            .map_err(fail)?;
    }
    let mut r = agent
        .post(format!("{base}/api/auth/login"))
        .send_json(&body)
        .map_err(|e| fail(format!("cannot reach {base}: {e}")))?;
    let v: serde_json::Value = r.body_mut().read_json().map_err(fail)?;
    v["access_token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| fail(format!("sign-in refused: {}", v["error"]["message"])))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[derive(Serialize)]
struct Report {
    inputs: u64,
    frames: u64,
    fps: f64,
    latency_p50_ms: f64,
    latency_p95_ms: f64,
    inputs_dropped: u64,
    burst_inputs: u64,
    burst_renders: u64,
    burst_last_frame_answers_last_input: bool,
}

fn load(a: LoadArgs) -> Result<(), CliError> {
    let token = sign_in(&a)?;
    let rt = tokio::runtime::Runtime::new().map_err(fail)?;
    let report = rt.block_on(stream(&a, &token))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap());
    } else {
        println!(
            "streamed {} inputs at {}/s: {} frames, {:.1} fps, latency p50 {:.1} ms, p95 {:.1} ms, {} inputs never rendered",
            report.inputs,
            a.rate,
            report.frames,
            report.fps,
            report.latency_p50_ms,
            report.latency_p95_ms,
            report.inputs_dropped
        );
        if report.burst_inputs > 0 {
            println!(
                "burst of {} inputs: {} renders; the last frame answers the last input: {}",
                report.burst_inputs,
                report.burst_renders,
                report.burst_last_frame_answers_last_input
            );
        }
    }
    Ok(())
}

async fn stream(a: &LoadArgs, token: &str) -> Result<Report, CliError> {
    let url = format!(
        "{}/ws/realtime?token={token}",
        a.url.trim_end_matches('/').replacen("http", "ws", 1)
    );
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .map_err(|e| fail(format!("cannot open the live canvas: {e}")))?;
    let (mut tx, mut rx) = ws.split();
    let (frames_tx, mut frames) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let reader = tokio::spawn(async move {
        while let Some(Ok(m)) = rx.next().await {
            match m {
                Message::Binary(b) => {
                    let Ok(msg) = rmp_serde::from_slice::<Incoming>(&b) else {
                        continue;
                    };
                    match msg.kind.as_str() {
                        "frame" => {
                            let _ =
                                frames_tx.send((msg.input_frame_id.unwrap_or(0), Instant::now()));
                        }
                        "error" => {
                            if let Some(IncomingData::Map(d)) = msg.data {
                                eprintln!(
                                    "server error: {}",
                                    d.get("message").cloned().unwrap_or_default()
                                );
                            }
                        }
                        _ => {}
                    }
                }
                Message::Close(c) => {
                    eprintln!("closed by the server: {c:?}");
                    break;
                }
                _ => {}
            }
        }
    });
    let encode = |k: u64| {
        protocol::encode_jpeg(&canvas(a.width, a.height, k), 80).map_err(|e| fail(e.message))
    };
    let send = |k: u64, bytes: Vec<u8>| {
        let msg = GenerateMsg {
            kind: "generate",
            data: GenerateData {
                prompt: &a.prompt,
                canvas_data: serde_bytes::Bytes::new(&bytes),
                strength: a.strength,
                seed: 42,
                model: a.model.as_deref(),
                width: a.width,
                height: a.height,
                steps: a.steps,
                frame_id: k,
            },
        };
        Message::Binary(rmp_serde::to_vec_named(&msg).unwrap().into())
    };
    let mut sent_at: HashMap<u64, Instant> = HashMap::new();
    // Warm-up: the first frame loads the model.
    tx.send(send(0, encode(0)?)).await.map_err(fail)?;
    wait_for(&mut frames, 0, Duration::from_secs(600)).await?;

    let period = Duration::from_secs_f64(1.0 / a.rate.max(0.1));
    let start = Instant::now();
    let mut received = Vec::new();
    for k in 1..=a.inputs {
        let due = start + period * (k as u32 - 1);
        loop {
            while let Ok(f) = frames.try_recv() {
                received.push(f);
            }
            let now = Instant::now();
            if now >= due {
                break;
            }
            tokio::time::sleep((due - now).min(Duration::from_millis(2))).await;
        }
        let bytes = encode(k)?;
        sent_at.insert(k, Instant::now());
        tx.send(send(k, bytes)).await.map_err(fail)?;
    }
    received.extend(wait_for(&mut frames, a.inputs, Duration::from_secs(30)).await?);
    let end = received
        .last()
        .map(|(_, t)| *t)
        .unwrap_or_else(Instant::now);
    let mut lat: Vec<f64> = received
        .iter()
        .filter_map(|(id, t)| sent_at.get(id).map(|s| (*t - *s).as_secs_f64() * 1000.0))
        .collect();
    lat.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let frames_n = received.len() as u64;
    let fps = frames_n as f64 / (end - start).as_secs_f64();

    // Burst: everything at once; only the newest should be rendered.
    let mut burst_renders = 0;
    let mut last_ok = false;
    if a.burst > 0 {
        let first = a.inputs + 1;
        let last = a.inputs + a.burst;
        let msgs = (first..=last)
            .map(|k| Ok(send(k, encode(k)?)))
            .collect::<Result<Vec<Message>, CliError>>()?;
        for m in msgs {
            tx.send(m).await.map_err(fail)?;
        }
        let got = wait_for(&mut frames, last, Duration::from_secs(60)).await?;
        burst_renders = got.iter().filter(|(id, _)| *id >= first).count() as u64;
        last_ok = got.last().is_some_and(|(id, _)| *id == last);
    }
    let _ = tx.close().await;
    reader.abort();
    Ok(Report {
        inputs: a.inputs,
        frames: frames_n,
        fps,
        latency_p50_ms: percentile(&lat, 0.5),
        latency_p95_ms: percentile(&lat, 0.95),
        inputs_dropped: a.inputs - frames_n.min(a.inputs),
        burst_inputs: a.burst,
        burst_renders,
        burst_last_frame_answers_last_input: last_ok,
    })
}

/// Frames until one answers input `id` (or later).
async fn wait_for(
    frames: &mut tokio::sync::mpsc::UnboundedReceiver<(u64, Instant)>,
    id: u64,
    within: Duration,
) -> Result<Vec<(u64, Instant)>, CliError> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, frames.recv()).await {
            Ok(Some(f)) => {
                let done = f.0 >= id;
                got.push(f);
                if done {
                    return Ok(got);
                }
            }
            Ok(None) => return Err(fail("the connection closed")),
            Err(_) => return Err(fail(format!("no frame for input {id} within {within:?}"))),
        }
    }
}

#[derive(Serialize)]
struct IoReport {
    width: u32,
    height: u32,
    runs: usize,
    /// Median microseconds of each step, and of all of them.
    parse_us: f64,
    decode_canvas_us: f64,
    encode_jpeg_us: f64,
    write_message_us: f64,
    total_us: f64,
    /// The same JPEG encode with the `image` crate's encoder, in the same run.
    image_crate_jpeg_us: f64,
}

fn median_us(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2] * 1e6
}

fn bench_io(a: IoArgs) -> Result<(), CliError> {
    let (w, h) = (a.width, a.height);
    // What a browser sends (a JPEG of the drawing) and what the model returns.
    let input = protocol::encode_jpeg(&canvas(w, h, 5), 80).map_err(|e| fail(e.message))?;
    let output = canvas(w, h, 40);
    let msg = rmp_serde::to_vec_named(&GenerateMsg {
        kind: "generate",
        data: GenerateData {
            prompt: "a lighthouse at dusk",
            canvas_data: serde_bytes::Bytes::new(&input),
            strength: 0.5,
            seed: 1,
            model: None,
            width: w,
            height: h,
            steps: 1,
            frame_id: 1,
        },
    })
    .unwrap();
    let max_pixels = (w as u64 * h as u64).max(1);
    let mut steps: [Vec<f64>; 5] = Default::default();
    for run in 0..a.runs + 5 {
        let t0 = Instant::now();
        let parsed = protocol::parse(&msg).map_err(|e| fail(e.message))?;
        let protocol::ClientMessage::Generate(g) = parsed else {
            return Err(fail("parsed the wrong message"));
        };
        let bytes = g.canvas_data.unwrap().into_vec();
        protocol::check_canvas_header(&bytes, max_pixels).map_err(|e| fail(e.message))?;
        let t1 = Instant::now();
        let img = protocol::decode_canvas(&bytes, max_pixels).map_err(|e| fail(e.message))?;
        let t2 = Instant::now();
        let jpeg = protocol::encode_jpeg(&output, a.quality).map_err(|e| fail(e.message))?;
        let t3 = Instant::now();
        let framed = protocol::frame(&jpeg, 1, Some(1), 1.0);
        let t4 = Instant::now();
        let mut reference = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut reference, a.quality)
            .encode_image(&output)
            .map_err(fail)?;
        let t5 = Instant::now();
        std::hint::black_box((img, framed, reference));
        if run >= 5 {
            for (i, d) in [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4]
                .iter()
                .enumerate()
            {
                steps[i].push(d.as_secs_f64());
            }
        }
    }
    let totals: Vec<f64> = (0..a.runs)
        .map(|i| steps[..4].iter().map(|s| s[i]).sum())
        .collect();
    let [p, d, e, m, r] = steps;
    let report = IoReport {
        width: w,
        height: h,
        runs: a.runs,
        parse_us: median_us(p),
        decode_canvas_us: median_us(d),
        encode_jpeg_us: median_us(e),
        write_message_us: median_us(m),
        total_us: median_us(totals),
        image_crate_jpeg_us: median_us(r),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap());
    } else {
        println!(
            "{w}x{h}, median of {} runs: read message {:.0} µs, decode canvas {:.0} µs, encode JPEG {:.0} µs (image crate: {:.0} µs), write message {:.0} µs; total {:.2} ms per frame",
            a.runs,
            report.parse_us,
            report.decode_canvas_us,
            report.encode_jpeg_us,
            report.image_crate_jpeg_us,
            report.write_message_us,
            report.total_us / 1000.0
        );
    }
    Ok(())
}
