use bytes::BytesMut;
use http::header::{CACHE_CONTROL, HeaderMap, HeaderName, HeaderValue};

use super::*;
use crate::http1::codec::parse_response_head;

/// The fields of a response head as the upstream client receives them.
fn received(head: &str) -> Fields {
    let mut buf = BytesMut::from(head.as_bytes());
    parse_response_head(&mut buf)
        .expect("valid head")
        .expect("complete head")
        .fields
}

fn written(fields: &Fields) -> String {
    let mut out = Vec::new();
    fields.write_to(&mut out);
    String::from_utf8(out).expect("ASCII fields")
}

#[test]
fn lookups_ignore_case_and_keep_order() {
    let fields =
        received("HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Type: text/plain\r\nx-a: 2\r\n\r\n");
    assert_eq!(fields.len(), 3);
    assert_eq!(fields.get("content-type"), Some(&b"text/plain"[..]));
    assert_eq!(fields.get_all("x-a").collect::<Vec<_>>(), [b"1", b"2"]);
    assert!(fields.contains("x-a"));
    assert!(!fields.contains("x-b"));
    assert!(!fields.contains("x-"), "a prefix of a name is not the name");
    assert_eq!(fields.value("x-a"), Some(HeaderValue::from_static("1")));
}

#[test]
fn untouched_lines_are_written_as_they_came() {
    let head =
        "HTTP/1.1 200 OK\r\nServer: legacy\r\nContent-Type:text/plain\r\nX-Trace:  a b\r\n\r\n";
    let fields = received(head);
    assert_eq!(
        written(&fields),
        "Server: legacy\r\nContent-Type:text/plain\r\nX-Trace:  a b\r\n"
    );
}

