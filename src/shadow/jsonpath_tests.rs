use super::*;

use std::time::{Duration, Instant};

/// A concrete location written as `/key/#index/...` (no empty keys).
fn loc(text: &str) -> Vec<Seg> {
    text.split('/')
        .filter(|part| !part.is_empty())
        .map(|part| match part.strip_prefix('#') {
            Some(index) => Seg::Index(index.parse().unwrap()),
            None => Seg::Key(part.to_owned()),
        })
        .collect()
}

/// (pattern, canonical display).
const PARSE_OK: &[(&str, &str)] = &[
    ("$", "$"),
    ("$.meta.took_ms", "$.meta.took_ms"),
    ("$.items[*].updated_at", "$.items[*].updated_at"),
    ("$..etag", "$..etag"),
    ("$.items[0].id", "$.items[0].id"),
    ("$['odd key'].x", "$['odd key'].x"),
    ("$.*", "$.*"),
    ("$[*]", "$[*]"),
    ("$..*", "$..*"),
    ("$..[*]", "$..[*]"),
    ("$..[2]", "$..[2]"),
    ("$..['a b']", "$..['a b']"),
    ("$['a']", "$.a"),
    ("$[\"a\"]", "$.a"),
    ("$[\"it's\"]", "$['it\\'s']"),
    ("$['it\\'s']", "$['it\\'s']"),
    ("$['back\\\\slash']", "$['back\\\\slash']"),
    ("$['*']", "$['*']"),
    ("$['']", "$['']"),
    ("$.a-b._c", "$.a-b._c"),
    ("$.2fa", "$['2fa']"),
    ("$.café", "$['café']"),
    ("$[007]", "$[7]"),
    ("$.a..b..c", "$.a..b..c"),
];

#[test]
fn parse_accepts_the_subset_and_displays_canonically() {
    for &(text, canonical) in PARSE_OK {
        let parsed = JsonPath::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(parsed.to_string(), canonical, "{text}");
    }
}

#[test]
fn display_round_trips_through_parse() {
    for &(text, _) in PARSE_OK {
        let parsed = JsonPath::parse(text).unwrap();
        let shown = parsed.to_string();
        let reparsed = JsonPath::parse(&shown).unwrap_or_else(|e| panic!("{shown}: {e}"));
        assert_eq!(reparsed, parsed, "{text}");
        assert_eq!(reparsed.to_string(), shown, "{text}");
    }
}

/// (pattern, error message).
const PARSE_ERR: &[(&str, &str)] = &[
    ("", "a JSON path must start with '$'"),
    ("meta.took_ms", "a JSON path must start with '$'"),
    (" $.a", "a JSON path must start with '$'"),
    ("$.", "expected a key name after '.' at offset 2"),
    ("$.meta.", "expected a key name after '.' at offset 7"),
    ("$.a.[0]", "expected a key name after '.' at offset 4"),
    ("$meta", "expected '.', '..' or '[' at offset 1, found 'm'"),
    ("$.a b", "expected '.', '..' or '[' at offset 3, found ' '"),
    (
        "$..",
        "expected a key name, '*' or '[' after '..' at offset 3",
    ),
    (
        "$...a",
        "expected a key name, '*' or '[' after '..' at offset 3",
    ),
    (
        "$[",
        "expected an index, '*' or a quoted key after '[' at offset 2",
    ),
    (
        "$[-1]",
        "expected an index, '*' or a quoted key after '[' at offset 2",
    ),
    (
        "$[a]",
        "expected an index, '*' or a quoted key after '[' at offset 2",
    ),
    ("$[1", "expected ']' at offset 3"),
    ("$[*", "expected ']' at offset 3"),
    ("$['a'", "expected ']' at offset 5"),
    ("$['a", "unterminated quoted key starting at offset 2"),
    ("$['a\\", "unterminated quoted key starting at offset 2"),
    ("$['a\\x']", "unknown escape '\\x' at offset 4"),
    ("$[99999999999999999999999]", "index too large at offset 2"),
];

#[test]
fn parse_errors_say_what_and_where() {
    for &(text, message) in PARSE_ERR {
        assert_eq!(JsonPath::parse(text), Err(message.to_owned()), "{text:?}");
    }
}

#[test]
fn parse_rejects_patterns_longer_than_the_limit() {
    let long = format!("$.{}", "a".repeat(MAX_PATTERN_BYTES));
    assert_eq!(
        JsonPath::parse(&long),
        Err("a JSON path is at most 512 bytes, this one has 514".to_owned())
    );
    let longest = format!("$.{}", "a".repeat(MAX_PATTERN_BYTES - 2));
    assert!(JsonPath::parse(&longest).is_ok());
}

