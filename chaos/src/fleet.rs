//! A fleet of real processes for one experiment: N gateway nodes behind the [`Balancer`], a
//! shared store (a Redis server or three cache nodes), the fake IdP and the verifying echo
//! upstream. Every process is killed when the fleet is dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gateway::store::{RaftStore, RedisStore, Store, TokenStore};
use gateway::store::{RaftStoreConfig, RedisConfig, RedisTopology};
use tokengate_proto::admin::admin_client::AdminClient;
use tokengate_proto::admin::{StatusRequest, StatusResponse};

use crate::driver::identity;
use testkit::balancer::Balancer;
use testkit::procs::{Proc, free_port, wait_listening};
use testkit::relay::Relay;
use testkit::{EchoUpstream, FakeIdp};

const FLEET_KEY: &str = "chaos-fleet-key-0123456789abcdef0123456789";
const ADMIN_TOKEN: &str = "chaos-admin-token";
/// The cache nodes' peer and gateway secrets: the fleet runs authenticated, as production does.
const PEER_TOKEN: &str = "chaos-peer-token";
const GATEWAY_TOKEN: &str = "chaos-gateway-token";
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

/// What to start.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// The store.
    pub store: StoreKind,
    /// Gateway nodes.
    pub gateways: usize,
    /// Client identities registered at the IdP.
    pub clients: usize,
    /// Lifetime of the IdP's tokens.
    pub token_lifetime: Duration,
    /// Refresh-leader lease.
    pub lease_ttl: Duration,
    /// The `gateway` binary.
    pub gateway_bin: PathBuf,
    /// Where logs, data directories and the report go.
    pub dir: PathBuf,
    /// Every process's log filter (`RUST_LOG` syntax): one log file per node in `dir`.
    pub log_level: String,
    /// YAML appended to every gateway's configuration (top-level keys).
    pub extra_config: String,
    /// Put a cuttable relay on each gateway's link to Redis and each link between cache nodes
    /// (for partitions); without, the processes connect directly (benchmarks).
    pub relays: bool,
    /// Redis' `appendfsync`: `always` (every write durable before it is answered, as the Raft
    /// log is) or `everysec` (Redis' recommended setting: up to a second of writes lost in a
    /// crash).
    pub redis_fsync: &'static str,
}

/// A running fleet.
pub struct Fleet {
    /// What was started.
    pub spec: FleetSpec,
    /// The identity provider.
    pub idp: FakeIdp,
    /// The upstream, verifying every token it receives.
    pub upstream: EchoUpstream,
    /// Gateway nodes, in order.
    pub gateways: Vec<Mutex<Proc>>,
    gateway_admin: Vec<String>,
    /// Cache nodes (Raft store), ids 1..=3.
    pub cache_nodes: Vec<Mutex<Proc>>,
    cache_addrs: Vec<String>,
    /// The Redis server (Redis store).
    pub redis: Option<Mutex<Proc>>,
    /// Per gateway, the relay its store traffic goes through (Redis store), for partitions.
    pub store_links: Vec<Relay>,
    /// Raft traffic from cache node i to node j (indexes from 0) goes through relay (i, j).
    pub peer_links: BTreeMap<(usize, usize), Relay>,
    redis_addr: Option<String>,
    /// The balancer in front of the gateways.
    pub balancer: Balancer,
    probe: Store,
}

