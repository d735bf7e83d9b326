//! The Redis store: the fleet shares sealed tokens, leases and change events through Redis
//! (standalone, Sentinel or Cluster).
//!
//! Each operation is one Lua script (`scripts`), so it is atomic whatever the other nodes do.
//! Changes are announced on a pub/sub channel that a task of this store follows; when that
//! subscription breaks and comes back, subscribers are told to re-read ([`StoreEvent::Resync`]),
//! since messages sent meanwhile are lost. Every operation is bounded by the configured timeout
//! and fails as [`StoreError::Unavailable`]; pooled connections reconnect on their own.

mod pool;
mod scripts;

use std::time::Duration;

use deadpool_redis::redis::{self, FromRedisValue};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::RedisConfig;
use super::{FencingToken, Lookup, NodeId, PutOutcome, StoreError, StoreEvent, TokenStore};
use crate::token::{SealedEntry, TokenKey, UnixMillis, now_millis};
use pool::Pools;

/// Events a slow subscriber may fall behind by before it must re-read.
const EVENT_BUFFER: usize = 4096;
/// Wait before re-subscribing after the event subscription broke.
const RESUBSCRIBE_BACKOFF: Duration = Duration::from_millis(250);

/// A [`super::TokenStore`] on Redis.
pub struct RedisStore {
    pools: Pools,
    timeout: Duration,
    /// `{prefix}`: the hash tag every key starts with.
    tag: String,
    events: broadcast::Sender<StoreEvent>,
    stop: CancellationToken,
    subscribed: tokio::sync::watch::Receiver<bool>,
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl RedisStore {
    /// Creates the pools and starts following the event channel. Does not wait for Redis: a
    /// node whose Redis is down starts degraded and connects when Redis comes back.
    pub fn new(cfg: &RedisConfig) -> Result<Self, StoreError> {
        let pools = Pools::new(cfg)?;
        let tag = format!("{{{}}}", cfg.key_prefix);
        let events = broadcast::channel(EVENT_BUFFER).0;
        let stop = CancellationToken::new();
        let (subscribed_tx, subscribed) = tokio::sync::watch::channel(false);
        let channel = format!("{tag}:events");
        tokio::spawn(pool::follow_events(
            pools.clone(),
            channel,
            format!("{tag}:epoch"),
            events.clone(),
            stop.clone(),
            subscribed_tx,
            RESUBSCRIBE_BACKOFF,
        ));
        Ok(Self {
            pools,
            timeout: cfg.timeout,
            tag,
            events,
            stop,
            subscribed,
        })
    }

    /// Waits up to `within` for the event subscription to be active; whether it is (tests; a
    /// node does not need to wait).
    pub async fn subscribed(&self, within: Duration) -> bool {
        let mut rx = self.subscribed.clone();
        matches!(
            tokio::time::timeout(within, rx.wait_for(|s| *s)).await,
            Ok(Ok(_))
        )
    }

    fn entry_prefix(&self) -> String {
        format!("{}:e:", self.tag)
    }

    fn entry_key(&self, key: &TokenKey) -> String {
        format!("{}{}", self.entry_prefix(), key.to_hex())
    }

    fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.tag)
    }

    fn fill_key(&self, key: &TokenKey) -> String {
        self.key(&format!("fill:{}", key.to_hex()))
    }

    async fn put_releasing(
        &self,
        key: &TokenKey,
        entry: SealedEntry,
        fence: Option<FencingToken>,
        holder: Option<&NodeId>,
    ) -> Result<PutOutcome, StoreError> {
        let payload = serde_json::to_string(&entry).expect("sealed entries serialize");
        let mut inv = scripts::PUT.prepare_invoke();
        inv.key(self.entry_key(key))
            .key(self.key("fence"))
            .key(self.key("due"))
            .key(self.key("index"))
            .key(self.fill_key(key))
            .arg(entry.meta.version)
            .arg(payload)
            .arg(entry.meta.expires_at)
            .arg(fence.map(|f| f.0.to_string()).unwrap_or_default())
            .arg(entry.meta.refresh_at)
            .arg(key.to_hex())
            .arg(self.key("events"))
            .arg(entry.meta.last_used)
            .arg(holder.map(NodeId::as_str).unwrap_or_default());
        let outcome: String = self.invoke(inv).await?;
        match outcome.as_str() {
            "stored" => Ok(PutOutcome::Stored),
            "stale" => Ok(PutOutcome::Stale),
            "fenced" => Ok(PutOutcome::Fenced),
            other => Err(StoreError::Corrupt(format!(
                "unexpected put outcome {other:?}"
            ))),
        }
    }

    /// Runs a script, bounded by the timeout.
    async fn invoke<T: FromRedisValue>(
        &self,
        inv: redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, self.pools.invoke(&inv))
            .await
            .map_err(|_| StoreError::unavailable(format!("no answer within {:?}", self.timeout)))?
    }

    /// Runs a command, bounded by the timeout.
    async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, self.pools.query(cmd))
            .await
            .map_err(|_| StoreError::unavailable(format!("no answer within {:?}", self.timeout)))?
    }
}

