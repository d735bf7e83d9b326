//! The Raft cache service's `Admin` calls: status of every node, and membership and snapshot
//! changes sent to the leader.

use std::time::Duration;

use gateway::cacheclient::Dialer;
use serde::Serialize;
use tokengate_proto::admin as pa;
use tokengate_proto::admin::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::Failure;
use crate::render::{self, Format};

/// Admin calls over a set of endpoints.
pub struct Admin {
    endpoints: Vec<String>,
    token: Option<String>,
    timeout: Duration,
    dialer: Dialer,
}

/// What one endpoint said.
#[derive(Serialize)]
pub struct NodeStatus {
    pub endpoint: String,
    #[serde(flatten)]
    pub status: Option<StatusView>,
    pub error: Option<String>,
}

/// A node's view of the cluster.
#[derive(Serialize)]
pub struct StatusView {
    pub id: u64,
    pub state: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    /// Entries the leader has that this node has not applied yet.
    pub lag: Option<u64>,
    pub entries: u64,
    pub members: Vec<MemberView>,
}

#[derive(Serialize)]
pub struct MemberView {
    pub id: u64,
    pub addr: String,
    pub role: String,
}

impl Admin {
    pub fn new(
        endpoints: Vec<String>,
        token: Option<String>,
        timeout: Duration,
        dialer: Dialer,
    ) -> Self {
        Self {
            dialer,
            endpoints,
            token,
            timeout,
        }
    }

    fn client(&self, addr: &str) -> Result<AdminClient<Channel>, Failure> {
        let channel = self
            .dialer
            .channel(addr)
            .map_err(|e| Failure::Usage(format!("{addr} is not host:port: {e}")))?;
        Ok(AdminClient::new(channel))
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(self.timeout);
        if let Some(t) = &self.token
            && let Ok(v) = format!("Bearer {t}").parse()
        {
            req.metadata_mut().insert("authorization", v);
        }
        req
    }

