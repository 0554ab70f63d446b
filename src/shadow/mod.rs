//! Shadow traffic: mirror a route's requests to another upstream and compare the answers.
//!
//! The primary path only ever does cheap, non-blocking things for a shadow: a random draw,
//! taking one of the route's shadow slots (never waiting for one), a copy of the request
//! head, and bounded copies of the bodies as they stream past ([`crate::tee`]). Everything
//! else, the shadow's connection, its answer, the optional second request to the primary
//! upstream that learns noise, and the comparison, runs in a task of its own that the
//! client never waits for. Large answers are compared on the blocking pool, off the reactor.
//!
//! Bounds: at most `concurrency` shadow tasks per route (more are `dropped` and counted),
//! each holding at most four bodies of `max_body` bytes, each done with its waits within
//! the route's timeout plus the shadow's (then at most one comparison).

pub mod compare;
mod json;
pub mod jsonpath;
pub mod record;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HeaderValue};
use http::{HeaderMap, HeaderName, Method, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::sync::{Semaphore, oneshot};
use tokio::time::Instant;

use crate::config::{Route, ShadowSpec};
use crate::message::{Fields, Head, Reply};
use crate::metrics::{ShadowMetrics, ShadowOutcome};
use crate::proxy::headers::Forwarding;
use crate::tee::{Lost, Tee, TeeBody, TeeReceiver};
use crate::upstream::{RequestBody, SendError, Upstream, UpstreamBody};
use compare::{Noise, Observed};
use record::{Mismatch, MismatchLog};

/// Marks every mirrored request (and every noise probe), so services can tell them apart.
/// ficus removes it from clients' requests.
pub use crate::proxy::headers::X_FICUS_SHADOW as SHADOW_HEADER;

/// A comparison whose answers' bytes, times one plus the route's JSON ignore rules, stay
/// under this runs on the task's own thread; anything larger on the blocking pool, so a
/// big document never holds up the threads that serve traffic. A whole comparison (two
/// parses and the walk) of many small JSON objects ran at about 28 MB/s on the 2-vCPU
/// machine of README's benchmarks, so this keeps one in place under about 0.15 ms.
const INLINE_COMPARE_WORK: usize = 4 * 1024;

/// Whether a comparison of `bytes` of answers, with `rules` JSON ignore rules, is small
/// enough to run in place (see [`INLINE_COMPARE_WORK`]).
fn compare_in_place(bytes: usize, rules: usize) -> bool {
    bytes.saturating_mul(1 + rules) <= INLINE_COMPARE_WORK
}

/// Methods safe to send a second time to the primary upstream to learn noise.
const PROBE_METHODS: [Method; 3] = [Method::GET, Method::HEAD, Method::OPTIONS];

/// A route's shadow state that outlives table generations: its limit and count of shadows
/// in flight (one count across reloads, so a reload never lets a second batch start beside
/// the first), the noise it has learned, and its recent mismatches.
#[derive(Debug)]
pub struct RouteState {
    limit: AtomicUsize,
    in_flight: AtomicUsize,
    /// Shared, not copied, by every comparison; replaced whole when something is learned.
    noise: Mutex<Arc<Noise>>,
    mismatches: Mutex<MismatchLog>,
}

// Memory ordering: the two counters publish no other data; each is only compared with
// the other's current value, so `Relaxed` suffices. A reload that lowers the limit lets
// the shadows already in flight finish; new ones start once the count is below it.
const COUNT: Ordering = Ordering::Relaxed;

impl RouteState {
    fn new(limit: usize) -> Self {
        RouteState {
            limit: AtomicUsize::new(limit),
            in_flight: AtomicUsize::new(0),
            noise: Mutex::default(),
            mismatches: Mutex::new(MismatchLog::default()),
        }
    }

    /// A slot for one more shadow, unless `limit` are in flight.
    fn try_start(self: &Arc<Self>) -> Option<InFlight> {
        let limit = self.limit.load(COUNT);
        // Only ever raised below the limit, so a refused attempt never inflates the count.
        self.in_flight
            .fetch_update(COUNT, COUNT, |n| (n < limit).then_some(n + 1))
            .ok()?;
        Some(InFlight(self.clone()))
    }

    fn noise(&self) -> Arc<Noise> {
        self.noise
            .lock()
            .map(|n| Arc::clone(&n))
            .unwrap_or_default()
    }

    /// How many JSON paths have been learned as noise.
    fn learned_paths(&self) -> usize {
        self.noise.lock().map_or(0, |n| n.json.len())
    }
}

/// One shadow in flight; dropping it frees the slot.
#[derive(Debug)]
struct InFlight(Arc<RouteState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        // Paired with the successful increment in `try_start`.
        self.0.in_flight.fetch_sub(1, COUNT);
    }
}

