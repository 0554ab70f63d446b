//! Bodies stream through ficus in both directions: 100 MB passes without the
//! process's peak memory growing by anything like 100 MB.
//!
//! One test in this binary on purpose: it reads the process's peak RSS, which
//! other tests running in parallel would disturb.

mod support;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::net::TcpListener;

const BODY: u64 = 100 * 1024 * 1024;

/// Peak resident set size of this process, in KiB (Linux `/proc/self/status` VmHWM).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A backend that counts uploaded bytes frame by frame (never buffering) and
/// answers `/download` with a lazily generated 100 MB body.
async fn counting_backend() -> (std::net::SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let uploaded = Arc::new(AtomicU64::new(0));
    let counter = uploaded.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let counter = counter.clone();
                    async move {
                        if request.uri().path() == "/download" {
                            return Ok::<_, Infallible>(Response::new(
                                ChunkBody::new(BODY).boxed(),
                            ));
                        }
                        let mut body = request.into_body();
                        let mut total = 0u64;
                        while let Some(Ok(frame)) = body.frame().await {
                            if let Some(data) = frame.data_ref() {
                                total += data.len() as u64;
                            }
                        }
                        counter.store(total, Ordering::SeqCst);
                        Ok(Response::new(
                            Full::new(Bytes::from(total.to_string()))
                                .map_err(|never| match never {})
                                .boxed(),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, uploaded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabyte_bodies_stream_both_ways_in_bounded_memory() {
    let (addr, uploaded) = counting_backend().await;
    let toml =
        format!("default = \"legacy\"\n[upstreams.legacy]\nendpoints = [\"http://{addr}\"]\n");
    let proxy = TestProxy::start(&toml).await;
    let client: Client<_, ChunkBody> = Client::builder(TokioExecutor::new()).build_http();
    let baseline = peak_rss_kib();

    let upload = Request::post(proxy.url("/upload"))
        .body(ChunkBody::new(BODY))
        .unwrap();
    let response = client.request(upload).await.unwrap();
    assert_eq!(response.status(), 200);
    let echoed = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        echoed,
        BODY.to_string().as_bytes(),
        "the backend received every byte"
    );
    assert_eq!(uploaded.load(Ordering::SeqCst), BODY);

    let download = Request::get(proxy.url("/download"))
        .body(ChunkBody::new(0))
        .unwrap();
    let mut body = client.request(download).await.unwrap().into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.unwrap().data_ref() {
            received += data.len() as u64;
        }
    }
    assert_eq!(received, BODY);

    if let (Some(before), Some(after)) = (baseline, peak_rss_kib()) {
        let growth_mib = (after.saturating_sub(before)) / 1024;
        // Client, proxy and backend all live in this process; 200 MB moved through it.
        assert!(
            growth_mib < 32,
            "peak RSS grew by {growth_mib} MiB while streaming 2 x 100 MiB"
        );
    }
}
