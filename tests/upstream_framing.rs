//! How ficus reads the HTTP/1 responses an upstream sends, and frames the requests it
//! sends: what a client of ficus sees (status, headers, body bytes, a connection cut
//! short) and what the upstream sees (how many connections it accepted, which bytes
//! arrived) when the upstream answers with every kind of framing, with interim
//! responses, with bodiless responses, and with broken or truncated answers.
//!
//! The upstreams here are raw TCP listeners that answer with scripted bytes, so the
//! tests pin the wire behaviour whatever HTTP/1 client ficus uses inside.
//!
//! An upstream closing a pooled keep-alive connection is covered in `tests/upstreams.rs`.

mod support;
use support::RawHead as Head;
use support::*;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

// ---------------------------------------------------------------------------------------
// The wire: a socket with a read buffer, every read bounded by EVENT_TIMEOUT.
// ---------------------------------------------------------------------------------------

/// Largest head the upstream accepts from ficus.
const MAX_REQUEST_HEAD: usize = 64 * 1024;
/// Largest head the client accepts from ficus.
const MAX_RESPONSE_HEAD: usize = 1024 * 1024;

/// Why a read ended before what it wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// The peer closed (EOF) or reset the connection.
    Closed,
    /// Nothing arrived within `EVENT_TIMEOUT`.
    Stalled,
}

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(usize),
    Chunked,
    UntilClose,
}

/// The framing of a response to `method` (RFC 9112 §6.3).
fn response_framing(head: &Head, method: &str) -> Framing {
    let status = head.status();
    if method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Empty
    } else if head.is_chunked() {
        Framing::Chunked
    } else if let Some(length) = head.content_length() {
        Framing::Length(length)
    } else {
        Framing::UntilClose
    }
}

/// The framing of a request: chunked, a length, or no body at all.
fn request_framing(head: &Head) -> Framing {
    if head.header("transfer-encoding").is_some() {
        assert!(head.is_chunked(), "request not chunked last: {head:?}");
        Framing::Chunked
    } else {
        match head.content_length() {
            Some(length) => Framing::Length(length),
            None => Framing::Empty,
        }
    }
}

/// A body as read off the wire, decoded from its framing.
#[derive(Debug)]
struct BodyRead {
    bytes: Vec<u8>,
    /// The trailer section of a chunked body (lines, without the final empty one).
    trailers: Vec<String>,
    /// `Ok` when the body ended as its framing says; else why it stopped short.
    end: Result<(), Cut>,
}

impl BodyRead {
    fn complete(&self) -> bool {
        self.end.is_ok()
    }
}

struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    async fn connect(addr: SocketAddr) -> Wire {
        let stream = tokio::time::timeout(EVENT_TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        Wire::new(stream)
    }

    fn new(stream: TcpStream) -> Wire {
        Wire {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes all of `bytes` (bounded by EVENT_TIMEOUT); false if the peer is gone.
    async fn send(&mut self, bytes: &[u8]) -> bool {
        matches!(
            tokio::time::timeout(EVENT_TIMEOUT, self.stream.write_all(bytes)).await,
            Ok(Ok(()))
        )
    }

    /// Reads whatever arrives next into the buffer.
    async fn fill(&mut self) -> Result<(), Cut> {
        let mut chunk = vec![0u8; 64 * 1024];
        match tokio::time::timeout(EVENT_TIMEOUT, self.stream.read(&mut chunk)).await {
            Err(_) => Err(Cut::Stalled),
            Ok(Ok(0)) | Ok(Err(_)) => Err(Cut::Closed),
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
        }
    }

    /// Reads up to and including the next `\r\n\r\n` (at most `limit` bytes).
    async fn raw_head(&mut self, limit: usize) -> Result<Vec<u8>, Cut> {
        loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok(self.buf.drain(..i + 4).collect());
            }
            assert!(
                self.buf.len() <= limit,
                "head longer than {limit} bytes: {:?}",
                String::from_utf8_lossy(&self.buf[..200])
            );
            self.fill().await?;
        }
    }

    /// Reads one line, without its `\r\n`.
    async fn line(&mut self) -> Result<Vec<u8>, Cut> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let mut line: Vec<u8> = self.buf.drain(..i + 2).collect();
                line.truncate(i);
                return Ok(line);
            }
            self.fill().await?;
        }
    }

    /// Moves `n` bytes into `out`, as many as arrive before a cut.
    async fn take(&mut self, mut n: usize, out: &mut Vec<u8>) -> Result<(), Cut> {
        loop {
            let here = n.min(self.buf.len());
            out.extend(self.buf.drain(..here));
            n -= here;
            if n == 0 {
                return Ok(());
            }
            self.fill().await?;
        }
    }

    /// Reads a body by its framing; a stall counts as incomplete.
    async fn body(&mut self, framing: Framing) -> BodyRead {
        let mut body = BodyRead {
            bytes: Vec::new(),
            trailers: Vec::new(),
            end: Ok(()),
        };
        body.end = match framing {
            Framing::Empty => Ok(()),
            Framing::Length(n) => self.take(n, &mut body.bytes).await,
            Framing::Chunked => self.chunked(&mut body).await,
            Framing::UntilClose => loop {
                body.bytes.append(&mut self.buf);
                match self.fill().await {
                    Ok(()) => continue,
                    Err(Cut::Closed) => break Ok(()),
                    Err(Cut::Stalled) => break Err(Cut::Stalled),
                }
            },
        };
        body
    }

    async fn chunked(&mut self, body: &mut BodyRead) -> Result<(), Cut> {
        loop {
            let line = self.line().await?;
            let line = String::from_utf8_lossy(&line).into_owned();
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16)
                .unwrap_or_else(|_| panic!("not a chunk size line: {line:?}"));
            if size == 0 {
                loop {
                    let trailer = self.line().await?;
                    if trailer.is_empty() {
                        return Ok(());
                    }
                    body.trailers
                        .push(String::from_utf8_lossy(&trailer).into_owned());
                }
            }
            self.take(size, &mut body.bytes).await?;
            let end = self.line().await?;
            assert!(end.is_empty(), "chunk data longer than its size");
        }
    }
}

