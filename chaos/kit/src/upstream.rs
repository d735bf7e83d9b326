//! An echo upstream, like traefik/whoami: it answers every request with a JSON description of
//! what it received (method, path, headers, body size, remote address) and records it.
//!
//! - `GET /bytes/N` answers N bytes, to exercise response streaming.
//! - Any request whose bearer token was passed to [`EchoUpstream::reject_token`] gets 401, as an
//!   API does for a revoked token.
//! - [`EchoUpstream::set_delay`] holds every answer, to keep requests in flight.
//! - A WebSocket upgrade (`Upgrade: websocket`) is accepted, and every message is sent back.
//! - [`EchoUpstream::start_tls`] serves HTTPS (ALPN as its configuration offers).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::serve;

/// A request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers in arrival order.
    pub headers: HeaderMap,
    /// Body length, counted while streaming.
    pub body_len: u64,
    /// The HTTP version it arrived in.
    pub version: http::Version,
    /// The caller's TLS client certificate (DER), when it presented one.
    pub client_certificate: Option<Vec<u8>>,
}

impl Seen {
    /// The first value of header `name`, if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }

    /// The bearer token it carried.
    pub fn bearer(&self) -> Option<&str> {
        self.headers
            .get(http::header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")
    }
}

/// The header a load driver names its caller in, for [`EchoUpstream::verify_tokens`].
pub const CALLER_HEADER: &str = "x-chaos-client";

/// What token verification found, over every request checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Verdicts {
    /// Requests checked.
    pub checked: u64,
    /// Requests without a bearer token.
    pub missing: u64,
    /// Tokens whose signature does not verify.
    pub bad_signature: u64,
    /// Tokens past their `exp` when they arrived.
    pub expired: u64,
    /// Tokens issued to another client than the caller's.
    pub cross_client: u64,
}

impl Verdicts {
    /// Bad tokens of any kind.
    pub fn bad(&self) -> u64 {
        self.missing + self.bad_signature + self.expired + self.cross_client
    }
}

#[derive(Default)]
struct State {
    seen: Mutex<Vec<Seen>>,
    verifier: std::sync::OnceLock<(jsonwebtoken::DecodingKey, bool)>,
    verdicts: Mutex<Verdicts>,
    rejected: Mutex<HashSet<String>>,
    reject_all: std::sync::atomic::AtomicBool,
    delay: Mutex<Duration>,
    fail_with: Mutex<Option<StatusCode>>,
}

/// A running echo upstream. Stops when dropped.
pub struct EchoUpstream {
    addr: SocketAddr,
    scheme: &'static str,
    state: Arc<State>,
    stop: CancellationToken,
    tracing: serve::Tracing,
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl EchoUpstream {
    /// Records a server span for every request from now on, continuing the caller's W3C
    /// trace context (tests of distributed tracing).
    pub fn trace_to(&self, tracer: opentelemetry_sdk::trace::SdkTracer) {
        self.tracing.set(tracer);
    }

    /// Starts an echo upstream on a free loopback port.
    pub async fn start() -> Self {
        Self::start_on(([127, 0, 0, 1], 0).into())
            .await
            .expect("bind loopback")
    }

    /// Starts an echo upstream on `addr`.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Self> {
        Self::start_with(addr, None).await
    }

    /// Starts an HTTPS echo upstream on a free loopback port.
    pub async fn start_tls(tls: Arc<rustls::ServerConfig>) -> Self {
        Self::start_with(([127, 0, 0, 1], 0).into(), Some(tls))
            .await
            .expect("bind loopback")
    }

