//! ficus's own HTTP/1.1 server, driven over raw TCP as a client would: `100 Continue`,
//! pipelining, the request-smuggling guards, refused heads in the metrics, HTTP/1.0
//! clients, `Connection: close`, HEAD, the `Date` header, closing without resetting an
//! answer the client has yet to read, and requests cancelled by a client that leaves.

mod support;
use support::*;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

// ---------------------------------------------------------------------------------------
// The client side: raw requests, responses read by their framing.
// ---------------------------------------------------------------------------------------

/// A client connection to ficus.
struct Client {
    write: OwnedWriteHalf,
    responses: Responses,
}

/// The read side of a [`Client`]. Bytes read past one response are kept for the next,
/// so pipelined responses are read one at a time and a stray byte shows.
struct Responses {
    read: OwnedReadHalf,
    buf: Vec<u8>,
}

/// What one read brought.
enum Read {
    Bytes,
    Closed,
    Reset(std::io::Error),
    /// Nothing within `EVENT_TIMEOUT`.
    Stalled,
}

/// A response as read off the wire: its head (status line and fields, through
/// `Deref`) and its body.
struct Reply {
    head: RawHead,
    /// Field names as they came, in their case.
    names: Vec<String>,
    body: Vec<u8>,
}

impl std::ops::Deref for Reply {
    type Target = RawHead;

    fn deref(&self) -> &RawHead {
        &self.head
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("line", &self.line)
            .field("headers", &self.headers)
            .field("body", &lossy(&self.body))
            .finish()
    }
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Client {
    async fn connect(proxy: &TestProxy) -> Client {
        let stream = TcpStream::connect(proxy.running.proxy_addr)
            .await
            .expect("connect");
        let (read, write) = stream.into_split();
        Client {
            write,
            responses: Responses {
                read,
                buf: Vec::new(),
            },
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        tokio::time::timeout(EVENT_TIMEOUT, self.write.write_all(bytes))
            .await
            .expect("ficus stopped reading")
            .expect("write");
    }

    /// Reads the response to a request with `method`.
    async fn response(&mut self, method: &str) -> Reply {
        self.responses.response(method).await
    }
}

impl Responses {
    async fn fill(&mut self) -> Read {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(EVENT_TIMEOUT, self.read.read(&mut chunk)).await {
            Err(_) => Read::Stalled,
            Ok(Ok(0)) => Read::Closed,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Read::Bytes
            }
            Ok(Err(e)) => Read::Reset(e),
        }
    }

    /// Reads more, failing the test if the connection ends or stalls during `what`.
    async fn more(&mut self, what: &str) {
        let why = match self.fill().await {
            Read::Bytes => return,
            Read::Closed => "closed".to_owned(),
            Read::Reset(e) => e.to_string(),
            Read::Stalled => "nothing more in time".to_owned(),
        };
        panic!("{why} during {what}, after {:?}", lossy(&self.buf));
    }

    /// The next `n` bytes.
    async fn exactly(&mut self, n: usize, what: &str) -> Vec<u8> {
        while self.buf.len() < n {
            self.more(what).await;
        }
        self.buf.drain(..n).collect()
    }

    /// The next line, without its CRLF.
    async fn line(&mut self, what: &str) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).collect();
                return lossy(&line[..i]);
            }
            self.more(what).await;
        }
    }

    /// Reads one response to a request with `method`, its body by its framing
    /// (RFC 9112 §6.3); a body without length or chunking runs to the connection's end.
    async fn response(&mut self, method: &str) -> Reply {
        let line = self.line("a status line").await;
        // ficus answers HTTP/1.1 whatever the client spoke; anything else here is a
        // stray byte of an earlier answer.
        assert!(line.starts_with("HTTP/1.1 "), "not a status line: {line:?}");
        let (mut headers, mut names) = (Vec::new(), Vec::new());
        loop {
            let field = self.line("a response head").await;
            if field.is_empty() {
                break;
            }
            let (name, value) = field
                .split_once(':')
                .unwrap_or_else(|| panic!("not a header line: {field:?} after {line:?}"));
            names.push(name.to_owned());
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
        let mut reply = Reply {
            head: RawHead { line, headers },
            names,
            body: Vec::new(),
        };
        let status = reply.status();
        if method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304 {
            return reply;
        }
        if let Some(coding) = reply.header("transfer-encoding") {
            assert_eq!(coding, "chunked", "{reply:?}");
            reply.body = self.chunked().await;
        } else if let Some(length) = reply.header("content-length") {
            let length = length.parse().expect("content-length");
            reply.body = self.exactly(length, "a response body").await;
        } else {
            loop {
                match self.fill().await {
                    Read::Bytes => continue,
                    Read::Closed => break,
                    Read::Reset(e) => panic!("{e} during a close-delimited body: {reply:?}"),
                    Read::Stalled => panic!("a close-delimited body never ended: {reply:?}"),
                }
            }
            reply.body = std::mem::take(&mut self.buf);
        }
        reply
    }

    async fn chunked(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line = self.line("a chunk-size line").await;
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or_else(|_| panic!("not a chunk-size line: {line:?}"));
            if size == 0 {
                while !self.line("the trailers").await.is_empty() {}
                return body;
            }
            body.extend(self.exactly(size, "a chunk").await);
            assert_eq!(
                self.line("a chunk's end").await,
                "",
                "chunk longer than its size"
            );
        }
    }

    /// Checks the server ends the connection cleanly (EOF, not a reset) with no
    /// further byte.
    async fn assert_closed(&mut self, case: &str) {
        match self.fill().await {
            Read::Closed => {}
            Read::Bytes => panic!("{case}: stray bytes {:?}", lossy(&self.buf)),
            Read::Reset(e) => panic!("{case}: {e} instead of a clean close"),
            Read::Stalled => panic!("{case}: ficus left the connection open"),
        }
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A GET of `path` over HTTP/1.1.
fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: shop.example.com\r\n\r\n").into_bytes()
}

