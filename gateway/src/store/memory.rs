//! The node-local store: one process is the whole fleet.
//!
//! Operations are short and never await, so a plain mutex is the simplest correct choice; the
//! request path does not come here on a hit (the L1 in front serves it).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use super::{FencingToken, Lookup, NodeId, PutOutcome, StoreError, StoreEvent, TokenStore};
use crate::token::{SealedEntry, TokenKey, UnixMillis, now_millis};

/// Events a slow subscriber may fall behind by before it must re-read.
const EVENT_BUFFER: usize = 1024;

#[derive(Default)]
struct State {
    entries: HashMap<TokenKey, SealedEntry>,
    fill_leases: HashMap<TokenKey, (NodeId, Instant)>,
    refresh_lease: Option<(NodeId, Instant, FencingToken)>,
    /// Last fence granted; fences only grow.
    fence: u64,
    /// `claim_once` records and when they lapse.
    claims: HashMap<TokenKey, UnixMillis>,
}

/// In-process [`TokenStore`].
pub struct MemoryStore {
    state: Mutex<State>,
    events: broadcast::Sender<StoreEvent>,
    max_entries: usize,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::with_max_entries(crate::config::DEFAULT_MAX_ENTRIES)
    }

    /// An empty store that keeps at most `max` entries: past it, each refresher round drops
    /// the least recently used.
    pub fn with_max_entries(max: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            events: broadcast::channel(EVENT_BUFFER).0,
            max_entries: max,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("memory store lock poisoned")
    }

    fn announce(&self, event: StoreEvent) {
        // No subscriber is fine: nobody needs telling.
        let _ = self.events.send(event);
    }
}

