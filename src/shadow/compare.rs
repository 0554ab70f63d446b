//! Compares a shadow response with the primary's (status, selected headers,
//! body) and learns which fields of the legacy upstream's answers are noise.
//! Pure functions over buffered responses; the work is bounded by the body
//! sizes and stops soon after [`MAX_DIFFERENCES`] differences.

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use serde_json::Value;

use super::json::{Walk, compact, cut, nesting_within};
use crate::shadow::jsonpath::{JsonPath, SegRef, render_refs};

/// Which response headers are compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderSelection {
    /// No header is compared.
    None,
    /// These headers.
    List(Vec<HeaderName>),
    /// Every header either side sent, except per-connection and framing ones, `date` and `x-request-id`.
    All,
}

/// What a route compares (from its `shadow.compare` / `shadow.ignore` config).
#[derive(Debug, Clone, PartialEq)]
pub struct CompareSpec {
    /// Compare status codes (default true).
    pub status: bool,
    /// Which headers to compare (default none).
    pub headers: HeaderSelection,
    /// Compare bodies (default true).
    pub body: bool,
    /// Headers never compared.
    pub ignore_headers: Vec<HeaderName>,
    /// JSON locations never compared (nor anything below them).
    pub ignore_json: Vec<JsonPath>,
}

impl Default for CompareSpec {
    fn default() -> Self {
        CompareSpec {
            status: true,
            headers: HeaderSelection::None,
            body: true,
            ignore_headers: Vec::new(),
            ignore_json: Vec::new(),
        }
    }
}

/// Noise learned at run time (fields that differ between two answers of the legacy upstream to the same request).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Noise {
    /// Headers to skip.
    pub headers: Vec<HeaderName>,
    /// JSON locations to skip.
    pub json: Vec<JsonPath>,
}

/// One side's response as buffered for comparison.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// The status code.
    pub status: StatusCode,
    /// The response headers.
    pub headers: &'a HeaderMap,
    /// The whole body.
    pub body: &'a [u8],
}

/// One difference, ready to show to an operator. Values are already truncated (see MAX_VALUE_CHARS) and redacted.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Difference {
    /// The status codes differ.
    Status {
        /// The primary's status.
        primary: u16,
        /// The shadow's status.
        shadow: u16,
    },
    /// A header's values differ (None = absent; several values joined with ", ").
    Header {
        /// The header name, lower case.
        name: String,
        /// The primary's values, or `"[redacted]"`.
        primary: Option<String>,
        /// The shadow's values, or `"[redacted]"`.
        shadow: Option<String>,
    },
    /// A JSON value differs, or exists on one side only (None = absent). Values are compact JSON text.
    Json {
        /// The location, as [`crate::shadow::jsonpath::render`] writes it.
        path: String,
        /// The primary's value.
        primary: Option<String>,
        /// The shadow's value.
        shadow: Option<String>,
    },
    /// Text bodies: the first differing line (1-based) and both lines (None when that side has fewer lines).
    Text {
        /// 1-based line number.
        line: usize,
        /// The primary's line.
        primary: Option<String>,
        /// The shadow's line.
        shadow: Option<String>,
    },
    /// Binary bodies: the first differing byte offset and both lengths.
    Binary {
        /// First differing byte (the shorter length when one is a prefix of the other).
        offset: usize,
        /// The primary's body length.
        primary_len: usize,
        /// The shadow's body length.
        shadow_len: usize,
    },
    /// One body is JSON and the other is not (or not parseable): compared no further.
    BodyKind {
        /// "json", "text", "binary" or "empty".
        primary: &'static str,
        /// "json", "text", "binary" or "empty".
        shadow: &'static str,
    },
}

/// The outcome of comparing two responses.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Comparison {
    /// The differences kept, at most [`MAX_DIFFERENCES`].
    pub differences: Vec<Difference>,
    /// More differences existed than were kept.
    pub truncated: bool,
}

impl Comparison {
    /// Whether the two responses agree on everything compared.
    pub fn is_match(&self) -> bool {
        self.differences.is_empty() && !self.truncated
    }
}

/// Most differences kept per comparison.
pub const MAX_DIFFERENCES: usize = 20;
/// Longest value shown, in chars; longer ones are cut to this length, ending with "…".
pub const MAX_VALUE_CHARS: usize = 200;
/// Deepest JSON nesting compared structurally; deeper documents are compared byte for byte.
pub const MAX_JSON_DEPTH: usize = 64;
/// Most distinct JSON locations [`learn`] returns from one pair of answers.
pub const MAX_NOISE_PATHS: usize = 64;

pub(super) const REDACTED: &str = "[redacted]";

/// Never compared under [`HeaderSelection::All`]: per-connection, framing, or noise by nature.
const NOT_IN_ALL: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "date",
    "x-request-id",
    "content-length",
];

