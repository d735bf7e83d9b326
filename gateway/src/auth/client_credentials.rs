//! The `clientCredentials` middleware (RFC 6749 §4.4), after Traefik Hub's
//! `oAuthClientCredentials`.
//!
//! - **Application level** (no `clientId` configured): the caller's `Authorization: Basic`
//!   credentials are exchanged for a token; each caller's token is cached under a key that
//!   includes its secret.
//! - **Gateway level** (`clientId` + `clientSecret`): the gateway's own credentials are used; the
//!   caller needs none, and the key is computed once at start.
//!
//! Either way the upstream receives `Authorization: Bearer <token>` (the caller's Basic
//! credentials never travel further) and the configured claim headers.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::HeaderMap;
use http::header::AUTHORIZATION;
use url::Url;

use super::limits::{CallerLimits, Guards};
use super::{Applied, AuthError, Authenticate, Caller, Pending, UsedToken};
use crate::auth::claims::ClaimsPolicy;
use crate::lifecycle::TokenCache;
use crate::outbound::{HttpClientConfig, HttpTls, IdpError};
use crate::secret::Secret;
use crate::token::{AuthMethod, KeyDeriver, TokenEntry, TokenKey, TokenRequest};

/// Lifetime assumed when the IdP states none (neither `expires_in` nor a JWT `exp`).
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(300);
/// How long an `invalid_client` answer is remembered, so a flood of bad secrets is not a flood
/// at the IdP, while a fixed client registration is picked up quickly.
pub const DEFAULT_NEGATIVE_CACHE_TTL: Duration = Duration::from_secs(10);
/// An upstream 401 evicts a token only once it is this old: a token that was refused within
/// seconds of being issued is refused for the upstream's own reasons, and fetching another
/// would only turn anonymous traffic into IdP load (at most two fetches a minute per credential).
pub const DEFAULT_REJECTED_TOKEN_MIN_AGE: Duration = Duration::from_secs(30);

/// The `clientCredentials` middleware, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientCredentialsConfig {
    /// The IdP token endpoint.
    pub token_url: Url,
    /// Gateway-level credentials; `None` = application level (the caller's Basic credentials).
    pub credentials: Option<(String, Secret)>,
    /// How the gateway authenticates at the token endpoint.
    pub auth_method: AuthMethod,
    /// `private_key_jwt`: the gateway's key (`None` only when the configuration was checked
    /// without reading key material).
    pub client_key: Option<crate::outbound::ClientKey>,
    /// Sent as `audience`.
    pub audience: Option<String>,
    /// Sent as `scope`, sorted and deduplicated.
    pub scopes: Vec<String>,
    /// Extra form parameters, sorted by name.
    pub endpoint_params: Vec<(String, String)>,
    /// Claims checks and forwarding, applied to the claims of the token obtained.
    pub policy: ClaimsPolicy,
    /// Lifetime assumed when the IdP states none.
    pub default_token_lifetime: Duration,
    /// Realm of the `Basic` challenge.
    pub realm: String,
    /// How long `invalid_client` is remembered.
    pub negative_cache_ttl: Duration,
    /// Tokens younger than this are not evicted when an upstream answers 401 to them.
    pub rejected_token_min_age: Duration,
    /// Whether a request whose method is not idempotent (RFC 9110 §9.2.2) is sent again after
    /// an upstream 401; off, only the 401 is passed on (the token is still evicted).
    pub replay_non_idempotent: bool,
    /// One IdP attempt's timeout.
    pub idp_timeout: Duration,
    /// IdP retries after the first attempt.
    pub idp_retries: u32,
    /// TLS towards the token endpoint (`clientConfig.tls`); its profile goes into each refresh
    /// spec so that the refreshing node uses the same settings, from its own configuration.
    pub tls: HttpTls,
}

/// A configured `clientCredentials` middleware.
pub struct ClientCredentials {
    name: String,
    cfg: ClientCredentialsConfig,
    deriver: KeyDeriver,
    /// Gateway level: the key, derived once.
    gateway_key: Option<TokenKey>,
    realm: Arc<str>,
    cache: Arc<TokenCache>,
    guards: Guards,
    /// The last version of each key evicted after an upstream 401.
    evicted: papaya::HashMap<TokenKey, u64>,
}

