//! Accepting connections and serving each: its slot of `maxConnections`, the TLS handshake,
//! hyper's connection with the listener's limits, and the graceful drain.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::tls::{PeerCertificate, TlsSession};

use super::timers::{Activity, Alarm, InFlight, MIN_ALARM, Tracked, Watched};
use super::{
    ACCEPT_BACKOFF, ConnectionSlot, HYPER_MAX_HEADERS, Handler, IDLE_CLOSE_GRACE, ServeArgs, Share,
};

/// Serves `listener` until `with.stop`, one connection per permit of `with.slots`; its
/// connections are counted in the metrics when `observed`.
pub(super) async fn run(
    listener: TcpListener,
    with: ServeArgs,
    observed: bool,
    share: Option<Share>,
) {
    let ServeArgs {
        handler,
        stop: shutdown,
        drain,
        limits,
        tls,
        slots,
    } = with;
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper's own head timer also runs while a keep-alive connection waits for its next
        // request, which would close idle connections after readHeaderTimeout instead of
        // idleTimeout (and race a load balancer reusing them). The head timer here starts at
        // the first byte of a head instead (see `Activity`).
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes);
    if limits.max_headers != HYPER_MAX_HEADERS {
        // Told a number, hyper fills a list of that many entries for every head it parses;
        // at its own default it parses into room it leaves uninitialised.
        builder.http1().max_headers(limits.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(limits.keep_alive_interval)
        .keep_alive_timeout(limits.keep_alive_timeout);
    let builder = Arc::new(builder);
    let connections = TaskTracker::new();
    // `closing`: finish in-flight requests and close; `abort`: drop what is left.
    let closing = CancellationToken::new();
    let abort = CancellationToken::new();
    loop {
        if let Some(share) = &share {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = share.turn() => {}
            }
        }
        // Accepted, then given a slot: a connection past `maxConnections` waits here, one per
        // listener (the others wait in the kernel's backlog). Taking the slot first would have
        // each worker's accept hold one while it waits, and leave slots unused that workers
        // share.
        let (stream, remote) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let slot = tokio::select! {
            () = shutdown.cancelled() => break,
            slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            handler: Arc::clone(&handler),
            builder: Arc::clone(&builder),
            idle_timeout: limits.idle_timeout,
            read_header_timeout: limits.read_header_timeout,
            tls: tls.clone(),
            observed,
            closing: closing.clone(),
            abort: abort.clone(),
        };
        let counted = share.as_ref().map(Share::opened);
        let slot = Arc::new(slot);
        connections.spawn(async move {
            let _counted = counted;
            conn.serve(stream, remote, slot).await;
        });
    }
    drop(listener);
    closing.cancel();
    connections.close();
    if tokio::time::timeout(drain, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            ?drain,
            "drain timeout reached; closing remaining connections"
        );
        abort.cancel();
        connections.wait().await;
    }
}

/// One accepted connection and what it needs.
struct Connection {
    handler: Handler,
    builder: Arc<auto::Builder<TokioExecutor>>,
    idle_timeout: Duration,
    read_header_timeout: Duration,
    /// Accepts the TLS handshake first, on a TLS listener.
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Counted in the connection metrics (the proxy listener's connections are).
    observed: bool,
    closing: CancellationToken,
    abort: CancellationToken,
}

impl Connection {
    /// Serves the connection, which holds `slot` of `maxConnections` (as does any connection
    /// upgraded from it, until it closes).
    async fn serve(
        self,
        stream: TcpStream,
        remote: SocketAddr,
        slot: Arc<tokio::sync::OwnedSemaphorePermit>,
    ) {
        let metrics = crate::telemetry::metrics::metrics();
        let observed = self.observed;
        if observed {
            metrics.connections_open.inc();
        }
        match self.tls.clone() {
            None => self.serve_io(stream, remote, None, slot).await,
            Some(acceptor) => {
                let handshake =
                    tokio::time::timeout(self.read_header_timeout, acceptor.accept(stream));
                let done = tokio::select! {
                    done = handshake => done,
                    () = self.closing.cancelled() => Ok(Err(std::io::ErrorKind::Interrupted.into())),
                };
                match done {
                    Ok(Ok(tls)) => {
                        let server = tls.get_ref().1;
                        let session = TlsSession {
                            client_certificate: server
                                .peer_certificates()
                                .and_then(|chain| chain.first())
                                .and_then(|c| PeerCertificate::from_der(c))
                                .map(Arc::new),
                            server_name: server
                                .server_name()
                                .map(|n| Arc::from(n.to_ascii_lowercase())),
                        };
                        self.serve_io(tls, remote, Some(Arc::new(session)), slot)
                            .await;
                    }
                    Ok(Err(error)) => {
                        metrics.tls_handshake_failures.inc();
                        tracing::debug!(%error, %remote, "TLS handshake failed");
                    }
                    Err(_) => {
                        metrics.tls_handshake_failures.inc();
                        tracing::debug!(%remote, "TLS handshake not finished within readHeaderTimeout");
                    }
                }
            }
        }
        if observed {
            metrics.connections_open.dec();
        }
    }