/// The shadow state of every shadowed route, by route name. Written only when a table is
/// built; read by the admin endpoint.
#[derive(Debug)]
pub struct ShadowRegistry {
    routes: Mutex<HashMap<String, Arc<RouteState>>>,
    /// Comparisons on the blocking pool at once, across routes: each parses up to three
    /// bodies of `max_body`, so their memory is bounded by this times the largest `max_body`.
    comparisons: Arc<Semaphore>,
}

impl Default for ShadowRegistry {
    fn default() -> Self {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        ShadowRegistry {
            routes: Mutex::default(),
            comparisons: Arc::new(Semaphore::new(threads.max(2))),
        }
    }
}

impl ShadowRegistry {
    /// Sets the shadowed routes to `live` (name and spec): a route that stays keeps its
    /// state (its count of shadows in flight, mismatches and, while `noise = "learn"`,
    /// learned noise) with the new limit; the others are forgotten.
    pub fn update<'a>(
        &self,
        live: impl Iterator<Item = (&'a str, &'a ShadowSpec)>,
    ) -> HashMap<String, Arc<RouteState>> {
        let Ok(mut routes) = self.routes.lock() else {
            return HashMap::new();
        };
        let mut next = HashMap::new();
        for (name, spec) in live {
            let state = match routes.get(name) {
                Some(old) => {
                    old.limit.store(spec.concurrency, COUNT);
                    if spec.learn_noise.is_none()
                        && let Ok(mut noise) = old.noise.lock()
                    {
                        *noise = Arc::default();
                    }
                    old.clone()
                }
                None => Arc::new(RouteState::new(spec.concurrency)),
            };
            next.insert(name.to_owned(), state);
        }
        *routes = next.clone();
        next
    }

    /// Where comparisons wait for their turn.
    pub fn comparisons(&self) -> Arc<Semaphore> {
        self.comparisons.clone()
    }

    /// Shadows in flight, recent mismatches and learned noise as JSON, for one route or all.
    /// `None` when `route` names no shadowed route.
    pub fn report(&self, route: Option<&str>) -> Option<serde_json::Value> {
        let routes = self.routes.lock().ok()?;
        let describe = |state: &RouteState| {
            let (headers, json) = record::describe_noise(&state.noise());
            let mismatches: Vec<Mismatch> = state
                .mismatches
                .lock()
                .map(|l| l.iter().cloned().collect())
                .unwrap_or_default();
            serde_json::json!({
                "in_flight": state.in_flight.load(COUNT),
                "concurrency": state.limit.load(COUNT),
                "learned_noise": { "headers": headers, "json": json },
                "mismatches": mismatches,
            })
        };
        let mut out = serde_json::Map::new();
        match route {
            Some(name) => {
                out.insert(name.to_owned(), describe(routes.get(name)?));
            }
            None => {
                let mut names: Vec<&String> = routes.keys().collect();
                names.sort();
                for name in names {
                    out.insert(name.clone(), describe(&routes[name]));
                }
            }
        }
        Some(serde_json::json!({ "routes": out }))
    }
}

/// A route's shadow as one table generation serves it.
#[derive(Debug)]
pub struct Shadow {
    route: Arc<str>,
    spec: ShadowSpec,
    /// The shadow upstream, on its own pool: a hung shadow never holds the primary's connections.
    target: Arc<Upstream>,
    /// Per side of the route (one unless it splits): the shadow-side pool of that side's
    /// upstream, for noise probes; `None` where that upstream is the shadow target itself,
    /// whose requests are not mirrored. Worked out once per table, not per request.
    sides: Vec<Option<Arc<Upstream>>>,
    metrics: ShadowMetrics,
    state: Arc<RouteState>,
    /// Shared by all routes: comparisons running at once.
    comparisons: Arc<Semaphore>,
    /// The route's timeout: how long the primary may take to answer.
    primary_timeout: Duration,
}

/// What the primary side owes its shadow: its answer's head and a copy of its body.
#[derive(Debug)]
pub struct Mirror {
    head: oneshot::Sender<PrimaryHead>,
    body: Tee,
}

#[derive(Debug)]
struct PrimaryHead {
    status: StatusCode,
    /// Turned into a map by the shadow's task, off the primary's path.
    fields: Fields,
    latency: Duration,
}

