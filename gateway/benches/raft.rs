//! The Raft cache service from a gateway's side: a three-node cluster of release-built
//! `gateway cache-node` processes on loopback, reached through the same `RaftStore` a gateway
//! node uses.
//!
//! - `get`: latency percentiles of sequential reads of one entry (served by the leader);
//! - `fenced put`: throughput of concurrent writes carrying the refresh lease's fence, each
//!   committed by a majority and fsync'd on each node before it is acknowledged;
//! - `miss`: a gateway's store work for a new credential (a lookup that takes the fill lease,
//!   then a put that releases it), with entries the size of a sealed 900-byte token.
//!
//! The cluster runs authenticated (peer, gateway and operator secrets, every call checked), as
//! production does; `RAFT_BENCH_AUTH=off` runs it without credentials, to measure what
//! authentication costs.
//!
//! Run with `cargo bench -p gateway --bench raft`.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use testkit::procs::free_port;

use gateway::store::RaftStoreConfig;
use gateway::store::conformance::entry;
use gateway::store::{Lookup, NodeId, PutOutcome, RaftStore, TokenStore};
use gateway::token::TokenKey;

struct Nodes(Vec<Child>, Vec<tempfile::TempDir>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn key(n: u64) -> TokenKey {
    let mut b = [3u8; 32];
    b[..8].copy_from_slice(&n.to_be_bytes());
    TokenKey::from_bytes(b)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

const PEER_TOKEN: &str = "bench-peer-token";
const GATEWAY_TOKEN: &str = "bench-gateway-token";
const ADMIN_TOKEN: &str = "bench-admin-token";

fn main() {
    let auth = std::env::var("RAFT_BENCH_AUTH").map_or(true, |v| v != "off");
    println!(
        "authentication: {}",
        if auth {
            "on (every call carries and checks a role secret)"
        } else {
            "off"
        }
    );
    let addrs: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let init: Vec<String> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect();
    let mut nodes = Nodes(Vec::new(), Vec::new());
    for (i, addr) in addrs.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
        if auth {
            cmd.env("TOKENGATE_PEER_TOKEN", PEER_TOKEN)
                .env("TOKENGATE_GATEWAY_TOKEN", GATEWAY_TOKEN)
                .env("TOKENGATE_ADMIN_TOKEN", ADMIN_TOKEN);
        }
        let child = cmd
            .args([
                "cache-node",
                "--id",
                &(i + 1).to_string(),
                "--listen",
                addr,
                "--init",
                &init.join(","),
            ])
            .arg("--data-dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        nodes.0.push(child);
        nodes.1.push(dir);
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Arc::new(RaftStore::new(&RaftStoreConfig {
            endpoints: addrs.clone(),
            timeout: Duration::from_secs(5),
            tls: None,
            token: auth.then(|| gateway::secret::Secret::new(GATEWAY_TOKEN)),
        }));
        testkit::eventually(
            "the cluster elects a leader",
            Duration::from_secs(30),
            async || {
                store
                    .put(&key(0), entry(1, 60_000, 600_000), None)
                    .await
                    .is_ok()
            },
        )
        .await;

        let mut latencies = Vec::with_capacity(20_000);
        for _ in 0..20_000 {
            let t = Instant::now();
            assert!(store.get(&key(0)).await.unwrap().is_some());
            latencies.push(t.elapsed());
        }
        latencies.sort();
        println!(
            "get: p50 {:?}  p99 {:?}  p99.9 {:?}  ({} sequential reads)",
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            percentile(&latencies, 0.999),
            latencies.len()
        );

        let fence = store
            .acquire_refresh_lease(&NodeId::random(), Duration::from_secs(600))
            .await
            .unwrap()
            .expect("a free lease is granted");
        for concurrency in [16u64, 64, 256] {
            let store = Arc::clone(&store);
            let rate = throughput(concurrency, move |t, n| {
                let store = Arc::clone(&store);
                async move {
                    let k = key(1_000_000 * (concurrency * 1000 + t + 1) + n);
                    let outcome = store.put(&k, entry(n, 60_000, 600_000), Some(fence)).await;
                    assert_eq!(outcome.unwrap(), PutOutcome::Stored);
                }
            })
            .await;
            println!("fenced put: {rate:.0}/s with {concurrency} concurrent writers");
        }

        for concurrency in [64u64, 256] {
            let store = Arc::clone(&store);
            let rate = throughput(concurrency, move |t, n| {
                let store = Arc::clone(&store);
                async move {
                    let holder = NodeId::random();
                    let k = key(2_000_000_000 + 1_000_000 * (concurrency * 1000 + t) + n);
                    let ttl = Duration::from_secs(10);
                    let found = store.lookup(&k, &holder, ttl).await.unwrap();
                    assert_eq!(found, Lookup::Missing { lease: true });
                    let mut e = entry(1, 60_000, 600_000);
                    e.ciphertext = vec![7; 1_300];
                    let outcome = store.put_filled(&k, e, &holder).await;
                    assert_eq!(outcome.unwrap(), PutOutcome::Stored);
                }
            })
            .await;
            println!(
                "miss (lookup + put, 1.3 KB entries): {rate:.0}/s with {concurrency} concurrent callers"
            );
        }
    });
}

/// Runs `op(task, n)` in a loop on `concurrency` tasks for 5 s (`n` counts each task's calls from
/// 1); the calls completed per second.
async fn throughput<F, Fut>(concurrency: u64, op: F) -> f64
where
    F: Fn(u64, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let run_for = Duration::from_secs(5);
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let (op, done) = (op.clone(), Arc::clone(&done));
            tokio::spawn(async move {
                let mut n = 0u64;
                while started.elapsed() < run_for {
                    n += 1;
                    op(t, n).await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}
