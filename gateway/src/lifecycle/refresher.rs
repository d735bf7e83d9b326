//! The refresh leader: every node runs this loop; only the node holding the store's refresh
//! lease acts.
//!
//! Each tick it takes or renews the lease, lists the recently used entries that are due, and
//! starts a renewal for each one not already being renewed. Renewals write with the lease's
//! fence, so the store refuses them if another node has been granted the lease since.
//!
//! Losing the lease stops refreshing at once: no new renewal starts. A renewal already waiting
//! on the IdP is not abandoned (its IdP request is spent either way); it finishes, and its write
//! is refused by the fence if a newer leader exists. That is exactly what protects the fleet from
//! a leader that was paused or partitioned mid-refresh and wakes up late.
//!
//! # Keeping up, and staying fair
//!
//! - **Concurrency** is bounded twice: [`CONCURRENCY`] renewals at once in all, and at most
//!   [`PER_ENDPOINT`] at one token endpoint (a quarter), so an IdP that is slow or down holds some permits,
//!   never all of them, and every other IdP's credentials are renewed on time.
//! - **Lead time** follows the IdPs: renewals start [`LEAD_LATENCIES`] times the observed IdP
//!   latency before an entry's refresh time (at most [`MAX_LEAD`]), so a slow IdP's answers
//!   still arrive while the old token is servable.
//! - **Backoff**: a renewal that fails puts the entry off in the store (`postpone`), for
//!   [`FIRST_BACKOFF`] doubling per consecutive failure up to [`MAX_BACKOFF`]. A credential the
//!   IdP refuses is tried again later, not in every round, and never holds the work list.
//! - An entry that cannot be opened is evicted (see `TokenCache::due_entry`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::Instrument;

use rand::Rng;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::RefreshConfig;
use super::cache::TokenCache;
use crate::outbound::IdpError;
use crate::store::{FencingToken, TokenStore};
use crate::token::TokenKey;

/// Entries looked at per tick at most; the rest are due again at the next tick.
const BATCH: usize = 1024;
/// Concurrent renewals at most, over all token endpoints.
pub const CONCURRENCY: usize = 128;
/// Concurrent renewals at one token endpoint at most: with an IdP answering in 100 ms, 320
/// renewals a second, so 100,000 credentials with 5-minute tokens are renewed in time.
pub const PER_ENDPOINT: usize = 32;
/// Renewals start this many observed IdP latencies ahead of an entry's refresh time.
pub const LEAD_LATENCIES: u32 = 3;
/// The most a renewal is brought forward.
pub const MAX_LEAD: Duration = Duration::from_secs(10);
/// The first wait after a failed renewal; it doubles with each consecutive failure.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between renewal attempts of one entry.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Consecutive failures remembered per node at most (the backoff of the others restarts).
const FAILURES_KEPT: usize = 100_000;

/// Renewals in progress on this node, and what the refresher has learnt.
struct Renewals {
    keys: Mutex<HashSet<TokenKey>>,
    permits: Semaphore,
    endpoints: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Consecutive failed renewals per entry.
    failures: Mutex<HashMap<TokenKey, u32>>,
    /// Moving average of the IdPs' answer time, in microseconds.
    latency_us: AtomicU64,
    tasks: TaskTracker,
}

impl Renewals {
    fn new() -> Self {
        Self {
            keys: Mutex::default(),
            permits: Semaphore::new(CONCURRENCY),
            endpoints: Mutex::default(),
            failures: Mutex::default(),
            latency_us: AtomicU64::new(0),
            tasks: TaskTracker::new(),
        }
    }

    /// How far ahead of its refresh time an entry's renewal starts.
    fn lead(&self) -> Duration {
        let latency = Duration::from_micros(self.latency_us.load(Ordering::Relaxed));
        (latency * LEAD_LATENCIES).min(MAX_LEAD)
    }

    fn observe_latency(&self, took: Duration) {
        let sample = took.as_micros().min(u128::from(u64::MAX)) as u64;
        // An exponentially weighted average (1/8 per sample), so that one slow answer moves
        // the lead a little and a slow IdP moves it within a few renewals.
        let _ = self
            .latency_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |avg| {
                Some(if avg == 0 {
                    sample
                } else {
                    avg - avg / 8 + sample / 8
                })
            });
    }

    fn endpoint(&self, token_url: &str) -> Arc<Semaphore> {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(
            endpoints
                .entry(token_url.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(PER_ENDPOINT))),
        )
    }

    /// Records a failure of `key`'s renewal; how long to wait before the next attempt.
    fn failed(&self, key: &TokenKey) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() >= FAILURES_KEPT && !failures.contains_key(key) {
            failures.clear();
        }
        let n = failures.entry(*key).or_default();
        *n = n.saturating_add(1);
        backoff(*n)
    }

    fn succeeded(&self, key: &TokenKey) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// The wait after `failures` consecutive failed renewals: [`FIRST_BACKOFF`] doubled per
/// failure after the first, at most [`MAX_BACKOFF`], less up to a fifth at random so that entries
/// failing together spread out.
pub fn backoff(failures: u32) -> Duration {
    let doubled = FIRST_BACKOFF.saturating_mul(1 << failures.saturating_sub(1).min(16));
    let wait = doubled.min(MAX_BACKOFF);
    wait.mul_f64(rand::rng().random_range(0.8..=1.0))
}

