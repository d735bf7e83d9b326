//! Prometheus metrics, served in the text exposition format on the admin listener's
//! `/metrics`.
//!
//! Labels are fixed, low-cardinality values: route names, HTTP status codes, cache layers,
//! outcomes. No token, secret, client id or key ever becomes a label. Counters on the request
//! path are resolved once, so a cache hit costs one atomic increment.

use std::cell::RefCell;
use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder, exponential_buckets,
};

/// A thread's handles on the request metrics, by route and status.
/// Keyed by route names and status codes, which the operator and the upstreams choose: a
/// fast hash serves them (one lookup of each per request).
type RequestHandles = foldhash::HashMap<Box<str>, RouteHandles>;
/// A route's request duration, and its request count by status.
type RouteHandles = (Histogram, foldhash::HashMap<u16, IntCounter>);

thread_local! {
    /// The request metrics' handles this thread found so far (of the one `Metrics` there is,
    /// [`metrics`]): each answered request counts through them, without the shared label index
    /// (its lock and hashing) that every proxy thread would otherwise go through.
    static REQUEST_HANDLES: RefCell<RequestHandles> = RefCell::new(RequestHandles::default());
}

/// Every metric of a gateway node.
pub struct Metrics {
    registry: Registry,
    /// Every metric's full name, registered or not yet observed.
    names: Vec<String>,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    /// Tokens served from L1 (the hot path).
    pub l1_hits: IntCounter,
    /// Tokens another node had put in the shared store.
    pub store_hits: IntCounter,
    /// Tokens fetched from the IdP.
    pub idp_fetches: IntCounter,
    idp_ok: IntCounter,
    idp_error: IntCounter,
    idp_duration: Histogram,
    refresh_ok: IntCounter,
    refresh_error: IntCounter,
    /// Callers that waited for another caller's fetch of the same key instead of fetching.
    pub flight_waits: IntCounter,
    /// 1 while this node holds the refresh lease.
    pub refresh_leader: IntGauge,
    /// The fence of the refresh lease this node holds (0 when it holds none).
    pub refresh_fence: IntGauge,
    idp_miss_refused: IntCounterVec,
    edge_refused: IntCounterVec,
    /// Open proxy connections.
    pub connections_open: IntGauge,
    /// Proxy connections closed for being idle or too slow to send a request.
    pub connections_idle_closed: IntCounter,
    /// TLS handshakes on the proxy listener that failed or did not finish in time.
    pub tls_handshake_failures: IntCounter,
    tls_reload_ok: IntCounter,
    tls_reload_error: IntCounter,
    /// When the first of the served certificates expires (seconds since the epoch).
    pub tls_certificate_expiry: IntGauge,
    /// Upgraded connections (WebSocket and others) being relayed.
    pub upgrades_open: IntGauge,
    /// Upgraded connections relayed, since start.
    pub upgrades_total: IntCounter,
    upstream_requests: IntCounterVec,
    upstream_failures: IntCounterVec,
    upstream_ejections: IntCounterVec,
    upstream_healthy: IntGaugeVec,
    upstream_retries: IntCounterVec,
    rate_limit: IntCounterVec,
    config_reload_ok: IntCounter,
    config_reload_error: IntCounter,
    /// 1 when the last configuration reload failed (the previous configuration is in use).
    pub config_reload_failed: IntGauge,
    /// IdP endpoints whose circuit is open (failing fast).
    pub idp_circuits_open: IntGauge,
    /// 1 while the shared store does not answer (the node serves from its L1).
    pub store_degraded: IntGauge,
}

/// 0.5 ms to ~16 s.
fn latency_buckets() -> Vec<f64> {
    exponential_buckets(0.0005, 2.0, 16).expect("valid buckets")
}

