//! The data path: one request in, one response out.
//!
//! [`handle`] is the single outer handler: it loads the current snapshot once,
//! routes, forwards, and turns every error into a response; it records the
//! request's metrics and writes its access log exactly once.

pub mod error;
pub mod headers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HOST, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::metrics::{BackendMetrics, Metrics, NO_UPSTREAM, UpstreamErrorKind};
use crate::routing::path;
use crate::snapshot::{DEFAULT_ROUTE, Decision, Snapshot};
use error::ProxyError;
use headers::X_REQUEST_ID;

/// Longest request target (path and query) ficus accepts.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// Body of every response ficus sends: the upstream's, streamed, or its own small one.
pub type ResponseBody = Either<Incoming, Full<Bytes>>;

/// What the data path shares: the current table and the metrics.
pub struct ProxyState {
    /// The current generation. Only the reloader stores into it.
    pub snapshot: ArcSwap<Snapshot>,
    /// Metric families.
    pub metrics: Metrics,
    /// Handles for requests rejected before routing.
    unrouted: BackendMetrics,
}

impl ProxyState {
    /// State serving `snapshot`.
    pub fn new(snapshot: Snapshot, metrics: Metrics) -> Self {
        let unrouted = metrics.backend(DEFAULT_ROUTE, NO_UPSTREAM);
        metrics.set_generation(snapshot.generation);
        ProxyState {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            unrouted,
        }
    }
}

/// Serves one request. Never fails: every error becomes a response.
pub async fn handle(
    state: &ProxyState,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ResponseBody> {
    let start = Instant::now();
    // One load per request: the whole request is served by this generation.
    let snapshot = state.snapshot.load_full();
    let request_id = headers::usable_request_id(request.headers())
        .cloned()
        .unwrap_or_else(headers::new_request_id);
    let method = request.method().clone();
    let raw_path = request.uri().path().to_owned();

    let (decision, result) = match route(&snapshot, &request) {
        Ok((normalized, decision)) => {
            let result = forward(&decision, request, peer, &normalized, &request_id).await;
            (Some(decision), result)
        }
        Err(e) => (None, Err(e)),
    };
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
        Ok(response) => response.map(Either::Left),
        Err(error) => {
            if let ProxyError::Upstream { kind, cause } = &error {
                metrics.upstream_error(*kind);
                tracing::warn!(route, upstream, %method, path = %raw_path, kind = kind.as_str(), %cause, request_id = ?request_id, "upstream request failed");
            }
            error.to_response(&request_id).map(Either::Right)
        }
    };
    response
        .headers_mut()
        .insert(&X_REQUEST_ID, request_id.clone());
    let status = response.status();
    metrics.record(status, elapsed.as_secs_f64());
    tracing::info!(
        target: "ficus::access",
        route,
        upstream,
        %method,
        path = %raw_path,
        status = status.as_u16(),
        duration_ms = elapsed.as_secs_f64() * 1e3,
        request_id = %String::from_utf8_lossy(request_id.as_bytes()),
        generation = snapshot.generation,
    );
    response
}

/// Validates the target, normalizes the path and picks the backend.
fn route<'s>(
    snapshot: &'s Snapshot,
    request: &Request<Incoming>,
) -> Result<(String, Decision<'s>), ProxyError> {
    if request.method() == Method::CONNECT {
        return Err(ProxyError::BadTarget);
    }
    let uri = request.uri();
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
    let normalized = path::normalize(uri.path())?;
    let id = snapshot.table.router.route(request.method(), &normalized);
    let decision = snapshot.decide(id, request.headers());
    Ok((normalized.into_owned(), decision))
}

/// Rewrites the request for the chosen upstream and sends it.
async fn forward(
    decision: &Decision<'_>,
    request: Request<Incoming>,
    peer: SocketAddr,
    normalized_path: &str,
    request_id: &HeaderValue,
) -> Result<Response<Incoming>, ProxyError> {
    let (mut parts, body) = request.into_parts();
    let upstream = &decision.backend.upstream;
    let endpoint = upstream.endpoint();

    // The Host the client meant: the authority for HTTP/2 and absolute-form, else its Host header.
    let host: Option<HeaderValue> = match parts.uri.authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => parts.headers.get(HOST).cloned(),
    };
    let mut target = String::with_capacity(normalized_path.len() + 64);
    target.push_str("http://");
    target.push_str(endpoint.authority.as_str());
    target.push_str(normalized_path);
    if let Some(query) = parts.uri.query() {
        target.push('?');
        target.push_str(query);
    }
    parts.uri = Uri::try_from(target).map_err(|_| ProxyError::BadTarget)?;
    // Upstreams speak HTTP/1.1; hyper's client refuses to send an HTTP/2 request to them.
    parts.version = Version::HTTP_11;
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::set_forwarding(&mut parts.headers, peer.ip(), host.as_ref());
    if let Some(host) = host {
        parts.headers.insert(HOST, host);
    }
    parts.headers.insert(&X_REQUEST_ID, request_id.clone());

    let sent = tokio::time::timeout(
        decision.timeout,
        upstream.client.request(Request::from_parts(parts, body)),
    )
    .await;
    let mut response = match sent {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            return Err(ProxyError::Upstream {
                kind: error::classify(&e),
                cause: error_chain(&e),
            });
        }
        Err(_) => {
            return Err(ProxyError::Upstream {
                kind: UpstreamErrorKind::Timeout,
                cause: format!("no response headers within {:?}", decision.timeout),
            });
        }
    };
    headers::strip_hop_by_hop(response.headers_mut());
    Ok(response)
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// Cheap handle to the proxy's state, cloned into every connection.
pub type SharedState = Arc<ProxyState>;