/// Runs until `shutdown`, then stops renewals in progress and gives the lease up so another
/// node takes over at once.
pub async fn run(cache: Arc<TokenCache>, cfg: RefreshConfig, shutdown: CancellationToken) {
    let renewals = Arc::new(Renewals::new());
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leading: Option<FencingToken> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let fence = match cache
            .store()
            .acquire_refresh_lease(cache.node(), cfg.lease_ttl)
            .await
        {
            Ok(f) => f,
            Err(error) => {
                tracing::debug!(%error, "cannot reach store for the refresh lease");
                None
            }
        };
        match (leading, fence) {
            (None, Some(f)) => {
                tracing::info!(node = %cache.node(), fence = f.0, "became refresh leader")
            }
            (Some(_), None) => {
                tracing::warn!(node = %cache.node(), "lost refresh lease; refreshing stops")
            }
            _ => {}
        }
        leading = fence;
        let m = crate::telemetry::metrics::metrics();
        m.refresh_leader.set(i64::from(fence.is_some()));
        m.refresh_fence
            .set(fence.map_or(0, |f| i64::try_from(f.0).unwrap_or(i64::MAX)));
        if let Some(fence) = fence {
            start_due(&cache, &cfg, fence, &renewals, &shutdown).await;
        }
    }
    renewals.tasks.close();
    renewals.tasks.wait().await;
    if leading.is_some() {
        let _ = cache.store().release_refresh_lease(cache.node()).await;
    }
}

async fn start_due(
    cache: &Arc<TokenCache>,
    cfg: &RefreshConfig,
    fence: FencingToken,
    renewals: &Arc<Renewals>,
    shutdown: &CancellationToken,
) {
    let now = cache.clock().now();
    let used_since = now.saturating_sub(cfg.idle_timeout.as_millis() as u64);
    let horizon = now + renewals.lead().as_millis() as u64;
    let due = match cache
        .store()
        .due_for_refresh(horizon, used_since, BATCH)
        .await
    {
        Ok(due) => due,
        Err(error) => {
            tracing::debug!(%error, "cannot list entries due for refresh");
            return;
        }
    };
    for key in due {
        if !renewals
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key)
        {
            continue; // already being renewed
        }
        let (cache, renewals_for_task, shutdown) =
            (Arc::clone(cache), Arc::clone(renewals), shutdown.clone());
        // A background refresh is no request's work: it starts its own trace, if sampled.
        let span = match crate::telemetry::otel::sample_root() {
            true => tracing::info_span!(
                parent: None,
                "token.refresh",
                tokengate.fence = fence.0,
                otel.status_code = tracing::field::Empty,
            ),
            false => tracing::Span::none(),
        };
        renewals.tasks.spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = renew(&cache, &renewals_for_task, &key, fence).instrument(span) => {}
            }
            renewals_for_task
                .keys
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        });
    }
}

async fn renew(cache: &TokenCache, renewals: &Renewals, key: &TokenKey, fence: FencingToken) {
    let Some(current) = cache
        .due_entry(key, cache.clock().now(), renewals.lead())
        .await
    else {
        return;
    };
    let endpoint = renewals.endpoint(&current.meta.token_url);
    let (Ok(_at_endpoint), Ok(_permit)) =
        (endpoint.acquire().await, renewals.permits.acquire().await)
    else {
        return;
    };
    let started = tokio::time::Instant::now();
    let result = cache.renew(key, &current, fence).await;
    crate::telemetry::metrics::metrics().refresh(result.is_ok());
    if result.is_err() {
        tracing::Span::current().record("otel.status_code", "ERROR");
    }
    match result {
        Ok(()) => {
            renewals.observe_latency(started.elapsed());
            renewals.succeeded(key);
            tracing::debug!(key = %key, "token refreshed");
            return;
        }
        // Still valid until it expires; tried again after the backoff, behind the breaker.
        Err(IdpError::Unavailable { reason, .. }) => {
            tracing::debug!(key = %key, reason, "refresh postponed: identity provider unavailable");
        }
        Err(error) => {
            tracing::warn!(key = %key, %error, "refresh failed; retrying after a backoff")
        }
    }
    let wait = renewals.failed(key);
    let until = cache.clock().now() + wait.as_millis() as u64;
    if let Err(error) = cache.store().postpone(key, until, Some(fence)).await {
        tracing::debug!(%error, "cannot record the renewal's backoff");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_first_wait_up_to_the_cap_with_jitter() {
        for _ in 0..50 {
            let first = backoff(1);
            assert!(first <= FIRST_BACKOFF && first >= FIRST_BACKOFF.mul_f64(0.8));
            let third = backoff(3);
            assert!(third <= FIRST_BACKOFF * 4 && third >= (FIRST_BACKOFF * 4).mul_f64(0.8));
            assert!(backoff(60) <= MAX_BACKOFF && backoff(60) >= MAX_BACKOFF.mul_f64(0.8));
        }
    }

    #[test]
    fn the_lead_follows_the_observed_latency_up_to_its_cap() {
        let r = Renewals::new();
        assert_eq!(r.lead(), Duration::ZERO, "nothing observed: no lead");
        r.observe_latency(Duration::from_millis(100));
        assert_eq!(r.lead(), Duration::from_millis(300));
        for _ in 0..40 {
            r.observe_latency(Duration::from_secs(1));
        }
        let lead = r.lead();
        assert!(
            lead > Duration::from_millis(2900) && lead <= Duration::from_secs(3),
            "{lead:?}"
        );
        for _ in 0..40 {
            r.observe_latency(Duration::from_secs(60));
        }
        assert_eq!(r.lead(), MAX_LEAD);
    }
}
