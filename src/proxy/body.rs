//! The body of every response ficus sends.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::server::io::RequestGuard;
use crate::upstream::PoolReturn;

/// The upstream's body, streamed, or ficus's own small one; it holds the
/// connection's [`RequestGuard`] so the request counts as in flight until the
/// last byte is sent (connection idle timeouts must not cut a streaming response).
///
/// It also carries the upstream connection's [`PoolReturn`]: once the body has
/// been read to its end, the connection goes back to its pool.
pub struct ResponseBody {
    inner: Either<Incoming, Full<Bytes>>,
    release: Option<PoolReturn>,
    _guard: Option<RequestGuard>,
}

impl ResponseBody {
    /// An upstream's streamed body, and the way back to the pool for its connection.
    pub fn upstream(body: Incoming, release: PoolReturn) -> Self {
        ResponseBody {
            inner: Either::Left(body),
            release: Some(release),
            _guard: None,
        }
    }

    /// A body ficus wrote itself.
    pub fn full(body: Full<Bytes>) -> Self {
        ResponseBody {
            inner: Either::Right(body),
            release: None,
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

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // hyper does not poll a body that is already at its end (HEAD, 204, 304, empty):
        // the connection is still reusable. Anything else unread means it is not.
        if let Some(release) = self.release.take()
            && self.inner.is_end_stream()
        {
            release.finish();
        }
    }
}
