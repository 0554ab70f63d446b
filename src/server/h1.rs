//! ficus's own HTTP/1.1 server: one task per connection reads a request head, runs
//! [`proxy::handle`] on it, and writes the response, with no channel between the
//! socket and the request and no buffer held while the connection idles.
//!
//! A connection goes through three phases per request:
//! - **head**: wait for the first byte (bounded by `idle_timeout`), then for the
//!   whole head (bounded by `header_read_timeout` from its first byte). A head over
//!   `max_request_header_bytes` or 100 fields is answered 431, a malformed one 400.
//!   After [`RELEASE_IDLE`] without a request the read and write buffers are freed.
//! - **request**: the handler runs. A request body is read by whoever polls it, with
//!   the connection's [`Reader`] handed over for that (see [`super::body`]); an
//!   `Expect: 100-continue` is answered when the body is first read, so a request
//!   refused or failed before its upstream invites no upload. A request without a body
//!   leaves the reader here, and the connection watches it: a client that closes
//!   cancels its request, as with hyper. Route timeouts govern this phase.
//! - **response**: the head goes out in the same write as the first body bytes when
//!   they are ready; the body streams with the client's pace as backpressure, cut after
//!   `stream_idle_timeout` without a byte reaching the client. An answer that breaks
//!   off after its head went out ends in a reset, never a clean close that could pass
//!   for its end; one that breaks before its first byte becomes a 502.
//!
//! A request whose body was not read to its end, a client that asked for `close`, an
//! HTTP/1.0 response without a length, and shutdown all end the connection after the
//! response: FIN first, then bytes the client may still send are read and dropped for a
//! moment ([`LINGER`]) so that closing does not reset the connection under the answer.

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{
    CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, DATE, EXPECT, HeaderName, HeaderValue,
    TRANSFER_ENCODING,
};
use http::{Method, StatusCode, Version};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use super::body::{ClientBody, Continue, Http1Body, Reader, Returned};
use super::io::{after, only_empty_lines};
use super::{ConnError, StopWatch};
use crate::http1::codec::{self, RequestBodyLength, RequestHead, RequestHeadError};
use crate::http1::wire::{BodyWriter, Framing, WriteError, WriteQueue};
use crate::message::{Call, Fields, Reply, RequestId};
use crate::metrics::ConnectionGauge;
use crate::proxy::headers::X_REQUEST_ID;
use crate::proxy::{self, Peer, ResponseBody, SharedState};

/// How long an idle keep-alive connection keeps its read buffer. Short enough that
/// idle connections cost little (nginx frees its buffers at once); long enough that
/// a busy connection's requests never pay for a new buffer, and the timer behind it
/// fires about twice a second at most.
pub const RELEASE_IDLE: Duration = Duration::from_millis(500);
/// How long a closing connection reads and drops what the client still sends.
const LINGER: Duration = Duration::from_secs(2);
/// Most bytes dropped while lingering.
const LINGER_BYTES: usize = 1024 * 1024;
/// The interim answer to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Limits of the HTTP/1.1 server, from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest request head.
    pub max_head: usize,
    /// Longest wait for a whole request head once its first byte has arrived.
    pub header_read: Duration,
    /// Longest wait for a next request on a keep-alive connection.
    pub idle: Duration,
    /// Longest an answer being written may go without a byte reaching the client.
    pub stream_idle: Duration,
}

/// Why reading a request head ended without one.
enum NoHead {
    /// The client closed, or shutdown came while no head had started.
    Closed,
    /// The head is refused: answered 400 or 431.
    Refused(RequestHeadError),
    TimedOut(&'static str),
    Io(io::Error),
}

/// A request ready for the handler, and what the connection keeps of it.
struct Prepared {
    request: Call<ClientBody>,
    /// Gives the reader back, when the request has a body.
    returned: Option<oneshot::Receiver<Returned>>,
    /// Raised by the body when it is first read, for an `Expect: 100-continue`.
    expect: Option<Arc<Continue>>,
}

/// One client connection.
struct Conn<'a> {
    /// The read side; `None` while a request body has it.
    reader: Option<Reader>,
    write: OwnedWriteHalf,
    queue: WriteQueue,
    limits: &'a Limits,
    /// The connection's one timer, re-armed lazily: it fires no later than the
    /// earliest deadline that applies, which is only worked out when it fires.
    timer: Pin<Box<Sleep>>,
    /// When the client last sent bytes or a response was last finished.
    last_active: Instant,
    /// The read buffer was freed while idling (counted as an idle connection).
    released: bool,
    /// An answer broke off after its head was sent: the connection must be reset, so
    /// the client cannot take what it got for a whole answer.
    abort: bool,
}

