//! Message framing and lifetimes through the proxy: bodies of unknown length,
//! streams that pause, uploads that outlive the response head, clients that
//! abort, Host validation and upstream 101s.

mod support;
use support::*;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// A response body fed from a channel, so a backend can pause mid-stream.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// Serves every connection on a fresh listener with `service`.
async fn serve<S, F, B>(service: S) -> SocketAddr
where
    S: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = service.clone();
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service_fn(service))
                    .await;
            });
        }
    });
    addr
}

fn table_for(addr: SocketAddr, server: &str) -> String {
    format!(
        "default = \"legacy\"\n[server]\n{server}\n[upstreams.legacy]\nendpoints = [\"http://{addr}\"]\n"
    )
}

/// Reads a chunked response until its last chunk, the connection closes, or `limit` passes.
async fn read_chunked(stream: &mut TcpStream, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    while !out.ends_with(b"0\r\n\r\n") {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn get_with_chunked_body_reaches_the_upstream_whole() {
    let backend = Backend::start("legacy").await;
    let proxy = TestProxy::start(&table(&[("legacy", &backend)], "")).await;
    let mut s = TcpStream::connect(proxy.running.proxy_addr).await.unwrap();
    s.write_all(b"GET /search HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s).await.status, 200);
    let received = &backend.requests()[0];
    assert_eq!(
        (received.target.as_str(), received.body_len),
        ("/search", 5),
        "the body was forwarded, not dropped"
    );
}

#[tokio::test]
async fn streaming_response_pausing_longer_than_idle_timeout_is_not_cut() {
    let addr = serve(|_req| async {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        tokio::spawn(async move {
            let _ = tx.send(Bytes::from_static(b"first\n")).await;
            // The pause is the behaviour under test (a long poll or server-sent events).
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let _ = tx.send(Bytes::from_static(b"second\n")).await;
        });
        Ok::<_, Infallible>(Response::new(ChannelBody(rx)))
    })
    .await;
    let proxy = TestProxy::start(&table_for(
        addr,
        "idle_timeout = \"500ms\"\nheader_read_timeout = \"300ms\"",
    ))
    .await;
    let mut s = TcpStream::connect(proxy.running.proxy_addr).await.unwrap();
    s.write_all(b"GET /events HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let text = read_chunked(&mut s, EVENT_TIMEOUT).await;
    assert!(
        text.contains("first") && text.contains("second"),
        "stream cut: {text:?}"
    );
    assert!(
        text.ends_with("0\r\n\r\n"),
        "the stream ended cleanly: {text:?}"
    );
}

#[tokio::test]
async fn upload_continuing_after_the_response_head_is_not_cut() {
    // The upstream answers at once, echoing the request body as it streams in.
    let addr = serve(|req: Request<Incoming>| async move {
        Ok::<_, Infallible>(Response::new(req.into_body()))
    })
    .await;
    let proxy = TestProxy::start(&table_for(
        addr,
        "header_read_timeout = \"300ms\"\nidle_timeout = \"60s\"",
    ))
    .await;
    let mut s = TcpStream::connect(proxy.running.proxy_addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..5 {
        s.write_all(b"5\r\nhello\r\n").await.unwrap();
        // Pacing the upload past header_read_timeout is the point of the test.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let text = read_chunked(&mut s, EVENT_TIMEOUT).await;
    assert_eq!(text.matches("hello").count(), 5, "upload cut: {text:?}");
}

#[tokio::test]
async fn client_aborting_its_upload_is_the_clients_fault_not_the_upstreams() {
    let backend = Backend::start("legacy").await;
    let proxy = TestProxy::start(&table(&[("legacy", &backend)], "")).await;
    let mut s = TcpStream::connect(proxy.running.proxy_addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\nabc")
        .await
        .unwrap();
    backend.wait_for_arrivals(1).await;
    s.shutdown().await.unwrap(); // the body will never complete
    let response = read_response(&mut s).await;
    assert_eq!(response.status, 400);
    assert!(
        response.body.contains("\"error\":\"client_aborted\""),
        "{}",
        response.body
    );
    let upstream_errors = proxy.admin_get("/metrics").await.body;
    assert!(
        !upstream_errors
            .lines()
            .any(|l| l.starts_with("ficus_upstream_errors_total") && !l.ends_with(" 0")),
        "no upstream error is counted:\n{upstream_errors}"
    );
    assert_eq!(
        proxy
            .metric(r#"ficus_requests_total{code="400",route="default",upstream="legacy"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn unsolicited_101_from_the_upstream_is_a_502_and_no_tunnel() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf).await;
        let _ = stream
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nRAW-BYTES")
            .await;
        let _ = stream.read(&mut buf).await; // hold the connection until ficus drops it
    });
    let proxy = TestProxy::start(&table_for(addr, "")).await;
    let mut s = TcpStream::connect(proxy.running.proxy_addr).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut s).await;
    assert_eq!(response.status, 502);
    assert!(
        response.body.contains("upstream_protocol"),
        "{}",
        response.body
    );
    assert!(!response.body.contains("RAW-BYTES"));
}

#[tokio::test]
async fn missing_repeated_or_malformed_host_is_rejected_with_bad_host() {
    let backend = Backend::start("legacy").await;
    let proxy = TestProxy::start(&table(&[("legacy", &backend)], "")).await;
    for request in [
        &b"GET /nohost HTTP/1.1\r\n\r\n"[..],
        b"GET /twohosts HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
        b"GET /badhost HTTP/1.1\r\nHost: a b/c@d\r\n\r\n",
        b"GET /userinfo HTTP/1.1\r\nHost: user@a.example\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(proxy.running.proxy_addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let response = read_response(&mut s).await;
        let line = String::from_utf8_lossy(request)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        assert_eq!(response.status, 400, "{line}");
        assert!(
            response.body.contains("\"error\":\"bad_host\""),
            "{line}: {}",
            response.body
        );
    }
    // HTTP/1.0 without Host is still allowed, and a plain host:port passes.
    for request in [
        &b"GET /old HTTP/1.0\r\n\r\n"[..],
        b"GET /ok HTTP/1.1\r\nHost: shop.example.com:8080\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(proxy.running.proxy_addr).await.unwrap();
        s.write_all(request).await.unwrap();
        assert_eq!(read_response(&mut s).await.status, 200);
    }
    let targets: Vec<String> = backend.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(
        targets,
        ["/old", "/ok"],
        "no rejected request reached the upstream"
    );
}
