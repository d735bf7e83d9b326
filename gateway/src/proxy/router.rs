//! Route selection: the first route, in priority order, whose rule the request satisfies (see
//! [`super::rule`]).

use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;

use super::cors::Cors;
use super::middleware::HttpMiddleware;
use super::path::EncodedCharacters;
use super::pool::{Pool, UpstreamConfig};
use super::retry::{RetryBudget, RetryPolicy};
use super::rule::{RequestView, Rule};
use super::transport::{ForwardingTimeouts, UpstreamClients};
use crate::auth::Middleware;

/// A route, validated.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Name used in logs.
    pub name: String,
    /// Which requests it takes.
    pub rule: Rule,
    /// Higher first: `priority`, or the length of the rule's text.
    pub priority: u64,
    /// What spans call the route (`http.route`): its path or path prefix when it has one,
    /// otherwise its name.
    pub template: String,
    /// Middleware names, checked to exist.
    pub middlewares: Vec<String>,
    /// The upstream servers and how they are chosen.
    pub upstream: UpstreamConfig,
    /// `upstream.forwardingTimeouts` merged over the transport's; `None`: the transport's.
    pub timeouts: Option<ForwardingTimeouts>,
    /// The `serversTransports` entry its upstreams are reached through (checked to exist);
    /// `None`: the default transport.
    pub servers_transport: Option<String>,
    /// Send the caller's `Host` to the upstream (`passHostHeader`); otherwise the upstream's.
    pub pass_host_header: bool,
    /// Ambiguous encoded characters allowed in this route's paths.
    pub encoded_characters: EncodedCharacters,
}

/// A route ready to serve.
pub struct Route {
    /// Name, for logs (shared with each request's access-log record).
    pub name: Arc<str>,
    rule: Rule,
    priority: u64,
    template: String,
    /// Authentication middlewares in order.
    pub middlewares: Vec<Arc<Middleware>>,
    /// Traffic middlewares in order, run after the authentication ones.
    pub shaping: Vec<Arc<HttpMiddleware>>,
    /// The CORS policy of its `headers` middleware, if any.
    pub cors: Option<Cors>,
    /// Its `retry` middleware's policy, budget and counter, if it has one.
    pub retry: Option<(RetryPolicy, RetryBudget, IntCounter)>,
    /// The upstream servers.
    pub pool: Arc<Pool>,
    /// Its `rateLimit` middlewares, in order.
    pub rate_limits: Vec<super::ratelimit::RouteRateLimit>,
    /// The clients of the route's transport.
    pub clients: UpstreamClients,
    /// How long the upstream may take to send an answer's head.
    pub response_header_timeout: Option<Duration>,
    /// Send the caller's `Host` to the upstream.
    pub pass_host_header: bool,
    encoded: EncodedCharacters,
}

impl Route {
    /// A route; `config.upstream` must have a server (configuration validation guarantees it).
    pub fn new(
        config: &RouteConfig,
        middlewares: Vec<Arc<Middleware>>,
        shaping: Vec<Arc<HttpMiddleware>>,
        (clients, response_header_timeout): (UpstreamClients, Option<Duration>),
    ) -> Self {
        let cors = shaping.iter().find_map(|m| match &**m {
            HttpMiddleware::Headers(h) => h.cors.clone(),
            _ => None,
        });
        let retry = shaping.iter().find_map(|m| match &**m {
            HttpMiddleware::Retry(policy) => Some((
                policy.clone(),
                RetryBudget::new(policy.budget_percent),
                crate::telemetry::metrics::metrics().upstream_retries(&config.name),
            )),
            _ => None,
        });
        Self {
            name: config.name.as_str().into(),
            rule: config.rule.clone(),
            priority: config.priority,
            template: config.template.clone(),
            middlewares,
            shaping,
            cors,
            retry,
            pool: Arc::new(Pool::new(&config.name, &config.upstream)),
            rate_limits: Vec::new(),
            clients,
            response_header_timeout,
            pass_host_header: config.pass_host_header,
            encoded: config.encoded_characters,
        }
    }

    /// What spans call the route.
    pub fn template(&self) -> &str {
        &self.template
    }

    /// The ambiguous encoded characters this route's paths may contain.
    pub fn encoded_characters(&self) -> &EncodedCharacters {
        &self.encoded
    }

    /// Whether a request with `method` may be sent again with a fresh token after an upstream
    /// 401: a middleware of this route attaches a token of the gateway's, and every such
    /// middleware allows a replay of this method.
    pub fn replays_after_401(&self, method: &http::Method) -> bool {
        let mut attaching = self
            .middlewares
            .iter()
            .filter_map(|m| m.replays_after_401(method));
        let first = attaching.next();
        first.is_some_and(|replays| replays) && attaching.all(|replays| replays)
    }
}

/// All routes, in priority order, indexed by the host and the first path segment their rules
/// require, so that a request is tried against the routes it could match only.
pub struct Router {
    routes: Vec<Route>,
    index: Index,
}

