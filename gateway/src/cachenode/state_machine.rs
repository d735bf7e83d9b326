//! openraft's state machine over [`CacheState`]: applies committed entries, announces changes
//! to watchers, and builds, stores and installs snapshots.
//!
//! The state lives in memory; the latest snapshot is kept in the node's redb file. After a
//! restart the state is the snapshot, and openraft re-applies the committed log after it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::TypeConfig;
use super::state::{CacheState, Change, Outcome};

const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
const CURRENT: &str = "current";
/// Changes kept for watchers that reconnect and resume from an index.
const RECENT_CHANGES: usize = 4096;
/// Watchers further behind than this many changes are told to resync.
const WATCH_BUFFER: usize = 4096;

type StoreResult<T> = Result<T, StorageError<u64>>;

/// What watchers receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchItem {
    /// A change applied at a log index.
    Change(u64, Change),
    /// The state was replaced (a snapshot was installed): re-read everything.
    Resync(u64),
}

/// The applied state, readable by the gRPC services.
#[derive(Debug, Default, Clone)]
pub struct Applied {
    /// The cache.
    pub cache: CacheState,
    /// The last applied log id.
    pub last_applied: Option<LogId<u64>>,
    /// The membership as of `last_applied`.
    pub membership: StoredMembership<u64, BasicNode>,
}

/// State shared between the state machine and the services that read it.
pub struct Shared {
    applied: RwLock<Applied>,
    changes: broadcast::Sender<WatchItem>,
    recent: Mutex<VecDeque<(u64, Change)>>,
}

impl Shared {
    /// Reads the applied state.
    pub fn read<T>(&self, f: impl FnOnce(&Applied) -> T) -> T {
        f(&self.applied.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// New changes, and the recent ones after `after_index` when they are all still known
    /// (`None`: some are gone, the watcher must resync).
    pub fn watch(
        &self,
        after_index: u64,
    ) -> (broadcast::Receiver<WatchItem>, Option<Vec<(u64, Change)>>) {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.changes.subscribe();
        let last_applied = self.read(|a| a.last_applied.map_or(0, |l| l.index));
        if after_index == 0 || after_index >= last_applied {
            return (rx, Some(Vec::new()));
        }
        let covered = recent.front().is_some_and(|(i, _)| *i <= after_index + 1);
        let replay = covered.then(|| {
            recent
                .iter()
                .filter(|(i, _)| *i > after_index)
                .cloned()
                .collect()
        });
        (rx, replay)
    }
}

/// The persisted form of a snapshot.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, BasicNode>,
    data: Vec<u8>,
}

/// The state machine.
pub struct StateMachine {
    shared: Arc<Shared>,
    db: Arc<Database>,
    snapshots_built: u64,
}

impl StateMachine {
    /// Opens the state machine, restoring the stored snapshot if there is one.
    pub fn open(db: Arc<Database>) -> Result<(Self, Arc<Shared>), String> {
        let tx = db.begin_write().map_err(|e| e.to_string())?;
        tx.open_table(SNAPSHOT).map_err(|e| e.to_string())?;
        tx.commit().map_err(|e| e.to_string())?;
        let applied = match read_snapshot(&db).map_err(|e| e.to_string())? {
            Some(s) => restore(&s).map_err(|e| format!("stored snapshot: {e}"))?,
            None => Applied::default(),
        };
        let shared = Arc::new(Shared {
            applied: RwLock::new(applied),
            changes: broadcast::channel(WATCH_BUFFER).0,
            recent: Mutex::new(VecDeque::new()),
        });
        Ok((
            Self {
                shared: Arc::clone(&shared),
                db,
                snapshots_built: 0,
            },
            shared,
        ))
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Applied> {
        self.shared
            .applied
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }
}

fn read_snapshot(db: &Database) -> Result<Option<StoredSnapshot>, redb::Error> {
    let tx = db.begin_read()?;
    let table = tx.open_table(SNAPSHOT)?;
    let Some(bytes) = table.get(CURRENT)? else {
        return Ok(None);
    };
    serde_json::from_slice(bytes.value())
        .map(Some)
        .map_err(|e| redb::Error::Corrupted(format!("snapshot: {e}")))
}

fn write_snapshot(db: &Database, s: &StoredSnapshot) -> Result<(), redb::Error> {
    let bytes = serde_json::to_vec(s).expect("snapshots serialize");
    let tx = db.begin_write()?;
    tx.open_table(SNAPSHOT)?.insert(CURRENT, bytes.as_slice())?;
    tx.commit()?;
    Ok(())
}

fn restore(s: &StoredSnapshot) -> Result<Applied, serde_json::Error> {
    Ok(Applied {
        cache: serde_json::from_slice(&s.data)?,
        last_applied: s.meta.last_log_id,
        membership: s.meta.last_membership.clone(),
    })
}

/// Builds snapshots from the shared state.
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
    db: Arc<Database>,
    n: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StoreResult<Snapshot<TypeConfig>> {
        let (data, last_log_id, last_membership) = self.shared.read(|a| {
            (
                serde_json::to_vec(&a.cache).expect("the cache serializes"),
                a.last_applied,
                a.membership.clone(),
            )
        });
        let snapshot_id = match last_log_id {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, self.n),
            None => format!("empty-{}", self.n),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        let stored = StoredSnapshot { meta, data };
        let db = Arc::clone(&self.db);
        let stored =
            tokio::task::spawn_blocking(move || write_snapshot(&db, &stored).map(|()| stored))
                .await
                .map_err(|e| StorageIOError::write_snapshot(None, &e))?
                .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        tracing::info!(snapshot = %stored.meta.snapshot_id, "snapshot built");
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(stored.data),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> StoreResult<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>)> {
        Ok(self.shared.read(|a| (a.last_applied, a.membership.clone())))
    }

