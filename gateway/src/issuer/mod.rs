//! The gateway as an OAuth2 authorization server for workloads, modelled on Octelium's:
//! a fleet needs no separate IdP for machine-to-machine access.
//!
//! - `POST /oauth2/token`: `grant_type=client_credentials` (RFC 6749 §4.4), the client
//!   authenticated by `client_secret_basic`, `client_secret_post`, or a JWT assertion from a
//!   trusted workload identity provider (RFC 7523 §2.2: workload identity federation, no shared
//!   secret at all).
//! - Access tokens are RFC 9068 JWTs (`typ: at+jwt`), signed with the configured key.
//! - `POST /oauth2/introspect`: RFC 7662 introspection of those tokens, for upstreams that speak
//!   only introspection; the caller authenticates as at the token endpoint.
//! - `GET /.well-known/jwks.json` publishes the keys; `GET /.well-known/oauth-authorization-server`
//!   the RFC 8414 metadata.
//! - `jwt` middlewares with `gatewayIssuer: true` verify these tokens in-process.
//!
//! Secrets are kept only as argon2 hashes ([`secret`]). Assertion `jti`s are recorded in the
//! shared store until the assertion expires, so a replay is refused by every node.

pub mod error;
pub mod keys;
pub mod request;
pub mod secret;
mod settings;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::{CACHE_CONTROL, PRAGMA};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};

use crate::auth::{AuthError, Jwt};
use crate::http::{BoxBody, IntoResponse, response};
use crate::lifecycle::TokenCache;
use crate::store::TokenStore;
use crate::token::{KeyDeriver, now_millis};
use error::{OAuthError, method_not_allowed};
use request::{ClientAuth, Form};
use secret::Verifier;
pub use settings::{
    DEFAULT_ISSUED_TOKEN_LIFETIME, INTROSPECT_PATH, IssuerClient, IssuerConfig, JWKS_PATH,
    MAX_ISSUED_TOKEN_LIFETIME, METADATA_PATH, TOKEN_PATH,
};

/// Largest token request body read (assertions are JWTs of a few kilobytes).
const MAX_BODY: usize = 16 * 1024;

/// A trusted workload identity provider: its assertions' validation and its replay keys.
struct Trusted {
    jwt: Jwt,
    replay: KeyDeriver,
}

/// The issuer of one node.
pub struct Issuer {
    cfg: IssuerConfig,
    jwks: Arc<Value>,
    jwks_body: String,
    metadata_body: String,
    secrets: Verifier,
    trusted: HashMap<String, Trusted>,
    /// `(iss, sub)` of a workload identity -> the client it acts as.
    identities: HashMap<(String, String), String>,
    /// Verifies the issuer's own tokens (introspection).
    own: Jwt,
    tokens: Arc<TokenCache>,
}

/// A granted token request.
struct Grant<'a> {
    client_id: &'a str,
    client: &'a IssuerClient,
    scope: Vec<&'a str>,
    federated: bool,
}

impl Issuer {
    /// Builds the issuer; fails only if a trusted issuer's HTTP client cannot be built.
    pub fn new(cfg: &IssuerConfig, tokens: &Arc<TokenCache>) -> reqwest::Result<Self> {
        let jwks = Arc::new(keys::jwks(
            std::iter::once(&cfg.signing_key).chain(&cfg.previous_keys),
        ));
        let mut trusted = HashMap::new();
        for t in &cfg.trusted_issuers {
            let iss = t.issuer.clone().unwrap_or_default();
            let jwt = Jwt::new(
                &format!("issuer trust {iss}"),
                t.clone(),
                tokens,
                crate::auth::limits::CallerLimits::default(),
            )?;
            let replay = KeyDeriver::labelled(tokens.fleet(), "tokengate assertion jti v1", &iss);
            trusted.insert(iss, Trusted { jwt, replay });
        }
        let identities = cfg
            .clients
            .iter()
            .flat_map(|(id, c)| c.federated.iter().map(move |f| (f.clone(), id.clone())))
            .collect();
        let own = Jwt::new(
            "issuer introspection",
            own_tokens(cfg, Arc::clone(&jwks)),
            tokens,
            crate::auth::limits::CallerLimits::default(),
        )?;
        Ok(Self {
            own,
            jwks_body: jwks.to_string(),
            jwks,
            metadata_body: metadata(cfg).to_string(),
            secrets: Verifier::new(KeyDeriver::labelled(
                tokens.fleet(),
                "tokengate issuer secret v1",
                &cfg.issuer,
            )),
            trusted,
            identities,
            cfg: cfg.clone(),
            tokens: Arc::clone(tokens),
        })
    }

