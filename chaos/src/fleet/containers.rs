//! A fleet of containers from the images `scripts/images` builds, each a host with a fixed
//! address on a bridge network of the fleet's own: three cache nodes or Redis, the gateways,
//! and HAProxy in front, published on loopback. The IdP and the upstream stay in the harness,
//! listening on the host's address on that network, so that the run counts every token issued
//! and checks every token the upstream receives, as it does for processes.
//!
//! Faults are real network faults: packet filters inside a container's network namespace drop
//! what crosses a link (a partition, a lost IdP, lost packets), and a token bucket on its
//! interface slows it down.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gateway::store::{RedisStore, Store};
use testkit::procs::{free_port, wait_listening};

use super::setup::{
    cache_node_args, cache_node_env, doubles, gateway_env, gateway_yaml, raft_probe,
    raft_store_yaml, redis_config, wait_for_store,
};
use super::{Fleet, FleetSpec, Front, Links, Node, START_WITHIN, StoreKind};
use crate::docker::{self, Container, Network, RunSpec};

/// The tag of the images a container fleet runs (`scripts/images` builds `dev`).
pub const IMAGE_TAG: &str = "dev";
/// The Redis password of a container fleet.
const REDIS_PASSWORD: &str = "chaos-redis-password";
const CACHE_PORT: u16 = 7000;
const PROXY_PORT: u16 = 8080;
const ADMIN_PORT: u16 = 9090;
const REDIS_PORT: u16 = 6379;

/// Fleets started by this process, for unique container names.
static FLEETS: AtomicUsize = AtomicUsize::new(0);

/// The network and who is where on it.
pub(super) struct Net {
    network: Network,
    /// Gateways' container names and addresses.
    pub(super) gateways: Vec<(String, Ipv4Addr)>,
    /// Cache nodes' container names and addresses.
    pub(super) cache_nodes: Vec<(String, Ipv4Addr)>,
    /// The Redis container's address.
    pub(super) redis: Option<Ipv4Addr>,
    /// The IdP's port on the host's address.
    pub(super) idp_port: u16,
}

impl Net {
    /// The host's address on the network (where the IdP and the upstream listen).
    pub(super) fn host(&self) -> Ipv4Addr {
        self.network.gateway
    }
}