/// An entry as stored: its JSON, and the last use and refresh time kept beside it.
fn stored_entry(
    key: &TokenKey,
    data: &str,
    used: Option<u64>,
    refresh: Option<u64>,
) -> Result<SealedEntry, StoreError> {
    let mut entry: SealedEntry =
        serde_json::from_str(data).map_err(|e| StoreError::Corrupt(format!("entry {key}: {e}")))?;
    entry.meta.last_used = entry.meta.last_used.max(used.unwrap_or(0));
    // `cachectl refresh` brings the refresh time forward, and a failed renewal's backoff puts
    // it off, without rewriting the entry.
    entry.marked_due = refresh.filter(|r| *r < entry.meta.refresh_at);
    entry.retry_at = refresh.filter(|r| *r > entry.meta.refresh_at);
    Ok(entry)
}

/// Parses an event message: `s <hex> <version>` or `e <hex>`.
fn parse_event(payload: &str) -> Option<StoreEvent> {
    let mut parts = payload.split(' ');
    match (parts.next()?, parts.next()?, parts.next()) {
        ("s", hex, Some(v)) => Some(StoreEvent::Stored {
            key: TokenKey::from_hex(hex)?,
            version: v.parse().ok()?,
        }),
        ("e", hex, None) => Some(StoreEvent::Evicted {
            key: TokenKey::from_hex(hex)?,
        }),
        _ => None,
    }
}

impl TokenStore for RedisStore {
    async fn get(&self, key: &TokenKey) -> Result<Option<SealedEntry>, StoreError> {
        let cmd = redis::cmd("HMGET")
            .arg(self.entry_key(key))
            .arg("d")
            .arg("u")
            .arg("r")
            .to_owned();
        let (data, used, refresh): (Option<String>, Option<u64>, Option<u64>) =
            self.query(&cmd).await?;
        data.map(|d| stored_entry(key, &d, used, refresh))
            .transpose()
    }

    async fn put(
        &self,
        key: &TokenKey,
        entry: SealedEntry,
        fence: Option<FencingToken>,
    ) -> Result<PutOutcome, StoreError> {
        self.put_releasing(key, entry, fence, None).await
    }

    async fn lookup(
        &self,
        key: &TokenKey,
        holder: &NodeId,
        ttl: Duration,
    ) -> Result<Lookup, StoreError> {
        let mut inv = scripts::LOOKUP.prepare_invoke();
        inv.key(self.entry_key(key))
            .key(self.fill_key(key))
            .arg(holder.as_str())
            .arg(ttl.as_millis() as u64);
        let answer: Vec<String> = self.invoke(inv).await?;
        match answer.as_slice() {
            [kind, data, used, refresh] if kind == "e" => {
                stored_entry(key, data, used.parse().ok(), refresh.parse().ok())
                    .map(|e| Lookup::Found(Box::new(e)))
            }
            [kind, held] if kind == "l" => Ok(Lookup::Missing { lease: held == "1" }),
            _ => Err(StoreError::Corrupt("unexpected lookup answer".into())),
        }
    }

