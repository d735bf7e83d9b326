//! A connection's timers: its idle deadline, its request head deadline and the grace after an
//! idle close, kept by watching its bytes and its requests.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::http::{BoxBody, BoxError};

/// The soonest an alarm that found nothing due is set again (a deadline computed in the past
/// must not spin the loop).
pub(super) const MIN_ALARM: Duration = Duration::from_millis(1);

/// A connection's one timer, for its idle deadline, its request head deadline and the end of
/// its grace after an idle close.
///
/// Requests come and go far more often than any deadline is reached, so the timer is not set
/// per request. Each time the connection's task runs, the alarm looks whether a deadline came
/// closer than the time it is set for (a head began: readHeaderTimeout counts from now) and
/// only then moves it earlier. A deadline that moved later (a request ended, so idleness counts
/// from then) is found when the alarm goes off, which looks again and sets it for the next one.
pub(super) struct Alarm<'a> {
    pub(super) sleep: Pin<&'a mut tokio::time::Sleep>,
    pub(super) activity: &'a Activity,
    pub(super) idle_timeout: Duration,
    pub(super) read_header_timeout: Duration,
    pub(super) hard_stop: Option<Instant>,
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
pub(super) struct Activity {
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
    /// Requests in progress on the connection.
    pub(super) fn in_progress(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    pub(super) fn new() -> Self {
        Self {
            started: Instant::now(),
            active: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            head_since_ms: AtomicU64::new(0),
            http2: std::sync::atomic::AtomicBool::new(false),
            seen_first: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub(super) fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Bytes arrived: the first ones say whether this is HTTP/2 (its preface starts `PRI`, and
    /// a segment as short as three bytes is not seen in practice); on HTTP/1, bytes while no
    /// request is in progress start a head.
    pub(super) fn received(&self, first_bytes: &[u8]) {
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
    pub(super) fn head_deadline(&self, timeout: Duration) -> Option<Instant> {
        match self.head_since_ms.load(Ordering::Acquire) {
            0 => None,
            at => Some(self.started + Duration::from_millis(at - 1) + timeout),
        }
    }

    pub(super) fn head_overdue(&self, timeout: Duration) -> bool {
        self.active.load(Ordering::Acquire) == 0
            && self
                .head_deadline(timeout)
                .is_some_and(|d| d <= Instant::now())
    }

    pub(super) fn idle_since(&self) -> Instant {
        self.started + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire))
    }

    /// When to look again: `timeout` after it went idle (or after now, while busy).
    pub(super) fn idle_deadline(&self, timeout: Duration) -> Instant {
        if self.active.load(Ordering::Acquire) > 0 {
            Instant::now() + timeout
        } else {
            self.idle_since() + timeout
        }
    }

    /// An HTTP/1 connection with a request in progress, or that had one within `window`.
    pub(super) fn recently_busy(&self, now: Instant, window: Duration) -> bool {
        !self.http2.load(Ordering::Acquire)
            && (self.active.load(Ordering::Acquire) > 0 || self.idle_since() + window > now)
    }

    pub(super) fn is_idle(&self, timeout: Duration) -> bool {
        self.active.load(Ordering::Acquire) == 0 && self.idle_since() + timeout <= Instant::now()
    }
}

/// A request in progress: from its head until its response body is dropped (sent or not).
pub(super) struct InFlight(Arc<Activity>);

impl InFlight {
    pub(super) fn begin(activity: &Arc<Activity>) -> Self {
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
    pub(super) struct Watched<I> {
        #[pin]
        pub(super) io: I,
        pub(super) activity: Arc<Activity>,
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
    pub(super) struct Tracked {
        #[pin]
        pub(super) body: BoxBody,
        pub(super) _guard: InFlight,
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
