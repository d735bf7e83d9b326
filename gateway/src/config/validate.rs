//! Turns a [`RawConfig`] into a [`Config`], collecting every problem with its key path.

use std::collections::BTreeMap;
use std::time::Duration;

use super::issues::{Issues, redacted};
use super::middleware::{Declared, RawMiddleware};
use super::{Config, ConfigIssue, DEFAULT_SHUTDOWN_TIMEOUT};
use crate::config::edge::{
    RawCallerLimits, RawEncodedCharacters, RawForwardedHeaders, RawHttp2, RawMissBudget, RawPaths,
    RawTransport,
};
use crate::config::issuer::RawIssuer;
use crate::config::route::RawRoute;
use crate::config::store::{RawMemoryStore, RawRaftStore, RawRedisStore};
use crate::config::tls::{RawListenerTls, RawServersTransport};
use crate::lifecycle::{
    DEFAULT_IDLE_TIMEOUT, DEFAULT_LEASE_TTL, DEFAULT_REFRESH_INTERVAL, RefreshConfig,
};
use crate::outbound::BreakerConfig;
use crate::proxy::DEFAULT_REQUEST_TIMEOUT;
use crate::secret;
use crate::store::StoreConfig;
use crate::telemetry::{LogConfig, LogFormat, TracingConfig};
use crate::token::DEFAULT_MAX_ENTRIES;
use serde::Deserialize;

