//! The Raft cache service's harness: `gateway cache-node` processes on loopback
//! ([`CacheNode`]), clusters of them ([`Cluster`]), a fleet of gateways on one ([`Fleet`]), and
//! the operator's calls. The tests in `raft.rs` and the other files that need a cluster use it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gateway::store::{RaftStore, RaftStoreConfig};
use gateway::token::TokenKey;
use tokengate_proto::admin::admin_client::AdminClient;
use tokengate_proto::admin::{self as pa};

use testkit::procs::Owned;

use crate::support::{eventually, free_port};

pub(crate) const ADMIN_TOKEN: &str = "admin-token-for-tests";
/// The peers' secret: the test clusters run authenticated, as production does.
pub(crate) const PEER_TOKEN: &str = "peer-token-for-tests";
/// The gateways' secret.
pub(crate) const GATEWAY_TOKEN: &str = "gateway-token-for-tests";

/// The gateway credential, for stores the tests make themselves.
pub(crate) fn gateway_token() -> Option<gateway::secret::Secret> {
    Some(gateway::secret::Secret::new(GATEWAY_TOKEN))
}

/// One `gateway cache-node` process; killed when dropped.
pub(crate) struct CacheNode {
    pub id: u64,
    pub addr: String,
    child: Option<Owned>,
    log: Arc<Mutex<String>>,
    init: String,
    join: Option<String>,
    /// `--peer` overrides (`id=addr,...`), empty for none.
    peers: String,
    /// Where it serves Prometheus metrics (bound on port 0; read from its log).
    metrics_addr: Arc<Mutex<Option<String>>>,
    /// Extra environment (e.g. `OTEL_*`).
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
}

impl CacheNode {
    pub(crate) fn spawn(
        id: u64,
        addr: String,
        init: String,
        join: Option<String>,
        peers: String,
    ) -> Self {
        Self::spawn_with(id, addr, init, join, peers, Vec::new())
    }

    pub(crate) fn spawn_with(
        id: u64,
        addr: String,
        init: String,
        join: Option<String>,
        peers: String,
        env: Vec<(String, String)>,
    ) -> Self {
        let mut node = Self {
            id,
            addr,
            child: None,
            log: Arc::default(),
            init,
            join,
            peers,
            metrics_addr: Arc::default(),
            env,
            dir: tempfile::tempdir().unwrap(),
        };
        node.start();
        node
    }

    /// A node that is in no cluster yet (to be added as a learner).
    pub fn spawn_bare(id: u64, addr: String) -> Self {
        Self::spawn(id, addr, String::new(), None, String::new())
    }

    /// Its command line and environment.
    fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
        cmd.args([
            "cache-node",
            "--id",
            &self.id.to_string(),
            "--listen",
            &self.addr,
        ])
        .arg("--data-dir")
        .arg(self.dir.path())
        .args(["--log-format", "json", "--snapshot-logs", "200"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .env("TOKENGATE_ADMIN_TOKEN", "env:CACHE_ADMIN")
        .env("CACHE_ADMIN", ADMIN_TOKEN)
        .env("TOKENGATE_PEER_TOKEN", "env:CACHE_PEER")
        .env("CACHE_PEER", PEER_TOKEN)
        .env("TOKENGATE_GATEWAY_TOKEN", "env:CACHE_GATEWAY")
        .env("CACHE_GATEWAY", GATEWAY_TOKEN)
        .env_remove("RUST_LOG")
        .envs(self.env.iter().map(|(k, v)| (k, v)));
        if !self.init.is_empty() {
            cmd.args(["--init", &self.init]);
        }
        if let Some(j) = &self.join {
            cmd.args(["--join", j]);
        }
        if !self.peers.is_empty() {
            cmd.args(["--peer", &self.peers]);
        }
        cmd
    }

    /// Runs the process expecting it to exit by itself (a refused start) within 20 s; how it
    /// exited and what it wrote.
    pub fn run_to_exit(&self) -> (std::process::ExitStatus, String) {
        let mut child = self
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("cache node {} did not exit", self.id);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status, text)
    }