#[test]
fn removed_lines_break_the_run_and_added_ones_follow() {
    let mut fields = received("HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\nb: 4\r\nD: 5\r\n\r\n");
    fields.remove("b");
    fields.append(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    assert_eq!(
        written(&fields),
        "A: 1\r\nC: 3\r\nD: 5\r\ncache-control: no-store\r\n"
    );
    fields.insert(
        HeaderName::from_static("c"),
        HeaderValue::from_static("new"),
    );
    assert_eq!(
        written(&fields),
        "A: 1\r\nD: 5\r\ncache-control: no-store\r\nc: new\r\n"
    );
}

#[test]
fn bare_line_feeds_and_trailing_spaces_are_not_copied() {
    // httparse accepts LF alone and drops trailing whitespace from values; what is
    // written always ends each line with CRLF, right after the value.
    let fields = received("HTTP/1.1 200 OK\nA: 1\nB: 2  \r\nC: 3\r\n\r\n");
    assert_eq!(fields.get("b"), Some(&b"2"[..]));
    assert_eq!(written(&fields), "A: 1\r\nB: 2\r\nC: 3\r\n");
}

#[test]
fn converts_to_and_from_a_header_map() {
    let mut fields =
        received("HTTP/1.1 200 OK\r\nX-A: 1\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\n\r\n");
    fields.append(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let map = fields.to_map();
    assert_eq!(map.len(), 4);
    assert_eq!(map["x-a"], "1");
    let cookies: Vec<_> = map.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert_eq!(map["cache-control"], "no-store");

    let mut original = HeaderMap::new();
    original.append("x-b", HeaderValue::from_static("1"));
    original.append("x-b", HeaderValue::from_static("2"));
    let fields = Fields::from_map(original.clone());
    assert_eq!(written(&fields), "x-b: 1\r\nx-b: 2\r\n");
    assert_eq!(fields.to_map(), original);
}

#[test]
fn remove_where_sees_every_field() {
    let mut fields = received("HTTP/1.1 200 OK\r\nKeep: 1\r\nDrop-Me: 2\r\n\r\n");
    fields.append(
        HeaderName::from_static("drop-too"),
        HeaderValue::from_static("3"),
    );
    fields.remove_where(|name| name.to_ascii_lowercase().starts_with(b"drop"));
    assert_eq!(written(&fields), "Keep: 1\r\n");
    assert!(fields.any_name(|name| name == b"Keep"));
}

#[test]
fn a_reply_becomes_a_response_with_its_fields() {
    let mut reply = Reply::new(StatusCode::CREATED, "body");
    reply
        .fields
        .append(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    reply.request_id = Some(RequestId::Given(HeaderValue::from_static("id-1")));
    let response = reply.map(str::len).into_response();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(response.headers()["x-request-id"], "id-1");
    assert_eq!(*response.body(), 4);
}

#[test]
fn http2_cookie_fields_are_joined_on_one_line() {
    let request = http::Request::builder()
        .uri("http://example.com/a")
        .header("cookie", "a=1")
        .header("x-a", "1")
        .header("cookie", "b=2")
        .body(())
        .expect("valid request");
    let call = Call::from_http2(request);
    assert_eq!(
        call.head.fields.get_all("cookie").collect::<Vec<_>>(),
        [b"a=1; b=2"]
    );
    assert_eq!(call.head.fields.get("x-a"), Some(&b"1"[..]));
    assert_eq!(call.head.uri, "http://example.com/a");

    let single = http::Request::builder()
        .header("cookie", "a=1")
        .body(())
        .expect("valid request");
    let fields = Call::from_http2(single).head.fields;
    assert_eq!(fields.get_all("cookie").collect::<Vec<_>>(), [b"a=1"]);
}

#[test]
fn names_match_in_any_case_and_nothing_else() {
    assert!(is_named(b"content-length", "content-length"));
    assert!(is_named(b"Content-Length", "content-length"));
    assert!(is_named(b"CONTENT-LENGTH", "content-length"));
    assert!(!is_named(b"content-lengths", "content-length"));
    assert!(!is_named(b"content-lengtg", "content-length"));
    // Token bytes one case bit apart that are not letters are different bytes.
    assert!(!is_named(b"x^", "x~"));
    assert!(!is_named(b"x@", "x`"));
    assert!(is_named(b"X_Y", "x_y"));
    assert!(is_named(b"", ""));
}

/// Random heads (CRLF or bare LF endings, padded values, mixed case, empty values), then
/// random removals and additions: what `write_to` writes parses back to exactly the
/// fields, with every line ended by CRLF.
#[test]
fn written_fields_parse_back_to_the_same_fields() {
    let mut rng = fastrand::Rng::with_seed(11);
    let names = [
        "Host",
        "x-a",
        "X-B",
        "cookie",
        "Set-Cookie",
        "x-long-name-here",
    ];
    let values = ["", "1", "a b", "x=1; y=2", "\u{e9}t\u{e9}"];
    for _ in 0..2_000 {
        let mut head = String::from("HTTP/1.1 200 OK\r\n");
        for _ in 0..rng.usize(0..8) {
            let name = names[rng.usize(..names.len())];
            let value = values[rng.usize(..values.len())];
            let pad = [" ", "", "\t", "  "][rng.usize(..4)];
            let end = if rng.bool() { "\r\n" } else { "\n" };
            head.push_str(&format!("{name}:{pad}{value}{pad}{end}"));
        }
        head.push_str("\r\n");
        let mut fields = received(&head);
        for _ in 0..rng.usize(0..3) {
            let name = names[rng.usize(..names.len())].to_ascii_lowercase();
            match rng.u8(0..3) {
                0 => fields.remove(&name),
                1 => fields.append(
                    HeaderName::from_bytes(name.as_bytes()).expect("valid name"),
                    HeaderValue::from_static("added"),
                ),
                _ => fields.insert(
                    HeaderName::from_bytes(name.as_bytes()).expect("valid name"),
                    HeaderValue::from_static("replaced"),
                ),
            }
        }
        let text = written(&fields);
        assert!(
            !text.replace("\r\n", "").contains('\n'),
            "a bare LF in {text:?} from {head:?}"
        );
        let again = received(&format!("HTTP/1.1 200 OK\r\n{text}\r\n"));
        let pairs = |f: &Fields| -> Vec<(Vec<u8>, Vec<u8>)> {
            f.iter().map(|(n, v)| (n.to_vec(), v.to_vec())).collect()
        };
        assert_eq!(pairs(&again), pairs(&fields), "{head:?} became {text:?}");
    }
}

#[test]
fn cookies_are_joined_on_one_line_after_the_others() {
    let mut fields = received("HTTP/1.1 200 OK\r\nCookie: a=1\r\nX-A: 1\r\ncookie: b=2\r\n\r\n");
    fields.join_cookies();
    assert_eq!(written(&fields), "X-A: 1\r\ncookie: a=1; b=2\r\n");
}

#[test]
fn shared_values_are_the_first_fields_bytes() {
    let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: a.example\r\nhost: b\r\n\r\n"[..]);
    let head = crate::http1::codec::parse_request_head(&mut buf, 1024)
        .unwrap()
        .unwrap();
    let mut fields = head.head.fields;
    assert_eq!(fields.shared("host").as_deref(), Some(&b"a.example"[..]));
    assert_eq!(fields.shared("accept"), None);
    fields.append(http::header::ACCEPT, HeaderValue::from_static("*/*"));
    assert_eq!(fields.shared("accept").as_deref(), Some(&b"*/*"[..]));
}
