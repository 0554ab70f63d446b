//! Weighted splits through the proxy: the share each side gets, sticky
//! assignment by header or cookie, random draws without a key, monotonic ramps
//! through hot reload, and the config errors a split can have.
//!
//! Two backends, `legacy` and `new`, answer with their own name; a test counts
//! which one answered. Request counts and tolerances are chosen so that a
//! correct proxy fails a test with negligible probability (stated per test).

mod support;
use support::*;

use std::collections::HashMap;
use std::path::Path;

use http::Method;

const PATH: &str = "/api/messages/inbox";

/// A table whose only route, `messages` (prefix `/api/messages`), splits
/// between `legacy` and `new`, optionally sticky.
fn split_table(
    legacy: &Backend,
    new: &Backend,
    weights: (u32, u32),
    sticky: Option<&str>,
) -> String {
    let sticky = sticky
        .map(|key| format!("sticky = \"{key}\"\n"))
        .unwrap_or_default();
    let (legacy_weight, new_weight) = weights;
    table(
        &[("legacy", legacy), ("new", new)],
        &format!(
            "\n[[routes]]\nname = \"messages\"\nprefix = \"/api/messages\"\n{sticky}\
             split = {{ legacy = {legacy_weight}, new = {new_weight} }}\n"
        ),
    )
}

/// Sends a GET to the split route and returns the side that answered.
async fn side(proxy: &TestProxy, headers: &[(&str, &str)]) -> String {
    let answer = proxy.send(Method::GET, PATH, headers, b"").await;
    assert_eq!(answer.status, 200, "{headers:?}: {}", answer.body);
    let side = answer.upstream();
    assert!(side == "legacy" || side == "new", "answered by {side:?}");
    side.to_owned()
}

/// The side each user lands on, sticky by `x-user-id`.
async fn sides_by_header(proxy: &TestProxy, users: &[String]) -> Vec<String> {
    let mut sides = Vec::with_capacity(users.len());
    for user in users {
        sides.push(side(proxy, &[("x-user-id", user)]).await);
    }
    sides
}

fn users(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user-{i}")).collect()
}

fn count(sides: &[String], name: &str) -> usize {
    sides.iter().filter(|s| *s == name).count()
}

/// Replaces the table atomically (write aside, then rename over it), as operators
/// are told to: the reloader can only ever read the old or the new file, so each
/// call makes exactly one new generation.
fn replace_table(proxy: &TestProxy, toml: &str) {
    let staged = proxy.dir.path().join("routes.toml.next");
    std::fs::write(&staged, toml).expect("write staged table");
    std::fs::rename(&staged, &proxy.table).expect("rename over the table");
}

#[tokio::test]
async fn unsticky_split_sends_each_side_its_weight() {
    let (legacy, new) = (Backend::start("legacy").await, Backend::start("new").await);
    let proxy = TestProxy::start(&split_table(&legacy, &new, (30, 70), None)).await;
    const REQUESTS: usize = 2_000;
    let mut to_new = 0;
    for _ in 0..REQUESTS {
        if side(&proxy, &[]).await == "new" {
            to_new += 1;
        }
    }
    // Binomial with n = 2000, p = 0.7: standard deviation sqrt(n p (1-p)) = 20.5
    // requests, about 1 percentage point. ±5 points (±100 requests) is ~5 sigma,
    // so a correct split fails this about once in 2 million runs.
    let share = to_new as f64 / REQUESTS as f64;
    assert!(
        (0.65..=0.75).contains(&share),
        "new got {to_new} of {REQUESTS} requests ({:.1}%), expected 70% ± 5 points",
        share * 100.0
    );
    assert_eq!(legacy.requests().len() + new.requests().len(), REQUESTS);
}

