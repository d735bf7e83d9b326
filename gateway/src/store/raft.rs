//! The Raft cache service as the fleet's store (`store: { raft: { endpoints: [...] } }`).
//!
//! Every call goes to the cluster's leader. The store remembers which node that is, follows a
//! redirect (`tokengate-leader` metadata) when a follower answers, and tries the other
//! endpoints when a node does not answer or refuses without naming a leader (as a leader does
//! once no quorum has acknowledged it for a while: it may be cut off from its peers, which
//! elect another), pausing briefly after a full round without a leader (an election is under
//! way). A call is bounded by the configured timeout, then fails as
//! [`StoreError::Unavailable`]: the node serves from its L1 while the cluster has no leader.
//!
//! A task follows the leader's `Watch` stream and turns it into [`StoreEvent`]s. After a
//! reconnect it resumes from the last log index it saw; a node that no longer has those
//! changes answers with a resync, passed on as [`StoreEvent::Resync`].

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokengate_proto::cache as pc;
use tokengate_proto::cache::token_cache_client::TokenCacheClient;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Response, Status};

use super::RaftStoreConfig;
use super::{FencingToken, Lookup, NodeId, PutOutcome, StoreError, StoreEvent, TokenStore};
use crate::cacheclient::convert::{key_from, sealed_from, sealed_to};
use crate::cacheclient::{Bearer, Dialer, leader_hint};
use crate::telemetry::otel;
use crate::token::{SealedEntry, TokenKey, UnixMillis};

/// Events a slow subscriber may fall behind by before it must re-read.
const EVENT_BUFFER: usize = 4096;
/// Pause after asking every endpoint without finding a leader.
const NO_LEADER_PAUSE: Duration = Duration::from_millis(50);
/// Largest answer accepted from a cache node (a `List` page is at most 2 MiB of entries).
const MAX_RESPONSE_BYTES: usize = 16 << 20;
/// Pause before re-opening a broken watch stream.
const REWATCH_BACKOFF: Duration = Duration::from_millis(200);

/// A client that passes the caller's trace context and the gateway's credential on.
type Client = TokenCacheClient<InterceptedService<Channel, CallMetadata>>;

/// What every call carries: the trace context, and the role's bearer secret.
#[derive(Clone)]
struct CallMetadata {
    bearer: Option<Bearer>,
}

impl tonic::service::Interceptor for CallMetadata {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let mut req = otel::inject_grpc(req)?;
        if let Some(b) = &self.bearer {
            req.metadata_mut().insert("authorization", b.clone());
        }
        Ok(req)
    }
}

struct Inner {
    endpoints: Vec<String>,
    clients: papaya::HashMap<String, Client>,
    leader: RwLock<String>,
    timeout: Duration,
    dialer: Dialer,
    metadata: CallMetadata,
}

/// A [`TokenStore`] on the Raft cache service.
pub struct RaftStore {
    inner: Arc<Inner>,
    events: broadcast::Sender<StoreEvent>,
    stop: CancellationToken,
    watching: tokio::sync::watch::Receiver<bool>,
}

impl Drop for RaftStore {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Inner {
    fn client(&self, addr: &str) -> Result<Client, StoreError> {
        let clients = self.clients.pin();
        if let Some(c) = clients.get(addr) {
            return Ok(c.clone());
        }
        let channel = self.dialer.channel(addr).map_err(StoreError::unavailable)?;
        let c = TokenCacheClient::with_interceptor(channel, self.metadata.clone())
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        clients.insert(addr.to_owned(), c.clone());
        Ok(c)
    }

