//! ficus: a strangler-fig migration proxy.
//!
//! The life of a request (see `ARCHITECTURE.md`): [`server`] accepts a
//! connection and hands each request to [`proxy::handle`], which loads the
//! current [`snapshot::Snapshot`] once, normalizes the path
//! ([`routing::path`]), matches a route ([`routing::Router`]), picks an
//! upstream (a split side via [`routing::split`]), forwards through the
//! upstream's pool ([`upstream`]), and records [`metrics`] and the access log.
//! [`config`] turns `routes.toml` into a validated table; [`reload`] is the only
//! writer of the current snapshot; [`admin`] serves metrics and the live table.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod demo;
pub mod explain;
pub mod http1;
pub mod message;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod routing;
pub mod server;
pub mod shadow;
pub mod snapshot;
pub mod tee;
pub mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use admin::AdminState;
use proxy::ProxyState;
use reload::{ReloadCounts, ReloadStatus, Reloader};
use server::{ShutdownTrigger, shutdown_channel};
use snapshot::Snapshot;

/// Why ficus could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The table is invalid.
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address from the table.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A listener's address could not be read.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// Metric registration failed (a duplicate registry use).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// How to start ficus.
pub struct Options {
    /// The route table.
    pub config: PathBuf,
    /// Serve proxy traffic here instead of binding `[listen] proxy`.
    pub proxy_listener: Option<TcpListener>,
    /// Serve admin endpoints here instead of binding `[listen] admin`.
    pub admin_listener: Option<TcpListener>,
    /// Registry to register metrics in (each test gets its own).
    pub registry: Registry,
    /// Watch the table for changes (and SIGHUP).
    pub watch: bool,
}

impl Options {
    /// Options for a table, binding the addresses it names, watching it.
    pub fn new(config: impl Into<PathBuf>) -> Self {
        Options {
            config: config.into(),
            proxy_listener: None,
            admin_listener: None,
            registry: Registry::new(),
            watch: true,
        }
    }
}

/// A running proxy: its addresses, its shutdown trigger and its tasks.
pub struct Running {
    /// Where proxy traffic is served.
    pub proxy_addr: SocketAddr,
    /// Where admin endpoints are served.
    pub admin_addr: SocketAddr,
    trigger: ShutdownTrigger,
    admin_state: Arc<AdminState>,
    counts: watch::Receiver<ReloadCounts>,
    proxy_task: JoinHandle<()>,
    other_tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Starts a graceful shutdown: `/readyz` turns 503, the listener closes, in-flight requests finish.
    pub fn shutdown(&self) {
        // Release pairs with the Acquire load in `/readyz`.
        self.admin_state.draining.store(true, Ordering::Release);
        self.trigger.trigger();
    }

    /// Reload counts, updated after every reload attempt: wait on it instead of sleeping.
    pub fn reloads(&self) -> watch::Receiver<ReloadCounts> {
        self.counts.clone()
    }

    /// The generation currently serving.
    pub fn generation(&self) -> u64 {
        self.admin_state.proxy.snapshot.load().generation
    }

    /// Waits until the proxy has drained (after [`Running::shutdown`]).
    pub async fn wait(self) {
        let _ = self.proxy_task.await;
        for task in self.other_tasks {
            task.abort();
            let _ = task.await;
        }
    }
}

/// Loads the table, binds the listeners and starts serving.
pub async fn start(options: Options) -> Result<Running, StartError> {
    let bytes = config::read(&options.config)?;
    let table = config::parse_bytes(&bytes, &options.config)?;
    let hash = xxhash_rust::xxh3::xxh3_64(&bytes);
    let metrics = metrics::Metrics::new(&options.registry)?;
    let listen = table.listen.clone();
    let settings = table.server.clone();
    let proxy_listener = match options.proxy_listener {
        Some(listener) => listener,
        None => TcpListener::bind(listen.proxy)
            .await
            .map_err(|source| StartError::Bind {
                addr: listen.proxy,
                source,
            })?,
    };
    let admin_listener = match options.admin_listener {
        Some(listener) => listener,
        None => TcpListener::bind(listen.admin)
            .await
            .map_err(|source| StartError::Bind {
                addr: listen.admin,
                source,
            })?,
    };
    let shadows = shadow::ShadowRegistry::default();
    let snapshot = Snapshot::build(table, hash, 1, &metrics, &shadows, None);
    let proxy_state = Arc::new(ProxyState::new(snapshot, metrics, shadows));
    let status = Arc::new(Mutex::new(ReloadStatus::default()));
    let (counts_tx, counts) = watch::channel(ReloadCounts {
        generation: 1,
        ..ReloadCounts::default()
    });
    let admin_state = Arc::new(AdminState {
        proxy: proxy_state.clone(),
        registry: options.registry,
        reload: status.clone(),
        draining: Default::default(),
    });
    let (trigger, shutdown) = shutdown_channel();
    let proxy_addr = proxy_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let mut other_tasks = vec![tokio::spawn(admin::serve(
        admin_listener,
        admin_state.clone(),
    ))];
    if options.watch {
        let reloader = Reloader::new(
            options.config.clone(),
            proxy_state.clone(),
            status,
            counts_tx,
        );
        other_tasks.push(tokio::spawn(reloader.run(shutdown.clone())));
    }
    let proxy_task = tokio::spawn(server::serve(
        proxy_listener,
        proxy_state,
        settings,
        shutdown,
    ));
    tracing::info!(proxy = %proxy_addr, admin = %admin_addr, config = %options.config.display(), "ficus serving");
    Ok(Running {
        proxy_addr,
        admin_addr,
        trigger,
        admin_state,
        counts,
        proxy_task,
        other_tasks,
    })
}