/// (pattern, location, matches).
const MATCHES: &[(&str, &str, bool)] = &[
    // The root matches everything.
    ("$", "", true),
    ("$", "/a/#0", true),
    // Keys, and everything below a matched location.
    ("$.a", "/a", true),
    ("$.a", "/a/b/#1", true),
    ("$.a", "", false),
    ("$.a.b", "/a", false),
    ("$.meta.took_ms", "/meta/took_ms", true),
    ("$.meta", "/meta/took_ms", true),
    ("$.meta.took_ms", "/meta/took", false),
    // Sibling keys with common prefixes are different keys.
    ("$.a", "/ab", false),
    ("$.ab", "/a", false),
    ("$..etag", "/etags", false),
    // Indices.
    ("$.items[0].id", "/items/#0/id", true),
    ("$.items[0].id", "/items/#1/id", false),
    ("$.items[*].updated_at", "/items/#3/updated_at", true),
    ("$.items[*].updated_at", "/items/#3/created_at", false),
    ("$.items[*].updated_at", "/items/k/updated_at", false),
    ("$[*]", "/#5", true),
    ("$[*]", "/a", false),
    // A key is not an index and an index not a key.
    ("$.a['0']", "/a/#0", false),
    ("$.a[0]", "/a/0", false),
    ("$.a['0']", "/a/0", true),
    // `.*`: any key or index, exactly one level.
    ("$.*", "/a", true),
    ("$.*", "/#0", true),
    ("$.*", "", false),
    ("$.*.id", "/x/id", true),
    ("$.*.id", "/#2/id", true),
    ("$.*.id", "/x/y/id", false),
    // Quoted keys.
    ("$['odd key'].x", "/odd key/x", true),
    ("$['odd key'].x", "/odd/x", false),
    // `..`: zero or more segments in between, at several depths.
    ("$..etag", "/etag", true),
    ("$..etag", "/a/etag", true),
    ("$..etag", "/a/#2/b/etag", true),
    ("$..etag", "/etag/x", true),
    ("$..etag", "/a/b", false),
    ("$.a..b", "/b", false),
    ("$.a..b", "/a/b", true),
    ("$.a..b", "/a/x/#1/b", true),
    ("$.a..b", "/x/a/b", false),
    ("$..a..b", "/a/b", true),
    ("$..a..b", "/x/a/y/z/b", true),
    ("$..a..b", "/b/a", false),
    ("$..a.b", "/a/x/b", false),
    ("$..a.b", "/x/a/b", true),
    ("$..[0]", "/a/b/#0", true),
    ("$..[0]", "/a/b/#1", false),
    ("$..*", "/anything", true),
    ("$..*", "", false),
];

#[test]
fn matches_follows_the_table() {
    for &(pattern, location, expected) in MATCHES {
        let parsed = JsonPath::parse(pattern).unwrap();
        let path = loc(location);
        assert_eq!(parsed.matches(&path), expected, "{pattern} vs {location}");
        let refs: Vec<SegRef<'_>> = path.iter().map(Seg::as_seg_ref).collect();
        assert_eq!(
            parsed.matches_refs(&refs),
            expected,
            "{pattern} vs {location}"
        );
    }
}

#[test]
fn many_descendant_steps_against_a_deep_path_finish_instantly() {
    let pattern = JsonPath::parse("$..a..a..a..a..a..b").unwrap();
    let mut deep = vec![Seg::Key("a".to_owned()); 200];
    let start = Instant::now();
    assert!(!pattern.matches(&deep));
    deep.push(Seg::Key("b".to_owned()));
    assert!(pattern.matches(&deep));
    let longest = format!("${}", "..a".repeat(MAX_PATTERN_BYTES / 3 - 1));
    let many = JsonPath::parse(&longest).unwrap();
    assert!(!many.matches(&vec![Seg::Key("a".to_owned()); 100]));
    assert!(start.elapsed() < Duration::from_millis(500));
}

/// (location, generalised pattern).
const GENERALIZE: &[(&str, &str)] = &[
    ("", "$"),
    ("/meta/took_ms", "$.meta.took_ms"),
    ("/items/#3/ts", "$.items[*].ts"),
    ("/#0/#1", "$[*][*]"),
    ("/odd key/#0", "$['odd key'][*]"),
];

#[test]
fn generalize_replaces_every_index_with_any_index() {
    for &(location, expected) in GENERALIZE {
        let path = loc(location);
        let general = JsonPath::generalize(&path);
        assert_eq!(general.to_string(), expected, "{location}");
        assert!(general.matches(&path), "{location}");
        let refs: Vec<SegRef<'_>> = path.iter().map(Seg::as_seg_ref).collect();
        assert_eq!(JsonPath::generalize_refs(&refs), general);
    }
    let general = JsonPath::generalize(&loc("/items/#3/ts"));
    assert!(general.matches(&loc("/items/#9/ts")));
    assert!(!general.matches(&loc("/items/#9/id")));
}

#[test]
fn render_escapes_keys_that_are_not_identifiers() {
    let key = |k: &str| Seg::Key(k.to_owned());
    let cases: &[(Vec<Seg>, &str)] = &[
        (vec![], "$"),
        (loc("/items/#3/updated_at"), "$.items[3].updated_at"),
        (loc("/odd key/x"), "$['odd key'].x"),
        (vec![key("it's")], "$['it\\'s']"),
        (vec![key("back\\slash")], "$['back\\\\slash']"),
        (vec![key("2fa")], "$['2fa']"),
        (vec![key("a-b"), key("_x")], "$.a-b._x"),
        (vec![key("-a")], "$['-a']"),
        (vec![key("")], "$['']"),
        (vec![key("a.b")], "$['a.b']"),
        (vec![key("é")], "$['é']"),
    ];
    for (path, expected) in cases {
        assert_eq!(render(path), *expected);
        let refs: Vec<SegRef<'_>> = path.iter().map(Seg::as_seg_ref).collect();
        assert_eq!(render_refs(&refs), *expected);
        // What render writes parses back to a pattern naming that location.
        let parsed = JsonPath::parse(expected).unwrap();
        assert!(parsed.matches(path), "{expected}");
        assert_eq!(parsed.to_string(), *expected);
    }
}

#[test]
fn seg_ref_converts_both_ways() {
    for seg in [Seg::Key("k".to_owned()), Seg::Index(4)] {
        assert_eq!(seg.as_seg_ref().into_seg(), seg);
    }
}
