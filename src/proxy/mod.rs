//! The data path: one request in, one response out.
//!
//! [`handle`] is the single outer handler: it loads the current snapshot once,
//! routes, forwards, and turns every error into a response; it records the
//! request's metrics and writes its access log exactly once.

pub mod body;
pub mod error;
pub mod headers;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HOST, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Method, StatusCode, Version};
use tokio::time::Sleep;

use crate::message::{Call, Head, Reply, RequestId};
use crate::metrics::{BackendMetrics, Metrics, NO_UPSTREAM, UpstreamErrorKind};
use crate::routing::path;
use crate::server::body::ClientBody;
use crate::shadow::ShadowRegistry;
use crate::snapshot::{DEFAULT_ROUTE, Decision, Snapshot};
use crate::upstream::{RequestBody, UpstreamBody};
pub use body::ResponseBody;
use error::ProxyError;
use headers::{Forwarding, X_REQUEST_ID};

/// Longest request target (path and query) ficus accepts.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// What the data path shares: the current table and the metrics.
pub struct ProxyState {
    /// The current generation. Only the reloader stores into it.
    pub snapshot: ArcSwap<Snapshot>,
    /// Metric families.
    pub metrics: Metrics,
    /// Shadow state that outlives generations: learned noise, mismatches, limits.
    pub shadows: ShadowRegistry,
    /// Handles for requests rejected before routing.
    unrouted: BackendMetrics,
}

impl ProxyState {
    /// State serving `snapshot` (built with `shadows`).
    pub fn new(snapshot: Snapshot, metrics: Metrics, shadows: ShadowRegistry) -> Self {
        let unrouted = metrics.backend(DEFAULT_ROUTE, NO_UPSTREAM);
        metrics.set_generation(snapshot.generation);
        ProxyState {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            shadows,
            unrouted,
        }
    }
}

/// Per-connection facts, computed once when the connection is accepted.
#[derive(Debug)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    /// The client's IP as a header value, for `X-Forwarded-For`.
    pub forwarded_for: HeaderValue,
    /// A route-timeout timer kept for the connection's next request: registering a
    /// new timer per request cost 4% of all instructions per request under callgrind,
    /// and resetting one 1.7%. So it is reset lazily ([`RouteDeadline`]): a timer due
    /// no later than the new deadline is kept, and re-armed only if it fires early.
    /// Concurrent HTTP/2 streams that find it taken get a fresh timer.
    timer: Mutex<Option<Pin<Box<Sleep>>>>,
}

impl Peer {
    /// Facts about the client at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Peer {
            addr,
            forwarded_for: headers::ip_header_value(addr.ip()),
            timer: Mutex::new(None),
        }
    }

    /// A timer firing no later than `deadline`: the connection's own when it is free.
    fn route_timer(&self, deadline: tokio::time::Instant) -> Pin<Box<Sleep>> {
        match self.timer.lock().ok().and_then(|mut slot| slot.take()) {
            Some(mut timer) => {
                if timer.deadline() > deadline {
                    timer.as_mut().reset(deadline);
                }
                timer
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    /// Keeps `timer` for the connection's next request.
    fn keep_timer(&self, timer: Pin<Box<Sleep>>) {
        if let Ok(mut slot) = self.timer.lock() {
            *slot = Some(timer);
        }
    }
}

impl ProxyState {
    /// Counts a request the server refused before it could be routed (a malformed or
    /// oversized head), with the status it was answered.
    pub fn refused(&self, status: StatusCode) {
        self.unrouted.record(status, 0.0);
    }
}

/// Resolves at `at`, with a timer that may be due earlier ([`Peer::route_timer`]): a
/// timer that fires early is re-armed for `at`.
struct RouteDeadline<'t> {
    timer: &'t mut Pin<Box<Sleep>>,
    at: tokio::time::Instant,
}

impl Future for RouteDeadline<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            std::task::ready!(self.timer.as_mut().poll(cx));
            if tokio::time::Instant::now() >= self.at {
                return Poll::Ready(());
            }
            let at = self.at;
            self.timer.as_mut().reset(at);
        }
    }
}

/// A request that passed validation, with where it goes.
struct Routed<'s> {
    decision: Decision<'s>,
    /// The normalized path and the original query: what the upstream receives.
    target: PathAndQuery,
    /// The Host the client meant, validated.
    host: Option<Bytes>,
    /// Whether the request's Host field must be set to `host` (it came from the target).
    set_host: bool,
}

