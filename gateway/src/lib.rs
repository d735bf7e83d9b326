//! tokengate: a multi-node API gateway for machine-to-machine OAuth2.
//!
//! # Layout
//!
//! One folder per concern, in layers: a module uses only the modules listed above it, never one
//! below (`tests/layers.rs` checks it). `ARCHITECTURE.md` explains the design.
//!
//! - [`secret`]: secret values that never print, and `env:`/`file:` references.
//! - [`telemetry`]: logging, the access log, metrics and OpenTelemetry tracing.
//! - [`http`]: the body type, the answers the gateway writes, the accept loop with its bounds and
//!   graceful shutdown.
//! - [`outbound`]: calls to IdP endpoints: client building and TLS, the capped exchange,
//!   retries, the circuit breaker.
//! - [`token`]: what a token is: cache keys and the fleet key ring, entries, sealing, the
//!   refresh spec, and the RFC 6749 grant that obtains one.
//! - [`cacheclient`]: the client of the Raft cache service (dialing, authentication, leader
//!   following, conversions), shared by the store, `cachectl` and cache nodes joining a cluster.
//! - [`store`]: the [`store::TokenStore`] contract, its conformance suite, and its backends
//!   (`memory`, `redis`, `raft`).
//! - [`lifecycle`]: the token cache (L1, single flight, fill leases), the refresher and the L1's
//!   sync with the shared store.
//! - [`cachenode`]: the Raft cache service (`gateway cache-node`).
//! - [`auth`]: one module per middleware (`client_credentials`, `introspection`, `jwt`), the
//!   caller's bearer token, claims (with the authorization expressions) and headers.
//! - [`issuer`]: the gateway as an OAuth2 authorization server (client credentials, RFC 7523
//!   workload identity federation, RFC 9068 access tokens, JWKS and RFC 8414 metadata).
//! - [`proxy`]: the request edge, routing, forwarding to upstreams, the admin endpoints.
//! - [`config`]: YAML loaded once and validated into the settings each module above defines,
//!   every error with its key path.
//! - [`node`]: a gateway node assembled from a [`config::Config`].
//! - [`demo`]: `gateway demo`, every flow in one process with an echo upstream.

#![forbid(unsafe_code)]

// Bottom to top: each module uses only those declared before it.
pub mod secret;

pub mod telemetry;

pub mod http;

pub mod outbound;

pub mod token;

pub mod cacheclient;

pub mod store;

pub mod lifecycle;

pub mod cachenode;

pub mod auth;

pub mod issuer;

pub mod proxy;

pub mod config;

pub mod node;

pub mod demo;
