//! Messages as ficus relays them: header fields kept as they arrived ([`Fields`]), a
//! request ([`Call`]: its [`Head`] and body) and a response on its way to the client
//! ([`Reply`]). HTTP/2 requests and answers are converted at hyper's edge.
//!
//! An HTTP/1.1 head is read into one buffer; [`Fields`] keeps that buffer and where
//! each line's name and value sit in it, instead of copying every field into an
//! `http::HeaderMap`. Building a map and dropping it cost about 1.6k instructions per
//! message under callgrind: a relay only needs to look up a few names, drop a few
//! lines and write the rest out again, which the spans do with no allocation but
//! their own vector, and writes back as runs of the original bytes.
//!
//! Lookups compare names case-insensitively; names keep the case the sender used.
//! Fields ficus adds go in a second list, written after the received lines.

use bytes::{Bytes, BytesMut};
use http::header::{COOKIE, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};

/// `X-Request-Id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A request's id, as logged, sent upstream and answered with: the client's own when
/// it is usable, else 32 random hex digits made here.
///
/// A made id is kept inline: a header value of its own would cost an allocation, a
/// free and a byte check per request (about 300 instructions under callgrind).
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum RequestId {
    /// Made by ficus: lower-case hex digits.
    Made([u8; 32]),
    /// The client's `X-Request-Id`, short and printable.
    Given(HeaderValue),
}

impl RequestId {
    /// A fresh random id: 128 random bits as 32 hex digits.
    pub fn random() -> Self {
        /// Each byte of `n`, 0 to 15, as its hex digit: 9 and below are offset from
        /// `'0'`, 10 and above 39 more (to `'a'`). No byte carries into the next.
        fn digits(n: u64) -> [u8; 8] {
            const ONES: u64 = 0x0101_0101_0101_0101;
            let letters = ((n + 6 * ONES) >> 4) & ONES;
            (n + u64::from(b'0') * ONES + 39 * letters).to_le_bytes()
        }
        const LOW: u64 = 0x0f0f_0f0f_0f0f_0f0f;
        let mut text = [0u8; 32];
        for (chunk, bits) in text
            .chunks_exact_mut(16)
            .zip([fastrand::u64(..), fastrand::u64(..)])
        {
            // The digits of the low and the high nibbles: an order of its own, but every
            // bit is used once.
            chunk[..8].copy_from_slice(&digits(bits & LOW));
            chunk[8..].copy_from_slice(&digits((bits >> 4) & LOW));
        }
        RequestId::Made(text)
    }

    /// The id's bytes, as written in `X-Request-Id`.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            RequestId::Made(text) => text,
            RequestId::Given(value) => value.as_bytes(),
        }
    }

    /// The id as a header value, for HTTP/2 and for copies of a request.
    pub fn to_value(&self) -> HeaderValue {
        match self {
            // Hex digits are always a valid header value.
            RequestId::Made(text) => {
                HeaderValue::from_bytes(text).unwrap_or(HeaderValue::from_static("0"))
            }
            RequestId::Given(value) => value.clone(),
        }
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// A request's head as ficus carries it.
#[derive(Debug, Clone)]
pub struct Head {
    /// The method.
    pub method: Method,
    /// The target: as the client sent it, origin-form once rewritten for the upstream.
    pub uri: Uri,
    /// The version the client spoke.
    pub version: Version,
    /// The header fields.
    pub fields: Fields,
}

/// A request: its head and its body.
#[derive(Debug)]
pub struct Call<B> {
    /// The head.
    pub head: Head,
    /// The body.
    pub body: B,
}

impl<B> Call<B> {
    /// An HTTP/2 request (from hyper's server). Its cookie fields, one per cookie in
    /// HTTP/2, are joined into one, as HTTP/1.1 upstreams expect (RFC 9113 §8.2.3).
    pub fn from_http2(request: Request<B>) -> Self {
        let (parts, body) = request.into_parts();
        let mut fields = Fields::from_map(parts.headers);
        if fields.get_all(COOKIE.as_str()).nth(1).is_some() {
            fields.join_cookies();
        }
        Call {
            head: Head {
                method: parts.method,
                uri: parts.uri,
                version: parts.version,
                fields,
            },
            body,
        }
    }
}

/// A response on its way to the client: the upstream's, or ficus's own.
#[derive(Debug)]
pub struct Reply<B> {
    /// The status.
    pub status: StatusCode,
    /// The upstream's reason phrase, when it is not the status's usual one
    /// (`403 Token Expired`): HTTP/1.1 clients get it.
    pub reason: Option<Bytes>,
    /// The header fields, hop-by-hop ones already removed.
    pub fields: Fields,
    /// The `x-request-id` ficus answers with, written after `fields` (which hold no
    /// other). Kept apart so that adding it costs no allocation.
    pub request_id: Option<RequestId>,
    /// The body.
    pub body: B,
}

impl<B> Reply<B> {
    /// A reply with `status`, no fields and `body`.
    pub fn new(status: StatusCode, body: B) -> Self {
        Reply {
            status,
            reason: None,
            fields: Fields::new(),
            request_id: None,
            body,
        }
    }

    /// The same reply with its body turned into another.
    pub fn map<C>(self, f: impl FnOnce(B) -> C) -> Reply<C> {
        Reply {
            status: self.status,
            reason: self.reason,
            fields: self.fields,
            request_id: self.request_id,
            body: f(self.body),
        }
    }

    /// The reply as an `http` response, for hyper to send (HTTP/2 has no reason phrase).
    pub fn into_response(self) -> Response<B> {
        let mut response = Response::new(self.body);
        *response.status_mut() = self.status;
        let mut headers = self.fields.to_map();
        if let Some(id) = self.request_id {
            headers.insert(&X_REQUEST_ID, id.to_value());
        }
        *response.headers_mut() = headers;
        response
    }
}

/// Where one received header line sits in its head: name and value byte ranges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Span {
    pub name: (u32, u32),
    pub value: (u32, u32),
}

