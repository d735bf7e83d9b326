//! Cached tokens: the metadata every node and operator may see, and the decrypted entry an L1
//! holds.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::HeaderValue;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::TokenRequest;
use crate::secret::Secret;

pub use super::clock::UnixMillis;

/// The system's wall-clock time. The lifecycle reads its [`super::Clock`] instead, so that
/// tests control its time.
pub fn now_millis() -> UnixMillis {
    super::clock::system_now()
}

/// Refresh happens between these fractions of a token's lifetime. The window leaves a quarter of
/// the lifetime for leader failover plus IdP latency; the jitter keeps tokens issued together
/// from being refreshed in one burst.
pub const REFRESH_WINDOW: (f64, f64) = (0.75, 0.80);

/// A token is not handed out when it has less than this left: it must survive its trip to the
/// upstream and the upstream's own clock skew.
pub const MIN_REMAINING: Duration = Duration::from_secs(1);

/// What anyone may know about an entry: no token, no secret. Stored in clear beside the sealed
/// part so that listings (`cachectl ls`) need no key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryMeta {
    /// The OAuth2 client id (not a secret).
    pub client_id: String,
    /// The token endpoint.
    pub token_url: String,
    /// Requested scopes.
    pub scopes: Vec<String>,
    /// Requested audience.
    pub audience: Option<String>,
    /// Scope granted by the IdP, when it said.
    pub granted_scope: Option<String>,
    /// When the IdP issued the token.
    pub issued_at: UnixMillis,
    /// When the token stops being valid.
    pub expires_at: UnixMillis,
    /// When the refresh leader should renew it.
    pub refresh_at: UnixMillis,
    /// Increases with every renewal; stores keep only the newest.
    pub version: u64,
    /// Last time a node served it (approximate; used to stop refreshing idle entries).
    pub last_used: UnixMillis,
}

impl EntryMeta {
    /// Whether the token may still be handed out at `now`.
    pub fn is_servable(&self, now: UnixMillis) -> bool {
        now + (MIN_REMAINING.as_millis() as u64) < self.expires_at
    }
}

/// Picks `refresh_at` for a token issued at `issued_at` and expiring at `expires_at`.
///
/// The window is taken over the token's *servable* life (it stops being handed out
/// [`MIN_REMAINING`] before expiry), so the margin left for the refresh is never eaten by that
/// cut-off, however short the lifetime.
pub fn refresh_time(issued_at: UnixMillis, expires_at: UnixMillis) -> UnixMillis {
    let servable_until = expires_at.saturating_sub(MIN_REMAINING.as_millis() as u64);
    let lifetime = servable_until.saturating_sub(issued_at) as f64;
    let fraction = rand::rng().random_range(REFRESH_WINDOW.0..REFRESH_WINDOW.1);
    issued_at + (lifetime * fraction) as u64
}

/// The secret half of an entry: sealed before it leaves the node.
#[derive(Serialize, Deserialize)]
pub struct EntrySecrets {
    /// The access token.
    pub access_token: Secret,
    /// How to obtain the token again.
    pub spec: TokenRequest,
}

/// [`EntrySecrets`] borrowed from an entry, to seal it (the same serialized form).
#[derive(Serialize)]
pub(super) struct EntrySecretsRef<'a> {
    pub access_token: &'a str,
    pub spec: &'a TokenRequest,
}

/// A decrypted entry, as the L1 holds it. What a cache hit needs is precomputed; the token is
/// kept once, inside `bearer`.
pub struct TokenEntry {
    /// Public metadata.
    pub meta: EntryMeta,
    /// How to obtain the token again.
    pub spec: TokenRequest,
    /// `Bearer <token>`, ready to put on the upstream request (marked sensitive so that
    /// `http`'s Debug output hides it).
    pub bearer: HeaderValue,
    /// The JWT claims, read at the first use that needs them (only middlewares that forward or
    /// check claims do): entries of others never pay for them.
    claims: OnceLock<Option<serde_json::Map<String, serde_json::Value>>>,
    last_used: AtomicU64,
}

/// `Bearer `, before the token in [`TokenEntry::bearer`].
const BEARER_PREFIX: &str = "Bearer ";

impl TokenEntry {
    /// Builds an entry; fails only if the token contains characters no header may carry.
    pub fn new(
        meta: EntryMeta,
        secrets: EntrySecrets,
    ) -> Result<Self, http::header::InvalidHeaderValue> {
        let mut bearer =
            HeaderValue::try_from(format!("{BEARER_PREFIX}{}", secrets.access_token.expose()))?;
        bearer.set_sensitive(true);
        let last_used = AtomicU64::new(meta.last_used);
        Ok(Self {
            meta,
            spec: secrets.spec,
            bearer,
            claims: OnceLock::new(),
            last_used,
        })
    }

    /// The access token.
    pub fn access_token(&self) -> &str {
        // Built from a `&str` in `new`, so valid UTF-8 after the ASCII prefix.
        std::str::from_utf8(&self.bearer.as_bytes()[BEARER_PREFIX.len()..]).unwrap_or_default()
    }

    /// The token's JWT claims (read unverified, see [`jwt_claims`]), when it is a JWT.
    pub fn claims(&self) -> Option<&serde_json::Map<String, serde_json::Value>> {
        self.claims
            .get_or_init(|| jwt_claims(self.access_token()))
            .as_ref()
    }

    /// Records a use; one relaxed store, cheap enough for every cache hit.
    pub fn touch(&self, now: UnixMillis) {
        self.last_used.store(now, Ordering::Relaxed);
    }

    /// Last recorded use.
    pub fn last_used(&self) -> UnixMillis {
        self.last_used.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenEntry")
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

/// Reads a JWT's claims without verifying it. The token came straight from the IdP over the
/// channel we chose, so this is about *reading* what it says (for `forwardHeaders` and `exp`),
/// not about trusting a caller's token; upstreams verify signatures themselves.
pub fn jwt_claims(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    jsonwebtoken::dangerous::insecure_decode::<serde_json::Map<String, serde_json::Value>>(token)
        .ok()
        .map(|d| d.claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_time_falls_in_the_window() {
        for _ in 0..100 {
            // 100 s lifetime, 99 s servable: refresh between 75 % and 80 % of 99 s.
            let r = refresh_time(1_000, 101_000);
            assert!((75_250..=80_200).contains(&r), "{r}");
        }
    }

    #[test]
    fn nearly_expired_tokens_are_not_servable() {
        let meta = EntryMeta {
            client_id: "c".into(),
            token_url: "u".into(),
            scopes: vec![],
            audience: None,
            granted_scope: None,
            issued_at: 0,
            expires_at: 10_000,
            refresh_at: 7_500,
            version: 1,
            last_used: 0,
        };
        assert!(meta.is_servable(8_000));
        assert!(!meta.is_servable(9_500));
    }
}
