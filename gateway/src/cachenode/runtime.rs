//! Where Raft runs: its own runtime, its settings, and the files it keeps.

use std::sync::Arc;
use std::time::Duration;

use super::settings::{CacheNodeConfig, CacheNodeError, DB_CACHE_BYTES, MAX_PAYLOAD_ENTRIES};
use super::{identity, log_store, snapshot, state_machine};

/// A node's durable state, opened: the Raft log and vote, the state machine (and the cache it
/// shares with the services), the snapshot files.
pub(super) struct Storage {
    pub(super) log_store: log_store::LogStore,
    pub(super) state_machine: state_machine::StateMachine,
    pub(super) shared: Arc<state_machine::Shared>,
    pub(super) snapshots: snapshot::Snapshots,
}

impl Storage {
    /// Opens (or creates) the node's data directory. A new node that is to initialise a cluster
    /// first checks that the cluster has not already forgotten its id; a node's id is claimed
    /// by its disk.
    pub(super) async fn open(
        cfg: &CacheNodeConfig,
        dialer: &crate::cacheclient::Dialer,
    ) -> Result<Self, CacheNodeError> {
        let data = |message: String| CacheNodeError::Data {
            dir: cfg.data_dir.display().to_string(),
            message,
        };
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| data(e.to_string()))?;
        let database = cfg.data_dir.join("raft.redb");
        if !database.exists() && !cfg.init.is_empty() {
            let others = cfg.init.iter().filter(|(id, _)| **id != cfg.id);
            let token = cfg.credentials.operator.secret.as_ref();
            identity::check_not_forgotten(cfg.id, others.map(|(_, a)| a), token, dialer)
                .await
                .map_err(data)?;
        }
        identity::claim(&cfg.data_dir, cfg.id).map_err(data)?;
        let db = redb::Builder::new()
            .set_cache_size(DB_CACHE_BYTES)
            .create(&database)
            .map_err(|e| data(e.to_string()))?;
        let db = Arc::new(db);
        let log_store =
            log_store::LogStore::open(Arc::clone(&db)).map_err(|e| data(e.to_string()))?;
        let snapshots = snapshot::Snapshots::open(state_machine_files(&cfg.data_dir))
            .map_err(|e| data(e.to_string()))?;
        let (state_machine, shared) =
            state_machine::StateMachine::open(Arc::clone(&db), snapshots.clone()).map_err(data)?;
        Ok(Self {
            log_store,
            state_machine,
            shared,
            snapshots,
        })
    }
}

/// openraft's settings for this node: its timers, snapshot policy and message bounds.
pub(super) fn raft_config(cfg: &CacheNodeConfig) -> Result<Arc<openraft::Config>, CacheNodeError> {
    openraft::Config {
        cluster_name: "tokengate-cache".into(),
        heartbeat_interval: cfg.raft_timing.heartbeat.as_millis() as u64,
        election_timeout_min: cfg.raft_timing.election_timeout.as_millis() as u64,
        election_timeout_max: cfg.raft_timing.election_timeout_max().as_millis() as u64,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(cfg.snapshot_logs),
        max_in_snapshot_log_to_keep: 1000,
        max_payload_entries: MAX_PAYLOAD_ENTRIES,
        ..Default::default()
    }
    .validate()
    .map(Arc::new)
    .map_err(|e| CacheNodeError::Raft(e.to_string()))
}

/// The runtime Raft's core runs on: one thread of its own (see the module documentation).
pub(super) struct RaftRuntime(Option<tokio::runtime::Runtime>);

impl RaftRuntime {
    pub(super) fn start() -> std::io::Result<Self> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("raft")
            .enable_all()
            .build()
            .map(|rt| Self(Some(rt)))
    }

    /// Runs `work` there (openraft spawns its tasks on the runtime it is created on).
    pub(super) fn spawn<F>(&self, work: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.0.as_ref().expect("running until stopped").spawn(work)
    }

    /// Stops it (after `Raft::shutdown`), waiting a little for its tasks, off the async threads.
    pub(super) async fn stop(mut self) {
        if let Some(rt) = self.0.take() {
            let _ =
                tokio::task::spawn_blocking(move || rt.shutdown_timeout(Duration::from_secs(5)))
                    .await;
        }
    }
}

impl Drop for RaftRuntime {
    /// On an early return (a port that cannot be bound): a runtime cannot be dropped on an async
    /// thread, so its tasks are left to end in the background.
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The snapshot directory of a node's data directory.
fn state_machine_files(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("snapshots")
}
