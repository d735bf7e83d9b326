//! Upgraded connections (`Connection: Upgrade`, RFC 9110 §7.8): WebSocket and other protocols
//! that take the connection over after a `101 Switching Protocols`.
//!
//! The upgrade request goes through the route's middlewares like any other, so only an accepted
//! caller reaches the upstream; when the upstream answers 101, the two connections are joined and
//! bytes are copied both ways until either side closes, nothing has moved for the idle timeout
//! (`transport.idleTimeout`), the tunnel has lived for `transport.upgrades.maxLifetime`, or the
//! node shuts down (after the drain time). A tunnel keeps the caller's connection's slot of
//! `transport.maxConnections` until it closes, and `transport.upgrades.maxConnections` bounds
//! the tunnels apart (an upgrade request past it is 503 before the upstream sees it). `h2c` is
//! refused:
//! an HTTP/2 connection tunnelled this way would let the caller send the upstream requests for
//! any path, past every route and middleware ("h2c smuggling").

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderValue, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::{ConnectionSlot, TransportLimits};

/// What a request asks to upgrade to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requested {
    /// No upgrade.
    None,
    /// An upgrade to these protocols (the `Upgrade` field's value).
    To(HeaderValue),
    /// An upgrade the gateway refuses (`h2c`, or one outside HTTP/1.1).
    Refused,
}

/// Reads whether the caller asks to upgrade: HTTP/1.1, a `Connection` field with the `upgrade`
/// option, and an `Upgrade` field.
pub fn requested(headers: &HeaderMap, version: Version) -> Requested {
    let asks = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|o| o.trim().eq_ignore_ascii_case("upgrade"));
    let protocols: Vec<&HeaderValue> = headers.get_all(UPGRADE).iter().collect();
    match (asks, protocols.as_slice()) {
        (false, _) | (true, []) => Requested::None,
        (true, [one]) if version == Version::HTTP_11 => {
            let h2c = one.to_str().map_or(true, |v| {
                v.split(',').any(|p| {
                    p.trim()
                        .split('/')
                        .next()
                        .is_some_and(|n| n.eq_ignore_ascii_case("h2c"))
                })
            });
            if h2c {
                Requested::Refused
            } else {
                Requested::To((*one).clone())
            }
        }
        _ => Requested::Refused,
    }
}

/// Puts the upgrade's fields back on a message whose hop-by-hop fields were removed.
pub fn restore(headers: &mut HeaderMap, protocols: HeaderValue) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, protocols);
}

/// The node's upgraded connections: relayed by tasks that end on shutdown.
pub struct Tunnels {
    tasks: TaskTracker,
    stop: CancellationToken,
    idle_timeout: Duration,
    max_lifetime: Option<Duration>,
    /// Places for tunnels (`transport.upgrades.maxConnections`), when bounded.
    places: Option<Arc<Semaphore>>,
}

/// What a tunnel holds while it is open: its place among the tunnels, and its caller's
/// connection's slot of `maxConnections`.
pub struct Held {
    _place: Option<OwnedSemaphorePermit>,
    _slot: Option<ConnectionSlot>,
}

impl Tunnels {
    /// No tunnels yet; each will close after `limits.idle_timeout` without a byte either way,
    /// or after `limits.upgraded_max_lifetime`; at most `limits.max_upgraded_connections`.
    pub fn new(limits: &TransportLimits) -> Self {
        Self {
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            idle_timeout: limits.idle_timeout,
            max_lifetime: limits.upgraded_max_lifetime,
            places: limits
                .max_upgraded_connections
                .map(|n| Arc::new(Semaphore::new(n))),
        }
    }

    /// A place for one more tunnel, holding `slot` (the caller's connection's); `None` when
    /// every place is taken.
    pub fn admit(&self, slot: Option<ConnectionSlot>) -> Option<Held> {
        let place = match &self.places {
            Some(places) => Some(Arc::clone(places).try_acquire_owned().ok()?),
            None => None,
        };
        Some(Held {
            _place: place,
            _slot: slot,
        })
    }

    /// Joins the caller's connection and the upstream's once both upgrades complete; `held`
    /// is let go when the tunnel closes.
    pub fn join(&self, caller: OnUpgrade, upstream: OnUpgrade, route: Arc<str>, held: Held) {
        let stop = self.stop.clone();
        let idle = self.idle_timeout;
        let lifetime = self.max_lifetime;
        self.tasks.spawn(async move {
            let _held = held;
            let (caller, upstream) = match tokio::try_join!(caller, upstream) {
                Ok(both) => both,
                Err(error) => {
                    tracing::debug!(%route, %error, "upgrade did not complete");
                    return;
                }
            };
            let metrics = crate::telemetry::metrics::metrics();
            metrics.upgrades_total.inc();
            metrics.upgrades_open.inc();
            let end = relay(
                TokioIo::new(caller),
                TokioIo::new(upstream),
                idle,
                lifetime,
                stop,
            )
            .await;
            metrics.upgrades_open.dec();
            tracing::debug!(%route, end, "upgraded connection closed");
        });
    }

