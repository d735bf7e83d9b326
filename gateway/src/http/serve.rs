//! Accept loops with bounded connections and graceful shutdown: stop accepting, let in-flight
//! requests finish (bounded), then return.
//!
//! Every connection is bounded (HAProxy's and nginx's habits): at most `maxConnections` are open
//! (past it, each listener holds one accepted connection unserved and the next callers wait in
//! the kernel's backlog); a request head must arrive within
//! `readHeaderTimeout` and fit in `maxHeaderBytes` and `maxHeaders` (else 408/431); a
//! connection with no request in progress for `idleTimeout` is closed, whatever trickle of bytes
//! it sends (a slowloris client never completes a request, so it is idle); HTTP/2 connections
//! carry at most `maxConcurrentStreams` streams and are pinged so dead peers are dropped.
//!
//! On a TLS listener the handshake runs inside the connection's task, bounded by
//! `readHeaderTimeout` like a request head, so a caller that never finishes it holds one slot
//! for that long and stalls no one else. Requests carried by a TLS connection find a
//! [`TlsSession`](super::tls::TlsSession) in their extensions.
//!
//! The proxy listener may be served by workers, threads with an event loop of their own, each
//! accepting on a duplicate descriptor of the one listening socket ([`serve_on_workers`]).
//!
//! Connections may be upgraded (`Connection: Upgrade`, e.g. WebSocket): once the handler has
//! answered 101, the socket leaves this loop and belongs to whoever took the upgrade.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::tls::{PeerCertificate, TlsSession};
use super::{BoxBody, BoxError};

/// After `accept` fails (e.g. out of file descriptors), wait this long before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How many header fields hyper's HTTP/1 parser takes when not told (more is 431).
const HYPER_MAX_HEADERS: usize = 100;
/// A connection asked to close for idleness that has not closed after this long is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Connection limits and timeouts of a listener (`transport`, `http2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportLimits {
    /// Open connections at most; more wait to be accepted.
    pub max_connections: usize,
    /// Bytes of one HTTP/1 request head (request line and headers), and of an HTTP/2 header
    /// list; larger is 431.
    pub max_header_bytes: usize,
    /// Header fields in one HTTP/1 request; more is 431.
    pub max_headers: usize,
    /// Time to receive a whole HTTP/1 request head; then the connection is closed.
    pub read_header_timeout: Duration,
    /// A connection with no request in progress for this long is closed.
    pub idle_timeout: Duration,
    /// Concurrent streams on one HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 keep-alive ping interval.
    pub keep_alive_interval: Duration,
    /// A ping unanswered this long closes the HTTP/2 connection.
    pub keep_alive_timeout: Duration,
    /// Upgraded connections (WebSocket) open at once at most, within `max_connections`; more
    /// upgrade requests are refused (`None`: only `max_connections` bounds them).
    pub max_upgraded_connections: Option<usize>,
    /// An upgraded connection is closed after this long, busy or not (`None`: never).
    pub upgraded_max_lifetime: Option<Duration>,
}

/// The slot of `maxConnections` a connection holds, handed with a request that asks to upgrade:
/// the upgraded connection outlives hyper's, and keeps the slot until it closes.
#[derive(Clone)]
pub struct ConnectionSlot(pub Arc<tokio::sync::OwnedSemaphorePermit>);

impl Default for TransportLimits {
    /// 10,000 connections (a gateway node behind a load balancer sees far fewer; a file
    /// descriptor limit of 65,536 leaves room for upstream sockets); heads of 32 KiB and 100
    /// fields (nginx's and hyper's defaults); 10 s to send a head (Go's common
    /// `ReadHeaderTimeout`); 180 s idle (Traefik's `idleTimeout`); 250 HTTP/2 streams
    /// (Traefik's `maxConcurrentStreams`), pinged every 20 s.
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_header_bytes: 32 * 1024,
            max_headers: HYPER_MAX_HEADERS,
            read_header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(180),
            max_concurrent_streams: 250,
            keep_alive_interval: Duration::from_secs(20),
            keep_alive_timeout: Duration::from_secs(20),
            max_upgraded_connections: None,
            upgraded_max_lifetime: None,
        }
    }
}

/// Handles one request from a remote address.
pub type Handler = Arc<
    dyn Fn(Request<Incoming>, SocketAddr) -> BoxFuture<'static, Response<BoxBody>> + Send + Sync,
>;

/// The node's bound sockets. Binding happens before anything else starts, so a port conflict
/// fails the start cleanly.
pub struct Listeners {
    /// The proxy listener.
    pub proxy: TcpListener,
    /// The admin listener.
    pub admin: TcpListener,
    /// Proxy workers: threads of their own, each with its own event loop, all accepting on the
    /// proxy listener (see [`Listeners::bind_workers`]). 0: the proxy is served on the runtime
    /// that runs the node.
    pub workers: usize,
    /// The proxy listener again for workers 2 and up (`proxy` is the first's): duplicates of
    /// the one socket, each watched by its worker's event loop.
    pub more_proxy: Vec<std::net::TcpListener>,
}

