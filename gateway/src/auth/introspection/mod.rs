//! The `introspection` middleware (RFC 7662), after Traefik Hub's `oAuthIntrospection`.
//!
//! The caller's token is looked for where `tokenSource` says, its verdict taken from the cache
//! or asked of the introspection endpoint, the `claims` expression checked against the answer,
//! and the claim headers written. The token itself is removed before the upstream unless
//! `forwardAuthorization` is set. A token the endpoint calls inactive, or whose `exp` has passed,
//! gets 401 `invalid_token`; an endpoint that cannot be reached gets 503: never a silent allow.

mod cache;
pub mod client;

use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderName, HeaderValue};
use url::Url;

pub use cache::{CachePolicy, ResultCache, Verdict};
pub use client::{Answer, IntrospectionClient};

use super::bearer;
use super::limits::Guards;
use super::{Applied, AuthError, Caller};
use crate::auth::bearer::TokenSource;
use crate::auth::claims::ClaimsPolicy;
use crate::lifecycle::TokenCache;
use crate::outbound::{HttpClientConfig, IdpError};
use crate::secret::Secret;
use crate::token::{AuthMethod, KeyDeriver};

/// Upper bound on reusing an active introspection result: a token revoked at the IdP is still
/// accepted for at most this long. Half a minute keeps the IdP off the hot path without making
/// revocation meaningless.
pub const DEFAULT_MAX_CACHE_TTL: Duration = Duration::from_secs(30);
/// How long an inactive (or unknown) token's result is remembered: long enough that a client
/// retrying with a bad token is not a flood at the IdP, short enough not to matter otherwise.
pub const DEFAULT_INACTIVE_CACHE_TTL: Duration = Duration::from_secs(5);

/// How the gateway authenticates at an endpoint it calls.
#[derive(Debug, Clone, PartialEq)]
pub enum EndpointAuth {
    /// No authentication.
    None,
    /// Client id and secret, by `client_secret_basic`, `client_secret_post` or
    /// `client_secret_jwt`; or the client id alone, by `tls_client_auth`.
    Client {
        /// How they are sent.
        method: AuthMethod,
        /// The client id.
        client_id: String,
        /// The client secret (empty for `tls_client_auth`).
        secret: Secret,
    },
    /// An `Authorization` value written in the configuration (`clientConfig.headers`, as
    /// Traefik Hub's documents write it), sent as written; the client id it names, if any.
    Header {
        /// The client id of `Basic` credentials (empty for `Bearer`).
        client_id: String,
        /// The whole value.
        value: Secret,
    },
    /// `private_key_jwt`: the client id and its private key.
    Key {
        /// The client id.
        client_id: String,
        /// The key that signs its assertions.
        key: crate::outbound::ClientKey,
    },
    /// `Authorization: Bearer <token>`.
    Bearer(Secret),
}

impl EndpointAuth {
    /// The client id, if any (not a secret): part of the introspection cache key.
    pub fn client_id(&self) -> &str {
        match self {
            Self::Client { client_id, .. }
            | Self::Key { client_id, .. }
            | Self::Header { client_id, .. } => client_id,
            Self::None | Self::Bearer(_) => "",
        }
    }
}

/// The `introspection` middleware, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct IntrospectionConfig {
    /// Where the caller's token is.
    pub token_source: TokenSource,
    /// The introspection endpoint.
    pub url: Url,
    /// How the gateway authenticates there.
    pub auth: EndpointAuth,
    /// Extra request headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// RFC 7662 `token_type_hint`.
    pub token_type_hint: Option<String>,
    /// HTTP client options.
    pub http: HttpClientConfig,
    /// Keep the caller's token on the upstream request.
    pub forward_authorization: bool,
    /// Claims checks and forwarding, applied to the introspection response.
    pub policy: ClaimsPolicy,
    /// Upper bound on reusing an active result (never past `exp`).
    pub max_cache_ttl: Duration,
    /// How long an inactive result is remembered.
    pub inactive_cache_ttl: Duration,
    /// `Bearer` realm.
    pub realm: String,
}

