//! What a caller's credentials may cost before they are known to be good.
//!
//! Credentials the gateway has never seen cost an IdP call (client credentials, introspection)
//! and a shared-store round trip. Two bounds keep an anonymous caller from turning that into a
//! flood, or from locking a client out at an IdP that locks accounts after failed attempts:
//!
//! - [`CallerLimits`]: the length and character set of client ids, secrets and bearer tokens,
//!   checked before anything else looks at them (no IdP call, no store write, no log line).
//! - [`MissBudget`]: token buckets of cache misses per caller address and per client id asked
//!   for by that address. A miss over budget is answered 429 with `Retry-After`; hits never
//!   spend anything. A client id's budget is kept per caller, so that a caller guessing secrets
//!   for someone else's id spends its own budget, never the owner's. IPv6 callers are counted
//!   by prefix (`/64` by default), since one host holds a whole prefix.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Longest client id accepted by default. RFC 6749 sets no limit; IdPs issue ids of tens of
/// characters (UUIDs, `urn:` names), Entra ID's are 36, Okta's 20.
pub const DEFAULT_CLIENT_ID_MAX_LENGTH: usize = 256;
/// Longest client secret accepted by default (generated secrets are 32 to 128 characters).
pub const DEFAULT_CLIENT_SECRET_MAX_LENGTH: usize = 512;
/// Longest bearer token accepted by default: JWTs with many claims reach a few KiB; 8 KiB is
/// also what most servers accept for a whole header line.
pub const DEFAULT_TOKEN_MAX_LENGTH: usize = 8 * 1024;

/// Bounds on credentials a caller presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallerLimits {
    /// Longest client id.
    pub client_id_max_length: usize,
    /// Longest client secret.
    pub client_secret_max_length: usize,
    /// Longest bearer token.
    pub token_max_length: usize,
}

impl Default for CallerLimits {
    fn default() -> Self {
        Self {
            client_id_max_length: DEFAULT_CLIENT_ID_MAX_LENGTH,
            client_secret_max_length: DEFAULT_CLIENT_SECRET_MAX_LENGTH,
            token_max_length: DEFAULT_TOKEN_MAX_LENGTH,
        }
    }
}

impl CallerLimits {
    /// A client id or secret within its length bound (in bytes), without control characters.
    /// RFC 6749 Appendix A asks for printable ASCII, but it also has clients form-encode ids and
    /// secrets (§2.3.1) precisely because real ones are not (Keycloak and others allow any
    /// Unicode): text is accepted, control characters are not. Ids must be non-empty.
    pub fn client_credentials_ok(&self, id: &str, secret: &str) -> bool {
        let text = |s: &str| !s.chars().any(char::is_control);
        !id.is_empty()
            && id.len() <= self.client_id_max_length
            && secret.len() <= self.client_secret_max_length
            && text(id)
            && text(secret)
    }

    /// A bearer token: non-empty printable ASCII without spaces, within its length bound
    /// (RFC 6750's `b64token` is stricter; opaque tokens of real IdPs are not always that tidy).
    pub fn token_ok(&self, token: &str) -> bool {
        !token.is_empty()
            && token.len() <= self.token_max_length
            && token.bytes().all(|b| b.is_ascii_graphic())
    }
}

/// A token bucket: `burst` misses at once, refilled at `average` per `period` (the option
/// names of Traefik's `rateLimit` middleware).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketConfig {
    /// Misses allowed per `period` on average.
    pub average: u32,
    /// The period `average` is counted over.
    pub period: Duration,
    /// Misses allowed at once.
    pub burst: u32,
}

impl BucketConfig {
    fn quota(&self) -> Option<Quota> {
        let average = NonZeroU32::new(self.average)?;
        let burst = NonZeroU32::new(self.burst)?;
        Quota::with_period(self.period / average.get()).map(|q| q.allow_burst(burst))
    }
}

/// IPv6 callers are counted by this prefix length by default: a /64 is what one host or one
/// customer is given, and it holds more addresses than any budget could count one by one.
pub const DEFAULT_IPV6_SUBNET: u8 = 64;

/// `idpMissBudget`: the buckets; `None` turns one off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MissBudgetConfig {
    /// Per client id and caller (application-level client credentials).
    pub per_client_id: Option<BucketConfig>,
    /// Per caller address (after `forwardedHeaders.trustedIPs`).
    pub per_address: Option<BucketConfig>,
    /// IPv6 callers share a bucket per prefix of this length (`ipv6Subnet`).
    pub ipv6_subnet: u8,
}

