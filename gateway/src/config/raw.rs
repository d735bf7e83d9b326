//! The YAML file exactly as written, before any validation.
//!
//! These structs only describe the *shape* of the file (`deny_unknown_fields` catches typos).
//! Everything that can be wrong in a value (a URL that does not parse, an unknown middleware
//! name, a secret that cannot be resolved) is checked in [`super::validate`], which reports every
//! problem at once; serde itself can only stop at the first shape error.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

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
    /// Named middlewares, referenced by routes.
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

/// `tls`: the proxy listener speaks TLS (Traefik's `tls.certificates` and `tls.options`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawListenerTls {
    /// Served certificates; the first is the default.
    pub certificates: Vec<RawCertificate>,
    #[serde(default)]
    pub options: RawTlsOptions,
    /// How often the files are looked at for changes.
    #[serde(default, with = "humantime_serde")]
    pub watch_interval: Option<Duration>,
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawCertificate {
    pub cert_file: String,
    pub key_file: String,
}

/// `tls.options` (Traefik's TLS options).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawTlsOptions {
    /// `VersionTLS12` (default) or `VersionTLS13`.
    #[serde(default)]
    pub min_version: Option<String>,
    /// Refuse handshakes that name no served host.
    #[serde(default)]
    pub sni_strict: bool,
    #[serde(default)]
    pub client_auth: Option<RawClientAuth>,
}

/// `tls.options.clientAuth`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawClientAuth {
    /// PEM CA bundles client certificates must chain to.
    #[serde(default)]
    pub ca_files: Vec<String>,
    /// `NoClientCert`, `VerifyClientCertIfGiven` or `RequireAndVerifyClientCert` (default when
    /// `caFiles` is set).
    #[serde(default)]
    pub client_auth_type: Option<String>,
    /// PEM certificate revocation lists of that CA.
    #[serde(default)]
    pub crl_files: Vec<String>,
}

/// A `serversTransports` entry (Traefik's `ServersTransport`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawServersTransport {
    /// SNI and verified name; default: the upstream URL's host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// PEM CA bundles trusted in addition to the system's roots.
    #[serde(default, rename = "rootCAs")]
    pub root_cas: Vec<String>,
    /// The client certificate presented to upstreams (one).
    #[serde(default)]
    pub certificates: Vec<RawCertificate>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
    #[serde(default, rename = "disableHTTP2")]
    pub disable_http2: bool,
    #[serde(default)]
    pub forwarding_timeouts: Option<RawForwardingTimeouts>,
}

/// `manifests`: a directory of Traefik `Middleware` and `IngressRoute` documents.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawManifests {
    /// Relative to the configuration file's directory unless absolute.
    pub directory: String,
    /// `namespace/name:port` → URL, for services not reached at their cluster DNS name.
    #[serde(default)]
    pub services: BTreeMap<String, String>,
    /// Routes may use other namespaces' middlewares and services (Traefik's option).
    #[serde(default)]
    pub allow_cross_namespace: bool,
    /// Documents may use `env:` and `file:` references and TLS files of the gateway's host.
    #[serde(default)]
    pub allow_local_secrets: bool,
}

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

/// `paths`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawPaths {
    #[serde(default)]
    pub normalize: Option<bool>,
    #[serde(default)]
    pub merge_slashes: Option<bool>,
}

/// `encodedCharacters` (Traefik's names), top level or per route.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawEncodedCharacters {
    #[serde(default)]
    pub allow_encoded_slash: Option<bool>,
    #[serde(default)]
    pub allow_encoded_back_slash: Option<bool>,
    #[serde(default)]
    pub allow_encoded_null_character: Option<bool>,
    #[serde(default)]
    pub allow_encoded_semicolon: Option<bool>,
    #[serde(default)]
    pub allow_encoded_percent: Option<bool>,
    #[serde(default)]
    pub allow_encoded_question_mark: Option<bool>,
    #[serde(default)]
    pub allow_encoded_hash: Option<bool>,
}

/// `forwardedHeaders` (Traefik's names).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawForwardedHeaders {
    /// Peers (IPs or CIDRs) whose forwarding headers are kept and extended.
    #[serde(default, rename = "trustedIPs")]
    pub trusted_ips: Vec<String>,
    /// Trust every peer. For tests behind a proxy you control only.
    #[serde(default)]
    pub insecure: bool,
}