    fn leader(&self) -> String {
        self.leader
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_leader(&self, addr: &str) {
        let mut l = self.leader.write().unwrap_or_else(|p| p.into_inner());
        if *l != addr {
            *l = addr.to_owned();
        }
    }

    /// The endpoint after `addr` in the configured list.
    fn next_endpoint(&self, addr: &str) -> String {
        let i = self.endpoints.iter().position(|e| e == addr);
        let next = i.map_or(0, |i| (i + 1) % self.endpoints.len());
        self.endpoints[next].clone()
    }

    /// [`Inner::call`] with a request message, cloned for each attempt.
    async fn ask<R: Clone, T, Fut>(
        &self,
        req: R,
        op: impl Fn(Client, R) -> Fut,
    ) -> Result<T, StoreError>
    where
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.call(|c| op(c, req.clone())).await
    }

    /// Runs `op` against the leader, following redirects and trying other endpoints until it
    /// answers or the timeout passes.
    async fn call<T, Fut>(&self, op: impl Fn(Client) -> Fut) -> Result<T, StoreError>
    where
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.timeout;
        let mut target = self.leader();
        let mut misses = 0;
        loop {
            let client = self.client(&target)?;
            let status = match tokio::time::timeout_at(deadline, op(client)).await {
                Err(_) => {
                    return Err(StoreError::unavailable(format!(
                        "no answer from the cache service within {:?}",
                        self.timeout
                    )));
                }
                Ok(Ok(resp)) => {
                    self.set_leader(&target);
                    return Ok(resp.into_inner());
                }
                Ok(Err(status)) => status,
            };
            // A status the client made from a connection failure (one with a source: a
            // refused TLS handshake, an HTTP/2 protocol error) says nothing of the cache
            // service: try the next node, as when one does not answer.
            let connection_failed = std::error::Error::source(&status).is_some();
            if matches!(
                status.code(),
                Code::Unauthenticated | Code::PermissionDenied
            ) {
                // A credential problem is the operator's to fix; every node would say the same.
                return Err(StoreError::unavailable(format!(
                    "cache node {target} refused the credential: {}",
                    status.message()
                )));
            }
            if matches!(
                status.code(),
                Code::InvalidArgument | Code::ResourceExhausted | Code::OutOfRange
            ) {
                return Err(StoreError::Refused(format!(
                    "cache node {target}: {}",
                    status.message()
                )));
            }
            if !connection_failed
                && !matches!(
                    status.code(),
                    Code::Unavailable | Code::Unknown | Code::Cancelled
                )
            {
                return Err(StoreError::Corrupt(format!(
                    "cache node {target} refused the call: {}",
                    status.message()
                )));
            }
            // A redirect is followed only to a configured endpoint: the credential goes where
            // the operator pointed it, never where a node says.
            let hint = leader_hint(&status)
                .filter(|l| *l != target && self.endpoints.iter().any(|e| e == l))
                .map(str::to_owned);
            tracing::debug!(
                node = %target,
                code = ?status.code(),
                reason = status.message(),
                "cache node call retried elsewhere"
            );
            target = match hint {
                Some(leader) => leader,
                None => {
                    misses += 1;
                    if misses % self.endpoints.len() == 0 {
                        tokio::time::sleep(NO_LEADER_PAUSE).await;
                    }
                    self.next_endpoint(&target)
                }
            };
            if Instant::now() >= deadline {
                return Err(StoreError::unavailable(format!(
                    "the cache service has no reachable leader: {}",
                    status.message()
                )));
            }
        }
    }
}

impl RaftStore {
    /// Connects lazily and starts following changes. Does not wait for the cluster.
    pub fn new(cfg: &RaftStoreConfig) -> Self {
        let inner = Arc::new(Inner {
            leader: RwLock::new(cfg.endpoints[0].clone()),
            endpoints: cfg.endpoints.clone(),
            clients: papaya::HashMap::new(),
            timeout: cfg.timeout,
            dialer: Dialer::new(cfg.tls.as_ref()),
            metadata: CallMetadata {
                bearer: crate::cacheclient::bearer(cfg.token.as_ref()),
            },
        });
        let events = broadcast::channel(EVENT_BUFFER).0;
        let stop = CancellationToken::new();
        let (watching_tx, watching) = tokio::sync::watch::channel(false);
        tokio::spawn(follow(
            Arc::clone(&inner),
            events.clone(),
            stop.clone(),
            watching_tx,
        ));
        Self {
            inner,
            events,
            stop,
            watching,
        }
    }

