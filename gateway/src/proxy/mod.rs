//! The HTTP side: listeners, graceful shutdown, routing, middlewares, forwarding.

pub mod admin;
mod build;
pub mod caller_body;
pub mod connections;
pub mod cors;
pub mod edge;
pub mod forward;
pub mod middleware;
pub mod path;
mod pipeline;
pub mod pool;
pub mod ratelimit;
pub mod retry;
pub mod rewrite;
pub mod router;
pub mod rule;
mod send;
pub mod transport;
pub mod upgrade;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::Middleware;
use crate::auth::MiddlewareConfig;
use crate::auth::limits::Guards;
use crate::issuer::Issuer;
pub use router::RouteConfig;
use router::Router;

/// Default upper bound on one proxied request: long enough for slow APIs, short enough that a
/// stuck upstream does not pin connections forever.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests with a body up to this size are kept in memory so that they can be replayed once
/// after an upstream 401; larger ones are streamed and not replayed.
const REPLAY_LIMIT: u64 = 64 * 1024;

/// What the proxy is built from: borrowed from the node's validated configuration.
#[derive(Debug, Clone, Copy)]
pub struct ProxySettings<'a> {
    /// Authentication middlewares by name.
    pub middlewares: &'a BTreeMap<String, MiddlewareConfig>,
    /// Traffic middlewares by name (one namespace with the authentication ones).
    pub http_middlewares: &'a BTreeMap<String, middleware::HttpMiddleware>,
    /// Routes (their middleware names exist in `middlewares`).
    pub routes: &'a [RouteConfig],
    /// Upper bound on one proxied request.
    pub request_timeout: Duration,
    /// What the request edge enforces before any middleware runs.
    pub edge: &'a edge::EdgeConfig,
    /// Honour a caller's `traceparent` sampling flag even from peers not trusted.
    pub trust_caller_sampling: bool,
    /// `serversTransports` by name.
    pub servers_transports: &'a BTreeMap<String, Arc<transport::ServersTransport>>,
    /// `tls.options.sniStrict`: a request must be for the name its connection's handshake
    /// named (421 otherwise).
    pub sni_strict: bool,
}

/// Why the proxy could not be built from a validated configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A middleware's HTTP client refused its TLS material.
    #[error("cannot build an HTTP client towards an IdP: {0}")]
    IdpClient(#[from] reqwest::Error),
    /// A servers transport's TLS material was refused.
    #[error("cannot build the TLS client towards upstreams: {0}")]
    UpstreamTls(#[from] rustls::Error),
}

/// The proxy: routes, the upstream client, the timeout, the edge's rules.
pub struct Gateway {
    router: Router,
    issuer: Option<Arc<Issuer>>,
    /// The authentication middlewares by name, with the configuration each was built from (a
    /// rebuild keeps those whose configuration did not change, and their state).
    middlewares: BTreeMap<String, (MiddlewareConfig, Arc<Middleware>)>,
    guards: Guards,
    tunnels: Arc<upgrade::Tunnels>,
    request_timeout: Duration,
    paths: path::PathPolicy,
    forwarded: forward::ForwardedHeaders,
    /// Honour a caller's `traceparent` sampling flag even from peers not trusted.
    trust_caller_sampling: bool,
    sni_strict: bool,
}