impl Router {
    /// Orders `routes` by priority, highest first; equal priorities keep their order.
    pub fn new(mut routes: Vec<Route>) -> Self {
        routes.sort_by_key(|r| std::cmp::Reverse(r.priority));
        let index = Index::new(&routes);
        Self { routes, index }
    }

    /// Every route, in priority order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route for a request: the first, in priority order, whose rule it satisfies.
    pub fn find(&self, req: &RequestView<'_>) -> Option<&Route> {
        self.index
            .candidates(req)
            .map(|i| &self.routes[i as usize])
            .find(|r| r.rule.matches(req))
    }
}

type Map<V> = std::collections::HashMap<String, V, foldhash::fast::RandomState>;

/// Routes by what their rules require. A route whose rule requires a host (`Host` at its top
/// level, alone or in a conjunction) is listed under that host, the others under any host;
/// within each, a route whose rule requires a whole first path segment (`Path`, or a
/// `PathPrefix` that ends past its first segment: `/v1/orders`, not `/v1`, which also takes
/// `/v1x`) under that segment, the others under any segment. Every list keeps priority order,
/// and a request's candidates are the four lists that can hold its route, merged: a route left
/// out could not have matched.
struct Index {
    hosts: Map<Bucket>,
    any_host: Bucket,
}

#[derive(Default)]
struct Bucket {
    segments: Map<Vec<u32>>,
    any_segment: Vec<u32>,
}

impl Bucket {
    /// Its routes that may take a request whose path starts with `segment`.
    fn lists(&self, segment: &str) -> [&[u32]; 2] {
        let by_segment = self.segments.get(segment).map_or(&[][..], Vec::as_slice);
        [by_segment, &self.any_segment]
    }
}

impl Index {
    fn new(routes: &[Route]) -> Self {
        let mut index = Self {
            hosts: Map::default(),
            any_host: Bucket::default(),
        };
        for (i, route) in routes.iter().enumerate() {
            let bucket = match required_host(&route.rule) {
                Some(host) => index.hosts.entry(host.to_owned()).or_default(),
                None => &mut index.any_host,
            };
            let at = u32::try_from(i).expect("fewer than 2^32 routes");
            match required_segment(&route.rule) {
                Some(segment) => bucket
                    .segments
                    .entry(segment.to_owned())
                    .or_default()
                    .push(at),
                None => bucket.any_segment.push(at),
            }
        }
        index
    }

    /// The positions of the routes that may take `req`, in priority order.
    fn candidates(&self, req: &RequestView<'_>) -> Candidates<'_> {
        let segment = first_segment(req.path);
        let [a, b] = req
            .host
            .and_then(|h| self.hosts.get(h))
            .map_or([&[][..], &[][..]], |bucket| bucket.lists(segment));
        let [c, d] = self.any_host.lists(segment);
        Candidates {
            lists: [a, b, c, d],
        }
    }
}

/// Sorted lists of route positions, merged.
struct Candidates<'a> {
    lists: [&'a [u32]; 4],
}

impl Iterator for Candidates<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        let (at, &first) = self
            .lists
            .iter()
            .enumerate()
            .filter_map(|(at, list)| list.first().map(|f| (at, f)))
            .min_by_key(|(_, f)| **f)?;
        self.lists[at] = &self.lists[at][1..];
        Some(first)
    }
}

/// The host every request `rule` takes has, if the rule names one.
fn required_host(rule: &Rule) -> Option<&str> {
    match rule {
        Rule::Host(host) => Some(host),
        Rule::All(rules) => rules.iter().find_map(required_host),
        _ => None,
    }
}

/// The first path segment every request `rule` takes has, if the rule fixes it whole.
fn required_segment(rule: &Rule) -> Option<&str> {
    match rule {
        Rule::Path(path) => Some(first_segment(path)),
        Rule::PathPrefix(prefix) => prefix.strip_prefix('/')?.split_once('/').map(|(s, _)| s),
        Rule::All(rules) => rules.iter().find_map(required_segment),
        _ => None,
    }
}

