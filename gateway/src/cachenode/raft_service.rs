//! The Raft transport server: openraft's RPCs from peer nodes. Log replication and votes carry
//! openraft's own types as JSON; a snapshot arrives as a stream of chunks, written to a file and
//! checked (length and SHA-256) before it is installed.

use std::sync::Arc;

use openraft::Snapshot;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use tokengate_proto::raft::{RaftMessage, SnapshotChunk};
use tonic::{Request, Response, Status};

use super::TypeConfig;
use super::snapshot::{MAX_SNAPSHOT_BYTES, SnapshotFile};

use super::context::NodeContext;

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

impl RaftService {
    /// Refuses a message meant for another node (or that does not say which).
    fn addressed_to_me<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let target = req
            .metadata()
            .get(super::network::TARGET_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match target {
            Some(t) if t == self.0.id => Ok(()),
            Some(t) => Err(Status::failed_precondition(format!(
                "this address serves node {}, not node {t}",
                self.0.id
            ))),
            None => Err(Status::invalid_argument(format!(
                "a raft message must name its target node ({})",
                super::network::TARGET_HEADER
            ))),
        }
    }
}

#[tonic::async_trait]
impl tokengate_proto::raft::raft_transport_server::RaftTransport for RaftService {
    async fn append_entries(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.addressed_to_me(&req)?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req)?;
        let answer = self.0.raft.append_entries(rpc).await;
        // Accepted from the leader this node follows (a higher vote would be refused).
        if answer
            .as_ref()
            .is_ok_and(|r| !matches!(r, openraft::raft::AppendEntriesResponse::HigherVote(_)))
        {
            self.0.elections.leader_heard();
        }
        encode(&answer)
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.addressed_to_me(&req)?;
        let rpc: VoteRequest<u64> = decode(req)?;
        let theirs = rpc.last_log_id;
        let answer = self.0.raft.vote(rpc).await;
        // Refused for a shorter log: the candidate's timer says the leader is gone, and this
        // node's log can win (the watchdog stands if its own leader is silent too).
        if let Ok(r) = &answer
            && !r.vote_granted
            && r.last_log_id > theirs
        {
            self.0.elections.refused_shorter_log();
        }
        encode(&answer)
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
        self.addressed_to_me(&req)?;
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
