//! Precedence and tie rules of the matcher, and a differential check against a linear scan.

use super::*;

fn spec(pattern: &str, methods: Option<&[&str]>) -> RouteSpec {
    let pattern = match pattern.strip_prefix("prefix:") {
        Some(p) => Pattern::prefix(p).unwrap(),
        None => Pattern::path(pattern).unwrap(),
    };
    RouteSpec {
        pattern,
        methods: methods.map(|m| {
            m.iter()
                .map(|m| Method::from_bytes(m.as_bytes()).unwrap())
                .collect()
        }),
    }
}

fn router(specs: &[RouteSpec]) -> Router {
    Router::new(specs).unwrap()
}

/// The route a linear scan picks using only [`precedence`]: the reference the trie must agree with.
fn linear(specs: &[RouteSpec], method: &Method, path: &str) -> Option<RouteId> {
    let segments: Vec<&str> = path::segments(path).collect();
    let mut best: Option<RouteId> = None;
    for (id, s) in specs.iter().enumerate() {
        if !s.pattern.matches(&segments) || !s.accepts(method) {
            continue;
        }
        best = match best {
            None => Some(id),
            Some(b) => match precedence(s, &specs[b]) {
                Some((std::cmp::Ordering::Greater, _)) => Some(id),
                _ => Some(b),
            },
        };
    }
    best
}

#[test]
fn exact_path_beats_prefix_whatever_the_order() {
    let specs = [
        spec("prefix:/api/users", None),
        spec("/api/users/{id}", None),
    ];
    let r = router(&specs);
    assert_eq!(r.route(&Method::GET, "/api/users/1"), Some(1));
    assert_eq!(r.route(&Method::GET, "/api/users/1/posts"), Some(0));
    assert_eq!(r.route(&Method::GET, "/api/users"), Some(0));
}

#[test]
fn longer_prefix_beats_shorter() {
    let specs = [
        spec("prefix:/api", None),
        spec("prefix:/api/messages", None),
    ];
    let r = router(&specs);
    assert_eq!(r.route(&Method::GET, "/api/messages/7"), Some(1));
    assert_eq!(r.route(&Method::GET, "/api/other"), Some(0));
    assert_eq!(r.route(&Method::GET, "/api"), Some(0));
}

#[test]
fn prefix_matches_whole_segments_only() {
    let r = router(&[spec("prefix:/api/messages", None)]);
    assert_eq!(r.route(&Method::GET, "/api/messages"), Some(0));
    assert_eq!(r.route(&Method::GET, "/api/messages/"), Some(0));
    assert_eq!(r.route(&Method::GET, "/api/messagesX"), None);
    assert_eq!(r.route(&Method::GET, "/api"), None);
}

#[test]
fn literal_segment_beats_param() {
    let specs = [
        spec("/api/users/{id}", None),
        spec("/api/users/me", None),
        spec("/api/{kind}/me", None),
    ];
    let r = router(&specs);
    assert_eq!(r.route(&Method::GET, "/api/users/me"), Some(1));
    assert_eq!(r.route(&Method::GET, "/api/users/42"), Some(0));
    assert_eq!(r.route(&Method::GET, "/api/teams/me"), Some(2));
}

#[test]
fn earlier_literal_wins_over_later_literal() {
    // `/a/b/{x}` is literal at segment 2, `/a/{y}/c` only at segment 3: the first difference decides.
    let specs = [spec("/a/{y}/c", None), spec("/a/b/{x}", None)];
    assert_eq!(router(&specs).route(&Method::GET, "/a/b/c"), Some(1));
}

#[test]
fn route_with_methods_beats_one_without_and_others_fall_through() {
    let specs = [
        spec("/api/users/{id}", None),
        spec("/api/users/{id}", Some(&["GET"])),
    ];
    let r = router(&specs);
    assert_eq!(r.route(&Method::GET, "/api/users/1"), Some(1));
    assert_eq!(r.route(&Method::DELETE, "/api/users/1"), Some(0));
}

#[test]
fn method_mismatch_falls_back_to_less_specific_route() {
    let specs = [
        spec("prefix:/api", None),
        spec("/api/users/me", Some(&["POST"])),
        spec("/api/users/{id}", Some(&["GET"])),
    ];
    let r = router(&specs);
    assert_eq!(
        r.route(&Method::GET, "/api/users/me"),
        Some(2),
        "literal route refuses GET: the param route takes it"
    );
    assert_eq!(
        r.route(&Method::PUT, "/api/users/me"),
        Some(0),
        "no path route takes PUT: the prefix does"
    );
    assert_eq!(r.route(&Method::PUT, "/elsewhere"), None);
}

