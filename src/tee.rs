//! A bounded copy of a body as it streams past.
//!
//! Shadowing needs the request body (to send it again) and the primary's response body
//! (to compare), while both keep streaming to where they were going. A [`Tee`] copies the
//! data frames it is shown, up to a limit, and hands the whole copy over once the stream
//! has ended. Past the limit it stops copying and reports [`Lost::TooLarge`]; a stream that
//! fails or is dropped before its end reports nothing, so a truncated body is never passed
//! on as complete.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

use crate::server::body::{BodyError, ClientBody};

/// Why a tee delivered no copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// The body was longer than the limit.
    TooLarge,
}

/// What the receiving side of a tee gets: the whole body, or why not. A closed channel
/// means the stream failed or was abandoned before its end.
pub type TeeReceiver = oneshot::Receiver<Result<Bytes, Lost>>;

/// Copies the data frames it observes, up to `limit` bytes.
#[derive(Debug)]
pub struct Tee {
    copy: BytesMut,
    limit: usize,
    done: Option<oneshot::Sender<Result<Bytes, Lost>>>,
}

impl Tee {
    /// A tee keeping at most `limit` bytes, and where its copy will arrive.
    pub fn new(limit: usize) -> (Tee, TeeReceiver) {
        let (done, receiver) = oneshot::channel();
        let tee = Tee {
            copy: BytesMut::new(),
            limit,
            done: Some(done),
        };
        (tee, receiver)
    }

    /// Copies `frame`'s data, if still copying.
    pub fn observe(&mut self, frame: &Frame<Bytes>) {
        let Some(data) = frame.data_ref() else {
            return; // trailers are not compared
        };
        if self.done.is_none() {
            return;
        }
        if self.copy.len() + data.len() > self.limit {
            self.copy = BytesMut::new();
            if let Some(done) = self.done.take() {
                let _ = done.send(Err(Lost::TooLarge));
            }
            return;
        }
        self.copy.extend_from_slice(data);
    }

    /// The stream has ended: hands the copy over.
    pub fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(Ok(std::mem::take(&mut self.copy).freeze()));
        }
    }

    /// The stream failed: nothing is handed over.
    pub fn abandon(&mut self) {
        self.done = None;
        self.copy = BytesMut::new();
    }

    /// Whether the receiving side still wants the copy.
    fn wanted(&self) -> bool {
        self.done.as_ref().is_some_and(|d| !d.is_closed())
    }

    /// Follows one poll of the body being copied.
    pub fn follow<E>(
        &mut self,
        polled: &Poll<Option<Result<Frame<Bytes>, E>>>,
        ended: impl FnOnce() -> bool,
    ) {
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if self.wanted() {
                    self.observe(frame);
                } else {
                    self.abandon();
                }
                if ended() {
                    self.finish();
                }
            }
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Err(_))) => self.abandon(),
            Poll::Pending => {}
        }
    }
}

/// A request body on its way to the primary upstream, copied for the shadow.
#[derive(Debug)]
pub struct TeeBody {
    inner: ClientBody,
    tee: Tee,
}

impl TeeBody {
    /// Streams `inner`, copying it into `tee`.
    pub fn new(inner: ClientBody, tee: Tee) -> Self {
        TeeBody { inner, tee }
    }
}

impl Body for TeeBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let inner = &this.inner;
        this.tee.follow(&polled, || inner.is_end_stream());
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(text: &'static str) -> Frame<Bytes> {
        Frame::data(Bytes::from_static(text.as_bytes()))
    }

    #[test]
    fn whole_body_is_handed_over_at_its_end() {
        let (mut tee, mut rx) = Tee::new(10);
        tee.observe(&data("hello "));
        tee.observe(&data("you"));
        assert!(rx.try_recv().is_err(), "nothing before the end");
        tee.finish();
        assert_eq!(rx.try_recv().unwrap(), Ok(Bytes::from_static(b"hello you")));
    }

    #[test]
    fn body_over_the_limit_is_reported_too_large() {
        let (mut tee, mut rx) = Tee::new(8);
        tee.observe(&data("hello "));
        tee.observe(&data("world"));
        tee.finish();
        assert_eq!(rx.try_recv().unwrap(), Err(Lost::TooLarge));
    }

    #[test]
    fn body_exactly_at_the_limit_is_kept() {
        let (mut tee, mut rx) = Tee::new(5);
        tee.observe(&data("hello"));
        tee.finish();
        assert_eq!(rx.try_recv().unwrap(), Ok(Bytes::from_static(b"hello")));
    }

    #[test]
    fn abandoned_or_dropped_stream_hands_over_nothing() {
        let (mut tee, mut rx) = Tee::new(10);
        tee.observe(&data("half"));
        tee.abandon();
        tee.finish();
        assert!(matches!(
            rx.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
        let (tee, mut rx) = Tee::new(10);
        drop(tee);
        assert!(matches!(
            rx.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
    }
}