// ---------------------------------------------------------------------------------------
// The upstream side, and tables.
// ---------------------------------------------------------------------------------------

/// A raw upstream on 127.0.0.1:0. It reads request heads (the requests sent to it have
/// no body) and answers each with fixed bytes, or never. It never closes a connection
/// itself, so every connection it sees end was closed by ficus.
struct RawUpstream {
    addr: SocketAddr,
    /// Request heads received so far.
    arrivals: watch::Receiver<usize>,
    /// Their bytes, as they came.
    heads: Arc<Mutex<Vec<String>>>,
    /// Connections ended so far.
    ended: watch::Receiver<usize>,
}

impl RawUpstream {
    async fn start(answer: Option<&'static [u8]>) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let (arrivals_tx, arrivals) = watch::channel(0usize);
        let (ended_tx, ended) = watch::channel(0usize);
        let heads = Arc::new(Mutex::new(Vec::new()));
        let recorded = heads.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (arrivals_tx, ended_tx) = (arrivals_tx.clone(), ended_tx.clone());
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while let Ok(n @ 1..) = stream.read(&mut chunk).await {
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head: Vec<u8> = buf.drain(..i + 4).collect();
                            recorded.lock().unwrap().push(lossy(&head));
                            arrivals_tx.send_modify(|n| *n += 1);
                            if let Some(answer) = answer {
                                let _ = stream.write_all(answer).await;
                            }
                        }
                    }
                    ended_tx.send_modify(|n| *n += 1);
                });
            }
        });
        RawUpstream {
            addr,
            arrivals,
            heads,
            ended,
        }
    }

    async fn wait_for_arrivals(&self, n: usize) {
        let mut rx = self.arrivals.clone();
        tokio::time::timeout(EVENT_TIMEOUT, rx.wait_for(|&seen| seen >= n))
            .await
            .expect("the upstream did not receive the request in time")
            .expect("upstream gone");
    }

    /// Whether `n` connections end within `limit`.
    async fn ended_within(&self, n: usize, limit: Duration) -> bool {
        let mut rx = self.ended.clone();
        tokio::time::timeout(limit, rx.wait_for(|&seen| seen >= n))
            .await
            .is_ok()
    }
}

/// ficus with one upstream, `legacy`, the default: `raw`; `server` is table text to put
/// before it (a `[server]` section).
async fn proxy_to_raw(raw: &RawUpstream, server: &str) -> TestProxy {
    let table = format!(
        "default = \"legacy\"\n{server}{}",
        upstream("legacy", raw.addr)
    );
    TestProxy::start(&table).await
}

/// `[upstreams.NAME]` at `addr`.
fn upstream(name: &str, addr: SocketAddr) -> String {
    format!("[upstreams.{name}]\nendpoints = [\"http://{addr}\"]\n")
}

/// A route of `prefix` to the upstream of the same name.
fn route(name: &str, prefix: &str) -> String {
    format!("[[routes]]\nname = \"{name}\"\nprefix = \"{prefix}\"\nupstream = \"{name}\"\n")
}

