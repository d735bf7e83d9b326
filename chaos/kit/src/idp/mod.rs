//! A fake OAuth2 identity provider.
//!
//! - `POST /token` implements the client credentials grant of RFC 6749 §4.4 with both client
//!   authentication methods of §2.3.1 (`client_secret_basic`, with form-urlencoded id and
//!   secret, and `client_secret_post`), and answers errors as §5.2 says. Tokens are JWTs (RS256
//!   until [`FakeIdp::rotate_key`] switches to ES256) or opaque strings.
//! - `POST /introspect` is RFC 7662 token introspection for registered clients (Basic or post)
//!   or a configured bearer token: JWTs it signed and opaque tokens it issued or was told about
//!   are active until they expire or are revoked.
//! - `GET /jwks` publishes the keys; `GET /.well-known/openid-configuration` is OIDC discovery.
//!
//! Tests steer it: token lifetime, latency, failure modes, key rotation, revocation, and they
//! read per-client counters and every request it received (secrets left out).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::serve;

mod assertion;
mod introspection;
mod token;

use introspection::introspect;
use token::token;

/// The test-only RSA key the fake IdP signs with. Never use it for anything else.
const SIGNING_KEY_PEM: &str = include_str!("idp-test-key.pem");
const KID: &str = "fake-idp-1";
/// The test-only P-256 key [`FakeIdp::rotate_key`] switches to.
const EC_KEY_PEM: &str = include_str!("idp-test-key-ec.pem");
/// Its key id.
pub const EC_KID: &str = "fake-idp-ec-1";

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
    /// `basic`, `post`, `client_secret_jwt`, `private_key_jwt`, `tls_client_auth` (or
    /// `bearer`, `none`, `both` at introspection).
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
    /// Opaque tokens are padded to this many bytes.
    opaque_len: std::sync::atomic::AtomicUsize,
    fail_next: AtomicU64,
    issued: Mutex<HashMap<String, u64>>,
    seen: Mutex<Vec<SeenRequest>>,
    jti: AtomicU64,
    key: EncodingKey,
    ec_key: EncodingKey,
    rotated: AtomicBool,
    issuer: Mutex<String>,
    /// Opaque tokens and the claims introspection reports for them.
    opaque_claims: Mutex<HashMap<String, Value>>,
    revoked: Mutex<Vec<String>>,
    introspection_bearer: Mutex<Option<String>>,
    introspections: AtomicU64,
    anonymous_introspection: AtomicBool,
    introspection_seen: Mutex<Vec<SeenRequest>>,
    jwks_fetches: AtomicU64,
    /// The next token answer is held: told it arrived, waits for the release.
    hold: Mutex<Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>>,
    /// Faults that make the IdP lie (tests of the harness's own checks).
    lies: Mutex<Lies>,
    /// Public keys of `private_key_jwt` clients.
    client_keys: Mutex<HashMap<String, DecodingKey>>,
    /// The `jti` of every client assertion accepted (a replay is refused).
    assertion_ids: Mutex<std::collections::HashSet<String>>,
    /// `tls_client_auth` clients: authenticated by the certificate the TLS server required.
    tls_clients: Mutex<std::collections::HashSet<String>>,
    /// Why client assertions were refused, in order.
    assertion_refusals: Mutex<Vec<&'static str>>,
    /// `scheme://addr`, the base of the endpoints' own URLs (client assertions' audience).
    base: Mutex<String>,
}

/// Ways the IdP can lie in its tokens.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lies {
    /// Tokens whose `exp` has passed, while `expires_in` promises the full lifetime.
    pub expired: bool,
    /// Tokens naming another client in `sub` and `client_id`.
    pub other_client: bool,
}

/// A token answer held back by [`FakeIdp::hold_next_token`].
pub struct Hold {
    arrived: oneshot::Receiver<()>,
    release: oneshot::Sender<()>,
}

impl Hold {
    /// Waits up to `within` for a token request to reach the hold; whether one did.
    pub async fn arrived(&mut self, within: Duration) -> bool {
        matches!(
            tokio::time::timeout(within, &mut self.arrived).await,
            Ok(Ok(()))
        )
    }

    /// Sends the held answer (to whoever is still there to read it).
    pub fn release(self) {
        let _ = self.release.send(());
    }
}

impl State {
    /// The current signing key, its algorithm and key id.
    fn signer(&self) -> (&EncodingKey, Algorithm, &'static str) {
        if self.rotated.load(Ordering::Relaxed) {
            (&self.ec_key, Algorithm::ES256, EC_KID)
        } else {
            (&self.key, Algorithm::RS256, KID)
        }
    }