    /// The published key set, for `jwt` middlewares with `gatewayIssuer: true`.
    pub fn jwks(&self) -> Arc<Value> {
        Arc::clone(&self.jwks)
    }

    /// Whether `path` is one of the issuer's endpoints (they take precedence over routes).
    pub fn serves(path: &str) -> bool {
        matches!(
            path,
            TOKEN_PATH | INTROSPECT_PATH | JWKS_PATH | METADATA_PATH
        )
    }

    /// Answers a request for one of the issuer's endpoints from `caller` (its address after
    /// `forwardedHeaders.trustedIPs`).
    pub async fn handle(&self, req: Request<Incoming>, caller: IpAddr) -> Response<BoxBody> {
        match req.uri().path() {
            TOKEN_PATH if req.method() == Method::POST => match self.token(req, caller).await {
                Ok(resp) => resp,
                Err(e) => e.into_response(),
            },
            INTROSPECT_PATH if req.method() == Method::POST => {
                match self.introspect(req, caller).await {
                    Ok(resp) => resp,
                    Err(e) => e.into_response(),
                }
            }
            TOKEN_PATH | INTROSPECT_PATH => method_not_allowed(&[Method::POST]),
            path if req.method() == Method::GET || req.method() == Method::HEAD => {
                let body = if path == JWKS_PATH {
                    &self.jwks_body
                } else {
                    &self.metadata_body
                };
                let mut resp = response::json(StatusCode::OK, body.clone());
                resp.headers_mut().insert(
                    CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=300"),
                );
                resp
            }
            _ => method_not_allowed(&[Method::GET, Method::HEAD]),
        }
    }

    /// `POST /oauth2/token`.
    async fn token(
        &self,
        req: Request<Incoming>,
        caller: IpAddr,
    ) -> Result<Response<BoxBody>, OAuthError> {
        let (parts, form) = read_form(req).await?;
        match form.get("grant_type") {
            None => return Err(OAuthError::invalid_request("grant_type is required")),
            Some("client_credentials") => {}
            Some(_) => return Err(OAuthError::unsupported_grant_type()),
        }
        let (client_id, federated) = self.authenticate(&parts, &form, caller).await?;
        let (client_id, client) = self
            .cfg
            .clients
            .get_key_value(&client_id)
            .ok_or_else(|| OAuthError::invalid_client(false, "client authentication failed"))?;
        let scope = granted_scope(client, form.get("scope"))?;
        let grant = Grant {
            client_id,
            client,
            scope,
            federated,
        };
        self.issue(&grant)
    }

    /// `POST /oauth2/introspect` (RFC 7662): whether `token` is one of this issuer's, unexpired,
    /// and its claims. Any client of the issuer may ask (§2.1 requires that it authenticate);
    /// anything but a valid token of this issuer is `{"active": false}` (§2.2).
    async fn introspect(
        &self,
        req: Request<Incoming>,
        caller: IpAddr,
    ) -> Result<Response<BoxBody>, OAuthError> {
        let (parts, form) = read_form(req).await?;
        let (client_id, _) = self.authenticate(&parts, &form, caller).await?;
        let token = form
            .get("token")
            .filter(|t| !t.is_empty())
            .ok_or_else(|| OAuthError::invalid_request("token is required"))?;
        let answer = match self.own.verify(token).await {
            Ok(claims) => {
                let mut answer = Map::from_iter([("active".to_owned(), json!(true))]);
                answer.extend(claims.as_ref().clone());
                answer.insert("token_type".into(), json!("Bearer"));
                Value::Object(answer)
            }
            Err(_) => json!({ "active": false }),
        };
        tracing::debug!(client_id = %printable(&client_id), active = answer["active"] == json!(true), "issuer: token introspected");
        let mut resp = response::json(StatusCode::OK, answer.to_string());
        let h = resp.headers_mut();
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(PRAGMA, HeaderValue::from_static("no-cache"));
        Ok(resp)
    }

