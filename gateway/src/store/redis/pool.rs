//! Connections to Redis for each topology, and the task that follows the event channel.
//!
//! Standalone servers use deadpool-redis' manager. Its Cluster and Sentinel managers cannot be
//! given TLS certificates, so those two topologies get a small deadpool manager of ours around
//! redis-rs' certificate-aware clients.

use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::{Metrics, RecycleResult};
use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::cluster::{ClusterClient, ClusterClientBuilder};
use deadpool_redis::redis::cluster_async::ClusterConnection;
use deadpool_redis::redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use deadpool_redis::redis::{
    self, Client, ClientTlsConfig, ConnectionAddr, ConnectionInfo, FromRedisValue,
    IntoConnectionInfo, RedisConnectionInfo, RedisResult, TlsCertificates, TlsMode,
};
use deadpool_redis::{PoolConfig, Runtime};
use futures_util::StreamExt;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::parse_event;
use crate::outbound::StoreTls;
use crate::store::{RedisConfig, RedisTopology};
use crate::store::{StoreError, StoreEvent};

/// Cluster connections from a certificate-aware cluster client.
struct ClusterManager(ClusterClient);

impl deadpool::managed::Manager for ClusterManager {
    type Type = ClusterConnection;
    type Error = redis::RedisError;

    async fn create(&self) -> RedisResult<ClusterConnection> {
        self.0.get_async_connection().await
    }

    async fn recycle(
        &self,
        conn: &mut ClusterConnection,
        _: &Metrics,
    ) -> RecycleResult<redis::RedisError> {
        Ok(redis::cmd("PING").query_async::<()>(conn).await?)
    }
}

/// Connections to the master the sentinels name at the time of connecting.
struct SentinelManager(tokio::sync::Mutex<SentinelClient>);

impl deadpool::managed::Manager for SentinelManager {
    type Type = MultiplexedConnection;
    type Error = redis::RedisError;

    async fn create(&self) -> RedisResult<MultiplexedConnection> {
        self.0.lock().await.get_async_connection().await
    }

    async fn recycle(
        &self,
        conn: &mut MultiplexedConnection,
        _: &Metrics,
    ) -> RecycleResult<redis::RedisError> {
        // A connection to a master that was demoted must go: ask its role.
        let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(conn).await?;
        match role.first() {
            Some(redis::Value::BulkString(r)) if r.as_slice() == b"master" => Ok(()),
            _ => Err(deadpool::managed::RecycleError::message(
                "no longer the master",
            )),
        }
    }
}

/// A connection pool of the configured topology.
#[derive(Clone)]
enum Pool {
    Standalone(deadpool_redis::Pool),
    Sentinel(deadpool::managed::Pool<SentinelManager>),
    Cluster(deadpool::managed::Pool<ClusterManager>),
}

/// Where the event subscription connects.
enum PubSubTarget {
    /// These servers, tried in order (standalone: the server; Cluster: any node, since
    /// `PUBLISH` reaches subscribers on every node of a cluster).
    Servers(Vec<Client>),
    /// The master the sentinels name at the time.
    Sentinel {
        cfg: Box<RedisConfig>,
        master_set: String,
    },
}

/// The store's connections.
#[derive(Clone)]
pub(super) struct Pools {
    pool: Pool,
    target: Arc<PubSubTarget>,
}

macro_rules! with_conn {
    ($pool:expr, $conn:ident => $body:expr) => {
        match $pool {
            Pool::Standalone(p) => {
                let mut $conn = p.get().await.map_err(StoreError::unavailable)?;
                $body
            }
            Pool::Sentinel(p) => {
                let mut $conn = p.get().await.map_err(StoreError::unavailable)?;
                $body
            }
            Pool::Cluster(p) => {
                let mut $conn = p.get().await.map_err(StoreError::unavailable)?;
                $body
            }
        }
    };
}

fn certificates(tls: &StoreTls) -> TlsCertificates {
    TlsCertificates {
        client_tls: tls.client.as_ref().map(|(cert, key)| ClientTlsConfig {
            client_cert: cert.clone(),
            client_key: key.expose().as_bytes().to_vec(),
        }),
        root_cert: tls.ca.clone(),
    }
}

