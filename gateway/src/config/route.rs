//! A route: its rule and priority, its middlewares, and its upstream (servers and weights,
//! strategy, health checks, timeouts), each problem named by its key path.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::issues::Issues;
use crate::config::edge::RawEncodedCharacters;
use crate::proxy::RouteConfig;
use crate::proxy::middleware::HttpMiddleware;
use crate::proxy::pool::{HealthCheck, PassiveHealthCheck, Strategy, UpstreamConfig};
use crate::proxy::rule::{self, NativeMatch, Rule};
use crate::proxy::transport::{ForwardingTimeouts, ServersTransport};
use serde::Deserialize;

/// Most weight a server may have: the round-robin schedule holds the weights' sum.
const MAX_WEIGHT: u32 = 1000;
/// Traefik's health check defaults.
const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// Traefik's passive health check defaults.
const DEFAULT_FAILURE_WINDOW: Duration = Duration::from_secs(10);
const DEFAULT_MAX_FAILED_ATTEMPTS: u32 = 1;

/// What a route may refer to.
pub(super) struct Known<'a> {
    /// Every middleware name declared (either kind).
    pub(super) middlewares: &'a [String],
    /// The traffic middlewares, to find those a route may name only once (CORS, retry).
    pub(super) traffic: &'a BTreeMap<String, HttpMiddleware>,
    /// `serversTransports`.
    pub(super) transports: &'a BTreeMap<String, Arc<ServersTransport>>,
}

pub(super) fn route(
    issues: &mut Issues,
    path: &str,
    r: RawRoute,
    known: &Known<'_>,
    edge: &super::EdgeConfig,
) -> Option<RouteConfig> {
    let before = issues.0.len();
    let matched = route_rule(issues, path, r.matcher, edge, &r.name);
    for (i, m) in r.middlewares.iter().enumerate() {
        if !known.middlewares.contains(m) {
            issues.push(
                format!("{path}.middlewares[{i}]"),
                format!("no middleware named {m:?}"),
            );
        }
    }
    let with_cors = r
        .middlewares
        .iter()
        .filter(
            |m| matches!(known.traffic.get(*m), Some(HttpMiddleware::Headers(h)) if h.cors.is_some()),
        )
        .count();
    if with_cors > 1 {
        issues.push(
            format!("{path}.middlewares"),
            "names more than one headers middleware with a CORS policy; a route has one",
        );
    }
    let retries = r
        .middlewares
        .iter()
        .filter(|m| matches!(known.traffic.get(*m), Some(HttpMiddleware::Retry(_))))
        .count();
    if retries > 1 {
        issues.push(
            format!("{path}.middlewares"),
            "names more than one retry middleware; a route retries one way",
        );
    }
    let transport = match &r.upstream.servers_transport {
        Some(t) => match known.transports.get(t) {
            Some(t) => Some(Arc::clone(t)),
            None => {
                issues.push(
                    format!("{path}.upstream.serversTransport"),
                    format!("no serversTransports entry named {t:?}"),
                );
                None
            }
        },
        None => None,
    };
    let base = transport.map(|t| t.timeouts).unwrap_or_default();
    let timeouts = r.upstream.forwarding_timeouts.map(|raw| {
        forwarding_timeouts(
            issues,
            &format!("{path}.upstream.forwardingTimeouts"),
            raw,
            base,
        )
    });
    let upstream = upstream(issues, &format!("{path}.upstream"), &r.upstream);
    let (rule, text, template) = matched?;
    if issues.0.len() != before {
        return None;
    }
    Some(RouteConfig {
        servers_transport: r.upstream.servers_transport,
        name: r.name,
        rule,
        // Traefik ignores a priority of 0.
        priority: r.priority.filter(|p| *p > 0).unwrap_or(text.len() as u64),
        template,
        middlewares: r.middlewares,
        upstream: upstream?,
        timeouts,
        pass_host_header: r.upstream.pass_host_header.unwrap_or(true),
        encoded_characters: r.encoded_characters.map_or(edge.encoded_characters, |e| {
            super::edge::encoded_characters(&e, edge.encoded_characters)
        }),
    })
}

