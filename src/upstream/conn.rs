//! One HTTP/1.1 connection to an upstream, driven by the task of the request
//! using it: no connection task, no channels. The request future writes the head
//! and body and reads the response head; the response body ([`UpstreamBody`])
//! reads the rest (and finishes an upload the upstream answered early), then puts
//! the connection back in its pool.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{Method, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::net::TcpStream;

use super::{EndpointPool, RequestBody, SendError};
use crate::http1::codec::{
    self, BodyDecoder, Chunked, Decoded, Field, ResponseFraming, ResponseHead,
};
use crate::http1::wire::{self, BodyWriter, FIRST_READ, Framing, WriteError, WriteQueue};
use crate::message::{Head, Reply};

/// How long an upload the upstream answered early may go on after the answer. The
/// client is still sending it; cutting it would reset the client's connection before
/// it has read the answer.
const UPLOAD_AFTER_ANSWER: Duration = Duration::from_secs(60);

/// An open connection to an upstream endpoint.
pub struct Connection {
    io: TcpStream,
    /// Bytes read and not yet consumed.
    read: BytesMut,
    /// How much the next read asks for.
    read_size: usize,
    /// Bytes on their way to the upstream.
    queue: WriteQueue,
    /// Whether it has carried an exchange before (a pooled connection).
    pub(super) reused: bool,
    /// Whether any byte of an answer arrived during the current exchange.
    pub(super) received: bool,
    /// A write failed: whatever the upstream answers, the connection is not reused.
    broken: bool,
}

impl Connection {
    /// Connects to `addr` within `timeout`.
    /// Boxed: it moves between the pool, the request and the response body, and a
    /// response carrying it inline would be copied in full at every move.
    pub async fn open(addr: &str, timeout: Duration) -> Result<Box<Connection>, SendError> {
        let io = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| SendError::ConnectTimeout(timeout))?
            .map_err(SendError::Connect)?;
        let _ = io.set_nodelay(true);
        Ok(Box::new(Connection {
            io,
            read: BytesMut::new(),
            read_size: FIRST_READ,
            queue: WriteQueue::default(),
            reused: false,
            received: false,
            broken: false,
        }))
    }

    /// Whether an idle connection is still open. Costs no system call unless the
    /// socket has signalled something since its last read (tokio clears readiness
    /// on a short read): then the one-byte read tells a close, or stray bytes (either
    /// way the connection is done), from nothing. It registers no waker and spends
    /// none of the task's budget (a spent budget made `poll_read_ready` report every
    /// socket quiet, a closed one too).
    pub fn is_open(&self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.io.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Queues the request head for writing.
    fn queue_head(
        &mut self,
        head: &Head,
        framing: Option<&(HeaderName, HeaderValue)>,
        fields: &[Field<'_>],
    ) {
        self.received = false;
        codec::encode_request_head(head, framing, fields, self.queue.head());
    }

    /// Gives back what a large exchange grew, before the connection idles in the pool.
    fn shrink(&mut self) {
        self.read_size = FIRST_READ;
        if self.read.capacity() > 2 * FIRST_READ {
            self.read = BytesMut::new();
        }
        self.queue.shrink(8 * 1024);
    }

    /// Reads more of the response into the buffer; `Ok(0)` is the upstream closing.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let n = ready!(wire::poll_read_growing(
            &mut self.io,
            &mut self.read,
            &mut self.read_size,
            cx
        ))?;
        self.received |= n > 0;
        Poll::Ready(Ok(n))
    }

    /// Waits for the final response head, skipping interim (1xx) ones.
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<ResponseHead, SendError>> {
        loop {
            if !self.read.is_empty()
                && let Some(head) = codec::parse_response_head(&mut self.read)?
            {
                if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS
                {
                    continue;
                }
                return Poll::Ready(Ok(head));
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) if self.read.is_empty() => return Poll::Ready(Err(SendError::Closed)),
                Ok(0) => return Poll::Ready(Err(SendError::Truncated)),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(SendError::Io(e))),
            }
        }
    }
}

/// The request body on its way to the upstream.
pub struct RequestWriter(BodyWriter<RequestBody>);

impl RequestWriter {
    /// Writes `body` with `framing`.
    pub fn new(body: RequestBody, framing: Framing) -> Self {
        RequestWriter(BodyWriter::new(body, framing))
    }