    /// Waits up to `within` for the change stream to be open; whether it is (tests; a node
    /// does not need to wait).
    pub async fn watching(&self, within: Duration) -> bool {
        let mut rx = self.watching.clone();
        matches!(
            tokio::time::timeout(within, rx.wait_for(|w| *w)).await,
            Ok(Ok(_))
        )
    }
}

/// Follows the leader's change stream until `stop`.
async fn follow(
    inner: Arc<Inner>,
    events: broadcast::Sender<StoreEvent>,
    stop: CancellationToken,
    watching: tokio::sync::watch::Sender<bool>,
) {
    use pc::watch_event::Change;
    let mut after_index = 0;
    let mut target = inner.leader();
    loop {
        let opened = async {
            let mut client = inner.client(&target)?;
            let stream = client
                .watch(pc::WatchRequest { after_index })
                .await
                .map_err(|s| StoreError::unavailable(s.message()))?;
            Ok::<_, StoreError>(stream.into_inner())
        };
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            s = opened => s,
        };
        if let Ok(mut stream) = stream {
            watching.send_replace(true);
            loop {
                let msg = tokio::select! {
                    () = stop.cancelled() => return,
                    m = stream.message() => m,
                };
                let Ok(Some(event)) = msg else {
                    watching.send_replace(false);
                    break;
                };
                let change = match event.change {
                    Some(Change::Stored(s)) => {
                        key_from(&s.key).ok().map(|key| StoreEvent::Stored {
                            key,
                            version: s.version,
                        })
                    }
                    Some(Change::Evicted(e)) => {
                        key_from(&e.key).ok().map(|key| StoreEvent::Evicted { key })
                    }
                    // The cluster replicates every acknowledged write: a resync means this
                    // stream missed changes, never that the store lost entries.
                    Some(Change::Resync(_)) => Some(StoreEvent::Resync { lost: false }),
                    None => None,
                };
                after_index = after_index.max(event.index);
                if let Some(c) = change {
                    // No subscriber is fine.
                    let _ = events.send(c);
                }
            }
        }
        // Prefer the node calls found to lead; else go round the endpoints.
        let leader = inner.leader();
        target = if leader != target {
            leader
        } else {
            inner.next_endpoint(&target)
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(REWATCH_BACKOFF) => {}
        }
    }
}

impl RaftStore {
    async fn send_put(&self, req: pc::PutRequest) -> Result<PutOutcome, StoreError> {
        let resp = self
            .inner
            .ask(req, |mut c, r| async move { c.put(r).await })
            .await?;
        match resp.outcome() {
            pc::PutOutcome::Stored => Ok(PutOutcome::Stored),
            pc::PutOutcome::Stale => Ok(PutOutcome::Stale),
            pc::PutOutcome::Fenced => Ok(PutOutcome::Fenced),
            pc::PutOutcome::Unspecified => Err(StoreError::Corrupt("put without outcome".into())),
        }
    }
}

fn keys(raw: Vec<Vec<u8>>) -> Vec<TokenKey> {
    raw.iter().filter_map(|k| key_from(k).ok()).collect()
}

impl TokenStore for RaftStore {
    async fn get(&self, key: &TokenKey) -> Result<Option<SealedEntry>, StoreError> {
        let req = pc::GetRequest {
            key: key.as_bytes().to_vec(),
        };
        let resp = self
            .inner
            .ask(req, |mut c, r| async move { c.get(r).await })
            .await?;
        resp.entry
            .map(|e| sealed_from(Some(e)).map_err(|s| StoreError::Corrupt(s.message().to_owned())))
            .transpose()
    }

