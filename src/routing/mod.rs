//! Route matching: which route of the table answers a request.
//!
//! The matcher is a segment trie built once per table generation. Literal
//! segments are compared ASCII-case-insensitively (the Express monolith behind
//! ficus routes that way, so `/API/Users` must not slip past a migrated route to
//! the monolith) and a trailing slash is ignored for the same reason.
//!
//! Precedence, in one place ([`precedence`]): an exact `path` beats a `prefix`;
//! among paths, a literal segment beats a `{param}` at the first segment where
//! they differ; among prefixes, the longer one wins; on the same pattern, a route
//! listing `methods` beats one that does not. Two routes that would tie are
//! rejected when the table is built ([`Router::new`]), so no edit can silently
//! hide another route.

pub mod path;
pub mod split;

use rustc_hash::FxHashMap;

use http::Method;

/// Index of a route in its table.
pub type RouteId = usize;

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Matches this text, ASCII-case-insensitively (stored lower-cased).
    Literal(Box<str>),
    /// Matches any single non-empty segment.
    Param(Box<str>),
}

/// What part of the path space a route covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// Exactly this template (`path = "/api/users/{id}"`).
    Path(Vec<Segment>),
    /// This path and every path below it, on whole segments (`prefix = "/api"`).
    Prefix(Vec<Box<str>>),
}

impl Pattern {
    /// Parses a `path` template. The text must already be a canonical path.
    pub fn path(text: &str) -> Result<Self, String> {
        let mut segments = Vec::new();
        for segment in path::segments(text) {
            if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!(
                        "parameter \"{segment}\" must be a name in braces, like {{id}}"
                    ));
                }
                segments.push(Segment::Param(name.into()));
            } else if segment.contains(['{', '}']) {
                return Err(format!(
                    "segment \"{segment}\" mixes text and braces; a parameter must be a whole segment, like {{id}}"
                ));
            } else {
                segments.push(Segment::Literal(segment.to_ascii_lowercase().into()));
            }
        }
        Ok(Pattern::Path(segments))
    }

    /// Parses a literal `prefix`. The text must already be a canonical path.
    pub fn prefix(text: &str) -> Result<Self, String> {
        let mut segments = Vec::new();
        for segment in path::segments(text) {
            if segment.contains(['{', '}']) {
                return Err("a prefix is literal; use `path` for {param} templates".into());
            }
            segments.push(segment.to_ascii_lowercase().into());
        }
        Ok(Pattern::Prefix(segments))
    }

    /// Whether this pattern covers the (normalized) path given as segments.
    pub fn matches(&self, segments: &[&str]) -> bool {
        match self {
            Pattern::Path(template) => {
                template.len() == segments.len()
                    && template.iter().zip(segments).all(|(t, s)| match t {
                        Segment::Literal(lit) => lit.eq_ignore_ascii_case(s),
                        Segment::Param(_) => true,
                    })
            }
            Pattern::Prefix(prefix) => {
                prefix.len() <= segments.len()
                    && prefix
                        .iter()
                        .zip(segments)
                        .all(|(p, s)| p.eq_ignore_ascii_case(s))
            }
        }
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, parts): (&str, Vec<String>) = match self {
            Pattern::Path(segs) => (
                "path",
                segs.iter()
                    .map(|s| match s {
                        Segment::Literal(l) => l.to_string(),
                        Segment::Param(p) => format!("{{{p}}}"),
                    })
                    .collect(),
            ),
            Pattern::Prefix(segs) => ("prefix", segs.iter().map(|s| s.to_string()).collect()),
        };
        write!(f, "{kind} /{}", parts.join("/"))
    }
}

/// The part of a route the matcher needs.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    /// What the route covers.
    pub pattern: Pattern,
    /// Accepted methods; `None` accepts all.
    pub methods: Option<Vec<Method>>,
}

impl RouteSpec {
    /// Whether the route accepts this method.
    pub fn accepts(&self, method: &Method) -> bool {
        self.methods.as_ref().is_none_or(|m| m.contains(method))
    }
}

/// Two routes that would tie: the table is rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tie {
    /// The route defined first in the file.
    pub first: RouteId,
    /// The route that ties with it.
    pub second: RouteId,
}

/// Routes sharing one trie position, those listing methods first.
#[derive(Debug, Default)]
struct Entries(Vec<(Option<Vec<Method>>, RouteId)>);

impl Entries {
    fn insert(&mut self, methods: &Option<Vec<Method>>, id: RouteId) -> Result<(), Tie> {
        for (existing, other) in &self.0 {
            let overlap = match (existing, methods) {
                (None, None) => true,
                (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
                _ => false,
            };
            if overlap {
                return Err(Tie {
                    first: *other,
                    second: id,
                });
            }
        }
        self.0.push((methods.clone(), id));
        // Invariant: routes listing methods are tried before the catch-all one.
        self.0.sort_by_key(|(m, _)| m.is_none());
        Ok(())
    }

    fn pick(&self, method: &Method) -> Option<RouteId> {
        self.0
            .iter()
            .find(|(m, _)| m.as_ref().is_none_or(|m| m.contains(method)))
            .map(|(_, id)| *id)
    }
}

#[derive(Debug, Default)]
struct Node {
    /// FxHash: keys are the table's own literals, so request input cannot choose
    /// collisions, and SipHash's DoS resistance would only cost time here.
    literal: FxHashMap<Box<str>, Node>,
    param: Option<Box<Node>>,
    exact: Entries,
    prefix: Entries,
}

/// The compiled matcher of one table generation. Immutable once built.
#[derive(Debug, Default)]
pub struct Router {
    root: Node,
}

impl Router {
    /// Builds the matcher, rejecting every pair of routes that would tie.
    pub fn new(routes: &[RouteSpec]) -> Result<Self, Vec<Tie>> {
        let mut root = Node::default();
        let mut ties = Vec::new();
        for (id, route) in routes.iter().enumerate() {
            let mut node = &mut root;
            let entries = match &route.pattern {
                Pattern::Path(segments) => {
                    for segment in segments {
                        node = match segment {
                            Segment::Literal(lit) => node.literal.entry(lit.clone()).or_default(),
                            Segment::Param(_) => node.param.get_or_insert_with(Default::default),
                        };
                    }
                    &mut node.exact
                }
                Pattern::Prefix(segments) => {
                    for segment in segments {
                        node = node.literal.entry(segment.clone()).or_default();
                    }
                    &mut node.prefix
                }
            };
            if let Err(tie) = entries.insert(&route.methods, id) {
                ties.push(tie);
            }
        }
        if ties.is_empty() {
            Ok(Router { root })
        } else {
            Err(ties)
        }
    }