    /// The published keys: the RSA key, and the EC key once rotated to.
    fn jwks(&self) -> Value {
        let mut keys = Vec::new();
        let mut push = |key: &EncodingKey, alg, kid: &str| {
            if let Ok(mut jwk) = jsonwebtoken::jwk::Jwk::from_encoding_key(key, alg) {
                jwk.common.key_id = Some(kid.into());
                keys.push(jwk);
            }
        };
        push(&self.key, Algorithm::RS256, KID);
        if self.rotated.load(Ordering::Relaxed) {
            push(&self.ec_key, Algorithm::ES256, EC_KID);
        }
        json!({ "keys": keys })
    }
}

/// A running fake IdP on a loopback port. Stops when dropped.
pub struct FakeIdp {
    addr: SocketAddr,
    scheme: &'static str,
    state: Arc<State>,
    stop: CancellationToken,
    tracing: serve::Tracing,
}

impl Drop for FakeIdp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FakeIdp {
    /// Records a server span for every request from now on, continuing the caller's W3C
    /// trace context (tests of distributed tracing).
    pub fn trace_to(&self, tracer: opentelemetry_sdk::trace::SdkTracer) {
        self.tracing.set(tracer);
    }

    /// Starts an IdP on a free loopback port with no clients and a 60 s token lifetime.
    pub async fn start() -> Self {
        Self::start_on(([127, 0, 0, 1], 0).into())
            .await
            .expect("bind loopback")
    }

