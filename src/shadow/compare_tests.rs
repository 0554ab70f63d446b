use super::*;

use http::HeaderValue;

/// A buffered response for tests.
struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn new(body: impl Into<Vec<u8>>) -> Self {
        Resp {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: body.into(),
        }
    }

    fn status(mut self, code: u16) -> Self {
        self.status = StatusCode::from_u16(code).unwrap();
        self
    }

    fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
        self
    }

    fn obs(&self) -> Observed<'_> {
        Observed {
            status: self.status,
            headers: &self.headers,
            body: &self.body,
        }
    }
}

fn redact_default(name: &HeaderName) -> bool {
    [
        "authorization",
        "cookie",
        "set-cookie",
        "proxy-authorization",
    ]
    .contains(&name.as_str())
}

fn run(spec: &CompareSpec, noise: &Noise, primary: &Resp, shadow: &Resp) -> Comparison {
    compare(spec, noise, &redact_default, primary.obs(), shadow.obs())
}

fn diffs(primary: &Resp, shadow: &Resp) -> Vec<Difference> {
    let result = run(&CompareSpec::default(), &Noise::default(), primary, shadow);
    assert!(!result.truncated);
    result.differences
}

fn paths(texts: &[&str]) -> Vec<JsonPath> {
    texts.iter().map(|t| JsonPath::parse(t).unwrap()).collect()
}

fn json(path: &str, primary: Option<&str>, shadow: Option<&str>) -> Difference {
    Difference::Json {
        path: path.to_owned(),
        primary: primary.map(str::to_owned),
        shadow: shadow.map(str::to_owned),
    }
}

fn text(line: usize, primary: Option<&str>, shadow: Option<&str>) -> Difference {
    Difference::Text {
        line,
        primary: primary.map(str::to_owned),
        shadow: shadow.map(str::to_owned),
    }
}

fn header(name: &str, primary: Option<&str>, shadow: Option<&str>) -> Difference {
    Difference::Header {
        name: name.to_owned(),
        primary: primary.map(str::to_owned),
        shadow: shadow.map(str::to_owned),
    }
}

