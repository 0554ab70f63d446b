//! A fast local backend for `bench/run.sh`: answers every request with a small
//! body, draining (and counting) request bodies without buffering them.
//!
//! `cargo run --release --example bench_backend -- 127.0.0.1:18080 [more addresses...]`
//!
//! An address may end in `@DELAY` (`127.0.0.1:18086@200ms`, or `@2s`): requests on that
//! listener are answered only after sleeping that long, to stand in for a slow service
//! (scenario 7's slow shadow target). Listeners without a delay take the plain path.

use std::convert::Infallible;
use std::time::Duration;

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

async fn answer_after(
    delay: Duration,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    tokio::time::sleep(delay).await;
    answer(request).await
}

/// `ADDR` or `ADDR@DELAY`, DELAY being whole milliseconds (`200ms`) or seconds (`2s`).
fn parse_address(arg: &str) -> std::io::Result<(String, Option<Duration>)> {
    let Some((address, delay)) = arg.split_once('@') else {
        return Ok((arg.to_owned(), None));
    };
    let invalid = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{arg}: expected ADDR@200ms or ADDR@2s"),
        )
    };
    let delay = if let Some(ms) = delay.strip_suffix("ms") {
        Duration::from_millis(ms.parse().map_err(|_| invalid())?)
    } else if let Some(s) = delay.strip_suffix('s') {
        Duration::from_secs(s.parse().map_err(|_| invalid())?)
    } else {
        return Err(invalid());
    };
    Ok((address.to_owned(), Some(delay)))
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = if args.is_empty() {
        vec!["127.0.0.1:18080".to_owned()]
    } else {
        args
    };
    let listeners = args
        .iter()
        .map(|arg| parse_address(arg))
        .collect::<std::io::Result<Vec<_>>>()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut tasks = Vec::new();
        for (address, delay) in listeners {
            let listener = TcpListener::bind(&address).await?;
            tasks.push(tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(async move {
                        let io = TokioIo::new(stream);
                        let _ = match delay {
                            None => {
                                http1::Builder::new()
                                    .serve_connection(io, service_fn(answer))
                                    .await
                            }
                            Some(delay) => {
                                http1::Builder::new()
                                    .serve_connection(
                                        io,
                                        service_fn(move |request| answer_after(delay, request)),
                                    )
                                    .await
                            }
                        };
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
