//! Answers the gateway writes itself: RFC 6749 §5.2-style JSON errors, with the challenges of
//! RFC 7235/6750 where a 401 calls for one.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};

use super::ProxyBody;
use crate::auth::AuthError;

/// A JSON response with `body` as it is.
pub fn json(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(super::full(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A JSON error body `{"error": code, "error_description": description}`.
pub fn error(status: StatusCode, code: &str, description: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "error": code, "error_description": description }).to_string();
    let mut resp = json(status, body);
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    resp
}

/// The answer to a refused request.
pub fn auth_error(e: &AuthError) -> Response<ProxyBody> {
    match e {
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
        AuthError::OverBudget { retry_after } => {
            let mut resp = error(
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
                "too many requests with unknown credentials; retry later",
            );
            resp.headers_mut().insert(
                RETRY_AFTER,
                HeaderValue::from(retry_after.as_secs_f64().ceil().max(1.0) as u64),
            );
            resp
        }
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
        AuthError::Unavailable { retry_after } => {
            let mut resp = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the identity provider is unavailable; retry later",
            );
            let secs = retry_after.as_secs().max(1);
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
            resp
        }
    }
}

/// RFC 6750 §3: `Bearer realm="...", error="...", error_description="..."`. Realms are checked
/// at load and descriptions are fixed strings, so neither holds a quote.
fn bearer_challenge(
    mut resp: Response<ProxyBody>,
    realm: &str,
    error: Option<(&str, &str)>,
) -> Response<ProxyBody> {
    let value = match error {
        None => format!("Bearer realm=\"{realm}\""),
        Some((code, description)) => format!(
            "Bearer realm=\"{realm}\", error=\"{code}\", error_description=\"{description}\""
        ),
    };
    let value = HeaderValue::try_from(value).unwrap_or(HeaderValue::from_static("Bearer"));
    resp.headers_mut().insert(WWW_AUTHENTICATE, value);
    resp
}

/// Adds the `Basic` challenge of `realm`.
pub fn challenge(mut resp: Response<ProxyBody>, realm: &str) -> Response<ProxyBody> {
    // The realm was checked at configuration load to contain no quote or control character.
    let value = HeaderValue::try_from(format!("Basic realm=\"{realm}\", charset=\"UTF-8\""))
        .unwrap_or(HeaderValue::from_static("Basic"));
    resp.headers_mut().insert(WWW_AUTHENTICATE, value);
    resp
}
