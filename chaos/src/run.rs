//! One run: start a fleet, drive load while a scenario injects faults, sample the refresh
//! lease and the Raft leader, then check every invariant.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::driver::{self, Outcome, identity};
use crate::fleet::{Fleet, FleetSpec, Hosting, StoreKind};
use crate::scenario::{Ctx, Event, Scenario, Timeline};
use testkit::Lies;
use testkit::upstream::Verdicts;

/// A token is renewed no earlier than this share of its servable lifetime (the gateway's
/// refresh window starts at 75 %).
const EARLIEST_REFRESH: f64 = 0.75;
/// A token stops being served this long before it expires (the gateway's margin).
const MIN_REMAINING: Duration = Duration::from_secs(1);
/// How often the lease and the Raft leader are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// What to run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// The experiment.
    pub scenario: &'static Scenario,
    /// The store.
    pub store: StoreKind,
    /// Where the nodes run.
    pub hosting: Hosting,
    /// Gateway nodes.
    pub gateways: usize,
    /// Load duration (faults happen inside it).
    pub duration: Duration,
    /// Requests per second.
    pub rps: u32,
    /// Seed for the scenario's choices.
    pub seed: u64,
    /// Client identities.
    pub clients: usize,
    /// The IdP's token lifetime.
    pub token_lifetime: Duration,
    /// The `gateway` binary.
    pub gateway_bin: PathBuf,
    /// Where logs and the report go.
    pub dir: PathBuf,
    /// Faults in the IdP's tokens (tests of the checks themselves; never from the CLI).
    pub lies: Lies,
    /// Every process's log filter (`RUST_LOG` syntax).
    pub log_level: String,
}

/// Live counters for a progress display.
#[derive(Debug, Default)]
pub struct Live {
    /// Requests completed.
    pub done: AtomicU64,
    /// Of which failed.
    pub failed: AtomicU64,
}

/// One checked invariant.
#[derive(Debug, Clone, Serialize)]
pub struct Invariant {
    /// Its name.
    pub name: &'static str,
    /// Whether it held.
    pub held: bool,
    /// The numbers behind the verdict.
    pub detail: String,
}

/// A lease sample.
#[derive(Debug, Clone, Serialize)]
pub struct LeaseSample {
    /// Ms since the start.
    pub at_ms: u64,
    /// The holder's node id.
    pub holder: String,
    /// Its fence.
    pub fence: u64,
}

/// Everything a run produced.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: &'static str,
    /// Store.
    pub store: StoreKind,
    /// Where the nodes ran.
    pub hosting: Hosting,
    /// Gateways.
    pub gateways: usize,
    /// Load duration, ms.
    pub duration_ms: u64,
    /// Target rate.
    pub rps: u32,
    /// Seed.
    pub seed: u64,
    /// Token lifetime, ms.
    pub token_lifetime_ms: u64,
    /// Requests sent.
    pub requests: u64,
    /// Requests that did not end in 200.
    pub failed: u64,
    /// Requests sent twice after a connection died under them.
    pub retried: u64,
    /// Latency percentiles of successful requests, µs: p50, p99, max.
    pub latency_us: [u64; 3],
    /// What the upstream found in the tokens it received.
    pub tokens: Verdicts,
    /// Tokens the IdP issued, per client.
    pub idp_issued: BTreeMap<String, u64>,
    /// Refresh-lease hand-overs seen.
    pub leader_changes: u64,
    /// How long each gateway that a fault cut off from the store stayed cut off, ms.
    pub store_cuts_ms: Vec<u64>,
    /// Entries the scenario evicted fleet-wide (each costs its credential a token request).
    pub evictions: u64,
    /// The invariants.
    pub invariants: Vec<Invariant>,
    /// Faults, heals and leader changes.
    pub events: Vec<Event>,
    /// IdP tokens issued so far, sampled (ms, total).
    pub idp_samples: Vec<(u64, u64)>,
    /// Every request.
    #[serde(skip)]
    pub outcomes: Vec<Outcome>,
    /// Lease samples.
    #[serde(skip)]
    pub leases: Vec<LeaseSample>,
}

impl Report {
    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.invariants.iter().all(|i| i.held)
    }
}

