//! Every metric ficus exports, in one place.
//!
//! Names and labels follow `../shared/docs/vision.md`. Label values come only
//! from the table (route and upstream names) and closed enums, never from
//! request data, so the number of series is bounded by the table. Handles for a
//! route/upstream pair are resolved once per table generation
//! ([`Metrics::backend`]), so the data path does no label lookups.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

// The `retired` flags: records that start after `retire` are dropped (a `Relaxed` check,
// as they publish no other data). A record racing with `retire` on another thread may
// create a series just as it is removed: whoever creates a series checks the flag again
// (`SeqCst`, as `retire` stores it), and removes the pair's series if it was set meanwhile.

use http::StatusCode;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// `ficus_requests_total{route, upstream, code}`.
pub const REQUESTS_TOTAL: &str = "ficus_requests_total";
/// `ficus_request_duration_seconds{route, upstream}`.
pub const REQUEST_DURATION: &str = "ficus_request_duration_seconds";
/// `ficus_upstream_errors_total{route, upstream, kind}`.
pub const UPSTREAM_ERRORS_TOTAL: &str = "ficus_upstream_errors_total";
/// `ficus_shadow_requests_total{route, upstream, outcome}`.
pub const SHADOW_REQUESTS_TOTAL: &str = "ficus_shadow_requests_total";
/// `ficus_shadow_duration_seconds{route, upstream, side}`.
pub const SHADOW_DURATION: &str = "ficus_shadow_duration_seconds";
/// `ficus_config_reloads_total{result}`.
pub const CONFIG_RELOADS_TOTAL: &str = "ficus_config_reloads_total";
/// `ficus_config_generation`.
pub const CONFIG_GENERATION: &str = "ficus_config_generation";
/// `ficus_client_connections{state}`.
pub const CLIENT_CONNECTIONS: &str = "ficus_client_connections";

/// Histogram buckets in seconds, shared by every upstream so quantiles compare.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The `upstream` label of requests ficus answered itself before choosing an upstream.
pub const NO_UPSTREAM: &str = "none";

/// Kinds of upstream failure: the `kind` label of `ficus_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// The connection was refused or failed.
    Connect,
    /// The connection was not established within the connect timeout.
    ConnectTimeout,
    /// No response headers within the route's timeout.
    Timeout,
    /// The upstream broke the protocol or closed the connection early.
    Protocol,
}

impl UpstreamErrorKind {
    /// Every kind, in label order.
    pub const ALL: [UpstreamErrorKind; 4] = [
        Self::Connect,
        Self::ConnectTimeout,
        Self::Timeout,
        Self::Protocol,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::ConnectTimeout => "connect_timeout",
            Self::Timeout => "timeout",
            Self::Protocol => "protocol",
        }
    }
}

/// What became of a request chosen for shadowing: the `outcome` label of
/// `ficus_shadow_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShadowOutcome {
    /// Both answers agree (after ignore rules and learned noise).
    Match,
    /// The answers differ; the difference is recorded at `/shadow/mismatches`.
    Mismatch,
    /// The shadow upstream could not be reached or broke the exchange.
    Error,
    /// The shadow did not answer within `shadow.timeout`.
    Timeout,
    /// Not mirrored: the route already had `shadow.concurrency` shadows in flight.
    Dropped,
    /// Not compared: a body over `shadow.max_body`, a failed primary, or a client that left.
    Skipped,
}

impl ShadowOutcome {
    /// Every outcome, in label order.
    pub const ALL: [ShadowOutcome; 6] = [
        Self::Match,
        Self::Mismatch,
        Self::Error,
        Self::Timeout,
        Self::Dropped,
        Self::Skipped,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Match => "match",
            Self::Mismatch => "mismatch",
            Self::Error => "error",
            Self::Timeout => "timeout",
            Self::Dropped => "dropped",
            Self::Skipped => "skipped",
        }
    }
}

/// The registry-backed metric families.
#[derive(Clone)]
pub struct Metrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    upstream_errors: IntCounterVec,
    shadow_requests: IntCounterVec,
    shadow_duration: HistogramVec,
    reloads: IntCounterVec,
    generation: IntGauge,
    connections: Arc<ConnectionStates>,
}

/// The two series of `ficus_client_connections`, resolved once.
struct ConnectionStates {
    active: IntGauge,
    idle: IntGauge,
}

/// Counts one open client connection in `ficus_client_connections`, as `active` or (parked
/// without buffers, waiting for its next request) `idle`, until dropped.
pub struct ConnectionGauge {
    states: Arc<ConnectionStates>,
    idle: bool,
}

