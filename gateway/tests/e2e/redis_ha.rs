//! The Redis store on highly available deployments: Sentinel failover and Redis Cluster.

use std::time::Duration;

use gateway::store::RedisTopology;
use gateway::store::conformance;
use testkit::{EchoUpstream, FakeIdp};

use crate::redis::{FLEET_KEY, connected, creds, node_config, store_config};
use crate::support::{
    Node, RedisServer, TlsFixture, client, eventually, free_cluster_port, free_port,
};

async fn doubles() -> (FakeIdp, EchoUpstream) {
    let idp = FakeIdp::start().await;
    for i in 0..20 {
        idp.register(&format!("client-{i}"), &format!("secret-{i}"));
    }
    (idp, EchoUpstream::start().await)
}

async fn status(node: &Node, client_no: usize) -> u16 {
    let req = client()
        .get(node.url("/"))
        .header("authorization", creds(client_no));
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_keeps_the_fleet_serving_and_sharing() {
    let mut master = RedisServer::start();
    let replica = RedisServer::start_with(
        free_port(),
        &["--replicaof", "127.0.0.1", &master.port.to_string()],
    );
    let sentinel = RedisServer::sentinel(&format!(
        "sentinel monitor tg 127.0.0.1 {} 1\nsentinel down-after-milliseconds tg 1000\nsentinel failover-timeout tg 5000",
        master.port
    ));
    let replica_port = replica.port.to_string();
    eventually(
        "the sentinel knows the replica",
        Duration::from_secs(15),
        async || {
            sentinel
                .cli(&["SENTINEL", "replicas", "tg"])
                .contains(&replica_port)
        },
    )
    .await;
    let (idp, upstream) = doubles().await;
    let store = format!(
        r#"{{ redis: {{ endpoints: ["{}"], sentinel: {{ masterSet: tg }}, timeout: 500ms }} }}"#,
        sentinel.endpoint()
    );
    let yaml = node_config(&idp, &upstream, &store, "{ interval: 200ms }");
    let a = Node::start(&yaml, &[("FLEET_KEY", FLEET_KEY)]);
    for i in 0..3 {
        assert_eq!(status(&a, i).await, 200);
    }
    eventually(
        "the replica has the entries",
        Duration::from_secs(10),
        async || {
            replica
                .cli(&["--scan", "--pattern", "{tokengate}:e:*"])
                .lines()
                .count()
                == 3
        },
    )
    .await;

    master.kill();
    eventually(
        "the sentinel promotes the replica",
        Duration::from_secs(20),
        async || {
            for i in 0..3 {
                assert_eq!(
                    status(&a, i).await,
                    200,
                    "served from L1 during the failover"
                );
            }
            // Promoted, and the failover finished (no `failover_in_progress`, no `s_down`).
            let promoted = sentinel
                .cli(&["SENTINEL", "get-master-addr-by-name", "tg"])
                .contains(&replica_port);
            promoted
                && sentinel
                    .cli(&["SENTINEL", "MASTER", "tg"])
                    .contains("flags\nmaster\n")
        },
    )
    .await;
    // A node started after the failover finds the fleet's tokens on the new master.
    let b = Node::start(&yaml, &[("FLEET_KEY", FLEET_KEY)]);
    for i in 0..3 {
        assert_eq!(status(&b, i).await, 200);
    }
    assert_eq!(
        idp.total_issued(),
        3,
        "the promoted replica served the tokens to the new node"
    );
    eventually(
        "the first node uses the new master",
        Duration::from_secs(10),
        async || {
            let store = a.store_state().await;
            store == "ok" && status(&a, 5).await == 200
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_master_cluster_meets_the_contract_and_shares_tokens() {
    let mut ports: Vec<u16> = Vec::new();
    while ports.len() < 3 {
        let p = free_cluster_port();
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    let args = [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        "2000",
    ];
    let servers: Vec<RedisServer> = ports
        .iter()
        .map(|p| RedisServer::start_with(*p, &args))
        .collect();
    let endpoints: Vec<String> = servers.iter().map(RedisServer::endpoint).collect();
    let mut create = vec!["--cluster", "create"];
    create.extend(endpoints.iter().map(String::as_str));
    create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
    servers[0].cli(&create);
    eventually(
        "the cluster is formed",
        Duration::from_secs(20),
        async || {
            servers
                .iter()
                .all(|s| s.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        },
    )
    .await;

    let n = std::sync::atomic::AtomicUsize::new(0);
    conformance::run(async || {
        let mut cfg = store_config(
            &endpoints[0],
            &format!(
                "cluster-{}",
                n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
        );
        cfg.endpoints = endpoints
            .iter()
            .map(|e| {
                (
                    "127.0.0.1".into(),
                    e.rsplit_once(':').unwrap().1.parse().unwrap(),
                )
            })
            .collect();
        cfg.topology = RedisTopology::Cluster;
        connected(&cfg).await
    })
    .await;

    let (idp, upstream) = doubles().await;
    idp.set_latency(Duration::from_millis(200));
    let list = endpoints
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let store = format!("{{ redis: {{ endpoints: [{list}], cluster: true, timeout: 500ms }} }}");
    let yaml = node_config(&idp, &upstream, &store, "{ interval: 200ms }");
    let nodes = [
        Node::start(&yaml, &[("FLEET_KEY", FLEET_KEY)]),
        Node::start(&yaml, &[("FLEET_KEY", FLEET_KEY)]),
    ];
    let calls = (0..60).map(|i| status(&nodes[i % 2], i % 5));
    let statuses = futures_util::future::join_all(calls).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        idp.total_issued(),
        5,
        "one token request per credential across the fleet"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_mutual_tls() {
    let tls = TlsFixture::new();
    let redis = RedisServer::start_tls(&tls);
    let n = std::sync::atomic::AtomicUsize::new(0);
    conformance::run(async || {
        let mut cfg = store_config(
            &redis.endpoint(),
            &format!(
                "tls-{}",
                n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
        );
        cfg.tls = Some(gateway::outbound::StoreTls {
            ca: Some(std::fs::read(tls.path("ca.crt")).unwrap()),
            client: Some((
                std::fs::read(tls.path("client.crt")).unwrap(),
                gateway::secret::Secret::new(
                    std::fs::read_to_string(tls.path("client.key")).unwrap(),
                ),
            )),
            insecure_skip_verify: false,
        });
        connected(&cfg).await
    })
    .await;

    let (idp, upstream) = doubles().await;
    let store = |client_cert: &str| {
        format!(
            r#"{{ redis: {{ endpoints: ["{}"], tls: {{ caFile: "{}"{client_cert} }} }} }}"#,
            redis.endpoint(),
            tls.path("ca.crt")
        )
    };
    let with_cert = store(&format!(
        r#", certFile: "{}", keyFile: "{}""#,
        tls.path("client.crt"),
        tls.path("client.key")
    ));
    let a = Node::start(
        &node_config(&idp, &upstream, &with_cert, "{ interval: 1s }"),
        &[("FLEET_KEY", FLEET_KEY)],
    );
    assert_eq!(status(&a, 0).await, 200);
    assert_eq!(
        redis
            .cli(&["--scan", "--pattern", "{tokengate}:e:*"])
            .lines()
            .count(),
        1,
        "stored over TLS"
    );
    assert_eq!(a.store_state().await, "ok");

    // Without a client certificate Redis refuses the node; it still serves, node-locally.
    let b = Node::start(
        &node_config(&idp, &upstream, &store(""), "{ interval: 1s }"),
        &[("FLEET_KEY", FLEET_KEY)],
    );
    assert_eq!(status(&b, 0).await, 200);
    assert_eq!(b.store_state().await, "degraded");
    assert_eq!(idp.total_issued(), 2, "b could not reach the shared token");
}
