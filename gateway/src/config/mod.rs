//! Configuration: YAML is read once, parsed into typed values, and validated before any port is
//! bound. The request path never sees a raw configuration string.
//!
//! Loading happens in two stages. [`raw`] describes the file's shape; serde stops at the first
//! shape error and we report it with its key path. [`validate`] then checks every value and
//! collects *all* problems, so one run of `gateway check-config` shows everything to fix.

mod edge;
pub mod issuer;
mod middleware;
mod raw;
pub mod secret;
mod store;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use url::Url;

pub use edge::EdgeConfig;
pub use issuer::{IssuerClient, IssuerConfig};
pub use middleware::{
    ClaimsPolicy, ClientCredentialsConfig, EndpointAuth, GATEWAY_TOKEN_HEADER, HttpClientConfig,
    HttpTls, IntrospectionConfig, JwksSource, JwtConfig, MiddlewareConfig, TokenSource,
};
pub use secret::Secret;
pub use store::{
    DEFAULT_RAFT_TIMEOUT, DEFAULT_REDIS_POOL_SIZE, DEFAULT_REDIS_TIMEOUT, RaftStoreConfig,
    RedisConfig, RedisTopology, StoreConfig, StoreTls, read_pem,
};

/// Default upper bound on one proxied request: long enough for slow APIs, short enough that a
/// stuck upstream does not pin connections forever.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default drain time on shutdown; matches Kubernetes' default termination grace period.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// The refresher looks for due entries this often; a fraction of any realistic token lifetime.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// Entries nobody used for this long are left to expire instead of being refreshed forever.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Entries a node keeps in memory at most (its L1, and the memory store): a million tokens of
/// 900 bytes is about 2 GiB.
pub const DEFAULT_MAX_ENTRIES: usize = 1_000_000;
/// Refresh-leader lease lifetime: a dead leader is replaced within this time.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// Lifetime assumed when the IdP states none (neither `expires_in` nor a JWT `exp`).
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(300);
/// How long an `invalid_client` answer is remembered, so a flood of bad secrets is not a flood
/// at the IdP, while a fixed client registration is picked up quickly.
pub const DEFAULT_NEGATIVE_CACHE_TTL: Duration = Duration::from_secs(10);
/// An upstream 401 evicts a token only once it is this old: a token that was refused within
/// seconds of being issued is refused for the upstream's own reasons, and fetching another
/// would only turn anonymous traffic into IdP load (at most two fetches a minute per credential).
pub const DEFAULT_REJECTED_TOKEN_MIN_AGE: Duration = Duration::from_secs(30);
/// One IdP attempt; IdPs answer token requests in milliseconds when healthy.
pub const DEFAULT_IDP_TIMEOUT: Duration = Duration::from_secs(5);
/// Retries after the first IdP attempt (transport errors, 5xx and 429 only).
pub const DEFAULT_IDP_RETRIES: u32 = 2;

/// A validated gateway configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The proxy listener.
    pub listen: SocketAddr,
    /// The admin listener (`/healthz`, `/readyz`).
    pub admin_listen: SocketAddr,
    /// The shared token store.
    pub store: StoreConfig,
    /// The fleet key; `None` means a random per-process key (memory store only: shared stores
    /// require every node to hold the same key).
    pub fleet_key: Option<Secret>,
    /// Fleet keys being rotated out, newest first: they still open entries sealed under them.
    pub previous_fleet_keys: Vec<Secret>,
    /// Background refresher settings.
    pub refresh: RefreshConfig,
    /// Upper bound on one proxied request.
    pub request_timeout: Duration,
    /// Drain time on shutdown.
    pub shutdown_timeout: Duration,
    /// Logging.
    pub log: LogConfig,
    /// The circuit breaker in front of each IdP endpoint.
    pub idp_breaker: crate::token::BreakerConfig,
    /// Span export (`telemetry.tracing`); `None` leaves it to the `OTEL_*` environment.
    pub tracing: Option<crate::telemetry::TracingConfig>,
    /// Middlewares by name.
    pub middlewares: BTreeMap<String, MiddlewareConfig>,
    /// Routes in file order (matching is by specificity, not order).
    pub routes: Vec<RouteConfig>,
    /// The built-in token issuer, if enabled.
    pub issuer: Option<IssuerConfig>,
    /// What the request edge enforces before any middleware runs.
    pub edge: EdgeConfig,
}

/// Refresher settings (the README's *How a token is found*, step 4).
#[derive(Debug, Clone)]
pub struct RefreshConfig {
    /// How often due entries are looked for.
    pub interval: Duration,
    /// Entries unused this long are not refreshed.
    pub idle_timeout: Duration,
    /// Refresh-leader lease lifetime.
    pub lease_ttl: Duration,
    /// Entries a node keeps in memory at most (L1, and the memory store); past it the least
    /// recently used go first.
    pub max_entries: usize,
}

/// Log output options.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Text for people, JSON for log pipelines.
    pub format: LogFormat,
    /// A `tracing` filter directive.
    pub level: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

/// A route, validated.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Name used in logs.
    pub name: String,
    /// Lower-cased host without port; `None` matches any host.
    pub host: Option<String>,
    /// Path prefix; `/` when omitted.
    pub path_prefix: String,
    /// Middleware names, checked to exist.
    pub middlewares: Vec<String>,
    /// Upstream base URLs, round robin.
    pub upstreams: Vec<Url>,
    /// Ambiguous encoded characters allowed in this route's paths.
    pub encoded_characters: crate::proxy::path::EncodedCharacters,
}

/// One problem with a configuration value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted key path, e.g. `middlewares.app-creds.clientCredentials.url`.
    pub path: String,
    /// What is wrong, never containing a secret.
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML does not have the expected shape (first error only: serde stops there).
    #[error("{path}: {message}")]
    Shape {
        /// Key path of the offending value (`.` for the document).
        path: String,
        /// serde's description, with line and column.
        message: String,
    },
    /// Values are wrong; every problem found is listed.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigIssue>),
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text)
    }

    /// Parses and validates configuration text.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let raw: raw::RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let message = e.into_inner().to_string();
            // The YAML library prefixes its own (shorter) path; ours names the exact key.
            let message = match message.split_once(": ") {
                Some((own, rest)) if path.starts_with(own) => rest.to_owned(),
                _ => message,
            };
            ConfigError::Shape { path, message }
        })?;
        validate::validate(raw).map_err(ConfigError::Invalid)
    }
}
