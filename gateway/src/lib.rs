//! tokengate: a multi-node API gateway for machine-to-machine OAuth2.
//!
//! # Layout
//!
//! One folder per concern, so a reader knows which room a line lives in:
//!
//! - [`config`]: YAML loaded once, validated into typed values, every error with its key path.
//! - [`proxy`]: the hyper server, routing, forwarding to upstreams, admin endpoints, shutdown.
//! - [`auth`]: one module per middleware (`client_credentials`, `introspection`, `jwt`), the
//!   caller's bearer token, claims (with the authorization expressions) and headers.
//! - [`token`]: cache keys and the fleet key ring, entries, sealing, the IdP client, the cache
//!   with single flight, the refresher, and the L1's sync with the shared store.
//! - [`issuer`]: the gateway as an OAuth2 authorization server (client credentials, RFC 7523
//!   workload identity federation, RFC 9068 access tokens, JWKS and RFC 8414 metadata).
//! - [`demo`]: `gateway demo`, every flow in one process with an echo upstream.
//! - [`store`]: the [`store::TokenStore`] contract, its conformance suite, and its backends
//!   (`memory`, `redis`).
//! - [`telemetry`]: logging and the access log.
//!
//! [`run`] assembles a node from a [`config::Config`].

#![forbid(unsafe_code)]

pub mod auth;
pub mod cachenode;
pub mod config;
pub mod demo;
pub mod issuer;
pub mod proxy;
pub mod store;
pub mod telemetry;
pub mod token;

use std::sync::Arc;

use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;

use config::{Config, StoreConfig};
use proxy::admin::Admin;
use proxy::{Gateway, Listeners};
use store::{MemoryStore, RaftStore, RedisStore, Store, StoreError};
use token::{FleetKey, KeyRing, TokenCache};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The shared store's client could not be built.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A middleware's HTTP client could not be built from its TLS material.
    #[error("cannot build an HTTP client: {0}")]
    HttpClient(#[from] reqwest::Error),
}

/// Runs a gateway node on already-bound listeners until `shutdown` is cancelled, then drains
/// in-flight requests (bounded by `shutdown_timeout`) and stops every background task.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let current = match &config.fleet_key {
        Some(secret) => FleetKey::from_secret(secret),
        None => FleetKey::random(),
    };
    let previous = config
        .previous_fleet_keys
        .iter()
        .map(FleetKey::from_secret)
        .collect();
    let fleet = KeyRing::new(current, previous);
    let store = match &config.store {
        StoreConfig::Memory => {
            Store::Memory(MemoryStore::with_max_entries(config.refresh.max_entries))
        }
        StoreConfig::Redis(redis) => Store::Redis(RedisStore::new(redis)?),
        StoreConfig::Raft(raft) => Store::Raft(RaftStore::new(raft)),
    };
    let cache = TokenCache::with_idp(
        fleet,
        store,
        token::IdpClient::with_breaker(&config.idp_breaker),
    );
    let issuer = match &config.issuer {
        Some(i) => Some(Arc::new(issuer::Issuer::new(i, &cache)?)),
        None => None,
    };
    let gateway = Arc::new(Gateway::new(&config, &cache, issuer)?);
    let background = CancellationToken::new();
    cache.spawn_background(config.refresh.clone(), background.clone());

    let admin = Admin::new(Arc::clone(&cache));
    let proxy_handler: proxy::serve::Handler =
        Arc::new(move |req, remote| Arc::clone(&gateway).handle(req, remote).boxed());
    let admin_for_handler = Arc::clone(&admin);
    let admin_handler: proxy::serve::Handler = Arc::new(move |req, _| {
        let resp = admin_for_handler.handle(&req);
        async move { resp }.boxed()
    });

    // The admin listener outlives the proxy's drain so that probes see "draining", not a refusal.
    let admin_stop = CancellationToken::new();
    let admin_task = tokio::spawn(proxy::serve(
        listeners.admin,
        admin_handler,
        admin_stop.clone(),
        config.shutdown_timeout,
    ));
    let proxy_stop = shutdown.clone();
    let admin_for_drain = Arc::clone(&admin);
    tokio::spawn(async move {
        proxy_stop.cancelled().await;
        admin_for_drain.set_draining();
    });
    proxy::serve::serve_with(
        listeners.proxy,
        proxy_handler,
        shutdown,
        config.shutdown_timeout,
        config.edge.transport,
    )
    .await;

    background.cancel();
    cache.closed().await;
    admin_stop.cancel();
    let _ = admin_task.await;
    tracing::info!("gateway stopped");
    Ok(())
}
