//! Configuration: YAML is read once, parsed into typed values, and validated before any port is
//! bound. The request path never sees a raw configuration string.
//!
//! Loading happens in two stages. The `Raw…` structs describe the file's shape, each section's
//! at the end of the file that reads it; serde stops at the first shape error and we report it
//! with its key path. Each section's reader then checks every value and records *all* problems
//! ([`issues`]), so one run of `gateway check-config` shows everything to fix; `validate` reads
//! the top level and calls the sections.

mod edge;
pub mod issuer;
mod issues;
pub mod manifests;
pub mod middleware;
mod route;
mod store;
mod tls;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use store::read_pem;

use crate::auth::MiddlewareConfig;
use crate::config::validate::RawConfig;
use crate::http::tls::ListenerTls;
use crate::issuer::IssuerConfig;
use crate::lifecycle::RefreshConfig;
use crate::outbound::BreakerConfig;
use crate::proxy::edge::EdgeConfig;
use crate::proxy::middleware::HttpMiddleware;
use crate::proxy::transport::ServersTransport;
use crate::proxy::{ProxySettings, RouteConfig};
use crate::secret::Secret;
use crate::store::StoreConfig;
use crate::telemetry::{LogConfig, TracingConfig};
use serde::Deserialize;

/// A fleet key in a file, for tests of shared-store configurations: the file (kept while the
/// test runs) and the `fleetKey:` line naming it.
#[cfg(test)]
pub(crate) fn test_fleet_key() -> (tempfile::NamedTempFile, String) {
    let file = tempfile::NamedTempFile::new().expect("a temporary file");
    std::fs::write(file.path(), "0123456789abcdef0123456789abcdef").expect("written");
    let line = format!("fleetKey: file:{}", file.path().display());
    (file, line)
}

/// Default drain time on shutdown; matches Kubernetes' default termination grace period.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// A validated gateway configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The proxy listener.
    pub listen: SocketAddr,
    /// The admin listener (`/healthz`, `/readyz`, `/metrics`, `/config`).
    pub admin_listen: SocketAddr,
    /// The bearer token `/metrics` and `/config` need (`admin.token`); the probes need none.
    pub admin_token: Option<Secret>,
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
    pub idp_breaker: BreakerConfig,
    /// Span export (`telemetry.tracing`); `None` leaves it to the `OTEL_*` environment.
    pub tracing: Option<TracingConfig>,
    /// Authentication middlewares by name.
    pub middlewares: BTreeMap<String, MiddlewareConfig>,
    /// Traffic middlewares by name (one namespace with the authentication ones).
    pub http_middlewares: BTreeMap<String, HttpMiddleware>,
    /// Routes in file order (matching is by specificity, not order).
    pub routes: Vec<RouteConfig>,
    /// The built-in token issuer, if enabled.
    pub issuer: Option<IssuerConfig>,
    /// What the request edge enforces before any middleware runs.
    pub edge: EdgeConfig,
    /// TLS on the proxy listener; `None`: plain HTTP.
    pub tls: Option<ListenerTls>,
    /// `serversTransports` by name.
    pub servers_transports: BTreeMap<String, Arc<ServersTransport>>,
    /// What is allowed but discouraged (inline secrets), as `key.path: message`.
    pub warnings: Vec<String>,
    /// The files and directories the configuration reads besides itself (secrets, manifests,
    /// TLS material), for a reload to watch.
    pub sources: Vec<PathBuf>,
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
    /// The proxy's part of the configuration.
    pub fn proxy(&self) -> ProxySettings<'_> {
        ProxySettings {
            middlewares: &self.middlewares,
            http_middlewares: &self.http_middlewares,
            routes: &self.routes,
            request_timeout: self.request_timeout,
            edge: &self.edge,
            trust_caller_sampling: self
                .tracing
                .as_ref()
                .is_some_and(|t| t.trust_caller_sampling),
            servers_transports: &self.servers_transports,
            sni_strict: self.tls.as_ref().is_some_and(|t| t.sni_strict),
        }
    }

    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&read(path)?, true, Some(path))
    }

    /// [`Config::load`] without reading any secret: references are checked, not resolved
    /// (`check-config --no-secrets`, for pipelines that do not hold the secrets).
    pub fn check_without_secrets(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&read(path)?, false, Some(path))
    }

    /// Parses and validates configuration text.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        Self::parse(text, true, None)
    }

    /// The native configuration a file amounts to once its `manifests` are converted, as YAML
    /// (`gateway convert`), with a comment listing the documents skipped.
    pub fn convert(path: &Path) -> Result<String, ConfigError> {
        let text = read(path)?;
        let (root, skipped) = match with_manifests(&text, Some(path))? {
            Some((root, _, skipped, _)) => (root, skipped),
            None => (serde_yaml_ng::from_str(&text).map_err(shape)?, Vec::new()),
        };
        let mut out = String::new();
        for s in skipped {
            out.push_str(&format!("# skipped (not a Traefik document): {s}\n"));
        }
        out.push_str(&serde_yaml_ng::to_string(&root).map_err(shape)?);
        Ok(out)
    }

    fn parse(text: &str, resolve: bool, file: Option<&Path>) -> Result<Self, ConfigError> {
        let (raw, manifests, origins): (RawConfig, _, _) = match with_manifests(text, file)? {
            Some((root, directory, _, origins)) => (
                serde_path_to_error::deserialize(serde_yaml_ng::Value::Mapping(root))
                    .map_err(|e| as_written(path_error(e), &origins))?,
                Some(directory),
                origins,
            ),
            None => (
                serde_path_to_error::deserialize(serde_yaml_ng::Deserializer::from_str(text))
                    .map_err(path_error)?,
                None,
                Vec::new(),
            ),
        };
        let mut config = validate::validate(raw, resolve)
            .map_err(|issues| as_written(ConfigError::Invalid(issues), &origins))?;
        config.sources.extend(manifests);
        Ok(config)
    }
}

