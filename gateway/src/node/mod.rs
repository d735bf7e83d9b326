//! A gateway node (`gateway run`), assembled from a validated [`Config`]: the fleet key ring, the
//! shared store, the token cache and its background tasks, the issuer, the proxy and the admin
//! listener, and their shutdown in order.

use std::sync::Arc;

use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;

pub mod reload;

use crate::config::Config;
use crate::http::tls::ServerTls;
use crate::http::{self, Listeners};
use crate::issuer;
use crate::lifecycle::TokenCache;
use crate::outbound::IdpClient;
use crate::proxy::Gateway;
use crate::proxy::admin::Admin;
use crate::store::{MemoryStore, RaftStore, RedisStore, Store, StoreConfig, StoreError};
use crate::token::{FleetKey, KeyRing};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The shared store's client could not be built.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A middleware's HTTP client could not be built from its TLS material.
    #[error("cannot build an HTTP client: {0}")]
    HttpClient(#[from] reqwest::Error),
    /// The proxy could not be built from its TLS material.
    #[error(transparent)]
    Proxy(#[from] crate::proxy::BuildError),
    /// The listener's certificates could not be loaded.
    #[error("TLS listener: {0}")]
    ListenerTls(#[from] crate::http::tls::ServerTlsError),
    /// The proxy listener could not be handed to its workers.
    #[error("proxy listener: {0}")]
    Listener(#[from] std::io::Error),
}

/// Runs a gateway node on already-bound listeners until `shutdown` is cancelled, then drains
/// in-flight requests (bounded by `shutdown_timeout`) and stops every background task. With a
/// `source`, the configuration is reloaded when its files change or on SIGHUP.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
    source: Option<reload::ConfigSource>,
) -> Result<(), StartError> {
    // The proxy listener, for the runtime that runs the node or for worker threads of their
    // own (the one step that can fail is taken before anything starts).
    let proxy_listener = match listeners.workers {
        0 => ProxyListener::Here(listeners.proxy),
        _ => {
            let mut sockets = vec![listeners.proxy.into_std()?];
            sockets.extend(listeners.more_proxy);
            ProxyListener::Workers(sockets)
        }
    };
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
    let cache = TokenCache::with_idp(fleet, store, IdpClient::with_breaker(&config.idp_breaker));
    let issuer = match &config.issuer {
        Some(i) => Some(Arc::new(issuer::Issuer::new(i, &cache)?)),
        None => None,
    };
    let gateway = Gateway::new(config.proxy(), &cache, issuer.clone())?;
    let background = CancellationToken::new();
    let listener_tls = match &config.tls {
        Some(t) => {
            let served = ServerTls::new(t)?;
            tokio::spawn(
                Arc::clone(&served.certificates).watch(t.watch_interval, background.clone()),
            );
            Some(served.config)
        }
        None => None,
    };
    cache.spawn_background(config.refresh.clone(), background.clone());
    let proxy = Arc::new(reload::LiveProxy::new(gateway, &background));
    let status = Arc::new(crate::proxy::admin::ConfigStatus::started(match &source {
        Some(s) => reload::config_hash(&s.path, &config.sources),
        None => String::new(),
    }));
    let reloader = source.map(|source| {
        let reloader = reload::Reloader {
            source,
            config: config.clone(),
            proxy: Arc::clone(&proxy),
            cache: Arc::clone(&cache),
            issuer,
            status: Arc::clone(&status),
        };
        tokio::spawn(reloader.run(background.clone()))
    });

    let admin = Admin::new(
        Arc::clone(&cache),
        Arc::clone(&status),
        config.admin_token.clone(),
    );
    let current = Arc::clone(&proxy.current);
    // Each request takes the proxy current when it arrives and keeps it to the end.
    let proxy_handler: http::Handler =
        Arc::new(move |req, remote| current.load_full().handle(req, remote).boxed());
    let admin_for_handler = Arc::clone(&admin);
    let admin_handler: http::Handler = Arc::new(move |req, _| {
        let resp = admin_for_handler.handle(&req);
        async move { resp }.boxed()
    });

    // The admin listener outlives the proxy's drain so that probes see "draining", not a refusal.
    let admin_stop = CancellationToken::new();
    let admin_task = tokio::spawn(http::serve(
        listeners.admin,
        admin_handler,
        admin_stop.clone(),
        config.shutdown_timeout,
        None,
    ));
    let proxy_stop = shutdown.clone();
    let admin_for_drain = Arc::clone(&admin);
    tokio::spawn(async move {
        proxy_stop.cancelled().await;
        admin_for_drain.set_draining();
    });
    // Upgraded connections drain alongside the listener's requests, within the same time.
    let upgrades = {
        let (current, stop, drain) = (
            Arc::clone(&proxy.current),
            shutdown.clone(),
            config.shutdown_timeout,
        );
        tokio::spawn(async move {
            stop.cancelled().await;
            current.load_full().drain_upgrades(drain).await;
        })
    };
    let (drain, limits) = (config.shutdown_timeout, config.edge.transport);
    match proxy_listener {
        ProxyListener::Here(listener) => {
            http::serve_with(
                listener,
                proxy_handler,
                shutdown,
                drain,
                limits,
                listener_tls,
            )
            .await;
        }
        ProxyListener::Workers(sockets) => {
            let (handler, tls) = (proxy_handler, listener_tls);
            http::serve_on_workers(sockets, handler, shutdown, drain, limits, tls).await;
        }
    }
    let _ = upgrades.await;

    background.cancel();
    if let Some(reloader) = reloader {
        let _ = reloader.await;
    }
    proxy.stop().await;
    cache.closed().await;
    admin_stop.cancel();
    let _ = admin_task.await;
    tracing::info!("gateway stopped");
    Ok(())
}

/// Where the proxy listener is served.
enum ProxyListener {
    /// On the runtime that runs the node.
    Here(tokio::net::TcpListener),
    /// On worker threads, each watching its own descriptor of the one listening socket.
    Workers(Vec<std::net::TcpListener>),
}