// ---------------------------------------------------------------------------------------
// The client side: requests to ficus on one connection, responses read raw.
// ---------------------------------------------------------------------------------------

/// A response ficus sent, as its client read it.
#[derive(Debug)]
struct Reply {
    head: Head,
    body: BodyRead,
}

impl Reply {
    fn status(&self) -> u16 {
        self.head.status()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body.bytes).into_owned()
    }
}

/// A bodiless request head for ficus.
fn request(method: &str, path: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: shop.example.com\r\n\r\n").into_bytes()
}

/// A client connection to ficus.
struct Client {
    wire: Wire,
}

impl Client {
    async fn connect(proxy: &TestProxy) -> Client {
        Client {
            wire: Wire::connect(proxy.running.proxy_addr).await,
        }
    }

    /// Sends a bodiless request and reads the response: `None` when ficus closed the
    /// connection before a whole response head. Panics if ficus stalls.
    async fn try_call(&mut self, method: &str, path: &str) -> Option<Reply> {
        self.exchange(&request(method, path), method).await
    }

    /// Sends `bytes` (a whole request with this `method`) and reads the response, like
    /// `try_call`.
    async fn exchange(&mut self, bytes: &[u8], method: &str) -> Option<Reply> {
        assert!(
            self.wire.send(bytes).await,
            "ficus stopped reading the request"
        );
        self.response(method).await
    }

    /// Like `try_call`, but a response head must arrive.
    async fn call(&mut self, method: &str, path: &str) -> Reply {
        self.try_call(method, path)
            .await
            .unwrap_or_else(|| panic!("{method} {path}: closed without a response"))
    }

    /// Reads one response to a request with `method`.
    async fn response(&mut self, method: &str) -> Option<Reply> {
        let raw = match self.wire.raw_head(MAX_RESPONSE_HEAD).await {
            Ok(raw) => raw,
            Err(Cut::Closed) => return None,
            Err(Cut::Stalled) => panic!("no response head from ficus in time"),
        };
        let head = Head::parse(&raw);
        let body = self.wire.body(response_framing(&head, method)).await;
        Some(Reply { head, body })
    }
}

/// GETs `path` on a new connection and expects a whole response.
async fn get(proxy: &TestProxy, path: &str) -> Reply {
    Client::connect(proxy).await.call("GET", path).await
}

// ---------------------------------------------------------------------------------------
// The upstream side: a raw listener answering with scripted bytes.
// ---------------------------------------------------------------------------------------

/// One request as the raw upstream received it.
#[derive(Debug, Clone)]
struct Received {
    head: Head,
    body: Vec<u8>,
    /// Whether the body ended as its framing said.
    complete: bool,
    /// Which accepted connection it came on, counting from 1.
    connection: usize,
}

impl Received {
    fn path(&self) -> &str {
        self.head.line.split(' ').nth(1).unwrap_or_default()
    }
}

/// What the upstream does after writing an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// Waits for the next request on the connection.
    KeepOpen,
    /// Closes the connection.
    Close,
}

/// The upstream's answer to one request: bytes written in these pieces, in order.
struct Script {
    pieces: Vec<Vec<u8>>,
    then: Then,
}

impl Script {
    fn bytes(bytes: impl AsRef<[u8]>, then: Then) -> Script {
        Script {
            pieces: vec![bytes.as_ref().to_vec()],
            then,
        }
    }
}

type Scripter = Arc<dyn Fn(&Received) -> Script + Send + Sync>;

/// A raw HTTP/1 upstream on 127.0.0.1:0. For each connection it reads request heads
/// (and bodies, by their framing) and writes the scripted answer for each.
struct RawUpstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// Connections that have ended, whoever closed them.
    ended: watch::Receiver<usize>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl RawUpstream {
    /// Answers every request with the same bytes.
    async fn always(bytes: impl AsRef<[u8]>, then: Then) -> RawUpstream {
        let bytes = bytes.as_ref().to_vec();
        RawUpstream::with(move |_| Script::bytes(&bytes, then)).await
    }

    async fn with(script: impl Fn(&Received) -> Script + Send + Sync + 'static) -> RawUpstream {
        let script: Scripter = Arc::new(script);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let (ended_tx, ended) = watch::channel(0usize);
        let ended_tx = Arc::new(ended_tx);
        let received = Arc::new(Mutex::new(Vec::new()));
        let (count, log) = (accepted.clone(), received.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let connection = count.fetch_add(1, Ordering::SeqCst) + 1;
                let (script, log, ended_tx) = (script.clone(), log.clone(), ended_tx.clone());
                tokio::spawn(async move {
                    serve_raw(Wire::new(stream), connection, &*script, &log).await;
                    ended_tx.send_modify(|n| *n += 1);
                });
            }
        });
        RawUpstream {
            addr,
            accepted,
            ended,
            received,
        }
    }

    /// TCP connections accepted so far.
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Everything received so far.
    fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Each request's path and the connection (numbered from 1) it came on.
    fn paths(&self) -> Vec<(String, usize)> {
        let received = self.received.lock().unwrap();
        received
            .iter()
            .map(|r| (r.path().to_owned(), r.connection))
            .collect()
    }

    /// Waits until at least `n` connections have ended.
    async fn wait_for_ended(&self, n: usize) {
        let mut rx = self.ended.clone();
        tokio::time::timeout(EVENT_TIMEOUT, rx.wait_for(|&seen| seen >= n))
            .await
            .expect("upstream connections did not end in time")
            .expect("upstream gone");
    }

    /// A table sending everything to this upstream.
    fn table(&self) -> String {
        format!(
            "default = \"legacy\"\n[upstreams.legacy]\nendpoints = [\"http://{}\"]\n",
            self.addr
        )
    }
}