/// The hardening every tokengate container gets, as in docker-compose.yml.
fn hardened(network: &Network, ip: Ipv4Addr, alias: &str) -> Vec<String> {
    [
        "--network",
        &network.name,
        "--ip",
        &ip.to_string(),
        "--network-alias",
        alias,
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges:true",
        "--label",
        "tokengate-chaos=1",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Starts the fleet's containers (the gateways are not yet ready when it returns).
pub(super) async fn start(spec: FleetSpec) -> anyhow::Result<Fleet> {
    let images = [
        format!("tokengate:{IMAGE_TAG}"),
        format!("tokengate-lb:{IMAGE_TAG}"),
        format!("tokengate-redis:{IMAGE_TAG}"),
    ];
    let missing = docker::missing_images(&images.iter().map(String::as_str).collect::<Vec<_>>());
    anyhow::ensure!(
        missing.is_empty(),
        "images missing: {missing:?}; build them with scripts/images"
    );
    let prefix = format!(
        "tgchaos{}x{}",
        std::process::id(),
        FLEETS.fetch_add(1, Ordering::Relaxed)
    );
    let network = Network::create(&prefix)?;
    let (idp, upstream) = doubles(&spec, SocketAddr::new(network.gateway.into(), 0)).await?;
    let dir = &spec.dir;
    let image = &images[0];

    let (mut cache_nodes, mut cache_net, mut cache_addrs) = (Vec::new(), Vec::new(), Vec::new());
    let (mut redis, mut redis_ip, mut redis_addr) = (None, None, None);
    let probe = match spec.store {
        StoreKind::Memory => Store::Memory(gateway::store::MemoryStore::new()),
        StoreKind::Redis => {
            let ip = network.address(31);
            let mut options = hardened(&network, ip, "redis");
            options.extend(["--tmpfs", "/tmp", "-v", "/data"].map(str::to_owned));
            let command = [
                "--appendonly",
                "yes",
                "--appendfsync",
                spec.redis_fsync,
                "--save",
                "",
            ];
            let c = Container::run(
                &format!("{prefix}-redis"),
                RunSpec {
                    options,
                    env: vec![("REDIS_PASSWORD".into(), REDIS_PASSWORD.into())],
                    image: images[2].clone(),
                    command: command.map(str::to_owned).to_vec(),
                },
                dir,
            )?;
            redis = Some(Mutex::new(Node::Container(c)));
            let addr = format!("{ip}:{REDIS_PORT}");
            anyhow::ensure!(
                wait_listening(&addr, START_WITHIN).await,
                "redis did not start"
            );
            redis_ip = Some(ip);
            redis_addr = Some(addr.clone());
            Store::Redis(RedisStore::new(&redis_config(&addr, Some(REDIS_PASSWORD)))?)
        }
        StoreKind::Raft => {
            let init: Vec<String> = (1..=3)
                .map(|n| format!("{n}=cache-{n}:{CACHE_PORT}"))
                .collect();
            for n in 1..=3u8 {
                let (name, ip) = (format!("{prefix}-cache-{n}"), network.address(10 + n));
                let mut options = hardened(&network, ip, &format!("cache-{n}"));
                options.extend(["-v", "/var/lib/tokengate"].map(str::to_owned));
                let command = cache_node_command(u64::from(n), usize::from(n), &init.join(","));
                let mut env = cache_node_env(&spec.log_level);
                env.push((
                    "TOKENGATE_HEALTH_URL".into(),
                    "http://127.0.0.1:9100/readyz".into(),
                ));
                let c = Container::run(
                    &name,
                    RunSpec {
                        options,
                        env,
                        image: image.clone(),
                        command,
                    },
                    dir,
                )?;
                cache_nodes.push(Mutex::new(Node::Container(c)));
                cache_net.push((name, ip));
                cache_addrs.push(format!("{ip}:{CACHE_PORT}"));
            }
            raft_probe(&cache_addrs).await?
        }
    };
    wait_for_store(&probe).await?;

    let store = match spec.store {
        StoreKind::Memory => "{ memory: {} }".to_owned(),
        StoreKind::Redis => format!(
            "{{ redis: {{ endpoints: [\"redis:{REDIS_PORT}\"], password: env:CHAOS_REDIS_PASSWORD, timeout: 1s, allowPlaintext: true }} }}"
        ),
        StoreKind::Raft => raft_store_yaml(
            &(1..=3)
                .map(|n| format!("cache-{n}:{CACHE_PORT}"))
                .collect::<Vec<_>>(),
        ),
    };
    let yaml = gateway_yaml(
        &spec,
        &format!("0.0.0.0:{PROXY_PORT}"),
        &format!("0.0.0.0:{ADMIN_PORT}"),
        &store,
        &idp.token_url(),
        &upstream.url(),
    );
    let config = dir.join("gateway.yaml");
    std::fs::write(&config, yaml)?;
    let (mut gateways, mut gateway_net) = (Vec::new(), Vec::new());
    let (mut gateway_proxy, mut gateway_admin) = (Vec::new(), Vec::new());
    for i in 0..spec.gateways {
        let (name, ip) = (
            format!("{prefix}-gateway-{}", i + 1),
            network.address(21 + i as u8),
        );
        let mut options = hardened(&network, ip, &format!("gateway-{}", i + 1));
        options.extend([
            "-v".into(),
            format!("{}:/etc/tokengate/gateway.yaml:ro", config.display()),
        ]);
        let mut env = gateway_env(&spec.log_level);
        env.push(("CHAOS_REDIS_PASSWORD".into(), REDIS_PASSWORD.into()));
        let c = Container::run(
            &name,
            RunSpec {
                options,
                env,
                image: image.clone(),
                command: ["run", "--config", "/etc/tokengate/gateway.yaml"]
                    .map(str::to_owned)
                    .to_vec(),
            },
            dir,
        )?;
        gateways.push(Mutex::new(Node::Container(c)));
        gateway_net.push((name, ip));
        gateway_proxy.push(format!("{ip}:{PROXY_PORT}"));
        gateway_admin.push(format!("{ip}:{ADMIN_PORT}"));
    }

    // HAProxy in front, as in docker-compose.yml, with quicker checks for a run of seconds.
    let servers: String = gateway_net
        .iter()
        .enumerate()
        .map(|(i, (_, ip))| format!("    server gateway-{} {ip}:{PROXY_PORT}\n", i + 1))
        .collect();
    let haproxy = dir.join("haproxy.cfg");
    std::fs::write(&haproxy, haproxy_cfg(&servers))?;
    let (lb_port, stats_port) = (free_port(), free_port());
    let mut options = hardened(&network, network.address(41), "lb");
    options.extend([
        "-p".into(),
        format!("127.0.0.1:{lb_port}:8080"),
        "-p".into(),
        format!("127.0.0.1:{stats_port}:8404"),
        "-v".into(),
        format!(
            "{}:/usr/local/etc/haproxy/haproxy.cfg:ro",
            haproxy.display()
        ),
    ]);
    let lb = Container::run(
        &format!("{prefix}-lb"),
        RunSpec {
            options,
            env: Vec::new(),
            image: images[1].clone(),
            command: Vec::new(),
        },
        dir,
    )?;
    let idp_port = idp.addr().port();
    Ok(Fleet {
        spec,
        idp,
        upstream,
        front: Front::Container {
            url: format!("http://127.0.0.1:{lb_port}"),
            stats: format!("http://127.0.0.1:{stats_port}/;csv"),
            _lb: lb,
        },
        gateways,
        gateway_proxy,
        gateway_admin,
        cache_nodes,
        cache_addrs,
        redis,
        redis_addr,
        probe,
        links: Links::Network(Net {
            network,
            gateways: gateway_net,
            cache_nodes: cache_net,
            redis: redis_ip,
            idp_port,
        }),
    })
}

/// The balancer's configuration: round robin, a gateway out of the rotation after two failed
/// checks of its `/readyz` 250 ms apart, and a request whose connection failed or was closed
/// unanswered (a gateway killed under it) sent to another gateway. The load is GET requests
/// only, which may be sent twice (RFC 9110 §9.2.2).
fn haproxy_cfg(servers: &str) -> String {
    format!(
        "global
    log stdout format raw local0 warning

defaults
    mode http
    log global
    option redispatch
    retry-on conn-failure empty-response
    retries 3
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    default-server check port {ADMIN_PORT} inter 250ms fall 2 rise 2

frontend proxy
    bind :8080
    default_backend gateways

backend gateways
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
{servers}
frontend stats
    bind :8404
    stats enable
    stats uri /
"
    )
}

/// Waits until the balancer has every gateway in its rotation.
pub(super) async fn wait_balanced(fleet: &Fleet) -> anyhow::Result<()> {
    let Front::Container { stats, .. } = &fleet.front else {
        return Ok(());
    };
    let deadline = Instant::now() + START_WITHIN;
    loop {
        let up = match reqwest::get(stats).await {
            Ok(r) => r
                .text()
                .await
                .unwrap_or_default()
                .lines()
                .filter(|l| l.starts_with("gateways,gateway-") && l.contains(",UP,"))
                .count(),
            Err(_) => 0,
        };
        if up == fleet.gateways.len() {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the balancer has {up} of {} gateways up",
            fleet.gateways.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The command of node `id` in the container of cache node `n` (its address `cache-n`), a
/// member of the cluster `init` (`1=addr,...`) or a learner joining it (`addr,...`).
fn cache_node_command(id: u64, n: usize, init: &str) -> Vec<String> {
    let mut command = cache_node_args(
        id as usize,
        &format!("0.0.0.0:{CACHE_PORT}"),
        &format!("cache-{n}:{CACHE_PORT}"),
        std::path::Path::new("/var/lib/tokengate/data"),
        init,
    );
    command.extend(["--metrics-listen".into(), "0.0.0.0:9100".into()]);
    command
}

/// Drops (`cut`) or lets through again every packet between container `name` and each of
/// `peers`.
pub(super) fn cut(name: &str, peers: &[Ipv4Addr], cut: bool) -> anyhow::Result<()> {
    for p in peers {
        docker::cut(name, &p.to_string(), cut)?;
    }
    Ok(())
}

/// Tags the gateways' image anew, as a release would (`tokengate:chaos-next`): a rolling
/// upgrade replaces each gateway's container with one from that tag. The binaries are the same
/// build; what is proven is the drain and the replacement under load, not compatibility
/// between two releases.
pub(super) fn next_image() -> anyhow::Result<String> {
    let next = "tokengate:chaos-next";
    docker::docker(&["tag", &format!("tokengate:{IMAGE_TAG}"), next])?;
    Ok(next.to_owned())
}

/// Replaces cache node container `c` (index `i`) by one with `new_id` on an empty disk at the
/// same address, joining the others as a learner.
pub(super) fn replace_cache_node(c: &mut Container, i: usize, new_id: u64) -> anyhow::Result<()> {
    let n = i + 1;
    let others: Vec<String> = (1..=3)
        .filter(|m| *m != n)
        .map(|m| format!("cache-{m}:{CACHE_PORT}"))
        .collect();
    c.replace_with(cache_node_command(new_id, n, &others.join(",")))
}

/// `cachectl ARGS` inside a cache node's container, with the operator token of the fleet.
pub(super) fn cachectl(c: &Container, args: &[&str]) -> anyhow::Result<String> {
    let endpoints = (1..=3)
        .map(|m| format!("cache-{m}:{CACHE_PORT}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut all = vec![
        "exec",
        "-e",
        "CACHECTL_TOKEN",
        &c.name,
        "cachectl",
        // The harness's network carries the token without TLS, said out loud.
        "--allow-plaintext",
        "--endpoints",
    ];
    all.push(&endpoints);
    all.extend_from_slice(args);
    docker::docker_with_env(
        &all,
        &[("CACHECTL_TOKEN".into(), super::ADMIN_TOKEN.into())],
    )
}
