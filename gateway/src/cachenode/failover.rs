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
//!
//! Two more moves take the rest of a failover's tail, which came from votes lost to the wrong
//! node, not from timers. Node ids order votes of one term (openraft's default), so when a
//! follower with a shorter log but a higher id stood first, the longer log standing next in the
//! same term was refused, and waited a whole election timeout to stand again:
//! - a follower that refuses a candidate for its shorter log, while its own leader has been
//!   silent past the lease, stands at once (the leader is gone: a peer's timer said so, and
//!   this node's log can win);
//! - a candidate that no peer showed a longer log stands again in the next term after one to
//!   two heartbeats, at most [`MAX_QUICK_RETRIES`] times per silent leader. A candidate that was
//!   shown a longer log never does: it cannot win, and a term raised over and over would depose
//!   the leader that the longer log elects.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::{ServerState, Vote};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::RaftTiming;

/// How often the watchdog looks: a fraction of a heartbeat, so that it stands close to its
/// deadline (reading Raft's metrics is cheap).
const LOOK_EVERY: Duration = Duration::from_millis(10);

/// Quick re-standings of a candidate per silent leader, before openraft's timer takes over.
pub const MAX_QUICK_RETRIES: u32 = 3;

/// What the Raft transport tells the watchdog: when this node last accepted its leader's
/// `AppendEntries`, the last term in which a vote answer showed it a longer log, and that it
/// refused a shorter log's candidacy.
#[derive(Debug)]
pub struct Elections {
    origin: Instant,
    heard_ms: AtomicU64,
    outlogged_term: AtomicU64,
    stand_now: Notify,
}

impl Default for Elections {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            heard_ms: AtomicU64::new(0),
            outlogged_term: AtomicU64::new(0),
            stand_now: Notify::new(),
        }
    }
}

impl Elections {
    /// Records that the leader was heard now.
    pub fn leader_heard(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.heard_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// How long the leader has been silent.
    pub fn silence(&self) -> Duration {
        let heard = Duration::from_millis(self.heard_ms.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(heard)
    }

    /// Records a vote answer to this node's candidacy in `term`: whether the peer's log is
    /// longer than the one this node stood with.
    pub fn answered<T: PartialOrd>(&self, term: u64, ours: &T, theirs: &T) {
        if theirs > ours {
            self.outlogged_term.fetch_max(term, Ordering::Relaxed);
        }
    }

    /// Whether a peer showed this node a longer log during its candidacy in `term`.
    pub fn outlogged_in(&self, term: u64) -> bool {
        self.outlogged_term.load(Ordering::Relaxed) >= term
    }

    /// Records that this node refused a candidate whose log is shorter than its own.
    pub fn refused_shorter_log(&self) {
        self.stand_now.notify_one();
    }
}

/// This node's own timeout: between the election timeout's bounds, drawn once.
pub fn own_timeout(timing: &RaftTiming) -> Duration {
    use rand::Rng;
    let (min, max) = (timing.election_timeout, timing.election_timeout_max());
    rand::rng().random_range(min..=max)
}

/// How long a candidate that lost no vote to a longer log waits before standing again: one to
/// two heartbeats, drawn each time, so that two such candidates do not keep meeting.
fn retry_after(timing: &RaftTiming) -> Duration {
    use rand::Rng;
    rand::rng().random_range(timing.heartbeat..=timing.heartbeat * 2)
}

/// Whether a follower that has not heard its leader for `silence` stands for election: past
/// the lease (the upper bound) plus its own timeout.
pub fn should_stand(timing: &RaftTiming, own: Duration, silence: Duration) -> bool {
    silence > timing.election_timeout_max() + own
}

/// What the watchdog reads of Raft.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftView {
    /// This node's id.
    pub id: u64,
    /// Whether this node is a voter.
    pub voter: bool,
    /// Its role.
    pub state: ServerState,
    /// Its vote.
    pub vote: Vote<u64>,
}

/// The node the watchdog watches: its Raft as it stands, and a way to make it stand.
pub trait Watched: Send + Sync + 'static {
    /// Raft's state now.
    fn view(&self) -> RaftView;
    /// Has Raft stand for election; `Err` once Raft has stopped.
    fn elect(&self) -> impl Future<Output = Result<(), ()>> + Send;
}

