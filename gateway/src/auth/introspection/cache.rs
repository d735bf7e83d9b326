//! Introspection results, cached per token: in the node's L1 and, sealed, in the fleet's
//! [`TokenStore`], so one node's answer serves every node.
//!
//! An active result is reused for at most `min(exp − now, maxCacheTtl)`: never past the token's
//! own expiry, and never longer than the operator accepts a revoked token to keep working. An
//! inactive result is remembered for `inactiveCacheTtl`, in this node's L1 only (random tokens
//! must not become writes to the shared store), so a client retrying with a dead token is not a
//! flood at the IdP. One introspection per token per node is in flight at a time.
//!
//! In the store a result is an entry like a token's, with clear metadata (the introspected
//! token's `client_id` and `scope`, the cache deadline) and a sealed payload (the full answer).
//! Its refresh time equals its expiry, which marks it as not renewable: the refresher leaves it
//! alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::client::{Answer, IntrospectionClient};
use crate::lifecycle::TokenCache;
use crate::lifecycle::flight::SingleFlight;
use crate::outbound::IdpError;
use crate::store::TokenStore;
use crate::token::seal::{seal_payload, unseal_payload};
use crate::token::{EntryMeta, TokenKey, UnixMillis};

/// Inserts between two sweeps of expired L1 results: the L1 stays bounded by the results of the
/// last few seconds even under a flood of distinct tokens.
const SWEEP_EVERY: u64 = 1024;

/// A cached decision about one token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// The claims of an active token; `None`: inactive, expired or not yet valid.
    pub claims: Option<Map<String, Value>>,
    /// Reusable until then (ms since the epoch).
    pub until: UnixMillis,
}

/// Cache policy of one middleware.
#[derive(Debug, Clone, Copy)]
pub struct CachePolicy {
    /// Upper bound for active results, ms.
    pub max_ttl: u64,
    /// Lifetime of inactive results, ms.
    pub inactive_ttl: u64,
}

impl Verdict {
    /// The decision for `answer` at `now`. An "active" token whose `exp` has passed or whose
    /// `nbf` has not come is refused all the same: the endpoint's word does not outrank the
    /// token's own times.
    pub fn decide(answer: Answer, now: UnixMillis, policy: CachePolicy) -> Self {
        let inactive = Self {
            claims: None,
            until: now + policy.inactive_ttl,
        };
        let Answer::Active(claims) = answer else {
            return inactive;
        };
        // NumericDate (RFC 7519 §2) may carry a fraction.
        let secs = |name: &str| {
            claims
                .get(name)
                .and_then(Value::as_f64)
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| (s * 1000.0) as u64)
        };
        let exp = secs("exp");
        if exp.is_some_and(|e| e <= now) || secs("nbf").is_some_and(|n| n > now) {
            return inactive;
        }
        let until = exp.map_or(now + policy.max_ttl, |e| e.min(now + policy.max_ttl));
        Self {
            claims: Some(claims),
            until,
        }
    }
}

/// The results cache of one introspection middleware.
pub struct ResultCache {
    tokens: Arc<TokenCache>,
    client: IntrospectionClient,
    policy: CachePolicy,
    endpoint: String,
    l1: papaya::HashMap<TokenKey, Arc<Verdict>>,
    flights: Arc<SingleFlight<Result<Arc<Verdict>, IdpError>>>,
    inserts: AtomicU64,
}

impl ResultCache {
    /// A cache sharing `tokens`' store, key ring and tasks.
    pub fn new(
        tokens: Arc<TokenCache>,
        client: IntrospectionClient,
        endpoint: String,
        policy: CachePolicy,
    ) -> Arc<Self> {
        Arc::new(Self {
            tokens,
            client,
            policy,
            endpoint,
            l1: papaya::HashMap::new(),
            flights: SingleFlight::new(),
            inserts: AtomicU64::new(0),
        })
    }

    /// The verdict on the token whose key is `key`, if this node holds a live one.
    pub fn cached(&self, key: &TokenKey) -> Option<Arc<Verdict>> {
        let now = self.tokens.clock().now();
        self.l1
            .pin()
            .get(key)
            .filter(|v| v.until > now)
            .map(Arc::clone)
    }

    /// Whether this node is already asking about the token whose key is `key`.
    pub fn in_flight(&self, key: &TokenKey) -> bool {
        self.flights.in_flight(key)
    }

