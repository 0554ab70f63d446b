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
/// Most bytes a head or chunk-size line and the body bytes behind it may total for the
/// body bytes to be copied in behind the head ([`WriteQueue::gather`]). The copy is
/// bounded by this; the writev(2) it saves costs 0.25-0.5 µs more than send(2) here.
const GATHER_LIMIT: usize = 4 * 1024;

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

    /// Copies small body bytes and their closing bytes in behind the head, so that a
    /// small message leaves in one plain write. Larger bodies are not copied.
    fn gather(&mut self) {
        let queued = self.out.len() - self.out_pos + self.data.len() + self.suffix.len();
        if self.data.is_empty() || self.out_pos == self.out.len() || queued > GATHER_LIMIT {
            return;
        }
        self.out.extend_from_slice(&self.data);
        self.out.extend_from_slice(self.suffix);
        self.data = Bytes::new();
        self.suffix = b"";
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
        self.gather();
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
            // One part goes by a plain write: on a socket, send(2) costs 0.25-0.5 µs
            // less in the kernel than writev(2), whatever the number of iovecs.
            let written = match count {
                1 => Pin::new(&mut *io).poll_write(cx, &slices[0]),
                _ => Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]),
            };
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;

    use http_body::Frame;

    use super::*;

    /// A socket that records each write and takes at most `per_write` bytes of it.
    struct Recorder {
        per_write: usize,
        /// Whether each write was vectored, and the bytes it took.
        writes: Vec<(bool, Vec<u8>)>,
    }

    impl Recorder {
        fn new(per_write: usize) -> Self {
            Recorder {
                per_write,
                writes: Vec::new(),
            }
        }

        fn take(&mut self, vectored: bool, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
            let mut took = Vec::new();
            for buf in bufs {
                let room = self.per_write - took.len();
                took.extend_from_slice(&buf[..buf.len().min(room)]);
            }
            let n = took.len();
            self.writes.push((vectored, took));
            Poll::Ready(Ok(n))
        }

        fn bytes(&self) -> Vec<u8> {
            self.writes.iter().flat_map(|(_, b)| b.clone()).collect()
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.get_mut().take(false, &[IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.get_mut().take(true, bufs)
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A body whose frames are all ready.
    struct Frames(VecDeque<Bytes>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(|data| Ok(Frame::data(data))))
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    /// Writes `head` and then `frames` framed as `framing` to `socket`.
    async fn write(socket: &mut Recorder, head: &[u8], frames: &[&[u8]], framing: Framing) {
        let mut queue = WriteQueue::default();
        queue.head().extend_from_slice(head);
        let body = Frames(frames.iter().map(|f| Bytes::copy_from_slice(f)).collect());
        let mut writer = BodyWriter::new(body, framing);
        std::future::poll_fn(|cx| writer.poll_write(&mut queue, socket, cx))
            .await
            .expect("the body is written");
        assert!(queue.is_empty());
    }

    #[tokio::test]
    async fn a_small_message_leaves_in_one_plain_write() {
        let mut socket = Recorder::new(usize::MAX);
        write(
            &mut socket,
            b"HEAD\r\n\r\n",
            &[b"hello"],
            Framing::Length(5),
        )
        .await;
        assert_eq!(socket.writes, [(false, b"HEAD\r\n\r\nhello".to_vec())]);
    }

    #[tokio::test]
    async fn a_large_body_is_not_copied_behind_its_head() {
        let mut socket = Recorder::new(usize::MAX);
        let body = vec![b'x'; GATHER_LIMIT];
        let length = Framing::Length(body.len() as u64);
        write(&mut socket, b"HEAD\r\n\r\n", &[&body], length).await;
        let mut expected = b"HEAD\r\n\r\n".to_vec();
        expected.extend_from_slice(&body);
        assert_eq!(socket.writes, [(true, expected)]);
    }

    #[tokio::test]
    async fn chunks_keep_their_order_through_short_writes() {
        let frames: [&[u8]; 4] = [b"first", b"second chunk", &[b'y'; 5000], b"end"];
        let mut expected = b"HEAD\r\n\r\n".to_vec();
        for frame in frames {
            encode_chunk_size(frame.len(), &mut expected);
            expected.extend_from_slice(frame);
            expected.extend_from_slice(b"\r\n");
        }
        expected.extend_from_slice(b"0\r\n\r\n");
        for per_write in [1, 3, 7, 64, 4096, usize::MAX] {
            let mut socket = Recorder::new(per_write);
            write(&mut socket, b"HEAD\r\n\r\n", &frames, Framing::Chunked).await;
            assert_eq!(socket.bytes(), expected, "{per_write} bytes per write");
        }
        // Unhindered, the head and first chunk go in one plain write, and the large
        // chunk by itself, vectored.
        let mut socket = Recorder::new(usize::MAX);
        write(&mut socket, b"HEAD\r\n\r\n", &frames, Framing::Chunked).await;
        let vectored: Vec<bool> = socket.writes.iter().map(|(v, _)| *v).collect();
        assert_eq!(vectored, [false, false, true, false], "{:?}", socket.writes);
    }
}
