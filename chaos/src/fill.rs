//! `chaos fill`: the shared cache at production size.
//!
//! A fleet (gateways behind the balancer, the store, the fake IdP issuing opaque tokens padded
//! to a realistic size) absorbs a number of new credentials as fast as a closed loop of callers
//! can send them, each request a credential never seen before, so each one costs an IdP request
//! and the store's fill path. With the Raft store, one follower is stopped before the fill and
//! started again after it (its log then long compacted: it catches up from a streamed
//! snapshot), and a new node joins as a learner.
//!
//! Measured: the fill rate, failed requests, IdP requests per credential, Raft elections during
//! the fill, each process's resident memory before and after (per credential), the snapshot's
//! size and transfer time, and how long the follower and the learner took to reach the leader's
//! applied index and entry count. Several stores run one after another in one invocation, so
//! their rates compare on the same machine at the same moment.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::driver::identity;
use crate::fleet::{Fleet, FleetSpec, StoreKind, cache_snapshot, cache_status};

/// What to fill.
#[derive(Debug, Clone)]
pub struct FillSpec {
    /// The store.
    pub store: StoreKind,
    /// Gateway nodes behind the balancer.
    pub gateways: usize,
    /// New credentials to absorb.
    pub credentials: usize,
    /// Callers in the closed loop.
    pub concurrency: usize,
    /// Size of each access token, bytes.
    pub token_bytes: usize,
    /// The `gateway` binary.
    pub gateway_bin: PathBuf,
    /// Where logs and data go.
    pub dir: PathBuf,
    /// Every process's log filter (`RUST_LOG` syntax).
    pub log_level: String,
    /// Redis' `appendfsync` (`always` or `everysec`).
    pub redis_fsync: &'static str,
}

/// What a fill measured.
#[derive(Debug, Clone, Serialize)]
pub struct FillReport {
    /// The store.
    pub store: String,
    /// Gateways.
    pub gateways: usize,
    /// Credentials filled.
    pub credentials: usize,
    /// Token size, bytes.
    pub token_bytes: usize,
    /// Requests that did not answer 200.
    pub failed: u64,
    /// Seconds the fill took.
    pub seconds: f64,
    /// Credentials absorbed per second.
    pub rate: f64,
    /// Tokens the IdP issued.
    pub idp_requests: u64,
    /// The most tokens issued to one credential.
    pub idp_requests_max: u64,
    /// Raft elections during the fill (term increase), Raft only.
    pub elections: Option<u64>,
    /// Gateways' resident memory growth per credential, bytes (mean over gateways, each
    /// divided by the credentials it served).
    pub gateway_bytes_per_credential: f64,
    /// Cache nodes' resident memory growth per credential, bytes (mean), Raft only.
    pub cache_node_bytes_per_credential: Option<f64>,
    /// Size of the leader's snapshot file after the fill, bytes.
    pub snapshot_bytes: Option<u64>,
    /// The stopped follower's snapshot transfer: bytes and milliseconds, from its log.
    pub snapshot_transfer: Option<(u64, u64)>,
    /// Seconds until the restarted follower reached the leader's applied index and entries.
    pub follower_catch_up: Option<f64>,
    /// Seconds until a new learner reached the leader's applied index and entries.
    pub learner_catch_up: Option<f64>,
    /// Entries the leader held after the fill.
    pub leader_entries: Option<u64>,
    /// CPU used during the fill per credential, milliseconds: gateways, store processes (cache
    /// nodes or Redis), and this harness (callers, balancer, IdP, upstream).
    pub cpu_ms_per_credential: (f64, f64, f64),
}

/// CPU time process `pid` has used (user and system), seconds.
fn cpu_seconds(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) closing with `)`.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}