    /// Authenticates the client of a token or introspection request: by its secret, or by a
    /// trusted workload identity's assertion. The client id, and whether it was federated.
    async fn authenticate(
        &self,
        parts: &http::request::Parts,
        form: &Form,
        caller: IpAddr,
    ) -> Result<(String, bool), OAuthError> {
        let auth = ClientAuth::of(&parts.headers, form)?;
        let (client_id, federated) = match &auth {
            ClientAuth::Secret {
                client_id,
                secret,
                basic,
            } => {
                self.check_secret(client_id, secret, *basic, caller).await?;
                (client_id.clone(), false)
            }
            ClientAuth::Assertion { jwt, client_id } => {
                (self.check_assertion(jwt, client_id.as_deref()).await?, true)
            }
        };
        Ok((client_id, federated))
    }

    async fn check_secret(
        &self,
        client_id: &str,
        secret: &str,
        basic: bool,
        caller: IpAddr,
    ) -> Result<(), OAuthError> {
        let hash = self
            .cfg
            .clients
            .get(client_id)
            .and_then(|c| c.secret.as_ref());
        match self.secrets.check(client_id, hash, secret, caller).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                tracing::info!(client_id = %printable(client_id), "issuer: client authentication failed");
                Err(OAuthError::invalid_client(
                    basic,
                    "client authentication failed",
                ))
            }
            Err(secret::Busy::Caller) => Err(OAuthError::too_many_requests(
                "too many token requests from this address are being checked; retry later",
            )),
            Err(secret::Busy::Saturated) => {
                tracing::warn!("issuer: every secret verification slot is busy; refusing");
                Err(OAuthError::unavailable(
                    "the token endpoint is busy; retry later",
                ))
            }
        }
    }

    /// RFC 7523 §3: the assertion is a JWT from a trusted issuer, for this server's audience,
    /// unexpired, with a `jti` never seen before, whose `sub` is bound to a client.
    async fn check_assertion(
        &self,
        jwt: &str,
        client_id: Option<&str>,
    ) -> Result<String, OAuthError> {
        let refused = |why: &'static str| {
            tracing::info!(reason = why, "issuer: client assertion refused");
            OAuthError::invalid_client(false, why)
        };
        let iss = unverified_issuer(jwt).ok_or_else(|| refused("the assertion is not a JWT"))?;
        let trusted = self
            .trusted
            .get(&iss)
            .ok_or_else(|| refused("the assertion's issuer is not trusted"))?;
        let claims = match trusted.jwt.verify(jwt).await {
            Ok(c) => c,
            Err(AuthError::InvalidToken { reason, .. }) => return Err(refused(reason)),
            Err(_) => {
                return Err(OAuthError::unavailable(
                    "the assertion's issuer keys are unavailable; retry later",
                ));
            }
        };
        let text = |name: &str| {
            claims
                .get(name)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        let sub = text("sub").ok_or_else(|| refused("the assertion lacks sub"))?;
        let jti = text("jti").ok_or_else(|| refused("the assertion lacks jti"))?;
        let mapped = self
            .identities
            .get(&(iss.clone(), sub.to_owned()))
            .ok_or_else(|| refused("no client is bound to this workload identity"))?;
        if client_id.is_some_and(|id| id != mapped) {
            return Err(refused("client_id differs from the assertion's client"));
        }
        // `exp` is required and checked by the validation; keep the record past the leeway.
        let exp = claims
            .get("exp")
            .and_then(Value::as_f64)
            .unwrap_or_default();
        let until = (exp.max(0.0) as u64)
            .saturating_add(trusted.jwt.leeway().as_secs())
            .saturating_mul(1000);
        let key = trusted.replay.token(jti);
        match self.tokens.store().claim_once(&key, until).await {
            Ok(true) => Ok(mapped.clone()),
            Ok(false) => Err(refused("the assertion was already used")),
            Err(error) => {
                tracing::warn!(%error, "issuer: cannot record the assertion's jti; refusing it");
                Err(OAuthError::unavailable(
                    "replay protection is unavailable; retry later",
                ))
            }
        }
    }

    /// Signs the access token and writes the RFC 6749 §5.1 response.
    fn issue(&self, grant: &Grant<'_>) -> Result<Response<BoxBody>, OAuthError> {
        let now = now_millis() / 1000;
        let lifetime = grant.client.token_lifetime.as_secs();
        let mut jti = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut jti);
        let mut claims: Map<String, Value> = grant.client.claims.clone();
        let scope = grant.scope.join(" ");
        claims.extend([
            ("iss".into(), json!(self.cfg.issuer)),
            ("sub".into(), json!(grant.client_id)),
            ("aud".into(), json!(grant.client.audience)),
            ("exp".into(), json!(now + lifetime)),
            ("iat".into(), json!(now)),
            ("jti".into(), json!(URL_SAFE_NO_PAD.encode(jti))),
            ("client_id".into(), json!(grant.client_id)),
        ]);
        if !scope.is_empty() {
            claims.insert("scope".into(), json!(scope));
        }
        let token = self.cfg.signing_key.sign(&claims).map_err(|error| {
            tracing::error!(%error, "issuer: cannot sign a token");
            OAuthError::server_error()
        })?;
        tracing::debug!(client_id = %grant.client_id, scope = %scope, federated = grant.federated, "issuer: token issued");
        let mut body = json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": lifetime,
        });
        if !scope.is_empty() {
            body["scope"] = json!(scope);
        }
        let mut resp = response::json(StatusCode::OK, body.to_string());
        let h = resp.headers_mut();
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(PRAGMA, HeaderValue::from_static("no-cache"));
        Ok(resp)
    }
}

