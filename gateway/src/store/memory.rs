//! The node-local store: one process is the whole fleet.
//!
//! Operations are short and never await, so a plain mutex is the simplest correct choice; the
//! request path does not come here on a hit (the L1 in front serves it).
//!
//! The node's own token cache stores its entries open ([`MemoryStore::put_open`]): the store
//! and the L1 share one copy of each, sealed only when read back, so a credential costs its
//! memory once. Entries put sealed (through [`TokenStore::put`]) are kept as given.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::broadcast;

use super::{FencingToken, Lookup, NodeId, PutOutcome, StoreError, StoreEvent, TokenStore};
use crate::token::seal::{effective_refresh_at, seal};
use crate::token::{Clock, EntryMeta, FleetKey, SealedEntry, TokenEntry, TokenKey, UnixMillis};

/// Events a slow subscriber may fall behind by before it must re-read.
const EVENT_BUFFER: usize = 1024;

/// What the store holds under a key.
enum Held {
    /// A sealed entry, as every store holds them (boxed: the map's slots stay small).
    Sealed(Box<SealedEntry>),
    /// This node's own entry, shared with its L1 and sealed only when read.
    Open {
        entry: Arc<TokenEntry>,
        marked_due: Option<UnixMillis>,
        retry_at: Option<UnixMillis>,
        /// Uses reported by `touch` (the L1's own record of uses is read too).
        used: UnixMillis,
    },
}

impl Held {
    fn meta(&self) -> &EntryMeta {
        match self {
            Self::Sealed(e) => &e.meta,
            Self::Open { entry, .. } => &entry.meta,
        }
    }

    fn last_used(&self) -> UnixMillis {
        match self {
            Self::Sealed(e) => e.meta.last_used,
            Self::Open { entry, used, .. } => {
                entry.meta.last_used.max(entry.last_used()).max(*used)
            }
        }
    }

    fn refresh_at(&self) -> UnixMillis {
        match self {
            Self::Sealed(e) => e.refresh_at(),
            Self::Open {
                entry,
                marked_due,
                retry_at,
                ..
            } => effective_refresh_at(entry.meta.refresh_at, *marked_due, *retry_at),
        }
    }

    fn touch(&mut self, at: UnixMillis) {
        match self {
            Self::Sealed(e) => e.meta.last_used = e.meta.last_used.max(at),
            Self::Open { used, .. } => *used = (*used).max(at),
        }
    }

    /// Sets an operator's mark (clearing any backoff), or a backoff (clearing any mark).
    fn mark(&mut self, due: Option<UnixMillis>, retry: Option<UnixMillis>) {
        let (m, r) = match self {
            Self::Sealed(e) => (&mut e.marked_due, &mut e.retry_at),
            Self::Open {
                marked_due,
                retry_at,
                ..
            } => (marked_due, retry_at),
        };
        (*m, *r) = (due, retry);
    }

    /// The entry as stores hand it out: sealed (open entries under `sealer`, the key of the
    /// node that put them).
    fn sealed(&self, key: &TokenKey, sealer: Option<&FleetKey>) -> Option<SealedEntry> {
        match self {
            Self::Sealed(e) => Some((**e).clone()),
            Self::Open {
                entry,
                marked_due,
                retry_at,
                ..
            } => {
                let mut s = seal(sealer?, key, entry);
                s.meta.last_used = self.last_used();
                (s.marked_due, s.retry_at) = (*marked_due, *retry_at);
                Some(s)
            }
        }
    }
}

#[derive(Default)]
struct State {
    entries: HashMap<TokenKey, Held>,
    /// The fleet key open entries are sealed under when read.
    sealer: Option<Box<FleetKey>>,
    fill_leases: HashMap<TokenKey, (NodeId, Instant)>,
    refresh_lease: Option<(NodeId, Instant, FencingToken)>,
    /// Last fence granted; fences only grow.
    fence: u64,
    /// `claim_once` records and when they lapse.
    claims: HashMap<TokenKey, UnixMillis>,
}