pub(super) fn validate(raw: RawConfig, resolve: bool) -> Result<Config, Vec<ConfigIssue>> {
    let mut issues = Issues::with_secrets(secret::Secrets {
        dir: raw
            .secrets_dir
            .clone()
            .map_or_else(|| secret::DEFAULT_SECRETS_DIR.into(), Into::into),
        resolve,
    });
    let allow_insecure = raw.allow_insecure_skip_verify;
    let listen = issues.addr("listen", &raw.listen);
    let admin_listen = issues.addr("admin.listen", &raw.admin.listen);
    if listen.is_some() && listen == admin_listen && listen.is_some_and(|a| a.port() != 0) {
        issues.push("admin.listen", "must differ from listen");
    }
    let admin_token = raw
        .admin
        .token
        .as_deref()
        .and_then(|t| issues.secret("admin.token", t));
    if let Some(a) = admin_listen
        && !a.ip().is_loopback()
        && raw.admin.token.is_none()
    {
        if raw.admin.insecure {
            issues.warn(
                "admin.insecure",
                "/metrics and /config are served to anyone who can reach admin.listen",
            );
        } else {
            issues.push(
                "admin.token",
                "is required when admin.listen is not a loopback address (/metrics and /config \
                 tell a lot about the fleet); or set admin.insecure: true",
            );
        }
    }
    let edge = super::edge::edge(
        &mut issues,
        &super::edge::RawEdge {
            paths: &raw.paths,
            encoded_characters: &raw.encoded_characters,
            forwarded_headers: &raw.forwarded_headers,
            transport: &raw.transport,
            http2: &raw.http2,
            limits: &raw.limits,
            idp_miss_budget: &raw.idp_miss_budget,
        },
    );
    let store = match raw.store {
        None => StoreConfig::Memory,
        Some(RawStore {
            memory,
            redis,
            raft,
        }) => match (memory, redis, raft) {
            (Some(_), None, None) => StoreConfig::Memory,
            (None, None, None) => {
                issues.push("store", "names no backend (expected memory, redis or raft)");
                StoreConfig::Memory
            }
            (None, Some(r), None) => super::store::redis(&mut issues, r)
                .map_or(StoreConfig::Memory, |r| StoreConfig::Redis(Box::new(r))),
            (None, None, Some(r)) => {
                super::store::raft(&mut issues, r).map_or(StoreConfig::Memory, StoreConfig::Raft)
            }
            _ => {
                issues.push(
                    "store",
                    "names two backends; choose one of memory, redis, raft",
                );
                StoreConfig::Memory
            }
        },
    };
    let fleet_key = raw
        .fleet_key
        .as_deref()
        .and_then(|r| issues.secret_reference("fleetKey", r));
    if raw.fleet_key.is_none() && store != StoreConfig::Memory {
        issues.push(
            "fleetKey",
            "is required with a shared store: every node must hold the same key",
        );
    }
    let previous_fleet_keys: Vec<super::Secret> = raw
        .previous_fleet_keys
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let path = format!("previousFleetKeys[{i}]");
            let k = issues.secret_reference(&path, r)?;
            if k.expose().len() < 32 {
                issues.push(path, "must be at least 32 bytes of high-entropy material");
            }
            Some(k)
        })
        .collect();
    if !previous_fleet_keys.is_empty() && raw.fleet_key.is_none() {
        issues.push("previousFleetKeys", "needs fleetKey (the key rotated to)");
    }
    if fleet_key.as_ref().is_some_and(|k| k.expose().len() < 32) {
        issues.push(
            "fleetKey",
            "must be at least 32 bytes of high-entropy material",
        );
    }

    let refresh = RefreshConfig {
        interval: raw.refresh.interval.unwrap_or(DEFAULT_REFRESH_INTERVAL),
        idle_timeout: raw.refresh.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT),
        lease_ttl: raw.refresh.lease_ttl.unwrap_or(DEFAULT_LEASE_TTL),
        max_entries: raw.refresh.max_entries.unwrap_or(DEFAULT_MAX_ENTRIES),
    };
    if refresh.max_entries == 0 {
        issues.push("refresh.maxEntries", "must be at least 1");
    }
    if refresh.interval.is_zero() {
        issues.push("refresh.interval", "must be greater than zero");
    }
    if refresh.lease_ttl <= refresh.interval {
        issues.push("refresh.leaseTtl", "must be longer than refresh.interval");
    }

    let format = match raw.log.format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            issues.push("log.format", format!("must be text or json, not {other:?}"));
            LogFormat::Text
        }
    };
    let log = LogConfig {
        format,
        level: raw.log.level.unwrap_or_else(|| "info".into()),
    };

    let tracing = raw.telemetry.tracing.map(|t| tracing(&mut issues, t));
    let defaults = BreakerConfig::default();
    let idp_breaker = BreakerConfig {
        failures: raw
            .idp_circuit_breaker
            .failures
            .unwrap_or(defaults.failures),
        cooldown: raw
            .idp_circuit_breaker
            .cooldown
            .unwrap_or(defaults.cooldown),
    };
    if idp_breaker.failures == 0 {
        issues.push("idpCircuitBreaker.failures", "must be at least 1");
    }
    if idp_breaker.cooldown.is_zero() {
        issues.push("idpCircuitBreaker.cooldown", "must be greater than zero");
    }

    let issuer = raw
        .issuer
        .and_then(|i| super::issuer::issuer(&mut issues, i, store != StoreConfig::Memory));
    // `jwt: {gatewayIssuer: true}` middlewares expect the issuer's `iss`.
    issues.1.gateway_issuer = issuer.as_ref().map(|i| i.issuer.clone());

    let declared: Vec<String> = raw.middlewares.keys().cloned().collect();
    let mut middlewares = BTreeMap::new();
    let mut http_middlewares = BTreeMap::new();
    for (name, m) in raw.middlewares {
        match super::middleware::middleware(&mut issues, &name, m) {
            Some(Declared::Auth(cfg)) => {
                middlewares.insert(name, cfg);
            }
            Some(Declared::Http(m)) => {
                http_middlewares.insert(name, m);
            }
            None => {}
        }
    }

    let tls = raw
        .tls
        .and_then(|t| super::tls::listener_tls(&mut issues, t));
    let servers_transports = super::tls::servers_transports(&mut issues, raw.servers_transports);

    let mut routes = Vec::new();
    let mut seen_names = BTreeMap::new();
    for (i, r) in raw.routes.into_iter().enumerate() {
        let path = format!("routes[{i}]");
        if let Some(prev) = seen_names.insert(r.name.clone(), i) {
            issues.push(
                format!("{path}.name"),
                format!("{:?} is also routes[{prev}]", r.name),
            );
        }
        let known = super::route::Known {
            middlewares: &declared,
            traffic: &http_middlewares,
            transports: &servers_transports,
        };
        if let Some(route) = super::route::route(&mut issues, &path, r, &known, &edge) {
            routes.push(route);
        }
    }

    if !allow_insecure {
        for path in std::mem::take(&mut issues.1.insecure) {
            issues.push(
                path,
                "turns certificate verification off, so tokens and secrets go to whoever answers; set allowInsecureSkipVerify: true at the top level to allow it (tests only)",
            );
        }
    }
    if !issues.0.is_empty() {
        return Err(issues.0);
    }
    Ok(Config {
        warnings: issues.1.warnings,
        sources: issues.1.sources,
        tls,
        servers_transports,
        listen: listen.expect("checked above"),
        admin_listen: admin_listen.expect("checked above"),
        admin_token,
        store,
        fleet_key,
        previous_fleet_keys,
        refresh,
        request_timeout: raw.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT),
        shutdown_timeout: raw.shutdown_timeout.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT),
        log,
        idp_breaker,
        tracing,
        middlewares,
        http_middlewares,
        routes,
        issuer,
        edge,
    })
}

