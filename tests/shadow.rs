//! Shadow traffic: mirrored requests, isolation of the primary, bounds, comparison,
//! learned noise, inspection and reload.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use support::{Backend, Behaviour, TestProxy, responder, table};

/// A backend answering JSON built from the request's path.
async fn json_backend(
    name: &'static str,
    body: impl Fn(&str) -> String + Send + Sync + 'static,
) -> Backend {
    Backend::with(
        name,
        responder(move |r| {
            let path = r.target.split('?').next().unwrap_or("").to_owned();
            (
                StatusCode::OK,
                vec![("content-type".into(), "application/json".into())],
                body(&path),
            )
        }),
    )
    .await
}

/// One `api` route on `legacy`, shadowed to `new` with `shadow`.
fn shadowed(legacy: &Backend, new: &Backend, shadow: &str) -> String {
    table(
        &[("legacy", legacy), ("new", new)],
        &format!(
            "[[routes]]\nname = \"api\"\nprefix = \"/api\"\nupstream = \"legacy\"\nshadow = {shadow}\n"
        ),
    )
}

/// Name-answering `legacy` and `new` backends, and ficus with the `api` route shadowed so.
async fn start_shadowed(shadow: &str) -> (Backend, Backend, TestProxy) {
    let legacy = Backend::start("legacy").await;
    let new = Backend::start("new").await;
    let proxy = TestProxy::start(&shadowed(&legacy, &new, shadow)).await;
    (legacy, new, proxy)
}

fn series(outcome: &str) -> String {
    format!("ficus_shadow_requests_total{{outcome=\"{outcome}\",route=\"api\",upstream=\"new\"}}")
}

