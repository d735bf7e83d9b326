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
pub mod limits;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::AUTHORIZATION;
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
    ///
    /// A request with more than one `Authorization` field is refused whatever the middleware:
    /// the field is a singleton (RFC 9110 §11.6.2), and a second copy is exactly how an
    /// unverified credential would ride along with a verified one (RFC 6750 §2, §3.1).
    pub async fn apply(&self, parts: &mut Parts, caller: &Caller) -> Result<Applied, AuthError> {
        let mut authorization = parts.headers.get_all(AUTHORIZATION).iter();
        if authorization.next().is_some() && authorization.next().is_some() {
            return Err(AuthError::InvalidRequest {
                realm: self.realm(),
                basic: matches!(self, Self::ClientCredentials(_)),
                reason: "more than one Authorization header",
            });
        }
        match self {
            Self::ClientCredentials(m) => m.apply(&mut parts.headers, caller).await,
            Self::Introspection(m) => m.apply(parts, caller).await,
            Self::Jwt(m) => m.apply(parts).await,
        }
    }

    fn realm(&self) -> Arc<str> {
        match self {
            Self::ClientCredentials(m) => m.realm(),
            Self::Introspection(m) => m.realm(),
            Self::Jwt(m) => m.realm(),
        }
    }

    /// The upstream rejected the token this middleware attached: drops it fleet-wide if it may
    /// be the culprit. Whether it was dropped (and a retry with a fresh one makes sense).
    pub async fn reject_token(&self, used: &UsedToken) -> bool {
        match self {
            Self::ClientCredentials(m) => m.reject_token(used).await,
            // These pass the caller's own token on (or none): nothing of ours to drop.
            Self::Introspection(_) | Self::Jwt(_) => false,
        }
    }
}

/// Who is calling, as far as the edge could tell: the address is the peer's, or the one a
/// trusted proxy named (`forwardedHeaders.trustedIPs`).
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    /// The caller's address; miss budgets are kept per address.
    pub address: IpAddr,
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
    /// When the IdP issued it (ms since the epoch).
    pub issued_at: u64,
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
    /// The request carries credentials in more than one place, or more than one of them:
    /// 400 with `error="invalid_request"` (RFC 6750 §3.1, RFC 6749 §5.2).
    #[error("invalid request: {reason}")]
    InvalidRequest {
        /// The realm to announce.
        realm: Arc<str>,
        /// Announce a `Basic` challenge (client credentials), else `Bearer`.
        basic: bool,
        /// A fixed, caller-safe description.
        reason: &'static str,
    },
    /// Credentials the gateway has not seen cost IdP calls, and this caller (or client id) has
    /// spent its budget of them: 429 with `Retry-After`.
    #[error("too many unknown credentials")]
    OverBudget {
        /// When a miss will be allowed again.
        retry_after: Duration,
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