    async fn put(
        &self,
        key: &TokenKey,
        entry: SealedEntry,
        fence: Option<FencingToken>,
    ) -> Result<PutOutcome, StoreError> {
        self.send_put(pc::PutRequest {
            key: key.as_bytes().to_vec(),
            entry: Some(sealed_to(&entry)),
            fence: fence.map(|f| f.0),
            release_fill_lease: None,
        })
        .await
    }

    async fn lookup(
        &self,
        key: &TokenKey,
        holder: &NodeId,
        ttl: Duration,
    ) -> Result<Lookup, StoreError> {
        let req = pc::FillLeaseRequest {
            key: key.as_bytes().to_vec(),
            holder: holder.as_str().to_owned(),
            ttl_ms: ttl.as_millis() as u64,
        };
        let resp = self
            .inner
            .ask(req, |mut c, r| async move { c.lookup(r).await })
            .await?;
        match resp.entry {
            Some(e) => sealed_from(Some(e))
                .map(|e| Lookup::Found(Box::new(e)))
                .map_err(|s| StoreError::Corrupt(s.message().to_owned())),
            None => Ok(Lookup::Missing { lease: resp.held }),
        }
    }

    async fn put_filled(
        &self,
        key: &TokenKey,
        entry: SealedEntry,
        holder: &NodeId,
    ) -> Result<PutOutcome, StoreError> {
        self.send_put(pc::PutRequest {
            key: key.as_bytes().to_vec(),
            entry: Some(sealed_to(&entry)),
            fence: None,
            release_fill_lease: Some(holder.as_str().to_owned()),
        })
        .await
    }

    async fn postpone(
        &self,
        key: &TokenKey,
        until: UnixMillis,
        fence: Option<FencingToken>,
    ) -> Result<(), StoreError> {
        let req = pc::PostponeRequest {
            key: key.as_bytes().to_vec(),
            until,
            fence: fence.map(|f| f.0),
        };
        self.inner
            .ask(req, |mut c, r| async move { c.postpone(r).await })
            .await
            .map(|_| ())
    }

    async fn evict(&self, key: &TokenKey, version: Option<u64>) -> Result<bool, StoreError> {
        let req = pc::DeleteRequest {
            key: key.as_bytes().to_vec(),
            version,
        };
        let resp = self
            .inner
            .ask(req, |mut c, r| async move { c.delete(r).await })
            .await?;
        Ok(resp.removed)
    }

    async fn try_fill_lease(
        &self,
        key: &TokenKey,
        holder: &NodeId,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let req = pc::FillLeaseRequest {
            key: key.as_bytes().to_vec(),
            holder: holder.as_str().to_owned(),
            ttl_ms: ttl.as_millis() as u64,
        };
        let resp = self
            .inner
            .ask(req, |mut c, r| async move { c.try_fill_lease(r).await })
            .await?;
        Ok(resp.held)
    }

    async fn release_fill_lease(&self, key: &TokenKey, holder: &NodeId) -> Result<(), StoreError> {
        let req = pc::ReleaseFillLeaseRequest {
            key: key.as_bytes().to_vec(),
            holder: holder.as_str().to_owned(),
        };
        self.inner
            .ask(req, |mut c, r| async move { c.release_fill_lease(r).await })
            .await
            .map(|_| ())
    }

    async fn acquire_refresh_lease(
        &self,
        holder: &NodeId,
        ttl: Duration,
    ) -> Result<Option<FencingToken>, StoreError> {
        let req = pc::LeaseRequest {
            holder: holder.as_str().to_owned(),
            ttl_ms: ttl.as_millis() as u64,
        };
        let resp = self
            .inner
            .ask(req, |mut c, r| async move { c.acquire_lease(r).await })
            .await?;
        Ok(resp.fence.map(FencingToken))
    }

