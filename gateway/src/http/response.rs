//! Answers the gateway writes itself: RFC 6749 §5.2-style JSON errors, with the challenges of
//! RFC 7235/6750 where a 401 calls for one, and [`IntoResponse`], the one way an error of a
//! layer above becomes an answer.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};

use super::BoxBody;

/// An error (or outcome) that knows the answer a caller gets for it. Each layer implements it for
/// its own errors, so the mapping from a variant to a status and challenge is written once, next
/// to the variant.
pub trait IntoResponse {
    /// The answer to the caller.
    fn into_response(self) -> Response<BoxBody>;
}

/// A JSON response with `body` as it is.
pub fn json(status: StatusCode, body: String) -> Response<BoxBody> {
    let mut resp = Response::new(super::body::full(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A JSON error body `{"error": code, "error_description": description}`.
pub fn error(status: StatusCode, code: &str, description: &str) -> Response<BoxBody> {
    let body = serde_json::json!({ "error": code, "error_description": description }).to_string();
    let mut resp = json(status, body);
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    resp
}

/// RFC 6750 §3: `Bearer realm="...", error="...", error_description="..."`. Realms are checked
/// at load and descriptions are fixed strings, so neither holds a quote.
pub fn bearer_challenge(
    mut resp: Response<BoxBody>,
    realm: &str,
    error: Option<(&str, &str)>,
) -> Response<BoxBody> {
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
pub fn challenge(mut resp: Response<BoxBody>, realm: &str) -> Response<BoxBody> {
    // The realm was checked at configuration load to contain no quote or control character.
    let value = HeaderValue::try_from(format!("Basic realm=\"{realm}\", charset=\"UTF-8\""))
        .unwrap_or(HeaderValue::from_static("Basic"));
    resp.headers_mut().insert(WWW_AUTHENTICATE, value);
    resp
}

/// Adds `Retry-After: <seconds>`, at least one (RFC 9110 §10.2.3).
pub fn with_retry_after(mut resp: Response<BoxBody>, secs: u64) -> Response<BoxBody> {
    resp.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
    resp
}