/// A loopback address nothing listens on: a port bound, then released.
async fn refused_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}

fn targets(backend: &Backend) -> Vec<String> {
    backend.requests().into_iter().map(|r| r.target).collect()
}

/// A backend answering with the path and query it received.
async fn echo() -> Backend {
    Backend::with(
        "legacy",
        responder(|r| (http::StatusCode::OK, vec![], r.target.clone())),
    )
    .await
}

// ---------------------------------------------------------------------------------------
// Request bodies and pipelining.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_and_not_forwarded() {
    let legacy = Backend::start("legacy").await;
    let proxy = TestProxy::start(&table(&[("legacy", &legacy)], "")).await;
    let mut client = Client::connect(&proxy).await;

    // The head alone: a client waiting for `100 Continue` sends nothing more.
    client
        .send(b"POST /upload HTTP/1.1\r\nHost: shop.example.com\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await;
    let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
    let got = client
        .responses
        .exactly(interim.len(), "the 100 Continue")
        .await;
    assert_eq!(lossy(&got), lossy(interim));
    client.send(b"hello").await;
    let reply = client.response("POST").await;

    assert_eq!(reply.status(), 200);
    assert_eq!(reply.text(), "legacy");
    let received = legacy.requests();
    assert_eq!(received[0].body_len, 5);
    assert_eq!(received[0].headers.get("expect"), None);
    // The connection goes on at the right place.
    client.send(&get("/after")).await;
    assert_eq!(client.response("GET").await.status(), 200);
    assert_eq!(targets(&legacy), ["/upload", "/after"]);
}

#[tokio::test]
async fn expect_100_continue_without_a_body_gets_no_interim_and_is_not_forwarded() {
    let legacy = Backend::start("legacy").await;
    let proxy = TestProxy::start(&table(&[("legacy", &legacy)], "")).await;
    let mut client = Client::connect(&proxy).await;

    client
        .send(b"GET /nothing HTTP/1.1\r\nHost: shop.example.com\r\nExpect: 100-continue\r\n\r\n")
        .await;
    let reply = client.response("GET").await;

    // The first bytes are the final answer's status line, not an interim one.
    assert_eq!(reply.status(), 200);
    assert_eq!(legacy.requests()[0].headers.get("expect"), None);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let legacy = echo().await;
    let proxy = TestProxy::start(&table(&[("legacy", &legacy)], "")).await;
    let mut client = Client::connect(&proxy).await;

    client.send(&[get("/one"), get("/two")].concat()).await;
    let first = client.response("GET").await;
    let second = client.response("GET").await;
    client.send(&get("/three")).await;
    let third = client.response("GET").await;

    let bodies = [first.text(), second.text(), third.text()];
    assert_eq!(bodies, ["/one", "/two", "/three"]);
    assert!([&first, &second, &third].iter().all(|r| r.status() == 200));
    assert_eq!(targets(&legacy), ["/one", "/two", "/three"]);
}

#[tokio::test]
async fn ambiguous_request_framing_is_refused_and_reaches_no_upstream() {
    let legacy = Backend::start("legacy").await;
    let proxy = TestProxy::start(&table(&[("legacy", &legacy)], "")).await;
    let cases: [(&str, &[u8], u16); 7] = [
        (
            "content-length and chunked",
            b"POST /cl-te HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nhello",
            400,
        ),
        // Codings ficus does not decode are 501 (RFC 9112 §6.1), even with chunked
        // last: the upstream would get gzip bytes labelled as nothing.
        (
            "transfer coding other than chunked",
            b"POST /gzip HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            501,
        ),
        (
            "chunked not last",
            b"POST /chunked-gzip HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            501,
        ),
        (
            "another coding before chunked",
            b"POST /gzip-chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            501,
        ),
        (
            "transfer-encoding on HTTP/1.0",
            b"POST /old HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            400,
        ),
        (
            "conflicting lengths in a list",
            b"POST /five-six HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\nhello!",
            400,
        ),
        (
            "length not a number",
            b"POST /abc HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\nhello",
            400,
        ),
    ];

    for (case, request, status) in cases {
        let mut client = Client::connect(&proxy).await;
        client.send(request).await;
        let reply = client.response("POST").await;
        assert_eq!(reply.status(), status, "{case}");
        assert_eq!(reply.header("connection"), Some("close"), "{case}");
        client.responses.assert_closed(case).await;
    }

    let answer = proxy.get("/after").await;
    assert_eq!(answer.status, http::StatusCode::OK);
    assert_eq!(
        targets(&legacy),
        ["/after"],
        "no refused request got through"
    );
}

