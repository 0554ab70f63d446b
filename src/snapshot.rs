//! One generation of the route table, ready for the data path.
//!
//! A [`Snapshot`] pairs a validated [`Table`] with what serving it needs: a
//! live pool per upstream and metric handles per route/upstream pair. It is
//! immutable; the reloader is the only writer of the `ArcSwap` that holds the
//! current one, and each request keeps the `Arc` it loaded at its start, so a
//! request is served entirely by one generation.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Table, Target};
use crate::message::Fields;
use crate::metrics::{BackendMetrics, Metrics, ShadowMetrics};
use crate::routing::RouteId;
use crate::routing::split::Assignment;
use crate::shadow::{Shadow, ShadowRegistry};
use crate::upstream::Upstream;

/// The `route` label of requests that match no route.
pub const DEFAULT_ROUTE: &str = "default";

/// An upstream as one route uses it.
#[derive(Debug, Clone)]
pub struct Backend {
    /// The live upstream.
    pub upstream: Arc<Upstream>,
    /// Metric handles for this route/upstream pair.
    pub metrics: BackendMetrics,
}

/// The backends of one route: one, or one per split side; and its shadow.
#[derive(Debug)]
struct RouteBackends(Vec<Backend>, Option<Arc<Shadow>>);

/// A compiled table generation.
pub struct Snapshot {
    /// Increases by one with every successful reload.
    pub generation: u64,
    /// xxh3 of the file's bytes, to skip reloads of identical content.
    pub hash: u64,
    /// The validated table.
    pub table: Table,
    upstreams: Vec<Arc<Upstream>>,
    /// A second pool per upstream, used only by shadows and noise probes, so a hung
    /// shadow target never holds a connection the primary path could use.
    shadow_pools: Vec<Arc<Upstream>>,
    routes: Vec<RouteBackends>,
    default: Backend,
}

/// What the router decided for a request.
#[derive(Debug)]
pub struct Decision<'s> {
    /// Route name, or [`DEFAULT_ROUTE`].
    pub route: &'s str,
    /// Where the request goes.
    pub backend: &'s Backend,
    /// Request timeout.
    pub timeout: Duration,
    /// How a split side was chosen, if the route splits.
    pub assignment: Option<Assignment>,
    /// Which of the route's sides answers (0 unless it splits).
    pub side: usize,
    /// Where the route mirrors requests, if anywhere.
    pub shadow: Option<&'s Arc<Shadow>>,
}

