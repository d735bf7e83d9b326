//! The token lookup path: L1 → shared store → IdP (`ARCHITECTURE.md`, *The token lifecycle*,
//! steps 2, 3 and 6).
//!
//! A hit in the L1 (a lock-free map of decrypted entries) makes no network round trip and takes
//! no lock. On a miss, one fill per key runs on this node (single flight: concurrent callers
//! await the same task), and the fill takes a short per-key lease in the shared store so that one
//! node per fleet asks the IdP while the others wait for the entry to appear.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tracing::Instrument;

use tokio::sync::broadcast::error::RecvError;
use tokio_util::task::TaskTracker;

use super::flight::SingleFlight;
use crate::outbound::{IdpClient, IdpError};
use crate::store::{
    FencingToken, Lookup, NodeId, PutOutcome, Store, StoreError, StoreEvent, TokenStore,
};
use crate::token::entry::{
    EntryMeta, EntrySecrets, TokenEntry, UnixMillis, jwt_claims, refresh_time,
};
use crate::token::key::{FleetKey, KeyRing, TokenKey};
use crate::token::seal::{SealedEntry, seal, unseal};
use crate::token::{Clock, TokenRequest};

/// Stands in for the IdP in this crate's unit tests: gets the request and the time it was sent.
#[cfg(test)]
pub(crate) type Script = std::sync::Arc<
    dyn Fn(
            crate::token::TokenRequest,
            crate::token::UnixMillis,
        ) -> futures_util::future::BoxFuture<
            'static,
            Result<crate::token::grant::IssuedToken, crate::outbound::IdpError>,
        > + Send
        + Sync,
>;

/// A fill lease outlives one IdP attempt with retries; if its holder dies, the others take over
/// after this long.
const FILL_LEASE_TTL: Duration = Duration::from_secs(10);
/// How often a node waiting on another node's fill re-reads the store (besides events).
const FILL_POLL: Duration = Duration::from_millis(100);

/// What a lookup in the store found.
enum Found {
    /// A servable entry.
    Entry(Arc<TokenEntry>),
    /// No servable entry; whether this node holds the fill lease.
    Lease(bool),
    /// The store failed.
    StoreDown,
}

/// How waiting for another node's fill ended.
enum OtherFill {
    /// The entry appeared.
    Delivered(Arc<TokenEntry>),
    /// The holder's lease lapsed and we took it.
    LeaseIsOurs,
    /// Neither happened in time, or the store failed: fetch without the lease.
    GaveUp,
}

/// The node's token cache. Cheap to share: wrap it in an `Arc`.
pub struct TokenCache {
    pub(super) ring: KeyRing,
    node: NodeId,
    pub(super) store: Store,
    idp: IdpClient,
    pub(super) l1: papaya::HashMap<TokenKey, Arc<TokenEntry>>,
    /// Keys whose credentials the IdP called `invalid_client`, until when.
    pub(super) negative: papaya::HashMap<TokenKey, UnixMillis>,
    flights: Arc<SingleFlight<Result<Arc<TokenEntry>, IdpError>>>,
    store_degraded: AtomicBool,
    pub(super) tasks: TaskTracker,
    clock: Clock,
    grant: Grant,
}

/// Where the cache's tokens come from.
enum Grant {
    /// The token endpoint each request names (RFC 6749 §4.4).
    Idp,
    /// A script standing in for the IdP, in this crate's unit tests (which run on paused time
    /// and so cannot wait on sockets).
    #[cfg(test)]
    Script(Script),
}

impl TokenCache {
    /// A cache over `store`, deriving and sealing with the ring's current key.
    pub fn new(ring: impl Into<KeyRing>, store: Store) -> Arc<Self> {
        Self::with_idp(ring, store, IdpClient::new())
    }

    /// [`TokenCache::new`] with a configured IdP client.
    pub fn with_idp(ring: impl Into<KeyRing>, store: Store, idp: IdpClient) -> Arc<Self> {
        Self::assemble(ring.into(), store, idp, Clock::system(), Grant::Idp)
    }

    /// A cache whose tokens come from `script` and whose time is `clock` (unit tests).
    #[cfg(test)]
    pub(crate) fn scripted(
        ring: impl Into<KeyRing>,
        store: Store,
        clock: Clock,
        script: Script,
    ) -> Arc<Self> {
        Self::assemble(
            ring.into(),
            store,
            IdpClient::new(),
            clock,
            Grant::Script(script),
        )
    }

