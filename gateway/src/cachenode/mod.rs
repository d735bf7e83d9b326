//! `gateway cache-node`: a member of the Raft-replicated cache service, for fleets that would
//! rather not run Redis (`ARCHITECTURE.md`, *The cache service*).
//!
//! # Layout
//!
//! - [`state`]: the replicated cache and its commands: the state machine's logic, pure and
//!   deterministic (time comes from the leader's stamp on each command).
//! - [`log_store`]: the Raft log and vote, durable in redb.
//! - [`state_machine`]: openraft's state machine over the cache: apply, watch, snapshots.
//! - [`snapshot`]: the binary snapshot file, written, streamed and read a record at a time.
//! - [`network`]: Raft RPCs to peers over gRPC.
//! - [`identity`]: a node's id belongs to its disk.
//! - [`context`]: what the services share: the node's standing (leads, and heard by a quorum),
//!   fill leases, watch slots, the group commit of puts, the entry bound.
//! - [`raft_service`]: the Raft transport server, for peers.
//! - [`cache_service`]: the `TokenCache` server, for gateways.
//! - [`admin`]: the `Admin` service for operators; [`backup`]: its backup and restore.
//! - protobuf conversions are [`crate::cacheclient::convert`]'s, shared with the clients.
//! - [`metrics`]: Prometheus gauges of the node's Raft state (`--metrics-listen`).
//!
//! One redb file per node (`<data-dir>/raft.redb`) holds the log, the vote, the committed index
//! and which snapshot is current; the snapshot itself is a file in `<data-dir>/snapshots/`. A
//! restarted node loads the snapshot and re-applies the committed log after it.
//!
//! Raft's core (its timers, heartbeats, replication and storage calls) runs on a runtime of its
//! own, one thread that request work never queues on: a node whose gRPC workers are saturated
//! by gateways still sends and answers heartbeats on time, so load does not cause elections.

pub mod admin;
pub mod auth;
pub mod backup;
pub mod bounds;
pub mod cache_service;
pub mod context;
pub mod failover;
pub mod identity;
pub mod log_store;
pub mod metrics;
pub mod network;
pub mod raft_service;
pub mod snapshot;
pub mod state;
pub mod state_machine;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, Raft};
use tokengate_proto::admin::admin_server::AdminServer;
use tokengate_proto::cache::token_cache_server::TokenCacheServer;
use tokengate_proto::raft::raft_transport_server::RaftTransportServer;
use tokio_util::sync::CancellationToken;

use crate::secret::Secret;
use admin::AdminService;
use cache_service::CacheService;
use context::NodeContext;
use raft_service::RaftService;
use state::{Outcome, Stamped};

openraft::declare_raft_types!(
    /// The cache service's Raft types: stamped commands in, outcomes out, snapshots as files.
    pub TypeConfig:
        D = Stamped,
        R = Outcome,
        SnapshotData = snapshot::SnapshotFile,
);

/// Leader heartbeat (openraft ticks every 1.5 heartbeats).
pub const HEARTBEAT: Duration = Duration::from_millis(50);
/// Lower bound of the randomised election timeout (the upper bound is twice this): with the
/// failover watchdog, a dead leader is replaced 450–600 ms after its last heartbeat, plus a
/// vote round trip.
pub const ELECTION_TIMEOUT_MIN: Duration = Duration::from_millis(150);

/// A cache node's Raft timers, from `--heartbeat-interval` and `--election-timeout`.
///
/// A follower stands for election once the leader's lease (the upper bound of the election
/// timeout) plus its own timeout (fixed at start, between the bounds) have passed without a
/// heartbeat (openraft's timer, and the [`failover`] watchdog, which spares the penalty openraft
/// adds after a lost vote). So a leader's death is noticed after 3 to 4 times the lower bound
/// and followed by a vote round trip. Shorter timers fail over sooner and elect spuriously when
/// a saturated machine delays heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTiming {
    /// How often the leader sends heartbeats.
    pub heartbeat: Duration,
    /// The election timeout's lower bound; its upper bound is twice this.
    pub election_timeout: Duration,
}

