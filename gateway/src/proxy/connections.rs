//! A proxy worker's own keep-alive connections to `http://` upstream servers.
//!
//! Requests to plain-HTTP servers are the proxy's hot path, and the general client (`hyper`'s
//! pooled client, which [`super::transport`] keeps for TLS, HTTP/2 and upgrades) pays on every
//! request for what one worker does not need: a pool shared between threads, a connect future
//! built and dropped unused, and a task per request to return its connection. Here a worker
//! keeps, per server, the connections whose last exchange ended, newest first, and a request
//! takes the newest one that is ready:
//!
//! - A connection returns to its server's list when its answer's body has been read to the end
//!   and its request's body sent to the end; an answer dropped before its end (the caller went
//!   away), or one that ended while the caller was still sending (a server answering early),
//!   takes its connection with it: the next request must not wait on a slow caller's upload.
//! - A connection idle for longer than `idleConnTimeout` is closed when next looked at (a
//!   request for its server, or another connection returning), as the general client does.
//! - A request that a kept connection could not take (the server closed it just before) goes
//!   out on another one; one the server received is never sent twice.
//!
//! Connecting (name resolution, RFC 6555 fallback between addresses, `dialTimeout`, no Nagle
//! delay) is `hyper-util`'s connector; the exchange is `hyper`'s HTTP/1.1 client.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::time::Instant;
use tower::Service;

use super::caller_body::Sent;
use crate::http::{BoxBody, BoxError};

/// One kept connection.
struct Kept {
    sender: SendRequest<BoxBody>,
    since: Instant,
}

/// A worker's connections to `http://` servers, by server.
pub struct Http1Connections {
    connector: HttpConnector,
    idle_timeout: Duration,
    kept: Mutex<foldhash::HashMap<Authority, VecDeque<Kept>>>,
}

impl std::fmt::Debug for Http1Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1Connections")
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl Http1Connections {
    /// Connections made within `dial` and kept for `idle_timeout` after their last exchange.
    pub fn new(dial: Duration, idle_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(dial));
        Self {
            connector,
            idle_timeout,
            kept: Mutex::new(foldhash::HashMap::default()),
        }
    }

    /// Sends `req` (an absolute `http://` URI) to its server and gives the answer, whose body
    /// hands the connection back once read to the end.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<BoxBody>,
        sent: Option<&Arc<Sent>>,
    ) -> Result<Response<BoxBody>, BoxError> {
        let uri = req.uri().clone();
        let authority = uri
            .authority()
            .cloned()
            .ok_or("the upstream request has no server")?;
        if !req.headers().contains_key(http::header::HOST) {
            req.headers_mut().insert(
                http::header::HOST,
                http::HeaderValue::from_str(authority.as_str())?,
            );
        }
        // HTTP/1.1 to a server (not a proxy) names the target in origin form.
        *req.uri_mut() = Uri::from(
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        loop {
            let (mut sender, kept) = match self.take(&authority) {
                Some(sender) => (sender, true),
                None => (self.connect(&uri).await?, false),
            };
            // A connection whose last exchange has just ended is ready a moment later, unless
            // it is closing.
            if !sender.is_ready() && sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let back = Back {
                        sender,
                        connections: Arc::clone(self),
                        authority,
                        sent: sent.cloned(),
                    };
                    return Ok(resp.map(|body| Returning::new(body, back).boxed_unsync()));
                }
                Err(mut refused) => match refused.take_message() {
                    // Not sent: the kept connection was closing. Another one takes it.
                    Some(unsent) if kept => req = unsent,
                    _ => return Err(refused.into_error().into()),
                },
            }
        }
    }

    /// The newest kept connection to `authority` that is ready, else the newest one about to
    /// be, dropping the closed and the expired ones it meets. Only the newest few are looked
    /// at: a long list (left by a burst) costs nothing per request.
    fn take(&self, authority: &Authority) -> Option<SendRequest<BoxBody>> {
        const LOOK_AT: usize = 4;
        let mut kept = self
            .kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let list = kept.get_mut(authority)?;
        let now = Instant::now();
        let mut i = list.len();
        let mut looked = 0;
        let mut fallback: Option<usize> = None;
        while i > 0 && looked < LOOK_AT {
            i -= 1;
            let k = &list[i];
            if k.sender.is_closed() || now.duration_since(k.since) >= self.idle_timeout {
                list.remove(i);
                // The fallback was further back: it moved one place forward.
                if let Some(f) = fallback.as_mut() {
                    *f -= 1;
                }
                continue;
            }
            looked += 1;
            if k.sender.is_ready() {
                return list.remove(i).map(|k| k.sender);
            }
            fallback.get_or_insert(i);
        }
        list.remove(fallback?).map(|k| k.sender)
    }

    /// Hands a connection back after an exchange, dropping the expired ones.
    fn put(&self, authority: Authority, sender: SendRequest<BoxBody>) {
        if sender.is_closed() {
            return;
        }
        let mut kept = self
            .kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let list = kept.entry(authority).or_default();
        let now = Instant::now();
        while list
            .front()
            .is_some_and(|k| now.duration_since(k.since) >= self.idle_timeout)
        {
            list.pop_front();
        }
        list.push_back(Kept { sender, since: now });
    }

    /// A new connection to `uri`'s server, driven by a task on the calling thread's runtime.
    async fn connect(&self, uri: &Uri) -> Result<SendRequest<BoxBody>, BoxError> {
        let io = self.connector.clone().call(uri.clone()).await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Connections kept, all servers together.
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.kept.lock().unwrap().values().map(VecDeque::len).sum()
    }
}

