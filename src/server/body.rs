//! Request bodies as clients send them: [`ClientBody`] is what [`crate::proxy::handle`]
//! receives, over HTTP/1.1 (ficus's own reader, [`Http1Body`]) or HTTP/2 (hyper's).
//!
//! An HTTP/1.1 body is read straight from the client's socket by whoever polls it: the
//! connection hands its [`Reader`] (the socket's read half and its buffer) to the body,
//! and the body hands it back when it has read its last byte, or when it is dropped
//! before that. Requests without a body, most of them, hand nothing over.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::oneshot;

use crate::http1::codec::{BodyDecoder, Chunked, Decoded};
use crate::http1::wire::{self, FIRST_READ};

/// Why a client's request body could not be read.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A request body from a client.
#[derive(Debug)]
pub enum ClientBody {
    /// No body.
    Empty,
    /// An HTTP/1.1 body, read from the connection.
    Http1(Http1Body),
    /// An HTTP/2 stream's body.
    Http2(Incoming),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ClientBody::Empty => Poll::Ready(None),
            ClientBody::Http1(body) => Pin::new(body).poll_frame(cx),
            ClientBody::Http2(body) => Pin::new(body).poll_frame(cx).map_err(|e| e.into()),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Empty => true,
            ClientBody::Http1(body) => body.is_end_stream(),
            ClientBody::Http2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Empty => SizeHint::with_exact(0),
            ClientBody::Http1(body) => body.size_hint(),
            ClientBody::Http2(body) => body.size_hint(),
        }
    }
}

/// The read side of an HTTP/1.1 client connection: the socket and the bytes read
/// from it and not yet consumed.
#[derive(Debug)]
pub struct Reader {
    io: OwnedReadHalf,
    /// Bytes read and not yet consumed.
    pub buf: BytesMut,
    /// How much the next read asks for.
    read_size: usize,
}

impl Reader {
    /// The read side of `io`, with no buffer yet.
    pub fn new(io: OwnedReadHalf) -> Self {
        Reader {
            io,
            buf: BytesMut::new(),
            read_size: FIRST_READ,
        }
    }

    /// Reads more into the buffer; `Ok(0)` is the client closing (or half-closing).
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        wire::poll_read_growing(&mut self.io, &mut self.buf, &mut self.read_size, cx)
    }

    /// Whether the client has sent bytes (or closed), without reading them and without a
    /// buffer: how an idle connection waits.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.io.as_ref().poll_read_ready(cx)
    }

    /// Frees the buffer if nothing in it is unconsumed: an idle connection keeps none.
    pub fn release(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
            self.read_size = FIRST_READ;
        }
    }
}

/// A [`Reader`] handed back by the body that borrowed it.
#[derive(Debug)]
pub struct Returned {
    pub reader: Reader,
    /// Whether the body was read to its end: only then do the bytes that follow start
    /// the next request.
    pub finished: bool,
}

/// An `Expect: 100-continue` the connection answers when the body is first read: only a
/// request that got as far as its upstream invites the client to send its body. (One
/// refused or failed before then is answered without it, and the client sends nothing.)
#[derive(Debug, Default)]
pub struct Continue {
    wanted: AtomicBool,
}

impl Continue {
    /// Whether the body has asked for the `100 Continue`; true once.
    pub fn take(&self) -> bool {
        // The body sets it from the connection's own task (the handler runs there), and
        // the connection reads it right after polling the handler: no other data rides
        // on it, so relaxed ordering is enough.
        self.wanted.load(Ordering::Relaxed) && self.wanted.swap(false, Ordering::Relaxed)
    }
}

/// An HTTP/1.1 request body, read from the client's connection as it is polled.
#[derive(Debug)]
pub struct Http1Body {
    reader: Option<Reader>,
    remaining: BodyDecoder,
    /// Broke off: every later poll fails too.
    failed: bool,
    back: Option<oneshot::Sender<Returned>>,
    /// Asked for on the first poll, then dropped.
    expect: Option<Arc<Continue>>,
}

impl Http1Body {
    /// A body of `length` bytes (`None`: chunked) read with `reader`, which goes back
    /// through `back` once the body has ended or is dropped. `expect` is raised when the
    /// body is first read.
    pub fn new(
        reader: Reader,
        length: Option<u64>,
        back: oneshot::Sender<Returned>,
        expect: Option<Arc<Continue>>,
    ) -> Self {
        let remaining = match length {
            Some(n) => BodyDecoder::Length(n),
            None => BodyDecoder::Chunked(Chunked::Size),
        };
        Http1Body {
            reader: Some(reader),
            remaining,
            failed: false,
            back: Some(back),
            expect,
        }
    }

    /// Hands the reader back to the connection.
    fn give_back(&mut self, finished: bool) {
        if finished {
            self.remaining = BodyDecoder::Done;
        }
        if let (Some(reader), Some(back)) = (self.reader.take(), self.back.take()) {
            // The connection may be gone already; then so is the reader.
            let _ = back.send(Returned { reader, finished });
        }
    }

    fn fail(&mut self, error: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.give_back(false);
        self.failed = true;
        Poll::Ready(Some(Err(error)))
    }
}

impl Drop for Http1Body {
    fn drop(&mut self) {
        self.give_back(false);
    }
}

impl Body for Http1Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Some(expect) = this.expect.take() {
            expect.wanted.store(true, Ordering::Relaxed);
        }
        loop {
            if this.failed {
                return Poll::Ready(Some(Err("the request body broke off".into())));
            }
            let Some(reader) = this.reader.as_mut() else {
                return Poll::Ready(None);
            };
            let decoded = match this.remaining.decode(&mut reader.buf) {
                Ok(decoded) => decoded,
                Err(e) => return this.fail(e.into()),
            };
            match decoded {
                Decoded::Data(data) => {
                    if this.remaining.is_done() {
                        this.give_back(true);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decoded::Trailers(trailers) => {
                    this.give_back(true);
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Decoded::End => {
                    this.give_back(true);
                    return Poll::Ready(None);
                }
                Decoded::NeedMore => {}
            }
            match ready!(reader.poll_fill(cx)) {
                Ok(0) => {
                    return this.fail(
                        "the client closed the connection in the middle of its request body".into(),
                    );
                }
                Ok(_) => {}
                Err(e) => return this.fail(e.into()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        !self.failed && self.remaining.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining.exact() {
            Some(n) if !self.failed => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}
