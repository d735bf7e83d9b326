//! A cache node's Prometheus metrics (`--metrics-listen`): its Raft state, read from openraft's
//! metrics when scraped, and the size of the cache.

use std::sync::Arc;

use openraft::{Raft, ServerState};
use prometheus::{Encoder, IntGauge, Registry, TextEncoder};

use super::TypeConfig;
use super::state_machine::Shared;

/// The gauges, refreshed on every scrape.
pub struct RaftMetrics {
    registry: Registry,
    term: IntGauge,
    leader: IntGauge,
    is_leader: IntGauge,
    last_log: IntGauge,
    applied: IntGauge,
    snapshot: IntGauge,
    entries: IntGauge,
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("metric names are unique");
    g
}

impl RaftMetrics {
    /// The node's gauges.
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("tokengate_cache".into()), None).expect("a valid prefix");
        registry
            .register(Box::new(super::auth::refusals().clone()))
            .expect("metric names are unique");
        Self {
            term: gauge(&registry, "raft_term", "Current Raft term"),
            leader: gauge(
                &registry,
                "raft_leader_id",
                "Id of the leader this node follows (0: none known)",
            ),
            is_leader: gauge(
                &registry,
                "raft_is_leader",
                "1 while this node is the leader",
            ),
            last_log: gauge(
                &registry,
                "raft_last_log_index",
                "Last log index this node holds",
            ),
            applied: gauge(
                &registry,
                "raft_applied_index",
                "Last log index applied to the cache",
            ),
            snapshot: gauge(
                &registry,
                "raft_snapshot_index",
                "Last log index covered by a snapshot",
            ),
            entries: gauge(
                &registry,
                "entries",
                "Cached entries held (expired ones until swept)",
            ),
            registry,
        }
    }

    /// Every metric's full name, including refusal counts not observed yet.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        let refusals = prometheus::core::Collector::desc(super::auth::refusals());
        names.extend(
            refusals
                .iter()
                .map(|d| format!("tokengate_cache_{}", d.fq_name)),
        );
        names.sort();
        names.dedup();
        names
    }

    /// The text exposition of the node's state now.
    pub fn render(&self, raft: &Raft<TypeConfig>, shared: &Arc<Shared>) -> String {
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        {
            let m = raft.metrics().borrow().clone();
            self.term.set(as_i64(m.current_term));
            self.leader.set(as_i64(m.current_leader.unwrap_or(0)));
            self.is_leader
                .set(i64::from(m.state == ServerState::Leader));
            self.last_log.set(as_i64(m.last_log_index.unwrap_or(0)));
            self.applied
                .set(as_i64(m.last_applied.map_or(0, |l| l.index)));
            self.snapshot.set(as_i64(m.snapshot.map_or(0, |l| l.index)));
        }
        self.entries
            .set(as_i64(shared.read(|a| a.cache.len() as u64)));
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to memory cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for RaftMetrics {
    fn default() -> Self {
        Self::new()
    }
}
