//! What a node's services share ([`NodeContext`]): its standing (whether it leads and a quorum
//! heard it lately), the leader's fill leases, the open watch streams, the group commit that
//! batches puts into log entries, and the bound on entries.

use crate::telemetry::otel;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Raft, RaftMetrics};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::TypeConfig;
use super::snapshot::Snapshots;
use super::state::{Command, Outcome, Stamped};
use super::state_machine::Shared;
use crate::token::{TokenKey, now_millis};

/// Most puts proposed as one log entry.
pub const MAX_PUT_BATCH: usize = 512;
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
pub(super) fn write_span() -> tracing::Span {
    write_span_in(&tracing::Span::current(), 1)
}

/// The span of a proposal of `n` commands, a child of `parent`; none outside a trace.
pub(super) fn write_span_in(parent: &tracing::Span, n: usize) -> tracing::Span {
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
    /// Rate limits, while this node leads (like fill leases, a new leader starts without).
    pub rates: crate::store::rate::RateTable,
    /// The snapshot directory (received snapshots are written there).
    pub snapshots: Snapshots,
    /// How long this node goes on serving as leader without a quorum's acknowledgement
    /// ([`super::RaftTiming::quorum_silence`]).
    pub quorum_silence: Duration,
    /// What the Raft transport tells the failover watchdog.
    pub elections: Arc<super::failover::Elections>,
}

/// One open `Watch` stream, counted against its caller's address until dropped.
pub(super) struct WatchSlot {
    ctx: Arc<NodeContext>,
    address: std::net::IpAddr,
}

impl WatchSlot {
    pub(super) fn take(ctx: &Arc<NodeContext>, address: std::net::IpAddr) -> Result<Self, Status> {
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
            Some(silence) if silence > self.quorum_silence => Standing::Unheard(silence),
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
    /// leader within about the quorum silence: past that silence it refuses without naming a
    /// leader, so clients try the other nodes instead of waiting on writes it can never commit
    /// (and reading state that may be stale).
    /// Whether the node can do its part in a cluster that commits: it leads with a quorum
    /// behind it, or follows a known leader. `Ok` says which, `Err` why not (readiness).
    pub(super) fn readiness(&self) -> Result<String, String> {
        match self.standing(&self.raft.metrics().borrow()) {
            Standing::Leads => Ok("leader".into()),
            Standing::Follows(Some(leader)) => Ok(format!("follower of {leader}")),
            Standing::Follows(None) => Err("no leader known".into()),
            Standing::Unheard(silence) => Err(format!(
                "leads without a quorum's acknowledgement for {}s",
                silence.as_secs()
            )),
        }
    }

    pub(super) fn lead(&self) -> Result<(), Status> {
        let standing = self.standing(&self.raft.metrics().borrow());
        self.refusal(standing).map_or(Ok(()), Err)
    }

    /// Returns, with the refusal, once this node may no longer serve as leader (or Raft has
    /// stopped).
    pub(super) async fn lost_lead(&self) -> Status {
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
    pub(super) async fn write_in(
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
        // quorum has answered for the quorum silence, so the caller tries the other nodes.
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
pub(super) fn put_bytes(command: &Command) -> usize {
    match command {
        Command::Put { entry, .. } => super::bounds::entry_bytes(entry) + 128,
        _ => 128,
    }
}

/// Keeps the standard gRPC health service's answer (for the whole server, `""`, and for
/// `TokenCache`) equal to [`NodeContext::readiness`] until `stop`: checked on every Raft metrics
/// change and twice a second (a leader's standing also lapses with time alone).
pub async fn report_health(
    ctx: Arc<NodeContext>,
    reporter: tonic_health::server::HealthReporter,
    stop: CancellationToken,
) {
    use tokengate_proto::cache::token_cache_server::SERVICE_NAME as CACHE;
    use tonic_health::ServingStatus;
    let mut metrics = ctx.raft.metrics();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = None;
    loop {
        let status = if ctx.readiness().is_ok() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if last != Some(status) {
            for service in ["", CACHE] {
                reporter.set_service_status(service, status).await;
            }
            last = Some(status);
        }
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
            changed = metrics.changed() => if changed.is_err() { break },
        }
    }
}

/// What the failover watchdog reads of this node's Raft, and how it has it stand.
impl super::failover::Watched for NodeContext {
    fn view(&self) -> super::failover::RaftView {
        let m = self.raft.metrics();
        let m = m.borrow();
        super::failover::RaftView {
            id: self.id,
            voter: (m.membership_config.membership().voter_ids()).any(|v| v == self.id),
            state: m.state,
            vote: m.vote,
        }
    }

    async fn elect(&self) -> Result<(), ()> {
        self.raft.trigger().elect().await.map_err(|_| ())
    }
}
