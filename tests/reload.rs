//! Hot reload, driven the way operators change `routes.toml`: in-place writes,
//! editor saves by rename, Kubernetes ConfigMap symlink swaps, broken edits,
//! deletions and bursts. Every test waits for the reloader's own signals
//! (generation, failure count, served hash) or for file events; no test sleeps
//! to wait for a reload (timed pauses only pace writes: the burst's, and the
//! busy directory's noise).
//!
//! Most tests send a request before their first edit, to see the starting
//! table serve; `table_edited_right_after_start_is_not_missed` pins that an
//! edit is seen even without one.

mod support;
use support::*;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use notify::{EventKind, RecursiveMode, Watcher};
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};

const SUCCESSES: &str = "ficus_config_reloads_total{result=\"success\"}";
const FAILURES: &str = "ficus_config_reloads_total{result=\"failure\"}";
const GENERATION: &str = "ficus_config_generation";

/// A `[[routes]]` entry sending `prefix` and everything below it to `upstream`.
fn route(name: &str, prefix: &str, upstream: &str) -> String {
    format!("[[routes]]\nname = \"{name}\"\nprefix = \"{prefix}\"\nupstream = \"{upstream}\"\n")
}

/// Like `table`, with `default` as the default upstream instead of "legacy".
fn table_with_default(default: &str, upstreams: &[(&str, &Backend)], rest: &str) -> String {
    table(upstreams, rest).replacen(
        "default = \"legacy\"",
        &format!("default = \"{default}\""),
        1,
    )
}

/// The 1-based line of the first line of `text` containing `needle`.
/// Backends `a` (upstream `legacy`) and `b` (`new`), and ficus routing `/api` to `legacy`.
async fn api_on_legacy() -> (Backend, Backend, TestProxy) {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let upstreams = [("legacy", &a), ("new", &b)];
    let proxy = TestProxy::start(&table(&upstreams, &route("api", "/api", "legacy"))).await;
    (a, b, proxy)
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|line| line.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in the table"))
        + 1
}

/// The line of the `[[routes]]` header of the route called `name`, as `route` writes it.
fn route_line(text: &str, name: &str) -> usize {
    line_of(text, &format!("name = \"{name}\"")) - 1
}

/// The admin `/routes` document.
async fn routes(proxy: &TestProxy) -> Value {
    let answer = proxy.admin_get("/routes").await;
    assert_eq!(answer.status, StatusCode::OK, "/routes: {}", answer.body);
    serde_json::from_str(&answer.body).expect("/routes is JSON")
}

/// `/routes`' `last_reload_error.message`, or None when there is no error.
async fn last_reload_error(proxy: &TestProxy) -> Option<String> {
    match &routes(proxy).await["last_reload_error"] {
        Value::Null => None,
        error => Some(
            error["message"]
                .as_str()
                .expect("last_reload_error.message is a string")
                .to_owned(),
        ),
    }
}

/// `/routes`' `hash` of a table's bytes.
fn table_hash(text: &str) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
}

/// Waits until the table serving is exactly `text` (by its hash in `/routes`),
/// waking on every reload attempt.
async fn wait_for_table(proxy: &TestProxy, text: &str) {
    let want = table_hash(text);
    let mut reloads = proxy.running.reloads();
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    loop {
        reloads.borrow_and_update();
        if routes(proxy).await["hash"] == want.as_str() {
            return;
        }
        tokio::time::timeout_at(deadline, reloads.changed())
            .await
            .expect("the table was not served in time")
            .expect("reloader gone");
    }
}

/// Saves the table the way editors do: write a temporary file in the same
/// directory, then rename it over the table (atomic: a reader sees the old
/// file or the new one, never a mix).
fn save_by_rename(proxy: &TestProxy, text: &str) {
    let temp = proxy.dir.path().join(".routes.toml.swp");
    std::fs::write(&temp, text).expect("write temp file");
    std::fs::rename(&temp, &proxy.table).expect("rename over the table");
}

/// Sends a GET through the proxy from a task, so the test can act while it is in flight.
fn spawn_get(proxy: &TestProxy, path: &str) -> tokio::task::JoinHandle<Answer> {
    let client = proxy.client.clone();
    let request = Request::get(proxy.url(path))
        .body(Full::new(Bytes::new()))
        .expect("request");
    tokio::spawn(async move { fetch(&client, request).await })
}

