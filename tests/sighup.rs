//! SIGHUP reloads the table even when no file event can be seen.
//!
//! Alone in its own test binary: the signal goes to the whole process.

mod support;
use support::*;

#[tokio::test]
async fn sighup_reloads_a_table_whose_change_raised_no_file_event() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let upstreams = [("legacy", &a), ("new", &b)];
    let route =
        |to: &str| format!("[[routes]]\nname = \"api\"\nprefix = \"/api\"\nupstream = \"{to}\"\n");

    // The table is a hard link into another directory. Writing the file in place
    // through that other name raises inotify events there, not where ficus watches
    // (a symlink would not do: the watcher follows it).
    let elsewhere = tempfile::tempdir().unwrap();
    let real = elsewhere.path().join("real.toml");
    std::fs::write(&real, table(&upstreams, &route("legacy"))).unwrap();
    let watched = tempfile::tempdir().unwrap();
    let link = watched.path().join("routes.toml");
    std::fs::hard_link(&real, &link).unwrap();
    let proxy = TestProxy::start_at(watched, link).await;
    assert_eq!(proxy.get("/api/x").await.body, "a");

    std::fs::write(&real, table(&upstreams, &route("new"))).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    // The periodic re-read is 30 s away and longer than this wait: only SIGHUP can do it.
    proxy.wait_for_generation(2).await;
    assert_eq!(proxy.get("/api/x").await.body, "b");
}
