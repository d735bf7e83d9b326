//! The Raft transport: openraft's RPCs to peer cache nodes over gRPC. Log replication and votes
//! carry openraft's own request or response type as JSON; a snapshot is its file, streamed in
//! chunks (see `proto/proto/raft.proto`).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
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
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use tokengate_proto::raft::raft_transport_client::RaftTransportClient;
use tokengate_proto::raft::{RaftMessage, SnapshotChunk};
use tonic::transport::Channel;

use super::TypeConfig;
use super::snapshot::{CHUNK_BYTES, SnapshotFile};
use crate::cacheclient::{Bearer, Dialer};

/// What the first chunk of a snapshot stream says: the leader's vote and the snapshot's
/// metadata.
pub type SnapshotHeader = (Vote<u64>, openraft::SnapshotMeta<u64, BasicNode>);

/// Largest message of the Raft transport, either way: an `AppendEntries` of
/// [`super::MAX_PAYLOAD_ENTRIES`] log entries of at most [`super::context::MAX_PUT_BATCH_BYTES`]
/// each (JSON, with base64 ciphertexts), or one snapshot chunk.
pub const MAX_RAFT_MESSAGE_BYTES: usize = 64 << 20;

/// The metadata naming the node a Raft message is for. An address outlives the node behind it
/// (a StatefulSet pod keeps its name when its disk and id are replaced): without it, a leader
/// would take the new node's answers for the old one's, count it in its quorum, and never
/// learn that the old node is gone.
pub const TARGET_HEADER: &str = "tokengate-raft-target";

/// Makes clients for peers.
pub struct Network {
    /// Vote answers for the failover watchdog.
    pub elections: Arc<super::failover::Elections>,
    /// Addresses that replace a peer's membership address for Raft traffic.
    pub peer_overrides: BTreeMap<u64, String>,
    /// How peers are dialed.
    pub dialer: Dialer,
    /// The peer secret sent with every Raft RPC, when the cluster has one.
    pub bearer: Option<Bearer>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        let addr = self.peer_overrides.get(&target).unwrap_or(&node.addr);
        Peer {
            target,
            client: dial(&self.dialer, addr),
            addr: addr.clone(),
            dialer: self.dialer.clone(),
            silent_since: None,
            bearer: self.bearer.clone(),
            elections: Arc::clone(&self.elections),
        }
    }
}

fn dial(
    dialer: &Dialer,
    addr: &str,
) -> Result<RaftTransportClient<Channel>, tonic::transport::Error> {
    dialer.channel(addr).map(|c| {
        RaftTransportClient::new(c)
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
    })
}

/// One peer.
pub struct Peer {
    target: u64,
    client: Result<RaftTransportClient<Channel>, tonic::transport::Error>,
    addr: String,
    dialer: Dialer,
    /// While no call is answered: since when, or since the channel was last dialed anew.
    silent_since: Option<std::time::Instant>,
    bearer: Option<Bearer>,
    elections: Arc<super::failover::Elections>,
}

/// Why a call to a peer failed, before openraft's error types are chosen.
enum CallError {
    Unreachable(tonic::Status),
    Timeout,
    Decode(serde_json::Error),
}