/// What happens to files in one directory, as inotify reports it: lets a test
/// see that ficus has read the table when the reload leaves no other trace.
struct DirEvents {
    _watcher: notify::RecommendedWatcher,
    events: mpsc::UnboundedReceiver<notify::Event>,
}

impl DirEvents {
    fn watch(dir: &Path) -> DirEvents {
        let (tx, events) = mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if let Ok(event) = event {
                    let _ = tx.send(event);
                }
            })
            .expect("watcher");
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .expect("watch the table's directory");
        DirEvents {
            _watcher: watcher,
            events,
        }
    }

    /// Waits for the next event on `file` whose kind satisfies `wanted`.
    async fn next(&mut self, file: &Path, what: &str, wanted: impl Fn(&EventKind) -> bool) {
        let found = async {
            loop {
                let event = self.events.recv().await.expect("watcher gone");
                if wanted(&event.kind) && event.paths.iter().any(|p| p == file) {
                    return;
                }
            }
        };
        tokio::time::timeout(EVENT_TIMEOUT, found)
            .await
            .unwrap_or_else(|_| panic!("no {what} of {} in time", file.display()));
    }

    /// Waits until the writer has closed `file`, then until someone opens it
    /// again: in these tests only ficus's reloader reads the table.
    async fn wait_for_read_after_write(&mut self, file: &Path) {
        use notify::event::{AccessKind, AccessMode};
        self.next(file, "close after write", |kind| {
            matches!(
                kind,
                EventKind::Access(AccessKind::Close(AccessMode::Write))
            )
        })
        .await;
        self.next(file, "open by ficus", |kind| {
            matches!(kind, EventKind::Access(AccessKind::Open(_)))
        })
        .await;
    }
}

#[tokio::test]
async fn in_place_write_reroutes_the_next_request() {
    let (a, b, proxy) = api_on_legacy().await;
    let upstreams = [("legacy", &a), ("new", &b)];
    assert_eq!(proxy.get("/api/orders").await.body, "a");

    proxy
        .rewrite_in_place(&table(&upstreams, &route("api", "/api", "new")))
        .await;
    proxy.wait_for_generation(2).await;

    let answer = proxy.get("/api/orders").await;
    assert_eq!((answer.status, answer.body.as_str()), (StatusCode::OK, "b"));
    assert_eq!(proxy.running.generation(), 2);
    assert_eq!(proxy.metric(GENERATION).await, 2.0);
    assert_eq!(proxy.metric(SUCCESSES).await, 1.0);
    // An in-place write can be read between its truncate and its write (README: write by
    // rename); that read is rejected as an empty table, never applied.
    assert!(proxy.metric(FAILURES).await <= 1.0);
    assert_eq!(b.requests().len(), 1);
}

#[tokio::test]
async fn table_edited_right_after_start_is_not_missed() {
    let (a, b, proxy) = api_on_legacy().await;
    let upstreams = [("legacy", &a), ("new", &b)];
    // No request first: once `start` has returned, an edit must be seen.
    proxy
        .rewrite(&table(&upstreams, &route("api", "/api", "new")))
        .await;
    proxy.wait_for_generation(2).await;
    assert_eq!(proxy.get("/api/orders").await.body, "b");
}

