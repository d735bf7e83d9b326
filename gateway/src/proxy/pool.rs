//! A route's upstream servers: which one takes the next request, and which are fit to.
//!
//! - **Choice** (`strategy`, Traefik's names): `wrr`, weighted round robin over a smooth
//!   schedule (weights 3 and 1 give `a a b a`, not `a a a b`), or `p2c`, the power of two random
//!   choices: of two servers drawn at random, the one with fewer requests in flight per unit of
//!   weight (least requests, as Envoy and Traefik do it).
//! - **Active health** (`healthCheck`): each server's health endpoint is asked every `interval`
//!   (`unhealthyInterval` while it is down) by a background task; a server that fails it takes
//!   no requests until it passes again.
//! - **Passive health** (`passiveHealthCheck`): a server that fails `maxFailedAttempts` requests
//!   (connection failures, timeouts, 5xx answers) within `failureWindow` is ejected for
//!   `failureWindow`, then tried again. Only failures of the server count: a caller's slow or
//!   aborted body, or its going away, never does (so no caller can eject servers). The last
//!   fit server is never ejected, and when every server that passes its health check is
//!   ejected all of them take requests again (Envoy's panic mode): passive health alone never
//!   leaves a route without servers.
//!
//! A route none of whose servers passes its health check answers 503 at once rather than
//! waiting on a dead one.
//! Time is `tokio::time`'s, so tests move it by hand.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, StatusCode};
use prometheus::{IntCounter, IntGauge};
use tokio::time::Instant;
use url::Url;

/// How the next server is chosen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Strategy {
    /// Weighted round robin.
    #[default]
    Wrr,
    /// Power of two choices by requests in flight.
    P2c,
}

/// `healthCheck`.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    /// Path (and query) asked on each server.
    pub path: String,
    /// Method of the check.
    pub method: Method,
    /// The status that counts as healthy; `None`: any 2xx or 3xx.
    pub status: Option<StatusCode>,
    /// Between checks of a healthy server.
    pub interval: Duration,
    /// Between checks of an unhealthy server.
    pub unhealthy_interval: Duration,
    /// How long a check may take.
    pub timeout: Duration,
    /// `Host` of the check; `None`: the server's.
    pub hostname: Option<HeaderValue>,
    /// Extra header fields of the check.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// `passiveHealthCheck`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassiveHealthCheck {
    /// The window failures are counted in, and how long an ejection lasts.
    pub failure_window: Duration,
    /// Failures within the window that eject a server.
    pub max_failed_attempts: u32,
}

/// A route's upstream, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// Servers and their weights (at least one; weights at least 1).
    pub servers: Vec<(Url, u32)>,
    /// How the next server is chosen.
    pub strategy: Strategy,
    /// Active checks, if any.
    pub health_check: Option<HealthCheck>,
    /// Passive ejection, if any.
    pub passive: Option<PassiveHealthCheck>,
}

/// One server of a pool.
struct Server {
    url: Url,
    /// `url` split for request targets; `None` if it makes none.
    base: Option<super::forward::Base>,
    weight: u32,
    in_flight: AtomicUsize,
    /// Failed its last active check.
    down: AtomicBool,
    /// Milliseconds after the pool's epoch until which it is ejected (0: never was).
    ejected_until: AtomicU64,
    /// Start of the current failure window, in milliseconds after the epoch.
    window_start: AtomicU64,
    window_failures: AtomicU32,
    requests: IntCounter,
    failures: IntCounter,
    ejections: IntCounter,
    healthy: IntGauge,
}

/// A route's servers and their state.
pub struct Pool {
    route: Arc<str>,
    servers: Vec<Server>,
    /// Server indices in weighted round-robin order.
    schedule: Vec<usize>,
    next: AtomicUsize,
    strategy: Strategy,
    passive: Option<PassiveHealthCheck>,
    health_check: Option<HealthCheck>,
    epoch: Instant,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("route", &self.route)
            .field("servers", &self.servers.len())
            .finish_non_exhaustive()
    }
}

/// The smooth weighted round-robin order of servers with these weights (nginx's algorithm): each
/// step every server gains its weight, the richest is chosen and pays the total.
fn smooth_schedule(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|w| i64::from(*w)).sum();
    let mut current = vec![0i64; weights.len()];
    (0..total)
        .map(|_| {
            for (c, w) in current.iter_mut().zip(weights) {
                *c += i64::from(*w);
            }
            let (best, _) = current
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0)))
                .expect("at least one server");
            current[best] -= total;
            best
        })
        .collect()
}