/// In-process [`TokenStore`]. A clone shares the same entries and leases (several nodes in one
/// process, as tests run them).
#[derive(Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<StoreEvent>,
    max_entries: usize,
    /// Expiries are judged by this clock; leases by tokio's.
    clock: Clock,
    /// Rate limits, timed by tokio's clock from `epoch`.
    rates: Arc<super::rate::RateTable>,
    epoch: tokio::time::Instant,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::with_max_entries(crate::token::DEFAULT_MAX_ENTRIES)
    }

    /// An empty store that keeps at most `max` entries: past it, each refresher round drops
    /// the least recently used.
    pub fn with_max_entries(max: usize) -> Self {
        Self::with_clock(max, Clock::system())
    }

    /// [`MemoryStore::with_max_entries`], judging expiries by `clock` (tests that control time).
    pub fn with_clock(max: usize, clock: Clock) -> Self {
        Self {
            state: Arc::new(Mutex::new(State::default())),
            events: broadcast::channel(EVENT_BUFFER).0,
            max_entries: max,
            clock,
            rates: Arc::default(),
            epoch: tokio::time::Instant::now(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("memory store lock poisoned")
    }

    /// Stores `held` under `key` unless fenced off or not newer (the contract's `put`).
    fn store(&self, key: &TokenKey, held: Held, fence: Option<FencingToken>) -> PutOutcome {
        let version = held.meta().version;
        {
            let mut st = self.state();
            if fence.is_some_and(|f| f.0 < st.fence) {
                return PutOutcome::Fenced;
            }
            if st.entries.get(key).is_some_and(|cur| {
                cur.meta().version >= version && cur.meta().expires_at > self.clock.now()
            }) {
                return PutOutcome::Stale;
            }
            st.entries.insert(*key, held);
        }
        self.announce(StoreEvent::Stored { key: *key, version });
        PutOutcome::Stored
    }

    /// [`TokenStore::put_filled`] (or, with `fence`, [`TokenStore::put`]) of this node's own
    /// open `entry`, shared with its L1 rather than copied: it is sealed under `sealer` only when
    /// read back. `release` is the fill-lease holder whose lease the put releases.
    pub fn put_open(
        &self,
        key: &TokenKey,
        entry: Arc<TokenEntry>,
        sealer: &FleetKey,
        fence: Option<FencingToken>,
        release: Option<&NodeId>,
    ) -> PutOutcome {
        {
            let mut st = self.state();
            if st.sealer.as_ref().is_none_or(|s| s.id != sealer.id) {
                st.sealer = Some(Box::new(sealer.clone()));
            }
            if let Some(holder) = release
                && st.fill_leases.get(key).is_some_and(|(h, _)| h == holder)
            {
                st.fill_leases.remove(key);
            }
        }
        let held = Held::Open {
            entry,
            marked_due: None,
            retry_at: None,
            used: 0,
        };
        self.store(key, held, fence)
    }

    fn announce(&self, event: StoreEvent) {
        // No subscriber is fine: nobody needs telling.
        let _ = self.events.send(event);
    }
}

impl TokenStore for MemoryStore {
    async fn get(&self, key: &TokenKey) -> Result<Option<SealedEntry>, StoreError> {
        let mut st = self.state();
        let now = self.clock.now();
        match st.entries.get(key) {
            Some(e) if e.meta().expires_at > now => Ok(e.sealed(key, st.sealer.as_deref())),
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
        Ok(self.store(key, Held::Sealed(Box::new(entry)), fence))
    }

    async fn evict(&self, key: &TokenKey, version: Option<u64>) -> Result<bool, StoreError> {
        let removed = {
            let mut st = self.state();
            match st.entries.get(key) {
                Some(cur) if version.is_none_or(|v| v == cur.meta().version) => {
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
            e.mark(None, Some(until));
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
        st.entries.retain(|_, e| e.meta().expires_at > now);
        let over = st.entries.len().saturating_sub(self.max_entries);
        if over > 0 {
            let dropped = crate::token::least_recently_used(
                st.entries.iter().map(|(k, e)| (*k, e.last_used())),
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
            .filter(|(_, e)| e.refresh_at() <= now && e.last_used() >= used_since)
            .map(|(k, e)| (e.refresh_at(), *k))
            .collect();
        due.sort();
        Ok(due.into_iter().take(limit).map(|(_, k)| k).collect())
    }

    async fn touch(&self, uses: &[(TokenKey, UnixMillis)]) -> Result<(), StoreError> {
        let mut st = self.state();
        for (key, at) in uses {
            if let Some(e) = st.entries.get_mut(key) {
                e.touch(*at);
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
        let now = self.clock.now();
        let st = self.state();
        let mut keys: Vec<TokenKey> = st
            .entries
            .iter()
            .filter(|(k, e)| e.meta().expires_at > now && after.is_none_or(|a| **k > a))
            .map(|(k, _)| *k)
            .collect();
        keys.sort();
        keys.truncate(limit);
        Ok(keys
            .into_iter()
            .filter_map(|k| Some((k, st.entries.get(&k)?.sealed(&k, st.sealer.as_deref())?)))
            .collect())
    }

    async fn mark_due(&self, key: &TokenKey) -> Result<bool, StoreError> {
        let now = self.clock.now();
        let mut st = self.state();
        match st.entries.get_mut(key) {
            Some(e) if e.meta().expires_at > now && e.meta().refresh_at < e.meta().expires_at => {
                e.mark(Some(now), None);
                e.touch(now);
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
        let now = self.clock.now();
        let mut st = self.state();
        st.claims.retain(|_, lapses| *lapses > now);
        if st.claims.contains_key(key) {
            return Ok(false);
        }
        st.claims.insert(*key, until);
        Ok(true)
    }

    async fn take_rate(
        &self,
        key: &TokenKey,
        limit: super::rate::RateLimit,
    ) -> Result<Option<Duration>, StoreError> {
        let now = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        Ok(self.rates.take(key, now, limit).err())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::seal::{tests::sample_entry, unseal};

    #[tokio::test]
    async fn memory_store_meets_the_contract() {
        super::super::conformance::run(async || super::MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn an_open_entry_is_shared_and_sealed_only_when_read() {
        let store = MemoryStore::new();
        let fleet = FleetKey::random();
        let key = TokenKey::from_bytes([9; 32]);
        let entry = Arc::new(sample_entry(3));
        let (a, b) = (NodeId::random(), NodeId::random());
        let ttl = Duration::from_secs(30);
        assert_eq!(
            store.lookup(&key, &a, ttl).await.unwrap(),
            Lookup::Missing { lease: true }
        );
        let outcome = store.put_open(&key, Arc::clone(&entry), &fleet, None, Some(&a));
        assert_eq!(outcome, PutOutcome::Stored);
        assert_eq!(Arc::strong_count(&entry), 2, "held, not copied");
        assert!(
            store.try_fill_lease(&key, &b, ttl).await.unwrap(),
            "the put released the holder's fill lease"
        );
        // Read back sealed, under the key it was put with; opens to the same token.
        let sealed = store.get(&key).await.unwrap().unwrap();
        assert_eq!(sealed.key_id, fleet.id);
        let opened = unseal(&fleet.clone().into(), &key, &sealed).unwrap();
        assert_eq!(opened.access_token(), "the-access-token");
        assert_eq!(opened.meta.version, 3);
        // Newest wins against sealed puts too; uses the L1 records count as uses.
        assert_eq!(
            store.put(&key, sealed.clone(), None).await.unwrap(),
            PutOutcome::Stale
        );
        entry.touch(1_000);
        assert_eq!(
            store.get(&key).await.unwrap().unwrap().meta.last_used,
            1_000
        );
        // Marks and backoffs apply to it like to any entry.
        store.postpone(&key, 42, None).await.unwrap();
        assert_eq!(store.get(&key).await.unwrap().unwrap().retry_at, Some(42));
        assert!(store.mark_due(&key).await.unwrap());
        let marked = store.get(&key).await.unwrap().unwrap();
        assert!(marked.marked_due.is_some() && marked.retry_at.is_none());
        assert!(store.evict(&key, Some(3)).await.unwrap());
        assert_eq!(
            Arc::strong_count(&entry),
            1,
            "evicted: the store let go of it"
        );
    }
}
