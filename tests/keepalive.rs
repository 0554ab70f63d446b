//! HTTP/1 keep-alive connections give their buffers back while they idle
//! (`ficus_client_connections{state="idle"}`) and go on serving as if nothing happened:
//! same socket, no `Connection: close`, no byte of a request or response lost.
//!
//! Real time passes in some tests, because idling past the release delay is what is
//! tested; those waits are commented.

mod support;
use support::*;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const IDLE: &str = "ficus_client_connections{state=\"idle\"}";
const ACTIVE: &str = "ficus_client_connections{state=\"active\"}";
/// Comfortably past ficus's release delay (500 ms).
const PAST_RELEASE: Duration = Duration::from_millis(1500);

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: shop.example.com\r\n\r\n").into_bytes()
}

/// Sends a GET of `path` on `stream` and checks the answer is a keep-alive 200 from `legacy`.
async fn exchange(stream: &mut TcpStream, path: &str) {
    stream.write_all(&get(path)).await.unwrap();
    let answer = read_response(stream).await;
    assert_eq!(answer.status, 200, "{path}");
    assert_eq!(answer.body, "legacy");
    assert_eq!(
        answer.header("connection"),
        None,
        "{path}: {:?}",
        answer.headers
    );
}

/// Waits until ficus counts no client connection: `what` was closed by the client.
/// Polls `/metrics`, which has no change feed, bounded by `EVENT_TIMEOUT`.
async fn until_none_counted(proxy: &TestProxy, what: &str) {
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    while proxy.metric(ACTIVE).await + proxy.metric(IDLE).await > 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: still counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn targets(backend: &Backend) -> Vec<String> {
    backend.requests().into_iter().map(|r| r.target).collect()
}

/// A backend, ficus in front, and a client connection that made one request (`/first`)
/// and has since been released.
async fn released_connection() -> (Backend, TestProxy, TcpStream) {
    let legacy = Backend::start("legacy").await;
    let proxy = TestProxy::start(&table(&[("legacy", &legacy)], "")).await;
    let mut stream = TcpStream::connect(proxy.running.proxy_addr).await.unwrap();
    exchange(&mut stream, "/first").await;
    assert_eq!(proxy.wait_for_metric(IDLE, 1.0).await, 1.0);
    (legacy, proxy, stream)
}

#[tokio::test]
async fn idle_connection_is_released_and_serves_its_next_request() {
    let (legacy, proxy, mut stream) = released_connection().await;
    assert_eq!(proxy.metric(ACTIVE).await, 0.0);

    // The same socket, back to work, and again released once it idles.
    exchange(&mut stream, "/second").await;
    // Active again (or, on a slow machine, already released again): counted once.
    assert_eq!(proxy.metric(IDLE).await + proxy.metric(ACTIVE).await, 1.0);
    exchange(&mut stream, "/third").await;
    assert_eq!(proxy.wait_for_metric(IDLE, 1.0).await, 1.0);
    exchange(&mut stream, "/fourth").await;
    assert_eq!(targets(&legacy), ["/first", "/second", "/third", "/fourth"]);

    drop(stream);
    until_none_counted(&proxy, "closed connection").await;
}

/// The gauge cannot show this release (the connection does not park: it has bytes to read),
/// so the test shows that nothing is lost; dropping the unread bytes makes it fail.
#[tokio::test]
async fn part_of_a_next_request_read_with_the_last_one_survives_the_release() {
    let legacy = Backend::start("legacy").await;
    let proxy = TestProxy::start(&table(&[("legacy", &legacy)], "")).await;
    let mut stream = TcpStream::connect(proxy.running.proxy_addr).await.unwrap();

    // One write: a whole request and the start of the next.
    let mut bytes = get("/first");
    bytes.extend_from_slice(b"GET /second HTTP/1.1\r\nHo");
    stream.write_all(&bytes).await.unwrap();
    let answer = read_response(&mut stream).await;
    assert_eq!(answer.status, 200);
    // Idle past the release delay with those bytes held: the time under test.
    tokio::time::sleep(PAST_RELEASE).await;
    stream
        .write_all(b"st: shop.example.com\r\n\r\n")
        .await
        .unwrap();
    let answer = read_response(&mut stream).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("connection"), None);
    exchange(&mut stream, "/third").await;
    assert_eq!(targets(&legacy), ["/first", "/second", "/third"]);
}