impl RaftTiming {
    /// The election timeout's upper bound, which is also the leader lease followers honour.
    pub fn election_timeout_max(&self) -> Duration {
        self.election_timeout * 2
    }

    /// How long a leader goes on serving without a quorum's acknowledgement: two heartbeats
    /// less than the earliest a new leader can be elected (the lease plus the lower bound), so
    /// an old leader has stopped serving before a new one can exist.
    pub fn quorum_silence(&self) -> Duration {
        (self.election_timeout_max() + self.election_timeout).saturating_sub(self.heartbeat * 2)
    }

    /// Refuses timers whose safety margins do not hold: heartbeats must fit several times into
    /// the lower bound.
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat.is_zero() || self.election_timeout < self.heartbeat * 3 {
            return Err(format!(
                "--election-timeout ({:?}) must be at least three --heartbeat-interval ({:?})",
                self.election_timeout, self.heartbeat
            ));
        }
        Ok(())
    }
}

/// Memory redb may use to cache the log's pages (its default, 1 GiB, made a cache node's resident
/// memory grow with the log rather than with the cache).
pub const DB_CACHE_BYTES: usize = 16 << 20;
/// Most log entries in one `AppendEntries`: with put batches of at most
/// [`context::MAX_PUT_BATCH_BYTES`], one message stays well under
/// [`network::MAX_RAFT_MESSAGE_BYTES`].
pub const MAX_PAYLOAD_ENTRIES: u64 = 32;
/// Largest request a gateway or operator may send (a put carries one entry of at most
/// [`bounds::MAX_ENTRY_BYTES`]; a touch at most [`bounds::MAX_TOUCHES`] uses).
pub const MAX_REQUEST_BYTES: usize = 1 << 20;
/// A snapshot is taken after this many log entries, and the log before it purged.
pub const DEFAULT_SNAPSHOT_LOGS: u64 = 10_000;
/// Entries the cache keeps at most, by default: the same bound as a gateway's L1.
pub const DEFAULT_MAX_ENTRIES: u64 = crate::token::DEFAULT_MAX_ENTRIES as u64;

/// How a cache node runs.
#[derive(Debug, Clone)]
pub struct CacheNodeConfig {
    /// This node's id, unique in the cluster and never reused.
    pub id: u64,
    /// Where it listens.
    pub listen: SocketAddr,
    /// The address peers and gateways reach it at (default: `listen`).
    pub advertise: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Initial members `id -> addr`, to bootstrap a new cluster (ignored once initialised).
    pub init: BTreeMap<u64, String>,
    /// Members to ask to add this node as a learner (the operator token goes to them only, or
    /// to a TLS-proven leader).
    pub join: Vec<String>,
    /// Addresses to reach peers at for Raft traffic instead of their membership addresses
    /// (a separate replication network; tests put fault-injecting relays there).
    pub peers: BTreeMap<u64, String>,
    /// Who may call, per role. None at all: everyone (only on loopback, or with
    /// `insecure_no_auth`).
    pub credentials: auth::Credentials,
    /// Serve without credentials on a non-loopback address.
    pub insecure_no_auth: bool,
    /// Send and take bearer tokens without TLS beyond this host.
    pub allow_plaintext: bool,
    /// Log entries between snapshots.
    pub snapshot_logs: u64,
    /// Entries kept at most (see [`context::bound_entries`]).
    pub max_entries: u64,
    /// Where to serve Prometheus `/metrics` over HTTP, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// TLS on the gRPC port and towards peers; `None`: plain gRPC.
    pub tls: Option<NodeTls>,
    /// The Raft timers.
    pub raft_timing: RaftTiming,
}

