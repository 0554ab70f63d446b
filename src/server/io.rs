//! Read timeouts for HTTP/2 client connections.
//!
//! hyper's HTTP/2 server cannot tell a client that has started a request head but not
//! finished it (slowloris: a HEADERS frame trickled byte by byte) from an idle keep-alive
//! connection. A proxy needs a short limit for the first and a long one for the second, which
//! must exceed the idle timeout of any load balancer in front (else the LB races our close and
//! its users see 502s). So ficus enforces both in [`TimedIo`], a wrapper around the accepted
//! stream that fails a pending read with [`io::ErrorKind::TimedOut`], which makes hyper close
//! the connection. The connection's service reports requests in flight through a shared
//! [`ConnActivity`]. (HTTP/1.1 is ficus's own server, which keeps these limits itself: see
//! `server::h1`.)

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

// Memory ordering: every atomic access here is `Relaxed`. The counters publish no other data;
// the wrapper only reads them to decide whether a timer applies, and per-location coherence
// (each counter is seen in its modification order) is all that needs. The increment happens in
// the service's `call`, which hyper runs on the connection's own task, so the wrapper's next
// poll always sees it; a decrement from another thread seen late only defers enforcement to
// the wrapper's next poll or timer wake-up, it never times out a request in flight.
const ORDER: Ordering = Ordering::Relaxed;

/// While a request is in flight the timer still wakes the connection at least this often (and
/// at most every `idle`): a request finishing wakes no one, and the idle clock must restart
/// when that is noticed. The floor keeps a zero `idle` from spinning.
const BUSY_RECHECK_MIN: Duration = Duration::from_secs(1);

/// Per-connection request accounting shared between the connection's IO wrapper and its service.
#[derive(Debug, Default)]
pub struct ConnActivity {
    /// Requests started and not yet finished.
    in_flight: AtomicUsize,
    /// Requests ever started (wrapping). Lets the wrapper notice a request that started and
    /// finished between two of its polls, which `in_flight` alone would hide.
    started: AtomicUsize,
}

impl ConnActivity {
    /// Marks a request as started on this connection; the returned guard marks it finished when dropped.
    ///
    /// Call it from the service's `call` (hyper runs it on the connection's task) and keep the
    /// guard for as long as the request should be exempt from connection timeouts.
    pub fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.started.fetch_add(1, ORDER);
        self.in_flight.fetch_add(1, ORDER);
        RequestGuard {
            activity: Arc::clone(self),
        }
    }

    /// Requests currently in flight on the connection.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(ORDER)
    }
}

/// Dropping it marks the request finished.
#[derive(Debug)]
pub struct RequestGuard {
    activity: Arc<ConnActivity>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        // Paired with exactly one increment in `request_started`, so this never wraps below 0.
        self.activity.in_flight.fetch_sub(1, ORDER);
    }
}

/// Connection timeouts enforced by [`TimedIo`].
#[derive(Debug, Clone, Copy)]
pub struct ConnTimeouts {
    /// Longest wait for a complete request head once its first byte has arrived.
    pub header_read: Duration,
    /// Longest time a connection may sit with no request in flight and no bytes moving.
    pub idle: Duration,
}

/// An IO wrapper that fails reads with `io::ErrorKind::TimedOut` when a timeout in [`ConnTimeouts`] expires, so the HTTP server closes the connection.
///
/// Writes are passed through and never fail because of the wrapper. Nothing is enforced while a
/// request is in flight (route-level timeouts govern then).
#[derive(Debug)]
pub struct TimedIo<T> {
    inner: T,
    activity: Arc<ConnActivity>,
    timeouts: ConnTimeouts,
    /// One timer per connection, re-armed lazily: invariant, it fires no later than the earliest
    /// deadline that applies, and the real deadline is only worked out when it fires. So moving
    /// bytes costs an `Instant::now()`, not a timer reset.
    sleep: Pin<Box<Sleep>>,
    /// When bytes last moved, or a request was last seen in flight, starting or finishing.
    last_activity: Instant,
    /// Deadline for the request head being read; `None` whenever a request has been seen
    /// since the head's first byte.
    head_deadline: Option<Instant>,
    /// Whether `in_flight() > 0` at the last observation.
    busy: bool,
    /// `ConnActivity::started` at the last observation.
    seen_started: usize,
    /// Whether the first bytes read have been inspected for the HTTP/2 preface.
    sniffed: bool,
    /// Set when the client speaks HTTP/2. Control frames (SETTINGS, PING,
    /// WINDOW_UPDATE) arrive between requests, so not every byte read with no stream
    /// open is a request head: only a HEADERS frame starts the head deadline.
    frames: Option<H2Frames>,
}

/// The start of the HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";
/// The whole preface, skipped before the first frame.
const H2_PREFACE_LEN: usize = 24;
/// HTTP/2 frame header: 24-bit length, type, flags, stream id.
const H2_FRAME_HEADER: usize = 9;
/// The HEADERS frame type (RFC 9113 §6.2).
const H2_HEADERS: u8 = 0x1;

/// Follows HTTP/2 frame boundaries in the bytes read, to see where HEADERS frames start.
/// Only frame headers are looked at; payloads are skipped by length.
#[derive(Debug)]
struct H2Frames {
    /// Bytes still to skip: the rest of the preface or of a frame's payload.
    skip: usize,
    header: [u8; H2_FRAME_HEADER],
    have: usize,
}

impl H2Frames {
    fn new() -> Self {
        H2Frames {
            skip: H2_PREFACE_LEN,
            header: [0; H2_FRAME_HEADER],
            have: 0,
        }
    }

