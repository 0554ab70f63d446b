//! Routing through the proxy: which upstream answers a request, and which path it receives.
//!
//! Every test starts real backends that answer with their own name, so an
//! assertion names the backend that answered and the target (path and query)
//! it was sent. Requests go through hyper's client, which sends the URI as
//! written (`http::Uri` does not normalize), or as raw bytes where the exact
//! spelling on the wire matters.

mod support;
use support::*;

use bytes::Bytes;
use http::{Method, Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Backends that answer with their own name; their names are also their upstream names.
struct Fleet(Vec<Backend>);

impl Fleet {
    /// Starts one backend per name. `legacy` must be among them: it is the default upstream.
    async fn start(names: &[&'static str]) -> Fleet {
        assert!(names.contains(&"legacy"), "the default upstream is legacy");
        let mut backends = Vec::with_capacity(names.len());
        for name in names {
            backends.push(Backend::start(name).await);
        }
        Fleet(backends)
    }

    /// A table declaring every backend as an upstream of the same name, then `routes`.
    fn table(&self, routes: &str) -> String {
        let upstreams: Vec<(&str, &Backend)> = self.0.iter().map(|b| (b.name, b)).collect();
        table(&upstreams, routes)
    }

    fn backend(&self, name: &str) -> &Backend {
        self.0
            .iter()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("no backend called {name:?}"))
    }

    /// Requests received by all backends together.
    fn received(&self) -> usize {
        self.0.iter().map(|b| b.requests().len()).sum()
    }
}

/// Sends `method target` through the proxy and returns the backend that answered
/// and the target (path and query) that backend received.
async fn reach(proxy: &TestProxy, fleet: &Fleet, method: Method, target: &str) -> (String, String) {
    let answer = proxy.send(method.clone(), target, &[], b"").await;
    assert_eq!(
        answer.status, 200,
        "{method} {target}: expected an upstream's answer, got {} {}",
        answer.status, answer.body
    );
    let name = answer.upstream().to_owned();
    let received = fleet
        .backend(&name)
        .requests()
        .last()
        .map(|r| r.target.clone())
        .expect("the backend that answered recorded the request");
    (name, received)
}

/// Asserts that `method target` is answered by `upstream`, which receives `forwarded`.
async fn assert_routed(
    proxy: &TestProxy,
    fleet: &Fleet,
    method: Method,
    target: &str,
    upstream: &str,
    forwarded: &str,
) {
    let (name, received) = reach(proxy, fleet, method.clone(), target).await;
    assert_eq!(
        name, upstream,
        "{method} {target} was answered by the wrong upstream"
    );
    assert_eq!(
        received, forwarded,
        "{method} {target} was forwarded with the wrong target"
    );
}

/// Sends one HTTP/1.1 request whose request target is exactly `target` on the
/// wire, with no client-side parsing. Returns the status, the `x-upstream`
/// header ("" when absent) and the body.
async fn raw_request(proxy: &TestProxy, method: &str, target: &str) -> (u16, String, String) {
    let request =
        format!("{method} {target} HTTP/1.1\r\nHost: ficus.test\r\nConnection: close\r\n\r\n");
    let text = raw(proxy.running.proxy_addr, request.as_bytes()).await;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text.as_str(), ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {target}: no status line in {text:?}"));
    let upstream = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("x-upstream")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    (status, upstream, body.to_owned())
}

/// Asserts that ficus answers `target` itself with 400 `{"error":"bad_path"}` and
/// forwards nothing, whether sent by hyper's client or as raw bytes.
async fn assert_bad_path(proxy: &TestProxy, fleet: &Fleet, target: &str) {
    let before = fleet.received();
    let answer = proxy.get(target).await;
    assert_eq!(answer.status, 400, "GET {target}: {}", answer.body);
    assert_eq!(
        answer
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "GET {target}"
    );
    let body: serde_json::Value = serde_json::from_str(&answer.body).expect("a JSON error body");
    assert_eq!(body["error"], "bad_path", "GET {target}: {}", answer.body);

    let (status, upstream, body) = raw_request(proxy, "GET", target).await;
    assert_eq!(status, 400, "raw GET {target}: {body}");
    assert_eq!(upstream, "", "raw GET {target} reached an upstream");
    assert!(
        body.contains(r#""error":"bad_path""#),
        "raw GET {target}: {body}"
    );

    assert_eq!(
        fleet.received(),
        before,
        "GET {target}: an upstream received a rejected request"
    );
}

// ---------------------------------------------------------------------------
// Templates, prefixes, methods and the default upstream
// ---------------------------------------------------------------------------

#[tokio::test]
async fn template_route_matches_one_value_per_param_segment() {
    let fleet = Fleet::start(&["legacy", "users"]).await;
    let proxy = TestProxy::start(&fleet.table(
        r#"
[[routes]]
name = "user"
path = "/api/users/{id}"
upstream = "users"
"#,
    ))
    .await;
    for id in ["42", "abc-def", "me", "a;b=c", "%C3%A9"] {
        let target = format!("/api/users/{id}");
        assert_routed(&proxy, &fleet, Method::GET, &target, "users", &target).await;
    }
    // Not the same number of segments, or a different literal: the default upstream.
    for target in [
        "/api/users",
        "/api/users/42/orders",
        "/api/userss/42",
        "/api/user/42",
        "/users/42",
    ] {
        assert_routed(&proxy, &fleet, Method::GET, target, "legacy", target).await;
    }
}

#[tokio::test]
async fn prefix_matches_itself_and_below_on_whole_segments_only() {
    let fleet = Fleet::start(&["legacy", "messaging"]).await;
    let proxy = TestProxy::start(&fleet.table(
        r#"
[[routes]]
name = "messages"
prefix = "/api/messages"
upstream = "messaging"
"#,
    ))
    .await;
    for target in [
        "/api/messages",
        "/api/messages/",
        "/api/messages/x",
        "/api/messages/x/y/z",
    ] {
        assert_routed(&proxy, &fleet, Method::GET, target, "messaging", target).await;
    }
    for target in [
        "/api/messagesX",
        "/api/messages-old/x",
        "/api/message",
        "/api",
        "/messages",
    ] {
        assert_routed(&proxy, &fleet, Method::GET, target, "legacy", target).await;
    }
}

#[tokio::test]
async fn method_restricted_route_falls_back_to_less_specific_route_or_default() {
    let fleet = Fleet::start(&["legacy", "users", "userwrite", "reports"]).await;
    let proxy = TestProxy::start(&fleet.table(
        r#"
[[routes]]
name = "users-read"
methods = ["GET"]
path = "/api/users/{id}"
upstream = "users"

[[routes]]
name = "users-rest"
prefix = "/api/users"
upstream = "userwrite"

[[routes]]
name = "reports-read"
methods = ["get", "HEAD"]
path = "/reports/{id}"
upstream = "reports"
"#,
    ))
    .await;
    assert_routed(
        &proxy,
        &fleet,
        Method::GET,
        "/api/users/7",
        "users",
        "/api/users/7",
    )
    .await;
    // A POST to the same path: the GET-only route does not take it; the prefix does.
    assert_routed(
        &proxy,
        &fleet,
        Method::POST,
        "/api/users/7",
        "userwrite",
        "/api/users/7",
    )
    .await;
    assert_routed(
        &proxy,
        &fleet,
        Method::DELETE,
        "/api/users/7",
        "userwrite",
        "/api/users/7",
    )
    .await;
    // Methods are case-insensitive in the table; HEAD is listed too.
    assert_routed(
        &proxy,
        &fleet,
        Method::GET,
        "/reports/1",
        "reports",
        "/reports/1",
    )
    .await;
    assert_routed(
        &proxy,
        &fleet,
        Method::HEAD,
        "/reports/1",
        "reports",
        "/reports/1",
    )
    .await;
    // No less specific route: the default upstream.
    assert_routed(
        &proxy,
        &fleet,
        Method::POST,
        "/reports/1",
        "legacy",
        "/reports/1",
    )
    .await;
    assert_routed(
        &proxy,
        &fleet,
        Method::PUT,
        "/reports/1",
        "legacy",
        "/reports/1",
    )
    .await;
}

#[tokio::test]
async fn everything_unmatched_goes_to_the_default_upstream() {
    let fleet = Fleet::start(&["legacy", "users"]).await;
    let proxy = TestProxy::start(&fleet.table(
        r#"
[[routes]]
name = "user"
path = "/api/users/{id}"
upstream = "users"
"#,
    ))
    .await;
    for target in ["/", "/index.html", "/apix/users/1", "/static/app.js?v=3"] {
        assert_routed(&proxy, &fleet, Method::GET, target, "legacy", target).await;
    }
    assert_routed(&proxy, &fleet, Method::POST, "/login", "legacy", "/login").await;
}

/// Routes ordered from least to most specific; the tests also load them reversed.
const PRECEDENCE_ROUTES: &[&str] = &[
    r#"
[[routes]]
name = "api"
prefix = "/api"
upstream = "api"
"#,
    r#"
[[routes]]
name = "users-prefix"
prefix = "/api/users"
upstream = "usersprefix"
"#,
    r#"
[[routes]]
name = "users-list"
path = "/api/users"
upstream = "userlist"
"#,
    r#"
[[routes]]
name = "user-any-method"
path = "/api/users/{id}"
upstream = "userany"
"#,
    r#"
[[routes]]
name = "user-read"
methods = ["GET"]
path = "/api/users/{id}"
upstream = "userread"
"#,
    r#"
[[routes]]
name = "user-me"
path = "/api/users/me"
upstream = "userme"
"#,
    r#"
[[routes]]
name = "section-orders"
path = "/api/{section}/{id}/orders"
upstream = "sectionorders"
"#,
    r#"
[[routes]]
name = "user-orders"
path = "/api/users/{id}/orders"
upstream = "userorders"
"#,
    r#"
[[routes]]
name = "messages"
prefix = "/api/messages"
upstream = "messaging"
"#,
    r#"
[[routes]]
name = "messages-write"
methods = ["POST"]
prefix = "/api/messages"
upstream = "msgwrite"
"#,
];

/// (method, target, upstream that must answer, why)
const PRECEDENCE_CASES: &[(&str, &str, &str, &str)] = &[
    (
        "GET",
        "/api/users",
        "userlist",
        "an exact path beats a prefix",
    ),
    (
        "GET",
        "/api/users/",
        "userlist",
        "an exact path beats a prefix (trailing slash)",
    ),
    (
        "GET",
        "/api/users/7",
        "userread",
        "a route with methods beats one without",
    ),
    (
        "POST",
        "/api/users/7",
        "userany",
        "a GET-only route leaves POST to the route without methods",
    ),
    (
        "GET",
        "/api/users/me",
        "userme",
        "a literal segment beats a {param}, even one with methods",
    ),
    (
        "DELETE",
        "/api/users/me",
        "userme",
        "a literal segment beats a {param}",
    ),
    (
        "GET",
        "/api/users/7/orders",
        "userorders",
        "a literal segment beats a {param} where they first differ",
    ),
    (
        "GET",
        "/api/shops/7/orders",
        "sectionorders",
        "a {param} matches any segment",
    ),
    (
        "GET",
        "/api/users/7/profile",
        "usersprefix",
        "a longer prefix beats a shorter one",
    ),
    (
        "GET",
        "/api/users/7/orders/9",
        "usersprefix",
        "no template has five segments: longest prefix",
    ),
    ("GET", "/api/other", "api", "the only prefix that matches"),
    ("GET", "/api", "api", "a prefix covers its own path"),
    (
        "GET",
        "/api/messages/1",
        "messaging",
        "the POST-only prefix does not take GET",
    ),
    (
        "POST",
        "/api/messages/1",
        "msgwrite",
        "a prefix with methods beats the same prefix without",
    ),
    (
        "POST",
        "/api/messages",
        "msgwrite",
        "a prefix with methods beats the same prefix without",
    ),
    ("GET", "/apix", "legacy", "no route: the default upstream"),
    ("GET", "/", "legacy", "no route: the default upstream"),
];

const PRECEDENCE_UPSTREAMS: &[&str] = &[
    "legacy",
    "api",
    "usersprefix",
    "userlist",
    "userany",
    "userread",
    "userme",
    "sectionorders",
    "userorders",
    "messaging",
    "msgwrite",
];

async fn assert_precedence(routes_in_file_order: &[&str]) {
    let fleet = Fleet::start(PRECEDENCE_UPSTREAMS).await;
    let proxy = TestProxy::start(&fleet.table(&routes_in_file_order.concat())).await;
    for &(method, target, upstream, why) in PRECEDENCE_CASES {
        let method: Method = method.parse().unwrap();
        let (name, received) = reach(&proxy, &fleet, method.clone(), target).await;
        assert_eq!(name, upstream, "{method} {target}: {why}");
        assert_eq!(received, target, "{method} {target}: forwarded unchanged");
    }
}

#[tokio::test]
async fn most_specific_route_wins_least_specific_first_in_file() {
    assert_precedence(PRECEDENCE_ROUTES).await;
}

#[tokio::test]
async fn most_specific_route_wins_most_specific_first_in_file() {
    let reversed: Vec<&str> = PRECEDENCE_ROUTES.iter().rev().copied().collect();
    assert_precedence(&reversed).await;
}

// ---------------------------------------------------------------------------
// Path normalization: routing decides on the path that is forwarded
// ---------------------------------------------------------------------------

/// `users` takes `/api/users/{id}`, `admin` takes everything under `/api/admin`,
/// `api` the rest of `/api`; everything else goes to `legacy`.
async fn normalization_proxy() -> (Fleet, TestProxy) {
    let fleet = Fleet::start(&["legacy", "users", "admin", "api"]).await;
    let proxy = TestProxy::start(&fleet.table(
        r#"
[[routes]]
name = "users"
path = "/api/users/{id}"
upstream = "users"

[[routes]]
name = "admin"
prefix = "/api/admin"
upstream = "admin"

[[routes]]
name = "api"
prefix = "/api"
upstream = "api"
"#,
    ))
    .await;
    (fleet, proxy)
}

#[tokio::test]
async fn dot_dot_segment_is_resolved_before_routing_and_forwarding() {
    let (fleet, proxy) = normalization_proxy().await;
    assert_routed(
        &proxy,
        &fleet,
        Method::GET,
        "/api/users/../admin",
        "admin",
        "/api/admin",
    )
    .await;
    assert_routed(
        &proxy,
        &fleet,
        Method::GET,
        "/api/admin/../users/7",
        "users",
        "/api/users/7",
    )
    .await;
    // Never above the root.
    assert_routed(
        &proxy,
        &fleet,
        Method::GET,
        "/../../api/users/7",
        "users",
        "/api/users/7",
    )
    .await;
    // The same over raw bytes, in case a client were to resolve dots itself.
    let (status, upstream, _) = raw_request(&proxy, "GET", "/api/users/../admin").await;
    assert_eq!((status, upstream.as_str()), (200, "admin"));
    assert_eq!(
        fleet.backend("admin").requests().last().unwrap().target,
        "/api/admin"
    );
}

#[tokio::test]
async fn percent_encoded_unreserved_letter_routes_like_the_plain_path() {
    let (fleet, proxy) = normalization_proxy().await;
    assert_routed(
        &proxy,
        &fleet,
        Method::GET,
        "/api/users/1",
        "users",
        "/api/users/1",
    )
    .await;
    assert_routed(
        &proxy,
        &fleet,
        Method::GET,
        "/api/%75sers/1",
        "users",
        "/api/users/1",
    )
    .await;
    assert_routed(
        &proxy,
        &fleet,
        Method::GET,
        "/%61%70%69/users/1",
        "users",
        "/api/users/1",
    )
    .await;
    // An escape that must stay an escape is kept, in upper case.
    assert_routed(
        &proxy,
        &fleet,
        Method::GET,
        "/api/users/a%3fb",
        "users",
        "/api/users/a%3Fb",
    )
    .await;
}

#[tokio::test]
async fn repeated_slashes_route_like_one_and_are_merged_when_forwarded() {
    let (fleet, proxy) = normalization_proxy().await;
    assert_routed(
        &proxy,
        &fleet,
        Method::GET,
        "//api/users/1",
        "users",
        "/api/users/1",
    )
    .await;
    assert_routed(
        &proxy,
        &fleet,
        Method::GET,
        "/api//users/1",
        "users",
        "/api/users/1",
    )
    .await;
    assert_routed(
        &proxy,
        &fleet,
        Method::GET,
        "/api///users//1",
        "users",
        "/api/users/1",
    )
    .await;
    let (status, upstream, _) = raw_request(&proxy, "GET", "//api/users/1").await;
    assert_eq!((status, upstream.as_str()), (200, "users"));
    assert_eq!(
        fleet.backend("users").requests().last().unwrap().target,
        "/api/users/1"
    );
}

#[tokio::test]
async fn single_dot_segments_are_removed() {
    let (fleet, proxy) = normalization_proxy().await;
    assert_routed(
        &proxy,
        &fleet,
        Method::GET,
        "/api/./users/1",
        "users",
        "/api/users/1",
    )
    .await;
    assert_routed(
        &proxy,
        &fleet,
        Method::GET,
        "/./api/users/./1",
        "users",
        "/api/users/1",
    )
    .await;
    assert_routed(
        &proxy,
        &fleet,
        Method::GET,
        "/api/%2e/users/1",
        "users",
        "/api/users/1",
    )
    .await;
}

#[tokio::test]
async fn encoded_dot_dot_cannot_stay_inside_a_prefix_it_climbs_out_of() {
    let (fleet, proxy) = normalization_proxy().await;
    // Plainly `/api/../admin` = `/admin`: not under `/api`, so the default upstream.
    assert_routed(
        &proxy,
        &fleet,
        Method::GET,
        "/api/%2e%2e/admin",
        "legacy",
        "/admin",
    )
    .await;
    assert_routed(
        &proxy,
        &fleet,
        Method::GET,
        "/api/%2E%2E/admin",
        "legacy",
        "/admin",
    )
    .await;
    assert_routed(
        &proxy,
        &fleet,
        Method::GET,
        "/api/.%2e/admin",
        "legacy",
        "/admin",
    )
    .await;
    assert_routed(
        &proxy,
        &fleet,
        Method::GET,
        "/api/users/%2e%2e/admin/x",
        "admin",
        "/api/admin/x",
    )
    .await;
    let (status, upstream, _) = raw_request(&proxy, "GET", "/api/%2e%2e/admin").await;
    assert_eq!((status, upstream.as_str()), (200, "legacy"));
    assert_eq!(
        fleet.backend("legacy").requests().last().unwrap().target,
        "/admin"
    );
    assert!(
        fleet.backend("api").requests().is_empty(),
        "nothing climbed out of /api should reach it"
    );
}

#[tokio::test]
async fn literal_segments_match_case_insensitively_and_forwarded_path_keeps_client_case() {
    let (fleet, proxy) = normalization_proxy().await;
    assert_routed(
        &proxy,
        &fleet,
        Method::GET,
        "/API/Users/1",
        "users",
        "/API/Users/1",
    )
    .await;
    assert_routed(
        &proxy,
        &fleet,
        Method::GET,
        "/Api/USERS/AbC",
        "users",
        "/Api/USERS/AbC",
    )
    .await;
    assert_routed(
        &proxy,
        &fleet,
        Method::GET,
        "/api/ADMIN/Panel",
        "admin",
        "/api/ADMIN/Panel",
    )
    .await;
    // An escaped capital letter is decoded, then matched like any other letter.
    assert_routed(
        &proxy,
        &fleet,
        Method::GET,
        "/api/%55sers/1",
        "users",
        "/api/Users/1",
    )
    .await;
}

#[tokio::test]
async fn trailing_slash_routes_like_the_path_without_it() {
    let (fleet, proxy) = normalization_proxy().await;
    assert_routed(
        &proxy,
        &fleet,
        Method::GET,
        "/api/users/1/",
        "users",
        "/api/users/1/",
    )
    .await;
    assert_routed(
        &proxy,
        &fleet,
        Method::GET,
        "/api/admin/",
        "admin",
        "/api/admin/",
    )
    .await;
}

#[tokio::test]
async fn encoded_slash_or_backslash_is_rejected_with_bad_path() {
    let (fleet, proxy) = normalization_proxy().await;
    for target in [
        "/api/users%2F1",
        "/api/users%2f1",
        "/api%2Fadmin",
        "/api/users/1%5C..%5Cadmin",
        "/api/users/%5c",
    ] {
        assert_bad_path(&proxy, &fleet, target).await;
    }
}

#[tokio::test]
async fn malformed_percent_escape_is_rejected_with_bad_path() {
    let (fleet, proxy) = normalization_proxy().await;
    for target in [
        "/api/users/%zz",
        "/api/users/1%",
        "/api/users/1%2",
        "/api/%u0075sers/1",
    ] {
        assert_bad_path(&proxy, &fleet, target).await;
    }
}

#[tokio::test]
async fn dot_dot_segment_with_params_is_rejected_with_bad_path() {
    let (fleet, proxy) = normalization_proxy().await;
    for target in [
        "/public/..;/admin",
        "/api/users/..;x=1/admin",
        "/api/.;/users/1",
        "/api/..%3B/admin",
    ] {
        assert_bad_path(&proxy, &fleet, target).await;
    }
}

#[tokio::test]
async fn query_string_is_forwarded_verbatim_and_not_used_for_routing() {
    let (fleet, proxy) = normalization_proxy().await;
    assert_routed(
        &proxy,
        &fleet,
        Method::GET,
        "/x?a=/../b",
        "legacy",
        "/x?a=/../b",
    )
    .await;
    assert_routed(
        &proxy,
        &fleet,
        Method::GET,
        "/x?/api/users/1",
        "legacy",
        "/x?/api/users/1",
    )
    .await;
    // Neither normalized nor checked like a path: `%2F`, `%zz` and `//` stay as sent.
    assert_routed(
        &proxy,
        &fleet,
        Method::GET,
        "/api/users/1?next=%2Fapi%2Fadmin&bad=%zz&p=//./..",
        "users",
        "/api/users/1?next=%2Fapi%2Fadmin&bad=%zz&p=//./..",
    )
    .await;
    // The path is normalized; the query after it is not.
    assert_routed(
        &proxy,
        &fleet,
        Method::GET,
        "/api/./users/1?a=./b",
        "users",
        "/api/users/1?a=./b",
    )
    .await;
}

// ---------------------------------------------------------------------------
// HTTP/2, a large table, and ties
// ---------------------------------------------------------------------------

#[tokio::test]
async fn http2_prior_knowledge_request_routes_like_http1_and_reaches_http1_upstream() {
    let (fleet, proxy) = normalization_proxy().await;
    let h2: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let cases = [
        ("/api/users/7", "users", "/api/users/7"),
        ("/API/Users/7/", "users", "/API/Users/7/"),
        ("/api/users/../admin?q=1", "admin", "/api/admin?q=1"),
        ("/api/%2e%2e/admin", "legacy", "/admin"),
        ("/api/other", "api", "/api/other"),
        ("/elsewhere", "legacy", "/elsewhere"),
    ];
    for (target, upstream, forwarded) in cases {
        let request = Request::get(proxy.url(target))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = tokio::time::timeout(EVENT_TIMEOUT, h2.request(request))
            .await
            .expect("answer in time")
            .expect("HTTP/2 request sent");
        assert_eq!(
            response.version(),
            Version::HTTP_2,
            "{target}: the client spoke HTTP/2"
        );
        assert_eq!(response.status(), 200, "{target}");
        let answered = response
            .headers()
            .get("x-upstream")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(answered, upstream, "{target}");
        assert_eq!(
            body,
            upstream.as_bytes(),
            "{target}: the upstream's body is relayed"
        );
        let received = fleet.backend(upstream).requests().last().unwrap().clone();
        assert_eq!(received.target, forwarded, "{target}");
    }
    // Encoded separators are refused over HTTP/2 too.
    let request = Request::get(proxy.url("/api/users%2F1"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = h2.request(request).await.unwrap();
    assert_eq!(response.status(), 400);
}

/// Correctness, not timing. (In a debug build this test spends ~50 s in
/// `config::parse`, which recounts lines from the start of the file for every route.)
#[tokio::test]
async fn table_with_ten_thousand_routes_loads_and_routes_correctly() {
    const UPSTREAMS: [&str; 4] = ["s0", "s1", "s2", "s3"];
    let fleet = Fleet::start(&["legacy", "s0", "s1", "s2", "s3"]).await;
    let mut routes = String::with_capacity(800 * 1024);
    for i in 0..5_000 {
        let up = UPSTREAMS[i % 4];
        routes.push_str(&format!(
            "[[routes]]\nname = \"p{i}\"\npath = \"/svc{i}/items/{{id}}\"\nupstream = \"{up}\"\n"
        ));
    }
    for i in 0..5_000 {
        let up = UPSTREAMS[(i + 1) % 4];
        routes.push_str(&format!(
            "[[routes]]\nname = \"x{i}\"\nprefix = \"/pre{i}\"\nupstream = \"{up}\"\n"
        ));
    }
    let text = fleet.table(&routes);
    assert!(
        (text.len() as u64) < ficus::config::MAX_FILE_BYTES,
        "the generated table must fit the file size limit ({} bytes)",
        text.len()
    );
    let proxy = TestProxy::start(&text).await;
    let live: serde_json::Value =
        serde_json::from_str(&proxy.admin_get("/routes").await.body).unwrap();
    let loaded = live["routes"].as_array().map(Vec::len);
    assert_eq!(loaded, Some(10_000), "every route is loaded");
    for i in [0usize, 1, 2, 3, 777, 1_234, 4_998, 4_999] {
        let target = format!("/svc{i}/items/item-{i}");
        assert_routed(
            &proxy,
            &fleet,
            Method::GET,
            &target,
            UPSTREAMS[i % 4],
            &target,
        )
        .await;
        let target = format!("/pre{i}/a/b?i={i}");
        assert_routed(
            &proxy,
            &fleet,
            Method::GET,
            &target,
            UPSTREAMS[(i + 1) % 4],
            &target,
        )
        .await;
        let target = format!("/PRE{i}");
        assert_routed(
            &proxy,
            &fleet,
            Method::GET,
            &target,
            UPSTREAMS[(i + 1) % 4],
            &target,
        )
        .await;
    }
    for target in [
        "/svc12/items",        // template needs three segments
        "/svc12/items/1/more", // and no more
        "/svc5000/items/1",    // beyond the generated range
        "/pre5000",            // beyond the generated range
        "/pre12x",             // prefixes match whole segments: not /pre12 nor /pre1
        "/svc/items/1",
    ] {
        assert_routed(&proxy, &fleet, Method::GET, target, "legacy", target).await;
    }
}

/// Line (1-based) of the `[[routes]]` header of the route called `name`.
fn route_line(text: &str, name: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim() == format!("name = \"{name}\""))
        .unwrap_or_else(|| panic!("route {name:?} not in the table"));
    let header = lines[..at]
        .iter()
        .rposition(|l| l.trim() == "[[routes]]")
        .expect("a [[routes]] header before the name");
    header + 1
}

/// Starts ficus directly on a table and returns why it refused to start.
async fn start_error(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    std::fs::write(&path, text).unwrap();
    let mut options = ficus::Options::new(&path);
    options.proxy_listener = Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
    options.admin_listener = Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
    options.watch = false;
    match ficus::start(options).await {
        Ok(_) => panic!("ficus started with a table whose routes tie:\n{text}"),
        Err(error) => {
            assert!(matches!(error, ficus::StartError::Config(_)), "{error:?}");
            error.to_string()
        }
    }
}

/// Asserts a start-up error about routes `first` (defined first) and `second` tying:
/// the message names both and locates them by line.
async fn assert_tie_rejected(text: &str, first: &str, second: &str) {
    let message = start_error(text).await;
    let (first_line, second_line) = (route_line(text, first), route_line(text, second));
    assert!(
        message.contains(&format!("\"{first}\"")),
        "names the first route: {message}"
    );
    assert!(
        message.contains(&format!("\"{second}\"")),
        "names the second route: {message}"
    );
    assert!(message.contains("ties"), "says they tie: {message}");
    assert!(
        message.contains(&format!("routes.toml:{second_line}:")),
        "locates the second route at its line {second_line}: {message}"
    );
    assert!(
        message.contains(&format!("line {first_line}")),
        "gives the first route's line {first_line}: {message}"
    );
}

#[tokio::test]
async fn routes_with_the_same_path_and_no_methods_are_rejected_at_start() {
    let legacy = Backend::start("legacy").await;
    let text = table(
        &[("legacy", &legacy)],
        r#"
[[routes]]
name = "first"
path = "/api/users/{id}"
upstream = "legacy"

[[routes]]
name = "unrelated"
prefix = "/api"
upstream = "legacy"

[[routes]]
name = "second"
path = "/API/Users/{user}"
upstream = "legacy"
"#,
    );
    assert_tie_rejected(&text, "first", "second").await;
}

#[tokio::test]
async fn routes_with_the_same_path_and_overlapping_methods_are_rejected_at_start() {
    let legacy = Backend::start("legacy").await;
    let text = table(
        &[("legacy", &legacy)],
        r#"
[[routes]]
name = "read-write"
methods = ["GET", "POST"]
path = "/api/users/{id}"
upstream = "legacy"

[[routes]]
name = "write"
methods = ["post"]
path = "/api/users/{id}"
upstream = "legacy"
"#,
    );
    assert_tie_rejected(&text, "read-write", "write").await;
}

#[tokio::test]
async fn identical_prefixes_are_rejected_at_start() {
    let legacy = Backend::start("legacy").await;
    let text = table(
        &[("legacy", &legacy)],
        r#"
[[routes]]
name = "messages-a"
prefix = "/api/messages"
upstream = "legacy"

[[routes]]
name = "messages-b"
prefix = "/api/messages"
upstream = "legacy"
"#,
    );
    assert_tie_rejected(&text, "messages-a", "messages-b").await;
}

#[tokio::test]
async fn same_path_with_disjoint_methods_is_not_a_tie() {
    let fleet = Fleet::start(&["legacy", "users", "userwrite"]).await;
    let proxy = TestProxy::start(&fleet.table(
        r#"
[[routes]]
name = "read"
methods = ["GET"]
path = "/api/users/{id}"
upstream = "users"

[[routes]]
name = "write"
methods = ["POST", "PUT"]
path = "/api/users/{id}"
upstream = "userwrite"
"#,
    ))
    .await;
    assert_routed(
        &proxy,
        &fleet,
        Method::GET,
        "/api/users/1",
        "users",
        "/api/users/1",
    )
    .await;
    assert_routed(
        &proxy,
        &fleet,
        Method::PUT,
        "/api/users/1",
        "userwrite",
        "/api/users/1",
    )
    .await;
    assert_routed(
        &proxy,
        &fleet,
        Method::DELETE,
        "/api/users/1",
        "legacy",
        "/api/users/1",
    )
    .await;
}
