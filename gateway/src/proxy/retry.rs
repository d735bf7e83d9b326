//! The `retry` middleware (Traefik's options, plus a budget): a request that failed is sent
//! again, to the next server, after a backoff.
//!
//! Only requests that can be sent again safely are: idempotent methods (RFC 9110 §9.2.2) whose
//! body is empty or was held whole (up to 64 KiB); a request whose body was streamed to a server
//! is never sent twice. A failure is a connection or protocol error before an answer (unless
//! `disableRetryOnNetworkError`) or an answer whose status is listed in `status`. A timeout is
//! not retried: the server may still be working on the request.
//!
//! The budget keeps retries from multiplying load on a struggling upstream: over each 10-second
//! window a route may retry `budgetPercent` of its requests, and at least 3.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

/// The window the budget is counted over.
const BUDGET_WINDOW: Duration = Duration::from_secs(10);
/// Retries always allowed per window, so that a quiet route can still retry.
const BUDGET_MIN_RETRIES: u64 = 3;

/// `retry`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Sends after the first (`attempts`).
    pub attempts: u32,
    /// First backoff; each next one doubles, up to twice this (`initialInterval`).
    pub initial_interval: Duration,
    /// Answers to retry, as inclusive ranges (`status: ["502", "503-504"]`).
    pub status: Vec<(u16, u16)>,
    /// Retry on errors before an answer (`disableRetryOnNetworkError` turns it off).
    pub on_network_error: bool,
    /// Share of a route's requests that may be retried (`budgetPercent`).
    pub budget_percent: u32,
}

impl RetryPolicy {
    /// Whether an answer with this status is retried.
    pub fn retries_status(&self, status: StatusCode) -> bool {
        let s = status.as_u16();
        self.status.iter().any(|(lo, hi)| (*lo..=*hi).contains(&s))
    }

    /// The wait before retry number `n` (1-based).
    pub fn backoff(&self, n: u32) -> Duration {
        let doubled = self
            .initial_interval
            .saturating_mul(1 << n.saturating_sub(1).min(16));
        doubled.min(self.initial_interval * 2)
    }
}

/// A route's retry budget.
#[derive(Debug)]
pub struct RetryBudget {
    percent: u64,
    epoch: Instant,
    /// Start of the current window, milliseconds after `epoch`.
    window_start: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl RetryBudget {
    /// A budget of `percent` of requests.
    pub fn new(percent: u32) -> Self {
        Self {
            percent: u64::from(percent),
            epoch: Instant::now(),
            window_start: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        }
    }

    fn roll(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let start = self.window_start.load(Ordering::Relaxed);
        if now.saturating_sub(start) >= BUDGET_WINDOW.as_millis() as u64
            && self
                .window_start
                .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.requests.store(0, Ordering::Relaxed);
            self.retries.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a request.
    pub fn request(&self) {
        self.roll();
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget; whether there was one.
    pub fn take(&self) -> bool {
        self.roll();
        let allowed =
            (self.requests.load(Ordering::Relaxed) * self.percent / 100).max(BUDGET_MIN_RETRIES);
        self.retries
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                (r < allowed).then_some(r + 1)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_idempotent_methods_and_listed_statuses_are_retried() {
        let p = RetryPolicy {
            attempts: 2,
            initial_interval: Duration::from_millis(100),
            status: vec![(502, 504)],
            on_network_error: true,
            budget_percent: 20,
        };
        assert!(crate::http::idempotent(&http::Method::GET));
        assert!(crate::http::idempotent(&http::Method::PUT));
        assert!(!crate::http::idempotent(&http::Method::POST));
        assert!(!crate::http::idempotent(&http::Method::PATCH));
        assert!(p.retries_status(StatusCode::SERVICE_UNAVAILABLE));
        assert!(!p.retries_status(StatusCode::INTERNAL_SERVER_ERROR));
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(2), Duration::from_millis(200));
        assert_eq!(
            p.backoff(9),
            Duration::from_millis(200),
            "at most twice the first"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_allows_a_share_of_requests_and_refills_each_window() {
        let budget = RetryBudget::new(10);
        for _ in 0..100 {
            budget.request();
        }
        let taken = (0..50).filter(|_| budget.take()).count();
        assert_eq!(taken, 10, "10% of 100 requests");
        tokio::time::advance(BUDGET_WINDOW).await;
        let taken = (0..50).filter(|_| budget.take()).count();
        assert_eq!(
            taken, 3,
            "a new window with no requests yet still allows the minimum"
        );
    }
}
