//! A minimal accept loop for the test doubles, stopped by a cancellation token.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Span, SpanKind, Tracer};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A boxed, sendable future.
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// What a double does with one request. `None` closes the connection without an answer.
pub type Handler = Arc<
    dyn Fn(Request<Incoming>, SocketAddr) -> BoxFuture<Option<Response<Full<Bytes>>>> + Send + Sync,
>;

/// Where a double records a server span per request, continuing the caller's W3C trace
/// context; nothing is recorded until a tracer is set.
#[derive(Clone, Default)]
pub struct Tracing(Arc<OnceLock<SdkTracer>>);

impl Tracing {
    /// Records spans with `tracer` from now on (the first tracer set stays).
    pub fn set(&self, tracer: SdkTracer) {
        let _ = self.0.set(tracer);
    }

    fn start<B>(&self, req: &Request<B>) -> Option<opentelemetry_sdk::trace::Span> {
        let tracer = self.0.get()?;
        let parent = TraceContextPropagator::new()
            .extract_with_context(&Context::new(), &Headers(req.headers()));
        let span = tracer
            .span_builder(format!("{} {}", req.method(), req.uri().path()))
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", req.method().to_string()),
                KeyValue::new("url.path", req.uri().path().to_owned()),
            ])
            .start_with_context(tracer, &parent);
        Some(span)
    }
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// What the connection a request came on told the double: its TLS client certificate, if it
/// was a TLS connection and the caller presented one. In every request's extensions.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// The caller's certificate (DER), on TLS connections with client authentication.
    pub certificate: Option<Vec<u8>>,
}

/// Binds `addr` (port 0: any free port) and serves until `stop` is cancelled, over TLS with
/// `tls` when given.
pub async fn start(
    addr: SocketAddr,
    handler: Handler,
    tracing: Tracing,
    stop: CancellationToken,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<SocketAddr> {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (stream, remote) = tokio::select! {
                () = stop.cancelled() => return,
                r = listener.accept() => match r { Ok(a) => a, Err(_) => continue },
            };
            let handler = Arc::clone(&handler);
            let (stop, tracing, tls) = (stop.clone(), tracing.clone(), tls.clone());
            tokio::spawn(async move {
                let (io, peer) = match tls {
                    None => (Io::Plain(stream), Peer::default()),
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(s) => {
                            let certificate = s
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .map(|c| c.to_vec());
                            (Io::Tls(Box::new(s)), Peer { certificate })
                        }
                        Err(_) => return,
                    },
                };
                let svc = service_fn(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(peer.clone());
                    let span = tracing.start(&req);
                    let fut = handler(req, remote);
                    async move {
                        let resp = fut.await;
                        if let Some(mut span) = span {
                            if let Some(r) = &resp {
                                span.set_attribute(KeyValue::new(
                                    "http.response.status_code",
                                    i64::from(r.status().as_u16()),
                                ));
                            }
                            span.end();
                        }
                        match resp {
                            Some(resp) => Ok::<_, std::io::Error>(resp),
                            None => Err(std::io::Error::other("double closes the connection")),
                        }
                    }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
                tokio::select! {
                    _ = conn => {}
                    () = stop.cancelled() => {}
                }
            });
        }
    });
    Ok(addr)
}

/// A plain or TLS server connection.
enum Io {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

impl tokio::io::AsyncRead for Io {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Io {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_write(cx, data),
            Io::Tls(s) => std::pin::Pin::new(s).poll_write(cx, data),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Io::Tls(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}