    async fn apply<I>(&mut self, entries: I) -> StoreResult<Vec<Outcome>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut outcomes = Vec::new();
        let mut changes = Vec::new();
        {
            let mut applied = self.write();
            for entry in entries {
                let index = entry.log_id.index;
                applied.last_applied = Some(entry.log_id);
                let outcome = match entry.payload {
                    EntryPayload::Blank => Outcome::Done,
                    EntryPayload::Normal(stamped) => {
                        let mut these = Vec::new();
                        let _span = stamped.trace.as_deref().map(|tp| {
                            let span = tracing::info_span!("raft.apply", raft.log_index = index);
                            crate::telemetry::otel::continue_from_traceparent(&span, tp);
                            span.entered()
                        });
                        let o = applied.cache.apply(index, stamped, &mut these);
                        changes.extend(these.into_iter().map(|c| (index, c)));
                        o
                    }
                    EntryPayload::Membership(m) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), m);
                        Outcome::Done
                    }
                };
                outcomes.push(outcome);
            }
        }
        if !changes.is_empty() {
            let mut recent = self.shared.recent.lock().unwrap_or_else(|p| p.into_inner());
            for (index, change) in changes {
                recent.push_back((index, change.clone()));
                // No watcher is fine.
                let _ = self.shared.changes.send(WatchItem::Change(index, change));
            }
            while recent.len() > RECENT_CHANGES {
                recent.pop_front();
            }
        }
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshots_built += 1;
        SnapshotBuilder {
            shared: Arc::clone(&self.shared),
            db: Arc::clone(&self.db),
            n: self.snapshots_built,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StoreResult<Box<Vec<u8>>> {
        Ok(Box::default())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Vec<u8>>,
    ) -> StoreResult<()> {
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: *snapshot,
        };
        let restored = restore(&stored)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || write_snapshot(&db, &stored))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let index = restored.last_applied.map_or(0, |l| l.index);
        *self.write() = restored;
        self.shared
            .recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let _ = self.shared.changes.send(WatchItem::Resync(index));
        tracing::info!(snapshot = %meta.snapshot_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StoreResult<Option<Snapshot<TypeConfig>>> {
        let db = Arc::clone(&self.db);
        let stored = tokio::task::spawn_blocking(move || read_snapshot(&db))
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(s.data),
        }))
    }
}