    /// The most specific route accepting `method` for a normalized path, or `None`
    /// for the default upstream.
    pub fn route(&self, method: &Method, path: &str) -> Option<RouteId> {
        // Paths are short; a fixed stack buffer keeps the common case allocation-free.
        let mut buf: [&str; 16] = [""; 16];
        let mut count = 0;
        let mut spill: Vec<&str> = Vec::new();
        for segment in path::segments(path) {
            if count < buf.len() {
                buf[count] = segment;
            } else {
                if spill.is_empty() {
                    spill.extend_from_slice(&buf);
                }
                spill.push(segment);
            }
            count += 1;
        }
        if !spill.is_empty() {
            return find_exact(&self.root, &spill, method)
                .or_else(|| find_prefix(&self.root, &spill, method));
        }
        let segments = &buf[..count];
        // The exact search starts down the literal chain and the prefix search walks
        // only it: walked once, the chain serves both (each step is a hash lookup).
        let mut chain: [&Node; 17] = [&self.root; 17];
        let mut depth = 0;
        while let Some(next) = segments.get(depth).and_then(|s| child(chain[depth], s)) {
            depth += 1;
            chain[depth] = next;
        }
        if depth == count
            && let Some(found) = chain[depth].exact.pick(method)
        {
            return Some(found);
        }
        // As the depth-first search goes on: segment `d` taken by a {param} instead of
        // a literal, the deepest first (the last segment, when all matched literally).
        let deepest = depth.min(count.saturating_sub(1));
        for d in (0..=deepest).rev().filter(|_| count > 0) {
            let param = chain[d].param.as_deref();
            if let Some(found) = param.and_then(|n| find_exact(n, &segments[d + 1..], method)) {
                return Some(found);
            }
        }
        chain[..=depth]
            .iter()
            .rev()
            .find_map(|node| node.prefix.pick(method))
    }
}

fn child<'n>(node: &'n Node, segment: &str) -> Option<&'n Node> {
    if segment.bytes().any(|b| b.is_ascii_uppercase()) {
        node.literal.get(segment.to_ascii_lowercase().as_str())
    } else {
        node.literal.get(segment)
    }
}

/// Depth-first, literal before param: the first complete match is the most specific.
fn find_exact(node: &Node, segments: &[&str], method: &Method) -> Option<RouteId> {
    let Some((first, rest)) = segments.split_first() else {
        return node.exact.pick(method);
    };
    if let Some(found) = child(node, first).and_then(|n| find_exact(n, rest, method)) {
        return Some(found);
    }
    node.param
        .as_deref()
        .and_then(|n| find_exact(n, rest, method))
}

/// Walks literal segments as deep as they go; the deepest prefix accepting the method wins.
fn find_prefix(root: &Node, segments: &[&str], method: &Method) -> Option<RouteId> {
    let mut best = root.prefix.pick(method);
    let mut node = root;
    for segment in segments {
        match child(node, segment) {
            Some(next) => node = next,
            None => break,
        }
        if let Some(found) = node.prefix.pick(method) {
            best = Some(found);
        }
    }
    best
}

/// Why one route beats another that also matches, or `None` if they would tie.
/// Used by [`crate::explain`] and by tests that check the trie against a linear scan.
pub fn precedence(a: &RouteSpec, b: &RouteSpec) -> Option<(std::cmp::Ordering, &'static str)> {
    use std::cmp::Ordering::{Greater, Less};
    match (&a.pattern, &b.pattern) {
        (Pattern::Path(_), Pattern::Prefix(_)) => {
            return Some((Greater, "an exact path beats a prefix"));
        }
        (Pattern::Prefix(_), Pattern::Path(_)) => {
            return Some((Less, "an exact path beats a prefix"));
        }
        (Pattern::Path(x), Pattern::Path(y)) => {
            for (sx, sy) in x.iter().zip(y) {
                match (sx, sy) {
                    (Segment::Literal(_), Segment::Param(_)) => {
                        return Some((Greater, "a literal segment beats a {param}"));
                    }
                    (Segment::Param(_), Segment::Literal(_)) => {
                        return Some((Less, "a literal segment beats a {param}"));
                    }
                    _ => {}
                }
            }
        }
        (Pattern::Prefix(x), Pattern::Prefix(y)) => {
            if x.len() != y.len() {
                return Some((x.len().cmp(&y.len()), "a longer prefix beats a shorter one"));
            }
        }
    }
    match (&a.methods, &b.methods) {
        (Some(_), None) => Some((Greater, "a route listing methods beats one that does not")),
        (None, Some(_)) => Some((Less, "a route listing methods beats one that does not")),
        _ => None,
    }
}

#[cfg(test)]
#[path = "router_tests.rs"]
mod tests;