    async fn release_refresh_lease(&self, holder: &NodeId) -> Result<(), StoreError> {
        let req = pc::ReleaseLeaseRequest {
            holder: holder.as_str().to_owned(),
        };
        self.inner
            .ask(req, |mut c, r| async move { c.release_lease(r).await })
            .await
            .map(|_| ())
    }

    async fn due_for_refresh(
        &self,
        now: UnixMillis,
        used_since: UnixMillis,
        limit: usize,
    ) -> Result<Vec<TokenKey>, StoreError> {
        let req = pc::DueRequest {
            now,
            used_since,
            limit: limit.min(u32::MAX as usize) as u32,
        };
        let resp = self
            .inner
            .ask(req, |mut c, r| async move { c.due_for_refresh(r).await })
            .await?;
        Ok(keys(resp.keys))
    }

    async fn touch(&self, uses: &[(TokenKey, UnixMillis)]) -> Result<(), StoreError> {
        let req = pc::TouchRequest {
            uses: uses
                .iter()
                .map(|(k, at)| pc::Use {
                    key: k.as_bytes().to_vec(),
                    at: *at,
                })
                .collect(),
        };
        self.inner
            .ask(req, |mut c, r| async move { c.touch(r).await })
            .await
            .map(|_| ())
    }

    async fn list(
        &self,
        after: Option<TokenKey>,
        limit: usize,
    ) -> Result<Vec<(TokenKey, SealedEntry)>, StoreError> {
        let corrupt = |s: Status| StoreError::Corrupt(s.message().to_owned());
        let mut listed = Vec::new();
        let mut after = after;
        // The service pages at most 1,000 entries per call.
        while listed.len() < limit {
            let req = pc::ListRequest {
                after: after.map(|k| k.as_bytes().to_vec()).unwrap_or_default(),
                limit: (limit - listed.len()).min(1000) as u32,
            };
            let resp = self
                .inner
                .ask(req, |mut c, r| async move { c.list(r).await })
                .await?;
            if resp.entries.is_empty() {
                break;
            }
            for item in resp.entries {
                let key = key_from(&item.key).map_err(corrupt)?;
                after = Some(key);
                listed.push((key, sealed_from(item.entry).map_err(corrupt)?));
            }
        }
        Ok(listed)
    }

    async fn mark_due(&self, key: &TokenKey) -> Result<bool, StoreError> {
        let req = pc::GetRequest {
            key: key.as_bytes().to_vec(),
        };
        let resp = self
            .inner
            .ask(req, |mut c, r| async move { c.mark_due(r).await })
            .await?;
        Ok(resp.first)
    }

    async fn refresh_lease(&self) -> Result<Option<super::LeaseInfo>, StoreError> {
        let resp = self
            .inner
            .ask(
                pc::Empty {},
                |mut c, r| async move { c.refresh_lease(r).await },
            )
            .await?;
        Ok(resp.holder.map(|holder| super::LeaseInfo {
            holder,
            fence: resp.fence,
            expires_in_ms: resp.expires_in_ms,
        }))
    }

    fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }

    async fn claim_once(&self, key: &TokenKey, until: UnixMillis) -> Result<bool, StoreError> {
        let req = pc::ClaimRequest {
            key: key.as_bytes().to_vec(),
            until,
        };
        let resp = self
            .inner
            .ask(req, |mut c, r| async move { c.claim_once(r).await })
            .await?;
        Ok(resp.first)
    }

    async fn take_rate(
        &self,
        key: &TokenKey,
        limit: crate::store::rate::RateLimit,
    ) -> Result<Option<Duration>, StoreError> {
        let req = pc::RateRequest {
            key: key.as_bytes().to_vec(),
            interval_us: limit.interval_us,
            burst: limit.burst,
        };
        let resp = self
            .inner
            .ask(req, |mut c, r| async move { c.take_rate(r).await })
            .await?;
        Ok((resp.wait_us > 0).then(|| Duration::from_micros(resp.wait_us)))
    }
}
