//! One HTTP exchange with an IdP endpoint: the request traced as a client span (with
//! `traceparent` injected), the answer's body read up to a cap, and failures that may pass
//! (transport errors, timeouts, 5xx, 429) told apart from answers.

use std::time::Duration;

use tracing::Instrument;

use super::IdpError;

/// Largest answer we read; real ones are a few KiB.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// Sends a request and reads its (capped) body. Transport failures, 5xx and 429 come back as
/// retryable errors, with the server's `Retry-After`; any other status is the caller's to judge.
pub async fn exchange(
    builder: reqwest::RequestBuilder,
) -> Result<(http::StatusCode, Vec<u8>), (IdpError, Option<Duration>)> {
    let (client, request) = builder.build_split();
    let mut request =
        request.map_err(|_| (IdpError::Protocol("request cannot be built".into()), None))?;
    let span = crate::telemetry::otel::child_span!(
        "idp",
        otel.name = %format_args!("{} {}", request.method(), request.url().path()),
        otel.kind = "client",
        tokengate.peer = "idp",
        http.request.method = %request.method(),
        server.address = request.url().host_str().unwrap_or_default(),
        server.port = request.url().port_or_known_default(),
        url.path = request.url().path(),
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let sent = async {
        crate::telemetry::otel::inject(request.headers_mut());
        let result = send(&client, request).await;
        let span = tracing::Span::current();
        match &result {
            Ok((status, _)) => span.record("http.response.status_code", status.as_u16()),
            Err(_) => span.record("otel.status_code", "ERROR"),
        };
        result
    };
    sent.instrument(span).await
}

async fn send(
    client: &reqwest::Client,
    request: reqwest::Request,
) -> Result<(http::StatusCode, Vec<u8>), (IdpError, Option<Duration>)> {
    let resp = client.execute(request).await.map_err(|e| {
        let reason = if e.is_timeout() {
            "timeout"
        } else if e.is_connect() {
            "connect failed"
        } else {
            "transport error"
        };
        (IdpError::unavailable(reason), None)
    })?;
    let status = resp.status();
    let server_wait = resp
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = read_capped(resp).await.map_err(|e| (e, None))?;
    if status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS {
        let e = IdpError::Unavailable {
            reason: format!("HTTP {}", status.as_u16()),
            retry_after: server_wait.unwrap_or(Duration::from_secs(1)),
        };
        return Err((e, server_wait));
    }
    Ok((status, body))
}

async fn read_capped(mut resp: reqwest::Response) -> Result<Vec<u8>, IdpError> {
    if resp
        .content_length()
        .is_some_and(|l| l as usize > MAX_RESPONSE_BYTES)
    {
        return Err(IdpError::Protocol("response too large".into()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|_| IdpError::unavailable("response interrupted"))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(IdpError::Protocol("response too large".into()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