/// A route's rule, the text its default priority is measured on, and its span template.
fn route_rule(
    issues: &mut Issues,
    path: &str,
    m: RawMatch,
    edge: &super::EdgeConfig,
    name: &str,
) -> Option<(Rule, String, String)> {
    let before = issues.0.len();
    // Requests are matched in canonical form: a path in any other form never matches.
    let canonical = |issues: &mut Issues, key: String, p: &str| {
        if !p.starts_with('/') {
            issues.push(key, "must start with /");
            return;
        }
        match crate::proxy::path::canonicalize(p, &edge.paths) {
            Ok(c) if c.path == p => {}
            Ok(c) => issues.push(key, format!("is not in canonical form; write {:?}", c.path)),
            Err(e) => issues.push(key, e.to_string()),
        }
    };
    if let Some(text) = m.rule {
        let key = format!("{path}.match.rule");
        if m.host.is_some()
            || m.path.is_some()
            || m.path_prefix.is_some()
            || !m.methods.is_empty()
            || !m.headers.is_empty()
        {
            issues.push(
                &key,
                "excludes host, path, pathPrefix, methods and headers: write them in the rule",
            );
        }
        let rule = match rule::parse(&text) {
            Ok(rule) => rule,
            Err(e) => {
                issues.push(key, e.to_string());
                return None;
            }
        };
        for p in rule.paths() {
            canonical(issues, key.clone(), p);
        }
        return (issues.0.len() == before).then(|| (rule, text, name.to_owned()));
    }
    let key = |field: &str| format!("{path}.match.{field}");
    if m.path.is_some() && m.path_prefix.is_some() {
        issues.push(
            key("path"),
            "excludes pathPrefix: a route matches one or the other",
        );
    }
    for (field, p) in [("path", &m.path), ("pathPrefix", &m.path_prefix)] {
        if let Some(p) = p {
            canonical(issues, key(field), p);
        }
    }
    let host = m.host.map(|h| h.to_ascii_lowercase());
    if let Some(h) = &host {
        let bare = h.strip_prefix("*.").unwrap_or(h);
        if bare.is_empty() || bare.contains(['/', ' ', ':', '*']) {
            issues.push(
                key("host"),
                "must be a bare host name (no scheme, port or path), or *. and one (one label)",
            );
        }
    }
    let mut methods = Vec::new();
    for (i, raw) in m.methods.iter().enumerate() {
        match http::Method::from_bytes(raw.to_ascii_uppercase().as_bytes()) {
            Ok(method) => methods.push(method),
            Err(_) => issues.push(format!("{path}.match.methods[{i}]"), "not a method"),
        }
    }
    let mut headers = Vec::new();
    for (name, value) in m.headers {
        let k = format!("{path}.match.headers.{name}");
        match (
            http::HeaderName::try_from(name.as_str()),
            http::HeaderValue::try_from(value.as_str()),
        ) {
            (Ok(n), Ok(v)) => headers.push((n, v)),
            (Err(_), _) => issues.push(k, "not a valid header name"),
            (_, Err(_)) => issues.push(k, "not a valid header value"),
        }
    }
    if issues.0.len() != before {
        return None;
    }
    let template = m
        .path
        .clone()
        .or_else(|| m.path_prefix.clone())
        .unwrap_or_else(|| "/".into());
    let (rule, text) = NativeMatch {
        host,
        path: m.path,
        path_prefix: m.path_prefix,
        methods,
        headers,
    }
    .compile();
    Some((rule, text, template))
}

/// `forwardingTimeouts` over `base`, field by field.
pub(super) fn forwarding_timeouts(
    issues: &mut Issues,
    path: &str,
    raw: RawForwardingTimeouts,
    base: ForwardingTimeouts,
) -> ForwardingTimeouts {
    for (field, value) in [
        ("dialTimeout", raw.dial_timeout),
        ("responseHeaderTimeout", raw.response_header_timeout),
        ("idleConnTimeout", raw.idle_conn_timeout),
    ] {
        if value.is_some_and(|d| d.is_zero()) {
            issues.push(format!("{path}.{field}"), "must be greater than zero");
        }
    }
    ForwardingTimeouts {
        dial: raw.dial_timeout.unwrap_or(base.dial),
        response_header: raw.response_header_timeout.or(base.response_header),
        idle_conn: raw.idle_conn_timeout.unwrap_or(base.idle_conn),
    }
}