    fn assemble(
        ring: KeyRing,
        store: Store,
        idp: IdpClient,
        clock: Clock,
        grant: Grant,
    ) -> Arc<Self> {
        Arc::new(Self {
            ring,
            node: NodeId::random(),
            store,
            idp,
            l1: papaya::HashMap::new(),
            negative: papaya::HashMap::new(),
            flights: SingleFlight::new(),
            store_degraded: AtomicBool::new(false),
            tasks: TaskTracker::new(),
            clock,
            grant,
        })
    }

    /// The wall clock entries are judged by.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The current fleet key (for deriving [`TokenKey`]s).
    pub fn fleet(&self) -> &FleetKey {
        self.ring.current()
    }

    /// The fleet key ring (for sealing other cached results).
    pub fn ring(&self) -> &KeyRing {
        &self.ring
    }

    /// The node's client towards IdPs (retries and circuit breakers).
    pub fn idp(&self) -> &IdpClient {
        &self.idp
    }

    /// The tracker of this cache's tasks; [`TokenCache::closed`] waits for them.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// This node's lease-holder id.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The shared store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether the shared store is currently failing (service continues from L1).
    pub fn store_degraded(&self) -> bool {
        self.store_degraded.load(Ordering::Relaxed)
    }

    /// The hot path: a servable L1 entry, without any await, lock or network call.
    #[inline]
    pub fn cached(&self, key: &TokenKey, now: UnixMillis) -> Option<Arc<TokenEntry>> {
        let l1 = self.l1.pin();
        let entry = l1.get(key).filter(|e| e.meta.is_servable(now))?;
        entry.touch(now);
        crate::telemetry::metrics::metrics().l1_hits.inc();
        Some(Arc::clone(entry))
    }

    /// Whether a miss on `key` now would cost nothing new: the IdP's `invalid_client` is
    /// remembered for it, or this node is already fetching it (the caller would join).
    pub fn miss_is_free(&self, key: &TokenKey, now: UnixMillis) -> bool {
        self.negative
            .pin()
            .get(key)
            .is_some_and(|until| *until > now)
            || self.flights.in_flight(key)
    }

    /// A servable token for `key`: from L1, the shared store, or the IdP. `spec` is called only
    /// on a miss. An `invalid_client` answer is remembered for `negative_ttl`.
    pub async fn get(
        self: &Arc<Self>,
        key: &TokenKey,
        spec: impl FnOnce() -> TokenRequest,
        negative_ttl: Duration,
    ) -> Result<Arc<TokenEntry>, IdpError> {
        let span = crate::telemetry::otel::child_span!(
            "token.get",
            tokengate.cache.layer = tracing::field::Empty
        );
        let layer = |name: &'static str| span.record("tokengate.cache.layer", name);
        let now = self.clock.now();
        if let Some(e) = self.cached(key, now) {
            layer("l1");
            return Ok(e);
        }
        if self
            .negative
            .pin()
            .get(key)
            .is_some_and(|until| *until > now)
        {
            layer("negative");
            return Err(IdpError::InvalidClient);
        }
        layer("fill");
        let this = Arc::clone(self);
        let key = *key;
        let fill_span = span.clone();
        let flight = self.flights.join(
            key,
            &self.tasks,
            move || {
                let spec = spec();
                // The fill outlives a caller that gives up; its spans stay in the trace of
                // the request that started it.
                async move {
                    let result = this.fill(&key, spec).await;
                    if matches!(result, Err(IdpError::InvalidClient)) {
                        this.negative
                            .pin()
                            .insert(key, this.clock.now() + negative_ttl.as_millis() as u64);
                    }
                    result
                }
                .instrument(fill_span)
            },
            || Err(IdpError::Protocol("token fill task failed".into())),
        );
        flight.instrument(span).await
    }

    /// A miss: one store round trip finds the entry or takes the key's fill lease; the lease
    /// holder asks the IdP and stores the token releasing the lease (a second round trip); the
    /// other nodes wait for it to appear.
    async fn fill(&self, key: &TokenKey, spec: TokenRequest) -> Result<Arc<TokenEntry>, IdpError> {
        let metrics = crate::telemetry::metrics::metrics();
        let mut events = self.store.subscribe();
        let lease = match self.lookup(key).await {
            Found::Entry(e) => {
                metrics.store_hits.inc();
                return Ok(e);
            }
            Found::Lease(held) => Some(held),
            Found::StoreDown => None,
        };
        if let Some(e) = self.adopt_from_previous_keys(key, &spec).await {
            if lease == Some(true) {
                self.release_fill_lease(key).await;
            }
            return Ok(e);
        }
        let holds_lease = match lease {
            // Store down: per-node single flight is all we have; fetch ourselves.
            None => false,
            Some(true) => true,
            Some(false) => match self.await_other_fill(key, &mut events).await {
                OtherFill::Delivered(e) => {
                    metrics.store_hits.inc();
                    return Ok(e);
                }
                OtherFill::LeaseIsOurs => true,
                OtherFill::GaveUp => false,
            },
        };
        let result = self
            .fetch_and_store(key, spec, None, None, holds_lease)
            .await;
        if result.is_ok() {
            metrics.idp_fetches.inc();
        } else if holds_lease {
            self.release_fill_lease(key).await;
        }
        result
    }

