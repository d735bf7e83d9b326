//! A fake OAuth2 identity provider.
//!
//! `POST /token` implements the client credentials grant of RFC 6749 §4.4 with both client
//! authentication methods of §2.3.1 (`client_secret_basic`, with form-urlencoded id and secret,
//! and `client_secret_post`), and answers errors as §5.2 says. Tokens are RS256 JWTs whose keys
//! are published at `GET /jwks`. Tests steer it: token lifetime, latency, failure modes, and
//! they read per-client counters and every request it received (secrets left out).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::serve;

/// The test-only RSA key the fake IdP signs with. Never use it for anything else.
const SIGNING_KEY_PEM: &str = include_str!("idp-test-key.pem");
const KID: &str = "fake-idp-1";

/// How the IdP behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdpMode {
    /// Answers normally.
    Healthy,
    /// Answers 503 to every token request.
    ServerError,
    /// Closes every connection without answering (as if the process were gone).
    Unreachable,
}

/// One token request as the IdP saw it (client secrets are never recorded).
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// `basic` or `post`.
    pub auth_method: &'static str,
    /// The authenticated (or claimed) client id.
    pub client_id: String,
    /// Form parameters other than `client_secret`.
    pub params: Vec<(String, String)>,
}

struct State {
    clients: Mutex<HashMap<String, String>>,
    lifetime: Mutex<Duration>,
    latency: Mutex<Duration>,
    mode: Mutex<IdpMode>,
    omit_expires_in: AtomicBool,
    opaque: AtomicBool,
    fail_next: AtomicU64,
    issued: Mutex<HashMap<String, u64>>,
    seen: Mutex<Vec<SeenRequest>>,
    jti: AtomicU64,
    key: EncodingKey,
    issuer: Mutex<String>,
}

/// A running fake IdP on a loopback port. Stops when dropped.
pub struct FakeIdp {
    addr: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
}

impl Drop for FakeIdp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FakeIdp {
    /// Starts an IdP on a free loopback port with no clients and a 60 s token lifetime.
    pub async fn start() -> Self {
        Self::start_on(([127, 0, 0, 1], 0).into())
            .await
            .expect("bind loopback")
    }

    /// Starts an IdP on `addr`.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Self> {
        let state = Arc::new(State {
            clients: Mutex::new(HashMap::new()),
            lifetime: Mutex::new(Duration::from_secs(60)),
            latency: Mutex::new(Duration::ZERO),
            mode: Mutex::new(IdpMode::Healthy),
            omit_expires_in: AtomicBool::new(false),
            opaque: AtomicBool::new(false),
            fail_next: AtomicU64::new(0),
            issued: Mutex::new(HashMap::new()),
            seen: Mutex::new(Vec::new()),
            jti: AtomicU64::new(0),
            key: EncodingKey::from_rsa_pem(SIGNING_KEY_PEM.as_bytes()).expect("test key parses"),
            issuer: Mutex::new(String::new()),
        });
        let stop = CancellationToken::new();
        let s = Arc::clone(&state);
        let handler: serve::Handler = Arc::new(move |req, _| {
            let s = Arc::clone(&s);
            Box::pin(async move { handle(&s, req).await })
        });
        let addr = serve::start(addr, handler, stop.clone()).await?;
        *state.issuer.lock().unwrap() = format!("http://{addr}");
        Ok(Self { addr, state, stop })
    }

    /// The token endpoint URL.
    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The JWKS URL.
    pub fn jwks_url(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    /// Registers (or re-registers) a client.
    pub fn register(&self, client_id: &str, secret: &str) {
        self.state
            .clients
            .lock()
            .unwrap()
            .insert(client_id.to_owned(), secret.to_owned());
    }

    /// Lifetime of tokens issued from now on.
    pub fn set_token_lifetime(&self, d: Duration) {
        *self.state.lifetime.lock().unwrap() = d;
    }

    /// Delay before every answer.
    pub fn set_latency(&self, d: Duration) {
        *self.state.latency.lock().unwrap() = d;
    }

    /// Switches the failure mode.
    pub fn set_mode(&self, mode: IdpMode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    /// Leaves `expires_in` out of responses (the JWT `exp` still says when it expires).
    pub fn omit_expires_in(&self, omit: bool) {
        self.state.omit_expires_in.store(omit, Ordering::Relaxed);
    }

    /// Issues opaque random tokens instead of JWTs (no `exp` to read).
    pub fn opaque_tokens(&self, opaque: bool) {
        self.state.opaque.store(opaque, Ordering::Relaxed);
    }

    /// Answers the next `n` token requests with 503, then recovers.
    pub fn fail_next(&self, n: u64) {
        self.state.fail_next.store(n, Ordering::Relaxed);
    }

    /// Tokens issued to `client_id` so far.
    pub fn issued(&self, client_id: &str) -> u64 {
        self.state
            .issued
            .lock()
            .unwrap()
            .get(client_id)
            .copied()
            .unwrap_or(0)
    }

    /// Tokens issued to anyone so far.
    pub fn total_issued(&self) -> u64 {
        self.state.issued.lock().unwrap().values().sum()
    }

    /// Every token request received (answered or not), in order.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.state.seen.lock().unwrap().clone()
    }

    /// A key that verifies the tokens this IdP signs.
    pub fn decoding_key() -> DecodingKey {
        let enc = EncodingKey::from_rsa_pem(SIGNING_KEY_PEM.as_bytes()).expect("test key parses");
        let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&enc, Algorithm::RS256).expect("jwk");
        DecodingKey::from_jwk(&jwk).expect("decoding key")
    }
}

