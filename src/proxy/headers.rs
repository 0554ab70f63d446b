//! Header rewriting: hop-by-hop removal and forwarding headers.
//!
//! Pure functions over a message's [`Fields`], applied in both directions.

use std::collections::HashSet;
use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::http1::codec::Field;
pub use crate::message::X_REQUEST_ID;
use crate::message::{Fields, RequestId, is_named};

/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Ficus-Shadow`: marks mirrored requests. Only ficus sets it; a client's own is removed,
/// or a client could make a service treat a real request as shadow traffic (and skip a write).
pub static X_FICUS_SHADOW: HeaderName = HeaderName::from_static("x-ficus-shadow");

/// Headers that describe one connection, never the message (RFC 9110 §7.6.1),
/// plus the legacy ones proxies are known to see, and proxy credentials, which
/// are meant for a proxy and must not leak to the monolith or back to the client.
static HOP_BY_HOP: [HeaderName; 10] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("http2-settings"),
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// Whether `name` (in any case) is one of [`HOP_BY_HOP`]: its length rules out almost
/// every other name at once, which comparing it with each of the ten did not (about
/// 300 instructions per request).
fn is_hop_by_hop(name: &[u8]) -> bool {
    let is = |known: &str| is_named(name, known);
    let hit = match name.len() {
        2 => is("te"),
        7 => is("trailer") || is("upgrade"),
        10 => is("connection") || is("keep-alive"),
        14 => is("http2-settings"),
        16 => is("proxy-connection"),
        17 => is("transfer-encoding"),
        18 => is("proxy-authenticate"),
        19 => is("proxy-authorization"),
        _ => false,
    };
    debug_assert_eq!(
        hit,
        HOP_BY_HOP
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h.as_str().as_bytes()))
    );
    hit
}

/// Whether `name` (in any case) is one of the fields ficus sets on every request it
/// forwards: the `X-Forwarded-*` ones and `X-Request-Id`. Told apart by length first,
/// like [`is_hop_by_hop`].
fn is_forwarding(name: &[u8]) -> bool {
    let is = |known: &HeaderName| is_named(name, known.as_str());
    match name.len() {
        12 => is(&X_REQUEST_ID),
        15 => is(&X_FORWARDED_FOR),
        16 => is(&X_FORWARDED_HOST),
        17 => is(&X_FORWARDED_PROTO),
        _ => false,
    }
}

/// Names a forwarding proxy must never let `Connection` remove (given in lower case):
/// ficus sets them itself.
fn is_protected(name: &[u8]) -> bool {
    is_forwarding(name) || name == header::HOST.as_str().as_bytes()
}

/// Removes a response's hop-by-hop fields: every name listed in any `Connection` line,
/// then the fixed set.
pub fn strip_hop_by_hop(fields: &mut Fields) {
    strip(fields, false);
}

/// Removes from a client's request the hop-by-hop fields and those only ficus may set
/// ([`X_FICUS_SHADOW`]).
pub fn strip_request(fields: &mut Fields) {
    strip(fields, true);
}

/// Removes hop-by-hop fields from trailers (connection-specific ones may not appear
/// there, RFC 9110 §6.5.1). Trailers are rare: they take a detour through [`Fields`].
pub fn strip_trailers(trailers: &mut HeaderMap) {
    let mut fields = Fields::from_map(std::mem::take(trailers));
    strip(&mut fields, false);
    *trailers = fields.to_map();
}

fn strip(fields: &mut Fields, request: bool) {
    let shadow = |name: &[u8]| request && is_named(name, X_FICUS_SHADOW.as_str());
    // Most messages carry none: one pass over the names finds that out.
    if !fields.any_name(|name| is_hop_by_hop(name) || shadow(name)) {
        return;
    }
    let listed = connection_listed(fields.get_all(header::CONNECTION.as_str()));
    let mut lower = Vec::new();
    fields.remove_where(|name| {
        if is_hop_by_hop(name) || shadow(name) {
            return true;
        }
        if listed.is_empty() {
            return false;
        }
        lower.clear();
        lower.extend(name.iter().map(u8::to_ascii_lowercase));
        listed.contains(&lower)
    });
}

/// The names `Connection` values list, lower case, except those ficus sets itself. A
/// set, so that each line is looked up once however many names a client lists (and
/// keyed by the standard library's random hash, as a client chooses them).
fn connection_listed<'v>(values: impl Iterator<Item = &'v [u8]>) -> HashSet<Vec<u8>> {
    values
        .flat_map(|v| v.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|name| !name.is_empty())
        .map(<[u8]>::to_ascii_lowercase)
        .filter(|name| !is_protected(name))
        .collect()
}

/// The forwarding headers of a request bound upstream: the client's
/// `X-Forwarded-For` with the peer appended, `X-Forwarded-Proto: http`, the Host the
/// client meant as `X-Forwarded-Host`, and the request id.
///
/// They are written on the wire after the request's own headers
/// ([`Forwarding::fields`]) instead of being inserted into its header map: growing the
/// map hyper sized for the client's headers cost about 2k instructions per request.
#[derive(Debug, Clone)]
pub struct Forwarding {
    forwarded_for: HeaderValue,
    host: Option<Bytes>,
    request_id: RequestId,
}

static HTTP: HeaderValue = HeaderValue::from_static("http");

impl Forwarding {
    /// Takes the client's own forwarding fields and request id out of `fields` (its
    /// `X-Forwarded-For` lines are kept, folded into one with `peer_value` appended, as
    /// RFC 9110 §5.3 allows).
    pub fn take(
        fields: &mut Fields,
        peer_value: &HeaderValue,
        host: Option<Bytes>,
        request_id: RequestId,
    ) -> Self {
        let mut forwarded_for = peer_value.clone();
        // Most requests carry none of these: one pass over the names finds that out.
        if fields.any_name(is_forwarding) {
            if fields.contains(X_FORWARDED_FOR.as_str()) {
                let mut joined: Vec<u8> = Vec::with_capacity(64);
                for line in fields.get_all(X_FORWARDED_FOR.as_str()) {
                    joined.extend_from_slice(line);
                    joined.extend_from_slice(b", ");
                }
                joined.extend_from_slice(peer_value.as_bytes());
                if let Ok(value) = HeaderValue::from_bytes(&joined) {
                    forwarded_for = value;
                }
            }
            fields.remove_where(is_forwarding);
        }
        Forwarding {
            forwarded_for,
            host,
            request_id,
        }
    }

    /// The fields to write after the request's own headers; the first `n` are used.
    pub fn fields(&self) -> ([Field<'_>; 4], usize) {
        let fields = [
            (&X_FORWARDED_FOR, self.forwarded_for.as_bytes()),
            (&X_FORWARDED_PROTO, HTTP.as_bytes()),
            (&X_REQUEST_ID, self.request_id.as_bytes()),
            (
                &X_FORWARDED_HOST,
                self.host.as_deref().unwrap_or(HTTP.as_bytes()),
            ),
        ];
        (fields, if self.host.is_some() { 4 } else { 3 })
    }

    /// Adds the fields to `fields`, for a copy of the request (a shadow's).
    pub fn apply(&self, fields: &mut Fields) {
        fields.append(X_FORWARDED_FOR.clone(), self.forwarded_for.clone());
        fields.append(X_FORWARDED_PROTO.clone(), HTTP.clone());
        fields.append(X_REQUEST_ID.clone(), self.request_id.to_value());
        // A valid Host (`is_valid_host`) is a valid header value.
        if let Some(host) = &self.host
            && let Ok(host) = HeaderValue::from_maybe_shared(host.clone())
        {
            fields.append(X_FORWARDED_HOST.clone(), host);
        }
    }
}

/// A client IP as a header value (IPv4-mapped IPv6 shown as IPv4). Computed once per connection.
pub fn ip_header_value(ip: IpAddr) -> HeaderValue {
    // An IP address is always a valid header value; the fallback is unreachable.
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    HeaderValue::from_str(&ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// Whether a Host value is a plain `host[:port]`: registered-name, IPv4 or
/// bracketed IPv6 characters only, no userinfo, no path, no spaces.
pub fn is_valid_host(value: &[u8]) -> bool {
    !value.is_empty() && value.len() <= 255 && value.iter().all(|&b| HOST_BYTE[usize::from(b)])
}

/// The bytes [`is_valid_host`] allows, as a table: it runs on every request.
static HOST_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(c, b'-' | b'.' | b'_' | b'~' | b':' | b'[' | b']' | b'%');
        b += 1;
    }
    table
};

/// The request's id: the one the client sent if it is reasonable to pass on (short
/// and printable), else a fresh one.
pub fn request_id(fields: &Fields) -> RequestId {
    let usable = |v: &[u8]| !v.is_empty() && v.len() <= 128 && v.iter().all(u8::is_ascii_graphic);
    match fields.value(X_REQUEST_ID.as_str()) {
        Some(value) if usable(value.as_bytes()) => RequestId::Given(value),
        _ => RequestId::random(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A head: `start` (a request or status line), the fields, the empty line.
    fn head(start: &str, pairs: &[(&str, &str)]) -> bytes::BytesMut {
        let mut head = format!("{start}\r\n");
        for (name, value) in pairs {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        bytes::BytesMut::from(head.as_bytes())
    }

    /// A request's fields as the server receives them.
    fn map(pairs: &[(&str, &str)]) -> Fields {
        let mut buf = head("GET / HTTP/1.1", pairs);
        crate::http1::codec::parse_request_head(&mut buf, 64 * 1024)
            .unwrap()
            .unwrap()
            .head
            .fields
    }

    #[test]
    fn the_length_filter_knows_every_hop_by_hop_name() {
        for name in &HOP_BY_HOP {
            assert!(is_hop_by_hop(name.as_str().as_bytes()), "{name}");
            assert!(
                is_hop_by_hop(name.as_str().to_uppercase().as_bytes()),
                "{name}"
            );
        }
        for name in ["host", "accept", "content-length", "x-forwarded-for", "tee"] {
            assert!(!is_hop_by_hop(name.as_bytes()), "{name}");
        }
    }

    /// A response's fields as the upstream client receives them.
    fn received(pairs: &[(&str, &str)]) -> Fields {
        let mut buf = head("HTTP/1.1 200 OK", pairs);
        crate::http1::codec::parse_response_head(&mut buf)
            .unwrap()
            .unwrap()
            .fields
    }

    fn names(fields: &Fields) -> Vec<String> {
        let names = fields
            .iter()
            .map(|(n, _)| String::from_utf8_lossy(n).into_owned());
        names.collect()
    }

    #[test]
    fn strips_every_connection_line_and_fixed_set() {
        let mut headers = received(&[
            ("connection", "close, X-Secret"),
            ("connection", "x-other"),
            ("x-secret", "1"),
            ("x-other", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("X-Kept", "1"),
            ("Keep-Alive", "timeout=5"),
        ]);
        strip_hop_by_hop(&mut headers);
        assert_eq!(names(&headers), ["X-Kept"]);

        let mut request = map(&[
            ("connection", "close, X-Secret"),
            ("X-SECRET", "1"),
            ("X-Ficus-Shadow", "1"),
            ("upgrade", "websocket"),
            ("x-kept", "1"),
        ]);
        strip_request(&mut request);
        assert_eq!(names(&request), ["x-kept"]);
    }

    #[test]
    fn a_long_connection_list_removes_exactly_the_lines_it_names() {
        // A client may list thousands of names: each line is looked up once.
        let mut listed: Vec<String> = (0..5_000).map(|i| format!("X-L{i}")).collect();
        listed.push("x-forwarded-for".to_owned());
        let mut pairs = vec![("Connection".to_owned(), listed.join(", "))];
        for i in (0..10_000).step_by(1_000) {
            pairs.push((format!("x-l{i}"), "1".to_owned()));
        }
        pairs.push(("X-Forwarded-For".to_owned(), "10.0.0.1".to_owned()));
        pairs.push(("x-l4999".to_owned(), "1".to_owned()));
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (&n[..], &v[..])).collect();
        let mut request = map(&pairs);
        strip_request(&mut request);
        assert_eq!(
            names(&request),
            [
                "x-l5000",
                "x-l6000",
                "x-l7000",
                "x-l8000",
                "x-l9000",
                "X-Forwarded-For"
            ]
        );
    }

    #[test]
    fn connection_cannot_remove_forwarding_headers() {
        let mut headers = received(&[
            ("connection", "x-forwarded-for, host"),
            ("x-forwarded-for", "1.2.3.4"),
            ("host", "a"),
        ]);
        strip_hop_by_hop(&mut headers);
        assert_eq!(names(&headers), ["x-forwarded-for", "host"]);
    }

    fn written(forwarding: &Forwarding) -> Vec<(String, String)> {
        let (fields, n) = forwarding.fields();
        fields[..n]
            .iter()
            .map(|(name, value)| (name.to_string(), String::from_utf8(value.to_vec()).unwrap()))
            .collect()
    }

    #[test]
    fn appends_to_forwarded_for_and_replaces_the_rest() {
        let mut headers = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
            ("X-Forwarded-Proto", "https"),
            ("X-FORWARDED-HOST", "evil.example"),
            ("X-Request-Id", "client-id"),
            ("x-kept", "k"),
        ]);
        let local = ip_header_value("127.0.0.1".parse().unwrap());
        let host = Some(Bytes::from_static(b"example.com"));
        let forwarding = Forwarding::take(
            &mut headers,
            &local,
            host,
            RequestId::Given(HeaderValue::from_static("our-id")),
        );
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            written(&forwarding),
            pairs(&[
                ("x-forwarded-for", "10.0.0.1, 10.0.0.2, 127.0.0.1"),
                ("x-forwarded-proto", "http"),
                ("x-request-id", "our-id"),
                ("x-forwarded-host", "example.com"),
            ])
        );
        assert_eq!(
            names(&headers),
            ["x-kept"],
            "the client's own are taken out"
        );

        let mut fresh = Fields::new();
        let peer = ip_header_value("::ffff:127.0.0.2".parse().unwrap());
        let forwarding = Forwarding::take(
            &mut fresh,
            &peer,
            None,
            RequestId::Given(HeaderValue::from_static("id")),
        );
        assert_eq!(
            written(&forwarding),
            pairs(&[
                ("x-forwarded-for", "127.0.0.2"),
                ("x-forwarded-proto", "http"),
                ("x-request-id", "id"),
            ])
        );
        forwarding.apply(&mut fresh);
        assert_eq!(fresh.get("x-forwarded-for"), Some(&b"127.0.0.2"[..]));
        assert!(!fresh.contains("x-forwarded-host"));
    }

    #[test]
    fn valid_hosts() {
        for host in [
            "example.com",
            "127.0.0.1:8080",
            "[::1]:80",
            "a-b_c~d%2e",
            "X",
        ] {
            assert!(is_valid_host(host.as_bytes()), "{host:?}");
        }
        let long = "a".repeat(256);
        for host in ["", "a b", "user@host", "host/path", "h\tb", "é.com", &long] {
            assert!(!is_valid_host(host.as_bytes()), "{host:?}");
        }
        // Every byte the table allows is also a valid header value byte.
        for b in 0..=255u8 {
            let allowed = b.is_ascii_alphanumeric() || b"-._~:[]%".contains(&b);
            assert_eq!(is_valid_host(&[b]), allowed, "{b}");
            if allowed {
                assert!(HeaderValue::from_bytes(&[b]).is_ok(), "{b}");
            }
        }
    }

    #[test]
    fn request_ids() {
        // Every made id is whole, hex and fresh.
        let ids: HashSet<_> = (0..1000).map(|_| request_id(&map(&[]))).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            assert!(matches!(id, RequestId::Made(_)), "{id:?}");
            assert_eq!(id.as_bytes().len(), 32);
            assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit), "{id:?}");
            assert_eq!(id.to_value().as_bytes(), id.as_bytes());
            assert_eq!(id.to_string().as_bytes(), id.as_bytes());
        }
        // Every digit shows up in every position.
        for position in 0..32 {
            let seen: HashSet<u8> = ids.iter().map(|id| id.as_bytes()[position]).collect();
            assert_eq!(seen.len(), 16, "position {position}: {seen:?}");
        }
        let given = request_id(&map(&[("x-request-id", "abc-123")]));
        assert_eq!(given, RequestId::Given(HeaderValue::from_static("abc-123")));
        assert_eq!(given.to_string(), "abc-123");
        for unusable in ["has space", &"a".repeat(200), ""] {
            let id = request_id(&map(&[("x-request-id", unusable)]));
            assert!(matches!(id, RequestId::Made(_)), "{unusable:?}");
        }
    }
}