impl Pool {
    /// The pool of `route`'s servers, all fit.
    pub fn new(route: &str, config: &UpstreamConfig) -> Self {
        assert!(!config.servers.is_empty(), "route {route} has no upstream");
        let metrics = crate::telemetry::metrics::metrics();
        let servers = config
            .servers
            .iter()
            .map(|(url, weight)| {
                let label = url.origin().ascii_serialization();
                let (requests, failures, ejections, healthy) = metrics.upstream(route, &label);
                healthy.set(1);
                Server {
                    url: url.clone(),
                    base: super::forward::Base::of(url).ok(),
                    weight: (*weight).max(1),
                    in_flight: AtomicUsize::new(0),
                    down: AtomicBool::new(false),
                    ejected_until: AtomicU64::new(0),
                    window_start: AtomicU64::new(0),
                    window_failures: AtomicU32::new(0),
                    requests,
                    failures,
                    ejections,
                    healthy,
                }
            })
            .collect::<Vec<_>>();
        let weights: Vec<u32> = servers.iter().map(|s| s.weight).collect();
        Self {
            route: Arc::from(route),
            schedule: smooth_schedule(&weights),
            servers,
            next: AtomicUsize::new(0),
            strategy: config.strategy,
            passive: config.passive,
            health_check: config.health_check.clone(),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn fit(&self, i: usize, now: u64) -> bool {
        let s = &self.servers[i];
        !s.down.load(Ordering::Relaxed) && s.ejected_until.load(Ordering::Relaxed) <= now
    }

    /// The server for the next request, counted in flight until the pick is dropped: among
    /// the fit servers, or, when all that pass their health check are ejected, among those
    /// (panic mode); `None` when none passes its health check.
    pub fn pick(&self) -> Option<Picked<'_>> {
        let now = self.now_ms();
        let index = self
            .choose(|i| self.fit(i, now), true)
            .or_else(|| self.choose(|i| !self.servers[i].down.load(Ordering::Relaxed), true))?;
        Some(self.take(index))
    }

    /// The server for another attempt of a request that `failed` on: the next fit server other
    /// than it (it again if it is the only one), chosen without taking a turn of the rotation.
    /// A retry that took a turn would shift the rotation by one at every retry: with two servers
    /// and one failing, every request's first attempt would land on the failing one.
    fn pick_again(&self, failed: usize) -> Option<Picked<'_>> {
        let now = self.now_ms();
        let index = self
            .choose(|i| i != failed && self.fit(i, now), false)
            .or_else(|| self.choose(|i| self.fit(i, now), false))?;
        Some(self.take(index))
    }