/// TLS for a cache node, with the files already read.
#[derive(Clone)]
pub struct NodeTls {
    /// PEM certificate chain the node serves, and presents to the peers it dials.
    pub cert: Vec<u8>,
    /// PEM private key of `cert`.
    pub key: Secret,
    /// PEM CA bundle the peers' certificates are verified against; `None`: the webpki roots.
    pub ca: Option<Vec<u8>>,
    /// Callers (gateways, cachectl, peers) must present a certificate signed by this PEM CA
    /// bundle (mutual TLS); `None`: any caller may connect.
    pub client_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls")
            .field("custom_ca", &self.ca.is_some())
            .field("client_certificates_required", &self.client_ca.is_some())
            .finish_non_exhaustive()
    }
}

impl NodeTls {
    /// How the node dials its peers: verifying them against `ca`, presenting its own
    /// certificate.
    fn dialer(&self) -> crate::cacheclient::Dialer {
        crate::cacheclient::Dialer::new(Some(&crate::outbound::StoreTls {
            ca: self.ca.clone(),
            client: Some((self.cert.clone(), self.key.clone())),
            insecure_skip_verify: false,
        }))
    }

    fn server(&self) -> tonic::transport::ServerTlsConfig {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let cfg =
            ServerTlsConfig::new().identity(Identity::from_pem(&self.cert, self.key.expose()));
        match &self.client_ca {
            Some(ca) => cfg.client_ca_root(Certificate::from_pem(ca)),
            None => cfg,
        }
    }
}

/// Why a cache node stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum CacheNodeError {
    /// The data directory or database could not be opened.
    #[error("data directory {dir}: {message}")]
    Data {
        /// The directory.
        dir: String,
        /// What went wrong.
        message: String,
    },
    /// openraft refused to start.
    #[error("raft: {0}")]
    Raft(String),
    /// The TLS certificate, key or CA could not be used.
    #[error("tls: {0}")]
    Tls(String),
    /// The credentials are incomplete, or missing where they must not be.
    #[error("authentication: {0}")]
    Credentials(#[from] auth::CredentialsError),
    /// Bearer tokens would cross a network in clear.
    #[error(
        "role tokens would cross the network in clear ({0} is not on this host): give --tls-cert and --tls-key, or pass --allow-plaintext on a network you trust"
    )]
    Plaintext(String),
    /// The listener could not be bound or served.
    #[error("cannot serve on {addr}: {message}")]
    Serve {
        /// The address.
        addr: SocketAddr,
        /// What went wrong.
        message: String,
    },
}

/// Where bearer tokens would cross a network in clear: with tokens and without TLS, the first
/// address of this node (listening) or of another (peers, members, join targets) that is not
/// on this host.
fn tokens_in_clear(cfg: &CacheNodeConfig) -> Option<String> {
    if cfg.tls.is_some() || !cfg.credentials.has_tokens() {
        return None;
    }
    if !cfg.listen.ip().is_loopback() {
        return Some(cfg.listen.to_string());
    }
    let others = (cfg.peers.values().chain(cfg.init.values()))
        .chain(&cfg.join)
        .map(String::as_str);
    crate::outbound::first_off_host(others).map(str::to_owned)
}

