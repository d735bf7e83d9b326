//! Upgraded connections (`Connection: Upgrade`, RFC 9110 §7.8): WebSocket and other protocols
//! that take the connection over after a `101 Switching Protocols`.
//!
//! The upgrade request goes through the route's middlewares like any other, so only an accepted
//! caller reaches the upstream; when the upstream answers 101, the two connections are joined and
//! bytes are copied both ways until either side closes, nothing has moved for the idle timeout
//! (`transport.idleTimeout`), or the node shuts down (after the drain time). `h2c` is refused:
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
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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
}

impl Tunnels {
    /// No tunnels yet; each will close after `idle_timeout` without a byte either way.
    pub fn new(idle_timeout: Duration) -> Self {
        Self {
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            idle_timeout,
        }
    }

    /// Joins the caller's connection and the upstream's once both upgrades complete.
    pub fn join(&self, caller: OnUpgrade, upstream: OnUpgrade, route: Arc<str>) {
        let stop = self.stop.clone();
        let idle = self.idle_timeout;
        self.tasks.spawn(async move {
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
            let end = relay(TokioIo::new(caller), TokioIo::new(upstream), idle, stop).await;
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

/// Copies bytes both ways until one side closes, `idle` passes without a byte, or `stop`;
/// says which.
async fn relay<A, B>(a: A, b: B, idle: Duration, stop: CancellationToken) -> &'static str
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
    loop {
        let deadline = started + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
        tokio::select! {
            done = &mut copy => return if done.is_ok() { "closed" } else { "error" },
            () = stop.cancelled() => return "shutdown",
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

    #[tokio::test(start_paused = true)]
    async fn an_idle_tunnel_is_closed_and_a_busy_one_is_not() {
        let (caller, mut caller_far) = tokio::io::duplex(64);
        let (upstream, mut upstream_far) = tokio::io::duplex(64);
        let relayed = tokio::spawn(relay(
            caller,
            upstream,
            Duration::from_secs(10),
            CancellationToken::new(),
        ));
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = [0u8; 5];
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(8)).await;
            caller_far.write_all(b"hello").await.unwrap();
            upstream_far.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"hello");
        }
        assert!(
            !relayed.is_finished(),
            "traffic every 8 s keeps a 10 s tunnel open"
        );
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(relayed.await.unwrap(), "idle");
    }
}
