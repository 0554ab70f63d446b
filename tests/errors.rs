//! What a client sees when something goes wrong: upstream failures become
//! ficus's JSON errors with the right status, hostile or broken requests are
//! refused before any upstream sees them, and an upstream's own errors are
//! relayed untouched.

mod support;
use support::*;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;

/// A loopback address nothing listens on: a port bound, then released.
async fn refused_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}

/// A loopback listener that never completes a TCP handshake: it never accepts,
/// and its accept queue is filled with connections kept open, so the kernel
/// drops every further SYN. Keep the value alive for as long as it must stall.
struct Unreachable {
    addr: SocketAddr,
    _listener: TcpListener,
    _fillers: Vec<TcpStream>,
}

impl Unreachable {
    async fn start() -> Unreachable {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
        let listener = socket.listen(1).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let mut fillers = Vec::new();
        // A connect that does not complete within this shows the queue is full.
        let probe = Duration::from_millis(200);
        loop {
            assert!(
                fillers.len() < 16,
                "the accept queue never filled: this kernel completes handshakes beyond the backlog"
            );
            match tokio::time::timeout(probe, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => fillers.push(stream),
                Ok(Err(e)) => panic!("filler connect failed: {e}"),
                Err(_) => break,
            }
        }
        Unreachable {
            addr,
            _listener: listener,
            _fillers: fillers,
        }
    }
}

/// Sends `bytes` on a new connection and reads one response; the connection stays open.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> (RawResponse, TcpStream) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let response = read_response(&mut stream).await;
    (response, stream)
}

/// Whether the server closes `stream` (EOF or reset) within `EVENT_TIMEOUT`.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut chunk = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

const REQUESTS: &str = "ficus_requests_total";
const UPSTREAM_ERRORS: &str = "ficus_upstream_errors_total";

/// One sample of a metric, labels given in any order; 0 when absent.
async fn sample(proxy: &TestProxy, name: &str, labels: &[(&str, &str)]) -> f64 {
    // The exposition format lists labels sorted by name.
    let mut labels = labels.to_vec();
    labels.sort();
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    proxy
        .metric(&format!("{name}{{{}}}", labels.join(",")))
        .await
}

/// Parses ficus's JSON error body and checks it holds exactly the kind and the
/// response's request id.
/// GETs `path` and checks it is answered 504 with error `kind`, after a time within `window`.
async fn assert_gateway_timeout(
    proxy: &TestProxy,
    path: &str,
    kind: &str,
    window: std::ops::Range<Duration>,
) {
    let start = Instant::now();
    let answer = proxy.get(path).await;
    let elapsed = start.elapsed();
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert_error_body(&answer, kind);
    assert!(
        window.contains(&elapsed),
        "answered after {elapsed:?}, expected within {window:?}"
    );
}

fn assert_error_body(answer: &Answer, kind: &str) {
    assert_eq!(answer.headers["content-type"], "application/json");
    let request_id = answer.headers["x-request-id"].to_str().unwrap();
    let body: serde_json::Value = serde_json::from_str(&answer.body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {:?}", answer.body));
    assert_eq!(
        body,
        serde_json::json!({ "error": kind, "request_id": request_id })
    );
}

/// Asserts that the backend's only request is a follow-up GET of `path`, sent
/// now: it proves ficus still serves and that nothing earlier reached the backend.
async fn assert_only_follow_up_arrives(proxy: &TestProxy, backend: &Backend, path: &str) {
    let answer = proxy.get(path).await;
    assert_eq!(answer.status, StatusCode::OK);
    let targets: Vec<String> = backend.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, [path]);
}

