//! Writing HTTP/1.1 messages, shared by ficus's server (responses to clients) and its
//! upstream client (requests to upstreams): a write queue that sends a head and body
//! bytes in as few system calls as the socket allows, and a writer that frames a
//! streamed [`Body`] onto it.

use std::io::{self, IoSlice, Write};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite};

/// How a message body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes, announced by Content-Length.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Raw bytes until the connection closes (a response to an HTTP/1.0 client).
    Close,
}

/// What a head buffer starts with: most heads fit.
const HEAD_CAPACITY: usize = 1024;

/// Bytes waiting to be written: a head or chunk-size line, then body bytes, then a
/// chunk's or the body's closing bytes. One vectored write sends all three.
#[derive(Debug, Default)]
pub struct WriteQueue {
    /// A head or chunk-size line, from `out_pos` on...
    out: Vec<u8>,
    out_pos: usize,
    /// ...then body bytes...
    data: Bytes,
    /// ...then a chunk's or the body's closing CRLFs.
    suffix: &'static [u8],
    /// Bytes written so far, ever: progress, for a send timeout.
    written: u64,
}

impl WriteQueue {
    /// The buffer to encode a new head into; the queue must be empty.
    pub fn head(&mut self) -> &mut Vec<u8> {
        debug_assert!(self.is_empty());
        self.out.clear();
        self.out_pos = 0;
        // A head seldom needs more: one allocation, not a series of doublings.
        self.out.reserve(HEAD_CAPACITY);
        &mut self.out
    }

    /// Whether a head is queued and not one byte of it has been written.
    pub fn head_unsent(&self) -> bool {
        self.out_pos == 0 && !self.out.is_empty()
    }

    /// Drops everything queued.
    pub fn discard(&mut self) {
        self.out.clear();
        self.out_pos = 0;
        self.data = Bytes::new();
        self.suffix = b"";
    }

    /// Bytes written so far; a change means the peer is taking them.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Whether everything queued has been written.
    pub fn is_empty(&self) -> bool {
        self.out_pos == self.out.len() && self.data.is_empty() && self.suffix.is_empty()
    }

    /// Whether nothing but (part of) a head or chunk-size line waits to be written.
    fn can_queue_data(&self) -> bool {
        self.data.is_empty() && self.suffix.is_empty()
    }

    /// Queues one piece of a body, framed, behind what is still unwritten.
    fn queue_data(&mut self, framing: Framing, data: Bytes) {
        if framing == Framing::Chunked {
            if self.out_pos == self.out.len() {
                self.out.clear();
                self.out_pos = 0;
            }
            encode_chunk_size(data.len(), &mut self.out);
            self.suffix = b"\r\n";
        }
        self.data = data;
    }

    /// Queues the end of a chunked body, in the same write as the last chunk if it is
    /// still queued. Called with nothing queued behind the data, or a whole chunk's CRLF.
    fn queue_last_chunk(&mut self) {
        debug_assert!(self.suffix.is_empty() || self.suffix == b"\r\n");
        self.suffix = if self.suffix.is_empty() {
            b"0\r\n\r\n"
        } else {
            b"\r\n0\r\n\r\n"
        };
    }

    /// Gives back a head buffer a large message grew.
    pub fn shrink(&mut self, keep: usize) {
        if self.out.capacity() > keep {
            self.out = Vec::with_capacity(keep.min(HEAD_CAPACITY));
        }
    }

    /// Frees the head buffer of an empty queue: an idle connection keeps none.
    pub fn release(&mut self) {
        if self.is_empty() {
            *self = WriteQueue::default();
        }
    }

    /// Writes what is queued to `io`, in as few system calls as the socket allows.
    pub fn poll_flush<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let head = &self.out[self.out_pos..];
            if head.is_empty() && self.data.is_empty() && self.suffix.is_empty() {
                return Poll::Ready(Ok(()));
            }
            // Empty parts are left out: the kernel walks every iovec it is given.
            let mut slices = [IoSlice::new(&[]); 3];
            let mut count = 0;
            for part in [head, &self.data[..], self.suffix] {
                if !part.is_empty() {
                    slices[count] = IoSlice::new(part);
                    count += 1;
                }
            }
            let written = Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]);
            let mut n = ready!(written)?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n as u64;
            let from_head = n.min(head.len());
            self.out_pos += from_head;
            n -= from_head;
            let from_data = n.min(self.data.len());
            self.data.advance(from_data);
            if self.data.is_empty() {
                // An empty slice still holds its buffer (a peer's whole read buffer).
                self.data = Bytes::new();
            }
            n -= from_data;
            self.suffix = &self.suffix[n.min(self.suffix.len())..];
        }
    }
}

