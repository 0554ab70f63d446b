//! Client connection timeouts: a started request head must finish within
//! `header_read_timeout`, an idle connection is closed after `idle_timeout`,
//! and neither cuts a request that is waiting on its upstream.
//!
//! Real time passes here because time is what is tested; every wait is bounded
//! and every bound is checked both ways (not too early, not much too late).

mod support;
use support::*;

use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const HEADER_READ: Duration = Duration::from_millis(300);

/// `[server]` with the short header-read timeout and the given idle timeout.
fn server(idle: &str) -> String {
    format!("[server]\nheader_read_timeout = \"300ms\"\nidle_timeout = \"{idle}\"\n")
}

/// How the server ended a connection.
#[derive(Debug)]
struct Closed {
    /// Time from the caller's reference instant to the close.
    after: Duration,
    /// Whatever the server wrote before closing.
    bytes: Vec<u8>,
}

/// Reads until the server closes `stream` (EOF or reset); panics if it is
/// still open `limit` after `since`.
async fn until_closed(stream: &mut TcpStream, since: Instant, limit: Duration) -> Closed {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(since + limit, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Closed {
                    after: since.elapsed(),
                    bytes,
                };
            }
            Ok(Ok(n)) => bytes.extend_from_slice(&chunk[..n]),
            Err(_) => panic!(
                "connection still open after {limit:?}; received {:?}",
                String::from_utf8_lossy(&bytes)
            ),
        }
    }
}

/// Reads one content-length-framed response and returns its status.
async fn read_status(stream: &mut TcpStream) -> u16 {
    read_response(stream).await.status
}

/// Asserts that the backend's only request is a GET of `path` sent now: nothing
/// from the cut connection was forwarded, and ficus still serves.
async fn assert_only_follow_up_arrives(proxy: &TestProxy, backend: &Backend, path: &str) {
    assert_eq!(proxy.get(path).await.status, StatusCode::OK);
    let targets: Vec<String> = backend.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, [path]);
}

#[tokio::test]
async fn partial_request_head_is_closed_after_header_read_timeout() {
    let legacy = Backend::start("legacy").await;
    let proxy = TestProxy::start(&table(&[("legacy", &legacy)], &server("3s"))).await;
    let mut stream = TcpStream::connect(proxy.running.proxy_addr).await.unwrap();

    let start = Instant::now();
    stream
        .write_all(b"GET /partial HTTP/1.1\r\nHost: shop.example.com\r\n")
        .await
        .unwrap();
    let closed = until_closed(&mut stream, start, Duration::from_secs(5)).await;

    assert!(
        closed.after >= HEADER_READ,
        "closed after {:?}",
        closed.after
    );
    assert!(
        closed.after < Duration::from_millis(1500),
        "closed after {:?}: that is the idle timeout, not the header-read timeout",
        closed.after
    );
    assert!(
        closed.bytes.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&closed.bytes)
    );
    assert_only_follow_up_arrives(&proxy, &legacy, "/after").await;
}

#[tokio::test]
async fn trickled_request_head_is_closed_after_header_read_timeout() {
    let legacy = Backend::start("legacy").await;
    let proxy = TestProxy::start(&table(&[("legacy", &legacy)], &server("3s"))).await;
    let stream = TcpStream::connect(proxy.running.proxy_addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();

    // Slowloris: one byte of a never-ending header every 50 ms, so bytes keep moving.
    let start = Instant::now();
    writer
        .write_all(b"GET /slow HTTP/1.1\r\nX-Slow: ")
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        let mut sent = 0usize;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if writer.write_all(b"a").await.is_err() {
                break;
            }
            sent += 1;
        }
        sent
    });
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut bytes)).await;
    let after = start.elapsed();
    trickle.abort();

    assert!(read.is_ok(), "still open after 5 s of trickling");
    assert!(after >= HEADER_READ, "closed after {after:?}");
    assert!(
        after < Duration::from_millis(1500),
        "closed after {after:?}"
    );
    assert_only_follow_up_arrives(&proxy, &legacy, "/after").await;
}

#[tokio::test]
async fn idle_keep_alive_connection_outlives_header_read_timeout_and_closes_at_idle_timeout() {
    let legacy = Backend::start("legacy").await;
    let proxy = TestProxy::start(&table(&[("legacy", &legacy)], &server("1s"))).await;
    let mut stream = TcpStream::connect(proxy.running.proxy_addr).await.unwrap();

    let start = Instant::now();
    stream
        .write_all(b"GET /once HTTP/1.1\r\nHost: shop.example.com\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_status(&mut stream).await, 200);
    let closed = until_closed(&mut stream, start, Duration::from_secs(5)).await;

    // The idle clock starts when the response is written, after `start`.
    assert!(
        closed.after >= Duration::from_secs(1),
        "closed after {:?}",
        closed.after
    );
    assert!(
        closed.after < Duration::from_millis(2500),
        "closed after {:?}",
        closed.after
    );
    assert!(
        closed.bytes.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&closed.bytes)
    );
}