impl ConnectionGauge {
    /// Moves the connection to `idle` (`true`) or `active`.
    pub fn set_idle(&mut self, idle: bool) {
        if idle != self.idle {
            self.current().dec();
            self.idle = idle;
            self.current().inc();
        }
    }

    fn current(&self) -> &IntGauge {
        if self.idle {
            &self.states.idle
        } else {
            &self.states.active
        }
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.current().dec();
    }
}

impl Metrics {
    /// Creates every family and registers it in `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let requests = counters(
            REQUESTS_TOTAL,
            "Requests answered, by route, upstream and status code.",
            &["route", "upstream", "code"],
        )?;
        let duration = histograms(
            REQUEST_DURATION,
            "Time from receiving a request to sending the response headers, by route and upstream.",
            &["route", "upstream"],
        )?;
        let upstream_errors = counters(
            UPSTREAM_ERRORS_TOTAL,
            "Failed upstream requests, by route, upstream and kind.",
            &["route", "upstream", "kind"],
        )?;
        let shadow_requests = counters(
            SHADOW_REQUESTS_TOTAL,
            "Requests chosen for shadowing, by route, shadow upstream and outcome.",
            &["route", "upstream", "outcome"],
        )?;
        let shadow_duration = histograms(
            SHADOW_DURATION,
            "Time to response headers of both sides of every compared shadow pair, by route, shadow upstream and side (primary, shadow).",
            &["route", "upstream", "side"],
        )?;
        let reloads = counters(
            CONFIG_RELOADS_TOTAL,
            "Route table reloads, by result.",
            &["result"],
        )?;
        let generation = IntGauge::new(CONFIG_GENERATION, "Generation of the route table in use.")?;
        let connections = IntGaugeVec::new(
            Opts::new(
                CLIENT_CONNECTIONS,
                "Open client connections, by state: active, or idle (an HTTP/1 keep-alive connection waiting for its next request with its buffers released).",
            ),
            &["state"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(shadow_requests.clone()))?;
        registry.register(Box::new(shadow_duration.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(generation.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        // Both results exist from the start, so `rate()` and alerts see a zero, not a gap.
        reloads.with_label_values(&["success"]);
        reloads.with_label_values(&["failure"]);
        Ok(Metrics {
            requests,
            duration,
            upstream_errors,
            shadow_requests,
            shadow_duration,
            reloads,
            generation,
            connections: Arc::new(ConnectionStates {
                active: connections.with_label_values(&["active"]),
                idle: connections.with_label_values(&["idle"]),
            }),
        })
    }

    /// Counts a newly accepted client connection as active.
    pub fn connection(&self) -> ConnectionGauge {
        self.connections.active.inc();
        ConnectionGauge {
            states: Arc::clone(&self.connections),
            idle: false,
        }
    }

    /// Shadow handles for one route and its shadow upstream; series are created on first use.
    pub fn shadow(&self, route: &str, upstream: &str) -> ShadowMetrics {
        ShadowMetrics(Arc::new(ShadowInner {
            retired: Retirement::default(),
            outcomes: Default::default(),
            sides: Default::default(),
            families: self.clone(),
            route: route.into(),
            upstream: upstream.into(),
        }))
    }

    /// Handles for one route/upstream pair. Series are created on first use, so a
    /// 10,000-route table costs no memory (and no `/metrics` lines) for idle routes.
    pub fn backend(&self, route: &str, upstream: &str) -> BackendMetrics {
        BackendMetrics(Arc::new(BackendInner {
            retired: Retirement::default(),
            duration: OnceLock::new(),
            errors: Default::default(),
            codes: Default::default(),
            rare_codes: Mutex::default(),
            families: self.clone(),
            route: route.into(),
            upstream: upstream.into(),
        }))
    }

    /// Counts a reload attempt.
    pub fn reload(&self, success: bool) {
        self.reloads
            .with_label_values(&[if success { "success" } else { "failure" }])
            .inc();
    }

    /// Publishes the generation in use.
    pub fn set_generation(&self, generation: u64) {
        self.generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
    }
}

fn counters(name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec, prometheus::Error> {
    IntCounterVec::new(Opts::new(name, help), labels)
}

/// Histograms share [`DURATION_BUCKETS`], so quantiles compare across families.
fn histograms(name: &str, help: &str, labels: &[&str]) -> Result<HistogramVec, prometheus::Error> {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec()),
        labels,
    )
}

/// Whether a pair's series were removed by a reload, and the rule for creating series
/// lazily around that (see the comment on memory ordering at the top).
#[derive(Default)]
struct Retirement(AtomicBool);

impl Retirement {
    /// Records that start after `mark` are dropped.
    fn is_retired(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn mark(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// The series in `cell`, made on first use; `created` notes that it was made now.
    fn series<'a, T>(cell: &'a OnceLock<T>, created: &mut bool, make: impl FnOnce() -> T) -> &'a T {
        cell.get_or_init(|| {
            *created = true;
            make()
        })
    }

    /// After a record: whether it created a series a concurrent `retire` may have missed.
    fn raced(&self, created: bool) -> bool {
        created && self.0.load(Ordering::SeqCst)
    }
}

/// Status codes whose counters are cached per pair; others take a label lookup.
const COMMON_CODES: [u16; 24] = [
    200, 201, 202, 204, 301, 302, 304, 307, 308, 400, 401, 403, 404, 405, 408, 409, 413, 414, 422,
    429, 500, 502, 503, 504,
];

struct BackendInner {
    /// Set by `retire`: requests still in flight on a removed route are not recorded,
    /// so they cannot re-create the removed series.
    retired: Retirement,
    duration: OnceLock<Histogram>,
    errors: [OnceLock<IntCounter>; 4],
    /// Created on first use so that codes never seen add no series.
    codes: [OnceLock<IntCounter>; COMMON_CODES.len()],
    /// Codes outside [`COMMON_CODES`] seen so far, so [`BackendMetrics::retire`] can
    /// remove their series. Locked only on that rare path.
    rare_codes: Mutex<Vec<u16>>,
    families: Metrics,
    route: Box<str>,
    upstream: Box<str>,
}

/// Metric handles for one route/upstream pair. Cheap to clone.
#[derive(Clone)]
pub struct BackendMetrics(Arc<BackendInner>);

impl std::fmt::Debug for BackendMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BackendMetrics({}, {})", self.0.route, self.0.upstream)
    }
}

