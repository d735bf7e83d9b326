//! How a cache node runs: its Raft timers, its bounds, its configuration and TLS, and why it
//! stops.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::auth;
use crate::secret::Secret;

/// Leader heartbeat (openraft ticks every 1.5 heartbeats).
pub const HEARTBEAT: Duration = Duration::from_millis(50);
/// Lower bound of the randomised election timeout (the upper bound is twice this): with the
/// failover watchdog, a dead leader is replaced 450–600 ms after its last heartbeat, plus a
/// vote round trip.
pub const ELECTION_TIMEOUT_MIN: Duration = Duration::from_millis(150);

/// A cache node's Raft timers, from `--heartbeat-interval` and `--election-timeout`.
///
/// A follower stands for election once the leader's lease (the upper bound of the election
/// timeout) plus its own timeout (fixed at start, between the bounds) have passed without a
/// heartbeat (openraft's timer, and the [`failover`] watchdog, which spares the penalty openraft
/// adds after a lost vote). So a leader's death is noticed after 3 to 4 times the lower bound
/// and followed by a vote round trip. Shorter timers fail over sooner and elect spuriously when
/// a saturated machine delays heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTiming {
    /// How often the leader sends heartbeats.
    pub heartbeat: Duration,
    /// The election timeout's lower bound; its upper bound is twice this.
    pub election_timeout: Duration,
}

impl RaftTiming {
    /// The election timeout's upper bound, which is also the leader lease followers honour.
    pub fn election_timeout_max(&self) -> Duration {
        self.election_timeout * 2
    }

    /// How long a leader goes on serving without a quorum's acknowledgement: two heartbeats
    /// less than the earliest a new leader can be elected (the lease plus the lower bound), so
    /// an old leader has stopped serving before a new one can exist.
    pub fn quorum_silence(&self) -> Duration {
        (self.election_timeout_max() + self.election_timeout).saturating_sub(self.heartbeat * 2)
    }

    /// Refuses timers whose safety margins do not hold: heartbeats must fit several times into
    /// the lower bound.
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat.is_zero() || self.election_timeout < self.heartbeat * 3 {
            return Err(format!(
                "--election-timeout ({:?}) must be at least three --heartbeat-interval ({:?})",
                self.election_timeout, self.heartbeat
            ));
        }
        Ok(())
    }
}

/// Memory redb may use to cache the log's pages (its default, 1 GiB, made a cache node's resident
/// memory grow with the log rather than with the cache).
pub const DB_CACHE_BYTES: usize = 16 << 20;
/// Most log entries in one `AppendEntries`: with put batches of at most
/// [`context::MAX_PUT_BATCH_BYTES`], one message stays well under
/// [`network::MAX_RAFT_MESSAGE_BYTES`].
pub const MAX_PAYLOAD_ENTRIES: u64 = 32;
/// Largest request a gateway or operator may send (a put carries one entry of at most
/// [`bounds::MAX_ENTRY_BYTES`]; a touch at most [`bounds::MAX_TOUCHES`] uses).
pub const MAX_REQUEST_BYTES: usize = 1 << 20;
/// A snapshot is taken after this many log entries, and the log before it purged.
pub const DEFAULT_SNAPSHOT_LOGS: u64 = 10_000;
/// Entries the cache keeps at most, by default: the same bound as a gateway's L1.
pub const DEFAULT_MAX_ENTRIES: u64 = crate::token::DEFAULT_MAX_ENTRIES as u64;

