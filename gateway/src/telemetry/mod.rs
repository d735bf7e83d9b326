//! Logging: `tracing` to stdout, as text or JSON, and one access-log line per request.
//!
//! Nothing logged here or elsewhere carries a token or a secret: the access log records the
//! path without its query string (queries may carry credentials) and never a header value.

pub mod metrics;

use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, StatusCode};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. `RUST_LOG`, when set, overrides the configured level.
pub fn init(cfg: &LogConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(ansi);
    // A second call (tests embedding several nodes) keeps the first subscriber.
    let _ = match cfg.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// The access-log record of one request, filled in as the request progresses.
pub struct AccessLog {
    method: http::Method,
    path: String,
    client: SocketAddr,
    /// The matched route.
    pub route: Option<String>,
    /// The user named by a middleware's `usernameClaim`.
    pub user: Option<String>,
}

impl AccessLog {
    /// Starts the record for `req`.
    pub fn new<B>(req: &Request<B>, client: SocketAddr) -> Self {
        Self {
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            client,
            route: None,
            user: None,
        }
    }

    /// Writes the line.
    pub fn finish(self, status: StatusCode, latency: Duration) {
        metrics::metrics().request(
            self.route.as_deref().unwrap_or("none"),
            status.as_u16(),
            latency.as_secs_f64(),
        );
        tracing::info!(
            target: "tokengate::access",
            method = %self.method,
            path = %self.path,
            status = status.as_u16(),
            latency_ms = latency.as_secs_f64() * 1000.0,
            route = self.route.as_deref().unwrap_or("-"),
            user = self.user.as_deref().unwrap_or("-"),
            client = %self.client.ip(),
        );
    }
}