#[tokio::test]
async fn same_header_key_always_lands_on_the_same_side() {
    let (legacy, new) = (Backend::start("legacy").await, Backend::start("new").await);
    let proxy = TestProxy::start(&split_table(
        &legacy,
        &new,
        (50, 50),
        Some("header:x-user-id"),
    ))
    .await;
    let users = users(200);
    let first = sides_by_header(&proxy, &users).await;
    // Four more rounds, interleaved so that no user's requests are back to back.
    for round in 1..5 {
        let again = sides_by_header(&proxy, &users).await;
        for ((user, before), after) in users.iter().zip(&first).zip(&again) {
            assert_eq!(
                before, after,
                "{user} moved from {before} to {after} in round {round}"
            );
        }
    }
    // Which side a user lands on is a hash, so across 200 users a 50/50 split
    // gives each side about 100 (standard deviation ~7); 60 is over 5 sigma away.
    let on_new = count(&first, "new");
    assert!(
        (60..=140).contains(&on_new),
        "{on_new} of 200 users on new, expected about 100"
    );
}

#[tokio::test]
async fn same_cookie_key_always_lands_on_the_same_side_whatever_the_other_cookies() {
    let (legacy, new) = (Backend::start("legacy").await, Backend::start("new").await);
    let proxy = TestProxy::start(&split_table(&legacy, &new, (50, 50), Some("cookie:uid"))).await;
    let users = users(200);
    // Other cookies, the key's position, spacing and near-miss names vary per round;
    // only `uid` counts.
    let spellings: [fn(&str, usize) -> String; 6] = [
        |user, _| format!("uid={user}"),
        |user, round| format!("session=s{round}; uid={user}"),
        |user, round| format!("uid={user}; theme=dark; session=s{round}"),
        |user, round| format!("xuid=other{round}; uid={user}; uidx=z{round}; UID=upper{round}"),
        |user, round| format!("a={round};uid={user};b=2"),
        |user, round| format!("session=s{round}; uid=\"{user}\""),
    ];
    let mut first: HashMap<&str, String> = HashMap::new();
    for (round, spelling) in spellings.iter().enumerate() {
        for user in &users {
            let cookie = spelling(user, round);
            let landed = side(&proxy, &[("cookie", &cookie)]).await;
            match first.get(user.as_str()) {
                None => {
                    first.insert(user, landed);
                }
                Some(before) => assert_eq!(before, &landed, "{user} moved with Cookie: {cookie}"),
            }
        }
    }
    let on_new = first.values().filter(|s| *s == "new").count();
    assert!(
        (60..=140).contains(&on_new),
        "{on_new} of 200 users on new, expected about 100"
    );
}

#[tokio::test]
async fn missing_sticky_key_draws_a_side_per_request() {
    let (legacy, new) = (Backend::start("legacy").await, Backend::start("new").await);
    let proxy = TestProxy::start(&table(
        &[("legacy", &legacy), ("new", &new)],
        r#"
[[routes]]
name = "by-header"
prefix = "/api/messages"
sticky = "header:x-user-id"
split = { legacy = 50, new = 50 }

[[routes]]
name = "by-cookie"
prefix = "/api/chat"
sticky = "cookie:uid"
split = { legacy = 50, new = 50 }
"#,
    ))
    .await;
    // (path, headers): no header, an empty header, a cookie header without the key.
    let cases: [(&str, &[(&str, &str)]); 4] = [
        ("/api/messages/1", &[]),
        ("/api/messages/1", &[("x-user-id", "")]),
        ("/api/messages/1", &[("x-other-id", "user-1")]),
        ("/api/chat/1", &[("cookie", "session=abc; theme=dark")]),
    ];
    for (path, headers) in cases {
        let mut to_new = 0;
        for _ in 0..200 {
            let answer = proxy.send(Method::GET, path, headers, b"").await;
            assert_eq!(answer.status, 200);
            if answer.upstream() == "new" {
                to_new += 1;
            }
        }
        // Random per request: both sides, about 100 each (standard deviation ~7).
        // Were the missing key hashed like any other value, all 200 would share one side.
        assert!(
            (50..=150).contains(&to_new),
            "{path} {headers:?}: {to_new} of 200 keyless requests on new, expected about 100"
        );
    }
}

