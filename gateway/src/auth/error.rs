//! Why a middleware refused a request, and the RFC-shaped answer each reason gets.

use std::sync::Arc;
use std::time::Duration;

use http::{Response, StatusCode};

use crate::http::response::{bearer_challenge, challenge, error, with_retry_after};
use crate::http::{BoxBody, IntoResponse};

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
    /// The route needs a verified client certificate and the connection carries none: 403
    /// (the credential belongs to the TLS handshake, which HTTP cannot challenge for).
    #[error("a verified client certificate is required")]
    CertificateRequired,
    /// The caller's certificate does not satisfy the route's `claims` expression: 403.
    #[error("the client certificate is not allowed")]
    CertificateRefused,
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

impl IntoResponse for &AuthError {
    /// The answer to a refused request.
    fn into_response(self) -> Response<BoxBody> {
        match self {
            AuthError::MissingCredentials { realm } => challenge(
                error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "client credentials required (HTTP Basic)",
                ),
                realm,
            ),
            AuthError::InvalidClient { realm } => challenge(
                error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "client authentication failed",
                ),
                realm,
            ),
            AuthError::MissingToken { realm } => bearer_challenge(
                error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "a bearer token is required",
                ),
                realm,
                None,
            ),
            AuthError::InvalidToken { realm, reason } => bearer_challenge(
                error(StatusCode::UNAUTHORIZED, "invalid_token", reason),
                realm,
                Some(("invalid_token", reason)),
            ),
            AuthError::InvalidRequest {
                realm,
                basic: true,
                reason,
            } => challenge(
                error(StatusCode::BAD_REQUEST, "invalid_request", reason),
                realm,
            ),
            AuthError::InvalidRequest {
                realm,
                basic: false,
                reason,
            } => bearer_challenge(
                error(StatusCode::BAD_REQUEST, "invalid_request", reason),
                realm,
                Some(("invalid_request", reason)),
            ),
            AuthError::OverBudget { retry_after } => with_retry_after(
                error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "temporarily_unavailable",
                    "too many requests with unknown credentials; retry later",
                ),
                retry_after.as_secs_f64().ceil() as u64,
            ),
            AuthError::InsufficientScope { realm } => bearer_challenge(
                error(
                    StatusCode::FORBIDDEN,
                    "insufficient_scope",
                    "the token's claims do not allow this request",
                ),
                realm,
                Some((
                    "insufficient_scope",
                    "the token's claims do not allow this request",
                )),
            ),
            AuthError::CertificateRequired => error(
                StatusCode::FORBIDDEN,
                "certificate_required",
                "a verified client certificate is required",
            ),
            AuthError::CertificateRefused => error(
                StatusCode::FORBIDDEN,
                "access_denied",
                "the client certificate is not allowed on this route",
            ),
            AuthError::Refused { error: code } => error(
                StatusCode::FORBIDDEN,
                code,
                "the identity provider refused to issue a token",
            ),
            AuthError::Upstream => error(
                StatusCode::BAD_GATEWAY,
                "server_error",
                "the gateway could not obtain a token",
            ),
            AuthError::Unavailable { retry_after } => with_retry_after(
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "the identity provider is unavailable; retry later",
                ),
                retry_after.as_secs(),
            ),
        }
    }
}