/// Where a connection goes back to.
struct Back {
    sender: SendRequest<BoxBody>,
    connections: Arc<Http1Connections>,
    authority: Authority,
    /// A streamed request body's progress; `None`: the body was whole from the start.
    sent: Option<Arc<Sent>>,
}

pin_project_lite::pin_project! {
    /// An answer's body that hands its connection back when it has been read to the end.
    struct Returning {
        #[pin]
        body: Incoming,
        back: Option<Back>,
    }
}

impl Returning {
    fn new(body: Incoming, back: Back) -> Self {
        let mut returning = Self {
            body,
            back: Some(back),
        };
        // An answer without a body (204, 304, `Content-Length: 0`) is over already: its
        // connection goes back now, as nobody may read the body.
        if returning.body.is_end_stream() {
            give_back(&mut returning.back);
        }
        returning
    }
}

fn give_back(back: &mut Option<Back>) {
    if let Some(b) = back.take()
        && b.sent.as_ref().is_none_or(|s| s.is_done())
    {
        b.connections.put(b.authority, b.sender);
    }
}

impl Body for Returning {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let polled = this.body.as_mut().poll_frame(cx);
        match &polled {
            // The end: seen as such, or known after the last frame (a reader such as hyper's
            // server stops there, without asking for the end).
            Poll::Ready(None) => give_back(this.back),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => give_back(this.back),
            // A broken exchange leaves nothing to reuse.
            Poll::Ready(Some(Err(_))) => {
                this.back.take();
            }
            _ => {}
        }
        polled.map_err(BoxError::from)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A server answering every request on a connection with `answer`, counting connections;
    /// it closes a connection after `per_connection` requests. It answers as soon as it has a
    /// request's head, before any body (as a server refusing early does).
    async fn server(
        answer: &'static [u8],
        per_connection: usize,
    ) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        server_at(b"\r\n\r\n", answer, per_connection).await
    }

    /// [`server`], answering each time it has read `end` (the end of a request's body, say).
    async fn server_at(
        end: &'static [u8],
        answer: &'static [u8],
        per_connection: usize,
    ) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    let mut served = 0;
                    while served < per_connection {
                        let Ok(n) = s.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(at) = seen.windows(end.len()).position(|w| w == end) {
                            seen.drain(..at + end.len());
                            s.write_all(answer).await.unwrap();
                            served += 1;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn get(addr: std::net::SocketAddr) -> Request<BoxBody> {
        Request::get(format!("http://{addr}/x?y=1"))
            .body(crate::http::full(Bytes::new()))
            .unwrap()
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    /// Connections kept for `idle` seconds.
    fn connections(idle: u64) -> Arc<Http1Connections> {
        Arc::new(Http1Connections::new(
            Duration::from_secs(1),
            Duration::from_secs(idle),
        ))
    }

    async fn read(resp: Response<BoxBody>) -> Bytes {
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_answer_is_read() {
        let (addr, accepted) = server(OK, usize::MAX).await;
        let c = connections(60);
        for _ in 0..5 {
            let resp = c.send(get(addr), None).await.unwrap();
            assert_eq!(read(resp).await, "ok");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(c.kept(), 1);

        // Read as hyper's server reads it: up to the frame after which the body says it has
        // ended, never asking for the end itself.
        let mut body = c.send(get(addr), None).await.unwrap().into_body();
        assert_eq!(c.kept(), 0, "in use");
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "ok");
        assert!(body.is_end_stream());
        drop(body);
        assert_eq!(c.kept(), 1);
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);

        // An answer dropped unread takes its connection with it.
        let unread = c.send(get(addr), None).await.unwrap();
        assert_eq!(c.kept(), 0);
        drop(unread);
        assert_eq!(c.kept(), 0);
        assert_eq!(read(c.send(get(addr), None).await.unwrap()).await, "ok");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_whose_streamed_body_was_sent_in_full_is_kept() {
        use crate::proxy::caller_body::CallerBody;
        // A chunked body ends with a last poll; a body of known length (hyper's own, from the
        // caller) says it has ended after its last frame, and is not polled again.
        for (framing, end) in [
            ("chunked", &b"0\r\n\r\n"[..]),
            ("content-length", &b"part"[..]),
        ] {
            // The server answers once it has the whole body, as most do.
            let (addr, accepted) = server_at(end, OK, usize::MAX).await;
            let c = connections(60);
            let sent = Arc::new(Sent::default());
            let req = Request::post(format!("http://{addr}/upload"));
            let (req, body) = match framing {
                "chunked" => {
                    let frames: Vec<Result<Frame<Bytes>, BoxError>> = (0..2)
                        .map(|_| Ok(Frame::data(Bytes::from_static(b"part"))))
                        .collect();
                    let stream =
                        http_body_util::StreamBody::new(futures_util::stream::iter(frames));
                    (
                        req.header(http::header::TRANSFER_ENCODING, "chunked"),
                        CallerBody::new(stream, Some(Arc::clone(&sent))).boxed_unsync(),
                    )
                }
                _ => {
                    let whole = http_body_util::Full::new(Bytes::from_static(b"part"))
                        .map_err(|never| match never {});
                    (
                        req.header(http::header::CONTENT_LENGTH, "4"),
                        CallerBody::new(whole, Some(Arc::clone(&sent))).boxed_unsync(),
                    )
                }
            };
            let resp = c.send(req.body(body).unwrap(), Some(&sent)).await.unwrap();
            assert_eq!(read(resp).await, "ok");
            assert!(sent.is_done(), "{framing}: the end of the body is seen");
            assert_eq!(c.kept(), 1, "{framing}: the connection goes back");
            assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        }
    }

    #[tokio::test]
    async fn a_connection_still_sending_a_callers_body_is_not_kept() {
        use crate::proxy::caller_body::CallerBody;
        // The server answers as soon as it has the head, before the body (as one refusing
        // early does); the caller has sent one chunk of its body and stalls.
        let (addr, accepted) = server(OK, usize::MAX).await;
        let c = connections(60);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        tx.send(Ok(Frame::data(Bytes::from_static(b"part"))))
            .await
            .unwrap();
        let sent = Arc::new(Sent::default());
        let body = CallerBody::new(
            http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            Some(Arc::clone(&sent)),
        );
        let req = Request::post(format!("http://{addr}/upload"))
            .header(http::header::TRANSFER_ENCODING, "chunked")
            .body(body.boxed_unsync())
            .unwrap();
        let resp = c.send(req, Some(&sent)).await.unwrap();
        assert_eq!(read(resp).await, "ok");
        assert!(!sent.is_done());
        assert_eq!(
            c.kept(),
            0,
            "the stalled upload's connection is not offered to others"
        );
        // The next request is not held behind the stalled upload: it gets a connection of its
        // own at once.
        let next = tokio::time::timeout(Duration::from_secs(5), c.send(get(addr), None))
            .await
            .expect("not held behind the stalled upload")
            .unwrap();
        assert_eq!(read(next).await, "ok");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
        drop(tx);
    }

    #[tokio::test]
    async fn an_answer_without_a_body_gives_its_connection_back_at_once() {
        let (addr, accepted) = server(b"HTTP/1.1 204 No Content\r\n\r\n", usize::MAX).await;
        let c = connections(60);
        for _ in 0..3 {
            // hyper's server never reads a body that says it has ended; nor does this test.
            let resp = c.send(get(addr), None).await.unwrap();
            assert_eq!(resp.status(), 204);
            assert_eq!(c.kept(), 1);
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_replaced() {
        // One request per connection, then the server closes it (without saying so).
        let (addr, accepted) = server(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", 1).await;
        let c = connections(60);
        for i in 1..=3 {
            assert_eq!(read(c.send(get(addr), None).await.unwrap()).await, "ok");
            // Once the close is seen, the kept connection is dropped rather than used.
            for _ in 0..500 {
                let closed = c
                    .kept
                    .lock()
                    .unwrap()
                    .values()
                    .flatten()
                    .all(|k| k.sender.is_closed());
                if closed {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), i);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_connection_is_not_used() {
        let (addr, accepted) = server(OK, usize::MAX).await;
        let c = connections(90);
        assert_eq!(read(c.send(get(addr), None).await.unwrap()).await, "ok");
        tokio::time::advance(Duration::from_secs(89)).await;
        assert_eq!(read(c.send(get(addr), None).await.unwrap()).await, "ok");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(91)).await;
        assert_eq!(read(c.send(get(addr), None).await.unwrap()).await, "ok");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(c.kept(), 1, "the expired one is gone");
    }

    #[tokio::test]
    async fn the_target_goes_out_in_origin_form_with_the_servers_host() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let head = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                seen.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8(seen).unwrap()
        });
        let c = connections(60);
        c.send(get(addr), None).await.unwrap();
        let head = head.await.unwrap();
        assert!(head.starts_with("GET /x?y=1 HTTP/1.1\r\n"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("host: {addr}\r\n")),
            "{head}"
        );
    }
}
