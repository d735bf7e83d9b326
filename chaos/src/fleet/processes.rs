//! A fleet of processes on loopback, started from the built binaries: Redis or three cache
//! nodes, the gateways, and the harness's balancer in front. Partitions go through relays the
//! harness owns on each link a scenario cuts.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use gateway::store::{RedisStore, Store};
use testkit::balancer::Balancer;
use testkit::procs::{Proc, free_port, wait_listening};
use testkit::relay::Relay;

use super::setup::{
    cache_node_args, cache_node_env, doubles, gateway_env, gateway_yaml, raft_probe,
    raft_store_yaml, redis_config, wait_for_store,
};
use super::{Fleet, FleetSpec, Front, Links, Node, START_WITHIN, StoreKind};

/// Starts the fleet's processes (the gateways are not yet ready when it returns).
pub(super) async fn start(spec: FleetSpec) -> anyhow::Result<Fleet> {
    let (idp, upstream) = doubles(&spec, "127.0.0.1:0".parse()?).await?;
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
            redis = Some(Mutex::new(Node::Process(p)));
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
            Store::Redis(RedisStore::new(&redis_config(&addr, None))?)
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
                    .filter_map(|j| Some(format!("{}={}", j + 1, peer_links.get(&(i, j))?.addr)))
                    .collect();
                let mut args = cache_node_args(i + 1, addr, addr, &data, &init.join(","));
                if !peers.is_empty() {
                    args.extend(["--peer".into(), peers.join(",")]);
                }
                let env = cache_node_env(&spec.log_level);
                let name = format!("cache-node-{}", i + 1);
                cache_nodes.push(Mutex::new(Node::Process(Proc::start(
                    &name,
                    &spec.gateway_bin,
                    args,
                    env,
                    &spec.dir,
                )?)));
            }
            raft_probe(&cache_addrs).await?
        }
    };
    wait_for_store(&probe).await?;

    let mut gateways = Vec::new();
    let (mut proxies, mut gateway_proxy, mut gateway_admin) = (Vec::new(), Vec::new(), Vec::new());
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
            (StoreKind::Raft, _) => raft_store_yaml(&cache_addrs),
        };
        let yaml = gateway_yaml(
            &spec,
            &format!("127.0.0.1:{proxy}"),
            &format!("127.0.0.1:{admin}"),
            &store,
            &idp.token_url(),
            &upstream.url(),
        );
        let config = spec.dir.join(format!("gateway-{}.yaml", i + 1));
        std::fs::write(&config, yaml)?;
        let args = vec![
            "run".into(),
            "--config".into(),
            config.to_string_lossy().into_owned(),
        ];
        let name = format!("gateway-{}", i + 1);
        gateways.push(Mutex::new(Node::Process(Proc::start(
            &name,
            &spec.gateway_bin,
            args,
            gateway_env(&spec.log_level),
            &spec.dir,
        )?)));
        proxies.push(format!("127.0.0.1:{proxy}").parse()?);
        gateway_proxy.push(format!("127.0.0.1:{proxy}"));
        gateway_admin.push(format!("127.0.0.1:{admin}"));
    }
    let balancer = Balancer::start(proxies).await;
    Ok(Fleet {
        spec,
        idp,
        upstream,
        front: Front::Balancer(balancer),
        gateways,
        gateway_proxy,
        gateway_admin,
        cache_nodes,
        cache_addrs,
        redis,
        redis_addr,
        probe,
        links: Links::Relays {
            store: store_links,
            peers: peer_links,
        },
    })
}

/// Starts a new cache node process with `id` that joins `fleet`'s cluster as a learner; its
/// process and address.
pub(super) async fn start_cache_learner(fleet: &Fleet, id: u64) -> anyhow::Result<(Proc, String)> {
    let addr = format!("127.0.0.1:{}", free_port());
    let data = fleet.spec.dir.join(format!("cache-node-{id}"));
    let args = vec![
        "cache-node".into(),
        "--id".into(),
        id.to_string(),
        "--listen".into(),
        addr.clone(),
        "--data-dir".into(),
        data.to_string_lossy().into_owned(),
        "--join".into(),
        fleet.cache_addrs.join(","),
        "--log-format".into(),
        "json".into(),
    ];
    let p = Proc::start(
        &format!("cache-node-{id}"),
        &fleet.spec.gateway_bin,
        args,
        cache_node_env(&fleet.spec.log_level),
        &fleet.spec.dir,
    )?;
    anyhow::ensure!(
        wait_listening(&addr, START_WITHIN).await,
        "cache-node-{id} did not start"
    );
    Ok((p, addr))
}
