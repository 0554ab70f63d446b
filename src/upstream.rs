//! Upstream connection pools and endpoint balancing.
//!
//! Each endpoint of an upstream keeps a small LIFO stack of idle HTTP/1.1
//! connections (hyper's low-level client). A request takes the most recently
//! used idle connection younger than `pool_idle_timeout`, or opens a new one;
//! the connection goes back to the stack once its response body has been read
//! to the end ([`PoolReturn`]). A pooled connection that turns out to be closed
//! before the request was written is replaced by a fresh one, transparently.
//!
//! This replaces hyper-util's general-purpose pool, which hashed the
//! scheme and authority with SipHash and took a lock in a shared map on every
//! checkout and return: about 15% of all instructions per proxied request.
//!
//! A reload that leaves an upstream's settings unchanged reuses its
//! [`Upstream`] (and so its warm connections); a changed one gets fresh pools,
//! and the old ones are dropped when the last request holding them ends.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HOST, HeaderValue};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::{Endpoint, UpstreamSpec};
use crate::tee::TeeBody;

/// The body of a request sent upstream.
#[derive(Debug)]
pub enum RequestBody {
    /// The client's body, streamed.
    Stream(Incoming),
    /// The client's body, streamed and copied for a shadow.
    Tee(Box<TeeBody>),
    /// A body already in memory (a shadow's copy).
    Full(Option<Bytes>),
}

impl RequestBody {
    /// A body held in memory.
    pub fn full(bytes: Bytes) -> Self {
        RequestBody::Full((!bytes.is_empty()).then_some(bytes))
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            RequestBody::Stream(body) => Pin::new(body).poll_frame(cx),
            RequestBody::Tee(body) => Pin::new(body.as_mut()).poll_frame(cx),
            RequestBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Stream(body) => body.is_end_stream(),
            RequestBody::Tee(body) => body.is_end_stream(),
            RequestBody::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Stream(body) => body.size_hint(),
            RequestBody::Tee(body) => body.size_hint(),
            RequestBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// Why a request could not be exchanged with an upstream.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The TCP connection was not established within the connect timeout.
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// The TCP connection failed (refused, unreachable, reset).
    #[error("connect failed: {0}")]
    Connect(#[source] std::io::Error),
    /// The HTTP exchange failed (the cause says whose side).
    #[error("{0}")]
    Http(#[source] hyper::Error),
}

/// A live upstream: its settings, its pools and its balancing state.
pub struct Upstream {
    /// The settings it was built from.
    pub spec: UpstreamSpec,
    endpoints: Vec<Arc<EndpointPool>>,
    next: AtomicUsize,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// Builds the (empty) pools for an upstream. Needs no runtime until the first request.
    pub fn new(spec: UpstreamSpec) -> Self {
        let endpoints = spec
            .endpoints
            .iter()
            .map(|endpoint| {
                Arc::new(EndpointPool {
                    endpoint: endpoint.clone(),
                    connect_to: connect_address(endpoint),
                    idle: Mutex::new(Vec::new()),
                    connect_timeout: spec.connect_timeout,
                    idle_timeout: spec.pool_idle_timeout,
                    max_idle: spec.pool_max_idle,
                })
            })
            .collect();
        Upstream {
            spec,
            endpoints,
            next: AtomicUsize::new(0),
        }
    }

    fn pool(&self) -> &Arc<EndpointPool> {
        // Relaxed: the counter only spreads load; no other memory depends on it.
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // Invariant: validation rejects an upstream without endpoints.
        &self.endpoints[n % self.endpoints.len()]
    }

    /// Sends `request` (origin-form target, Host set) to the next endpoint.
    /// The returned [`PoolReturn`] must travel with the response body.
    pub async fn send(
        &self,
        mut request: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, PoolReturn), SendError> {
        let pool = self.pool();
        if !request.headers().contains_key(HOST) {
            // Only HTTP/1.0 clients get here (ficus rejects HTTP/1.1 without Host).
            if let Ok(host) = HeaderValue::from_str(pool.endpoint.authority.as_str()) {
                request.headers_mut().insert(HOST, host);
            }
        }
        if let Some(mut sender) = pool.checkout() {
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, PoolReturn::new(sender, pool))),
                Err(mut error) => match error.take_message() {
                    // The pooled connection closed before the request was written (the
                    // upstream's keep-alive ran out): nothing was sent, so a new
                    // connection may carry it, whatever the method.
                    Some(unsent) => request = unsent,
                    None => return Err(SendError::Http(error.into_error())),
                },
            }
        }
        let mut sender = pool.connect().await?;
        let response = sender
            .send_request(request)
            .await
            .map_err(SendError::Http)?;
        Ok((response, PoolReturn::new(sender, pool)))
    }
}

/// `host:port` to connect to; HTTP's default port when the endpoint names none.
fn connect_address(endpoint: &Endpoint) -> String {
    let authority = &endpoint.authority;
    match authority.port_u16() {
        Some(_) => authority.as_str().to_owned(),
        None => format!("{}:80", authority.host()),
    }
}

/// The idle connections of one endpoint.
struct EndpointPool {
    endpoint: Endpoint,
    connect_to: String,
    /// Most recently returned last. A plain mutex: held for a push or a few pops.
    idle: Mutex<Vec<Idle>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
}

struct Idle {
    sender: SendRequest<RequestBody>,
    since: Instant,
}

impl EndpointPool {
    /// The most recently used idle connection that is still open and younger than
    /// the idle timeout. Older ones are dropped (closed) on the way.
    fn checkout(&self) -> Option<SendRequest<RequestBody>> {
        let now = Instant::now();
        let mut idle = self.idle.lock().ok()?;
        while let Some(conn) = idle.pop() {
            if now.saturating_duration_since(conn.since) < self.idle_timeout
                && conn.sender.is_ready()
            {
                return Some(conn.sender);
            }
        }
        None
    }

    fn checkin(&self, sender: SendRequest<RequestBody>) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.max_idle
        {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self) -> Result<SendRequest<RequestBody>, SendError> {
        let stream =
            tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.connect_to))
                .await
                .map_err(|_| SendError::ConnectTimeout(self.connect_timeout))?
                .map_err(SendError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Http)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// Puts a connection back in its pool once the response on it has been read.
pub struct PoolReturn {
    sender: SendRequest<RequestBody>,
    pool: Arc<EndpointPool>,
}

impl PoolReturn {
    fn new(sender: SendRequest<RequestBody>, pool: &Arc<EndpointPool>) -> Self {
        PoolReturn {
            sender,
            pool: pool.clone(),
        }
    }

    /// The response body has been read to its end: the connection is reusable as
    /// soon as hyper marks it ready, which may take one more turn of its task.
    pub fn finish(self) {
        let PoolReturn { mut sender, pool } = self;
        if sender.is_ready() {
            pool.checkin(sender);
        } else if !sender.is_closed()
            // Called from a body's Drop too, which may run while a runtime shuts down:
            // then the connection is simply closed instead of waited for.
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                if sender.ready().await.is_ok() {
                    pool.checkin(sender);
                }
            });
        }
    }
}
