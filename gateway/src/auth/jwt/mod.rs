//! The `jwt` middleware: bearer JWTs validated locally against the issuer's published keys,
//! with no IdP round trip per request.
//!
//! Checks, in order: the header parses; its `alg` is on the allow-list (asymmetric algorithms
//! only, so `none` and the HS256-with-a-public-key confusion never verify); a key with the
//! token's `kid` exists and may verify that `alg` (one rate-limited refetch when the `kid` is
//! unknown); the signature; `exp` (required), `nbf`, `iss` and `aud`, with `leeway`; then the
//! `claims` expression. Any failure is 401 `invalid_token`, an unsatisfied expression 403
//! `insufficient_scope`, keys that cannot be fetched 503.
//!
//! A token that verified is remembered until it expires ([`verified`]), so a caller that
//! presents it again skips the signature check.

pub mod keys;
pub mod verified;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::request::Parts;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};
use url::Url;

pub use keys::{KeySet, Keys, Reason, Refetch};
pub use verified::{Claims, Verified};

use super::bearer;
use super::limits::CallerLimits;
use super::{Applied, AuthError};
use crate::auth::bearer::TokenSource;
use crate::auth::claims::ClaimsPolicy;
use crate::lifecycle::TokenCache;
use crate::outbound::{HttpClientConfig, IdpError};

/// Clock skew tolerated on `exp`/`nbf`/`iat`: NTP-synchronised hosts differ by far less.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(5);
/// A key set is fetched again after this long, so keys the IdP retires stop being accepted.
pub const DEFAULT_JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// A key set that could not be refreshed for this long stops verifying (503): keys the IdP
/// retired (perhaps because they leaked) must not be trusted for ever while it is unreachable.
/// Twelve refresh intervals: an IdP outage of most of an hour is ridden out.
pub const DEFAULT_JWKS_MAX_STALENESS: Duration = Duration::from_secs(60 * 60);
/// Least time between two key-set fetches caused by unknown `kid`s: a caller sending random
/// `kid`s costs the IdP at most one request per this interval per node.
pub const DEFAULT_JWKS_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// The header that carries a token of the gateway's own issuer, besides `Authorization`.
pub const GATEWAY_TOKEN_HEADER: &str = "x-tokengate-auth";

/// Where a `jwt` middleware finds its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A JWKS document.
    Url(Url),
    /// OpenID Connect discovery: `<issuer>/.well-known/openid-configuration` names the JWKS.
    Discovery(Url),
    /// A JWKS document given in full; never fetched.
    Inline(std::sync::Arc<serde_json::Value>),
    /// The gateway's own issuer (resolved to `Inline` when the node starts).
    Gateway,
}

/// The `jwt` middleware, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtConfig {
    /// Where the caller's token is.
    pub token_source: TokenSource,
    /// Where the keys are.
    pub keys: JwksSource,
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Accepted audiences; empty: `aud` is not checked.
    pub audience: Vec<String>,
    /// Accepted algorithms (asymmetric only).
    pub algorithms: Vec<Algorithm>,
    /// Tolerated clock skew.
    pub leeway: Duration,
    /// Keep the caller's token on the upstream request.
    pub forward_authorization: bool,
    /// Claims checks and forwarding.
    pub policy: ClaimsPolicy,
    /// Maximum age of the cached key set.
    pub jwks_refresh_interval: Duration,
    /// Least time between fetches caused by unknown `kid`s.
    pub jwks_min_refresh_interval: Duration,
    /// A key set older than this (not refreshed) verifies nothing until it is fetched again.
    pub jwks_max_staleness: Duration,
    /// HTTP client for key fetches.
    pub http: HttpClientConfig,
    /// `Bearer` realm.
    pub realm: String,
    /// Require the RFC 9068 header `typ: at+jwt` (set for the gateway's own tokens).
    pub access_token_type: bool,
}

/// A configured `jwt` middleware.
pub struct Jwt {
    name: String,
    cfg: JwtConfig,
    realm: Arc<str>,
    keys: Arc<Keys>,
    /// One prepared validation per accepted algorithm (jsonwebtoken wants every algorithm of
    /// a validation to match the key's type, so they cannot share one).
    validations: HashMap<Algorithm, Validation>,
    verified: Verified,
    tokens: Arc<TokenCache>,
    limits: CallerLimits,
}