/// Resident memory of process `pid`, bytes.
fn rss(pid: Option<u32>) -> u64 {
    let Some(pid) = pid else { return 0 };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Runs one fill.
pub async fn fill(spec: &FillSpec) -> anyhow::Result<FillReport> {
    let fleet = Fleet::start(FleetSpec {
        hosting: crate::fleet::Hosting::Processes,
        store: spec.store,
        gateways: spec.gateways,
        clients: spec.credentials,
        token_lifetime: Duration::from_secs(3600),
        lease_ttl: Duration::from_secs(5),
        gateway_bin: spec.gateway_bin.clone(),
        dir: spec.dir.clone(),
        log_level: spec.log_level.clone(),
        // Every request is a new credential from one address: the miss budgets are for
        // callers, not for a benchmark.
        extra_config: "idpMissBudget: { perClientId: { average: 0 }, perAddress: { average: 0 } }"
            .into(),
        // Gateways reach the store, and cache nodes each other, directly: the product, not
        // the harness's relays, is measured.
        relays: false,
        redis_fsync: spec.redis_fsync,
    })
    .await?;
    fleet.idp.opaque_tokens(true);
    fleet.idp.pad_opaque_tokens(spec.token_bytes);
    let raft = spec.store == StoreKind::Raft;

    // Before: terms, memory; a follower stopped (it misses the whole fill).
    let leader = if raft {
        Some(
            fleet
                .raft_leader()
                .await
                .ok_or_else(|| anyhow::anyhow!("no Raft leader"))?,
        )
    } else {
        None
    };
    let term_before = max_term(&fleet).await;
    let stopped = leader.map(|l| (l + 1) % 3);
    if let Some(f) = stopped {
        fleet.cache_node(f).kill();
    }
    let gateway_rss_before: Vec<u64> = (0..spec.gateways)
        .map(|i| rss(fleet.gateway(i).pid()))
        .collect();
    let node_rss_before: Vec<u64> = (0..fleet.cache_nodes.len())
        .map(|i| rss(fleet.cache_node(i).pid()))
        .collect();

    let store_pids = || -> Vec<Option<u32>> {
        let mut pids: Vec<Option<u32>> = (0..fleet.cache_nodes.len())
            .map(|i| fleet.cache_node(i).pid())
            .collect();
        if let Some(r) = &fleet.redis {
            pids.push(r.lock().unwrap_or_else(|p| p.into_inner()).pid());
        }
        pids
    };
    let cpu = || {
        let gateways: f64 = (0..spec.gateways)
            .map(|i| cpu_seconds(fleet.gateway(i).pid()))
            .sum();
        let store: f64 = store_pids().into_iter().map(cpu_seconds).sum();
        (gateways, store, cpu_seconds(Some(std::process::id())))
    };
    let cpu_before = cpu();
    // The fill: a closed loop of callers, each request a new credential.
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(spec.concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;
    let url = fleet.url() + "/";
    let started = Instant::now();
    let callers: Vec<_> = (0..spec.concurrency)
        .map(|_| {
            let (next, failed, http, url) = (
                Arc::clone(&next),
                Arc::clone(&failed),
                http.clone(),
                url.clone(),
            );
            let total = spec.credentials;
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return;
                    }
                    let (id, secret) = identity(i);
                    let ok = http
                        .get(&url)
                        .basic_auth(id, Some(secret))
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 200);
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for c in callers {
        c.await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_after = cpu();
    let per = |after: f64, before: f64| (after - before) * 1000.0 / spec.credentials as f64;
    let cpu_ms_per_credential = (
        per(cpu_after.0, cpu_before.0),
        per(cpu_after.1, cpu_before.1),
        per(cpu_after.2, cpu_before.2),
    );
    let term_after = max_term(&fleet).await;

    // Memory once the nodes settled (usage reports and replication drained).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let per_gateway = spec.credentials as f64 / spec.gateways as f64;
    let gateway_growth: Vec<f64> = (0..spec.gateways)
        .map(|i| rss(fleet.gateway(i).pid()).saturating_sub(gateway_rss_before[i]) as f64)
        .collect();
    let gateway_bytes_per_credential =
        gateway_growth.iter().sum::<f64>() / spec.gateways as f64 / per_gateway;
    let cache_node_bytes_per_credential = raft.then(|| {
        let grown: Vec<f64> = (0..fleet.cache_nodes.len())
            .filter(|i| Some(*i) != stopped)
            .map(|i| rss(fleet.cache_node(i).pid()).saturating_sub(node_rss_before[i]) as f64)
            .collect();
        grown.iter().sum::<f64>() / grown.len() as f64 / spec.credentials as f64
    });

    let issued = fleet.idp.total_issued();
    let issued_max = (0..spec.credentials)
        .map(|i| fleet.idp.issued(&identity(i).0))
        .max()
        .unwrap_or(0);
    let mut report = FillReport {
        store: match spec.store {
            StoreKind::Redis => format!("redis (appendfsync {})", spec.redis_fsync),
            other => other.to_string(),
        },
        gateways: spec.gateways,
        credentials: spec.credentials,
        token_bytes: spec.token_bytes,
        failed: failed.load(Ordering::Relaxed),
        seconds,
        rate: spec.credentials as f64 / seconds,
        idp_requests: issued,
        idp_requests_max: issued_max,
        elections: raft.then(|| term_after.saturating_sub(term_before)),
        gateway_bytes_per_credential,
        cache_node_bytes_per_credential,
        snapshot_bytes: None,
        snapshot_transfer: None,
        follower_catch_up: None,
        learner_catch_up: None,
        leader_entries: None,
        cpu_ms_per_credential,
    };
    if let (Some(leader), Some(follower)) = (leader, stopped) {
        catch_up(&fleet, leader, follower, &mut report).await?;
    }
    Ok(report)
}

/// The highest Raft term any cache node reports (0 without cache nodes).
async fn max_term(fleet: &Fleet) -> u64 {
    fleet
        .cache_statuses()
        .await
        .iter()
        .map(|(_, s)| s.term)
        .max()
        .unwrap_or(0)
}

/// Restarts the stopped follower and adds a learner; records how long each takes to reach the
/// leader's applied index and entry count, and the snapshot that brought them there.
async fn catch_up(
    fleet: &Fleet,
    leader: usize,
    follower: usize,
    report: &mut FillReport,
) -> anyhow::Result<()> {
    let leader_addr = fleet.cache_addrs()[leader].clone();
    // The leader snapshots and compacts its log (as its policy does every 10,000 entries): the
    // follower's log ends before the fill, so only a streamed snapshot brings it up to date.
    cache_snapshot(&leader_addr).await?;
    let target = cache_status(&leader_addr).await?;
    report.leader_entries = Some(target.entries);
    let reached = async |addr: &str| {
        cache_status(addr)
            .await
            .is_ok_and(|s| s.applied_index >= target.applied_index && s.entries >= target.entries)
    };
    let started = Instant::now();
    fleet.cache_node(follower).restart()?;
    let follower_addr = fleet.cache_addrs()[follower].clone();
    while !reached(&follower_addr).await {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "the restarted follower did not catch up within 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    report.follower_catch_up = Some(started.elapsed().as_secs_f64());
    report.snapshot_transfer = logged(&fleet.cache_node(follower).log(), "snapshot received");

    let started = Instant::now();
    let (learner, learner_addr) = fleet.start_cache_learner(4).await?;
    while !reached(&learner_addr).await {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "the learner did not catch up within 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    report.learner_catch_up = Some(started.elapsed().as_secs_f64());
    drop(learner);
    let snapshots = fleet
        .spec
        .dir
        .join(format!("cache-node-{}", leader + 1))
        .join("snapshots");
    report.snapshot_bytes = std::fs::read_dir(snapshots).ok().and_then(|d| {
        d.flatten()
            .filter_map(|f| f.metadata().ok())
            .map(|m| m.len())
            .max()
    });
    Ok(())
}

/// `(bytes, took_ms)` of the last JSON log line with `message`.
fn logged(log: &str, message: &str) -> Option<(u64, u64)> {
    log.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == message)
        .find_map(|v| Some((v["bytes"].as_u64()?, v["took_ms"].as_u64()?)))
}

/// The reports as a table, each rate also as a ratio to the first store's.
pub fn table(reports: &[FillReport]) -> String {
    let mut t = comfy_table::Table::new();
    t.set_header([
        "store",
        "credentials",
        "fill rate /s",
        "ratio",
        "failed",
        "IdP req/cred (max)",
        "elections",
        "gateway B/cred",
        "cache node B/cred",
        "snapshot MB (transfer ms)",
        "follower / learner catch-up s",
        "CPU ms/cred: gateways, store, harness",
    ]);
    let base = reports.first().map_or(1.0, |r| r.rate);
    for r in reports {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "–".into());
        t.add_row([
            r.store.clone(),
            r.credentials.to_string(),
            format!("{:.0}", r.rate),
            format!("{:.2}×", r.rate / base),
            r.failed.to_string(),
            format!(
                "{:.3} ({})",
                r.idp_requests as f64 / r.credentials as f64,
                r.idp_requests_max
            ),
            opt(r.elections.map(|e| e.to_string())),
            format!("{:.0}", r.gateway_bytes_per_credential),
            opt(r.cache_node_bytes_per_credential.map(|b| format!("{b:.0}"))),
            opt(r.snapshot_bytes.map(|b| {
                let ms = r
                    .snapshot_transfer
                    .map_or_else(|| "–".to_owned(), |(_, ms)| ms.to_string());
                format!("{:.1} ({ms})", b as f64 / 1e6)
            })),
            opt(r
                .follower_catch_up
                .zip(r.learner_catch_up)
                .map(|(f, l)| format!("{f:.1} / {l:.1}"))),
            format!(
                "{:.2}, {:.2}, {:.2}",
                r.cpu_ms_per_credential.0, r.cpu_ms_per_credential.1, r.cpu_ms_per_credential.2
            ),
        ]);
    }
    t.to_string()
}