impl Listeners {
    /// Binds both listeners; the proxy is served on the node's runtime.
    pub async fn bind(proxy: SocketAddr, admin: SocketAddr) -> std::io::Result<Self> {
        Ok(Self {
            proxy: TcpListener::bind(proxy).await?,
            admin: TcpListener::bind(admin).await?,
            workers: 0,
            more_proxy: Vec::new(),
        })
    }

    /// Binds both listeners, the proxy's for `workers` workers. With `workers` 0 this is
    /// [`Listeners::bind`].
    ///
    /// The workers accept on one socket (a new connection wakes the idle ones; one of them
    /// takes it), not on a socket each with `SO_REUSEPORT`: that option would let any process
    /// of the same user bind the same port and take a share of the callers, and two listeners
    /// asking for port 0 could be given the same one.
    pub async fn bind_workers(
        proxy: SocketAddr,
        admin: SocketAddr,
        workers: usize,
    ) -> std::io::Result<Self> {
        if workers == 0 {
            return Self::bind(proxy, admin).await;
        }
        let first = TcpListener::bind(proxy).await?;
        let more_proxy = (1..workers)
            .map(|_| {
                use std::os::fd::AsFd;
                // A duplicate descriptor of the same socket (non-blocking, as tokio's is).
                first
                    .as_fd()
                    .try_clone_to_owned()
                    .map(std::net::TcpListener::from)
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let admin = TcpListener::bind(admin).await?;
        WORKERS.store(workers, Ordering::Relaxed);
        Ok(Self {
            proxy: first,
            admin,
            workers,
            more_proxy,
        })
    }
}

/// Proxy workers this process runs (0: none), set when their sockets are bound.
static WORKERS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Which proxy worker this thread is, on a worker's thread.
    static WORKER: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// The number of proxy workers this process runs (0: the proxy shares the node's runtime).
pub fn workers() -> usize {
    WORKERS.load(Ordering::Relaxed)
}

/// Which proxy worker the calling thread is, if it is one (resources a worker keeps to itself,
/// such as its upstream connections, are picked by it).
pub fn worker() -> Option<usize> {
    WORKER.with(std::cell::Cell::get)
}

/// Serves connections from `listener` with default limits, over TLS when `tls` is given (the
/// demo's HTTPS upstream), until `shutdown`, then drains for at most `drain`.
pub async fn serve(
    listener: TcpListener,
    handler: Handler,
    shutdown: CancellationToken,
    drain: Duration,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let limits = TransportLimits::default();
    let with = ServeArgs::new(handler, shutdown, drain, limits, tls);
    run(listener, with, false, None).await;
}

/// Serves the proxy listener: connections within `limits` (and counted in the connection
/// metrics), over TLS when `tls` is given, until `shutdown`, then drains for at most `drain`.
pub async fn serve_with(
    listener: TcpListener,
    handler: Handler,
    shutdown: CancellationToken,
    drain: Duration,
    limits: TransportLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let with = ServeArgs::new(handler, shutdown, drain, limits, tls);
    run(listener, with, true, None).await;
}

/// Serves the proxy listener's `sockets` (see [`Listeners::bind_workers`]) on a thread each,
/// every thread an event loop of its own (a current-thread runtime): a connection, its
/// requests, their upstream calls and the wake-ups between them stay on one thread, as in
/// nginx's workers, instead of being handed between threads. `maxConnections` counts the
/// connections of all of them together. Returns once every worker has drained (as
/// [`serve_with`] does).
pub async fn serve_on_workers(
    sockets: Vec<std::net::TcpListener>,
    handler: Handler,
    shutdown: CancellationToken,
    drain: Duration,
    limits: TransportLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    // One count of open connections for all workers: the kernel does not spread connections
    // evenly, and a worker's share must not refuse what the node has room for.
    let with = ServeArgs::new(handler, shutdown, drain, limits, tls);
    let open: Arc<[AtomicUsize]> = (0..sockets.len()).map(|_| AtomicUsize::new(0)).collect();
    let mut workers = Vec::new();
    for (i, socket) in sockets.into_iter().enumerate() {
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let serving = with.clone();
        let share = Share {
            open: Arc::clone(&open),
            me: i,
        };
        let worker = move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(error) => {
                    tracing::error!(%error, "cannot start a proxy worker; stopping");
                    serving.stop.cancel();
                    return;
                }
            };
            WORKER.with(|w| w.set(Some(i)));
            // This thread's log lines (a line per request) are written in batches.
            crate::telemetry::output::gather_on_this_thread();
            runtime.block_on(serve_worker(socket, serving, share));
            // What requests left running (pooled upstream connections) ends with the runtime.
            runtime.shutdown_timeout(WORKER_STOP);
            crate::telemetry::output::flush_thread();
            let _ = done.send(());
        };
        match std::thread::Builder::new()
            .name(format!("proxy-{i}"))
            .spawn(worker)
        {
            Ok(_) => workers.push(finished),
            Err(error) => {
                tracing::error!(%error, "cannot start a proxy worker; stopping");
                with.stop.cancel();
            }
        }
    }
    for finished in workers {
        // An error is a worker gone without saying so (a panic): it is not waited for.
        let _ = finished.await;
    }
}