    /// Consumes bytes read; true if a HEADERS frame started in them.
    fn headers_started(&mut self, mut bytes: &[u8]) -> bool {
        let mut started = false;
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (H2_FRAME_HEADER - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == H2_FRAME_HEADER {
                let [a, b, c, kind, ..] = self.header;
                self.skip = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
                started |= kind == H2_HEADERS;
                self.have = 0;
            }
        }
        started
    }
}

impl<T> TimedIo<T> {
    /// Wraps an accepted connection; the idle clock starts now.
    ///
    /// Must be called within a Tokio runtime with the time driver enabled, as for
    /// [`tokio::time::sleep`].
    pub fn new(inner: T, activity: Arc<ConnActivity>, timeouts: ConnTimeouts) -> Self {
        let now = Instant::now();
        let seen_started = activity.started.load(ORDER);
        let busy = activity.in_flight() > 0;
        Self {
            inner,
            activity,
            timeouts,
            sleep: Box::pin(tokio::time::sleep_until(after(now, timeouts.idle))),
            last_activity: now,
            head_deadline: None,
            busy,
            seen_started,
            sniffed: false,
            frames: None,
        }
    }

    /// Brings the request bookkeeping up to date. A request in flight, or one that started or
    /// finished since the last look, means any head being read is complete, and that the idle
    /// clock restarts no earlier than now.
    fn observe(&mut self, now: Instant) {
        let started = self.activity.started.load(ORDER);
        let busy = self.activity.in_flight() > 0;
        if busy || self.busy || started != self.seen_started {
            self.head_deadline = None;
            self.last_activity = now;
        }
        self.busy = busy;
        self.seen_started = started;
    }

    /// Bytes were read: they keep the connection alive, and if no request is in flight they
    /// belong to a request head, whose deadline starts with its first byte.
    fn on_read(&mut self, now: Instant, bytes: &[u8]) {
        self.last_activity = now;
        if !self.sniffed {
            // The server only picks HTTP/2 once the whole preface is waiting, so the
            // first read holds it.
            self.sniffed = true;
            if bytes.starts_with(H2_PREFACE) {
                self.frames = Some(H2Frames::new());
            }
        }
        let head_started = match &mut self.frames {
            // HTTP/2: a HEADERS frame opened while no stream is in flight (slowloris
            // trickles its header block); control frames are not a head.
            Some(frames) => frames.headers_started(bytes),
            // HTTP/1: any byte but the empty lines allowed between requests (RFC 9112 §2.2).
            // Looked at only when a head could start; a request's first byte ends the scan.
            None => !self.busy && self.head_deadline.is_none() && !only_empty_lines(bytes),
        };
        if head_started && !self.busy && self.head_deadline.is_none() {
            self.start_head(now);
        }
    }

    /// A request head began at `now`: it must be complete within `header_read`.
    fn start_head(&mut self, now: Instant) {
        let deadline = after(now, self.timeouts.header_read);
        self.head_deadline = Some(deadline);
        // Keep the invariant: the timer must not fire after the head deadline.
        if deadline < self.sleep.deadline() {
            self.sleep.as_mut().reset(deadline);
        }
    }

    /// Called when the inner read is pending: polls the timer so the task is woken at the next
    /// deadline, and fails the read if a deadline has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        // The timer fired: only now work out which deadline, if any, has really passed.
        let now = Instant::now();
        self.observe(now);
        let next = if self.busy {
            after(now, self.timeouts.idle.max(BUSY_RECHECK_MIN))
        } else {
            if let Some(head) = self.head_deadline
                && now >= head
            {
                return Poll::Ready(Err(timed_out("header read timeout")));
            }
            let idle = after(self.last_activity, self.timeouts.idle);
            if now >= idle {
                return Poll::Ready(Err(timed_out("idle timeout")));
            }
            self.head_deadline.map_or(idle, |head| head.min(idle))
        };
        // `next` is in the future. Poll once more to register the waker for it; should the
        // timer still report ready (millisecond rounding at a tick edge), ask to be polled again
        // rather than loop here.
        self.sleep.as_mut().reset(next);
        if self.sleep.as_mut().poll(cx).is_ready() {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }

    /// Records a write that moved bytes as activity. It also observes the requests: hyper
    /// writes a response after (or as) its request finishes, while its pending read may not be
    /// polled again until the timer fires, which would start the idle clock late.
    fn on_write(&mut self, poll: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = poll
            && *n > 0
        {
            let now = Instant::now();
            self.observe(now);
            self.last_activity = now;
        }
    }
}

fn is_line_end(b: u8) -> bool {
    b == b'\r' || b == b'\n'
}

/// Whether `bytes` hold nothing but line ends: what a client may send between requests.
pub(super) fn only_empty_lines(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| is_line_end(b))
}

/// `t + d`, saturating to a far future instead of panicking on overflow (as `tokio::time::sleep`).
pub(super) fn after(t: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);
    t.checked_add(d).or_else(|| t.checked_add(FAR)).unwrap_or(t)
}

fn timed_out(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what)
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for TimedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let now = Instant::now();
        this.observe(now);
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.on_read(now, &buf.filled()[before..]);
                }
                Poll::Ready(Ok(()))
            }
            // hyper keeps a read pending on idle connections, so this is where deadlines fire.
            Poll::Pending => this.poll_deadline(cx),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TimedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.on_write(&poll);
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.on_write(&poll);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[path = "io_tests.rs"]
mod tests;