impl Mirror {
    /// The primary answered with `response` after `latency`: passes its head on and
    /// returns the tee that copies its body as it streams to the client.
    pub fn answered(self, response: &Reply<UpstreamBody>, latency: Duration) -> Tee {
        let _ = self.head.send(PrimaryHead {
            status: response.status,
            fields: response.fields.clone(),
            latency,
        });
        self.body
    }
}

/// One side's complete answer.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    latency: Duration,
}

/// A shadow that ended without a comparison: its outcome, and why (for debug logs).
struct Ended(ShadowOutcome, &'static str);

impl Shadow {
    /// A route's shadow for one generation.
    pub fn new(
        route: &Route,
        spec: &ShadowSpec,
        target: Arc<Upstream>,
        sides: Vec<Option<Arc<Upstream>>>,
        metrics: ShadowMetrics,
        state: Arc<RouteState>,
        comparisons: Arc<Semaphore>,
    ) -> Self {
        Shadow {
            route: route.name.as_str().into(),
            spec: spec.clone(),
            target,
            sides,
            metrics,
            state,
            comparisons,
            primary_timeout: route.timeout,
        }
    }

    /// The metric handles (for retiring them).
    pub fn metrics(&self) -> &ShadowMetrics {
        &self.metrics
    }

    /// Starts mirroring the request (`request` and `body`), about to go to the route's
    /// `side`, if it is chosen. Returns the body to send (copied as it streams, when
    /// there is one) and, when mirrored, what the primary side must hand over once it
    /// has answered.
    pub fn begin(
        self: &Arc<Self>,
        request: &Head,
        body: RequestBody,
        forwarding: &Forwarding,
        side: usize,
    ) -> (RequestBody, Option<Mirror>) {
        let spec = &self.spec;
        let Some(Some(primary_pool)) = self.sides.get(side) else {
            return (body, None); // this side is the shadow target itself
        };
        if !spec.methods.contains(&request.method)
            || !(spec.sample >= 1.0 || fastrand::f64() < spec.sample)
        {
            return (body, None);
        }
        if declared_length(request, &body).is_some_and(|n| n > spec.max_body as u64) {
            self.metrics.outcome(ShadowOutcome::Skipped);
            return (body, None);
        }
        let Some(slot) = self.state.try_start() else {
            self.metrics.outcome(ShadowOutcome::Dropped);
            return (body, None);
        };
        let mut head = request.clone();
        forwarding.apply(&mut head.fields);
        head.fields
            .append(SHADOW_HEADER.clone(), HeaderValue::from_static("1"));
        let (body, request_body) = match body {
            RequestBody::Stream(incoming) if !incoming.is_end_stream() => {
                let (tee, copy) = Tee::new(spec.max_body);
                (
                    RequestBody::Tee(Box::new(TeeBody::new(incoming, tee))),
                    Some(copy),
                )
            }
            other => (other, None),
        };
        let (head_tx, head_rx) = oneshot::channel();
        let (body_tee, body_rx) = Tee::new(spec.max_body);
        let probe = spec
            .learn_noise
            .filter(|&sample| {
                PROBE_METHODS.contains(&head.method) && (sample >= 1.0 || fastrand::f64() < sample)
            })
            .map(|_| primary_pool.clone());
        let shadow = self.clone();
        tokio::spawn(async move {
            let pending = Pending {
                head,
                request_body,
                primary_head: head_rx,
                primary_body: body_rx,
                probe,
            };
            // Boxed: the task's own future then holds only what it starts with, so
            // spawning it copies a few hundred bytes, not the whole exchange's state.
            let outcome = match Box::pin(shadow.clone().run(pending)).await {
                Ok(outcome) => outcome,
                Err(Ended(outcome, why)) => {
                    tracing::debug!(
                        route = &*shadow.route,
                        outcome = outcome.as_str(),
                        why,
                        "shadow not compared"
                    );
                    outcome
                }
            };
            shadow.metrics.outcome(outcome);
            drop(slot);
        });
        let mirror = Mirror {
            head: head_tx,
            body: body_tee,
        };
        (body, Some(mirror))
    }

    async fn run(self: Arc<Self>, pending: Pending) -> Result<ShadowOutcome, Ended> {
        let Pending {
            head,
            request_body,
            primary_head,
            primary_body,
            probe,
        } = pending;
        let skipped = |why| Ended(ShadowOutcome::Skipped, why);
        // Everything but the shadow's own exchange (bounded by `shadow.timeout`) waits on the
        // primary side, which the route's timeout bounds.
        let deadline = Instant::now() + self.primary_timeout + self.spec.timeout;
        let body = match request_body {
            None => Bytes::new(),
            Some(copy) => match tokio::time::timeout_at(deadline, copy).await {
                Ok(Ok(Ok(body))) => body,
                Ok(Ok(Err(Lost::TooLarge))) => return Err(skipped("request body over max_body")),
                Ok(Err(_)) => return Err(skipped("request body not received whole")),
                Err(_) => return Err(skipped("request body still streaming")),
            },
        };
        let primary = async {
            let head = primary_head.await.map_err(|_| skipped("primary failed"))?;
            let body = match primary_body.await {
                Ok(Ok(body)) => body,
                Ok(Err(Lost::TooLarge)) => return Err(skipped("primary body over max_body")),
                Err(_) => return Err(skipped("primary body not sent whole")),
            };
            Ok(Answer {
                status: head.status,
                headers: head.fields.to_map(),
                body,
                latency: head.latency,
            })
        };
        let primary = tokio::time::timeout_at(deadline, primary);
        let shadow = self.exchange(&self.target, &head, body.clone(), deadline);
        let probe = async {
            match &probe {
                Some(pool) => Some(self.exchange(pool, &head, body.clone(), deadline).await),
                None => None,
            }
        };
        tokio::pin!(primary, shadow);
        // A primary that fails or is abandoned cancels its shadow at once.
        let (primary, shadow, probe) = tokio::select! {
            biased;
            primary_first = &mut primary => {
                let primary = primary_first.map_err(|_| skipped("primary still streaming"))??;
                let (shadow, probe) = tokio::join!(shadow, probe);
                (primary, shadow, probe)
            }
            shadow_first = &mut shadow => {
                // A failed shadow has nothing to compare: free its slot now.
                let shadow_first = Ok(shadow_first?);
                let (primary, probe) = tokio::join!(primary, probe);
                let primary = primary.map_err(|_| skipped("primary still streaming"))??;
                (primary, shadow_first, probe)
            }
        };
        let shadow = shadow?;
        // Only two good answers to the same request teach anything: a failed or throttled
        // probe differs in everything, and would hide real differences.
        let probe = probe
            .and_then(Result::ok)
            .filter(|p| p.status == primary.status && p.status.is_success());
        let bytes =
            primary.body.len() + shadow.body.len() + probe.as_ref().map_or(0, |p| p.body.len());
        // The walk costs more with every JSON ignore rule, learned ones included.
        let rules = self.spec.compare.ignore_json.len() + self.state.learned_paths();
        let (comparison, primary, shadow) = if compare_in_place(bytes, rules) {
            // Small answers (most API responses) compare in microseconds: cheaper here
            // than a hand-off to another thread and back.
            self.compare(primary, shadow, probe)
        } else {
            let turn = tokio::time::timeout_at(deadline, self.comparisons.clone().acquire_owned());
            let Ok(Ok(turn)) = turn.await else {
                return Err(skipped("no comparison turn before the deadline"));
            };
            let this = self.clone();
            tokio::task::spawn_blocking(move || {
                // Held by the comparison itself: a cancelled task cannot free it early.
                let _turn = turn;
                this.compare(primary, shadow, probe)
            })
            .await
            .map_err(|_| Ended(ShadowOutcome::Error, "comparison failed"))?
        };
        self.metrics
            .paired(primary.latency.as_secs_f64(), shadow.latency.as_secs_f64());
        if comparison.is_match() {
            return Ok(ShadowOutcome::Match);
        }
        let request_id = head
            .fields
            .get(crate::proxy::headers::X_REQUEST_ID.as_str())
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        tracing::info!(
            route = &*self.route,
            upstream = self.target.spec.name.as_str(),
            request_id,
            differences = comparison.differences.len(),
            "shadow mismatch"
        );
        if let Ok(mut log) = self.state.mismatches.lock() {
            log.push(Mismatch {
                time: record::now_rfc3339(),
                method: head.method.to_string(),
                path: head.uri.path().to_owned(),
                request_id,
                primary_status: primary.status.as_u16(),
                shadow_status: shadow.status.as_u16(),
                diff: comparison,
            });
        }
        Ok(ShadowOutcome::Mismatch)
    }

    /// Learns noise from `probe` (a second answer of the primary upstream), then compares.
    fn compare(
        &self,
        primary: Answer,
        shadow: Answer,
        probe: Option<Answer>,
    ) -> (compare::Comparison, Answer, Answer) {
        let (spec, state) = (&self.spec, &self.state);
        let mut noise = state.noise();
        if let Some(probe) = &probe {
            let learned = compare::learn(&spec.compare, observed(&primary), observed(probe));
            if let Ok(mut shared) = state.noise.lock()
                && (learned.headers.iter().any(|h| !shared.headers.contains(h))
                    || learned.json.iter().any(|p| !shared.json.contains(p)))
            {
                let mut merged = Noise::clone(&shared);
                let added = record::merge_noise(&mut merged, learned);
                if !added.is_empty() {
                    tracing::info!(route = &*self.route, learned = ?added, "shadow noise learned from the primary upstream");
                    *shared = Arc::new(merged);
                }
                noise = Arc::clone(&shared);
            }
        }
        let redact = |name: &HeaderName| spec.redacts(name);
        let comparison = compare::compare(
            &spec.compare,
            &noise,
            &redact,
            observed(&primary),
            observed(&shadow),
        );
        (comparison, primary, shadow)
    }

    /// Sends a copy of the request to `pool` and reads the answer, within `shadow.timeout`
    /// and the shadow's overall `deadline`.
    async fn exchange(
        &self,
        pool: &Upstream,
        head: &Head,
        body: Bytes,
        deadline: Instant,
    ) -> Result<Answer, Ended> {
        let mut head = head.clone();
        let started = Instant::now();
        let limit = self.spec.max_body;
        let exchange = async {
            let response = pool
                .send(&mut head, RequestBody::full(body), &[], started.into_std())
                .await;
            let response = response.map_err(|e| {
                let why = match e {
                    SendError::ConnectTimeout(_) => "shadow connect timed out",
                    SendError::Connect(_) => "shadow connect failed",
                    _ => "shadow exchange failed",
                };
                Ended(ShadowOutcome::Error, why)
            })?;
            let latency = started.elapsed();
            let mut incoming = response.body;
            let mut body = BytesMut::new();
            while let Some(frame) = incoming.frame().await {
                let frame = frame.map_err(|_| Ended(ShadowOutcome::Error, "shadow body failed"))?;
                if let Some(data) = frame.data_ref() {
                    if body.len() + data.len() > limit {
                        return Err(Ended(ShadowOutcome::Skipped, "shadow body over max_body"));
                    }
                    body.extend_from_slice(data);
                }
            }
            Ok(Answer {
                status: response.status,
                headers: response.fields.to_map(),
                body: body.freeze(),
                latency,
            })
        };
        tokio::time::timeout_at(deadline.min(started + self.spec.timeout), exchange)
            .await
            .unwrap_or(Err(Ended(ShadowOutcome::Timeout, "shadow timed out")))
    }
}

/// What a shadow task starts with.
struct Pending {
    head: Head,
    request_body: Option<TeeReceiver>,
    primary_head: oneshot::Receiver<PrimaryHead>,
    primary_body: TeeReceiver,
    probe: Option<Arc<Upstream>>,
}

fn observed(answer: &Answer) -> Observed<'_> {
    Observed {
        status: answer.status,
        headers: &answer.headers,
        body: &answer.body,
    }
}

