//! A minimal accept loop for the test doubles, stopped by a cancellation token.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A boxed, sendable future.
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// What a double does with one request. `None` closes the connection without an answer.
pub type Handler = Arc<
    dyn Fn(Request<Incoming>, SocketAddr) -> BoxFuture<Option<Response<Full<Bytes>>>> + Send + Sync,
>;

/// Binds `addr` (port 0: any free port) and serves until `stop` is cancelled.
pub async fn start(
    addr: SocketAddr,
    handler: Handler,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (stream, remote) = tokio::select! {
                () = stop.cancelled() => return,
                r = listener.accept() => match r { Ok(a) => a, Err(_) => continue },
            };
            let handler = Arc::clone(&handler);
            let stop = stop.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let fut = handler(req, remote);
                    async move {
                        match fut.await {
                            Some(resp) => Ok::<_, std::io::Error>(resp),
                            None => Err(std::io::Error::other("double closes the connection")),
                        }
                    }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection(TokioIo::new(stream), svc);
                tokio::select! {
                    _ = conn => {}
                    () = stop.cancelled() => {}
                }
            });
        }
    });
    Ok(addr)
}
