//! The raw shape of `routes.toml`, exactly as operators write it.
//!
//! Nothing here is validated beyond TOML syntax and key names (`deny_unknown_fields`,
//! so a typo is an error rather than a silently ignored key). [`super::parse`]
//! turns these types into a validated [`super::Table`]; only that type reaches the
//! data path.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTable {
    /// Upstream for requests that match no route.
    pub default: Spanned<String>,
    /// Listener addresses (read at start only).
    pub listen: Option<Spanned<FileListen>>,
    /// Connection-level settings (read at start only).
    pub server: Option<Spanned<FileServer>>,
    /// Defaults for routes and upstreams (hot-reloadable).
    pub defaults: Option<Spanned<FileDefaults>>,
    /// Named upstreams.
    #[serde(default)]
    pub upstreams: BTreeMap<String, Spanned<FileUpstream>>,
    /// The route table.
    #[serde(default)]
    pub routes: Vec<Spanned<FileRoute>>,
}

/// `[listen]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileListen {
    /// Public proxy address.
    pub proxy: Option<String>,
    /// Admin address (metrics, health, routes).
    pub admin: Option<String>,
}

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileServer {
    /// Longest wait for a request head once its first byte arrived.
    pub header_read_timeout: Option<String>,
    /// Longest an idle keep-alive client connection is kept.
    pub idle_timeout: Option<String>,
    /// How long in-flight requests may take to finish on shutdown.
    pub drain_timeout: Option<String>,
    /// Longest an answer being written may go without a byte reaching the client.
    pub stream_idle_timeout: Option<String>,
    /// Most client connections open at once.
    pub max_connections: Option<u32>,
    /// Largest request head (request line plus headers), in bytes.
    pub max_request_header_bytes: Option<u32>,
}

/// `[defaults]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDefaults {
    /// Route request timeout (until the upstream's response headers).
    pub timeout: Option<String>,
    /// Upstream TCP connect timeout.
    pub connect_timeout: Option<String>,
    /// How long an idle pooled upstream connection is kept.
    pub pool_idle_timeout: Option<String>,
}

/// `[upstreams.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpstream {
    /// `http://host:port` base URLs, balanced round robin.
    pub endpoints: Vec<String>,
    /// Overrides `defaults.connect_timeout`.
    pub connect_timeout: Option<String>,
    /// Overrides `defaults.pool_idle_timeout`.
    pub pool_idle_timeout: Option<String>,
    /// Most idle pooled connections kept per endpoint.
    pub pool_max_idle: Option<u32>,
}

/// One `[[routes]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    /// Unique name; the `route` metric label.
    pub name: String,
    /// Methods this route accepts; all when absent.
    pub methods: Option<Vec<String>>,
    /// A path template: literal and `{param}` segments.
    pub path: Option<String>,
    /// A literal path prefix, matched on whole segments.
    pub prefix: Option<String>,
    /// The single upstream that answers.
    pub upstream: Option<String>,
    /// Weights in percent per upstream, summing to 100.
    pub split: Option<BTreeMap<String, f64>>,
    /// `header:NAME` or `cookie:NAME`: the key that keeps a user on one side.
    pub sticky: Option<String>,
    /// Request timeout for this route.
    pub timeout: Option<String>,
    /// Mirror requests to another upstream and compare the answers.
    pub shadow: Option<Spanned<FileShadow>>,
}

/// A route's `shadow = { ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileShadow {
    /// Where mirrored requests go.
    pub upstream: String,
    /// Fraction of the route's requests mirrored, 0.0 to 1.0.
    pub sample: f64,
    /// Methods mirrored; GET and HEAD when absent.
    pub methods: Option<Vec<String>>,
    /// Largest request or response body buffered for the shadow, in bytes.
    pub max_body: Option<u64>,
    /// Deadline for the whole shadow exchange.
    pub timeout: Option<String>,
    /// Most shadow requests in flight for the route.
    pub concurrency: Option<u32>,
    /// What is compared.
    pub compare: Option<FileCompare>,
    /// What is never compared.
    pub ignore: Option<FileIgnore>,
    /// `"learn"` or `"off"`.
    pub noise: Option<String>,
    /// Fraction of mirrored requests also sent twice to the primary upstream to learn noise.
    pub noise_sample: Option<f64>,
    /// Header names whose values never appear in mismatch records or logs.
    pub redact: Option<Vec<String>>,
}

/// `shadow.compare`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCompare {
    /// Compare status codes (default true).
    pub status: Option<bool>,
    /// Response header names compared, or `["*"]` for all (default none).
    pub headers: Option<Vec<String>>,
    /// Compare bodies (default true).
    pub body: Option<bool>,
}

/// `shadow.ignore`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileIgnore {
    /// Header names never compared.
    pub headers: Option<Vec<String>>,
    /// JSON paths whose values are noise, like `$.meta.took_ms`.
    pub json: Option<Vec<String>>,
}