#[tokio::test]
async fn shadow_gets_a_marked_copy_and_the_client_gets_the_primary() {
    let legacy = json_backend("legacy", |_| {
        r#"{"id": 7, "tags": ["a", "b"], "price": 1}"#.into()
    })
    .await;
    let new = json_backend("new", |_| {
        "{\"price\":1.0,\"tags\":[\"a\",\"b\"],\n \"id\":7}".into()
    })
    .await;
    let proxy = TestProxy::start(&shadowed(
        &legacy,
        &new,
        "{ upstream = \"new\", sample = 1.0 }",
    ))
    .await;

    let answer = proxy
        .send(
            Method::GET,
            "/api/orders/7?full=1",
            &[("x-request-id", "req-1")],
            b"",
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, r#"{"id": 7, "tags": ["a", "b"], "price": 1}"#);

    new.wait_for_arrivals(1).await;
    let mirrored = &new.requests()[0];
    assert_eq!(mirrored.method, Method::GET);
    assert_eq!(mirrored.target, "/api/orders/7?full=1");
    assert_eq!(mirrored.headers["x-ficus-shadow"], "1");
    assert_eq!(mirrored.headers["x-request-id"], "req-1");
    assert!(legacy.requests()[0].headers.get("x-ficus-shadow").is_none());

    // Same JSON, other key order, whitespace and number spelling: a match, timed on both sides.
    assert_eq!(proxy.wait_for_metric(&series("match"), 1.0).await, 1.0);
    for side in ["primary", "shadow"] {
        let count = format!(
            "ficus_shadow_duration_seconds_count{{route=\"api\",side=\"{side}\",upstream=\"new\"}}"
        );
        assert_eq!(proxy.metric(&count).await, 1.0, "{side}");
    }
    assert_eq!(proxy.metric(&series("mismatch")).await, 0.0);
}

#[tokio::test]
async fn mismatch_is_recorded_with_a_readable_diff_and_no_secrets() {
    // Each side answers JSON with its own secrets in a cookie, a redacted header and a
    // body field named like that header.
    let secretive = |name: &'static str, status: StatusCode, side: &'static str, n: u8| {
        Backend::with(
            name,
            responder(move |_| {
                (
                    status,
                    vec![
                        ("content-type".into(), "application/json".into()),
                        ("set-cookie".into(), format!("session={side}secret")),
                        ("x-trace".into(), format!("tracesecret-{n}")),
                    ],
                    format!(
                        r#"{{"id": 7, "name": "{}", "meta": {{"took_ms": {n}}}, "echo": {{"X-Trace": "tracesecret-{}"}}}}"#,
                        if side == "legacy" { "old" } else { "new" },
                        n + 2
                    ),
                )
            }),
        )
    };
    let legacy = secretive("legacy", StatusCode::OK, "legacy", 1).await;
    let new = secretive("new", StatusCode::ACCEPTED, "new", 2).await;
    let proxy = TestProxy::start(&shadowed(
        &legacy,
        &new,
        r#"{ upstream = "new", sample = 1.0, compare = { headers = ["set-cookie", "x-trace"] }, ignore = { json = ["$.meta.took_ms"] }, redact = ["x-trace"] }"#,
    ))
    .await;

    let answer = proxy
        .send(
            Method::GET,
            "/api/orders/7?token=querysecret",
            &[
                ("authorization", "Bearer authsecret"),
                ("cookie", "c=cookiesecret"),
                ("x-request-id", "req-42"),
            ],
            b"",
        )
        .await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "the client always gets the primary"
    );
    proxy.wait_for_metric(&series("mismatch"), 1.0).await;

    let report = proxy.admin_get("/shadow/mismatches?route=api").await;
    assert_eq!(report.status, StatusCode::OK);
    for secret in [
        "authsecret",
        "cookiesecret",
        "legacysecret",
        "newsecret",
        "tracesecret",
        "querysecret",
    ] {
        assert!(
            !report.body.contains(secret),
            "{secret} leaked: {}",
            report.body
        );
    }
    let report: serde_json::Value = serde_json::from_str(&report.body).unwrap();
    let mismatch = &report["routes"]["api"]["mismatches"][0];
    assert_eq!(mismatch["method"], "GET");
    assert_eq!(mismatch["path"], "/api/orders/7");
    assert_eq!(mismatch["request_id"], "req-42");
    assert_eq!(mismatch["primary_status"], 200);
    assert_eq!(mismatch["shadow_status"], 202);
    assert!(mismatch["time"].as_str().unwrap().ends_with('Z'));
    let diff = mismatch["diff"]["differences"].as_array().unwrap();
    let kinds: Vec<&str> = diff.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"status"), "{diff:?}");
    let name = diff
        .iter()
        .find(|d| d["path"] == "$.name")
        .expect("a JSON difference at $.name");
    assert_eq!(name["kind"], "json");
    assert_eq!(name["primary"], "\"old\"");
    assert_eq!(name["shadow"], "\"new\"");
    assert!(
        diff.iter().all(|d| d["path"] != "$.meta.took_ms"),
        "ignored path reported: {diff:?}"
    );
    let echoed = diff
        .iter()
        .find(|d| d["path"] == "$.echo.X-Trace")
        .expect("the echoed header differs");
    assert_eq!(
        echoed["primary"], "[redacted]",
        "a redacted header echoed in a body"
    );
    let headers: Vec<&serde_json::Value> = diff.iter().filter(|d| d["kind"] == "header").collect();
    assert_eq!(headers.len(), 2, "{diff:?}");
    for header in headers {
        assert_eq!(header["primary"], "[redacted]");
        assert_eq!(header["shadow"], "[redacted]");
    }

    let all = proxy.admin_get("/shadow/mismatches").await;
    assert!(all.body.contains("\"api\""));
    let unknown = proxy.admin_get("/shadow/mismatches?route=nope").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}

/// A shadow target that answers a head promising 100 bytes, sends a few, then resets.
async fn resetting_target() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
                    .await;
                // Linger 0 makes the close a reset, at once (the deprecation warns about
                // blocking on drop, which only a non-zero linger does).
                #[allow(deprecated)]
                let _ = stream.set_linger(Some(Duration::ZERO));
                drop(stream); // RST: linger 0
            });
        }
    });
    format!("http://{addr}")
}

