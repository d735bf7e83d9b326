//! Per-node single flight: one piece of work per key at a time, shared by every caller that
//! asks for that key meanwhile (`ARCHITECTURE.md`, *The token lifecycle*, step 3).
//!
//! The work runs as its own task, so a caller that gives up (its request timed out, its client
//! went away) does not cancel it for the callers still waiting. The key is released when the task
//! ends, however it ends (a panic included), so the next caller starts new work instead of
//! joining dead work.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use tokio_util::task::TaskTracker;

use crate::token::TokenKey;

/// A shared handle on one running piece of work.
pub type Flight<T> = Shared<BoxFuture<'static, T>>;

/// The flights in progress, by key.
pub struct SingleFlight<T> {
    flights: Mutex<HashMap<TokenKey, Flight<T>>>,
}

impl<T: Clone + Send + Sync + 'static> SingleFlight<T> {
    /// No flights.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            flights: Mutex::new(HashMap::new()),
        })
    }

    /// Joins the flight for `key`, or starts `work()` as one (tracked by `tasks`). `failed`
    /// is what waiters get if the work panics.
    pub fn join<F>(
        self: &Arc<Self>,
        key: TokenKey,
        tasks: &TaskTracker,
        work: impl FnOnce() -> F,
        failed: fn() -> T,
    ) -> Flight<T>
    where
        F: Future<Output = T> + Send + 'static,
    {
        let mut flights = self.lock();
        if let Some(f) = flights.get(&key) {
            crate::telemetry::metrics::metrics().flight_waits.inc();
            return f.clone();
        }
        let landed = Landed {
            flights: Arc::clone(self),
            key,
        };
        let work = work();
        // The lock is held until the flight is in the map, so the task's removal (which takes
        // the lock) always comes after the insertion, even if the work finishes at once.
        let task = tasks.spawn(async move {
            let _landed = landed;
            work.await
        });
        let flight = async move { task.await.unwrap_or_else(|_| failed()) }
            .boxed()
            .shared();
        flights.insert(key, flight.clone());
        flight
    }

    /// Whether work for `key` is running (a caller asking now would join it).
    pub fn in_flight(&self, key: &TokenKey) -> bool {
        self.lock().contains_key(key)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TokenKey, Flight<T>>> {
        // A poisoned map only means a panic elsewhere while holding it; inserts and removes are
        // single calls, so the map itself is consistent.
        self.flights.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Ends a flight: dropped when its task finishes or unwinds.
struct Landed<T: Clone + Send + Sync + 'static> {
    flights: Arc<SingleFlight<T>>,
    key: TokenKey,
}

impl<T: Clone + Send + Sync + 'static> Drop for Landed<T> {
    fn drop(&mut self) {
        self.flights.lock().remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_run_and_a_later_caller_starts_another() {
        let sf = SingleFlight::<usize>::new();
        let tasks = TaskTracker::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let key = TokenKey::from_bytes([1; 32]);
        let start = || {
            let runs = Arc::clone(&runs);
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                runs.fetch_add(1, Ordering::SeqCst) + 1
            }
        };
        let (a, b) = tokio::join!(
            sf.join(key, &tasks, start, || 0),
            sf.join(key, &tasks, start, || 0)
        );
        assert_eq!((a, b), (1, 1));
        assert_eq!(sf.join(key, &tasks, start, || 0).await, 2);
    }

    #[tokio::test]
    async fn a_panicking_flight_releases_its_key() {
        let sf = SingleFlight::<u8>::new();
        let tasks = TaskTracker::new();
        let key = TokenKey::from_bytes([2; 32]);
        let panics = sf.join(key, &tasks, || async { panic!("boom") }, || 9);
        assert_eq!(panics.await, 9);
        assert_eq!(sf.join(key, &tasks, || async { 1 }, || 9).await, 1);
    }
}