/// `transport`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawTransport {
    #[serde(default)]
    pub max_connections: Option<usize>,
    #[serde(default)]
    pub max_header_bytes: Option<usize>,
    #[serde(default)]
    pub max_headers: Option<usize>,
    #[serde(default)]
    pub responding_timeouts: RawRespondingTimeouts,
    /// Upgraded connections (WebSocket).
    #[serde(default)]
    pub upgrades: RawUpgrades,
}

/// `transport.upgrades`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawUpgrades {
    #[serde(default)]
    pub max_connections: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub max_lifetime: Option<Duration>,
}

/// `transport.respondingTimeouts`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRespondingTimeouts {
    #[serde(default, with = "humantime_serde")]
    pub read_header_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
}

/// `http2`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawHttp2 {
    #[serde(default)]
    pub max_concurrent_streams: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub keep_alive_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub keep_alive_timeout: Option<Duration>,
}

/// `limits`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawCallerLimits {
    #[serde(default)]
    pub client_id_max_length: Option<usize>,
    #[serde(default)]
    pub client_secret_max_length: Option<usize>,
    #[serde(default)]
    pub token_max_length: Option<usize>,
}

/// `idpMissBudget`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawMissBudget {
    #[serde(default)]
    pub per_client_id: Option<RawBucket>,
    #[serde(default)]
    pub per_address: Option<RawBucket>,
    /// IPv6 callers share buckets per prefix of this many bits (Traefik's `ipv6Subnet`).
    #[serde(default)]
    pub ipv6_subnet: Option<u8>,
}

/// A token bucket (Traefik `rateLimit` names); `average: 0` turns it off.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawBucket {
    pub average: u32,
    #[serde(default, with = "humantime_serde")]
    pub period: Option<Duration>,
    #[serde(default)]
    pub burst: Option<u32>,
}

