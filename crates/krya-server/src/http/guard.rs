//! What every request passes first: the `Host` allow-list (a web page elsewhere cannot
//! reach a local Krya through DNS rebinding), the client's address (through trusted
//! proxies only), and the security headers on every answer.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::infra::config::Server;
use crate::infra::error::{ApiError, ErrorCode};
use crate::infra::net::{self, Cidr};

/// The client's address, as `guard` read it (an extension on every request).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

/// The settings `guard` applies, parsed once.
pub struct Guard {
    trusted: Vec<Cidr>,
    /// Lowercase host names without port; `None`: any.
    hosts: Option<Vec<String>>,
}

/// `host[:port]` or `[v6]:port` without the port, lowercased.
fn host_name(authority: &str) -> String {
    let a = authority.trim().to_ascii_lowercase();
    if a.starts_with('[') {
        return a.split(']').next().map(|h| format!("{h}]")).unwrap_or(a);
    }
    match a.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.chars().all(|c| c.is_ascii_digit()) => h.to_string(),
        _ => a,
    }
}

impl Guard {
    pub fn new(server: &Server) -> Result<Guard, String> {
        let trusted = net::parse_ranges(&server.trusted_proxies)
            .map_err(|e| format!("server.trusted_proxies: {e}"))?;
        let hosts = if !server.allowed_hosts.is_empty() {
            Some(server.allowed_hosts.iter().map(|h| host_name(h)).collect())
        } else if server.listen.ip().is_loopback() {
            Some(vec!["localhost".into(), "127.0.0.1".into(), "[::1]".into()])
        } else {
            None
        };
        Ok(Guard { trusted, hosts })
    }
}

pub async fn guard(State(g): State<Arc<Guard>>, mut req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    if let Some(hosts) = &g.hosts {
        let named = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.uri().authority().map(|a| a.to_string()));
        let ok = named
            .as_deref()
            .is_some_and(|h| hosts.contains(&host_name(h)));
        if !ok {
            let shown = named.unwrap_or_default();
            let shown: String = shown.chars().take(100).collect();
            return ApiError::new(
                ErrorCode::Forbidden,
                format!("host: {shown:?} is not a name of this server (server.allowed_hosts)"),
            )
            .into_response();
        }
    }
    let headers = req.headers();
    let client = net::client_ip(peer, headers, &g.trusted);
    let https = net::forwarded_https(peer, headers, &g.trusted);
    req.extensions_mut().insert(ClientIp(client));
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.entry(header::REFERRER_POLICY)
        .or_insert(HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if https {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::host_name;

    #[test]
    fn host_names_lose_their_port() {
        assert_eq!(host_name("LocalHost:7860"), "localhost");
        assert_eq!(host_name("[::1]:80"), "[::1]");
        assert_eq!(host_name("krya.example.com"), "krya.example.com");
        assert_eq!(host_name("127.0.0.1"), "127.0.0.1");
    }
}