/// Serves one request. Never fails: every error becomes a response.
pub async fn handle(
    state: &ProxyState,
    request: Call<ClientBody>,
    peer: &Peer,
) -> Reply<ResponseBody> {
    let start = Instant::now();
    // One load per request: the whole request is served by this generation.
    let snapshot = state.snapshot.load_full();
    // The head stays here; what it is handed to borrows it. Moving it into each step
    // cost a few hundred instructions of copying per request.
    let Call { mut head, body } = request;
    let request_id = headers::request_id(&head.fields);

    let (decision, result) = match route(&snapshot, &head) {
        Ok(Routed {
            decision,
            target,
            host,
            set_host,
        }) => {
            let forwarding = rewrite(&mut head, peer, target, (host, set_host), &request_id);
            let body = RequestBody::Stream(body);
            let (body, mirror) = match decision.shadow {
                Some(shadow) => shadow.begin(&head, body, &forwarding, decision.side),
                None => (body, None),
            };
            let result = {
                let mut waiting = Waiting {
                    head: &mut head,
                    decision: &decision,
                    start,
                    request_id: &request_id,
                    generation: snapshot.generation,
                    answered: false,
                };
                let result =
                    exchange(&decision, waiting.head, body, &forwarding, peer, start).await;
                waiting.answered = true;
                result
            };
            let result = match (result, mirror) {
                (Ok(response), Some(mirror)) => {
                    let copy = mirror.answered(&response, start.elapsed());
                    Ok((response, Some(copy)))
                }
                // A failed primary drops its mirror: the shadow is cancelled, not compared.
                (result, _) => result.map(|response| (response, None)),
            };
            (Some(decision), result)
        }
        Err(e) => (None, Err(e)),
    };
    let method = &head.method;
    // The target as forwarded (normalized), or as received when it was refused.
    let path = head.uri.path_and_query().map_or("", |p| p.as_str());
    let elapsed = start.elapsed();
    let (route, upstream, metrics) = match &decision {
        Some(d) => (
            d.route,
            d.backend.upstream.spec.name.as_str(),
            &d.backend.metrics,
        ),
        None => (DEFAULT_ROUTE, NO_UPSTREAM, &state.unrouted),
    };
    let mut response = match result {
        Ok((response, copy)) => response.map(|body| {
            let body = ResponseBody::upstream(body, metrics.clone());
            match copy {
                Some(copy) => body.with_copy(copy),
                None => body,
            }
        }),
        Err(error) => {
            match &error {
                ProxyError::Upstream { kind, cause } => {
                    metrics.upstream_error(*kind);
                    tracing::warn!(route, upstream, %method, path, kind = kind.as_str(), %cause, request_id = ?request_id, "upstream request failed");
                }
                ProxyError::ClientAborted { cause } => {
                    tracing::info!(route, upstream, %method, path, %cause, request_id = ?request_id, "client aborted its request body");
                }
                _ => {}
            }
            error.to_reply(&request_id).map(ResponseBody::full)
        }
    };
    // An upstream's own id would contradict the one ficus logged.
    response.fields.remove(X_REQUEST_ID.as_str());
    response.request_id = Some(request_id.clone());
    let status = response.status;
    metrics.record(status, elapsed.as_secs_f64());
    access_log(
        (route, upstream, method, path),
        status,
        elapsed,
        &request_id,
        snapshot.generation,
    );
    response
}

/// The status a request is counted and logged with when it is dropped before its
/// answer: its client went away (closed its connection, reset its HTTP/2 stream), or
/// the drain timeout closed its connection at shutdown. nginx's 499.
const CLIENT_CLOSED: u16 = 499;

/// A request waiting for its upstream's answer. Should it be dropped still waiting, it is
/// counted and logged with [`CLIENT_CLOSED`] and the time it had waited: dashboards keep
/// the requests that clients gave up on, which are the slow ones.
struct Waiting<'a> {
    head: &'a mut Head,
    decision: &'a Decision<'a>,
    start: Instant,
    request_id: &'a RequestId,
    generation: u64,
    answered: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.cancelled();
        }
    }
}

impl Waiting<'_> {
    #[cold]
    fn cancelled(&self) {
        // 499 is within the 100-999 that `StatusCode` holds.
        let Ok(status) = StatusCode::from_u16(CLIENT_CLOSED) else {
            return;
        };
        let elapsed = self.start.elapsed();
        let backend = self.decision.backend;
        backend.metrics.record(status, elapsed.as_secs_f64());
        let path = self.head.uri.path_and_query().map_or("", |p| p.as_str());
        access_log(
            (
                self.decision.route,
                backend.upstream.spec.name.as_str(),
                &self.head.method,
                path,
            ),
            status,
            elapsed,
            self.request_id,
            self.generation,
        );
    }
}

/// Writes a request's access log event (target `ficus::access`, at info).
fn access_log(
    (route, upstream, method, path): (&str, &str, &Method, &str),
    status: StatusCode,
    elapsed: std::time::Duration,
    request_id: &RequestId,
    generation: u64,
) {
    tracing::info!(
        target: "ficus::access",
        route,
        upstream,
        %method,
        path,
        status = status.as_u16(),
        duration_ms = elapsed.as_secs_f64() * 1e3,
        %request_id,
        generation,
    );
}