/// How a cache node runs.
#[derive(Debug, Clone)]
pub struct CacheNodeConfig {
    /// This node's id, unique in the cluster and never reused.
    pub id: u64,
    /// Where it listens.
    pub listen: SocketAddr,
    /// The address peers and gateways reach it at (default: `listen`).
    pub advertise: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Initial members `id -> addr`, to bootstrap a new cluster (ignored once initialised).
    pub init: BTreeMap<u64, String>,
    /// Members to ask to add this node as a learner (the operator token goes to them only, or
    /// to a TLS-proven leader).
    pub join: Vec<String>,
    /// Addresses to reach peers at for Raft traffic instead of their membership addresses
    /// (a separate replication network; tests put fault-injecting relays there).
    pub peers: BTreeMap<u64, String>,
    /// Who may call, per role. None at all: everyone (only on loopback, or with
    /// `insecure_no_auth`).
    pub credentials: auth::Credentials,
    /// Serve without credentials on a non-loopback address.
    pub insecure_no_auth: bool,
    /// Send and take bearer tokens without TLS beyond this host.
    pub allow_plaintext: bool,
    /// Log entries between snapshots.
    pub snapshot_logs: u64,
    /// Entries kept at most (see [`context::bound_entries`]).
    pub max_entries: u64,
    /// Where to serve Prometheus `/metrics` over HTTP, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// TLS on the gRPC port and towards peers; `None`: plain gRPC.
    pub tls: Option<NodeTls>,
    /// The Raft timers.
    pub raft_timing: RaftTiming,
}

/// TLS for a cache node, with the files already read.
#[derive(Clone)]
pub struct NodeTls {
    /// PEM certificate chain the node serves, and presents to the peers it dials.
    pub cert: Vec<u8>,
    /// PEM private key of `cert`.
    pub key: Secret,
    /// PEM CA bundle the peers' certificates are verified against; `None`: the webpki roots.
    pub ca: Option<Vec<u8>>,
    /// Callers (gateways, cachectl, peers) must present a certificate signed by this PEM CA
    /// bundle (mutual TLS); `None`: any caller may connect.
    pub client_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls")
            .field("custom_ca", &self.ca.is_some())
            .field("client_certificates_required", &self.client_ca.is_some())
            .finish_non_exhaustive()
    }
}

impl NodeTls {
    /// How the node dials its peers: verifying them against `ca`, presenting its own
    /// certificate.
    pub(super) fn dialer(&self) -> crate::cacheclient::Dialer {
        crate::cacheclient::Dialer::new(Some(&crate::outbound::StoreTls {
            ca: self.ca.clone(),
            client: Some((self.cert.clone(), self.key.clone())),
            insecure_skip_verify: false,
        }))
    }

    pub(super) fn server(&self) -> tonic::transport::ServerTlsConfig {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let cfg =
            ServerTlsConfig::new().identity(Identity::from_pem(&self.cert, self.key.expose()));
        match &self.client_ca {
            Some(ca) => cfg.client_ca_root(Certificate::from_pem(ca)),
            None => cfg,
        }
    }
}

/// Why a cache node stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum CacheNodeError {
    /// The data directory or database could not be opened.
    #[error("data directory {dir}: {message}")]
    Data {
        /// The directory.
        dir: String,
        /// What went wrong.
        message: String,
    },
    /// openraft refused to start.
    #[error("raft: {0}")]
    Raft(String),
    /// The TLS certificate, key or CA could not be used.
    #[error("tls: {0}")]
    Tls(String),
    /// The credentials are incomplete, or missing where they must not be.
    #[error("authentication: {0}")]
    Credentials(#[from] auth::CredentialsError),
    /// Bearer tokens would cross a network in clear.
    #[error(
        "role tokens would cross the network in clear ({0} is not on this host): give --tls-cert and --tls-key, or pass --allow-plaintext on a network you trust"
    )]
    Plaintext(String),
    /// The listener could not be bound or served.
    #[error("cannot serve on {addr}: {message}")]
    Serve {
        /// The address.
        addr: SocketAddr,
        /// What went wrong.
        message: String,
    },
}

impl CacheNodeConfig {
    /// Where bearer tokens would cross a network in clear: with tokens and without TLS, the first
    /// address of this node (listening) or of another (peers, members, join targets) that is not
    /// on this host.
    pub(super) fn tokens_in_clear(&self) -> Option<String> {
        let cfg = self;
        if cfg.tls.is_some() || !cfg.credentials.has_tokens() {
            return None;
        }
        if !cfg.listen.ip().is_loopback() {
            return Some(cfg.listen.to_string());
        }
        let others = (cfg.peers.values().chain(cfg.init.values()))
            .chain(&cfg.join)
            .map(String::as_str);
        crate::outbound::first_off_host(others).map(str::to_owned)
    }
}
