//! Upstream connection pools and endpoint balancing.
//!
//! Each endpoint of an upstream keeps a small LIFO stack of idle HTTP/1.1
//! connections. A request takes the most recently used idle connection younger
//! than `pool_idle_timeout`, or opens a new one; the connection goes back to the
//! stack once its response body has been read to the end ([`UpstreamBody`]).
//! A pooled connection the upstream has closed is noticed before use (without
//! a system call, from the socket's readiness) and dropped; one closed just as
//! ficus writes to it is replaced by a fresh one for requests safe to repeat.
//!
//! ficus speaks HTTP/1.1 to upstreams itself ([`crate::http1`], [`conn`]): each
//! connection is driven by the task of the request using it, with no connection
//! task and no channels. hyper's client spent about a third of all instructions
//! per proxied request on that machinery.
//!
//! This replaces hyper-util's general-purpose pool, which hashed the
//! scheme and authority with SipHash and took a lock in a shared map on every
//! checkout and return: about 15% of all instructions per proxied request.
//!
//! A reload that leaves an upstream's settings unchanged reuses its
//! [`Upstream`] (and so its warm connections); a changed one gets fresh pools,
//! and the old ones are dropped when the last request holding them ends.

mod conn;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use http::header::{HOST, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};

use crate::config::{Endpoint, UpstreamSpec};
use crate::http1::codec;
use crate::http1::wire::Framing;
use crate::message::{Head, Reply};
use crate::server::body::{BodyError, ClientBody};
use crate::tee::TeeBody;
pub use codec::Field;
pub use codec::ProtocolError;
use codec::ResponseHead;
pub use conn::UpstreamBody;
use conn::{Connection, RequestWriter};

