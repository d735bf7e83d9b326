//! Rate limits kept by a store: the generic cell rate algorithm (GCRA), a token bucket kept as
//! one number per key, the *theoretical arrival time* of the next request.
//!
//! A limit of one request per `interval` with bursts of `burst`: a request at `now` is allowed
//! when the key's arrival time is at most `(burst - 1) × interval` ahead of `now`, and moves it
//! one `interval` on. One number per key makes the shared backends cheap: Redis keeps it under
//! the key with an expiry (a script, so the check and the update are one step), the cache
//! service in its leader's memory.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::token::TokenKey;

/// A limit: one request per `interval_us` microseconds, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Microseconds between requests on average (at least 1).
    pub interval_us: u64,
    /// Requests allowed at once (at least 1).
    pub burst: u32,
}

impl RateLimit {
    /// How far ahead of now the arrival time may be for a request to pass.
    pub fn tolerance_us(&self) -> u64 {
        self.interval_us
            .saturating_mul(u64::from(self.burst.max(1) - 1))
    }
}

/// One step of the algorithm: the key's new arrival time if the request passes, or how long
/// it must wait.
pub fn gcra(tat: Option<u64>, now_us: u64, limit: RateLimit) -> Result<u64, Duration> {
    let tat = tat.unwrap_or(now_us).max(now_us);
    let ahead = tat - now_us;
    match ahead.checked_sub(limit.tolerance_us()) {
        Some(wait) if wait > 0 => Err(Duration::from_micros(wait)),
        _ => Ok(tat.saturating_add(limit.interval_us)),
    }
}

/// Keys kept before the first sweep of lapsed ones.
const SWEEP_AT: usize = 100_000;
/// Keys kept at most. Past it (a flood of distinct keys, all live), the table starts over:
/// limits reset, which costs precision but never refuses a caller wrongly or grows unbounded.
const MAX_KEYS: usize = 1_000_000;

/// Arrival times by key, in memory (the memory store's, and the cache service leader's).
#[derive(Debug, Default)]
pub struct RateTable(Mutex<Table>);

#[derive(Debug, Default)]
struct Table {
    times: HashMap<TokenKey, u64>,
    /// Size at which the next sweep runs: twice what the last one left, so a sweep (which walks
    /// every key) costs amortised constant time per new key; never past `MAX_KEYS`.
    sweep_at: usize,
}

impl RateTable {
    /// Takes one request for `key` at `now_us`; `Err` with the wait when it is over the limit.
    pub fn take(&self, key: &TokenKey, now_us: u64, limit: RateLimit) -> Result<(), Duration> {
        let mut table = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let next = gcra(table.times.get(key).copied(), now_us, limit)?;
        let sweep_at = table.sweep_at.clamp(SWEEP_AT, MAX_KEYS);
        if table.times.len() >= sweep_at && !table.times.contains_key(key) {
            // An arrival time in the past is the same as none.
            table.times.retain(|_, tat| *tat > now_us);
            if table.times.len() >= MAX_KEYS {
                table.times.clear();
            }
            table.sweep_at = table.times.len() * 2;
        }
        table.times.insert(*key, next);
        Ok(())
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).times.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_one_per_interval() {
        let limit = RateLimit {
            interval_us: 100_000,
            burst: 3,
        };
        let table = RateTable::default();
        let key = TokenKey::from_bytes([7; 32]);
        for _ in 0..3 {
            assert_eq!(table.take(&key, 0, limit), Ok(()));
        }
        assert_eq!(
            table.take(&key, 0, limit),
            Err(Duration::from_millis(100)),
            "the fourth waits one interval"
        );
        assert_eq!(
            table.take(&key, 50_000, limit),
            Err(Duration::from_millis(50))
        );
        assert_eq!(table.take(&key, 100_000, limit), Ok(()));
        assert!(table.take(&key, 100_000, limit).is_err());
        // Idle long enough, the whole burst is back.
        for _ in 0..3 {
            assert_eq!(table.take(&key, 10_000_000, limit), Ok(()));
        }
        let other = TokenKey::from_bytes([8; 32]);
        assert_eq!(
            table.take(&other, 10_000_000, limit),
            Ok(()),
            "keys are apart"
        );
    }

    #[test]
    fn lapsed_keys_are_swept_and_the_table_stays_bounded() {
        let limit = RateLimit {
            interval_us: 1_000,
            burst: 1,
        };
        let table = RateTable::default();
        let key = |i: u32| {
            let mut b = [0u8; 32];
            b[..4].copy_from_slice(&i.to_be_bytes());
            TokenKey::from_bytes(b)
        };
        for i in 0..SWEEP_AT as u32 {
            table.take(&key(i), 0, limit).unwrap();
        }
        // Every earlier key lapsed 1 ms after it was taken: the next new key sweeps them.
        table.take(&key(u32::MAX), 5_000, limit).unwrap();
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_flood_of_distinct_live_keys_never_grows_the_table_past_its_bound() {
        // Each key stays live for a day: sweeps find nothing to drop.
        let limit = RateLimit {
            interval_us: 86_400_000_000,
            burst: 1,
        };
        let table = RateTable::default();
        for i in 0..=MAX_KEYS as u32 {
            let mut b = [0u8; 32];
            b[..4].copy_from_slice(&i.to_be_bytes());
            table.take(&TokenKey::from_bytes(b), 0, limit).unwrap();
            assert!(table.len() <= MAX_KEYS, "{} keys after {i}", table.len());
        }
    }
}
