//! The proxy listener: accept loop, per-connection tasks and graceful drain.
//!
//! Each connection speaks HTTP/1.1 (ficus's own server, [`h1`]) or cleartext HTTP/2 with
//! prior knowledge (hyper's), told apart by peeking for the HTTP/2 preface, so both
//! share one port. Connection count is bounded by a semaphore taken
//! before `accept`, so excess clients wait in the kernel's backlog instead of
//! costing memory here. On shutdown the listener closes, idle connections are
//! closed, and in-flight requests get `drain_timeout` to finish.

pub mod body;
pub mod h1;
pub mod io;

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Context;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::config::ServerSettings;
use crate::message::Call;
use crate::proxy::{self, Peer, ResponseBody, SharedState};
use body::ClientBody;
use io::{ConnActivity, ConnTimeouts, TimedIo};

/// Most concurrent HTTP/2 streams per client connection (reliability.md §2).
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 100;

/// A clonable "stop now" signal.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
    /// Set before the watch changes: lets a connection poll its wait only once it may be over.
    fired: Arc<AtomicBool>,
}

/// Triggers a [`Shutdown`]; dropping it does too.
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
    fired: Arc<AtomicBool>,
}

/// A new signal and its trigger.
pub fn shutdown_channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    let fired = Arc::new(AtomicBool::new(false));
    (
        ShutdownTrigger {
            tx,
            fired: fired.clone(),
        },
        Shutdown { rx, fired },
    )
}

impl ShutdownTrigger {
    /// Signals every clone of the [`Shutdown`].
    pub fn trigger(&self) {
        self.fired.store(true, Ordering::Release);
        self.tx.send_replace(true);
    }
}

impl Drop for ShutdownTrigger {
    fn drop(&mut self) {
        // The sender's own drop then wakes every waiter, whose `wait` resolves.
        self.fired.store(true, Ordering::Release);
    }
}

impl Shutdown {
    /// Resolves once shutdown has been triggered (or the trigger is gone).
    pub async fn wait(&mut self) {
        let _ = self.rx.wait_for(|stop| *stop).await;
    }
}

/// A connection's view of the shutdown signal, for its hot poll loop. Polling a `watch` wait
/// locks its waiter list on every poll (about 370 instructions per proxied request), so the
/// wait is polled once to register the task's waker, and after that only once the trigger
/// has fired, which it does before waking the task. The wait is boxed (once per connection)
/// so that HTTP/1 and HTTP/2 set it up the same way.
struct StopWatch<'a> {
    wait: Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
    fired: Arc<AtomicBool>,
    registered: bool,
    stopped: bool,
}

impl<'a> StopWatch<'a> {
    fn new(shutdown: &'a mut Shutdown) -> Self {
        let fired = shutdown.fired.clone();
        StopWatch {
            // Unconstrained: tokio's task budget could otherwise turn the registering first
            // poll into a `Pending` that registers nothing, never to be polled again.
            wait: Box::pin(tokio::task::unconstrained(shutdown.wait())),
            fired,
            registered: false,
            stopped: false,
        }
    }

    /// Whether shutdown has been seen; once true, stays true.
    fn poll_stopped(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.stopped && (!self.registered || self.fired.load(Ordering::Acquire)) {
            self.registered = true;
            self.stopped = self.wait.as_mut().poll(cx).is_ready();
        }
        self.stopped
    }
}

/// The HTTP/1.1 and HTTP/2 servers, configured once.
///
/// ficus picks the protocol itself (by peeking for the HTTP/2 preface): HTTP/1.1 is
/// its own server ([`h1`]), HTTP/2 is hyper's.
struct Protocols {
    h1: h1::Limits,
    h2: http2::Builder<TokioExecutor>,
}