#[tokio::test]
async fn large_response_paused_near_its_end_arrives_whole() {
    const SIZE: usize = 8 << 20;
    let legacy = Backend::with(
        "legacy",
        responder(|r| {
            let body = if r.target == "/big" {
                "x".repeat(SIZE)
            } else {
                "legacy".to_owned()
            };
            (http::StatusCode::OK, vec![], body)
        }),
    )
    .await;
    let proxy = TestProxy::start(&table(&[("legacy", &legacy)], "")).await;
    // A small receive window, so most of the response waits on ficus's side.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(proxy.running.proxy_addr).await.unwrap();

    stream.write_all(&get("/big")).await.unwrap();
    let mut received = Vec::with_capacity(SIZE + 1024);
    let mut chunk = vec![0; 64 * 1024];
    let head_end = loop {
        let n = read_some(&mut stream, &mut chunk).await;
        received.extend_from_slice(&chunk[..n]);
        if let Some(i) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    // Stop reading short of the end, for longer than the release delay: the time under test.
    // (Whether the rest then waits in the kernel or in ficus depends on the kernel's buffer
    // sizing; that a release waits for unsent bytes is checked in `server::io`'s tests.)
    while received.len() < head_end + SIZE - 40 * 1024 {
        let n = read_some(&mut stream, &mut chunk).await;
        received.extend_from_slice(&chunk[..n]);
    }
    tokio::time::sleep(PAST_RELEASE).await;
    while received.len() < head_end + SIZE {
        let n = read_some(&mut stream, &mut chunk).await;
        received.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(received.len(), head_end + SIZE, "nothing after the body");
    assert!(received[head_end..].iter().all(|&b| b == b'x'));
    exchange(&mut stream, "/after").await;
}

/// Reads at least one byte, bounded by `EVENT_TIMEOUT`.
async fn read_some(stream: &mut TcpStream, chunk: &mut [u8]) -> usize {
    let n = tokio::time::timeout(EVENT_TIMEOUT, stream.read(chunk))
        .await
        .expect("no bytes in time")
        .unwrap();
    assert!(n > 0, "closed early");
    n
}

#[tokio::test]
async fn shutdown_closes_released_connections_at_once() {
    let (_legacy, proxy, mut stream) = released_connection().await;

    let started = tokio::time::Instant::now();
    proxy.running.shutdown();
    // The default drain timeout is 30 s; an idle connection does not wait for it.
    tokio::time::timeout(EVENT_TIMEOUT, proxy.running.wait())
        .await
        .expect("stopped");
    assert!(started.elapsed() < Duration::from_secs(5));
    let mut rest = [0; 16];
    let n = tokio::time::timeout(EVENT_TIMEOUT, stream.read(&mut rest))
        .await
        .expect("connection closed");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
}

#[tokio::test]
async fn empty_line_after_a_request_is_not_a_started_head() {
    // RFC 9112 §2.2: a client may send an extra CRLF after a request. Released with it
    // unread, the connection must still idle under `idle_timeout`, not `header_read_timeout`.
    let legacy = Backend::start("legacy").await;
    let server = "[server]\nheader_read_timeout = \"300ms\"\nidle_timeout = \"10s\"\n";
    let proxy = TestProxy::start(&table(&[("legacy", &legacy)], server)).await;
    let mut stream = TcpStream::connect(proxy.running.proxy_addr).await.unwrap();
    let mut bytes = get("/first");
    bytes.extend_from_slice(b"\r\n");
    stream.write_all(&bytes).await.unwrap();
    assert_eq!(read_response(&mut stream).await.status, 200);
    assert_eq!(
        proxy.wait_for_metric(IDLE, 1.0).await,
        1.0,
        "released and parked"
    );
    // Idle for longer than the header-read timeout: the time under test.
    tokio::time::sleep(PAST_RELEASE).await;
    exchange(&mut stream, "/second").await;
    assert_eq!(targets(&legacy), ["/first", "/second"]);
}

/// Reads a response head (for HEAD, which has no body to read) and returns its status.
async fn read_head_status(stream: &mut TcpStream) -> u16 {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(EVENT_TIMEOUT, stream.read(&mut byte))
            .await
            .expect("no response in time")
            .unwrap();
        assert_eq!(n, 1, "closed during the head");
        head.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line")
}

#[tokio::test]
async fn connections_are_released_after_every_kind_of_exchange() {
    let legacy = Backend::start("legacy").await;
    let proxy = TestProxy::start(&table(&[("legacy", &legacy)], "")).await;
    let http10 = b"GET /old HTTP/1.0\r\nHost: shop.example.com\r\nConnection: keep-alive\r\n\r\n";
    let head = b"HEAD /head HTTP/1.1\r\nHost: shop.example.com\r\n\r\n";
    let post = b"POST /post HTTP/1.1\r\nHost: shop.example.com\r\nContent-Length: 5\r\n\r\nhello";
    let chunked = b"POST /chunked HTTP/1.1\r\nHost: shop.example.com\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let cases: [(&str, &[u8]); 4] = [
        ("HTTP/1.0 keep-alive", http10),
        ("HEAD", head),
        ("POST with a length", post),
        ("POST, chunked", chunked),
    ];
    for (case, request) in cases {
        let mut stream = TcpStream::connect(proxy.running.proxy_addr).await.unwrap();
        // Twice: the first exchange on a new connection, the second after its release.
        for round in ["first", "after the release"] {
            stream.write_all(request).await.unwrap();
            let status = if request.starts_with(b"HEAD") {
                read_head_status(&mut stream).await
            } else {
                read_response(&mut stream).await.status
            };
            assert_eq!(status, 200, "{case}, {round}");
            assert_eq!(
                proxy.wait_for_metric(IDLE, 1.0).await,
                1.0,
                "{case}, {round}"
            );
        }
        drop(stream);
        until_none_counted(&proxy, case).await;
    }
    let seen: Vec<(String, usize)> = legacy
        .requests()
        .into_iter()
        .map(|r| (r.target, r.body_len))
        .collect();
    let want = [("/old", 0), ("/head", 0), ("/post", 5), ("/chunked", 5)]
        .into_iter()
        .flat_map(|(target, len)| [(target.to_owned(), len), (target.to_owned(), len)]);
    assert_eq!(seen, want.collect::<Vec<_>>());
}
