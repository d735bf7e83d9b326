//! The client side of an RFC 6749 token endpoint (client credentials grant, §4.4).
//!
//! One [`IdpClient`] per node: a pooled HTTP client, bounded jittered retries for failures that
//! may pass (transport errors, timeouts, 5xx, 429), and a circuit breaker per token endpoint so
//! that a dead IdP is not hammered by every node's every miss.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::Instrument;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand::Rng;
use serde::Deserialize;

use super::entry::{UnixMillis, now_millis};
use super::{AuthMethod, TokenRequest};
use crate::config::Secret;

/// Largest token response we read; real ones are a few KiB.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;
/// First retry delay; doubled per attempt, with full jitter.
const RETRY_BASE: Duration = Duration::from_millis(100);
/// Longest single retry delay (also caps a server's `Retry-After`).
const RETRY_CAP: Duration = Duration::from_secs(2);
/// Consecutive failed calls (each after its retries) that open the breaker.
const BREAKER_THRESHOLD: u32 = 3;
/// How long an open breaker fails fast before letting one trial call through.
const BREAKER_COOLDOWN: Duration = Duration::from_secs(5);

/// A token as the IdP issued it.
#[derive(Debug)]
pub struct IssuedToken {
    /// The access token.
    pub access_token: Secret,
    /// Granted scope, when the IdP said (RFC 6749 §5.1: omitted means as requested).
    pub scope: Option<String>,
    /// When the request was sent: the token cannot be older, so lifetimes count from here.
    pub issued_at: UnixMillis,
    /// `expires_in`, when the IdP sent it.
    pub expires_in: Option<Duration>,
}

/// Why no token was obtained. Each variant maps to one answer to the caller.
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
    /// The IdP answered something that is not an RFC 6749 response.
    #[error("the identity provider sent an invalid response ({0})")]
    Protocol(String),
}

impl IdpError {
    fn unavailable(reason: impl Into<String>) -> Self {
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

#[derive(Deserialize)]
struct SuccessBody {
    access_token: String,
    token_type: String,
    #[serde(default)]
    expires_in: Option<ExpiresIn>,
    #[serde(default)]
    scope: Option<String>,
}

/// Some IdPs send `expires_in` as a string; RFC 6749 says number. Accept both.
#[derive(Deserialize)]
#[serde(untagged)]
enum ExpiresIn {
    Number(u64),
    Text(String),
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

#[derive(Default)]
struct Breaker {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    trial_in_flight: bool,
}

/// A call let through by the breaker. If the call is dropped before its outcome is recorded
/// (its task was cancelled), a half-open trial slot is given back, so the breaker never stays
/// open because of a call that will never report.
struct Admitted<'a> {
    client: &'a IdpClient,
    endpoint: &'a str,
    recorded: bool,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if !self.recorded
            && let Some(b) = self.client.breakers().get_mut(self.endpoint)
        {
            b.trial_in_flight = false;
        }
    }
}

/// The circuit breaker in front of each IdP endpoint (`idpCircuitBreaker`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Failed calls in a row that open it.
    pub failures: u32,
    /// How long it stays open before one trial call goes through.
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: BREAKER_THRESHOLD,
            cooldown: BREAKER_COOLDOWN,
        }
    }
}

/// The node's client towards every configured token endpoint.
pub struct IdpClient {
    http: reqwest::Client,
    breakers: Mutex<HashMap<String, Breaker>>,
    breaker_threshold: u32,
    breaker_cooldown: Duration,
}

impl Default for IdpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl IdpClient {
    /// A client with a shared connection pool and the default circuit breaker.
    pub fn new() -> Self {
        Self::with_breaker(&BreakerConfig::default())
    }

    /// A client whose per-endpoint circuit breaker opens after `cfg.failures` failed calls
    /// in a row and lets one trial call through after `cfg.cooldown`.
    pub fn with_breaker(cfg: &BreakerConfig) -> Self {
        let http = http_builder()
            .build()
            .expect("reqwest client builds with static options");
        Self {
            http,
            breakers: Mutex::new(HashMap::new()),
            breaker_threshold: cfg.failures,
            breaker_cooldown: cfg.cooldown,
        }
    }

