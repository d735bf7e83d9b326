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

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::HeaderMap;
use http::header::AUTHORIZATION;

use super::{Applied, AuthError, UsedToken};
use crate::config::{ClientCredentialsConfig, Secret};
use crate::token::{
    IdpError, KeyDeriver, TokenCache, TokenEntry, TokenKey, TokenRequest, now_millis,
};

/// A configured `clientCredentials` middleware.
pub struct ClientCredentials {
    name: String,
    cfg: ClientCredentialsConfig,
    deriver: KeyDeriver,
    /// Gateway level: the key, derived once.
    gateway_key: Option<TokenKey>,
    realm: Arc<str>,
    cache: Arc<TokenCache>,
}

impl ClientCredentials {
    /// The name it has in the configuration.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Builds the middleware named `name`.
    pub fn new(name: &str, cfg: ClientCredentialsConfig, cache: Arc<TokenCache>) -> Self {
        let deriver = KeyDeriver::new(
            cache.fleet(),
            &cfg.token_url,
            &cfg.scopes,
            cfg.audience.as_deref(),
            &cfg.endpoint_params,
        );
        let gateway_key = cfg
            .credentials
            .as_ref()
            .map(|(id, secret)| deriver.key(id, secret.expose()));
        let realm = Arc::from(cfg.realm.as_str());
        Self {
            name: name.to_owned(),
            cfg,
            deriver,
            gateway_key,
            realm,
            cache,
        }
    }

    /// The token cache behind it.
    pub fn cache(&self) -> &Arc<TokenCache> {
        &self.cache
    }

    /// Authorises a request: finds or obtains the token, then rewrites `headers`.
    pub async fn apply(&self, headers: &mut HeaderMap) -> Result<Applied, AuthError> {
        let now = now_millis();
        let (key, entry) = match (&self.gateway_key, &self.cfg.credentials) {
            (Some(key), Some((id, secret))) => match self.cache.cached(key, now) {
                Some(e) => (*key, e),
                None => (*key, self.obtain(key, id, secret.clone()).await?),
            },
            _ => {
                let (id, secret) =
                    caller_credentials(headers).ok_or_else(|| AuthError::MissingCredentials {
                        realm: Arc::clone(&self.realm),
                    })?;
                let key = self.deriver.key(&id, &secret);
                match self.cache.cached(&key, now) {
                    Some(e) => (key, e),
                    None => (key, self.obtain(&key, &id, Secret::new(secret)).await?),
                }
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
        let username = self
            .cfg
            .policy
            .enforce(headers, entry.claims.as_deref(), &self.realm)?;
        headers.insert(AUTHORIZATION, entry.bearer.clone());
        Ok(Applied {
            username,
            token: Some(UsedToken {
                key,
                version: entry.meta.version,
            }),
        })
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

/// The caller's `Authorization: Basic` credentials (RFC 7617): scheme case-insensitive, the
/// user-id ends at the first `:`. Exactly as the Traefik Hub docs have callers build it:
/// `base64(client_id:client_secret)`.
fn caller_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(BASE64.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    if id.is_empty() {
        return None;
    }
    Some((id.to_owned(), secret.to_owned()))
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

    #[test]
    fn basic_credentials_split_at_the_first_colon() {
        assert_eq!(
            caller_credentials(&basic("id:se:cr et")),
            Some(("id".into(), "se:cr et".into()))
        );
        assert_eq!(
            caller_credentials(&basic(":secret")),
            None,
            "empty client id"
        );
        assert_eq!(caller_credentials(&basic("no-colon")), None);
        let mut bearer = HeaderMap::new();
        bearer.insert(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(caller_credentials(&bearer), None);
    }
}