    async fn start_with(
        addr: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<Self> {
        let state = Arc::new(State::default());
        let stop = CancellationToken::new();
        let s = Arc::clone(&state);
        let handler: serve::Handler = Arc::new(move |req, remote| {
            let s = Arc::clone(&s);
            Box::pin(async move { Some(handle(&s, req, remote).await) })
        });
        let tracing = serve::Tracing::default();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let addr = serve::start(addr, handler, tracing.clone(), stop.clone(), tls).await?;
        Ok(Self {
            addr,
            scheme,
            state,
            stop,
            tracing,
        })
    }

    /// `http://127.0.0.1:PORT` (`https://` when it serves TLS).
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// From now on, answer 401 to requests bearing `token`.
    pub fn reject_token(&self, token: &str) {
        self.state.rejected.lock().unwrap().insert(token.to_owned());
    }

    /// From now on, answer 401 to every request (`false` to stop).
    pub fn reject_all(&self, on: bool) {
        self.state
            .reject_all
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// From now on checks the bearer token of every request against `key` (RS256): the
    /// signature, `exp`, and that its `client_id` is the caller named in [`CALLER_HEADER`].
    /// With `keep_seen` false, requests are no longer recorded (long load runs).
    pub fn verify_tokens(&self, key: jsonwebtoken::DecodingKey, keep_seen: bool) {
        let _ = self.state.verifier.set((key, keep_seen));
    }

    /// What verification found so far.
    pub fn verdicts(&self) -> Verdicts {
        *self.state.verdicts.lock().unwrap()
    }

    /// Answer every request with `status` (a 503 for a sick server), or normally again with
    /// `None`.
    pub fn fail_with(&self, status: Option<StatusCode>) {
        *self.state.fail_with.lock().unwrap() = status;
    }

    /// Hold every answer this long.
    pub fn set_delay(&self, d: Duration) {
        *self.state.delay.lock().unwrap() = d;
    }
}

async fn handle(
    state: &State,
    mut req: Request<Incoming>,
    remote: SocketAddr,
) -> Response<Full<Bytes>> {
    let websocket = req
        .headers()
        .get(http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let (parts, mut body) = req.into_parts();
    let mut body_len = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => body_len += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => break,
        }
    }
    let seen = Seen {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or("/".into(), |p| p.to_string()),
        headers: parts.headers.clone(),
        body_len,
        version: parts.version,
        client_certificate: parts
            .extensions
            .get::<serve::Peer>()
            .and_then(|p| p.certificate.clone()),
    };
    let rejected = state.reject_all.load(std::sync::atomic::Ordering::Relaxed)
        || seen
            .bearer()
            .is_some_and(|t| state.rejected.lock().unwrap().contains(t));
    let keep = match state.verifier.get() {
        Some((key, keep)) => {
            verify(state, key, &seen);
            *keep
        }
        None => true,
    };
    if keep {
        state.seen.lock().unwrap().push(seen.clone());
    }
    let delay = *state.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if rejected {
        let mut resp = Response::new(Full::new(Bytes::from_static(
            br#"{"error":"invalid_token"}"#,
        )));
        *resp.status_mut() = StatusCode::UNAUTHORIZED;
        resp.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
        return resp;
    }
    if let Some(status) = *state.fail_with.lock().unwrap() {
        let mut resp = Response::new(Full::new(Bytes::from_static(br#"{"error":"failing"}"#)));
        *resp.status_mut() = status;
        return resp;
    }
    if let Some(upgrade) = upgrade {
        return websocket_echo(&seen, upgrade);
    }
    if let Some(n) = seen
        .path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<usize>().ok())
    {
        return Response::new(Full::new(Bytes::from(vec![b'x'; n])));
    }
    let mut headers = serde_json::Map::new();
    for (name, value) in &seen.headers {
        let entry = headers.entry(name.as_str()).or_insert_with(|| json!([]));
        entry
            .as_array_mut()
            .unwrap()
            .push(json!(value.to_str().unwrap_or("<binary>")));
    }
    let body = json!({
        "method": seen.method,
        "path": seen.path,
        "headers": headers,
        "body_len": body_len,
        "remote": remote.to_string(),
    });
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Accepts a WebSocket handshake (RFC 6455 §4.2.2) and echoes every data message.
fn websocket_echo(seen: &Seen, upgrade: hyper::upgrade::OnUpgrade) -> Response<Full<Bytes>> {
    use futures_util::{SinkExt, StreamExt};
    let Some(key) = seen.headers.get("sec-websocket-key") else {
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::BAD_REQUEST;
        return resp;
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            hyper_util::rt::TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        while let Some(Ok(message)) = ws.next().await {
            if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                return;
            }
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("upgrade"),
    );
    h.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("websocket"),
    );
    h.insert(
        "sec-websocket-accept",
        http::HeaderValue::from_str(&accept).expect("base64 is a valid value"),
    );
    resp
}

/// Checks one request's token and counts the verdict.
fn verify(state: &State, key: &jsonwebtoken::DecodingKey, seen: &Seen) {
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.validate_aud = false;
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    let caller = seen
        .headers
        .get(CALLER_HEADER)
        .and_then(|v| v.to_str().ok());
    let decoded = seen
        .bearer()
        .map(|t| jsonwebtoken::decode::<serde_json::Value>(t, key, &validation));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut v = state.verdicts.lock().unwrap();
    v.checked += 1;
    match decoded {
        None => v.missing += 1,
        Some(Err(_)) => v.bad_signature += 1,
        Some(Ok(t)) => {
            if t.claims["exp"].as_u64().is_none_or(|exp| exp <= now) {
                v.expired += 1;
            }
            if caller.is_some_and(|c| t.claims["client_id"].as_str() != Some(c)) {
                v.cross_client += 1;
            }
        }
    }
}
