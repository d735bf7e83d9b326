//! Waiting for what can be observed, instead of sleeping and hoping.

use std::time::{Duration, Instant};

/// Polls `cond` every 25 ms until it holds; fails the test, naming `what`, once `within` passes.
pub async fn eventually(what: &str, within: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