/// `Content-Length: 5, 5` is a list of one length (RFC 9110 §8.6): the server reads a
/// body of 5, and the upstream gets that one length, not the list many servers refuse.
/// Fails on 39656a4: the server accepts the list but forwards it as is, and the upstream
/// client cannot parse it (502 `upstream_protocol`, counted against the upstream).
#[tokio::test]
async fn content_length_list_of_one_value_is_that_length() {
    let legacy = Backend::start("legacy").await;
    let proxy = TestProxy::start(&table(&[("legacy", &legacy)], "")).await;
    let mut client = Client::connect(&proxy).await;

    // The next request follows at once: read as 10 or 0, the body would swallow or
    // become part of it.
    let mut bytes = b"POST /five HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello".to_vec();
    bytes.extend(get("/next"));
    client.send(&bytes).await;
    let first = client.response("POST").await;
    assert_eq!(first.status(), 200, "{first:?}");
    let second = client.response("GET").await;
    assert_eq!(second.status(), 200, "{second:?}");

    let seen: Vec<(String, usize)> = legacy
        .requests()
        .into_iter()
        .map(|r| (r.target, r.body_len))
        .collect();
    assert_eq!(seen, [("/five".to_owned(), 5), ("/next".to_owned(), 0)]);
    let lengths: Vec<_> = legacy.requests()[0]
        .headers
        .get_all("content-length")
        .iter()
        .cloned()
        .collect();
    assert_eq!(lengths, ["5"]);
}

