//! The route table: parse `routes.toml`, validate it, and compile it into a
//! [`Table`] the data path can use without further checks.
//!
//! Hot-reloadable: `default`, `[defaults]`, `[upstreams]`, `[[routes]]`.
//! Read at start only (a change is reported as needing a restart):
//! `[listen]` and `[server]`.

pub mod duration;
pub mod file;
pub mod shadow;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Method;
use http::uri::{Authority, Scheme};
use toml::Spanned;

use crate::routing::split::{BUCKETS, Split, StickyKey};
use crate::routing::{Pattern, RouteSpec, Router};
use file::{FileRoute, FileTable, FileUpstream};
pub use shadow::ShadowSpec;

/// Longest duration any key accepts.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Largest table file ficus reads.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// One problem found in a table, located by line when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line in the file.
    pub line: Option<usize>,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// A table that could not be loaded: every problem at once, so one edit can fix them all.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// The file, as given.
    pub file: PathBuf,
    /// What is wrong.
    pub problems: Vec<Problem>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match problem.line {
                Some(line) => write!(f, "{}:{line}: {}", self.file.display(), problem.message)?,
                None => write!(f, "{}: {}", self.file.display(), problem.message)?,
            }
        }
        Ok(())
    }
}

/// Listener addresses (`[listen]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// Public proxy address.
    pub proxy: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
}

/// Connection-level settings (`[server]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// Longest wait for a request head once its first byte arrived.
    pub header_read_timeout: Duration,
    /// Longest an idle keep-alive client connection is kept.
    pub idle_timeout: Duration,
    /// How long in-flight requests may take to finish on shutdown.
    pub drain_timeout: Duration,
    /// Longest an answer being written may go without a byte reaching the client.
    pub stream_idle_timeout: Duration,
    /// Most client connections open at once.
    pub max_connections: usize,
    /// Largest request head in bytes.
    pub max_request_header_bytes: usize,
}

/// Defaults documented in README; chosen in `../shared/docs/reliability.md` §2.
pub mod defaults {
    use std::time::Duration;
    /// `[listen] proxy`.
    pub const PROXY: &str = "0.0.0.0:8080";
    /// `[listen] admin`: loopback only unless configured.
    pub const ADMIN: &str = "127.0.0.1:9090";
    /// `[server] header_read_timeout`.
    pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    /// `[server] idle_timeout`: above the 60 s idle timeout of common load balancers.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(75);
    /// `[server] drain_timeout`.
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
    /// `[server] stream_idle_timeout`: nginx's `send_timeout`, the send-idle and
    /// stream-idle rows of reliability.md §2.
    pub const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// `[server] max_connections`.
    pub const MAX_CONNECTIONS: usize = 10_000;
    /// `[server] max_request_header_bytes`.
    pub const MAX_REQUEST_HEADER_BYTES: usize = 32 * 1024;
    /// `[defaults] timeout`.
    pub const ROUTE_TIMEOUT: Duration = Duration::from_secs(30);
    /// `[defaults] connect_timeout`.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// `[defaults] pool_idle_timeout`: below Node.js's 5 s keep-alive, so ficus
    /// never reuses a connection the monolith is about to close.
    pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
    /// `[upstreams.*] pool_max_idle`.
    pub const POOL_MAX_IDLE: usize = 128;
    /// `shadow.timeout`.
    pub const SHADOW_TIMEOUT: Duration = Duration::from_secs(5);
    /// `shadow.max_body`, in bytes.
    pub const SHADOW_MAX_BODY: usize = 1024 * 1024;
    /// `shadow.concurrency`.
    pub const SHADOW_CONCURRENCY: usize = 64;
    /// `shadow.noise_sample`.
    pub const SHADOW_NOISE_SAMPLE: f64 = 0.05;
}

/// One upstream endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Always `http` for now.
    pub scheme: Scheme,
    /// `host:port`.
    pub authority: Authority,
}

