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

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::BoxBody;

mod accept;
mod timers;

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
    accept::run(listener, with, false, None).await;
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
    accept::run(listener, with, true, None).await;
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
        Ok(listener) => accept::run(listener, with, true, Some(share)).await,
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
