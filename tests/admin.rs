//! The admin listener and the metrics a dashboard reads.

mod support;
use http::Method;
use support::*;

fn two_routes(legacy: &Backend, users: &Backend) -> String {
    table(
        &[("legacy", legacy), ("users", users)],
        r#"
[[routes]]
name = "users-read"
methods = ["GET"]
path = "/api/users/{id}"
upstream = "users"
"#,
    )
}

#[tokio::test]
async fn metrics_count_and_time_requests_per_route_and_upstream() {
    let (legacy, users) = (
        Backend::start("legacy").await,
        Backend::start("users").await,
    );
    let proxy = TestProxy::start(&two_routes(&legacy, &users)).await;
    for _ in 0..3 {
        assert_eq!(proxy.get("/api/users/1").await.upstream(), "users");
    }
    assert_eq!(proxy.get("/elsewhere").await.upstream(), "legacy");
    assert_eq!(proxy.get("/api/users/%2Fx").await.status, 400);

    let ok = r#"ficus_requests_total{code="200",route="users-read",upstream="users"}"#;
    assert_eq!(proxy.metric(ok).await, 3.0);
    assert_eq!(
        proxy
            .metric(r#"ficus_requests_total{code="200",route="default",upstream="legacy"}"#)
            .await,
        1.0
    );
    assert_eq!(
        proxy
            .metric(r#"ficus_requests_total{code="400",route="default",upstream="none"}"#)
            .await,
        1.0
    );
    assert_eq!(
        proxy
            .metric(r#"ficus_request_duration_seconds_count{route="users-read",upstream="users"}"#)
            .await,
        3.0
    );
    assert_eq!(proxy.metric("ficus_config_generation").await, 1.0);
    assert_eq!(
        proxy
            .metric(r#"ficus_config_reloads_total{result="success"}"#)
            .await,
        0.0
    );

    let answer = proxy.admin_get("/metrics").await;
    assert_eq!(answer.headers["content-type"], "text/plain; version=0.0.4");
    assert!(
        answer
            .body
            .contains(r#"ficus_config_reloads_total{result="failure"} 0"#),
        "failure series exists from the start"
    );
    let buckets: Vec<&str> = answer
        .body
        .lines()
        .filter(|l| l.starts_with(r#"ficus_request_duration_seconds_bucket{route="users-read""#))
        .filter_map(|l| l.split("le=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(
        buckets,
        [
            "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5",
            "1", "2.5", "5", "10", "+Inf"
        ]
    );
}

#[tokio::test]
async fn random_paths_do_not_create_metric_series() {
    let (legacy, users) = (
        Backend::start("legacy").await,
        Backend::start("users").await,
    );
    let proxy = TestProxy::start(&two_routes(&legacy, &users)).await;
    proxy.get("/warm").await;
    let series = |text: &str| text.lines().filter(|l| l.starts_with("ficus_")).count();
    let before = series(&proxy.admin_get("/metrics").await.body);
    for i in 0..200 {
        proxy.get(&format!("/random/{i}/{}", i * 7919)).await;
    }
    let after = series(&proxy.admin_get("/metrics").await.body);
    assert_eq!(
        before, after,
        "labels come from the table, never from request paths"
    );
    assert_eq!(
        proxy
            .metric(r#"ficus_requests_total{code="200",route="default",upstream="legacy"}"#)
            .await,
        201.0
    );
}

#[tokio::test]
async fn health_readiness_and_routes_endpoints() {
    let (legacy, users) = (
        Backend::start("legacy").await,
        Backend::start("users").await,
    );
    let proxy = TestProxy::start(&two_routes(&legacy, &users)).await;
    let health = proxy.admin_get("/healthz").await;
    assert_eq!(
        (health.status.as_u16(), health.body.as_str()),
        (200, "ok\n")
    );
    assert_eq!(proxy.admin_get("/readyz").await.status, 200);

    let routes = proxy.admin_get("/routes").await;
    assert_eq!(routes.headers["content-type"], "application/json");
    let json: serde_json::Value = serde_json::from_str(&routes.body).unwrap();
    assert_eq!(json["generation"], 1);
    assert_eq!(json["default"], "legacy");
    assert_eq!(json["last_reload_error"], serde_json::Value::Null);
    assert_eq!(json["routes"][0]["name"], "users-read");
    assert_eq!(json["routes"][0]["match"], "path /api/users/{id}");
    assert_eq!(json["routes"][0]["methods"][0], "GET");
    assert_eq!(json["routes"][0]["upstream"], "users");
    assert_eq!(json["upstreams"][1]["endpoints"][0], users.url());

    assert_eq!(proxy.admin_get("/nope").await.status, 404);
    let post = http::Request::post(proxy.admin_url("/routes"))
        .body(Default::default())
        .unwrap();
    assert_eq!(fetch(&proxy.client, post).await.status, 405);
}

#[tokio::test]
async fn admin_endpoints_are_not_served_on_the_proxy_port() {
    let (legacy, users) = (
        Backend::start("legacy").await,
        Backend::start("users").await,
    );
    let proxy = TestProxy::start(&two_routes(&legacy, &users)).await;
    let answer = proxy.send(Method::GET, "/metrics", &[], b"").await;
    assert_eq!(
        answer.upstream(),
        "legacy",
        "the proxy port forwards /metrics like any path"
    );
    assert!(!answer.body.contains("ficus_requests_total"));
    assert_eq!(legacy.requests()[0].target, "/metrics");
}

#[tokio::test]
async fn series_of_removed_routes_are_dropped_on_reload() {
    let legacy = Backend::start("legacy").await;
    let base = table(&[("legacy", &legacy)], "");
    let with_route = |name: &str| {
        format!("{base}[[routes]]\nname = \"{name}\"\nprefix = \"/a\"\nupstream = \"legacy\"\n")
    };
    let proxy = TestProxy::start(&with_route("r0")).await;
    for i in 1..=5u64 {
        assert_eq!(proxy.get("/a").await.status, 200);
        assert_eq!(proxy.get("/a/%zz").await.status, 400);
        proxy.rewrite(&with_route(&format!("r{i}"))).await;
        proxy.wait_for_generation(i + 1).await;
    }
    assert_eq!(proxy.get("/a").await.status, 200);
    let text = proxy.admin_get("/metrics").await.body;
    let routes: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("ficus_request"))
        .filter_map(|l| l.split("route=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(
        routes.into_iter().collect::<Vec<_>>(),
        ["default", "r5"],
        "only live routes keep series"
    );
    assert_eq!(
        proxy
            .metric(r#"ficus_requests_total{code="200",route="r5",upstream="legacy"}"#)
            .await,
        1.0
    );
    assert_eq!(
        proxy
            .metric(r#"ficus_requests_total{code="400",route="default",upstream="none"}"#)
            .await,
        5.0
    );
}