fn tracing(issues: &mut Issues, raw: RawTracing) -> TracingConfig {
    const PATH: &str = "telemetry.tracing";
    if let Some(rate) = raw.sample_rate
        && !(0.0..=1.0).contains(&rate)
    {
        issues.push(format!("{PATH}.sampleRate"), "must be between 0.0 and 1.0");
    }
    if raw
        .service_name
        .as_deref()
        .is_some_and(|n| n.trim().is_empty())
    {
        issues.push(format!("{PATH}.serviceName"), "must not be empty");
    }
    let grpc = raw.otlp.and_then(|o| o.grpc).unwrap_or_default();
    let endpoint_path = format!("{PATH}.otlp.grpc.endpoint");
    if let Some(e) = &grpc.endpoint {
        match url::Url::parse(e) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => issues.push(
                endpoint_path,
                format!("{:?} is not an http:// or https:// URL", redacted(e)),
            ),
        }
    }
    if grpc.timeout.is_some_and(|t| t.is_zero()) {
        issues.push(
            format!("{PATH}.otlp.grpc.timeout"),
            "must be greater than zero",
        );
    }
    TracingConfig {
        service_name: raw.service_name,
        sample_rate: raw.sample_rate,
        endpoint: grpc.endpoint,
        timeout: grpc.timeout,
        resource_attributes: raw.resource_attributes,
        trust_caller_sampling: raw.trust_caller_sampling,
    }
}

// The section as written in the file: its shape only (`deny_unknown_fields` catches typos);
// its values are checked above.

