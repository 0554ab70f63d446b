mod support;
use support::*;

#[tokio::test]
async fn unmatched_request_goes_to_default_upstream() {
    let legacy = Backend::start("legacy").await;
    let proxy = TestProxy::start(&table(&[("legacy", &legacy)], "")).await;
    let answer = proxy.get("/anything").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, "legacy");
}