/// What a listener is served with (the workers of the proxy listener share one count of
/// connection slots).
#[derive(Clone)]
struct ServeArgs {
    handler: Handler,
    stop: CancellationToken,
    drain: Duration,
    limits: TransportLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
    slots: Arc<Semaphore>,
}

impl ServeArgs {
    fn new(
        handler: Handler,
        stop: CancellationToken,
        drain: Duration,
        limits: TransportLimits,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            handler,
            stop,
            drain,
            limits,
            tls,
        }
    }
}

/// One worker's loop, on its own runtime: serves `socket` and writes the thread's gathered log
/// lines every [`FLUSH_EVERY`](crate::telemetry::output::FLUSH_EVERY).
async fn serve_worker(socket: std::net::TcpListener, with: ServeArgs, share: Share) {
    let flusher = tokio::spawn(async {
        let mut tick = tokio::time::interval(crate::telemetry::output::FLUSH_EVERY);
        loop {
            tick.tick().await;
            crate::telemetry::output::flush_thread();
        }
    });
    match TcpListener::from_std(socket) {
        Ok(listener) => run(listener, with, true, Some(share)).await,
        Err(error) => {
            tracing::error!(%error, "a proxy worker cannot serve its socket; stopping");
            with.stop.cancel();
        }
    }
    flusher.abort();
}

/// A worker's part in spreading connections: all workers are woken by a new connection on the
/// shared socket, and the first to call `accept` gets it, so one worker could end up with most
/// of them while another idles. As nginx's workers do (`accept_disabled`), a worker holding
/// more than its share lets the others accept first, for a moment.
struct Share {
    /// Open connections per worker.
    open: Arc<[AtomicUsize]>,
    me: usize,
}

impl Share {
    /// Longest a worker over its share stands back (then it accepts anyway: the others may be
    /// stuck).
    const STAND_BACK: Duration = Duration::from_millis(20);