#[tokio::test]
async fn a_table_in_a_busy_directory_still_reloads() {
    let (a, b, proxy) = api_on_legacy().await;
    let upstreams = [("legacy", &a), ("new", &b)];
    assert_eq!(proxy.get("/api/orders").await.body, "a");
    // Another file in the directory is written every 20 ms, so the directory is
    // never quiet for the debounce: the edit must be applied anyway (within
    // `DEBOUNCE_MAX`, long before the periodic re-read).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let noise = proxy.dir.path().join("app.log");
    let (written, mut writes) = tokio::sync::watch::channel(0u128);
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let rounds = EVENT_TIMEOUT.as_millis() / 20;
            for n in 1..=rounds {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                std::fs::write(&noise, n.to_string()).expect("write the noise file");
                written.send_replace(n);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // The edit lands amid the noise: after its first few writes.
    tokio::time::timeout(EVENT_TIMEOUT, writes.wait_for(|&n| n >= 3))
        .await
        .expect("the noise writer started")
        .expect("noise writer gone");
    proxy
        .rewrite(&table(&upstreams, &route("api", "/api", "new")))
        .await;
    proxy.wait_for_generation(2).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("noise writer");
    assert_eq!(proxy.get("/api/orders").await.body, "b");
}

#[tokio::test]
async fn editor_save_by_rename_reloads_every_time() {
    let (a, b, proxy) = api_on_legacy().await;
    let upstreams = [("legacy", &a), ("new", &b)];
    assert_eq!(proxy.get("/api/orders").await.body, "a");

    save_by_rename(&proxy, &table(&upstreams, &route("api", "/api", "new")));
    proxy.wait_for_generation(2).await;
    assert_eq!(proxy.get("/api/orders").await.body, "b");

    // The first rename replaced the inode a file watch would have followed.
    save_by_rename(&proxy, &table(&upstreams, &route("api", "/api", "legacy")));
    proxy.wait_for_generation(3).await;
    assert_eq!(proxy.get("/api/orders").await.body, "a");
    assert_eq!(proxy.metric(SUCCESSES).await, 2.0);
}

#[cfg(unix)]
#[tokio::test]
async fn configmap_symlink_swap_reloads_every_time() {
    use std::os::unix::fs::symlink;
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let upstreams = [("legacy", &a), ("b", &b), ("c", &c)];
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_owned();
    // What the kubelet does on every ConfigMap update: a new timestamped
    // directory, a temporary `..data` link to it, then an atomic rename.
    let publish = |version: &str, text: String| {
        std::fs::create_dir(root.join(version)).expect("version dir");
        std::fs::write(root.join(version).join("routes.toml"), text).expect("write version");
        symlink(version, root.join("..data_tmp")).expect("temp link");
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).expect("swap ..data");
    };
    std::fs::create_dir(root.join("..2026_a")).expect("first version dir");
    std::fs::write(
        root.join("..2026_a/routes.toml"),
        table(&upstreams, &route("api", "/api", "legacy")),
    )
    .expect("write first version");
    symlink("..2026_a", root.join("..data")).expect("..data link");
    symlink("..data/routes.toml", root.join("routes.toml")).expect("routes.toml link");
    let proxy = TestProxy::start_at(dir, root.join("routes.toml")).await;
    assert_eq!(proxy.get("/api/orders").await.body, "a");

    publish("..2026_b", table(&upstreams, &route("api", "/api", "b")));
    std::fs::remove_dir_all(root.join("..2026_a")).expect("remove old version");
    proxy.wait_for_generation(2).await;
    assert_eq!(proxy.get("/api/orders").await.body, "b");

    publish("..2026_c", table(&upstreams, &route("api", "/api", "c")));
    std::fs::remove_dir_all(root.join("..2026_b")).expect("remove old version");
    proxy.wait_for_generation(3).await;
    assert_eq!(proxy.get("/api/orders").await.body, "c");
    assert_eq!(proxy.metric(SUCCESSES).await, 2.0);
    assert_eq!(proxy.metric(FAILURES).await, 0.0);
}