    /// Kills the process and gives it a new, empty data directory: a lost disk.
    pub fn lose_disk(&mut self) {
        self.kill();
        self.dir = tempfile::tempdir().unwrap();
    }

    /// Makes it a new member under `id` that joins through `join` (after a lost disk).
    pub fn rejoin_as(&mut self, id: u64, join: String) {
        self.id = id;
        self.init.clear();
        self.join = Some(join);
    }

    /// Starts the process (again, on the same address and data directory) and waits until it
    /// listens.
    pub fn start(&mut self) {
        let mut cmd = self.command();
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let (log, tx) = (Arc::clone(&self.log), tx.clone());
            let metrics = Arc::clone(&self.metrics_addr);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                        && v["message"] == "cache node metrics listening"
                    {
                        *metrics.lock().unwrap() = v["addr"].as_str().map(str::to_owned);
                    }
                    if line.contains("cache node listening") {
                        let _ = tx.send(());
                    }
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        self.child = Some(Owned(child));
        if rx.recv_timeout(Duration::from_secs(20)).is_err() {
            self.kill();
            panic!("cache node {} did not start:\n{}", self.id, self.log());
        }
    }

    /// Where it serves `/metrics` (known once it listens: it binds them first).
    pub fn metrics_addr(&self) -> String {
        self.metrics_addr
            .lock()
            .unwrap()
            .clone()
            .expect("the node logged its metrics address")
    }

    /// SIGKILLs the process.
    pub fn kill(&mut self) {
        // Dropping it kills and reaps it.
        self.child.take();
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }
}

/// `--init` for nodes 1, 2, ... at `addrs`.
pub(crate) fn init_members(addrs: &[String]) -> String {
    addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",")
}

/// A cluster of cache nodes.
pub(crate) struct Cluster {
    pub nodes: Vec<CacheNode>,
}

impl Cluster {
    /// Starts `n` nodes that bootstrap a cluster together, and waits for a leader.
    pub async fn start(n: u64) -> Self {
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        Self::start_on(&ports, |_| String::new()).await
    }

    /// Like [`Cluster::start`], on loopback `ports`, node `i` given `--peer peers(i)` (empty:
    /// none).
    pub(crate) async fn start_on(ports: &[u16], peers: impl Fn(u64) -> String) -> Self {
        Self::start_with(ports, peers, &[]).await
    }

    /// Like [`Cluster::start`], every node with the extra environment `env`.
    pub async fn start_with_env(n: u64, env: &[(&str, &str)]) -> Self {
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        Self::start_with(&ports, |_| String::new(), env).await
    }

