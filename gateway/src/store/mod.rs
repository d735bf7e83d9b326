//! The fleet-wide token store: the seam between the token lifecycle and where tokens are shared
//! (`ARCHITECTURE.md`, *The store contract*).
//!
//! # Contract
//!
//! Every backend (`memory`, `redis`, `raft`) guarantees, and proves by passing
//! [`conformance::run`]:
//!
//! 1. **Ciphertext only.** It stores [`SealedEntry`] values as given; it never sees a token or a
//!    secret in clear.
//! 2. **Newest wins.** `put` stores an entry only if no entry with an equal or higher `version`
//!    is present; otherwise it answers [`PutOutcome::Stale`]. A put that the backend retries
//!    after losing an answer (the cache service across a leader change) can find its own first
//!    attempt and answer `Stale`: callers take `Stale` as "an entry at least this new is
//!    there", never as "mine was lost".
//! 3. **Fencing.** A `put` or lease carrying a [`FencingToken`] older than the newest fence the
//!    store has granted is refused ([`PutOutcome::Fenced`]): an ex-leader that was paused or
//!    partitioned cannot overwrite what the new leader wrote.
//! 4. **Expiry.** An entry is never returned after its `expires_at`.
//! 5. **Leases.** At most one holder has the refresh lease at a time; each new grant carries a
//!    fence strictly greater than every earlier one; a holder renewing keeps its fence. Fill
//!    leases (fleet-wide single flight) are exclusive per key and lapse after their TTL.
//! 6. **Events.** Every stored or evicted entry is announced on [`TokenStore::subscribe`] to
//!    every subscriber (on every node, for shared backends), so L1 caches stay current without
//!    polling.
//! 7. **Once.** [`TokenStore::claim_once`] answers `true` to exactly one caller per key, fleet
//!    wide, until the claim lapses (replay protection for client assertions' `jti`).
//! 8. **Rates.** [`TokenStore::take_rate`] keeps one rate limit per key for the whole fleet
//!    (node-local for the memory store): over any stretch of time, no more requests pass than
//!    the burst plus one per interval, whichever node asks (see [`rate`]). The cache service
//!    keeps them in its leader's memory, so a new leader starts with full buckets.
//! 9. **Failure.** Operations fail with [`StoreError::Unavailable`] rather than hang past the
//!    backend's configured timeout; callers degrade to node-local behaviour.

pub mod conformance;
pub mod memory;
pub mod raft;
pub mod rate;
pub mod redis;
mod settings;

use std::fmt;
use std::future::Future;
use std::time::Duration;

use rand::RngCore;
use tokio::sync::broadcast;

use crate::token::{SealedEntry, TokenKey, UnixMillis};

pub use memory::MemoryStore;
pub use raft::RaftStore;
pub use redis::RedisStore;
pub use settings::{
    DEFAULT_RAFT_TIMEOUT, DEFAULT_REDIS_POOL_SIZE, DEFAULT_REDIS_TIMEOUT, RaftStoreConfig,
    RedisConfig, RedisTopology, StoreConfig,
};

/// Identifies a gateway node as a lease holder.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct NodeId(String);

impl NodeId {
    /// A fresh random id (nodes are stateless; a restarted node is a new holder).
    pub fn random() -> Self {
        let mut b = [0u8; 8];
        rand::rng().fill_bytes(&mut b);
        Self(b.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.0)
    }
}

/// A monotonically increasing number handed out with each refresh-lease grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(pub u64);

/// What a `put` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// Stored and announced.
    Stored,
    /// Not stored: an entry at least as new is present.
    Stale,
    /// Not stored: the writer's fence is older than the newest granted.
    Fenced,
}

/// A change announced to subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// An entry was stored with this version.
    Stored {
        /// Which entry.
        key: TokenKey,
        /// Its new version.
        version: u64,
    },
    /// An entry was removed.
    Evicted {
        /// Which entry.
        key: TokenKey,
    },
    /// Events may have been lost (the backend's event feed broke and came back): re-read what
    /// you cache.
    Resync {
        /// The store itself lost data meanwhile (Redis came back empty): entries it no longer
        /// holds were lost, not evicted, and nodes write back the ones they still serve. When
        /// false, an entry the store no longer holds was evicted or expired and stays gone.
        lost: bool,
    },
}

/// What a [`TokenStore::lookup`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The entry (boxed: it dwarfs the other variant).
    Found(Box<SealedEntry>),
    /// No entry; whether the caller now holds the key's fill lease.
    Missing {
        /// The fill lease is the caller's.
        lease: bool,
    },
}

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached or timed out; worth retrying later.
    #[error("token store unavailable: {0}")]
    Unavailable(String),
    /// The backend holds data this node cannot read.
    #[error("token store data corrupt: {0}")]
    Corrupt(String),
    /// The backend refused the request as malformed or out of bounds; retrying will not help.
    #[error("token store refused the request: {0}")]
    Refused(String),
}

