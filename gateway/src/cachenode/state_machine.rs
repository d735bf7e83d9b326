//! openraft's state machine over [`CacheState`]: applies committed entries, announces changes
//! to watchers, and builds, stores and installs snapshots.
//!
//! The state lives in memory; the latest snapshot is a file in `<data-dir>/snapshots/` (see
//! [`super::snapshot`]), and the node's redb file records which one and what it covers. After a
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
use super::snapshot::{SnapshotFile, Snapshots};
use super::state::{CacheState, Change, Outcome};

const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
/// The current snapshot: its metadata and file name ([`Current`], JSON).
const CURRENT: &str = "current_file";
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

/// The current snapshot, as the database records it.
#[derive(Serialize, Deserialize)]
struct Current {
    meta: SnapshotMeta<u64, BasicNode>,
    /// Its file in the snapshot directory.
    file: String,
}

/// The state machine.
pub struct StateMachine {
    shared: Arc<Shared>,
    db: Arc<Database>,
    files: Snapshots,
    snapshots_built: u64,
}

impl StateMachine {
    /// Opens the state machine, restoring the current snapshot if there is one (and removing
    /// every other file from the snapshot directory).
    pub fn open(db: Arc<Database>, files: Snapshots) -> Result<(Self, Arc<Shared>), String> {
        let tx = db.begin_write().map_err(|e| e.to_string())?;
        tx.open_table(SNAPSHOT).map_err(|e| e.to_string())?;
        tx.commit().map_err(|e| e.to_string())?;
        let current = read_current(&db).map_err(|e| e.to_string())?;
        files.remove_all_but(current.as_ref().map(|c| c.file.as_str()));
        let applied = match current {
            Some(c) => {
                let file = files
                    .open_file(&c.file)
                    .map_err(|e| format!("snapshot file {}: {e}", c.file))?;
                let cache = super::snapshot::read(&file.file)
                    .map_err(|e| format!("snapshot file {}: {e}", c.file))?;
                Applied {
                    cache,
                    last_applied: c.meta.last_log_id,
                    membership: c.meta.last_membership,
                }
            }
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
                files,
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

fn read_current(db: &Database) -> Result<Option<Current>, redb::Error> {
    let tx = db.begin_read()?;
    let table = tx.open_table(SNAPSHOT)?;
    let Some(bytes) = table.get(CURRENT)? else {
        return Ok(None);
    };
    serde_json::from_slice(bytes.value())
        .map(Some)
        .map_err(|e| redb::Error::Corrupted(format!("snapshot record: {e}")))
}

/// Makes `current` (its file already published in `files`) the current snapshot and removes
/// the other files, unless the current one covers more of the log (a snapshot built from the
/// state before an install finished later): then `current`'s file goes. Callers hold
/// [`Snapshots::exclusive`].
fn make_current(db: &Database, files: &Snapshots, current: &Current) -> Result<(), redb::Error> {
    if read_current(db)?.is_some_and(|c| c.meta.last_log_id > current.meta.last_log_id) {
        files.remove(&current.file);
        return Ok(());
    }
    let bytes = serde_json::to_vec(current).expect("snapshot records serialize");
    let tx = db.begin_write()?;
    tx.open_table(SNAPSHOT)?.insert(CURRENT, bytes.as_slice())?;
    tx.commit()?;
    files.remove_all_but(Some(&current.file));
    Ok(())
}

/// A file name for the snapshot `meta` describes (the node's own: the snapshot id comes from
/// whichever leader built it and names no file).
fn file_name(meta: &SnapshotMeta<u64, BasicNode>, n: u64) -> String {
    let index = meta.last_log_id.map_or(0, |l| l.index);
    format!(
        "snapshot-{index:020}-{n}-{:08x}.snap",
        rand::random::<u32>()
    )
}

fn io_error(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Builds snapshots from the shared state.
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
    db: Arc<Database>,
    files: Snapshots,
    n: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StoreResult<Snapshot<TypeConfig>> {
        // A clone of the persistent maps, in O(1) under the lock; the encoding runs without it.
        let (cache, last_log_id, last_membership) = self
            .shared
            .read(|a| (a.cache.clone(), a.last_applied, a.membership.clone()));
        let snapshot_id = match last_log_id {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, self.n),
            None => format!("empty-{}", self.n),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        let current = Current {
            file: file_name(&meta, self.n),
            meta,
        };
        let (db, files) = (Arc::clone(&self.db), self.files.clone());
        let started = std::time::Instant::now();
        let (current, file) = tokio::task::spawn_blocking(move || {
            let _one_at_a_time = files.exclusive();
            let file = files.create(&current.file, &cache)?;
            make_current(&db, &files, &current).map_err(io_error)?;
            Ok::<_, std::io::Error>((current, file))
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, &e))?
        .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        tracing::info!(
            snapshot = %current.meta.snapshot_id,
            bytes = file.len,
            took_ms = started.elapsed().as_millis() as u64,
            "snapshot built"
        );
        Ok(Snapshot {
            meta: current.meta,
            snapshot: Box::new(file),
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
            files: self.files.clone(),
            n: self.snapshots_built,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StoreResult<Box<SnapshotFile>> {
        // Snapshots arrive whole through `Raft::install_full_snapshot` (see the Raft transport
        // service, which streams them to a temporary file); this is openraft's chunked path.
        let tmp = self
            .files
            .temporary()
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let (file, path) = tmp.into_parts();
        SnapshotFile::pending(file, path)
            .map(Box::new)
            .map_err(|e| StorageIOError::write_snapshot(None, &e).into())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<SnapshotFile>,
    ) -> StoreResult<()> {
        let signature = meta.signature();
        let current = Current {
            file: file_name(meta, 0),
            meta: meta.clone(),
        };
        let (db, files) = (Arc::clone(&self.db), self.files.clone());
        let mut snapshot = *snapshot;
        // Read in full (and so checked) before it replaces anything; then made durable and
        // current, and only then swapped in.
        let cache = tokio::task::spawn_blocking(move || {
            let cache = super::snapshot::read(&snapshot.file).map_err(io_error)?;
            let _one_at_a_time = files.exclusive();
            files.publish(&mut snapshot, &current.file)?;
            make_current(&db, &files, &current).map_err(io_error)?;
            Ok::<_, std::io::Error>(cache)
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(Some(signature.clone()), &e))?
        .map_err(|e| StorageIOError::write_snapshot(Some(signature.clone()), &e))?;
        let restored = Applied {
            cache,
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
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
        let (db, files) = (Arc::clone(&self.db), self.files.clone());
        let current = tokio::task::spawn_blocking(move || {
            // Under the publishing lock: the file read as current is not replaced (and removed)
            // before it is open.
            let _one_at_a_time = files.exclusive();
            let Some(current) = read_current(&db).map_err(io_error)? else {
                return Ok(None);
            };
            let file = files.open_file(&current.file)?;
            Ok::<_, std::io::Error>(Some((current.meta, file)))
        })
        .await
        .map_err(|e| StorageIOError::read_snapshot(None, &e))?
        .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(current.map(|(meta, file)| Snapshot {
            meta,
            snapshot: Box::new(file),
        }))
    }
}