/// Serves HTTP/1.1 on `stream` until the client closes, a timeout passes or shutdown.
pub(super) async fn serve(
    stream: TcpStream,
    state: &SharedState,
    peer: &Peer,
    limits: &Limits,
    gauge: &mut ConnectionGauge,
    stop: &mut StopWatch<'_>,
) -> Result<(), ConnError> {
    let (read, write) = stream.into_split();
    let now = Instant::now();
    let mut conn = Conn {
        reader: Some(Reader::new(read)),
        write,
        queue: WriteQueue::default(),
        limits,
        timer: Box::pin(tokio::time::sleep_until(after(now, limits.idle))),
        last_active: now,
        released: false,
        abort: false,
    };
    let result = conn.serve(state, peer, gauge, stop).await;
    gauge.set_idle(false);
    if conn.abort {
        // A reset, not a FIN: for an answer delimited by the connection's end (to an
        // HTTP/1.0 client) a FIN would look like its end. The socket closes with the
        // reset once the read half is dropped too.
        let Conn { write, reader, .. } = conn;
        let _ = write.as_ref().set_zero_linger();
        write.forget();
        drop(reader);
    }
    result
}

impl Conn<'_> {
    async fn serve(
        &mut self,
        state: &SharedState,
        peer: &Peer,
        gauge: &mut ConnectionGauge,
        stop: &mut StopWatch<'_>,
    ) -> Result<(), ConnError> {
        // The handler's future (about 2.4 KiB) lives in a box kept from one request to
        // the next: allocating and freeing it per request cost about 400 instructions.
        // The box goes with the read buffer when the connection idles. It is kept from
        // the second request on: thousands of connections that each send one request
        // and idle would otherwise all hold one at once, and leave the heap in holes
        // when they go (5.02 against 4.69 KiB resident per idle connection, scenario 5).
        let mut handler = None;
        let mut first = true;
        loop {
            let head = match self.read_head(gauge, stop, &mut handler).await {
                Ok(head) => head,
                Err(NoHead::Closed) => return Ok(()),
                Err(NoHead::Refused(e)) => {
                    self.refuse(state, &e).await;
                    return Ok(());
                }
                Err(NoHead::TimedOut(what)) => return Err(what.into()),
                Err(NoHead::Io(e)) => return Err(e.into()),
            };
            let mut keep_alive = head.keep_alive;
            let client = head.head.version;
            let head_request = head.head.method == Method::HEAD;
            let Prepared {
                request,
                mut returned,
                expect,
            } = self.request(head)?;
            let answer = self
                .answer(
                    &mut handler,
                    || proxy::handle(state, request, peer),
                    expect,
                    stop,
                )
                .await;
            if std::mem::take(&mut first) {
                handler = None;
            }
            if let Some(answer) = answer {
                keep_alive &= !stop.stopped;
                if let Some(back) = returned.as_mut() {
                    // A body the handler dropped unread has come back already: say
                    // `close` now rather than close without warning.
                    match back.try_recv() {
                        Ok(Returned { reader, finished }) => {
                            keep_alive &= finished;
                            self.reader = Some(reader);
                            returned = None;
                        }
                        Err(oneshot::error::TryRecvError::Empty) => {}
                        Err(oneshot::error::TryRecvError::Closed) => keep_alive = false,
                    }
                }
                keep_alive = self
                    .respond(answer, head_request, client, keep_alive)
                    .await?;
            } else {
                // The client closed before its answer: the request is cancelled.
                return Ok(());
            }
            if !keep_alive {
                // The answer is complete: the client learns so now, whatever an upload
                // the upstream answered early still does.
                let _ = self.write.shutdown().await;
            }
            if let Some(back) = returned {
                // The body is still being read (an upload the upstream answered early),
                // for at most the idle timeout, and not past shutdown.
                let mut back = back;
                let wait = poll_fn(|cx| {
                    if stop.poll_stopped(cx) {
                        return Poll::Ready(None);
                    }
                    Pin::new(&mut back).poll(cx).map(Result::ok)
                });
                match tokio::time::timeout(self.limits.idle, wait).await {
                    Ok(Some(Returned { reader, finished })) => {
                        keep_alive &= finished;
                        self.reader = Some(reader);
                    }
                    _ => return Ok(()),
                }
            }
            if !keep_alive {
                self.close().await;
                return Ok(());
            }
        }
    }

    /// Waits for a whole request head; see the module documentation for the limits.
    /// `spare` is dropped with the read buffer when the connection idles.
    async fn read_head<T>(
        &mut self,
        gauge: &mut ConnectionGauge,
        stop: &mut StopWatch<'_>,
        spare: &mut Option<T>,
    ) -> Result<RequestHead, NoHead> {
        let now = Instant::now();
        self.last_active = now;
        let limits = *self.limits;
        // The timer must fire by the release deadline. One already due within two
        // release periods is left alone (it re-arms itself when it fires), so a busy
        // connection resets it about once per period rather than once per request.
        let release_at = after(now, RELEASE_IDLE.min(limits.idle));
        if self.timer.deadline() > after(release_at, RELEASE_IDLE) {
            self.timer.as_mut().reset(release_at);
        }
        let mut head_deadline: Option<Instant> = None;
        // Whether a head could have completed since the last parse: bytes left from the
        // last request may hold one; after that, only a read with a line end can.
        let mut parse = true;
        poll_fn(|cx| {
            loop {
                // Invariant: a head is read only while the connection holds its reader.
                let Some(reader) = self.reader.as_mut() else {
                    return Poll::Ready(Err(NoHead::Closed));
                };
                // A head without a line end is parsed once it is too long, to refuse it.
                if (parse || reader.buf.len() > limits.max_head) && !reader.buf.is_empty() {
                    parse = false;
                    match codec::parse_request_head(&mut reader.buf, limits.max_head) {
                        Ok(Some(head)) => return Poll::Ready(Ok(head)),
                        Ok(None) => {}
                        Err(e) => return Poll::Ready(Err(NoHead::Refused(e))),
                    }
                }
                // Empty lines between requests are allowed (RFC 9112 §2.2) and are not
                // a head.
                if head_deadline.is_none()
                    && !reader.buf.is_empty()
                    && !only_empty_lines(&reader.buf)
                {
                    let deadline = after(Instant::now(), limits.header_read);
                    head_deadline = Some(deadline);
                    if deadline < self.timer.deadline() {
                        self.timer.as_mut().reset(deadline);
                    }
                }
                if head_deadline.is_none() && stop.poll_stopped(cx) {
                    return Poll::Ready(Err(NoHead::Closed));
                }
                if self.released {
                    // Waiting without a buffer until the client sends.
                    match reader.poll_ready(cx) {
                        Poll::Ready(Ok(())) => {
                            self.released = false;
                            gauge.set_idle(false);
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(NoHead::Io(e))),
                        Poll::Pending => {}
                    }
                }
                if !self.released {
                    let before = reader.buf.len();
                    match reader.poll_fill(cx) {
                        Poll::Ready(Ok(0)) => return Poll::Ready(Err(NoHead::Closed)),
                        Poll::Ready(Ok(_)) => {
                            let read = &reader.buf[before..];
                            // A trickled head is parsed again only when a line may have
                            // ended, not once per byte.
                            parse = read.contains(&b'\n');
                            // Empty lines alone do not keep an idle connection alive.
                            if !only_empty_lines(read) {
                                self.last_active = Instant::now();
                            }
                            continue;
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(NoHead::Io(e))),
                        Poll::Pending => {}
                    }
                }
                return self.poll_deadline(cx, head_deadline, gauge, spare);
            }
        })
        .await
    }

    /// Called when the client has nothing more to read: polls the timer so the task is
    /// woken at the next deadline, and fails if a deadline has passed.
    fn poll_deadline<T>(
        &mut self,
        cx: &mut Context<'_>,
        head_deadline: Option<Instant>,
        gauge: &mut ConnectionGauge,
        spare: &mut Option<T>,
    ) -> Poll<Result<RequestHead, NoHead>> {
        if self.timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        // The timer fired: only now work out which deadline, if any, has passed.
        let now = Instant::now();
        let idle_at = after(self.last_active, self.limits.idle);
        let mut next = idle_at;
        if let Some(head) = head_deadline {
            if now >= head {
                return Poll::Ready(Err(NoHead::TimedOut("header read timeout")));
            }
            next = next.min(head);
        }
        if now >= idle_at {
            return Poll::Ready(Err(NoHead::TimedOut("idle timeout")));
        }
        if head_deadline.is_none() && !self.released {
            let release_at = after(self.last_active, RELEASE_IDLE);
            if now < release_at {
                next = next.min(release_at);
            } else if let Some(reader) = self.reader.as_mut() {
                // Nothing but empty lines, if anything, is waiting in the buffer.
                reader.buf.clear();
                reader.release();
                self.queue.release();
                *spare = None;
                self.released = true;
                gauge.set_idle(true);
                tracing::trace!("connection idle: read buffer released");
            }
        }
        // `next` is in the future. Poll once more to register the waker for it; should
        // the timer still report ready (millisecond rounding at a tick edge), ask to be
        // polled again rather than loop here.
        self.timer.as_mut().reset(next);
        if self.timer.as_mut().poll(cx).is_ready() {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }

    /// The request for the handler. A body takes the reader with it; the receiver
    /// gets it back.
    #[allow(clippy::type_complexity)]
    fn request(&mut self, head: RequestHead) -> Result<Prepared, ConnError> {
        let RequestHead {
            mut head,
            body: length,
            expect_continue,
            length_given,
            cookies_repeated,
            ..
        } = head;
        if expect_continue {
            // ficus answers it itself, or (no body, HTTP/1.0) it does not apply: the
            // upstream must not wait for a body or answer 100 on its own.
            head.fields.remove(EXPECT.as_str());
        }
        if length_given {
            // ficus frames the body by this length, so it writes the line itself: the
            // client's spacing, case or `5, 5` (anything else was refused) never reach an
            // upstream that might read them differently.
            let n = match length {
                RequestBodyLength::Length(n) => n,
                _ => 0,
            };
            head.fields.insert(CONTENT_LENGTH, HeaderValue::from(n));
        }
        if cookies_repeated {
            head.fields.join_cookies();
        }
        let mut returned = None;
        let mut expect = None;
        let body = match length {
            RequestBodyLength::Empty => ClientBody::Empty,
            RequestBodyLength::Length(_) | RequestBodyLength::Chunked => {
                // ficus answers `Expect: 100-continue` itself when the body is first
                // read: by then the request has been routed and its upstream reached.
                if expect_continue && head.version == Version::HTTP_11 {
                    expect = Some(Arc::new(Continue::default()));
                }
                let reader = self.reader.take().ok_or("request body without a reader")?;
                let (tx, rx) = oneshot::channel();
                returned = Some(rx);
                let length = match length {
                    RequestBodyLength::Length(n) => Some(n),
                    _ => None,
                };
                ClientBody::Http1(Http1Body::new(reader, length, tx, expect.clone()))
            }
        };
        Ok(Prepared {
            request: Call { head, body },
            returned,
            expect,
        })
    }

    /// Runs the handler `start` makes until it answers; `None` if the client closed
    /// first. The handler runs in `slot`'s box, made on first use: a connection's task
    /// would otherwise keep room for its state while it idles.
    async fn answer<F: Future<Output = Reply<ResponseBody>>>(
        &mut self,
        slot: &mut Option<Pin<Box<Option<F>>>>,
        start: impl FnOnce() -> F,
        expect: Option<Arc<Continue>>,
        stop: &mut StopWatch<'_>,
    ) -> Option<Reply<ResponseBody>> {
        let mut handler = match slot {
            Some(boxed) => {
                boxed.set(Some(start()));
                boxed.as_mut()
            }
            None => slot.insert(Box::pin(Some(start()))).as_mut(),
        };
        let answer = poll_fn(|cx| {
            // Invariant: the handler was set above and is taken out only below.
            let Some(running) = handler.as_mut().as_pin_mut() else {
                return Poll::Ready(None);
            };
            if let Poll::Ready(response) = running.poll(cx) {
                return Poll::Ready(Some(response));
            }
            // The body was read for the first time: invite the client to send it.
            if expect.as_ref().is_some_and(|expect| expect.take()) {
                self.queue.head().extend_from_slice(CONTINUE);
            }
            if let Poll::Ready(Err(_)) = self.queue.poll_flush(&mut self.write, cx) {
                return Poll::Ready(None);
            }
            stop.poll_stopped(cx);
            // A client that closes before its answer cancels its request, as with
            // hyper. (One that only half-closed cannot be told apart.)
            if self.poll_read_closed(cx) {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await;
        // Done, or cancelled: what it holds goes now, the box stays for the next one.
        handler.set(None);
        answer
    }

    /// Whether the client has closed (or half-closed) the connection, watched while its
    /// request is served (unless its body has the reader). Bytes it sends meanwhile (a
    /// pipelined next request) are kept, up to the size of a head.
    fn poll_read_closed(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(reader) = self.reader.as_mut() else {
            return false;
        };
        if reader.buf.len() >= self.limits.max_head {
            return false;
        }
        // Readiness first: while the client sends nothing (the usual case) this only
        // registers the task's interest, without preparing the buffer for a read.
        match reader.poll_ready(cx) {
            Poll::Pending => return false,
            Poll::Ready(Err(_)) => return true,
            Poll::Ready(Ok(())) => {}
        }
        while reader.buf.len() < self.limits.max_head {
            match reader.poll_fill(cx) {
                Poll::Ready(Ok(0) | Err(_)) => return true,
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => return false,
            }
        }
        false
    }

    /// Writes `response`; whether the connection can carry another request after it.
    async fn respond(
        &mut self,
        response: Reply<ResponseBody>,
        head_request: bool,
        client: Version,
        mut keep_alive: bool,
    ) -> Result<bool, ConnError> {
        // A `100 Continue` still queued goes first.
        poll_fn(|cx| self.queue.poll_flush(&mut self.write, cx)).await?;
        let Reply {
            status,
            reason,
            mut fields,
            mut request_id,
            body,
        } = response;
        let exact = http_body::Body::size_hint(&body).exact();
        let (framing, announce) =
            codec::response_body_framing(head_request, status, &mut fields, exact, client);
        keep_alive &= framing != Framing::Close;
        // Most upstreams send a Date; the clock is read only for those that do not.
        let date;
        let mut digits = [0u8; 20];
        let mut extra: [(&HeaderName, &[u8]); 4] = [(&DATE, b""); 4];
        let mut n = 0;
        if let Some(id) = &request_id {
            extra[n] = (&X_REQUEST_ID, id.as_bytes());
            n += 1;
        }
        if !fields.contains(DATE.as_str()) {
            date = http_date();
            extra[n] = (&DATE, &date);
            n += 1;
        }
        if let Some(length) = announce {
            extra[n] = (&CONTENT_LENGTH, decimal(length, &mut digits));
            n += 1;
        } else if framing == Framing::Chunked {
            extra[n] = (&TRANSFER_ENCODING, b"chunked");
            n += 1;
        }
        if !keep_alive && client == Version::HTTP_11 {
            extra[n] = (&CONNECTION, b"close");
            n += 1;
        } else if keep_alive && client == Version::HTTP_10 {
            extra[n] = (&CONNECTION, b"keep-alive");
            n += 1;
        }
        codec::encode_response_head(
            status,
            reason.as_deref(),
            &fields,
            &extra[..n],
            self.queue.head(),
        );
        let mut writer = BodyWriter::new(body, framing);
        // The client is not watched while its answer is written: one that has gone makes
        // a write fail, and one that only half-closed still reads. One that stops
        // reading, or an upstream that stops sending, is cut after `stream_idle`
        // without a byte going out (the connection's timer is free meanwhile).
        let stream_idle = self.limits.stream_idle;
        // Bytes written and when they last grew; set at the first wait, so an answer
        // written at once costs no clock read.
        let mut progress: Option<(u64, Instant)> = None;
        let written = poll_fn(|cx| {
            if let Poll::Ready(written) = writer.poll_write(&mut self.queue, &mut self.write, cx) {
                return Poll::Ready(written);
            }
            // An answer still streaming may last for hours. A client's own request id
            // is a slice of its request's head, and is needed only until the head has
            // gone out.
            if !self.queue.head_unsent() {
                request_id = None;
            }
            let written = self.queue.written();
            let since = match progress {
                Some((seen, since)) if seen == written => since,
                None => {
                    let now = Instant::now();
                    // The timer must fire by the deadline.
                    let due = after(now, stream_idle);
                    if self.timer.deadline() > due {
                        self.timer.as_mut().reset(due);
                    }
                    now
                }
                Some(_) => Instant::now(),
            };
            progress = Some((written, since));
            if self.timer.as_mut().poll(cx).is_ready() {
                let due = after(since, stream_idle);
                if Instant::now() >= due {
                    return Poll::Ready(Err(WriteError::Io(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "stream idle timeout: no byte reached the client",
                    ))));
                }
                self.timer.as_mut().reset(due);
                if self.timer.as_mut().poll(cx).is_ready() {
                    cx.waker().wake_by_ref();
                }
            }
            Poll::Pending
        })
        .await;
        let broken: ConnError = match written {
            Ok(()) => return Ok(keep_alive),
            Err(WriteError::Io(e)) if e.kind() == io::ErrorKind::TimedOut => {
                // The answer is incomplete: cut, like a broken one.
                self.abort = true;
                return Err(e.into());
            }
            Err(WriteError::Io(e)) => return Err(e.into()),
            Err(WriteError::Body(e)) => e,
            Err(WriteError::Length) => {
                "response body length differs from its content-length".into()
            }
        };
        if self.queue.head_unsent() {
            // It broke before its first byte: nothing has gone out, so the client can
            // still get a plain 502 (the upstream error was counted with the body).
            self.queue.discard();
            let request_id = request_id.as_ref().map(RequestId::as_bytes);
            self.answer_alone(StatusCode::BAD_GATEWAY, request_id).await;
            return Ok(false);
        }
        // The client must see the answer cut, never a clean end.
        self.abort = true;
        Err(broken)
    }

    /// Answers a refused request head with `error`'s status and closes.
    async fn refuse(&mut self, state: &SharedState, error: &RequestHeadError) {
        let status = match error {
            RequestHeadError::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            RequestHeadError::Malformed(_) => StatusCode::BAD_REQUEST,
            RequestHeadError::UnsupportedCoding => StatusCode::NOT_IMPLEMENTED,
        };
        tracing::debug!(%error, status = status.as_u16(), "request refused");
        state.refused(status);
        if self.answer_alone(status, None).await {
            self.close().await;
        }
    }

    /// Writes a short answer of ficus's own with `status`, and `Connection: close`:
    /// an empty body, or for a 502 ficus's JSON error body. Whether it was written.
    async fn answer_alone(&mut self, status: StatusCode, request_id: Option<&[u8]>) -> bool {
        let mut body = Vec::new();
        if status == StatusCode::BAD_GATEWAY {
            body = proxy::error::json_body("upstream_protocol", request_id).into_bytes();
        }
        let date = http_date();
        let mut digits = [0u8; 20];
        let mut extra: [(&HeaderName, &[u8]); 5] = [
            (&CONTENT_LENGTH, decimal(body.len() as u64, &mut digits)),
            (&CONNECTION, b"close"),
            (&DATE, &date[..]),
            (&CONTENT_TYPE, b"application/json"),
            (&X_REQUEST_ID, b""),
        ];
        let n = match request_id {
            _ if body.is_empty() => 3,
            Some(id) => {
                extra[4].1 = id;
                5
            }
            None => 4,
        };
        let out = self.queue.head();
        codec::encode_response_head(status, None, &Fields::new(), &extra[..n], out);
        out.extend_from_slice(&body);
        poll_fn(|cx| self.queue.poll_flush(&mut self.write, cx))
            .await
            .is_ok()
    }

    /// Ends the connection after its last response: sends FIN, then reads and drops
    /// what the client still sends for a moment, so that unread bytes do not make the
    /// kernel reset the connection before the client has read the response.
    async fn close(&mut self) {
        let _ = self.write.shutdown().await;
        let Some(reader) = self.reader.as_mut() else {
            return;
        };
        let mut dropped = 0;
        let drain = poll_fn(|cx| {
            loop {
                reader.buf.clear();
                match reader.poll_fill(cx) {
                    Poll::Ready(Ok(n)) if n > 0 && dropped < LINGER_BYTES => dropped += n,
                    Poll::Ready(_) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
            }
        });
        let _ = tokio::time::timeout(LINGER, drain).await;
    }
}

/// `n` in decimal, written at the end of `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[start..];
        }
    }
}

/// The current time as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`), formatted at
/// most once a second per thread.
fn http_date() -> [u8; 29] {
    thread_local! {
        static CACHE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHE.with_borrow_mut(|(cached, text)| {
        if *cached != secs {
            let formatted = httpdate::fmt_http_date(now);
            if formatted.len() == text.len() {
                text.copy_from_slice(formatted.as_bytes());
                *cached = secs;
            }
        }
        *text
    })
}
