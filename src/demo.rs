//! `ficus demo`: stand-in services and the proxy in front of them, in one process.
//!
//! The stand-ins play the legacy monolith and three new services. Each answers
//! every request with a small JSON body naming itself, so a newcomer can see
//! which side answered, edit `examples/demo/routes.toml`, and watch traffic move.
//! The legacy monolith and the new search service both answer `/api/search`
//! with search results, and disagree on some queries, to show shadowing.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// The stand-in services: name and address, matching `examples/demo/routes.toml`.
pub const STAND_INS: [(&str, &str); 5] = [
    ("legacy", "127.0.0.1:3000"),
    ("users-1", "127.0.0.1:4001"),
    ("users-2", "127.0.0.1:4002"),
    ("messaging", "127.0.0.1:4100"),
    ("search", "127.0.0.1:4200"),
];

/// Search results for `query`, as the legacy monolith and the new search service give
/// them. Both add a timing field and a timestamp (noise); the new service orders its hits
/// differently for queries of odd length (a real difference).
fn search_results(name: &str, query: &str) -> serde_json::Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut hits = vec![format!("{query}-guide"), format!("{query}-faq")];
    if name == "search" && query.len() % 2 == 1 {
        hits.reverse();
    }
    serde_json::json!({
        "query": query,
        "hits": hits,
        "took_ms": now.subsec_micros() % 50,
        "served_at": now.as_micros() as u64,
    })
}

/// Serves a stand-in that answers `{"service": NAME, "method": .., "path": ..}` to everything.
pub async fn serve_stand_in(listener: TcpListener, name: &'static str) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| async move {
                let path = request.uri().path();
                let body = if path.starts_with("/api/search") && matches!(name, "legacy" | "search")
                {
                    let query = request
                        .uri()
                        .query()
                        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("q=")))
                        .unwrap_or("");
                    search_results(name, query)
                } else {
                    serde_json::json!({
                        "service": name,
                        "method": request.method().as_str(),
                        "path": path,
                        "x_user_id": request.headers().get("x-user-id").and_then(|v| v.to_str().ok()),
                    })
                };
                let mut response = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
                let headers = response.headers_mut();
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                headers.insert("x-served-by", HeaderValue::from_static(name));
                Ok::<_, Infallible>(response)
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Binds and starts every stand-in, returning their addresses.
pub async fn start_stand_ins() -> std::io::Result<Vec<(&'static str, SocketAddr)>> {
    let mut started = Vec::new();
    for (name, addr) in STAND_INS {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot start stand-in \"{name}\" on {addr}: {e}"),
            )
        })?;
        started.push((name, listener.local_addr()?));
        tokio::spawn(serve_stand_in(listener, name));
    }
    Ok(started)
}

/// What to try, printed once the demo runs.
pub fn instructions(proxy: SocketAddr, admin: SocketAddr, table: &str) -> String {
    format!(
        r#"
ficus demo is running. Stand-ins: legacy monolith on :3000, "users" service on :4001 and :4002, "messaging" on :4100,
"search" on :4200.

Try:
  curl -s http://{proxy}/api/orders/7                     # no route: the legacy monolith answers
  curl -s http://{proxy}/api/users/42                     # GET users-read: the new users service
  curl -s -X DELETE http://{proxy}/api/users/42           # method not listed: falls back to legacy
  curl -s http://{proxy}/api/messages/inbox -H 'x-user-id: alice'   # canary split, sticky per user
  for u in $(seq 1 20); do curl -s http://{proxy}/api/messages -H "x-user-id: user-$u"; done
  curl -s --path-as-is http://{proxy}/API/Users/../users/42   # normalized before routing: still users
  cargo run --release -- explain --config {table} GET /api/messages -H 'x-user-id: alice'

Shadowing: /api/search is answered by legacy and mirrored to the new search service, which
disagrees on queries of odd length. Compare, then look at the agreement and the diffs:
  for q in ab abc shoes boots hat; do curl -s "http://{proxy}/api/search?q=$q"; done
  curl -s http://{admin}/metrics | grep ^ficus_shadow_requests_total
  curl -s 'http://{admin}/shadow/mismatches?route=search'

Then edit {table} (for example move the messages split to 50/50, or point users-read at legacy),
save, and run the same curls: traffic follows within a second. A broken edit is rejected and shown at:
  curl -s http://{admin}/routes
Metrics:
  curl -s http://{admin}/metrics | grep ^ficus_

Ctrl-C to stop.
"#
    )
}
