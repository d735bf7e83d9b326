//! What a caller may ask a cache node to store, checked before a command reaches the Raft log.
//!
//! A command in the log is applied on every replica, forever after (snapshots carry its
//! effects): an oversized entry would slow every follower's replication, a lease with a
//! ten-year TTL would stop refreshes for ten years, a time near `u64::MAX` would overflow on
//! every replica. So each is refused with `INVALID_ARGUMENT` at the door, while it is still one
//! caller's problem.

use tonic::Status;

use crate::token::{SealedEntry, UnixMillis};

/// Largest entry (metadata and ciphertext): a sealed token with its refresh spec is 1–4 KiB,
/// an introspection answer a few KiB.
pub const MAX_ENTRY_BYTES: usize = 64 * 1024;
/// Latest expiry accepted, from now: access tokens live minutes to a day.
pub const MAX_ENTRY_LIFETIME_MS: u64 = 7 * 24 * 3600 * 1000;
/// Longest lease (refresh or fill) a caller may take: the gateways' `refresh.leaseTtl` is
/// seconds; an hour is far beyond any sane setting and short enough to recover from.
pub const MAX_LEASE_TTL_MS: u64 = 3600 * 1000;
/// Longest lease-holder id (gateways send 16 random bytes, hex).
pub const MAX_HOLDER_BYTES: usize = 256;
/// Latest one-time claim accepted, from now (RFC 7523 assertions live minutes).
pub const MAX_CLAIM_LIFETIME_MS: u64 = 7 * 24 * 3600 * 1000;
/// Uses reported in one `Touch`.
pub const MAX_TOUCHES: usize = 10_000;
/// Concurrent `Watch` streams from one address (a gateway holds one).
pub const MAX_WATCHES_PER_ADDRESS: usize = 16;

/// The bytes of an entry's variable parts (metadata strings and ciphertext).
pub fn entry_bytes(e: &SealedEntry) -> usize {
    let m = &e.meta;
    m.client_id.len()
        + m.token_url.len()
        + m.scopes.iter().map(String::len).sum::<usize>()
        + m.audience.as_ref().map_or(0, String::len)
        + m.granted_scope.as_ref().map_or(0, String::len)
        + e.key_id.len()
        + e.ciphertext.len()
}

/// A sealed entry within size and time bounds.
pub fn entry(e: &SealedEntry, now: UnixMillis) -> Result<(), Status> {
    let m = &e.meta;
    let size = entry_bytes(e);
    if size > MAX_ENTRY_BYTES {
        return Err(Status::invalid_argument(format!(
            "the entry is {size} bytes; at most {MAX_ENTRY_BYTES}"
        )));
    }
    if m.expires_at > now.saturating_add(MAX_ENTRY_LIFETIME_MS) {
        return Err(Status::invalid_argument(
            "expires_at is more than 7 days away",
        ));
    }
    if m.issued_at > m.expires_at || m.refresh_at > m.expires_at {
        return Err(Status::invalid_argument(
            "issued_at and refresh_at must not be after expires_at",
        ));
    }
    Ok(())
}

/// A lease request's TTL and holder.
pub fn lease(ttl_ms: u64, holder: &str) -> Result<(), Status> {
    if ttl_ms == 0 || ttl_ms > MAX_LEASE_TTL_MS {
        return Err(Status::invalid_argument(format!(
            "ttl_ms must be between 1 and {MAX_LEASE_TTL_MS}"
        )));
    }
    if holder.is_empty() || holder.len() > MAX_HOLDER_BYTES {
        return Err(Status::invalid_argument(format!(
            "holder must be 1 to {MAX_HOLDER_BYTES} bytes"
        )));
    }
    Ok(())
}

/// A one-time claim's deadline.
pub fn claim(until: UnixMillis, now: UnixMillis) -> Result<(), Status> {
    if until > now.saturating_add(MAX_CLAIM_LIFETIME_MS) {
        return Err(Status::invalid_argument("until is more than 7 days away"));
    }
    Ok(())
}

/// Longest rate-limit interval accepted: a day.
const MAX_RATE_INTERVAL_US: u64 = 86_400_000_000;
/// Largest rate-limit burst accepted.
const MAX_RATE_BURST: u32 = 1_000_000;

/// A rate limit: an interval of a microsecond to a day, a burst of 1 to a million.
pub fn rate(interval_us: u64, burst: u32) -> Result<(), Status> {
    if interval_us == 0 || interval_us > MAX_RATE_INTERVAL_US {
        return Err(Status::invalid_argument(format!(
            "interval_us must be between 1 and {MAX_RATE_INTERVAL_US}"
        )));
    }
    if burst == 0 || burst > MAX_RATE_BURST {
        return Err(Status::invalid_argument(format!(
            "burst must be between 1 and {MAX_RATE_BURST}"
        )));
    }
    Ok(())
}

/// A batch of uses: bounded in number, none in the future.
pub fn touches(count: usize, latest: Option<UnixMillis>, now: UnixMillis) -> Result<(), Status> {
    if count > MAX_TOUCHES {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_TOUCHES} uses per call"
        )));
    }
    // A minute of clock skew between a gateway and the leader is tolerated.
    if latest.is_some_and(|at| at > now.saturating_add(60_000)) {
        return Err(Status::invalid_argument("a use is in the future"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;

    #[test]
    fn entries_leases_claims_and_rates_out_of_bounds_are_refused() {
        let now = 1_000_000_000;
        let mut e = conformance::entry(1, 60_000, 120_000);
        e.meta.issued_at = now;
        e.meta.expires_at = now + 60_000;
        e.meta.refresh_at = now + 30_000;
        assert!(entry(&e, now).is_ok());
        let mut big = e.clone();
        big.ciphertext = vec![0; MAX_ENTRY_BYTES + 1];
        assert_eq!(
            entry(&big, now).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let mut forever = e.clone();
        forever.meta.expires_at = u64::MAX;
        forever.meta.refresh_at = u64::MAX;
        assert!(entry(&forever, now).is_err());
        let mut backwards = e.clone();
        backwards.meta.refresh_at = backwards.meta.expires_at + 1;
        assert!(entry(&backwards, now).is_err());

        assert!(lease(10_000, "node-a").is_ok());
        assert!(lease(u64::MAX, "node-a").is_err(), "a ten-year lease");
        assert!(lease(0, "node-a").is_err());
        assert!(lease(10_000, "").is_err());
        assert!(lease(10_000, &"h".repeat(257)).is_err());
        assert!(claim(now + 60_000, now).is_ok());
        assert!(claim(u64::MAX, now).is_err());
        assert!(touches(2, Some(now), now).is_ok());
        assert!(touches(MAX_TOUCHES + 1, None, now).is_err());
        assert!(touches(1, Some(u64::MAX), now).is_err());
        assert!(rate(1_000, 10).is_ok());
        assert!(rate(0, 10).is_err(), "no interval: no limit to keep");
        assert!(rate(u64::MAX, 10).is_err(), "an interval longer than a day");
        assert!(rate(1_000, 0).is_err());
        assert!(rate(1_000, u32::MAX).is_err(), "a burst of billions");
    }
}