    /// The store's entry for `key` if servable; else whether this node now holds its fill lease
    /// (taken in the same round trip as the read, so no holder can store and release between).
    async fn lookup(&self, key: &TokenKey) -> Found {
        let looked = self
            .store
            .lookup(key, &self.node, FILL_LEASE_TTL)
            .instrument(self.store_span("store.lookup"))
            .await;
        match looked {
            Ok(Lookup::Found(sealed)) => {
                self.store_ok(());
                if let Some(e) = self.open_stored(key, &sealed) {
                    return Found::Entry(e);
                }
                // Present but not servable (about to expire, or unreadable): a miss.
                match self
                    .store
                    .try_fill_lease(key, &self.node, FILL_LEASE_TTL)
                    .instrument(self.store_span("store.fill_lease"))
                    .await
                {
                    Ok(held) => Found::Lease(held),
                    Err(e) => self.store_failed(e, Found::StoreDown),
                }
            }
            Ok(Lookup::Missing { lease }) => self.store_ok(Found::Lease(lease)),
            Err(e) => self.store_failed(e, Found::StoreDown),
        }
    }

    /// Waits (bounded) for another node's fill of `key` to appear in the store.
    async fn await_other_fill(
        &self,
        key: &TokenKey,
        events: &mut tokio::sync::broadcast::Receiver<StoreEvent>,
    ) -> OtherFill {
        let deadline = tokio::time::Instant::now() + FILL_LEASE_TTL;
        // One timer for the whole wait: events about other keys must not keep postponing the
        // periodic look at the store and at the holder's lease.
        let mut poll = tokio::time::interval(FILL_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await;
        while tokio::time::Instant::now() < deadline {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(StoreEvent::Stored { key: k, .. }) if k == *key => {}
                    Ok(StoreEvent::Resync { .. }) | Err(RecvError::Lagged(_)) => {}
                    Ok(_) => continue,
                    Err(RecvError::Closed) => { poll.tick().await; }
                },
                _ = poll.tick() => {}
            }
            // The entry, or (once the holder's lease lapsed: it may have died) the lease.
            match self.lookup(key).await {
                Found::Entry(e) => return OtherFill::Delivered(e),
                Found::Lease(true) => return OtherFill::LeaseIsOurs,
                Found::Lease(false) => {}
                Found::StoreDown => return OtherFill::GaveUp,
            }
        }
        tracing::debug!(key = %key, "fill lease holder did not deliver; fetching ourselves");
        OtherFill::GaveUp
    }

    /// After a fleet-key rotation the same credential has a new cache key. Looks under the keys
    /// derived from the previous fleet keys and, if the fleet has a servable token there, stores
    /// it under the current key too (sealed with the current fleet key), so a rotation costs no
    /// IdP request.
    async fn adopt_from_previous_keys(
        &self,
        key: &TokenKey,
        spec: &TokenRequest,
    ) -> Option<Arc<TokenEntry>> {
        for previous in self.ring.previous() {
            let old_key = spec.key(previous);
            let read = self.store.get(&old_key);
            let sealed = match read.instrument(self.store_span("store.get")).await {
                Ok(Some(sealed)) => sealed,
                Ok(None) => continue,
                Err(e) => return self.store_failed(e, None),
            };
            let Ok(entry) = unseal(&self.ring, &old_key, &sealed) else {
                continue;
            };
            if !entry.meta.is_servable(self.clock.now()) {
                continue;
            }
            if let Err(e) = self
                .store
                .put(key, seal(self.ring.current(), key, &entry), None)
                .await
            {
                self.store_failed(e, ());
            }
            tracing::debug!(key = %key, previous_key = %old_key, "adopted a token cached under a previous fleet key");
            return Some(self.install(key, Arc::new(entry)));
        }
        None
    }

    async fn release_fill_lease(&self, key: &TokenKey) {
        let released = self.store.release_fill_lease(key, &self.node);
        let _ = released
            .instrument(self.store_span("store.release_fill_lease"))
            .await;
    }

    /// A span for one call to the shared store.
    fn store_span(&self, name: &'static str) -> tracing::Span {
        crate::telemetry::otel::child_span!(
            "store",
            otel.name = name,
            db.system.name = self.store.kind()
        )
    }

    /// Reads, opens and installs a servable entry from the shared store.
    pub(super) async fn read_store(&self, key: &TokenKey) -> Option<Arc<TokenEntry>> {
        let read = self.store.get(key).instrument(self.store_span("store.get"));
        let sealed = match read.await {
            Ok(s) => self.store_ok(s)?,
            Err(e) => return self.store_failed(e, None),
        };
        self.open_stored(key, &sealed)
    }

    /// Opens and installs an entry read from the store, if servable.
    fn open_stored(&self, key: &TokenKey, sealed: &SealedEntry) -> Option<Arc<TokenEntry>> {
        match unseal(&self.ring, key, sealed) {
            Ok(entry) if entry.meta.is_servable(self.clock.now()) => {
                Some(self.install(key, Arc::new(entry)))
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(key = %key, error = %e, "cannot open cached entry; fetching a new token");
                None
            }
        }
    }

    /// Asks the IdP for a token and stores it. `prev` is the entry being renewed, `fence` the
    /// refresh leader's fence; with `release`, the store write also releases this node's fill
    /// lease on the key.
    async fn fetch_and_store(
        &self,
        key: &TokenKey,
        spec: TokenRequest,
        prev: Option<&EntryMeta>,
        fence: Option<FencingToken>,
        release: bool,
    ) -> Result<Arc<TokenEntry>, IdpError> {
        let issued = match &self.grant {
            Grant::Idp => crate::token::grant::fetch(&self.idp, &spec, &self.clock).await?,
            #[cfg(test)]
            Grant::Script(script) => script(spec.clone(), self.clock.now()).await?,
        };
        let claims = jwt_claims(issued.access_token.expose());
        let lifetime_ms = match (
            issued.expires_in,
            claims.as_ref().and_then(|c| c.get("exp")?.as_u64()),
        ) {
            (Some(d), _) => d.as_millis() as u64,
            (None, Some(exp)) => (exp * 1000).saturating_sub(issued.issued_at),
            (None, None) => spec.default_lifetime.as_millis() as u64,
        };
        let expires_at = issued.issued_at + lifetime_ms;
        let now = self.clock.now();
        let meta = EntryMeta {
            client_id: spec.client_id.clone(),
            token_url: spec.token_url.to_string(),
            scopes: spec.scopes.clone(),
            audience: spec.audience.clone(),
            granted_scope: issued.scope,
            issued_at: issued.issued_at,
            expires_at,
            refresh_at: refresh_time(issued.issued_at, expires_at),
            version: prev.map_or(issued.issued_at, |p| (p.version + 1).max(issued.issued_at)),
            last_used: prev.map_or(now, |p| p.last_used),
        };
        if !meta.is_servable(now) {
            return Err(IdpError::Protocol(
                "token expires too soon to be used".into(),
            ));
        }
        let entry = TokenEntry::new(
            meta,
            EntrySecrets {
                access_token: issued.access_token,
                spec,
            },
        )
        .map_err(|_| IdpError::Protocol("access_token is not a valid header value".into()))?;
        let entry = Arc::new(entry);
        let stored = self
            .store
            .put_entry(
                key,
                &entry,
                self.ring.current(),
                fence,
                release.then_some(&self.node),
            )
            .instrument(self.store_span("store.put"))
            .await;
        match stored {
            Ok(PutOutcome::Fenced) => {
                // A newer leader exists: our token is valid but must not replace its write.
                tracing::info!(key = %key, "refresh result discarded: lease fenced off");
                return Ok(entry);
            }
            Ok(_) => self.store_ok(()),
            Err(e) => self.store_failed(e, ()),
        }
        Ok(self.install(key, entry))
    }

    /// Puts `entry` in the L1 unless one at least as new is there; returns the one now current.
    /// Atomic per key, so concurrent installs never let an older version win.
    pub(super) fn install(&self, key: &TokenKey, entry: Arc<TokenEntry>) -> Arc<TokenEntry> {
        let l1 = self.l1.pin();
        let outcome = l1.compute(*key, |current| match current {
            Some((_, cur)) if cur.meta.version >= entry.meta.version => {
                papaya::Operation::Abort(Arc::clone(cur))
            }
            _ => papaya::Operation::Insert(Arc::clone(&entry)),
        });
        match outcome {
            papaya::Compute::Aborted(current) => current,
            _ => entry,
        }
    }

    /// Drops the token for `key` fleet-wide (e.g. after an upstream 401). With `version`, only
    /// that version: a replacement fetched meanwhile survives.
    pub async fn evict(&self, key: &TokenKey, version: Option<u64>) {
        {
            let l1 = self.l1.pin();
            if l1
                .get(key)
                .is_some_and(|cur| version.is_none_or(|v| v == cur.meta.version))
            {
                l1.remove(key);
            }
        }
        let evicted = self.store.evict(key, version);
        if let Err(e) = evicted.instrument(self.store_span("store.evict")).await {
            self.store_failed(e, ());
        }
    }

    pub(crate) fn store_ok<T>(&self, value: T) -> T {
        if self.store_degraded.swap(false, Ordering::Relaxed) {
            crate::telemetry::metrics::metrics().store_degraded.set(0);
            tracing::info!("token store reachable again");
        }
        value
    }

    /// Logs a store failure once per outage (not once per request) and returns `fallback`.
    pub(crate) fn store_failed<T>(&self, error: StoreError, fallback: T) -> T {
        // A refused request is this request's problem (an entry over the store's bounds), not
        // the store's: it stays healthy for every other.
        if let StoreError::Refused(reason) = &error {
            tracing::warn!(%reason, "token store refused an entry; serving it from L1 only");
            return fallback;
        }
        if !self.store_degraded.swap(true, Ordering::Relaxed) {
            crate::telemetry::metrics::metrics().store_degraded.set(1);
            tracing::warn!(%error, "token store unavailable; serving from L1 and fetching per node");
        }
        fallback
    }

    /// The entry under `key` opened for renewal, if it is due: its refresh time, brought
    /// forward by `lead` (but never before half its way from issue to refresh time, unless an
    /// operator marked it due), has come at `now`. An entry that cannot be opened (sealed under
    /// a key this node no longer has, or corrupt) can never be renewed: it is evicted.
    pub(super) async fn due_entry(
        &self,
        key: &TokenKey,
        now: UnixMillis,
        lead: Duration,
    ) -> Option<TokenEntry> {
        let read = self.store.get(key).instrument(self.store_span("store.get"));
        let sealed = match read.await {
            Ok(Some(s)) => s,
            Ok(None) => return None,
            Err(e) => return self.store_failed(e, None),
        };
        let m = &sealed.meta;
        if m.refresh_at >= m.expires_at {
            return None; // not a renewable token (e.g. a cached introspection result)
        }
        let halfway = m.issued_at + m.refresh_at.saturating_sub(m.issued_at) / 2;
        let starts = match sealed.marked_due {
            Some(_) => sealed.refresh_at(),
            None => sealed
                .refresh_at()
                .saturating_sub(lead.as_millis() as u64)
                .max(halfway),
        };
        if starts > now {
            return None; // not yet, or renewed meanwhile (by a previous leader)
        }
        match unseal(&self.ring, key, &sealed) {
            Ok(entry) => Some(entry),
            Err(e) => {
                tracing::warn!(key = %key, error = %e, "cannot open an entry to renew it; evicting it");
                self.evict(key, Some(sealed.meta.version)).await;
                None
            }
        }
    }

    /// Renews `current` (from [`TokenCache::due_entry`]) as the refresh leader holding `fence`.
    pub(super) async fn renew(
        &self,
        key: &TokenKey,
        current: &TokenEntry,
        fence: FencingToken,
    ) -> Result<(), IdpError> {
        let spec = current.spec.clone();
        self.fetch_and_store(key, spec, Some(&current.meta), Some(fence), false)
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use crate::token::seal::tests::sample_entry;

    #[tokio::test]
    async fn an_entry_no_key_of_the_ring_can_open_is_evicted_not_renewed() {
        let cache = TokenCache::new(FleetKey::random(), Store::Memory(MemoryStore::new()));
        let key = TokenKey::from_bytes([5; 32]);
        // Sealed under a fleet key this node does not have, and due long ago.
        let mut entry = sample_entry(1);
        entry.meta.refresh_at = 10;
        let foreign = seal(&FleetKey::random(), &key, &entry);
        cache.store().put(&key, foreign, None).await.unwrap();
        assert!(cache.store().get(&key).await.unwrap().is_some());
        assert!(
            cache
                .due_entry(&key, cache.clock().now(), Duration::ZERO)
                .await
                .is_none()
        );
        assert!(
            cache.store().get(&key).await.unwrap().is_none(),
            "evicted from the store"
        );
    }
}
