//! The gRPC services of a cache node for its peers and gateways: the Raft transport between
//! nodes and `TokenCache`. (`Admin`, for operators, is in [`super::admin`].)
//!
//! `TokenCache` is answered by the leader. A follower (or a node that knows no leader) answers
//! `UNAVAILABLE` with the leader's address in the `tokengate-leader` metadata entry, and the
//! client retries there. Writes are stamped with the leader's clock when proposed.

use crate::telemetry::otel;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use futures_util::Stream;
use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::{BasicNode, Raft, RaftMetrics, Snapshot};
use tokengate_proto::cache as pc;
use tokengate_proto::raft::{RaftMessage, SnapshotChunk};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::TypeConfig;
use super::snapshot::{MAX_SNAPSHOT_BYTES, SnapshotFile, Snapshots};
use super::state::{Change, Command, Outcome, Stamped};
use super::state_machine::{Shared, WatchItem};
use crate::cacheclient::convert::{key_from, sealed_from, sealed_to};
use crate::token::{TokenKey, now_millis};

/// How long a leader goes on serving without a quorum's acknowledgement: less than the 1.2 s
/// after which the others may elect a new leader (see [`super::ELECTION_TIMEOUT_MAX`]), so an
/// old leader has stopped serving before a new one can exist. Heartbeats every 100 ms keep a
/// connected leader's silence far below this.
pub const QUORUM_SILENCE: Duration = Duration::from_secs(1);
/// Largest page `List` returns, in entries.
const MAX_LIST: usize = 1000;
/// Largest page `List` returns, in bytes of entries (a page ends early past it): well under the
/// 4 MiB a gRPC client accepts by default.
const MAX_LIST_BYTES: usize = 2 << 20;
/// Most puts proposed as one log entry.
const MAX_PUT_BATCH: usize = 512;
/// Most bytes of entries proposed as one log entry (see [`super::MAX_PAYLOAD_ENTRIES`]).
pub const MAX_PUT_BATCH_BYTES: usize = 1 << 20;
/// Fill leases the leader keeps before it drops the lapsed ones.
const FILL_LEASES_SWEEP_AT: usize = 16_384;

/// The fill leases (fleet-wide single flight), in the leader's memory: a hint that spares the
/// identity provider duplicate requests, not state worth a replicated write. A new leader starts
/// with none, so a fill in progress during a failover may be duplicated once.
#[derive(Default)]
pub struct FillLeases(
    std::sync::Mutex<std::collections::HashMap<TokenKey, (String, std::time::Instant)>>,
);

impl FillLeases {
    /// Takes the lease on `key` for `holder` if free, lapsed or already `holder`'s.
    pub fn try_take(&self, key: TokenKey, holder: &str, ttl: Duration) -> bool {
        let now = std::time::Instant::now();
        let mut leases = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((h, until)) = leases.get(&key)
            && *until > now
            && h != holder
        {
            return false;
        }
        if leases.len() >= FILL_LEASES_SWEEP_AT {
            leases.retain(|_, (_, until)| *until > now);
        }
        leases.insert(key, (holder.to_owned(), now + ttl));
        true
    }

    /// Releases `holder`'s lease on `key`; another's is left alone.
    pub fn release(&self, key: &TokenKey, holder: &str) {
        let mut leases = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if leases.get(key).is_some_and(|(h, _)| h == holder) {
            leases.remove(key);
        }
    }
}

/// A put waiting for the group commit, where its answer goes, and the span of its call.
pub type PendingPut = (
    Command,
    oneshot::Sender<Result<(Outcome, u64), Status>>,
    tracing::Span,
);

/// The span of one Raft proposal, a child of the current span.
fn write_span() -> tracing::Span {
    write_span_in(&tracing::Span::current(), 1)
}

/// The span of a proposal of `n` commands, a child of `parent`; none outside a trace.
fn write_span_in(parent: &tracing::Span, n: usize) -> tracing::Span {
    if parent.is_disabled() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        parent: parent,
        "raft.write",
        raft.commands = n as u64,
        raft.log_index = tracing::field::Empty
    )
}

/// Whether a node may serve a leader's calls.
enum Standing {
    /// It leads, and a quorum acknowledged it lately.
    Leads,
    /// Another node leads (or none is known).
    Follows(Option<u64>),
    /// It believes it leads, but no quorum has acknowledged it for this long.
    Unheard(Duration),
}