    /// Sends the queued bytes and the rest of the body (see [`BodyWriter::poll_write`]).
    fn poll_write(
        &mut self,
        conn: &mut Connection,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SendError>> {
        self.0
            .poll_write(&mut conn.queue, &mut conn.io, cx)
            .map_err(|e| match e {
                WriteError::Body(e) => SendError::ClientBody(e),
                WriteError::Length => SendError::BodyLength,
                WriteError::Io(e) => SendError::Io(e),
            })
    }
}

/// Sends `head`, then the body, and waits for the response
/// head. An upstream may answer before the upload ends; `writer` then still has
/// work, which the response body finishes.
pub async fn exchange(
    conn: &mut Connection,
    head: &Head,
    framing: Option<&(HeaderName, HeaderValue)>,
    fields: &[Field<'_>],
    writer: &mut Option<RequestWriter>,
) -> Result<ResponseHead, SendError> {
    conn.queue_head(head, framing, fields);
    let mut write_failed = None;
    poll_fn(|cx| {
        if let Some(w) = writer.as_mut() {
            match w.poll_write(conn, cx) {
                Poll::Ready(Ok(())) => *writer = None,
                Poll::Ready(Err(SendError::Io(e))) => {
                    // The upstream may have answered and closed (a 413, say): read on.
                    *writer = None;
                    conn.broken = true;
                    write_failed = Some(e);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        match ready!(conn.poll_head(cx)) {
            Err(SendError::Closed) if write_failed.is_some() => Poll::Ready(Err(SendError::Io(
                write_failed
                    .take()
                    .unwrap_or_else(|| io::ErrorKind::BrokenPipe.into()),
            ))),
            polled => Poll::Ready(polled),
        }
    })
    .await
}

/// A response body streamed from an upstream connection. Once read to its end,
/// the connection goes back to its pool if it can carry another exchange;
/// dropped earlier, the connection is closed.
pub struct UpstreamBody {
    conn: Option<Box<Connection>>,
    /// An upload the upstream answered before it ended.
    writer: Option<Box<RequestWriter>>,
    remaining: BodyDecoder,
    reusable: bool,
    pool: Option<Arc<EndpointPool>>,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

impl UpstreamBody {
    /// The body of `head` on `conn`, answering a `method` request. A body that is
    /// already complete gives the connection back at once.
    pub(super) fn new(
        conn: Box<Connection>,
        writer: Option<RequestWriter>,
        method: &Method,
        head: &mut ResponseHead,
        pool: &Arc<EndpointPool>,
    ) -> Result<Self, SendError> {
        let (framing, reusable) = codec::response_framing(method, head)?;
        let remaining = match framing {
            ResponseFraming::Length(0) => BodyDecoder::Done,
            ResponseFraming::Length(n) => BodyDecoder::Length(n),
            ResponseFraming::Chunked => BodyDecoder::Chunked(Chunked::Size),
            ResponseFraming::Close => BodyDecoder::UntilClose,
        };
        let mut body = UpstreamBody {
            conn: Some(conn),
            // Boxed: rare, and a response carrying it inline is copied at every move.
            writer: writer.map(Box::new),
            remaining,
            reusable,
            pool: Some(pool.clone()),
        };
        if remaining.is_done() {
            body.finish();
        }
        Ok(body)
    }

    /// The body has ended: the connection goes back to its pool if nothing about
    /// the exchange makes it unsafe to reuse. An upload the upstream answered early
    /// is finished first, in a task of its own, and its connection closed after it:
    /// an upstream that answers before reading may also take the rest of the upload
    /// for a next request.
    fn finish(&mut self) {
        self.remaining = BodyDecoder::Done;
        let (Some(mut conn), Some(pool)) = (self.conn.take(), self.pool.take()) else {
            return;
        };
        if let Some(writer) = self.writer.take() {
            finish_upload(conn, writer);
        } else if self.reusable && !conn.broken && conn.read.is_empty() {
            // Bytes past the response's end would be read as the next answer.
            conn.reused = true;
            conn.shrink();
            pool.checkin(conn);
        }
    }

    fn decode(&mut self) -> Result<Decoded, SendError> {
        match self.conn.as_mut() {
            Some(conn) => Ok(self.remaining.decode(&mut conn.read)?),
            None => Ok(Decoded::End),
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = SendError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, SendError>>> {
        let this = self.get_mut();
        if let (Some(writer), Some(conn)) = (this.writer.as_mut(), this.conn.as_mut()) {
            match writer.poll_write(conn, cx) {
                Poll::Ready(Ok(())) => this.writer = None,
                Poll::Ready(Err(_)) => {
                    this.writer = None;
                    conn.broken = true;
                }
                Poll::Pending => {}
            }
        }
        loop {
            let decoded = match this.decode() {
                Ok(decoded) => decoded,
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            };
            match decoded {
                Decoded::Data(data) => {
                    if this.remaining.is_done() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decoded::Trailers(trailers) => {
                    this.finish();
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Decoded::End => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Decoded::NeedMore => {}
            }
            // Invariant: decode() answers End when the connection is gone.
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if this.remaining == BodyDecoder::UntilClose => {
                    this.reusable = false;
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(SendError::Truncated)));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(SendError::Io(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        self.remaining
            .exact()
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

/// Sends the rest of an upload the upstream answered early, within
/// [`UPLOAD_AFTER_ANSWER`], then closes the connection.
fn finish_upload(mut conn: Box<Connection>, mut writer: Box<RequestWriter>) {
    // Outside a runtime (one shutting down) the upload is simply cut.
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let upload = poll_fn(|cx| writer.poll_write(&mut conn, cx));
            let _ = tokio::time::timeout(UPLOAD_AFTER_ANSWER, upload).await;
        });
    }
}

/// Builds the reply the proxy relays. It carries no HTTP version: ficus answers in its
/// own (RFC 9110 §2.5), so an HTTP/1.0 upstream must not turn the client's keep-alive
/// connection into one that closes after each answer.
pub(super) fn response(head: ResponseHead, body: UpstreamBody) -> Reply<UpstreamBody> {
    Reply {
        status: head.status,
        reason: head.reason,
        fields: head.fields,
        request_id: None,
        body,
    }
}