impl Protocols {
    fn new(settings: &ServerSettings) -> Self {
        let h1 = h1::Limits {
            max_head: settings.max_request_header_bytes,
            header_read: settings.header_read_timeout,
            idle: settings.idle_timeout,
            stream_idle: settings.stream_idle_timeout,
        };
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

/// One client connection's service: every request goes through [`proxy::handle`].
#[derive(Clone)]
struct ConnService {
    state: SharedState,
    client: Arc<Peer>,
    activity: Arc<ConnActivity>,
}

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Infallible>> + Send>>;

impl Service<Request<Incoming>> for ConnService {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, request: Request<Incoming>) -> ResponseFuture {
        let (state, client) = (self.state.clone(), self.client.clone());
        // Held until the response body ends: the connection's timeouts stay off meanwhile.
        let guard = self.activity.request_started();
        // Boxed: hyper keeps a slot sized for this future for the connection's whole
        // life, so unboxed its ~4 KB would stay allocated on every idle keep-alive
        // connection. Boxed, the slot holds a pointer and the request's state is
        // freed when its response is done.
        Box::pin(async move {
            let request = Call::from_http2(request.map(ClientBody::Http2));
            let response = proxy::handle(&state, request, &client).await;
            Ok(response.map(|body| body.with_guard(guard)).into_response())
        })
    }
}

/// Why a connection's task ended with an error (logged at debug level).
type ConnError = Box<dyn std::error::Error + Send + Sync>;

/// Serves HTTP/2 on one connection until the client closes, a timeout passes or `shutdown`.
async fn serve_http2(
    h2: &http2::Builder<TokioExecutor>,
    io: TimedIo<TcpStream>,
    service: ConnService,
    shutdown: &mut Shutdown,
) -> Result<(), ConnError> {
    let mut stop = StopWatch::new(shutdown);
    let mut stopping = false;
    // Boxed: the rarer, larger HTTP/2 state must not size every connection's task.
    let mut conn = Box::pin(h2.serve_connection(TokioIo::new(io), service));
    poll_fn(|cx| {
        if !stopping && stop.poll_stopped(cx) {
            stopping = true;
            conn.as_mut().graceful_shutdown();
        }
        conn.as_mut().poll(cx)
    })
    .await?;
    Ok(())
}

/// Serves one accepted connection until it ends.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    state: SharedState,
    protocols: &Protocols,
    timeouts: ConnTimeouts,
    mut shutdown: Shutdown,
) {
    let mut gauge = state.metrics.connection();
    let protocol = tokio::select! {
        protocol = sniff(&stream, timeouts) => protocol,
        () = shutdown.wait() => Protocol::Close,
    };
    let result = match protocol {
        Protocol::Http1 => {
            let client = Peer::new(peer);
            let mut stop = StopWatch::new(&mut shutdown);
            h1::serve(
                stream,
                &state,
                &client,
                &protocols.h1,
                &mut gauge,
                &mut stop,
            )
            .await
        }
        Protocol::Http2 => {
            let activity = Arc::new(ConnActivity::default());
            let service = ConnService {
                state,
                client: Arc::new(Peer::new(peer)),
                activity: activity.clone(),
            };
            let io = TimedIo::new(stream, activity, timeouts);
            serve_http2(&protocols.h2, io, service, &mut shutdown).await
        }
        Protocol::Close => Ok(()),
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Serves proxy traffic on `listener` until `shutdown`, then drains.
pub async fn serve(
    listener: TcpListener,
    state: SharedState,
    settings: ServerSettings,
    mut shutdown: Shutdown,
) {
    let protocols = Arc::new(Protocols::new(&settings));
    // Connection tasks: drained on shutdown, and closed if still open at the drain deadline.
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
        let shutdown = shutdown.clone();
        // Reap finished connections as we go: the set stays as large as what is open.
        while connections.try_join_next().is_some() {}
        connections.spawn(async move {
            serve_connection(stream, peer, state, &protocols, timeouts, shutdown).await;
            drop(permit);
        });
    }
    drop(listener);
    // Every connection saw the signal: idle ones close now, busy ones after their response.
    while connections.try_join_next().is_some() {}
    let open = connections.len();
    tracing::info!(open_connections = open, drain_timeout = ?settings.drain_timeout, "draining");
    let drained = async { while connections.join_next().await.is_some() {} };
    match tokio::time::timeout(settings.drain_timeout, drained).await {
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