    /// Stops taking new tunnels and lets the open ones run for at most `drain`, then closes
    /// them.
    pub async fn drain(&self, drain: Duration) {
        self.tasks.close();
        if tokio::time::timeout(drain, self.tasks.wait())
            .await
            .is_err()
        {
            self.stop.cancel();
            self.tasks.wait().await;
        }
    }
}

/// Copies bytes both ways until one side closes, `idle` passes without a byte, `lifetime`
/// passes, or `stop`; says which.
async fn relay<A, B>(
    a: A,
    b: B,
    idle: Duration,
    lifetime: Option<Duration>,
    stop: CancellationToken,
) -> &'static str
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut a = Counted {
        io: a,
        started,
        last: Arc::clone(&last),
    };
    let mut b = Counted {
        io: b,
        started,
        last: Arc::clone(&last),
    };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    let end_of_life = async {
        match lifetime {
            Some(l) => tokio::time::sleep_until(started + l).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(end_of_life);
    loop {
        let deadline = started + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
        tokio::select! {
            done = &mut copy => return if done.is_ok() { "closed" } else { "error" },
            () = stop.cancelled() => return "shutdown",
            () = &mut end_of_life => return "lifetime",
            () = tokio::time::sleep_until(deadline) => {
                let since = started + Duration::from_millis(last.load(Ordering::Relaxed));
                if since + idle <= Instant::now() {
                    return "idle";
                }
            }
        }
    }
}

/// One side of a tunnel, noting when bytes last arrived from it.
struct Counted<I> {
    io: I,
    started: Instant,
    /// Milliseconds after `started` of the last bytes read on either side.
    last: Arc<AtomicU64>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Counted<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.last.store(ms, Ordering::Relaxed);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Counted<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn an_upgrade_needs_both_fields_on_http_1_1() {
        let ws = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(
            requested(&ws, Version::HTTP_11),
            Requested::To(HeaderValue::from_static("websocket"))
        );
        assert_eq!(requested(&ws, Version::HTTP_10), Requested::Refused);
        let no_option = headers(&[("connection", "keep-alive"), ("upgrade", "websocket")]);
        assert_eq!(requested(&no_option, Version::HTTP_11), Requested::None);
        let no_protocol = headers(&[("connection", "upgrade")]);
        assert_eq!(requested(&no_protocol, Version::HTTP_11), Requested::None);
    }

    #[test]
    fn h2c_and_ambiguous_upgrades_are_refused() {
        for value in ["h2c", "H2C", "foo, h2c", "h2c/1"] {
            let h = headers(&[
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", value),
            ]);
            assert_eq!(
                requested(&h, Version::HTTP_11),
                Requested::Refused,
                "{value}"
            );
        }
        let two = headers(&[
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(requested(&two, Version::HTTP_11), Requested::Refused);
    }

    /// A tunnel relayed with a 10 s idle timeout and `lifetime`, after one message went through
    /// it every `every`, `times` times; its far ends stay open with the caller (a closed end
    /// would end the tunnel).
    async fn busy_tunnel(
        lifetime: Option<Duration>,
        every: Duration,
        times: usize,
    ) -> (
        tokio::task::JoinHandle<&'static str>,
        [tokio::io::DuplexStream; 2],
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (caller, mut caller_far) = tokio::io::duplex(64);
        let (upstream, mut upstream_far) = tokio::io::duplex(64);
        let relayed = tokio::spawn(relay(
            caller,
            upstream,
            Duration::from_secs(10),
            lifetime,
            CancellationToken::new(),
        ));
        let mut buf = [0u8; 5];
        for _ in 0..times {
            tokio::time::sleep(every).await;
            caller_far.write_all(b"hello").await.unwrap();
            upstream_far.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"hello");
        }
        (relayed, [caller_far, upstream_far])
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_tunnel_is_closed_and_a_busy_one_is_not() {
        let (relayed, _ends) = busy_tunnel(None, Duration::from_secs(8), 3).await;
        assert!(
            !relayed.is_finished(),
            "traffic every 8 s keeps a 10 s tunnel open"
        );
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(relayed.await.unwrap(), "idle");
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_tunnel_is_closed_at_the_end_of_its_lifetime() {
        let (relayed, _ends) =
            busy_tunnel(Some(Duration::from_secs(30)), Duration::from_secs(5), 5).await;
        assert!(!relayed.is_finished(), "25 s into a 30 s lifetime");
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(relayed.await.unwrap(), "lifetime");
    }

    #[test]
    fn tunnels_past_their_bound_are_refused_and_a_closed_one_frees_its_place() {
        let tunnels = Tunnels::new(&TransportLimits {
            max_upgraded_connections: Some(2),
            ..TransportLimits::default()
        });
        let first = tunnels.admit(None).unwrap();
        let _second = tunnels.admit(None).unwrap();
        assert!(tunnels.admit(None).is_none());
        drop(first);
        assert!(tunnels.admit(None).is_some());
        let unbounded = Tunnels::new(&TransportLimits::default());
        let held: Vec<_> = (0..1000).map(|_| unbounded.admit(None).unwrap()).collect();
        assert_eq!(held.len(), 1000);
    }
}