/// Evictions remembered (per key, the last version); past this the memory starts over, which
/// at worst repeats one conditional eviction per key.
const EVICTED_REMEMBERED: usize = 4096;

impl super::AuthSettings for ClientCredentialsConfig {
    fn kind(&self) -> &'static str {
        "clientCredentials"
    }

    fn build(&self, name: &str, with: &super::Build<'_>) -> reqwest::Result<Box<dyn Authenticate>> {
        let m = ClientCredentials::new(
            name,
            self.clone(),
            Arc::clone(with.cache),
            with.guards.clone(),
        )?;
        Ok(Box::new(m))
    }
}

impl Authenticate for ClientCredentials {
    fn realm(&self) -> Arc<str> {
        Arc::clone(&self.realm)
    }

    fn challenges_basic(&self) -> bool {
        true
    }

    fn apply<'a>(
        &'a self,
        parts: &'a mut http::request::Parts,
        caller: &'a Caller,
    ) -> Pending<'a, Result<Applied, AuthError>> {
        Box::pin(ClientCredentials::apply(self, &mut parts.headers, caller))
    }

    fn reject_token<'a>(&'a self, used: &'a UsedToken) -> Pending<'a, bool> {
        Box::pin(ClientCredentials::reject_token(self, used))
    }

    fn replays_after_401(&self, method: &http::Method) -> Option<bool> {
        Some(self.replays(method))
    }
}

impl ClientCredentials {
    /// Builds the middleware named `name`.
    pub fn new(
        name: &str,
        cfg: ClientCredentialsConfig,
        cache: Arc<TokenCache>,
        guards: Guards,
    ) -> reqwest::Result<Self> {
        if let Some(profile) = &cfg.tls.profile {
            let client = HttpClientConfig {
                timeout: cfg.idp_timeout,
                retries: cfg.idp_retries,
                tls: cfg.tls.clone(),
            }
            .build()?;
            cache.idp().register(profile, client);
        }
        let deriver = KeyDeriver::new(
            cache.fleet(),
            &cfg.token_url,
            &cfg.scopes,
            cfg.audience.as_deref(),
            &cfg.endpoint_params,
        )
        .with_tls_profile(cfg.tls.profile.as_deref());
        if let Some(key) = &cfg.client_key {
            cache.idp().register_key(key);
        }
        // A private key is its own credential: a token obtained with one key never serves a
        // route configured with another.
        let gateway_key = cfg
            .credentials
            .as_ref()
            .map(|(id, secret)| match &cfg.client_key {
                Some(key) => deriver.key(id, key.profile()),
                None => deriver.key(id, secret.expose()),
            });
        let realm = Arc::from(cfg.realm.as_str());
        Ok(Self {
            name: name.to_owned(),
            cfg,
            deriver,
            gateway_key,
            realm,
            cache,
            guards,
            evicted: papaya::HashMap::new(),
        })
    }

    /// The token cache behind it.
    pub fn cache(&self) -> &Arc<TokenCache> {
        &self.cache
    }

    /// Authorises a request: finds or obtains the token, then rewrites `headers`.
    ///
    /// At application level the caller's credentials are checked against the caller limits
    /// before anything else, and a miss spends from the caller's budget before it costs a store
    /// read or an IdP call.
    pub async fn apply(
        &self,
        headers: &mut HeaderMap,
        caller: &Caller,
    ) -> Result<Applied, AuthError> {
        let now = self.cache.clock().now();
        let (key, entry) = match (&self.gateway_key, &self.cfg.credentials) {
            (Some(key), Some((id, secret))) => match self.cache.cached(key, now) {
                Some(e) => (*key, e),
                // A miss is boxed: its future (store, IdP) is large, and the hit path should
                // not carry room for it.
                None => (*key, Box::pin(self.obtain(key, id, secret.clone())).await?),
            },
            _ => {
                let (id, secret) = match caller_credentials(headers, &self.guards.limits) {
                    Presented::Valid(id, secret) => (id, secret),
                    Presented::Nothing => {
                        return Err(AuthError::MissingCredentials {
                            realm: Arc::clone(&self.realm),
                        });
                    }
                    Presented::OutOfBounds => {
                        return Err(AuthError::InvalidClient {
                            realm: Arc::clone(&self.realm),
                        });
                    }
                };
                let key = self.deriver.key(&id, &secret);
                let entry = match self.cache.cached(&key, now) {
                    Some(e) => e,
                    None => {
                        if !self.cache.miss_is_free(&key, now) {
                            self.guards.budget.spend(caller.address, Some(&id))?;
                        }
                        Box::pin(self.obtain(&key, &id, Secret::new(secret))).await?
                    }
                };
                let mut applied = self.rewrite(headers, key, &entry)?;
                applied.client = Some(id);
                return Ok(applied);
            }
        };
        self.rewrite(headers, key, &entry)
    }

