//! Accept loops with graceful shutdown: stop accepting, let in-flight requests finish (bounded),
//! then return.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::ProxyBody;

/// A slow client gets this long to send its request headers (slowloris protection).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// After `accept` fails (e.g. out of file descriptors), wait this long before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Handles one request from a remote address.
pub type Handler = Arc<
    dyn Fn(Request<Incoming>, SocketAddr) -> BoxFuture<'static, Response<ProxyBody>> + Send + Sync,
>;

/// The node's bound sockets. Binding happens before anything else starts, so a port conflict
/// fails the start cleanly.
pub struct Listeners {
    /// The proxy listener.
    pub proxy: TcpListener,
    /// The admin listener.
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds both listeners.
    pub async fn bind(proxy: SocketAddr, admin: SocketAddr) -> std::io::Result<Self> {
        Ok(Self {
            proxy: TcpListener::bind(proxy).await?,
            admin: TcpListener::bind(admin).await?,
        })
    }
}

/// Serves connections from `listener` until `shutdown`, then drains for at most `drain`.
pub async fn serve(
    listener: TcpListener,
    handler: Handler,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
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
        let _ = stream.set_nodelay(true);
        let handler = Arc::clone(&handler);
        let service = service_fn(move |req| {
            let fut = handler(req, remote);
            async move { Ok::<_, Infallible>(fut.await) }
        });
        let conn = graceful.watch(
            builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned(),
        );
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%error, %remote, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?drain,
            "drain timeout reached; closing remaining connections"
        );
    }
}