/// First read of a connection's buffer; reads grow up to [`MAX_READ`] while they fill it.
pub const FIRST_READ: usize = 8 * 1024;
/// Largest read: bounds what one connection buffers from a fast peer.
pub const MAX_READ: usize = 64 * 1024;

/// Reads from `io` into `buf`, asking for `read_size` bytes, which doubles (up to
/// [`MAX_READ`]) whenever a read fills the room it had: a fast peer gets fewer, larger
/// reads. `Ok(0)` is the peer closing.
pub fn poll_read_growing<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    read_size: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.is_empty() {
        // An empty buffer without room for the read starts over at its front when
        // nothing else holds it (the heads split off it have been dropped), instead of
        // reading ever further into it or allocating: reads then land on cache lines
        // just used (perf: the kernel's copy into a cold buffer cost about 150 ns more
        // per request). With room, or still shared, nothing changes here.
        let _ = buf.try_reclaim(*read_size);
    }
    if buf.capacity() - buf.len() < *read_size / 2 {
        buf.reserve(*read_size);
    }
    let spare = buf.capacity() - buf.len();
    let n = ready!(tokio_util::io::poll_read_buf(Pin::new(io), cx, buf))?;
    if n == spare && *read_size < MAX_READ {
        *read_size *= 2;
    }
    Poll::Ready(Ok(n))
}

/// Appends a chunk-size line.
pub fn encode_chunk_size(len: usize, out: &mut Vec<u8>) {
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{len:X}\r\n");
}

/// Why a body could not be written.
#[derive(Debug)]
pub enum WriteError<E> {
    /// The body itself failed.
    Body(E),
    /// The body was longer or shorter than its announced Content-Length.
    Length,
    /// The socket failed.
    Io(io::Error),
}

/// A body on its way out, framed as its head announced.
#[derive(Debug)]
pub struct BodyWriter<B> {
    body: Option<B>,
    framing: Framing,
    /// Bytes still to send for a Content-Length body.
    left: u64,
}

impl<B: Body<Data = Bytes> + Unpin> BodyWriter<B> {
    /// Writes `body` with `framing`.
    pub fn new(body: B, framing: Framing) -> Self {
        let left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        let body = (framing != Framing::Empty).then_some(body);
        BodyWriter {
            body,
            framing,
            left,
        }
    }

    /// Sends what `queue` holds and the rest of the body, as fast as the body comes
    /// and the peer takes it. A body frame that is ready goes out in the same write
    /// as what is queued before it (the head, most often). Trailers are dropped:
    /// HTTP/1 peers rarely ask for them.
    pub fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        queue: &mut WriteQueue,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WriteError<B::Error>>> {
        loop {
            let mut waiting = false;
            if queue.can_queue_data()
                && let Some(body) = self.body.as_mut()
            {
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data()
                            && !data.is_empty()
                        {
                            let ended = body.is_end_stream();
                            self.queue(queue, data)?;
                            if ended {
                                self.end(queue)?;
                            }
                        }
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(WriteError::Body(e))),
                    Poll::Ready(None) => self.end(queue)?,
                    Poll::Pending => waiting = true,
                }
            }
            ready!(queue.poll_flush(io, cx)).map_err(WriteError::Io)?;
            if self.body.is_none() {
                return Poll::Ready(Ok(()));
            }
            if waiting {
                return Poll::Pending;
            }
        }
    }

    fn queue(&mut self, queue: &mut WriteQueue, data: Bytes) -> Result<(), WriteError<B::Error>> {
        if let Framing::Length(_) = self.framing {
            let len = data.len() as u64;
            if len > self.left {
                return Err(WriteError::Length);
            }
            self.left -= len;
        }
        queue.queue_data(self.framing, data);
        Ok(())
    }

    fn end(&mut self, queue: &mut WriteQueue) -> Result<(), WriteError<B::Error>> {
        self.body = None;
        match self.framing {
            Framing::Chunked => queue.queue_last_chunk(),
            Framing::Length(_) if self.left != 0 => return Err(WriteError::Length),
            _ => {}
        }
        Ok(())
    }
}