#[tokio::test]
async fn invalid_reload_keeps_previous_table_and_reports_file_line_and_problem() {
    let (a, b, proxy) = api_on_legacy().await;
    let upstreams = [("legacy", &a), ("new", &b)];
    assert_eq!(proxy.get("/api/orders").await.body, "a");
    let file = proxy.table.display().to_string();

    let bad_toml = table(
        &upstreams,
        "[[routes]]\nname = \"api\"\nprefix = \"/api\nupstream = \"new\"\n",
    );
    let unknown = table(&upstreams, &route("api", "/api", "nowhere"));
    let tie = table(
        &upstreams,
        &(route("api", "/api", "legacy") + &route("api-new", "/api", "new")),
    );
    let cases = [
        (
            &bad_toml,
            line_of(&bad_toml, "prefix = \"/api"),
            "invalid TOML",
        ),
        (
            &unknown,
            route_line(&unknown, "api"),
            "upstream \"nowhere\" is not defined",
        ),
        (&tie, route_line(&tie, "api-new"), "ties with route \"api\""),
    ];
    for (failures, (text, line, problem)) in (1..).zip(cases) {
        proxy.rewrite(text).await;
        proxy.wait_for_failures(failures).await;

        let answer = proxy.get("/api/orders").await;
        assert_eq!((answer.status, answer.body.as_str()), (StatusCode::OK, "a"));
        let message = last_reload_error(&proxy)
            .await
            .expect("last_reload_error is set");
        let at = format!("{file}:{line}: ");
        assert!(message.contains(&at), "{message:?} should name {at:?}");
        assert!(
            message.contains(problem),
            "{message:?} should say {problem:?}"
        );
        assert_eq!(proxy.metric(FAILURES).await, failures as f64);
        assert_eq!(proxy.metric(SUCCESSES).await, 0.0);
        assert_eq!(proxy.metric(GENERATION).await, 1.0);
        assert_eq!(routes(&proxy).await["generation"], 1);
    }

    proxy
        .rewrite(&table(&upstreams, &route("api", "/api", "new")))
        .await;
    proxy.wait_for_generation(2).await;
    assert_eq!(proxy.get("/api/orders").await.body, "b");
    assert_eq!(last_reload_error(&proxy).await, None);
    assert_eq!(proxy.metric(SUCCESSES).await, 1.0);
    assert_eq!(proxy.metric(FAILURES).await, 3.0);
}

#[tokio::test]
async fn request_in_flight_during_reload_completes_on_its_generation() {
    let gate = Arc::new(Semaphore::new(0));
    let a = Backend::with("a", Behaviour::Gated(gate.clone())).await;
    let b = Backend::start("b").await;
    let upstreams = [("a", &a), ("b", &b)];
    let proxy = TestProxy::start(&table_with_default(
        "a",
        &upstreams,
        &route("api", "/api", "a"),
    ))
    .await;
    let in_flight = spawn_get(&proxy, "/api/orders");
    a.wait_for_arrivals(1).await;

    proxy
        .rewrite(&table_with_default(
            "b",
            &upstreams,
            &route("api", "/api", "b"),
        ))
        .await;
    proxy.wait_for_generation(2).await;
    assert_eq!(proxy.get("/api/orders").await.body, "b");
    assert_eq!(proxy.get("/elsewhere").await.body, "b");

    gate.add_permits(1);
    let answer = in_flight.await.expect("in-flight request task");
    assert_eq!((answer.status, answer.body.as_str()), (StatusCode::OK, "a"));
    assert_eq!(
        a.requests().len(),
        1,
        "the in-flight request was not retried"
    );
}

#[tokio::test]
async fn request_in_flight_on_a_removed_route_completes() {
    let gate = Arc::new(Semaphore::new(0));
    let legacy = Backend::start("legacy").await;
    let slow = Backend::with("slow", Behaviour::Gated(gate.clone())).await;
    let proxy = TestProxy::start(&table(
        &[("legacy", &legacy), ("slow", &slow)],
        &route("reports", "/reports", "slow"),
    ))
    .await;
    let in_flight = spawn_get(&proxy, "/reports/2025");
    slow.wait_for_arrivals(1).await;

    // The route and its upstream both disappear from the table.
    proxy.rewrite(&table(&[("legacy", &legacy)], "")).await;
    proxy.wait_for_generation(2).await;
    assert_eq!(proxy.get("/reports/2025").await.body, "legacy");

    gate.add_permits(1);
    let answer = in_flight.await.expect("in-flight request task");
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "slow")
    );
    assert_eq!(slow.requests().len(), 1);
}