#[tokio::test]
async fn raising_the_new_weight_through_reloads_never_moves_a_user_back() {
    let (legacy, new) = (Backend::start("legacy").await, Backend::start("new").await);
    let sticky = Some("header:x-user-id");
    let proxy = TestProxy::start(&split_table(&legacy, &new, (99, 1), sticky)).await;
    let users = users(300);
    let mut stages = vec![(1u32, sides_by_header(&proxy, &users).await)];
    for (generation, new_weight) in [(2u64, 10u32), (3, 50), (4, 90)] {
        replace_table(
            &proxy,
            &split_table(&legacy, &new, (100 - new_weight, new_weight), sticky),
        );
        proxy.wait_for_generation(generation).await;
        assert_eq!(
            proxy.running.generation(),
            generation,
            "one generation per edit"
        );
        stages.push((new_weight, sides_by_header(&proxy, &users).await));
    }
    for pair in stages.windows(2) {
        let ((before_weight, before), (after_weight, after)) = (&pair[0], &pair[1]);
        for ((user, was), is) in users.iter().zip(before).zip(after) {
            assert!(
                !(was == "new" && is == "legacy"),
                "{user} went back from new to legacy when new went from {before_weight}% to {after_weight}%"
            );
        }
        assert!(
            count(after, "new") > count(before, "new"),
            "users on new did not grow from {before_weight}% ({}) to {after_weight}% ({})",
            count(before, "new"),
            count(after, "new")
        );
    }
    // Each stage gives new about its weight in users: within 5 standard deviations
    // of the binomial (n = 300), plus one for the smallest weights.
    for (weight, sides) in &stages {
        let p = f64::from(*weight) / 100.0;
        let expected = 300.0 * p;
        let tolerance = 5.0 * (300.0 * p * (1.0 - p)).sqrt() + 1.0;
        let on_new = count(sides, "new") as f64;
        assert!(
            (on_new - expected).abs() <= tolerance,
            "at {weight}% {on_new} of 300 users on new, expected {expected} ± {tolerance:.0}"
        );
    }
}

#[tokio::test]
async fn zero_and_hundred_weights_send_everything_to_one_side() {
    let (legacy, new) = (Backend::start("legacy").await, Backend::start("new").await);
    let users = users(100);
    for (weights, only) in [((0, 100), "new"), ((100, 0), "legacy")] {
        for sticky in [None, Some("header:x-user-id")] {
            let proxy = TestProxy::start(&split_table(&legacy, &new, weights, sticky)).await;
            for user in &users {
                assert_eq!(
                    side(&proxy, &[("x-user-id", user)]).await,
                    only,
                    "{weights:?} {sticky:?} {user}"
                );
                assert_eq!(
                    side(&proxy, &[]).await,
                    only,
                    "{weights:?} {sticky:?} without a key"
                );
            }
        }
    }
    assert_eq!(legacy.requests().len(), 400);
    assert_eq!(new.requests().len(), 400);
}

#[tokio::test]
async fn same_key_lands_on_the_same_side_on_independent_replicas() {
    let (legacy, new) = (Backend::start("legacy").await, Backend::start("new").await);
    let text = split_table(&legacy, &new, (50, 50), Some("header:x-user-id"));
    let replica_a = TestProxy::start(&text).await;
    let replica_b = TestProxy::start(&text).await;
    let users = users(200);
    let on_a = sides_by_header(&replica_a, &users).await;
    // The other replica sees the users in the opposite order: no state carries over.
    let reversed: Vec<String> = users.iter().rev().cloned().collect();
    let mut on_b = sides_by_header(&replica_b, &reversed).await;
    on_b.reverse();
    for ((user, a), b) in users.iter().zip(&on_a).zip(&on_b) {
        assert_eq!(
            a, b,
            "{user} is on {a} through one replica and on {b} through the other"
        );
    }
    let on_new = count(&on_a, "new");
    assert!(
        (60..=140).contains(&on_new),
        "{on_new} of 200 users on new, expected about 100"
    );
}

// ---------------------------------------------------------------------------
// Config errors: `routes.toml:LINE: route "NAME": problem and fix`
// ---------------------------------------------------------------------------