/// Serves one upstream connection until either side closes it.
async fn serve_raw(
    mut wire: Wire,
    connection: usize,
    script: &(dyn Fn(&Received) -> Script + Send + Sync),
    log: &Mutex<Vec<Received>>,
) {
    // A pooled connection may idle; one idle past EVENT_TIMEOUT just ends.
    while let Ok(raw) = wire.raw_head(MAX_REQUEST_HEAD).await {
        let head = Head::parse(&raw);
        let body = wire.body(request_framing(&head)).await;
        let received = Received {
            head,
            complete: body.complete(),
            body: body.bytes,
            connection,
        };
        log.lock().unwrap().push(received.clone());
        let Script { pieces, then } = script(&received);
        for piece in pieces {
            if !wire.send(&piece).await {
                return;
            }
        }
        if then == Then::Close {
            let _ = wire.stream.shutdown().await;
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Shared expectations.
// ---------------------------------------------------------------------------------------

const PROTOCOL_ERRORS: &str =
    r#"ficus_upstream_errors_total{kind="protocol",route="default",upstream="legacy"}"#;

/// Checks `reply` is ficus's own 502 with error `upstream_protocol`.
fn assert_upstream_protocol(reply: &Reply, case: &str) {
    assert_eq!(reply.status(), 502, "{case}: {reply:?}");
    assert!(reply.body.complete(), "{case}: {reply:?}");
    assert_eq!(
        reply.head.header("content-type"),
        Some("application/json"),
        "{case}"
    );
    let body: serde_json::Value = serde_json::from_slice(&reply.body.bytes)
        .unwrap_or_else(|e| panic!("{case}: error body is not JSON ({e}): {reply:?}"));
    assert_eq!(body["error"], "upstream_protocol", "{case}: {body}");
    assert_eq!(
        body["request_id"].as_str(),
        reply.head.header("x-request-id"),
        "{case}: {body}"
    );
}

/// For each scripted answer, on an upstream of its own that keeps the connection open:
/// the client gets 502 `upstream_protocol`, counted once as a protocol error; the request
/// is not retried, and ficus closes the upstream connection it can no longer trust.
async fn assert_each_is_a_protocol_error(cases: &[(&str, Vec<u8>)]) {
    for (case, answer) in cases {
        let upstream = RawUpstream::always(answer, Then::KeepOpen).await;
        let proxy = TestProxy::start(&upstream.table()).await;

        let reply = get(&proxy, "/broken").await;

        assert_upstream_protocol(&reply, case);
        assert_eq!(proxy.metric(PROTOCOL_ERRORS).await, 1.0, "{case}");
        assert_eq!(upstream.requests().len(), 1, "{case}: not retried");
        upstream.wait_for_ended(1).await;
        assert_eq!(upstream.accepted(), 1, "{case}");
    }
}

/// `len` bytes of a fixed pseudo-random pattern, so a byte moved, lost or doubled shows.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

/// `bytes` as a chunked body, in chunks of `size` bytes.
fn chunk(bytes: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in bytes.chunks(size) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

// ---------------------------------------------------------------------------------------
// Well-framed answers are relayed, and keep-alive is honoured.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn content_length_response_is_relayed_and_its_connection_reused() {
    let upstream = RawUpstream::always(
        "HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-Answer: yes\r\n\r\nhello world",
        Then::KeepOpen,
    )
    .await;
    let proxy = TestProxy::start(&upstream.table()).await;
    let mut client = Client::connect(&proxy).await;

    for path in ["/first", "/second"] {
        let reply = client.call("GET", path).await;
        assert_eq!(reply.status(), 200, "{path}");
        assert_eq!(reply.head.header("x-answer"), Some("yes"), "{path}");
        assert_eq!(reply.head.content_length(), Some(11), "{path}");
        assert!(reply.body.complete(), "{path}");
        assert_eq!(reply.text(), "hello world", "{path}");
    }

    assert_eq!(upstream.accepted(), 1, "one keep-alive upstream connection");
    let connections: Vec<usize> = upstream.requests().iter().map(|r| r.connection).collect();
    assert_eq!(connections, [1, 1]);
}

/// A chunked body with chunk extensions and a trailer section.
const CHUNKED_WITH_TRAILERS: &[u8] = b"HTTP/1.1 200 OK\r\n\
    Transfer-Encoding: chunked\r\n\
    Trailer: X-Checksum\r\n\
    \r\n\
    5;foo=bar\r\nhello\r\n\
    1;empty\r\n \r\n\
    C;a=1;b=\"quoted; value\"\r\nchunked worl\r\n\
    01\r\nd\r\n\
    0\r\n\
    X-Checksum: abc123\r\n\
    X-Other: 1\r\n\
    \r\n";

#[tokio::test]
async fn chunked_response_with_extensions_and_trailers_reaches_the_client_decoded() {
    let upstream = RawUpstream::always(CHUNKED_WITH_TRAILERS, Then::KeepOpen).await;
    let proxy = TestProxy::start(&upstream.table()).await;
    let mut client = Client::connect(&proxy).await;

    for path in ["/first", "/second"] {
        let reply = client.call("GET", path).await;
        assert_eq!(reply.status(), 200, "{path}");
        assert!(reply.body.complete(), "{path}: {reply:?}");
        assert_eq!(reply.text(), "hello chunked world", "{path}");
        // Trailer fields never turn into header fields.
        for name in ["x-checksum", "x-other", "trailer"] {
            assert_eq!(reply.head.header(name), None, "{path}: {name}");
        }
    }
    assert_eq!(upstream.requests().len(), 2);
}

#[tokio::test]
async fn chunked_response_returns_its_upstream_connection_to_the_pool() {
    let upstream = RawUpstream::always(CHUNKED_WITH_TRAILERS, Then::KeepOpen).await;
    let proxy = TestProxy::start(&upstream.table()).await;
    let mut client = Client::connect(&proxy).await;

    for path in ["/first", "/second", "/third"] {
        let reply = client.call("GET", path).await;
        assert_eq!(reply.text(), "hello chunked world", "{path}");
    }

    assert_eq!(upstream.accepted(), 1, "one keep-alive upstream connection");
}

#[tokio::test]
async fn close_delimited_response_is_relayed_whole_and_its_connection_not_reused() {
    let body = pattern(200 * 1024, 3);
    let answer = body.clone();
    let upstream = RawUpstream::with(move |_| Script {
        pieces: vec![
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nX-Answer: eof\r\n\r\n".to_vec(),
            answer[..70_000].to_vec(),
            answer[70_000..].to_vec(),
        ],
        then: Then::Close,
    })
    .await;
    let proxy = TestProxy::start(&upstream.table()).await;
    // One client connection: the upstream's `Connection: close` is not the client's.
    let mut client = Client::connect(&proxy).await;

    for path in ["/first", "/second"] {
        let reply = client.call("GET", path).await;
        assert_eq!(reply.status(), 200, "{path}");
        assert_eq!(reply.head.header("x-answer"), Some("eof"), "{path}");
        assert_eq!(reply.head.header("connection"), None, "{path}");
        assert!(reply.body.complete(), "{path}");
        assert!(reply.body.bytes == body, "{path}: body differs");
    }

    assert_eq!(
        upstream.accepted(),
        2,
        "a new upstream connection per answer"
    );
    let connections: Vec<usize> = upstream.requests().iter().map(|r| r.connection).collect();
    assert_eq!(connections, [1, 2]);
}

/// An HTTP/1.0 answer without keep-alive ends its upstream connection, but not the
/// client's: ficus answers in its own HTTP version (RFC 9110 §2.5).
#[tokio::test]
async fn http_1_0_response_without_keep_alive_is_relayed_and_its_connection_not_reused() {
    let upstream = RawUpstream::with(|request| match request.path() {
        // The upstream would go on serving: only the answer's version says not to.
        "/length" => Script::bytes(
            "HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\nhttp/1.0!",
            Then::KeepOpen,
        ),
        _ => Script::bytes("HTTP/1.0 200 OK\r\n\r\nuntil the end", Then::Close),
    })
    .await;
    let proxy = TestProxy::start(&upstream.table()).await;
    let mut client = Client::connect(&proxy).await;

    for (path, expected) in [
        ("/length", "http/1.0!"),
        ("/eof", "until the end"),
        ("/length", "http/1.0!"),
    ] {
        let reply = client.call("GET", path).await;
        assert!(
            reply.head.line.starts_with("HTTP/1.1 200"),
            "{path}: {reply:?}"
        );
        assert!(reply.body.complete(), "{path}: {reply:?}");
        assert_eq!(reply.text(), expected, "{path}");
    }

    assert_eq!(upstream.accepted(), 3, "no HTTP/1.0 connection reused");
    // ficus closed the two connections the upstream left open.
    upstream.wait_for_ended(3).await;
}

/// A chunked body that also declares a Content-Length much shorter than the body.
const CHUNKED_AND_LENGTH: &[u8] = b"HTTP/1.1 200 OK\r\n\
    Transfer-Encoding: chunked\r\n\
    Content-Length: 3\r\n\
    \r\n\
    5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";

/// RFC 9112 §6.3: chunked wins, an intermediary removes the Content-Length, and the
/// connection is closed after the exchange (the sender is confused, or smuggling).
#[tokio::test]
async fn response_with_chunked_and_content_length_reaches_the_client_whole() {
    let upstream = RawUpstream::always(CHUNKED_AND_LENGTH, Then::KeepOpen).await;
    let proxy = TestProxy::start(&upstream.table()).await;
    let mut client = Client::connect(&proxy).await;

    for path in ["/first", "/second"] {
        let reply = client.call("GET", path).await;
        assert_eq!(reply.status(), 200, "{path}");
        assert!(reply.body.complete(), "{path}: {reply:?}");
        assert_eq!(reply.text(), "hello world", "{path}");
        assert_eq!(reply.head.content_length(), None, "{path}");
    }
    assert_eq!(upstream.accepted(), 2, "never reused after such an answer");
}

#[tokio::test]
async fn interim_responses_are_not_relayed_and_the_final_one_is() {
    let upstream = RawUpstream::always(
        "HTTP/1.1 100 Continue\r\n\r\n\
         HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n\
         HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Final: yes\r\n\r\nfinal",
        Then::KeepOpen,
    )
    .await;
    let proxy = TestProxy::start(&upstream.table()).await;
    let mut client = Client::connect(&proxy).await;

    for path in ["/first", "/second"] {
        // The first head the client reads is the final one.
        let reply = client.call("GET", path).await;
        assert_eq!(reply.status(), 200, "{path}: {reply:?}");
        assert_eq!(reply.head.header("x-final"), Some("yes"), "{path}");
        assert_eq!(
            reply.head.header("link"),
            None,
            "{path}: 103's field leaked"
        );
        assert!(reply.body.complete(), "{path}");
        assert_eq!(reply.text(), "final", "{path}");
    }

    assert_eq!(upstream.accepted(), 1, "the connection is reused after 1xx");
}

#[tokio::test]
async fn bodiless_responses_are_relayed_and_keep_their_upstream_connection() {
    let upstream = RawUpstream::with(|request| {
        let answer: &[u8] = match request.path() {
            "/204" => b"HTTP/1.1 204 No Content\r\nX-Answer: 204\r\n\r\n",
            "/304" => b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n",
            // The length a GET would have; no body follows a HEAD's answer.
            "/head" => b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
            _ => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nafter",
        };
        Script::bytes(answer, Then::KeepOpen)
    })
    .await;
    let proxy = TestProxy::start(&upstream.table()).await;
    let mut client = Client::connect(&proxy).await;

    let reply = client.call("GET", "/204").await;
    assert_eq!(reply.status(), 204);
    assert_eq!(reply.head.header("x-answer"), Some("204"));
    let reply = client.call("GET", "/304").await;
    assert_eq!(reply.status(), 304);
    assert_eq!(reply.head.header("etag"), Some("\"v1\""));
    let reply = client.call("HEAD", "/head").await;
    assert_eq!(reply.status(), 200);
    assert_eq!(reply.head.content_length(), Some(10));
    // Each bodiless answer ended where its head did: the next answer is read in step.
    let reply = client.call("GET", "/after").await;
    assert_eq!((reply.status(), reply.text().as_str()), (200, "after"));

    assert_eq!(
        upstream.accepted(),
        1,
        "one upstream connection for all four"
    );
    let methods: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| r.head.line.clone())
        .collect();
    assert_eq!(
        methods,
        [
            "GET /204 HTTP/1.1",
            "GET /304 HTTP/1.1",
            "HEAD /head HTTP/1.1",
            "GET /after HTTP/1.1"
        ]
    );
}

// ---------------------------------------------------------------------------------------
// Broken, oversized and truncated answers.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_response_that_is_not_http_answers_502_upstream_protocol() {
    assert_each_is_a_protocol_error(&[
        ("wrong protocol name", b"HTTX/1.1 200 OK\r\n\r\n".to_vec()),
        (
            "no status code",
            b"HTTP/1.1 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        ),
        (
            "four-digit status",
            b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        ),
        (
            "two-digit status",
            b"HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        ),
        ("not even a status line", b"hello there\r\n\r\n".to_vec()),
        (
            "HTTP/1.0 with transfer-encoding",
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec(),
        ),
    ])
    .await;
}

#[tokio::test]
async fn conflicting_or_invalid_content_length_answers_502_upstream_protocol() {
    assert_each_is_a_protocol_error(&[
        (
            "two different lengths",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!".to_vec(),
        ),
        (
            "a list of different lengths",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok!".to_vec(),
        ),
        (
            "not a number",
            b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nok".to_vec(),
        ),
        (
            "negative",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nok".to_vec(),
        ),
    ])
    .await;
}

/// RFC 9110 §8.6 lets a recipient take repeated identical lengths as one.
#[tokio::test]
async fn repeated_identical_content_length_is_relayed() {
    let upstream = RawUpstream::with(|request| {
        let answer: &[u8] = match request.path() {
            "/repeated" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
            _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
        };
        Script::bytes(answer, Then::KeepOpen)
    })
    .await;
    let proxy = TestProxy::start(&upstream.table()).await;
    let mut client = Client::connect(&proxy).await;

    for path in ["/repeated", "/list"] {
        let reply = client.call("GET", path).await;
        assert_eq!(reply.status(), 200, "{path}");
        assert!(reply.body.complete(), "{path}");
        assert_eq!(reply.text(), "ok", "{path}");
    }
    assert_eq!(proxy.metric(PROTOCOL_ERRORS).await, 0.0);
}

/// A response head of `count` fields of `each` value bytes, and a 2-byte body.
fn head_with_fields(count: usize, each: usize) -> Vec<u8> {
    let mut answer = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..count {
        let value = char::from(b'a' + (i % 26) as u8).to_string().repeat(each);
        answer.extend_from_slice(format!("X-Big-{i}: {value}\r\n").as_bytes());
    }
    answer.extend_from_slice(b"Content-Length: 2\r\n\r\nok");
    answer
}

/// ficus takes response heads of up to 64 KiB (nginx's default is 4 or 8 KiB).
#[tokio::test]
async fn a_response_head_of_60_kib_is_relayed_whole() {
    let upstream = RawUpstream::always(head_with_fields(30, 2048), Then::KeepOpen).await;
    let proxy = TestProxy::start(&upstream.table()).await;

    let reply = get(&proxy, "/big-head").await;

    assert_eq!(reply.status(), 200);
    assert_eq!(reply.text(), "ok");
    for i in 0..30 {
        let value = char::from(b'a' + (i % 26) as u8).to_string().repeat(2048);
        assert_eq!(
            reply.head.header(&format!("x-big-{i}")),
            Some(value.as_str()),
            "x-big-{i}"
        );
    }
}

#[tokio::test]
async fn a_response_head_over_64_kib_or_100_fields_answers_502_upstream_protocol() {
    assert_each_is_a_protocol_error(&[
        ("65 KiB of fields", head_with_fields(33, 2048)),
        ("1 MiB of fields", head_with_fields(64, 16 * 1024)),
        ("101 fields", head_with_fields(101, 1)),
    ])
    .await;
}

#[tokio::test]
async fn obs_fold_in_a_response_header_answers_502_upstream_protocol() {
    assert_each_is_a_protocol_error(&[(
        "obs-fold",
        b"HTTP/1.1 200 OK\r\nX-A: b\r\n  c\r\nContent-Length: 2\r\n\r\nok".to_vec(),
    )])
    .await;
}

#[tokio::test]
async fn upstream_closing_before_any_byte_of_a_response_answers_502_upstream_protocol() {
    let upstream = RawUpstream::with(|_| Script {
        pieces: Vec::new(),
        then: Then::Close,
    })
    .await;
    let proxy = TestProxy::start(&upstream.table()).await;

    let reply = get(&proxy, "/silent").await;

    assert_upstream_protocol(&reply, "closed without answering");
    assert_eq!(proxy.metric(PROTOCOL_ERRORS).await, 1.0);
    assert_eq!(
        upstream.accepted(),
        1,
        "a request written on a fresh connection is not retried"
    );
}

/// Sends one GET to an upstream answering `answer`, whose body breaks off after `sent`.
/// The client sees the upstream's 200 cut after a prefix of `sent`, never a complete
/// answer; or, when the body broke before its first byte and nothing had gone out,
/// ficus's own complete 502. The broken body is counted as a protocol error (the
/// request itself was recorded under the upstream's 200).
async fn assert_broken_body_is_cut(
    answer: impl AsRef<[u8]>,
    then: Then,
    sent: &[u8],
) -> (RawUpstream, Option<Reply>) {
    let upstream = RawUpstream::always(answer, then).await;
    let proxy = TestProxy::start(&upstream.table()).await;
    let mut client = Client::connect(&proxy).await;

    let reply = client.try_call("GET", "/cut").await;

    if let Some(reply) = &reply
        && reply.status() == 502
    {
        assert!(
            sent.is_empty(),
            "a 502 after body bytes went out: {reply:?}"
        );
        assert!(
            reply.text().contains(r#""error":"upstream_protocol""#),
            "{reply:?}"
        );
        assert_eq!(reply.body.end, Ok(()), "{reply:?}");
    } else if let Some(reply) = &reply {
        assert_eq!(reply.status(), 200, "{reply:?}");
        assert_eq!(reply.body.end, Err(Cut::Closed), "{reply:?}");
        assert!(
            sent.starts_with(&reply.body.bytes),
            "not the upstream's bytes: {reply:?}"
        );
    }
    proxy.wait_for_metric(PROTOCOL_ERRORS, 1.0).await;
    (upstream, reply)
}

#[tokio::test]
async fn response_cut_short_of_its_content_length_is_cut_short_for_the_client() {
    let sent = pattern(1000, 7);
    let mut answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
    answer.extend_from_slice(&sent);

    let (_, reply) = assert_broken_body_is_cut(answer, Then::Close, &sent).await;

    if let Some(reply) = &reply {
        assert_eq!(reply.head.content_length(), Some(100_000));
    }
}

#[tokio::test]
async fn chunked_response_cut_mid_chunk_is_cut_short_for_the_client() {
    let answer = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n10\r\nabc";
    assert_broken_body_is_cut(answer, Then::Close, b"helloabc").await;
}

#[tokio::test]
async fn invalid_chunk_size_line_gives_the_client_no_complete_response() {
    let answer = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";
    // Not a byte of the body: the first chunk-size line is already broken, so the
    // client gets ficus's 502 instead of the upstream's head.
    let (upstream, reply) = assert_broken_body_is_cut(answer, Then::KeepOpen, b"").await;
    assert_eq!(reply.map(|r| r.status()), Some(502));
    // ficus does not go on using the upstream connection it could not read.
    upstream.wait_for_ended(1).await;
}

#[tokio::test]
async fn five_mib_responses_written_in_pieces_are_relayed_byte_exact() {
    const SIZE: usize = 5 * 1024 * 1024;
    let body = Arc::new(pattern(SIZE, 11));
    let answer = body.clone();
    let upstream = RawUpstream::with(move |request| {
        let mut pieces = Vec::new();
        if request.path() == "/length" {
            // The head itself arrives in two pieces.
            pieces.push(b"HTTP/1.1 200 OK\r\nContent-Le".to_vec());
            pieces.push(format!("ngth: {SIZE}\r\n\r\n").into_bytes());
            pieces.extend(answer.chunks(100_003).map(<[u8]>::to_vec));
        } else {
            pieces.push(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec());
            pieces.extend(chunk(&answer, 8191).chunks(65_537).map(<[u8]>::to_vec));
        }
        Script {
            pieces,
            then: Then::KeepOpen,
        }
    })
    .await;
    let proxy = TestProxy::start(&upstream.table()).await;
    let mut client = Client::connect(&proxy).await;

    for path in ["/length", "/chunked"] {
        let reply = client.call("GET", path).await;
        assert_eq!(reply.status(), 200, "{path}");
        assert!(reply.body.complete(), "{path}: {:?}", reply.body.end);
        assert_eq!(reply.body.bytes.len(), SIZE, "{path}");
        assert!(reply.body.bytes == *body, "{path}: body differs");
    }
}

// ---------------------------------------------------------------------------------------
// The request side: what the upstream receives.
// ---------------------------------------------------------------------------------------

const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

#[tokio::test]
async fn post_with_a_1_mib_content_length_body_reaches_the_upstream_byte_exact() {
    let upstream = RawUpstream::always(OK, Then::KeepOpen).await;
    let proxy = TestProxy::start(&upstream.table()).await;
    let body = pattern(1024 * 1024, 5);
    let mut request = format!(
        "POST /upload HTTP/1.1\r\nHost: shop.example.com\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let mut client = Client::connect(&proxy).await;

    let reply = client.exchange(&request, "POST").await.expect("a response");

    assert_eq!((reply.status(), reply.text().as_str()), (200, "ok"));
    let received = &upstream.requests()[0];
    assert_eq!(received.head.line, "POST /upload HTTP/1.1");
    assert_eq!(received.head.values("content-length"), ["1048576"]);
    assert_eq!(received.head.header("transfer-encoding"), None);
    assert!(received.complete);
    assert!(received.body == body, "body differs");
}

#[tokio::test]
async fn post_with_a_chunked_body_reaches_the_upstream_chunked_and_byte_exact() {
    let upstream = RawUpstream::always(OK, Then::KeepOpen).await;
    let proxy = TestProxy::start(&upstream.table()).await;
    let body = pattern(300 * 1024 + 17, 9);
    let mut request =
        b"POST /upload HTTP/1.1\r\nHost: shop.example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    // Uneven chunks, one with an extension.
    request.extend_from_slice(b"3;ext=1\r\n");
    request.extend_from_slice(&body[..3]);
    request.extend_from_slice(b"\r\n");
    let rest = chunk(&body[3..], 10_000);
    request.extend_from_slice(&rest);
    let mut client = Client::connect(&proxy).await;

    let reply = client.exchange(&request, "POST").await.expect("a response");

    assert_eq!((reply.status(), reply.text().as_str()), (200, "ok"));
    let received = &upstream.requests()[0];
    assert_eq!(received.head.values("transfer-encoding"), ["chunked"]);
    assert_eq!(received.head.header("content-length"), None);
    assert!(
        received.complete,
        "the chunked body ended with its last chunk"
    );
    assert!(received.body == body, "body differs");
}

#[tokio::test]
async fn get_without_a_body_reaches_the_upstream_without_framing_headers() {
    let upstream = RawUpstream::always(OK, Then::KeepOpen).await;
    let proxy = TestProxy::start(&upstream.table()).await;
    let mut client = Client::connect(&proxy).await;

    for path in ["/first", "/second"] {
        let reply = client.call("GET", path).await;
        assert_eq!((reply.status(), reply.text().as_str()), (200, "ok"));
    }

    for received in upstream.requests() {
        assert_eq!(received.head.header("content-length"), None, "{received:?}");
        assert_eq!(
            received.head.header("transfer-encoding"),
            None,
            "{received:?}"
        );
        assert!(received.body.is_empty());
    }
    let targets: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| r.head.line.clone())
        .collect();
    assert_eq!(targets, ["GET /first HTTP/1.1", "GET /second HTTP/1.1"]);
    assert_eq!(upstream.accepted(), 1);
}

/// A keep-alive answer, then the upstream closes: the race behind Node's 5 s keep-alive,
/// on every request. ficus sees the close before reusing the connection, or retries the
/// GET on a fresh one; the client never sees it.
#[tokio::test]
async fn upstream_closing_each_connection_right_after_answering_never_fails_a_get() {
    let upstream = RawUpstream::always(OK, Then::Close).await;
    let proxy = TestProxy::start(&upstream.table()).await;
    let mut client = Client::connect(&proxy).await;

    for i in 0..50 {
        let reply = client.call("GET", &format!("/{i}")).await;
        assert_eq!(reply.status(), 200, "request {i}: {reply:?}");
        assert!(reply.body.complete(), "request {i}: {reply:?}");
    }
    assert_eq!(proxy.metric(PROTOCOL_ERRORS).await, 0.0);
}

/// An upstream that closes a reused connection on the request it just read: a GET is
/// sent again on a fresh connection, a POST is not (it may have been acted on).
#[tokio::test]
async fn only_idempotent_requests_are_retried_after_a_reused_connection_closes() {
    let seen = Mutex::new(std::collections::HashMap::<usize, usize>::new());
    let upstream = RawUpstream::with(move |request| {
        let mut seen = seen.lock().unwrap();
        let nth = seen.entry(request.connection).or_default();
        *nth += 1;
        match *nth {
            // The second request on each connection is read, then dropped unanswered.
            2 => Script {
                pieces: Vec::new(),
                then: Then::Close,
            },
            _ => Script::bytes(OK, Then::KeepOpen),
        }
    })
    .await;
    let proxy = TestProxy::start(&upstream.table()).await;
    let mut client = Client::connect(&proxy).await;

    assert_eq!(client.call("GET", "/warm-1").await.status(), 200);
    let post = b"POST /post HTTP/1.1\r\nHost: ficus.test\r\nContent-Length: 1\r\n\r\nx";
    let reply = client.exchange(post, "POST").await.expect("an answer");
    assert_upstream_protocol(&reply, "POST on a connection closed under it");
    let mut client = Client::connect(&proxy).await;
    assert_eq!(client.call("GET", "/warm-2").await.status(), 200);
    let reply = client.call("GET", "/get").await;
    assert_eq!(reply.status(), 200, "{reply:?}");

    assert_eq!(
        upstream.paths(),
        [
            ("/warm-1".to_owned(), 1),
            ("/post".to_owned(), 1),
            ("/warm-2".to_owned(), 2),
            ("/get".to_owned(), 2),
            ("/get".to_owned(), 3),
        ]
    );
}

/// An idle pooled connection the upstream has closed is not used again: even a POST,
/// which ficus must not send twice, goes on a fresh connection and gets its answer.
#[tokio::test]
async fn a_pooled_connection_the_upstream_has_closed_is_not_reused() {
    let upstream = RawUpstream::always(OK, Then::Close).await;
    let proxy = TestProxy::start(&upstream.table()).await;
    let mut client = Client::connect(&proxy).await;

    assert_eq!(client.call("GET", "/first").await.status(), 200);
    // The upstream has closed the connection ficus pooled after the first answer.
    upstream.wait_for_ended(1).await;
    let post = b"POST /post HTTP/1.1\r\nHost: ficus.test\r\nContent-Length: 1\r\n\r\nx";
    let reply = client.exchange(post, "POST").await.expect("an answer");
    assert_eq!(reply.status(), 200, "{reply:?}");

    assert_eq!(
        upstream.paths(),
        [("/first".to_owned(), 1), ("/post".to_owned(), 2)]
    );
}

/// Once any byte of an answer has arrived (part of a head, or a whole interim 1xx), the
/// upstream has seen the request: a close then is a 502, never a second attempt.
#[tokio::test]
async fn a_request_the_upstream_began_to_answer_is_never_sent_again() {
    for (case, answer) in [
        ("half a head", &b"HTTP/1.1 200 OK\r\nContent-Le"[..]),
        ("an interim answer", b"HTTP/1.1 102 Processing\r\n\r\n"),
    ] {
        let seen = Mutex::new(std::collections::HashMap::<usize, usize>::new());
        let upstream = RawUpstream::with(move |request| {
            let mut seen = seen.lock().unwrap();
            let nth = seen.entry(request.connection).or_default();
            *nth += 1;
            match *nth {
                2 => Script::bytes(answer, Then::Close),
                _ => Script::bytes(OK, Then::KeepOpen),
            }
        })
        .await;
        let proxy = TestProxy::start(&upstream.table()).await;
        let mut client = Client::connect(&proxy).await;

        assert_eq!(client.call("GET", "/warm").await.status(), 200, "{case}");
        let reply = client.try_call("GET", "/get").await;
        let mut client = Client::connect(&proxy).await;
        let reply = match reply {
            Some(reply) => reply,
            // ficus may close the client's connection after a 502; ask again to be sure
            // nothing else happened.
            None => client.call("GET", "/probe").await,
        };
        assert_upstream_protocol(&reply, case);
        let gets = upstream
            .requests()
            .iter()
            .filter(|r| r.path() == "/get")
            .count();
        assert_eq!(gets, 1, "{case}: the upstream saw the request once");
    }
}

/// An upstream may answer an upload before reading it (a 401, a 413) and then read it
/// anyway. The client, still sending, must be able to finish and read the answer.
#[tokio::test]
async fn an_upload_answered_early_still_reaches_the_upstream_whole() {
    const SIZE: usize = 4 * 1024 * 1024;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (drained_tx, drained) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut wire = Wire::new(stream);
        let head = Head::parse(&wire.raw_head(MAX_REQUEST_HEAD).await.expect("head"));
        assert!(
            wire.send(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 4\r\n\r\nnope")
                .await
        );
        let body = wire.body(request_framing(&head)).await;
        let _ = drained_tx.send((body.bytes.len(), body.complete()));
    });
    let table =
        format!("default = \"legacy\"\n[upstreams.legacy]\nendpoints = [\"http://{addr}\"]\n");
    let proxy = TestProxy::start(&table).await;

    let mut request = format!(
        "POST /upload HTTP/1.1\r\nHost: shop.example.com\r\nContent-Length: {SIZE}\r\n\r\n"
    )
    .into_bytes();
    request.extend_from_slice(&pattern(SIZE, 9));
    let mut client = Client::connect(&proxy).await;
    let reply = client.exchange(&request, "POST").await.expect("an answer");

    assert_eq!(reply.status(), 401, "{reply:?}");
    assert_eq!(reply.text(), "nope");
    let (received, complete) = tokio::time::timeout(EVENT_TIMEOUT, drained)
        .await
        .expect("upload drained in time")
        .expect("upstream task");
    assert_eq!((received, complete), (SIZE, true));
}

#[tokio::test]
async fn an_unusual_reason_phrase_reaches_the_client() {
    let upstream = RawUpstream::always(
        "HTTP/1.1 403 Token Expired\r\nContent-Length: 2\r\n\r\nno",
        Then::KeepOpen,
    )
    .await;
    let proxy = TestProxy::start(&upstream.table()).await;

    let reply = get(&proxy, "/reason").await;

    assert_eq!(reply.head.line, "HTTP/1.1 403 Token Expired");
}

/// Nobody reads an idle pooled connection: without traffic, ficus must still close
/// the ones past `pool_idle_timeout`, or they pile up on both sides.
#[tokio::test]
async fn idle_pooled_connections_are_closed_after_pool_idle_timeout_without_traffic() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (closed_tx, closed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut wire = Wire::new(stream);
        wire.raw_head(MAX_REQUEST_HEAD).await.expect("head");
        assert!(wire.send(OK.as_bytes()).await);
        // Waits for ficus to close its end; the test's own bound decides how long.
        let mut rest = [0u8; 64];
        let ended = matches!(wire.stream.read(&mut rest).await, Ok(0) | Err(_));
        let _ = closed_tx.send(ended);
    });
    let table = format!(
        "default = \"legacy\"\n[upstreams.legacy]\nendpoints = [\"http://{addr}\"]\npool_idle_timeout = \"200ms\"\n"
    );
    let proxy = TestProxy::start(&table).await;

    assert_eq!(get(&proxy, "/once").await.status(), 200);

    // Two idle timeouts and a margin: the sweep runs every pool_idle_timeout.
    let ended = tokio::time::timeout(Duration::from_secs(3), closed)
        .await
        .expect("ficus closed the idle connection in time")
        .expect("upstream task");
    assert!(ended);
}