impl Metrics {
    fn new() -> Self {
        let registry =
            Registry::new_custom(Some("tokengate".into()), None).expect("a valid prefix");
        let names = std::cell::RefCell::new(Vec::new());
        let reg = |c: Box<dyn prometheus::core::Collector>| {
            let full = c
                .desc()
                .into_iter()
                .map(|d| format!("tokengate_{}", d.fq_name));
            names.borrow_mut().extend(full);
            registry.register(c).expect("metric names are unique");
        };
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "Proxied requests by route and status"),
            &["route", "status"],
        )
        .expect("valid metric");
        reg(Box::new(requests.clone()));
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "request_duration_seconds",
                "Time to answer a proxied request, by route",
            )
            .buckets(latency_buckets()),
            &["route"],
        )
        .expect("valid metric");
        reg(Box::new(request_duration.clone()));
        let tokens = IntCounterVec::new(
            Opts::new(
                "tokens_served_total",
                "Tokens obtained for requests, by the layer they came from (callers sharing one fetch count once; see single_flight_waits)",
            ),
            &["layer"],
        )
        .expect("valid metric");
        reg(Box::new(tokens.clone()));
        let idp = IntCounterVec::new(
            Opts::new(
                "idp_requests_total",
                "Calls to identity provider endpoints, retries included in one call",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        reg(Box::new(idp.clone()));
        let idp_duration = Histogram::with_opts(
            HistogramOpts::new(
                "idp_request_duration_seconds",
                "Time of identity provider calls",
            )
            .buckets(latency_buckets()),
        )
        .expect("valid metric");
        reg(Box::new(idp_duration.clone()));
        let refreshes = IntCounterVec::new(
            Opts::new(
                "refreshes_total",
                "Background token renewals by the refresh leader",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        reg(Box::new(refreshes.clone()));
        let flight_waits = IntCounter::new(
            "single_flight_waits_total",
            "Callers that waited for another caller's fetch of the same token",
        )
        .expect("valid metric");
        reg(Box::new(flight_waits.clone()));
        let refresh_leader = IntGauge::new(
            "refresh_leader",
            "1 while this node holds the fleet's refresh lease",
        )
        .expect("valid metric");
        reg(Box::new(refresh_leader.clone()));
        let refresh_fence = IntGauge::new(
            "refresh_lease_fence",
            "Fencing token of the refresh lease this node holds (0: none)",
        )
        .expect("valid metric");
        reg(Box::new(refresh_fence.clone()));
        let idp_miss_refused = IntCounterVec::new(
            Opts::new(
                "idp_miss_budget_exceeded_total",
                "Cache misses refused with 429 because a miss budget was spent, by bucket",
            ),
            &["bucket"],
        )
        .expect("valid metric");
        reg(Box::new(idp_miss_refused.clone()));
        let edge_refused = IntCounterVec::new(
            Opts::new(
                "edge_refused_total",
                "Requests refused before routing or authentication, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        reg(Box::new(edge_refused.clone()));
        let connections_open =
            IntGauge::new("connections_open", "Open proxy connections").expect("valid metric");
        reg(Box::new(connections_open.clone()));
        let connections_idle_closed = IntCounter::new(
            "connections_idle_closed_total",
            "Proxy connections closed for idleness (idleTimeout) or a request head too slow to arrive (readHeaderTimeout)",
        )
        .expect("valid metric");
        reg(Box::new(connections_idle_closed.clone()));
        let tls_handshake_failures = IntCounter::new(
            "tls_handshake_failures_total",
            "TLS handshakes on the proxy listener that failed or did not finish within readHeaderTimeout",
        )
        .expect("valid metric");
        reg(Box::new(tls_handshake_failures.clone()));
        let tls_reloads = IntCounterVec::new(
            Opts::new(
                "tls_certificate_reloads_total",
                "Changed certificate files read again, by outcome (an error keeps the certificates in use)",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        reg(Box::new(tls_reloads.clone()));
        let tls_certificate_expiry = IntGauge::new(
            "tls_certificate_expiry_timestamp_seconds",
            "When the first of the proxy listener's certificates expires (Unix time)",
        )
        .expect("valid metric");
        reg(Box::new(tls_certificate_expiry.clone()));
        let upgrades_open = IntGauge::new(
            "upgraded_connections_open",
            "Upgraded connections (WebSocket and others) being relayed",
        )
        .expect("valid metric");
        reg(Box::new(upgrades_open.clone()));
        let upgrades_total = IntCounter::new(
            "upgraded_connections_total",
            "Upgraded connections relayed since start",
        )
        .expect("valid metric");
        reg(Box::new(upgrades_total.clone()));
        let per_upstream = |name: &str, help: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &["route", "upstream"])
                .expect("valid metric");
            reg(Box::new(c.clone()));
            c
        };
        let upstream_requests = per_upstream(
            "upstream_requests_total",
            "Requests sent to each upstream server of a route, retries included",
        );
        let upstream_failures = per_upstream(
            "upstream_failures_total",
            "Requests to an upstream server that failed: connection failures, timeouts, 5xx answers",
        );
        let upstream_ejections = per_upstream(
            "upstream_ejections_total",
            "Times an upstream server was ejected by the passive health check",
        );
        let upstream_healthy = IntGaugeVec::new(
            Opts::new(
                "upstream_healthy",
                "1 while an upstream server passes its active health check (or has none)",
            ),
            &["route", "upstream"],
        )
        .expect("valid metric");
        reg(Box::new(upstream_healthy.clone()));
        let upstream_retries = IntCounterVec::new(
            Opts::new(
                "upstream_retries_total",
                "Requests sent again by a route's retry middleware",
            ),
            &["route"],
        )
        .expect("valid metric");
        reg(Box::new(upstream_retries.clone()));
        let rate_limit = IntCounterVec::new(
            Opts::new(
                "rate_limit_total",
                "Requests a route's rate limit refused (outcome limited), or could not check because the store did not answer (outcome store_error)",
            ),
            &["route", "outcome"],
        )
        .expect("valid metric");
        reg(Box::new(rate_limit.clone()));
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "config_reloads_total",
                "Configuration reloads, by outcome (an error keeps the running configuration)",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        reg(Box::new(config_reloads.clone()));
        let config_reload_failed = IntGauge::new(
            "config_last_reload_failed",
            "1 when the last configuration reload failed and the previous configuration is in use",
        )
        .expect("valid metric");
        reg(Box::new(config_reload_failed.clone()));
        let idp_circuits_open = IntGauge::new(
            "idp_circuits_open",
            "IdP endpoints this node stopped calling after consecutive failures (idpCircuitBreaker)",
        )
        .expect("valid metric");
        reg(Box::new(idp_circuits_open.clone()));
        let store_degraded = IntGauge::new(
            "store_degraded",
            "1 while the shared store does not answer and the node serves from its own cache",
        )
        .expect("valid metric");
        reg(Box::new(store_degraded.clone()));
        Self {
            idp_circuits_open,
            store_degraded,
            config_reload_ok: config_reloads.with_label_values(&["ok"]),
            config_reload_error: config_reloads.with_label_values(&["error"]),
            config_reload_failed,
            rate_limit,
            upstream_requests,
            upstream_failures,
            upstream_ejections,
            upstream_healthy,
            upstream_retries,
            tls_handshake_failures,
            tls_reload_ok: tls_reloads.with_label_values(&["ok"]),
            tls_reload_error: tls_reloads.with_label_values(&["error"]),
            tls_certificate_expiry,
            upgrades_open,
            upgrades_total,
            idp_miss_refused,
            edge_refused,
            connections_open,
            connections_idle_closed,
            l1_hits: tokens.with_label_values(&["l1"]),
            store_hits: tokens.with_label_values(&["store"]),
            idp_fetches: tokens.with_label_values(&["idp"]),
            idp_ok: idp.with_label_values(&["ok"]),
            idp_error: idp.with_label_values(&["error"]),
            refresh_ok: refreshes.with_label_values(&["ok"]),
            refresh_error: refreshes.with_label_values(&["error"]),
            registry,
            names: names.into_inner(),
            requests,
            request_duration,
            idp_duration,
            flight_waits,
            refresh_leader,
            refresh_fence,
        }
    }

    /// The counters of one upstream server of a route (requests, failures, ejections) and its
    /// health gauge, resolved once. `upstream` is the server's origin (configuration, never a
    /// secret: URLs with credentials are refused).
    pub fn upstream(
        &self,
        route: &str,
        upstream: &str,
    ) -> (IntCounter, IntCounter, IntCounter, IntGauge) {
        let labels = [route, upstream];
        (
            self.upstream_requests.with_label_values(&labels),
            self.upstream_failures.with_label_values(&labels),
            self.upstream_ejections.with_label_values(&labels),
            self.upstream_healthy.with_label_values(&labels),
        )
    }

    /// Records a configuration reload.
    pub fn config_reload(&self, ok: bool) {
        if ok {
            &self.config_reload_ok
        } else {
            &self.config_reload_error
        }
        .inc();
        self.config_reload_failed.set(i64::from(!ok));
    }

    /// A route's rate-limit counter for `outcome` (`limited`, `store_error`).
    pub fn rate_limited(&self, route: &str, outcome: &str) -> IntCounter {
        self.rate_limit.with_label_values(&[route, outcome])
    }

    /// The retry counter of a route.
    pub fn upstream_retries(&self, route: &str) -> IntCounter {
        self.upstream_retries.with_label_values(&[route])
    }

    /// Records one answered request.
    pub fn request(&self, route: &str, status: u16, seconds: f64) {
        let count = |(duration, by_status): &mut RouteHandles| {
            duration.observe(seconds);
            by_status
                .entry(status)
                .or_insert_with(|| {
                    let status = itoa::Buffer::new().format(status).to_owned();
                    self.requests.with_label_values(&[route, &status])
                })
                .inc();
        };
        REQUEST_HANDLES.with(|handles| {
            let mut handles = handles.borrow_mut();
            if let Some(found) = handles.get_mut(route) {
                count(found);
                return;
            }
            let mut found = (
                self.request_duration.with_label_values(&[route]),
                foldhash::HashMap::default(),
            );
            count(&mut found);
            handles.insert(route.into(), found);
        });
    }

    /// Records one IdP call.
    pub fn idp_call(&self, ok: bool, seconds: f64) {
        if ok { &self.idp_ok } else { &self.idp_error }.inc();
        self.idp_duration.observe(seconds);
    }

    /// Records a cache miss refused by the `bucket` miss budget.
    pub fn idp_miss_refused(&self, bucket: &'static str) {
        self.idp_miss_refused.with_label_values(&[bucket]).inc();
    }

    /// Every metric's full name (a histogram's base name), including those not observed yet,
    /// which the exposition leaves out: what dashboards and alert rules may use.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Records a request refused at the edge for `reason` (a fixed word).
    pub fn edge_refused(&self, reason: &'static str) {
        self.edge_refused.with_label_values(&[reason]).inc();
    }

    /// Records a reload of changed certificate files.
    pub fn tls_reload(&self, ok: bool) {
        if ok {
            &self.tls_reload_ok
        } else {
            &self.tls_reload_error
        }
        .inc();
    }

    /// Records one background renewal.
    pub fn refresh(&self, ok: bool) {
        if ok {
            &self.refresh_ok
        } else {
            &self.refresh_error
        }
        .inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to memory cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// This process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}