fn credentials(cfg: &RedisConfig) -> RedisConnectionInfo {
    let mut node = RedisConnectionInfo::default().set_db(cfg.database);
    if let Some(u) = &cfg.username {
        node = node.set_username(u);
    }
    if let Some(p) = &cfg.password {
        node = node.set_password(p.expose());
    }
    node
}

/// A client per endpoint, speaking TLS with the configured certificates when asked to.
fn clients(cfg: &RedisConfig) -> RedisResult<Vec<Client>> {
    cfg.endpoints
        .iter()
        .map(|(host, port)| {
            let (host, port) = (host.clone(), *port);
            let addr = match &cfg.tls {
                Some(t) => ConnectionAddr::TcpTls {
                    host,
                    port,
                    insecure: t.insecure_skip_verify,
                    tls_params: None,
                },
                None => ConnectionAddr::Tcp(host, port),
            };
            let info = addr
                .into_connection_info()?
                .set_redis_settings(credentials(cfg));
            match &cfg.tls {
                Some(t) => Client::build_with_tls(info, certificates(t)),
                None => Client::open(info),
            }
        })
        .collect()
}

fn sentinel_client(cfg: &RedisConfig, master_set: &str) -> RedisResult<SentinelClient> {
    let sentinels = cfg
        .endpoints
        .iter()
        .map(|(h, p)| ConnectionAddr::Tcp(h.clone(), *p));
    let mut b = SentinelClientBuilder::new(sentinels, master_set, SentinelServerType::Master)?
        .set_client_to_redis_db(cfg.database);
    if let Some(u) = &cfg.username {
        b = b.set_client_to_redis_username(u);
    }
    if let Some(p) = &cfg.password {
        b = b.set_client_to_redis_password(p.expose());
    }
    if let Some(t) = &cfg.tls {
        let mode = if t.insecure_skip_verify {
            TlsMode::Insecure
        } else {
            TlsMode::Secure
        };
        b = b
            .set_client_to_redis_tls_mode(mode)
            .set_client_to_redis_certificates(certificates(t));
    }
    b.build()
}

impl Pools {
    pub(super) fn new(cfg: &RedisConfig) -> Result<Self, StoreError> {
        let invalid = |e: &dyn std::fmt::Display| {
            StoreError::Unavailable(format!("cannot set up Redis connections: {e}"))
        };
        let mut pool_cfg = PoolConfig::new(cfg.pool_size);
        pool_cfg.timeouts.wait = Some(cfg.timeout);
        pool_cfg.timeouts.create = Some(cfg.timeout);
        pool_cfg.timeouts.recycle = Some(cfg.timeout);
        let (pool, target) = match &cfg.topology {
            RedisTopology::Standalone => {
                let clients = clients(cfg).map_err(|e| invalid(&e))?;
                let info: ConnectionInfo = clients[0].get_connection_info().clone();
                let manager = deadpool_redis::Manager::new(info).map_err(|e| invalid(&e))?;
                let pool = deadpool_redis::Pool::builder(manager)
                    .config(pool_cfg)
                    .runtime(Runtime::Tokio1)
                    .build()
                    .map_err(|e| invalid(&e))?;
                (Pool::Standalone(pool), PubSubTarget::Servers(clients))
            }
            RedisTopology::Cluster => {
                let clients = clients(cfg).map_err(|e| invalid(&e))?;
                let nodes: Vec<ConnectionInfo> = clients
                    .iter()
                    .map(|c| c.get_connection_info().clone())
                    .collect();
                let mut builder = ClusterClientBuilder::new(nodes);
                if let Some(t) = &cfg.tls {
                    builder = builder.certs(certificates(t));
                }
                let client = builder.build().map_err(|e| invalid(&e))?;
                let pool = deadpool::managed::Pool::builder(ClusterManager(client))
                    .config(pool_cfg)
                    .runtime(Runtime::Tokio1)
                    .build()
                    .map_err(|e| invalid(&e))?;
                (Pool::Cluster(pool), PubSubTarget::Servers(clients))
            }
            RedisTopology::Sentinel { master_set } => {
                let client = sentinel_client(cfg, master_set).map_err(|e| invalid(&e))?;
                let pool = deadpool::managed::Pool::builder(SentinelManager(
                    tokio::sync::Mutex::new(client),
                ))
                .config(pool_cfg)
                .runtime(Runtime::Tokio1)
                .build()
                .map_err(|e| invalid(&e))?;
                let target = PubSubTarget::Sentinel {
                    cfg: Box::new(cfg.clone()),
                    master_set: master_set.clone(),
                };
                (Pool::Sentinel(pool), target)
            }
        };
        Ok(Self {
            pool,
            target: Arc::new(target),
        })
    }

