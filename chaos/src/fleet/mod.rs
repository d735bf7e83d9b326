//! A fleet for one experiment: N gateway nodes behind a balancer, a shared store (a Redis server
//! or three cache nodes), the fake IdP and the verifying echo upstream. The nodes are processes
//! on loopback ([`processes`]: partitions through cuttable relays) or containers, each a host
//! with its own address on a network of its own ([`containers`]: partitions, lost packets and
//! slow links by packet filters inside a container's network namespace). Every node is killed
//! when the fleet is dropped.

mod containers;
mod node;
mod processes;
mod setup;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gateway::store::{Store, TokenStore};

use tokengate_proto::admin::admin_client::AdminClient;
use tokengate_proto::admin::{StatusRequest, StatusResponse};

pub use containers::IMAGE_TAG;
pub use node::Node;
use testkit::balancer::Balancer;
use testkit::procs::wait_listening;
use testkit::relay::Relay;
use testkit::{EchoUpstream, FakeIdp};

const FLEET_KEY: &str = "chaos-fleet-key-0123456789abcdef0123456789";
const ADMIN_TOKEN: &str = "chaos-admin-token";
/// The cache nodes' peer and gateway secrets: the fleet runs authenticated, as production does.
const PEER_TOKEN: &str = "chaos-peer-token";
const GATEWAY_TOKEN: &str = "chaos-gateway-token";
/// The gateways' admin token (`/metrics` beyond loopback needs it).
const GATEWAY_ADMIN_TOKEN: &str = "chaos-gateway-admin-token";
/// How long a node may take to come up.
const START_WITHIN: Duration = Duration::from_secs(30);

/// Which shared store the gateways use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
pub enum StoreKind {
    /// One Redis server.
    Redis,
    /// A three-node Raft cache service.
    Raft,
    /// Each gateway its own node-local store (benchmarks: the baseline of the shared stores).
    Memory,
}

impl std::fmt::Display for StoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Redis => "redis",
            Self::Raft => "raft",
            Self::Memory => "memory",
        })
    }
}

/// Where the fleet's nodes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
pub enum Hosting {
    /// Processes on loopback, from the built binaries; partitions through relays.
    Processes,
    /// Containers from the images `scripts/images` builds, each a host on a network of its own,
    /// behind the HAProxy image; partitions and lossy links by packet filters.
    Containers,
}

impl std::fmt::Display for Hosting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Processes => "processes",
            Self::Containers => "containers",
        })
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// The store.
    pub store: StoreKind,
    /// Where the nodes run.
    pub hosting: Hosting,
    /// Gateway nodes.
    pub gateways: usize,
    /// Client identities registered at the IdP.
    pub clients: usize,
    /// Lifetime of the IdP's tokens.
    pub token_lifetime: Duration,
    /// Refresh-leader lease.
    pub lease_ttl: Duration,
    /// The `gateway` binary (processes).
    pub gateway_bin: PathBuf,
    /// Where logs, data directories and the report go.
    pub dir: PathBuf,
    /// Every process's log filter (`RUST_LOG` syntax): one log file per node in `dir`.
    pub log_level: String,
    /// YAML appended to every gateway's configuration (top-level keys).
    pub extra_config: String,
    /// Processes: put a cuttable relay on each gateway's link to Redis and each link between
    /// cache nodes (for partitions); without, the processes connect directly (benchmarks).
    pub relays: bool,
    /// Redis' `appendfsync`: `always` (every write durable before it is answered, as the Raft
    /// log is) or `everysec` (Redis' recommended setting: up to a second of writes lost in a
    /// crash).
    pub redis_fsync: &'static str,
}

/// How the fleet's links are cut.
enum Links {
    /// Processes: relays on the links that scenarios cut.
    Relays {
        /// Per gateway, the relay its Redis traffic goes through.
        store: Vec<Relay>,
        /// Raft traffic from cache node i to node j (indexes from 0) goes through relay (i, j).
        peers: BTreeMap<(usize, usize), Relay>,
    },
    /// Containers: packet filters on the fleet's network.
    Network(containers::Net),
}

/// What stands in front of the gateways.
enum Front {
    /// The harness's own round-robin balancer (processes).
    Balancer(Balancer),
    /// The HAProxy container, published on loopback.
    Container {
        url: String,
        /// HAProxy's statistics as CSV.
        stats: String,
        _lb: crate::docker::Container,
    },
}

