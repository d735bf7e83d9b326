//! The Raft cache service: clusters of real `gateway cache-node` processes on loopback, the
//! store contract through them, failover, durability, membership changes, and gateways sharing
//! tokens through them.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gateway::store::RaftStoreConfig;
use gateway::store::{PutOutcome, RaftStore, TokenStore, conformance};
use tokengate_proto::admin::{self as pa};

use testkit::relay::Relay;

use crate::cluster::{
    ADMIN_TOKEN, CacheNode, Cluster, admin, authed, fleet, gateway_token, key, status,
};
use crate::support::{eventually, free_port};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_store_meets_the_contract() {
    // A fresh three-node cluster per check: the contract's checks share no state.
    let current: Mutex<Option<Cluster>> = Mutex::new(None);
    conformance::run_with_operator(
        async || {
            current.lock().unwrap().take();
            let cluster = Cluster::start(3).await;
            let store = cluster.store();
            assert!(
                store.watching(Duration::from_secs(10)).await,
                "change stream open"
            );
            *current.lock().unwrap() = Some(cluster);
            store
        },
        // Listing and marking due are the operator's calls (cachectl's), not a gateway's.
        async |_| {
            let endpoints = current.lock().unwrap().as_ref().unwrap().endpoints();
            Some(RaftStore::new(&RaftStoreConfig {
                endpoints,
                timeout: Duration::from_secs(5),
                tls: None,
                token: Some(gateway::secret::Secret::new(ADMIN_TOKEN)),
            }))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_need_the_token() {
    let cluster = Cluster::start(1).await;
    let addr = &cluster.nodes[0].addr;
    let wrong = status(addr, "not-the-token").await.unwrap_err();
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
    let mut c = admin(addr).await;
    let missing = c.status(pa::StatusRequest {}).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::Unauthenticated);
    assert!(!missing.message().contains(ADMIN_TOKEN));
    let ok = status(addr, ADMIN_TOKEN).await.unwrap();
    assert_eq!(
        (ok.id, ok.state.as_str(), ok.leader),
        (1, "leader", Some(1))
    );
    // Admin.Evict, with the token, removes entries.
    let store = cluster.store();
    let e = conformance::entry(1, 60_000, 120_000);
    store.put(&key(1), e, None).await.unwrap();
    let evicted = c
        .evict(authed(
            pa::EvictRequest {
                keys: vec![],
                all: true,
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(evicted.evicted, 1);
    assert_eq!(store.get(&key(1)).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_under_writes_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(3).await;
    let store = Arc::new(cluster.store());
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = {
        let (store, acked, stop) = (Arc::clone(&store), Arc::clone(&acknowledged), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.is_cancelled() {
                n += 1;
                let entry = conformance::entry(1, 60_000, 120_000);
                if let Ok(PutOutcome::Stored) = store.put(&key(n), entry, None).await {
                    acked.lock().unwrap().push(n);
                }
            }
        })
    };
    eventually(
        "some writes are acknowledged",
        Duration::from_secs(10),
        async || acknowledged.lock().unwrap().len() > 50,
    )
    .await;
    let old = cluster.leader(Duration::from_secs(5)).await;
    let killed_at = Instant::now();
    cluster.node(old).kill();
    let new = cluster.leader(Duration::from_secs(10)).await;
    let failover = killed_at.elapsed();
    assert_ne!(new, old);
    println!("new leader {new} elected {failover:?} after SIGKILL of leader {old}");
    let before = acknowledged.lock().unwrap().len();
    eventually(
        "writes resume on the new leader",
        Duration::from_secs(10),
        async || acknowledged.lock().unwrap().len() > before + 50,
    )
    .await;
    stop.cancel();
    writer.await.unwrap();

    let acked = acknowledged.lock().unwrap().clone();
    for n in &acked {
        assert!(
            store.get(&key(*n)).await.unwrap().is_some(),
            "acknowledged write {n} lost"
        );
    }
    // The killed node comes back and catches up (from its log, or a snapshot: the policy
    // snapshots every 200 entries).
    cluster.node(old).start();
    let leader_applied = cluster.statuses().await[&new].applied_index;
    eventually(
        "the restarted node catches up",
        Duration::from_secs(20),
        async || {
            cluster
                .statuses()
                .await
                .get(&old)
                .is_some_and(|s| s.applied_index >= leader_applied)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_restarted_whole_keeps_every_acknowledged_entry() {
    let mut cluster = Cluster::start(3).await;
    let store = cluster.store();
    for n in 0..300 {
        let outcome = store
            .put(&key(n), conformance::entry(n + 1, 60_000, 120_000), None)
            .await;
        assert_eq!(outcome.unwrap(), PutOutcome::Stored);
    }
    drop(store);
    for node in &mut cluster.nodes {
        node.kill();
    }
    for node in &mut cluster.nodes {
        node.start();
    }
    cluster.leader(Duration::from_secs(20)).await;
    let store = cluster.store();
    for n in 0..300 {
        let e = store
            .get(&key(n))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("entry {n} lost"));
        assert_eq!(e.meta.version, n + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_grows_to_five_and_shrinks_back() {
    let mut cluster = Cluster::start(3).await;
    // Joined through the three members: without TLS the operator token goes to them only, so
    // whichever leads is among the addresses given.
    let members = cluster.endpoints().join(",");
    for id in [4, 5] {
        let addr = format!("127.0.0.1:{}", free_port());
        cluster.nodes.push(CacheNode::spawn(
            id,
            addr,
            String::new(),
            Some(members.clone()),
            String::new(),
        ));
    }
    eventually(
        "both joined as learners",
        Duration::from_secs(20),
        async || {
            let s = cluster.statuses().await;
            s.values().any(|s| {
                s.state == "leader" && s.members.iter().filter(|m| m.role == "learner").count() == 2
            })
        },
    )
    .await;
    let leader = cluster.leader(Duration::from_secs(5)).await;
    let leader_addr = cluster.node(leader).addr.clone();
    let mut c = admin(&leader_addr).await;
    c.change_membership(authed(
        pa::ChangeMembershipRequest {
            voters: vec![1, 2, 3, 4, 5],
        },
        ADMIN_TOKEN,
    ))
    .await
    .unwrap();
    let s = status(&leader_addr, ADMIN_TOKEN).await.unwrap();
    assert_eq!(s.members.iter().filter(|m| m.role == "voter").count(), 5);

    // Remove two of the original members (the leader may be one of them).
    c.change_membership(authed(
        pa::ChangeMembershipRequest {
            voters: vec![3, 4, 5],
        },
        ADMIN_TOKEN,
    ))
    .await
    .unwrap();
    cluster.node(1).kill();
    cluster.node(2).kill();
    let leader = cluster.leader(Duration::from_secs(10)).await;
    assert!([3, 4, 5].contains(&leader));
    let store = RaftStore::new(&RaftStoreConfig {
        endpoints: cluster.nodes[2..].iter().map(|n| n.addr.clone()).collect(),
        timeout: Duration::from_secs(5),
        tls: None,
        token: gateway_token(),
    });
    let outcome = store
        .put(&key(1), conformance::entry(1, 60_000, 120_000), None)
        .await;
    assert_eq!(
        outcome.unwrap(),
        PutOutcome::Stored,
        "three of five voters left still commit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_on_the_cluster_ask_the_idp_once_per_credential() {
    let f = fleet(Duration::from_secs(300), "{ interval: 1s }").await;
    f.idp.set_latency(Duration::from_millis(300));
    crate::redis::one_idp_request_per_credential(&f.nodes, &f.idp, &f.upstream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_serve_from_their_l1_while_the_cluster_has_no_quorum() {
    let mut f = fleet(Duration::from_secs(300), "{ interval: 1s }").await;
    for node in 0..3 {
        assert_eq!(f.call(node, 0).await.status(), 200);
    }
    let leader = f.cluster.leader(Duration::from_secs(5)).await;
    for id in (1..=3).filter(|id| *id != leader).take(1).chain([leader]) {
        f.cluster.node(id).kill();
    }
    for node in 0..3 {
        assert_eq!(
            f.call(node, 0).await.status(),
            200,
            "node {node} serves its cached token"
        );
    }
    assert_eq!(f.idp.issued("client-0"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gateway_refreshes_through_the_raft_lease_while_all_serve() {
    let f = fleet(Duration::from_secs(4), "{ interval: 100ms }").await;
    crate::redis::refresh_once_per_lifetime(&f.nodes, &f.idp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_cannot_grant_the_refresh_lease() {
    use gateway::store::NodeId;
    // Raft traffic from node i to node j goes through relay (i, j); gateways reach the nodes
    // directly.
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut relays = BTreeMap::new();
    for i in 1..=3u64 {
        for j in 1..=3u64 {
            if i != j {
                let to = format!("127.0.0.1:{}", ports[j as usize - 1]);
                relays.insert((i, j), Relay::start(to).await);
            }
        }
    }
    let peers = |i: u64| {
        (1..=3u64)
            .filter(|j| *j != i)
            .map(|j| format!("{j}={}", relays[&(i, j)].addr))
            .collect::<Vec<_>>()
            .join(",")
    };
    let peer_args: BTreeMap<u64, String> = (1..=3).map(|i| (i, peers(i))).collect();
    let cluster = Cluster::start_on(&ports, |i| peer_args[&i].clone()).await;
    let old = cluster.leader(Duration::from_secs(10)).await;
    let partition = |on: bool| {
        for ((i, j), r) in &relays {
            if *i == old || *j == old {
                r.set_cut(on);
            }
        }
    };
    // A gateway that knows every node but the old leader first.
    let majority: Vec<u64> = (1..=3).filter(|i| *i != old).collect();
    let mut endpoints = vec![cluster.nodes[old as usize - 1].addr.clone()];
    endpoints.extend(
        majority
            .iter()
            .map(|i| cluster.nodes[*i as usize - 1].addr.clone()),
    );
    let following_endpoints = endpoints.clone();
    let following = RaftStore::new(&RaftStoreConfig {
        endpoints,
        timeout: Duration::from_secs(3),
        tls: None,
        token: gateway_token(),
    });
    partition(true);

    // A gateway that reaches only the old leader cannot get the lease granted: the old leader
    // cannot commit it without a majority. Meanwhile a write the old leader took just after
    // the cut is given up once no quorum answers it, and lands on the majority's new leader
    // (held until the old leader's commit, it would outlast the store's timeout).
    let isolated = RaftStore::new(&RaftStoreConfig {
        endpoints: vec![cluster.nodes[old as usize - 1].addr.clone()],
        timeout: Duration::from_millis(1500),
        tls: None,
        token: gateway_token(),
    });
    let a = NodeId::random();
    let (written, entry) = (key(91), conformance::entry(1, 60_000, 120_000));
    let (refused, in_flight) = tokio::join!(
        isolated.acquire_refresh_lease(&a, Duration::from_secs(30)),
        following.put(&written, entry.clone(), None)
    );
    assert!(refused.is_err(), "a minority granted a lease: {refused:?}");
    // Stale only when an earlier attempt of this same put was committed by the majority while
    // its answer was lost (a leader change under load): the retry then finds its own entry.
    assert!(
        matches!(in_flight, Ok(PutOutcome::Stored | PutOutcome::Stale)),
        "a write in flight stayed with the cut-off leader: {in_flight:?}"
    );
    assert_eq!(
        following.get(&written).await.unwrap(),
        Some(entry),
        "the write in flight is the majority's"
    );

    // The majority elects a leader of its own and grants the lease there.
    let new = cluster
        .leader_among(&majority, Duration::from_secs(10))
        .await;
    assert_ne!(new, old);
    let reachable = RaftStore::new(&RaftStoreConfig {
        endpoints: majority
            .iter()
            .map(|i| cluster.nodes[*i as usize - 1].addr.clone())
            .collect(),
        timeout: Duration::from_secs(5),
        tls: None,
        token: gateway_token(),
    });
    let b = NodeId::random();
    let fence = reachable
        .acquire_refresh_lease(&b, Duration::from_secs(30))
        .await
        .unwrap()
        .expect("the majority grants the lease");

    // A gateway that last knew the old leader moves on to the majority within its timeout,
    // instead of waiting on calls the old leader accepts but can never commit.
    let following = RaftStore::new(&RaftStoreConfig {
        endpoints: following_endpoints,
        timeout: Duration::from_secs(2),
        tls: None,
        token: gateway_token(),
    });
    let moved = following
        .put(&key(90), conformance::entry(1, 60_000, 120_000), None)
        .await;
    assert!(
        matches!(moved, Ok(PutOutcome::Stored)),
        "stuck on the cut-off leader: {moved:?}"
    );

    // Healed, the old leader follows; its uncommitted grant to `a` never took effect.
    partition(false);
    cluster.leader(Duration::from_secs(10)).await;
    let all = cluster.store();
    assert_eq!(
        all.acquire_refresh_lease(&a, Duration::from_secs(30))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        all.acquire_refresh_lease(&b, Duration::from_secs(30))
            .await
            .unwrap(),
        Some(fence),
        "b still holds it, with the same fence"
    );
}

/// The largest `bytes` of the JSON log lines of `node` whose message is `message`.
fn logged_bytes(node: &CacheNode, message: &str) -> Option<u64> {
    node.log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == message)
        .filter_map(|v| v["bytes"].as_u64())
        .max()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_missed_20_mb_and_a_new_learner_catch_up_from_a_streamed_snapshot() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader(Duration::from_secs(10)).await;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    cluster.node(follower).kill();
    let store = Arc::new(cluster.store());
    // 8,000 entries of 2.6 KB: a 21 MB state, past tonic's 4 MiB default message size five
    // times over.
    const ENTRIES: u64 = 8_000;
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for n in (w..ENTRIES).step_by(16) {
                    let mut e = conformance::entry(1, 60_000, 600_000);
                    e.ciphertext = vec![n as u8; 2_600];
                    let outcome = store.put(&key(n), e, None).await.unwrap();
                    assert_eq!(outcome, PutOutcome::Stored);
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    // More log entries than a leader keeps after a snapshot, so the follower's next entry is
    // gone from every log and only a snapshot can bring it up to date.
    for n in 0..1_300 {
        store
            .claim_once(&key(1_000_000 + n), gateway::token::now_millis() + 600_000)
            .await
            .unwrap();
    }
    let leader_status = |cluster: &Cluster| {
        let addr = cluster.addr_of(leader);
        async move { status(&addr, ADMIN_TOKEN).await.unwrap() }
    };
    eventually(
        "the leader snapshots past the follower's log",
        Duration::from_secs(30),
        async || leader_status(&cluster).await.snapshot_index.unwrap_or(0) > 1_300,
    )
    .await;
    let target = leader_status(&cluster).await;
    assert!(target.entries >= ENTRIES, "{target:?}");

    cluster.node(follower).start();
    let members = cluster.endpoints().join(",");
    let learner_addr = format!("127.0.0.1:{}", free_port());
    cluster.nodes.push(CacheNode::spawn(
        4,
        learner_addr,
        String::new(),
        Some(members),
        String::new(),
    ));
    eventually(
        "the follower and the learner reach the leader's applied index and entry count",
        Duration::from_secs(60),
        async || {
            let s = cluster.statuses().await;
            [follower, 4].iter().all(|id| {
                s.get(id).is_some_and(|s| {
                    s.applied_index >= target.applied_index && s.entries == target.entries
                })
            })
        },
    )
    .await;
    // The log lines reach us through the nodes' output: poll for them.
    eventually(
        "the leader logs a snapshot of over 20 MB",
        Duration::from_secs(10),
        async || {
            logged_bytes(cluster.node(leader), "snapshot built").is_some_and(|b| b > 20_000_000)
        },
    )
    .await;
    for id in [follower, 4] {
        eventually(
            &format!("node {id} logs that it installed a streamed snapshot of over 20 MB"),
            Duration::from_secs(10),
            async || {
                logged_bytes(cluster.node(id), "snapshot received").is_some_and(|b| b > 20_000_000)
            },
        )
        .await;
    }
}

#[test]
fn a_node_whose_ports_are_taken_exits_with_an_error_not_a_panic() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let free = format!("127.0.0.1:{}", free_port());
    // The gRPC port taken; then the metrics port taken.
    for (listen, metrics) in [(&taken, &free), (&free, &taken)] {
        node_exits_with_an_error(listen, metrics);
    }
}

fn node_exits_with_an_error(listen: &str, metrics: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["cache-node", "--id", "1", "--listen", listen])
        .args(["--metrics-listen", metrics])
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{output}");
    assert!(output.contains("cannot serve on"), "{output}");
    assert!(!output.contains("panicked"), "{output}");
}