/// (name, primary body, shadow body, differences).
type BodyCase = (&'static str, &'static [u8], &'static [u8], Vec<Difference>);

#[test]
fn bodies_compare_by_the_table() {
    let kind = |primary, shadow| Difference::BodyKind { primary, shadow };
    let binary = |offset, primary_len, shadow_len| Difference::Binary {
        offset,
        primary_len,
        shadow_len,
    };
    let cases: Vec<BodyCase> = vec![
        ("identical bytes", b"{\"a\":1}", b"{\"a\":1}", vec![]),
        ("both empty", b"", b"", vec![]),
        (
            "reordered keys and whitespace",
            b"{\"a\":1,\"b\":[1,2],\"c\":{\"x\":null,\"y\":true}}",
            b" {\n \"c\" : {\"y\":true, \"x\":null},\n \"b\" : [ 1, 2 ], \"a\": 1 }\n",
            vec![],
        ),
        ("1 equals 1.0", b"{\"n\":1}", b"{\"n\":1.0}", vec![]),
        ("1 equals 1e0", b"[1]", b"[1e0]", vec![]),
        ("-0 equals 0", b"[-0]", b"[0.0]", vec![]),
        (
            "large integers compare exactly",
            b"[9007199254740993]",
            b"[9007199254740992]",
            vec![json(
                "$[0]",
                Some("9007199254740993"),
                Some("9007199254740992"),
            )],
        ),
        (
            "u64 beyond i64 compares exactly",
            b"[18446744073709551615]",
            b"[18446744073709551615]  ",
            vec![],
        ),
        (
            "nested value differs",
            b"{\"a\":{\"b\":1,\"c\":2}}",
            b"{\"a\":{\"b\":2,\"c\":2}}",
            vec![json("$.a.b", Some("1"), Some("2"))],
        ),
        (
            "absent on one side",
            b"{\"a\":1,\"b\":{\"x\":[1]}}",
            b"{\"a\":1,\"c\":\"new\"}",
            vec![
                json("$.b", Some("{\"x\":[1]}"), None),
                json("$.c", None, Some("\"new\"")),
            ],
        ),
        (
            "extra array elements on one side",
            b"{\"xs\":[1,2,3]}",
            b"{\"xs\":[1]}",
            vec![
                json("$.xs[1]", Some("2"), None),
                json("$.xs[2]", Some("3"), None),
            ],
        ),
        (
            "kinds of value differ",
            b"{\"a\":[1],\"b\":\"1\",\"c\":null}",
            b"{\"a\":{\"x\":1},\"b\":1,\"c\":false}",
            vec![
                json("$.a", Some("[1]"), Some("{\"x\":1}")),
                json("$.b", Some("\"1\""), Some("1")),
                json("$.c", Some("null"), Some("false")),
            ],
        ),
        (
            "odd keys are rendered quoted",
            b"{\"odd key\":1}",
            b"{\"odd key\":2}",
            vec![json("$['odd key']", Some("1"), Some("2"))],
        ),
        (
            "text: first differing line",
            b"a\nb\nc",
            b"a\nB\nc",
            vec![text(2, Some("b"), Some("B"))],
        ),
        (
            "text: shadow has fewer lines",
            b"a\nb",
            b"a",
            vec![text(2, Some("b"), None)],
        ),
        (
            "text: trailing newline is an empty last line",
            b"a",
            b"a\n",
            vec![text(2, None, Some(""))],
        ),
        (
            "text vs empty",
            b"",
            b"hello",
            vec![text(1, None, Some("hello"))],
        ),
        (
            "binary: first differing offset",
            b"\x00\x01\x02\xff",
            b"\x00\x01\x03\xff",
            vec![binary(2, 4, 4)],
        ),
        (
            "binary: one is a prefix of the other",
            b"\xff\x00",
            b"\xff\x00\x01",
            vec![binary(2, 2, 3)],
        ),
        ("text vs binary", b"abc", b"a\xff", vec![binary(1, 3, 2)]),
        ("empty vs binary", b"", b"\xff", vec![binary(0, 0, 1)]),
        (
            "json vs text",
            b"{\"a\":1}",
            b"oops",
            vec![kind("json", "text")],
        ),
        ("json vs empty", b"[]", b"", vec![kind("json", "empty")]),
        (
            "json vs binary",
            b"[]",
            b"\xff",
            vec![kind("json", "binary")],
        ),
        (
            "unparseable json is text",
            b"{\"a\":",
            b"{\"a\":1}",
            vec![kind("text", "json")],
        ),
        (
            "a scalar without a json content type is text",
            b"42",
            b"42.0",
            vec![text(1, Some("42"), Some("42.0"))],
        ),
    ];
    for (name, primary, shadow, expected) in cases {
        assert_eq!(
            diffs(&Resp::new(primary), &Resp::new(shadow)),
            expected,
            "{name}"
        );
    }
}

#[test]
fn json_content_type_makes_scalar_bodies_structural() {
    for content_type in [
        "application/json",
        "Application/JSON; charset=utf-8",
        "application/problem+json",
    ] {
        let primary = Resp::new(" 42").header("content-type", content_type);
        let shadow = Resp::new("42.0\n").header("content-type", content_type);
        assert_eq!(diffs(&primary, &shadow), vec![], "{content_type}");
    }
    let primary = Resp::new("\"a\"").header("content-type", "application/json");
    let shadow = Resp::new("\"b\"").header("content-type", "application/json");
    assert_eq!(
        diffs(&primary, &shadow),
        vec![json("$", Some("\"a\""), Some("\"b\""))]
    );
}

/// (name, ignore rules, primary body, shadow body, differences).
type IgnoreCase = (
    &'static str,
    &'static [&'static str],
    &'static str,
    &'static str,
    Vec<Difference>,
);

