//! Graceful shutdown: stop accepting, report not-ready, let in-flight requests finish.

mod support;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;
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
