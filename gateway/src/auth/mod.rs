//! Authentication middlewares. Each one turns a caller's request into an authorised upstream
//! request (headers rewritten) or an RFC-shaped refusal.
//!
//! One module per middleware (`client_credentials`, `introspection`, `jwt`), plus `bearer`
//! (finding the caller's token), `claims` (reading claims and the authorization expressions) and
//! `headers` (writing claims onto the upstream request).

pub mod bearer;
pub mod claims;
pub mod client_credentials;
pub mod headers;
pub mod introspection;
pub mod jwt;

use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;

pub use client_credentials::ClientCredentials;
pub use introspection::Introspection;
pub use jwt::Jwt;

use crate::token::TokenKey;

/// A configured middleware instance.
pub enum Middleware {
    /// OAuth2 client credentials.
    ClientCredentials(ClientCredentials),
    /// RFC 7662 token introspection.
    Introspection(Introspection),
    /// Local JWT validation.
    Jwt(Jwt),
}

impl Middleware {
    /// The name it has in the configuration.
    pub fn name(&self) -> &str {
        match self {
            Self::ClientCredentials(m) => m.name(),
            Self::Introspection(m) => m.name(),
            Self::Jwt(m) => m.name(),
        }
    }

    /// Its kind, as the configuration spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ClientCredentials(_) => "clientCredentials",
            Self::Introspection(_) => "introspection",
            Self::Jwt(_) => "jwt",
        }
    }

    /// Authorises the request, rewriting `parts` for the upstream.
    pub async fn apply(&self, parts: &mut Parts) -> Result<Applied, AuthError> {
        match self {
            Self::ClientCredentials(m) => m.apply(&mut parts.headers).await,
            Self::Introspection(m) => m.apply(parts).await,
            Self::Jwt(m) => m.apply(parts).await,
        }
    }

    /// Drops the token this middleware attached (the upstream rejected it).
    pub async fn reject_token(&self, used: &UsedToken) {
        match self {
            Self::ClientCredentials(m) => m.cache().evict(&used.key, Some(used.version)).await,
            // These pass the caller's own token on (or none): nothing of ours to drop.
            Self::Introspection(_) | Self::Jwt(_) => {}
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
    /// No bearer token on the request: 401 with a bare `Bearer` challenge (RFC 6750 §3.1: a
    /// request without authentication information gets no error code).
    #[error("bearer token required")]
    MissingToken {
        /// The realm to announce.
        realm: Arc<str>,
    },
    /// The bearer token is inactive, expired, malformed or not signed by a trusted key: 401
    /// with `error="invalid_token"` (RFC 6750 §3.1).
    #[error("invalid bearer token: {reason}")]
    InvalidToken {
        /// The realm to announce.
        realm: Arc<str>,
        /// A fixed, caller-safe description (never the token or a key).
        reason: &'static str,
    },
    /// The caller is authenticated but its claims do not satisfy the route's `claims`
    /// expression: 403 with `error="insufficient_scope"` (RFC 6750 §3.1).
    #[error("claims do not satisfy the policy")]
    InsufficientScope {
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
    /// The IdP is unavailable and no valid answer is cached: 503 with `Retry-After`. Never a
    /// silent allow.
    #[error("the identity provider is unavailable")]
    Unavailable {
        /// Suggested wait.
        retry_after: Duration,
    },
}