    /// Returns when this worker should accept: at once unless it holds more than one
    /// connection over an even share.
    async fn turn(&self) {
        let deadline = Instant::now() + Self::STAND_BACK;
        while self.over_share() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn over_share(&self) -> bool {
        let total: usize = self.open.iter().map(|o| o.load(Ordering::Relaxed)).sum();
        let mine = self.open[self.me].load(Ordering::Relaxed);
        mine * self.open.len() > total + self.open.len()
    }

    /// Counts a connection this worker accepted, until the guard is dropped.
    fn opened(&self) -> Opened {
        self.open[self.me].fetch_add(1, Ordering::Relaxed);
        Opened {
            open: Arc::clone(&self.open),
            me: self.me,
        }
    }
}

/// One open connection of a worker, counted while it lives.
struct Opened {
    open: Arc<[AtomicUsize]>,
    me: usize,
}

impl Drop for Opened {
    fn drop(&mut self) {
        self.open[self.me].fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long a stopping worker waits for the tasks its requests left running.
const WORKER_STOP: Duration = Duration::from_secs(1);

/// Serves `listener` until `with.stop`, one connection per permit of `with.slots`; its
/// connections are counted in the metrics when `observed`.
async fn run(listener: TcpListener, with: ServeArgs, observed: bool, share: Option<Share>) {
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
                        if activity.active.load(Ordering::Acquire) == 0 {
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

/// The soonest an alarm that found nothing due is set again (a deadline computed in the past
/// must not spin the loop).
const MIN_ALARM: Duration = Duration::from_millis(1);

/// A connection's one timer, for its idle deadline, its request head deadline and the end of
/// its grace after an idle close.
///
/// Requests come and go far more often than any deadline is reached, so the timer is not set
/// per request. Each time the connection's task runs, the alarm looks whether a deadline came
/// closer than the time it is set for (a head began: readHeaderTimeout counts from now) and
/// only then moves it earlier. A deadline that moved later (a request ended, so idleness counts
/// from then) is found when the alarm goes off, which looks again and sets it for the next one.
struct Alarm<'a> {
    sleep: Pin<&'a mut tokio::time::Sleep>,
    activity: &'a Activity,
    idle_timeout: Duration,
    read_header_timeout: Duration,
    hard_stop: Option<Instant>,
}

impl Future for Alarm<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let a = this.activity;
        let sooner = [
            a.head_deadline(this.read_header_timeout),
            this.hard_stop,
            (this.hard_stop.is_none() && a.active.load(Ordering::Acquire) == 0)
                .then(|| a.idle_since() + this.idle_timeout),
        ]
        .into_iter()
        .flatten()
        .min();
        if let Some(at) = sooner
            && at < this.sleep.deadline()
        {
            this.sleep.as_mut().reset(at);
        }
        this.sleep.as_mut().poll(cx)
    }
}

/// Requests in progress on one connection, when the last one ended, and when the bytes of the
/// next HTTP/1 request head began to arrive.
struct Activity {
    started: Instant,
    active: AtomicUsize,
    /// Milliseconds after `started` when the connection last went idle.
    idle_since_ms: AtomicU64,
    /// Milliseconds after `started` (plus one; 0: none) when the first byte of a request head
    /// arrived while no request was in progress.
    head_since_ms: AtomicU64,
    /// The connection speaks HTTP/2 (its bytes between requests are frames, not heads).
    http2: std::sync::atomic::AtomicBool,
    /// Whether the first bytes were seen (to tell HTTP/2 by its preface).
    seen_first: std::sync::atomic::AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            active: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            head_since_ms: AtomicU64::new(0),
            http2: std::sync::atomic::AtomicBool::new(false),
            seen_first: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Bytes arrived: the first ones say whether this is HTTP/2 (its preface starts `PRI`, and
    /// a segment as short as three bytes is not seen in practice); on HTTP/1, bytes while no
    /// request is in progress start a head.
    fn received(&self, first_bytes: &[u8]) {
        if !self.seen_first.swap(true, Ordering::AcqRel) && first_bytes.starts_with(b"PRI") {
            self.http2.store(true, Ordering::Release);
        }
        if !self.http2.load(Ordering::Acquire)
            && self.active.load(Ordering::Acquire) == 0
            && self.head_since_ms.load(Ordering::Acquire) == 0
        {
            self.head_since_ms
                .store(self.elapsed_ms().saturating_add(1), Ordering::Release);
        }
    }

    /// When a head begun now would be overdue; `None` without one in progress.
    fn head_deadline(&self, timeout: Duration) -> Option<Instant> {
        match self.head_since_ms.load(Ordering::Acquire) {
            0 => None,
            at => Some(self.started + Duration::from_millis(at - 1) + timeout),
        }
    }

    fn head_overdue(&self, timeout: Duration) -> bool {
        self.active.load(Ordering::Acquire) == 0
            && self
                .head_deadline(timeout)
                .is_some_and(|d| d <= Instant::now())
    }

    fn idle_since(&self) -> Instant {
        self.started + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire))
    }

    /// When to look again: `timeout` after it went idle (or after now, while busy).
    fn idle_deadline(&self, timeout: Duration) -> Instant {
        if self.active.load(Ordering::Acquire) > 0 {
            Instant::now() + timeout
        } else {
            self.idle_since() + timeout
        }
    }

    /// An HTTP/1 connection with a request in progress, or that had one within `window`.
    fn recently_busy(&self, now: Instant, window: Duration) -> bool {
        !self.http2.load(Ordering::Acquire)
            && (self.active.load(Ordering::Acquire) > 0 || self.idle_since() + window > now)
    }

    fn is_idle(&self, timeout: Duration) -> bool {
        self.active.load(Ordering::Acquire) == 0 && self.idle_since() + timeout <= Instant::now()
    }
}

/// A request in progress: from its head until its response body is dropped (sent or not).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: &Arc<Activity>) -> Self {
        activity.active.fetch_add(1, Ordering::AcqRel);
        // The head is complete: the head timer is done with it.
        activity.head_since_ms.store(0, Ordering::Release);
        Self(Arc::clone(activity))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        let now = u64::try_from(a.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        a.idle_since_ms.store(now, Ordering::Release);
        a.active.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project_lite::pin_project! {
    /// The connection's socket, telling its [`Activity`] when bytes arrive.
    struct Watched<I> {
        #[pin]
        io: I,
        activity: Arc<Activity>,
    }
}

impl<I: AsyncRead> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.io.poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.received(&buf.filled()[before..]);
        }
        polled
    }
}

impl<I: AsyncWrite> AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in progress until it is dropped.
    struct Tracked {
        #[pin]
        body: BoxBody,
        _guard: InFlight,
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