    /// Obtains a token, with retries and the breaker.
    pub async fn fetch(&self, req: &TokenRequest) -> Result<IssuedToken, IdpError> {
        self.call(req.token_url.as_str(), req.retries, || self.attempt(req))
            .await
    }

    /// Runs one call to an IdP endpoint (token, introspection, key set) through the endpoint's
    /// circuit breaker, retrying `attempt` up to `retries` times with jittered backoff when it
    /// fails retryably (it may return the server's `Retry-After`).
    pub async fn call<T, F, Fut>(
        &self,
        endpoint: &str,
        retries: u32,
        mut attempt: F,
    ) -> Result<T, IdpError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, (IdpError, Option<Duration>)>>,
    {
        self.admit(endpoint)?;
        let mut admitted = Admitted {
            client: self,
            endpoint,
            recorded: false,
        };
        let mut tries = 0;
        let started = std::time::Instant::now();
        let result = loop {
            match attempt().await {
                Err((e, server_wait)) if e.is_retryable() && tries < retries => {
                    let backoff = RETRY_BASE.saturating_mul(1 << tries.min(10)).min(RETRY_CAP);
                    let jittered = rand::rng().random_range(Duration::ZERO..=backoff);
                    tokio::time::sleep(server_wait.map_or(jittered, |w| w.min(RETRY_CAP))).await;
                    tries += 1;
                }
                other => break other.map_err(|(e, _)| e),
            }
        };
        self.record(endpoint, result.as_ref().err());
        admitted.recorded = true;
        crate::telemetry::metrics::metrics()
            .idp_call(result.is_ok(), started.elapsed().as_secs_f64());
        result
    }

    /// Fails fast while the endpoint's breaker is open; lets one trial through after cooldown.
    fn admit(&self, endpoint: &str) -> Result<(), IdpError> {
        let mut breakers = self.breakers();
        let b = breakers.entry(endpoint.to_owned()).or_default();
        match b.open_until {
            Some(until) if Instant::now() < until || b.trial_in_flight => {
                let retry_after = until
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_secs(1));
                Err(IdpError::Unavailable {
                    reason: "circuit open".into(),
                    retry_after,
                })
            }
            Some(_) => {
                b.trial_in_flight = true;
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn breakers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Breaker>> {
        // Breaker updates are single assignments: a poisoned lock still holds a usable state.
        self.breakers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, endpoint: &str, error: Option<&IdpError>) {
        let mut breakers = self.breakers();
        let b = breakers.entry(endpoint.to_owned()).or_default();
        b.trial_in_flight = false;
        // Only an unreachable or failing IdP counts (transport errors, timeouts, 5xx, 429). Any
        // other answer, 4xx or odd, may have been provoked by what a caller sent (a 20 KB client
        // id, a malformed token) and says nothing about the IdP's health: counting it would let
        // any anonymous caller lock every new client out.
        if matches!(error, Some(IdpError::Unavailable { .. })) {
            b.consecutive_failures += 1;
            if b.consecutive_failures >= self.breaker_threshold {
                if b.open_until.is_none() {
                    tracing::warn!(
                        token_url = endpoint,
                        "identity provider failing; circuit opened"
                    );
                }
                b.open_until = Some(Instant::now() + self.breaker_cooldown);
            }
        } else {
            if b.open_until.is_some() {
                tracing::info!(
                    token_url = endpoint,
                    "identity provider answering again; circuit closed"
                );
            }
            *b = Breaker::default();
        }
    }

    /// One HTTP exchange. On a retryable error, also returns the server's `Retry-After`.
    async fn attempt(
        &self,
        req: &TokenRequest,
    ) -> Result<IssuedToken, (IdpError, Option<Duration>)> {
        let mut builder = self
            .http
            .post(req.token_url.clone())
            .timeout(req.timeout)
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
        if req.auth_method == AuthMethod::ClientSecretBasic {
            builder = builder.header(
                http::header::AUTHORIZATION,
                basic_authorization(&req.client_id, req.client_secret.expose()),
            );
        }
        let builder = builder.body(form_body(req));
        let issued_at = now_millis();
        let (status, body) = exchange(builder).await?;
        if status.is_success() {
            return parse_success(&body, issued_at).map_err(|e| (e, None));
        }
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(err) if err.error == "invalid_client" => Err((IdpError::InvalidClient, None)),
            Ok(err) if is_error_code(&err.error) => {
                Err((IdpError::Refused { error: err.error }, None))
            }
            _ if status == http::StatusCode::UNAUTHORIZED => Err((IdpError::InvalidClient, None)),
            _ => Err((
                IdpError::Protocol(format!(
                    "HTTP {} without an RFC 6749 error",
                    status.as_u16()
                )),
                None,
            )),
        }
    }
}

/// How every client towards an IdP starts: our user agent, pooled connections, and redirects
/// never followed (an IdP endpoint that redirects is misconfigured, and following would carry
/// credentials elsewhere).
pub fn http_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(concat!("tokengate/", env!("CARGO_PKG_VERSION")))
        .pool_idle_timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
}

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