    /// Counts a request to server `index` in flight until its pick is dropped.
    fn take(&self, index: usize) -> Picked<'_> {
        let server = &self.servers[index];
        server.in_flight.fetch_add(1, Ordering::Relaxed);
        server.requests.inc();
        Picked { pool: self, index }
    }

    /// The next server among those `ok` admits, by the strategy; `turn`: the rotation moves on.
    fn choose(&self, ok: impl Fn(usize) -> bool, turn: bool) -> Option<usize> {
        let index = match self.strategy {
            Strategy::Wrr => {
                let start = if turn {
                    self.next.fetch_add(1, Ordering::Relaxed)
                } else {
                    self.next.load(Ordering::Relaxed)
                };
                (0..self.schedule.len())
                    .map(|k| self.schedule[(start + k) % self.schedule.len()])
                    .find(|i| ok(*i))?
            }
            Strategy::P2c => {
                let fit: Vec<usize> = (0..self.servers.len()).filter(|i| ok(*i)).collect();
                match fit.len() {
                    0 => return None,
                    1 => fit[0],
                    n => {
                        let a = rand::random_range(0..n);
                        let b = (a + 1 + rand::random_range(0..n - 1)) % n;
                        let load = |i: usize| {
                            let s = &self.servers[i];
                            // Compared as in_flight / weight without dividing.
                            (
                                s.in_flight.load(Ordering::Relaxed) as u64,
                                u64::from(s.weight),
                            )
                        };
                        let ((la, wa), (lb, wb)) = (load(fit[a]), load(fit[b]));
                        if la * wb <= lb * wa { fit[a] } else { fit[b] }
                    }
                }
            }
        };
        Some(index)
    }

    /// Notes a failed request to server `index` (connection failure, timeout, 5xx).
    fn failed(&self, index: usize) {
        let s = &self.servers[index];
        s.failures.inc();
        let Some(passive) = self.passive else {
            return;
        };
        let now = self.now_ms();
        let window = u64::try_from(passive.failure_window.as_millis()).unwrap_or(u64::MAX);
        if now.saturating_sub(s.window_start.load(Ordering::Relaxed)) >= window {
            s.window_start.store(now, Ordering::Relaxed);
            s.window_failures.store(0, Ordering::Relaxed);
        }
        let failures = s.window_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let others_fit = (0..self.servers.len()).any(|j| j != index && self.fit(j, now));
        if failures >= passive.max_failed_attempts && !others_fit {
            tracing::debug!(route = %self.route, upstream = %s.url, "the last fit server is not ejected");
        } else if failures >= passive.max_failed_attempts {
            s.window_failures.store(0, Ordering::Relaxed);
            s.window_start.store(now, Ordering::Relaxed);
            s.ejected_until.store(now + window, Ordering::Relaxed);
            s.ejections.inc();
            tracing::warn!(
                route = %self.route,
                upstream = %s.url,
                failures,
                ejected_for = ?passive.failure_window,
                "upstream ejected"
            );
        }
    }

    /// Sets server `index`'s active health.
    fn set_down(&self, index: usize, down: bool) {
        let s = &self.servers[index];
        if s.down.swap(down, Ordering::Relaxed) != down {
            s.healthy.set(i64::from(!down));
            if down {
                tracing::warn!(route = %self.route, upstream = %s.url, "upstream failed its health check");
            } else {
                tracing::info!(route = %self.route, upstream = %s.url, "upstream passed its health check");
            }
        }
    }

    /// Every server's URL, in configuration order.
    pub fn urls(&self) -> impl Iterator<Item = &Url> {
        self.servers.iter().map(|s| &s.url)
    }

    /// Runs the active health checks until `stop`, one task per server, asking through `client`.
    pub fn spawn_health_checks(
        self: &Arc<Self>,
        client: super::transport::UpstreamClient,
        tasks: &mut tokio::task::JoinSet<()>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let Some(check) = self.health_check.clone() else {
            return;
        };
        for index in 0..self.servers.len() {
            let (pool, client, check, stop) = (
                Arc::clone(self),
                client.clone(),
                check.clone(),
                stop.clone(),
            );
            tasks.spawn(async move {
                loop {
                    let healthy = probe(&client, &pool.servers[index].url, &check).await;
                    pool.set_down(index, !healthy);
                    let wait = if healthy {
                        check.interval
                    } else {
                        check.unhealthy_interval
                    };
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            });
        }
    }
}

/// Asks `server`'s health endpoint once; whether it answered as healthy in time.
async fn probe(
    client: &super::transport::UpstreamClient,
    server: &Url,
    check: &HealthCheck,
) -> bool {
    let Ok(uri) = super::forward::Base::of(server)
        .and_then(|base| super::forward::target(&base, &check.path.parse().unwrap_or_default()))
    else {
        return false;
    };
    let mut req = http::Request::new(crate::http::full(bytes::Bytes::new()));
    *req.method_mut() = check.method.clone();
    *req.uri_mut() = uri;
    for (name, value) in &check.headers {
        req.headers_mut().insert(name.clone(), value.clone());
    }
    if let Some(host) = &check.hostname {
        req.headers_mut().insert(http::header::HOST, host.clone());
    }
    match tokio::time::timeout(check.timeout, client.request(req, None)).await {
        Ok(Ok(resp)) => match check.status {
            Some(want) => resp.status() == want,
            None => resp.status().is_success() || resp.status().is_redirection(),
        },
        _ => false,
    }
}

/// A chosen server, counted in flight while held.
pub struct Picked<'a> {
    pool: &'a Pool,
    index: usize,
}

impl<'a> Picked<'a> {
    /// The server's URL.
    pub fn url(&self) -> &Url {
        &self.pool.servers[self.index].url
    }

    /// The server's URL as request targets use it; `None` if it makes none.
    pub fn base(&self) -> Option<&super::forward::Base> {
        self.pool.servers[self.index].base.as_ref()
    }

    /// Notes that the request to it failed (connection failure, timeout, 5xx).
    pub fn failed(&self) {
        self.pool.failed(self.index);
    }

    /// The server for the request's next attempt (see [`Pool::pick_again`]); this one is no
    /// longer counted in flight.
    pub fn again(self) -> Option<Picked<'a>> {
        let (pool, index) = (self.pool, self.index);
        drop(self);
        pool.pick_again(index)
    }
}