#[tokio::test]
async fn unchanged_upstream_keeps_its_pooled_connections_across_reload() {
    let legacy = Backend::start("legacy").await;
    let other = Backend::start("other").await;
    let moved = Backend::start("moved").await;
    let upstreams = [("legacy", &legacy), ("other", &other)];
    let proxy = TestProxy::start(&table(&upstreams, &route("other", "/other", "other"))).await;
    for _ in 0..3 {
        assert_eq!(proxy.get("/page").await.body, "legacy");
    }
    let warm = legacy.connections.load(Ordering::SeqCst);
    assert_eq!(warm, 1, "sequential requests share one upstream connection");

    // Only another route changes: the legacy upstream's pool must carry over.
    proxy
        .rewrite(&table(&upstreams, &route("other", "/elsewhere", "other")))
        .await;
    proxy.wait_for_generation(2).await;
    assert_eq!(proxy.get("/elsewhere").await.body, "other");
    for _ in 0..3 {
        assert_eq!(proxy.get("/page").await.body, "legacy");
    }
    assert_eq!(
        legacy.connections.load(Ordering::SeqCst),
        warm,
        "ficus opened a new connection to an upstream the reload did not change"
    );

    // The legacy upstream's endpoint changes: requests follow the new address.
    proxy
        .rewrite(&table(
            &[("legacy", &moved), ("other", &other)],
            &route("other", "/elsewhere", "other"),
        ))
        .await;
    proxy.wait_for_generation(3).await;
    let answer = proxy.get("/page").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "moved")
    );
    assert_eq!(legacy.requests().len(), 6);
}

