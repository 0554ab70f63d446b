//! Upstream pools and balancing.

mod support;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use support::*;
use tokio::net::TcpListener;

#[tokio::test]
async fn endpoints_of_an_upstream_are_balanced_round_robin() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let toml = format!(
        "default = \"legacy\"\n[upstreams.legacy]\nendpoints = [\"{}\", \"{}\"]\n",
        a.url(),
        b.url()
    );
    let proxy = TestProxy::start(&toml).await;
    let mut seen = Vec::new();
    for _ in 0..10 {
        seen.push(proxy.get("/").await.upstream().to_owned());
    }
    assert_eq!(seen.iter().filter(|s| *s == "a").count(), 5, "{seen:?}");
    assert_eq!(seen.iter().filter(|s| *s == "b").count(), 5, "{seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0] != w[1]),
        "strict alternation: {seen:?}"
    );
}

/// A Node-like upstream: HTTP/1.1 keep-alive, closing idle connections after `keep_alive`
/// (hyper's header-read timer also runs on idle keep-alive connections, like Node's).
async fn node_like(keep_alive: Duration) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = service_fn(|_req| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from("node"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(keep_alive)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, connections)
}

#[tokio::test]
async fn pooled_connections_idle_longer_than_pool_idle_timeout_are_not_reused() {
    // The upstream keeps idle connections 1 s; ficus's pool keeps them 100 ms. Requests 250 ms
    // apart must each use a fresh connection: a stale one is never picked from the pool.
    let (addr, connections) = node_like(Duration::from_secs(1)).await;
    let toml = format!(
        "default = \"legacy\"\n[upstreams.legacy]\nendpoints = [\"http://{addr}\"]\npool_idle_timeout = \"100ms\"\n"
    );
    let proxy = TestProxy::start(&toml).await;
    for _ in 0..4 {
        let answer = proxy.get("/").await;
        assert_eq!(
            (answer.status.as_u16(), answer.body.as_str()),
            (200, "node")
        );
        // Time is what is under test here: let the pooled connection outlive pool_idle_timeout.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        4,
        "each request after the pool idle timeout used a new connection"
    );
}

#[tokio::test]
async fn pooled_connections_are_reused_within_pool_idle_timeout() {
    let (addr, connections) = node_like(Duration::from_secs(5)).await;
    let toml =
        format!("default = \"legacy\"\n[upstreams.legacy]\nendpoints = [\"http://{addr}\"]\n");
    let proxy = TestProxy::start(&toml).await;
    for _ in 0..5 {
        assert_eq!(proxy.get("/").await.status, 200);
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "keep-alive to the upstream: one connection for sequential requests"
    );
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_never_used() {
    // Misconfigured on purpose: the pool would keep connections 10 s, the upstream closes them
    // after 100 ms. The closed connection must be skipped, not answered with a 502.
    let (addr, connections) = node_like(Duration::from_millis(100)).await;
    let toml = format!(
        "default = \"legacy\"\n[upstreams.legacy]\nendpoints = [\"http://{addr}\"]\npool_idle_timeout = \"10s\"\n"
    );
    let proxy = TestProxy::start(&toml).await;
    for _ in 0..3 {
        assert_eq!(proxy.get("/").await.status, 200);
        // Time is what is under test: outlive the upstream's keep-alive.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(connections.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn bodiless_responses_return_their_connection_to_the_pool() {
    let (addr, connections) = node_like(Duration::from_secs(5)).await;
    let toml =
        format!("default = \"legacy\"\n[upstreams.legacy]\nendpoints = [\"http://{addr}\"]\n");
    let proxy = TestProxy::start(&toml).await;
    for _ in 0..4 {
        assert_eq!(
            proxy.send(http::Method::HEAD, "/", &[], b"").await.status,
            200
        );
    }
    assert_eq!(proxy.get("/").await.body, "node");
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "HEAD responses have no body to read, yet the connection is reused"
    );
}