/// The form body of a client credentials token request (RFC 6749 §4.4.2).
fn form_body(req: &TokenRequest) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", "client_credentials");
    if !req.scopes.is_empty() {
        form.append_pair("scope", &req.scopes.join(" "));
    }
    if let Some(aud) = &req.audience {
        form.append_pair("audience", aud);
    }
    for (k, v) in &req.params {
        form.append_pair(k, v);
    }
    if req.auth_method == AuthMethod::ClientSecretPost {
        form.append_pair("client_id", &req.client_id);
        form.append_pair("client_secret", req.client_secret.expose());
    }
    form.finish()
}

/// RFC 6749 §2.3.1: id and secret are form-urlencoded (Appendix B) before being joined by `:`
/// and base64-encoded, so ids and secrets containing `:` or non-ASCII survive the trip.
pub fn basic_authorization(client_id: &str, client_secret: &str) -> String {
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "Basic {}",
        BASE64.encode(format!("{}:{}", enc(client_id), enc(client_secret)))
    )
}

/// RFC 6749 §5.2: `error` is a set of printable ASCII characters without `"` and `\`. We only
/// pass on codes of that shape, so nothing odd reaches a caller or a log.
pub fn is_error_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| (0x20..=0x7E).contains(&b) && b != b'"' && b != b'\\')
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