impl StoreError {
    /// [`StoreError::Unavailable`] with `e`'s description.
    pub fn unavailable(e: impl fmt::Display) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// A fleet-wide token store. See the module documentation for the contract.
pub trait TokenStore: Send + Sync + 'static {
    /// The entry under `key`, if present and not expired.
    fn get(
        &self,
        key: &TokenKey,
    ) -> impl Future<Output = Result<Option<SealedEntry>, StoreError>> + Send;

    /// Stores `entry` if it is newer than what is there and `fence` (if any) is current.
    fn put(
        &self,
        key: &TokenKey,
        entry: SealedEntry,
        fence: Option<FencingToken>,
    ) -> impl Future<Output = Result<PutOutcome, StoreError>> + Send;

    /// Removes the entry; with `version`, only if the stored entry has exactly that version (so a
    /// late eviction of an old token never removes its replacement). Returns whether it removed.
    fn evict(
        &self,
        key: &TokenKey,
        version: Option<u64>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The entry under `key` if present and not expired; otherwise takes the key's fill lease
    /// if free (or already `holder`'s), in one round trip where the backend allows.
    fn lookup(
        &self,
        key: &TokenKey,
        holder: &NodeId,
        ttl: Duration,
    ) -> impl Future<Output = Result<Lookup, StoreError>> + Send;

    /// [`TokenStore::put`] without a fence, then releases `holder`'s fill lease on `key`, in one
    /// round trip where the backend allows (the end of a fill).
    fn put_filled(
        &self,
        key: &TokenKey,
        entry: SealedEntry,
        holder: &NodeId,
    ) -> impl Future<Output = Result<PutOutcome, StoreError>> + Send;

    /// Puts off the next renewal of the entry under `key` until `until` (the refresh leader's
    /// backoff after a failed renewal; `fence` is its lease's). The entry's own `refresh_at` is
    /// left as sealed; [`TokenStore::due_for_refresh`] skips the entry until then.
    fn postpone(
        &self,
        key: &TokenKey,
        until: UnixMillis,
        fence: Option<FencingToken>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Takes the per-key fill lease (fleet-wide single flight) if free or already ours.
    fn try_fill_lease(
        &self,
        key: &TokenKey,
        holder: &NodeId,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Releases a fill lease we hold; a lease held by another is left alone.
    fn release_fill_lease(
        &self,
        key: &TokenKey,
        holder: &NodeId,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Takes or renews the refresh-leader lease. `Some(fence)` when `holder` now holds it.
    fn acquire_refresh_lease(
        &self,
        holder: &NodeId,
        ttl: Duration,
    ) -> impl Future<Output = Result<Option<FencingToken>, StoreError>> + Send;

    /// Gives the refresh lease up (on shutdown), so another node takes over without waiting.
    fn release_refresh_lease(
        &self,
        holder: &NodeId,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Keys whose `refresh_at` is at or before `now`, still valid, and used at or after
    /// `used_since`; at most `limit`, soonest first. An entry whose `refresh_at` is not before
    /// its `expires_at` is not renewable (a cached introspection result) and is never due.
    fn due_for_refresh(
        &self,
        now: UnixMillis,
        used_since: UnixMillis,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<TokenKey>, StoreError>> + Send;

    /// Records that entries were used (batched by each node), so the leader knows what is hot.
    fn touch(
        &self,
        uses: &[(TokenKey, UnixMillis)],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Change announcements. A lagging receiver may miss events and must then re-read.
    fn subscribe(&self) -> broadcast::Receiver<StoreEvent>;

    /// Records `key` until `until`; `true` only for the first caller while the record lasts.
    fn claim_once(
        &self,
        key: &TokenKey,
        until: UnixMillis,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Unexpired entries with keys after `after`, in key order, at most `limit` (operators'
    /// listings; not on any request path).
    fn list(
        &self,
        after: Option<TokenKey>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(TokenKey, SealedEntry)>, StoreError>> + Send;

    /// Makes a renewable entry due for refresh now (and counts it as used now), so the refresh
    /// leader renews it on its next pass. Whether there was such an entry.
    fn mark_due(&self, key: &TokenKey) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Who holds the refresh lease, if anyone.
    fn refresh_lease(&self) -> impl Future<Output = Result<Option<LeaseInfo>, StoreError>> + Send;

    /// Takes one request from the rate limit of `key` (a keyed hash of what is limited): `None`
    /// if it passes, or how long until one would.
    fn take_rate(
        &self,
        key: &TokenKey,
        limit: rate::RateLimit,
    ) -> impl Future<Output = Result<Option<Duration>, StoreError>> + Send;
}

/// The refresh lease as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LeaseInfo {
    /// The gateway node holding it.
    pub holder: String,
    /// Its fencing token.
    pub fence: u64,
    /// Milliseconds until it lapses unless renewed.
    pub expires_in_ms: u64,
}

/// The configured backend. An enum rather than a trait object: dispatch is a match, and the
/// backends' `async fn`s need no boxing.
pub enum Store {
    /// Node-local.
    Memory(MemoryStore),
    /// Redis.
    Redis(RedisStore),
    /// The Raft cache service.
    Raft(RaftStore),
}

impl Store {
    /// The backend's name, as spans and metrics label it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Memory(_) => "memory",
            Self::Redis(_) => "redis",
            Self::Raft(_) => "raft",
        }
    }

    /// Stores this node's own open `entry` under `key`: sealed under `sealer` and put (with
    /// `fence`), or, when `holder` is given, put releasing its fill lease. The memory store,
    /// being in this process, shares the entry with the L1 instead of holding a sealed copy.
    pub async fn put_entry(
        &self,
        key: &TokenKey,
        entry: &std::sync::Arc<crate::token::TokenEntry>,
        sealer: &crate::token::FleetKey,
        fence: Option<FencingToken>,
        holder: Option<&NodeId>,
    ) -> Result<PutOutcome, StoreError> {
        if let Self::Memory(m) = self {
            return Ok(m.put_open(key, std::sync::Arc::clone(entry), sealer, fence, holder));
        }
        let sealed = crate::token::seal::seal(sealer, key, entry);
        match holder {
            Some(h) => self.put_filled(key, sealed, h).await,
            None => self.put(key, sealed, fence).await,
        }
    }
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $body:expr) => {
        match $self {
            Store::Memory($s) => $body,
            Store::Redis($s) => $body,
            Store::Raft($s) => $body,
        }
    };
}

impl TokenStore for Store {
    async fn get(&self, key: &TokenKey) -> Result<Option<SealedEntry>, StoreError> {
        dispatch!(self, s => s.get(key).await)
    }
    async fn put(
        &self,
        key: &TokenKey,
        entry: SealedEntry,
        fence: Option<FencingToken>,
    ) -> Result<PutOutcome, StoreError> {
        dispatch!(self, s => s.put(key, entry, fence).await)
    }
    async fn evict(&self, key: &TokenKey, version: Option<u64>) -> Result<bool, StoreError> {
        dispatch!(self, s => s.evict(key, version).await)
    }
    async fn lookup(
        &self,
        key: &TokenKey,
        holder: &NodeId,
        ttl: Duration,
    ) -> Result<Lookup, StoreError> {
        dispatch!(self, s => s.lookup(key, holder, ttl).await)
    }
    async fn put_filled(
        &self,
        key: &TokenKey,
        entry: SealedEntry,
        holder: &NodeId,
    ) -> Result<PutOutcome, StoreError> {
        dispatch!(self, s => s.put_filled(key, entry, holder).await)
    }
    async fn postpone(
        &self,
        key: &TokenKey,
        until: UnixMillis,
        fence: Option<FencingToken>,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.postpone(key, until, fence).await)
    }
    async fn try_fill_lease(
        &self,
        key: &TokenKey,
        holder: &NodeId,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.try_fill_lease(key, holder, ttl).await)
    }
    async fn release_fill_lease(&self, key: &TokenKey, holder: &NodeId) -> Result<(), StoreError> {
        dispatch!(self, s => s.release_fill_lease(key, holder).await)
    }
    async fn acquire_refresh_lease(
        &self,
        holder: &NodeId,
        ttl: Duration,
    ) -> Result<Option<FencingToken>, StoreError> {
        dispatch!(self, s => s.acquire_refresh_lease(holder, ttl).await)
    }
    async fn release_refresh_lease(&self, holder: &NodeId) -> Result<(), StoreError> {
        dispatch!(self, s => s.release_refresh_lease(holder).await)
    }
    async fn due_for_refresh(
        &self,
        now: UnixMillis,
        used_since: UnixMillis,
        limit: usize,
    ) -> Result<Vec<TokenKey>, StoreError> {
        dispatch!(self, s => s.due_for_refresh(now, used_since, limit).await)
    }
    async fn touch(&self, uses: &[(TokenKey, UnixMillis)]) -> Result<(), StoreError> {
        dispatch!(self, s => s.touch(uses).await)
    }
    fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        dispatch!(self, s => s.subscribe())
    }
    async fn claim_once(&self, key: &TokenKey, until: UnixMillis) -> Result<bool, StoreError> {
        dispatch!(self, s => s.claim_once(key, until).await)
    }
    async fn take_rate(
        &self,
        key: &TokenKey,
        limit: rate::RateLimit,
    ) -> Result<Option<Duration>, StoreError> {
        dispatch!(self, s => s.take_rate(key, limit).await)
    }
    async fn list(
        &self,
        after: Option<TokenKey>,
        limit: usize,
    ) -> Result<Vec<(TokenKey, SealedEntry)>, StoreError> {
        dispatch!(self, s => s.list(after, limit).await)
    }
    async fn mark_due(&self, key: &TokenKey) -> Result<bool, StoreError> {
        dispatch!(self, s => s.mark_due(key).await)
    }
    async fn refresh_lease(&self) -> Result<Option<LeaseInfo>, StoreError> {
        dispatch!(self, s => s.refresh_lease().await)
    }
}