/// `e` with the key paths of converted manifest middlewares named as the manifest wrote them:
/// the file, the document and the field.
fn as_written(e: ConfigError, origins: &[(String, String)]) -> ConfigError {
    let written = |path: String| manifests::Converted::written(origins, &path).unwrap_or(path);
    match e {
        ConfigError::Shape { path, message } => ConfigError::Shape {
            path: written(path),
            message,
        },
        ConfigError::Invalid(issues) => ConfigError::Invalid(
            issues
                .into_iter()
                .map(|i| ConfigIssue {
                    path: written(i.path),
                    message: i.message,
                })
                .collect(),
        ),
        other => other,
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn shape(e: serde_yaml_ng::Error) -> ConfigError {
    ConfigError::Shape {
        path: ".".into(),
        message: e.to_string(),
    }
}

fn path_error(e: serde_path_to_error::Error<serde_yaml_ng::Error>) -> ConfigError {
    let path = e.path().to_string();
    let message = e.into_inner().to_string();
    // The YAML library prefixes its own (shorter) path; ours names the exact key.
    let message = match message.split_once(": ") {
        Some((own, rest)) if path.starts_with(own) => rest.to_owned(),
        _ => message,
    };
    ConfigError::Shape { path, message }
}

/// What a configuration naming `manifests` amounts to: its root with the manifests converted
/// and merged in (the `manifests` key gone), their directory, and the documents skipped.
type WithManifests = (
    serde_yaml_ng::Mapping,
    PathBuf,
    Vec<String>,
    Vec<(String, String)>,
);

/// A configuration naming `manifests`, converted; `None` without `manifests`.
fn with_manifests(text: &str, file: Option<&Path>) -> Result<Option<WithManifests>, ConfigError> {
    let root: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(shape)?;
    let serde_yaml_ng::Value::Mapping(mut root) = root else {
        return Ok(None);
    };
    let Some(section) = root.remove("manifests") else {
        return Ok(None);
    };
    let raw: RawManifests = serde_path_to_error::deserialize(section).map_err(|e| {
        let ConfigError::Shape { path, message } = path_error(e) else {
            unreachable!("path_error gives shapes")
        };
        ConfigError::Shape {
            path: format!("manifests.{path}"),
            message,
        }
    })?;
    let source = manifests::ManifestSource {
        directory: manifests::resolve_directory(file, &raw.directory),
        services: raw.services,
        allow_cross_namespace: raw.allow_cross_namespace,
        allow_local_secrets: raw.allow_local_secrets,
    };
    let issues = |errors: Vec<String>| {
        ConfigError::Invalid(
            errors
                .into_iter()
                .map(|message| ConfigIssue {
                    path: "manifests".into(),
                    message,
                })
                .collect(),
        )
    };
    let mut converted = manifests::convert(&source).map_err(issues)?;
    let skipped = converted.skipped.clone();
    let origins = std::mem::take(&mut converted.origins);
    manifests::merge(&mut root, converted).map_err(issues)?;
    Ok(Some((root, source.directory, skipped, origins)))
}

// The section as written in the file: its shape only (`deny_unknown_fields` catches typos);
// its values are checked where they are used.

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

/// `endpointParams` values may be a string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StringOrList {
    One(String),
    Many(Vec<String>),
}