impl BackendMetrics {
    /// The route and upstream these metrics are labelled with.
    pub fn names(&self) -> (&str, &str) {
        (&self.0.route, &self.0.upstream)
    }

    /// Records one answered request.
    pub fn record(&self, status: StatusCode, seconds: f64) {
        let inner = &*self.0;
        if inner.retired.is_retired() {
            return;
        }
        let mut created = false;
        Retirement::series(&inner.duration, &mut created, || {
            inner
                .families
                .duration
                .with_label_values(&[&*inner.route, &*inner.upstream])
        })
        .observe(seconds);
        let code = status.as_u16();
        match COMMON_CODES.iter().position(|&c| c == code) {
            Some(i) => {
                Retirement::series(&inner.codes[i], &mut created, || self.counter(status)).inc()
            }
            None => {
                if let Ok(mut seen) = inner.rare_codes.lock()
                    && !seen.contains(&code)
                {
                    seen.push(code);
                }
                created = true;
                self.counter(status).inc()
            }
        }
        if inner.retired.raced(created) {
            self.retire();
        }
    }

    /// Removes every series of this route/upstream pair: called when a reload
    /// drops the pair, so the exported series stay bounded by the live table.
    pub fn retire(&self) {
        let inner = &*self.0;
        inner.retired.mark();
        let (route, upstream) = (&*inner.route, &*inner.upstream);
        let families = &inner.families;
        let _ = families.duration.remove_label_values(&[route, upstream]);
        for kind in UpstreamErrorKind::ALL {
            let _ = families
                .upstream_errors
                .remove_label_values(&[route, upstream, kind.as_str()]);
        }
        let rare = inner
            .rare_codes
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default();
        let common = COMMON_CODES
            .iter()
            .zip(&inner.codes)
            .filter(|(_, c)| c.get().is_some())
            .map(|(code, _)| *code);
        for code in common.chain(rare) {
            let _ = families
                .requests
                .remove_label_values(&[route, upstream, &code.to_string()]);
        }
    }

    /// The route and upstream labels.
    pub fn labels(&self) -> (&str, &str) {
        (&self.0.route, &self.0.upstream)
    }

    fn counter(&self, status: StatusCode) -> IntCounter {
        let inner = &*self.0;
        inner.families.requests.with_label_values(&[
            &*inner.route,
            &*inner.upstream,
            status.as_str(),
        ])
    }

    /// Counts an upstream failure.
    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        if self.0.retired.is_retired() {
            return;
        }
        let index = UpstreamErrorKind::ALL
            .iter()
            .position(|&k| k == kind)
            .unwrap_or(0);
        let inner = &*self.0;
        let mut created = false;
        Retirement::series(&inner.errors[index], &mut created, || {
            inner.families.upstream_errors.with_label_values(&[
                &*inner.route,
                &*inner.upstream,
                kind.as_str(),
            ])
        })
        .inc();
        if inner.retired.raced(created) {
            self.retire();
        }
    }
}