    /// The cache-hit path's header rewrite: the bearer token replaces whatever the caller sent,
    /// and claim headers replace caller-sent ones; the token's claims must satisfy `claims`.
    pub fn rewrite(
        &self,
        headers: &mut HeaderMap,
        key: TokenKey,
        entry: &TokenEntry,
    ) -> Result<Applied, AuthError> {
        let claims = if self.cfg.policy.reads_claims() {
            entry.claims()
        } else {
            None
        };
        let username = self.cfg.policy.enforce(headers, claims, &self.realm)?;
        headers.insert(AUTHORIZATION, entry.bearer.clone());
        Ok(Applied {
            username,
            token: Some(UsedToken {
                key,
                version: entry.meta.version,
                issued_at: entry.meta.issued_at,
            }),
            client: None,
        })
    }

    /// Whether a request with `method` may be sent again after an upstream 401 to its token:
    /// an idempotent one always, another only if the operator said so.
    pub fn replays(&self, method: &http::Method) -> bool {
        self.cfg.replay_non_idempotent || crate::http::idempotent(method)
    }

    /// The upstream answered 401 to `used`. A token younger than `rejectedTokenMinAge` is kept:
    /// a fresh token refused is the upstream's own policy (or an attacker provoking 401s to
    /// churn tokens), and a new one would be refused too. An older one is evicted fleet-wide,
    /// once per version: concurrent 401s for the same version evict it once.
    pub async fn reject_token(&self, used: &UsedToken) -> bool {
        let age = self.cache.clock().now().saturating_sub(used.issued_at);
        if age < self.cfg.rejected_token_min_age.as_millis() as u64 {
            tracing::info!(middleware = %self.name, age_ms = age, "upstream refused a fresh token; kept");
            return false;
        }
        {
            let evicted = self.evicted.pin();
            if evicted.get(&used.key) == Some(&used.version) {
                return true;
            }
            if evicted.len() >= EVICTED_REMEMBERED {
                evicted.clear();
            }
            evicted.insert(used.key, used.version);
        }
        self.cache.evict(&used.key, Some(used.version)).await;
        true
    }

    async fn obtain(
        &self,
        key: &TokenKey,
        client_id: &str,
        secret: Secret,
    ) -> Result<Arc<TokenEntry>, AuthError> {
        let spec = || TokenRequest {
            token_url: self.cfg.token_url.clone(),
            auth_method: self.cfg.auth_method,
            client_id: client_id.to_owned(),
            client_secret: secret,
            scopes: self.cfg.scopes.clone(),
            audience: self.cfg.audience.clone(),
            params: self.cfg.endpoint_params.clone(),
            default_lifetime: self.cfg.default_token_lifetime,
            timeout: self.cfg.idp_timeout,
            retries: self.cfg.idp_retries,
            tls_profile: self.cfg.tls.profile.clone(),
            key_profile: self.cfg.client_key.as_ref().map(|k| k.profile().to_owned()),
        };
        let gateway_level = self.gateway_key.is_some();
        self.cache.get(key, spec, self.cfg.negative_cache_ttl).await.map_err(|e| {
            match &e {
                IdpError::Unavailable { .. } => {}
                _ if gateway_level => {
                    tracing::error!(middleware = %self.name, client_id, error = %e, "gateway credentials rejected");
                }
                _ => tracing::info!(middleware = %self.name, client_id, error = %e, "token request refused"),
            }
            match e {
                IdpError::InvalidClient if !gateway_level => AuthError::InvalidClient { realm: Arc::clone(&self.realm) },
                IdpError::Refused { error } if !gateway_level => AuthError::Refused { error },
                IdpError::Unavailable { retry_after, .. } => AuthError::Unavailable { retry_after },
                _ => AuthError::Upstream,
            }
        })
    }
}