/// The top level of a gateway configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawConfig {
    /// Address of the proxy listener, e.g. `0.0.0.0:8080`.
    pub listen: String,
    /// The admin listener (`/healthz`, `/readyz`).
    pub admin: RawAdmin,
    /// Where tokens are shared. Defaults to `memory` (node-local).
    #[serde(default)]
    pub store: Option<RawStore>,
    /// Secret reference to the fleet key: derives cache keys and seals entries.
    /// Optional with the memory store (a random per-process key is used).
    #[serde(default)]
    pub fleet_key: Option<String>,
    /// Secret references to fleet keys being rotated out: still accepted for reading.
    #[serde(default)]
    pub previous_fleet_keys: Vec<String>,
    /// How the background refresher behaves.
    #[serde(default)]
    pub refresh: RawRefresh,
    /// Upper bound on the time a request may take, upstream response headers included.
    #[serde(default, with = "humantime_serde")]
    pub request_timeout: Option<Duration>,
    /// How long in-flight requests may drain after SIGTERM/SIGINT.
    #[serde(default, with = "humantime_serde")]
    pub shutdown_timeout: Option<Duration>,
    /// Logging options.
    #[serde(default)]
    pub log: RawLog,
    /// The circuit breaker in front of each IdP endpoint.
    #[serde(default)]
    pub idp_circuit_breaker: RawBreaker,
    /// Distributed tracing.
    #[serde(default)]
    pub telemetry: RawTelemetry,
    /// Named middlewares, referenced by routes: each is `{kind: options}`, its options read by
    /// the kind's entry in `middleware::KINDS`.
    #[serde(default)]
    pub middlewares: BTreeMap<String, RawMiddleware>,
    /// Where `urn:k8s:secret:NAME:KEY` references are read (`NAME/KEY` under it).
    #[serde(default)]
    pub secrets_dir: Option<String>,
    /// Routes, tried by priority (see `proxy::rule`).
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// The gateway as an OAuth2 authorization server for workloads.
    #[serde(default)]
    pub issuer: Option<RawIssuer>,
    /// How request paths are canonicalised before routing.
    #[serde(default)]
    pub paths: RawPaths,
    /// Ambiguous percent-encoded characters allowed in paths (default: none).
    #[serde(default)]
    pub encoded_characters: RawEncodedCharacters,
    /// Which peers may set `X-Forwarded-*`, `Forwarded` and `X-Real-IP`.
    #[serde(default)]
    pub forwarded_headers: RawForwardedHeaders,
    /// Connection limits and timeouts of the proxy listener.
    #[serde(default)]
    pub transport: RawTransport,
    /// HTTP/2 limits of the proxy listener.
    #[serde(default)]
    pub http2: RawHttp2,
    /// Bounds on the credentials callers present.
    #[serde(default)]
    pub limits: RawCallerLimits,
    /// Budgets of cache misses (IdP calls) per client id and per caller address.
    #[serde(default)]
    pub idp_miss_budget: RawMissBudget,
    /// TLS on the proxy listener.
    #[serde(default)]
    pub tls: Option<RawListenerTls>,
    /// How upstreams are reached (TLS, HTTP/2), by name.
    #[serde(default)]
    pub servers_transports: BTreeMap<String, RawServersTransport>,
    /// Let `insecureSkipVerify` be set anywhere (tests only).
    #[serde(default)]
    pub allow_insecure_skip_verify: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawAdmin {
    pub listen: String,
    /// Secret reference to the bearer token `/metrics` and `/config` need.
    #[serde(default)]
    pub token: Option<String>,
    /// Serve `/metrics` and `/config` without a token beyond loopback (Traefik's `api.insecure`).
    #[serde(default)]
    pub insecure: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRefresh {
    /// How often the refresher looks for entries due for refresh.
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Entries unused for this long are not refreshed and are left to expire.
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// Lifetime of the refresh-leader lease.
    #[serde(default, with = "humantime_serde")]
    pub lease_ttl: Option<Duration>,
    /// Entries a node keeps in memory at most.
    #[serde(default)]
    pub max_entries: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawLog {
    /// `text` (default) or `json`.
    #[serde(default)]
    pub format: Option<String>,
    /// A `tracing` filter such as `info` or `gateway=debug`; `RUST_LOG` wins when set.
    #[serde(default)]
    pub level: Option<String>,
}

/// `idpCircuitBreaker`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawBreaker {
    /// Failed calls in a row that open the breaker.
    #[serde(default)]
    pub failures: Option<u32>,
    /// How long it stays open before one trial call.
    #[serde(default, with = "humantime_serde")]
    pub cooldown: Option<Duration>,
}

/// `telemetry`: distributed tracing (metrics are always on the admin listener).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawTelemetry {
    /// Span export over OTLP; omitted, tracing follows the `OTEL_*` environment.
    #[serde(default)]
    pub tracing: Option<RawTracing>,
}

