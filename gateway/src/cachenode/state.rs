//! The replicated cache: the state every cache node holds, and the commands that change it.
//!
//! [`CacheState::apply`] is the whole state machine. It is a pure function of the state, the
//! command, the command's log index and the time the leader stamped on the command: no replica
//! reads its own clock here, so every replica expires entries and leases at the same point of
//! the log and ends in the same state.
//!
//! The semantics are the [`crate::store::TokenStore`] contract's: newest version wins, a put
//! carrying a fence older than the newest granted one is refused, the refresh lease is exclusive
//! and its fence is the log index of the command that granted it (so fences only grow), claims
//! are granted once. (Fill leases are not here: the leader holds them in memory, see
//! [`super::context::FillLeases`].)
//!
//! The maps are persistent (`imbl`): cloning the state is O(1) and shares its nodes, so a
//! snapshot or a scan of the whole cache works on a clone taken in a moment under the lock,
//! while the state machine goes on applying.

use std::sync::Arc;

use imbl::OrdMap;
use serde::{Deserialize, Serialize};

use crate::token::{SealedEntry, TokenKey, UnixMillis};

/// Expired entries and lapsed leases are swept at most this often (in leader time).
const SWEEP_EVERY_MS: u64 = 1_000;

/// A change to the cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// Store an entry if newer (and, with a fence, if the fence is current).
    Put {
        /// Which entry.
        key: TokenKey,
        /// The sealed entry (boxed: it dwarfs every other command).
        entry: Box<SealedEntry>,
        /// The writer's refresh-lease fence.
        fence: Option<u64>,
    },
    /// Remove an entry, or only the given version of it.
    Evict {
        /// Which entry.
        key: TokenKey,
        /// Only this version.
        version: Option<u64>,
    },
    /// Remove every entry.
    EvictAll,
    /// Take or renew the refresh-leader lease.
    AcquireRefreshLease {
        /// The gateway node asking.
        holder: String,
        /// Lease lifetime.
        ttl_ms: u64,
    },
    /// Give the refresh lease up.
    ReleaseRefreshLease {
        /// The gateway node releasing.
        holder: String,
    },
    /// Record entry uses.
    Touch {
        /// Keys and when they were used.
        uses: Vec<(TokenKey, UnixMillis)>,
    },
    /// Record a key once until a time.
    ClaimOnce {
        /// Which key.
        key: TokenKey,
        /// Until when.
        until: UnixMillis,
    },
    /// Make a renewable entry due now, and count it as used now.
    MarkDue {
        /// Which entry.
        key: TokenKey,
    },
    /// Put off the next renewal of an entry until a time (the refresh leader's backoff after a
    /// failed renewal), if the fence is current.
    Postpone {
        /// Which entry.
        key: TokenKey,
        /// Not before then.
        until: UnixMillis,
        /// The refresh leader's fence.
        fence: Option<u64>,
    },
    /// Drop the least recently used entries past `max_entries` (the leader proposes it when
    /// the cache has grown over the node's bound).
    Trim {
        /// Entries kept at most.
        max_entries: u64,
    },
    /// Puts proposed together (group commit): applied in order, answered one by one. Only
    /// puts are batched: every command of a batch shares its log index, and a lease's fence
    /// must be unique to the command that granted it.
    PutBatch(Vec<Command>),
}

/// A command with the leader's clock reading when it was proposed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stamped {
    /// Leader time, Unix milliseconds.
    pub now: UnixMillis,
    /// The command.
    pub command: Command,
    /// The proposing span's W3C `traceparent`, when that trace is recorded: each replica's
    /// apply joins it. Not state: applying ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

/// What applying a command answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Outcome {
    /// Nothing to say (membership entries, blank entries, releases).
    #[default]
    Done,
    /// A put was stored.
    Stored,
    /// A put was not stored: an entry at least as new is present.
    Stale,
    /// A put was refused: its fence is older than the newest granted.
    Fenced,
    /// Yes or no (evictions, fill leases, claims).
    Flag(bool),
    /// The refresh lease: its fence when granted to the asker.
    Lease(Option<u64>),
    /// How many entries a bulk eviction removed.
    Count(u64),
    /// The outcomes of a [`Command::PutBatch`], in order.
    Batch(Vec<Outcome>),
}

/// A change announced to watchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// An entry was stored with this version.
    Stored(TokenKey, u64),
    /// An entry was removed.
    Evicted(TokenKey),
}

/// The refresh-leader lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshLease {
    /// The gateway node holding it.
    pub holder: String,
    /// When it lapses (leader time).
    pub until: UnixMillis,
    /// The log index that granted it.
    pub fence: u64,
}