/// The servers, strategy and health checks of `upstream`.
fn upstream(issues: &mut Issues, path: &str, raw: &RawUpstream) -> Option<UpstreamConfig> {
    let before = issues.0.len();
    let listed: Vec<(String, &str, Option<u32>)> = if raw.servers.is_empty() {
        raw.urls
            .iter()
            .enumerate()
            .map(|(i, u)| (format!("{path}.urls[{i}]"), u.as_str(), None))
            .collect()
    } else {
        if !raw.urls.is_empty() {
            issues.push(
                format!("{path}.servers"),
                "excludes urls: list the servers once",
            );
        }
        raw.servers
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("{path}.servers[{i}]"), s.url.as_str(), s.weight))
            .collect()
    };
    if listed.is_empty() {
        issues.push(format!("{path}.urls"), "needs at least one URL");
    }
    let mut servers = Vec::new();
    for (p, u, weight) in listed {
        let weight = weight.unwrap_or(1);
        if !(1..=MAX_WEIGHT).contains(&weight) {
            issues.push(
                format!("{p}.weight"),
                format!("must be between 1 and {MAX_WEIGHT}"),
            );
        }
        let key = if raw.servers.is_empty() {
            p
        } else {
            format!("{p}.url")
        };
        if let Some(url) = issues.http_url(&key, u) {
            if url.query().is_some() || url.fragment().is_some() {
                issues.push(key, "must not have a query or fragment");
            } else {
                servers.push((url, weight));
            }
        }
    }
    let strategy = match raw.strategy.as_deref() {
        None | Some("wrr") => Strategy::Wrr,
        Some("p2c") => Strategy::P2c,
        Some(other) => {
            issues.push(
                format!("{path}.strategy"),
                format!("must be wrr or p2c, not {other:?}"),
            );
            Strategy::Wrr
        }
    };
    let health_check = raw
        .health_check
        .as_ref()
        .and_then(|h| health_check(issues, &format!("{path}.healthCheck"), h));
    let passive = raw.passive_health_check.as_ref().map(|p| {
        let window = p.failure_window.unwrap_or(DEFAULT_FAILURE_WINDOW);
        let attempts = p.max_failed_attempts.unwrap_or(DEFAULT_MAX_FAILED_ATTEMPTS);
        if window.is_zero() {
            issues.push(
                format!("{path}.passiveHealthCheck.failureWindow"),
                "must be greater than zero",
            );
        }
        if attempts == 0 {
            issues.push(
                format!("{path}.passiveHealthCheck.maxFailedAttempts"),
                "must be at least 1",
            );
        }
        PassiveHealthCheck {
            failure_window: window,
            max_failed_attempts: attempts,
        }
    });
    (issues.0.len() == before).then_some(UpstreamConfig {
        servers,
        strategy,
        health_check,
        passive,
    })
}

fn health_check(issues: &mut Issues, path: &str, raw: &RawHealthCheck) -> Option<HealthCheck> {
    let before = issues.0.len();
    if !raw.path.starts_with('/') || raw.path.parse::<http::Uri>().is_err() {
        issues.push(format!("{path}.path"), "must be a path starting with /");
    }
    let method = match &raw.method {
        None => http::Method::GET,
        Some(m) => {
            http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()).unwrap_or_else(|_| {
                issues.push(format!("{path}.method"), "not a method");
                http::Method::GET
            })
        }
    };
    let status = raw.status.and_then(|s| {
        http::StatusCode::from_u16(s)
            .map_err(|_| issues.push(format!("{path}.status"), "not an HTTP status"))
            .ok()
    });
    let interval = raw.interval.unwrap_or(DEFAULT_HEALTH_INTERVAL);
    let timeout = raw.timeout.unwrap_or(DEFAULT_HEALTH_TIMEOUT);
    let unhealthy_interval = raw.unhealthy_interval.unwrap_or(interval);
    for (field, d) in [
        ("interval", interval),
        ("unhealthyInterval", unhealthy_interval),
        ("timeout", timeout),
    ] {
        if d.is_zero() {
            issues.push(format!("{path}.{field}"), "must be greater than zero");
        }
    }
    let hostname = raw.hostname.as_ref().and_then(|h| {
        http::HeaderValue::try_from(h.as_str())
            .map_err(|_| issues.push(format!("{path}.hostname"), "not a host name"))
            .ok()
    });
    let mut headers = Vec::new();
    for (name, value) in &raw.headers {
        match (
            http::HeaderName::try_from(name.as_str()),
            http::HeaderValue::try_from(value.as_str()),
        ) {
            (Ok(n), Ok(v)) => headers.push((n, v)),
            _ => issues.push(
                format!("{path}.headers.{name}"),
                "not a valid header name and value",
            ),
        }
    }
    (issues.0.len() == before).then(|| HealthCheck {
        path: raw.path.clone(),
        method,
        status,
        interval,
        unhealthy_interval,
        timeout,
        hostname,
        headers,
    })
}