/// A configured `introspection` middleware.
pub struct Introspection {
    name: String,
    cfg: IntrospectionConfig,
    deriver: KeyDeriver,
    realm: Arc<str>,
    results: Arc<ResultCache>,
    guards: Guards,
}

impl super::AuthSettings for IntrospectionConfig {
    fn kind(&self) -> &'static str {
        "introspection"
    }

    fn build(
        &self,
        name: &str,
        with: &super::Build<'_>,
    ) -> reqwest::Result<Box<dyn super::Authenticate>> {
        Ok(Box::new(Introspection::new(
            name,
            self.clone(),
            with.cache,
            with.guards.clone(),
        )?))
    }
}

impl super::Authenticate for Introspection {
    fn realm(&self) -> Arc<str> {
        Arc::clone(&self.realm)
    }

    fn apply<'a>(
        &'a self,
        parts: &'a mut Parts,
        caller: &'a super::Caller,
    ) -> super::Pending<'a, Result<Applied, AuthError>> {
        Box::pin(Introspection::apply(self, parts, caller))
    }
}

impl Introspection {
    /// Builds the middleware named `name`.
    pub fn new(
        name: &str,
        cfg: IntrospectionConfig,
        tokens: &Arc<TokenCache>,
        guards: Guards,
    ) -> reqwest::Result<Self> {
        let client = IntrospectionClient::new(&cfg)?;
        let deriver = KeyDeriver::introspection(tokens.fleet(), &cfg.url, cfg.auth.client_id());
        let policy = CachePolicy {
            max_ttl: cfg.max_cache_ttl.as_millis() as u64,
            inactive_ttl: cfg.inactive_cache_ttl.as_millis() as u64,
        };
        let results = ResultCache::new(Arc::clone(tokens), client, cfg.url.to_string(), policy);
        Ok(Self {
            name: name.to_owned(),
            realm: Arc::from(cfg.realm.as_str()),
            cfg,
            deriver,
            results,
            guards,
        })
    }

    /// Authorises a request by its bearer token. A token not in L1 costs a store read and
    /// perhaps an introspection call, so it spends from the caller's miss budget first.
    pub async fn apply(&self, parts: &mut Parts, caller: &Caller) -> Result<Applied, AuthError> {
        let (token, at) = bearer::require(
            &self.cfg.token_source,
            parts,
            &self.guards.limits,
            &self.realm,
        )?;
        let key = self.deriver.token(&token);
        let verdict = match self.results.cached(&key) {
            Some(v) => Ok(v),
            None => {
                if !self.results.in_flight(&key) {
                    self.guards.budget.spend(caller.address, None)?;
                }
                self.results.verdict(key, &token).await
            }
        };
        let verdict = verdict.map_err(|e| {
            match &e {
                IdpError::InvalidClient => tracing::error!(middleware = %self.name, "introspection endpoint rejected the gateway's credentials"),
                _ => tracing::warn!(middleware = %self.name, error = %e, "introspection failed"),
            }
            match e {
                IdpError::Unavailable { retry_after, .. } => AuthError::Unavailable { retry_after },
                _ => AuthError::Upstream,
            }
        })?;
        let Some(claims) = &verdict.claims else {
            return Err(self.invalid("the token is not active"));
        };
        if !self.cfg.forward_authorization {
            bearer::remove(&self.cfg.token_source, parts, at);
        }
        let username = self
            .cfg
            .policy
            .enforce(&mut parts.headers, Some(claims), &self.realm)?;
        Ok(Applied {
            username,
            token: None,
            client: super::client_of(claims),
        })
    }

    fn invalid(&self, reason: &'static str) -> AuthError {
        AuthError::InvalidToken {
            realm: Arc::clone(&self.realm),
            reason,
        }
    }
}