/// Watches the leader's silence until `shutdown`, and has Raft stand for election:
/// - a voter that follows a leader it committed to, once per silent leader, when
///   [`should_stand`] says so, or at once when it has refused a shorter log's candidacy past
///   the lease;
/// - a candidate that no peer showed a longer log, again in the next term after
///   [`retry_after`], at most [`MAX_QUICK_RETRIES`] times until a leader is elected.
///
/// Anything else is left to openraft's own timer (with its penalty), so that a node with a
/// short log cannot keep deposing the leader that a longer log won. Any change of vote
/// restarts the silence.
pub async fn watch<W: Watched>(
    node: Arc<W>,
    elections: Arc<Elections>,
    timing: RaftTiming,
    shutdown: CancellationToken,
) {
    let own = own_timeout(&timing);
    let mut last_vote = None;
    let mut vote_since = Instant::now();
    let mut retry = retry_after(&timing);
    let mut retries = 0;
    loop {
        let refused_shorter = tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            () = elections.stand_now.notified() => true,
            () = tokio::time::sleep(LOOK_EVERY) => false,
        };
        let view = node.view();
        if last_vote != Some(view.vote) {
            last_vote = Some(view.vote);
            vote_since = Instant::now();
            elections.leader_heard();
            if view.vote.is_committed() {
                retries = 0;
            }
        }
        let silence = elections.silence();
        let stand = match view.state {
            _ if !view.voter => false,
            ServerState::Follower if view.vote.is_committed() => {
                should_stand(&timing, own, silence)
                    || (refused_shorter && silence > timing.election_timeout_max())
            }
            ServerState::Candidate => {
                let term = view.vote.leader_id().get_term();
                view.vote.leader_id().voted_for() == Some(view.id)
                    && !elections.outlogged_in(term)
                    && retries < MAX_QUICK_RETRIES
                    && vote_since.elapsed() >= retry
            }
            _ => false,
        };
        if !stand {
            continue;
        }
        if view.state == ServerState::Candidate {
            retries += 1;
            retry = retry_after(&timing);
        }
        tracing::info!(
            silence_ms = silence.as_millis() as u64,
            state = ?view.state,
            term = view.vote.leader_id().get_term(),
            "the leader is silent: standing for election"
        );
        elections.leader_heard();
        vote_since = Instant::now();
        if node.elect().await.is_err() {
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
        let elections = Elections::default();
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(elections.silence(), Duration::from_millis(300));
        elections.leader_heard();
        assert_eq!(elections.silence(), Duration::ZERO);
        tokio::time::advance(Duration::from_millis(120)).await;
        assert_eq!(elections.silence(), Duration::from_millis(120));
    }

    /// A Raft that the watchdog watches: `elect` makes it a candidate of the next term (or, with
    /// `wins_at_once`, the follower of a leader that node 3 became); every stand is timed.
    struct Fake {
        view: std::sync::Mutex<RaftView>,
        stood: std::sync::Mutex<Vec<Duration>>,
        started: Instant,
        wins_at_once: bool,
    }

    impl Fake {
        fn new(state: ServerState, vote: Vote<u64>, wins_at_once: bool) -> Arc<Self> {
            Arc::new(Self {
                view: std::sync::Mutex::new(RaftView {
                    id: 1,
                    voter: true,
                    state,
                    vote,
                }),
                stood: std::sync::Mutex::default(),
                started: Instant::now(),
                wins_at_once,
            })
        }

        fn following() -> Arc<Self> {
            Self::new(ServerState::Follower, Vote::new_committed(1, 2), true)
        }

        fn stood(&self) -> Vec<Duration> {
            self.stood.lock().unwrap().clone()
        }
    }

    impl Watched for Fake {
        fn view(&self) -> RaftView {
            *self.view.lock().unwrap()
        }

        async fn elect(&self) -> Result<(), ()> {
            self.stood.lock().unwrap().push(self.started.elapsed());
            let mut v = self.view.lock().unwrap();
            let term = v.vote.leader_id().get_term() + 1;
            (v.state, v.vote) = if self.wins_at_once {
                (ServerState::Follower, Vote::new_committed(term, 3))
            } else {
                (ServerState::Candidate, Vote::new(term, 1))
            };
            Ok(())
        }
    }

    /// Runs the watchdog on `node` for `d` of paused time; the node's leader was last heard
    /// at the start.
    async fn watch_for(node: &Arc<Fake>, elections: &Arc<Elections>, d: Duration) {
        elections.leader_heard();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(watch(
            Arc::clone(node),
            Arc::clone(elections),
            timing(),
            shutdown.clone(),
        ));
        tokio::time::sleep(d).await;
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_stands_once_past_the_lease_and_its_own_timeout_of_silence() {
        for _ in 0..20 {
            let node = Fake::following();
            watch_for(&node, &Arc::default(), Duration::from_secs(3)).await;
            let stood = node.stood();
            // Once: the leader it then follows was heard when its vote changed, and stays
            // silent, so it stands again 450 to 600 ms after that.
            assert!(stood.len() >= 2, "{stood:?}");
            let first = stood[0];
            assert!(
                first > Duration::from_millis(450)
                    && first <= Duration::from_millis(600) + 2 * LOOK_EVERY,
                "stood {first:?} after its leader was last heard"
            );
            for pair in stood.windows(2) {
                let gap = pair[1] - pair[0];
                assert!(gap > Duration::from_millis(450), "{stood:?}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_that_hears_its_leader_or_a_learner_never_stands() {
        let node = Fake::following();
        let elections = Arc::new(Elections::default());
        let heartbeats = {
            let elections = Arc::clone(&elections);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    elections.leader_heard();
                }
            })
        };
        watch_for(&node, &elections, Duration::from_secs(5)).await;
        heartbeats.abort();
        assert!(node.stood().is_empty());

        let learner = Fake::following();
        learner.view.lock().unwrap().voter = false;
        watch_for(&learner, &Arc::default(), Duration::from_secs(5)).await;
        assert!(learner.stood().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn refusing_a_shorter_log_past_the_lease_stands_at_once() {
        let node = Fake::following();
        let elections = Arc::new(Elections::default());
        let refuse_at = |at: u64| {
            let elections = Arc::clone(&elections);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(at)).await;
                elections.refused_shorter_log();
            })
        };
        // Within the lease the leader may be alive: nothing; past it, at once.
        refuse_at(205);
        refuse_at(335);
        watch_for(&node, &elections, Duration::from_millis(400)).await;
        assert_eq!(node.stood(), [Duration::from_millis(335)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_candidate_no_peer_outlogged_stands_again_quickly_a_few_times() {
        let node = Fake::new(ServerState::Candidate, Vote::new(2, 1), false);
        watch_for(&node, &Arc::default(), Duration::from_secs(3)).await;
        let stood = node.stood();
        assert_eq!(stood.len(), MAX_QUICK_RETRIES as usize, "{stood:?}");
        let mut since = Duration::ZERO;
        for at in stood {
            let gap = at - since;
            assert!(
                gap >= Duration::from_millis(50)
                    && gap <= Duration::from_millis(100) + 2 * LOOK_EVERY,
                "stood again {gap:?} after its last candidacy"
            );
            since = at;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_candidate_shown_a_longer_log_is_left_to_raft() {
        let node = Fake::new(ServerState::Candidate, Vote::new(2, 1), false);
        let elections = Arc::new(Elections::default());
        elections.answered(2, &Some(10), &Some(9));
        elections.answered(2, &Some(10), &Some(12));
        watch_for(&node, &elections, Duration::from_secs(3)).await;
        assert!(node.stood().is_empty());
    }
}