// The section as written in the file: its shape only (`deny_unknown_fields` catches typos);
// its values are checked above.

/// `forwardingTimeouts` (Traefik's), on a transport or a route's upstream.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawForwardingTimeouts {
    #[serde(default, with = "humantime_serde")]
    pub dial_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub response_header_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub idle_conn_timeout: Option<Duration>,
}

/// `healthCheck` (Traefik's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawHealthCheck {
    pub path: String,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub unhealthy_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// `passiveHealthCheck` (Traefik's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawPassiveHealthCheck {
    #[serde(default, with = "humantime_serde")]
    pub failure_window: Option<Duration>,
    #[serde(default)]
    pub max_failed_attempts: Option<u32>,
}

/// One weighted server.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawServer {
    pub url: String,
    #[serde(default)]
    pub weight: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRoute {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: RawMatch,
    /// Higher first; default: the length of the rule's text.
    #[serde(default)]
    pub priority: Option<u64>,
    #[serde(default)]
    pub middlewares: Vec<String>,
    pub upstream: RawUpstream,
    /// Overrides the top-level `encodedCharacters` for this route.
    #[serde(default)]
    pub encoded_characters: Option<RawEncodedCharacters>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawMatch {
    /// A Traefik rule; excludes the other fields.
    #[serde(default)]
    pub rule: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawUpstream {
    /// Servers of weight 1; excludes `servers`.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Servers with weights (Traefik's `servers`).
    #[serde(default)]
    pub servers: Vec<RawServer>,
    /// `wrr` (default) or `p2c`.
    #[serde(default)]
    pub strategy: Option<String>,
    #[serde(default)]
    pub health_check: Option<RawHealthCheck>,
    #[serde(default)]
    pub passive_health_check: Option<RawPassiveHealthCheck>,
    /// Overrides the transport's, field by field.
    #[serde(default)]
    pub forwarding_timeouts: Option<RawForwardingTimeouts>,
    /// The `serversTransports` entry to reach them through.
    #[serde(default)]
    pub servers_transport: Option<String>,
    /// Send the caller's `Host` (default) or the upstream's.
    #[serde(default)]
    pub pass_host_header: Option<bool>,
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

    fn issues_of(routes: &str) -> Vec<String> {
        let yaml = format!(
            "listen: 127.0.0.1:8080\nadmin: {{ listen: 127.0.0.1:9090 }}\nmiddlewares:\n  retry: {{ retry: {{ attempts: 0, status: [\"5xx\", \"504-503\"], budgetPercent: 0 }} }}\nroutes:\n{routes}"
        );
        match Config::from_yaml(&yaml) {
            Err(ConfigError::Invalid(issues)) => issues.iter().map(ToString::to_string).collect(),
            other => panic!("expected value errors, got {other:?}"),
        }
    }

    #[test]
    fn upstream_options_are_checked_with_their_key_paths() {
        let issues = issues_of(
            r#"  - name: a
    match: { pathPrefix: / }
    upstream:
      urls: [http://a]
      servers: [{ url: http://b, weight: 0 }, { url: "ftp://c" }]
      strategy: random
      healthCheck: { path: health, interval: 0s, status: 1000 }
      passiveHealthCheck: { maxFailedAttempts: 0 }
      forwardingTimeouts: { dialTimeout: 0s }
"#,
        );
        assert_eq!(
            issues,
            [
                "middlewares.retry.retry.attempts: must be between 1 and 10",
                "middlewares.retry.retry.budgetPercent: must be between 1 and 100",
                "middlewares.retry.retry.status[0]: not a status or range of statuses (\"503\", \"500-599\")",
                "middlewares.retry.retry.status[1]: not a status or range of statuses (\"503\", \"500-599\")",
                "routes[0].upstream.forwardingTimeouts.dialTimeout: must be greater than zero",
                "routes[0].upstream.servers: excludes urls: list the servers once",
                "routes[0].upstream.servers[0].weight: must be between 1 and 1000",
                "routes[0].upstream.servers[1].url: not an http(s) URL",
                "routes[0].upstream.strategy: must be wrr or p2c, not \"random\"",
                "routes[0].upstream.healthCheck.path: must be a path starting with /",
                "routes[0].upstream.healthCheck.status: not an HTTP status",
                "routes[0].upstream.healthCheck.interval: must be greater than zero",
                "routes[0].upstream.healthCheck.unhealthyInterval: must be greater than zero",
                "routes[0].upstream.passiveHealthCheck.maxFailedAttempts: must be at least 1",
            ]
        );
    }
}