/// A POST's head and form body (at most [`MAX_BODY`]).
async fn read_form(req: Request<Incoming>) -> Result<(http::request::Parts, Form), OAuthError> {
    let (parts, body) = req.into_parts();
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|_| OAuthError::invalid_request("the body is unreadable or too large"))?
        .to_bytes();
    let form = Form::parse(&parts.headers, &body)?;
    Ok((parts, form))
}

/// How the issuer verifies its own tokens: its published keys, its `iss`, any audience, the
/// RFC 9068 `typ`.
fn own_tokens(cfg: &IssuerConfig, jwks: Arc<Value>) -> crate::auth::JwtConfig {
    use crate::auth::jwt::{
        DEFAULT_JWKS_MAX_STALENESS, DEFAULT_JWKS_MIN_REFRESH_INTERVAL,
        DEFAULT_JWKS_REFRESH_INTERVAL, JwksSource,
    };
    let mut algorithms: Vec<_> = std::iter::once(&cfg.signing_key)
        .chain(&cfg.previous_keys)
        .map(keys::SigningKey::algorithm)
        .collect();
    algorithms.dedup();
    crate::auth::JwtConfig {
        token_source: Default::default(),
        keys: JwksSource::Inline(jwks),
        issuer: Some(cfg.issuer.clone()),
        audience: Vec::new(),
        algorithms,
        leeway: std::time::Duration::ZERO,
        forward_authorization: false,
        policy: Default::default(),
        jwks_refresh_interval: DEFAULT_JWKS_REFRESH_INTERVAL,
        jwks_min_refresh_interval: DEFAULT_JWKS_MIN_REFRESH_INTERVAL,
        jwks_max_staleness: DEFAULT_JWKS_MAX_STALENESS,
        // The keys are inline: nothing is fetched.
        http: crate::outbound::HttpClientConfig {
            timeout: crate::outbound::DEFAULT_IDP_TIMEOUT,
            retries: 0,
            tls: Default::default(),
        },
        realm: crate::auth::DEFAULT_REALM.into(),
        access_token_type: true,
    }
}

