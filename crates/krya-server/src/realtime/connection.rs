//! One WebSocket connection: `GET /ws/realtime` authenticates it, and `serve_session`
//! runs it over any `Stream`/`Sink` of messages until either side closes, the server
//! shuts down or its token stops being valid.

use super::*;

/// Resolves once a flag (session ending, server shutting down) is true.
pub(crate) async fn ended(flag: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = flag.wait_for(|v| *v).await;
}

/// How often the server pings an idle connection; one silent for three times this is gone.
pub(crate) const PING_EVERY: Duration = Duration::from_secs(20);

/// Runs one connection until either side closes, the server shuts down, or the token it
/// was opened with stops being valid: reads messages into the session, writes what the
/// render threads send.
pub async fn serve_session<S, E>(state: AppState, headers: HeaderMap, user_id: String, socket: S)
where
    S: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin + Send + 'static,
{
    let Some(hub) = state.realtime.clone() else {
        return;
    };
    let (mut sink, mut incoming) = socket.split();
    let mut meter = meter::Meter::new(&state, &user_id);
    if meter.charges() && meter::balance(&state, &user_id).await < 1 {
        refuse(&mut sink, out_of_credits(), CLOSE_NO_CREDITS, "no credits").await;
        return;
    }
    // The user's own LoRAs, for the canvas's `loras` (one trained meanwhile: reconnect).
    let own = crate::tasks::lora::own_entries(&state.services(), &user_id, None)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!("reading the user's LoRAs: {e}");
            Vec::new()
        });
    let (session, mut control) = Session::new(user_id);
    *session.own_loras.lock().unwrap() = own;
    if !hub.register(&session) {
        let e = ProtocolError::new(
            "too-many-sessions",
            format!(
                "you have {} live canvases open already; close one",
                hub.config.sessions_per_user
            ),
        );
        refuse(&mut sink, e, CLOSE_TOO_MANY, "too many sessions").await;
        return;
    }
    hub.announce(&session, Status::Ready, None);
    let last_heard = Arc::new(Mutex::new(Instant::now()));
    let writer = {
        let (session, last_heard) = (session.clone(), last_heard.clone());
        let mut ending = session.ending.subscribe();
        tokio::spawn(async move {
            let mut ping = tokio::time::interval(PING_EVERY);
            ping.tick().await;
            loop {
                let out = tokio::select! {
                    _ = ended(&mut ending) => break,
                    c = control.recv() => match c {
                        Some(bytes) => Message::Binary(bytes.into()),
                        None => break,
                    },
                    _ = session.frame_ready.notified() => match session.frame.lock().unwrap().take() {
                        Some(bytes) => Message::Binary(bytes.into()),
                        None => continue,
                    },
                    _ = ping.tick() => {
                        if last_heard.lock().unwrap().elapsed() > PING_EVERY * 3 {
                            // No answer to three pings: a half-open connection.
                            session.end_with(1001);
                            break;
                        }
                        Message::Ping(Default::default())
                    }
                };
                if sink.send(out).await.is_err() {
                    break;
                }
            }
            session.end();
            // What was said before the end (the reason for it, often) goes out first.
            while let Ok(bytes) = control.try_recv() {
                if sink.send(Message::Binary(bytes.into())).await.is_err() {
                    break;
                }
            }
            let code = session.close_code.load(Ordering::SeqCst);
            let reason = match code {
                CLOSE_UNAUTHORIZED => "the session ended; sign in again",
                CLOSE_NO_CREDITS => "no credits left",
                1001 => "going away",
                1008 => "messages were not read",
                _ => "",
            };
            let _ = sink
                .send(Message::Close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                })))
                .await;
            let _ = sink.close().await;
        })
    };
    let mut ending = session.ending.subscribe();
    let mut shutdown = state.shutting_down.clone();
    let every = Duration::from_secs_f64(state.config.server.stream_auth_check_secs.max(0.05));
    let mut recheck = tokio::time::interval(every);
    recheck.tick().await;
    // Settled every few seconds (at most), so a balance cannot be overrun by much.
    let mut settle = tokio::time::interval(every.min(METER_EVERY));
    settle.tick().await;
    loop {
        tokio::select! {
            m = incoming.next() => {
                let Some(Ok(msg)) = m else { break };
                *last_heard.lock().unwrap() = Instant::now();
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
            _ = recheck.tick() => {
                // Logged out, key revoked or expired: the canvas ends like an event stream.
                if auth::current_user(&state, &headers).await.is_err() {
                    session.end_with(CLOSE_UNAUTHORIZED);
                    break;
                }
            }
            _ = settle.tick() => {
                let used = session.rendered_us.load(Ordering::SeqCst);
                match meter.settle(&state, used, false).await {
                    Ok(meter::Balance::Enough) => {}
                    Ok(meter::Balance::Exhausted) => {
                        session.send_error(&out_of_credits());
                        session.end_with(CLOSE_NO_CREDITS);
                        break;
                    }
                    Err(e) => tracing::warn!("metering the live canvas: {e}"),
                }
            }
            _ = ended(&mut shutdown) => {
                session.end_with(1001);
                break;
            }
            _ = ended(&mut ending) => break,
        }
    }
    hub.unregister(&session);
    let _ = writer.await;
    // What the last frames took, with a frame still rendering once it is done.
    for _ in 0..600 {
        if !session.state.lock().unwrap().rendering {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let used = session.rendered_us.load(Ordering::SeqCst);
    if let Err(e) = meter.settle(&state, used, true).await {
        tracing::warn!("metering the live canvas: {e}");
    }
}

/// How often an open session's render time is charged, at most.
const METER_EVERY: Duration = Duration::from_secs(5);

fn out_of_credits() -> ProtocolError {
    ProtocolError::new(
        "insufficient-credits",
        "no credits left for the live canvas; they are topped up daily",
    )
}

/// Says why a connection is refused, and closes it.
async fn refuse<S>(sink: &mut S, e: ProtocolError, code: u16, reason: &'static str)
where
    S: Sink<Message> + Unpin,
{
    let _ = sink.send(Message::Binary(protocol::error(&e).into())).await;
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}

#[derive(Deserialize)]
pub struct WsQuery {
    token: Option<String>,
}

/// Whether a browser's `Origin` names this server (`Host`). Cookies go with cross-site
/// WebSocket requests from same-site pages (another app on this host), so a canvas opened
/// with the cookie alone must come from the studio itself.
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        // Not a browser: nothing to forge.
        return true;
    };
    let origin_host = origin.split_once("://").map(|(_, h)| h);
    // Behind a proxy the public name may be in X-Forwarded-Host.
    [header::HOST.as_str(), "x-forwarded-host"]
        .iter()
        .any(|name| {
            let host = headers.get(*name).and_then(|v| v.to_str().ok());
            host.is_some() && origin_host == host
        })
}

/// `GET /ws/realtime`: authenticated by the session cookie (from the studio's own pages), a
/// bearer token, or `?token=` (an access token or API key: browsers cannot set headers on a
/// WebSocket).
pub async fn ws(
    State(state): State<AppState>,
    mut headers: HeaderMap,
    Query(q): Query<WsQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let explicit = headers.contains_key(header::AUTHORIZATION) || q.token.is_some();
    if let Some(t) = q.token.filter(|t| !t.is_empty())
        && let Ok(v) = HeaderValue::from_str(&format!("Bearer {t}"))
    {
        headers.insert(header::AUTHORIZATION, v);
    }
    let user = if explicit || same_origin(&headers) {
        auth::current_user(&state, &headers).await.ok()
    } else {
        None
    };
    let limit = (state.config.realtime.max_frame_bytes as usize).saturating_mul(4) + 4096;
    upgrade
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket: WebSocket| async move {
            let refused = match (&user, &state.realtime) {
                (None, _) => Some((CLOSE_UNAUTHORIZED, "sign in first")),
                (Some(_), None) => Some((1013, "the live canvas is off on this server")),
                _ => None,
            };
            if let Some((code, reason)) = refused {
                let mut socket = socket;
                let _ = socket
                    .send(Message::Close(Some(CloseFrame {
                        code,
                        reason: reason.into(),
                    })))
                    .await;
                return;
            }
            serve_session(state, headers, user.unwrap().id, socket).await;
        })
}