/// What the caller's `Authorization` header holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Presented {
    /// Basic credentials within the caller limits.
    Valid(String, String),
    /// No Basic credentials (no header, another scheme, not base64, no `:`).
    Nothing,
    /// Basic credentials outside the limits: refused before they cost anything.
    OutOfBounds,
}

/// The caller's `Authorization: Basic` credentials (RFC 7617): scheme case-insensitive, the
/// user-id ends at the first `:`. Exactly as the Traefik Hub docs have callers build it:
/// `base64(client_id:client_secret)`. A header too long to hold credentials within the limits
/// is refused before it is decoded.
pub fn caller_credentials(headers: &HeaderMap, limits: &CallerLimits) -> Presented {
    let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return Presented::Nothing;
    };
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return Presented::Nothing;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Presented::Nothing;
    }
    let encoded = encoded.trim();
    let longest =
        (limits.client_id_max_length + limits.client_secret_max_length + 1).div_ceil(3) * 4;
    if encoded.len() > longest {
        return Presented::OutOfBounds;
    }
    let Some(decoded) = BASE64
        .decode(encoded)
        .ok()
        .and_then(|d| String::from_utf8(d).ok())
    else {
        return Presented::Nothing;
    };
    let Some((id, secret)) = decoded.split_once(':') else {
        return Presented::Nothing;
    };
    if id.is_empty() {
        return Presented::Nothing;
    }
    if !limits.client_credentials_ok(id, secret) {
        return Presented::OutOfBounds;
    }
    Presented::Valid(id.to_owned(), secret.to_owned())
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn basic(raw: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            AUTHORIZATION,
            HeaderValue::try_from(format!("bAsIc {}", BASE64.encode(raw))).unwrap(),
        );
        h
    }

    fn presented(h: &HeaderMap) -> Presented {
        caller_credentials(h, &CallerLimits::default())
    }

    #[test]
    fn basic_credentials_split_at_the_first_colon() {
        assert_eq!(
            presented(&basic("id:se:cr et")),
            Presented::Valid("id".into(), "se:cr et".into())
        );
        assert_eq!(
            presented(&basic(":secret")),
            Presented::Nothing,
            "empty client id"
        );
        assert_eq!(presented(&basic("no-colon")), Presented::Nothing);
        let mut bearer = HeaderMap::new();
        bearer.insert(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(presented(&bearer), Presented::Nothing);
    }

    #[test]
    fn credentials_outside_the_limits_are_refused_before_decoding() {
        let long_id = format!("{}:secret", "a".repeat(20 * 1024));
        assert_eq!(presented(&basic(&long_id)), Presented::OutOfBounds);
        let at_limit = format!("{}:{}", "a".repeat(256), "s".repeat(512));
        assert!(matches!(presented(&basic(&at_limit)), Presented::Valid(..)));
        let over = format!("{}:s", "a".repeat(257));
        assert_eq!(presented(&basic(&over)), Presented::OutOfBounds);
        assert_eq!(presented(&basic("id\u{7f}:s")), Presented::OutOfBounds);
    }

    proptest::proptest! {
        /// Any header bytes: no panic, and what is accepted is within the limits.
        #[test]
        fn any_authorization_value_is_parsed_safely(raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            if let Ok(v) = HeaderValue::from_bytes(&raw) {
                let mut h = HeaderMap::new();
                h.insert(AUTHORIZATION, v);
                if let Presented::Valid(id, secret) = presented(&h) {
                    proptest::prop_assert!(CallerLimits::default().client_credentials_ok(&id, &secret));
                }
            }
        }

        /// Base64 of arbitrary text after `Basic `: the parse agrees with RFC 7617.
        #[test]
        fn any_basic_payload_splits_at_the_first_colon(text in "\\PC{0,80}") {
            match presented(&basic(&text)) {
                Presented::Valid(id, secret) => proptest::prop_assert_eq!(format!("{id}:{secret}"), text),
                Presented::Nothing => proptest::prop_assert!(text.split_once(':').is_none_or(|(id, _)| id.is_empty())),
                Presented::OutOfBounds => {}
            }
        }
    }
}
