//! Keeping a node's L1 in step with the fleet: the background work of a [`TokenCache`].
//!
//! - the refresher (in [`super::refresher`]) renews due entries when this node leads;
//! - [`TokenCache::follow_store`] applies the store's change events to the L1;
//! - [`TokenCache::report_usage`] tells the store which entries this node uses, so the leader
//!   (maybe another node) keeps them fresh, and sweeps expired L1 and negative entries.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::cache::TokenCache;
use crate::store::{StoreEvent, TokenStore};
use crate::token::entry::UnixMillis;
use crate::token::key::TokenKey;
use crate::token::seal::{seal, unseal};

/// Uses reported to the store per call at most.
const TOUCH_BATCH: usize = 5_000;

impl TokenCache {
    /// Starts the node's background work: the refresher, the L1 updater and the usage reporter.
    /// All of it ends when `shutdown` is cancelled; await [`TokenCache::closed`] after that.
    pub fn spawn_background(
        self: &Arc<Self>,
        refresh: super::RefreshConfig,
        shutdown: CancellationToken,
    ) {
        self.tasks.spawn(super::refresher::run(
            Arc::clone(self),
            refresh.clone(),
            shutdown.clone(),
        ));
        self.tasks
            .spawn(Arc::clone(self).follow_store(shutdown.clone()));
        self.tasks.spawn(Arc::clone(self).report_usage(
            refresh.interval,
            refresh.max_entries,
            shutdown,
        ));
    }

    /// Waits for every task this cache started (call after cancelling their shutdown token).
    pub async fn closed(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Keeps the L1 in step with the store: newer versions written by other nodes (or by the
    /// refresher) replace ours, evictions remove ours.
    async fn follow_store(self: Arc<Self>, shutdown: CancellationToken) {
        let mut events = self.store.subscribe();
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => return,
                ev = events.recv() => ev,
            };
            match event {
                Ok(StoreEvent::Stored { key, version }) => {
                    let stale = self
                        .l1
                        .pin()
                        .get(&key)
                        .is_some_and(|cur| cur.meta.version < version);
                    if stale {
                        self.read_store(&key).await;
                    }
                }
                Ok(StoreEvent::Evicted { key }) => {
                    self.l1.pin().remove(&key);
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "store events lagged; re-reading cached keys");
                    self.resync(false).await;
                }
                Ok(StoreEvent::Resync { lost }) => self.resync(lost).await,
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// Re-reads every L1 key after events may have been lost. A newer stored version replaces
    /// ours. An entry the store no longer has is dropped (it was evicted, and stays so) or, with
    /// `write_back` (the store says it lost its data), written back so that the fleet, and the
    /// refresher, have it again. A store that cannot be reached changes nothing: the L1 keeps
    /// serving.
    async fn resync(&self, write_back: bool) {
        let keys: Vec<TokenKey> = self.l1.pin().keys().copied().collect();
        for key in keys {
            match self.store.get(&key).await {
                Ok(Some(sealed)) => {
                    if let Ok(entry) = unseal(&self.ring, &key, &sealed) {
                        self.install(&key, Arc::new(entry));
                    }
                }
                Ok(None) if write_back => {
                    let Some(ours) = self.l1.pin().get(&key).cloned() else {
                        continue;
                    };
                    if ours.meta.is_servable(self.clock().now())
                        && let Err(e) = self
                            .store
                            .put(&key, seal(self.ring.current(), &key, &ours), None)
                            .await
                    {
                        return self.store_failed(e, ());
                    }
                }
                Ok(None) => {
                    self.l1.pin().remove(&key);
                }
                Err(e) => return self.store_failed(e, ()),
            }
        }
    }

    /// Reports which entries this node used, so the refresh leader (maybe another node) keeps
    /// them fresh; also sweeps expired L1 and negative entries, and keeps the L1 within
    /// `max_entries` (the least recently used go first: the store still has them).
    async fn report_usage(
        self: Arc<Self>,
        every: Duration,
        max_entries: usize,
        shutdown: CancellationToken,
    ) {
        let mut reported_until = 0;
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = self.clock().now();
            let uses: Vec<(TokenKey, UnixMillis)> = {
                let l1 = self.l1.pin();
                l1.retain(|_, e| e.meta.expires_at > now);
                let over = l1.len().saturating_sub(max_entries);
                if over > 0 {
                    let lru = crate::token::least_recently_used(
                        l1.iter().map(|(k, e)| (*k, e.last_used())),
                        over,
                    );
                    for k in &lru {
                        l1.remove(k);
                    }
                    tracing::debug!(dropped = lru.len(), max_entries, "L1 over its bound");
                }
                l1.iter()
                    .filter(|(_, e)| e.last_used() > reported_until)
                    .map(|(k, e)| (*k, e.last_used()))
                    .collect()
            };
            self.negative.pin().retain(|_, until| *until > now);
            if uses.is_empty() {
                continue;
            }
            // In bounded batches: a store refuses an unbounded one (the cache service takes
            // 10,000 uses per call), and a node that served many credentials since its last
            // report would otherwise never get one through.
            let mut all_sent = true;
            for batch in uses.chunks(TOUCH_BATCH) {
                if let Err(e) = self.store.touch(batch).await {
                    self.store_failed(e, ());
                    all_sent = false;
                    break;
                }
            }
            if all_sent {
                reported_until = self.store_ok(now);
            }
        }
    }
}