/// `telemetry.tracing`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawTracing {
    /// `service.name` of exported spans.
    #[serde(default)]
    pub service_name: Option<String>,
    /// Share of new traces recorded, 0.0 to 1.0.
    #[serde(default)]
    pub sample_rate: Option<f64>,
    /// Extra resource attributes.
    #[serde(default)]
    pub resource_attributes: BTreeMap<String, String>,
    /// Follow the `traceparent` sampling flag of callers that are not trusted proxies.
    #[serde(default)]
    pub trust_caller_sampling: bool,
    /// Where spans go.
    #[serde(default)]
    pub otlp: Option<RawOtlp>,
}

/// `telemetry.tracing.otlp`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawOtlp {
    /// OTLP over gRPC.
    #[serde(default)]
    pub grpc: Option<RawOtlpGrpc>,
}

/// `telemetry.tracing.otlp.grpc`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawOtlpGrpc {
    /// Collector URL, `http://host:4317` or `https://...`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Export timeout.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

/// Exactly one backend must be given.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawStore {
    /// Node-local store: the L1 is the whole cache.
    #[serde(default)]
    pub memory: Option<RawMemoryStore>,
    /// Redis (standalone, Sentinel or Cluster).
    #[serde(default)]
    pub redis: Option<RawRedisStore>,
    /// The Raft-replicated cache service (`gateway cache-node`).
    #[serde(default)]
    pub raft: Option<RawRaftStore>,
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

    const GOOD: &str = r#"
listen: 127.0.0.1:8080
admin: { listen: 127.0.0.1:9090 }
middlewares:
  m:
    clientCredentials:
      url: http://idp/token
      scopes: [b, a, a]