/// A validated upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSpec {
    /// Its name in the table.
    pub name: String,
    /// Endpoints, balanced round robin.
    pub endpoints: Vec<Endpoint>,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Idle pooled connection lifetime.
    pub pool_idle_timeout: Duration,
    /// Most idle pooled connections per endpoint.
    pub pool_max_idle: usize,
}

/// Where a route sends requests. Upstreams are indices into [`Table::upstreams`].
#[derive(Debug, Clone)]
pub enum Target {
    /// One upstream.
    Upstream(usize),
    /// Weighted sides; `upstreams[i]` is side `i` of `split`.
    Split {
        /// Upstream index per side, in side order (name order).
        upstreams: Vec<usize>,
        /// Weight of each side in percent, for display.
        weights: Vec<f64>,
        /// The compiled split.
        split: Split,
    },
}

/// A validated route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Unique name; the `route` metric label.
    pub name: String,
    /// Pattern and methods, as the matcher sees them.
    pub spec: RouteSpec,
    /// Where requests go.
    pub target: Target,
    /// Request timeout (until the upstream's response headers).
    pub timeout: Duration,
    /// Where requests are mirrored, if anywhere.
    pub shadow: Option<ShadowSpec>,
    /// Line of the route in the file.
    pub line: usize,
}

/// A validated, compiled route table. Immutable.
#[derive(Debug)]
pub struct Table {
    /// The file it came from.
    pub file: PathBuf,
    /// Listener addresses.
    pub listen: Listen,
    /// Connection settings.
    pub server: ServerSettings,
    /// Upstreams in name order.
    pub upstreams: Vec<UpstreamSpec>,
    /// Index of the default upstream.
    pub default_upstream: usize,
    /// Timeout for requests that match no route.
    pub default_timeout: Duration,
    /// Routes in file order; a [`crate::routing::RouteId`] indexes this.
    pub routes: Vec<Route>,
    /// The matcher.
    pub router: Router,
}

impl Table {
    /// Index of the upstream called `name`.
    pub fn upstream_index(&self, name: &str) -> Option<usize> {
        self.upstreams.iter().position(|u| u.name == name)
    }
}

/// Reads and compiles a table file (at most [`MAX_FILE_BYTES`]).
pub fn load(path: &Path) -> Result<Table, ConfigError> {
    parse_bytes(&read(path)?, path)
}

/// Reads a table file's bytes, refusing files over [`MAX_FILE_BYTES`] without reading them whole.
pub fn read(path: &Path) -> Result<Vec<u8>, ConfigError> {
    read_capped(path).map_err(|message| ConfigError {
        file: path.to_owned(),
        problems: vec![Problem {
            line: None,
            message,
        }],
    })
}

/// Compiles a table from the file's bytes; `path` is only used in messages.
pub fn parse_bytes(bytes: &[u8], path: &Path) -> Result<Table, ConfigError> {
    let text = std::str::from_utf8(bytes).map_err(|e| ConfigError {
        file: path.to_owned(),
        problems: vec![Problem {
            line: None,
            message: format!("not valid UTF-8 ({e}); save the file as UTF-8"),
        }],
    })?;
    parse(text, path)
}

fn read_capped(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "larger than {MAX_FILE_BYTES} bytes; a route table should be far smaller"
        ));
    }
    Ok(bytes)
}