impl Fleet {
    /// Starts everything and waits until every gateway is ready.
    pub async fn start(spec: FleetSpec) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&spec.dir)?;
        let idp = FakeIdp::start().await;
        idp.set_token_lifetime(spec.token_lifetime);
        for i in 0..spec.clients {
            let (id, secret) = identity(i);
            idp.register(&id, &secret);
        }
        let upstream = EchoUpstream::start().await;
        upstream.verify_tokens(FakeIdp::decoding_key(), false);

        let (mut redis, mut cache_nodes, mut cache_addrs, mut store_links) =
            (None, Vec::new(), Vec::new(), Vec::new());
        let mut redis_addr = None;
        let mut peer_links = BTreeMap::new();
        let probe = match spec.store {
            StoreKind::Memory => Store::Memory(gateway::store::MemoryStore::new()),
            StoreKind::Redis => {
                let port = free_port();
                let data = spec.dir.join("redis");
                std::fs::create_dir_all(&data)?;
                let args = [
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    spec.redis_fsync,
                    "--dir",
                    &data.to_string_lossy(),
                ];
                let p = Proc::start(
                    "redis",
                    Path::new("redis-server"),
                    args.iter().map(|a| (*a).to_owned()).collect(),
                    Vec::new(),
                    &spec.dir,
                )?;
                redis = Some(Mutex::new(p));
                let addr = format!("127.0.0.1:{port}");
                redis_addr = Some(addr.clone());
                anyhow::ensure!(
                    wait_listening(&addr, START_WITHIN).await,
                    "redis did not start"
                );
                for _ in 0..spec.gateways {
                    if spec.relays {
                        store_links.push(Relay::start(addr.clone()).await);
                    }
                }
                Store::Redis(RedisStore::new(&redis_config(&addr))?)
            }
            StoreKind::Raft => {
                cache_addrs = (0..3)
                    .map(|_| format!("127.0.0.1:{}", free_port()))
                    .collect();
                let init: Vec<String> = cache_addrs
                    .iter()
                    .enumerate()
                    .map(|(i, a)| format!("{}={a}", i + 1))
                    .collect();
                // Raft traffic from node i to node j goes through relay (i, j).
                for i in 0..cache_addrs.len() {
                    for (j, to) in cache_addrs.iter().enumerate() {
                        if i != j && spec.relays {
                            peer_links.insert((i, j), Relay::start(to.clone()).await);
                        }
                    }
                }
                for (i, addr) in cache_addrs.iter().enumerate() {
                    let data = spec.dir.join(format!("cache-node-{}", i + 1));
                    let peers: Vec<String> = (0..cache_addrs.len())
                        .filter(|j| *j != i)
                        .filter_map(|j| {
                            Some(format!("{}={}", j + 1, peer_links.get(&(i, j))?.addr))
                        })
                        .collect();
                    let args = vec![
                        "cache-node".into(),
                        "--id".into(),
                        (i + 1).to_string(),
                        "--listen".into(),
                        addr.clone(),
                        "--data-dir".into(),
                        data.to_string_lossy().into_owned(),
                        "--init".into(),
                        init.join(","),
                        "--log-format".into(),
                        "json".into(),
                    ];
                    let args = if peers.is_empty() {
                        args
                    } else {
                        [args, vec!["--peer".into(), peers.join(",")]].concat()
                    };
                    let env = cache_node_env(&spec.log_level);
                    let name = format!("cache-node-{}", i + 1);
                    cache_nodes.push(Mutex::new(Proc::start(
                        &name,
                        &spec.gateway_bin,
                        args,
                        env,
                        &spec.dir,
                    )?));
                }
                for a in &cache_addrs {
                    anyhow::ensure!(
                        wait_listening(a, START_WITHIN).await,
                        "cache node {a} did not start"
                    );
                }
                Store::Raft(RaftStore::new(&RaftStoreConfig {
                    endpoints: cache_addrs.clone(),
                    timeout: Duration::from_secs(2),
                    tls: None,
                    token: Some(gateway::secret::Secret::new(GATEWAY_TOKEN)),
                }))
            }
        };
        // The store answers (Raft: a leader is elected) before gateways start.
        let deadline = Instant::now() + START_WITHIN;
        while probe.refresh_lease().await.is_err() {
            anyhow::ensure!(Instant::now() < deadline, "the store does not answer");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let mut gateways = Vec::new();
        let (mut proxies, mut gateway_admin) = (Vec::new(), Vec::new());
        for i in 0..spec.gateways {
            let (proxy, admin) = (free_port(), free_port());
            let store = match (spec.store, store_links.get(i)) {
                (StoreKind::Memory, _) => "{ memory: {} }".to_owned(),
                (StoreKind::Redis, link) => format!(
                    "{{ redis: {{ endpoints: [\"{}\"], timeout: 1s }} }}",
                    link.map_or_else(
                        || redis_addr.clone().unwrap_or_default(),
                        |l| l.addr.clone()
                    )
                ),
                (StoreKind::Raft, _) => format!(
                    "{{ raft: {{ endpoints: [{}], timeout: 2s, token: env:CHAOS_GATEWAY_TOKEN }} }}",
                    cache_addrs
                        .iter()
                        .map(|a| format!("\"{a}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            let yaml = format!(
                r#"listen: 127.0.0.1:{proxy}
admin: {{ listen: 127.0.0.1:{admin} }}
log: {{ format: json, level: info }}
fleetKey: env:CHAOS_FLEET_KEY
store: {store}
refresh: {{ interval: 200ms, leaseTtl: {lease} }}
# Scaled down with the short token lifetimes of a chaos run.
idpCircuitBreaker: {{ failures: 3, cooldown: 500ms }}
middlewares:
  app:
    clientCredentials:
      url: {token_url}
      scopes: [read]
      clientConfig: {{ timeout: 3s, retries: 2 }}
routes:
  - {{ name: app, match: {{ pathPrefix: / }}, middlewares: [app], upstream: {{ urls: [{up}] }} }}
{extra}
"#,
                extra = spec.extra_config,
                lease = humantime::format_duration(spec.lease_ttl),
                token_url = idp.token_url(),
                up = upstream.url(),
            );
            let config = spec.dir.join(format!("gateway-{}.yaml", i + 1));
            std::fs::write(&config, yaml)?;
            let args = vec![
                "run".into(),
                "--config".into(),
                config.to_string_lossy().into_owned(),
            ];
            let env = vec![
                ("CHAOS_FLEET_KEY".into(), FLEET_KEY.into()),
                ("CHAOS_GATEWAY_TOKEN".into(), GATEWAY_TOKEN.into()),
                ("RUST_LOG".into(), spec.log_level.clone()),
            ];
            let name = format!("gateway-{}", i + 1);
            gateways.push(Mutex::new(Proc::start(
                &name,
                &spec.gateway_bin,
                args,
                env,
                &spec.dir,
            )?));
            proxies.push(format!("127.0.0.1:{proxy}").parse()?);
            gateway_admin.push(format!("127.0.0.1:{admin}"));
        }
        let balancer = Balancer::start(proxies).await;
        let fleet = Self {
            spec,
            idp,
            upstream,
            gateways,
            gateway_admin,
            cache_nodes,
            cache_addrs,
            redis,
            store_links,
            peer_links,
            redis_addr,
            balancer,
            probe,
        };
        for i in 0..fleet.gateways.len() {
            fleet.wait_ready(i).await?;
        }
        Ok(fleet)
    }

    /// Gateway `i`'s process.
    pub fn gateway(&self, i: usize) -> std::sync::MutexGuard<'_, Proc> {
        self.gateways[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cache node `i`'s process (index 0 is node 1).
    pub fn cache_node(&self, i: usize) -> std::sync::MutexGuard<'_, Proc> {
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
            let Ok(Ok(r)) = tokio::time::timeout(
                Duration::from_millis(500),
                reqwest::get(format!("http://{admin}/metrics")),
            )
            .await
            else {
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
        let mut out = Vec::new();
        for (i, addr) in self.cache_addrs.iter().enumerate() {
            if let Ok(s) = cache_status(addr).await {
                out.push((i, s));
            }
        }
        out
    }

    /// The cache nodes' addresses (index 0 is node 1).
    pub fn cache_addrs(&self) -> &[String] {
        &self.cache_addrs
    }

    /// Starts a new cache node with `id` that joins the cluster as a learner; its process and
    /// address.
    pub async fn start_cache_learner(&self, id: u64) -> anyhow::Result<(Proc, String)> {
        let addr = format!("127.0.0.1:{}", free_port());
        let data = self.spec.dir.join(format!("cache-node-{id}"));
        let args = vec![
            "cache-node".into(),
            "--id".into(),
            id.to_string(),
            "--listen".into(),
            addr.clone(),
            "--data-dir".into(),
            data.to_string_lossy().into_owned(),
            "--join".into(),
            self.cache_addrs.join(","),
            "--log-format".into(),
            "json".into(),
        ];
        let p = Proc::start(
            &format!("cache-node-{id}"),
            &self.spec.gateway_bin,
            args,
            cache_node_env(&self.spec.log_level),
            &self.spec.dir,
        )?;
        anyhow::ensure!(
            wait_listening(&addr, START_WITHIN).await,
            "cache-node-{id} did not start"
        );
        Ok((p, addr))
    }

    /// The Raft leader's index, if the answering nodes agree on one.
    pub async fn raft_leader(&self) -> Option<usize> {
        let statuses = self.cache_statuses().await;
        let leader = statuses.first()?.1.leader?;
        statuses
            .iter()
            .all(|(_, s)| s.leader == Some(leader))
            .then(|| leader as usize - 1)
    }
}

/// A cache node's environment: the fleet's credentials for every role, and the log filter.
fn cache_node_env(log_level: &str) -> Vec<(String, String)> {
    vec![
        ("TOKENGATE_ADMIN_TOKEN".into(), "env:CHAOS_ADMIN".into()),
        ("CHAOS_ADMIN".into(), ADMIN_TOKEN.into()),
        ("TOKENGATE_PEER_TOKEN".into(), "env:CHAOS_PEER".into()),
        ("CHAOS_PEER".into(), PEER_TOKEN.into()),
        ("TOKENGATE_GATEWAY_TOKEN".into(), "env:CHAOS_GATEWAY".into()),
        ("CHAOS_GATEWAY".into(), GATEWAY_TOKEN.into()),
        ("RUST_LOG".into(), log_level.to_owned()),
    ]
}

fn redis_config(addr: &str) -> RedisConfig {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    RedisConfig {
        endpoints: vec![(host.into(), port.parse().expect("a port"))],
        username: None,
        password: None,
        database: 0,
        key_prefix: "tokengate".into(),
        topology: RedisTopology::Standalone,
        pool_size: 2,
        timeout: Duration::from_secs(1),
        tls: None,
    }
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
    match tokio::time::timeout(Duration::from_secs(1), client.status(req)).await {
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
        .connect_timeout(Duration::from_millis(500))
        .connect_lazy();
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {ADMIN_TOKEN}").parse().expect("ascii"),
    );
    Ok((AdminClient::new(channel), req))
}