#[tokio::test]
async fn keep_alive_connection_serves_a_request_after_a_pause_longer_than_header_read_timeout() {
    let legacy = Backend::start("legacy").await;
    let proxy = TestProxy::start(&table(&[("legacy", &legacy)], &server("3s"))).await;
    let mut stream = TcpStream::connect(proxy.running.proxy_addr).await.unwrap();
    stream
        .write_all(b"GET /first HTTP/1.1\r\nHost: shop.example.com\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_status(&mut stream).await, 200);

    // Waiting between requests is idling, not reading a head.
    tokio::time::sleep(HEADER_READ * 2).await;
    stream
        .write_all(b"GET /second HTTP/1.1\r\nHost: shop.example.com\r\n\r\n")
        .await
        .unwrap();

    assert_eq!(read_status(&mut stream).await, 200);
    let targets: Vec<String> = legacy.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/first", "/second"]);
}

#[tokio::test]
async fn silent_connection_is_closed_at_idle_timeout() {
    let legacy = Backend::start("legacy").await;
    let proxy = TestProxy::start(&table(&[("legacy", &legacy)], &server("1s"))).await;

    let start = Instant::now();
    let mut stream = TcpStream::connect(proxy.running.proxy_addr).await.unwrap();
    let closed = until_closed(&mut stream, start, Duration::from_secs(5)).await;

    assert!(
        closed.after >= Duration::from_secs(1),
        "closed after {:?}: a silent connection is idle, not reading a head",
        closed.after
    );
    assert!(
        closed.after < Duration::from_millis(2500),
        "closed after {:?}",
        closed.after
    );
    assert!(
        closed.bytes.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&closed.bytes)
    );
}

#[tokio::test]
async fn slow_upstream_response_is_not_cut_by_connection_timeouts() {
    let legacy = Backend::start("legacy").await;
    // Longer than both connection timeouts, shorter than the route's.
    let delay = Duration::from_millis(1500);
    let slow = Backend::with("slow", Behaviour::Delay(delay)).await;
    let toml = table(
        &[("legacy", &legacy), ("slow", &slow)],
        &format!(
            "{}[[routes]]\nname = \"report\"\nprefix = \"/report\"\nupstream = \"slow\"\ntimeout = \"5s\"\n",
            server("1s")
        ),
    );
    let proxy = TestProxy::start(&toml).await;
    let mut stream = TcpStream::connect(proxy.running.proxy_addr).await.unwrap();

    let start = Instant::now();
    stream
        .write_all(b"GET /report HTTP/1.1\r\nHost: shop.example.com\r\n\r\n")
        .await
        .unwrap();

    assert_eq!(read_status(&mut stream).await, 200);
    assert!(
        start.elapsed() >= delay,
        "answered after {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn partial_http2_preface_is_closed_after_header_read_timeout() {
    let legacy = Backend::start("legacy").await;
    let proxy = TestProxy::start(&table(&[("legacy", &legacy)], &server("3s"))).await;
    let mut stream = TcpStream::connect(proxy.running.proxy_addr).await.unwrap();
    let start = Instant::now();
    stream.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let closed = until_closed(&mut stream, start, Duration::from_secs(5)).await;
    assert!(
        closed.after >= HEADER_READ,
        "closed after {:?}",
        closed.after
    );
    assert!(
        closed.after < Duration::from_millis(1500),
        "closed after {:?}: the idle timeout, not the header-read one",
        closed.after
    );
    assert!(legacy.requests().is_empty());
}

/// An HTTP/2 frame: 24-bit length, type, flags, stream id, payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, len: u32) -> Vec<u8> {
    let mut frame = len.to_be_bytes()[1..].to_vec();
    frame.extend([kind, flags]);
    frame.extend(stream.to_be_bytes());
    frame
}

#[tokio::test]
async fn http2_header_block_trickled_byte_by_byte_is_closed_after_header_read_timeout() {
    let legacy = Backend::start("legacy").await;
    let proxy = TestProxy::start(&table(&[("legacy", &legacy)], &server("3s"))).await;
    let mut stream = TcpStream::connect(proxy.running.proxy_addr).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(h2_frame(0x4, 0, 0, 0)); // SETTINGS
    hello.extend(h2_frame(0x1, 0x4, 1, 1000)); // HEADERS announcing 1000 bytes that never all come
    let start = Instant::now();
    stream.write_all(&hello).await.unwrap();
    // Trickle header-block bytes faster than either timeout; whatever the server sends is
    // drained, and the first EOF or error is when it closed.
    let closed_after = loop {
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break start.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => {}
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "still open after the idle timeout"
        );
        if stream.write_all(&[0x86]).await.is_err() {
            break start.elapsed();
        }
    };
    assert!(closed_after >= HEADER_READ, "closed after {closed_after:?}");
    assert!(
        closed_after < Duration::from_millis(1500),
        "closed after {closed_after:?}: not the header-read timeout"
    );
    assert!(legacy.requests().is_empty());
}