impl Span {
    /// Whether this line's name is `lower` (a lower-case name), in any case.
    fn is(&self, bytes: &[u8], lower: &str) -> bool {
        (self.name.1 - self.name.0) as usize == lower.len() && is_named(self.name(bytes), lower)
    }

    fn name<'b>(&self, bytes: &'b [u8]) -> &'b [u8] {
        &bytes[self.name.0 as usize..self.name.1 as usize]
    }

    fn value<'b>(&self, bytes: &'b [u8]) -> &'b [u8] {
        &bytes[self.value.0 as usize..self.value.1 as usize]
    }
}

/// The header fields of one message: lines received (shared with the head's bytes)
/// followed by the fields added since.
#[derive(Debug, Clone, Default)]
pub struct Fields {
    /// The received head; every span points into it.
    head: Bytes,
    /// The received lines still present, in arrival order.
    lines: Vec<Span>,
    /// Fields added since (and, for a message that did not arrive as HTTP/1.1 bytes,
    /// all of them).
    added: Vec<(HeaderName, HeaderValue)>,
}

impl Fields {
    /// No fields.
    pub fn new() -> Self {
        Self::default()
    }

    /// The lines at `spans` of `head`. The parser validated every name as a token and
    /// every value as field content, and bounded `head` to far less than 4 GiB.
    pub(crate) fn received(head: Bytes, spans: Vec<Span>) -> Self {
        debug_assert!(spans.iter().all(|s| s.value.1 as usize <= head.len()));
        Fields {
            head,
            lines: spans,
            added: Vec::new(),
        }
    }

    /// The fields of `map`, in its order.
    pub fn from_map(map: HeaderMap) -> Self {
        let mut added = Vec::with_capacity(map.len());
        // A map yields each name once, before the first of its values.
        let mut name = None;
        for (next, value) in map {
            if next.is_some() {
                name = next;
            }
            if let Some(name) = &name {
                added.push((name.clone(), value));
            }
        }
        Fields {
            added,
            ..Self::default()
        }
    }

    /// How many fields there are.
    pub fn len(&self) -> usize {
        self.lines.len() + self.added.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every field as (name, value) bytes, received lines first, in order. Received
    /// names keep the sender's case.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let head = &self.head[..];
        let received = self
            .lines
            .iter()
            .map(move |s| (s.name(head), s.value(head)));
        let added = self
            .added
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
        received.chain(added)
    }