/// Validates the target and Host, normalizes the path and picks the backend.
fn route<'s>(snapshot: &'s Snapshot, request: &Head) -> Result<Routed<'s>, ProxyError> {
    if request.method == Method::CONNECT {
        return Err(ProxyError::BadTarget);
    }
    let uri = &request.uri;
    // `*` (OPTIONS *) and authority-form targets are not paths: nothing to route.
    if !uri.path().starts_with('/') {
        return Err(ProxyError::BadTarget);
    }
    if uri
        .path_and_query()
        .is_some_and(|pq| pq.as_str().len() > MAX_URI_BYTES)
    {
        return Err(ProxyError::UriTooLong);
    }
    let (host, set_host) = client_host(request)?;
    let normalized = path::normalize(uri.path())?;
    let id = snapshot.table.router.route(&request.method, &normalized);
    let target = match normalized {
        // The common case: the path was canonical, so the parsed target is reused as is.
        Cow::Borrowed(_) => uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
        Cow::Owned(path) => {
            let mut text = path;
            if let Some(query) = uri.query() {
                text.push('?');
                text.push_str(query);
            }
            PathAndQuery::from_maybe_shared(Bytes::from(text)).map_err(|_| ProxyError::BadTarget)?
        }
    };
    let decision = snapshot.decide(id, &request.fields);
    Ok(Routed {
        decision,
        target,
        host,
        set_host,
    })
}

/// The Host the client meant: the authority for HTTP/2 and absolute-form targets,
/// else its single, well-formed Host header (RFC 9112 §3.2).
/// Also says whether the Host field must be set to it (it came from the target).
/// A valid Host is a valid header value too.
fn client_host(request: &Head) -> Result<(Option<Bytes>, bool), ProxyError> {
    let mut hosts = request.fields.get_all(HOST.as_str());
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadHost);
    }
    if let Some(authority) = request.uri.authority() {
        let value = authority.as_str().as_bytes();
        return if headers::is_valid_host(value) {
            let set = host != Some(value);
            Ok((Some(Bytes::copy_from_slice(value)), set))
        } else {
            Err(ProxyError::BadHost)
        };
    }
    match host {
        Some(host) if headers::is_valid_host(host) => {
            Ok((request.fields.shared(HOST.as_str()), false))
        }
        Some(_) => Err(ProxyError::BadHost),
        None if request.version == Version::HTTP_11 => Err(ProxyError::BadHost),
        None => Ok((None, false)),
    }
}

/// Rewrites the client's request for the upstream: origin-form target, HTTP/1.1,
/// hop-by-hop headers stripped; returns the forwarding headers to send with it.
fn rewrite(
    head: &mut Head,
    peer: &Peer,
    target: PathAndQuery,
    (host, set_host): (Option<Bytes>, bool),
    request_id: &RequestId,
) -> Forwarding {
    // The upstream client writes the target as given: origin-form.
    head.uri = Uri::from(target);
    // Upstreams are spoken to over HTTP/1.1, whatever the client spoke.
    head.version = Version::HTTP_11;
    // Transfer-Encoding goes too: the upstream client frames a body of unknown length
    // (chunked, or HTTP/2 DATA without content-length) as chunked itself.
    headers::strip_request(&mut head.fields);
    // Without one (an HTTP/1.0 client), the pool sets the endpoint's authority.
    // Checked by `client_host`: a valid Host is a valid header value.
    if let Some(host) = host.as_ref().filter(|_| set_host)
        && let Ok(host) = HeaderValue::from_maybe_shared(host.clone())
    {
        head.fields.insert(HOST, host);
    }
    Forwarding::take(
        &mut head.fields,
        &peer.forwarded_for,
        host,
        request_id.clone(),
    )
}

/// Sends the request to the decision's upstream, within the route's timeout of the
/// request's `start`.
async fn exchange(
    decision: &Decision<'_>,
    head: &mut Head,
    body: RequestBody,
    forwarding: &Forwarding,
    peer: &Peer,
    start: Instant,
) -> Result<Reply<UpstreamBody>, ProxyError> {
    let upstream = &decision.backend.upstream;
    let (fields, n) = forwarding.fields();
    let at = tokio::time::Instant::from_std(start) + decision.timeout;
    let mut timer = peer.route_timer(at);
    let sent = tokio::select! {
        biased;
        exchanged = upstream.send(head, body, &fields[..n], start) => Some(exchanged),
        () = RouteDeadline { timer: &mut timer, at } => None,
    };
    peer.keep_timer(timer);
    let mut response = match sent {
        Some(Ok(exchanged)) => exchanged,
        Some(Err(e)) => return Err(error::from_send_error(&e)),
        None => {
            return Err(ProxyError::Upstream {
                kind: UpstreamErrorKind::Timeout,
                cause: format!("no response headers within {:?}", decision.timeout),
            });
        }
    };
    if response.status == StatusCode::SWITCHING_PROTOCOLS {
        // ficus strips Upgrade, so a 101 was never asked for: never open a tunnel on it.
        return Err(ProxyError::Upstream {
            kind: UpstreamErrorKind::Protocol,
            cause: "unsolicited 101 Switching Protocols".into(),
        });
    }
    headers::strip_hop_by_hop(&mut response.fields);
    Ok(response)
}

/// Cheap handle to the proxy's state, cloned into every connection.
pub type SharedState = Arc<ProxyState>;
