//! Connections to Redis for each topology, and the task that follows the event channel.

use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::redis::sentinel::{
    SentinelClient, SentinelNodeConnectionInfo, SentinelServerType,
};
use deadpool_redis::redis::{
    self, Client, ConnectionAddr, ConnectionInfo, FromRedisValue, IntoConnectionInfo,
    RedisConnectionInfo,
};
use deadpool_redis::{PoolConfig, Runtime, Timeouts};
use futures_util::StreamExt;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::{parse_event, unavailable};
use crate::config::{RedisConfig, RedisTopology};
use crate::store::{StoreError, StoreEvent};

/// A connection pool of the configured topology.
#[derive(Clone)]
enum Pool {
    Standalone(deadpool_redis::Pool),
    Sentinel(deadpool_redis::sentinel::Pool),
    Cluster(deadpool_redis::cluster::Pool),
}

/// Where the event subscription connects.
enum PubSubTarget {
    /// These servers, tried in order (standalone: the server; Cluster: any node, since
    /// `PUBLISH` reaches subscribers on every node of a cluster).
    Servers(Vec<ConnectionInfo>),
    /// The master the sentinels name at the time.
    Sentinel {
        sentinels: Vec<ConnectionInfo>,
        master_set: String,
        node: SentinelNodeConnectionInfo,
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
                let mut $conn = p.get().await.map_err(unavailable)?;
                $body
            }
            Pool::Sentinel(p) => {
                let mut $conn = p.get().await.map_err(unavailable)?;
                $body
            }
            Pool::Cluster(p) => {
                let mut $conn = p.get().await.map_err(unavailable)?;
                $body
            }
        }
    };
}

impl Pools {
    pub(super) fn new(cfg: &RedisConfig) -> Result<Self, StoreError> {
        let mut node = RedisConnectionInfo::default().set_db(cfg.database);
        if let Some(u) = &cfg.username {
            node = node.set_username(u);
        }
        if let Some(p) = &cfg.password {
            node = node.set_password(p.expose());
        }
        let infos =
            |redis: Option<&RedisConnectionInfo>| -> Result<Vec<ConnectionInfo>, StoreError> {
                cfg.endpoints
                    .iter()
                    .map(|(host, port)| {
                        let info = ConnectionAddr::Tcp(host.clone(), *port)
                            .into_connection_info()
                            .map_err(unavailable)?;
                        Ok(match redis {
                            Some(r) => info.set_redis_settings(r.clone()),
                            None => info,
                        })
                    })
                    .collect()
            };
        let mut pool_cfg = PoolConfig::new(cfg.pool_size);
        pool_cfg.timeouts = Timeouts {
            wait: Some(cfg.timeout),
            create: Some(cfg.timeout),
            recycle: Some(cfg.timeout),
        };
        let invalid = |e: &dyn std::fmt::Display| {
            StoreError::Unavailable(format!("cannot set up Redis pool: {e}"))
        };
        let (pool, target) = match &cfg.topology {
            RedisTopology::Standalone => {
                let info = infos(Some(&node))?.remove(0);
                let mut c = deadpool_redis::Config::from_connection_info(info.clone());
                c.pool = Some(pool_cfg);
                let pool = c
                    .create_pool(Some(Runtime::Tokio1))
                    .map_err(|e| invalid(&e))?;
                (Pool::Standalone(pool), PubSubTarget::Servers(vec![info]))
            }
            RedisTopology::Cluster => {
                let servers = infos(Some(&node))?;
                let c = deadpool_redis::cluster::Config {
                    urls: None,
                    connections: Some(servers.iter().cloned().map(Into::into).collect()),
                    pool: Some(pool_cfg),
                    read_from_replicas: false,
                };
                let pool = c
                    .create_pool(Some(Runtime::Tokio1))
                    .map_err(|e| invalid(&e))?;
                (Pool::Cluster(pool), PubSubTarget::Servers(servers))
            }
            RedisTopology::Sentinel { master_set } => {
                let sentinels = infos(None)?;
                let node = SentinelNodeConnectionInfo::default().set_redis_connection_info(node);
                let c = deadpool_redis::sentinel::Config {
                    urls: None,
                    server_type: SentinelServerType::Master.into(),
                    master_name: master_set.clone(),
                    connections: Some(sentinels.iter().cloned().map(Into::into).collect()),
                    node_connection_info: Some(node.clone().into()),
                    pool: Some(pool_cfg),
                };
                let pool = c
                    .create_pool(Some(Runtime::Tokio1))
                    .map_err(|e| invalid(&e))?;
                (
                    Pool::Sentinel(pool),
                    PubSubTarget::Sentinel {
                        sentinels,
                        master_set: master_set.clone(),
                        node,
                    },
                )
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
        with_conn!(&self.pool, conn => inv.invoke_async(&mut conn).await.map_err(unavailable))
    }

    pub(super) async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        with_conn!(&self.pool, conn => cmd.query_async(&mut conn).await.map_err(unavailable))
    }

    /// A dedicated connection subscribed to `channel` (pub/sub cannot share a pooled one).
    async fn subscribe(&self, channel: &str) -> Result<redis::aio::PubSub, StoreError> {
        let clients = match &*self.target {
            PubSubTarget::Servers(servers) => servers
                .iter()
                .map(|s| Client::open(s.clone()).map_err(unavailable))
                .collect::<Result<Vec<_>, _>>()?,
            PubSubTarget::Sentinel {
                sentinels,
                master_set,
                node,
            } => {
                let mut sentinel = SentinelClient::build(
                    sentinels.clone(),
                    master_set.clone(),
                    Some(node.clone()),
                    SentinelServerType::Master,
                )
                .map_err(unavailable)?;
                vec![sentinel.async_get_client().await.map_err(unavailable)?]
            }
        };
        let mut last = StoreError::Unavailable("no Redis endpoint".into());
        for client in clients {
            match client.get_async_pubsub().await {
                Ok(mut pubsub) => match pubsub.subscribe(channel).await {
                    Ok(()) => return Ok(pubsub),
                    Err(e) => last = unavailable(e),
                },
                Err(e) => last = unavailable(e),
            }
        }
        Err(last)
    }
}

/// Follows the event channel until `stop`, re-subscribing whenever the subscription breaks.
/// Each (re)subscription is announced as [`StoreEvent::Resync`]: events published while it was
/// down are lost, so followers re-read what they cache.
pub(super) async fn follow_events(
    pools: Pools,
    channel: String,
    events: broadcast::Sender<StoreEvent>,
    stop: CancellationToken,
    subscribed: watch::Sender<bool>,
    backoff: Duration,
) {
    let mut was_down = false;
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
                // Resync first: whoever waits for `subscribed` must not see it afterwards.
                let _ = events.send(StoreEvent::Resync);
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
