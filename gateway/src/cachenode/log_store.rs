//! The Raft log and vote, durable in a redb file: every append and every vote is committed
//! (fsync'd) before openraft is told it is stored, so an acknowledged write survives a crash of
//! the whole cluster.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::TypeConfig;

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

type StoreResult<T> = Result<T, StorageError<u64>>;

/// The log store; clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    /// Opens the store in `db`, creating its tables.
    pub fn open(db: Arc<Database>) -> Result<Self, redb::Error> {
        let tx = db.begin_write()?;
        tx.open_table(LOGS)?;
        tx.open_table(META)?;
        tx.commit()?;
        Ok(Self { db })
    }

    /// Runs blocking database work off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, redb::Error> + Send + 'static,
        wrap: fn(&redb::Error) -> StorageIOError<u64>,
    ) -> StoreResult<T> {
        let db = Arc::clone(&self.db);
        match tokio::task::spawn_blocking(move || work(&db)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(wrap(&e).into()),
            Err(join) => Err(StorageIOError::write(&join).into()),
        }
    }

    fn read_meta<T: DeserializeOwned>(db: &Database, name: &str) -> Result<Option<T>, redb::Error> {
        let tx = db.begin_read()?;
        let table = tx.open_table(META)?;
        let Some(v) = table.get(name)? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| redb::Error::Corrupted(format!("raft meta {name}: {e}")))
    }

    /// Writes one metadata value; with `durable`, fsync'd before returning.
    async fn write_meta<T: Serialize>(
        &self,
        name: &'static str,
        value: &T,
        durable: bool,
        wrap: fn(&redb::Error) -> StorageIOError<u64>,
    ) -> StoreResult<()> {
        let bytes = serde_json::to_vec(value).expect("raft metadata serializes");
        self.blocking(
            move |db| {
                let mut tx = db.begin_write()?;
                if !durable {
                    tx.set_durability(Durability::None)
                        .map_err(|e| redb::Error::Corrupted(e.to_string()))?;
                }
                tx.open_table(META)?.insert(name, bytes.as_slice())?;
                tx.commit()?;
                Ok(())
            },
            wrap,
        )
        .await
    }
}

fn decode(bytes: &[u8]) -> Result<Entry<TypeConfig>, redb::Error> {
    serde_json::from_slice(bytes)
        .map_err(|e| redb::Error::Corrupted(format!("raft log entry: {e}")))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StoreResult<Vec<Entry<TypeConfig>>> {
        let (start, end) = (range.start_bound().cloned(), range.end_bound().cloned());
        self.blocking(
            move |db| {
                let tx = db.begin_read()?;
                let table = tx.open_table(LOGS)?;
                table
                    .range::<u64>((start, end))?
                    .map(|item| decode(item?.1.value()))
                    .collect()
            },
            |e| StorageIOError::read_logs(e),
        )
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StoreResult<LogState<TypeConfig>> {
        self.blocking(
            |db| {
                let last_purged: Option<LogId<u64>> = Self::read_meta(db, LAST_PURGED)?;
                let tx = db.begin_read()?;
                let table = tx.open_table(LOGS)?;
                let last = match table.last()? {
                    Some((_, v)) => Some(decode(v.value())?.log_id),
                    None => last_purged,
                };
                Ok(LogState {
                    last_purged_log_id: last_purged,
                    last_log_id: last,
                })
            },
            |e| StorageIOError::read_logs(e),
        )
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> StoreResult<()> {
        self.write_meta(VOTE, vote, true, |e| StorageIOError::write_vote(e))
            .await
    }

    async fn read_vote(&mut self) -> StoreResult<Option<Vote<u64>>> {
        self.blocking(
            |db| Self::read_meta(db, VOTE),
            |e| StorageIOError::read_vote(e),
        )
        .await
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> StoreResult<()> {
        // Only a hint for replay after a restart: it becomes durable with the next append, and
        // losing it costs nothing but re-learning the commit index from the leader.
        self.write_meta(COMMITTED, &committed, false, |e| StorageIOError::write(e))
            .await
    }

    async fn read_committed(&mut self) -> StoreResult<Option<LogId<u64>>> {
        self.blocking(
            |db| Ok(Self::read_meta::<Option<LogId<u64>>>(db, COMMITTED)?.flatten()),
            |e| StorageIOError::read(e),
        )
        .await
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StoreResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let rows: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|e| {
                (
                    e.log_id.index,
                    serde_json::to_vec(&e).expect("log entries serialize"),
                )
            })
            .collect();
        let result = self
            .blocking(
                move |db| {
                    let tx = db.begin_write()?;
                    {
                        let mut table = tx.open_table(LOGS)?;
                        for (index, bytes) in &rows {
                            table.insert(*index, bytes.as_slice())?;
                        }
                    }
                    tx.commit()?;
                    Ok(())
                },
                |e| StorageIOError::write_logs(e),
            )
            .await;
        callback.log_io_completed(
            result
                .as_ref()
                .map(|_| ())
                .map_err(|e| std::io::Error::other(e.to_string())),
        );
        result
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> StoreResult<()> {
        self.blocking(
            move |db| {
                let tx = db.begin_write()?;
                tx.open_table(LOGS)?
                    .retain_in(log_id.index.., |_, _| false)?;
                tx.commit()?;
                Ok(())
            },
            |e| StorageIOError::write_logs(e),
        )
        .await
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> StoreResult<()> {
        let bytes = serde_json::to_vec(&log_id).expect("log ids serialize");
        self.blocking(
            move |db| {
                let tx = db.begin_write()?;
                tx.open_table(META)?.insert(LAST_PURGED, bytes.as_slice())?;
                tx.open_table(LOGS)?
                    .retain_in((Bound::Unbounded, Bound::Included(log_id.index)), |_, _| {
                        false
                    })?;
                tx.commit()?;
                Ok(())
            },
            |e| StorageIOError::write_logs(e),
        )
        .await
    }
}
