//! The experiments: which faults, when. Each runs against a live [`Fleet`] while the load
//! driver keeps sending, and records what it did on the [`Timeline`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::fleet::{Fleet, Hosting, StoreKind};
use crate::run::Invariant;

mod network;
mod upgrade;
use testkit::IdpMode;

/// Something that happened during a run, for the report and the chart.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Ms since the run started.
    pub at_ms: u64,
    /// `fault` (injected), `heal` (undone), `leader` (refresh lease changed hands), `raft` (the
    /// Raft leader changed).
    pub kind: &'static str,
    /// What, in words.
    pub what: String,
}

/// The run's event log.
pub struct Timeline {
    started: Instant,
    events: Mutex<Vec<Event>>,
}

impl Timeline {
    /// A log whose clock starts at `started`.
    pub fn new(started: Instant) -> Self {
        Self {
            started,
            events: Mutex::new(Vec::new()),
        }
    }

    /// Records an event now.
    pub fn record(&self, kind: &'static str, what: impl Into<String>) {
        let at_ms = self.started.elapsed().as_millis() as u64;
        self.events.lock().unwrap().push(Event {
            at_ms,
            kind,
            what: what.into(),
        });
    }

    /// Everything recorded, in order.
    pub fn events(&self) -> Vec<Event> {
        let mut e = self.events.lock().unwrap().clone();
        e.sort_by_key(|e| e.at_ms);
        e
    }

    /// How long the run has been going.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Sleeps until `at` after the start.
    pub async fn until(&self, at: Duration) {
        tokio::time::sleep_until((self.started + at).into()).await;
    }
}

/// What a scenario's faults get.
pub struct Ctx {
    /// The fleet.
    pub fleet: Arc<Fleet>,
    /// Where to record.
    pub timeline: Arc<Timeline>,
    /// The load's duration.
    pub duration: Duration,
    /// Choices (victims, orders) drawn from the run's seed.
    pub rng: Mutex<StdRng>,
    /// What the scenario itself checked, beside the run's invariants.
    checks: Mutex<Vec<Invariant>>,
    /// How long each gateway cut off from the store stayed cut off.
    store_cuts: Mutex<Vec<Duration>>,
    /// Entries the scenario evicted fleet-wide, as an operator does.
    evictions: std::sync::atomic::AtomicU64,
}