impl TokenStore for MemoryStore {
    async fn get(&self, key: &TokenKey) -> Result<Option<SealedEntry>, StoreError> {
        let mut st = self.state();
        let now = now_millis();
        match st.entries.get(key) {
            Some(e) if e.meta.expires_at > now => Ok(Some(e.clone())),
            Some(_) => {
                st.entries.remove(key);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn put(
        &self,
        key: &TokenKey,
        entry: SealedEntry,
        fence: Option<FencingToken>,
    ) -> Result<PutOutcome, StoreError> {
        let version = entry.meta.version;
        {
            let mut st = self.state();
            if fence.is_some_and(|f| f.0 < st.fence) {
                return Ok(PutOutcome::Fenced);
            }
            if st.entries.get(key).is_some_and(|cur| {
                cur.meta.version >= version && cur.meta.expires_at > now_millis()
            }) {
                return Ok(PutOutcome::Stale);
            }
            st.entries.insert(*key, entry);
        }
        self.announce(StoreEvent::Stored { key: *key, version });
        Ok(PutOutcome::Stored)
    }

    async fn evict(&self, key: &TokenKey, version: Option<u64>) -> Result<bool, StoreError> {
        let removed = {
            let mut st = self.state();
            match st.entries.get(key) {
                Some(cur) if version.is_none_or(|v| v == cur.meta.version) => {
                    st.entries.remove(key).is_some()
                }
                _ => false,
            }
        };
        if removed {
            self.announce(StoreEvent::Evicted { key: *key });
        }
        Ok(removed)
    }

    async fn lookup(
        &self,
        key: &TokenKey,
        holder: &NodeId,
        ttl: Duration,
    ) -> Result<Lookup, StoreError> {
        if let Some(e) = self.get(key).await? {
            return Ok(Lookup::Found(Box::new(e)));
        }
        let lease = self.try_fill_lease(key, holder, ttl).await?;
        Ok(Lookup::Missing { lease })
    }

    async fn put_filled(
        &self,
        key: &TokenKey,
        entry: SealedEntry,
        holder: &NodeId,
    ) -> Result<PutOutcome, StoreError> {
        let outcome = self.put(key, entry, None).await?;
        self.release_fill_lease(key, holder).await?;
        Ok(outcome)
    }

    async fn postpone(
        &self,
        key: &TokenKey,
        until: UnixMillis,
        fence: Option<FencingToken>,
    ) -> Result<(), StoreError> {
        let mut st = self.state();
        if fence.is_some_and(|f| f.0 < st.fence) {
            return Ok(());
        }
        if let Some(e) = st.entries.get_mut(key) {
            e.retry_at = Some(until);
            e.marked_due = None;
        }
        Ok(())
    }

    async fn try_fill_lease(
        &self,
        key: &TokenKey,
        holder: &NodeId,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut st = self.state();
        let now = Instant::now();
        match st.fill_leases.get(key) {
            Some((h, until)) if *until > now && h != holder => Ok(false),
            _ => {
                if st.fill_leases.len() >= 4096 {
                    st.fill_leases.retain(|_, (_, until)| *until > now);
                }
                st.fill_leases.insert(*key, (holder.clone(), now + ttl));
                Ok(true)
            }
        }
    }

    async fn release_fill_lease(&self, key: &TokenKey, holder: &NodeId) -> Result<(), StoreError> {
        let mut st = self.state();
        if st.fill_leases.get(key).is_some_and(|(h, _)| h == holder) {
            st.fill_leases.remove(key);
        }
        Ok(())
    }

    async fn acquire_refresh_lease(
        &self,
        holder: &NodeId,
        ttl: Duration,
    ) -> Result<Option<FencingToken>, StoreError> {
        let mut st = self.state();
        let now = Instant::now();
        match &st.refresh_lease {
            Some((h, until, fence)) if h == holder && *until > now => {
                let fence = *fence;
                st.refresh_lease = Some((holder.clone(), now + ttl, fence));
                Ok(Some(fence))
            }
            Some((_, until, _)) if *until > now => Ok(None),
            _ => {
                st.fence += 1;
                let fence = FencingToken(st.fence);
                st.refresh_lease = Some((holder.clone(), now + ttl, fence));
                Ok(Some(fence))
            }
        }
    }

    async fn release_refresh_lease(&self, holder: &NodeId) -> Result<(), StoreError> {
        let mut st = self.state();
        if st
            .refresh_lease
            .as_ref()
            .is_some_and(|(h, _, _)| h == holder)
        {
            st.refresh_lease = None;
        }
        Ok(())
    }

    async fn due_for_refresh(
        &self,
        now: UnixMillis,
        used_since: UnixMillis,
        limit: usize,
    ) -> Result<Vec<TokenKey>, StoreError> {
        let mut st = self.state();
        // The refresher calls this every interval: a good moment to drop expired entries, which
        // keeps a node-local store bounded by the set of live credentials.
        st.entries.retain(|_, e| e.meta.expires_at > now);
        let over = st.entries.len().saturating_sub(self.max_entries);
        if over > 0 {
            let dropped = crate::token::least_recently_used(
                st.entries.iter().map(|(k, e)| (*k, e.meta.last_used)),
                over,
            );
            for k in &dropped {
                st.entries.remove(k);
            }
            drop(st);
            for key in dropped {
                self.announce(StoreEvent::Evicted { key });
            }
            st = self.state();
        }
        let mut due: Vec<(UnixMillis, TokenKey)> = st
            .entries
            .iter()
            .filter(|(_, e)| e.refresh_at() <= now && e.meta.last_used >= used_since)
            .map(|(k, e)| (e.refresh_at(), *k))
            .collect();
        due.sort();
        Ok(due.into_iter().take(limit).map(|(_, k)| k).collect())
    }

    async fn touch(&self, uses: &[(TokenKey, UnixMillis)]) -> Result<(), StoreError> {
        let mut st = self.state();
        for (key, at) in uses {
            if let Some(e) = st.entries.get_mut(key) {
                e.meta.last_used = e.meta.last_used.max(*at);
            }
        }
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }

    async fn list(
        &self,
        after: Option<TokenKey>,
        limit: usize,
    ) -> Result<Vec<(TokenKey, SealedEntry)>, StoreError> {
        let now = now_millis();
        let st = self.state();
        let mut listed: Vec<(TokenKey, SealedEntry)> = st
            .entries
            .iter()
            .filter(|(k, e)| e.meta.expires_at > now && after.is_none_or(|a| **k > a))
            .map(|(k, e)| (*k, e.clone()))
            .collect();
        listed.sort_by_key(|(k, _)| *k);
        listed.truncate(limit);
        Ok(listed)
    }

    async fn mark_due(&self, key: &TokenKey) -> Result<bool, StoreError> {
        let now = now_millis();
        let mut st = self.state();
        match st.entries.get_mut(key) {
            Some(e) if e.meta.expires_at > now && e.meta.refresh_at < e.meta.expires_at => {
                e.marked_due = Some(now);
                e.retry_at = None;
                e.meta.last_used = e.meta.last_used.max(now);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn refresh_lease(&self) -> Result<Option<super::LeaseInfo>, StoreError> {
        let now = Instant::now();
        Ok(self
            .state()
            .refresh_lease
            .as_ref()
            .filter(|(_, until, _)| *until > now)
            .map(|(holder, until, fence)| super::LeaseInfo {
                holder: holder.to_string(),
                fence: fence.0,
                expires_in_ms: (*until - now).as_millis() as u64,
            }))
    }

    async fn claim_once(&self, key: &TokenKey, until: UnixMillis) -> Result<bool, StoreError> {
        let now = now_millis();
        let mut st = self.state();
        st.claims.retain(|_, lapses| *lapses > now);
        if st.claims.contains_key(key) {
            return Ok(false);
        }
        st.claims.insert(*key, until);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn memory_store_meets_the_contract() {
        super::super::conformance::run(async || super::MemoryStore::new()).await;
    }
}