impl Snapshot {
    /// Builds a generation, reusing the pools of `previous` for unchanged upstreams,
    /// and the shadow state of routes that stay shadowed.
    pub fn build(
        table: Table,
        hash: u64,
        generation: u64,
        metrics: &Metrics,
        shadows: &ShadowRegistry,
        previous: Option<&Snapshot>,
    ) -> Self {
        let pools = |previous: Option<&Vec<Arc<Upstream>>>| -> Vec<Arc<Upstream>> {
            table
                .upstreams
                .iter()
                .map(|spec| {
                    previous
                        .and_then(|p| p.iter().find(|u| u.spec == *spec))
                        .cloned()
                        .unwrap_or_else(|| Arc::new(Upstream::new(spec.clone())))
                })
                .collect()
        };
        let upstreams = pools(previous.map(|p| &p.upstreams));
        let shadow_pools = pools(previous.map(|p| &p.shadow_pools));
        // One metrics instance per route/upstream pair for the pair's whole life, so it
        // knows every series it created when a reload retires it.
        let previous_metrics: HashMap<(&str, &str), &BackendMetrics> = previous
            .map(|p| p.backend_metrics().map(|m| (m.labels(), m)).collect())
            .unwrap_or_default();
        let backend = |route: &str, index: usize| {
            let upstream = upstreams[index].clone();
            let metrics = match previous_metrics.get(&(route, upstream.spec.name.as_str())) {
                Some(existing) => (*existing).clone(),
                None => metrics.backend(route, &upstream.spec.name),
            };
            Backend { upstream, metrics }
        };
        let previous_shadow_metrics: HashMap<(&str, &str), &ShadowMetrics> = previous
            .map(|p| p.shadow_metrics().map(|m| (m.labels(), m)).collect())
            .unwrap_or_default();
        let states = shadows.update(
            table
                .routes
                .iter()
                .filter_map(|r| r.shadow.as_ref().map(|s| (r.name.as_str(), s))),
        );
        let routes = table
            .routes
            .iter()
            .map(|route| {
                let sides = match &route.target {
                    Target::Upstream(i) => vec![*i],
                    Target::Split { upstreams, .. } => upstreams.clone(),
                };
                let backends = sides.iter().map(|&i| backend(&route.name, i)).collect();
                let shadow = route.shadow.as_ref().and_then(|spec| {
                    let target = shadow_pools[spec.upstream].clone();
                    let name = target.spec.name.as_str();
                    let metrics = match previous_shadow_metrics.get(&(route.name.as_str(), name)) {
                        Some(existing) => (*existing).clone(),
                        None => metrics.shadow(&route.name, name),
                    };
                    let sides = sides
                        .iter()
                        .map(|&i| (i != spec.upstream).then(|| shadow_pools[i].clone()))
                        .collect();
                    let state = states.get(&route.name)?.clone();
                    Some(Arc::new(Shadow::new(
                        route,
                        spec,
                        target,
                        sides,
                        metrics,
                        state,
                        shadows.comparisons(),
                    )))
                });
                RouteBackends(backends, shadow)
            })
            .collect();
        let default = backend(DEFAULT_ROUTE, table.default_upstream);
        Snapshot {
            generation,
            hash,
            table,
            upstreams,
            shadow_pools,
            routes,
            default,
        }
    }

    /// Every shadowed route's metric handles.
    pub fn shadow_metrics(&self) -> impl Iterator<Item = &ShadowMetrics> {
        self.routes
            .iter()
            .filter_map(|r| r.1.as_ref())
            .map(|s| s.metrics())
    }

    /// Every route/upstream pair's metric handles, the default route's included.
    pub fn backend_metrics(&self) -> impl Iterator<Item = &BackendMetrics> {
        self.routes
            .iter()
            .flat_map(|r| r.0.iter())
            .chain(std::iter::once(&self.default))
            .map(|b| &b.metrics)
    }

    /// Removes the series of pairs `previous` had and this generation does not.
    pub fn retire_metrics_missing_from(&self, previous: &Snapshot) {
        let live: HashSet<(&str, &str)> = self.backend_metrics().map(|m| m.labels()).collect();
        for gone in previous
            .backend_metrics()
            .filter(|m| !live.contains(&m.labels()))
        {
            gone.retire();
        }
        let live: HashSet<(&str, &str)> = self.shadow_metrics().map(|m| m.labels()).collect();
        for gone in previous
            .shadow_metrics()
            .filter(|m| !live.contains(&m.labels()))
        {
            gone.retire();
        }
    }

    /// Chooses the backend for a request already matched to `route`.
    pub fn decide(&self, route: Option<RouteId>, fields: &Fields) -> Decision<'_> {
        let Some(id) = route else {
            return Decision {
                route: DEFAULT_ROUTE,
                backend: &self.default,
                timeout: self.table.default_timeout,
                assignment: None,
                side: 0,
                shadow: None,
            };
        };
        let spec = &self.table.routes[id];
        let RouteBackends(backends, shadow) = &self.routes[id];
        let (side, assignment) = match &spec.target {
            Target::Upstream(_) => (0, None),
            Target::Split { split, .. } => {
                let (side, assignment) = split.choose(fields);
                (side, Some(assignment))
            }
        };
        Decision {
            route: &spec.name,
            // Invariant: a split side index is always < the number of sides, and
            // `backends` has one entry per side (built together above).
            backend: &backends[side.min(backends.len() - 1)],
            timeout: spec.timeout,
            assignment,
            side,
            shadow: shadow.as_ref(),
        }
    }
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}
