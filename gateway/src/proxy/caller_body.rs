//! A caller's request body on its way to the upstream, streamed: its failures are the caller's,
//! and the moment it has been sent in full is known.
//!
//! Passive health counts the failures of servers only. A caller that sends its body slowly,
//! aborts it or goes away makes the upstream exchange fail too; without telling the two apart,
//! any caller could eject every server of a route. And `responseHeaderTimeout` is how long a
//! server may take to answer a request it has received: it starts once the body is sent, not
//! while a slow caller is still sending it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::Notify;

use crate::http::BoxError;

/// The caller's body failed (read error, aborted, incomplete): the exchange's failure is not
/// the server's.
#[derive(Debug)]
pub struct CallerBodyFailed(BoxError);

impl std::fmt::Display for CallerBodyFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the caller's request body failed: {}", self.0)
    }
}

impl std::error::Error for CallerBodyFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}

impl CallerBodyFailed {
    /// Whether `error`, or an error it was caused by, is a caller's body failing.
    pub fn caused(error: &(dyn std::error::Error + 'static)) -> bool {
        let mut next = Some(error);
        while let Some(e) = next {
            if e.is::<Self>() {
                return true;
            }
            // An I/O error wrapping another names that one's source as its own: look inside.
            next = match e
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
            {
                Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
                None => e.source(),
            };
        }
        false
    }
}

/// Set once the whole body has been handed to the upstream connection.
#[derive(Debug, Default)]
pub struct Sent {
    done: AtomicBool,
    notify: Notify,
}

impl Sent {
    fn mark(&self) {
        if !self.done.swap(true, Ordering::AcqRel) {
            self.notify.notify_waiters();
        }
    }

    /// Whether the body has been sent in full.
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Returns once the body has been sent in full.
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.done.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

/// The caller's body, its errors marked as [`CallerBodyFailed`], and its end reported to
/// `sent` when given (for the response header timeout, and so that the connection that carried
/// it is kept only once it is sent).
pub struct CallerBody<B> {
    inner: B,
    sent: Option<Arc<Sent>>,
}

impl<B> CallerBody<B> {
    /// Wraps `inner`.
    pub fn new(inner: B, sent: Option<Arc<Sent>>) -> Self {
        Self { inner, sent }
    }

    fn ended(&self) {
        if let Some(s) = &self.sent {
            s.mark();
        }
    }
}

impl<B> Body for CallerBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match polled {
            Poll::Ready(None) => {
                self.ended();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                Poll::Ready(Some(Err(Box::new(CallerBodyFailed(e.into())))))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if self.inner.is_end_stream() {
                    self.ended();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.ended();
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    #[tokio::test]
    async fn a_failing_body_is_the_callers_and_the_end_is_reported() {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Err("connection reset".into()),
        ];
        let mut failing =
            CallerBody::new(StreamBody::new(futures_util::stream::iter(frames)), None);
        assert!(failing.frame().await.unwrap().is_ok());
        let err = failing.frame().await.unwrap().unwrap_err();
        assert!(CallerBodyFailed::caused(err.as_ref()));
        let wrapped: BoxError = Box::new(std::io::Error::other(err));
        assert!(
            CallerBodyFailed::caused(wrapped.as_ref()),
            "found down the chain"
        );
        assert!(!CallerBodyFailed::caused(&std::io::Error::other("refused")));

        let sent = Arc::new(Sent::default());
        let frames: Vec<Result<Frame<Bytes>, BoxError>> =
            vec![Ok(Frame::data(Bytes::from_static(b"ab")))];
        let mut body = CallerBody::new(
            StreamBody::new(futures_util::stream::iter(frames)),
            Some(Arc::clone(&sent)),
        );
        let waiting = tokio::spawn({
            let sent = Arc::clone(&sent);
            async move { sent.wait().await }
        });
        body.frame().await.unwrap().unwrap();
        assert!(!sent.done.load(Ordering::Acquire), "not before the end");
        assert!(body.frame().await.is_none());
        waiting.await.unwrap();
    }
}
