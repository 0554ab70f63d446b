//! The body of every response ficus sends.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};

use crate::metrics::{BackendMetrics, UpstreamErrorKind};
use crate::server::io::RequestGuard;
use crate::tee::Tee;
use crate::upstream::UpstreamBody;

/// The upstream's body, streamed, or ficus's own small one; it holds the
/// connection's [`RequestGuard`] so the request counts as in flight until the
/// last byte is sent (connection idle timeouts must not cut a streaming response).
///
/// The upstream's body puts its connection back in the pool once it has been
/// read to its end. When the request is shadowed, a [`Tee`] keeps a bounded copy
/// for the comparison as the body streams.
///
/// An upstream body that breaks off after its head was relayed is counted as an
/// upstream protocol error of its route and logged: the request itself was already
/// recorded under the upstream's status.
pub struct ResponseBody {
    inner: Either<UpstreamBody, Full<Bytes>>,
    /// Where a broken upstream body is counted.
    metrics: Option<BackendMetrics>,
    copy: Option<Box<Tee>>,
    _guard: Option<RequestGuard>,
}

impl ResponseBody {
    /// An upstream's streamed body; a failure of it is counted in `metrics`.
    pub fn upstream(body: UpstreamBody, metrics: BackendMetrics) -> Self {
        ResponseBody {
            inner: Either::Left(body),
            metrics: Some(metrics),
            copy: None,
            _guard: None,
        }
    }

    /// A body ficus wrote itself.
    pub fn full(body: Full<Bytes>) -> Self {
        ResponseBody {
            inner: Either::Right(body),
            metrics: None,
            copy: None,
            _guard: None,
        }
    }

    /// Copies the body into `tee` as it streams.
    pub fn with_copy(mut self, tee: Tee) -> Self {
        self.copy = Some(Box::new(tee));
        self
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
        let this = &mut *self;
        let mut polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &mut polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_mut() {
                    // Connection-specific fields make HTTP/2 clients reset the stream.
                    crate::proxy::headers::strip_trailers(trailers);
                }
            }
            Poll::Ready(Some(Err(error))) => {
                if let Some(metrics) = this.metrics.take() {
                    metrics.upstream_error(UpstreamErrorKind::Protocol);
                    let (route, upstream) = metrics.names();
                    tracing::warn!(route, upstream, %error, "upstream body broke off; the client's connection is cut");
                }
            }
            _ => {}
        }
        if let Some(copy) = &mut this.copy {
            let inner = &this.inner;
            copy.follow(&polled, || inner.is_end_stream());
        }
        polled
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
        // the copy is complete. Anything else unread means it is not.
        if let Some(copy) = &mut self.copy
            && self.inner.is_end_stream()
        {
            copy.finish();
        }
    }
}
