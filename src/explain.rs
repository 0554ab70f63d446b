//! `ficus explain`: which route a request matches, why, and where it goes.
//!
//! The winner comes from the real matcher; the other routes that cover the
//! path are found by a linear scan and each is told why it lost, using the
//! same precedence rules ([`crate::routing::precedence`]).

use std::fmt::Write;

use http::Method;

use crate::config::{ShadowSpec, Table, Target};
use crate::message::Fields;
use crate::routing::path;
use crate::routing::split::bucket;

/// A human-readable explanation of how `table` routes one request.
pub fn explain(table: &Table, method: &Method, raw_path: &str, headers: &Fields) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; the results are ignored for that reason.
    let _ = writeln!(out, "request:   {method} {raw_path}");
    let (path_part, _query) = raw_path.split_once('?').unwrap_or((raw_path, ""));
    let normalized = match path::normalize(path_part) {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(
                out,
                "rejected:  400 Bad Request ({e}); no upstream is contacted"
            );
            return out;
        }
    };
    if normalized != path_part {
        let _ = writeln!(
            out,
            "path:      {normalized} (normalized; this is what is matched and forwarded)"
        );
    }
    let segments: Vec<&str> = path::segments(&normalized).collect();
    let winner = table.router.route(method, &normalized);
    match winner {
        Some(id) => {
            let route = &table.routes[id];
            let _ = writeln!(
                out,
                "route:     {} (line {}, {}{})",
                route.name,
                route.line,
                route.spec.pattern,
                methods(route)
            );
        }
        None => {
            let _ = writeln!(
                out,
                "route:     none matches; the default upstream answers (route label \"default\")"
            );
        }
    }
    for (id, other) in table.routes.iter().enumerate() {
        if Some(id) == winner || !other.spec.pattern.matches(&segments) {
            continue;
        }
        let reason = if !other.spec.accepts(method) {
            format!("does not accept {method}")
        } else if let Some(w) = winner {
            crate::routing::precedence(&table.routes[w].spec, &other.spec)
                .map_or(
                    "ties (a table with ties is rejected at load)",
                    |(_, why)| why,
                )
                .to_owned()
        } else {
            "unexpected: matches but did not win".to_owned()
        };
        let _ = writeln!(
            out,
            "  over:    {} (line {}, {}{}): {reason}",
            other.name,
            other.line,
            other.spec.pattern,
            methods(other)
        );
    }
    let (target, timeout) = match winner {
        Some(id) => (Some(&table.routes[id].target), table.routes[id].timeout),
        None => (None, table.default_timeout),
    };
    let endpoints = |i: usize| {
        let u = &table.upstreams[i];
        let list: Vec<String> = u
            .endpoints
            .iter()
            .map(|e| format!("{}://{}", e.scheme, e.authority))
            .collect();
        format!("upstream \"{}\" ({})", u.name, list.join(", "))
    };
    match target {
        None => {
            let _ = writeln!(out, "target:    {}", endpoints(table.default_upstream));
        }
        Some(Target::Upstream(i)) => {
            let _ = writeln!(out, "target:    {}", endpoints(*i));
        }
        Some(Target::Split {
            upstreams,
            weights,
            split,
        }) => {
            let sides: Vec<String> = upstreams
                .iter()
                .zip(weights)
                .map(|(&i, w)| format!("{} {w}%", table.upstreams[i].name))
                .collect();
            let _ = writeln!(out, "split:     {}", sides.join(" / "));
            match (
                &split.sticky,
                split.sticky.as_ref().and_then(|k| k.find(headers)),
            ) {
                (Some(key), Some(value)) => {
                    let b = bucket(value);
                    let side = split.side_for_bucket(b);
                    let _ = writeln!(
                        out,
                        "sticky:    {key} = \"{}\" -> bucket {b} of 10000 -> side {}",
                        String::from_utf8_lossy(value),
                        table.upstreams[upstreams[side]].name
                    );
                    let _ = writeln!(out, "target:    {}", endpoints(upstreams[side]));
                }
                (Some(key), None) => {
                    let _ = writeln!(
                        out,
                        "sticky:    {key} is missing from the request: each request is drawn at random by weight"
                    );
                }
                (None, _) => {
                    let _ = writeln!(
                        out,
                        "sticky:    none configured: each request is drawn at random by weight"
                    );
                }
            }
        }
    }
    let _ = writeln!(out, "timeout:   {timeout:?}");
    let shadow = winner.and_then(|id| table.routes[id].shadow.as_ref());
    let _ = writeln!(out, "shadow:    {}", describe_shadow(table, shadow, method));
    out
}

/// Whether a request with `method` would be mirrored, and where.
fn describe_shadow(table: &Table, shadow: Option<&ShadowSpec>, method: &Method) -> String {
    let Some(shadow) = shadow else {
        return "none: the route is not shadowed".into();
    };
    let target = &table.upstreams[shadow.upstream].name;
    if !shadow.methods.contains(method) {
        let listed: Vec<&str> = shadow.methods.iter().map(Method::as_str).collect();
        return format!(
            "not mirrored: {method} is not in shadow.methods ({})",
            listed.join(", ")
        );
    }
    let noise = match shadow.learn_noise {
        Some(sample) => format!("; noise learned from {}% of them", sample * 100.0),
        None => String::new(),
    };
    format!(
        "{}% of these requests are mirrored to upstream \"{target}\" (x-ficus-shadow: 1){noise}; \
         the client always gets the primary's answer",
        shadow.sample * 100.0
    )
}

fn methods(route: &crate::config::Route) -> String {
    match &route.spec.methods {
        Some(m) => format!(
            ", methods {}",
            m.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(",")
        ),
        None => String::new(),
    }
}
