//! The proxy listener: accept loop, per-connection tasks and graceful drain.
//!
//! Each connection is served by hyper's HTTP/1.1 or HTTP/2 server, chosen by
//! peeking for the HTTP/2 preface (cleartext h2 with prior knowledge), so both
//! share one port. Connection count is bounded by a semaphore taken
//! before `accept`, so excess clients wait in the kernel's backlog instead of
//! costing memory here. On shutdown the listener closes, idle connections are
//! closed, and in-flight requests get `drain_timeout` to finish.

pub mod io;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::config::ServerSettings;
use crate::proxy::{self, Peer, SharedState};
use io::{ConnActivity, ConnTimeouts, TimedIo};

/// Most concurrent HTTP/2 streams per client connection (reliability.md §2).
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// Most request headers per HTTP/1 request; more is answered 431.
pub const H1_MAX_HEADERS: usize = 100;

/// A clonable "stop now" signal.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// Triggers a [`Shutdown`].
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

/// A new signal and its trigger.
pub fn shutdown_channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(tx), Shutdown(rx))
}

impl ShutdownTrigger {
    /// Signals every clone of the [`Shutdown`].
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Resolves once shutdown has been triggered (or the trigger is gone).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// The HTTP/1.1 and HTTP/2 servers, configured once.
///
/// ficus picks the protocol itself (by peeking for the HTTP/2 preface) instead
/// of using hyper-util's auto builder: the auto connection type holds room for
/// both protocols and a rewind buffer on every connection, which cost 5.5 KiB
/// per idle keep-alive connection.
struct Protocols {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

impl Protocols {
    fn new(settings: &ServerSettings) -> Self {
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            // TimedIo enforces the header-read and idle timeouts separately; hyper's
            // own timer would conflate them (it also runs while a keep-alive connection idles).
            .header_read_timeout(None)
            .max_buf_size(settings.max_request_header_bytes)
            .max_headers(H1_MAX_HEADERS);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
            .max_header_list_size(
                u32::try_from(settings.max_request_header_bytes).unwrap_or(u32::MAX),
            );
        Protocols { h1, h2 }
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4): how an h2c client with prior knowledge opens.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a new connection speaks.
enum Protocol {
    Http1,
    Http2,
    /// Closed or silent until the idle timeout: nothing to serve.
    Close,
}

/// Peeks at the first bytes (nothing is consumed) to tell HTTP/2 from HTTP/1.
/// Silence is bounded by the idle timeout, a partial preface by the header-read timeout.
async fn sniff(stream: &TcpStream, timeouts: ConnTimeouts) -> Protocol {
    let mut partial_since: Option<tokio::time::Instant> = None;
    let detect = async {
        let mut buf = [0u8; H2_PREFACE.len()];
        loop {
            let n = match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return Protocol::Close,
                Ok(n) => n,
            };
            if buf[..n] != H2_PREFACE[..n] {
                return Protocol::Http1;
            }
            if n == buf.len() {
                return Protocol::Http2;
            }
            // Only part of the preface has arrived (it normally comes in one segment).
            // peek would return at once again, so give the rest a moment.
            let since = *partial_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() >= timeouts.header_read {
                return Protocol::Close;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(timeouts.idle, detect)
        .await
        .unwrap_or(Protocol::Close)
}

/// Serves proxy traffic on `listener` until `shutdown`, then drains.
pub async fn serve(
    listener: TcpListener,
    state: SharedState,
    settings: ServerSettings,
    mut shutdown: Shutdown,
) {
    let protocols = Arc::new(Protocols::new(&settings));
    let graceful = GracefulShutdown::new();
    // Connection tasks, so the ones still open at the drain deadline can be closed.
    let mut connections = JoinSet::new();
    let permits = Arc::new(Semaphore::new(settings.max_connections));
    let timeouts = ConnTimeouts {
        header_read: settings.header_read_timeout,
        idle: settings.idle_timeout,
    };
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // the semaphore is never closed; nothing to serve with
            },
            () = shutdown.wait() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Usually EMFILE/ENFILE: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.wait() => break,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let protocols = protocols.clone();
        let watcher = graceful.watcher();
        // Reap finished connections as we go: the set stays as large as what is open.
        while connections.try_join_next().is_some() {}
        connections.spawn(async move {
            let protocol = sniff(&stream, timeouts).await;
            let activity = Arc::new(ConnActivity::default());
            let io = TokioIo::new(TimedIo::new(stream, activity.clone(), timeouts));
            let client = Arc::new(Peer::new(peer));
            let service = service_fn(move |request| {
                let (state, client) = (state.clone(), client.clone());
                // Held until the response body ends: the connection's timeouts stay off meanwhile.
                let guard = activity.request_started();
                // Boxed: hyper keeps a slot sized for this future for the connection's whole
                // life, so unboxed its ~4 KB would stay allocated on every idle keep-alive
                // connection. Boxed, the slot holds a pointer and the request's state is
                // freed when its response is done.
                Box::pin(async move {
                    let response = proxy::handle(&state, request, &client).await;
                    Ok::<_, Infallible>(response.map(|body| body.with_guard(guard)))
                })
            });
            let result = match protocol {
                Protocol::Http1 => {
                    watcher
                        .watch(protocols.h1.serve_connection(io, service))
                        .await
                }
                // Boxed: the rarer, larger HTTP/2 state must not size every connection's task.
                Protocol::Http2 => {
                    Box::pin(watcher.watch(protocols.h2.serve_connection(io, service))).await
                }
                Protocol::Close => Ok(()),
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    let open = graceful.count();
    tracing::info!(open_connections = open, drain_timeout = ?settings.drain_timeout, "draining");
    match tokio::time::timeout(settings.drain_timeout, graceful.shutdown()).await {
        Ok(()) => tracing::info!("drained"),
        Err(_) => {
            tracing::warn!(
                open_connections = connections.len(),
                "drain timeout reached; closing remaining connections"
            );
            connections.abort_all();
            while connections.join_next().await.is_some() {}
        }
    }
}
