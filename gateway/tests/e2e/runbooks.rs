//! The runbooks' commands that run on one machine (`docs/runbooks.md`), against real cache-node
//! processes: a node that lost its disk is refused under its old id and replaced under a new
//! one; a backup taken with `cachectl snapshot --out` restores into a new cluster after the
//! majority is lost; and the standard gRPC health check answers probes without a credential.

use std::time::Duration;

use gateway::store::{TokenStore, conformance};
use tokengate_proto::admin as pa;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::cachectl::{Transcript, cachectl_bin};
use crate::cluster::{ADMIN_TOKEN, Cluster, admin, authed, key, status};
use crate::support::eventually;

/// Entries and claims the cluster holds before the incidents.
const ENTRIES: u64 = 40;

fn env(endpoints: &[String]) -> [(&'static str, String); 2] {
    [
        ("CACHECTL_ENDPOINTS", endpoints.join(",")),
        ("CACHECTL_TOKEN", ADMIN_TOKEN.to_owned()),
    ]
}

fn as_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn voters(status: &pa::StatusResponse) -> Vec<u64> {
    status
        .members
        .iter()
        .filter(|m| m.role == "voter")
        .map(|m| m.id)
        .collect()
}

async fn health(addr: &str, service: &str) -> Result<ServingStatus, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await?;
    Ok(answer.into_inner().status())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_disk_is_replaced_under_a_new_id_and_a_backup_outlives_a_lost_majority() {
    cachectl_bin();
    let mut cluster = Cluster::start(3).await;
    let store = cluster.store();
    for n in 0..ENTRIES {
        let entry = conformance::entry(n + 1, 300_000, 600_000);
        store.put(&key(n), entry, None).await.unwrap();
    }
    let claimed = key(1_000);
    assert!(
        store
            .claim_once(&claimed, gateway::token::now_millis() + 600_000)
            .await
            .unwrap()
    );
    let endpoints = cluster.endpoints();
    let ctl_env = env(&endpoints);
    let ctl_env = as_refs(&ctl_env);
    let mut t = Transcript::default();

    // The health check answers without a credential; its stream is not offered.
    for node in &cluster.nodes {
        assert_eq!(
            health(&node.addr, "").await.unwrap(),
            ServingStatus::Serving
        );
        let cache = health(&node.addr, "tokengate.cache.v1.TokenCache")
            .await
            .unwrap();
        assert_eq!(cache, ServingStatus::Serving);
    }
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", endpoints[0]))
        .unwrap()
        .connect_lazy();
    let watch = HealthClient::new(channel)
        .watch(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(watch.code(), tonic::Code::PermissionDenied, "{watch:?}");

    // Backup: the leader's state, read back before it is kept.
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("cache.backup");
    let backup = backup.to_str().unwrap();
    let taken = t.json(&["snapshot", "--out", backup], &ctl_env);
    assert_eq!(
        (taken["entries"].as_u64(), taken["claims"].as_u64()),
        (Some(ENTRIES), Some(1))
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(backup).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "only its owner reads the backup");

    // A follower loses its disk. Back under its old id with --init, it is refused: the leader
    // has replicated entries to that id, which the empty disk no longer holds.
    let leader = cluster.leader(Duration::from_secs(10)).await;
    let lost = (1..=3).find(|id| *id != leader).unwrap();
    cluster.node(lost).lose_disk();
    let (exit, said) = cluster.node(lost).run_to_exit();
    assert!(!exit.success());
    assert!(said.contains("lost its disk"), "{said}");

    // The runbook: the same address, a new id, --join; then `cachectl members replace`.
    let others: Vec<String> = cluster
        .nodes
        .iter()
        .filter(|n| n.id != lost)
        .map(|n| n.addr.clone())
        .collect();
    let new_id = 4;
    cluster.node(lost).rejoin_as(new_id, others.join(","));
    cluster.node(new_id).start();
    eventually(
        "the new node joins as a learner",
        Duration::from_secs(20),
        async || {
            let s = status(&others[0], ADMIN_TOKEN).await;
            s.is_ok_and(|s| {
                s.members
                    .iter()
                    .any(|m| m.id == new_id && m.role == "learner")
            })
        },
    )
    .await;
    t.fails(
        &["members", "replace", &lost.to_string(), "9"],
        &ctl_env,
        2,
        "not a learner",
    );
    t.json(
        &["members", "replace", &lost.to_string(), &new_id.to_string()],
        &ctl_env,
    );
    let mut expected: Vec<u64> = [1, 2, 3, new_id]
        .into_iter()
        .filter(|id| *id != lost)
        .collect();
    expected.sort_unstable();
    eventually(
        "the new node votes in the old one's place",
        Duration::from_secs(20),
        async || {
            let statuses = cluster.statuses().await;
            statuses.len() == 3
                && statuses
                    .values()
                    .all(|s| voters(s) == expected && s.entries == ENTRIES)
        },
    )
    .await;

    // The majority is lost (every disk, here). A new cluster gets the backup back.
    drop(store);
    for id in expected.clone() {
        cluster.node(id).lose_disk();
    }
    let fresh = Cluster::start(3).await;
    let fresh_env = env(&fresh.endpoints());
    let fresh_env = as_refs(&fresh_env);
    let restored = t.json(&["restore", backup], &fresh_env);
    assert_eq!(
        (
            restored["stored"].as_u64(),
            restored["skipped"].as_u64(),
            restored["claims"].as_u64()
        ),
        (Some(ENTRIES), Some(0), Some(1))
    );
    let store = fresh.store();
    for n in 0..ENTRIES {
        let entry = store.get(&key(n)).await.unwrap().expect("restored");
        assert_eq!(entry.meta.version, n + 1);
    }
    // A one-time claim is still spent: a replayed assertion stays refused.
    assert!(
        !store
            .claim_once(&claimed, gateway::token::now_millis() + 600_000)
            .await
            .unwrap()
    );
    // Restoring again changes nothing: what is cached is as new.
    let again = t.json(&["restore", backup], &fresh_env);
    assert_eq!(
        (again["stored"].as_u64(), again["skipped"].as_u64()),
        (Some(0), Some(ENTRIES))
    );

    // A file that is not a whole backup is refused before anything is sent...
    let text = std::fs::read(backup).unwrap();
    let cut = dir.path().join("cut.backup");
    std::fs::write(&cut, &text[..text.len() / 2]).unwrap();
    t.fails(
        &["restore", cut.to_str().unwrap()],
        &fresh_env,
        2,
        "is not a backup",
    );
    // ... and by the node, sent by anything else.
    let leader = fresh.leader(Duration::from_secs(10)).await;
    let leader_addr = fresh.addr_of(leader);
    let junk = futures_util::stream::iter(vec![pa::BackupChunk {
        data: text[..text.len() / 2].to_vec(),
    }]);
    let refused = admin(&leader_addr)
        .await
        .restore(authed(junk, ADMIN_TOKEN))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    let unauthenticated = futures_util::stream::iter(vec![pa::BackupChunk { data: text.clone() }]);
    let refused = admin(&leader_addr)
        .await
        .restore(unauthenticated)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    // A node cut off from the majority says NOT_SERVING.
    let mut fresh = fresh;
    let follower = fresh
        .nodes
        .iter()
        .find(|n| n.id != leader)
        .unwrap()
        .addr
        .clone();
    for n in fresh.nodes.iter_mut().filter(|n| n.addr != follower) {
        n.kill();
    }
    eventually(
        "the lone node stops serving",
        Duration::from_secs(20),
        async || {
            health(&follower, "")
                .await
                .is_ok_and(|s| s == ServingStatus::NotServing)
        },
    )
    .await;
}
