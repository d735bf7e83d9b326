//! The store's settings (the `store` section), as the configuration loader validates them.

use std::fmt;
use std::time::Duration;

use crate::outbound::StoreTls;
use crate::secret::Secret;

/// Which [`super::TokenStore`] backend holds the fleet's tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// Node-local.
    Memory,
    /// Shared through Redis.
    Redis(Box<RedisConfig>),
    /// Shared through the Raft cache service.
    Raft(RaftStoreConfig),
}

/// Long enough for an election (a dead leader is replaced in well under a second), short
/// enough that a cluster without quorum soon degrades nodes to their L1 instead of making
/// callers wait.
pub const DEFAULT_RAFT_TIMEOUT: Duration = Duration::from_secs(2);

/// The Raft cache service as the store, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftStoreConfig {
    /// `host:port` of cache nodes.
    pub endpoints: Vec<String>,
    /// Upper bound on one operation.
    pub timeout: Duration,
    /// TLS, when the cache nodes speak it (`None`: plain gRPC).
    pub tls: Option<StoreTls>,
    /// The gateway role's secret, sent with every call (`None`: nodes without credentials).
    pub token: Option<Secret>,
}

/// A one-line description for logs (no secrets).
impl fmt::Display for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory => f.write_str("memory"),
            Self::Raft(r) => {
                let tls = if r.tls.is_some() { " (tls)" } else { "" };
                write!(f, "raft {}{tls}", r.endpoints.join(","))
            }
            Self::Redis(r) => {
                let endpoints: Vec<String> = r
                    .endpoints
                    .iter()
                    .map(|(h, p)| format!("{h}:{p}"))
                    .collect();
                let kind = match &r.topology {
                    RedisTopology::Standalone => "redis".to_owned(),
                    RedisTopology::Cluster => "redis cluster".to_owned(),
                    RedisTopology::Sentinel { master_set } => {
                        format!("redis sentinel {master_set}")
                    }
                };
                let tls = if r.tls.is_some() { " (tls)" } else { "" };
                write!(f, "{kind} {}{tls}", endpoints.join(","))
            }
        }
    }
}

/// Connections per node to Redis: the request path only reaches Redis on L1 misses.
pub const DEFAULT_REDIS_POOL_SIZE: usize = 16;
/// A healthy Redis answers in well under a millisecond; a second means it is not healthy, and
/// the node degrades to L1 rather than making callers wait.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_secs(1);

/// The Redis store, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `(host, port)` of each endpoint.
    pub endpoints: Vec<(String, u16)>,
    /// ACL user.
    pub username: Option<String>,
    /// Password (also used for the sentinels in Sentinel mode).
    pub password: Option<Secret>,
    /// Database number (standalone and Sentinel only).
    pub database: i64,
    /// Prefix of every key and channel.
    pub key_prefix: String,
    /// How the endpoints are to be used.
    pub topology: RedisTopology,
    /// Connections per node.
    pub pool_size: usize,
    /// Upper bound on one operation.
    pub timeout: Duration,
    /// TLS, when the servers speak it.
    pub tls: Option<StoreTls>,
}

/// Redis deployment shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTopology {
    /// One server (or a proxy in front of several).
    Standalone,
    /// Redis Cluster; the endpoints are seed nodes.
    Cluster,
    /// Redis Sentinel; the endpoints are sentinels watching `master_set`.
    Sentinel {
        /// The monitored master's name.
        master_set: String,
    },
}