/// The built-in token issuer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawIssuer {
    /// Issuer identifier (`iss`): the gateway's public origin, e.g. `https://gw.example.com`.
    pub url: String,
    /// The key access tokens are signed with. Omitted: an ES256 key generated at start.
    #[serde(default)]
    pub signing_key: Option<RawSigningKey>,
    /// PEM files of retired keys: published in the JWKS, never used to sign.
    #[serde(default)]
    pub previous_signing_keys: Vec<String>,
    /// `aud` of tokens whose client names none.
    #[serde(default)]
    pub audience: Option<String>,
    /// Lifetime of tokens whose client names none.
    #[serde(default, with = "humantime_serde")]
    pub token_lifetime: Option<Duration>,
    /// Clock skew tolerated on client assertions.
    #[serde(default, with = "humantime_serde")]
    pub leeway: Option<Duration>,
    /// Registered clients by client id.
    #[serde(default)]
    pub clients: BTreeMap<String, RawIssuerClient>,
    /// Identity providers whose tokens are accepted as client assertions (RFC 7523).
    #[serde(default)]
    pub trusted_issuers: Vec<RawTrustedIssuer>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawSigningKey {
    /// PKCS#8 (or PKCS#1 for RSA) PEM private key. Omitted: generated at start.
    #[serde(default)]
    pub file: Option<String>,
    /// `ES256` (default), `ES384`, `RS256`, `PS256`... (must fit the key).
    #[serde(default)]
    pub algorithm: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawIssuerClient {
    /// PHC-format argon2 hash of the client secret (`gateway hash-secret` prints one).
    #[serde(default)]
    pub secret_hash: Option<String>,
    /// Secret reference; hashed at load, never kept in clear.
    #[serde(default)]
    pub secret: Option<String>,
    /// Scopes the client may ask for; all of them when it asks for none.
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub audience: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub token_lifetime: Option<Duration>,
    /// Extra claims put in every token of this client.
    #[serde(default)]
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// Workload identities (`iss` + `sub` of a trusted issuer's token) that act as this client.
    #[serde(default)]
    pub federated_identities: Vec<RawFederatedIdentity>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawFederatedIdentity {
    pub issuer: String,
    pub subject: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawTrustedIssuer {
    /// The `iss` of the assertions.
    pub issuer: String,
    /// Where its keys are. Without it and without `keys`: OpenID Connect discovery.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// An inline JWKS document (`{"keys": [...]}`).
    #[serde(default)]
    pub keys: Option<serde_json::Value>,
    /// Accepted `aud` values; default: this issuer's URL and its token endpoint.
    #[serde(default)]
    pub audience: Option<StringOrList>,
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    #[serde(default)]
    pub client_config: Option<RawHttpClient>,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRaftStore {
    /// `host:port` of cache nodes (any subset; the leader is found from them).
    pub endpoints: Vec<String>,
    /// Upper bound on one operation, leader changes included.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// TLS towards the cache nodes.
    #[serde(default)]
    pub tls: Option<RawTls>,
    /// Secret reference to the gateway role's token (the nodes' `--gateway-token`).
    #[serde(default)]
    pub token: Option<String>,
    /// Send the token without TLS to nodes that are not on this host.
    #[serde(default)]
    pub allow_plaintext: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRedisStore {
    /// `host:port` of each server (Cluster: seed nodes; Sentinel: the sentinels).
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub username: Option<String>,
    /// Secret reference.
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub database: Option<i64>,
    /// Prefix of every key and channel (default `tokengate`).
    #[serde(default)]
    pub key_prefix: Option<String>,
    /// Redis Cluster.
    #[serde(default)]
    pub cluster: bool,
    /// Redis Sentinel.
    #[serde(default)]
    pub sentinel: Option<RawSentinel>,
    /// Connections per node.
    #[serde(default)]
    pub pool_size: Option<usize>,
    /// Upper bound on one Redis operation, connecting included.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// TLS towards Redis (and, with Sentinel, towards the servers it names).
    #[serde(default)]
    pub tls: Option<RawTls>,
    /// Send the password without TLS to servers that are not on this host.
    #[serde(default)]
    pub allow_plaintext: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawTls {
    /// PEM CA bundle to trust instead of the system roots.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// PEM client certificate (mutual TLS).
    #[serde(default)]
    pub cert_file: Option<String>,
    /// PEM private key of the client certificate.
    #[serde(default)]
    pub key_file: Option<String>,
    /// Skip server certificate verification. For tests only.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawSentinel {
    /// The monitored master's name.
    pub master_set: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawMemoryStore {}

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

/// A named middleware: exactly one kind per entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawMiddleware {
    #[serde(default)]
    pub client_credentials: Option<RawClientCredentials>,
    #[serde(default)]
    pub introspection: Option<RawIntrospection>,
    #[serde(default)]
    pub jwt: Option<RawJwt>,
    #[serde(default)]
    pub client_certificate: Option<RawClientCertificate>,
    #[serde(default)]
    pub strip_prefix: Option<RawStripPrefix>,
    #[serde(default)]
    pub add_prefix: Option<RawAddPrefix>,
    #[serde(default)]
    pub replace_path: Option<RawReplacePath>,
    #[serde(default)]
    pub replace_path_regex: Option<RawReplacePathRegex>,
    #[serde(default)]
    pub headers: Option<RawHeaders>,
    #[serde(default)]
    pub retry: Option<RawRetry>,
    #[serde(default)]
    pub rate_limit: Option<RawRateLimit>,
}

/// `rateLimit` (Traefik's, plus `sourceCriterion.clientId` and `failureModeDeny`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRateLimit {
    pub average: u32,
    #[serde(default, with = "humantime_serde")]
    pub period: Option<Duration>,
    #[serde(default)]
    pub burst: Option<u32>,
    #[serde(default)]
    pub source_criterion: Option<RawSourceCriterion>,
    #[serde(default)]
    pub failure_mode_deny: bool,
}

/// `rateLimit.sourceCriterion`: one of these.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawSourceCriterion {
    /// The caller's address (no options: `forwardedHeaders` says whom to believe).
    #[serde(default)]
    pub ip_strategy: Option<RawIpStrategy>,
    #[serde(default)]
    pub request_header_name: Option<String>,
    #[serde(default)]
    pub request_host: bool,
    #[serde(default)]
    pub client_id: bool,
}

/// `ipStrategy`: the caller's address as `forwardedHeaders.trustedIPs` resolves it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIpStrategy {}

/// One weighted server.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawServer {
    pub url: String,
    #[serde(default)]
    pub weight: Option<u32>,
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

/// `retry` (Traefik's, plus `budgetPercent`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRetry {
    pub attempts: u32,
    #[serde(default, with = "humantime_serde")]
    pub initial_interval: Option<Duration>,
    /// Statuses and ranges (`"503"`, `"500-599"`).
    #[serde(default)]
    pub status: Vec<String>,
    #[serde(default)]
    pub disable_retry_on_network_error: bool,
    #[serde(default)]
    pub budget_percent: Option<u32>,
}

/// `stripPrefix` (Traefik's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawStripPrefix {
    /// Prefixes, the first that matches is removed.
    pub prefixes: Vec<String>,
}

/// `addPrefix` (Traefik's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawAddPrefix {
    /// Put in front of the path.
    pub prefix: String,
}

/// `replacePath` (Traefik's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawReplacePath {
    /// The new path.
    pub path: String,
}