/// Compares `shadow` against `primary`. `redact(name)` says whether a header's values must never be shown
/// (the caller always includes authorization, cookie, set-cookie and proxy-authorization plus the route's `redact` list):
/// a differing redacted header is still reported, with values replaced by `"[redacted]"`.
pub fn compare(
    spec: &CompareSpec,
    noise: &Noise,
    redact: &dyn Fn(&HeaderName) -> bool,
    primary: Observed<'_>,
    shadow: Observed<'_>,
) -> Comparison {
    let mut out = Collector::default();
    if spec.status && primary.status != shadow.status {
        out.push(|| Difference::Status {
            primary: primary.status.as_u16(),
            shadow: shadow.status.as_u16(),
        });
    }
    for name in compared_headers(spec, &noise.headers, primary.headers, shadow.headers) {
        if same_values(name, primary.headers, shadow.headers) {
            continue;
        }
        let show = |headers: &HeaderMap| header_text(name, headers, redact(name));
        if !out.push(|| Difference::Header {
            name: name.as_str().to_owned(),
            primary: show(primary.headers),
            shadow: show(shadow.headers),
        }) {
            break;
        }
    }
    if spec.body && !out.truncated {
        compare_bodies(spec, noise, redact, primary, shadow, &mut out);
    }
    Comparison {
        differences: out.differences,
        truncated: out.truncated,
    }
}

/// What differs between two answers of the same (legacy) upstream to the same request: header names among the
/// compared ones, and JSON locations generalised with JsonPath::generalize (at most [`MAX_NOISE_PATHS`]).
/// Status and non-JSON bodies teach nothing.
pub fn learn(spec: &CompareSpec, first: Observed<'_>, second: Observed<'_>) -> Noise {
    let headers = compared_headers(spec, &[], first.headers, second.headers)
        .into_iter()
        .filter(|name| !same_values(name, first.headers, second.headers))
        .cloned()
        .collect();
    let mut json = Vec::new();
    if spec.body
        && first.body != second.body
        && let (Kind::Json(a), Kind::Json(b)) = (classify(&first), classify(&second))
    {
        let ignore: Vec<&JsonPath> = spec.ignore_json.iter().collect();
        let mut walk = Walk::new(
            &ignore,
            |path: &[SegRef<'_>], _: Option<&Value>, _: Option<&Value>| {
                let learned = JsonPath::generalize_refs(path);
                if !json.contains(&learned) {
                    json.push(learned);
                }
                json.len() < MAX_NOISE_PATHS
            },
        );
        walk.node(&a, &b);
    }
    Noise { headers, json }
}

/// Keeps the first [`MAX_DIFFERENCES`] differences and notes whether more existed.
#[derive(Default)]
struct Collector {
    differences: Vec<Difference>,
    truncated: bool,
}

impl Collector {
    /// Keeps the difference if there is room (built only then); false once full: stop looking.
    fn push(&mut self, difference: impl FnOnce() -> Difference) -> bool {
        if self.differences.len() >= MAX_DIFFERENCES {
            self.truncated = true;
            return false;
        }
        self.differences.push(difference());
        true
    }
}

/// The headers compared, sorted by name, without duplicates, ignored or noisy ones.
fn compared_headers<'a>(
    spec: &'a CompareSpec,
    noisy: &'a [HeaderName],
    a: &'a HeaderMap,
    b: &'a HeaderMap,
) -> Vec<&'a HeaderName> {
    let mut names: Vec<&HeaderName> = match &spec.headers {
        HeaderSelection::None => return Vec::new(),
        HeaderSelection::List(names) => names.iter().collect(),
        HeaderSelection::All => a
            .keys()
            .chain(b.keys())
            .filter(|name| !NOT_IN_ALL.contains(&name.as_str()))
            .collect(),
    };
    names.retain(|name| !spec.ignore_headers.contains(name) && !noisy.contains(name));
    names.sort_unstable_by(|x, y| x.as_str().cmp(y.as_str()));
    names.dedup();
    names
}

/// Whether both sides have the same ordered list of values for `name`.
fn same_values(name: &HeaderName, a: &HeaderMap, b: &HeaderMap) -> bool {
    let a = a.get_all(name).iter().map(HeaderValue::as_bytes);
    a.eq(b.get_all(name).iter().map(HeaderValue::as_bytes))
}

fn header_text(name: &HeaderName, headers: &HeaderMap, redact: bool) -> Option<String> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if redact {
        return Some(REDACTED.to_owned());
    }
    let mut text = String::from_utf8_lossy(first.as_bytes()).into_owned();
    for value in values {
        text.push_str(", ");
        text.push_str(&String::from_utf8_lossy(value.as_bytes()));
    }
    Some(cut(text))
}