/// Runs a cache node until `shutdown` is cancelled.
pub async fn run(cfg: CacheNodeConfig, shutdown: CancellationToken) -> Result<(), CacheNodeError> {
    cfg.credentials.check(cfg.listen, cfg.insecure_no_auth)?;
    if !cfg.credentials.enabled() && !cfg.listen.ip().is_loopback() {
        tracing::warn!(listen = %cfg.listen, "--insecure-no-auth: anyone who can reach this port may read, evict and rewrite the cache");
    }
    if let Some(away) = tokens_in_clear(&cfg) {
        if !cfg.allow_plaintext {
            return Err(CacheNodeError::Plaintext(away));
        }
        tracing::warn!(%away, "--allow-plaintext: role tokens cross the network in clear; anyone on the path can read them");
    }
    let data = |message: String| CacheNodeError::Data {
        dir: cfg.data_dir.display().to_string(),
        message,
    };
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| data(e.to_string()))?;
    let database = cfg.data_dir.join("raft.redb");
    let dialer = cfg
        .tls
        .as_ref()
        .map_or_else(crate::cacheclient::Dialer::default, NodeTls::dialer);
    if !database.exists() && !cfg.init.is_empty() {
        let others = cfg.init.iter().filter(|(id, _)| **id != cfg.id);
        let token = cfg.credentials.operator.secret.as_ref();
        identity::check_not_forgotten(cfg.id, others.map(|(_, a)| a), token, &dialer)
            .await
            .map_err(data)?;
    }
    identity::claim(&cfg.data_dir, cfg.id).map_err(data)?;
    let db = redb::Builder::new()
        .set_cache_size(DB_CACHE_BYTES)
        .create(&database)
        .map_err(|e| data(e.to_string()))?;
    let db = Arc::new(db);
    let log_store = log_store::LogStore::open(Arc::clone(&db)).map_err(|e| data(e.to_string()))?;
    let snapshots = snapshot::Snapshots::open(state_machine_files(&cfg.data_dir))
        .map_err(|e| data(e.to_string()))?;
    let (state_machine, shared) =
        state_machine::StateMachine::open(Arc::clone(&db), snapshots.clone()).map_err(data)?;

    let raft_config = openraft::Config {
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
    .map_err(|e| CacheNodeError::Raft(e.to_string()))?;
    // Everything that can fail is set up before Raft starts: a port that is taken or a bad
    // certificate stops the node before it has anything to shut down.
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| CacheNodeError::Serve {
            addr: cfg.listen,
            message: e.to_string(),
        })?;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &cfg.tls {
        builder = builder
            .tls_config(tls.server())
            .map_err(|e| CacheNodeError::Tls(e.to_string()))?;
    }
    let metrics_listener =
        match cfg.metrics_listen {
            None => None,
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                CacheNodeError::Serve {
                    addr,
                    message: e.to_string(),
                }
            })?),
        };
    let raft_runtime = RaftRuntime::start().map_err(|e| CacheNodeError::Raft(e.to_string()))?;
    let elections = Arc::new(failover::Elections::default());
    let network = network::Network {
        elections: Arc::clone(&elections),
        peer_overrides: cfg.peers.clone(),
        // A peer that died and came back at its address is dialed again within a lease, before
        // it would stand for election for want of hearing the leader.
        dialer: dialer
            .clone()
            .patience(cfg.raft_timing.election_timeout_max()),
        bearer: crate::cacheclient::bearer(cfg.credentials.peer.secret.as_ref()),
    };
    let raft = raft_runtime
        .spawn(Raft::new(
            cfg.id,
            Arc::new(raft_config),
            network,
            log_store,
            state_machine,
        ))
        .await
        .map_err(|e| CacheNodeError::Raft(e.to_string()))?
        .map_err(|e| CacheNodeError::Raft(e.to_string()))?;

    let (puts, put_queue) = tokio::sync::mpsc::channel(4 * 512);
    let ctx = Arc::new(NodeContext {
        id: cfg.id,
        addr: cfg.advertise.clone(),
        raft: raft.clone(),
        shared,
        shutdown: shutdown.clone(),
        puts,
        watches: std::sync::Mutex::default(),
        fill_leases: context::FillLeases::default(),
        rates: crate::store::rate::RateTable::default(),
        snapshots,
        quorum_silence: cfg.raft_timing.quorum_silence(),
        elections: Arc::clone(&elections),
    });
    let watchdog = tokio::spawn(failover::watch(
        Arc::clone(&ctx),
        elections,
        cfg.raft_timing,
        shutdown.clone(),
    ));
    let committer = tokio::spawn(context::group_commit(
        Arc::clone(&ctx),
        put_queue,
        shutdown.clone(),
    ));
    let bounder = tokio::spawn(context::bound_entries(
        Arc::clone(&ctx),
        cfg.max_entries,
        shutdown.clone(),
    ));
    let (health, health_service) = tonic_health::server::health_reporter();
    let reporter = tokio::spawn(context::report_health(
        Arc::clone(&ctx),
        health,
        shutdown.clone(),
    ));
    let server = builder
        .trace_fn(grpc_span)
        .layer(auth::AuthLayer::new(cfg.credentials.clone()))
        .add_service(
            RaftTransportServer::new(RaftService(Arc::clone(&ctx)))
                .max_decoding_message_size(network::MAX_RAFT_MESSAGE_BYTES)
                .max_encoding_message_size(network::MAX_RAFT_MESSAGE_BYTES),
        )
        .add_service(
            TokenCacheServer::new(CacheService(Arc::clone(&ctx)))
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(
            AdminServer::new(AdminService(Arc::clone(&ctx)))
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(health_service)
        .serve_with_incoming_shutdown(
            // Without TCP_NODELAY an answer written after an unacknowledged one waits for the
            // peer's delayed ACK: ~40 ms on a commit's every hop.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown.clone().cancelled_owned(),
        );
    let metrics_server = metrics_listener
        .map(|listener| serve_metrics(listener, Arc::clone(&ctx), shutdown.clone()));
    tracing::info!(id = cfg.id, addr = %cfg.advertise, listen = %cfg.listen, "cache node listening");

    if !cfg.init.is_empty() {
        let members: BTreeMap<u64, BasicNode> = cfg
            .init
            .iter()
            .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
            .collect();
        match raft.initialize(members).await {
            Ok(()) => tracing::info!(members = cfg.init.len(), "cluster initialised"),
            // Initialised before (a restart, or another member initialised it first).
            Err(e) => tracing::info!(reason = %e, "cluster already initialised"),
        }
    }
    let joiner = (!cfg.join.is_empty())
        .then(|| cfg.join.clone())
        .map(|members| {
            let (id, addr, token) = (
                cfg.id,
                cfg.advertise.clone(),
                cfg.credentials.operator.secret.clone(),
            );
            tokio::spawn(join(
                members,
                id,
                addr,
                token,
                dialer.clone(),
                shutdown.clone(),
            ))
        });

    let served = server.await;
    if let Some(m) = metrics_server {
        let _ = m.await;
    }
    if let Some(j) = joiner {
        j.abort();
    }
    let _ = committer.await;
    let _ = bounder.await;
    let _ = reporter.await;
    let _ = watchdog.await;
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft did not shut down cleanly");
    }
    drop(ctx);
    drop(raft);
    raft_runtime.stop().await;
    tracing::info!(id = cfg.id, "cache node stopped");
    served.map_err(|e| CacheNodeError::Serve {
        addr: cfg.listen,
        message: e.to_string(),
    })
}

