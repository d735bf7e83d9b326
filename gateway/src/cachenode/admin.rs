//! The `Admin` gRPC service: cluster status and membership, snapshots, backups, evictions. Every call
//! passes the bearer-token interceptor (`super::admin_auth`) first.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ServerState};
use tokengate_proto::admin as pa;
use tonic::{Request, Response, Status};

use super::context::NodeContext;
use super::state::{Command, Outcome};
use crate::cacheclient::convert::key_from;

/// Longest `Admin.Snapshot` waits for the snapshot it triggered.
const SNAPSHOT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The `Admin` server (behind the bearer-token interceptor, see `super::admin_auth`).
pub struct AdminService(pub Arc<NodeContext>);

fn membership_error(
    ctx: &NodeContext,
    e: RaftError<u64, ClientWriteError<u64, BasicNode>>,
) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ctx.redirect(f.leader_id),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            Status::failed_precondition(c.to_string())
        }
        other => Status::unavailable(other.to_string()),
    }
}

/// The chunks of a backup, as sent.
type BackupChunks =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<pa::BackupChunk, Status>> + Send>>;

#[tonic::async_trait]
impl pa::admin_server::Admin for AdminService {
    type BackupStream = BackupChunks;

    async fn backup(
        &self,
        _: Request<pa::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let chunks = super::backup::backup(&self.0).await?;
        Ok(Response::new(Box::pin(chunks)))
    }

    async fn restore(
        &self,
        req: Request<tonic::Streaming<pa::BackupChunk>>,
    ) -> Result<Response<pa::RestoreResponse>, Status> {
        super::backup::restore(&self.0, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn status(
        &self,
        _: Request<pa::StatusRequest>,
    ) -> Result<Response<pa::StatusResponse>, Status> {
        let m = self.0.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let replication: BTreeMap<u64, Option<u64>> = m
            .replication
            .as_ref()
            .map(|r| r.iter().map(|(id, l)| (*id, l.map(|l| l.index))).collect())
            .unwrap_or_default();
        let members = membership
            .nodes()
            .map(|(id, node)| pa::Member {
                id: *id,
                addr: node.addr.clone(),
                role: if voters.contains(id) {
                    "voter"
                } else {
                    "learner"
                }
                .into(),
                matched_index: replication.get(id).copied().flatten(),
            })
            .collect();
        let state = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let entries = self.0.shared.read(|a| a.cache.len() as u64);
        Ok(Response::new(pa::StatusResponse {
            id: self.0.id,
            addr: self.0.addr.clone(),
            leader: m.current_leader,
            term: m.current_term,
            state: state.into(),
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            members,
            entries,
        }))
    }

    async fn add_learner(
        &self,
        req: Request<pa::AddLearnerRequest>,
    ) -> Result<Response<pa::MembershipResponse>, Status> {
        let req = req.into_inner();
        let node = BasicNode { addr: req.addr };
        let resp = self
            .0
            .raft
            .add_learner(req.id, node, true)
            .await
            .map_err(|e| membership_error(&self.0, e))?;
        Ok(Response::new(pa::MembershipResponse {
            index: resp.log_id.index,
        }))
    }

    async fn change_membership(
        &self,
        req: Request<pa::ChangeMembershipRequest>,
    ) -> Result<Response<pa::MembershipResponse>, Status> {
        let voters: BTreeSet<u64> = req.into_inner().voters.into_iter().collect();
        if voters.is_empty() {
            return Err(Status::invalid_argument(
                "a cluster needs at least one voter",
            ));
        }
        let resp = self
            .0
            .raft
            .change_membership(voters, false)
            .await
            .map_err(|e| membership_error(&self.0, e))?;
        Ok(Response::new(pa::MembershipResponse {
            index: resp.log_id.index,
        }))
    }

    async fn snapshot(
        &self,
        _: Request<pa::SnapshotRequest>,
    ) -> Result<Response<pa::SnapshotResponse>, Status> {
        let mut metrics = self.0.raft.metrics();
        let applied = metrics.borrow().last_applied.map_or(0, |l| l.index);
        self.0
            .raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        // Triggering only asks; answer once the snapshot covers what was applied when asked.
        let built = metrics.wait_for(|m| m.snapshot.is_some_and(|l| l.index >= applied));
        let index = match tokio::time::timeout(SNAPSHOT_WAIT, built).await {
            Ok(Ok(m)) => m.snapshot.map(|l| l.index),
            _ => {
                return Err(Status::deadline_exceeded(
                    "the snapshot is still being built",
                ));
            }
        };
        Ok(Response::new(pa::SnapshotResponse { index }))
    }

    async fn evict(
        &self,
        req: Request<pa::EvictRequest>,
    ) -> Result<Response<pa::EvictResponse>, Status> {
        let req = req.into_inner();
        let mut evicted = 0;
        if req.all {
            if let (Outcome::Count(n), _) = self.0.write(Command::EvictAll).await? {
                evicted = n;
            }
        } else {
            for k in &req.keys {
                let command = Command::Evict {
                    key: key_from(k)?,
                    version: None,
                };
                if self.0.write(command).await?.0 == Outcome::Flag(true) {
                    evicted += 1;
                }
            }
        }
        Ok(Response::new(pa::EvictResponse { evicted }))
    }
}
