//! The proxy listener: accept loop, per-connection tasks and graceful drain.
//!
//! Connections are served by hyper's auto builder (HTTP/1.1 and cleartext
//! HTTP/2 on one port). Connection count is bounded by a semaphore taken
//! before `accept`, so excess clients wait in the kernel's backlog instead of
//! costing memory here. On shutdown the listener closes, idle connections are
//! closed, and in-flight requests get `drain_timeout` to finish.

pub mod io;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
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

fn builder(settings: &ServerSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // TimedIo enforces the header-read and idle timeouts separately; hyper's
        // own timer would conflate them (it also runs while a keep-alive connection idles).
        .header_read_timeout(None)
        .max_buf_size(settings.max_request_header_bytes)
        .max_headers(H1_MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_header_list_size(u32::try_from(settings.max_request_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// Serves proxy traffic on `listener` until `shutdown`, then drains.
pub async fn serve(
    listener: TcpListener,
    state: SharedState,
    settings: ServerSettings,
    mut shutdown: Shutdown,
) {
    let builder = Arc::new(builder(&settings));
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
        let activity = Arc::new(ConnActivity::default());
        let io = TokioIo::new(TimedIo::new(stream, activity.clone(), timeouts));
        let state = state.clone();
        let client = Arc::new(Peer::new(peer));
        let service = service_fn(move |request| {
            let (state, client) = (state.clone(), client.clone());
            // Held until the response body ends: the connection's timeouts stay off meanwhile.
            let guard = activity.request_started();
            async move {
                let response = proxy::handle(&state, request, &client).await;
                Ok::<_, Infallible>(response.map(|body| body.with_guard(guard)))
            }
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        // Reap finished connections as we go: the set stays as large as what is open.
        while connections.try_join_next().is_some() {}
        connections.spawn(async move {
            let connection = builder.serve_connection_with_upgrades(io, service);
            if let Err(e) = watcher.watch(connection).await {
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
