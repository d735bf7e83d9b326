//! The verification keys of a `jwt` middleware: a JWKS fetched from a URL or found by OpenID
//! Connect discovery, cached, refreshed in the background when old, and refetched at once when a
//! token names an unknown `kid` — at most once per `jwksMinRefreshInterval`, so a caller sending
//! random `kid`s cannot turn its requests into requests at the IdP.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde_json::Value;
use url::Url;

use super::{JwksSource, JwtConfig};
use crate::outbound::exchange;
use crate::outbound::{IdpClient, IdpError};

/// One usable key.
pub struct VerifyingKey {
    /// Its `kid`, if the set names it.
    pub kid: Option<String>,
    /// The key.
    pub key: DecodingKey,
    /// Algorithms it may verify: the allow-list, narrowed to the key's type and to its own
    /// `alg` when the set states one.
    pub algorithms: Vec<Algorithm>,
}

/// A fetched key set.
#[derive(Default)]
pub struct KeySet {
    /// The usable keys.
    pub keys: Vec<VerifyingKey>,
    /// When it was fetched; `None` before the first successful fetch.
    pub fetched_at: Option<Instant>,
}

impl KeySet {
    /// Keys that may verify a token with this `kid` and `alg`. A token without `kid` may be
    /// verified by any key allowed for its algorithm.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a VerifyingKey> + 'a {
        self.keys.iter().filter(move |k| {
            k.algorithms.contains(&alg) && (kid.is_none() || k.kid.as_deref() == kid)
        })
    }
}

/// Why a fetch is wanted. Each reason names the set the caller looked at (by when it was
/// fetched; `None`: no set yet): once another set is in place (a concurrent caller fetched
/// it), the reason is met without another fetch.
#[derive(Debug, Clone, Copy)]
pub enum Reason {
    /// No set yet, or the set is old.
    Refresh {
        /// The set looked at.
        seen: Option<Instant>,
    },
    /// A token names a key the set does not have.
    UnknownKid {
        /// The set looked at.
        seen: Option<Instant>,
    },
    /// The set is older than `jwksMaxStaleness`: it verifies nothing until fetched again.
    Stale {
        /// The set looked at.
        seen: Option<Instant>,
    },
}

/// What a fetch for an unknown `kid` did.
#[derive(Debug)]
pub enum Refetch {
    /// A newer set is in place (fetched now or by someone else meanwhile).
    Fetched,
    /// Too soon after the previous fetch: nothing was asked.
    RateLimited,
}

#[derive(Default)]
struct FetchState {
    last_attempt: Option<Instant>,
    /// The discovered JWKS URL, once known.
    jwks_uri: Option<Url>,
}

/// The keys of one middleware.
pub struct Keys {
    http: reqwest::Client,
    cfg: JwtConfig,
    current: RwLock<Arc<KeySet>>,
    fetch: tokio::sync::Mutex<FetchState>,
    refreshing: AtomicBool,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

impl Keys {
    /// Keys for `cfg`; nothing is fetched until asked. An inline set is in place at once.
    pub fn new(cfg: &JwtConfig) -> reqwest::Result<Self> {
        let current = match &cfg.keys {
            JwksSource::Inline(doc) => parse_set(doc, &cfg.algorithms),
            _ => KeySet::default(),
        };
        Ok(Self {
            http: cfg.http.build()?,
            cfg: cfg.clone(),
            current: RwLock::new(Arc::new(current)),
            fetch: tokio::sync::Mutex::new(FetchState::default()),
            refreshing: AtomicBool::new(false),
        })
    }

    /// The current set (cheap: an `Arc` clone under a read lock never held across an await).
    pub fn current(&self) -> Arc<KeySet> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Whether the set is older than `jwksRefreshInterval` and no refresh is running; marks a
    /// refresh as running when it answers true.
    pub fn claim_background_refresh(&self, set: &KeySet) -> bool {
        set.fetched_at
            .is_some_and(|t| t.elapsed() >= self.cfg.jwks_refresh_interval)
            && !self.refreshing.swap(true, Ordering::AcqRel)
    }

    /// Whether `set` came from the network and is older than `jwksMaxStaleness`.
    pub fn is_stale(&self, set: &KeySet) -> bool {
        matches!(self.cfg.keys, JwksSource::Url(_) | JwksSource::Discovery(_))
            && set
                .fetched_at
                .is_some_and(|t| t.elapsed() > self.cfg.jwks_max_staleness)
    }

    /// Fetches the set. Concurrent callers wait for one fetch instead of making their own.
    pub async fn fetch(&self, idp: &IdpClient, reason: Reason) -> Result<Refetch, IdpError> {
        let mut state = self.fetch.lock().await;
        let fetched_at = self.current().fetched_at;
        let (Reason::Refresh { seen } | Reason::UnknownKid { seen } | Reason::Stale { seen }) =
            reason;
        // Compared by identity, not by time: a set fetched while this caller was still
        // deciding to ask is newer than the one it saw, whatever the clock said.
        if fetched_at != seen {
            self.done(reason);
            return Ok(Refetch::Fetched);
        }
        if matches!(reason, Reason::UnknownKid { .. } | Reason::Stale { .. })
            && state
                .last_attempt
                .is_some_and(|t| t.elapsed() < self.cfg.jwks_min_refresh_interval)
        {
            return Ok(Refetch::RateLimited);
        }
        state.last_attempt = Some(Instant::now());
        let result = self.fetch_locked(idp, &mut state).await;
        self.done(reason);
        let set = result?;
        tracing::debug!(keys = set.keys.len(), "JWKS fetched");
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
        Ok(Refetch::Fetched)
    }