    /// Starts an IdP on `addr`.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Self> {
        Self::start_with(addr, None).await
    }

    /// Starts an IdP serving HTTPS on a free loopback port.
    pub async fn start_tls(tls: Arc<rustls::ServerConfig>) -> Self {
        Self::start_tls_on(([127, 0, 0, 1], 0).into(), tls)
            .await
            .expect("bind loopback")
    }

    /// Starts an IdP serving HTTPS on `addr`.
    pub async fn start_tls_on(
        addr: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<Self> {
        Self::start_with(addr, Some(tls)).await
    }

    /// Answers introspection requests that carry no client authentication too (an IdP that
    /// trusts its network; RFC 7662 §2.1 lets it choose).
    pub fn allow_anonymous_introspection(&self) {
        self.state
            .anonymous_introspection
            .store(true, Ordering::Relaxed);
    }

    async fn start_with(
        addr: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<Self> {
        let state = Arc::new(State {
            clients: Mutex::new(HashMap::new()),
            lifetime: Mutex::new(Duration::from_secs(60)),
            latency: Mutex::new(Duration::ZERO),
            mode: Mutex::new(IdpMode::Healthy),
            omit_expires_in: AtomicBool::new(false),
            opaque: AtomicBool::new(false),
            opaque_len: std::sync::atomic::AtomicUsize::new(0),
            fail_next: AtomicU64::new(0),
            issued: Mutex::new(HashMap::new()),
            seen: Mutex::new(Vec::new()),
            jti: AtomicU64::new(0),
            key: EncodingKey::from_rsa_pem(SIGNING_KEY_PEM.as_bytes()).expect("test key parses"),
            ec_key: EncodingKey::from_ec_pem(EC_KEY_PEM.as_bytes()).expect("test key parses"),
            rotated: AtomicBool::new(false),
            issuer: Mutex::new(String::new()),
            opaque_claims: Mutex::new(HashMap::new()),
            revoked: Mutex::new(Vec::new()),
            introspection_bearer: Mutex::new(None),
            introspections: AtomicU64::new(0),
            anonymous_introspection: AtomicBool::new(false),
            introspection_seen: Mutex::new(Vec::new()),
            jwks_fetches: AtomicU64::new(0),
            hold: Mutex::new(None),
            lies: Mutex::new(Lies::default()),
            client_keys: Mutex::new(HashMap::new()),
            assertion_ids: Mutex::new(std::collections::HashSet::new()),
            tls_clients: Mutex::new(std::collections::HashSet::new()),
            base: Mutex::new(String::new()),
            assertion_refusals: Mutex::new(Vec::new()),
        });
        let stop = CancellationToken::new();
        let s = Arc::clone(&state);
        let handler: serve::Handler = Arc::new(move |req, _| {
            let s = Arc::clone(&s);
            Box::pin(async move { handle(&s, req).await })
        });
        let tracing = serve::Tracing::default();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let addr = serve::start(addr, handler, tracing.clone(), stop.clone(), tls).await?;
        *state.issuer.lock().unwrap() = format!("{scheme}://{addr}");
        *state.base.lock().unwrap() = format!("{scheme}://{addr}");
        Ok(Self {
            addr,
            scheme,
            state,
            stop,
            tracing,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The token endpoint URL.
    pub fn token_url(&self) -> String {
        format!("{}://{}/token", self.scheme, self.addr)
    }

    /// The JWKS URL.
    pub fn jwks_url(&self) -> String {
        format!("{}://{}/jwks", self.scheme, self.addr)
    }

    /// The introspection endpoint URL.
    pub fn introspection_url(&self) -> String {
        format!("{}://{}/introspect", self.scheme, self.addr)
    }

    /// The issuer identifier (`iss` of its tokens; the OIDC discovery base).
    pub fn issuer(&self) -> String {
        self.state.issuer.lock().unwrap().clone()
    }

    /// Names the IdP by `url` (its tokens' `iss`, and the base of the endpoints its discovery
    /// document names) when callers reach it at another address than the one it bound, as in
    /// a container network.
    pub fn set_issuer(&self, url: &str) {
        *self.state.issuer.lock().unwrap() = url.trim_end_matches('/').to_owned();
    }

    /// Switches signing to a new ES256 key (`kid` [`EC_KID`]), published beside the old one.
    pub fn rotate_key(&self) {
        self.state.rotated.store(true, Ordering::Relaxed);
    }

    /// Signs `claims` with the current key, as an access token of this IdP.
    pub fn mint(&self, claims: &Value) -> String {
        let (key, alg, kid) = self.state.signer();
        let mut header = Header::new(alg);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, claims, key).expect("signing works")
    }

    /// Signs `claims` under a header of the caller's choosing, with whichever of the IdP's keys
    /// matches `header.alg` (RS* or ES256): for tokens with unknown `kid`s and the like.
    pub fn sign(&self, header: &Header, claims: &Value) -> String {
        let key = match header.alg {
            Algorithm::ES256 => &self.state.ec_key,
            _ => &self.state.key,
        };
        jsonwebtoken::encode(header, claims, key).expect("signing works")
    }

    /// Makes introspection report `claims` (plus `"active": true`) for the opaque `token`.
    pub fn register_opaque(&self, token: &str, claims: Value) {
        self.state
            .opaque_claims
            .lock()
            .unwrap()
            .insert(token.to_owned(), claims);
    }

    /// Makes introspection report `token` inactive from now on.
    pub fn revoke(&self, token: &str) {
        self.state.revoked.lock().unwrap().push(token.to_owned());
    }

    /// Lets callers presenting `Authorization: Bearer <token>` introspect.
    pub fn allow_introspection_bearer(&self, token: &str) {
        *self.state.introspection_bearer.lock().unwrap() = Some(token.to_owned());
    }

    /// Introspection requests received.
    pub fn introspections(&self) -> u64 {
        self.state.introspections.load(Ordering::Relaxed)
    }

    /// Every introspection request received (caller's auth method and id, form without the
    /// secret and without the token).
    pub fn introspection_seen(&self) -> Vec<SeenRequest> {
        self.state.introspection_seen.lock().unwrap().clone()
    }

    /// JWKS documents served.
    pub fn jwks_fetches(&self) -> u64 {
        self.state.jwks_fetches.load(Ordering::Relaxed)
    }

    /// Registers a `private_key_jwt` client by its public key (PEM: RSA, EC or Ed25519).
    pub fn register_key(&self, client_id: &str, public_pem: &str) {
        let pem = public_pem.as_bytes();
        let key = DecodingKey::from_rsa_pem(pem)
            .or_else(|_| DecodingKey::from_ec_pem(pem))
            .or_else(|_| DecodingKey::from_ed_pem(pem))
            .expect("a PEM public key");
        self.state
            .client_keys
            .lock()
            .unwrap()
            .insert(client_id.to_owned(), key);
    }

    /// Registers a `tls_client_auth` client (RFC 8705 §2.1): on an IdP started with
    /// [`FakeIdp::start_tls`] and a server configuration that requires client certificates,
    /// naming it is enough, since the handshake proved the certificate.
    pub fn register_tls_client(&self, client_id: &str) {
        self.state
            .tls_clients
            .lock()
            .unwrap()
            .insert(client_id.to_owned());
    }

    /// Why the client assertions refused so far were refused (`signature, audience, issuer or
    /// expiry`, `jti replayed`, `unknown client key`, ...), in order.
    pub fn assertion_refusals(&self) -> Vec<&'static str> {
        self.state.assertion_refusals.lock().unwrap().clone()
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

    /// Pads opaque tokens to `len` bytes (benchmarks of what tokens of a realistic size cost).
    pub fn pad_opaque_tokens(&self, len: usize) {
        self.state.opaque_len.store(len, Ordering::Relaxed);
    }

    /// Answers the next `n` token requests with 503, then recovers.
    pub fn fail_next(&self, n: u64) {
        self.state.fail_next.store(n, Ordering::Relaxed);
    }

    /// Holds the answer to the next successful token request until [`Hold::release`]: the
    /// token is issued (and counted), the requester waits for it.
    pub fn hold_next_token(&self) -> Hold {
        let (arrived_tx, arrived) = oneshot::channel();
        let (release, release_rx) = oneshot::channel();
        *self.state.hold.lock().unwrap() = Some((arrived_tx, release_rx));
        Hold { arrived, release }
    }

    /// Makes the IdP lie in the tokens it issues from now on.
    pub fn set_lies(&self, lies: Lies) {
        *self.state.lies.lock().unwrap() = lies;
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
    // Endpoints answer at any path ending in their name, as real IdPs place them: Hydra's
    // `/oauth2/token`, Keycloak's `/realms/R/protocol/openid-connect/token/introspect`.
    let path = req.uri().path().to_owned();
    let endpoint = match path.rsplit('/').next() {
        Some(last @ ("token" | "introspect" | "jwks")) => format!("/{last}"),
        _ => path.clone(),
    };
    match (req.method().as_str(), endpoint.as_str()) {
        ("GET", "/jwks") => {
            state.jwks_fetches.fetch_add(1, Ordering::Relaxed);
            match mode {
                IdpMode::Healthy => Some(json_response(StatusCode::OK, &state.jwks())),
                IdpMode::Unreachable => None,
                IdpMode::ServerError => Some(json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"error": "temporarily_unavailable"}),
                )),
            }
        }
        ("GET", "/.well-known/openid-configuration") => {
            let issuer = state.issuer.lock().unwrap().clone();
            Some(json_response(
                StatusCode::OK,
                &json!({
                    "issuer": issuer,
                    "jwks_uri": format!("{issuer}/jwks"),
                    "token_endpoint": format!("{issuer}/token"),
                    "introspection_endpoint": format!("{issuer}/introspect"),
                    "grant_types_supported": ["client_credentials"],
                }),
            ))
        }
        // The double's own count, for tests that run it in a container (`chaos doubles`): tokens
        // issued per client id. No real IdP has it; nothing secret is in it.
        ("GET", "/_issued") => {
            let issued = state.issued.lock().unwrap().clone();
            Some(json_response(StatusCode::OK, &json!(issued)))
        }
        ("POST", "/introspect") => {
            let (auth, form) = read_form(req).await?;
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            match mode {
                IdpMode::Unreachable => None,
                IdpMode::ServerError => Some(json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"error": "temporarily_unavailable"}),
                )),
                IdpMode::Healthy => {
                    let endpoint = format!("{}{path}", state.base.lock().unwrap());
                    Some(introspect(state, auth.as_deref(), &form, &endpoint))
                }
            }
        }
        ("POST", "/token") => {
            let (basic, form) = read_form(req).await?;
            let endpoint = format!("{}{path}", state.base.lock().unwrap());
            let answer = token(state, basic.as_deref(), &form, &endpoint);
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
                IdpMode::Healthy => {
                    let resp = answer();
                    let held = state.hold.lock().unwrap().take();
                    if let Some((arrived, release)) = held {
                        let _ = arrived.send(());
                        let _ = release.await;
                    }
                    Some(resp)
                }
            }
        }
        _ => Some(json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": "not_found"}),
        )),
    }
}

/// The `Authorization` header and the form body of a POST.
async fn read_form(req: Request<Incoming>) -> Option<(Option<String>, Vec<(String, String)>)> {
    let auth = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = req.into_body().collect().await.ok()?.to_bytes();
    Some((auth, form_urlencoded::parse(&body).into_owned().collect()))
}

/// `Authorization: Basic` credentials, form-decoded as RFC 6749 §2.3.1 says.
pub(super) fn basic_credentials(header: Option<&str>) -> Option<(String, String)> {
    let (scheme, enc) = header?.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = String::from_utf8(BASE64.decode(enc).ok()?).ok()?;
    let (id, secret) = raw.split_once(':')?;
    let dec = |s: &str| {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    Some((dec(id)?, dec(secret)?))
}

/// An RFC 6749 §5.2 error, with a challenge when the client failed `Basic` authentication.
pub(super) fn oauth_error(
    status: StatusCode,
    code: &str,
    challenge: Option<&str>,
) -> Response<Full<Bytes>> {
    let mut resp = json_response(status, &json!({ "error": code }));
    if let Some(c) = challenge {
        resp.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_str(c).unwrap(),
        );
    }
    resp
}

/// A JSON answer that no one may cache.
pub(super) fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
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
