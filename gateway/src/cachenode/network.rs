//! The Raft transport: openraft's RPCs to peer cache nodes over gRPC. Each message carries
//! openraft's own request or response type as JSON (see `proto/proto/raft.proto`).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend, Snapshot, Vote};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokengate_proto::raft::RaftMessage;
use tokengate_proto::raft::raft_transport_client::RaftTransportClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use super::TypeConfig;
use crate::config::StoreTls;

/// A whole snapshot as sent to a follower.
#[derive(Serialize, Deserialize)]
pub struct SnapshotTransfer {
    /// The leader's vote.
    pub vote: Vote<u64>,
    /// What the snapshot covers.
    pub meta: openraft::SnapshotMeta<u64, BasicNode>,
    /// The serialized cache (base64 in JSON).
    #[serde(with = "crate::token::seal::base64_bytes")]
    pub data: Vec<u8>,
}

/// Makes clients for peers.
pub struct Network {
    /// Addresses that replace a peer's membership address for Raft traffic.
    pub peer_overrides: BTreeMap<u64, String>,
    /// How peers are dialed.
    pub dialer: Dialer,
    /// The peer secret sent with every Raft RPC, when the cluster has one.
    pub bearer: Option<Bearer>,
}

/// `authorization: Bearer <secret>` as gRPC metadata.
pub type Bearer = tonic::metadata::MetadataValue<tonic::metadata::Ascii>;

/// The metadata value for `secret`; `None` without one (or one that cannot be a header).
pub fn bearer(secret: Option<&crate::config::Secret>) -> Option<Bearer> {
    secret.and_then(|s| format!("Bearer {}", s.expose()).parse().ok())
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        let addr = self.peer_overrides.get(&target).unwrap_or(&node.addr);
        Peer {
            target,
            client: self.dialer.channel(addr).map(RaftTransportClient::new),
            bearer: self.bearer.clone(),
        }
    }
}

/// How a process dials cache nodes: plain gRPC, or TLS (server verified against a CA bundle or
/// the webpki roots, and a client certificate when the nodes require one). Gateways, cachectl
/// and the nodes themselves (towards their peers) dial the same way.
#[derive(Clone, Default)]
pub struct Dialer {
    tls: Option<ClientTlsConfig>,
}

impl Dialer {
    /// Dials plain gRPC, or TLS as `tls` says.
    pub fn new(tls: Option<&StoreTls>) -> Self {
        let tls = tls.map(|t| {
            let cfg = ClientTlsConfig::new();
            let cfg = match &t.ca {
                Some(ca) => cfg.ca_certificate(Certificate::from_pem(ca)),
                None => cfg.with_webpki_roots(),
            };
            match &t.client {
                Some((cert, key)) => cfg.identity(Identity::from_pem(cert, key.expose())),
                None => cfg,
            }
        });
        Self { tls }
    }

    /// Whether servers are verified by certificate (TLS): a server dialed by name proves it
    /// holds that name.
    pub fn verifies_servers(&self) -> bool {
        self.tls.is_some()
    }

    /// A lazily connected gRPC channel to `addr` (`host:port`). The server's certificate must
    /// name the host as given (a DNS name, or an IP address in its subjectAltName).
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        Ok(endpoint.connect_lazy())
    }
}

/// One peer.
pub struct Peer {
    target: u64,
    client: Result<RaftTransportClient<Channel>, tonic::transport::Error>,
    bearer: Option<Bearer>,
}

/// Why a call to a peer failed, before openraft's error types are chosen.
enum CallError {
    Unreachable(tonic::Status),
    Timeout,
    Decode(serde_json::Error),
}

impl Peer {
    async fn call<Req, Resp, Fut>(
        &mut self,
        req: &Req,
        ttl: Duration,
        send: impl FnOnce(RaftTransportClient<Channel>, tonic::Request<RaftMessage>) -> Fut,
    ) -> Result<Resp, CallError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        Fut: Future<Output = Result<tonic::Response<RaftMessage>, tonic::Status>>,
    {
        let client = match &self.client {
            Ok(c) => c.clone(),
            Err(e) => {
                return Err(CallError::Unreachable(tonic::Status::unavailable(
                    e.to_string(),
                )));
            }
        };
        let mut msg = tonic::Request::new(RaftMessage {
            json: serde_json::to_vec(req).expect("raft messages serialize"),
        });
        if let Some(b) = &self.bearer {
            msg.metadata_mut().insert("authorization", b.clone());
        }
        match tokio::time::timeout(ttl, send(client, msg)).await {
            Err(_) => Err(CallError::Timeout),
            Ok(Err(status)) => Err(CallError::Unreachable(status)),
            Ok(Ok(resp)) => {
                serde_json::from_slice(&resp.into_inner().json).map_err(CallError::Decode)
            }
        }
    }

    fn rpc_error<E: std::error::Error>(
        &self,
        e: CallError,
        ttl: Duration,
    ) -> RPCError<u64, BasicNode, E> {
        match e {
            CallError::Unreachable(s) => RPCError::Unreachable(Unreachable::new(&s)),
            CallError::Timeout => RPCError::Network(NetworkError::new(&std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer from node {} within {ttl:?}", self.target),
            ))),
            CallError::Decode(d) => RPCError::Network(NetworkError::new(&d)),
        }
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let ttl = option.hard_ttl();
        let answer: Result<AppendEntriesResponse<u64>, RaftError<u64>> = self
            .call(
                &rpc,
                ttl,
                |mut c, m| async move { c.append_entries(m).await },
            )
            .await
            .map_err(|e| self.rpc_error(e, ttl))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let ttl = option.hard_ttl();
        let answer: Result<VoteResponse<u64>, RaftError<u64>> = self
            .call(&rpc, ttl, |mut c, m| async move { c.vote(m).await })
            .await
            .map_err(|e| self.rpc_error(e, ttl))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<u64>,
        snapshot: Snapshot<TypeConfig>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<u64>, StreamingError<TypeConfig, Fatal<u64>>> {
        let ttl = option.hard_ttl().max(Duration::from_secs(10));
        let transfer = SnapshotTransfer {
            vote,
            meta: snapshot.meta,
            data: *snapshot.snapshot,
        };
        let answer: Result<SnapshotResponse<u64>, Fatal<u64>> = self
            .call(&transfer, ttl, |mut c, m| async move {
                c.install_snapshot(m).await
            })
            .await
            .map_err(|e| match self.rpc_error::<Fatal<u64>>(e, ttl) {
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                RPCError::Network(n) => StreamingError::Network(n),
                other => StreamingError::Network(NetworkError::new(&other)),
            })?;
        answer.map_err(|e| StreamingError::RemoteError(RemoteError::new(self.target, e)))
    }
}
