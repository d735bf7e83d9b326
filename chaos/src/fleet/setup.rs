//! What every node of a fleet is started with, processes and containers alike: environments,
//! arguments and configurations, the doubles around them, and the harness's own store client.

use std::time::{Duration, Instant};

use gateway::store::{RedisConfig, RedisTopology, Store, TokenStore};
use testkit::procs::wait_listening;
use testkit::{EchoUpstream, FakeIdp};

use super::{
    ADMIN_TOKEN, FLEET_KEY, FleetSpec, GATEWAY_ADMIN_TOKEN, GATEWAY_TOKEN, PEER_TOKEN, START_WITHIN,
};
use crate::driver::identity;

/// A cache node's environment: the fleet's credentials for every role, and the log filter.
pub(super) fn cache_node_env(log_level: &str) -> Vec<(String, String)> {
    [
        ("TOKENGATE_ADMIN_TOKEN".into(), "env:CHAOS_ADMIN".into()),
        ("CHAOS_ADMIN".into(), ADMIN_TOKEN.into()),
        ("TOKENGATE_PEER_TOKEN".into(), "env:CHAOS_PEER".into()),
        ("CHAOS_PEER".into(), PEER_TOKEN.into()),
        ("TOKENGATE_GATEWAY_TOKEN".into(), "env:CHAOS_GATEWAY".into()),
        ("CHAOS_GATEWAY".into(), GATEWAY_TOKEN.into()),
        ("RUST_LOG".into(), log_level.to_owned()),
        // Containers reach each other over the harness's own network, without TLS.
        ("TOKENGATE_ALLOW_PLAINTEXT".into(), "true".into()),
    ]
    .into_iter()
    // The Raft timers, when the harness is given some (to measure failover against them).
    .chain(
        ["TOKENGATE_HEARTBEAT_INTERVAL", "TOKENGATE_ELECTION_TIMEOUT"]
            .iter()
            .filter_map(|name| Some(((*name).to_owned(), std::env::var(name).ok()?))),
    )
    .collect()
}

/// A gateway's environment: the fleet key, the cache nodes' gateway secret, the log filter.
pub(super) fn gateway_env(log_level: &str) -> Vec<(String, String)> {
    vec![
        ("CHAOS_FLEET_KEY".into(), FLEET_KEY.into()),
        ("CHAOS_GATEWAY_TOKEN".into(), GATEWAY_TOKEN.into()),
        ("CHAOS_GATEWAY_ADMIN".into(), GATEWAY_ADMIN_TOKEN.into()),
        ("RUST_LOG".into(), log_level.to_owned()),
    ]
}

/// A cache node's arguments: member `id` of the cluster `init` (`1=addr,2=addr,...`), or a
/// learner joining it through `init` (`addr,addr,...`).
pub(super) fn cache_node_args(
    id: usize,
    listen: &str,
    advertise: &str,
    data: &std::path::Path,
    init: &str,
) -> Vec<String> {
    [
        "cache-node",
        "--id",
        &id.to_string(),
        "--listen",
        listen,
        "--advertise",
        advertise,
        "--data-dir",
        &data.to_string_lossy(),
        if init.contains('=') {
            "--init"
        } else {
            "--join"
        },
        init,
        "--log-format",
        "json",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The IdP and the upstream, on `bind`'s address: the IdP knows every client identity and
/// issues tokens of the run's lifetime; the upstream verifies every token it gets.
pub(super) async fn doubles(
    spec: &FleetSpec,
    bind: std::net::SocketAddr,
) -> anyhow::Result<(FakeIdp, EchoUpstream)> {
    let idp = FakeIdp::start_on(bind).await?;
    idp.set_token_lifetime(spec.token_lifetime);
    for i in 0..spec.clients {
        let (id, secret) = identity(i);
        idp.register(&id, &secret);
    }
    let upstream = EchoUpstream::start_on(bind).await?;
    upstream.verify_tokens(FakeIdp::decoding_key(), false);
    Ok((idp, upstream))
}

/// A gateway's configuration: one route for every path, application-level client credentials
/// at `token_url`, forwarded to `upstream`; `store` is the YAML of its `store` key.
pub(super) fn gateway_yaml(
    spec: &FleetSpec,
    listen: &str,
    admin: &str,
    store: &str,
    token_url: &str,
    upstream: &str,
) -> String {
    format!(
        r#"listen: {listen}
admin: {{ listen: {admin}, token: env:CHAOS_GATEWAY_ADMIN }}
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
  - {{ name: app, match: {{ pathPrefix: / }}, middlewares: [app], upstream: {{ urls: [{upstream}] }} }}
{extra}
"#,
        extra = spec.extra_config,
        lease = humantime::format_duration(spec.lease_ttl),
    )
}

/// Waits until every cache node at `addrs` listens; the store client the harness probes the
/// cache service with, as a gateway would.
pub(super) async fn raft_probe(addrs: &[String]) -> anyhow::Result<Store> {
    for a in addrs {
        anyhow::ensure!(
            wait_listening(a, START_WITHIN).await,
            "cache node {a} did not start"
        );
    }
    Ok(raft_client(addrs, GATEWAY_TOKEN))
}

/// A store client of the cache nodes at `addrs` holding the role whose secret is `token`.
pub(super) fn raft_client(addrs: &[String], token: &str) -> Store {
    Store::Raft(gateway::store::RaftStore::new(
        &gateway::store::RaftStoreConfig {
            endpoints: addrs.to_vec(),
            timeout: Duration::from_secs(2),
            tls: None,
            token: Some(gateway::secret::Secret::new(token)),
        },
    ))
}

/// A gateway's `store` key for the cache nodes at `endpoints`.
pub(super) fn raft_store_yaml(endpoints: &[String]) -> String {
    let quoted: Vec<String> = endpoints.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "{{ raft: {{ endpoints: [{}], timeout: 2s, token: env:CHAOS_GATEWAY_TOKEN, allowPlaintext: true }} }}",
        quoted.join(", ")
    )
}

/// Waits until the store answers (Raft: a leader is elected), before gateways start.
pub(super) async fn wait_for_store(probe: &Store) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_WITHIN;
    while probe.refresh_lease().await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the store does not answer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

pub(super) fn redis_config(addr: &str, password: Option<&str>) -> RedisConfig {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    RedisConfig {
        endpoints: vec![(host.into(), port.parse().expect("a port"))],
        username: None,
        password: password.map(gateway::secret::Secret::new),
        database: 0,
        key_prefix: "tokengate".into(),
        topology: RedisTopology::Standalone,
        pool_size: 2,
        timeout: Duration::from_secs(1),
        tls: None,
    }
}
