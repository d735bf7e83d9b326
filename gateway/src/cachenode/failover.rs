//! The failover watchdog: a follower stands for election once its leader has been silent for
//! as long as openraft's own timer would wait, without the penalty openraft 0.9 adds.
//!
//! openraft delays a node's candidacy by twice the election timeout's upper bound once that node
//! has lost a vote to a longer log, and keeps the penalty until the node next stands, which can
//! be many terms later, when its log is the longest in the cluster. After a few leader changes
//! most nodes carry it: eleven kills of a leader container took a median 3.2 s to replace the
//! leader (1.6 s for the first kill, before any node carried it). The watchdog measures the
//! leader's silence itself, from the `AppendEntries` it accepts, and asks openraft to stand when
//! that silence passes the leader lease plus this node's own timeout (drawn once, like
//! openraft's, between the bounds), once per silent leader it had committed to. Votes are still
//! granted by openraft's rules: a peer that heard the leader within its lease refuses, and a
//! peer with a longer log refuses a candidate with a shorter one; that candidate is then left
//! to openraft's timer, penalty included, while the longer log's own watchdog stands.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::ServerState;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::RaftTiming;
use super::context::NodeContext;

/// When this node last accepted its leader's `AppendEntries`, as milliseconds after `origin`.
#[derive(Debug)]
pub struct LeaderHeard {
    origin: Instant,
    at_ms: AtomicU64,
}

impl Default for LeaderHeard {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            at_ms: AtomicU64::new(0),
        }
    }
}

impl LeaderHeard {
    /// Records that the leader was heard now.
    pub fn now(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.at_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// How long the leader has been silent.
    pub fn silence(&self) -> Duration {
        let heard = Duration::from_millis(self.at_ms.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(heard)
    }
}

/// This node's own timeout: between the election timeout's bounds, drawn once.
pub fn own_timeout(timing: &RaftTiming) -> Duration {
    use rand::Rng;
    let (min, max) = (timing.election_timeout, timing.election_timeout_max());
    rand::rng().random_range(min..=max)
}

/// Whether a follower that has not heard its leader for `silence` stands for election: past
/// the lease (the upper bound) plus its own timeout.
pub fn should_stand(timing: &RaftTiming, own: Duration, silence: Duration) -> bool {
    silence > timing.election_timeout_max() + own
}

/// Watches the leader's silence every heartbeat until `shutdown`, and has Raft stand for
/// election when [`should_stand`] says so. Only a voter that follows a leader it committed to
/// stands this way, once per silent leader: a node that is itself a candidate, or has granted a
/// vote not yet followed by the new leader's first message, is left to openraft's own timer
/// (with its penalty), so that a node with a short log cannot keep deposing the leader that a
/// longer log won. Any change of vote restarts the silence.
pub async fn watch(ctx: Arc<NodeContext>, timing: RaftTiming, shutdown: CancellationToken) {
    let own = own_timeout(&timing);
    let mut tick = tokio::time::interval(timing.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_vote = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (following, vote) = {
            let m = ctx.raft.metrics();
            let m = m.borrow();
            let voter = m
                .membership_config
                .membership()
                .voter_ids()
                .any(|v| v == ctx.id);
            (
                voter && m.state == ServerState::Follower && m.vote.is_committed(),
                m.vote,
            )
        };
        if last_vote != Some(vote) {
            last_vote = Some(vote);
            ctx.leader_heard.now();
            continue;
        }
        if !following || !should_stand(&timing, own, ctx.leader_heard.silence()) {
            continue;
        }
        tracing::info!(
            silence_ms = ctx.leader_heard.silence().as_millis() as u64,
            "the leader is silent: standing for election"
        );
        ctx.leader_heard.now();
        if ctx.raft.trigger().elect().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> RaftTiming {
        RaftTiming {
            heartbeat: Duration::from_millis(50),
            election_timeout: Duration::from_millis(150),
        }
    }

    #[test]
    fn a_follower_stands_only_past_the_lease_and_its_own_timeout() {
        let own = Duration::from_millis(200);
        assert!(!should_stand(&timing(), own, Duration::from_millis(499)));
        assert!(!should_stand(&timing(), own, Duration::from_millis(500)));
        assert!(should_stand(&timing(), own, Duration::from_millis(501)));
    }

    #[test]
    fn timers_keep_their_safety_margins() {
        // An old leader stops serving two heartbeats before a new one can be elected.
        assert_eq!(timing().quorum_silence(), Duration::from_millis(350));
        assert!(timing().validate().is_ok());
        let tight = RaftTiming {
            heartbeat: Duration::from_millis(100),
            election_timeout: Duration::from_millis(250),
        };
        assert!(
            tight
                .validate()
                .unwrap_err()
                .contains("three --heartbeat-interval")
        );
        let none = RaftTiming {
            heartbeat: Duration::ZERO,
            election_timeout: Duration::from_millis(150),
        };
        assert!(none.validate().is_err());
    }

    #[test]
    fn the_own_timeout_lies_between_the_bounds() {
        for _ in 0..1_000 {
            let own = own_timeout(&timing());
            assert!((Duration::from_millis(150)..=Duration::from_millis(300)).contains(&own));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn silence_is_measured_from_the_last_time_the_leader_was_heard() {
        let heard = LeaderHeard::default();
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(heard.silence(), Duration::from_millis(300));
        heard.now();
        assert_eq!(heard.silence(), Duration::ZERO);
        tokio::time::advance(Duration::from_millis(120)).await;
        assert_eq!(heard.silence(), Duration::from_millis(120));
    }
}