impl super::AuthSettings for JwtConfig {
    fn kind(&self) -> &'static str {
        "jwt"
    }

    fn build(
        &self,
        name: &str,
        with: &super::Build<'_>,
    ) -> reqwest::Result<Box<dyn super::Authenticate>> {
        let mut cfg = self.clone();
        if let (JwksSource::Gateway, Some(keys)) = (&cfg.keys, &with.issuer_keys) {
            cfg.keys = JwksSource::Inline(Arc::clone(keys));
        }
        Ok(Box::new(Jwt::new(
            name,
            cfg,
            with.cache,
            with.guards.limits,
        )?))
    }

    fn uses_issuer_keys(&self) -> bool {
        self.keys == JwksSource::Gateway
    }
}

impl super::Authenticate for Jwt {
    fn realm(&self) -> Arc<str> {
        Arc::clone(&self.realm)
    }

    fn apply<'a>(
        &'a self,
        parts: &'a mut Parts,
        caller: &'a super::Caller,
    ) -> super::Pending<'a, Result<Applied, AuthError>> {
        let _ = caller;
        Box::pin(Jwt::apply(self, parts))
    }
}

impl Jwt {
    /// Builds the middleware named `name`; its keys are fetched in the background at once.
    pub fn new(
        name: &str,
        cfg: JwtConfig,
        tokens: &Arc<TokenCache>,
        limits: CallerLimits,
    ) -> reqwest::Result<Self> {
        let keys = Arc::new(Keys::new(&cfg)?);
        let validations = cfg
            .algorithms
            .iter()
            .map(|alg| (*alg, validation(&cfg, *alg)))
            .collect();
        let jwt = Self {
            name: name.to_owned(),
            realm: Arc::from(cfg.realm.as_str()),
            verified: Verified::new(cfg.leeway),
            cfg,
            keys,
            validations,
            tokens: Arc::clone(tokens),
            limits,
        };
        jwt.refresh_in_background(&jwt.keys.current());
        Ok(jwt)
    }

    /// Authorises a request by its bearer JWT.
    pub async fn apply(&self, parts: &mut Parts) -> Result<Applied, AuthError> {
        let (token, at) =
            bearer::require(&self.cfg.token_source, parts, &self.limits, &self.realm)?;
        let claims = self.verify(&token).await?;
        if !self.cfg.forward_authorization {
            bearer::remove(&self.cfg.token_source, parts, at);
        }
        let username =
            self.cfg
                .policy
                .enforce(&mut parts.headers, Some(claims.as_ref()), &self.realm)?;
        Ok(Applied {
            username,
            token: None,
            client: super::client_of(&claims),
        })
    }

    /// The clock skew tolerated on `exp` and `nbf`.
    pub fn leeway(&self) -> std::time::Duration {
        self.cfg.leeway
    }

