//! Calls the gateway makes to an identity provider's endpoints (token, introspection, key sets,
//! discovery): how their HTTP clients are built (TLS material, pooling, no redirects), the
//! exchange that caps and classifies an answer, bounded jittered retries, and a circuit breaker
//! per endpoint so that a dead IdP is not hammered by every node's every miss.
//!
//! What is *asked* of an endpoint (the RFC 6749 grant, RFC 7662 introspection, a JWKS) lives with
//! its user; this module only carries the call.

pub mod breaker;
pub mod client;
pub mod client_auth;
pub mod exchange;
pub mod tls;

use std::time::Duration;

pub use breaker::BreakerConfig;
pub use client::IdpClient;
pub use client_auth::{ClientAuth, ClientKey};
pub use exchange::exchange;
pub use tls::{HttpClientConfig, HttpTls, StoreTls};

/// One IdP attempt; IdPs answer token requests in milliseconds when healthy.
pub const DEFAULT_IDP_TIMEOUT: Duration = Duration::from_secs(5);
/// Retries after the first IdP attempt (transport errors, 5xx and 429 only).
pub const DEFAULT_IDP_RETRIES: u32 = 2;

/// Why a call to an IdP endpoint (token, introspection, key set) gave nothing usable. Each
/// variant maps to one answer to the caller.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IdpError {
    /// RFC 6749 §5.2 `invalid_client`: the credentials are wrong. Not retried.
    #[error("the identity provider rejected the client credentials")]
    InvalidClient,
    /// Another RFC 6749 §5.2 error (`invalid_scope`, `unauthorized_client`, ...). Not retried.
    #[error("the identity provider refused the request: {error}")]
    Refused {
        /// The OAuth2 error code (a registered token, safe to show).
        error: String,
    },
    /// The IdP cannot be reached or is failing; try again after `retry_after`.
    #[error("the identity provider is unavailable ({reason})")]
    Unavailable {
        /// Short operator-facing cause.
        reason: String,
        /// Suggested wait.
        retry_after: Duration,
    },
    /// The IdP answered something the protocol does not allow (RFC 6749, 7662, 7517).
    #[error("the identity provider sent an invalid response ({0})")]
    Protocol(String),
}

impl IdpError {
    pub(crate) fn unavailable(reason: impl Into<String>) -> Self {
        Self::Unavailable {
            reason: reason.into(),
            retry_after: Duration::from_secs(1),
        }
    }

    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

/// How every client towards an IdP starts: our user agent, pooled connections, redirects never
/// followed (an IdP endpoint that redirects is misconfigured, and following would carry
/// credentials elsewhere), and the system's trusted roots beside the built-in ones, as
/// upstreams are verified (an IdP behind a company CA installed in the system trust store, or
/// named by `SSL_CERT_FILE`, needs no `caFile`).
pub fn client_builder() -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder()
        .user_agent(concat!("tokengate/", env!("CARGO_PKG_VERSION")))
        .pool_idle_timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none());
    tls::system_roots()
        .iter()
        .filter_map(|der| reqwest::Certificate::from_der(der).ok())
        .fold(builder, reqwest::ClientBuilder::add_root_certificate)
}

/// Whether `endpoint` (`host:port`) is this host: a loopback address or `localhost`. A secret
/// sent there in clear never crosses a network.
pub fn on_this_host(endpoint: &str) -> bool {
    let host = endpoint.rsplit_once(':').map_or(endpoint, |(h, _)| h);
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The first of `endpoints` that is not on this host: where a secret sent without TLS would
/// cross a network in clear.
pub fn first_off_host<'a>(endpoints: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    endpoints.into_iter().find(|e| !on_this_host(e))
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_loopback_and_localhost_are_this_host() {
        for here in [
            "127.0.0.1:7000",
            "127.9.9.9:1",
            "[::1]:7000",
            "localhost:6379",
            "LOCALHOST:1",
        ] {
            assert!(super::on_this_host(here), "{here}");
        }
        for away in [
            "10.0.0.5:7000",
            "cache-1:7000",
            "[2001:db8::1]:7000",
            "0.0.0.0:7000",
            "localhost.evil.com:1",
        ] {
            assert!(!super::on_this_host(away), "{away}");
        }
        assert_eq!(
            super::first_off_host(["127.0.0.1:1", "cache-2:7000", "cache-3:7000"]),
            Some("cache-2:7000")
        );
    }
}
