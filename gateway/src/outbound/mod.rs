//! Calls the gateway makes to an identity provider's endpoints (token, introspection, key sets,
//! discovery): how their HTTP clients are built (TLS material, pooling, no redirects), the
//! exchange that caps and classifies an answer, bounded jittered retries, and a circuit breaker
//! per endpoint so that a dead IdP is not hammered by every node's every miss.
//!
//! What is *asked* of an endpoint (the RFC 6749 grant, RFC 7662 introspection, a JWKS) lives with
//! its user; this module only carries the call.

pub mod breaker;
pub mod client;
pub mod exchange;
pub mod tls;

use std::time::Duration;

pub use breaker::BreakerConfig;
pub use client::IdpClient;
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