    /// The values of every field named `name` (lower case), in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        let head = &self.head[..];
        let received = self.lines.iter().filter(move |s| s.is(head, name));
        let added = self.added.iter().filter(move |(n, _)| n.as_str() == name);
        received
            .map(move |s| s.value(head))
            .chain(added.map(|(_, v)| v.as_bytes()))
    }

    /// The first received line named `name`. Lookups are linear: a head has a few
    /// fields, and comparing lengths first rules out most of them at once.
    fn line(&self, name: &str) -> Option<&Span> {
        let head = &self.head[..];
        self.lines.iter().find(|s| s.is(head, name))
    }

    fn added(&self, name: &str) -> Option<&HeaderValue> {
        let found = self.added.iter().find(|(n, _)| n.as_str() == name);
        found.map(|(_, v)| v)
    }

    /// The value of the first field named `name` (lower case).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        match self.line(name) {
            Some(span) => Some(span.value(&self.head)),
            None => self.added(name).map(HeaderValue::as_bytes),
        }
    }

    /// Whether a field named `name` (lower case) is present.
    pub fn contains(&self, name: &str) -> bool {
        self.line(name).is_some() || self.added(name).is_some()
    }

    /// The first field named `name` as a header value, sharing the head's bytes.
    pub fn value(&self, name: &str) -> Option<HeaderValue> {
        match self.line(name) {
            Some(span) => {
                let range = span.value.0 as usize..span.value.1 as usize;
                HeaderValue::from_maybe_shared(self.head.slice(range)).ok()
            }
            None => self.added(name).cloned(),
        }
    }

    /// The first field named `name` (lower case) as bytes, sharing the head's: for a
    /// value already checked, this skips a header value's own byte check.
    pub fn shared(&self, name: &str) -> Option<Bytes> {
        match self.line(name) {
            Some(span) => Some(
                self.head
                    .slice(span.value.0 as usize..span.value.1 as usize),
            ),
            None => self
                .added(name)
                .map(|value| Bytes::copy_from_slice(value.as_bytes())),
        }
    }

    /// Whether any field's name satisfies `test`, given the name as received (or in
    /// lower case, as `HeaderName` keeps it, for an added one).
    pub fn any_name(&self, mut test: impl FnMut(&[u8]) -> bool) -> bool {
        let head = &self.head[..];
        self.lines.iter().any(|s| test(s.name(head)))
            || self.added.iter().any(|(n, _)| test(n.as_str().as_bytes()))
    }

    /// Removes every field named `name` (lower case).
    pub fn remove(&mut self, name: &str) {
        if self.line(name).is_some() {
            let head = &self.head[..];
            self.lines.retain(|s| !s.is(head, name));
        }
        self.added.retain(|(n, _)| n.as_str() != name);
    }

    /// Removes every field whose name satisfies `test` (given the received bytes).
    pub fn remove_where(&mut self, mut test: impl FnMut(&[u8]) -> bool) {
        let head = &self.head;
        self.lines.retain(|s| !test(s.name(head)));
        self.added.retain(|(n, _)| !test(n.as_str().as_bytes()));
    }

    /// Adds a field after the others.
    pub fn append(&mut self, name: HeaderName, value: HeaderValue) {
        self.added.push((name, value));
    }

    /// Replaces every field named `name` with one holding `value`.
    pub fn insert(&mut self, name: HeaderName, value: HeaderValue) {
        self.remove(name.as_str());
        self.append(name, value);
    }

    /// Joins every Cookie field into one, after the others (`a=1; b=2`): HTTP/1.1
    /// upstreams expect one line (RFC 6265 §5.4), and HTTP/2 sends a field per cookie.
    pub fn join_cookies(&mut self) {
        let mut joined = BytesMut::new();
        for cookie in self.get_all(COOKIE.as_str()) {
            if !joined.is_empty() {
                joined.extend_from_slice(b"; ");
            }
            joined.extend_from_slice(cookie);
        }
        // Valid values joined with "; " make a valid value.
        if let Ok(value) = HeaderValue::from_maybe_shared(joined.freeze()) {
            self.insert(COOKIE, value);
        }
    }

    /// The fields as a header map (names in lower case). A received line whose
    /// name or value `http` refuses is left out; the parser accepts none such.
    pub fn to_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.len());
        let head = &self.head;
        for span in &self.lines {
            let range = span.value.0 as usize..span.value.1 as usize;
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(span.name(head)),
                HeaderValue::from_maybe_shared(head.slice(range)),
            ) {
                map.append(name, value);
            }
        }
        for (name, value) in &self.added {
            map.append(name.clone(), value.clone());
        }
        map
    }

    /// Writes every field as `name: value` lines to `out`. Received lines that still
    /// sit next to each other, ended by CRLF, are copied as one run of their bytes.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let head = &self.head[..];
        let mut lines = self.lines.iter();
        if let Some(first) = lines.next() {
            let mut run = (first.name.0 as usize, first.value.1 as usize);
            for span in lines {
                let (start, end) = (span.name.0 as usize, span.value.1 as usize);
                if head.get(run.1..start) == Some(b"\r\n") {
                    run.1 = end;
                } else {
                    write_run(&head[run.0..run.1], out);
                    run = (start, end);
                }
            }
            write_run(&head[run.0..run.1], out);
        }
        for (name, value) in &self.added {
            write_field(name.as_str().as_bytes(), value.as_bytes(), out);
        }
    }
}

/// Whether `name`, in any case, is `lower` (a lower-case name). Faster than
/// `eq_ignore_ascii_case`, which lower-cases both sides of every byte: names arrive
/// in lower case (hyper, HTTP/2) or with a few capitals (`Content-Length`), and
/// differing names usually differ at their first byte.
pub(crate) fn is_named(name: &[u8], lower: &str) -> bool {
    let lower = lower.as_bytes();
    name.len() == lower.len()
        && name
            .iter()
            .zip(lower)
            .all(|(&a, &b)| a == b || a.to_ascii_lowercase() == b)
}

fn write_run(run: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(run);
    out.extend_from_slice(b"\r\n");
}

/// Writes one `name: value` line.
pub fn write_field(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
#[path = "message_tests.rs"]
mod tests;
