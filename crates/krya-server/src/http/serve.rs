//! Accepting connections: HTTP/1.1 (with WebSocket upgrades) on each, the
//! client's address given to handlers, no Nagle delay, and a deadline for a request's
//! headers (`server.header_read_timeout_secs`): a client that opens a connection and sends
//! its headers slowly, or nothing (an idle keep-alive too), is let go, so slow clients
//! cannot hold connections forever. Bodies are bounded by `request_timeout_secs`. At
//! shutdown the listener closes, idle connections end, and those still answering get a
//! little time to finish.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;

/// How long connections still answering may run on after shutdown is asked for.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    // HTTP/1.1 only: browsers speak HTTP/2 only over TLS, which a proxy in front ends, and
    // telling cleartext HTTP/2 from HTTP/1.1 means waiting for a client's first 24 bytes
    // with no deadline.
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    // Told to every connection at shutdown; each holds a receiver of `open` while it runs.
    let (stopping, _) = watch::channel(false);
    let (open, _) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, a connection reset before accept: wait a
                    // moment rather than spin.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // No Nagle delay: a live-canvas frame must not wait for the ACK of the one before.
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            // Client addresses reach handlers (login throttling per address).
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(addr));
            let mut app = app.clone();
            async move {
                let r: Result<_, Infallible> =
                    tower_service::Service::call(&mut app, req.map(axum::body::Body::new)).await;
                r
            }
        });
        let conn = builder
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        let mut stop = stopping.subscribe();
        let held = open.subscribe();
        tokio::spawn(async move {
            let _held = held;
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => {
                    // Ends after the answer in hand (an idle connection at once).
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::trace!("connection from {addr}: {e}");
            }
        });
    }
    drop(listener);
    stopping.send_replace(true);
    if tokio::time::timeout(DRAIN, open.closed()).await.is_err() {
        tracing::warn!(
            "some connections were still open {} s after shutdown began",
            DRAIN.as_secs()
        );
    }
}
