//! Waiting for what can be observed, instead of sleeping and hoping: one poll loop, in the three
//! forms its callers need.

use std::time::{Duration, Instant};

/// How often a condition is looked at.
const POLL: Duration = Duration::from_millis(25);

/// Polls `cond` until it holds (`true`) or `within` passes (`false`). For code that reports a
/// timeout itself (the chaos harness).
pub async fn poll_until(within: Duration, mut cond: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `cond` until it holds; fails the test, naming `what`, once `within` passes.
pub async fn eventually(what: &str, within: Duration, cond: impl AsyncFnMut() -> bool) {
    assert!(
        poll_until(within, cond).await,
        "timed out after {within:?} waiting until {what}"
    );
}

/// [`eventually`] for code outside a runtime (process handles, blocking tests).
pub fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting until {what}"
        );
        std::thread::sleep(POLL);
    }
}