/// A valid table whose second route, `bad`, has the given keys. Returns the
/// text and the line of `bad`'s `[[routes]]` header.
fn table_with_bad_route(keys: &str) -> (String, usize) {
    let head = r#"default = "legacy"

[upstreams.legacy]
endpoints = ["http://127.0.0.1:3000"]

[upstreams.new]
endpoints = ["http://127.0.0.1:4000"]

[[routes]]
name = "good"
prefix = "/api/users"
split = { legacy = 50, new = 50 }
sticky = "header:x-user-id"

"#;
    let line = head.lines().count() + 1;
    (
        format!("{head}[[routes]]\nname = \"bad\"\nprefix = \"/api/messages\"\n{keys}\n"),
        line,
    )
}

/// Parses a table that must be rejected and returns the error's Display.
fn rejection(text: &str) -> String {
    ficus::config::parse(text, Path::new("routes.toml"))
        .expect_err("the table must be rejected")
        .to_string()
}

/// Asserts the table with a `bad` route of `keys` is rejected, every problem at
/// the route's line and naming the route, and the message containing each of `says`.
fn assert_rejected(keys: &str, says: &[&str]) {
    let (text, line) = table_with_bad_route(keys);
    let message = rejection(&text);
    let at = format!("routes.toml:{line}: route \"bad\": ");
    for problem in message.lines() {
        assert!(
            problem.starts_with(&at),
            "expected {at:?} first, got: {problem}\n---\n{text}"
        );
    }
    for part in says {
        assert!(message.contains(part), "expected {part:?} in: {message}");
    }
}

#[test]
fn split_weights_must_sum_to_100() {
    assert_rejected(
        "split = { legacy = 30, new = 60 }",
        &["sum to 90", "not 100"],
    );
    assert_rejected(
        "split = { legacy = 70, new = 70 }",
        &["sum to 140", "not 100"],
    );
}

#[test]
fn split_weights_must_be_percentages() {
    assert_rejected(
        "split = { legacy = -10, new = 110 }",
        &["-10", "from 0 to 100"],
    );
}

#[test]
fn split_side_must_be_a_defined_upstream() {
    assert_rejected(
        "split = { legacy = 50, newer = 50 }",
        &[
            "\"newer\" is not defined",
            "add [upstreams.newer]",
            "legacy, new",
        ],
    );
}

#[test]
fn sticky_only_applies_to_a_split() {
    assert_rejected(
        "upstream = \"new\"\nsticky = \"header:x-user-id\"",
        &["`sticky` only applies to a `split`", "remove it"],
    );
}

#[test]
fn sticky_key_must_be_header_or_cookie() {
    let fix = r#"write "header:NAME" or "cookie:NAME""#;
    for key in ["x-user-id", "query:uid", "header"] {
        assert_rejected(
            &format!("split = {{ legacy = 50, new = 50 }}\nsticky = \"{key}\""),
            &["sticky", key, fix],
        );
    }
    assert_rejected(
        "split = { legacy = 50, new = 50 }\nsticky = \"header:x user\"",
        &["sticky", "not a valid header name"],
    );
    assert_rejected(
        "split = { legacy = 50, new = 50 }\nsticky = \"cookie:\"",
        &["sticky", "not a valid cookie name"],
    );
}

#[test]
fn every_split_problem_is_reported_at_once_with_its_own_line() {
    let (text, bad_line) = table_with_bad_route("split = { legacy = 30, new = 60 }");
    let text = format!(
        "{text}\n[[routes]]\nname = \"worse\"\npath = \"/x\"\nupstream = \"new\"\nsticky = \"cookie:uid\"\n"
    );
    let worse_name_line = text.lines().position(|l| l == "name = \"worse\"").unwrap() + 1;
    let worse_line = worse_name_line - 1; // its `[[routes]]` header
    let message = rejection(&text);
    let lines: Vec<&str> = message.lines().collect();
    assert_eq!(lines.len(), 2, "both problems: {message}");
    assert!(
        lines[0].starts_with(&format!("routes.toml:{bad_line}: route \"bad\"")),
        "{message}"
    );
    assert!(lines[0].contains("sum to 90"), "{message}");
    assert!(
        lines[1].starts_with(&format!("routes.toml:{worse_line}: route \"worse\"")),
        "{message}"
    );
    assert!(
        lines[1].contains("`sticky` only applies to a `split`"),
        "{message}"
    );
}
