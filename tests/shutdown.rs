//! Graceful shutdown: stop accepting, report not-ready, let in-flight requests finish.

mod support;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

#[tokio::test]
async fn shutdown_lets_in_flight_request_finish_and_refuses_new_connections() {
    let gate = Arc::new(Semaphore::new(0));
    let legacy = Backend::with("legacy", Behaviour::Gated(gate.clone())).await;
    let proxy = TestProxy::start(&table(&[("legacy", &legacy)], "")).await;
    let client = proxy.client.clone();
    let url = proxy.url("/slow");
    let in_flight = tokio::spawn(async move {
        let request = http::Request::get(url).body(Default::default()).unwrap();
        fetch(&client, request).await
    });
    legacy.wait_for_arrivals(1).await;

    proxy.running.shutdown();
    assert_eq!(
        proxy.admin_get("/readyz").await.status,
        503,
        "readiness fails as soon as draining starts"
    );
    assert_eq!(
        proxy.admin_get("/healthz").await.status,
        200,
        "liveness stays up while draining"
    );
    // The listener closes promptly: new connections are refused.
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while tokio::net::TcpStream::connect(proxy.running.proxy_addr)
        .await
        .is_ok()
    {
        assert!(
            Instant::now() < deadline,
            "listener still accepting after shutdown"
        );
        tokio::task::yield_now().await;
    }

    gate.add_permits(1);
    let answer = in_flight.await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, "legacy");
    tokio::time::timeout(EVENT_TIMEOUT, proxy.running.wait())
        .await
        .expect("drained and stopped");
}

#[tokio::test]
async fn drain_timeout_bounds_shutdown() {
    let gate = Arc::new(Semaphore::new(0));
    let legacy = Backend::with("legacy", Behaviour::Gated(gate)).await;
    let toml = table(
        &[("legacy", &legacy)],
        "[server]\ndrain_timeout = \"300ms\"\n",
    );
    let proxy = TestProxy::start(&toml).await;
    let client = proxy.client.clone();
    let url = proxy.url("/never");
    let stuck = tokio::spawn(async move {
        client
            .request(http::Request::get(url).body(Default::default()).unwrap())
            .await
    });
    legacy.wait_for_arrivals(1).await;
    let started = Instant::now();
    proxy.running.shutdown();
    tokio::time::timeout(EVENT_TIMEOUT, proxy.running.wait())
        .await
        .expect("shutdown finished");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "stopped before the drain timeout: {took:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "drain timeout not enforced: {took:?}"
    );
    // At the deadline the connection still open is closed: the stuck client sees an error.
    let outcome = tokio::time::timeout(EVENT_TIMEOUT, stuck)
        .await
        .expect("stuck request ended")
        .unwrap();
    assert!(
        outcome.is_err(),
        "the connection was cut, not answered: {outcome:?}"
    );
}

#[tokio::test]
async fn shutdown_lets_slow_readers_have_their_whole_responses() {
    // Clients that have not read their responses when shutdown starts: what ficus still
    // holds for them must be sent before their connections close. Where a response's end
    // sits (kernel or ficus) depends on the kernel's buffer sizing, so a spread of sizes
    // runs at once, each with and without `Connection: close`.
    const SIZES: [usize; 6] = [
        2_400_000, 2_700_000, 2_900_000, 3_100_000, 3_300_000, 3_600_000,
    ];
    let legacy = Backend::with(
        "legacy",
        responder(|r| {
            let size = r.target.trim_start_matches('/').parse().unwrap_or(0);
            (http::StatusCode::OK, vec![], "x".repeat(size))
        }),
    )
    .await;
    let proxy = TestProxy::start(&table(&[("legacy", &legacy)], "")).await;
    let (read_now, reading) = tokio::sync::watch::channel(false);
    let mut clients = Vec::new();
    for size in SIZES {
        for close in [true, false] {
            let addr = proxy.running.proxy_addr;
            let mut reading = reading.clone();
            clients.push(tokio::spawn(async move {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.set_recv_buffer_size(4096).unwrap();
                let mut stream = socket.connect(addr).await.unwrap();
                let connection = if close { "Connection: close\r\n" } else { "" };
                let request =
                    format!("GET /{size} HTTP/1.1\r\nHost: shop.example.com\r\n{connection}\r\n");
                stream.write_all(request.as_bytes()).await.unwrap();
                reading.wait_for(|&go| go).await.unwrap();
                let mut received = Vec::with_capacity(size + 1024);
                tokio::time::timeout(EVENT_TIMEOUT, stream.read_to_end(&mut received))
                    .await
                    .expect("connection not closed in time")
                    .unwrap();
                let head_end = received.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                (size, close, received.len() - head_end)
            }));
        }
    }
    legacy.wait_for_arrivals(clients.len()).await;
    // The clients do not read for a while, so ficus fills every buffer: the time under test.
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.running.shutdown();
    // Slow readers through a shutdown: they go on not reading for a while after it starts,
    // the time under test.
    tokio::time::sleep(Duration::from_millis(300)).await;
    read_now.send_replace(true);
    for client in clients {
        let (size, close, body) = client.await.unwrap();
        assert_eq!(
            body, size,
            "response of {size} bytes cut (connection: close {close})"
        );
    }
}
