//! Header handling on the way through: hop-by-hop headers stop at ficus in both
//! directions, forwarding headers tell the upstream who asked and how, the
//! client's Host survives, and every request carries one usable request id.

mod support;
use support::*;

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Sends `request` on a new connection and reads one content-length-framed response.
async fn exchange(addr: SocketAddr, request: &str) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    read_response(&mut stream).await
}

/// Every value of `name` the backend received, in order.
fn received<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().expect("ASCII header"))
        .collect()
}

fn is_fresh_request_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A proxy in front of one backend named "legacy" (the default upstream).
async fn proxy_to(backend: &Backend) -> TestProxy {
    TestProxy::start(&table(&[("legacy", backend)], "")).await
}

#[tokio::test]
async fn hop_by_hop_request_headers_do_not_reach_the_upstream() {
    let legacy = Backend::start("legacy").await;
    let proxy = proxy_to(&legacy).await;

    let response = exchange(
        proxy.running.proxy_addr,
        "GET /hop HTTP/1.1\r\n\
         Host: shop.example.com\r\n\
         Connection: close, X-Secret\r\n\
         Connection: x-other\r\n\
         X-Secret: s3cret\r\n\
         X-Other: o\r\n\
         Keep-Alive: timeout=5\r\n\
         Proxy-Connection: keep-alive\r\n\
         TE: trailers\r\n\
         Trailer: X-Checksum\r\n\
         Upgrade: foo\r\n\
         X-Kept: k\r\n\
         \r\n",
    )
    .await;

    assert_eq!(response.status, 200);
    let headers = &legacy.requests()[0].headers;
    for name in [
        "connection",
        "x-secret",
        "x-other",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ] {
        assert!(
            !headers.contains_key(name),
            "{name} reached the upstream: {headers:?}"
        );
    }
    assert_eq!(received(headers, "x-kept"), ["k"]);
}

#[tokio::test]
async fn http2_settings_does_not_reach_the_upstream() {
    let legacy = Backend::start("legacy").await;
    let proxy = proxy_to(&legacy).await;

    let response = exchange(
        proxy.running.proxy_addr,
        "GET /h2c HTTP/1.1\r\n\
         Host: shop.example.com\r\n\
         HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\
         X-Kept: k\r\n\
         \r\n",
    )
    .await;

    assert_eq!(response.status, 200);
    let headers = &legacy.requests()[0].headers;
    assert!(!headers.contains_key("http2-settings"), "{headers:?}");
    assert_eq!(received(headers, "x-kept"), ["k"]);
}

/// Credentials meant for a proxy must not travel on to the monolith (reliability.md B2).
#[tokio::test]
async fn proxy_authorization_does_not_reach_the_upstream() {
    let legacy = Backend::start("legacy").await;
    let proxy = proxy_to(&legacy).await;

    let response = exchange(
        proxy.running.proxy_addr,
        "GET /creds HTTP/1.1\r\n\
         Host: shop.example.com\r\n\
         Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\
         X-Kept: k\r\n\
         \r\n",
    )
    .await;

    assert_eq!(response.status, 200);
    let headers = &legacy.requests()[0].headers;
    assert!(!headers.contains_key("proxy-authorization"), "{headers:?}");
    assert_eq!(received(headers, "x-kept"), ["k"]);
}

