//! Shared test harness: real backends on 127.0.0.1:0 and ficus in-process.
//!
//! A [`Backend`] answers every request with its own name (body and `x-upstream`
//! header) and records what it received. [`TestProxy`] writes a table into a
//! temporary directory and starts ficus on ephemeral ports, watching that file.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};

/// Longest any test waits for an event before failing.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a backend received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    /// Path and query exactly as received.
    pub target: String,
    pub headers: HeaderMap,
    pub body_len: usize,
}

/// How a backend answers.
#[derive(Clone)]
pub enum Behaviour {
    /// 200 with its name as the body.
    Name,
    /// Waits for the gate to open (one permit per request), then answers like `Name`.
    Gated(Arc<Semaphore>),
    /// Waits this long, then answers like `Name`.
    Delay(Duration),
    /// Answers with this status and extra headers, body = name.
    Custom(StatusCode, Vec<(&'static str, &'static str)>),
    /// Streams a body of this many bytes (in 64 KiB chunks).
    Download(u64),
    /// Answers with whatever the function makes of the request: status, headers, body.
    Respond(Responder),
}

/// Builds a backend's answer from what it received.
pub type Responder =
    Arc<dyn Fn(&Recorded) -> (StatusCode, Vec<(String, String)>, String) + Send + Sync>;

/// A [`Responder`] from a closure.
pub fn responder(
    f: impl Fn(&Recorded) -> (StatusCode, Vec<(String, String)>, String) + Send + Sync + 'static,
) -> Behaviour {
    Behaviour::Respond(Arc::new(f))
}

/// A real hyper server on 127.0.0.1:0.
pub struct Backend {
    pub name: &'static str,
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Recorded>>>,
    /// Requests received so far (incremented when the head arrives, before answering).
    arrivals: watch::Receiver<usize>,
    /// TCP connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    stop: Arc<Notify>,
}

impl Backend {
    /// A backend that answers with its name.
    pub async fn start(name: &'static str) -> Backend {
        Backend::with(name, Behaviour::Name).await
    }

    /// A backend with the given behaviour.
    pub async fn with(name: &'static str, behaviour: Behaviour) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let (arrivals_tx, arrivals) = watch::channel(0usize);
        let arrivals_tx = Arc::new(arrivals_tx);
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(Notify::new());
        let (rec, conns, stop2) = (received.clone(), connections.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                    () = stop2.notified() => return,
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let (rec, behaviour, arrivals_tx) =
                    (rec.clone(), behaviour.clone(), arrivals_tx.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let (rec, behaviour, arrivals_tx) =
                            (rec.clone(), behaviour.clone(), arrivals_tx.clone());
                        async move {
                            let (parts, body) = request.into_parts();
                            arrivals_tx.send_modify(|n| *n += 1);
                            let body_len = match body.collect().await {
                                Ok(collected) => collected.to_bytes().len(),
                                Err(_) => usize::MAX,
                            };
                            let recorded = Recorded {
                                method: parts.method.clone(),
                                target: parts
                                    .uri
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default(),
                                headers: parts.headers.clone(),
                                body_len,
                            };
                            rec.lock().unwrap().push(recorded.clone());
                            if let Behaviour::Respond(respond) = &behaviour {
                                let (status, headers, body) = respond(&recorded);
                                let mut response = Response::builder().status(status);
                                for (k, v) in headers {
                                    response = response.header(k, v);
                                }
                                return Ok::<_, Infallible>(
                                    response.body(Full::new(Bytes::from(body)).boxed()).unwrap(),
                                );
                            }
                            Ok::<_, Infallible>(answer(name, &behaviour, body_len).await)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend {
            name,
            addr,
            received,
            arrivals,
            connections,
            stop,
        }
    }

    /// `http://127.0.0.1:PORT`, for a table's `endpoints`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests have arrived (heads received).
    pub async fn wait_for_arrivals(&self, n: usize) {
        let mut rx = self.arrivals.clone();
        tokio::time::timeout(EVENT_TIMEOUT, rx.wait_for(|&seen| seen >= n))
            .await
            .expect("backend did not receive the expected requests in time")
            .expect("backend gone");
    }

    /// Stops accepting new connections.
    pub fn stop(&self) {
        self.stop.notify_one();
    }
}

async fn answer(
    name: &'static str,
    behaviour: &Behaviour,
    body_len: usize,
) -> Response<http_body_util::combinators::BoxBody<Bytes, Infallible>> {
    let named = |status: StatusCode| {
        Response::builder()
            .status(status)
            .header("x-upstream", name)
            .header("x-received-body-bytes", body_len.to_string())
            .body(Full::new(Bytes::from(name)).boxed())
            .unwrap()
    };
    match behaviour {
        Behaviour::Name => named(StatusCode::OK),
        Behaviour::Gated(gate) => {
            let permit = gate.acquire().await.expect("gate closed");
            permit.forget();
            named(StatusCode::OK)
        }
        Behaviour::Delay(d) => {
            tokio::time::sleep(*d).await;
            named(StatusCode::OK)
        }
        Behaviour::Custom(status, headers) => {
            let mut response = named(*status);
            for (k, v) in headers {
                response.headers_mut().append(*k, v.parse().unwrap());
            }
            response
        }
        Behaviour::Respond(_) => unreachable!("answered by the service"),
        Behaviour::Download(total) => Response::builder()
            .header("x-upstream", name)
            .body(ChunkBody::new(*total).boxed())
            .unwrap(),
    }
}

/// A body yielding `total` bytes in chunks, generated lazily (never held whole).
pub struct ChunkBody {
    left: u64,
    chunk: Bytes,
}

impl ChunkBody {
    pub fn new(total: u64) -> ChunkBody {
        ChunkBody {
            left: total,
            chunk: Bytes::from(vec![b'x'; 64 * 1024]),
        }
    }
}

impl hyper::body::Body for ChunkBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len() as u64) as usize;
        self.left -= n as u64;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(self.chunk.slice(..n)))))
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left)
    }
}