struct ShadowInner {
    /// Set by `retire`: later records (from shadows still in flight) are dropped
    /// instead of re-creating the removed series.
    retired: Retirement,
    outcomes: [OnceLock<IntCounter>; ShadowOutcome::ALL.len()],
    /// `side="primary"`, then `side="shadow"`.
    sides: [OnceLock<Histogram>; 2],
    families: Metrics,
    route: Box<str>,
    upstream: Box<str>,
}

/// Shadow metric handles for one route and its shadow upstream. Cheap to clone.
#[derive(Clone)]
pub struct ShadowMetrics(Arc<ShadowInner>);

impl std::fmt::Debug for ShadowMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ShadowMetrics({}, {})", self.0.route, self.0.upstream)
    }
}

/// The `side` label values, in [`ShadowInner::sides`] order.
const SIDES: [&str; 2] = ["primary", "shadow"];

impl ShadowMetrics {
    /// Counts one shadow outcome.
    pub fn outcome(&self, outcome: ShadowOutcome) {
        let inner = &*self.0;
        if inner.retired.is_retired() {
            return;
        }
        let index = ShadowOutcome::ALL
            .iter()
            .position(|&o| o == outcome)
            .unwrap_or(0);
        let mut created = false;
        Retirement::series(&inner.outcomes[index], &mut created, || {
            inner.families.shadow_requests.with_label_values(&[
                &*inner.route,
                &*inner.upstream,
                outcome.as_str(),
            ])
        })
        .inc();
        if inner.retired.raced(created) {
            self.retire();
        }
    }

    /// Records both sides' latency for one compared request.
    pub fn paired(&self, primary_seconds: f64, shadow_seconds: f64) {
        let inner = &*self.0;
        if inner.retired.is_retired() {
            return;
        }
        let mut created = false;
        for ((slot, side), seconds) in inner
            .sides
            .iter()
            .zip(SIDES)
            .zip([primary_seconds, shadow_seconds])
        {
            Retirement::series(slot, &mut created, || {
                inner.families.shadow_duration.with_label_values(&[
                    &*inner.route,
                    &*inner.upstream,
                    side,
                ])
            })
            .observe(seconds);
        }
        if inner.retired.raced(created) {
            self.retire();
        }
    }

    /// Removes this pair's series (the route or its shadow left the table).
    pub fn retire(&self) {
        let inner = &*self.0;
        inner.retired.mark();
        let (route, upstream) = (&*inner.route, &*inner.upstream);
        for outcome in ShadowOutcome::ALL {
            let _ = inner.families.shadow_requests.remove_label_values(&[
                route,
                upstream,
                outcome.as_str(),
            ]);
        }
        for side in SIDES {
            let _ = inner
                .families
                .shadow_duration
                .remove_label_values(&[route, upstream, side]);
        }
    }

    /// The route and shadow upstream labels.
    pub fn labels(&self) -> (&str, &str) {
        (&self.0.route, &self.0.upstream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exported(registry: &Registry, family: &str) -> usize {
        registry
            .gather()
            .iter()
            .filter(|f| f.name() == family)
            .map(|f| f.get_metric().len())
            .sum()
    }

    #[test]
    fn records_after_retire_do_not_recreate_series() {
        let registry = Registry::new();
        let metrics = Metrics::new(&registry).unwrap();
        let backend = metrics.backend("r", "u");
        let shadow = metrics.shadow("r", "new");
        backend.record(StatusCode::OK, 0.01);
        shadow.outcome(ShadowOutcome::Match);
        shadow.paired(0.01, 0.02);
        assert_eq!(exported(&registry, REQUESTS_TOTAL), 1);
        assert_eq!(exported(&registry, SHADOW_REQUESTS_TOTAL), 1);
        backend.retire();
        shadow.retire();
        // A request and a shadow still in flight when the reload removed their route:
        backend.record(StatusCode::BAD_GATEWAY, 0.01);
        backend.upstream_error(UpstreamErrorKind::Connect);
        shadow.outcome(ShadowOutcome::Timeout);
        shadow.paired(0.01, 0.02);
        for family in [
            REQUESTS_TOTAL,
            REQUEST_DURATION,
            UPSTREAM_ERRORS_TOTAL,
            SHADOW_REQUESTS_TOTAL,
            SHADOW_DURATION,
        ] {
            assert_eq!(exported(&registry, family), 0, "{family}");
        }
    }
}
