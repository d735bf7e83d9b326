//! Authentication middlewares. Each one turns a caller's request into an authorised upstream
//! request (headers rewritten) or an RFC-shaped refusal.
//!
//! One module per middleware (`client_credentials`; `introspection` and `jwt` follow), plus
//! `claims` (reading claims) and `headers` (writing them, and the challenges).

pub mod claims;
pub mod client_credentials;
pub mod headers;

use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;

pub use client_credentials::ClientCredentials;

use crate::token::TokenKey;

/// A configured middleware instance.
pub enum Middleware {
    /// OAuth2 client credentials.
    ClientCredentials(ClientCredentials),
}

impl Middleware {
    /// Authorises the request, rewriting `parts.headers` for the upstream.
    pub async fn apply(&self, parts: &mut Parts) -> Result<Applied, AuthError> {
        match self {
            Self::ClientCredentials(m) => m.apply(&mut parts.headers).await,
        }
    }

    /// Drops the token this middleware attached (the upstream rejected it).
    pub async fn reject_token(&self, used: &UsedToken) {
        match self {
            Self::ClientCredentials(m) => m.cache().evict(&used.key, Some(used.version)).await,
        }
    }
}

/// What a middleware did to a request.
#[derive(Debug, Default)]
pub struct Applied {
    /// The user named by `usernameClaim`, for the access log.
    pub username: Option<String>,
    /// The token attached, so that an upstream 401 can evict exactly it.
    pub token: Option<UsedToken>,
}

/// A token a middleware attached.
#[derive(Debug, Clone, Copy)]
pub struct UsedToken {
    /// Its cache key.
    pub key: TokenKey,
    /// Its version.
    pub version: u64,
}

/// Why a request was refused. Each variant is one HTTP answer; internal detail stays in logs.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// No usable credentials on the request: 401 with a `Basic` challenge.
    #[error("client credentials required")]
    MissingCredentials {
        /// The realm to announce.
        realm: Arc<str>,
    },
    /// The IdP rejected the caller's credentials: 401 with a `Basic` challenge.
    #[error("invalid client credentials")]
    InvalidClient {
        /// The realm to announce.
        realm: Arc<str>,
    },
    /// The IdP refused to issue a token for this caller (e.g. `invalid_scope`): 403.
    #[error("the identity provider refused the token request")]
    Refused {
        /// The RFC 6749 error code.
        error: String,
    },
    /// The gateway's own configuration is rejected by the IdP, or the IdP misbehaves: 502.
    #[error("the gateway could not obtain a token")]
    Upstream,
    /// The IdP is unavailable and no valid token is cached: 503 with `Retry-After`.
    #[error("the identity provider is unavailable")]
    Unavailable {
        /// Suggested wait.
        retry_after: Duration,
    },
}