#[tokio::test]
async fn listen_change_is_reported_as_restart_required_and_the_rest_applies() {
    let (a, b, proxy) = api_on_legacy().await;
    let upstreams = [("legacy", &a), ("new", &b)];
    assert_eq!(proxy.get("/api/orders").await.body, "a");
    assert_eq!(
        routes(&proxy).await["restart_required"],
        serde_json::json!([])
    );

    let rest = route("api", "/api", "new") + "[listen]\nproxy = \"127.0.0.1:1\"\n";
    proxy.rewrite(&table(&upstreams, &rest)).await;
    proxy.wait_for_generation(2).await;

    // A new connection to the original address: the listener was not rebound.
    let fresh = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::get(proxy.url("/api/orders"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let answer = fetch(&fresh, request).await;
    assert_eq!((answer.status, answer.body.as_str()), (StatusCode::OK, "b"));
    let routes = routes(&proxy).await;
    assert_eq!(
        routes["restart_required"],
        serde_json::json!(["listen.proxy"])
    );
    assert_eq!(routes["last_reload_error"], Value::Null);
}

#[tokio::test]
async fn rewriting_identical_bytes_does_not_bump_generation() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let upstreams = [("legacy", &a), ("new", &b)];
    let original = table(&upstreams, &route("api", "/api", "legacy"));
    let proxy = TestProxy::start(&original).await;
    assert_eq!(proxy.get("/api/orders").await.body, "a");
    let mut events = DirEvents::watch(proxy.dir.path());

    // Same bytes, written in place: ficus reads them (so they are not coalesced
    // with the next edit), sees nothing new and keeps generation 1.
    proxy.rewrite_in_place(&original).await;
    events.wait_for_read_after_write(&proxy.table).await;

    // By rename, so a read still in progress keeps seeing the identical bytes.
    let changed = table(&upstreams, &route("api", "/api", "new"));
    save_by_rename(&proxy, &changed);
    proxy.wait_for_generation(2).await;
    let routes = routes(&proxy).await;
    assert_eq!(
        (&routes["generation"], &routes["hash"]),
        (&Value::from(2), &Value::from(table_hash(&changed))),
        "generation 2 must be the changed table, not a reload of identical bytes"
    );
    assert_eq!(proxy.get("/api/orders").await.body, "b");
    assert_eq!(proxy.metric(SUCCESSES).await, 1.0);
    assert_eq!(proxy.metric(GENERATION).await, 2.0);
}

#[tokio::test]
async fn burst_of_writes_coalesces_and_the_last_write_wins() {
    let (a, b, proxy) = api_on_legacy().await;
    let upstreams = [("legacy", &a), ("new", &b)];
    assert_eq!(proxy.get("/api/orders").await.body, "a");

    let version = |i: usize| {
        let target = if i.is_multiple_of(2) { "legacy" } else { "new" };
        table(
            &upstreams,
            &format!("# write {i}\n{}", route("api", "/api", target)),
        )
    };
    // About 2 ms apart: the whole burst fits in one 250 ms debounce window, yet
    // is slow enough that without the debounce each write would get its own
    // reload (the pacing shapes the input; it synchronises nothing).
    for i in 0..50 {
        proxy.rewrite_in_place(&version(i)).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let last = version(49);
    wait_for_table(&proxy, &last).await;

    assert_eq!(proxy.get("/api/orders").await.body, "b");
    let applied = proxy.running.generation() - 1;
    let rejected = proxy.running.reloads().borrow().failures;
    assert!(
        applied >= 1 && applied + rejected < 10,
        "50 quick writes made {applied} reloads and {rejected} rejections; \
         the debounce should coalesce them"
    );
    assert_eq!(proxy.metric(SUCCESSES).await, applied as f64);
}

#[tokio::test]
async fn deleted_table_keeps_serving_until_restored() {
    let (a, b, proxy) = api_on_legacy().await;
    let upstreams = [("legacy", &a), ("new", &b)];
    assert_eq!(proxy.get("/api/orders").await.body, "a");

    std::fs::remove_file(&proxy.table).expect("delete the table");
    proxy.wait_for_failures(1).await;
    let answer = proxy.get("/api/orders").await;
    assert_eq!((answer.status, answer.body.as_str()), (StatusCode::OK, "a"));
    let message = last_reload_error(&proxy)
        .await
        .expect("last_reload_error is set");
    assert!(
        message.contains(&proxy.table.display().to_string()) && message.contains("cannot read"),
        "{message:?} should name the file and say it cannot be read"
    );
    assert_eq!(proxy.metric(FAILURES).await, 1.0);
    assert_eq!(proxy.running.generation(), 1);

    proxy
        .rewrite(&table(&upstreams, &route("api", "/api", "new")))
        .await;
    proxy.wait_for_generation(2).await;
    assert_eq!(proxy.get("/api/orders").await.body, "b");
    assert_eq!(last_reload_error(&proxy).await, None);
}

#[tokio::test]
async fn reverting_a_broken_edit_to_the_serving_bytes_clears_the_reload_error() {
    let legacy = Backend::start("legacy").await;
    let original = table(&[("legacy", &legacy)], "");
    let proxy = TestProxy::start(&original).await;
    proxy.wait_for_attempts(1).await; // the start-up catch-up read

    proxy.rewrite("default = \"legacy\"\n[[routes]\n").await;
    proxy.wait_for_failures(1).await;
    assert!(routes(&proxy).await["last_reload_error"]["message"].is_string());

    // `git checkout routes.toml`: back to the bytes that are serving.
    let mut next = proxy.attempts() + 1;
    save_by_rename(&proxy, &original);
    // A late event from the broken write may still be in the pipeline: wait for attempts
    // until one has read the reverted file, bounded by the event timeout.
    let deadline = std::time::Instant::now() + EVENT_TIMEOUT;
    let routes = loop {
        proxy.wait_for_attempts(next).await;
        let routes = routes(&proxy).await;
        if routes["last_reload_error"].is_null() {
            break routes;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the reload error was never cleared"
        );
        next += 1;
    };
    assert_eq!(routes["generation"], 1, "nothing new was applied");
    assert_eq!(proxy.get("/x").await.body, "legacy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_under_load_never_fail_while_the_table_flips() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let upstreams = [("legacy", &a), ("new", &b)];
    let to_a = table(&upstreams, &route("api", "/api", "legacy"));
    let to_b = table(&upstreams, &route("api", "/api", "new"));
    let proxy = TestProxy::start(&to_a).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (client, url, stop) = (proxy.client.clone(), proxy.url("/api/x"), stop.clone());
            tokio::spawn(async move {
                let mut bodies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let request = Request::get(url.as_str())
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    let answer = fetch(&client, request).await;
                    bodies.push((answer.status, answer.body));
                }
                bodies
            })
        })
        .collect();
    // Each flip waits out the 250 ms debounce, so a dozen keeps the test short.
    for flip in 0..12u64 {
        save_by_rename(&proxy, if flip % 2 == 0 { &to_b } else { &to_a });
        proxy.wait_for_generation(flip + 2).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut served = 0;
    for client in clients {
        for (status, body) in client.await.unwrap() {
            assert_eq!(
                status,
                StatusCode::OK,
                "a request failed during reloads: {body}"
            );
            assert!(body == "a" || body == "b", "unexpected answer {body}");
            served += 1;
        }
    }
    assert!(
        served > 12,
        "the load actually ran during the reloads ({served} requests)"
    );
}