    async fn put_filled(
        &self,
        key: &TokenKey,
        entry: SealedEntry,
        holder: &NodeId,
    ) -> Result<PutOutcome, StoreError> {
        self.put_releasing(key, entry, None, Some(holder)).await
    }

    async fn postpone(
        &self,
        key: &TokenKey,
        until: UnixMillis,
        fence: Option<FencingToken>,
    ) -> Result<(), StoreError> {
        let mut inv = scripts::POSTPONE.prepare_invoke();
        inv.key(self.entry_key(key))
            .key(self.key("due"))
            .key(self.key("fence"))
            .arg(until)
            .arg(key.to_hex())
            .arg(fence.map(|f| f.0.to_string()).unwrap_or_default());
        self.invoke::<i64>(inv).await.map(|_| ())
    }

    async fn evict(&self, key: &TokenKey, version: Option<u64>) -> Result<bool, StoreError> {
        let mut inv = scripts::EVICT.prepare_invoke();
        inv.key(self.entry_key(key))
            .key(self.key("due"))
            .key(self.key("index"))
            .arg(version.map(|v| v.to_string()).unwrap_or_default())
            .arg(key.to_hex())
            .arg(self.key("events"));
        let removed: i64 = self.invoke(inv).await?;
        Ok(removed == 1)
    }

    async fn try_fill_lease(
        &self,
        key: &TokenKey,
        holder: &NodeId,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut inv = scripts::FILL_LEASE.prepare_invoke();
        inv.key(self.fill_key(key))
            .arg(holder.as_str())
            .arg(ttl.as_millis() as u64);
        let held: i64 = self.invoke(inv).await?;
        Ok(held == 1)
    }

    async fn release_fill_lease(&self, key: &TokenKey, holder: &NodeId) -> Result<(), StoreError> {
        let mut inv = scripts::RELEASE_FILL.prepare_invoke();
        inv.key(self.fill_key(key)).arg(holder.as_str());
        self.invoke::<i64>(inv).await.map(|_| ())
    }

    async fn acquire_refresh_lease(
        &self,
        holder: &NodeId,
        ttl: Duration,
    ) -> Result<Option<FencingToken>, StoreError> {
        let mut inv = scripts::ACQUIRE_REFRESH.prepare_invoke();
        inv.key(self.key("lease"))
            .key(self.key("fence"))
            .arg(holder.as_str())
            .arg(ttl.as_millis() as u64);
        let fence: Option<u64> = self.invoke(inv).await?;
        Ok(fence.map(FencingToken))
    }

    async fn release_refresh_lease(&self, holder: &NodeId) -> Result<(), StoreError> {
        let mut inv = scripts::RELEASE_REFRESH.prepare_invoke();
        inv.key(self.key("lease")).arg(holder.as_str());
        self.invoke::<i64>(inv).await.map(|_| ())
    }

    async fn due_for_refresh(
        &self,
        now: UnixMillis,
        used_since: UnixMillis,
        limit: usize,
    ) -> Result<Vec<TokenKey>, StoreError> {
        let mut inv = scripts::DUE.prepare_invoke();
        inv.key(self.key("due"))
            .arg(now)
            .arg(used_since)
            .arg(limit)
            .arg(self.entry_prefix());
        let hexes: Vec<String> = self.invoke(inv).await?;
        Ok(hexes.iter().filter_map(|h| TokenKey::from_hex(h)).collect())
    }

