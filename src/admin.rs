//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/routes`, `/shadow/mismatches`.
//!
//! Served on its own address (loopback by default), never on the proxy port.
//! Read-only for now; mutating endpoints will need a token.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus::{Encoder, Registry, TextEncoder};
use serde_json::json;
use tokio::net::TcpListener;

use crate::config::{Table, Target};
use crate::proxy::ProxyState;
use crate::reload::ReloadStatus;

/// What the admin endpoints read.
pub struct AdminState {
    /// The proxy's state (current snapshot).
    pub proxy: Arc<ProxyState>,
    /// Where the metrics live.
    pub registry: Registry,
    /// Last reload error and restart-required keys.
    pub reload: Arc<Mutex<ReloadStatus>>,
    /// Set when shutdown starts: `/readyz` answers 503 from then on.
    pub draining: AtomicBool,
}

/// Serves the admin endpoints on `listener` until the task is aborted.
///
/// It deliberately ignores the shutdown signal: `/readyz` must keep answering
/// 503 while the proxy drains, and `/metrics` must stay scrapeable until exit.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(&state, &request)) }
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(state: &AdminState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "admin endpoints are read-only: use GET\n",
        );
    }
    match request.uri().path() {
        "/metrics" => {
            let mut body = Vec::new();
            let encoder = TextEncoder::new();
            if let Err(e) = encoder.encode(&state.registry.gather(), &mut body) {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("cannot encode metrics: {e}\n"),
                );
            }
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            // Acquire pairs with the Release store when shutdown starts.
            if state.draining.load(Ordering::Acquire) {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        "/routes" => {
            let snapshot = state.proxy.snapshot.load_full();
            let status = state.reload.lock().map(|s| s.clone()).unwrap_or_default();
            let mut body = describe(&snapshot.table);
            body["generation"] = json!(snapshot.generation);
            body["hash"] = json!(format!("{:016x}", snapshot.hash));
            body["last_reload_error"] = json!(status.last_error);
            body["restart_required"] = json!(status.restart_required);
            json_response(&body)
        }
        "/shadow/mismatches" => {
            let route = match route_param(request.uri().query()) {
                Ok(route) => route,
                Err(message) => return text(StatusCode::BAD_REQUEST, message),
            };
            match state.proxy.shadows.report(route.as_deref()) {
                Some(report) => json_response(&report),
                None => text(
                    StatusCode::NOT_FOUND,
                    "no shadowed route by that name; see /routes\n",
                ),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /healthz, /readyz, /routes or /shadow/mismatches\n",
        ),
    }
}

/// The table as JSON, as `/routes` shows it.
pub fn describe(table: &Table) -> serde_json::Value {
    let upstream_name = |i: usize| table.upstreams[i].name.as_str();
    let routes: Vec<serde_json::Value> = table
        .routes
        .iter()
        .map(|route| {
            let mut value = json!({
                "name": route.name,
                "line": route.line,
                "match": route.spec.pattern.to_string(),
                "methods": route.spec.methods.as_ref().map(|m| m.iter().map(|m| m.as_str()).collect::<Vec<_>>()),
                "timeout_ms": route.timeout.as_millis() as u64,
            });
            match &route.target {
                Target::Upstream(i) => value["upstream"] = json!(upstream_name(*i)),
                Target::Split { upstreams, weights, split } => {
                    let sides: serde_json::Map<String, serde_json::Value> = upstreams
                        .iter()
                        .zip(weights)
                        .map(|(&i, w)| (upstream_name(i).to_owned(), json!(w)))
                        .collect();
                    value["split"] = serde_json::Value::Object(sides);
                    value["sticky"] = json!(split.sticky.as_ref().map(|k| k.to_string()));
                }
            }
            if let Some(shadow) = &route.shadow {
                value["shadow"] = json!({
                    "upstream": upstream_name(shadow.upstream),
                    "sample": shadow.sample,
                    "methods": shadow.methods.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
                    "max_body": shadow.max_body,
                    "timeout_ms": shadow.timeout.as_millis() as u64,
                    "concurrency": shadow.concurrency,
                    "noise_sample": shadow.learn_noise,
                });
            }
            value
        })
        .collect();
    let upstreams: Vec<serde_json::Value> = table
        .upstreams
        .iter()
        .map(|u| {
            json!({
                "name": u.name,
                "endpoints": u.endpoints.iter().map(|e| format!("{}://{}", e.scheme, e.authority)).collect::<Vec<_>>(),
                "connect_timeout_ms": u.connect_timeout.as_millis() as u64,
                "pool_idle_timeout_ms": u.pool_idle_timeout.as_millis() as u64,
                "pool_max_idle": u.pool_max_idle,
            })
        })
        .collect();
    json!({
        "file": table.file.display().to_string(),
        "default": upstream_name(table.default_upstream),
        "upstreams": upstreams,
        "routes": routes,
    })
}

/// The `route` parameter of a query string, if given. Route names are plain
/// (letters, digits, `-`, `_`, `.`), so no percent-decoding is needed.
fn route_param(query: Option<&str>) -> Result<Option<String>, &'static str> {
    let Some(query) = query else {
        return Ok(None);
    };
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == "route" {
            return match value {
                "" => Err("route= needs a route name\n"),
                name => Ok(Some(name.to_owned())),
            };
        }
    }
    Ok(None)
}

fn json_response(body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