/// The request's declared body length, when it has one.
fn declared_length(head: &Head, body: &RequestBody) -> Option<u64> {
    let exact = body.size_hint().exact();
    exact.or_else(|| {
        let length = head.fields.get(CONTENT_LENGTH.as_str())?;
        std::str::from_utf8(length).ok()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_small_comparisons_run_in_place() {
        assert!(compare_in_place(2_000, 0));
        assert!(compare_in_place(INLINE_COMPARE_WORK, 0));
        assert!(!compare_in_place(INLINE_COMPARE_WORK + 1, 0));
        // Rules multiply the work: every location is checked against each.
        assert!(compare_in_place(500, 7));
        assert!(!compare_in_place(500, 8));
        assert!(!compare_in_place(usize::MAX, 0));
    }

    #[test]
    fn a_refused_start_never_counts_and_a_finished_one_frees_its_slot() {
        let state = Arc::new(RouteState::new(2));
        let first = state.try_start().expect("slot 1");
        let second = state.try_start().expect("slot 2");
        assert!(state.try_start().is_none());
        assert_eq!(state.in_flight.load(COUNT), 2);
        drop(first);
        assert!(
            state.try_start().is_some(),
            "freed, and dropped again at once"
        );
        assert_eq!(state.in_flight.load(COUNT), 1);
        drop(second);
        assert_eq!(state.in_flight.load(COUNT), 0);
    }
}