/// The first segment of a path: `orders` of `/orders/1`, empty for `/`.
fn first_segment(path: &str) -> &str {
    let path = path.strip_prefix('/').unwrap_or(path);
    path.split('/').next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, Method};

    use super::*;
    use crate::proxy::rule::{NativeMatch, parse};
    use crate::proxy::transport::ServersTransport;

    fn route(name: &str, rule: Rule, text: &str, upstreams: &[&str]) -> Route {
        let config = RouteConfig {
            name: name.into(),
            rule,
            priority: text.len() as u64,
            template: name.into(),
            middlewares: vec![],
            upstream: UpstreamConfig {
                servers: upstreams.iter().map(|u| (u.parse().unwrap(), 1)).collect(),
                strategy: crate::proxy::pool::Strategy::Wrr,
                health_check: None,
                passive: None,
            },
            timeouts: None,
            servers_transport: None,
            pass_host_header: true,
            encoded_characters: EncodedCharacters::default(),
        };
        Route::new(
            &config,
            vec![],
            vec![],
            (ServersTransport::default().clients().unwrap(), None),
        )
    }

    fn native(name: &str, host: Option<&str>, prefix: &str) -> Route {
        let (rule, text) = NativeMatch {
            host: host.map(Into::into),
            path_prefix: Some(prefix.into()),
            ..NativeMatch::default()
        }
        .compile();
        route(name, rule, &text, &["http://u"])
    }

    fn find<'r>(r: &'r Router, host: Option<&str>, method: &Method, path: &str) -> Option<&'r str> {
        let headers = HeaderMap::new();
        r.find(&RequestView {
            method,
            host,
            path,
            query: None,
            headers: &headers,
            peer: [127, 0, 0, 1].into(),
        })
        .map(|r| &*r.name)
    }

    /// The index never changes which route takes a request: against a linear scan of the same
    /// routes, over routes and requests drawn at random from a small vocabulary, so that hosts,
    /// segments and prefixes collide.
    #[test]
    fn the_index_finds_what_a_scan_of_every_route_finds() {
        use proptest::prelude::*;
        let hosts = ["a.test", "b.test", "B.TEST"];
        let paths = [
            "/",
            "/v1",
            "/v1/",
            "/v1/orders",
            "/v1x",
            "/v2/orders",
            "/orders",
        ];
        let rule = prop_oneof![
            (0..3usize).prop_map(move |h| format!("Host(`{}`)", hosts[h])),
            (0..7usize).prop_map(move |p| format!("PathPrefix(`{}`)", paths[p])),
            (0..7usize).prop_map(move |p| format!("Path(`{}`)", paths[p])),
            Just("HostRegexp(`^[ab]\\.test$`)".to_owned()),
            Just("Method(`POST`)".to_owned()),
        ];
        let routes = proptest::collection::vec(
            (
                proptest::collection::vec(rule, 1..4),
                any::<bool>(),
                0..3u64,
            ),
            1..12,
        );
        let request = (0..4usize, 0..10usize, any::<bool>());
        let mut runner = proptest::test_runner::TestRunner::default();
        runner
            .run(
                &(routes, proptest::collection::vec(request, 1..20)),
                |(routes, requests)| {
                    let built: Vec<Route> = routes
                        .iter()
                        .enumerate()
                        .map(|(i, (conditions, any, priority))| {
                            let text = conditions.join(if *any { " || " } else { " && " });
                            let mut r = route(
                                &format!("r{i}"),
                                parse(&text).unwrap(),
                                &text,
                                &["http://u"],
                            );
                            r.priority = *priority;
                            r
                        })
                        .collect();
                    let router = Router::new(built);
                    let request_hosts = [Some("a.test"), Some("b.test"), Some("c.test"), None];
                    let request_paths = [
                        "/",
                        "/v1",
                        "/v1/",
                        "/v1/orders",
                        "/v1/orders/7",
                        "/v1x",
                        "/v2/orders",
                        "/orders",
                        "/ordersx",
                        "/x/v1",
                    ];
                    for (h, p, post) in requests {
                        let method = if post { Method::POST } else { Method::GET };
                        let headers = HeaderMap::new();
                        let view = RequestView {
                            method: &method,
                            host: request_hosts[h],
                            path: request_paths[p],
                            query: None,
                            headers: &headers,
                            peer: [127, 0, 0, 1].into(),
                        };
                        let scanned = router.routes().iter().find(|r| r.rule.matches(&view));
                        prop_assert_eq!(
                            router.find(&view).map(|r| &r.name),
                            scanned.map(|r| &r.name)
                        );
                    }
                    Ok(())
                },
            )
            .unwrap();
    }

    #[test]
    fn the_longer_rule_wins() {
        let r = Router::new(vec![
            native("root", None, "/"),
            native("app", None, "/app"),
            native("app-v2", None, "/app/v2"),
            native("internal", Some("internal.localhost"), "/"),
        ]);
        let get = Method::GET;
        assert_eq!(find(&r, None, &get, "/app/v2/x"), Some("app-v2"));
        assert_eq!(find(&r, None, &get, "/app/v1"), Some("app"));
        assert_eq!(find(&r, None, &get, "/other"), Some("root"));
        assert_eq!(
            find(&r, Some("internal.localhost"), &get, "/app"),
            Some("internal")
        );
        assert_eq!(find(&r, Some("else.localhost"), &get, "/app"), Some("app"));
    }

    #[test]
    fn an_explicit_priority_beats_the_rule_length() {
        let text = "HostRegexp(`[a-z]+\\.traefik\\.com`)";
        let wide = route("wide", parse(text).unwrap(), text, &["http://u"]);
        let exact = native("exact", Some("foobar.traefik.com"), "/");
        let host = Some("foobar.traefik.com");
        let get = Method::GET;
        // `Host(`foobar.traefik.com`) && PathPrefix(`/`)` is the longer text.
        let r = Router::new(vec![wide, exact]);
        assert_eq!(find(&r, host, &get, "/"), Some("exact"));
        let mut wide = route("wide", parse(text).unwrap(), text, &["http://u"]);
        wide.priority = 1000;
        let r = Router::new(vec![native("exact", Some("foobar.traefik.com"), "/"), wide]);
        assert_eq!(find(&r, host, &get, "/"), Some("wide"));
    }
}
