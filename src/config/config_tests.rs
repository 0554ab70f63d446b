//! Validation messages: each names the line, the route or upstream, and the fix.

use super::*;

const UPSTREAMS: &str = r#"
default = "legacy"
[upstreams.legacy]
endpoints = ["http://127.0.0.1:3000"]
[upstreams.users]
endpoints = ["http://127.0.0.1:4001", "http://127.0.0.1:4002"]
"#;

fn check(rest: &str) -> Result<Table, String> {
    parse(&format!("{UPSTREAMS}{rest}"), Path::new("routes.toml")).map_err(|e| e.to_string())
}

fn error(rest: &str) -> String {
    check(rest).expect_err("the table should be rejected")
}

#[test]
fn example_tables_are_valid() {
    for file in ["routes.toml", "examples/demo/routes.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        load(&path).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn defaults_apply_when_sections_are_absent() {
    let table = check("").unwrap();
    assert_eq!(table.listen.proxy, defaults::PROXY.parse().unwrap());
    assert_eq!(table.listen.admin, defaults::ADMIN.parse().unwrap());
    assert_eq!(
        table.server.header_read_timeout,
        defaults::HEADER_READ_TIMEOUT
    );
    assert_eq!(
        table.server.stream_idle_timeout,
        defaults::STREAM_IDLE_TIMEOUT
    );
    assert_eq!(table.default_timeout, defaults::ROUTE_TIMEOUT);
    let users = &table.upstreams[table.upstream_index("users").unwrap()];
    assert_eq!(users.pool_idle_timeout, Duration::from_secs(4));
    assert_eq!(users.endpoints.len(), 2);
}

#[test]
fn toml_syntax_error_names_line() {
    let e = error("[[routes]]\nname = \"a\nupstream = \"legacy\"\n");
    assert!(e.starts_with("routes.toml:8:"), "{e}");
    assert!(e.contains("invalid TOML"), "{e}");
}

#[test]
fn unknown_key_is_an_error_not_ignored() {
    let e = error("[[routes]]\nname = \"a\"\nprefix = \"/a\"\nupstrem = \"legacy\"\n");
    assert!(e.contains("unknown field `upstrem`"), "{e}");
    assert!(e.starts_with("routes.toml:10:"), "{e}");
}

#[test]
fn unknown_upstream_names_route_line_and_choices() {
    let e = error(
        "\n[[routes]]\nname = \"users-read\"\npath = \"/api/users/{id}\"\nupstream = \"userz\"\n",
    );
    assert!(e.starts_with("routes.toml:8: route \"users-read\""), "{e}");
    assert!(
        e.contains(
            "upstream \"userz\" is not defined; add [upstreams.userz] or use one of: legacy, users"
        ),
        "{e}"
    );
}

#[test]
fn unknown_default_upstream_is_rejected() {
    let e = parse(
        "default = \"nope\"\n[upstreams.legacy]\nendpoints = [\"http://127.0.0.1:1\"]\n",
        Path::new("t.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("t.toml:1: default: upstream \"nope\" is not defined"),
        "{e}"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let e = error(
        "[[routes]]\nname = \"a\"\nprefix = \"/a\"\nupstream = \"x\"\n\
         [[routes]]\nname = \"b\"\nupstream = \"legacy\"\n\
         [[routes]]\nname = \"a\"\nprefix = \"/c\"\nupstream = \"legacy\"\n",
    );
    assert_eq!(e.lines().count(), 3, "{e}");
    assert!(
        e.contains("route \"a\": upstream: upstream \"x\" is not defined"),
        "{e}"
    );
    assert!(
        e.contains("route \"b\": needs `path` (a template) or `prefix`"),
        "{e}"
    );
    assert!(
        e.contains("route \"a\": name already used by the route at line 7"),
        "{e}"
    );
}

#[test]
fn ties_name_both_routes_and_lines() {
    let e = error(
        "[[routes]]\nname = \"one\"\npath = \"/a/{x}\"\nupstream = \"legacy\"\n[[routes]]\nname = \"two\"\npath = \"/a/{y}\"\nupstream = \"users\"\n",
    );
    assert!(
        e.starts_with("routes.toml:11: route \"two\" ties with route \"one\" (line 7)"),
        "{e}"
    );
    assert!(e.contains("disjoint `methods`"), "{e}");
}

#[test]
fn route_shape_errors() {
    let cases = [
        (
            "path = \"/a\"\nprefix = \"/a\"\nupstream = \"legacy\"",
            "has both `path` and `prefix`",
        ),
        (
            "path = \"/a\"\nupstream = \"legacy\"\nsplit = { legacy = 50, users = 50 }",
            "has both `upstream` and `split`",
        ),
        ("path = \"/a\"", "needs `upstream` or `split`"),
        (
            "path = \"/a/../b\"\nupstream = \"legacy\"",
            "not in canonical form; write \"/b\"",
        ),
        (
            "path = \"/a//b\"\nupstream = \"legacy\"",
            "not in canonical form; write \"/a/b\"",
        ),
        (
            "path = \"/a/x{id}\"\nupstream = \"legacy\"",
            "a parameter must be a whole segment",
        ),
        (
            "prefix = \"/a/{id}\"\nupstream = \"legacy\"",
            "a prefix is literal",
        ),
        ("path = \"a\"\nupstream = \"legacy\"", "must start with '/'"),
        (
            "path = \"/a\"\nmethods = []\nupstream = \"legacy\"",
            "methods is empty",
        ),
        (
            "path = \"/a\"\nmethods = [\"GE T\"]\nupstream = \"legacy\"",
            "\"GE T\" is not an HTTP method",
        ),
        (
            "path = \"/a\"\nupstream = \"legacy\"\ntimeout = \"2\"",
            "timeout: \"2\" has no unit",
        ),
        (
            "path = \"/a\"\nupstream = \"legacy\"\ntimeout = \"0s\"",
            "must be greater than zero",
        ),
        (
            "path = \"/a\"\nupstream = \"legacy\"\ntimeout = \"25h\"",
            "must be at most 24h",
        ),
        (
            "path = \"/a\"\nupstream = \"legacy\"\nsticky = \"header:x\"",
            "`sticky` only applies to a `split`",
        ),
        (
            "path = \"/a\"\nsplit = { legacy = 60, users = 30 }",
            "split weights sum to 90, not 100",
        ),
        (
            "path = \"/a\"\nsplit = { legacy = 100 }",
            "at least two upstreams",
        ),
        (
            "path = \"/a\"\nsplit = { legacy = 50.555, users = 49.445 }",
            "at most two decimals",
        ),
        (
            "path = \"/a\"\nsplit = { legacy = 50, users = 50 }\nsticky = \"user\"",
            "write \"header:NAME\" or \"cookie:NAME\"",
        ),
    ];
    for (body, expected) in cases {
        let e = error(&format!("[[routes]]\nname = \"r\"\n{body}\n"));
        assert!(e.starts_with("routes.toml:7: route \"r\": "), "{body}: {e}");
        assert!(e.contains(expected), "{body}: expected {expected:?} in {e}");
    }
}

#[test]
fn fractional_split_weights_are_basis_points() {
    let table = check(
        "[[routes]]\nname = \"r\"\nprefix = \"/a\"\nsplit = { legacy = 99.5, users = 0.5 }\n",
    )
    .unwrap();
    let Target::Split { weights, .. } = &table.routes[0].target else {
        panic!("not a split")
    };
    assert_eq!(weights, &[99.5, 0.5]);
}

#[test]
fn upstream_errors() {
    let cases = [
        ("endpoints = []", "endpoints is empty"),
        ("endpoints = [\"127.0.0.1:1\"]", "must start with http://"),
        (
            "endpoints = [\"https://a:1\"]",
            "https upstreams are not supported yet",
        ),
        ("endpoints = [\"http://a:1/base\"]", "must not have a path"),
        (
            "endpoints = [\"http://u:p@a:1\"]",
            "must not contain credentials",
        ),
        (
            "endpoints = [\"http://a:1\"]\nconnect_timeout = \"fast\"",
            "connect_timeout: \"fast\" does not start with a number",
        ),
    ];
    for (body, expected) in cases {
        let e = parse(
            &format!("default = \"legacy\"\n[upstreams.legacy]\n{body}\n"),
            Path::new("t.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("t.toml:2: upstream \"legacy\""),
            "{body}: {e}"
        );
        assert!(e.contains(expected), "{body}: expected {expected:?} in {e}");
    }
}

#[test]
fn listen_and_server_errors() {
    let e = error("[listen]\nproxy = \"localhost\"\n");
    assert!(
        e.contains("listen.proxy: \"localhost\" is not an address"),
        "{e}"
    );
    let e = error("[server]\nmax_connections = 0\nidle_timeout = \"1x\"\n");
    assert!(
        e.contains("server.max_connections: must be at least 1"),
        "{e}"
    );
    assert!(
        e.contains("server.idle_timeout: \"1x\" has an unknown unit"),
        "{e}"
    );
}

#[test]
fn oversized_and_missing_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.toml");
    std::fs::write(&big, vec![b'#'; (MAX_FILE_BYTES + 10) as usize]).unwrap();
    assert!(
        load(&big)
            .unwrap_err()
            .to_string()
            .contains("larger than 1048576 bytes")
    );
    let missing = dir.path().join("missing.toml");
    assert!(
        load(&missing)
            .unwrap_err()
            .to_string()
            .contains("cannot read")
    );
    let binary = dir.path().join("bin.toml");
    std::fs::write(&binary, [0xff, 0xfe]).unwrap();
    assert!(
        load(&binary)
            .unwrap_err()
            .to_string()
            .contains("not valid UTF-8")
    );
}

#[test]
fn empty_file_names_the_missing_default() {
    let e = parse("", Path::new("t.toml")).unwrap_err().to_string();
    assert!(e.contains("missing field `default`"), "{e}");
}

#[test]
fn shadow_errors_name_the_shadow_line_and_the_fix() {
    let cases = [
        (
            "upstream = \"nope\", sample = 0.5",
            "shadow.upstream: upstream \"nope\" is not defined",
        ),
        (
            "upstream = \"legacy\", sample = 0.5",
            "already answers this route",
        ),
        (
            "upstream = \"users\", sample = 1.5",
            "shadow.sample: 1.5 is not a fraction",
        ),
        ("upstream = \"users\", sample = -0.1", "is not a fraction"),
        ("upstream = \"users\"", "missing field `sample`"),
        (
            "upstream = \"users\", sample = 1.0, methods = []",
            "shadow.methods: empty",
        ),
        (
            "upstream = \"users\", sample = 1.0, methods = [\"G T\"]",
            "\"G T\" is not an HTTP method",
        ),
        (
            "upstream = \"users\", sample = 1.0, max_body = 1000000000",
            "max_body: 1000000000 bytes is more than",
        ),
        (
            "upstream = \"users\", sample = 1.0, concurrency = 0",
            "concurrency: must be from 1",
        ),
        (
            "upstream = \"users\", sample = 1.0, timeout = \"5\"",
            "shadow.timeout: \"5\" has no unit",
        ),
        (
            "upstream = \"users\", sample = 1.0, noise = \"guess\"",
            "use \"learn\" or \"off\"",
        ),
        (
            "upstream = \"users\", sample = 1.0, noise_sample = 0.5",
            "only applies with noise = \"learn\"",
        ),
        (
            "upstream = \"users\", sample = 1.0, noise = \"learn\", noise_sample = 0.0",
            "must be above 0.0",
        ),
        (
            "upstream = \"users\", sample = 1.0, compare = { headers = [\"*\", \"etag\"] }",
            "\"*\" only means all headers in compare.headers, as its only entry",
        ),
        (
            "upstream = \"users\", sample = 1.0, ignore = { headers = [\"bad header\"] }",
            "not a header name",
        ),
        (
            "upstream = \"users\", sample = 1.0, ignore = { json = [\"meta.took_ms\"] }",
            "shadow.ignore.json: \"meta.took_ms\"",
        ),
        (
            "upstream = \"users\", sample = 1.0, redact = [\"\"]",
            "shadow.redact",
        ),
        (
            "upstream = \"users\", sample = 1.0, compare = { body = \"yes\" }",
            "invalid type",
        ),
        (
            "upstream = \"users\", sample = 1.0, mirror = true",
            "unknown field `mirror`",
        ),
    ];
    for (shadow, expected) in cases {
        let e = error(&format!(
            "[[routes]]\nname = \"r\"\npath = \"/a\"\nupstream = \"legacy\"\nshadow = {{ {shadow} }}\n"
        ));
        assert!(e.starts_with("routes.toml:11:"), "{shadow}: {e}");
        assert!(
            e.contains(expected),
            "{shadow}: expected {expected:?} in {e}"
        );
    }
}

#[test]
fn shadow_defaults_and_keys_compile() {
    let table = check(
        "[[routes]]\nname = \"r\"\nprefix = \"/a\"\nupstream = \"legacy\"\n\
         [routes.shadow]\nupstream = \"users\"\nsample = 0.25\n\
         [[routes]]\nname = \"s\"\nprefix = \"/b\"\nupstream = \"legacy\"\n\
         shadow = { upstream = \"users\", sample = 1, methods = [\"post\"], max_body = 10, timeout = \"2s\", \
         concurrency = 3, compare = { status = false, headers = [\"*\"], body = false }, \
         ignore = { headers = [\"etag\"], json = [\"$..etag\"] }, noise = \"learn\", redact = [\"X-Api-Key\"] }\n",
    )
    .unwrap();
    let r = table.routes[0].shadow.as_ref().unwrap();
    assert_eq!(table.upstreams[r.upstream].name, "users");
    assert_eq!(r.sample, 0.25);
    assert_eq!(r.methods, vec![Method::GET, Method::HEAD]);
    assert_eq!(r.max_body, defaults::SHADOW_MAX_BODY);
    assert_eq!(r.timeout, defaults::SHADOW_TIMEOUT);
    assert_eq!(r.concurrency, defaults::SHADOW_CONCURRENCY);
    assert!(r.compare.status && r.compare.body);
    assert_eq!(
        r.compare.headers,
        crate::shadow::compare::HeaderSelection::None
    );
    assert_eq!(r.learn_noise, None);
    assert!(r.redacts(&http::header::SET_COOKIE));
    assert_eq!(r.line, 11);

    let s = table.routes[1].shadow.as_ref().unwrap();
    assert_eq!(s.methods, vec![Method::POST]);
    assert_eq!((s.max_body, s.concurrency), (10, 3));
    assert_eq!(s.timeout, Duration::from_secs(2));
    assert!(!s.compare.status && !s.compare.body);
    assert_eq!(
        s.compare.headers,
        crate::shadow::compare::HeaderSelection::All
    );
    assert_eq!(s.compare.ignore_json.len(), 1);
    assert_eq!(s.learn_noise, Some(defaults::SHADOW_NOISE_SAMPLE));
    assert!(s.redacts(&http::HeaderName::from_static("x-api-key")));
}