    pub(super) async fn invoke<T: FromRedisValue>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        with_conn!(&self.pool, conn => inv.invoke_async(&mut *conn).await.map_err(StoreError::unavailable))
    }

    pub(super) async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        with_conn!(&self.pool, conn => cmd.query_async(&mut *conn).await.map_err(StoreError::unavailable))
    }

    /// A dedicated connection subscribed to `channel` (pub/sub cannot share a pooled one).
    async fn subscribe(&self, channel: &str) -> Result<redis::aio::PubSub, StoreError> {
        let clients = match &*self.target {
            PubSubTarget::Servers(clients) => clients.clone(),
            PubSubTarget::Sentinel { cfg, master_set } => {
                let mut sentinel =
                    sentinel_client(cfg, master_set).map_err(StoreError::unavailable)?;
                vec![
                    sentinel
                        .async_get_client()
                        .await
                        .map_err(StoreError::unavailable)?,
                ]
            }
        };
        let mut last = StoreError::Unavailable("no Redis endpoint".into());
        for client in clients {
            match client.get_async_pubsub().await {
                Ok(mut pubsub) => match pubsub.subscribe(channel).await {
                    Ok(()) => return Ok(pubsub),
                    Err(e) => last = StoreError::unavailable(e),
                },
                Err(e) => last = StoreError::unavailable(e),
            }
        }
        Err(last)
    }
}

/// Follows the event channel until `stop`, re-subscribing whenever the subscription breaks.
/// Each (re)subscription is announced as [`StoreEvent::Resync`]: events published while it was
/// down are lost, so followers re-read what they cache. It says the store lost its data when the
/// epoch under `epoch_key` is not the one seen before (Redis came back empty).
pub(super) async fn follow_events(
    pools: Pools,
    channel: String,
    epoch_key: String,
    events: broadcast::Sender<StoreEvent>,
    stop: CancellationToken,
    subscribed: watch::Sender<bool>,
    backoff: Duration,
) {
    let mut was_down = false;
    let mut epoch: Option<String> = None;
    loop {
        let attempt = tokio::select! {
            () = stop.cancelled() => return,
            a = tokio::time::timeout(Duration::from_secs(5), pools.subscribe(&channel)) => a,
        };
        match attempt {
            Ok(Ok(mut pubsub)) => {
                if was_down {
                    tracing::info!("token store events followed again");
                }
                // An epoch that cannot be read is taken as unchanged: writing back entries that
                // were evicted would be worse than fetching again the ones Redis lost.
                let mut inv = super::scripts::EPOCH.prepare_invoke();
                inv.key(&epoch_key)
                    .arg(crate::store::NodeId::random().as_str());
                let now =
                    tokio::time::timeout(Duration::from_secs(5), pools.invoke::<String>(&inv))
                        .await
                        .ok()
                        .and_then(Result::ok);
                let lost = matches!((&epoch, &now), (Some(before), Some(now)) if before != now);
                if lost {
                    tracing::warn!("Redis lost its data; nodes write back the tokens they hold");
                }
                if now.is_some() {
                    epoch = now;
                }
                // Resync first: whoever waits for `subscribed` must not see it afterwards.
                let _ = events.send(StoreEvent::Resync { lost });
                subscribed.send_replace(true);
                let mut stream = pubsub.on_message();
                loop {
                    let msg = tokio::select! {
                        () = stop.cancelled() => return,
                        m = stream.next() => m,
                    };
                    let Some(msg) = msg else { break };
                    if let Some(event) = msg
                        .get_payload::<String>()
                        .ok()
                        .as_deref()
                        .and_then(parse_event)
                    {
                        let _ = events.send(event);
                    }
                }
                subscribed.send_replace(false);
                tracing::warn!("token store event subscription lost; resubscribing");
            }
            Ok(Err(error)) if !was_down => {
                tracing::warn!(%error, "cannot follow token store events; retrying")
            }
            Err(_) if !was_down => {
                tracing::warn!("cannot follow token store events: timed out; retrying")
            }
            _ => {}
        }
        was_down = true;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
    }
}