    fn done(&self, reason: Reason) {
        if matches!(reason, Reason::Refresh { .. }) {
            self.refreshing.store(false, Ordering::Release);
        }
    }

    async fn fetch_locked(
        &self,
        idp: &IdpClient,
        state: &mut FetchState,
    ) -> Result<KeySet, IdpError> {
        let url = match (&self.cfg.keys, &state.jwks_uri) {
            (JwksSource::Url(u), _) | (JwksSource::Discovery(_), Some(u)) => u.clone(),
            (JwksSource::Discovery(_), None) => {
                let u = self.discover(idp).await?;
                state.jwks_uri = Some(u.clone());
                u
            }
            (JwksSource::Inline(doc), _) => return Ok(parse_set(doc, &self.cfg.algorithms)),
            (JwksSource::Gateway, _) => {
                return Err(IdpError::Protocol(
                    "the gateway issuer's keys were not bound at start".into(),
                ));
            }
        };
        let doc: Value = self.get_json(idp, &url).await?;
        Ok(parse_set(&doc, &self.cfg.algorithms))
    }

    /// OpenID Connect Discovery 1.0 §4: the document's `issuer` must be the configured one.
    async fn discover(&self, idp: &IdpClient) -> Result<Url, IdpError> {
        let issuer = self.cfg.issuer.as_deref().unwrap_or_default();
        let at: Url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        )
        .parse()
        .map_err(|_| IdpError::Protocol("issuer is not a URL base".into()))?;
        let doc: Discovery =
            serde_json::from_value(self.get_json(idp, &at).await?).map_err(|_| {
                IdpError::Protocol("discovery document lacks issuer or jwks_uri".into())
            })?;
        if doc.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
            return Err(IdpError::Protocol(
                "discovery document names another issuer".into(),
            ));
        }
        doc.jwks_uri
            .parse::<Url>()
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| IdpError::Protocol("jwks_uri is not an http(s) URL".into()))
    }

    async fn get_json(&self, idp: &IdpClient, url: &Url) -> Result<Value, IdpError> {
        idp.call(url.as_str(), self.cfg.http.retries, || async {
            let req = self
                .http
                .get(url.clone())
                .timeout(self.cfg.http.timeout)
                .header(http::header::ACCEPT, "application/json");
            let (status, body) = exchange(req).await?;
            if !status.is_success() {
                return Err((
                    IdpError::Protocol(format!("HTTP {} from {url}", status.as_u16())),
                    None,
                ));
            }
            serde_json::from_slice(&body)
                .map_err(|_| (IdpError::Protocol(format!("{url} is not JSON")), None))
        })
        .await
    }
}

/// The usable keys of a JWKS document (RFC 7517). Keys this gateway cannot or must not use are
/// skipped one by one, so one exotic key does not hide the others: encryption keys, symmetric
/// keys, keys whose type allows none of the accepted algorithms.
pub fn parse_set(doc: &Value, allowed: &[Algorithm]) -> KeySet {
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|v| {
            let jwk: Jwk = serde_json::from_value(v.clone()).ok()?;
            if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
                return None;
            }
            let key = DecodingKey::from_jwk(&jwk).ok()?;
            let family = key.family();
            if family == jsonwebtoken::AlgorithmFamily::Hmac {
                return None;
            }
            let stated = match jwk.common.key_algorithm {
                Some(a) => Some(Algorithm::from_str(&a.to_string()).ok()?),
                None => None,
            };
            let algorithms: Vec<Algorithm> = allowed
                .iter()
                .copied()
                .filter(|a| a.family() == family && stated.is_none_or(|s| s == *a))
                .collect();
            (!algorithms.is_empty()).then_some(VerifyingKey {
                kid: jwk.common.key_id,
                key,
                algorithms,
            })
        })
        .collect();
    KeySet {
        keys,
        fetched_at: Some(Instant::now()),
    }
}

/// How long a caller is told to wait when keys cannot be fetched.
pub const KEYS_RETRY_AFTER: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_caller_is_served_by_a_fetch_that_ended_after_it_looked() {
        let idp = testkit::idp::FakeIdp::start().await;
        let mut cfg = super::super::tests::config(JwksSource::Url(idp.jwks_url().parse().unwrap()));
        cfg.jwks_min_refresh_interval = Duration::ZERO;
        let keys = Keys::new(&cfg).unwrap();
        let client = IdpClient::default();
        // Callers look at the empty set; the first one's fetch ends before the others ask
        // (they were deciding to): that fetch serves them all.
        let seen = keys.current().fetched_at;
        keys.fetch(&client, Reason::Refresh { seen }).await.unwrap();
        assert_eq!(idp.jwks_fetches(), 1);
        for reason in [
            Reason::Refresh { seen },
            Reason::UnknownKid { seen },
            Reason::Stale { seen },
        ] {
            let done = keys.fetch(&client, reason).await.unwrap();
            assert!(matches!(done, Refetch::Fetched), "{reason:?}");
        }
        assert_eq!(idp.jwks_fetches(), 1);
        // A caller that saw the set in place fetches a new one.
        let seen = keys.current().fetched_at;
        keys.fetch(&client, Reason::UnknownKid { seen })
            .await
            .unwrap();
        assert_eq!(idp.jwks_fetches(), 2);
        assert_ne!(keys.current().fetched_at, seen);
    }
}
