//! Read timeouts for accepted client connections.
//!
//! hyper's HTTP/1 server has a single `header_read_timeout`, armed as soon as a keep-alive
//! connection starts waiting for its next request head, so it is also the idle keep-alive
//! timeout. A proxy needs two limits: a short one for a client that has started a request head
//! but not finished it (slowloris), and a long one for an idle keep-alive connection, which must
//! exceed the idle timeout of any load balancer in front (else the LB races our close and its
//! users see 502s). So ficus runs hyper without a timer and enforces both in [`TimedIo`], a
//! wrapper around the accepted stream that fails a pending read with
//! [`io::ErrorKind::TimedOut`], which makes hyper close the connection. The connection's service
//! reports requests in flight through a shared [`ConnActivity`].
//!
//! The same timer asks for an idle HTTP/1 connection to be released (`ConnTimeouts::release`):
//! hyper keeps a read and a write buffer, 8 KiB each, for a connection's whole life, and has no
//! setting to free them while it idles. So once a keep-alive connection has been quiet for a
//! moment, [`ConnActivity::take_release`] tells the connection's task to end hyper's connection
//! (keeping the socket), park on the bare socket until the client sends again, and then start a
//! new one. See `server::serve_http1`.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
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
    /// Set by the wrapper when the connection has idled for `ConnTimeouts::release`.
    release: AtomicBool,
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

    /// Whether the wrapper asked, since the last call, for the HTTP server to be released.
    ///
    /// It asks only when the server is idle: a request has been answered, none is in flight,
    /// no byte of a next request head has been read and no write is waiting for the client.
    /// Ending the server then loses nothing: bytes still in the socket stay there for the next
    /// one, and bytes it read but did not parse go back through [`TimedIo::released`].
    pub fn take_release(&self) -> bool {
        // The load keeps the common case (no request) a plain read.
        self.release.load(ORDER) && self.release.swap(false, ORDER)
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
    /// How long an idle connection keeps its HTTP server before the wrapper asks for it to be
    /// released ([`ConnActivity::take_release`]); `None` never asks (HTTP/2).
    pub release: Option<Duration>,
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
    /// A request has started since the server was (re)started on this connection. hyper only
    /// counts a connection as idle (safe to end without a `Connection: close` on the next
    /// response) once it has answered one.
    served: bool,
    /// The last write found the socket full: the server still holds bytes for the client.
    write_blocked: bool,
    /// Bytes read by a released server and not yet parsed, handed out before the socket's.
    rewind: Bytes,
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
            served: false,
            write_blocked: false,
            rewind: Bytes::new(),
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
            if started != self.seen_started {
                self.served = true;
            }
            if !busy {
                self.arm_release(now);
            }
        }
        self.busy = busy;
        self.seen_started = started;
    }

    /// A request just finished: make sure the timer fires by the release deadline. A timer already
    /// due within two release periods is left alone (it re-arms itself when it fires), so a busy
    /// keep-alive connection resets it about once per period rather than once per request.
    fn arm_release(&mut self, now: Instant) {
        if let Some(release) = self.timeouts.release {
            let at = after(now, release);
            if self.sleep.deadline() > after(at, release) {
                self.sleep.as_mut().reset(at);
            }
        }
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
            let next = self.head_deadline.map_or(idle, |head| head.min(idle));
            match self.timeouts.release {
                Some(release) if self.served && self.head_deadline.is_none() => {
                    let at = after(self.last_activity, release);
                    if now < at {
                        next.min(at)
                    } else if self.write_blocked {
                        // The client is not reading the response's end: look again later.
                        next.min(after(now, release))
                    } else {
                        // The connection's task takes the flag once this poll returns.
                        self.activity.release.store(true, ORDER);
                        next
                    }
                }
                _ => next,
            }
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
        self.write_blocked = poll.is_pending();
        if let Poll::Ready(Ok(n)) = poll
            && *n > 0
        {
            let now = Instant::now();
            self.observe(now);
            self.last_activity = now;
        }
    }

    /// The server was released: `unread` are the bytes it had read and not parsed. Until a new
    /// server starts, only the idle timeout applies, unless those bytes begin a request head.
    pub fn released(&mut self, unread: Bytes) {
        self.served = false;
        self.write_blocked = false;
        // A flag raised meanwhile was meant for the server that is gone.
        self.activity.release.store(false, ORDER);
        // Empty lines between requests are allowed (RFC 9112 §2.2) and are not a head.
        let start = unread
            .iter()
            .position(|&b| !is_line_end(b))
            .unwrap_or(unread.len());
        let unread = &unread[start..];
        if !unread.is_empty() && self.head_deadline.is_none() {
            self.start_head(Instant::now());
        }
        // A copy: `unread` is a view of the server's whole read buffer, which it would keep.
        self.rewind = Bytes::copy_from_slice(unread);
    }

    /// Whether bytes read by a released server are waiting to be read again.
    pub fn has_unread(&self) -> bool {
        !self.rewind.is_empty()
    }
}

impl TimedIo<TcpStream> {
    /// Waits, holding no buffer, until the client sends bytes or closes (`Ok`), or the idle
    /// timeout passes (`Err(TimedOut)`), for a connection whose server was released.
    pub fn poll_parked(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.inner.poll_read_ready(cx) {
            Poll::Ready(ready) => Poll::Ready(ready),
            Poll::Pending => self.poll_deadline(cx),
        }
    }
}

fn is_line_end(b: u8) -> bool {
    b == b'\r' || b == b'\n'
}

/// Whether `bytes` hold nothing but line ends: what a client may send between requests.
fn only_empty_lines(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| is_line_end(b))
}

/// `t + d`, saturating to a far future instead of panicking on overflow (as `tokio::time::sleep`).
fn after(t: Instant, d: Duration) -> Instant {
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
        if !this.rewind.is_empty() {
            // Already seen by `on_read` when first read.
            let n = this.rewind.len().min(buf.remaining());
            buf.put_slice(&this.rewind[..n]);
            this.rewind.advance(n);
            return Poll::Ready(Ok(()));
        }
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