routes:
  - name: r
    match: { pathPrefix: /app }
    middlewares: [m]
    upstream: { urls: [http://127.0.0.1:8081] }
"#;

    #[test]
    fn scopes_are_sorted_and_deduplicated() {
        let c = Config::from_yaml(GOOD).unwrap();
        let Some(cc) = c.middlewares["m"].downcast_ref::<crate::auth::ClientCredentialsConfig>()
        else {
            panic!("clientCredentials expected")
        };
        assert_eq!(cc.scopes, ["a", "b"]);
    }

    fn issues_of(yaml: &str) -> Vec<String> {
        match Config::from_yaml(yaml) {
            Err(ConfigError::Invalid(issues)) => issues.iter().map(ToString::to_string).collect(),
            other => panic!("expected value errors, got {other:?}"),
        }
    }

    #[test]
    fn skipping_certificate_verification_needs_an_explicit_allowance() {
        let insecure = GOOD.replace(
            "scopes: [b, a, a]",
            "scopes: [b, a, a]\n      clientConfig: { tls: { insecureSkipVerify: true } }",
        ) + "serversTransports:\n  lab: { insecureSkipVerify: true }\n";
        assert_eq!(
            issues_of(&insecure)
                .iter()
                .map(|i| i.split(':').next().unwrap())
                .collect::<Vec<_>>(),
            [
                "middlewares.m.clientCredentials.clientConfig.tls.insecureSkipVerify",
                "serversTransports.lab.insecureSkipVerify",
            ]
        );
        let allowed = format!("allowInsecureSkipVerify: true\n{insecure}");
        let c = Config::from_yaml(&allowed).unwrap();
        assert!(c.servers_transports["lab"].insecure_skip_verify);
    }

    #[test]
    fn transports_and_listener_tls_are_checked_with_their_paths() {
        let bad = GOOD.replace(
            "upstream: { urls: [http://127.0.0.1:8081] }",
            "upstream: { urls: [https://127.0.0.1:8443], serversTransport: missing }",
        ) + r#"
serversTransports:
  t: { serverName: "not a name", rootCAs: [/nonexistent/ca.pem], certificates: [{ certFile: /nonexistent/c.pem, keyFile: /nonexistent/k.pem }] }
tls:
  certificates: [{ certFile: /nonexistent/s.pem, keyFile: /nonexistent/s.key }]
  options: { minVersion: VersionTLS10, clientAuth: { clientAuthType: RequireAnyClientCert } }
"#;
        let issues = issues_of(&bad);
        let paths: Vec<&str> = issues
            .iter()
            .map(|i| i.split(": ").next().unwrap())
            .collect();
        assert_eq!(
            paths,
            [
                "tls.certificates[0]",
                "tls.options.minVersion",
                "tls.options.clientAuth.caFiles",
                "tls.options.clientAuth.clientAuthType",
                "serversTransports.t.serverName",
                "serversTransports.t.rootCAs[0]",
                "serversTransports.t.certificates[0]",
                "routes[0].upstream.serversTransport",
            ],
            "{issues:#?}"
        );
    }

    #[test]
    fn every_value_problem_is_reported_at_once() {
        let bad = GOOD
            .replace("http://idp/token", "ftp://idp/token")
            .replace("[m]", "[m, nope]")
            .replace("127.0.0.1:9090", "nowhere");
        let Err(ConfigError::Invalid(issues)) = Config::from_yaml(&bad) else {
            panic!()
        };
        let text: Vec<String> = issues.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "admin.listen: not a socket address (ip:port): \"nowhere\"",
                "middlewares.m.clientCredentials.url: not an http(s) URL",
                "routes[0].middlewares[1]: no middleware named \"nope\"",
            ]
        );
    }

    #[test]
    fn routing_and_shaping_problems_name_their_key_paths() {
        let bad = GOOD.replace(
            "routes:\n",
            r#"  strip: { stripPrefix: { prefixes: [api] } }
  regex: { replacePathRegex: { regex: "(", replacement: /x } }
  shape:
    headers:
      customRequestHeaders: { Host: a.test, "bad name": x }
      accessControlAllowOriginList: ["*", https://a.test/path]
      accessControlAllowCredentials: true
  cors2: { headers: { accessControlAllowOriginList: [https://b.test] } }
  r1: { retry: { attempts: 1 } }
  r2: { retry: { attempts: 2 } }
routes:
  - { name: a, match: { rule: "Host(`a`) && Path(`x`)" }, upstream: { urls: [http://u] } }
  - { name: b, match: { rule: "Host(`a`)", pathPrefix: /b }, upstream: { urls: [http://u] } }
  - { name: c, match: { path: /c, pathPrefix: /c, methods: [GET, "B@D"], host: "a.*.test" }, upstream: { urls: [http://u] } }
  - { name: d, match: { path: /d/../e }, middlewares: [cors2, cors2], upstream: { urls: [http://u] } }
  - { name: e, match: { path: /e }, middlewares: [r1, r2], upstream: { urls: [http://u] } }
"#,
        );
        assert_eq!(
            issues_of(&bad),
            [
                "middlewares.regex.replacePathRegex.regex: not a valid regular expression: regex parse error:\n    (\n    ^\nerror: unclosed group",
                "middlewares.shape.headers.customRequestHeaders.Host: is managed by the gateway (framing and Host; use upstream.passHostHeader for Host)",
                "middlewares.shape.headers.customRequestHeaders.bad name: not a valid header name",
                "middlewares.shape.headers.accessControlAllowOriginList[0]: \"*\" with accessControlAllowCredentials would let every site make credentialed requests; list the origins",
                "middlewares.shape.headers.accessControlAllowOriginList[1]: not an origin (scheme://host[:port], no path) or *",
                "middlewares.strip.stripPrefix.prefixes[0]: must start with /",
                "routes[0].match.rule: Path: \"x\" must start with / (at column 14)",
                "routes[1].match.rule: excludes host, path, pathPrefix, methods and headers: write them in the rule",
                "routes[2].match.path: excludes pathPrefix: a route matches one or the other",
                "routes[2].match.host: must be a bare host name (no scheme, port or path), or *. and one (one label)",
                "routes[2].match.methods[1]: not a method",
                "routes[3].match.path: is not in canonical form; write \"/e\"",
                "routes[3].middlewares: names more than one headers middleware with a CORS policy; a route has one",
                "routes[4].middlewares: names more than one retry middleware; a route retries one way",
            ]
        );
    }

    #[test]
    fn unknown_key_names_its_path() {
        let bad = GOOD.replace("scopes:", "scopez:");
        let err = Config::from_yaml(&bad).unwrap_err().to_string();
        assert!(
            err.starts_with("middlewares.m.clientCredentials.scopez: unknown field `scopez`"),
            "{err}"
        );
        assert!(err.contains("at line 8 column 7"), "{err}");
    }

    #[test]
    fn tracing_settings_are_read_and_checked_with_their_paths() {
        let good = format!(
            "{GOOD}telemetry:\n  tracing:\n    serviceName: edge\n    sampleRate: 0.01\n    resourceAttributes: {{ deployment.environment.name: prod }}\n    otlp: {{ grpc: {{ endpoint: \"https://collector:4317\", timeout: 3s }} }}\n"
        );
        let t = Config::from_yaml(&good).unwrap().tracing.unwrap();
        assert_eq!(t.service_name.as_deref(), Some("edge"));
        assert_eq!(t.sample_rate, Some(0.01));
        assert_eq!(t.endpoint.as_deref(), Some("https://collector:4317"));
        assert_eq!(t.timeout, Some(std::time::Duration::from_secs(3)));
        assert_eq!(t.resource_attributes["deployment.environment.name"], "prod");
        assert!(Config::from_yaml(GOOD).unwrap().tracing.is_none());

        let bad = good
            .replace("0.01", "1.5")
            .replace("edge", "\"\"")
            .replace("https://collector:4317", "collector:4317")
            .replace("3s", "0s");
        let Err(ConfigError::Invalid(issues)) = Config::from_yaml(&bad) else {
            panic!()
        };
        let text: Vec<String> = issues.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "telemetry.tracing.sampleRate: must be between 0.0 and 1.0",
                "telemetry.tracing.serviceName: must not be empty",
                "telemetry.tracing.otlp.grpc.endpoint: \"collector:4317\" is not an http:// or https:// URL",
                "telemetry.tracing.otlp.grpc.timeout: must be greater than zero",
            ]
        );
        let err = Config::from_yaml(&good.replace("grpc:", "http:"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("telemetry.tracing.otlp.http: unknown field"),
            "{err}"
        );
    }

    #[test]
    fn the_idp_circuit_breaker_is_configurable_and_checked() {
        let c = Config::from_yaml(GOOD).unwrap();
        assert_eq!(c.idp_breaker, crate::outbound::BreakerConfig::default());
        let tuned = format!("{GOOD}idpCircuitBreaker: {{ failures: 5, cooldown: 500ms }}\n");
        let c = Config::from_yaml(&tuned).unwrap();
        assert_eq!(
            (c.idp_breaker.failures, c.idp_breaker.cooldown),
            (5, std::time::Duration::from_millis(500))
        );
        let bad = format!("{GOOD}idpCircuitBreaker: {{ failures: 0, cooldown: 0s }}\n");
        let err = Config::from_yaml(&bad).unwrap_err().to_string();
        assert!(
            err.contains("idpCircuitBreaker.failures: must be at least 1"),
            "{err}"
        );
        assert!(
            err.contains("idpCircuitBreaker.cooldown: must be greater than zero"),
            "{err}"
        );
    }

    #[test]
    fn forward_header_cannot_overwrite_authorization() {
        let bad = GOOD.replace(
            "scopes: [b, a, a]",
            "forwardHeaders: { Authorization: sub }",
        );
        let err = Config::from_yaml(&bad).unwrap_err().to_string();
        assert!(
            err.contains("forwardHeaders.Authorization: cannot be set from a claim"),
            "{err}"
        );
    }
}
