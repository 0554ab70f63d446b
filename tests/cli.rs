//! The `ficus` binary as an operator uses it: check, explain, serve + SIGTERM.

use std::io::{BufRead, BufReader, Lines, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::Duration;

const FICUS: &str = env!("CARGO_BIN_EXE_ficus");

fn manifest(file: &str) -> String {
    format!("{}/{file}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn check_accepts_the_example_tables() {
    for file in ["routes.toml", "examples/demo/routes.toml"] {
        let out = Command::new(FICUS)
            .args(["check", &manifest(file)])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(": ok ("));
    }
}

#[test]
fn check_rejects_a_broken_table_naming_file_line_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    std::fs::write(
        &path,
        "default = \"legacy\"\n[upstreams.legacy]\nendpoints = [\"http://127.0.0.1:3000\"]\n\n[[routes]]\nname = \"r\"\nprefix = \"/a\"\nupstream = \"nope\"\n",
    )
    .unwrap();
    let out = Command::new(FICUS)
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:5: route \"r\"", path.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains("add [upstreams.nope] or use one of: legacy"),
        "{stderr}"
    );
}

#[test]
fn explain_names_route_reason_and_sticky_side() {
    let out = Command::new(FICUS)
        .args([
            "explain",
            "--config",
            &manifest("routes.toml"),
            "GET",
            "/api/users/7",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        stdout.contains("route:     users-read (line 39, path /api/users/{id}, methods GET)"),
        "{stdout}"
    );
    assert!(stdout.contains("target:    upstream \"users\""), "{stdout}");
    assert!(
        stdout.contains("shadow:    none: the route is not shadowed"),
        "{stdout}"
    );

    let out = Command::new(FICUS)
        .args([
            "explain",
            "-c",
            &manifest("routes.toml"),
            "GET",
            "/api/messages/x",
            "-H",
            "x-user-id: alice",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("route:     messages"), "{stdout}");
    assert!(
        stdout.contains(
            "sticky:    header:x-user-id = \"alice\" -> bucket 8080 of 10000 -> side legacy"
        ),
        "{stdout}"
    );

    let out = Command::new(FICUS)
        .args([
            "explain",
            "-c",
            &manifest("routes.toml"),
            "GET",
            "/api/users/%2fadmin",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("rejected:  400 Bad Request"));
}

#[test]
fn explain_says_whether_and_where_a_request_is_shadowed() {
    let explain = |method: &str| {
        let out = Command::new(FICUS)
            .args([
                "explain",
                "-c",
                &manifest("routes.toml"),
                method,
                "/api/search?q=x",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let get = explain("GET");
    assert!(get.contains("route:     search"), "{get}");
    assert!(
        get.contains("shadow:    25% of these requests are mirrored to upstream \"search\""),
        "{get}"
    );
    let post = explain("POST");
    assert!(
        post.contains("shadow:    not mirrored: POST is not in shadow.methods (GET, HEAD)"),
        "{post}"
    );
}

#[test]
fn explain_says_why_the_winner_beat_other_matches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    std::fs::write(
        &path,
        "default = \"legacy\"\n[upstreams.legacy]\nendpoints = [\"http://127.0.0.1:3000\"]\n\
         [[routes]]\nname = \"api\"\nprefix = \"/api\"\nupstream = \"legacy\"\n\
         [[routes]]\nname = \"me\"\npath = \"/api/users/me\"\nmethods = [\"POST\"]\nupstream = \"legacy\"\n\
         [[routes]]\nname = \"user\"\npath = \"/api/users/{id}\"\nupstream = \"legacy\"\n",
    )
    .unwrap();
    let out = Command::new(FICUS)
        .args(["explain", "-c"])
        .arg(&path)
        .args(["GET", "/api/users/me"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("route:     user "), "{stdout}");
    assert!(
        stdout.contains("over:    api (line 4, prefix /api): an exact path beats a prefix"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "over:    me (line 8, path /api/users/me, methods POST): does not accept GET"
        ),
        "{stdout}"
    );
}

/// A `ficus serve` on a one-upstream table, with `global` options before `serve`.
struct Serving {
    /// Taken by `terminate`; killed when dropped otherwise (a failed test leaves no
    /// ficus running).
    child: Option<Child>,
    /// The log line saying the listeners are up.
    line: String,
    /// The rest of its log, kept open while it runs.
    log: Option<Lines<BufReader<ChildStderr>>>,
    _dir: tempfile::TempDir,
}

/// Starts ficus with `upstream` as its one endpoint, and waits for its "serving" log
/// line: the event that says the listeners are up.
fn serve(global: &[&str], upstream: SocketAddr) -> Serving {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    std::fs::write(
        &path,
        format!(
            "default = \"legacy\"\n[listen]\nproxy = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[upstreams.legacy]\nendpoints = [\"http://{upstream}\"]\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(FICUS)
        .args(global)
        .args(["serve", "--config"])
        .arg(&path)
        // The tests read info events (the serving line, the access log) whatever the
        // environment asks for.
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap()).lines();
    let line = log
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("ficus serving"))
        .expect("ficus logs that it is serving");
    Serving {
        child: Some(child),
        line,
        log: Some(log),
        _dir: dir,
    }
}

impl Serving {
    /// Where the proxy listens, from the JSON "serving" line.
    fn proxy_address(&self) -> String {
        self.line
            .split("\"proxy\":\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("the proxy's address in the log")
            .to_owned()
    }

    /// The first log line after those read so far that satisfies `wanted`, waiting 10 s
    /// at most. The log goes to a reader thread, which ends when ficus does.
    fn wait_for_log(&mut self, wanted: impl Fn(&str) -> bool + Send + 'static) -> Option<String> {
        let log = self.log.take().expect("the log is still open");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let found = log.map_while(Result::ok).find(|line| wanted(line));
            let _ = tx.send(found);
        });
        rx.recv_timeout(Duration::from_secs(10)).ok().flatten()
    }

    /// The running process.
    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("ficus was not terminated yet")
    }

    /// Sends SIGTERM and waits (10 s at most) for the exit code.
    fn terminate(mut self) -> Option<i32> {
        let mut child = self.child.take().expect("ficus was not terminated yet");
        let killed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(child.wait()));
        let status = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("ficus exits after SIGTERM")
            .unwrap();
        status.code()
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An address nothing listens on.
fn refused() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

#[test]
fn serve_exits_zero_on_sigterm() {
    let serving = serve(&["--log-format", "json"], refused());
    assert!(
        serving.line.contains("\"proxy\":\"127.0.0.1:"),
        "json log with the bound address"
    );
    assert_eq!(serving.terminate(), Some(0), "graceful shutdown exits 0");
}

/// A closed stderr (the log collector gone) loses log lines, and nothing else: ficus
/// answers, logs the failure into the closed pipe, and still exits cleanly.
#[test]
fn serve_keeps_serving_when_its_log_is_closed() {
    let mut serving = serve(&["--log-format", "json"], refused());
    let at = serving.proxy_address();
    drop(serving.log.take());
    // Its upstream refuses: ficus answers 502 and logs a warning.
    let mut stream = std::net::TcpStream::connect(&at).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /x HTTP/1.1\r\nHost: ficus.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer:?}");
    assert_eq!(serving.terminate(), Some(0), "graceful shutdown exits 0");
}

/// With `--threads 1`, ficus runs on one thread once started: the table's directory is
/// watched from the runtime itself, and the thread that read the table is gone soon.
#[cfg(target_os = "linux")]
#[test]
fn serve_with_one_thread_runs_on_one_thread() {
    let mut serving = serve(&["--threads", "1"], refused());
    let tasks = format!("/proc/{}/task", serving.child().id());
    let threads = || std::fs::read_dir(&tasks).map_or(0, Iterator::count);
    // The start-up read's blocking thread may come and lingers a second after its work;
    // nothing else may stay. So: one thread, and still one 1.5 s on (there is no event
    // for a thread's end, so this samples).
    let start = std::time::Instant::now();
    let mut alone_since = None;
    let mut seen = threads();
    while start.elapsed() < Duration::from_secs(10) {
        seen = threads();
        match (seen, alone_since) {
            (1, None) => alone_since = Some(std::time::Instant::now()),
            (1, Some(since)) if since.elapsed() > Duration::from_millis(1500) => break,
            (1, Some(_)) => {}
            _ => alone_since = None,
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(serving);
    assert_eq!(seen, 1, "threads of a `--threads 1` ficus");
    assert!(
        alone_since.is_some_and(|since| since.elapsed() > Duration::from_millis(1500)),
        "a `--threads 1` ficus kept more than one thread"
    );
}

/// A request whose client leaves before the answer is logged as nginx logs it, with
/// status 499 and the time it waited, and its upstream request is dropped.
#[test]
fn a_request_whose_client_left_is_logged_with_499() {
    // An upstream that takes requests and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut serving = serve(&["--log-format", "json"], silent.local_addr().unwrap());
    let mut client = std::net::TcpStream::connect(serving.proxy_address()).unwrap();
    client
        .write_all(b"GET /gone?x=1 HTTP/1.1\r\nHost: ficus.test\r\n\r\n")
        .unwrap();
    let (mut upstream, _) = silent.accept().unwrap();
    upstream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head = [0u8; 1024];
    assert!(
        upstream.read(&mut head).unwrap() > 0,
        "the request reached the upstream"
    );

    drop(client);
    // ficus drops the upstream request with its client: the upstream reads its end.
    let mut rest = Vec::new();
    upstream
        .read_to_end(&mut rest)
        .expect("the upstream connection ends, not times out");
    let line = serving
        .wait_for_log(|line| line.contains("\"status\":499"))
        .expect("an access log line with status 499");
    for field in [
        "\"route\":\"default\"",
        "\"upstream\":\"legacy\"",
        "\"method\":\"GET\"",
        "\"path\":\"/gone?x=1\"",
        "\"duration_ms\":",
        "\"request_id\":",
    ] {
        assert!(line.contains(field), "{field} in {line}");
    }
}