/// A running fleet.
pub struct Fleet {
    /// What was started.
    pub spec: FleetSpec,
    /// The identity provider.
    pub idp: FakeIdp,
    /// The upstream, verifying every token it receives.
    pub upstream: EchoUpstream,
    front: Front,
    /// Gateway nodes, in order.
    pub gateways: Vec<Mutex<Node>>,
    gateway_proxy: Vec<String>,
    gateway_admin: Vec<String>,
    /// Cache nodes (Raft store), ids 1..=3.
    pub cache_nodes: Vec<Mutex<Node>>,
    cache_addrs: Vec<String>,
    /// The Redis server (Redis store).
    pub redis: Option<Mutex<Node>>,
    redis_addr: Option<String>,
    probe: Store,
    // Last: containers go before their network.
    links: Links,
}

impl Fleet {
    /// Starts everything and waits until every gateway is ready.
    pub async fn start(spec: FleetSpec) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&spec.dir)?;
        let fleet = match spec.hosting {
            Hosting::Processes => processes::start(spec).await?,
            Hosting::Containers => containers::start(spec).await?,
        };
        for i in 0..fleet.gateways.len() {
            fleet.wait_ready(i).await?;
        }
        if let Front::Container { .. } = &fleet.front {
            containers::wait_balanced(&fleet).await?;
        }
        Ok(fleet)
    }

    /// The URL the load goes to: the balancer in front of the gateways.
    pub fn url(&self) -> String {
        match &self.front {
            Front::Balancer(b) => b.url(),
            Front::Container { url, .. } => url.clone(),
        }
    }

    /// Cuts cache node `i` off from the other cache nodes, both ways (gateways still reach it),
    /// or heals it.
    pub fn cut_cache_peers(&self, i: usize, cut: bool) -> anyhow::Result<()> {
        match &self.links {
            Links::Relays { peers, .. } => {
                for ((a, b), link) in peers {
                    if *a == i || *b == i {
                        link.set_cut(cut);
                    }
                }
                Ok(())
            }
            Links::Network(net) => {
                let others: Vec<_> = (net.cache_nodes.iter().enumerate())
                    .filter(|(j, _)| *j != i)
                    .map(|(_, (_, ip))| *ip)
                    .collect();
                containers::cut(&net.cache_nodes[i].0, &others, cut)
            }
        }
    }

    /// Cuts gateway `i` off from the shared store (every cache node, or Redis), or heals it.
    pub fn cut_store(&self, i: usize, cut: bool) -> anyhow::Result<()> {
        match &self.links {
            Links::Relays { store, .. } => {
                let link = store.get(i).ok_or_else(|| {
                    anyhow::anyhow!("a fleet of processes has relays on its Redis links only")
                })?;
                link.set_cut(cut);
                Ok(())
            }
            Links::Network(net) => {
                let store: Vec<_> = (net.cache_nodes.iter().map(|(_, ip)| *ip))
                    .chain(net.redis)
                    .collect();
                containers::cut(&net.gateways[i].0, &store, cut)
            }
        }
    }

    /// Cuts gateway `i` off from the IdP, or heals it (a fleet of containers: the IdP is one
    /// for all processes on loopback).
    pub fn cut_idp(&self, i: usize, cut: bool) -> anyhow::Result<()> {
        let Links::Network(net) = &self.links else {
            anyhow::bail!("only a fleet of containers can cut one gateway off from the IdP");
        };
        crate::docker::cut_port(
            &net.gateways[i].0,
            &net.host().to_string(),
            net.idp_port,
            cut,
        )
    }

    /// Makes gateway `i`'s network link lossy (`loss`: the share of arriving packets dropped)
    /// and slow (`kbit` a second, with up to `latency` of queueing), or heals it (a fleet of
    /// containers).
    pub fn degrade_link(
        &self,
        i: usize,
        loss: f64,
        kbit: u32,
        latency: Duration,
        on: bool,
    ) -> anyhow::Result<()> {
        let Links::Network(net) = &self.links else {
            anyhow::bail!("only a fleet of containers has links to degrade");
        };
        crate::docker::degrade(&net.gateways[i].0, loss, kbit, latency, on)
    }

    /// Gateway `i`'s own proxy listener, bypassing the balancer.
    pub fn gateway_url(&self, i: usize) -> String {
        format!("http://{}", self.gateway_proxy[i])
    }

    /// Gateway `i`'s `/readyz` answer: status and body (`None`: no answer).
    pub async fn readyz(&self, i: usize) -> Option<(u16, String)> {
        let url = format!("http://{}/readyz", self.gateway_admin[i]);
        let r = tokio::time::timeout(Duration::from_secs(1), reqwest::get(url))
            .await
            .ok()?
            .ok()?;
        let status = r.status().as_u16();
        Some((status, r.text().await.unwrap_or_default()))
    }

    /// Gateway `i`.
    pub fn gateway(&self, i: usize) -> std::sync::MutexGuard<'_, Node> {
        self.gateways[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cache node `i` (index 0 is node 1).
    pub fn cache_node(&self, i: usize) -> std::sync::MutexGuard<'_, Node> {
        self.cache_nodes[i]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until cache node `i` listens again.
    pub async fn wait_cache_node(&self, i: usize) -> anyhow::Result<()> {
        anyhow::ensure!(
            wait_listening(&self.cache_addrs[i], START_WITHIN).await,
            "cache-node-{} did not come back",
            i + 1
        );
        Ok(())
    }

    /// Waits until the Redis server listens again.
    pub async fn wait_redis(&self) -> anyhow::Result<()> {
        if let Some(a) = &self.redis_addr {
            anyhow::ensure!(
                wait_listening(a, START_WITHIN).await,
                "redis did not come back"
            );
        }
        Ok(())
    }

    /// Waits until gateway `i` answers `/readyz` with 200.
    pub async fn wait_ready(&self, i: usize) -> anyhow::Result<()> {
        let url = format!("http://{}/readyz", self.gateway_admin[i]);
        let deadline = Instant::now() + START_WITHIN;
        loop {
            if let Ok(r) = reqwest::get(&url).await
                && r.status() == 200
            {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "gateway-{} is not ready", i + 1);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The gateway that says it holds the refresh lease, if exactly one does.
    pub async fn refresh_leader(&self) -> Option<usize> {
        let mut leaders = Vec::new();
        for (i, admin) in self.gateway_admin.iter().enumerate() {
            let metrics = reqwest::Client::new()
                .get(format!("http://{admin}/metrics"))
                .bearer_auth(GATEWAY_ADMIN_TOKEN)
                .send();
            let Ok(Ok(r)) = tokio::time::timeout(Duration::from_millis(500), metrics).await else {
                continue;
            };
            let text = r.text().await.unwrap_or_default();
            if text.lines().any(|l| l == "tokengate_refresh_leader 1") {
                leaders.push(i);
            }
        }
        (leaders.len() == 1).then(|| leaders[0])
    }

    /// The store's view of the refresh lease: holder and fence.
    pub async fn lease(&self) -> Option<(String, u64)> {
        match self.probe.refresh_lease().await {
            Ok(Some(l)) => Some((l.holder, l.fence)),
            _ => None,
        }
    }

    /// The status of each cache node that answers, by index.
    pub async fn cache_statuses(&self) -> Vec<(usize, StatusResponse)> {
        self.cache_statuses_except(None).await
    }

    /// The status of each cache node but `skip` that answers, by index. All are asked at once:
    /// a node that is gone costs one timeout, not one per node after it.
    pub async fn cache_statuses_except(&self, skip: Option<usize>) -> Vec<(usize, StatusResponse)> {
        let asked = (self.cache_addrs.iter().enumerate())
            .filter(|(i, _)| Some(*i) != skip)
            .map(|(i, addr)| async move { (i, cache_status(addr).await) });
        futures_util::future::join_all(asked)
            .await
            .into_iter()
            .filter_map(|(i, s)| Some((i, s.ok()?)))
            .collect()
    }

    /// Writes probe entry `n` through the gateways' own store client (a long-lived entry no
    /// gateway renews); whether the store acknowledged it. Nothing else writes a probe key, so
    /// `Stale` is this put's own first attempt, found by the client's retry.
    pub async fn write_probe(&self, n: u32) -> bool {
        use gateway::store::PutOutcome;
        let entry = gateway::store::conformance::entry(1, 600_000, 1_200_000);
        matches!(
            self.probe.put(&probe_key(n), entry, None).await,
            Ok(PutOutcome::Stored | PutOutcome::Stale)
        )
    }

    /// Whether probe entry `n` is in the store (`None`: the store did not answer).
    pub async fn read_probe(&self, n: u32) -> Option<bool> {
        self.probe
            .get(&probe_key(n))
            .await
            .ok()
            .map(|e| e.is_some())
    }

    /// Evicts the stored entry of `client_id` fleet-wide, as `cachectl evict` does; its key and
    /// version.
    pub async fn evict_client(
        &self,
        client_id: &str,
    ) -> anyhow::Result<(gateway::token::TokenKey, u64)> {
        // Listing is the operator's (as `cachectl ls` is); so is this eviction.
        let operator = match self.spec.store {
            StoreKind::Raft => Some(setup::raft_client(&self.cache_addrs, ADMIN_TOKEN)),
            StoreKind::Redis | StoreKind::Memory => None,
        };
        let store = operator.as_ref().unwrap_or(&self.probe);
        let mut after = None;
        loop {
            let page = store.list(after, 500).await?;
            let Some((last, _)) = page.last() else {
                anyhow::bail!("no entry of {client_id} in the store");
            };
            after = Some(*last);
            if let Some((key, entry)) = page.iter().find(|(_, e)| e.meta.client_id == client_id) {
                store.evict(key, Some(entry.meta.version)).await?;
                return Ok((*key, entry.meta.version));
            }
        }
    }

    /// The version of the entry under `key` (`None` inside: no entry; outside: no answer).
    pub async fn entry_version(&self, key: &gateway::token::TokenKey) -> Option<Option<u64>> {
        let entry = self.probe.get(key).await.ok()?;
        Some(entry.map(|e| e.meta.version))
    }

    /// The cache nodes' addresses (index 0 is node 1).
    pub fn cache_addrs(&self) -> &[String] {
        &self.cache_addrs
    }

    /// Starts a new cache node process with `id` that joins the cluster as a learner; its
    /// process and address (a fleet of processes).
    pub async fn start_cache_learner(
        &self,
        id: u64,
    ) -> anyhow::Result<(testkit::procs::Proc, String)> {
        processes::start_cache_learner(self, id).await
    }

    /// The Raft leader's index, if the answering nodes agree on one.
    pub async fn raft_leader(&self) -> Option<usize> {
        let statuses = self.cache_statuses().await;
        let leader = statuses.first()?.1.leader?;
        if !statuses.iter().all(|(_, s)| s.leader == Some(leader)) {
            return None;
        }
        // Node ids follow the indexes until a node is replaced under a new id.
        statuses
            .iter()
            .find(|(_, s)| s.id == leader)
            .map(|(i, _)| *i)
    }

    /// Waits until the balancer in front has every gateway in its rotation (a fleet of
    /// containers; the harness's own balancer has no rotation).
    pub async fn wait_balanced(&self) -> anyhow::Result<()> {
        containers::wait_balanced(self).await
    }

    /// A new tag for the gateways' image, as a release would bring (a fleet of containers).
    pub fn next_image(&self) -> anyhow::Result<String> {
        containers::next_image()
    }

    /// Replaces cache node `i` by a node with `new_id` on an empty disk at the same address,
    /// joining the cluster as a learner (a fleet of containers), as the runbook for a lost disk
    /// says; `cachectl members replace` then promotes it in the old id's place.
    pub fn replace_cache_node(&self, i: usize, new_id: u64) -> anyhow::Result<()> {
        let mut node = self.cache_node(i);
        let c = node
            .container()
            .ok_or_else(|| anyhow::anyhow!("only a fleet of containers replaces cache nodes"))?;
        containers::replace_cache_node(c, i, new_id)
    }

    /// Runs `cachectl ARGS` with the operator token inside cache node `i`'s container; its
    /// output.
    pub fn cachectl(&self, i: usize, args: &[&str]) -> anyhow::Result<String> {
        let mut node = self.cache_node(i);
        let c = node
            .container()
            .ok_or_else(|| anyhow::anyhow!("only a fleet of containers runs cachectl inside"))?;
        containers::cachectl(c, args)
    }
}

/// Probe entry `n`'s key: outside the keys gateways derive (an HMAC), by construction of its
/// fixed first bytes.
fn probe_key(n: u32) -> gateway::token::TokenKey {
    let mut bytes = [0xC4; 32];
    bytes[28..].copy_from_slice(&n.to_be_bytes());
    gateway::token::TokenKey::from_bytes(bytes)
}

/// Has the cache node at `addr` take a snapshot now (`Admin.Snapshot`, which also compacts its
/// log); the index it covers.
pub async fn cache_snapshot(addr: &str) -> Result<Option<u64>, tonic::Status> {
    let (mut client, req) = admin(addr, tokengate_proto::admin::SnapshotRequest {})?;
    Ok(client.snapshot(req).await?.into_inner().index)
}

/// The `Admin.Status` of the cache node at `addr` (operator credential of the fleet).
pub async fn cache_status(addr: &str) -> Result<StatusResponse, tonic::Status> {
    let (mut client, req) = admin(addr, StatusRequest {})?;
    match tokio::time::timeout(Duration::from_millis(500), client.status(req)).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded("status")),
    }
}

/// An `Admin` client for the cache node at `addr`, and `msg` as a request with the fleet's
/// operator credential.
fn admin<T>(
    addr: &str,
    msg: T,
) -> Result<(AdminClient<tonic::transport::Channel>, tonic::Request<T>), tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
        .connect_timeout(Duration::from_millis(300))
        .connect_lazy();
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {ADMIN_TOKEN}").parse().expect("ascii"),
    );
    Ok((AdminClient::new(channel), req))
}