#[test]
fn matching_is_case_insensitive_and_ignores_trailing_slash() {
    let r = router(&[spec("/api/users/{id}", None)]);
    assert_eq!(r.route(&Method::GET, "/API/Users/7"), Some(0));
    assert_eq!(r.route(&Method::GET, "/api/users/7/"), Some(0));
}

#[test]
fn root_prefix_catches_everything() {
    let r = router(&[spec("prefix:/", None)]);
    assert_eq!(r.route(&Method::GET, "/"), Some(0));
    assert_eq!(r.route(&Method::GET, "/a/b"), Some(0));
}

#[test]
fn ties_are_rejected() {
    let cases: [(&[RouteSpec], Tie); 4] = [
        (
            &[spec("/a/{x}", None), spec("/a/{y}", None)],
            Tie {
                first: 0,
                second: 1,
            },
        ),
        (
            &[spec("prefix:/a", None), spec("prefix:/a", None)],
            Tie {
                first: 0,
                second: 1,
            },
        ),
        (
            &[
                spec("/a", Some(&["GET", "POST"])),
                spec("/a", Some(&["POST"])),
            ],
            Tie {
                first: 0,
                second: 1,
            },
        ),
        (
            &[spec("/x", None), spec("/A", None), spec("/a", None)],
            Tie {
                first: 1,
                second: 2,
            },
        ),
    ];
    for (specs, tie) in cases {
        assert_eq!(Router::new(specs).unwrap_err(), vec![tie], "{specs:?}");
    }
}

#[test]
fn disjoint_methods_and_path_vs_prefix_do_not_tie() {
    let specs = [
        spec("/a", Some(&["GET"])),
        spec("/a", Some(&["POST"])),
        spec("/a", None),
        spec("prefix:/a", None),
    ];
    assert!(Router::new(&specs).is_ok());
}

#[test]
fn long_paths_spill_past_the_stack_buffer() {
    let deep: String = (0..40).map(|i| format!("/s{i}")).collect();
    let r = router(&[spec(&deep, None), spec("prefix:/s0/s1", None)]);
    assert_eq!(r.route(&Method::GET, &deep), Some(0));
    assert_eq!(r.route(&Method::GET, &format!("{deep}/more")), Some(1));
}

#[test]
fn trie_agrees_with_linear_scan_on_random_tables() {
    let mut rng = fastrand::Rng::with_seed(7);
    let words = ["api", "users", "me", "v2", "orders", "x"];
    let methods = [None, Some(&["GET"][..]), Some(&["POST"][..])];
    for _ in 0..300 {
        let mut specs = Vec::new();
        for _ in 0..rng.usize(1..12) {
            let len = rng.usize(0..4);
            let mut text = String::new();
            for _ in 0..len {
                text.push('/');
                if rng.u8(0..3) == 0 {
                    text.push_str("{p}")
                } else {
                    text.push_str(words[rng.usize(..words.len())])
                }
            }
            if text.is_empty() {
                text.push('/');
            }
            let prefix = rng.bool() && !text.contains('{');
            let candidate = spec(
                &if prefix {
                    format!("prefix:{text}")
                } else {
                    text
                },
                methods[rng.usize(..3)],
            );
            specs.push(candidate);
            if Router::new(&specs).is_err() {
                specs.pop();
            }
        }
        let r = router(&specs);
        for _ in 0..50 {
            let path: String = (0..rng.usize(0..5))
                .map(|_| format!("/{}", words[rng.usize(..words.len())]))
                .collect();
            let path = if path.is_empty() {
                "/".to_owned()
            } else {
                path
            };
            for method in [Method::GET, Method::POST, Method::PUT] {
                assert_eq!(
                    r.route(&method, &path),
                    linear(&specs, &method, &path),
                    "{method} {path} in {specs:?}"
                );
            }
        }
    }
}

#[test]
fn ten_thousand_routes_build_and_match() {
    let specs: Vec<RouteSpec> = (0..10_000)
        .map(|i| {
            if i % 2 == 0 {
                spec(&format!("/svc{i}/items/{{id}}"), None)
            } else {
                spec(&format!("prefix:/svc{i}"), None)
            }
        })
        .collect();
    let r = router(&specs);
    assert_eq!(r.route(&Method::GET, "/svc9998/items/1"), Some(9998));
    assert_eq!(r.route(&Method::GET, "/svc9999/anything/below"), Some(9999));
    assert_eq!(r.route(&Method::GET, "/svc10000"), None);
}