/// The runtime Raft's core runs on: one thread of its own (see the module documentation).
struct RaftRuntime(Option<tokio::runtime::Runtime>);

impl RaftRuntime {
    fn start() -> std::io::Result<Self> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("raft")
            .enable_all()
            .build()
            .map(|rt| Self(Some(rt)))
    }

    /// Runs `work` there (openraft spawns its tasks on the runtime it is created on).
    fn spawn<F>(&self, work: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.0.as_ref().expect("running until stopped").spawn(work)
    }

    /// Stops it (after `Raft::shutdown`), waiting a little for its tasks, off the async threads.
    async fn stop(mut self) {
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

/// Serves `GET /metrics` and `GET /readyz` (200 while the node leads with a quorum or follows a
/// known leader, 503 otherwise: the probe that keeps a node without quorum out of rotation) on
/// `listener` until `stop`.
fn serve_metrics(
    listener: tokio::net::TcpListener,
    ctx: Arc<NodeContext>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    use futures_util::FutureExt;
    let gauges = Arc::new(metrics::RaftMetrics::new());
    let handler: crate::http::Handler = Arc::new(move |req, _| {
        let resp = match req.uri().path() {
            "/metrics" => {
                let mut r = crate::http::response::json(
                    http::StatusCode::OK,
                    gauges.render(&ctx.raft, &ctx.shared),
                );
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            "/readyz" => {
                let (status, body) = match ctx.readiness() {
                    Ok(role) => (
                        http::StatusCode::OK,
                        serde_json::json!({ "status": "ready", "role": role }),
                    ),
                    Err(reason) => (
                        http::StatusCode::SERVICE_UNAVAILABLE,
                        serde_json::json!({ "status": "unready", "reason": reason }),
                    ),
                };
                crate::http::response::json(status, body.to_string())
            }
            _ => crate::http::response::error(
                http::StatusCode::NOT_FOUND,
                "not_found",
                "try /metrics or /readyz",
            ),
        };
        async move { resp }.boxed()
    });
    if let Ok(bound) = listener.local_addr() {
        tracing::info!(addr = %bound, "cache node metrics listening");
    }
    tokio::spawn(crate::http::serve(
        listener,
        handler,
        stop,
        Duration::from_secs(1),
        None,
    ))
}

/// Asks `members` (following redirects to the leader) to add this node as a learner, until it
/// succeeds. Promotion to voter is the operator's decision (`Admin.ChangeMembership`).
///
/// The operator token is sent only to a configured member, or to a redirect target whose TLS
/// certificate proves the address: without TLS a redirect names an address no one vouched for.
async fn join(
    members: Vec<String>,
    id: u64,
    addr: String,
    token: Option<Secret>,
    dialer: crate::cacheclient::Dialer,
    stop: CancellationToken,
) {
    use tokengate_proto::admin::AddLearnerRequest;
    use tokengate_proto::admin::admin_client::AdminClient;
    let bearer = crate::cacheclient::bearer(token.as_ref());
    let mut next = 0;
    let mut target = members[0].clone();
    loop {
        let attempt = async {
            let channel = dialer.channel(&target).map_err(|e| (e.to_string(), None))?;
            let mut client = AdminClient::new(channel);
            let mut req = tonic::Request::new(AddLearnerRequest {
                id,
                addr: addr.clone(),
            });
            if let Some(b) = &bearer {
                req.metadata_mut().insert("authorization", b.clone());
            }
            client.add_learner(req).await.map_err(|s| {
                let leader = crate::cacheclient::leader_hint(&s).map(str::to_owned);
                (s.message().to_owned(), leader)
            })
        };
        match attempt.await {
            Ok(_) => {
                tracing::info!(via = %target, "joined the cluster as a learner");
                return;
            }
            Err((message, leader)) => {
                tracing::info!(via = %target, reason = %message, "cannot join yet; retrying");
                target = match leader {
                    Some(l) if members.contains(&l) || dialer.verifies_servers() => l,
                    _ => {
                        next = (next + 1) % members.len();
                        members[next].clone()
                    }
                };
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// The span of one gRPC call that continues a caller's trace. A cache node only ever joins
/// traces: calls without trace context (Raft's own heartbeats, a refresher's lease ticks,
/// cachectl) record nothing, so background chatter does not flood the trace store.
fn grpc_span(req: &http::Request<()>) -> tracing::Span {
    let path = req.uri().path();
    if !crate::telemetry::otel::enabled()
        || !req
            .headers()
            .contains_key(crate::telemetry::otel::TRACEPARENT)
    {
        return tracing::Span::none();
    }
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    let span = tracing::info_span!(
        "grpc",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
    );
    crate::telemetry::otel::continue_from(&span, req.headers());
    span
}