/// An address nothing listens on.
async fn refusing_target() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// Raw bytes of the answers to `n` GETs (each on its own connection, `date` removed)
/// and how long each took.
async fn run_primary(proxy: &TestProxy, n: usize) -> (Vec<String>, Vec<Duration>) {
    let addr = proxy.running.proxy_addr;
    let mut answers = Vec::new();
    let mut latencies = Vec::new();
    for i in 0..n {
        let request = format!(
            "GET /api/items/{i} HTTP/1.1\r\nhost: shop\r\nx-request-id: iso-{i}\r\nconnection: close\r\n\r\n"
        );
        let started = Instant::now();
        let raw = support::raw(addr, request.as_bytes()).await;
        latencies.push(started.elapsed());
        let without_date: Vec<&str> = raw
            .split("\r\n")
            .filter(|line| !line.to_ascii_lowercase().starts_with("date:"))
            .collect();
        answers.push(without_date.join("\r\n"));
    }
    (answers, latencies)
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// With the shadow target at `target` behaving badly, the primary's answers are
/// byte-identical to a run without shadowing, and never wait for the shadow.
async fn primary_is_isolated(target: String, shadow_timeout: &str, outcome: &str) {
    const N: usize = 20;
    let legacy = Backend::start("legacy").await;
    let base = table(
        &[("legacy", &legacy)],
        &format!(
            "[upstreams.new]\nendpoints = [\"{target}\"]\n[[routes]]\nname = \"api\"\nprefix = \"/api\"\nupstream = \"legacy\"\n"
        ),
    );
    let baseline_proxy = TestProxy::start(&base).await;
    let (baseline, baseline_latency) = run_primary(&baseline_proxy, N).await;

    let shadow = format!(
        "{base}shadow = {{ upstream = \"new\", sample = 1.0, timeout = \"{shadow_timeout}\" }}\n"
    );
    let proxy = TestProxy::start(&shadow).await;
    let (answers, latency) = run_primary(&proxy, N).await;

    assert!(baseline[0].starts_with("HTTP/1.1 200"), "{}", baseline[0]);
    assert_eq!(answers, baseline, "the primary's bytes changed");
    let slowest = *latency.iter().max().unwrap();
    assert!(
        slowest < Duration::from_millis(1000),
        "a primary waited {slowest:?}"
    );
    let (with, without) = (median(latency), median(baseline_latency));
    assert!(
        with < without + Duration::from_millis(50),
        "median {with:?} with shadowing vs {without:?} without"
    );
    assert_eq!(
        proxy.wait_for_metric(&series(outcome), N as f64).await,
        N as f64
    );
}

#[tokio::test]
async fn slow_shadow_does_not_delay_primary() {
    let slow = Backend::with("slow", Behaviour::Delay(Duration::from_secs(2))).await;
    // It answers in the end, differently from the primary: a mismatch, never a wait.
    primary_is_isolated(slow.url(), "5s", "mismatch").await;
}

#[tokio::test]
async fn hung_shadow_does_not_delay_primary() {
    let hung = Backend::with("hung", Behaviour::Gated(Arc::new(Semaphore::new(0)))).await;
    primary_is_isolated(hung.url(), "300ms", "timeout").await;
}

#[tokio::test]
async fn refused_shadow_does_not_affect_primary() {
    primary_is_isolated(refusing_target().await, "5s", "error").await;
}

#[tokio::test]
async fn resetting_shadow_does_not_affect_primary() {
    primary_is_isolated(resetting_target().await, "5s", "error").await;
}

#[tokio::test]
async fn large_primary_response_streams_whole_and_is_not_compared() {
    const SIZE: u64 = 3 * 1024 * 1024;
    let legacy = Backend::with("legacy", Behaviour::Download(SIZE)).await;
    let new = Backend::start("new").await;
    let proxy = TestProxy::start(&shadowed(
        &legacy,
        &new,
        "{ upstream = \"new\", sample = 1.0, max_body = 65536 }",
    ))
    .await;
    let answer = proxy.get("/api/export").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body.len() as u64, SIZE);
    assert_eq!(proxy.wait_for_metric(&series("skipped"), 1.0).await, 1.0);
    assert_eq!(proxy.metric(&series("mismatch")).await, 0.0);
}

#[tokio::test]
async fn writes_are_mirrored_only_when_listed() {
    let legacy = Backend::start("legacy").await;
    let new = Backend::start("new").await;
    let proxy = TestProxy::start(&table(
        &[("legacy", &legacy), ("new", &new)],
        "[[routes]]\nname = \"reads\"\nprefix = \"/api\"\nupstream = \"legacy\"\nshadow = { upstream = \"new\", sample = 1.0 }\n\
         [[routes]]\nname = \"writes\"\nprefix = \"/orders\"\nupstream = \"legacy\"\nshadow = { upstream = \"new\", sample = 1.0, methods = [\"POST\"] }\n",
    ))
    .await;

    assert_eq!(
        proxy
            .send(Method::POST, "/api/cart", &[], b"hello")
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        proxy
            .send(Method::POST, "/orders", &[], b"payload")
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(proxy.get("/api/cart").await.status, StatusCode::OK);
    new.wait_for_arrivals(2).await;
    // Both answers are in; the POST to `reads` would have been mirrored before the GET.
    proxy
        .wait_for_metric(
            "ficus_shadow_requests_total{outcome=\"mismatch\",route=\"reads\",upstream=\"new\"}",
            1.0,
        )
        .await;
    let mut mirrored: Vec<(Method, String, usize)> = new
        .requests()
        .into_iter()
        .map(|r| (r.method, r.target, r.body_len))
        .collect();
    mirrored.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        mirrored,
        vec![
            (Method::GET, "/api/cart".into(), 0),
            (Method::POST, "/orders".into(), 7),
        ]
    );
}