/// A successful token response (RFC 6749 §5.1): JSON with `access_token` and a `Bearer`
/// `token_type`; `expires_in` as a number (or a numeric string, as some IdPs send).
pub fn parse_success(body: &[u8], issued_at: UnixMillis) -> Result<IssuedToken, IdpError> {
    let ok: SuccessBody = serde_json::from_slice(body)
        .map_err(|_| IdpError::Protocol("token response is not RFC 6749 JSON".into()))?;
    // RFC 6750: we present the token as a bearer token; anything else we cannot use correctly.
    if !ok.token_type.eq_ignore_ascii_case("bearer") {
        return Err(IdpError::Protocol(format!(
            "unsupported token_type {:?}",
            ok.token_type.chars().take(20).collect::<String>()
        )));
    }
    if ok.access_token.is_empty() {
        return Err(IdpError::Protocol("empty access_token".into()));
    }
    let expires_in = match ok.expires_in {
        Some(ExpiresIn::Number(n)) => Some(n),
        Some(ExpiresIn::Text(t)) => Some(
            t.trim()
                .parse()
                .map_err(|_| IdpError::Protocol("expires_in is not a number".into()))?,
        ),
        None => None,
    };
    Ok(IssuedToken {
        access_token: Secret::new(ok.access_token),
        scope: ok.scope,
        issued_at,
        expires_in: expires_in.map(Duration::from_secs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(url: &str, timeout: Duration) -> TokenRequest {
        TokenRequest {
            token_url: url.parse().unwrap(),
            auth_method: AuthMethod::ClientSecretBasic,
            client_id: "c".into(),
            client_secret: Secret::new("s"),
            scopes: vec![],
            audience: None,
            params: vec![],
            default_lifetime: Duration::from_secs(60),
            timeout,
            retries: 0,
        }
    }

    #[tokio::test]
    async fn a_cancelled_trial_call_does_not_keep_the_circuit_open() {
        // An endpoint that accepts connections and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", silent.local_addr().unwrap());
        let mut client = IdpClient::new();
        client.breaker_threshold = 1;
        client.breaker_cooldown = Duration::from_millis(50);
        let slow = request(&url, Duration::from_millis(100));
        assert!(matches!(
            client.fetch(&slow).await,
            Err(IdpError::Unavailable { .. })
        ));
        let open = client.fetch(&slow).await;
        assert!(
            matches!(open, Err(IdpError::Unavailable { ref reason, .. }) if reason == "circuit open")
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
        let patient = request(&url, Duration::from_secs(30));
        // The half-open trial is admitted (it hangs), then its caller gives up.
        assert!(
            tokio::time::timeout(Duration::from_millis(100), client.fetch(&patient))
                .await
                .is_err()
        );
        // The next call is admitted as the new trial instead of failing fast forever.
        assert!(
            tokio::time::timeout(Duration::from_millis(100), client.fetch(&patient))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn answers_a_caller_can_provoke_never_open_the_circuit() {
        // An IdP that answers every request 400 with an HTML page (not RFC 6749), as IdPs and
        // their front proxies do for an oversized client id.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = vec![0; 65536];
                    let _ = s.read(&mut buf).await;
                    let body = "<html>Bad Request</html>";
                    let resp = format!(
                        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        let mut client = IdpClient::new();
        client.breaker_threshold = 1;
        for _ in 0..4 {
            let e = client
                .fetch(&request(&url, Duration::from_secs(5)))
                .await
                .unwrap_err();
            assert!(matches!(e, IdpError::Protocol(_)), "{e:?}");
        }
        assert!(
            client
                .breakers()
                .get(url.as_str())
                .unwrap()
                .open_until
                .is_none()
        );
    }

    #[test]
    fn basic_credentials_are_form_encoded_before_base64() {
        let h = basic_authorization("a:b c", "p+/%");
        let decoded = BASE64.decode(h.strip_prefix("Basic ").unwrap()).unwrap();
        assert_eq!(String::from_utf8(decoded).unwrap(), "a%3Ab+c:p%2B%2F%25");
    }

    #[test]
    fn non_bearer_token_type_is_rejected() {
        let body = br#"{"access_token":"x","token_type":"mac"}"#;
        assert!(matches!(parse_success(body, 0), Err(IdpError::Protocol(_))));
        let body = br#"{"access_token":"x","token_type":"Bearer","expires_in":"60"}"#;
        assert_eq!(
            parse_success(body, 0).unwrap().expires_in,
            Some(Duration::from_secs(60))
        );
    }

    proptest::proptest! {
        /// Whatever a token endpoint answers: a usable bearer token or a protocol error.
        #[test]
        fn any_token_response_is_judged_safely(
            token_type in "(Bearer|bearer|mac|)",
            expires in "(60|\"60\"|-1|1e9|\"x\"|null|18446744073709551616)",
            junk in "[ -~]{0,40}",
        ) {
            let body = format!(r#"{{"access_token":"t","token_type":"{token_type}","expires_in":{expires}}}"#);
            if let Ok(t) = parse_success(body.as_bytes(), 0) {
                proptest::prop_assert!(token_type.eq_ignore_ascii_case("bearer"));
                proptest::prop_assert_eq!(t.access_token.expose(), "t");
            }
            let _ = parse_success(junk.as_bytes(), 0);
        }
    }
}