impl Peer {
    /// A client for the peer and `body` as a request carrying the peer credential; the peer is
    /// unreachable when its address could not be made into a channel.
    fn request<T>(
        &self,
        body: T,
    ) -> Result<(RaftTransportClient<Channel>, tonic::Request<T>), CallError> {
        let client = match &self.client {
            Ok(c) => c.clone(),
            Err(e) => {
                return Err(CallError::Unreachable(tonic::Status::unavailable(
                    e.to_string(),
                )));
            }
        };
        let mut req = tonic::Request::new(body);
        if let Some(b) = &self.bearer {
            req.metadata_mut().insert("authorization", b.clone());
        }
        req.metadata_mut().insert(
            TARGET_HEADER,
            self.target.to_string().parse().expect("digits"),
        );
        Ok((client, req))
    }

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
        let (client, msg) = self.request(RaftMessage {
            json: serde_json::to_vec(req).expect("raft messages serialize"),
        })?;
        let answer = match tokio::time::timeout(ttl, send(client, msg)).await {
            Err(_) => Err(CallError::Timeout),
            Ok(Err(status)) => Err(CallError::Unreachable(status)),
            Ok(Ok(resp)) => Ok(resp),
        };
        self.redial_if_silent(answer.is_ok());
        serde_json::from_slice(&answer?.into_inner().json).map_err(CallError::Decode)
    }

    /// Dials the peer anew once no call has been answered for the dialer's patience (and
    /// again each patience after): a connection to a node that died can look open for seconds
    /// after the node is back at its address, until TCP's retransmissions draw a reset, and
    /// the node would stand for election meanwhile for want of hearing the leader.
    fn redial_if_silent(&mut self, answered: bool) {
        let now = std::time::Instant::now();
        match self.silent_since {
            _ if answered => self.silent_since = None,
            None => self.silent_since = Some(now),
            Some(since) if now - since >= self.dialer.patience_of() => {
                tracing::debug!(target = self.target, "peer silent: dialing it anew");
                self.client = dial(&self.dialer, &self.addr);
                self.silent_since = Some(now);
            }
            Some(_) => {}
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
        if let Ok(r) = &answer {
            let term = rpc.vote.leader_id().get_term();
            self.elections
                .answered(term, &rpc.last_log_id, &r.last_log_id);
        }
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<u64>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<u64>, StreamingError<TypeConfig, Fatal<u64>>> {
        let file = *snapshot.snapshot;
        // Generous: a slow disk or network moves a few MiB a second.
        let ttl = option.hard_ttl().max(Duration::from_secs(30))
            + Duration::from_secs(file.len / (4 << 20));
        let header =
            serde_json::to_vec(&(vote, snapshot.meta)).expect("snapshot metadata serializes");
        let len = file.len;
        let (client, req) = self
            .request(snapshot_chunks(file, header))
            .map_err(|e| self.streaming_error(e, ttl))?;
        let started = std::time::Instant::now();
        let sent = async move {
            let mut client = client;
            client.install_snapshot(req).await
        };
        let answer = tokio::select! {
            closed = cancel => {
                return Err(StreamingError::Closed(closed));
            }
            r = tokio::time::timeout(ttl, sent) => r,
        };
        let message = match answer {
            Err(_) => return Err(self.streaming_error(CallError::Timeout, ttl)),
            Ok(Err(status)) => {
                return Err(self.streaming_error(CallError::Unreachable(status), ttl));
            }
            Ok(Ok(resp)) => resp.into_inner(),
        };
        let answer: Result<SnapshotResponse<u64>, Fatal<u64>> =
            serde_json::from_slice(&message.json)
                .map_err(|e| self.streaming_error(CallError::Decode(e), ttl))?;
        tracing::info!(
            target_node = self.target,
            bytes = len,
            took_ms = started.elapsed().as_millis() as u64,
            "snapshot sent"
        );
        answer.map_err(|e| StreamingError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl Peer {
    fn streaming_error(
        &self,
        e: CallError,
        ttl: Duration,
    ) -> StreamingError<TypeConfig, Fatal<u64>> {
        match self.rpc_error::<Fatal<u64>>(e, ttl) {
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            RPCError::Network(n) => StreamingError::Network(n),
            other => StreamingError::Network(NetworkError::new(&other)),
        }
    }
}

/// The chunks of a snapshot file: the header first, then at most [`CHUNK_BYTES`] of data per
/// chunk, read from disk as the stream is polled; the last chunk carries the length and SHA-256
/// of everything sent. A read error ends the stream early, which the receiver refuses.
fn snapshot_chunks(
    file: SnapshotFile,
    header: Vec<u8>,
) -> impl futures_util::Stream<Item = SnapshotChunk> + Send + 'static {
    struct Reading {
        file: tokio::fs::File,
        header: Option<Vec<u8>>,
        hash: Sha256,
        sent: u64,
        done: bool,
    }
    let state = Reading {
        file: tokio::fs::File::from_std(file.file),
        header: Some(header),
        hash: Sha256::new(),
        sent: 0,
        done: false,
    };
    futures_util::stream::unfold(state, |mut s| async move {
        use tokio::io::AsyncReadExt;
        if s.done {
            return None;
        }
        let mut data = Vec::with_capacity(CHUNK_BYTES);
        while data.len() < CHUNK_BYTES {
            match (&mut s.file)
                .take((CHUNK_BYTES - data.len()) as u64)
                .read_to_end(&mut data)
                .await
            {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the snapshot file; the transfer stops");
                    return None;
                }
            }
        }
        s.hash.update(&data);
        s.sent += data.len() as u64;
        let last = data.len() < CHUNK_BYTES;
        let chunk = SnapshotChunk {
            header_json: s.header.take().unwrap_or_default(),
            data,
            sha256: if last {
                s.hash.clone().finalize().to_vec()
            } else {
                Vec::new()
            },
            last,
            length: if last { s.sent } else { 0 },
        };
        s.done = last;
        Some((chunk, s))
    })
}