    async fn serve_io<I>(
        self,
        io: I,
        remote: SocketAddr,
        session: Option<Arc<TlsSession>>,
        slot: Arc<tokio::sync::OwnedSemaphorePermit>,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let metrics = crate::telemetry::metrics::metrics();
        let activity = Arc::new(Activity::new());
        let handler = Arc::clone(&self.handler);
        let tracked = Arc::clone(&activity);
        let service = service_fn(move |mut req: Request<Incoming>| {
            let guard = InFlight::begin(&tracked);
            if let Some(session) = &session {
                req.extensions_mut().insert(Arc::clone(session));
            }
            // Only a request that may upgrade takes the slot along (no map for the others).
            if req.headers().contains_key(http::header::UPGRADE) {
                req.extensions_mut()
                    .insert(ConnectionSlot(Arc::clone(&slot)));
            }
            let fut = handler(req, remote);
            async move {
                let resp = fut.await;
                // hyper serves the wrapper as it is: no second box per response.
                Ok::<_, Infallible>(resp.map(|body| Tracked {
                    body,
                    _guard: guard,
                }))
            }
        });
        let io = Watched {
            io,
            activity: Arc::clone(&activity),
        };
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(conn);
        let mut closing = false;
        let mut hard_stop: Option<Instant> = None;
        // One timer for every deadline of the connection (see `Alarm`): no timer is set or
        // cleared per request.
        let sleep = tokio::time::sleep_until(activity.idle_deadline(self.idle_timeout));
        tokio::pin!(sleep);
        loop {
            let alarm = Alarm {
                sleep: sleep.as_mut(),
                activity: &activity,
                idle_timeout: self.idle_timeout,
                read_header_timeout: self.read_header_timeout,
                hard_stop,
            };
            tokio::select! {
                biased;
                result = conn.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, %remote, "connection ended with an error");
                    }
                    break;
                }
                () = self.closing.cancelled(), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                () = self.abort.cancelled() => break,
                () = alarm => {
                    let now = Instant::now();
                    if let Some(at) = hard_stop
                        && at <= now
                    {
                        if activity.in_progress() == 0 {
                            break;
                        }
                        hard_stop = None;
                    }
                    if activity.head_overdue(self.read_header_timeout) {
                        // A head begun longer ago than readHeaderTimeout and still not
                        // complete: a slow (or slowloris) client, closed at once.
                        if self.observed {
                            metrics.connections_idle_closed.inc();
                        }
                        break;
                    }
                    if hard_stop.is_none() && activity.is_idle(self.idle_timeout) {
                        if self.observed {
                            metrics.connections_idle_closed.inc();
                        }
                        if !closing {
                            closing = true;
                            conn.as_mut().graceful_shutdown();
                        }
                        hard_stop = Some(now + IDLE_CLOSE_GRACE);
                    }
                    let next = [
                        activity.head_deadline(self.read_header_timeout),
                        hard_stop,
                        hard_stop
                            .is_none()
                            .then(|| activity.idle_deadline(self.idle_timeout)),
                        // While requests keep coming, never set further than a head's
                        // deadline, so that a head beginning never moves the timer.
                        activity
                            .recently_busy(now, self.read_header_timeout)
                            .then(|| now + self.read_header_timeout),
                    ]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap_or(now + self.idle_timeout);
                    sleep.as_mut().reset(next.max(now + MIN_ALARM));
                }
            }
        }
    }
}
