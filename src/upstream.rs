//! Upstream connection pools and endpoint balancing.
//!
//! One pooled hyper client per upstream, configured from its table entry. A
//! reload that leaves an upstream's settings unchanged reuses its [`Upstream`]
//! (and so its warm connections); a changed one gets a fresh pool, and the old
//! pool is dropped when the last request holding it ends.

use std::sync::atomic::{AtomicUsize, Ordering};

use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{Endpoint, UpstreamSpec};

/// The client type used for every upstream.
pub type UpstreamClient = Client<HttpConnector, Incoming>;

/// A live upstream: its settings, its pool and its balancing state.
pub struct Upstream {
    /// The settings it was built from.
    pub spec: UpstreamSpec,
    /// The pooled client.
    pub client: UpstreamClient,
    next: AtomicUsize,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// Builds the pool for an upstream. Needs no runtime until the first request.
    pub fn new(spec: UpstreamSpec) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(spec.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(spec.pool_idle_timeout)
            .pool_max_idle_per_host(spec.pool_max_idle)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Upstream {
            spec,
            client,
            next: AtomicUsize::new(0),
        }
    }

    /// The next endpoint, round robin.
    pub fn endpoint(&self) -> &Endpoint {
        let endpoints = &self.spec.endpoints;
        // Relaxed: the counter only spreads load; no other memory depends on it.
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // Invariant: validation rejects an upstream without endpoints.
        &endpoints[n % endpoints.len()]
    }
}
