//! The refresh leader (DESIGN.md, token lifecycle step 5).
//!
//! Every node runs this loop; only the node holding the store's refresh lease acts. Each tick
//! it takes or renews the lease, lists the recently used entries whose `refresh_at` has passed,
//! and starts a renewal for each one not already being renewed. Renewals write with the lease's
//! fence, so the store refuses them if another node has been granted the lease since.
//!
//! Losing the lease stops refreshing at once: no new renewal starts. A renewal already waiting
//! on the IdP is not abandoned (its IdP request is spent either way); it finishes, and its write
//! is refused by the fence if a newer leader exists. That is exactly what protects the fleet from
//! a leader that was paused or partitioned mid-refresh and wakes up late.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use tracing::Instrument;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::cache::TokenCache;
use super::entry::now_millis;
use super::idp::IdpError;
use super::key::TokenKey;
use crate::config::RefreshConfig;
use crate::store::{FencingToken, TokenStore};

/// Entries looked at per tick at most; the rest are due again at the next tick.
const BATCH: usize = 256;
/// Concurrent IdP requests the refresher makes.
const CONCURRENCY: usize = 8;

/// Renewals in progress on this node.
struct Renewals {
    keys: Mutex<HashSet<TokenKey>>,
    permits: Semaphore,
    tasks: TaskTracker,
}

/// Runs until `shutdown`, then stops renewals in progress and gives the lease up so another
/// node takes over at once.
pub async fn run(cache: Arc<TokenCache>, cfg: RefreshConfig, shutdown: CancellationToken) {
    let renewals = Arc::new(Renewals {
        keys: Mutex::new(HashSet::new()),
        permits: Semaphore::new(CONCURRENCY),
        tasks: TaskTracker::new(),
    });
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
    let now = now_millis();
    let used_since = now.saturating_sub(cfg.idle_timeout.as_millis() as u64);
    let due = match cache.store().due_for_refresh(now, used_since, BATCH).await {
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
    let Ok(_permit) = renewals.permits.acquire().await else {
        return;
    };
    let result = cache.refresh(key, fence).await;
    crate::telemetry::metrics::metrics().refresh(result.is_ok());
    if result.is_err() {
        tracing::Span::current().record("otel.status_code", "ERROR");
    }
    match result {
        Ok(()) => tracing::debug!(key = %key, "token refreshed"),
        // Still valid until it expires; the next tick tries again, behind the breaker.
        Err(IdpError::Unavailable { reason, .. }) => {
            tracing::debug!(key = %key, reason, "refresh postponed: identity provider unavailable");
        }
        Err(error) => tracing::warn!(key = %key, %error, "refresh failed; the entry will expire"),
    }
}