impl Drop for Picked<'_> {
    fn drop(&mut self) {
        self.pool.servers[self.index]
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(weights: &[u32], strategy: Strategy) -> UpstreamConfig {
        UpstreamConfig {
            servers: weights
                .iter()
                .enumerate()
                .map(|(i, w)| (format!("http://s{i}").parse().unwrap(), *w))
                .collect(),
            strategy,
            health_check: None,
            passive: Some(PassiveHealthCheck {
                failure_window: Duration::from_secs(10),
                max_failed_attempts: 3,
            }),
        }
    }

    fn picks(pool: &Pool, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| pool.pick().unwrap().url().host_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn a_retry_takes_no_turn_of_the_rotation() {
        let mut no_passive = config(&[1, 1], Strategy::Wrr);
        no_passive.passive = None;
        let pool = Pool::new("retry", &no_passive);
        let host = |p: &Picked<'_>| p.url().host_str().unwrap().to_owned();
        // Every request is retried: its second attempt goes to the other server, and the first
        // attempts still take turns (a retry taking a turn would leave them all on s0).
        let firsts: Vec<String> = (0..4)
            .map(|_| {
                let first = pool.pick().unwrap();
                let name = host(&first);
                assert_ne!(host(&first.again().unwrap()), name);
                name
            })
            .collect();
        assert_eq!(firsts, ["s0", "s1", "s0", "s1"]);
    }

    #[test]
    fn weighted_round_robin_interleaves_by_weight() {
        assert_eq!(smooth_schedule(&[3, 1]), [0, 0, 1, 0]);
        assert_eq!(smooth_schedule(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        let pool = Pool::new("wrr", &config(&[2, 1], Strategy::Wrr));
        assert_eq!(picks(&pool, 6), ["s0", "s1", "s0", "s0", "s1", "s0"]);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_within_the_window_eject_a_server_until_it_ends() {
        let pool = Pool::new("passive", &config(&[1, 1], Strategy::Wrr));
        for _ in 0..2 {
            pool.pick().unwrap();
            pool.failed(1);
        }
        assert_eq!(picks(&pool, 2), ["s0", "s1"], "two failures eject nobody");
        pool.failed(1);
        assert_eq!(picks(&pool, 4), ["s0", "s0", "s0", "s0"], "the third does");
        for _ in 0..6 {
            pool.failed(0);
        }
        assert_eq!(
            picks(&pool, 2),
            ["s0", "s0"],
            "the last fit server is never ejected"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            picks(&pool, 2).len(),
            2,
            "both are tried again after the window"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failures_spread_over_longer_than_the_window_eject_nobody() {
        let pool = Pool::new("spread", &config(&[1], Strategy::Wrr));
        for _ in 0..6 {
            pool.failed(0);
            tokio::time::advance(Duration::from_secs(4)).await;
            pool.failed(0);
            tokio::time::advance(Duration::from_secs(7)).await;
        }
        assert!(pool.pick().is_some());
    }

    #[test]
    fn p2c_prefers_the_server_with_fewer_requests_in_flight() {
        let pool = Pool::new("p2c", &config(&[1, 1], Strategy::P2c));
        let busy: Vec<_> = (0..5).map(|_| pool.pick().unwrap()).collect();
        let loaded = busy
            .iter()
            .filter(|p| p.url().host_str() == Some("s0"))
            .count();
        // Each pick goes to the less loaded of the two: the loads never differ by more than 1.
        assert!((2..=3).contains(&loaded), "{loaded}");
        drop(busy);
        let held = pool.pick().unwrap();
        let other = pool.pick().unwrap();
        assert_ne!(held.url(), other.url());
    }

    #[tokio::test(start_paused = true)]
    async fn with_every_healthy_server_ejected_all_of_them_take_requests() {
        let pool = Pool::new("panic", &config(&[1, 1, 1], Strategy::Wrr));
        for _ in 0..3 {
            pool.failed(0);
        }
        pool.set_down(2, true);
        assert_eq!(picks(&pool, 2), ["s1", "s1"]);
        // s1 is the last fit server: kept. Then s2 passes its check again and s1 is ejected;
        // then s2 fails its check, and the two ejected servers take requests again.
        for _ in 0..3 {
            pool.failed(1);
        }
        assert_eq!(picks(&pool, 1), ["s1"]);
        pool.set_down(2, false);
        for _ in 0..3 {
            pool.failed(1);
        }
        assert_eq!(picks(&pool, 2), ["s2", "s2"]);
        pool.set_down(2, true);
        let mut both = picks(&pool, 6);
        both.sort();
        both.dedup();
        assert_eq!(both, ["s0", "s1"], "panic mode: all ejected serve");
    }

    #[test]
    fn actively_failed_servers_take_no_requests() {
        let pool = Pool::new("active", &config(&[1, 1], Strategy::P2c));
        pool.set_down(0, true);
        assert!(picks(&pool, 10).iter().all(|h| h == "s1"));
        pool.set_down(1, true);
        assert!(pool.pick().is_none());
        pool.set_down(0, false);
        assert_eq!(picks(&pool, 1), ["s0"]);
    }
}