/// The replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheState {
    /// Boxed behind an `Arc`: a tree node holds 40-byte slots rather than whole entries, so a
    /// node copied on write (after a snapshot's clone) is small, and so is the tree's slack.
    pub(super) entries: OrdMap<TokenKey, Arc<SealedEntry>>,
    pub(super) refresh_lease: Option<RefreshLease>,
    /// The newest fence granted; puts with an older one are refused.
    pub(super) max_fence: u64,
    pub(super) claims: OrdMap<TokenKey, UnixMillis>,
    /// Leader time of the last sweep.
    pub(super) swept_at: UnixMillis,
}

impl CacheState {
    /// Applies `command`, stamped `now`, at log index `index`; changes go to `changes`.
    pub fn apply(&mut self, index: u64, stamped: Stamped, changes: &mut Vec<Change>) -> Outcome {
        let now = stamped.now;
        if now >= self.swept_at + SWEEP_EVERY_MS {
            self.sweep(now);
        }
        match stamped.command {
            Command::PutBatch(puts) => Outcome::Batch(
                puts.into_iter()
                    .map(|command| match command {
                        Command::Put { .. } => self.apply(
                            index,
                            Stamped {
                                now,
                                command,
                                trace: None,
                            },
                            changes,
                        ),
                        // Never proposed (see the variant's documentation).
                        _ => Outcome::Done,
                    })
                    .collect(),
            ),
            Command::Put { key, entry, fence } => {
                if fence.is_some_and(|f| f < self.max_fence) {
                    return Outcome::Fenced;
                }
                let version = entry.meta.version;
                if self
                    .entries
                    .get(&key)
                    .is_some_and(|cur| cur.meta.version >= version && cur.meta.expires_at > now)
                {
                    return Outcome::Stale;
                }
                self.entries.insert(key, Arc::new(*entry));
                changes.push(Change::Stored(key, version));
                Outcome::Stored
            }
            Command::Evict { key, version } => {
                let matches = self
                    .entries
                    .get(&key)
                    .is_some_and(|cur| version.is_none_or(|v| v == cur.meta.version));
                if matches {
                    self.entries.remove(&key);
                    changes.push(Change::Evicted(key));
                }
                Outcome::Flag(matches)
            }
            Command::EvictAll => {
                let removed = std::mem::take(&mut self.entries);
                changes.extend(removed.keys().map(|k| Change::Evicted(*k)));
                Outcome::Count(removed.len() as u64)
            }
            Command::AcquireRefreshLease { holder, ttl_ms } => {
                let lease = match &self.refresh_lease {
                    Some(l) if l.holder == holder && l.until > now => RefreshLease {
                        until: now.saturating_add(ttl_ms),
                        ..l.clone()
                    },
                    Some(l) if l.until > now => return Outcome::Lease(None),
                    _ => {
                        self.max_fence = index;
                        RefreshLease {
                            holder,
                            until: now.saturating_add(ttl_ms),
                            fence: index,
                        }
                    }
                };
                let fence = lease.fence;
                self.refresh_lease = Some(lease);
                Outcome::Lease(Some(fence))
            }
            Command::ReleaseRefreshLease { holder } => {
                if self
                    .refresh_lease
                    .as_ref()
                    .is_some_and(|l| l.holder == holder)
                {
                    self.refresh_lease = None;
                }
                Outcome::Done
            }
            Command::Touch { uses } => {
                for (key, at) in uses {
                    if let Some(e) = self.entries.get_mut(&key)
                        && e.meta.last_used < at
                    {
                        Arc::make_mut(e).meta.last_used = at;
                    }
                }
                Outcome::Done
            }
            Command::MarkDue { key } => match self.entries.get_mut(&key).map(Arc::make_mut) {
                Some(e) if e.meta.expires_at > now && e.meta.refresh_at < e.meta.expires_at => {
                    e.marked_due = Some(now);
                    e.retry_at = None;
                    e.meta.last_used = e.meta.last_used.max(now);
                    Outcome::Flag(true)
                }
                _ => Outcome::Flag(false),
            },
            Command::Trim { max_entries } => {
                let over = self
                    .entries
                    .len()
                    .saturating_sub(usize::try_from(max_entries).unwrap_or(usize::MAX));
                let lru = crate::token::least_recently_used(
                    self.entries.iter().map(|(k, e)| (*k, e.meta.last_used)),
                    over,
                );
                for k in &lru {
                    self.entries.remove(k);
                    changes.push(Change::Evicted(*k));
                }
                Outcome::Count(lru.len() as u64)
            }
            Command::Postpone { key, until, fence } => {
                if fence.is_some_and(|f| f < self.max_fence) {
                    return Outcome::Fenced;
                }
                match self.entries.get_mut(&key).map(Arc::make_mut) {
                    Some(e) => {
                        e.retry_at = Some(until);
                        e.marked_due = None;
                        Outcome::Flag(true)
                    }
                    None => Outcome::Flag(false),
                }
            }
            Command::ClaimOnce { key, until } => match self.claims.get(&key) {
                Some(lapses) if *lapses > now => Outcome::Flag(false),
                _ => {
                    self.claims.insert(key, until);
                    Outcome::Flag(true)
                }
            },
        }
    }

