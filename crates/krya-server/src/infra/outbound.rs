//! The one HTTP client for requests Krya makes on its users' behalf (webhooks now; remote
//! providers and URL imports later). Its resolver drops every address outside the public
//! internet (`net::is_private`) and connects only to the addresses it checked, so a name
//! that answers differently between a check and the connection (DNS rebinding) cannot reach
//! the host's own network. Literal addresses are checked before sending. Redirects are
//! off (one could point anywhere) and every request has a timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::net::is_private;

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The target is not on the public internet (and private targets are not allowed).
    #[error("{0} is a loopback, private or otherwise non-public address")]
    Refused(String),
    #[error("{0}")]
    BadUrl(String),
    /// Network errors, timeouts, TLS failures.
    #[error("{0}")]
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
#[error("{0} resolves only to loopback, private or otherwise non-public addresses")]
struct RefusedName(String);

/// Resolves names to their public addresses only.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> =
                found.into_iter().filter(|a| !is_private(a.ip())).collect();
            if public.is_empty() {
                return Err(Box::new(RefusedName(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[derive(Clone)]
pub struct Outbound {
    client: reqwest::Client,
    allow_private: bool,
}

impl Outbound {
    /// `allow_private`: reach any address (tests, intranets: `webhooks.allow_private`).
    pub fn new(allow_private: bool, timeout: Duration) -> Outbound {
        let mut b = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("krya/", env!("CARGO_PKG_VERSION")));
        if !allow_private {
            b = b.dns_resolver(Arc::new(PublicOnly));
        }
        Outbound {
            client: b
                .build()
                .expect("an HTTP client with these settings builds"),
            allow_private,
        }
    }

    /// POSTs `body` to `url` with `headers`; the answer's status.
    pub async fn post(
        &self,
        url: &str,
        headers: &[(&str, String)],
        body: String,
    ) -> Result<u16, OutboundError> {
        let u = reqwest::Url::parse(url).map_err(|e| OutboundError::BadUrl(e.to_string()))?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(OutboundError::BadUrl("must be an http(s) URL".into()));
        }
        // A literal address is not resolved: check it here (it cannot change).
        let host = u
            .host_str()
            .ok_or_else(|| OutboundError::BadUrl("has no host".into()))?;
        let literal = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .ok();
        if let Some(ip) = literal
            && !self.allow_private
            && is_private(ip)
        {
            return Err(OutboundError::Refused(ip.to_string()));
        }
        let mut req = self.client.post(u).body(body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        match req.send().await {
            Ok(r) => Ok(r.status().as_u16()),
            Err(e) => {
                // The resolver's refusal, found in the error's chain.
                let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
                while let Some(s) = source {
                    if let Some(r) = s.downcast_ref::<RefusedName>() {
                        return Err(OutboundError::Refused(r.0.clone()));
                    }
                    source = s.source();
                }
                Err(OutboundError::Failed(e.to_string()))
            }
        }
    }
}
