//! RFC 6749 §5.2 error responses of the token endpoint.

use http::header::{ALLOW, PRAGMA};
use http::{HeaderValue, Method, Response, StatusCode};

use crate::http::{BoxBody, IntoResponse, response};

/// The realm of the token endpoint's `Basic` challenge.
pub const REALM: &str = "tokengate-issuer";

/// A refused token request. The description is a fixed, caller-safe text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    /// HTTP status.
    pub status: StatusCode,
    /// The RFC 6749 error code.
    pub code: &'static str,
    /// `error_description`.
    pub description: &'static str,
    /// Whether to challenge for `Basic` credentials (a failed `client_secret_basic`).
    pub challenge: bool,
}

impl OAuthError {
    fn new(status: StatusCode, code: &'static str, description: &'static str) -> Self {
        Self {
            status,
            code,
            description,
            challenge: false,
        }
    }

    /// 400 `invalid_request`: malformed, a parameter missing or repeated.
    pub fn invalid_request(description: &'static str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    /// 401 `invalid_client`. With `challenge`, `WWW-Authenticate: Basic` (§5.2: required when
    /// the client tried the `Authorization` header, and a hint of the supported scheme else).
    pub fn invalid_client(challenge: bool, description: &'static str) -> Self {
        Self {
            challenge,
            ..Self::new(StatusCode::UNAUTHORIZED, "invalid_client", description)
        }
    }

    /// 400 `unsupported_grant_type`.
    pub fn unsupported_grant_type() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only grant_type=client_credentials is supported",
        )
    }

    /// 400 `invalid_scope`.
    pub fn invalid_scope() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "a requested scope is not granted to this client",
        )
    }

    /// 503 `temporarily_unavailable`, with `Retry-After`.
    pub fn unavailable(description: &'static str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            description,
        )
    }

    /// 429 `temporarily_unavailable`, with `Retry-After`: this caller asks faster than its
    /// requests can be checked.
    pub fn too_many_requests(description: &'static str) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "temporarily_unavailable",
            description,
        )
    }

    /// 500 `server_error`.
    pub fn server_error() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "the token could not be issued",
        )
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response<BoxBody> {
        let mut resp = response::error(self.status, self.code, self.description);
        resp.headers_mut()
            .insert(PRAGMA, HeaderValue::from_static("no-cache"));
        if matches!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            resp = response::with_retry_after(resp, 1);
        }
        if self.challenge {
            resp = response::challenge(resp, REALM);
        }
        resp
    }
}

/// 405 with `Allow`, for a method the endpoint does not serve.
pub fn method_not_allowed(allowed: &[Method]) -> Response<BoxBody> {
    let mut resp = response::error(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request",
        "method not allowed",
    );
    let allow = allowed
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if let Ok(v) = HeaderValue::try_from(allow) {
        resp.headers_mut().insert(ALLOW, v);
    }
    resp
}
