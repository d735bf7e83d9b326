//! The Raft cache service's `Admin` calls: status of every node, and membership changes,
//! backups and restores sent to the leader.

use std::path::Path;
use std::time::Duration;

use gateway::cacheclient::Dialer;
use serde::Serialize;
use tokengate_proto::admin as pa;
use tokengate_proto::admin::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::Failure;
/// Bytes per restore chunk: within the node's request bound.
const CHUNK_BYTES: usize = 512 * 1024;
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

    /// Like [`Self::request`], without a deadline: for streams whose length is the data's.
    fn streaming<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = self.request(msg);
        req.metadata_mut().remove("grpc-timeout");
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

    /// `members replace OLD NEW`: once learner `new` has caught up with what the leader had
    /// applied when asked (waiting up to `wait`), the voters lose `old` and gain `new` in one
    /// change.
    pub async fn replace(&self, old: u64, new: u64, wait: Duration) -> Result<u64, Failure> {
        let (_, status) = self.leader().await?;
        let role = |s: &pa::StatusResponse, id: u64| {
            s.members
                .iter()
                .find(|m| m.id == id)
                .map(|m| m.role.clone())
        };
        if role(&status, old).as_deref() != Some("voter") {
            return Err(Failure::Usage(format!("node {old} is not a voter")));
        }
        if role(&status, new).as_deref() != Some("learner") {
            return Err(Failure::Usage(format!(
                "node {new} is not a learner: start it with --join (or members add-learner) first"
            )));
        }
        let target = status.applied_index.unwrap_or(0);
        let deadline = std::time::Instant::now() + wait;
        loop {
            let (_, now) = self.leader().await?;
            let matched = now
                .members
                .iter()
                .find(|m| m.id == new)
                .and_then(|m| m.matched_index);
            if matched.is_some_and(|m| m >= target) {
                break;
            }
            if std::time::Instant::now() >= deadline {
                return Err(Failure::Server(format!(
                    "node {new} has not caught up within {wait:?} (replicated to {}, the leader \
                     had applied {target}); nothing changed",
                    matched.map_or_else(|| "nothing".into(), |m| m.to_string())
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.change_voters(|v| {
            v.retain(|x| *x != old);
            v.push(new);
        })
        .await
    }

    /// `cachectl snapshot --out FILE`: the leader's state, written to a temporary file next to
    /// `file`, checked, then renamed over it.
    pub async fn backup(&self, file: &Path, format: Format) -> Result<String, Failure> {
        use std::io::Write;
        let (leader, _) = self.leader().await?;
        let mut c = self.client(&leader)?;
        let dir = match file.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let local = |e: std::io::Error| Failure::Usage(format!("{}: {e}", file.display()));
        // NamedTempFile creates it with mode 0600: the file names clients and scopes.
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(local)?;
        // No deadline on the stream: 100,000 entries are about 150 MB.
        let mut chunks = c
            .backup(self.streaming(pa::BackupRequest {}))
            .await
            .map_err(|s| Failure::Server(Self::failure(&leader, &s)))?
            .into_inner();
        let mut bytes = 0u64;
        while let Some(chunk) = chunks
            .message()
            .await
            .map_err(|s| Failure::Server(Self::failure(&leader, &s)))?
        {
            bytes += chunk.data.len() as u64;
            tmp.write_all(&chunk.data).map_err(local)?;
        }
        tmp.as_file().sync_all().map_err(local)?;
        let state =
            gateway::cachenode::snapshot::read(tmp.reopen().map_err(local)?).map_err(|e| {
                Failure::Server(format!(
                    "{leader} sent a backup that does not read back: {e}"
                ))
            })?;
        tmp.persist(file).map_err(|e| local(e.error))?;
        #[derive(Serialize)]
        struct Written {
            file: String,
            entries: usize,
            claims: usize,
            bytes: u64,
        }
        let written = Written {
            file: file.display().to_string(),
            entries: state.len(),
            claims: state.claims(),
            bytes,
        };
        Ok(render::rows(
            &["FILE", "ENTRIES", "CLAIMS", "BYTES"],
            vec![vec![
                written.file.clone(),
                written.entries.to_string(),
                written.claims.to_string(),
                written.bytes.to_string(),
            ]],
            &written,
            format,
        ))
    }

    /// `cachectl restore FILE`: the file, checked here first, streamed to the leader.
    pub async fn restore(&self, file: &Path, format: Format) -> Result<String, Failure> {
        use futures_util::StreamExt;
        use std::io::Read;
        let local = |e: std::io::Error| Failure::Usage(format!("{}: {e}", file.display()));
        let mut f = std::fs::File::open(file).map_err(local)?;
        gateway::cachenode::snapshot::read(&mut f)
            .map_err(|e| Failure::Usage(format!("{} is not a backup: {e}", file.display())))?;
        std::io::Seek::rewind(&mut f).map_err(local)?;
        let (leader, _) = self.leader().await?;
        let mut c = self.client(&leader)?;
        let chunks = futures_util::stream::iter(std::iter::from_fn(move || {
            let mut data = vec![0; CHUNK_BYTES];
            match f.read(&mut data) {
                Ok(0) | Err(_) => None,
                Ok(n) => {
                    data.truncate(n);
                    Some(pa::BackupChunk { data })
                }
            }
        }))
        .boxed();
        let answer = c
            .restore(self.streaming(chunks))
            .await
            .map_err(|s| Failure::Server(Self::failure(&leader, &s)))?
            .into_inner();
        #[derive(Serialize)]
        struct Restored {
            stored: u64,
            skipped: u64,
            claims: u64,
        }
        let restored = Restored {
            stored: answer.stored,
            skipped: answer.skipped,
            claims: answer.claims,
        };
        Ok(render::rows(
            &["STORED", "SKIPPED", "CLAIMS"],
            vec![vec![
                restored.stored.to_string(),
                restored.skipped.to_string(),
                restored.claims.to_string(),
            ]],
            &restored,
            format,
        ))
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