/// `replacePathRegex` (Traefik's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawReplacePathRegex {
    /// Matched against the path.
    pub regex: String,
    /// What each match becomes (`$1`, `${name}`).
    pub replacement: String,
}

/// `headers` (Traefik's custom headers and CORS options, plus `add*Headers`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawHeaders {
    /// Set on the request; an empty value removes the field.
    #[serde(default)]
    pub custom_request_headers: BTreeMap<String, String>,
    /// Set on the answer; an empty value removes the field.
    #[serde(default)]
    pub custom_response_headers: BTreeMap<String, String>,
    /// Added to the request, keeping fields of the same name.
    #[serde(default)]
    pub add_request_headers: BTreeMap<String, String>,
    /// Added to the answer, keeping fields of the same name.
    #[serde(default)]
    pub add_response_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub access_control_allow_origin_list: Vec<String>,
    #[serde(default)]
    pub access_control_allow_origin_list_regex: Vec<String>,
    #[serde(default)]
    pub access_control_allow_methods: Vec<String>,
    #[serde(default)]
    pub access_control_allow_headers: Vec<String>,
    #[serde(default)]
    pub access_control_expose_headers: Vec<String>,
    #[serde(default)]
    pub access_control_allow_credentials: bool,
    /// Seconds.
    #[serde(default)]
    pub access_control_max_age: Option<u64>,
    #[serde(default)]
    pub add_vary_header: Option<bool>,
}

/// `clientCertificate`: authorisation by the caller's verified TLS client certificate.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawClientCertificate {
    /// Expression over the certificate's claims (`subject.commonName`, `sans.uri`, ...).
    #[serde(default)]
    pub claims: Option<String>,
    /// Header name -> certificate claim.
    #[serde(default)]
    pub forward_headers: BTreeMap<String, String>,
    /// Claim naming the caller in the access log.
    #[serde(default)]
    pub username_claim: Option<String>,
}

/// Where the caller's token is looked for: header, then query, then cookie.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawTokenSource {
    #[serde(default)]
    pub header: Option<String>,
    /// Scheme expected before the token in `header` (e.g. `Bearer`); none: the whole value.
    #[serde(default)]
    pub header_auth_scheme: Option<String>,
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub cookie: Option<String>,
}

/// Traefik Hub's `oAuthIntrospection` options (RFC 7662).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawIntrospection {
    #[serde(default)]
    pub token_source: Option<RawTokenSource>,
    pub client_config: RawIntrospectionClient,
    /// Keep the caller's token on the upstream request (default: removed).
    #[serde(default)]
    pub forward_authorization: bool,
    /// Claim naming the user in the access log.
    #[serde(default)]
    pub username_claim: Option<String>,
    /// Header name -> claim; the header always replaces a caller-sent one.
    #[serde(default)]
    pub forward_headers: BTreeMap<String, String>,
    /// Authorization expression the claims must satisfy (403 otherwise).
    #[serde(default)]
    pub claims: Option<String>,
    /// Upper bound on how long an active result is reused (never past the token's `exp`).
    #[serde(default, with = "humantime_serde")]
    pub max_cache_ttl: Option<Duration>,
    /// How long an inactive result is remembered.
    #[serde(default, with = "humantime_serde")]
    pub inactive_cache_ttl: Option<Duration>,
    /// `Bearer` realm announced on 401.
    #[serde(default)]
    pub realm: Option<String>,
}

/// How the gateway reaches the introspection endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawIntrospectionClient {
    pub url: String,
    #[serde(default)]
    pub auth: Option<RawEndpointAuth>,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// RFC 7662 `token_type_hint`.
    #[serde(default)]
    pub token_type_hint: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(default)]
    pub tls: Option<RawTls>,
}

/// How the gateway authenticates at an endpoint it calls.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawEndpointAuth {
    /// `Basic` (client_secret_basic), `Post` (client_secret_post) or `Bearer`.
    pub kind: String,
    #[serde(default)]
    pub client_id: Option<String>,
    /// Secret reference (Basic, Post).
    #[serde(default)]
    pub client_secret: Option<String>,
    /// Secret reference (Bearer).
    #[serde(default)]
    pub token: Option<String>,
}