#[tokio::test]
async fn connection_header_cannot_remove_forwarding_headers() {
    let legacy = Backend::start("legacy").await;
    let proxy = proxy_to(&legacy).await;

    let response = exchange(
        proxy.running.proxy_addr,
        "GET /protected HTTP/1.1\r\n\
         Host: shop.example.com\r\n\
         Connection: X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, X-Request-Id, Host\r\n\
         \r\n",
    )
    .await;

    assert_eq!(response.status, 200);
    let headers = &legacy.requests()[0].headers;
    assert_eq!(received(headers, "host"), ["shop.example.com"]);
    assert_eq!(received(headers, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(received(headers, "x-forwarded-proto"), ["http"]);
    assert_eq!(received(headers, "x-forwarded-host"), ["shop.example.com"]);
    assert_eq!(received(headers, "x-request-id").len(), 1);
}

#[tokio::test]
async fn hop_by_hop_response_headers_do_not_reach_the_client() {
    let legacy = Backend::with(
        "legacy",
        Behaviour::Custom(
            StatusCode::OK,
            vec![
                ("connection", "x-internal"),
                ("x-internal", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("upgrade", "foo"),
                ("x-kept", "1"),
            ],
        ),
    )
    .await;
    let proxy = proxy_to(&legacy).await;

    // A keep-alive request: ficus has no reason to write a Connection header of its own.
    let response = exchange(
        proxy.running.proxy_addr,
        "GET /hop HTTP/1.1\r\nHost: shop.example.com\r\n\r\n",
    )
    .await;

    assert_eq!(response.status, 200);
    assert_eq!(response.body, "legacy");
    for name in [
        "connection",
        "x-internal",
        "keep-alive",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(
            response.values(name).is_empty(),
            "{name} reached the client: {:?}",
            response.headers
        );
    }
    assert_eq!(response.values("x-kept"), ["1"]);
}

/// A proxy challenge from an upstream is not the client's business (reliability.md B2).
#[tokio::test]
async fn proxy_authenticate_response_header_does_not_reach_the_client() {
    let legacy = Backend::with(
        "legacy",
        Behaviour::Custom(
            StatusCode::OK,
            vec![
                ("proxy-authenticate", "Basic realm=\"internal\""),
                ("x-kept", "1"),
            ],
        ),
    )
    .await;
    let proxy = proxy_to(&legacy).await;

    let response = exchange(
        proxy.running.proxy_addr,
        "GET /auth HTTP/1.1\r\nHost: shop.example.com\r\n\r\n",
    )
    .await;

    assert_eq!(response.status, 200);
    assert!(
        response.values("proxy-authenticate").is_empty(),
        "{:?}",
        response.headers
    );
    assert_eq!(response.values("x-kept"), ["1"]);
}

#[tokio::test]
async fn x_forwarded_for_is_the_peer_when_absent() {
    let legacy = Backend::start("legacy").await;
    let proxy = proxy_to(&legacy).await;

    proxy.get("/xff").await;

    assert_eq!(
        received(&legacy.requests()[0].headers, "x-forwarded-for"),
        ["127.0.0.1"]
    );
}

#[tokio::test]
async fn x_forwarded_for_gets_the_peer_appended_when_present() {
    let legacy = Backend::start("legacy").await;
    let proxy = proxy_to(&legacy).await;

    proxy
        .send(Method::GET, "/xff", &[("x-forwarded-for", "10.1.2.3")], b"")
        .await;

    assert_eq!(
        received(&legacy.requests()[0].headers, "x-forwarded-for"),
        ["10.1.2.3, 127.0.0.1"]
    );
}

#[tokio::test]
async fn x_forwarded_proto_is_set_to_http_over_a_client_value() {
    let legacy = Backend::start("legacy").await;
    let proxy = proxy_to(&legacy).await;

    proxy.get("/plain").await;
    proxy
        .send(
            Method::GET,
            "/spoofed",
            &[("x-forwarded-proto", "https")],
            b"",
        )
        .await;

    let requests = legacy.requests();
    assert_eq!(
        received(&requests[0].headers, "x-forwarded-proto"),
        ["http"]
    );
    assert_eq!(
        received(&requests[1].headers, "x-forwarded-proto"),
        ["http"]
    );
}

#[tokio::test]
async fn x_forwarded_host_is_the_host_the_client_sent() {
    let legacy = Backend::start("legacy").await;
    let proxy = proxy_to(&legacy).await;

    proxy
        .send(
            Method::GET,
            "/xfh",
            &[
                ("host", "shop.example.com"),
                ("x-forwarded-host", "evil.example"),
            ],
            b"",
        )
        .await;

    assert_eq!(
        received(&legacy.requests()[0].headers, "x-forwarded-host"),
        ["shop.example.com"]
    );
}

#[tokio::test]
async fn host_reaches_the_upstream_as_the_client_sent_it() {
    let legacy = Backend::start("legacy").await;
    let proxy = proxy_to(&legacy).await;

    let response = exchange(
        proxy.running.proxy_addr,
        "GET /host HTTP/1.1\r\nHost: shop.example.com\r\n\r\n",
    )
    .await;

    assert_eq!(response.status, 200);
    assert_eq!(
        received(&legacy.requests()[0].headers, "host"),
        ["shop.example.com"]
    );
}

#[tokio::test]
async fn an_absolute_form_targets_authority_wins_over_a_differing_host() {
    let legacy = Backend::start("legacy").await;
    let proxy = proxy_to(&legacy).await;

    for host in ["other.example", "shop.example.com"] {
        let response = exchange(
            proxy.running.proxy_addr,
            &format!("GET http://shop.example.com/abs HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        )
        .await;
        assert_eq!(response.status, 200, "Host: {host}");
    }
    // RFC 9112 §3.2.2: the target's authority, once, whatever the Host field said.
    for recorded in legacy.requests() {
        assert_eq!(recorded.target, "/abs");
        assert_eq!(received(&recorded.headers, "host"), ["shop.example.com"]);
        assert_eq!(
            received(&recorded.headers, "x-forwarded-host"),
            ["shop.example.com"]
        );
    }
    assert_eq!(legacy.requests().len(), 2);
}

#[tokio::test]
async fn request_id_is_generated_when_absent_and_reaches_upstream_and_client() {
    let legacy = Backend::start("legacy").await;
    let proxy = proxy_to(&legacy).await;

    let answer = proxy.get("/id").await;

    let sent_back = answer.headers["x-request-id"].to_str().unwrap();
    assert!(is_fresh_request_id(sent_back), "{sent_back:?}");
    assert_eq!(
        received(&legacy.requests()[0].headers, "x-request-id"),
        [sent_back]
    );
    let second = proxy.get("/id").await;
    assert_ne!(second.headers["x-request-id"], sent_back);
}

#[tokio::test]
async fn client_request_id_is_passed_through_unchanged() {
    let legacy = Backend::start("legacy").await;
    let proxy = proxy_to(&legacy).await;

    let answer = proxy
        .send(Method::GET, "/id", &[("x-request-id", "Req-7f3a_9.b")], b"")
        .await;

    assert_eq!(answer.headers["x-request-id"], "Req-7f3a_9.b");
    assert_eq!(
        received(&legacy.requests()[0].headers, "x-request-id"),
        ["Req-7f3a_9.b"]
    );
}

#[tokio::test]
async fn unusable_client_request_id_is_replaced() {
    let legacy = Backend::start("legacy").await;
    let proxy = proxy_to(&legacy).await;
    let too_long = "a".repeat(200);

    for unusable in [too_long.as_str(), "has spaces in it"] {
        let answer = proxy
            .send(Method::GET, "/id", &[("x-request-id", unusable)], b"")
            .await;

        let sent_back = answer.headers["x-request-id"].to_str().unwrap();
        assert!(
            is_fresh_request_id(sent_back),
            "{unusable:?} -> {sent_back:?}"
        );
        let last = legacy.requests().pop().unwrap();
        assert_eq!(received(&last.headers, "x-request-id"), [sent_back]);
    }
}

#[tokio::test]
async fn http2_authority_reaches_the_http1_upstream_as_host() {
    let legacy = Backend::start("legacy").await;
    let proxy = proxy_to(&legacy).await;

    let request = Request::get("http://shop.example.com/h2")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = send_h2(&proxy, request).await;

    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "legacy");
    let recorded = &legacy.requests()[0];
    assert_eq!(recorded.target, "/h2");
    assert_eq!(received(&recorded.headers, "host"), ["shop.example.com"]);
    assert_eq!(
        received(&recorded.headers, "x-forwarded-host"),
        ["shop.example.com"]
    );
}

#[tokio::test]
async fn http2_authority_wins_over_a_differing_host_header() {
    let legacy = Backend::start("legacy").await;
    let proxy = proxy_to(&legacy).await;

    let request = Request::get("http://shop.example.com/h2")
        .header("host", "other.example")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = send_h2(&proxy, request).await;

    assert_eq!(response.status(), StatusCode::OK);
    let recorded = &legacy.requests()[0];
    assert_eq!(received(&recorded.headers, "host"), ["shop.example.com"]);
    assert_eq!(
        received(&recorded.headers, "x-forwarded-host"),
        ["shop.example.com"]
    );
}

/// HTTP/2 clients send each cookie as a field of its own; an HTTP/1.1 upstream must get
/// them joined on one line (RFC 9113 §8.2.3), or many servers read only the first.
#[tokio::test]
async fn http2_cookie_fields_reach_the_http1_upstream_on_one_line() {
    let legacy = Backend::start("legacy").await;
    let proxy = proxy_to(&legacy).await;

    let request = Request::get("http://shop.example.com/h2")
        .header("cookie", "session=abc")
        .header("cookie", "theme=dark")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = send_h2(&proxy, request).await;

    assert_eq!(response.status(), StatusCode::OK);
    let recorded = &legacy.requests()[0];
    assert_eq!(
        received(&recorded.headers, "cookie"),
        ["session=abc; theme=dark"]
    );
}

/// Sends `request` to the proxy over a new HTTP/2 (h2c, prior knowledge) connection.
async fn send_h2(proxy: &TestProxy, request: Request<Empty<Bytes>>) -> http::Response<Incoming> {
    let stream = TcpStream::connect(proxy.running.proxy_addr)
        .await
        .expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c prior-knowledge handshake");
    tokio::spawn(connection);
    tokio::time::timeout(EVENT_TIMEOUT, sender.send_request(request))
        .await
        .expect("response in time")
        .expect("response")
}