/// The caller `address` stands for in the buckets: an IPv4 address as it is (an IPv4-mapped
/// IPv6 one as its IPv4 address), an IPv6 one as its first `ipv6_subnet` bits.
pub fn caller_prefix(address: IpAddr, ipv6_subnet: u8) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u32::from(ipv6_subnet.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        },
    }
}

impl Default for MissBudgetConfig {
    /// 10 misses at once per client id, then one every 6 s: a client whose callers all present
    /// a wrong secret reaches the IdP about 10 times a minute, well under common lockout
    /// thresholds. 100 at once per address, then 20 a second: a fleet rolling out many new
    /// credentials from one address starts in seconds, a flood from one address is contained.
    fn default() -> Self {
        Self {
            per_client_id: Some(BucketConfig {
                average: 10,
                period: Duration::from_secs(60),
                burst: 10,
            }),
            per_address: Some(BucketConfig {
                average: 20,
                period: Duration::from_secs(1),
                burst: 100,
            }),
            ipv6_subnet: DEFAULT_IPV6_SUBNET,
        }
    }
}

/// The bounds and budget every middleware of a node applies to its callers.
#[derive(Debug, Clone)]
pub struct Guards {
    /// Bounds on presented credentials.
    pub limits: CallerLimits,
    /// The node's miss budget.
    pub budget: Arc<MissBudget>,
}

impl Guards {
    /// Default bounds and no miss budget (tests, benches).
    pub fn unlimited() -> Self {
        Self {
            limits: CallerLimits::default(),
            budget: MissBudget::unlimited(),
        }
    }
}

/// Keys are hashed with a per-process random key: the budget keeps no client id in memory and
/// a caller cannot aim collisions at another's bucket.
type Buckets = DefaultKeyedRateLimiter<u64>;

/// Buckets kept before idle ones are swept (a full bucket is the same as none).
const SWEEP_ABOVE: usize = 10_000;

/// The node's miss budget, shared by every middleware.
pub struct MissBudget {
    config: MissBudgetConfig,
    per_client_id: Option<Buckets>,
    per_address: Option<Buckets>,
    hasher: RandomState,
    started: std::time::Instant,
    /// Seconds after `started` of the last sweep.
    swept_at: AtomicU64,
}

/// A miss was refused; try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget {
    /// When the bucket has a token again.
    pub retry_after: Duration,
    /// Which bucket: `client_id` or `address` (a metric label).
    pub bucket: &'static str,
}

impl From<OverBudget> for super::AuthError {
    /// 429 with `Retry-After`.
    fn from(o: OverBudget) -> Self {
        Self::OverBudget {
            retry_after: o.retry_after,
        }
    }
}

impl std::fmt::Debug for MissBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MissBudget").finish_non_exhaustive()
    }
}

impl MissBudget {
    /// Buckets as configured.
    pub fn new(cfg: &MissBudgetConfig) -> Arc<Self> {
        let build = |b: &Option<BucketConfig>| {
            b.as_ref()
                .and_then(BucketConfig::quota)
                .map(RateLimiter::keyed)
        };
        Arc::new(Self {
            config: *cfg,
            per_client_id: build(&cfg.per_client_id),
            per_address: build(&cfg.per_address),
            hasher: RandomState::new(),
            started: std::time::Instant::now(),
            swept_at: AtomicU64::new(0),
        })
    }

    /// The buckets' configuration.
    pub fn config(&self) -> &MissBudgetConfig {
        &self.config
    }

    /// No budget at all (tests, benches).
    pub fn unlimited() -> Arc<Self> {
        Self::new(&MissBudgetConfig {
            per_client_id: None,
            per_address: None,
            ipv6_subnet: DEFAULT_IPV6_SUBNET,
        })
    }

    /// Spends one miss for `address` and, when known, `client_id` asked for by that address.
    /// The address is charged first, so a caller cycling through client ids is held by its own
    /// address budget; the id's bucket is this caller's own, so guessing another's secret never
    /// spends the owner's budget.
    pub fn spend(&self, address: IpAddr, client_id: Option<&str>) -> Result<(), OverBudget> {
        let caller = caller_prefix(address, self.config.ipv6_subnet);
        if let Some(b) = &self.per_address {
            self.take(b, self.hasher.hash_one(caller), "address")?;
        }
        if let (Some(b), Some(id)) = (&self.per_client_id, client_id) {
            self.take(b, self.hasher.hash_one((id, caller)), "client_id")?;
        }
        Ok(())
    }