async fn handle(state: &State, req: Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let latency = *state.latency.lock().unwrap();
    let mode = *state.mode.lock().unwrap();
    let path = req.uri().path().to_owned();
    match (req.method().as_str(), path.as_str()) {
        ("GET", "/jwks") => {
            let mut jwk =
                jsonwebtoken::jwk::Jwk::from_encoding_key(&state.key, Algorithm::RS256).ok()?;
            jwk.common.key_id = Some(KID.into());
            Some(json_response(StatusCode::OK, &json!({ "keys": [jwk] })))
        }
        ("POST", "/token") => {
            let basic = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = req.into_body().collect().await.ok()?.to_bytes();
            let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
            let answer = token(state, basic.as_deref(), &form);
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            let failing = state
                .fail_next
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok();
            match mode {
                IdpMode::Healthy if failing => Some(json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"error": "temporarily_unavailable"}),
                )),
                IdpMode::Unreachable => None,
                IdpMode::ServerError => Some(json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"error": "temporarily_unavailable"}),
                )),
                IdpMode::Healthy => Some(answer()),
            }
        }
        _ => Some(json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": "not_found"}),
        )),
    }
}

/// Records the request now; returns how to answer it if the IdP is healthy.
fn token<'a>(
    state: &'a State,
    basic: Option<&str>,
    form: &'a [(String, String)],
) -> impl FnOnce() -> Response<Full<Bytes>> + 'a {
    let get = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let from_basic = basic.and_then(|h| {
        let (scheme, enc) = h.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let raw = String::from_utf8(BASE64.decode(enc).ok()?).ok()?;
        let (id, secret) = raw.split_once(':')?;
        // RFC 6749 §2.3.1: both parts are form-urlencoded before base64.
        let dec = |s: &str| {
            form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
        };
        Some((dec(id)?, dec(secret)?))
    });
    let from_post = get("client_id").map(|id| {
        (
            id.to_owned(),
            get("client_secret").unwrap_or_default().to_owned(),
        )
    });
    let (auth_method, creds) = match (from_basic, from_post) {
        (Some(c), None) => ("basic", Some(c)),
        (None, Some(c)) => ("post", Some(c)),
        (Some(c), Some(_)) => ("both", Some(c)),
        (None, None) => ("none", None),
    };
    state.seen.lock().unwrap().push(SeenRequest {
        auth_method,
        client_id: creds.as_ref().map(|c| c.0.clone()).unwrap_or_default(),
        params: form
            .iter()
            .filter(|(k, _)| k != "client_secret")
            .cloned()
            .collect(),
    });
    move || {
        if auth_method == "both" {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", None);
        }
        let challenge = (auth_method == "basic").then_some("Basic realm=\"fake-idp\"");
        let Some((client_id, secret)) = creds else {
            return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", challenge);
        };
        if state.clients.lock().unwrap().get(&client_id) != Some(&secret) {
            return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", challenge);
        }
        if get("grant_type") != Some("client_credentials") {
            return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", None);
        }
        let lifetime = *state.lifetime.lock().unwrap();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let audience: Vec<&str> = form
            .iter()
            .filter(|(k, _)| k == "audience" || k == "resource")
            .map(|(_, v)| v.as_str())
            .collect();
        let claims = json!({
            "iss": *state.issuer.lock().unwrap(),
            "sub": client_id,
            "client_id": client_id,
            "aud": audience,
            "scope": get("scope").unwrap_or_default(),
            "iat": now.as_secs(),
            "exp": (now + lifetime).as_secs(),
            "jti": state.jti.fetch_add(1, Ordering::Relaxed).to_string(),
        });
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(KID.into());
        let token = if state.opaque.load(Ordering::Relaxed) {
            format!(
                "opaque-{}-{}",
                claims["jti"].as_str().unwrap_or_default(),
                now.as_nanos()
            )
        } else {
            jsonwebtoken::encode(&header, &claims, &state.key).expect("signing works")
        };
        *state.issued.lock().unwrap().entry(client_id).or_default() += 1;
        let mut body = json!({ "access_token": token, "token_type": "Bearer", "scope": get("scope").unwrap_or_default() });
        if !state.omit_expires_in.load(Ordering::Relaxed) {
            body["expires_in"] = json!(lifetime.as_secs());
        }
        json_response(StatusCode::OK, &body)
    }
}

fn oauth_error(status: StatusCode, code: &str, challenge: Option<&str>) -> Response<Full<Bytes>> {
    let mut resp = json_response(status, &json!({ "error": code }));
    if let Some(c) = challenge {
        resp.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_str(c).unwrap(),
        );
    }
    resp
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}