#[tokio::test]
async fn request_body_over_max_body_is_not_mirrored() {
    let (_legacy, new, proxy) =
        start_shadowed("{ upstream = \"new\", sample = 1.0, methods = [\"POST\"], max_body = 8 }")
            .await;
    let answer = proxy
        .send(
            Method::POST,
            "/api/upload",
            &[],
            b"a body longer than eight bytes",
        )
        .await;
    assert_eq!(
        answer.headers["x-received-body-bytes"], "30",
        "the primary gets it whole"
    );
    assert_eq!(proxy.wait_for_metric(&series("skipped"), 1.0).await, 1.0);
    proxy.send(Method::POST, "/api/upload", &[], b"short").await;
    new.wait_for_arrivals(1).await;
    proxy.wait_for_metric(&series("mismatch"), 1.0).await;
    let mirrored = new.requests();
    assert_eq!(mirrored.len(), 1);
    assert_eq!(mirrored[0].body_len, 5);
}

#[tokio::test]
async fn hung_shadow_under_load_is_bounded_by_concurrency() {
    const REQUESTS: usize = 1000;
    const CONCURRENCY: usize = 8;
    let legacy = Backend::start("legacy").await;
    let hung = Backend::with("new", Behaviour::Gated(Arc::new(Semaphore::new(0)))).await;
    let proxy = Arc::new(
        TestProxy::start(&shadowed(
            &legacy,
            &hung,
            &format!("{{ upstream = \"new\", sample = 1.0, concurrency = {CONCURRENCY}, timeout = \"60s\" }}"),
        ))
        .await,
    );
    // All at once: 1,000 requests in flight together, each chosen for shadowing. Each
    // costs four descriptors in this process (client, proxy, upstream, backend), so under
    // a low descriptor limit they go in waves of what fits.
    let wave = REQUESTS
        .min(open_files_limit().saturating_sub(256) / 4)
        .max(CONCURRENCY * 2);
    let mut clients: tokio::task::JoinSet<support::Answer> = tokio::task::JoinSet::new();
    for i in 0..REQUESTS {
        if clients.len() == wave {
            let answer = clients.join_next().await.unwrap().expect("client task");
            assert_eq!(
                (answer.status, answer.upstream()),
                (StatusCode::OK, "legacy")
            );
        }
        let proxy = proxy.clone();
        clients.spawn(async move { proxy.get(&format!("/api/{i}")).await });
    }
    while let Some(done) = clients.join_next().await {
        let answer = done.expect("client task");
        assert_eq!(
            (answer.status, answer.upstream()),
            (StatusCode::OK, "legacy")
        );
    }
    let dropped = (REQUESTS - CONCURRENCY) as f64;
    assert_eq!(
        proxy.wait_for_metric(&series("dropped"), dropped).await,
        dropped
    );
    hung.wait_for_arrivals(CONCURRENCY).await;
    assert_eq!(
        hung.requests().len(),
        CONCURRENCY,
        "only the permitted shadows were sent"
    );
    // One task (holding at most its bounded buffers) per shadow in flight, no more.
    let report = proxy.admin_get("/shadow/mismatches?route=api").await.body;
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["routes"]["api"]["in_flight"], CONCURRENCY);
    assert_eq!(report["routes"]["api"]["concurrency"], CONCURRENCY);
}

/// This process's soft limit on open descriptors (Linux), or plenty when unknown.
fn open_files_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(3)?.parse().ok()
        })
        .unwrap_or(1 << 20)
}