/// ficus running in-process on ephemeral ports, serving a table from a temp dir.
pub struct TestProxy {
    pub running: ficus::Running,
    pub dir: tempfile::TempDir,
    pub table: PathBuf,
    pub client: Client<HttpConnector, Full<Bytes>>,
}

impl TestProxy {
    /// Starts ficus with `toml` as its table (written to `DIR/routes.toml`).
    pub async fn start(toml: &str) -> TestProxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let table = dir.path().join("routes.toml");
        std::fs::write(&table, toml).expect("write table");
        TestProxy::start_at(dir, table).await
    }

    /// Starts ficus serving an existing table file.
    pub async fn start_at(dir: tempfile::TempDir, table: PathBuf) -> TestProxy {
        let proxy_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let mut options = ficus::Options::new(&table);
        options.proxy_listener = Some(proxy_listener);
        options.admin_listener = Some(admin_listener);
        let running = ficus::start(options).await.expect("ficus starts");
        let client = Client::builder(TokioExecutor::new()).build_http();
        TestProxy {
            running,
            dir,
            table,
            client,
        }
    }

    /// `http://127.0.0.1:PORT` + path, on the proxy port.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.running.proxy_addr, path)
    }

    /// `http://127.0.0.1:PORT` + path, on the admin port.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.running.admin_addr, path)
    }

    /// Sends a request through the proxy and reads the whole answer.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &'static [u8],
    ) -> Answer {
        let mut request = Request::builder().method(method).uri(self.url(path));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request
            .body(Full::new(Bytes::from_static(body)))
            .expect("request");
        fetch(&self.client, request).await
    }

    /// GET through the proxy.
    pub async fn get(&self, path: &str) -> Answer {
        self.send(Method::GET, path, &[], b"").await
    }

    /// GET on the admin port.
    pub async fn admin_get(&self, path: &str) -> Answer {
        let request = Request::get(self.admin_url(path))
            .body(Full::new(Bytes::new()))
            .unwrap();
        fetch(&self.client, request).await
    }

    /// The value of one metric sample line, e.g. `ficus_config_generation` or
    /// `ficus_requests_total{route="a",upstream="b",code="200"}`; 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.admin_get("/metrics").await.body;
        text.lines()
            .find_map(|line| {
                line.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }

    /// Replaces the table atomically (write a temp file, rename it over the table), as
    /// editors and ConfigMaps do. Wait with `wait_for_generation`/`wait_for_failures`.
    pub async fn rewrite(&self, toml: &str) {
        let temp = self.dir.path().join(".routes.toml.tmp");
        std::fs::write(&temp, toml).expect("write temp table");
        std::fs::rename(&temp, &self.table).expect("rename over the table");
    }

    /// Replaces the table in place (truncate + write): a reload may read it half-written.
    pub async fn rewrite_in_place(&self, toml: &str) {
        std::fs::write(&self.table, toml).expect("rewrite table");
    }

    /// Waits until the generation is at least `generation`.
    pub async fn wait_for_generation(&self, generation: u64) {
        let mut rx = self.running.reloads();
        tokio::time::timeout(EVENT_TIMEOUT, rx.wait_for(|c| c.generation >= generation))
            .await
            .expect("no reload to the expected generation in time")
            .expect("reloader gone");
    }

    /// Waits until at least `attempts` reload attempts (of any outcome) have finished.
    pub async fn wait_for_attempts(&self, attempts: u64) {
        let mut rx = self.running.reloads();
        tokio::time::timeout(EVENT_TIMEOUT, rx.wait_for(|c| c.attempts >= attempts))
            .await
            .expect("no reload attempt in time")
            .expect("reloader gone");
    }

    /// Reload attempts finished so far.
    pub fn attempts(&self) -> u64 {
        self.running.reloads().borrow().attempts
    }

    /// Waits until `series` reaches at least `value`, and returns its value. Metrics have
    /// no change feed, so this polls `/metrics` until the event, bounded by `EVENT_TIMEOUT`.
    pub async fn wait_for_metric(&self, series: &str, value: f64) -> f64 {
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        loop {
            let seen = self.metric(series).await;
            if seen >= value {
                return seen;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{series} stayed at {seen}, expected {value}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until at least `failures` reloads have been rejected.
    pub async fn wait_for_failures(&self, failures: u64) {
        let mut rx = self.running.reloads();
        tokio::time::timeout(EVENT_TIMEOUT, rx.wait_for(|c| c.failures >= failures))
            .await
            .expect("no rejected reload in time")
            .expect("reloader gone");
    }
}

/// A response read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    /// The `x-upstream` header the backend set, or "" when absent.
    pub fn upstream(&self) -> &str {
        self.headers
            .get("x-upstream")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Sends a request with `client` and reads the whole answer.
pub async fn fetch(
    client: &Client<HttpConnector, Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Answer {
    let response = tokio::time::timeout(EVENT_TIMEOUT, client.request(request))
        .await
        .expect("response in time")
        .expect("request sent");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Sends raw bytes on a new connection and returns everything read until the
/// server closes or `EVENT_TIMEOUT` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(EVENT_TIMEOUT, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A table with `default = "legacy"` and the given upstreams, followed by `rest`.
pub fn table(upstreams: &[(&str, &Backend)], rest: &str) -> String {
    let mut out = String::from("default = \"legacy\"\n");
    for (name, backend) in upstreams {
        out.push_str(&format!(
            "[upstreams.{name}]\nendpoints = [\"{}\"]\n",
            backend.url()
        ));
    }
    out.push_str(rest);
    out
}

/// A response read from a raw connection.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Names lowercased, in wire order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    /// The first value of `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        values_of(&self.headers, name).into_iter().next()
    }

    /// Every value of `name` (lower-case), in wire order.
    pub fn values(&self, name: &str) -> Vec<&str> {
        values_of(&self.headers, name)
    }
}

/// Every value of `name` (lower-case) among `headers` (names lower-cased), in wire order.
fn values_of<'h>(headers: &'h [(String, String)], name: &str) -> Vec<&'h str> {
    headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Reads one content-length-framed response from `stream`.
pub async fn read_response(stream: &mut tokio::net::TcpStream) -> RawResponse {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        read_more(stream, &mut buf).await;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a status line: {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (name, value) = l.split_once(':').expect("header line");
            (name.trim().to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map(|(_, v)| v.parse().expect("content-length"))
        .unwrap_or_else(|| panic!("response without content-length: {head:?}"));
    while buf.len() < head_end + length {
        read_more(stream, &mut buf).await;
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
    RawResponse {
        status,
        headers,
        body,
    }
}

async fn read_more(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 4096];
    let n = tokio::time::timeout(
        EVENT_TIMEOUT,
        tokio::io::AsyncReadExt::read(stream, &mut chunk),
    )
    .await
    .expect("response in time")
    .expect("read");
    assert!(
        n > 0,
        "connection closed mid-response after {:?}",
        String::from_utf8_lossy(buf)
    );
    buf.extend_from_slice(&chunk[..n]);
}

/// A message head as a raw client or upstream reads it off the wire: the start line
/// and the header fields in wire order.
#[derive(Debug, Clone)]
pub struct RawHead {
    pub line: String,
    /// Names lower-cased, values trimmed, in wire order.
    pub headers: Vec<(String, String)>,
}

impl RawHead {
    pub fn parse(bytes: &[u8]) -> RawHead {
        let text = String::from_utf8_lossy(bytes);
        let mut lines = text.split("\r\n").filter(|l| !l.is_empty());
        let line = lines.next().unwrap_or_default().to_owned();
        let headers = lines
            .map(|l| {
                let (name, value) = l
                    .split_once(':')
                    .unwrap_or_else(|| panic!("not a header line: {l:?}"));
                (name.trim().to_ascii_lowercase(), value.trim().to_owned())
            })
            .collect();
        RawHead { line, headers }
    }

    /// The status code of a response head.
    pub fn status(&self) -> u16 {
        self.line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {:?}", self.line))
    }

    /// The first value of `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.values(name).into_iter().next()
    }

    /// Every value of `name` (lower-case), in wire order.
    pub fn values(&self, name: &str) -> Vec<&str> {
        values_of(&self.headers, name)
    }

    /// Whether a `transfer-encoding` header ends in `chunked`.
    pub fn is_chunked(&self) -> bool {
        self.values("transfer-encoding").last().is_some_and(|v| {
            v.rsplit(',')
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"))
        })
    }

    pub fn content_length(&self) -> Option<usize> {
        // A list of identical values counts as one (RFC 9110 §8.6).
        let values: Vec<usize> = self
            .values("content-length")
            .iter()
            .flat_map(|v| v.split(','))
            .map(|v| {
                v.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("content-length: {v:?}"))
            })
            .collect();
        assert!(
            values.windows(2).all(|w| w[0] == w[1]),
            "conflicting content-length: {values:?}"
        );
        values.first().copied()
    }
}