/// A body as classified for comparison.
enum Kind<'a> {
    Empty,
    Json(Value),
    Text(&'a str),
    Binary,
}

impl Kind<'_> {
    fn name(&self) -> &'static str {
        match self {
            Kind::Empty => "empty",
            Kind::Json(_) => "json",
            Kind::Text(_) => "text",
            Kind::Binary => "binary",
        }
    }

    /// The body as text, when it is text (an empty body is empty text).
    fn text(&self) -> Option<&str> {
        match self {
            Kind::Empty => Some(""),
            Kind::Text(text) => Some(text),
            Kind::Json(_) | Kind::Binary => None,
        }
    }
}

fn classify<'a>(observed: &Observed<'a>) -> Kind<'a> {
    let body = observed.body;
    if body.is_empty() {
        return Kind::Empty;
    }
    let looks_json = body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| matches!(b, b'{' | b'['));
    if (looks_json || declares_json(observed.headers))
        && nesting_within(body, MAX_JSON_DEPTH)
        && let Ok(value) = serde_json::from_slice(body)
    {
        return Kind::Json(value);
    }
    match std::str::from_utf8(body) {
        Ok(text) => Kind::Text(text),
        Err(_) => Kind::Binary,
    }
}

/// `application/json` or any `*+json` media type.
fn declares_json(headers: &HeaderMap) -> bool {
    let Some(essence) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.as_bytes().split(|&b| b == b';').next())
    else {
        return false;
    };
    let essence = essence.trim_ascii();
    essence.eq_ignore_ascii_case(b"application/json")
        || essence
            .len()
            .checked_sub(5)
            .and_then(|start| essence.get(start..))
            .is_some_and(|suffix| suffix.eq_ignore_ascii_case(b"+json"))
}

fn compare_bodies(
    spec: &CompareSpec,
    noise: &Noise,
    redact: &dyn Fn(&HeaderName) -> bool,
    primary: Observed<'_>,
    shadow: Observed<'_>,
    out: &mut Collector,
) {
    if primary.body == shadow.body {
        return;
    }
    let (p, s) = (classify(&primary), classify(&shadow));
    match (&p, &s) {
        (Kind::Json(a), Kind::Json(b)) => {
            let ignore: Vec<&JsonPath> = spec.ignore_json.iter().chain(&noise.json).collect();
            let mut walk = Walk::new(
                &ignore,
                |path: &[SegRef<'_>], a: Option<&Value>, b: Option<&Value>| {
                    // A body that echoes a redacted header (`{"authorization": ...}`)
                    // must not show it either: not at the difference's own path, nor
                    // anywhere inside a value shown whole.
                    let secret_key = |key: &str| {
                        HeaderName::from_bytes(key.as_bytes()).is_ok_and(|name| redact(&name))
                    };
                    let secret = path.iter().any(|seg| match seg {
                        SegRef::Key(key) => secret_key(key),
                        SegRef::Index(_) => false,
                    });
                    let show = |value: Option<&Value>| match value {
                        Some(_) if secret => Some(REDACTED.to_owned()),
                        value => value.map(|v| compact(v, &secret_key)),
                    };
                    out.push(|| Difference::Json {
                        path: cut(render_refs(path)),
                        primary: show(a),
                        shadow: show(b),
                    })
                },
            );
            walk.node(a, b);
        }
        (Kind::Json(_), _) | (_, Kind::Json(_)) => {
            out.push(|| Difference::BodyKind {
                primary: p.name(),
                shadow: s.name(),
            });
        }
        _ => match (p.text(), s.text()) {
            (Some(a), Some(b)) => {
                out.push(|| first_differing_line(a, b));
            }
            _ => {
                let (a, b) = (primary.body, shadow.body);
                let offset = a.iter().zip(b).position(|(x, y)| x != y);
                out.push(|| Difference::Binary {
                    offset: offset.unwrap_or(a.len().min(b.len())),
                    primary_len: a.len(),
                    shadow_len: b.len(),
                });
            }
        },
    }
}

/// Lines split on '\n' (a '\r' before it stays part of the line); an empty text has none.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    (!text.is_empty())
        .then(|| text.split('\n'))
        .into_iter()
        .flatten()
}

fn first_differing_line(a: &str, b: &str) -> Difference {
    let (mut a, mut b) = (lines(a), lines(b));
    let mut line = 1;
    loop {
        match (a.next(), b.next()) {
            (Some(x), Some(y)) if x == y => line += 1,
            (x, y) => {
                return Difference::Text {
                    line,
                    primary: x.map(|x| cut(x.to_owned())),
                    shadow: y.map(|y| cut(y.to_owned())),
                };
            }
        }
    }
}

#[cfg(test)]
#[path = "compare_tests.rs"]
mod tests;