#[tokio::test]
async fn refused_upstream_answers_502_upstream_connect_without_internals() {
    let legacy = Backend::start("legacy").await;
    let dead = refused_addr().await;
    let toml = table(
        &[("legacy", &legacy)],
        &format!(
            "[upstreams.orders]\nendpoints = [\"http://{dead}\"]\n\
             [[routes]]\nname = \"orders\"\nprefix = \"/api/orders\"\nupstream = \"orders\"\n"
        ),
    );
    let proxy = TestProxy::start(&toml).await;

    let answer = proxy.get("/api/orders/7").await;

    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_error_body(&answer, "upstream_connect");
    let request_id = answer.headers["x-request-id"].to_str().unwrap();
    let rest = answer.body.replace(request_id, "");
    assert!(
        !rest.contains("127.0.0.1"),
        "body leaks the address: {rest}"
    );
    assert!(
        !rest.contains(&dead.port().to_string()),
        "body leaks the port: {rest}"
    );
    let labels = |last| [("route", "orders"), ("upstream", "orders"), last];
    assert_eq!(
        sample(&proxy, UPSTREAM_ERRORS, &labels(("kind", "connect"))).await,
        1.0
    );
    assert_eq!(
        sample(&proxy, REQUESTS, &labels(("code", "502"))).await,
        1.0
    );
}

#[tokio::test]
async fn error_body_carries_the_clients_request_id() {
    let dead = refused_addr().await;
    let toml =
        format!("default = \"legacy\"\n[upstreams.legacy]\nendpoints = [\"http://{dead}\"]\n");
    let proxy = TestProxy::start(&toml).await;

    let answer = proxy
        .send(
            http::Method::GET,
            "/",
            &[("x-request-id", "client-id-42")],
            b"",
        )
        .await;

    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.headers["x-request-id"], "client-id-42");
    assert_error_body(&answer, "upstream_connect");
}

#[tokio::test]
async fn slow_upstream_answers_504_upstream_timeout_at_route_timeout() {
    let legacy = Backend::start("legacy").await;
    let slow = Backend::with("slow", Behaviour::Delay(Duration::from_secs(2))).await;
    let toml = table(
        &[("legacy", &legacy), ("slow", &slow)],
        "[[routes]]\nname = \"report\"\nprefix = \"/report\"\nupstream = \"slow\"\ntimeout = \"200ms\"\n",
    );
    let proxy = TestProxy::start(&toml).await;

    assert_gateway_timeout(
        &proxy,
        "/report",
        "upstream_timeout",
        Duration::from_millis(200)..Duration::from_secs(1),
    )
    .await;
    let labels = [
        ("route", "report"),
        ("upstream", "slow"),
        ("kind", "timeout"),
    ];
    assert_eq!(sample(&proxy, UPSTREAM_ERRORS, &labels).await, 1.0);
    let labels = [("route", "report"), ("upstream", "slow"), ("code", "504")];
    assert_eq!(sample(&proxy, REQUESTS, &labels).await, 1.0);
}

#[tokio::test]
async fn route_without_timeout_uses_defaults_timeout() {
    let legacy = Backend::start("legacy").await;
    let slow = Backend::with("slow", Behaviour::Delay(Duration::from_secs(2))).await;
    let toml = table(
        &[("legacy", &legacy), ("slow", &slow)],
        "[defaults]\ntimeout = \"200ms\"\n\
         [[routes]]\nname = \"report\"\nprefix = \"/report\"\nupstream = \"slow\"\n",
    );
    let proxy = TestProxy::start(&toml).await;

    assert_gateway_timeout(
        &proxy,
        "/report",
        "upstream_timeout",
        Duration::from_millis(200)..Duration::from_secs(1),
    )
    .await;
}

#[tokio::test]
async fn route_timeout_overrides_a_shorter_defaults_timeout() {
    let legacy = Backend::start("legacy").await;
    let slow = Backend::with("slow", Behaviour::Delay(Duration::from_millis(500))).await;
    let toml = table(
        &[("legacy", &legacy), ("slow", &slow)],
        "[defaults]\ntimeout = \"200ms\"\n\
         [[routes]]\nname = \"report\"\nprefix = \"/report\"\nupstream = \"slow\"\ntimeout = \"5s\"\n",
    );
    let proxy = TestProxy::start(&toml).await;

    let answer = proxy.get("/report").await;

    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, "slow");
}