    /// A one-line, secret-free description of a failed call to `addr`.
    fn failure(addr: &str, s: &tonic::Status) -> String {
        match s.code() {
            tonic::Code::Unauthenticated => {
                format!("{addr} refused the admin token ({})", s.message())
            }
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                format!("cannot reach cache node {addr}: {}", s.message())
            }
            _ => format!("{addr}: {}", s.message()),
        }
    }

    async fn status_of(&self, addr: &str) -> Result<pa::StatusResponse, String> {
        let mut c = self.client(addr).map_err(|e| e.to_string())?;
        let call = c.status(self.request(pa::StatusRequest {}));
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(Self::failure(addr, &s)),
            Err(_) => Err(format!(
                "cannot reach cache node {addr}: no answer within {:?}",
                self.timeout
            )),
        }
    }

    /// Every endpoint's status; fails only when none answered.
    pub async fn statuses(&self) -> Result<Vec<NodeStatus>, Failure> {
        let calls = self.endpoints.iter().map(|e| self.status_of(e));
        let answers = futures_util::future::join_all(calls).await;
        let leader_log = answers
            .iter()
            .filter_map(|a| a.as_ref().ok())
            .find(|s| s.state == "leader")
            .and_then(|s| s.last_log_index);
        if answers.iter().all(Result::is_err) {
            let why: Vec<String> = answers.into_iter().filter_map(Result::err).collect();
            return Err(Failure::Server(why.join("; ")));
        }
        Ok(self
            .endpoints
            .iter()
            .zip(answers)
            .map(|(endpoint, answer)| match answer {
                Ok(s) => NodeStatus {
                    endpoint: endpoint.clone(),
                    status: Some(StatusView {
                        lag: leader_log.map(|l| l.saturating_sub(s.applied_index.unwrap_or(0))),
                        id: s.id,
                        state: s.state,
                        leader: s.leader,
                        term: s.term,
                        last_log_index: s.last_log_index,
                        applied_index: s.applied_index,
                        snapshot_index: s.snapshot_index,
                        entries: s.entries,
                        members: s
                            .members
                            .into_iter()
                            .map(|m| MemberView {
                                id: m.id,
                                addr: m.addr,
                                role: m.role,
                            })
                            .collect(),
                    }),
                    error: None,
                },
                Err(e) => NodeStatus {
                    endpoint: endpoint.clone(),
                    status: None,
                    error: Some(e),
                },
            })
            .collect())
    }

    /// `cachectl status`.
    pub async fn status(&self, format: Format) -> Result<String, Failure> {
        let nodes = self.statuses().await?;
        let opt = |v: Option<u64>| v.map_or_else(|| "-".into(), |v| v.to_string());
        let rows = nodes
            .iter()
            .map(|n| match &n.status {
                Some(s) => vec![
                    s.id.to_string(),
                    n.endpoint.clone(),
                    s.state.clone(),
                    opt(s.leader),
                    s.term.to_string(),
                    opt(s.last_log_index),
                    opt(s.applied_index),
                    opt(s.lag),
                    s.entries.to_string(),
                ],
                None => vec![
                    "-".into(),
                    n.endpoint.clone(),
                    "unreachable".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    n.error.clone().unwrap_or_default(),
                ],
            })
            .collect();
        Ok(render::rows(
            &[
                "ID", "ENDPOINT", "STATE", "LEADER", "TERM", "LAST LOG", "APPLIED", "LAG",
                "ENTRIES",
            ],
            rows,
            &nodes,
            format,
        ))
    }

    /// The leader's address and its view of the membership.
    async fn leader(&self) -> Result<(String, pa::StatusResponse), Failure> {
        let nodes = self.statuses().await?;
        let leader = nodes
            .iter()
            .filter_map(|n| n.status.as_ref())
            .find_map(|s| s.leader)
            .ok_or_else(|| Failure::Server("the cluster has no leader right now".into()))?;
        let addr = nodes
            .iter()
            .filter_map(|n| n.status.as_ref())
            .flat_map(|s| &s.members)
            .find(|m| m.id == leader)
            .map(|m| m.addr.clone())
            .ok_or_else(|| Failure::Server("the leader is not among the members".into()))?;
        // The token goes only where the operator pointed it: a membership address is what a
        // node says, and a node that lies would otherwise collect the admin token.
        if !self.endpoints.contains(&addr) {
            return Err(Failure::Server(format!(
                "the leader is {addr}, which is not among --endpoints; add it (the admin token is sent to configured endpoints only)"
            )));
        }
        let status = self.status_of(&addr).await.map_err(Failure::Server)?;
        Ok((addr, status))
    }

    /// `members add-learner`.
    pub async fn add_learner(&self, id: u64, addr: String) -> Result<u64, Failure> {
        let (leader, _) = self.leader().await?;
        let mut c = self.client(&leader)?;
        let req = self.request(pa::AddLearnerRequest { id, addr });
        c.add_learner(req)
            .await
            .map(|r| r.into_inner().index)
            .map_err(|s| Failure::Server(Self::failure(&leader, &s)))
    }

    /// `members promote` / `remove`: the voter set, changed by `change`.
    pub async fn change_voters(&self, change: impl FnOnce(&mut Vec<u64>)) -> Result<u64, Failure> {
        let (leader, status) = self.leader().await?;
        let mut voters: Vec<u64> = status
            .members
            .iter()
            .filter(|m| m.role == "voter")
            .map(|m| m.id)
            .collect();
        change(&mut voters);
        voters.sort_unstable();
        voters.dedup();
        let mut c = self.client(&leader)?;
        let req = self.request(pa::ChangeMembershipRequest { voters });
        c.change_membership(req)
            .await
            .map(|r| r.into_inner().index)
            .map_err(|s| Failure::Server(Self::failure(&leader, &s)))
    }

    /// `cachectl snapshot`: on every node that answers.
    pub async fn snapshot(&self, format: Format) -> Result<String, Failure> {
        #[derive(Serialize)]
        struct Taken {
            endpoint: String,
            snapshot_index: Option<u64>,
            error: Option<String>,
        }
        let mut taken = Vec::new();
        for e in &self.endpoints {
            let mut c = self.client(e)?;
            let answer = c.snapshot(self.request(pa::SnapshotRequest {})).await;
            taken.push(match answer {
                Ok(r) => Taken {
                    endpoint: e.clone(),
                    snapshot_index: r.into_inner().index,
                    error: None,
                },
                Err(s) => Taken {
                    endpoint: e.clone(),
                    snapshot_index: None,
                    error: Some(Self::failure(e, &s)),
                },
            });
        }
        if taken.iter().all(|t| t.error.is_some()) {
            let why: Vec<String> = taken.into_iter().filter_map(|t| t.error).collect();
            return Err(Failure::Server(why.join("; ")));
        }
        let rows = taken
            .iter()
            .map(|t| {
                vec![
                    t.endpoint.clone(),
                    t.snapshot_index
                        .map_or_else(|| "-".into(), |i| i.to_string()),
                    t.error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        Ok(render::rows(
            &["ENDPOINT", "SNAPSHOT INDEX", "ERROR"],
            rows,
            &taken,
            format,
        ))
    }
}