#[tokio::test]
async fn noise_learned_from_legacy_stops_timestamp_mismatches() {
    let clock = Arc::new(AtomicU64::new(1));
    let legacy = json_backend("legacy", move |path| {
        let now = clock.fetch_add(1, Ordering::SeqCst);
        format!(r#"{{"name": "{path}", "generated_at": {now}, "items": [{{"id": 1, "ts": {now}}}, {{"id": 2, "ts": {now}}}]}}"#)
    })
    .await;
    let new = json_backend("new", |path| {
        let name = if path.ends_with("/diff") { "other" } else { path };
        format!(r#"{{"name": "{name}", "generated_at": 0, "items": [{{"id": 1, "ts": 0}}, {{"id": 2, "ts": 0}}]}}"#)
    })
    .await;
    let proxy = TestProxy::start(&table(
        &[("legacy", &legacy), ("new", &new)],
        "[[routes]]\nname = \"plain\"\nprefix = \"/plain\"\nupstream = \"legacy\"\nshadow = { upstream = \"new\", sample = 1.0 }\n\
         [[routes]]\nname = \"learning\"\nprefix = \"/api\"\nupstream = \"legacy\"\nshadow = { upstream = \"new\", sample = 1.0, noise = \"learn\", noise_sample = 1.0 }\n",
    ))
    .await;
    let outcome = |route: &str, outcome: &str| {
        format!(
            "ficus_shadow_requests_total{{outcome=\"{outcome}\",route=\"{route}\",upstream=\"new\"}}"
        )
    };

    // Without learning, the timestamps are a mismatch.
    proxy.get("/plain/a").await;
    proxy
        .wait_for_metric(&outcome("plain", "mismatch"), 1.0)
        .await;

    // Learning: two legacy answers to the same request differ in the timestamps only.
    proxy.get("/api/a").await;
    proxy
        .wait_for_metric(&outcome("learning", "match"), 1.0)
        .await;
    proxy.get("/api/diff").await;
    proxy
        .wait_for_metric(&outcome("learning", "mismatch"), 1.0)
        .await;
    proxy.get("/api/b").await;
    proxy
        .wait_for_metric(&outcome("learning", "match"), 2.0)
        .await;
    assert_eq!(proxy.metric(&outcome("learning", "mismatch")).await, 1.0);

    let report = proxy.admin_get("/shadow/mismatches?route=learning").await;
    let report: serde_json::Value = serde_json::from_str(&report.body).unwrap();
    let learned = &report["routes"]["learning"]["learned_noise"]["json"];
    let learned: Vec<&str> = learned
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(learned.contains(&"$.generated_at"), "{learned:?}");
    assert!(learned.contains(&"$.items[*].ts"), "{learned:?}");
    let mismatches = report["routes"]["learning"]["mismatches"]
        .as_array()
        .unwrap();
    assert_eq!(mismatches.len(), 1);
    assert_eq!(mismatches[0]["path"], "/api/diff");
    let diff = mismatches[0]["diff"]["differences"].as_array().unwrap();
    assert_eq!(diff.len(), 1, "{diff:?}");
    assert_eq!(diff[0]["path"], "$.name");

    // The probes reached the legacy upstream marked as shadow traffic.
    let probes = legacy
        .requests()
        .iter()
        .filter(|r| r.headers.get("x-ficus-shadow").is_some())
        .count();
    assert_eq!(probes, 3);
}

#[tokio::test]
async fn reload_changes_shadowing_and_in_flight_shadows_finish() {
    let legacy = Backend::start("legacy").await;
    let gate = Arc::new(Semaphore::new(0));
    let new = Backend::with("new", Behaviour::Gated(gate.clone())).await;
    let proxy = TestProxy::start(&shadowed(
        &legacy,
        &new,
        "{ upstream = \"new\", sample = 1.0, timeout = \"10s\" }",
    ))
    .await;
    assert_eq!(proxy.get("/api/one").await.upstream(), "legacy");
    new.wait_for_arrivals(1).await;

    proxy
        .rewrite(&shadowed(
            &legacy,
            &new,
            "{ upstream = \"new\", sample = 0.0, timeout = \"10s\" }",
        ))
        .await;
    proxy.wait_for_generation(2).await;
    assert_eq!(proxy.get("/api/two").await.upstream(), "legacy");

    // The shadow started under generation 1 finishes and is counted.
    gate.add_permits(1);
    assert_eq!(proxy.wait_for_metric(&series("mismatch"), 1.0).await, 1.0);
    assert_eq!(new.requests().len(), 1, "generation 2 mirrors nothing");
    // Recorded in the route's state, which outlives the generation that started it.
    let report = proxy.admin_get("/shadow/mismatches?route=api").await.body;
    assert!(report.contains("\"path\":\"/api/one\""), "{report}");
    let routes = proxy.admin_get("/routes").await.body;
    assert!(routes.contains("\"sample\":0.0"), "{routes}");
}

#[tokio::test]
async fn demo_search_stand_ins_disagree_on_odd_length_queries() {
    let mut urls = Vec::new();
    for name in ["legacy", "search"] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        urls.push(format!("http://{}", listener.local_addr().unwrap()));
        tokio::spawn(ficus::demo::serve_stand_in(listener, name));
    }
    let proxy = TestProxy::start(&format!(
        "default = \"legacy\"\n[upstreams.legacy]\nendpoints = [\"{}\"]\n[upstreams.search]\nendpoints = [\"{}\"]\n\
         [[routes]]\nname = \"search\"\nprefix = \"/api/search\"\nupstream = \"legacy\"\n\
         shadow = {{ upstream = \"search\", sample = 1.0, ignore = {{ json = [\"$.took_ms\", \"$.served_at\"] }} }}\n",
        urls[0], urls[1]
    ))
    .await;
    let outcome = |outcome: &str| {
        format!(
            "ficus_shadow_requests_total{{outcome=\"{outcome}\",route=\"search\",upstream=\"search\"}}"
        )
    };
    assert!(
        proxy
            .get("/api/search?q=ab")
            .await
            .body
            .contains("\"ab-guide\"")
    );
    proxy.wait_for_metric(&outcome("match"), 1.0).await;
    proxy.get("/api/search?q=abc").await;
    proxy.wait_for_metric(&outcome("mismatch"), 1.0).await;
    let report = proxy
        .admin_get("/shadow/mismatches?route=search")
        .await
        .body;
    assert!(report.contains("\"path\":\"$.hits[0]\""), "{report}");
}

#[tokio::test]
async fn reloads_never_lift_the_concurrency_limit() {
    let legacy = Backend::start("legacy").await;
    let hung = Backend::with("new", Behaviour::Gated(Arc::new(Semaphore::new(0)))).await;
    let shadow = "{ upstream = \"new\", sample = 1.0, concurrency = 2, timeout = \"60s\" }";
    let proxy = TestProxy::start(&shadowed(&legacy, &hung, shadow)).await;
    proxy.get("/api/1").await;
    proxy.get("/api/2").await;
    hung.wait_for_arrivals(2).await;
    for generation in 2..=4 {
        // Any edit builds a new generation; the two shadows in flight still count.
        let edit = format!("{}# edit {generation}\n", shadowed(&legacy, &hung, shadow));
        proxy.rewrite(&edit).await;
        proxy.wait_for_generation(generation).await;
        proxy.get(&format!("/api/after-{generation}")).await;
    }
    assert_eq!(proxy.wait_for_metric(&series("dropped"), 3.0).await, 3.0);
    assert_eq!(hung.requests().len(), 2);
}

#[tokio::test]
async fn clients_cannot_mark_their_requests_as_shadow_traffic() {
    let legacy = Backend::start("legacy").await;
    let proxy = TestProxy::start(&table(&[("legacy", &legacy)], "")).await;
    proxy
        .send(
            Method::POST,
            "/orders",
            &[("x-ficus-shadow", "1")],
            b"real write",
        )
        .await;
    let received = &legacy.requests()[0];
    assert!(received.headers.get("x-ficus-shadow").is_none());
    assert_eq!(received.body_len, 10);
}

#[tokio::test]
async fn failed_probe_teaches_no_noise() {
    // The legacy side throttles the probe (its second copy of the request): that answer
    // differs in everything and must not be learned.
    let legacy = Backend::with(
        "legacy",
        responder(|r| {
            let json = vec![("content-type".into(), "application/json".into())];
            if r.headers.contains_key("x-ficus-shadow") {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    json,
                    r#"{"error": "busy"}"#.into(),
                )
            } else {
                (StatusCode::OK, json, r#"{"items": [1, 2]}"#.into())
            }
        }),
    )
    .await;
    let new = json_backend("new", |_| r#"{"items": [1, 3]}"#.into()).await;
    let proxy = TestProxy::start(&shadowed(
        &legacy,
        &new,
        "{ upstream = \"new\", sample = 1.0, noise = \"learn\", noise_sample = 1.0 }",
    ))
    .await;
    proxy.get("/api/list").await;
    proxy.wait_for_metric(&series("mismatch"), 1.0).await;
    let report = proxy.admin_get("/shadow/mismatches?route=api").await.body;
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(
        report["routes"]["api"]["learned_noise"]["json"],
        serde_json::json!([])
    );
    assert_eq!(legacy.requests().len(), 2, "the probe was sent");
}

#[tokio::test]
async fn failed_shadow_frees_its_slot_before_the_primary_ends() {
    let gate = Arc::new(Semaphore::new(0));
    let legacy = Backend::with("legacy", Behaviour::Gated(gate.clone())).await;
    let refused = refusing_target().await;
    let proxy = Arc::new(
        TestProxy::start(&table(
            &[("legacy", &legacy)],
            &format!(
                "[upstreams.new]\nendpoints = [\"{refused}\"]\n[[routes]]\nname = \"api\"\nprefix = \"/api\"\nupstream = \"legacy\"\n\
                 shadow = {{ upstream = \"new\", sample = 1.0, concurrency = 1 }}\n"
            ),
        ))
        .await,
    );
    let slow = tokio::spawn({
        let proxy = proxy.clone();
        async move { proxy.get("/api/slow").await }
    });
    legacy.wait_for_arrivals(1).await;
    // Counted while the primary still waits: the shadow did not hold its slot for it.
    proxy.wait_for_metric(&series("error"), 1.0).await;
    gate.add_permits(2);
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
    proxy.get("/api/next").await;
    assert_eq!(proxy.wait_for_metric(&series("error"), 2.0).await, 2.0);
    assert_eq!(proxy.metric(&series("dropped")).await, 0.0);
}

#[tokio::test]
async fn primary_streams_to_the_client_while_its_copy_is_kept() {
    // The primary sends its first chunk, then waits: the client must get that chunk
    // before the rest exists, with shadowing on.
    let gate = Arc::new(tokio::sync::Notify::new());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let legacy_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn({
        let gate = gate.clone();
        async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.unwrap();
                seen.extend_from_slice(&buf[..n]);
            }
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
                .await
                .unwrap();
            gate.notified().await;
            stream.write_all(b"4\r\nrest\r\n0\r\n\r\n").await.unwrap();
            let _ = stream.read(&mut buf).await;
        }
    });
    let new = Backend::with(
        "new",
        responder(|_| (StatusCode::OK, Vec::new(), "firstrest".into())),
    )
    .await;
    let proxy = TestProxy::start(&format!(
        "default = \"legacy\"\n[upstreams.legacy]\nendpoints = [\"{legacy_url}\"]\n[upstreams.new]\nendpoints = [\"{}\"]\n\
         [[routes]]\nname = \"api\"\nprefix = \"/api\"\nupstream = \"legacy\"\nshadow = {{ upstream = \"new\", sample = 1.0 }}\n",
        new.url()
    ))
    .await;
    let addr = proxy.running.proxy_addr;
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET /api/feed HTTP/1.1\r\nhost: shop\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(support::EVENT_TIMEOUT, async {
        while !String::from_utf8_lossy(&received).contains("first") {
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early");
            received.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the first chunk arrives before the primary finishes");
    gate.notify_one();
    let _ = tokio::time::timeout(support::EVENT_TIMEOUT, client.read_to_end(&mut received)).await;
    assert!(String::from_utf8_lossy(&received).contains("rest"));
    // The copy was whole: the shadow's identical body matches.
    assert_eq!(proxy.wait_for_metric(&series("match"), 1.0).await, 1.0);
}

#[tokio::test]
async fn large_answers_are_compared_whole() {
    // 2 x ~88 KB: over the in-place limit (the blocking pool compares them), and every
    // item compared: the one difference is at the end.
    let big = |last: &'static str| {
        move |_: &str| {
            let items: Vec<String> = (0..4000)
                .map(|i| format!("{{\"id\": {i}, \"v\": \"x\"}}"))
                .collect();
            format!(r#"{{"items": [{}], "last": "{last}"}}"#, items.join(","))
        }
    };
    let legacy = json_backend("legacy", big("a")).await;
    let new = json_backend("new", big("b")).await;
    let proxy = TestProxy::start(&shadowed(
        &legacy,
        &new,
        "{ upstream = \"new\", sample = 1.0 }",
    ))
    .await;
    assert!(proxy.get("/api/all").await.body.len() > 80_000);
    proxy.wait_for_metric(&series("mismatch"), 1.0).await;
    let report = proxy.admin_get("/shadow/mismatches?route=api").await.body;
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    let diff = &report["routes"]["api"]["mismatches"][0]["diff"]["differences"];
    assert_eq!(diff.as_array().unwrap().len(), 1, "{diff}");
    assert_eq!(diff[0]["path"], "$.last");
}

#[tokio::test]
async fn http2_client_requests_are_mirrored_with_their_bodies() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let (_legacy, new, proxy) =
        start_shadowed("{ upstream = \"new\", sample = 1.0, methods = [\"POST\"] }").await;
    let h2: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let request = http::Request::post(proxy.url("/api/orders"))
        .body(Full::new(bytes::Bytes::from_static(b"h2 order body")))
        .unwrap();
    let response = h2.request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"legacy");
    new.wait_for_arrivals(1).await;
    proxy.wait_for_metric(&series("mismatch"), 1.0).await;
    let mirrored = &new.requests()[0];
    assert_eq!(
        (mirrored.method.clone(), mirrored.body_len),
        (Method::POST, 13)
    );
}

#[tokio::test]
async fn chunked_request_body_over_max_body_is_not_mirrored() {
    let (_legacy, new, proxy) =
        start_shadowed("{ upstream = \"new\", sample = 1.0, methods = [\"POST\"], max_body = 8 }")
            .await;
    let addr = proxy.running.proxy_addr;
    // No content-length: the limit is only found while the body streams past.
    let long = support::raw(
        addr,
        b"POST /api/upload HTTP/1.1\r\nhost: shop\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n\
          8\r\n01234567\r\n8\r\n89abcdef\r\n0\r\n\r\n",
    )
    .await;
    assert!(long.starts_with("HTTP/1.1 200"), "{long}");
    assert!(
        long.contains("x-received-body-bytes: 16"),
        "the primary gets it whole: {long}"
    );
    assert_eq!(proxy.wait_for_metric(&series("skipped"), 1.0).await, 1.0);
    let short = support::raw(
        addr,
        b"POST /api/upload HTTP/1.1\r\nhost: shop\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n\
          5\r\nshort\r\n0\r\n\r\n",
    )
    .await;
    assert!(short.starts_with("HTTP/1.1 200"), "{short}");
    new.wait_for_arrivals(1).await;
    proxy.wait_for_metric(&series("mismatch"), 1.0).await;
    let mirrored = new.requests();
    assert_eq!(mirrored.len(), 1, "only the short body was mirrored");
    assert_eq!(mirrored[0].body_len, 5);
}

#[tokio::test]
async fn requests_a_split_sends_to_the_shadow_target_itself_are_not_mirrored() {
    let legacy = Backend::start("legacy").await;
    let new = Backend::start("new").await;
    let proxy = TestProxy::start(&table(
        &[("legacy", &legacy), ("new", &new)],
        "[[routes]]\nname = \"canary\"\nprefix = \"/canary\"\nsplit = { legacy = 0, new = 100 }\n\
         shadow = { upstream = \"new\", sample = 1.0 }\n\
         [[routes]]\nname = \"api\"\nprefix = \"/api\"\nupstream = \"legacy\"\nshadow = { upstream = \"new\", sample = 1.0 }\n",
    ))
    .await;
    assert_eq!(proxy.get("/canary/x").await.upstream(), "new");
    proxy.get("/api/y").await;
    proxy.wait_for_metric(&series("mismatch"), 1.0).await;
    let marked: Vec<(String, bool)> = new
        .requests()
        .into_iter()
        .map(|r| (r.target, r.headers.contains_key("x-ficus-shadow")))
        .collect();
    assert_eq!(marked.len(), 2, "{marked:?}");
    assert!(marked.contains(&("/canary/x".into(), false)), "{marked:?}");
    assert!(marked.contains(&("/api/y".into(), true)), "{marked:?}");
    let metrics = proxy.admin_get("/metrics").await.body;
    let canary_outcomes: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("ficus_shadow_requests_total") && l.contains("route=\"canary\""))
        .collect();
    assert!(canary_outcomes.is_empty(), "{canary_outcomes:?}");
}