/// What every service of a node shares.
pub struct NodeContext {
    /// This node's id.
    pub id: u64,
    /// The address peers and clients reach it at.
    pub addr: String,
    /// The Raft instance.
    pub raft: Raft<TypeConfig>,
    /// The applied state.
    pub shared: Arc<Shared>,
    /// Cancelled on shutdown (ends watch streams).
    pub shutdown: CancellationToken,
    /// Puts waiting for the group commit ([`group_commit`]).
    pub puts: mpsc::Sender<PendingPut>,
    /// Open `Watch` streams per caller address.
    pub watches: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    /// The fill leases, while this node leads.
    pub fill_leases: FillLeases,
    /// The snapshot directory (received snapshots are written there).
    pub snapshots: Snapshots,
}

/// One open `Watch` stream, counted against its caller's address until dropped.
struct WatchSlot {
    ctx: Arc<NodeContext>,
    address: std::net::IpAddr,
}

impl WatchSlot {
    fn take(ctx: &Arc<NodeContext>, address: std::net::IpAddr) -> Result<Self, Status> {
        let mut open = ctx.watches.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(address).or_default();
        if *n >= super::bounds::MAX_WATCHES_PER_ADDRESS {
            return Err(Status::resource_exhausted(format!(
                "at most {} change streams per address",
                super::bounds::MAX_WATCHES_PER_ADDRESS
            )));
        }
        *n += 1;
        Ok(Self {
            ctx: Arc::clone(ctx),
            address,
        })
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut open = self.ctx.watches.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.address);
            }
        }
    }
}

impl NodeContext {
    /// `UNAVAILABLE`, naming the leader when one is known.
    pub(super) fn redirect(&self, leader: Option<u64>) -> Status {
        let addr = leader.and_then(|id| {
            self.raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .get_node(&id)
                .map(|n| n.addr.clone())
        });
        let mut status = Status::unavailable(match &addr {
            Some(a) => format!("not the leader; the leader is {a}"),
            None => "no leader is known; retry shortly".to_owned(),
        });
        if let Some(a) = addr.and_then(|a| a.parse().ok()) {
            status
                .metadata_mut()
                .insert(crate::cacheclient::LEADER_METADATA, a);
        }
        status
    }

    /// Where this node stands, by its Raft metrics.
    fn standing(&self, m: &RaftMetrics<u64, BasicNode>) -> Standing {
        if m.current_leader != Some(self.id) {
            return Standing::Follows(m.current_leader);
        }
        match m.millis_since_quorum_ack.map(Duration::from_millis) {
            Some(silence) if silence > QUORUM_SILENCE => Standing::Unheard(silence),
            _ => Standing::Leads,
        }
    }

    /// Why a node that stands so may not serve a leader's call, if it may not.
    fn refusal(&self, standing: Standing) -> Option<Status> {
        match standing {
            Standing::Leads => None,
            Standing::Follows(leader) => Some(self.redirect(leader)),
            Standing::Unheard(silence) => Some(Status::unavailable(format!(
                "no quorum has acknowledged this leader for {silence:?}; another node may lead"
            ))),
        }
    }

    /// Ok when this node leads and a quorum has acknowledged it lately; the redirect when
    /// another leads.
    ///
    /// A leader cut off from its peers still believes it leads, while the others elect a new
    /// leader within about [`QUORUM_SILENCE`]: past that silence it refuses without naming a
    /// leader, so clients try the other nodes instead of waiting on writes it can never commit
    /// (and reading state that may be stale).
    fn lead(&self) -> Result<(), Status> {
        let standing = self.standing(&self.raft.metrics().borrow());
        self.refusal(standing).map_or(Ok(()), Err)
    }

    /// Returns, with the refusal, once this node may no longer serve as leader (or Raft has
    /// stopped).
    async fn lost_lead(&self) -> Status {
        let mut metrics = self.raft.metrics();
        loop {
            let standing = self.standing(&metrics.borrow_and_update());
            if let Some(refusal) = self.refusal(standing) {
                return refusal;
            }
            if metrics.changed().await.is_err() {
                return Status::unavailable("the node is shutting down");
            }
        }
    }

    /// Proposes `command`, stamped with this (leader) node's clock, and waits until applied.
    pub async fn write(&self, command: Command) -> Result<(Outcome, u64), Status> {
        self.write_in(command, write_span()).await
    }