    /// Drops expired entries and lapsed claims (as of leader time `now`).
    fn sweep(&mut self, now: UnixMillis) {
        let expired: Vec<TokenKey> = self
            .entries
            .iter()
            .filter(|(_, e)| e.meta.expires_at <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in &expired {
            self.entries.remove(k);
        }
        let lapsed: Vec<TokenKey> = self
            .claims
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in &lapsed {
            self.claims.remove(k);
        }
        self.swept_at = now;
    }

    /// The entry under `key`, unless expired at `now`.
    pub fn get(&self, key: &TokenKey, now: UnixMillis) -> Option<&SealedEntry> {
        self.entries
            .get(key)
            .map(|e| &**e)
            .filter(|e| e.meta.expires_at > now)
    }

    /// Unexpired entries after `after` in key order, at most `limit`.
    pub fn list(
        &self,
        after: Option<TokenKey>,
        limit: usize,
        now: UnixMillis,
    ) -> Vec<(TokenKey, Arc<SealedEntry>)> {
        use std::ops::Bound;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.entries
            .range::<_, TokenKey>((start, Bound::Unbounded))
            .filter(|(_, e)| e.meta.expires_at > now)
            .take(limit)
            .map(|(k, e)| (*k, Arc::clone(e)))
            .collect()
    }

    /// Keys due for refresh at `now` and used since `used_since`, soonest first.
    pub fn due(&self, now: UnixMillis, used_since: UnixMillis, limit: usize) -> Vec<TokenKey> {
        // A bounded heap of the soonest: the scan allocates `limit` items, not one per due entry.
        let mut soonest = std::collections::BinaryHeap::with_capacity(limit + 1);
        let candidates = self.entries.iter().filter(|(_, e)| {
            e.meta.expires_at > now
                && e.refresh_at() <= now
                && e.meta.refresh_at < e.meta.expires_at
                && e.meta.last_used >= used_since
        });
        for (k, e) in candidates {
            soonest.push((e.refresh_at(), *k));
            if soonest.len() > limit {
                soonest.pop();
            }
        }
        soonest
            .into_sorted_vec()
            .into_iter()
            .map(|(_, k)| k)
            .collect()
    }

    /// How many entries are held (expired ones included until swept).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many one-time claims are held (lapsed ones included until swept).
    pub fn claims(&self) -> usize {
        self.claims.len()
    }

    /// The refresh lease, if any.
    pub fn refresh_lease(&self) -> Option<&RefreshLease> {
        self.refresh_lease.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::entry;

    fn key(n: u8) -> TokenKey {
        TokenKey::from_bytes([n; 32])
    }

    fn at(now: UnixMillis, command: Command) -> Stamped {
        Stamped {
            now,
            command,
            trace: None,
        }
    }

    #[test]
    fn replicas_applying_the_same_log_end_in_the_same_state() {
        let now = entry(1, 0, 0).meta.issued_at;
        let log = [
            at(
                now,
                Command::AcquireRefreshLease {
                    holder: "a".into(),
                    ttl_ms: 100,
                },
            ),
            at(
                now,
                Command::Put {
                    key: key(1),
                    entry: Box::new(entry(1, 60_000, 120_000)),
                    fence: Some(1),
                },
            ),
            at(
                now + 50,
                Command::AcquireRefreshLease {
                    holder: "b".into(),
                    ttl_ms: 100,
                },
            ),
            // Leader time passes a's lease: b takes it at index 4, and a's fence is stale.
            at(
                now + 150,
                Command::AcquireRefreshLease {
                    holder: "b".into(),
                    ttl_ms: 100,
                },
            ),
            at(
                now + 160,
                Command::Put {
                    key: key(2),
                    entry: Box::new(entry(1, 60_000, 120_000)),
                    fence: Some(1),
                },
            ),
            at(
                now + 170,
                Command::Put {
                    key: key(2),
                    entry: Box::new(entry(1, 60_000, 120_000)),
                    fence: Some(4),
                },
            ),
            at(
                now + 180,
                Command::Evict {
                    key: key(1),
                    version: Some(9),
                },
            ),
        ];
        let run = || {
            let mut s = CacheState::default();
            let mut changes = Vec::new();
            let outcomes: Vec<Outcome> = log
                .iter()
                .enumerate()
                .map(|(i, c)| s.apply(i as u64 + 1, c.clone(), &mut changes))
                .collect();
            (s, outcomes, changes)
        };
        let (a, outcomes, changes) = run();
        assert_eq!(
            outcomes,
            [
                Outcome::Lease(Some(1)),
                Outcome::Stored,
                Outcome::Lease(None),
                Outcome::Lease(Some(4)),
                Outcome::Fenced,
                Outcome::Stored,
                Outcome::Flag(false),
            ]
        );
        assert_eq!(
            changes,
            [Change::Stored(key(1), 1), Change::Stored(key(2), 1)]
        );
        assert_eq!(run().0, a, "a second replica ends identically");
    }

    #[test]
    fn a_put_batch_applies_in_order_and_answers_each_put() {
        let mut s = CacheState::default();
        let mut changes = Vec::new();
        let now = entry(1, 0, 0).meta.issued_at;
        let lease = Command::AcquireRefreshLease {
            holder: "a".into(),
            ttl_ms: 60_000,
        };
        assert_eq!(
            s.apply(7, at(now, lease), &mut changes),
            Outcome::Lease(Some(7))
        );
        let put = |n: u8, v: u64, fence| Command::Put {
            key: key(n),
            entry: Box::new(entry(v, 60_000, 120_000)),
            fence,
        };
        let batch = Command::PutBatch(vec![
            put(1, 2, None),
            put(1, 1, None),
            put(2, 1, Some(3)),
            put(2, 1, Some(7)),
            lease_in_batch(),
        ]);
        assert_eq!(
            s.apply(8, at(now, batch), &mut changes),
            Outcome::Batch(vec![
                Outcome::Stored,
                Outcome::Stale,
                Outcome::Fenced,
                Outcome::Stored,
                Outcome::Done,
            ])
        );
        assert_eq!(
            changes,
            [Change::Stored(key(1), 2), Change::Stored(key(2), 1)]
        );
        assert_eq!(
            s.refresh_lease().unwrap().fence,
            7,
            "no lease is granted inside a batch"
        );
    }

    fn lease_in_batch() -> Command {
        Command::AcquireRefreshLease {
            holder: "b".into(),
            ttl_ms: 1,
        }
    }

    #[test]
    fn expiry_follows_leader_time_not_the_replica_clock() {
        let e = entry(1, 100, 200);
        let expires = e.meta.expires_at;
        let mut s = CacheState::default();
        let mut changes = Vec::new();
        s.apply(
            1,
            at(
                expires - 150,
                Command::Put {
                    key: key(1),
                    entry: Box::new(e),
                    fence: None,
                },
            ),
            &mut changes,
        );
        // A lower version is stale while the entry lives, and stored once it has expired.
        let older = entry(0, 60_000, 120_000);
        let put = |now| {
            at(
                now,
                Command::Put {
                    key: key(1),
                    entry: Box::new(older.clone()),
                    fence: None,
                },
            )
        };
        assert_eq!(s.apply(2, put(expires - 1), &mut changes), Outcome::Stale);
        assert_eq!(s.apply(3, put(expires), &mut changes), Outcome::Stored);
    }

    #[test]
    fn a_trim_drops_the_least_recently_used_entries_past_the_bound() {
        let mut s = CacheState::default();
        let mut changes = Vec::new();
        let now = entry(1, 0, 0).meta.issued_at;
        for (n, used) in [(1u8, 30u64), (2, 10), (3, 40), (4, 20)] {
            let mut e = entry(1, 60_000, 120_000);
            e.meta.last_used = now - 1_000 + used;
            let put = Command::Put {
                key: key(n),
                entry: Box::new(e),
                fence: None,
            };
            s.apply(u64::from(n), at(now, put), &mut changes);
        }
        changes.clear();
        let trim = Command::Trim { max_entries: 2 };
        assert_eq!(s.apply(5, at(now, trim), &mut changes), Outcome::Count(2));
        assert_eq!(s.len(), 2);
        assert!(s.get(&key(1), now).is_some() && s.get(&key(3), now).is_some());
        changes.sort_by_key(|c| format!("{c:?}"));
        assert_eq!(changes, [Change::Evicted(key(2)), Change::Evicted(key(4))]);
        let trim = Command::Trim { max_entries: 2 };
        assert_eq!(s.apply(6, at(now, trim), &mut changes), Outcome::Count(0));
    }
}
