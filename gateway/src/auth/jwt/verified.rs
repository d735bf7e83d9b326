//! Verified tokens, remembered until they expire: a caller that presents the same JWT again
//! costs a hash and a map lookup instead of a signature check (about 250 µs for RS256 here).
//!
//! An entry is keyed by the SHA-256 of the token (process memory only, never shared or
//! logged) and holds the verified claims, the token's `exp`, and which key set verified it. A
//! hit counts only while `exp` plus the leeway the validation allows has not passed, and while
//! that key set is still the one in use: a refetched JWKS (a rotation, a withdrawn key)
//! re-verifies each token once. Only tokens that verified are remembered, so garbage cannot
//! fill the map; it holds at most [`CAPACITY`] entries, sweeping expired ones when full (at
//! most once per [`SWEEP_INTERVAL`]) and remembering nothing new while it stays full.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Most verified tokens remembered per middleware.
pub const CAPACITY: usize = 16_384;
/// Least time between two sweeps of a full map (a sweep visits every entry).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The claims of a verified token.
pub type Claims = Arc<Map<String, Value>>;

struct Entry {
    claims: Claims,
    /// `exp`, in seconds since the epoch (fractional NumericDates kept).
    exp: f64,
    /// When the key set that verified it was fetched: its identity.
    keys: Instant,
}

/// The remembered verifications of one `jwt` middleware.
pub struct Verified {
    map: papaya::HashMap<[u8; 32], Entry>,
    leeway: Duration,
    /// When the last sweep ran, in ms after `created`.
    last_sweep: AtomicU64,
    created: Instant,
}

/// The map key of `token`.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Verified {
    /// Remembers verifications that stay valid within `leeway` after `exp`.
    pub fn new(leeway: Duration) -> Self {
        Self {
            map: papaya::HashMap::new(),
            leeway,
            last_sweep: AtomicU64::new(0),
            created: Instant::now(),
        }
    }

    /// The claims of the token with `digest`, if it verified against the key set fetched at
    /// `keys` and has not expired.
    pub fn get(&self, digest: &[u8; 32], keys: Instant) -> Option<Claims> {
        let map = self.map.pin();
        let entry = map.get(digest)?;
        if entry.keys == keys && now_secs() <= entry.exp + self.leeway.as_secs_f64() {
            return Some(Arc::clone(&entry.claims));
        }
        map.remove(digest);
        None
    }

    /// Remembers that the token with `digest` verified against the key set fetched at `keys`.
    /// A token without a numeric `exp` is not remembered.
    pub fn insert(&self, digest: [u8; 32], claims: &Claims, keys: Instant) {
        let Some(exp) = claims.get("exp").and_then(Value::as_f64) else {
            return;
        };
        let map = self.map.pin();
        if map.len() >= CAPACITY {
            if !self.claim_sweep() {
                return;
            }
            let cutoff = now_secs() - self.leeway.as_secs_f64();
            map.retain(|_, e| e.exp >= cutoff && e.keys == keys);
            if map.len() >= CAPACITY {
                return;
            }
        }
        map.insert(
            digest,
            Entry {
                claims: Arc::clone(claims),
                exp,
                keys,
            },
        );
    }

    /// Whether this caller may sweep now (one sweep per [`SWEEP_INTERVAL`]; the first at once).
    fn claim_sweep(&self) -> bool {
        let now = u64::try_from(self.created.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_sweep.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= SWEEP_INTERVAL.as_millis() as u64;
        due && self
            .last_sweep
            .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Forgets every verification (benchmarks measure the full check with it).
    pub fn clear(&self) {
        self.map.pin().clear();
    }

    /// How many verifications it remembers.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether it remembers none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(exp: f64) -> Claims {
        Arc::new(
            json!({ "sub": "svc", "exp": exp })
                .as_object()
                .unwrap()
                .clone(),
        )
    }

    #[test]
    fn a_verification_counts_until_exp_plus_leeway_and_for_its_key_set_only() {
        let v = Verified::new(Duration::from_secs(5));
        let keys = Instant::now();
        let now = now_secs();
        let (fresh, lapsing, expired) = (digest("a"), digest("b"), digest("c"));
        v.insert(fresh, &claims(now + 60.0), keys);
        v.insert(lapsing, &claims(now - 2.0), keys); // within the leeway
        v.insert(expired, &claims(now - 6.0), keys);
        assert_eq!(v.get(&fresh, keys).unwrap()["sub"], "svc");
        assert!(v.get(&lapsing, keys).is_some());
        assert!(v.get(&expired, keys).is_none());
        assert!(v.get(&digest("unknown"), keys).is_none());

        // Another key set (a refetched JWKS): verified again, and the stale entry is dropped.
        let refetched = keys + Duration::from_millis(1);
        assert!(v.get(&fresh, refetched).is_none());
        assert!(v.get(&fresh, keys).is_none());
    }

    #[test]
    fn tokens_without_a_numeric_exp_are_not_remembered() {
        let v = Verified::new(Duration::ZERO);
        let keys = Instant::now();
        let no_exp = Arc::new(json!({ "sub": "svc" }).as_object().unwrap().clone());
        v.insert(digest("a"), &no_exp, keys);
        let text_exp = Arc::new(json!({ "exp": "soon" }).as_object().unwrap().clone());
        v.insert(digest("b"), &text_exp, keys);
        assert!(v.is_empty());
    }

    #[test]
    fn a_full_map_sweeps_expired_entries_and_then_stops_growing() {
        let v = Verified::new(Duration::ZERO);
        let keys = Instant::now();
        let now = now_secs();
        for i in 0..CAPACITY {
            let exp = if i % 2 == 0 { now - 10.0 } else { now + 60.0 };
            v.map.pin().insert(
                digest(&i.to_string()),
                Entry {
                    claims: claims(exp),
                    exp,
                    keys,
                },
            );
        }
        v.insert(digest("new"), &claims(now + 60.0), keys);
        assert_eq!(v.len(), CAPACITY / 2 + 1, "expired entries swept");
        for i in 0..CAPACITY {
            v.insert(digest(&format!("more-{i}")), &claims(now + 60.0), keys);
        }
        assert_eq!(v.len(), CAPACITY, "bounded");
    }
}