    /// [`Self::write`] inside `span`, whose trace the replicas' applies join.
    async fn write_in(
        &self,
        command: Command,
        span: tracing::Span,
    ) -> Result<(Outcome, u64), Status> {
        // A leader no quorum hears from could only leave the write pending.
        self.lead()?;
        let proposed = async {
            let stamped = Stamped {
                now: now_millis(),
                command,
                trace: otel::current_traceparent(),
            };
            let result = self.raft.client_write(stamped).await;
            if let Ok(resp) = &result {
                tracing::Span::current().record("raft.log_index", resp.log_id.index);
            }
            result
        };
        // A write waiting for a commit that a cut-off leader can never make is given up once no
        // quorum has answered for [`QUORUM_SILENCE`], so the caller tries the other nodes.
        let result = tokio::select! {
            r = proposed.instrument(span) => r,
            refusal = self.lost_lead() => return Err(refusal),
        };
        match result {
            Ok(resp) => Ok((resp.data, resp.log_id.index)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(self.redirect(f.leader_id))
            }
            Err(e) => Err(Status::unavailable(format!("write not committed: {e}"))),
        }
    }
}

/// Proposes waiting puts together until `stop`: one log entry (one fsync on each node) for
/// every put that arrived while the previous batch was being committed. Under load this turns
/// one commit per put into one per batch; alone, a put is proposed at once.
pub async fn group_commit(
    ctx: Arc<NodeContext>,
    mut queue: mpsc::Receiver<PendingPut>,
    stop: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            () = stop.cancelled() => return,
            p = queue.recv() => match p {
                Some(p) => p,
                None => return,
            },
        };
        let mut bytes = put_bytes(&first.0);
        let mut batch = vec![first];
        while batch.len() < MAX_PUT_BATCH && bytes < MAX_PUT_BATCH_BYTES {
            match queue.try_recv() {
                Ok(p) => {
                    bytes += put_bytes(&p.0);
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        // The commit continues the first put's trace and links the others'.
        let span = write_span_in(&batch[0].2, batch.len());
        for (_, _, other) in &batch[1..] {
            otel::link(&span, other);
        }
        if batch.len() == 1 {
            let (command, reply, _) = batch.pop().expect("one put");
            let _ = reply.send(ctx.write_in(command, span).await);
            continue;
        }
        let (commands, replies): (Vec<Command>, Vec<_>) =
            batch.into_iter().map(|(c, r, _)| (c, r)).unzip();
        match ctx.write_in(Command::PutBatch(commands), span).await {
            Ok((Outcome::Batch(outcomes), index)) if outcomes.len() == replies.len() => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok((outcome, index)));
                }
            }
            Ok(_) => {
                for reply in replies {
                    let _ = reply.send(Err(Status::internal("batch answered out of shape")));
                }
            }
            Err(status) => {
                for reply in replies {
                    let _ = reply.send(Err(status.clone()));
                }
            }
        }
    }
}

/// While this node leads, has the least recently used entries dropped whenever the cache holds
/// more than `max_entries` (checked every second), until `stop`. The drop is a replicated
/// command, so every node drops the same entries.
pub async fn bound_entries(ctx: Arc<NodeContext>, max_entries: u64, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let held = ctx.shared.read(|a| a.cache.len() as u64);
        if held <= max_entries || ctx.lead().is_err() {
            continue;
        }
        match ctx.write(Command::Trim { max_entries }).await {
            Ok((Outcome::Count(n), _)) => {
                tracing::info!(
                    dropped = n,
                    max_entries,
                    "cache over its bound: least recently used entries dropped"
                );
            }
            Ok(_) => {}
            Err(status) => tracing::debug!(reason = %status.message(), "cannot trim the cache"),
        }
    }
}

/// About how many bytes a put adds to a log entry.
fn put_bytes(command: &Command) -> usize {
    match command {
        Command::Put { entry, .. } => super::bounds::entry_bytes(entry) + 128,
        _ => 128,
    }
}

/// The Raft transport server.
pub struct RaftService(pub Arc<NodeContext>);

