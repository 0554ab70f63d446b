//! Shadow logs never carry secrets: run with a subscriber capturing everything ficus logs.
//! (Its own test binary: the subscriber is global.)

mod support;

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::{Method, StatusCode};

use support::{Backend, TestProxy, responder, table};

/// Collects everything written to it.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn shadow_logs_carry_no_header_values_or_bodies() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .init();

    // Every answer differs (a fresh token each time), so the legacy side's two answers
    // teach that the token and the cookie are noise, and the pair then matches.
    let answer = |secret: &'static str| {
        let count = Arc::new(AtomicUsize::new(0));
        responder(move |_| {
            let n = count.fetch_add(1, Ordering::SeqCst);
            (
                StatusCode::OK,
                vec![
                    ("set-cookie".into(), format!("s={secret}-{n}")),
                    ("content-type".into(), "application/json".into()),
                ],
                format!(r#"{{"token": "{secret}-{n}", "id": 7}}"#),
            )
        })
    };
    let legacy = Backend::with("legacy", answer("legacysecret")).await;
    let new = Backend::with("new", answer("newsecret")).await;
    let proxy = TestProxy::start(&table(
        &[("legacy", &legacy), ("new", &new)],
        "[[routes]]\nname = \"api\"\nprefix = \"/api\"\nupstream = \"legacy\"\n\
         shadow = { upstream = \"new\", sample = 1.0, compare = { headers = [\"*\"] }, noise = \"learn\", noise_sample = 1.0 }\n",
    ))
    .await;
    proxy
        .send(
            Method::GET,
            "/api/me?key=querysecret",
            &[
                ("authorization", "Bearer authsecret"),
                ("cookie", "c=cookiesecret"),
            ],
            b"",
        )
        .await;
    proxy
        .wait_for_metric(
            "ficus_shadow_requests_total{outcome=\"match\",route=\"api\",upstream=\"new\"}",
            1.0,
        )
        .await;

    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(logs.contains("shadow noise learned"), "{logs}");
    for secret in ["authsecret", "cookiesecret", "legacysecret", "newsecret"] {
        assert!(!logs.contains(secret), "{secret} in the logs:\n{logs}");
    }
}