/// The body of a request sent upstream.
#[derive(Debug)]
pub enum RequestBody {
    /// The client's body, streamed.
    Stream(ClientBody),
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
    type Error = BodyError;

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
    /// The upstream's answer broke HTTP/1.1.
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    /// The connection failed while the request or response was on it.
    #[error("connection failed: {0}")]
    Io(#[source] std::io::Error),
    /// The upstream closed the connection without answering.
    #[error("upstream closed the connection before answering")]
    Closed,
    /// The upstream closed the connection in the middle of its answer.
    #[error("upstream closed the connection in the middle of its answer")]
    Truncated,
    /// The client's request body failed (it went away, or broke its framing).
    #[error("client request body failed: {0}")]
    ClientBody(#[source] BodyError),
    /// A body in memory did not match its declared Content-Length.
    #[error("request body length does not match its content-length")]
    BodyLength,
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
                    sweeping: AtomicBool::new(false),
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

    /// Sends `head` (origin-form target) and `body` to the next endpoint and returns the
    /// response head; the body streams from the connection, which goes back to the pool
    /// once the body has been read to its end. `head` gets the Host (when it has none)
    /// and framing fields it was sent with. `now` is a recent reading of the clock (when
    /// the request started), for the pool's idle check.
    pub async fn send(
        &self,
        head: &mut Head,
        body: RequestBody,
        fields: &[Field<'_>],
        now: Instant,
    ) -> Result<Reply<UpstreamBody>, SendError> {
        let pool = self.pool();
        if !head.fields.contains(HOST.as_str()) {
            // Only HTTP/1.0 clients get here (ficus rejects HTTP/1.1 without Host).
            if let Ok(host) = HeaderValue::from_str(pool.endpoint.authority.as_str()) {
                head.fields.append(HOST, host);
            }
        }
        let (framing, extra) = codec::request_framing(
            &mut head.fields,
            body.is_end_stream(),
            body.size_hint().exact(),
        )
        .map_err(|_| SendError::BodyLength)?;
        // A request whose body is not streamed can be sent again on a fresh connection
        // when a pooled one turns out to have been closed by the upstream.
        let replay = match &body {
            _ if !is_idempotent(&head.method) => None,
            RequestBody::Full(bytes) => Some(RequestBody::Full(bytes.clone())),
            _ if framing == Framing::Empty => Some(RequestBody::Full(None)),
            _ => None,
        };
        let mut writer = Some(RequestWriter::new(body, framing));
        let mut conn = match pool.checkout(now) {
            Some(conn) => conn,
            // Boxed, like the retry below: rare paths should not grow every request's future.
            None => Box::pin(pool.connect()).await?,
        };
        let exchanged = conn::exchange(&mut conn, head, extra.as_ref(), fields, &mut writer).await;
        let mut answer = match (exchanged, replay) {
            (Err(e), Some(replay)) if conn.reused && !conn.received && is_closed_under_us(&e) => {
                // The upstream closed its idle connection as ficus reused it: not a byte
                // was answered, and the request is safe to send again.
                tracing::info!(
                    endpoint = %pool.endpoint.authority,
                    error = %e,
                    "a reused upstream connection closed before answering; sending the request again"
                );
                writer = Some(RequestWriter::new(replay, framing));
                let (fresh, answer) =
                    Box::pin(resend(pool, head, extra.as_ref(), fields, &mut writer)).await?;
                conn = fresh;
                answer
            }
            (result, _) => result?,
        };
        let body = UpstreamBody::new(conn, writer, &head.method, &mut answer, pool)?;
        Ok(conn::response(answer, body))
    }
}

/// Sends a request again, on a new connection.
async fn resend(
    pool: &EndpointPool,
    head: &Head,
    extra: Option<&(HeaderName, HeaderValue)>,
    fields: &[Field<'_>],
    writer: &mut Option<RequestWriter>,
) -> Result<(Box<Connection>, ResponseHead), SendError> {
    let mut conn = pool.connect().await?;
    let answer = conn::exchange(&mut conn, head, extra, fields, writer).await?;
    Ok((conn, answer))
}

/// Closes a pool's expired idle connections every `every` while the pool lives. Nobody
/// reads an idle connection, so one the upstream closed would otherwise wait in
/// CLOSE_WAIT for the next request to that endpoint.
async fn sweep(pool: Weak<EndpointPool>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        pool.drop_expired(Instant::now());
    }
}

/// Whether `error` is the connection closing under a request (not a broken answer).
fn is_closed_under_us(error: &SendError) -> bool {
    match error {
        SendError::Closed => true,
        SendError::Io(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::ConnectionAborted
        ),
        _ => false,
    }
}

/// Methods RFC 9110 §9.2.2 lets a client repeat without changing the outcome.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
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
pub struct EndpointPool {
    endpoint: Endpoint,
    connect_to: String,
    /// Most recently returned last. A plain mutex: held for a push or a pop.
    idle: Mutex<Vec<Idle>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    /// Whether the task closing expired idle connections runs (started by the first checkin).
    sweeping: AtomicBool,
}

struct Idle {
    conn: Box<Connection>,
    since: Instant,
}

impl EndpointPool {
    /// The most recently used idle connection that is still open and younger than
    /// the idle timeout at `now`. Closed ones are dropped on the way; once one is too
    /// old, so are all below it.
    fn checkout(&self, now: Instant) -> Option<Box<Connection>> {
        loop {
            let idle = self.idle.lock().ok()?.pop()?;
            if now.saturating_duration_since(idle.since) >= self.idle_timeout {
                // Those below it are older still.
                self.drop_expired(now);
                return None;
            }
            let conn = idle.conn;
            if conn.is_open() {
                return Some(conn);
            }
        }
    }

    fn checkin(self: &Arc<Self>, conn: Box<Connection>) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.max_idle
        {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
        if !self.sweeping.swap(true, Ordering::Relaxed)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(sweep(Arc::downgrade(self), self.idle_timeout));
        }
    }

    /// Closes the idle connections older than the idle timeout (not the fresh ones
    /// other tasks returned meanwhile).
    fn drop_expired(&self, now: Instant) {
        let expired: Vec<Idle> = match self.idle.lock() {
            Ok(mut all) => {
                let count = all.partition_point(|i| {
                    now.saturating_duration_since(i.since) >= self.idle_timeout
                });
                all.drain(..count).collect()
            }
            Err(_) => Vec::new(),
        };
        // Closed here, outside the lock.
        drop(expired);
    }

    async fn connect(&self) -> Result<Box<Connection>, SendError> {
        Connection::open(&self.connect_to, self.connect_timeout).await
    }
}