    /// The verdict on `token` (whose key is `key`): from L1, the store, or the endpoint.
    pub async fn verdict(
        self: &Arc<Self>,
        key: TokenKey,
        token: &str,
    ) -> Result<Arc<Verdict>, IdpError> {
        if let Some(v) = self.cached(&key) {
            return Ok(v);
        }
        let this = Arc::clone(self);
        let token = token.to_owned();
        self.flights
            .join(
                key,
                self.tokens.tasks(),
                move || async move { this.fill(key, &token).await },
                || Err(IdpError::Protocol("introspection task failed".into())),
            )
            .await
    }

    async fn fill(&self, key: TokenKey, token: &str) -> Result<Arc<Verdict>, IdpError> {
        if let Some(v) = self.read_store(&key).await {
            return Ok(self.install(key, v));
        }
        let answer = self.client.introspect(self.tokens.idp(), token).await?;
        let now = self.tokens.clock().now();
        let verdict = Arc::new(Verdict::decide(answer, now, self.policy));
        if verdict.until <= now {
            return Ok(verdict); // caching disabled for this kind of result
        }
        if verdict.claims.is_none() {
            // Inactive answers stay on this node: random tokens must not become store writes
            // (and a replicated log) for the whole fleet.
            return Ok(self.install(key, verdict));
        }
        let store = self.tokens.store();
        match store.put(&key, self.seal(&key, &verdict, now), None).await {
            Ok(_) => self.tokens.store_ok(()),
            Err(e) => self.tokens.store_failed(e, ()),
        }
        Ok(self.install(key, verdict))
    }

    async fn read_store(&self, key: &TokenKey) -> Option<Arc<Verdict>> {
        let sealed = match self.tokens.store().get(key).await {
            Ok(s) => self.tokens.store_ok(s)?,
            Err(e) => return self.tokens.store_failed(e, None),
        };
        let opened = unseal_payload(self.tokens.ring(), key, &sealed).ok()?;
        let verdict: Verdict = serde_json::from_slice(&opened).ok()?;
        (verdict.until > self.tokens.clock().now() && verdict.until <= sealed.meta.expires_at)
            .then(|| Arc::new(verdict))
    }

    fn seal(&self, key: &TokenKey, v: &Verdict, now: UnixMillis) -> crate::token::SealedEntry {
        let text = |name: &str| {
            v.claims
                .as_ref()
                .and_then(|c| c.get(name)?.as_str().map(str::to_owned))
        };
        let meta = EntryMeta {
            client_id: text("client_id").unwrap_or_default(),
            token_url: self.endpoint.clone(),
            scopes: Vec::new(),
            audience: None,
            granted_scope: text("scope"),
            issued_at: now,
            expires_at: v.until,
            // Refresh time = expiry: not renewable (see the module documentation).
            refresh_at: v.until,
            version: now,
            last_used: now,
        };
        let payload = serde_json::to_vec(v).expect("verdicts serialize");
        seal_payload(self.tokens.fleet(), key, meta, &payload)
    }

    fn install(&self, key: TokenKey, v: Arc<Verdict>) -> Arc<Verdict> {
        let l1 = self.l1.pin();
        if self.inserts.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            let now = self.tokens.clock().now();
            l1.retain(|_, v| v.until > now);
        }
        l1.insert(key, Arc::clone(&v));
        v
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const POLICY: CachePolicy = CachePolicy {
        max_ttl: 60_000,
        inactive_ttl: 5_000,
    };

    fn active(claims: Value) -> Answer {
        Answer::Active(claims.as_object().unwrap().clone())
    }

    #[test]
    fn active_results_live_until_exp_or_the_cap() {
        let now = 1_000_000;
        let soon = Verdict::decide(active(json!({"active": true, "exp": 1_002})), now, POLICY);
        assert_eq!(soon.until, 1_002_000, "bounded by exp");
        let late = Verdict::decide(active(json!({"active": true, "exp": 9_999})), now, POLICY);
        assert_eq!(late.until, now + 60_000, "bounded by maxCacheTtl");
        let no_exp = Verdict::decide(active(json!({"active": true})), now, POLICY);
        assert_eq!(no_exp.until, now + 60_000);
    }

    #[test]
    fn expired_or_not_yet_valid_tokens_are_inactive_whatever_the_endpoint_says() {
        let now = 1_000_000;
        for claims in [
            json!({"active": true, "exp": 1_000}),
            json!({"active": true, "exp": 999}),
            json!({"active": true, "nbf": 1_001, "exp": 2_000}),
            json!({"active": true, "exp": 999.5}),
        ] {
            let v = Verdict::decide(active(claims.clone()), now, POLICY);
            assert!(v.claims.is_none(), "{claims}");
            assert_eq!(v.until, now + 5_000);
        }
        let inactive = Verdict::decide(Answer::Inactive, now, POLICY);
        assert!(inactive.claims.is_none());
    }
}