    async fn touch(&self, uses: &[(TokenKey, UnixMillis)]) -> Result<(), StoreError> {
        let mut inv = scripts::TOUCH.prepare_invoke();
        inv.key(self.key("due")).arg(self.entry_prefix());
        for (key, at) in uses {
            inv.arg(key.to_hex()).arg(*at);
        }
        self.invoke::<i64>(inv).await.map(|_| ())
    }

    fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }

    /// Reads the live part of the key index, then the page; index members whose entry is
    /// gone are dropped from the index on the way.
    async fn list(
        &self,
        after: Option<TokenKey>,
        limit: usize,
    ) -> Result<Vec<(TokenKey, SealedEntry)>, StoreError> {
        let index = self.key("index");
        let members: Vec<String> = self
            .query(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(&index)
                    .arg(format!("({}", now_millis()))
                    .arg("+inf"),
            )
            .await?;
        let mut keys: Vec<TokenKey> = members
            .iter()
            .filter_map(|h| TokenKey::from_hex(h))
            .collect();
        keys.sort();
        let mut page = Vec::new();
        for key in keys.into_iter().filter(|k| after.is_none_or(|a| *k > a)) {
            if page.len() >= limit {
                break;
            }
            match self.get(&key).await? {
                Some(e) => page.push((key, e)),
                None => {
                    let _: i64 = self
                        .query(redis::cmd("ZREM").arg(&index).arg(key.to_hex()))
                        .await?;
                }
            }
        }
        Ok(page)
    }

    async fn mark_due(&self, key: &TokenKey) -> Result<bool, StoreError> {
        let mut inv = scripts::MARK_DUE.prepare_invoke();
        inv.key(self.entry_key(key))
            .key(self.key("due"))
            .arg(now_millis())
            .arg(key.to_hex());
        let marked: i64 = self.invoke(inv).await?;
        Ok(marked == 1)
    }

    async fn refresh_lease(&self) -> Result<Option<super::LeaseInfo>, StoreError> {
        let lease = self.key("lease");
        let value: Option<String> = self.query(redis::cmd("GET").arg(&lease)).await?;
        let ttl: i64 = self.query(redis::cmd("PTTL").arg(&lease)).await?;
        let Some((holder, fence)) = value.as_deref().and_then(|v| v.split_once(' ')) else {
            return Ok(None);
        };
        let fence = fence
            .parse()
            .map_err(|_| StoreError::Corrupt("refresh lease without a fence".into()))?;
        Ok(Some(super::LeaseInfo {
            holder: holder.to_owned(),
            fence,
            expires_in_ms: ttl.max(0) as u64,
        }))
    }

    async fn claim_once(&self, key: &TokenKey, until: UnixMillis) -> Result<bool, StoreError> {
        let cmd = redis::cmd("SET")
            .arg(self.key(&format!("once:{}", key.to_hex())))
            .arg(1)
            .arg("NX")
            .arg("PXAT")
            .arg(until.max(now_millis() + 1))
            .to_owned();
        let set: Option<String> = self.query(&cmd).await?;
        Ok(set.is_some())
    }

    async fn take_rate(
        &self,
        key: &TokenKey,
        limit: crate::store::rate::RateLimit,
    ) -> Result<Option<Duration>, StoreError> {
        let mut inv = scripts::RATE.prepare_invoke();
        inv.key(self.key(&format!("rate:{}", key.to_hex())))
            .arg(limit.interval_us)
            .arg(limit.tolerance_us());
        let wait: u64 = self.invoke(inv).await?;
        Ok((wait > 0).then(|| Duration::from_micros(wait)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_their_wire_form() {
        let key = TokenKey::from_bytes([0xab; 32]);
        assert_eq!(
            parse_event(&format!("s {} 42", key.to_hex())),
            Some(StoreEvent::Stored { key, version: 42 })
        );
        assert_eq!(
            parse_event(&format!("e {}", key.to_hex())),
            Some(StoreEvent::Evicted { key })
        );
        assert_eq!(parse_event("s nothex 1"), None);
        assert_eq!(parse_event("x"), None);
    }
}