    async fn start_with(
        ports: &[u16],
        peers: impl Fn(u64) -> String,
        env: &[(&str, &str)],
    ) -> Self {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let init = init_members(&addrs);
        let nodes = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let id = i as u64 + 1;
                CacheNode::spawn_with(id, a.clone(), init.clone(), None, peers(id), env.clone())
            })
            .collect();
        let cluster = Self { nodes };
        cluster.leader(Duration::from_secs(20)).await;
        cluster
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    pub fn store(&self) -> RaftStore {
        RaftStore::new(&RaftStoreConfig {
            endpoints: self.endpoints(),
            timeout: Duration::from_secs(5),
            tls: None,
            token: gateway_token(),
        })
    }

    /// The YAML `store` section for gateways.
    pub fn store_yaml(&self) -> String {
        let list = self
            .endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect::<Vec<_>>()
            .join(", ");
        format!("store: {{ raft: {{ endpoints: [{list}], token: {GATEWAY_TOKEN} }} }}")
    }

    /// The status of every running node that answers.
    pub async fn statuses(&self) -> BTreeMap<u64, pa::StatusResponse> {
        let mut out = BTreeMap::new();
        for n in self.nodes.iter().filter(|n| n.running()) {
            if let Ok(s) = status(&n.addr, ADMIN_TOKEN).await {
                out.insert(n.id, s);
            }
        }
        out
    }

    /// The id of the leader all running nodes agree on, waiting up to `within`.
    pub async fn leader(&self, within: Duration) -> u64 {
        let running: Vec<u64> = self
            .nodes
            .iter()
            .filter(|n| n.running())
            .map(|n| n.id)
            .collect();
        self.leader_among(&running, within).await
    }

    /// The id of the leader the nodes `ids` agree on, waiting up to `within`.
    pub async fn leader_among(&self, ids: &[u64], within: Duration) -> u64 {
        let mut agreed = None;
        eventually("the nodes agree on a leader", within, async || {
            let mut statuses = self.statuses().await;
            statuses.retain(|id, _| ids.contains(id));
            let leaders: Vec<Option<u64>> = statuses.values().map(|s| s.leader).collect();
            if leaders.len() == ids.len()
                && let Some(Some(l)) = leaders.first()
                && leaders.iter().all(|x| *x == Some(*l))
                && statuses.get(l).is_some_and(|s| s.state == "leader")
            {
                agreed = Some(*l);
            }
            agreed.is_some()
        })
        .await;
        agreed.unwrap()
    }

    /// The address of node `id`.
    pub fn addr_of(&self, id: u64) -> String {
        self.nodes.iter().find(|n| n.id == id).unwrap().addr.clone()
    }

    pub fn node(&mut self, id: u64) -> &mut CacheNode {
        self.nodes.iter_mut().find(|n| n.id == id).unwrap()
    }
}

pub(crate) async fn admin(addr: &str) -> AdminClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy();
    AdminClient::new(channel)
}

pub(crate) fn authed<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

pub(crate) async fn status(addr: &str, token: &str) -> Result<pa::StatusResponse, tonic::Status> {
    let mut c = admin(addr).await;
    let call = c.status(authed(pa::StatusRequest {}, token));
    match tokio::time::timeout(Duration::from_secs(1), call).await {
        Ok(r) => r.map(|r| r.into_inner()),
        Err(_) => Err(tonic::Status::deadline_exceeded("status")),
    }
}

pub(crate) fn key(n: u64) -> TokenKey {
    let mut b = [7u8; 32];
    b[..8].copy_from_slice(&n.to_be_bytes());
    TokenKey::from_bytes(b)
}

/// Three gateway nodes on a three-node cache cluster, with the fake IdP and an echo upstream.
pub(crate) struct Fleet {
    pub(crate) idp: testkit::FakeIdp,
    pub(crate) upstream: testkit::EchoUpstream,
    pub(crate) cluster: Cluster,
    pub(crate) nodes: Vec<crate::support::Node>,
}

pub(crate) async fn fleet(lifetime: Duration, refresh: &str) -> Fleet {
    let idp = testkit::FakeIdp::start().await;
    let upstream = testkit::EchoUpstream::start().await;
    idp.set_token_lifetime(lifetime);
    for i in 0..20 {
        idp.register(&format!("client-{i}"), &format!("secret-{i}"));
    }
    let cluster = Cluster::start(3).await;
    let store = cluster.store_yaml();
    let store = store.trim_start_matches("store: ");
    let yaml = crate::redis::node_config(&idp, &upstream, store, refresh);
    let nodes = (0..3)
        .map(|_| crate::support::Node::start(&yaml, &[("FLEET_KEY", crate::redis::FLEET_KEY)]))
        .collect();
    Fleet {
        idp,
        upstream,
        cluster,
        nodes,
    }
}

impl Fleet {
    /// `GET /x` on gateway `node` with client `client`'s credentials.
    pub(crate) async fn call(&self, node: usize, client: usize) -> reqwest::Response {
        crate::support::client()
            .get(self.nodes[node].url("/x"))
            .header("authorization", crate::redis::creds(client))
            .send()
            .await
            .unwrap()
    }
}