/// Parses and compiles table text; `file` is only used in messages.
pub fn parse(text: &str, file: &Path) -> Result<Table, ConfigError> {
    let raw: FileTable = toml::from_str(text).map_err(|e| ConfigError {
        file: file.to_owned(),
        problems: vec![Problem {
            line: e.span().map(|s| line_of(text, s.start)),
            message: format!("invalid TOML: {}", e.message().trim_end()),
        }],
    })?;
    let mut compiler = Compiler {
        lines: Lines::new(text),
        problems: Vec::new(),
    };
    let table = compiler.table(raw, file);
    match table {
        Some(table) if compiler.problems.is_empty() => Ok(table),
        _ => Err(ConfigError {
            file: file.to_owned(),
            problems: compiler.problems,
        }),
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Byte offsets where lines start, so every route's line is a binary search
/// (a 10,000-route table must not cost a scan of the file per route).
struct Lines(Vec<usize>);

impl Lines {
    fn new(text: &str) -> Self {
        let starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1));
        Lines(starts.collect())
    }

    /// The 1-based line holding byte `offset`.
    fn of(&self, offset: usize) -> usize {
        self.0.partition_point(|&start| start <= offset)
    }
}

struct Compiler {
    lines: Lines,
    problems: Vec<Problem>,
}

impl Compiler {
    fn problem(&mut self, offset: Option<usize>, message: String) {
        let line = offset.map(|o| self.lines.of(o));
        self.problems.push(Problem { line, message });
    }