/// The scope granted: the requested scopes if the client may have them all (§3.3), every
/// registered scope when none is asked for.
fn granted_scope<'a>(
    client: &'a IssuerClient,
    requested: Option<&str>,
) -> Result<Vec<&'a str>, OAuthError> {
    let Some(requested) = requested else {
        return Ok(client.scopes.iter().map(String::as_str).collect());
    };
    let mut granted = Vec::new();
    for s in requested.split(' ').filter(|s| !s.is_empty()) {
        let known = client
            .scopes
            .iter()
            .find(|c| *c == s)
            .ok_or_else(OAuthError::invalid_scope)?;
        if !granted.contains(&known.as_str()) {
            granted.push(known.as_str());
        }
    }
    granted.sort_unstable();
    Ok(granted)
}

/// The `iss` of a JWT, read before verification only to pick the keys to verify it with.
fn unverified_issuer(jwt: &str) -> Option<String> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("iss")?.as_str().map(str::to_owned)
}

/// A caller-chosen string made safe for one log field (bounded, printable).
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}

/// RFC 8414 §2 metadata.
fn metadata(cfg: &IssuerConfig) -> Value {
    let mut scopes: Vec<&str> = cfg
        .clients
        .values()
        .flat_map(|c| c.scopes.iter().map(String::as_str))
        .collect();
    scopes.sort_unstable();
    scopes.dedup();
    let mut auth_methods = vec!["client_secret_basic", "client_secret_post"];
    let mut doc = json!({
        "issuer": cfg.issuer,
        "token_endpoint": cfg.token_endpoint(),
        "introspection_endpoint": cfg.introspection_endpoint(),
        "jwks_uri": cfg.jwks_uri(),
        "grant_types_supported": ["client_credentials"],
        // No authorization endpoint: no response type is supported.
        "response_types_supported": [],
        "scopes_supported": scopes,
    });
    if !cfg.trusted_issuers.is_empty() {
        auth_methods.push("private_key_jwt");
        let mut algs: Vec<String> = cfg
            .trusted_issuers
            .iter()
            .flat_map(|t| t.algorithms.iter().map(|a| format!("{a:?}")))
            .collect();
        algs.sort();
        algs.dedup();
        doc["token_endpoint_auth_signing_alg_values_supported"] = json!(algs);
    }
    doc["introspection_endpoint_auth_methods_supported"] = json!(auth_methods);
    doc["token_endpoint_auth_methods_supported"] = json!(auth_methods);
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(scopes: &[&str]) -> IssuerClient {
        IssuerClient {
            secret: None,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            audience: "api".into(),
            token_lifetime: std::time::Duration::from_secs(60),
            claims: Map::new(),
            federated: Vec::new(),
        }
    }

    #[test]
    fn scope_is_a_subset_of_the_registered_one() {
        let c = client(&["a", "b", "c"]);
        assert_eq!(granted_scope(&c, None).unwrap(), ["a", "b", "c"]);
        assert_eq!(granted_scope(&c, Some("c a c")).unwrap(), ["a", "c"]);
        assert_eq!(
            granted_scope(&c, Some("a d")).unwrap_err().code,
            "invalid_scope"
        );
        assert!(granted_scope(&client(&[]), None).unwrap().is_empty());
    }

    #[test]
    fn issuer_of_an_unverified_jwt() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"iss":"https://ci.example","sub":"x"}"#);
        assert_eq!(
            unverified_issuer(&format!("e30.{payload}.sig")).as_deref(),
            Some("https://ci.example")
        );
        assert_eq!(unverified_issuer("not-a-jwt"), None);
        assert_eq!(unverified_issuer("e30.!!!.x"), None);
    }
}