fn decode<T: serde::de::DeserializeOwned>(req: Request<RaftMessage>) -> Result<T, Status> {
    serde_json::from_slice(&req.into_inner().json)
        .map_err(|e| Status::invalid_argument(format!("malformed raft message: {e}")))
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Response<RaftMessage>, Status> {
    Ok(Response::new(RaftMessage {
        json: serde_json::to_vec(value).expect("raft messages serialize"),
    }))
}

#[tonic::async_trait]
impl tokengate_proto::raft::raft_transport_server::RaftTransport for RaftService {
    async fn append_entries(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req)?;
        encode(&self.0.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: VoteRequest<u64> = decode(req)?;
        encode(&self.0.raft.vote(rpc).await)
    }

    /// Receives a snapshot into a temporary file, checks its length and SHA-256, and hands it to
    /// Raft, which installs it (see the state machine). A stream that breaks, or bytes that do
    /// not match, leave nothing behind: the temporary file is removed.
    async fn install_snapshot(
        &self,
        req: Request<tonic::Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftMessage>, Status> {
        use sha2::{Digest, Sha256};
        use tokio::io::AsyncWriteExt;
        let mut chunks = req.into_inner();
        let first = chunks
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("an empty snapshot stream"))?;
        let (vote, meta): super::network::SnapshotHeader =
            serde_json::from_slice(&first.header_json)
                .map_err(|e| Status::invalid_argument(format!("malformed snapshot header: {e}")))?;
        let started = std::time::Instant::now();
        let io = |e: std::io::Error| Status::internal(format!("cannot write the snapshot: {e}"));
        let (file, path) = self.0.snapshots.temporary().map_err(io)?.into_parts();
        let mut out = tokio::fs::File::from_std(file);
        let (mut hash, mut received) = (Sha256::new(), 0u64);
        let mut chunk = first;
        loop {
            received += chunk.data.len() as u64;
            if received > MAX_SNAPSHOT_BYTES {
                return Err(Status::resource_exhausted(format!(
                    "the snapshot exceeds {MAX_SNAPSHOT_BYTES} bytes"
                )));
            }
            hash.update(&chunk.data);
            out.write_all(&chunk.data).await.map_err(io)?;
            if chunk.last {
                if chunk.length != received || chunk.sha256 != hash.finalize().as_slice() {
                    return Err(Status::data_loss(
                        "the snapshot's length or SHA-256 does not match what arrived",
                    ));
                }
                break;
            }
            chunk = chunks.message().await?.ok_or_else(|| {
                Status::aborted("the snapshot stream ended before its last chunk")
            })?;
        }
        out.flush().await.map_err(io)?;
        let mut file = out.into_std().await;
        std::io::Seek::rewind(&mut file).map_err(io)?;
        let snapshot = Snapshot {
            meta,
            snapshot: Box::new(SnapshotFile::pending(file, path).map_err(io)?),
        };
        tracing::info!(
            bytes = received,
            took_ms = started.elapsed().as_millis() as u64,
            "snapshot received"
        );
        encode(&self.0.raft.install_full_snapshot(vote, snapshot).await)
    }
}

/// The `TokenCache` server.
pub struct CacheService(pub Arc<NodeContext>);

type WatchStream = Pin<Box<dyn Stream<Item = Result<pc::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pc::token_cache_server::TokenCache for CacheService {
    async fn get(&self, req: Request<pc::GetRequest>) -> Result<Response<pc::GetResponse>, Status> {
        self.0.lead()?;
        let key = key_from(&req.into_inner().key)?;
        let now = now_millis();
        let entry = self
            .0
            .shared
            .read(|a| a.cache.get(&key, now).map(sealed_to));
        Ok(Response::new(pc::GetResponse { entry }))
    }

    async fn lookup(
        &self,
        req: Request<pc::FillLeaseRequest>,
    ) -> Result<Response<pc::LookupResponse>, Status> {
        self.0.lead()?;
        let req = req.into_inner();
        super::bounds::lease(req.ttl_ms, &req.holder)?;
        let key = key_from(&req.key)?;
        let now = now_millis();
        let entry = self
            .0
            .shared
            .read(|a| a.cache.get(&key, now).map(sealed_to));
        let held = entry.is_none()
            && self
                .0
                .fill_leases
                .try_take(key, &req.holder, Duration::from_millis(req.ttl_ms));
        Ok(Response::new(pc::LookupResponse { entry, held }))
    }

    async fn put(&self, req: Request<pc::PutRequest>) -> Result<Response<pc::PutResponse>, Status> {
        let req = req.into_inner();
        let entry = sealed_from(req.entry)?;
        super::bounds::entry(&entry, now_millis())?;
        if let Some(holder) = &req.release_fill_lease {
            super::bounds::lease(1, holder)?;
        }
        let key = key_from(&req.key)?;
        let command = Command::Put {
            key,
            entry: Box::new(entry),
            fence: req.fence,
        };
        let (reply, answer) = oneshot::channel();
        self.0
            .puts
            .send((command, reply, tracing::Span::current()))
            .await
            .map_err(|_| Status::unavailable("the node is shutting down"))?;
        let (outcome, index) = answer
            .await
            .map_err(|_| Status::unavailable("the node is shutting down"))??;
        if let Some(holder) = &req.release_fill_lease {
            self.0.fill_leases.release(&key, holder);
        }
        let outcome = match outcome {
            Outcome::Stored => pc::PutOutcome::Stored,
            Outcome::Stale => pc::PutOutcome::Stale,
            Outcome::Fenced => pc::PutOutcome::Fenced,
            _ => pc::PutOutcome::Unspecified,
        };
        Ok(Response::new(pc::PutResponse {
            outcome: outcome.into(),
            index,
        }))
    }

    async fn delete(
        &self,
        req: Request<pc::DeleteRequest>,
    ) -> Result<Response<pc::DeleteResponse>, Status> {
        let req = req.into_inner();
        let command = Command::Evict {
            key: key_from(&req.key)?,
            version: req.version,
        };
        let (outcome, _) = self.0.write(command).await?;
        Ok(Response::new(pc::DeleteResponse {
            removed: outcome == Outcome::Flag(true),
        }))
    }

    async fn list(
        &self,
        req: Request<pc::ListRequest>,
    ) -> Result<Response<pc::ListResponse>, Status> {
        self.0.lead()?;
        let req = req.into_inner();
        let after = if req.after.is_empty() {
            None
        } else {
            Some(key_from(&req.after)?)
        };
        let limit = (req.limit as usize).clamp(1, MAX_LIST);
        let now = now_millis();
        let entries = self.0.shared.read(|a| a.cache.list(after, limit, now));
        let mut bytes = 0;
        Ok(Response::new(pc::ListResponse {
            entries: entries
                .iter()
                // At least one entry per page, however large, so listing always progresses.
                .take_while(|(_, e)| {
                    let fits =
                        bytes == 0 || bytes + super::bounds::entry_bytes(e) <= MAX_LIST_BYTES;
                    bytes += super::bounds::entry_bytes(e);
                    fits
                })
                .map(|(k, e)| pc::ListedEntry {
                    key: k.as_bytes().to_vec(),
                    entry: Some(sealed_to(e)),
                })
                .collect(),
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<pc::WatchRequest>) -> Result<Response<WatchStream>, Status> {
        let address = req
            .remote_addr()
            .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |a| a.ip());
        let slot = WatchSlot::take(&self.0, address)?;
        let after = req.into_inner().after_index;
        let (mut rx, replay) = self.0.shared.watch(after);
        let (tx, out) = mpsc::channel(256);
        let stop = self.0.shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let first: Vec<WatchItem> = match replay {
                Some(changes) => changes
                    .into_iter()
                    .map(|(i, c)| WatchItem::Change(i, c))
                    .collect(),
                None => vec![WatchItem::Resync(after)],
            };
            for item in first {
                if tx.send(Ok(watch_event(item))).await.is_err() {
                    return;
                }
            }
            loop {
                let item = tokio::select! {
                    () = stop.cancelled() => return,
                    () = tx.closed() => return,
                    item = rx.recv() => match item {
                        Ok(item) => item,
                        Err(broadcast::error::RecvError::Lagged(_)) => WatchItem::Resync(0),
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                };
                if tx.send(Ok(watch_event(item))).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }

    async fn acquire_lease(
        &self,
        req: Request<pc::LeaseRequest>,
    ) -> Result<Response<pc::LeaseResponse>, Status> {
        let req = req.into_inner();
        super::bounds::lease(req.ttl_ms, &req.holder)?;
        let (outcome, _) = self
            .0
            .write(Command::AcquireRefreshLease {
                holder: req.holder,
                ttl_ms: req.ttl_ms,
            })
            .await?;
        let fence = match outcome {
            Outcome::Lease(f) => f,
            _ => None,
        };
        Ok(Response::new(pc::LeaseResponse { fence }))
    }

    async fn release_lease(
        &self,
        req: Request<pc::ReleaseLeaseRequest>,
    ) -> Result<Response<pc::Empty>, Status> {
        let holder = req.into_inner().holder;
        self.0
            .write(Command::ReleaseRefreshLease { holder })
            .await?;
        Ok(Response::new(pc::Empty {}))
    }

    async fn try_fill_lease(
        &self,
        req: Request<pc::FillLeaseRequest>,
    ) -> Result<Response<pc::FillLeaseResponse>, Status> {
        self.0.lead()?;
        let req = req.into_inner();
        super::bounds::lease(req.ttl_ms, &req.holder)?;
        let held = self.0.fill_leases.try_take(
            key_from(&req.key)?,
            &req.holder,
            Duration::from_millis(req.ttl_ms),
        );
        Ok(Response::new(pc::FillLeaseResponse { held }))
    }

    async fn release_fill_lease(
        &self,
        req: Request<pc::ReleaseFillLeaseRequest>,
    ) -> Result<Response<pc::Empty>, Status> {
        self.0.lead()?;
        let req = req.into_inner();
        self.0
            .fill_leases
            .release(&key_from(&req.key)?, &req.holder);
        Ok(Response::new(pc::Empty {}))
    }

    async fn due_for_refresh(
        &self,
        req: Request<pc::DueRequest>,
    ) -> Result<Response<pc::DueResponse>, Status> {
        self.0.lead()?;
        let req = req.into_inner();
        // A scan of every entry: on an O(1) copy of the state, off the async workers, so that
        // neither the state machine nor other calls wait for it.
        let cache = self.0.shared.read(|a| a.cache.clone());
        let limit = (req.limit as usize).min(MAX_LIST);
        let keys = tokio::task::spawn_blocking(move || cache.due(req.now, req.used_since, limit))
            .await
            .map_err(|e| Status::internal(format!("due scan failed: {e}")))?;
        Ok(Response::new(pc::DueResponse {
            keys: keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
        }))
    }

    async fn touch(&self, req: Request<pc::TouchRequest>) -> Result<Response<pc::Empty>, Status> {
        let uses = req
            .into_inner()
            .uses
            .iter()
            .map(|u| Ok((key_from(&u.key)?, u.at)))
            .collect::<Result<Vec<_>, Status>>()?;
        super::bounds::touches(
            uses.len(),
            uses.iter().map(|(_, at)| *at).max(),
            now_millis(),
        )?;
        self.0.write(Command::Touch { uses }).await?;
        Ok(Response::new(pc::Empty {}))
    }

    async fn mark_due(
        &self,
        req: Request<pc::GetRequest>,
    ) -> Result<Response<pc::ClaimResponse>, Status> {
        let key = key_from(&req.into_inner().key)?;
        let (outcome, _) = self.0.write(Command::MarkDue { key }).await?;
        Ok(Response::new(pc::ClaimResponse {
            first: outcome == Outcome::Flag(true),
        }))
    }

    async fn postpone(
        &self,
        req: Request<pc::PostponeRequest>,
    ) -> Result<Response<pc::Empty>, Status> {
        let req = req.into_inner();
        super::bounds::claim(req.until, now_millis())?;
        let command = Command::Postpone {
            key: key_from(&req.key)?,
            until: req.until,
            fence: req.fence,
        };
        self.0.write(command).await?;
        Ok(Response::new(pc::Empty {}))
    }

    async fn refresh_lease(
        &self,
        _: Request<pc::Empty>,
    ) -> Result<Response<pc::LeaseInfo>, Status> {
        self.0.lead()?;
        let now = now_millis();
        let lease = self
            .0
            .shared
            .read(|a| a.cache.refresh_lease().filter(|l| l.until > now).cloned());
        Ok(Response::new(match lease {
            Some(l) => pc::LeaseInfo {
                holder: Some(l.holder),
                fence: l.fence,
                expires_in_ms: l.until - now,
            },
            None => pc::LeaseInfo::default(),
        }))
    }

    async fn claim_once(
        &self,
        req: Request<pc::ClaimRequest>,
    ) -> Result<Response<pc::ClaimResponse>, Status> {
        let req = req.into_inner();
        super::bounds::claim(req.until, now_millis())?;
        let command = Command::ClaimOnce {
            key: key_from(&req.key)?,
            until: req.until,
        };
        let (outcome, _) = self.0.write(command).await?;
        Ok(Response::new(pc::ClaimResponse {
            first: outcome == Outcome::Flag(true),
        }))
    }
}

fn watch_event(item: WatchItem) -> pc::WatchEvent {
    use pc::watch_event::Change as C;
    match item {
        WatchItem::Change(index, Change::Stored(key, version)) => pc::WatchEvent {
            index,
            change: Some(C::Stored(pc::Stored {
                key: key.as_bytes().to_vec(),
                version,
            })),
        },
        WatchItem::Change(index, Change::Evicted(key)) => pc::WatchEvent {
            index,
            change: Some(C::Evicted(pc::Evicted {
                key: key.as_bytes().to_vec(),
            })),
        },
        WatchItem::Resync(index) => pc::WatchEvent {
            index,
            change: Some(C::Resync(pc::Empty {})),
        },
    }
}