    fn take(&self, buckets: &Buckets, key: u64, bucket: &'static str) -> Result<(), OverBudget> {
        // Sweep at most once a second, however many callers are missing at once: a sweep
        // walks every bucket.
        if buckets.len() > SWEEP_ABOVE {
            let now = self.started.elapsed().as_secs();
            let last = self.swept_at.load(Ordering::Relaxed);
            if now > last
                && self
                    .swept_at
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                buckets.retain_recent();
            }
        }
        buckets.check_key(&key).map_err(|not_until| {
            crate::telemetry::metrics::metrics().idp_miss_refused(bucket);
            OverBudget {
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
                bucket,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_outside_the_bounds_are_refused() {
        let l = CallerLimits::default();
        assert!(l.client_credentials_ok("svc-a", "s3cr:et with spaces"));
        assert!(!l.client_credentials_ok("", "s"));
        assert!(!l.client_credentials_ok(&"a".repeat(257), "s"));
        assert!(!l.client_credentials_ok("a", &"s".repeat(513)));
        assert!(!l.client_credentials_ok("a\nb", "s"));
        assert!(!l.client_credentials_ok("a", "s\u{0}"));
        assert!(l.client_credentials_ok("caf\u{e9}", "\u{e9}t\u{e9}"));
        assert!(l.token_ok("eyJ.abc-_~+/="));
        assert!(!l.token_ok(&"t".repeat(8 * 1024 + 1)));
        assert!(!l.token_ok("a b"));
        assert!(!l.token_ok(""));
    }

    fn budget(per_client_id: u32, per_address: u32) -> Arc<MissBudget> {
        let bucket = |burst| {
            Some(BucketConfig {
                average: 1,
                period: Duration::from_secs(3600),
                burst,
            })
        };
        MissBudget::new(&MissBudgetConfig {
            per_client_id: bucket(per_client_id),
            per_address: bucket(per_address),
            ipv6_subnet: DEFAULT_IPV6_SUBNET,
        })
    }

    #[test]
    fn misses_over_budget_are_refused_per_address_and_per_client_id_of_that_address() {
        let budget = budget(2, 3);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(budget.spend(a, Some("victim")).is_ok());
        assert!(budget.spend(a, Some("victim")).is_ok());
        let refused = budget.spend(a, Some("victim")).unwrap_err();
        assert_eq!(refused.bucket, "client_id");
        assert!(refused.retry_after > Duration::from_secs(3000));
        assert!(
            budget.spend(b, Some("victim")).is_ok(),
            "another caller asking for the same id has its own budget"
        );
        assert!(
            budget.spend(b, Some("other")).is_ok(),
            "other ids unaffected"
        );
        // Address a has spent 3 of 3 (the refused miss was charged to it too).
        assert_eq!(
            budget.spend(a, Some("fourth")).unwrap_err().bucket,
            "address"
        );
        assert!(MissBudget::unlimited().spend(a, Some("victim")).is_ok());
    }

    #[test]
    fn an_ipv6_prefix_is_one_caller_and_a_mapped_ipv4_address_is_its_ipv4_one() {
        let budget = budget(100, 2);
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let next_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(budget.spend(one, None).is_ok());
        assert!(budget.spend(same_64, None).is_ok());
        assert_eq!(budget.spend(one, None).unwrap_err().bucket, "address");
        assert!(budget.spend(next_64, None).is_ok(), "another /64");

        let v4: IpAddr = "192.0.2.9".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().unwrap();
        assert_eq!(caller_prefix(mapped, 64), v4);
        assert!(budget.spend(v4, None).is_ok());
        assert!(budget.spend(mapped, None).is_ok());
        assert!(budget.spend(v4, None).is_err(), "the same IPv4 caller");
        assert_eq!(caller_prefix(one, 128), one);
        assert_eq!(caller_prefix(one, 0), IpAddr::from([0u16; 8]));
        assert_eq!(
            caller_prefix(one, 48),
            "2001:db8:1::".parse::<IpAddr>().unwrap()
        );
    }
}