/// Runs `spec`, updating `live` as requests complete.
pub async fn run(spec: &RunSpec, live: Arc<Live>) -> anyhow::Result<Report> {
    anyhow::ensure!(
        spec.scenario.stores.contains(&spec.store),
        "scenario {} does not apply to the {} store",
        spec.scenario.name,
        spec.store
    );
    anyhow::ensure!(
        spec.scenario.hostings.contains(&spec.hosting),
        "scenario {} needs a fleet of {}",
        spec.scenario.name,
        spec.scenario.hostings[0]
    );
    let lease_ttl = Duration::from_secs(2);
    let fleet = Arc::new(
        Fleet::start(FleetSpec {
            store: spec.store,
            hosting: spec.hosting,
            gateways: spec.gateways,
            clients: spec.clients,
            token_lifetime: spec.token_lifetime,
            lease_ttl,
            gateway_bin: spec.gateway_bin.clone(),
            dir: spec.dir.clone(),
            log_level: spec.log_level.clone(),
            extra_config: String::new(),
            relays: true,
            redis_fsync: "always",
        })
        .await?,
    );
    fleet.idp.set_lies(spec.lies);
    let started = Instant::now();
    let timeline = Arc::new(Timeline::new(started));
    let stop = CancellationToken::new();

    let on_done = {
        let live = Arc::clone(&live);
        Arc::new(move |o: &Outcome| {
            live.done.fetch_add(1, Ordering::Relaxed);
            if !o.ok() {
                live.failed.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let load = tokio::spawn(driver::drive(
        fleet.url() + "/chaos",
        spec.clients,
        spec.rps,
        stop.clone(),
        started,
        on_done,
    ));
    let sampled = Arc::new(Mutex::new((Vec::new(), Vec::new(), Vec::new())));
    let sampler = tokio::spawn(sample(
        Arc::clone(&fleet),
        Arc::clone(&timeline),
        Arc::clone(&sampled),
        stop.clone(),
        started,
    ));
    let ctx = Ctx::new(
        Arc::clone(&fleet),
        Arc::clone(&timeline),
        spec.duration,
        spec.seed,
    );
    let script = (spec.scenario.script)(&ctx);
    let (script_result, ()) = tokio::join!(script, tokio::time::sleep(spec.duration));
    stop.cancel();
    let outcomes = load.await?;
    let _ = sampler.await;
    script_result?;

    let (leases, raft_leaders, idp_samples) = std::mem::take(&mut *sampled.lock().unwrap());
    let mut report = Report {
        scenario: spec.scenario.name,
        store: spec.store,
        hosting: spec.hosting,
        gateways: spec.gateways,
        duration_ms: spec.duration.as_millis() as u64,
        rps: spec.rps,
        seed: spec.seed,
        token_lifetime_ms: spec.token_lifetime.as_millis() as u64,
        requests: outcomes.len() as u64,
        failed: outcomes.iter().filter(|o| !o.ok()).count() as u64,
        retried: outcomes.iter().filter(|o| o.retried).count() as u64,
        latency_us: latencies(&outcomes),
        tokens: fleet.upstream.verdicts(),
        idp_issued: (0..spec.clients)
            .map(|i| {
                let id = identity(i).0;
                let n = fleet.idp.issued(&id);
                (id, n)
            })
            .collect(),
        leader_changes: leader_changes(&leases),
        store_cuts_ms: ctx
            .store_cuts()
            .iter()
            .map(|d| d.as_millis() as u64)
            .collect(),
        evictions: ctx.evictions(),
        invariants: Vec::new(),
        events: timeline.events(),
        idp_samples,
        outcomes,
        leases,
    };
    report.invariants = check(&report, spec, &fleet, raft_leaders).await;
    report.invariants.extend(ctx.checks());
    Ok(report)
}

type Samples = (Vec<LeaseSample>, Vec<(u64, usize)>, Vec<(u64, u64)>);

/// Samples the lease holder and fence, the Raft leader and the IdP's count until `stop`,
/// recording hand-overs on the timeline.
async fn sample(
    fleet: Arc<Fleet>,
    timeline: Arc<Timeline>,
    out: Arc<Mutex<Samples>>,
    stop: CancellationToken,
    started: Instant,
) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    let (mut holder, mut raft_leader) = (None::<String>, None::<usize>);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let at_ms = started.elapsed().as_millis() as u64;
        let total = fleet.idp.total_issued();
        out.lock().unwrap().2.push((at_ms, total));
        if let Some((h, fence)) = fleet.lease().await {
            if holder.as_ref().is_some_and(|prev| *prev != h) {
                timeline.record(
                    "leader",
                    format!("refresh lease to a new holder, fence {fence}"),
                );
            }
            holder = Some(h.clone());
            out.lock().unwrap().0.push(LeaseSample {
                at_ms,
                holder: h,
                fence,
            });
        }
        if fleet.spec.store == StoreKind::Raft
            && let Some(l) = fleet.raft_leader().await
        {
            if raft_leader.is_some_and(|prev| prev != l) {
                timeline.record("raft", format!("Raft leader is now cache-node-{}", l + 1));
            }
            raft_leader = Some(l);
            out.lock().unwrap().1.push((at_ms, l));
        }
    }
}

fn leader_changes(leases: &[LeaseSample]) -> u64 {
    leases
        .windows(2)
        .filter(|w| w[0].holder != w[1].holder)
        .count() as u64
}

fn latencies(outcomes: &[Outcome]) -> [u64; 3] {
    let mut l: Vec<u64> = outcomes
        .iter()
        .filter(|o| o.ok())
        .map(|o| o.latency_us)
        .collect();
    if l.is_empty() {
        return [0; 3];
    }
    l.sort_unstable();
    let at = |p: f64| l[((l.len() - 1) as f64 * p).round() as usize];
    [at(0.5), at(0.99), *l.last().expect("not empty")]
}

/// Checks every invariant.
async fn check(
    report: &Report,
    spec: &RunSpec,
    fleet: &Fleet,
    raft_leaders: Vec<(u64, usize)>,
) -> Vec<Invariant> {
    let mut out = Vec::new();
    let first_failure = report.outcomes.iter().find(|o| !o.ok());
    out.push(Invariant {
        name: "no failed request",
        held: report.failed == 0,
        detail: match first_failure {
            None => format!(
                "{} requests, all 200 ({} resent after a node died under them)",
                report.requests, report.retried
            ),
            Some(o) => format!(
                "{} of {} failed; first at {} ms: status {}",
                report.failed, report.requests, o.at_ms, o.status
            ),
        },
    });
    let t = report.tokens;
    out.push(Invariant {
        name: "no expired token at the upstream",
        held: t.expired == 0,
        detail: format!("{} of {} tokens past exp", t.expired, t.checked),
    });
    out.push(Invariant {
        name: "no cross-client token at the upstream",
        held: t.cross_client == 0,
        detail: format!(
            "{} of {} tokens issued to another client",
            t.cross_client, t.checked
        ),
    });
    out.push(Invariant {
        name: "every token genuine",
        held: t.bad_signature + t.missing == 0,
        detail: format!(
            "{} bad signatures, {} requests without a token",
            t.bad_signature, t.missing
        ),
    });

    // A credential's token is requested once, then renewed at most once per refresh period;
    // every hand-over of the refresh lease may cost one more, a gateway cut off from the
    // store renews on its own, once more per refresh period it spends cut off, and an entry
    // evicted fleet-wide is fetched again.
    let servable = spec.token_lifetime.saturating_sub(MIN_REMAINING);
    let period = servable.mul_f64(EARLIEST_REFRESH);
    let elapsed = Duration::from_millis(report.duration_ms) + Duration::from_secs(1);
    let renewals = (elapsed.as_secs_f64() / period.as_secs_f64()).floor() as u64;
    let cut_off: u64 = (report.store_cuts_ms.iter())
        .map(|ms| 1 + (Duration::from_millis(*ms).as_secs_f64() / period.as_secs_f64()) as u64)
        .sum();
    // So does each change of the store's own leader: while the cache service has none, a
    // gateway's lookup fails and it fetches on its own (the store outage's promise).
    let store_leaders = raft_leaders.windows(2).filter(|w| w[0].1 != w[1].1).count() as u64;
    let bound = 1 + renewals + report.leader_changes + cut_off + store_leaders + report.evictions;
    let worst = report.idp_issued.iter().max_by_key(|(_, n)| **n);
    out.push(Invariant {
        name: "IdP requests per credential within 1 + renewals + leader changes",
        held: worst.is_none_or(|(_, n)| *n <= bound),
        detail: match worst {
            Some((c, n)) => format!(
                "most: {c} with {n}; bound 1 + {renewals} renewals + {} leader changes + \
                 {store_leaders} store leader changes + {cut_off} while cut off from the store \
                 + {} evicted = {bound}",
                report.leader_changes, report.evictions
            ),
            None => "no clients".into(),
        },
    });

    let backwards = report.leases.windows(2).find(|w| w[1].fence < w[0].fence);
    out.push(Invariant {
        name: "lease fence never goes backwards",
        held: backwards.is_none(),
        detail: match backwards {
            None => format!(
                "{} samples, fence {} → {}",
                report.leases.len(),
                report.leases.first().map_or(0, |l| l.fence),
                report.leases.last().map_or(0, |l| l.fence)
            ),
            Some(w) => format!(
                "fence {} then {} at {} ms",
                w[0].fence, w[1].fence, w[1].at_ms
            ),
        },
    });

    if spec.store == StoreKind::Raft {
        // The run is over: stop the writers, then compare the replicas at rest.
        for g in &fleet.gateways {
            g.lock().unwrap_or_else(|p| p.into_inner()).kill();
        }
        out.push(converged(fleet, raft_leaders.len()).await);
    }
    out
}

/// All cache nodes end with the same applied index and the same entries.
async fn converged(fleet: &Fleet, samples: usize) -> Invariant {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let statuses = fleet.cache_statuses().await;
        let views: Vec<(Option<u64>, u64)> = statuses
            .iter()
            .map(|(_, s)| (s.applied_index, s.entries))
            .collect();
        let same = views.len() == fleet.cache_nodes.len() && views.windows(2).all(|w| w[0] == w[1]);
        if same || Instant::now() >= deadline {
            return Invariant {
                name: "cache nodes converge",
                held: same,
                detail: format!(
                    "(applied index, entries) per node: {views:?}; {samples} leader samples"
                ),
            };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
