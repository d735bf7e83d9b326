//! `gateway cache-node`: a member of the Raft-replicated cache service, for fleets that would
//! rather not run Redis (`ARCHITECTURE.md`, *The cache service*).
//!
//! # Layout
//!
//! - this module: [`run`], which opens the node's storage, starts Raft and its services, and
//!   stops them in order.
//! - [`settings`](CacheNodeConfig): the Raft timers, the bounds, the configuration and TLS, and
//!   why a node stops; `runtime`: the one-thread runtime Raft's core runs on, openraft's
//!   settings, opening the data directory; `listeners`: the gRPC server with its services, the
//!   metrics and readiness listener, joining a cluster.
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
mod listeners;
pub mod log_store;
pub mod metrics;
pub mod network;
pub mod raft_service;
mod runtime;
mod settings;
pub mod snapshot;
pub mod state;
pub mod state_machine;

use std::collections::BTreeMap;
use std::sync::Arc;

use openraft::{BasicNode, Raft};
use tokio_util::sync::CancellationToken;

use context::NodeContext;
use runtime::RaftRuntime;
pub use settings::{
    CacheNodeConfig, CacheNodeError, DB_CACHE_BYTES, DEFAULT_MAX_ENTRIES, DEFAULT_SNAPSHOT_LOGS,
    ELECTION_TIMEOUT_MIN, HEARTBEAT, MAX_PAYLOAD_ENTRIES, MAX_REQUEST_BYTES, NodeTls, RaftTiming,
};
use state::{Outcome, Stamped};

openraft::declare_raft_types!(
    /// The cache service's Raft types: stamped commands in, outcomes out, snapshots as files.
    pub TypeConfig:
        D = Stamped,
        R = Outcome,
        SnapshotData = snapshot::SnapshotFile,
);

/// Runs a cache node until `shutdown` is cancelled.
pub async fn run(cfg: CacheNodeConfig, shutdown: CancellationToken) -> Result<(), CacheNodeError> {
    cfg.credentials.check(cfg.listen, cfg.insecure_no_auth)?;
    if !cfg.credentials.enabled() && !cfg.listen.ip().is_loopback() {
        tracing::warn!(listen = %cfg.listen, "--insecure-no-auth: anyone who can reach this port may read, evict and rewrite the cache");
    }
    if let Some(away) = cfg.tokens_in_clear() {
        if !cfg.allow_plaintext {
            return Err(CacheNodeError::Plaintext(away));
        }
        tracing::warn!(%away, "--allow-plaintext: role tokens cross the network in clear; anyone on the path can read them");
    }
    let dialer = cfg
        .tls
        .as_ref()
        .map_or_else(crate::cacheclient::Dialer::default, NodeTls::dialer);
    let runtime::Storage {
        log_store,
        state_machine,
        shared,
        snapshots,
    } = runtime::Storage::open(&cfg, &dialer).await?;
    let raft_config = runtime::raft_config(&cfg)?;
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
            raft_config,
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
    let server = listeners::serve_grpc(
        builder,
        listener,
        &ctx,
        &cfg.credentials,
        health_service,
        shutdown.clone(),
    );
    let metrics_server = metrics_listener
        .map(|listener| listeners::serve_metrics(listener, Arc::clone(&ctx), shutdown.clone()));
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
            tokio::spawn(listeners::join(
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