    /// Verifies `token` (or finds it verified against the current keys and unexpired) and
    /// returns its claims.
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let digest = verified::digest(token);
        let mut set = self.keys.current();
        if self.keys.is_stale(&set) {
            // Not refreshed for jwksMaxStaleness: one fetch (rate-limited across callers), and
            // 503 rather than old keys if it fails.
            let seen = set.fetched_at;
            // Boxed, as in `verify_signature`: a round trip few requests make.
            match Box::pin(self.keys.fetch(self.tokens.idp(), Reason::Stale { seen })).await {
                Ok(Refetch::Fetched) => set = self.keys.current(),
                Ok(Refetch::RateLimited) => {
                    return Err(AuthError::Unavailable {
                        retry_after: keys::KEYS_RETRY_AFTER,
                    });
                }
                Err(e) => return Err(self.unavailable(&e)),
            }
            if self.keys.is_stale(&set) {
                return Err(AuthError::Unavailable {
                    retry_after: keys::KEYS_RETRY_AFTER,
                });
            }
        }
        if let Some(fetched_at) = set.fetched_at {
            if self.keys.claim_background_refresh(&set) {
                self.refresh_in_background(&set);
            }
            if let Some(claims) = self.verified.get(&digest, fetched_at) {
                return Ok(claims);
            }
        }
        let (claims, fetched_at) = self.verify_signature(token, set).await?;
        let claims = Arc::new(claims);
        self.verified.insert(digest, &claims, fetched_at);
        Ok(claims)
    }

    /// Forgets every remembered verification, so the next presentation of each token is
    /// checked in full (benchmarks measure that path).
    pub fn forget_verified(&self) {
        self.verified.clear();
    }

    /// The full check of `token` starting from the key set `set`: its claims, and when the
    /// key set that verified it was fetched.
    async fn verify_signature(
        &self,
        token: &str,
        mut set: Arc<KeySet>,
    ) -> Result<(Map<String, Value>, Instant), AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| self.invalid("malformed token"))?;
        let Some(validation) = self.validations.get(&header.alg) else {
            return Err(self.invalid("signature algorithm not accepted"));
        };
        if self.cfg.access_token_type && !is_access_token_type(header.typ.as_deref()) {
            return Err(self.invalid("not an access token (typ must be at+jwt)"));
        }
        let kid = header.kid.as_deref();
        // The fetches are boxed: a round trip to the IdP that few requests make would
        // otherwise take its room in every request's future (and be copied with it).
        if set.fetched_at.is_none() {
            let seen = set.fetched_at;
            Box::pin(self.keys.fetch(self.tokens.idp(), Reason::Refresh { seen }))
                .await
                .map_err(|e| self.unavailable(&e))?;
            set = self.keys.current();
        }
        if set.candidates(kid, header.alg).next().is_none() {
            let seen = set.fetched_at;
            match Box::pin(
                self.keys
                    .fetch(self.tokens.idp(), Reason::UnknownKid { seen }),
            )
            .await
            {
                Ok(Refetch::Fetched) => set = self.keys.current(),
                Ok(Refetch::RateLimited) => {}
                Err(e) => return Err(self.unavailable(&e)),
            }
        }
        let mut outcome = Err(self.invalid("no trusted key matches the token"));
        let fetched_at = set.fetched_at.unwrap_or_else(Instant::now);
        for k in set.candidates(kid, header.alg) {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &k.key, validation) {
                Ok(data) => return Ok((data.claims, fetched_at)),
                // Another key without a `kid` may still verify it.
                Err(e) if *e.kind() == ErrorKind::InvalidSignature && kid.is_none() => {
                    outcome = Err(self.invalid(reason(e.kind())));
                }
                Err(e) => return Err(self.invalid(reason(e.kind()))),
            }
        }
        outcome
    }

    fn refresh_in_background(&self, set: &KeySet) {
        let keys = Arc::clone(&self.keys);
        let tokens = Arc::clone(&self.tokens);
        let name = self.name.clone();
        // The set looked at now, not when the task gets to run: a fetch a request makes
        // meanwhile satisfies this one.
        let seen = set.fetched_at;
        self.tokens.tasks().spawn(async move {
            if let Err(error) = keys.fetch(tokens.idp(), Reason::Refresh { seen }).await {
                tracing::warn!(middleware = %name, %error, "cannot fetch the JWKS; keeping the keys we have");
            }
        });
    }

    fn invalid(&self, reason: &'static str) -> AuthError {
        AuthError::InvalidToken {
            realm: Arc::clone(&self.realm),
            reason,
        }
    }

    fn unavailable(&self, e: &IdpError) -> AuthError {
        tracing::warn!(middleware = %self.name, error = %e, "cannot fetch the JWKS");
        AuthError::Unavailable {
            retry_after: keys::KEYS_RETRY_AFTER,
        }
    }
}

/// The validation for one algorithm: `exp` required, `iss`/`aud` when configured.
fn validation(cfg: &JwtConfig, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = cfg.leeway.as_secs();
    v.validate_nbf = true;
    let mut required = vec!["exp"];
    if let Some(iss) = &cfg.issuer {
        v.set_issuer(&[iss]);
        required.push("iss");
    }
    if cfg.audience.is_empty() {
        v.validate_aud = false;
    } else {
        v.set_audience(&cfg.audience);
        required.push("aud");
    }
    v.set_required_spec_claims(&required);
    v
}