#[test]
fn ignore_rules_skip_a_location_and_everything_below() {
    let cases: &[IgnoreCase] = &[
        (
            "a fixed location",
            &["$.meta.took_ms"],
            r#"{"meta":{"took_ms":3,"v":1},"data":[1]}"#,
            r#"{"meta":{"took_ms":9,"v":2},"data":[1]}"#,
            vec![json("$.meta.v", Some("1"), Some("2"))],
        ),
        (
            "a field of every array element, also when absent on one side",
            &["$.items[*].updated_at"],
            r#"{"items":[{"id":1,"updated_at":"a"},{"id":2,"updated_at":"b"}]}"#,
            r#"{"items":[{"id":1,"updated_at":"c"},{"id":2}]}"#,
            vec![],
        ),
        (
            "a name at any depth",
            &["$..etag"],
            r#"{"etag":"1","a":{"b":[{"etag":"2","x":1}]}}"#,
            r#"{"etag":"3","a":{"b":[{"etag":{"w":4},"x":2}]}}"#,
            vec![json("$.a.b[0].x", Some("1"), Some("2"))],
        ),
        (
            "a subtree",
            &["$.meta"],
            r#"{"meta":{"a":1,"b":[1,2]},"x":1}"#,
            r#"{"meta":{"a":2},"x":1}"#,
            vec![],
        ),
        (
            "extra array elements",
            &["$.xs[*]"],
            r#"{"xs":[1,2,3]}"#,
            r#"{"xs":[1]}"#,
            vec![],
        ),
        ("the root", &["$"], r#"{"a":1}"#, r#"{"a":2}"#, vec![]),
    ];
    for (name, ignore, primary, shadow, expected) in cases {
        let spec = CompareSpec {
            ignore_json: paths(ignore),
            ..CompareSpec::default()
        };
        let got = run(
            &spec,
            &Noise::default(),
            &Resp::new(*primary),
            &Resp::new(*shadow),
        );
        assert_eq!(&got.differences, expected, "{name}");
        // The same rules learned as noise have the same effect.
        let noise = Noise {
            headers: vec![],
            json: paths(ignore),
        };
        let got = run(
            &CompareSpec::default(),
            &noise,
            &Resp::new(*primary),
            &Resp::new(*shadow),
        );
        assert_eq!(&got.differences, expected, "{name} as noise");
    }
}

#[test]
fn status_is_compared_unless_turned_off() {
    let (primary, shadow) = (Resp::new("").status(200), Resp::new("").status(503));
    let got = run(
        &CompareSpec::default(),
        &Noise::default(),
        &primary,
        &shadow,
    );
    assert_eq!(
        got.differences,
        vec![Difference::Status {
            primary: 200,
            shadow: 503
        }]
    );
    assert!(!got.is_match());
    let spec = CompareSpec {
        status: false,
        ..CompareSpec::default()
    };
    assert!(run(&spec, &Noise::default(), &primary, &shadow).is_match());
}

#[test]
fn body_is_not_compared_when_turned_off() {
    let spec = CompareSpec {
        body: false,
        ..CompareSpec::default()
    };
    let got = run(&spec, &Noise::default(), &Resp::new("a"), &Resp::new("b"));
    assert!(got.is_match());
}

#[test]
fn header_list_compares_only_the_listed_names_in_name_order() {
    let spec = CompareSpec {
        headers: HeaderSelection::List(vec![
            HeaderName::from_static("x-version"),
            HeaderName::from_static("content-type"),
            HeaderName::from_static("vary"),
            HeaderName::from_static("cache-control"),
        ]),
        ..CompareSpec::default()
    };
    let primary = Resp::new("")
        .header("content-type", "application/json")
        .header("x-version", "1")
        .header("vary", "accept")
        .header("vary", "origin")
        .header("cache-control", "no-store")
        .header("x-unlisted", "a");
    let shadow = Resp::new("")
        .header("content-type", "text/plain")
        .header("vary", "origin")
        .header("vary", "accept")
        .header("cache-control", "no-store")
        .header("x-unlisted", "b");
    let got = run(&spec, &Noise::default(), &primary, &shadow);
    assert_eq!(
        got.differences,
        vec![
            header("content-type", Some("application/json"), Some("text/plain")),
            header("vary", Some("accept, origin"), Some("origin, accept")),
            header("x-version", Some("1"), None),
        ]
    );
}

#[test]
fn header_all_skips_framing_ignored_noisy_and_hides_redacted_values() {
    let spec = CompareSpec {
        headers: HeaderSelection::All,
        ignore_headers: vec![HeaderName::from_static("x-ignored")],
        ..CompareSpec::default()
    };
    let noise = Noise {
        headers: vec![HeaderName::from_static("x-noisy")],
        json: vec![],
    };
    let primary = Resp::new("")
        .header("date", "Mon")
        .header("x-request-id", "1")
        .header("content-length", "0")
        .header("connection", "keep-alive")
        .header("transfer-encoding", "chunked")
        .header("x-ignored", "a")
        .header("x-noisy", "a")
        .header("set-cookie", "session=primary-secret")
        .header("authorization", "Bearer primary-token")
        .header("etag", "\"1\"")
        .header("x-same", "s");
    let shadow = Resp::new("")
        .header("date", "Tue")
        .header("x-request-id", "2")
        .header("x-ignored", "b")
        .header("x-noisy", "b")
        .header("set-cookie", "session=shadow-secret")
        .header("etag", "\"2\"")
        .header("x-same", "s")
        .header("x-new", "n");
    let got = run(&spec, &noise, &primary, &shadow);
    assert_eq!(
        got.differences,
        vec![
            header("authorization", Some("[redacted]"), None),
            header("etag", Some("\"1\""), Some("\"2\"")),
            header("set-cookie", Some("[redacted]"), Some("[redacted]")),
            header("x-new", None, Some("n")),
        ]
    );
    let shown = serde_json::to_string(&got).unwrap();
    for secret in ["secret", "token", "Bearer"] {
        assert!(!shown.contains(secret), "{shown}");
    }
    assert!(shown.contains("[redacted]"));
}

#[test]
fn differences_serialize_with_their_kind() {
    let got = Comparison {
        differences: vec![
            Difference::Status {
                primary: 200,
                shadow: 500,
            },
            Difference::BodyKind {
                primary: "json",
                shadow: "text",
            },
        ],
        truncated: false,
    };
    assert_eq!(
        serde_json::to_string(&got).unwrap(),
        r#"{"differences":[{"kind":"status","primary":200,"shadow":500},{"kind":"body_kind","primary":"json","shadow":"text"}],"truncated":false}"#
    );
}

#[test]
fn at_most_max_differences_are_kept() {
    let side = |v: u32| {
        let fields: Vec<String> = (0..30).map(|i| format!("\"k{i:02}\":{v}")).collect();
        Resp::new(format!("{{{}}}", fields.join(",")))
    };
    let got = run(
        &CompareSpec::default(),
        &Noise::default(),
        &side(1),
        &side(2).status(500),
    );
    assert_eq!(got.differences.len(), MAX_DIFFERENCES);
    assert!(got.truncated);
    assert!(!got.is_match());
    assert!(matches!(got.differences[0], Difference::Status { .. }));
    assert_eq!(got.differences[1], json("$.k00", Some("1"), Some("2")));
    // Exactly MAX_DIFFERENCES is not truncated.
    let exact = |v: u32| {
        let fields: Vec<String> = (0..MAX_DIFFERENCES)
            .map(|i| format!("\"k{i:02}\":{v}"))
            .collect();
        Resp::new(format!("{{{}}}", fields.join(",")))
    };
    let got = run(
        &CompareSpec::default(),
        &Noise::default(),
        &exact(1),
        &exact(2),
    );
    assert_eq!(got.differences.len(), MAX_DIFFERENCES);
    assert!(!got.truncated);
}

#[test]
fn long_values_are_cut_on_a_char_boundary() {
    let long = "é".repeat(500);
    let got = diffs(
        &Resp::new(format!("{{\"a\":\"{long}\"}}")),
        &Resp::new(format!("{{\"a\":\"x{long}\"}}")),
    );
    let Difference::Json {
        primary: Some(p),
        shadow: Some(s),
        ..
    } = &got[0]
    else {
        panic!("{got:?}");
    };
    for value in [p, s] {
        assert_eq!(value.chars().count(), MAX_VALUE_CHARS);
        assert!(value.ends_with('…'));
    }
    assert!(p.starts_with("\"éé"));
    let got = diffs(&Resp::new(format!("x\n{long}")), &Resp::new("x\ny"));
    let Difference::Text {
        primary: Some(p), ..
    } = &got[0]
    else {
        panic!("{got:?}");
    };
    assert_eq!(p.chars().count(), MAX_VALUE_CHARS);
    // A value of exactly MAX_VALUE_CHARS chars is kept whole.
    let exact = "a".repeat(MAX_VALUE_CHARS);
    assert_eq!(
        diffs(&Resp::new(exact.clone()), &Resp::new("b")),
        vec![text(1, Some(&exact), Some("b"))]
    );
}

fn nested(depth: usize, leaf: &str) -> String {
    format!("{}{leaf}{}", "[".repeat(depth), "]".repeat(depth))
}

#[test]
fn documents_deeper_than_the_limit_are_compared_as_text() {
    let got = diffs(
        &Resp::new(nested(MAX_JSON_DEPTH, "1")),
        &Resp::new(nested(MAX_JSON_DEPTH, "2")),
    );
    let Difference::Json { path, .. } = &got[0] else {
        panic!("{got:?}");
    };
    assert_eq!(path, &format!("${}", "[0]".repeat(MAX_JSON_DEPTH)));
    for depth in [MAX_JSON_DEPTH + 1, 100, 100_000] {
        let got = diffs(
            &Resp::new(nested(depth, "1")),
            &Resp::new(nested(depth, "2")),
        );
        assert!(
            matches!(got[..], [Difference::Text { line: 1, .. }]),
            "{depth}"
        );
        // Same document, other whitespace: bytes differ, so it differs.
        let spaced = nested(depth, " 1");
        assert_eq!(
            diffs(&Resp::new(nested(depth, "1")), &Resp::new(spaced)).len(),
            1
        );
    }
}

#[test]
fn odd_bodies_do_not_panic() {
    let bodies: &[&[u8]] = &[
        b"",
        b" ",
        b"{",
        b"[",
        b"}",
        b"]]]]",
        b"{\"a\":NaN}",
        b"{\"a\":1e999}",
        b"{\"a\":-1e400}",
        b"[1e-400]",
        b"{\"a\":\"\\ud800\"}",
        b"\xff\xfe{}",
        b"{\"\xff\":1}",
        b"[\"\\\"]\"]",
        b"\n\n\n",
        b"\r\n",
    ];
    let spec = CompareSpec {
        headers: HeaderSelection::All,
        ignore_json: paths(&["$..a", "$[*]"]),
        ..CompareSpec::default()
    };
    for a in bodies {
        for b in bodies {
            let (a, b) = (Resp::new(*a), Resp::new(*b));
            let got = run(&spec, &Noise::default(), &a, &b);
            if a.body == b.body {
                assert!(got.is_match(), "{:?}", a.body);
            }
            let _ = learn(&spec, a.obs(), b.obs());
        }
    }
}

#[test]
fn learn_finds_a_timestamp_and_a_header_but_not_the_status() {
    let spec = CompareSpec {
        headers: HeaderSelection::All,
        ..CompareSpec::default()
    };
    let first = Resp::new(r#"{"items":[{"id":1,"ts":"10:00"},{"id":2,"ts":"10:00"}],"n":2}"#)
        .header("etag", "\"a\"")
        .header("date", "Mon")
        .header("server", "legacy");
    let second = Resp::new(r#"{"items":[{"id":1,"ts":"10:01"},{"id":2,"ts":"10:02"}],"n":2}"#)
        .status(500)
        .header("etag", "\"b\"")
        .header("date", "Tue")
        .header("server", "legacy");
    let noise = learn(&spec, first.obs(), second.obs());
    assert_eq!(
        noise,
        Noise {
            headers: vec![HeaderName::from_static("etag")],
            json: paths(&["$.items[*].ts"]),
        }
    );
    // With the noise learned, a third answer differing only there matches.
    let third = Resp::new(r#"{"items":[{"id":1,"ts":"11:00"},{"id":2,"ts":"11:00"}],"n":2}"#)
        .header("etag", "\"c\"")
        .header("date", "Wed")
        .header("server", "legacy");
    assert!(run(&spec, &noise, &first, &third).is_match());
}

#[test]
fn learn_respects_the_spec_and_ignores_non_json_bodies() {
    let spec = CompareSpec {
        ignore_json: paths(&["$.a"]),
        ..CompareSpec::default()
    };
    let noise = learn(
        &spec,
        Resp::new(r#"{"a":1,"b":1}"#).obs(),
        Resp::new(r#"{"a":2,"b":1}"#).obs(),
    );
    assert_eq!(noise, Noise::default());
    let noise = learn(&spec, Resp::new("text 1").obs(), Resp::new("text 2").obs());
    assert_eq!(noise, Noise::default());
    let many = |v: u32| {
        let fields: Vec<String> = (0..100).map(|i| format!("\"k{i:03}\":{v}")).collect();
        Resp::new(format!("{{{}}}", fields.join(",")))
    };
    let noise = learn(&CompareSpec::default(), many(1).obs(), many(2).obs());
    assert_eq!(noise.json.len(), MAX_NOISE_PATHS);
}

#[test]
fn redacted_keys_are_hidden_inside_values_shown_whole() {
    let cases = [
        (
            r#"{"headers": {"Authorization": "Bearer authsecret", "x": 1}}"#,
            r#"{}"#,
        ),
        (
            r#"{"headers": {"Authorization": "Bearer authsecret"}}"#,
            r#"{"headers": null}"#,
        ),
        (
            r#"{"seen": [{"authorization": "Bearer authsecret"}]}"#,
            r#"{"seen": []}"#,
        ),
        (
            r#"{"authorization": "Bearer authsecret"}"#,
            r#"{"authorization": "Bearer othersecret"}"#,
        ),
    ];
    for (primary, shadow) in cases {
        let found = diffs(&Resp::new(primary), &Resp::new(shadow));
        assert!(!found.is_empty(), "{primary} vs {shadow}");
        let shown = serde_json::to_string(&found).unwrap();
        assert!(!shown.contains("secret"), "{primary} vs {shadow}: {shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
    }
}

/// A small random JSON tree over few keys, so two trees share and differ in places.
fn random_tree(rng: &mut fastrand::Rng, depth: usize) -> serde_json::Value {
    use serde_json::Value;
    match rng.u8(0..if depth == 0 { 2 } else { 4 }) {
        0 => Value::from(rng.u8(0..3)),
        1 => Value::from(["x", "y"][rng.usize(0..2)]),
        2 => Value::Array(
            (0..rng.usize(0..3))
                .map(|_| random_tree(rng, depth - 1))
                .collect(),
        ),
        _ => {
            let mut map = serde_json::Map::new();
            for key in ["a", "b", "ts"] {
                if rng.bool() {
                    map.insert(key.to_string(), random_tree(rng, depth - 1));
                }
            }
            Value::Object(map)
        }
    }
}

/// The locations a plain walk reports, checking every rule at every location.
fn naive_diff(
    a: Option<&serde_json::Value>,
    b: Option<&serde_json::Value>,
    path: &mut Vec<crate::shadow::jsonpath::Seg>,
    rules: &[JsonPath],
    out: &mut Vec<String>,
) {
    use crate::shadow::jsonpath::{Seg, render};
    use serde_json::Value;
    if rules.iter().any(|r| r.matches(path)) {
        return;
    }
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                path.push(Seg::Key(key.clone()));
                naive_diff(x.get(key), y.get(key), path, rules, out);
                path.pop();
            }
        }
        (Some(Value::Array(x)), Some(Value::Array(y))) => {
            for i in 0..x.len().max(y.len()) {
                path.push(Seg::Index(i));
                naive_diff(x.get(i), y.get(i), path, rules, out);
                path.pop();
            }
        }
        (Some(x), Some(y)) if x == y => {}
        _ => out.push(render(path)),
    }
}

#[test]
fn ignore_rules_followed_during_the_walk_agree_with_checking_every_rule_everywhere() {
    let rules = paths(&[
        "$.a",
        "$.b[*].ts",
        "$..ts",
        "$.b.a[1]",
        "$..b..a",
        "$.*.b",
        "$.a.b.ts",
        "$[0].a",
    ]);
    let mut rng = fastrand::Rng::with_seed(7);
    for case in 0..2000 {
        let picked: Vec<JsonPath> = rules
            .iter()
            .filter(|_| rng.u8(0..3) == 0)
            .cloned()
            .collect();
        let (x, y) = (random_tree(&mut rng, 4), random_tree(&mut rng, 4));
        let mut expected = Vec::new();
        naive_diff(Some(&x), Some(&y), &mut Vec::new(), &picked, &mut expected);
        let spec = CompareSpec {
            ignore_json: picked.clone(),
            ..CompareSpec::default()
        };
        let (xs, ys) = (x.to_string(), y.to_string());
        let result = run(
            &spec,
            &Noise::default(),
            &Resp::new(xs.clone()),
            &Resp::new(ys.clone()),
        );
        if result.truncated || !(xs.starts_with(['{', '[']) && ys.starts_with(['{', '['])) {
            continue; // scalars are not JSON bodies here; long diffs are cut
        }
        let mut found: Vec<String> = result
            .differences
            .iter()
            .filter_map(|d| match d {
                Difference::Json { path, .. } => Some(path.clone()),
                _ => None,
            })
            .collect();
        found.sort();
        expected.sort();
        let rules: Vec<String> = picked.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            found, expected,
            "case {case}: {xs} vs {ys}, rules {rules:?}"
        );
    }
}
