//! The body of every response ficus sends.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::server::io::RequestGuard;

/// The upstream's body, streamed, or ficus's own small one; it holds the
/// connection's [`RequestGuard`] so the request counts as in flight until the
/// last byte is sent (connection idle timeouts must not cut a streaming response).
pub struct ResponseBody {
    inner: Either<Incoming, Full<Bytes>>,
    _guard: Option<RequestGuard>,
}

impl ResponseBody {
    /// An upstream's streamed body.
    pub fn upstream(body: Incoming) -> Self {
        ResponseBody {
            inner: Either::Left(body),
            _guard: None,
        }
    }

    /// A body ficus wrote itself.
    pub fn full(body: Full<Bytes>) -> Self {
        ResponseBody {
            inner: Either::Right(body),
            _guard: None,
        }
    }

    /// Keeps `guard` alive until the body is finished or dropped.
    pub fn with_guard(mut self, guard: RequestGuard) -> Self {
        self._guard = Some(guard);
        self
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
