//! The `TokenCache` server, for gateways. It is answered by the leader: a follower (or a node
//! that knows no leader) answers `UNAVAILABLE` with the leader's address in the
//! `tokengate-leader` metadata entry, and the client retries there. Writes are stamped with the
//! leader's clock when proposed.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use tokengate_proto::cache as pc;
use tokio::sync::{broadcast, mpsc, oneshot};
use tonic::{Request, Response, Status};

use super::state::{Change, Command, Outcome};
use super::state_machine::WatchItem;
use crate::cacheclient::convert::{key_from, sealed_from, sealed_to};
use crate::token::now_millis;

use super::context::{NodeContext, WatchSlot};

/// Largest page `List` returns, in entries.
const MAX_LIST: usize = 1000;
/// Largest page `List` returns, in bytes of entries (a page ends early past it): well under the
/// 4 MiB a gRPC client accepts by default.
const MAX_LIST_BYTES: usize = 2 << 20;
/// The `TokenCache` server.
pub struct CacheService(pub Arc<NodeContext>);

type WatchStream = Pin<Box<dyn Stream<Item = Result<pc::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pc::token_cache_server::TokenCache for CacheService {
    async fn get(&self, req: Request<pc::GetRequest>) -> Result<Response<pc::GetResponse>, Status> {
        self.0.lead()?;
        let key = key_from(&req.into_inner().key)?;
        let now = now_millis();
        let entry = self
            .0
            .shared
            .read(|a| a.cache.get(&key, now).map(sealed_to));
        Ok(Response::new(pc::GetResponse { entry }))
    }

    async fn lookup(
        &self,
        req: Request<pc::FillLeaseRequest>,
    ) -> Result<Response<pc::LookupResponse>, Status> {
        self.0.lead()?;
        let req = req.into_inner();
        super::bounds::lease(req.ttl_ms, &req.holder)?;
        let key = key_from(&req.key)?;
        let now = now_millis();
        let entry = self
            .0
            .shared
            .read(|a| a.cache.get(&key, now).map(sealed_to));
        let held = entry.is_none()
            && self
                .0
                .fill_leases
                .try_take(key, &req.holder, Duration::from_millis(req.ttl_ms));
        Ok(Response::new(pc::LookupResponse { entry, held }))
    }

    async fn put(&self, req: Request<pc::PutRequest>) -> Result<Response<pc::PutResponse>, Status> {
        let req = req.into_inner();
        let entry = sealed_from(req.entry)?;
        super::bounds::entry(&entry, now_millis())?;
        if let Some(holder) = &req.release_fill_lease {
            super::bounds::lease(1, holder)?;
        }
        let key = key_from(&req.key)?;
        let command = Command::Put {
            key,
            entry: Box::new(entry),
            fence: req.fence,
        };
        let (reply, answer) = oneshot::channel();
        self.0
            .puts
            .send((command, reply, tracing::Span::current()))
            .await
            .map_err(|_| Status::unavailable("the node is shutting down"))?;
        let (outcome, index) = answer
            .await
            .map_err(|_| Status::unavailable("the node is shutting down"))??;
        if let Some(holder) = &req.release_fill_lease {
            self.0.fill_leases.release(&key, holder);
        }
        let outcome = match outcome {
            Outcome::Stored => pc::PutOutcome::Stored,
            Outcome::Stale => pc::PutOutcome::Stale,
            Outcome::Fenced => pc::PutOutcome::Fenced,
            _ => pc::PutOutcome::Unspecified,
        };
        Ok(Response::new(pc::PutResponse {
            outcome: outcome.into(),
            index,
        }))
    }

    async fn delete(
        &self,
        req: Request<pc::DeleteRequest>,
    ) -> Result<Response<pc::DeleteResponse>, Status> {
        let req = req.into_inner();
        let command = Command::Evict {
            key: key_from(&req.key)?,
            version: req.version,
        };
        let (outcome, _) = self.0.write(command).await?;
        Ok(Response::new(pc::DeleteResponse {
            removed: outcome == Outcome::Flag(true),
        }))
    }

    async fn list(
        &self,
        req: Request<pc::ListRequest>,
    ) -> Result<Response<pc::ListResponse>, Status> {
        self.0.lead()?;
        let req = req.into_inner();
        let after = if req.after.is_empty() {
            None
        } else {
            Some(key_from(&req.after)?)
        };
        let limit = (req.limit as usize).clamp(1, MAX_LIST);
        let now = now_millis();
        let entries = self.0.shared.read(|a| a.cache.list(after, limit, now));
        let mut bytes = 0;
        Ok(Response::new(pc::ListResponse {
            entries: entries
                .iter()
                // At least one entry per page, however large, so listing always progresses.
                .take_while(|(_, e)| {
                    let fits =
                        bytes == 0 || bytes + super::bounds::entry_bytes(e) <= MAX_LIST_BYTES;
                    bytes += super::bounds::entry_bytes(e);
                    fits
                })
                .map(|(k, e)| pc::ListedEntry {
                    key: k.as_bytes().to_vec(),
                    entry: Some(sealed_to(e)),
                })
                .collect(),
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<pc::WatchRequest>) -> Result<Response<WatchStream>, Status> {
        let address = req
            .remote_addr()
            .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |a| a.ip());
        let slot = WatchSlot::take(&self.0, address)?;
        let after = req.into_inner().after_index;
        let (mut rx, replay) = self.0.shared.watch(after);
        let (tx, out) = mpsc::channel(256);
        let stop = self.0.shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let first: Vec<WatchItem> = match replay {
                Some(changes) => changes
                    .into_iter()
                    .map(|(i, c)| WatchItem::Change(i, c))
                    .collect(),
                None => vec![WatchItem::Resync(after)],
            };
            for item in first {
                if tx.send(Ok(watch_event(item))).await.is_err() {
                    return;
                }
            }
            loop {
                let item = tokio::select! {
                    () = stop.cancelled() => return,
                    () = tx.closed() => return,
                    item = rx.recv() => match item {
                        Ok(item) => item,
                        Err(broadcast::error::RecvError::Lagged(_)) => WatchItem::Resync(0),
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                };
                if tx.send(Ok(watch_event(item))).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }

    async fn acquire_lease(
        &self,
        req: Request<pc::LeaseRequest>,
    ) -> Result<Response<pc::LeaseResponse>, Status> {
        let req = req.into_inner();
        super::bounds::lease(req.ttl_ms, &req.holder)?;
        let (outcome, _) = self
            .0
            .write(Command::AcquireRefreshLease {
                holder: req.holder,
                ttl_ms: req.ttl_ms,
            })
            .await?;
        let fence = match outcome {
            Outcome::Lease(f) => f,
            _ => None,
        };
        Ok(Response::new(pc::LeaseResponse { fence }))
    }

    async fn release_lease(
        &self,
        req: Request<pc::ReleaseLeaseRequest>,
    ) -> Result<Response<pc::Empty>, Status> {
        let holder = req.into_inner().holder;
        self.0
            .write(Command::ReleaseRefreshLease { holder })
            .await?;
        Ok(Response::new(pc::Empty {}))
    }

    async fn try_fill_lease(
        &self,
        req: Request<pc::FillLeaseRequest>,
    ) -> Result<Response<pc::FillLeaseResponse>, Status> {
        self.0.lead()?;
        let req = req.into_inner();
        super::bounds::lease(req.ttl_ms, &req.holder)?;
        let held = self.0.fill_leases.try_take(
            key_from(&req.key)?,
            &req.holder,
            Duration::from_millis(req.ttl_ms),
        );
        Ok(Response::new(pc::FillLeaseResponse { held }))
    }

    async fn release_fill_lease(
        &self,
        req: Request<pc::ReleaseFillLeaseRequest>,
    ) -> Result<Response<pc::Empty>, Status> {
        self.0.lead()?;
        let req = req.into_inner();
        self.0
            .fill_leases
            .release(&key_from(&req.key)?, &req.holder);
        Ok(Response::new(pc::Empty {}))
    }

    async fn due_for_refresh(
        &self,
        req: Request<pc::DueRequest>,
    ) -> Result<Response<pc::DueResponse>, Status> {
        self.0.lead()?;
        let req = req.into_inner();
        // A scan of every entry: on an O(1) copy of the state, off the async workers, so that
        // neither the state machine nor other calls wait for it.
        let cache = self.0.shared.read(|a| a.cache.clone());
        let limit = (req.limit as usize).min(MAX_LIST);
        let keys = tokio::task::spawn_blocking(move || cache.due(req.now, req.used_since, limit))
            .await
            .map_err(|e| Status::internal(format!("due scan failed: {e}")))?;
        Ok(Response::new(pc::DueResponse {
            keys: keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
        }))
    }

    async fn touch(&self, req: Request<pc::TouchRequest>) -> Result<Response<pc::Empty>, Status> {
        let uses = req
            .into_inner()
            .uses
            .iter()
            .map(|u| Ok((key_from(&u.key)?, u.at)))
            .collect::<Result<Vec<_>, Status>>()?;
        super::bounds::touches(
            uses.len(),
            uses.iter().map(|(_, at)| *at).max(),
            now_millis(),
        )?;
        self.0.write(Command::Touch { uses }).await?;
        Ok(Response::new(pc::Empty {}))
    }

    async fn mark_due(
        &self,
        req: Request<pc::GetRequest>,
    ) -> Result<Response<pc::ClaimResponse>, Status> {
        let key = key_from(&req.into_inner().key)?;
        let (outcome, _) = self.0.write(Command::MarkDue { key }).await?;
        Ok(Response::new(pc::ClaimResponse {
            first: outcome == Outcome::Flag(true),
        }))
    }

    async fn postpone(
        &self,
        req: Request<pc::PostponeRequest>,
    ) -> Result<Response<pc::Empty>, Status> {
        let req = req.into_inner();
        super::bounds::claim(req.until, now_millis())?;
        let command = Command::Postpone {
            key: key_from(&req.key)?,
            until: req.until,
            fence: req.fence,
        };
        self.0.write(command).await?;
        Ok(Response::new(pc::Empty {}))
    }

    async fn refresh_lease(
        &self,
        _: Request<pc::Empty>,
    ) -> Result<Response<pc::LeaseInfo>, Status> {
        self.0.lead()?;
        let now = now_millis();
        let lease = self
            .0
            .shared
            .read(|a| a.cache.refresh_lease().filter(|l| l.until > now).cloned());
        Ok(Response::new(match lease {
            Some(l) => pc::LeaseInfo {
                holder: Some(l.holder),
                fence: l.fence,
                expires_in_ms: l.until - now,
            },
            None => pc::LeaseInfo::default(),
        }))
    }

    async fn claim_once(
        &self,
        req: Request<pc::ClaimRequest>,
    ) -> Result<Response<pc::ClaimResponse>, Status> {
        let req = req.into_inner();
        super::bounds::claim(req.until, now_millis())?;
        let command = Command::ClaimOnce {
            key: key_from(&req.key)?,
            until: req.until,
        };
        let (outcome, _) = self.0.write(command).await?;
        Ok(Response::new(pc::ClaimResponse {
            first: outcome == Outcome::Flag(true),
        }))
    }

    async fn take_rate(
        &self,
        req: Request<pc::RateRequest>,
    ) -> Result<Response<pc::RateResponse>, Status> {
        self.0.lead()?;
        let req = req.into_inner();
        super::bounds::rate(req.interval_us, req.burst)?;
        let key = key_from(&req.key)?;
        let limit = crate::store::rate::RateLimit {
            interval_us: req.interval_us,
            burst: req.burst,
        };
        // A monotonic clock: rate state lives only in this process, so its epoch is enough.
        static EPOCH: std::sync::LazyLock<std::time::Instant> =
            std::sync::LazyLock::new(std::time::Instant::now);
        let now_us = u64::try_from(EPOCH.elapsed().as_micros()).unwrap_or(u64::MAX);
        let wait = self.0.rates.take(&key, now_us, limit).err();
        Ok(Response::new(pc::RateResponse {
            wait_us: wait.map_or(0, |w| u64::try_from(w.as_micros()).unwrap_or(u64::MAX)),
        }))
    }
}

fn watch_event(item: WatchItem) -> pc::WatchEvent {
    use pc::watch_event::Change as C;
    match item {
        WatchItem::Change(index, Change::Stored(key, version)) => pc::WatchEvent {
            index,
            change: Some(C::Stored(pc::Stored {
                key: key.as_bytes().to_vec(),
                version,
            })),
        },
        WatchItem::Change(index, Change::Evicted(key)) => pc::WatchEvent {
            index,
            change: Some(C::Evicted(pc::Evicted {
                key: key.as_bytes().to_vec(),
            })),
        },
        WatchItem::Resync(index) => pc::WatchEvent {
            index,
            change: Some(C::Resync(pc::Empty {})),
        },
    }
}