/// Local JWT validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawJwt {
    #[serde(default)]
    pub token_source: Option<RawTokenSource>,
    /// Where the keys are. Without it, found by OIDC discovery from `issuer`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Required `iss`; also the discovery base when `jwksUrl` is absent.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Accepted audiences (`aud` must contain one).
    #[serde(default)]
    pub audience: Option<StringOrList>,
    /// Accepted signature algorithms.
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    /// Clock skew tolerated on `exp`, `nbf`, `iat`.
    #[serde(default, with = "humantime_serde")]
    pub leeway: Option<Duration>,
    /// Keep the caller's token on the upstream request (default: removed).
    #[serde(default)]
    pub forward_authorization: bool,
    /// Claim naming the user in the access log.
    #[serde(default)]
    pub username_claim: Option<String>,
    /// Header name -> claim; the header always replaces a caller-sent one.
    #[serde(default)]
    pub forward_headers: BTreeMap<String, String>,
    /// Authorization expression the claims must satisfy (403 otherwise).
    #[serde(default)]
    pub claims: Option<String>,
    /// How old the cached key set may get before it is fetched again.
    #[serde(default, with = "humantime_serde")]
    pub jwks_refresh_interval: Option<Duration>,
    /// Least time between two fetches caused by unknown `kid`s.
    #[serde(default, with = "humantime_serde")]
    pub jwks_min_refresh_interval: Option<Duration>,
    /// A key set not refreshed for this long stops verifying (503).
    #[serde(default, with = "humantime_serde")]
    pub jwks_max_staleness: Option<Duration>,
    /// Accept tokens of any `iss` (no `issuer` configured).
    #[serde(default)]
    pub allow_any_issuer: bool,
    /// Accept tokens of any `aud` (no `audience` configured).
    #[serde(default)]
    pub allow_any_audience: bool,
    #[serde(default)]
    pub client_config: Option<RawHttpClient>,
    #[serde(default)]
    pub realm: Option<String>,
    /// Validate tokens of this gateway's own `issuer` (keys, `iss` and `typ: at+jwt` implied;
    /// the token is also accepted in `X-Tokengate-Auth`).
    #[serde(default)]
    pub gateway_issuer: bool,
}

/// HTTP client options for fetching keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawHttpClient {
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(default)]
    pub tls: Option<RawTls>,
}

/// Traefik Hub's `oAuthClientCredentials` options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawClientCredentials {
    /// The IdP token endpoint.
    pub url: String,
    /// Gateway level: the gateway's own client id. Omitted: application level.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Secret reference for `clientId`.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// `client_secret_basic` (default) or `client_secret_post`.
    #[serde(default)]
    pub auth_method: Option<String>,
    #[serde(default)]
    pub audience: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Extra form parameters sent to the token endpoint (e.g. `resource`).
    #[serde(default)]
    pub endpoint_params: BTreeMap<String, StringOrList>,
    /// Claim naming the user in the access log.
    #[serde(default)]
    pub username_claim: Option<String>,
    /// Header name -> claim; the header always replaces a caller-sent one.
    #[serde(default)]
    pub forward_headers: BTreeMap<String, String>,
    /// Authorization expression the claims must satisfy (403 otherwise).
    #[serde(default)]
    pub claims: Option<String>,
    /// Lifetime assumed when the IdP sends neither `expires_in` nor a JWT `exp`.
    #[serde(default, with = "humantime_serde")]
    pub default_token_lifetime: Option<Duration>,
    /// `Basic` realm announced on 401.
    #[serde(default)]
    pub realm: Option<String>,
    /// How long an `invalid_client` answer is remembered.
    #[serde(default, with = "humantime_serde")]
    pub negative_cache_ttl: Option<Duration>,
    /// Tokens younger than this are kept when an upstream answers 401 to them.
    #[serde(default, with = "humantime_serde")]
    pub rejected_token_min_age: Option<Duration>,
    /// Whether a request with a non-idempotent method is sent again after an upstream 401.
    #[serde(default)]
    pub replay_non_idempotent: bool,
    #[serde(default)]
    pub client_config: RawClientConfig,
}

/// HTTP client options towards the IdP.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawClientConfig {
    /// Timeout of one attempt.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Retries after the first attempt, on transport errors, 5xx and 429 only.
    #[serde(default)]
    pub retries: Option<u32>,
    /// TLS towards the token endpoint.
    #[serde(default)]
    pub tls: Option<RawTls>,
}

/// `endpointParams` values may be a string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StringOrList {
    One(String),
    Many(Vec<String>),
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
