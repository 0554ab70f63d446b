//! A fast local backend for `bench/run.sh`: answers every request with a small
//! body, draining (and counting) request bodies without buffering them.
//!
//! `cargo run --release --example bench_backend -- 127.0.0.1:18080 [more addresses...]`

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

static BODY: &[u8] = b"hello from the backend\n";

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut body = request.into_body();
    // Drain the request body frame by frame: uploads stream, nothing is held.
    while let Some(Ok(_frame)) = body.frame().await {}
    Ok(Response::new(Full::new(Bytes::from_static(BODY))))
}

fn main() -> std::io::Result<()> {
    let addresses: Vec<String> = std::env::args().skip(1).collect();
    let addresses = if addresses.is_empty() {
        vec!["127.0.0.1:18080".to_owned()]
    } else {
        addresses
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut tasks = Vec::new();
        for address in addresses {
            let listener = TcpListener::bind(&address).await?;
            tasks.push(tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(async move {
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service_fn(answer))
                            .await;
                    });
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
        Ok(())
    })
}