/// RFC 9068 §4: `typ` is `at+jwt`, or `application/at+jwt` (RFC 7515 §4.1.9 lets the
/// `application/` prefix be omitted; media types compare case-insensitively).
fn is_access_token_type(typ: Option<&str>) -> bool {
    typ.is_some_and(|t| {
        let t = t.to_ascii_lowercase();
        t == "at+jwt" || t == "application/at+jwt"
    })
}

/// A caller-safe description of a validation failure.
fn reason(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired",
        ErrorKind::ImmatureSignature => "the token is not valid yet",
        ErrorKind::InvalidIssuer => "the token has another issuer",
        ErrorKind::InvalidAudience => "the token is for another audience",
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim",
        ErrorKind::InvalidAlgorithm => "signature algorithm not accepted",
        _ => "malformed token",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::DEFAULT_REALM;

    /// A middleware's configuration with the defaults, taking its keys from `keys`.
    pub(super) fn config(keys: JwksSource) -> JwtConfig {
        JwtConfig {
            token_source: TokenSource::default(),
            keys,
            issuer: Some("https://idp.example".into()),
            audience: vec!["orders".into()],
            algorithms: vec![Algorithm::RS256, Algorithm::ES256],
            leeway: DEFAULT_LEEWAY,
            forward_authorization: false,
            policy: ClaimsPolicy::default(),
            jwks_refresh_interval: DEFAULT_JWKS_REFRESH_INTERVAL,
            jwks_min_refresh_interval: DEFAULT_JWKS_MIN_REFRESH_INTERVAL,
            jwks_max_staleness: DEFAULT_JWKS_MAX_STALENESS,
            http: crate::outbound::HttpClientConfig {
                timeout: crate::outbound::DEFAULT_IDP_TIMEOUT,
                retries: 0,
                tls: Default::default(),
            },
            realm: DEFAULT_REALM.into(),
            access_token_type: false,
        }
    }

    #[test]
    fn access_token_type_is_at_jwt_with_or_without_the_media_type_prefix() {
        for ok in ["at+jwt", "AT+JWT", "application/at+jwt"] {
            assert!(super::is_access_token_type(Some(ok)), "{ok}");
        }
        for bad in [None, Some("JWT"), Some("at+jwt2"), Some("application/jwt")] {
            assert!(!super::is_access_token_type(bad), "{bad:?}");
        }
    }

    /// Arbitrary tokens, and tokens made of arbitrary header and claims JSON: none verifies
    /// against a key that signed none of them, and none panics.
    #[test]
    fn arbitrary_tokens_are_refused_without_panicking() {
        use base64::Engine;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
        use proptest::prelude::*;
        use proptest::test_runner::TestRunner;

        use crate::lifecycle::TokenCache;
        use crate::store::{MemoryStore, Store};
        use crate::token::FleetKey;

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut j = config(JwksSource::Gateway);
        j.algorithms = vec![Algorithm::ES256];
        // RFC 7517 Appendix A.1's P-256 public key.
        j.keys = JwksSource::Inline(std::sync::Arc::new(serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "use": "sig", "kid": "1",
            "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",
            "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM",
        }]})));
        let jwt = rt.block_on(async {
            let cache = TokenCache::new(FleetKey::random(), Store::Memory(MemoryStore::new()));
            super::Jwt::new("t", j, &cache, Default::default()).unwrap()
        });
        let header = prop_oneof![
            Just(r#"{"alg":"ES256","kid":"1"}"#.to_owned()),
            Just(r#"{"alg":"none"}"#.to_owned()),
            Just(r#"{"alg":"HS256","kid":"1"}"#.to_owned()),
            "[ -~]{0,40}",
        ];
        let claims = prop_oneof![
            Just(r#"{"iss":"https://idp.example","aud":"orders","exp":9999999999}"#.to_owned()),
            "[ -~]{0,60}",
        ];
        let mut runner = TestRunner::default();
        runner
            .run(
                &(header, claims, "[A-Za-z0-9_-]{0,90}", "[ -~]{0,60}"),
                |(h, c, sig, raw)| {
                    let token = format!("{}.{}.{sig}", B64URL.encode(h), B64URL.encode(c));
                    for t in [token.as_str(), raw.as_str()] {
                        prop_assert!(rt.block_on(jwt.verify(t)).is_err(), "{t}");
                    }
                    Ok(())
                },
            )
            .unwrap();
    }
}