#[tokio::test]
async fn refused_heads_are_counted_under_route_default_upstream_none() {
    let legacy = Backend::start("legacy").await;
    let proxy = TestProxy::start(&table(&[("legacy", &legacy)], "")).await;
    let oversized = format!(
        "GET /big HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40 * 1024)
    );

    for (request, status) in [
        (&b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n"[..], 400),
        (oversized.as_bytes(), 431),
    ] {
        let mut client = Client::connect(&proxy).await;
        client.send(request).await;
        assert_eq!(client.response("GET").await.status(), status);
    }

    // Counted before the answer is written: no wait needed.
    for code in ["400", "431"] {
        let series =
            format!(r#"ficus_requests_total{{code="{code}",route="default",upstream="none"}}"#);
        assert_eq!(proxy.metric(&series).await, 1.0, "{series}");
    }
    assert!(legacy.requests().is_empty());
}

// ---------------------------------------------------------------------------------------
// Connection management and response framing.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn http_1_0_response_of_unknown_length_is_delimited_by_close() {
    let chunked = RawUpstream::start(Some(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    ))
    .await;
    let proxy = proxy_to_raw(&chunked, "").await;

    // Asking for keep-alive changes nothing: without a length the close ends the body.
    for (case, request) in [
        ("plain", &b"GET /old HTTP/1.0\r\nHost: x\r\n\r\n"[..]),
        (
            "keep-alive",
            b"GET /old HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
        ),
    ] {
        let mut client = Client::connect(&proxy).await;
        client.send(request).await;
        // Read to the connection's end: the test fails if ficus does not close.
        let reply = client.response("GET").await;

        assert!(reply.line.starts_with("HTTP/1.1 200 "), "{case}: {reply:?}");
        assert_eq!(reply.header("transfer-encoding"), None, "{case}");
        assert_eq!(reply.header("content-length"), None, "{case}");
        assert_eq!(reply.header("connection"), None, "{case}");
        assert_eq!(reply.text(), "hello world", "{case}");
    }
}

#[tokio::test]
async fn http_1_0_keep_alive_client_keeps_its_connection() {
    let legacy = Backend::start("legacy").await;
    let proxy = TestProxy::start(&table(&[("legacy", &legacy)], "")).await;
    let mut client = Client::connect(&proxy).await;
    let request =
        |path: &str| format!("GET {path} HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n");

    for path in ["/first", "/second"] {
        client.send(request(path).as_bytes()).await;
        let reply = client.response("GET").await;
        assert!(reply.line.starts_with("HTTP/1.1 200 "), "{path}: {reply:?}");
        assert_eq!(reply.header("connection"), Some("keep-alive"), "{path}");
        assert_eq!(reply.header("content-length"), Some("6"), "{path}");
        assert_eq!(reply.text(), "legacy", "{path}");
    }
    assert_eq!(targets(&legacy), ["/first", "/second"]);
}

#[tokio::test]
async fn connection_close_is_answered_with_close_and_the_connection_ends() {
    let legacy = Backend::start("legacy").await;
    let proxy = TestProxy::start(&table(&[("legacy", &legacy)], "")).await;
    let mut client = Client::connect(&proxy).await;

    client
        .send(b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let reply = client.response("GET").await;

    assert_eq!(reply.status(), 200);
    assert_eq!(reply.header("connection"), Some("close"));
    assert_eq!(reply.text(), "legacy");
    client.responses.assert_closed("Connection: close").await;
}

#[tokio::test]
async fn head_responses_have_no_body_and_the_connection_goes_on() {
    const LENGTH: usize = 1234;
    let legacy = Backend::with(
        "legacy",
        responder(|_| (http::StatusCode::OK, vec![], "x".repeat(LENGTH))),
    )
    .await;
    let dead = refused_addr().await;
    let rest = format!("{}{}", upstream("dead", dead), route("dead", "/dead"));
    let proxy = TestProxy::start(&table(&[("legacy", &legacy)], &rest)).await;
    let mut client = Client::connect(&proxy).await;

    client.send(b"HEAD /page HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let relayed = client.response("HEAD").await;
    // ficus's own answer to a HEAD, whose body (a JSON error) must not go out either.
    client.send(b"HEAD /dead HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let own = client.response("HEAD").await;
    // A body byte sent after either head would be read as the start of this answer.
    client.send(&get("/page")).await;
    let full = client.response("GET").await;

    assert_eq!(relayed.status(), 200);
    assert_eq!(relayed.header("content-length"), Some("1234"));
    assert_eq!(relayed.header("transfer-encoding"), None);
    assert_eq!(own.status(), 502);
    assert_eq!(full.status(), 200, "{full:?}");
    assert_eq!(full.body.len(), LENGTH);
    assert_eq!(targets(&legacy), ["/page", "/page"]);
}

#[tokio::test]
async fn every_response_has_one_date_and_an_upstreams_own_is_kept() {
    const UPSTREAM_DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
    let dated = Backend::with(
        "dated",
        Behaviour::Custom(http::StatusCode::OK, vec![("date", UPSTREAM_DATE)]),
    )
    .await;
    let undated =
        RawUpstream::start(Some(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nraw")).await;
    let dead = refused_addr().await;
    let toml = format!(
        "default = \"dated\"\n{}{}{}{}{}",
        upstream("dated", dated.addr),
        upstream("undated", undated.addr),
        upstream("dead", dead),
        route("undated", "/undated"),
        route("dead", "/dead"),
    );
    let proxy = TestProxy::start(&toml).await;

    let cases: [(&str, &[u8], u16); 3] = [
        ("ficus's 502", b"GET /dead HTTP/1.1\r\nHost: x\r\n\r\n", 502),
        (
            "a refused head",
            b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
            400,
        ),
        (
            "relayed without a date",
            b"GET /undated HTTP/1.1\r\nHost: x\r\n\r\n",
            200,
        ),
    ];
    for (case, request, status) in cases {
        let mut client = Client::connect(&proxy).await;
        client.send(request).await;
        let reply = client.response("GET").await;
        assert_eq!(reply.status(), status, "{case}");
        let dates = reply.values("date");
        assert_eq!(dates.len(), 1, "{case}: {reply:?}");
        let date = httpdate::parse_http_date(dates[0])
            .unwrap_or_else(|e| panic!("{case}: {:?} is not an HTTP date: {e}", dates[0]));
        let skew = SystemTime::now()
            .duration_since(date)
            .unwrap_or_else(|e| e.duration());
        assert!(skew < Duration::from_secs(5), "{case}: {:?}", dates[0]);
    }

    let mut client = Client::connect(&proxy).await;
    client.send(&get("/dated")).await;
    let reply = client.response("GET").await;
    assert_eq!(reply.values("date"), [UPSTREAM_DATE]);
}

// ---------------------------------------------------------------------------------------
// Clients that keep sending, and clients that leave.
// ---------------------------------------------------------------------------------------

/// ficus answers at once an upload it will not read (its upstream refuses), says `close`,
/// and ends the connection cleanly while the client is still sending. That the lingering
/// read before the close is what saves the answer cannot be shown here: on Linux loopback
/// the answer and the FIN are already queued at the client when a reset comes, and Linux
/// still lets them be read.
#[tokio::test]
async fn client_still_uploading_reads_the_whole_early_answer() {
    const UPLOAD: usize = 8 << 20;
    let dead = refused_addr().await;
    let proxy = TestProxy::start(&format!(
        "default = \"legacy\"\n{}",
        upstream("legacy", dead)
    ))
    .await;
    let Client {
        mut write,
        mut responses,
    } = Client::connect(&proxy).await;

    // Write errors are expected once ficus stops listening: only the answer matters.
    let upload = tokio::spawn(async move {
        let head = format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {UPLOAD}\r\n\r\n");
        write.write_all(head.as_bytes()).await?;
        let piece = vec![b'x'; 64 * 1024];
        for _ in 0..UPLOAD / piece.len() {
            write.write_all(&piece).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let reply = responses.response("POST").await;

    assert_eq!(reply.status(), 502, "{reply:?}");
    assert_eq!(reply.header("connection"), Some("close"));
    let body: serde_json::Value = serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {reply:?}"));
    assert_eq!(
        body,
        serde_json::json!({
            "error": "upstream_connect",
            "request_id": reply.header("x-request-id").expect("x-request-id"),
        })
    );
    responses.assert_closed("after the early answer").await;
    // Whether all of it went out depends on socket buffers; that it ends does not.
    let _ = tokio::time::timeout(EVENT_TIMEOUT, upload)
        .await
        .expect("the upload never ended");
}

#[tokio::test]
async fn client_leaving_before_its_answer_cancels_the_upstream_request() {
    let legacy = Backend::start("legacy").await;
    let slow = RawUpstream::start(None).await;
    // A route timeout far beyond the wait below: only the cancellation can end the
    // upstream's connection in time.
    let rest = format!(
        "{}{}timeout = \"60s\"\n",
        upstream("slow", slow.addr),
        route("slow", "/slow")
    );
    let proxy = TestProxy::start(&table(&[("legacy", &legacy)], &rest)).await;
    let mut client = Client::connect(&proxy).await;

    client.send(&get("/slow")).await;
    slow.wait_for_arrivals(1).await;
    drop(client);

    assert!(
        slow.ended_within(1, Duration::from_secs(5)).await,
        "the upstream request outlived its client"
    );
    // Counted as nginx counts it, with the time it waited: a dashboard of the route's
    // latency keeps the requests clients gave up on.
    let cancelled = r#"ficus_requests_total{code="499",route="slow",upstream="slow"}"#;
    assert_eq!(proxy.wait_for_metric(cancelled, 1.0).await, 1.0);
    let waited = r#"ficus_request_duration_seconds_count{route="slow",upstream="slow"}"#;
    assert_eq!(proxy.metric(waited).await, 1.0);
    let answer = proxy.get("/after").await;
    assert_eq!(answer.status, http::StatusCode::OK);
    assert_eq!(targets(&legacy), ["/after"]);
    // An answered request is not counted as cancelled when its handler ends.
    assert_eq!(
        proxy
            .metric(r#"ficus_requests_total{code="499",route="default",upstream="legacy"}"#)
            .await,
        0.0
    );
    assert_eq!(proxy.metric(cancelled).await, 1.0);
}

#[tokio::test]
async fn expect_100_continue_is_not_answered_for_a_request_that_never_reads_its_body() {
    let legacy = Backend::start("legacy").await;
    let dead = refused_addr().await;
    let rest = format!("{}{}", upstream("dead", dead), route("dead", "/dead"));
    let proxy = TestProxy::start(&table(&[("legacy", &legacy)], &rest)).await;
    let cases: [(&str, &[u8], u16); 2] = [
        (
            "refused: two Host fields",
            b"POST /x HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
            400,
        ),
        (
            "upstream down",
            b"POST /dead HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
            502,
        ),
    ];
    for (case, head, status) in cases {
        let mut client = Client::connect(&proxy).await;
        // The head alone: the client waits for `100 Continue` before its body.
        client.send(head).await;
        // The first line is the final answer: no invitation to send a body nobody reads.
        let reply = client.response("POST").await;
        assert_eq!(reply.status(), status, "{case}: {reply:?}");
        assert_eq!(reply.header("connection"), Some("close"), "{case}");
    }
    assert!(targets(&legacy).is_empty());
}

#[tokio::test]
async fn a_broken_answer_to_an_http_1_0_client_ends_in_a_reset_not_a_clean_close() {
    // Close-delimited for HTTP/1.0: a clean close would make the cut answer look whole.
    let upstream_addr = RawUpstream::start(Some(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\n",
    ))
    .await;
    let proxy = proxy_to_raw(&upstream_addr, "").await;
    let mut client = Client::connect(&proxy).await;

    client.send(b"GET /x HTTP/1.0\r\nHost: x\r\n\r\n").await;

    let end = loop {
        match client.responses.fill().await {
            Read::Bytes => continue,
            other => break other,
        }
    };
    match end {
        Read::Reset(_) => {}
        Read::Closed => panic!("a clean close after {:?}", lossy(&client.responses.buf)),
        Read::Stalled => panic!("left open after {:?}", lossy(&client.responses.buf)),
        Read::Bytes => unreachable!("the loop reads on"),
    }
    let got = lossy(&client.responses.buf);
    assert!(
        !got.contains("ZZ"),
        "the broken chunk line was relayed: {got:?}"
    );
}

#[tokio::test]
async fn http_1_0_client_sees_the_early_answers_end_at_once_while_its_upload_goes_on() {
    let early = RawUpstream::start(Some(
        b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nnope!\r\n0\r\n\r\n",
    ))
    .await;
    // Were the end to wait for the upload, it would come at the idle timeout.
    let proxy = proxy_to_raw(&early, "[server]\nidle_timeout = \"30s\"\n").await;
    let mut client = Client::connect(&proxy).await;

    client
        .send(b"POST /x HTTP/1.0\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        .await;

    // The close-delimited body ends within EVENT_TIMEOUT, far below the idle timeout.
    let reply = client.response("POST").await;
    assert_eq!(reply.status(), 401);
    assert_eq!(reply.text(), "nope!");
}

#[tokio::test]
async fn empty_lines_do_not_keep_an_idle_connection_open() {
    let legacy = Backend::start("legacy").await;
    let proxy = TestProxy::start(&table(
        &[("legacy", &legacy)],
        "[server]\nheader_read_timeout = \"300ms\"\nidle_timeout = \"1s\"\n",
    ))
    .await;
    let mut client = Client::connect(&proxy).await;
    let start = tokio::time::Instant::now();

    // A client trickling empty lines, twice per idle timeout: the pacing is what is
    // tested, not a stand-in for synchronisation.
    let closed = loop {
        if client.write.write_all(b"\r\n").await.is_err() {
            break true;
        }
        match tokio::time::timeout(
            Duration::from_millis(400),
            client.responses.read.read(&mut [0u8; 64]),
        )
        .await
        {
            Ok(Ok(0) | Err(_)) => break true,
            Ok(Ok(n)) => panic!("{n} bytes answered to empty lines"),
            Err(_) if start.elapsed() > Duration::from_secs(4) => break false,
            Err(_) => {}
        }
    };

    assert!(closed, "still open after {:?}", start.elapsed());
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "closed early"
    );
}

#[tokio::test]
async fn an_upstreams_repeated_length_is_relayed_once_and_a_204_has_none() {
    let cases: [(&'static [u8], &str, Option<&str>); 3] = [
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
            "a list of one length",
            Some("5"),
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            "two fields of one length",
            Some("5"),
        ),
        (
            b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n",
            "a 204 with a length",
            None,
        ),
    ];
    for (answer, case, length) in cases {
        let raw = RawUpstream::start(Some(answer)).await;
        let proxy = proxy_to_raw(&raw, "").await;
        let mut client = Client::connect(&proxy).await;
        client.send(&get("/x")).await;
        let reply = client.response("GET").await;
        let lengths = reply.values("content-length");
        assert_eq!(lengths, length.into_iter().collect::<Vec<_>>(), "{case}");
        // The connection goes on at the right place.
        client.send(&get("/y")).await;
        assert_eq!(client.response("GET").await.line, reply.line, "{case}");
    }
}

#[tokio::test]
async fn an_upstreams_fields_reach_the_client_in_order_and_case_without_hop_by_hop_ones() {
    let answer = b"HTTP/1.1 200 OK\r\nServer: legacy\r\nConnection: keep-alive, X-Hop\r\n\
        X-Hop: secret\r\nX-Mixed-Case: A\r\nX-Request-Id: theirs\r\nSet-Cookie: a=1\r\n\
        Keep-Alive: timeout=5\r\n\
        set-cookie: b=2\r\nContent-Length: 2\r\n\r\nhi";
    let raw = RawUpstream::start(Some(answer)).await;
    let proxy = proxy_to_raw(&raw, "").await;
    let mut client = Client::connect(&proxy).await;
    client.send(&get("/x")).await;
    let reply = client.response("GET").await;
    assert_eq!(reply.text(), "hi");
    // The upstream's own, as it wrote them, but its request id; then ficus's request id
    // (the one it logged) and the date.
    assert_eq!(
        reply.names,
        [
            "Server",
            "X-Mixed-Case",
            "Set-Cookie",
            "set-cookie",
            "Content-Length",
            "x-request-id",
            "date"
        ],
        "{reply:?}"
    );
    assert_eq!(reply.values("set-cookie"), ["a=1", "b=2"]);
    assert_eq!(reply.header("x-request-id").map(str::len), Some(32));
}

#[tokio::test]
async fn a_clients_fields_reach_the_upstream_as_sent_with_ficus_own_framing_and_cookies() {
    let raw = RawUpstream::start(Some(b"HTTP/1.1 204 No Content\r\n\r\n")).await;
    let proxy = proxy_to_raw(&raw, "").await;
    let mut client = Client::connect(&proxy).await;
    client
        .send(
            b"POST /x HTTP/1.1\r\nHost: shop\r\nCONTENT-LENGTH:\t005\r\nCookie: a=1\r\n\
              X-Ficus-Shadow: 1\r\nX-Keep:  Mixed Case\r\ncookie: b=2\r\nExpect: 100-continue\r\n\r\nhello",
        )
        .await;
    // The interim answer, then the upstream's.
    assert_eq!(client.response("POST").await.status(), 100);
    assert_eq!(client.response("POST").await.status(), 204);
    raw.wait_for_arrivals(1).await;
    let head = raw.heads.lock().unwrap()[0].clone();
    let lines: Vec<&str> = head.split("\r\n").filter(|l| !l.is_empty()).collect();
    // The client's own lines as it wrote them, then ficus's: its length line, the
    // cookies joined, the forwarding fields. No shadow mark, no Expect.
    assert_eq!(
        lines[..3],
        ["POST /x HTTP/1.1", "Host: shop", "X-Keep:  Mixed Case"],
        "{head:?}"
    );
    assert_eq!(
        lines[3..5],
        ["content-length: 5", "cookie: a=1; b=2"],
        "{head:?}"
    );
    let names: Vec<String> = lines[5..]
        .iter()
        .map(|l| l.split(':').next().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        names,
        [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-request-id",
            "x-forwarded-host"
        ],
        "{head:?}"
    );
}

#[tokio::test]
async fn a_502_for_a_body_broken_at_once_carries_the_clients_odd_request_id_as_json() {
    let broken = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nnot a chunk size\r\n";
    let raw = RawUpstream::start(Some(broken)).await;
    let proxy = proxy_to_raw(&raw, "").await;
    let mut client = Client::connect(&proxy).await;
    client
        .send(b"GET /x HTTP/1.1\r\nHost: a\r\nX-Request-Id: a\"b\\c\r\n\r\n")
        .await;
    let reply = client.response("GET").await;
    assert_eq!(reply.status(), 502, "{reply:?}");
    let body: serde_json::Value = serde_json::from_slice(&reply.body).expect("a JSON body");
    assert_eq!(body["error"], "upstream_protocol");
    assert_eq!(body["request_id"], "a\"b\\c");
}

#[tokio::test]
async fn an_answer_that_stops_moving_is_cut_at_stream_idle_timeout() {
    // 3 bytes of 100, then nothing: the upstream keeps its connection open.
    let stalled =
        RawUpstream::start(Some(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")).await;
    let proxy = proxy_to_raw(&stalled, "[server]\nstream_idle_timeout = \"1s\"\n").await;
    let mut client = Client::connect(&proxy).await;
    let start = tokio::time::Instant::now();

    client.send(&get("/x")).await;

    // Read the head and the 3 bytes, then wait for the end (within EVENT_TIMEOUT).
    let end = loop {
        match client.responses.fill().await {
            Read::Bytes => continue,
            other => break other,
        }
    };
    let got = lossy(&client.responses.buf);
    assert!(got.ends_with("\r\n\r\nabc"), "{got:?}");
    match end {
        // Cut, never a clean end that could pass for a whole answer.
        Read::Reset(_) => {}
        Read::Closed => panic!("a clean close after {got:?}"),
        Read::Stalled => panic!("still open after {:?}", start.elapsed()),
        Read::Bytes => unreachable!("the loop reads on"),
    }
    assert!(start.elapsed() >= Duration::from_millis(900), "cut early");
    // The upstream connection is given up too.
    assert!(stalled.ended_within(1, EVENT_TIMEOUT).await);
}