    fn duration(
        &mut self,
        at: usize,
        key: &str,
        value: Option<&String>,
        default: Duration,
    ) -> Duration {
        match value.map(|v| duration::parse(v)) {
            None => default,
            Some(Ok(d)) if d.is_zero() => {
                self.problem(Some(at), format!("{key}: must be greater than zero"));
                default
            }
            // Timers add durations to `Instant`s; absurd values would overflow them.
            Some(Ok(d)) if d > MAX_DURATION => {
                self.problem(Some(at), format!("{key}: must be at most 24h"));
                default
            }
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.problem(Some(at), format!("{key}: {e}"));
                default
            }
        }
    }

    fn table(&mut self, raw: FileTable, file: &Path) -> Option<Table> {
        let listen = self.listen(raw.listen.as_ref());
        let server = self.server(raw.server.as_ref());
        let empty = Spanned::new(0..0, file::FileDefaults::default());
        let defaults = raw.defaults.as_ref().unwrap_or(&empty);
        let at = defaults.span().start;
        let d = defaults.get_ref();
        let default_timeout = self.duration(
            at,
            "defaults.timeout",
            d.timeout.as_ref(),
            defaults::ROUTE_TIMEOUT,
        );
        let connect = self.duration(
            at,
            "defaults.connect_timeout",
            d.connect_timeout.as_ref(),
            defaults::CONNECT_TIMEOUT,
        );
        let pool_idle = self.duration(
            at,
            "defaults.pool_idle_timeout",
            d.pool_idle_timeout.as_ref(),
            defaults::POOL_IDLE_TIMEOUT,
        );

        let upstreams: Vec<UpstreamSpec> = raw
            .upstreams
            .iter()
            .map(|(name, up)| self.upstream(name, up, connect, pool_idle))
            .collect();
        let names: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
        let default_upstream = match names.iter().position(|n| *n == raw.default.get_ref()) {
            Some(i) => i,
            None => {
                let msg = unknown_upstream("default", raw.default.get_ref(), &names);
                self.problem(Some(raw.default.span().start), msg);
                0
            }
        };
        let mut routes = Vec::with_capacity(raw.routes.len());
        let mut seen = BTreeMap::new();
        for route in &raw.routes {
            let name = &route.get_ref().name;
            if let Some(first) = seen.insert(name.clone(), route.span().start) {
                let first_line = self.lines.of(first);
                self.problem(
                    Some(route.span().start),
                    format!("route \"{name}\": name already used by the route at line {first_line}; names must be unique"),
                );
            }
            if let Some(compiled) = self.route(route, &names, default_timeout) {
                routes.push(compiled);
            }
        }
        if !self.problems.is_empty() {
            return None;
        }
        let specs: Vec<RouteSpec> = routes.iter().map(|r| r.spec.clone()).collect();
        let router = match Router::new(&specs) {
            Ok(router) => router,
            Err(ties) => {
                for tie in ties {
                    let (a, b) = (&routes[tie.first], &routes[tie.second]);
                    let methods = if a.spec.methods.is_none() && b.spec.methods.is_none() {
                        "neither lists `methods`"
                    } else {
                        "their `methods` overlap"
                    };
                    self.problems.push(Problem {
                        line: Some(b.line),
                        message: format!(
                            "route \"{}\" ties with route \"{}\" (line {}): same {} and {methods}; \
                             give them different paths or disjoint `methods`",
                            b.name, a.name, a.line, b.spec.pattern
                        ),
                    });
                }
                return None;
            }
        };
        Some(Table {
            file: file.to_owned(),
            listen,
            server,
            upstreams,
            default_upstream,
            default_timeout,
            routes,
            router,
        })
    }

    fn listen(&mut self, raw: Option<&Spanned<file::FileListen>>) -> Listen {
        let at = raw.map(|r| r.span().start);
        let (proxy, admin) = raw.map_or((None, None), |r| {
            (r.get_ref().proxy.as_deref(), r.get_ref().admin.as_deref())
        });
        let mut addr = |key: &str, value: Option<&str>, default: &str| {
            let text = value.unwrap_or(default);
            text.parse::<SocketAddr>().unwrap_or_else(|_| {
                self.problem(
                    at,
                    format!(
                        "listen.{key}: \"{text}\" is not an address; write it like \"0.0.0.0:8080\""
                    ),
                );
                // Invariant: the defaults are valid socket addresses (checked by a unit test).
                default
                    .parse()
                    .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
            })
        };
        Listen {
            proxy: addr("proxy", proxy, defaults::PROXY),
            admin: addr("admin", admin, defaults::ADMIN),
        }
    }

    fn server(&mut self, raw: Option<&Spanned<file::FileServer>>) -> ServerSettings {
        let empty = Spanned::new(0..0, file::FileServer::default());
        let raw = raw.unwrap_or(&empty);
        let at = raw.span().start;
        let s = raw.get_ref();
        let max_connections = s
            .max_connections
            .map_or(defaults::MAX_CONNECTIONS, |n| n as usize);
        if max_connections == 0 {
            self.problem(
                Some(at),
                "server.max_connections: must be at least 1".into(),
            );
        }
        let max_head = s
            .max_request_header_bytes
            .map_or(defaults::MAX_REQUEST_HEADER_BYTES, |n| n as usize);
        if max_head < 8192 {
            self.problem(
                Some(at),
                "server.max_request_header_bytes: must be at least 8192".into(),
            );
        }
        ServerSettings {
            header_read_timeout: self.duration(
                at,
                "server.header_read_timeout",
                s.header_read_timeout.as_ref(),
                defaults::HEADER_READ_TIMEOUT,
            ),
            idle_timeout: self.duration(
                at,
                "server.idle_timeout",
                s.idle_timeout.as_ref(),
                defaults::IDLE_TIMEOUT,
            ),
            drain_timeout: self.duration(
                at,
                "server.drain_timeout",
                s.drain_timeout.as_ref(),
                defaults::DRAIN_TIMEOUT,
            ),
            stream_idle_timeout: self.duration(
                at,
                "server.stream_idle_timeout",
                s.stream_idle_timeout.as_ref(),
                defaults::STREAM_IDLE_TIMEOUT,
            ),
            max_connections,
            max_request_header_bytes: max_head,
        }
    }

    fn upstream(
        &mut self,
        name: &str,
        raw: &Spanned<FileUpstream>,
        connect: Duration,
        pool_idle: Duration,
    ) -> UpstreamSpec {
        let at = raw.span().start;
        let up = raw.get_ref();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            self.problem(
                Some(at),
                format!("upstream \"{name}\": names use letters, digits, '-' and '_' only"),
            );
        }
        if up.endpoints.is_empty() {
            self.problem(Some(at), format!("upstream \"{name}\": endpoints is empty; list at least one, like [\"http://127.0.0.1:3000\"]"));
        }
        let mut endpoints = Vec::new();
        for text in &up.endpoints {
            match parse_endpoint(text) {
                Ok(endpoint) => endpoints.push(endpoint),
                Err(e) => self.problem(
                    Some(at),
                    format!("upstream \"{name}\": endpoint \"{text}\": {e}"),
                ),
            }
        }
        UpstreamSpec {
            name: name.to_owned(),
            endpoints,
            connect_timeout: self.duration(
                at,
                &format!("upstream \"{name}\": connect_timeout"),
                up.connect_timeout.as_ref(),
                connect,
            ),
            pool_idle_timeout: self.duration(
                at,
                &format!("upstream \"{name}\": pool_idle_timeout"),
                up.pool_idle_timeout.as_ref(),
                pool_idle,
            ),
            pool_max_idle: up
                .pool_max_idle
                .map_or(defaults::POOL_MAX_IDLE, |n| n as usize),
        }
    }

    fn route(
        &mut self,
        raw: &Spanned<FileRoute>,
        upstreams: &[&str],
        default_timeout: Duration,
    ) -> Option<Route> {
        let at = raw.span().start;
        let line = self.lines.of(at);
        let r = raw.get_ref();
        let name = &r.name;
        let before = self.problems.len();
        let mut fail = |this: &mut Self, msg: String| {
            this.problem(Some(at), format!("route \"{name}\": {msg}"))
        };
        if name.is_empty()
            || name == "default"
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            fail(
                self,
                "names use letters, digits, '-', '_' and '.' only, and \"default\" is reserved"
                    .into(),
            );
        }
        let pattern = match (&r.path, &r.prefix) {
            (Some(p), None) => {
                Pattern::path(p).and_then(|pattern| check_canonical(p).map(|()| pattern))
            }
            (None, Some(p)) => {
                Pattern::prefix(p).and_then(|pattern| check_canonical(p).map(|()| pattern))
            }
            (Some(_), Some(_)) => Err("has both `path` and `prefix`; keep exactly one".into()),
            (None, None) => Err("needs `path` (a template) or `prefix`".into()),
        };
        let pattern = pattern.map_err(|e| fail(self, e)).ok();
        let methods = match &r.methods {
            None => None,
            Some(list) if list.is_empty() => {
                fail(
                    self,
                    "methods is empty; remove the key to accept every method".into(),
                );
                None
            }
            Some(list) => Some(
                list.iter()
                    .filter_map(|m| parse_method(m).map_err(|e| fail(self, e)).ok())
                    .collect(),
            ),
        };
        let target = self.target(r, upstreams, &mut fail);
        let timeout = self.duration(
            at,
            &format!("route \"{name}\": timeout"),
            r.timeout.as_ref(),
            default_timeout,
        );
        let shadow = r.shadow.as_ref().and_then(|raw| {
            let primary: Vec<&str> = match &target {
                Some(Target::Upstream(i)) => vec![upstreams[*i]],
                Some(Target::Split {
                    upstreams: sides, ..
                }) => sides.iter().map(|&i| upstreams[i]).collect(),
                None => Vec::new(),
            };
            self.shadow(name, raw, upstreams, &primary)
        });
        if self.problems.len() > before {
            return None;
        }
        Some(Route {
            name: name.clone(),
            spec: RouteSpec {
                pattern: pattern?,
                methods,
            },
            target: target?,
            timeout,
            shadow,
            line,
        })
    }

    fn target(
        &mut self,
        r: &FileRoute,
        upstreams: &[&str],
        fail: &mut impl FnMut(&mut Self, String),
    ) -> Option<Target> {
        let index = |name: &str| upstreams.iter().position(|u| *u == name);
        match (&r.upstream, &r.split) {
            (Some(up), None) => {
                if r.sticky.is_some() {
                    fail(
                        self,
                        "`sticky` only applies to a `split`; remove it or use split".into(),
                    );
                }
                match index(up) {
                    Some(i) => Some(Target::Upstream(i)),
                    None => {
                        fail(self, unknown_upstream("upstream", up, upstreams));
                        None
                    }
                }
            }
            (None, Some(split)) => {
                let mut sides = Vec::new();
                let mut weights_bp = Vec::new();
                let mut weights = Vec::new();
                for (up, &weight) in split {
                    let Some(i) = index(up) else {
                        fail(self, unknown_upstream("split", up, upstreams));
                        continue;
                    };
                    let bp = weight * 100.0;
                    if !(0.0..=100.0).contains(&weight) || (bp - bp.round()).abs() > 1e-6 {
                        fail(
                            self,
                            format!(
                                "split weight {weight} for \"{up}\" must be a percentage from 0 to 100 with at most two decimals"
                            ),
                        );
                        continue;
                    }
                    sides.push(i);
                    weights_bp.push(bp.round() as u32);
                    weights.push(weight);
                }
                let total: u32 = weights_bp.iter().sum();
                if split.len() < 2 {
                    fail(
                        self,
                        "a split needs at least two upstreams; use `upstream` for one".into(),
                    );
                } else if sides.len() == split.len() && total != BUCKETS {
                    fail(
                        self,
                        format!("split weights sum to {}, not 100", f64::from(total) / 100.0),
                    );
                }
                let sticky = match r.sticky.as_deref().map(StickyKey::parse) {
                    None => None,
                    Some(Ok(key)) => Some(key),
                    Some(Err(e)) => {
                        fail(self, format!("sticky: {e}"));
                        None
                    }
                };
                Some(Target::Split {
                    upstreams: sides,
                    weights,
                    split: Split::new(&weights_bp, sticky),
                })
            }
            (Some(_), Some(_)) => {
                fail(
                    self,
                    "has both `upstream` and `split`; keep exactly one".into(),
                );
                None
            }
            (None, None) => {
                fail(self, "needs `upstream` or `split`".into());
                None
            }
        }
    }
}