impl Ctx {
    /// A new context.
    pub fn new(fleet: Arc<Fleet>, timeline: Arc<Timeline>, duration: Duration, seed: u64) -> Self {
        Self {
            fleet,
            timeline,
            duration,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            checks: Mutex::new(Vec::new()),
            store_cuts: Mutex::new(Vec::new()),
            evictions: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Entries the scenario evicted fleet-wide: each costs one more token request for its
    /// credential.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records a fleet-wide eviction.
    fn record_eviction(&self) {
        self.evictions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long each gateway the scenario cut off from the store stayed cut off: such a
    /// gateway renews what it serves on its own meanwhile (the store outage's promise), which
    /// the IdP sees as extra requests.
    pub fn store_cuts(&self) -> Vec<Duration> {
        self.store_cuts.lock().unwrap().clone()
    }

    /// Records that a gateway stayed cut off from the store for `d`.
    fn record_store_cut(&self, d: Duration) {
        self.store_cuts.lock().unwrap().push(d);
    }

    /// What the scenario checked.
    pub fn checks(&self) -> Vec<Invariant> {
        self.checks.lock().unwrap().clone()
    }

    /// Records a check of the scenario's own.
    fn check(&self, name: &'static str, held: bool, detail: String) {
        self.checks
            .lock()
            .unwrap()
            .push(Invariant { name, held, detail });
    }

    fn at(&self, fraction: f64) -> Duration {
        self.duration.mul_f64(fraction)
    }

    fn pick(&self, n: usize) -> usize {
        self.rng.lock().unwrap().random_range(0..n)
    }

    /// SIGKILLs gateway `i` and records it.
    fn kill_gateway(&self, i: usize, why: &str) {
        self.fleet.gateway(i).kill();
        self.timeline
            .record("fault", format!("SIGKILL gateway-{}{why}", i + 1));
    }

    /// Restarts gateway `i`, waits until it is ready, records it.
    async fn restart_gateway(&self, i: usize) -> anyhow::Result<()> {
        self.fleet.gateway(i).restart()?;
        self.fleet.wait_ready(i).await?;
        self.timeline
            .record("heal", format!("gateway-{} restarted and ready", i + 1));
        Ok(())
    }

    /// The Raft leader, waiting up to 5 s for the cache nodes to agree on one.
    async fn raft_leader(&self) -> anyhow::Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(l) = self.fleet.raft_leader().await {
                return Ok(l);
            }
            anyhow::ensure!(Instant::now() < deadline, "no Raft leader");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls the cache nodes other than `old` until they agree on a leader that is not `old`:
    /// that leader and how long it took, or `None` after `within`.
    async fn new_raft_leader(&self, old: usize, within: Duration) -> Option<(usize, Duration)> {
        let started = Instant::now();
        while started.elapsed() < within {
            // The others only: a dead node would hold every poll for a connect timeout.
            let others: Vec<(usize, u64, Option<u64>)> = (self
                .fleet
                .cache_statuses_except(Some(old))
                .await
                .into_iter())
            .map(|(i, s)| (i, s.id, s.leader))
            .collect();
            if let [(_, _, Some(leader)), ..] = others.as_slice()
                && others.len() + 1 >= self.fleet.cache_nodes.len()
                && others.iter().all(|(_, _, l)| *l == Some(*leader))
                && let Some((i, _, _)) = others.iter().find(|(_, id, _)| id == leader)
            {
                return Some((*i, started.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// From a fifth of the run on (every token cached by then, so the next token request is a
    /// renewal), has the IdP hold its answer to the next token request, and waits for it.
    async fn hold_a_renewal(&self) -> anyhow::Result<testkit::idp::Hold> {
        self.timeline.until(self.at(0.2)).await;
        let mut hold = self.fleet.idp.hold_next_token();
        let window = self.duration.mul_f64(0.5);
        anyhow::ensure!(
            hold.arrived(window).await,
            "no renewal reached the IdP within {window:?}: the run is shorter than a refresh \
             period"
        );
        self.timeline
            .record("fault", "IdP holds its answer to a renewal");
        Ok(hold)
    }

    /// When the warm-up's tokens fall due (from 75 % of their servable lifetime on) and a
    /// fault that meets those renewals may last: 10 % of that lifetime, less than the margin
    /// left. An error when the run ends before the window does.
    fn renewal_window(&self) -> anyhow::Result<(Duration, Duration)> {
        let servable = (self.fleet.spec.token_lifetime).saturating_sub(Duration::from_secs(1));
        let (start, length) = (servable.mul_f64(0.75), servable.mul_f64(0.1));
        anyhow::ensure!(
            start + length < self.duration,
            "the run is too short to reach the renewals"
        );
        Ok((start, length))
    }

    /// The refresh leader, waiting up to 5 s for the fleet to agree on one.
    async fn refresh_leader(&self) -> anyhow::Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(l) = self.fleet.refresh_leader().await {
                return Ok(l);
            }
            anyhow::ensure!(Instant::now() < deadline, "no refresh leader");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

type Script = for<'a> fn(
    &'a Ctx,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send + 'a>,
>;

/// One experiment.
#[derive(Debug)]
pub struct Scenario {
    /// Its name on the command line.
    pub name: &'static str,
    /// What it does and what it shows.
    pub about: &'static str,
    /// The stores it applies to.
    pub stores: &'static [StoreKind],
    /// Where its fleet may run: some faults exist only between hosts of a network.
    pub hostings: &'static [Hosting],
    /// The faults.
    pub script: Script,
}

const BOTH: &[StoreKind] = &[StoreKind::Redis, StoreKind::Raft];
const RAFT: &[StoreKind] = &[StoreKind::Raft];
const ANYWHERE: &[Hosting] = &[Hosting::Processes, Hosting::Containers];
const CONTAINERS: &[Hosting] = &[Hosting::Containers];

/// Every scenario.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "baseline",
        about: "No faults: the invariants hold on a quiet fleet.",
        stores: BOTH,
        hostings: ANYWHERE,
        script: |_| Box::pin(async { Ok(()) }),
    },
    Scenario {
        name: "kill-gateway",
        about: "SIGKILL a gateway that is not the refresh leader, restart it two seconds later.",
        stores: BOTH,
        hostings: ANYWHERE,
        script: |c| Box::pin(kill_gateway(c)),
    },
    Scenario {
        name: "kill-leader-during-refresh",
        about: "Hold the IdP's answer to the refresh leader's next renewal, SIGKILL the leader \
                while it waits, then let the answer go to nobody. Another node takes the lease \
                and renews the token before it expires.",
        stores: BOTH,
        hostings: ANYWHERE,
        script: |c| Box::pin(kill_leader_during_refresh(c)),
    },
    Scenario {
        name: "pause-leader",
        about: "SIGSTOP the refresh leader past its lease, SIGCONT it: another node has taken \
                over, and the woken one's writes are fenced off.",
        stores: BOTH,
        hostings: ANYWHERE,
        script: |c| Box::pin(pause_leader(c)),
    },
    Scenario {
        name: "kill-store-leader",
        about: "Raft: SIGKILL the cache service's leader, restart it two seconds later. \
                Redis: SIGKILL the server, restart it (append-only file) two seconds later. \
                Gateways serve from their L1 meanwhile.",
        stores: BOTH,
        hostings: ANYWHERE,
        script: |c| Box::pin(kill_store_leader(c)),
    },
    Scenario {
        name: "partition-leader",
        about: "Redis: cut the refresh leader off from Redis for longer than its lease, then \
                heal: another node leads, the cut-off one serves from its L1. Raft: cut the \
                cache service's leader off from its peers for 3 s: the majority elects another \
                leader, gateways follow it, the old leader cannot commit (or grant a lease).",
        stores: BOTH,
        hostings: ANYWHERE,
        script: |c| Box::pin(network::partition_leader(c)),
    },
    Scenario {
        name: "idp-outage",
        about: "The IdP stops answering for a while shorter than a token's refresh margin: \
                renewals fail and are retried, no request notices.",
        stores: BOTH,
        hostings: ANYWHERE,
        script: |c| Box::pin(idp_fault(c, IdpMode::Unreachable, Duration::ZERO)),
    },
    Scenario {
        name: "idp-slow",
        about: "The IdP takes a second per token request for a third of the run.",
        stores: BOTH,
        hostings: ANYWHERE,
        script: |c| Box::pin(idp_fault(c, IdpMode::Healthy, Duration::from_secs(1))),
    },
    Scenario {
        name: "kill-store-leader-repeatedly",
        about: "Raft: SIGKILL the cache service's leader, wait for the others to elect one, \
                restart the killed node, and again a second after it is back, until the run ends \
                (a hundred kills take about five minutes). Reports the failover times.",
        stores: RAFT,
        hostings: ANYWHERE,
        script: |c| Box::pin(kill_store_leader_repeatedly(c)),
    },
    Scenario {
        name: "cut-gateway-from-store",
        about: "Cut a gateway that does not lead refreshes off from the store for longer than \
                a lease: it serves from its L1, a credential new to the fleet still gets its \
                own token, and healed it finds the store again.",
        stores: BOTH,
        hostings: CONTAINERS,
        script: |c| Box::pin(network::cut_gateway_from_store(c)),
    },
    Scenario {
        name: "cut-idp-from-leader",
        about: "The refresh leader alone cannot reach the IdP while renewals fall due, for less \
                than the refresh margin: its renewals fail and are retried, no request notices.",
        stores: BOTH,
        hostings: CONTAINERS,
        script: |c| Box::pin(network::cut_idp_from_leader(c)),
    },
    Scenario {
        name: "lossy-link",
        about: "One gateway's link loses 5 % of its packets and carries 2 Mbit/s for a third \
                of the run.",
        stores: BOTH,
        hostings: CONTAINERS,
        script: |c| Box::pin(network::lossy_link(c)),
    },
    Scenario {
        name: "isolate-leader-mid-refresh",
        about: "Hold the IdP's answer to the refresh leader's next renewal, cut the leader off \
                from the store, let the answer go: another gateway takes the lease and renews, \
                the old leader's late write is fenced off.",
        stores: BOTH,
        hostings: CONTAINERS,
        script: |c| Box::pin(network::isolate_leader_mid_refresh(c)),
    },
    Scenario {
        name: "rolling-upgrade",
        about: "Drain each gateway in turn and replace it by a container of a new image tag, \
                back in the balancer's rotation before the next goes; on Raft, then replace a \
                follower on an empty disk under a new id (cachectl members replace): nothing \
                written before is lost.",
        stores: BOTH,
        hostings: CONTAINERS,
        script: |c| Box::pin(upgrade::rolling_upgrade(c)),
    },
    Scenario {
        name: "rolling-restart",
        about: "Restart every gateway in turn (SIGTERM: drain, then exit), each one ready \
                before the next goes.",
        stores: BOTH,
        hostings: ANYWHERE,
        script: |c| Box::pin(rolling_restart(c)),
    },
];

/// The scenario called `name`.
pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

async fn kill_gateway(c: &Ctx) -> anyhow::Result<()> {
    c.timeline.until(c.at(0.3)).await;
    let leader = c.refresh_leader().await.ok();
    let n = c.fleet.gateways.len();
    let victim = match leader {
        Some(l) => (l + 1 + c.pick(n - 1)) % n,
        None => c.pick(n),
    };
    c.kill_gateway(victim, "");
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.restart_gateway(victim).await
}

async fn kill_leader_during_refresh(c: &Ctx) -> anyhow::Result<()> {
    // After the warm-up every token is cached: the next token request is a renewal.
    let hold = c.hold_a_renewal().await?;
    let leader = c.refresh_leader().await?;
    c.kill_gateway(leader, " (refresh leader, awaiting the IdP)");
    hold.release();
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.restart_gateway(leader).await
}

async fn pause_leader(c: &Ctx) -> anyhow::Result<()> {
    c.timeline.until(c.at(0.3)).await;
    let leader = c.refresh_leader().await?;
    c.fleet.gateway(leader).pause();
    c.timeline.record(
        "fault",
        format!("SIGSTOP gateway-{} (refresh leader)", leader + 1),
    );
    tokio::time::sleep(c.fleet.spec.lease_ttl + Duration::from_secs(1)).await;
    c.fleet.gateway(leader).resume();
    c.timeline
        .record("heal", format!("SIGCONT gateway-{}", leader + 1));
    Ok(())
}

async fn kill_store_leader(c: &Ctx) -> anyhow::Result<()> {
    c.timeline.until(c.at(0.3)).await;
    match c.fleet.spec.store {
        StoreKind::Raft => {
            let leader = c.raft_leader().await?;
            c.fleet.cache_node(leader).kill();
            c.timeline.record(
                "fault",
                format!("SIGKILL cache-node-{} (Raft leader)", leader + 1),
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
            c.fleet.cache_node(leader).restart()?;
            c.fleet.wait_cache_node(leader).await?;
            c.timeline
                .record("heal", format!("cache-node-{} restarted", leader + 1));
        }
        StoreKind::Memory => anyhow::bail!("the memory store has no store node to kill"),
        StoreKind::Redis => {
            let redis = c.fleet.redis.as_ref().expect("a Redis fleet has Redis");
            redis.lock().unwrap().kill();
            c.timeline.record("fault", "SIGKILL redis");
            tokio::time::sleep(Duration::from_secs(2)).await;
            redis.lock().unwrap().restart()?;
            c.fleet.wait_redis().await?;
            c.timeline.record("heal", "redis restarted");
        }
    }
    Ok(())
}

/// The pause between one failover's end (the killed node back in the cluster) and the next
/// kill.
const KILL_EVERY: Duration = Duration::from_secs(1);

async fn kill_store_leader_repeatedly(c: &Ctx) -> anyhow::Result<()> {
    c.timeline.until(c.at(0.15)).await;
    let end = c.at(0.9);
    let mut failovers = Vec::new();
    while c.timeline.elapsed() < end {
        let leader = c.raft_leader().await?;
        c.fleet.cache_node(leader).kill();
        c.timeline.record(
            "fault",
            format!("SIGKILL cache-node-{} (Raft leader)", leader + 1),
        );
        let elected = c.new_raft_leader(leader, Duration::from_secs(10)).await;
        c.fleet.cache_node(leader).restart()?;
        c.fleet.wait_cache_node(leader).await?;
        match elected {
            Some((l, after)) => {
                c.timeline.record(
                    "raft",
                    format!("cache-node-{} elected {after:?} after the kill", l + 1),
                );
                failovers.push(after);
            }
            None => {
                c.check(
                    "a new Raft leader after every kill",
                    false,
                    format!("none within 10 s of kill {}", failovers.len() + 1),
                );
                return Ok(());
            }
        }
        // The restarted node is back in the cluster before the next kill, so that a majority
        // always remains.
        let back = Instant::now();
        while c.fleet.cache_statuses().await.len() < c.fleet.cache_nodes.len()
            || c.fleet.raft_leader().await.is_none()
        {
            anyhow::ensure!(
                back.elapsed() < Duration::from_secs(10),
                "cache-node-{} did not rejoin",
                leader + 1
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A leader killed every few seconds, not back to back.
        tokio::time::sleep(KILL_EVERY).await;
    }
    failovers.sort();
    let median = failovers
        .get(failovers.len() / 2)
        .copied()
        .unwrap_or_default();
    let max = failovers.last().copied().unwrap_or_default();
    c.check(
        "a new Raft leader after every kill",
        !failovers.is_empty(),
        format!(
            "{} kills; failover median {median:?}, max {max:?}",
            failovers.len()
        ),
    );
    Ok(())
}

async fn idp_fault(c: &Ctx, mode: IdpMode, latency: Duration) -> anyhow::Result<()> {
    let (start, length) = match mode {
        IdpMode::Unreachable => c.renewal_window()?,
        _ => (c.at(0.3), c.duration.mul_f64(0.33)),
    };
    anyhow::ensure!(
        start + length < c.duration,
        "the run is too short to reach the renewals"
    );
    c.timeline.until(start).await;
    c.fleet.idp.set_mode(mode);
    c.fleet.idp.set_latency(latency);
    let what = match mode {
        IdpMode::Unreachable => format!("IdP unreachable for {length:?}"),
        _ => format!("IdP answers after {latency:?} for {length:?}"),
    };
    c.timeline.record("fault", what);
    tokio::time::sleep(length).await;
    c.fleet.idp.set_mode(IdpMode::Healthy);
    c.fleet.idp.set_latency(Duration::ZERO);
    c.timeline.record("heal", "IdP healthy");
    Ok(())
}

async fn rolling_restart(c: &Ctx) -> anyhow::Result<()> {
    c.timeline.until(c.at(0.2)).await;
    for i in 0..c.fleet.gateways.len() {
        c.timeline.record(
            "fault",
            format!("SIGTERM gateway-{} (rolling restart)", i + 1),
        );
        let gateway = &c.fleet.gateways[i];
        tokio::task::block_in_place(|| gateway.lock().unwrap().terminate(Duration::from_secs(15)));
        c.restart_gateway(i).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}
