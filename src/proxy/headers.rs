//! Header rewriting: hop-by-hop removal and forwarding headers.
//!
//! Pure functions over `HeaderMap`, applied in both directions.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `X-Request-Id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
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

/// Names a forwarding proxy must never let `Connection` remove: ficus sets them itself.
fn is_protected(name: &HeaderName) -> bool {
    name == X_FORWARDED_FOR
        || name == X_FORWARDED_PROTO
        || name == X_FORWARDED_HOST
        || name == X_REQUEST_ID
        || name == header::HOST
}

/// Removes hop-by-hop headers: every name listed in any `Connection` line, then the fixed set.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip(headers, false);
}

/// Removes from a client's request the hop-by-hop headers and the headers only ficus may
/// set ([`X_FICUS_SHADOW`]).
pub fn strip_request(headers: &mut HeaderMap) {
    strip(headers, true);
}

fn strip(headers: &mut HeaderMap, request: bool) {
    // Most messages carry none of these: one pass over the names present is far
    // cheaper than a hash lookup per name (this runs twice per request).
    if !headers
        .keys()
        .any(|name| HOP_BY_HOP.contains(name) || (request && *name == X_FICUS_SHADOW))
    {
        return;
    }
    if request {
        headers.remove(&X_FICUS_SHADOW);
    }
    if headers.contains_key(header::CONNECTION) {
        // Collect first: the names borrow the map we are about to change.
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .filter(|name| !is_protected(name))
            .collect();
        for name in listed {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Sets the forwarding headers on a request bound upstream: appends the peer
/// (`peer_value`, see [`ip_header_value`]) to `X-Forwarded-For`, sets
/// `X-Forwarded-Proto` and `X-Forwarded-Host`.
pub fn set_forwarding(
    headers: &mut HeaderMap,
    peer_value: &HeaderValue,
    host: Option<&HeaderValue>,
) {
    match headers.get(&X_FORWARDED_FOR) {
        Some(existing) => {
            // Several incoming lines are folded into one, as RFC 9110 §5.3 allows.
            let mut joined: Vec<u8> = Vec::with_capacity(64);
            for line in headers.get_all(&X_FORWARDED_FOR) {
                if !joined.is_empty() {
                    joined.extend_from_slice(b", ");
                }
                joined.extend_from_slice(line.as_bytes());
            }
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(peer_value.as_bytes());
            let value = HeaderValue::from_bytes(&joined).unwrap_or_else(|_| existing.clone());
            headers.insert(&X_FORWARDED_FOR, value);
        }
        None => {
            headers.insert(&X_FORWARDED_FOR, peer_value.clone());
        }
    }
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    match host {
        Some(host) => headers.insert(&X_FORWARDED_HOST, host.clone()),
        None => headers.remove(&X_FORWARDED_HOST),
    };
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
    !value.is_empty()
        && value.len() <= 255
        && value.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'[' | b']' | b'%')
        })
}

/// A request id the client sent, if it is reasonable to pass on: short and printable.
pub fn usable_request_id(headers: &HeaderMap) -> Option<&HeaderValue> {
    headers.get(&X_REQUEST_ID).filter(|v| {
        !v.is_empty() && v.len() <= 128 && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
    })
}

/// A fresh random request id: 32 hex digits.
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    let bits = fastrand::u128(..);
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = HEX[((bits >> (i * 4)) & 0xf) as usize];
    }
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn strips_every_connection_line_and_fixed_set() {
        let mut headers = map(&[
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
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut headers);
        let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn connection_cannot_remove_forwarding_headers() {
        let mut headers = map(&[
            ("connection", "x-forwarded-for, host"),
            ("x-forwarded-for", "1.2.3.4"),
            ("host", "a"),
        ]);
        strip_hop_by_hop(&mut headers);
        assert!(headers.contains_key("x-forwarded-for"));
        assert!(headers.contains_key("host"));
    }

    #[test]
    fn appends_to_forwarded_for() {
        let mut headers = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
        ]);
        let local = ip_header_value("127.0.0.1".parse().unwrap());
        set_forwarding(
            &mut headers,
            &local,
            Some(&HeaderValue::from_static("example.com")),
        );
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 10.0.0.2, 127.0.0.1");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], "example.com");
        let mut fresh = HeaderMap::new();
        set_forwarding(
            &mut fresh,
            &ip_header_value("::ffff:127.0.0.2".parse().unwrap()),
            None,
        );
        assert_eq!(fresh["x-forwarded-for"], "127.0.0.2");
        assert!(!fresh.contains_key("x-forwarded-host"));
    }

    #[test]
    fn request_ids() {
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert_ne!(id, new_request_id());
        assert!(usable_request_id(&map(&[("x-request-id", "abc-123")])).is_some());
        assert!(usable_request_id(&map(&[("x-request-id", "has space")])).is_none());
        assert!(usable_request_id(&map(&[("x-request-id", &"a".repeat(200))])).is_none());
    }
}