/// An HTTP method as the table spells it (any case).
fn parse_method(text: &str) -> Result<Method, String> {
    Method::from_bytes(text.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("\"{text}\" is not an HTTP method"))
}

fn unknown_upstream(key: &str, name: &str, known: &[&str]) -> String {
    format!(
        "{key}: upstream \"{name}\" is not defined; add [upstreams.{name}] or use one of: {}",
        if known.is_empty() {
            "(none defined)".to_owned()
        } else {
            known.join(", ")
        }
    )
}

fn check_canonical(text: &str) -> Result<(), String> {
    // `{param}` segments are template syntax, not path text: check the rest.
    let literal: String = text
        .split('/')
        .map(|s| {
            if s.starts_with('{') && s.ends_with('}') {
                "p"
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join("/");
    match crate::routing::path::normalize(&literal) {
        Ok(canonical) if canonical == literal => Ok(()),
        Ok(_) if literal != text => Err(format!(
            "\"{text}\" is not in canonical form (no '//', '.', '..' or percent-encoded letters)"
        )),
        Ok(canonical) if canonical == text => Ok(()),
        Ok(canonical) => Err(format!(
            "\"{text}\" is not in canonical form; write \"{canonical}\""
        )),
        Err(e) => Err(format!("\"{text}\": {e}")),
    }
}

fn parse_endpoint(text: &str) -> Result<Endpoint, String> {
    let uri: http::Uri = text
        .parse()
        .map_err(|_| "not a URL; write it like \"http://127.0.0.1:3000\"".to_owned())?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err("https upstreams are not supported yet; use http".into()),
        _ => return Err("must start with http://".into()),
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err("must not have a path; routes keep the request's path".into());
    }
    let authority = uri.authority().cloned().ok_or("has no host")?;
    if authority.as_str().contains('@') {
        return Err("must not contain credentials".into());
    }
    Ok(Endpoint {
        scheme: Scheme::HTTP,
        authority,
    })
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