#[tokio::test]
async fn unfinished_upstream_handshake_answers_504_upstream_connect_timeout() {
    let legacy = Backend::start("legacy").await;
    let stalled = Unreachable::start().await;
    let toml = table(
        &[("legacy", &legacy)],
        &format!(
            "[upstreams.orders]\nendpoints = [\"http://{}\"]\nconnect_timeout = \"300ms\"\n\
             [[routes]]\nname = \"orders\"\nprefix = \"/api/orders\"\nupstream = \"orders\"\n",
            stalled.addr
        ),
    );
    let proxy = TestProxy::start(&toml).await;

    assert_gateway_timeout(
        &proxy,
        "/api/orders",
        "upstream_connect_timeout",
        Duration::from_millis(300)..Duration::from_secs(2),
    )
    .await;
    let labels = [
        ("route", "orders"),
        ("upstream", "orders"),
        ("kind", "connect_timeout"),
    ];
    assert_eq!(sample(&proxy, UPSTREAM_ERRORS, &labels).await, 1.0);
}

#[tokio::test]
async fn oversized_request_head_answers_431_and_reaches_no_upstream() {
    let legacy = Backend::start("legacy").await;
    let toml = table(
        &[("legacy", &legacy)],
        "[server]\nmax_request_header_bytes = 8192\n",
    );
    let proxy = TestProxy::start(&toml).await;
    let request = format!(
        "GET /big HTTP/1.1\r\nHost: shop.example.com\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );

    let (response, mut stream) = exchange(proxy.running.proxy_addr, request.as_bytes()).await;

    assert_eq!(response.status, 431);
    assert!(closed_by_server(&mut stream).await);
    assert_only_follow_up_arrives(&proxy, &legacy, "/after").await;
}

#[tokio::test]
async fn request_with_101_headers_answers_431_and_reaches_no_upstream() {
    let legacy = Backend::start("legacy").await;
    let proxy = TestProxy::start(&table(&[("legacy", &legacy)], "")).await;
    let mut request = String::from("GET /many HTTP/1.1\r\nHost: shop.example.com\r\n");
    for i in 0..100 {
        request.push_str(&format!("X-Header-{i}: v\r\n"));
    }
    request.push_str("\r\n");

    let (response, mut stream) = exchange(proxy.running.proxy_addr, request.as_bytes()).await;

    assert_eq!(response.status, 431);
    assert!(closed_by_server(&mut stream).await);
    assert_only_follow_up_arrives(&proxy, &legacy, "/after").await;
}

#[tokio::test]
async fn malformed_requests_answer_400_and_proxy_keeps_serving() {
    let legacy = Backend::start("legacy").await;
    let proxy = TestProxy::start(&table(&[("legacy", &legacy)], "")).await;
    let cases: [(&str, &[u8]); 6] = [
        ("garbage", b"HELLO\r\n\r\n"),
        ("space in target", b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("no space after method", b"GET/ HTTP/1.1\r\nHost: x\r\n\r\n"),
        (
            "space before colon",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Bad : 1\r\n\r\n",
        ),
        (
            "obs-fold",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Fold: a\r\n b\r\n\r\n",
        ),
        (
            "NUL in value",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Nul: a\0b\r\n\r\n",
        ),
    ];

    for (case, bytes) in cases {
        let (response, mut stream) = exchange(proxy.running.proxy_addr, bytes).await;
        assert_eq!(response.status, 400, "{case}");
        assert!(closed_by_server(&mut stream).await, "{case}: left open");
    }

    assert_only_follow_up_arrives(&proxy, &legacy, "/after").await;
}

#[tokio::test]
async fn uri_longer_than_8_kib_answers_414_and_reaches_no_upstream() {
    let legacy = Backend::start("legacy").await;
    let proxy = TestProxy::start(&table(&[("legacy", &legacy)], "")).await;

    let answer = proxy.get(&format!("/{}", "a".repeat(8 * 1024))).await;

    assert_eq!(answer.status, StatusCode::URI_TOO_LONG);
    assert_error_body(&answer, "uri_too_long");
    assert_only_follow_up_arrives(&proxy, &legacy, "/after").await;
}

#[tokio::test]
async fn uri_of_exactly_8_kib_is_forwarded() {
    let legacy = Backend::start("legacy").await;
    let proxy = TestProxy::start(&table(&[("legacy", &legacy)], "")).await;
    let path = format!("/{}?q={}", "a".repeat(4 * 1024), "b".repeat(4 * 1024 - 4));
    assert_eq!(path.len(), 8 * 1024);

    let answer = proxy.get(&path).await;

    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(legacy.requests()[0].target, path);
}

#[tokio::test]
async fn connect_method_answers_400_and_reaches_no_upstream() {
    let legacy = Backend::start("legacy").await;
    let proxy = TestProxy::start(&table(&[("legacy", &legacy)], "")).await;

    let (response, _stream) = exchange(
        proxy.running.proxy_addr,
        b"CONNECT internal.example:443 HTTP/1.1\r\nHost: internal.example:443\r\n\r\n",
    )
    .await;

    assert_eq!(response.status, 400);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert!(
        response.body.contains("\"error\":\"bad_target\""),
        "{}",
        response.body
    );
    assert_only_follow_up_arrives(&proxy, &legacy, "/after").await;
}

#[tokio::test]
async fn non_path_targets_answer_400_bad_target_and_reach_no_upstream() {
    let legacy = Backend::start("legacy").await;
    let proxy = TestProxy::start(&table(&[("legacy", &legacy)], "")).await;

    for request in [
        "OPTIONS * HTTP/1.1\r\nHost: shop.example.com\r\n\r\n",
        "GET * HTTP/1.1\r\nHost: shop.example.com\r\n\r\n",
        "GET shop.example.com:80 HTTP/1.1\r\nHost: shop.example.com\r\n\r\n",
    ] {
        let (response, _stream) = exchange(proxy.running.proxy_addr, request.as_bytes()).await;
        let line = request.lines().next().unwrap();
        assert_eq!(response.status, 400, "{line}");
        assert_eq!(
            response.header("content-type"),
            Some("application/json"),
            "{line}"
        );
        assert!(
            response.body.contains("\"error\":\"bad_target\""),
            "{line}: {}",
            response.body
        );
    }

    assert_only_follow_up_arrives(&proxy, &legacy, "/after").await;
}

#[tokio::test]
async fn upstream_500_is_relayed_with_its_body_and_is_no_upstream_error() {
    let legacy = Backend::with(
        "legacy",
        Behaviour::Custom(
            StatusCode::INTERNAL_SERVER_ERROR,
            vec![("x-detail", "db down")],
        ),
    )
    .await;
    let proxy = TestProxy::start(&table(&[("legacy", &legacy)], "")).await;

    let answer = proxy.get("/checkout").await;

    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(answer.body, "legacy");
    assert_eq!(answer.upstream(), "legacy");
    assert_eq!(answer.headers["x-detail"], "db down");
    assert!(answer.headers.get("content-type").is_none());
    let labels = |last| [("route", "default"), ("upstream", "legacy"), last];
    assert_eq!(
        sample(&proxy, REQUESTS, &labels(("code", "500"))).await,
        1.0
    );
    for kind in ["connect", "connect_timeout", "timeout", "protocol"] {
        assert_eq!(
            sample(&proxy, UPSTREAM_ERRORS, &labels(("kind", kind))).await,
            0.0,
            "{kind}"
        );
    }
}

/// An HTTP/2 client that resets its stream before the answer cancels the request, which
/// is counted with 499 like an HTTP/1.1 client that closes; the connection serves on.
#[tokio::test]
async fn a_reset_http2_stream_is_counted_as_cancelled() {
    let legacy = Backend::start("legacy").await;
    let hung = Backend::with("hung", Behaviour::Gated(Arc::new(Semaphore::new(0)))).await;
    let rest = "[[routes]]\nname = \"hung\"\npath = \"/hung\"\nupstream = \"hung\"\n";
    let proxy = TestProxy::start(&table(&[("legacy", &legacy), ("hung", &hung)], rest)).await;
    let h2: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let get = |path: &str| {
        Request::get(proxy.url(path))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };

    // The response future goes with the task: the client resets the stream.
    let waiting = tokio::spawn(h2.request(get("/hung")));
    hung.wait_for_arrivals(1).await;
    waiting.abort();

    let cancelled = r#"ficus_requests_total{code="499",route="hung",upstream="hung"}"#;
    assert_eq!(proxy.wait_for_metric(cancelled, 1.0).await, 1.0);
    let answer = tokio::time::timeout(EVENT_TIMEOUT, h2.request(get("/other")))
        .await
        .expect("answer in time")
        .expect("the HTTP/2 connection still serves");
    assert_eq!(answer.status(), StatusCode::OK);
}
