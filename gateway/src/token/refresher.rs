//! The refresh leader (DESIGN.md, token lifecycle step 5).
//!
//! Every node runs this loop; only the node holding the store's refresh lease acts. Each round
//! it takes or renews the lease, then renews every recently used entry whose `refresh_at` has
//! passed, writing with its fence so that a deposed leader's late write is refused by the store.
//! A round starts right after the lease was renewed and is bounded by what is left of it
//! (`leaseTtl - interval`), so a leader stops working before another node could legitimately take
//! over; and even a write that outlives the lease is refused by the store's fencing. Entries a
//! round could not finish are simply due again in the next one.

use std::sync::Arc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::cache::TokenCache;
use super::entry::now_millis;
use super::idp::IdpError;
use crate::config::RefreshConfig;
use crate::store::{FencingToken, TokenStore};

/// Entries renewed per round at most; the rest wait for the next round (a second later).
const BATCH: usize = 256;
/// Concurrent IdP requests the refresher makes.
const CONCURRENCY: usize = 8;

/// Runs until `shutdown`, then gives the lease up so another node takes over at once.
pub async fn run(cache: Arc<TokenCache>, cfg: RefreshConfig, shutdown: CancellationToken) {
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
        let Some(fence) = fence else { continue };
        let round = refresh_due(&cache, &cfg, fence);
        tokio::select! {
            () = shutdown.cancelled() => break,
            r = tokio::time::timeout(cfg.lease_ttl.saturating_sub(cfg.interval), round) => if r.is_err() {
                tracing::warn!("refresh round outlasted the lease; unfinished entries are retried next round");
            },
        }
    }
    if leading.is_some() {
        let _ = cache.store().release_refresh_lease(cache.node()).await;
    }
}

async fn refresh_due(cache: &Arc<TokenCache>, cfg: &RefreshConfig, fence: FencingToken) {
    let now = now_millis();
    let used_since = now.saturating_sub(cfg.idle_timeout.as_millis() as u64);
    let due = match cache.store().due_for_refresh(now, used_since, BATCH).await {
        Ok(due) => due,
        Err(error) => {
            tracing::debug!(%error, "cannot list entries due for refresh");
            return;
        }
    };
    let mut running = JoinSet::new();
    for key in due {
        while running.len() >= CONCURRENCY {
            running.join_next().await;
        }
        let cache = Arc::clone(cache);
        running.spawn(async move {
            match cache.refresh(&key, fence).await {
                Ok(()) => tracing::debug!(key = %key, "token refreshed"),
                // Still valid until it expires; the next round tries again, behind the breaker.
                Err(IdpError::Unavailable { reason, .. }) => {
                    tracing::debug!(key = %key, reason, "refresh postponed: identity provider unavailable");
                }
                Err(error) => tracing::warn!(key = %key, %error, "refresh failed; the entry will expire"),
            }
        });
    }
    while running.join_next().await.is_some() {}
}
