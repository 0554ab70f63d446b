use super::*;

fn head(text: &str) -> Result<Option<ResponseHead>, ProtocolError> {
    parse_response_head(&mut BytesMut::from(text.as_bytes()))
}

fn framing(method: Method, text: &str) -> Result<(ResponseFraming, bool), ProtocolError> {
    let mut parsed = head(text).expect("parses").expect("complete");
    response_framing(&method, &mut parsed)
}

/// Decodes `input` fed in pieces of `step` bytes; returns the body and whether it ended.
fn dechunk(
    input: &[u8],
    step: usize,
) -> Result<(Vec<u8>, Option<HeaderMap>, BytesMut), ProtocolError> {
    let mut state = Chunked::Size;
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    let mut trailers = None;
    let mut fed = 0;
    loop {
        match state.decode(&mut buf)? {
            Decoded::Data(data) => body.extend_from_slice(&data),
            Decoded::Trailers(t) => trailers = Some(t),
            Decoded::End => return Ok((body, trailers, buf)),
            Decoded::NeedMore if fed < input.len() => {
                let end = (fed + step).min(input.len());
                buf.extend_from_slice(&input[fed..end]);
                fed = end;
            }
            Decoded::NeedMore => return Err(ProtocolError::Chunk),
        }
    }
}

#[test]
fn complete_head_is_split_off_and_the_rest_stays() {
    let mut buf = BytesMut::from(
        &b"HTTP/1.1 201 Created\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 2\r\n\r\nhi"[..],
    );
    let parsed = parse_response_head(&mut buf).unwrap().unwrap();
    assert_eq!(parsed.status, StatusCode::CREATED);
    assert_eq!(parsed.version, Version::HTTP_11);
    let values: Vec<_> = parsed.fields.get_all("x-a").collect();
    assert_eq!(values, [b"1", b"2"]);
    assert_eq!(&buf[..], b"hi");
}

#[test]
fn partial_head_asks_for_more_until_the_limit() {
    assert!(head("HTTP/1.1 200 OK\r\nX-A: 1\r\n").unwrap().is_none());
    let long = format!("HTTP/1.1 200 OK\r\nX-A: {}\r\n", "a".repeat(MAX_HEAD_BYTES));
    assert_eq!(head(&long).unwrap_err(), ProtocolError::HeadTooLarge);
    let complete_but_long = format!("{long}\r\n");
    assert_eq!(
        head(&complete_but_long).unwrap_err(),
        ProtocolError::HeadTooLarge
    );
}

#[test]
fn too_many_header_lines_are_refused() {
    let lines: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
    let text = format!("HTTP/1.1 200 OK\r\n{lines}\r\n");
    assert_eq!(head(&text).unwrap_err(), ProtocolError::HeadTooLarge);
}

#[test]
fn malformed_heads_are_refused() {
    for text in [
        "HTTX/1.1 200 OK\r\n\r\n",
        "HTTP/1.1 20 OK\r\n\r\n",
        "HTTP/2.0 200 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX-A: b\r\n  c\r\n\r\n",
        "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX-A: a\x00b\r\n\r\n",
        "HTTP/1.1 099 Odd\r\n\r\n",
    ] {
        assert!(
            matches!(head(text), Err(ProtocolError::Head(_))),
            "{text:?}"
        );
    }
}

type FramingCase = (
    Method,
    &'static str,
    Result<(ResponseFraming, bool), ProtocolError>,
);

#[test]
fn framing_follows_rfc_9112_section_6_3() {
    use ResponseFraming::*;
    let cases: &[FramingCase] = &[
        (
            Method::GET,
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            Ok((Length(5), true)),
        ),
        (
            Method::GET,
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\ncontent-length: 5\r\n\r\n",
            Ok((Length(5), true)),
        ),
        (
            Method::GET,
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            Err(ProtocolError::ContentLength),
        ),
        (
            Method::GET,
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            Err(ProtocolError::ContentLength),
        ),
        (
            Method::GET,
            "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            Err(ProtocolError::ContentLength),
        ),
        (
            Method::GET,
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            Err(ProtocolError::ContentLength),
        ),
        (
            Method::GET,
            "HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n",
            Err(ProtocolError::ContentLength),
        ),
        (
            Method::GET,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            Ok((Chunked, true)),
        ),
        (
            Method::GET,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n",
            Ok((Chunked, true)),
        ),
        (
            Method::GET,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            Ok((Close, false)),
        ),
        (
            Method::GET,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            Ok((Chunked, false)),
        ),
        (
            Method::GET,
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            Err(ProtocolError::TransferEncodingOnHttp10),
        ),
        (Method::GET, "HTTP/1.1 200 OK\r\n\r\n", Ok((Close, false))),
        (
            Method::GET,
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            Ok((Length(1), false)),
        ),
        (
            Method::GET,
            "HTTP/1.1 200 OK\r\nConnection: Keep-Alive, CLOSE\r\nContent-Length: 1\r\n\r\n",
            Ok((Length(1), false)),
        ),
        (
            Method::GET,
            "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
            Ok((Length(1), false)),
        ),
        (
            Method::GET,
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
            Ok((Length(1), true)),
        ),
        (
            Method::HEAD,
            "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
            Ok((Length(0), true)),
        ),
        (
            Method::HEAD,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            Ok((Length(0), true)),
        ),
        (
            Method::GET,
            "HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n",
            Ok((Length(0), true)),
        ),
        (
            Method::GET,
            "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
            Ok((Length(0), true)),
        ),
        (
            Method::GET,
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            Ok((Length(0), false)),
        ),
    ];
    for (method, text, expected) in cases {
        assert_eq!(
            &framing(method.clone(), text),
            expected,
            "{method} {text:?}"
        );
    }
}

#[test]
fn chunked_over_content_length_drops_the_length() {
    let mut parsed =
        head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n")
            .unwrap()
            .unwrap();
    response_framing(&Method::GET, &mut parsed).unwrap();
    assert!(!parsed.fields.contains("content-length"));
}

#[test]
fn chunked_bodies_decode_whatever_the_read_sizes() {
    let input = b"5;name=value\r\nhello\r\n1\r\n \r\n10\r\n0123456789abcdef\r\n0\r\n\r\nNEXT";
    for step in [1, 2, 3, 7, input.len()] {
        let (body, trailers, rest) = dechunk(input, step).unwrap();
        assert_eq!(body, b"hello 0123456789abcdef", "step {step}");
        assert!(trailers.is_none());
        // What follows the body stays for the caller (who then will not reuse the connection).
        assert!(b"NEXT".starts_with(&rest), "step {step}: {rest:?}");
    }
}

#[test]
fn chunked_trailers_are_returned() {
    let input = b"2\r\nok\r\n0\r\nX-Checksum: 42\r\nX-Other: a\r\n\r\n";
    for step in [1, 4, input.len()] {
        let (body, trailers, rest) = dechunk(input, step).unwrap();
        assert_eq!(body, b"ok");
        let trailers = trailers.expect("trailers");
        assert_eq!(trailers["x-checksum"], "42");
        assert_eq!(trailers["x-other"], "a");
        assert!(rest.is_empty());
    }
}

#[test]
fn malformed_chunked_bodies_are_refused() {
    for input in [
        &b"zz\r\nhello\r\n"[..],
        b"\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"-5\r\nhello\r\n",
        b"11111111111111111\r\n",
        b"0\r\nBad Trailer\r\n\r\n",
        b"5;a\nb\r\nhello\r\n0\r\n\r\n",
    ] {
        assert!(dechunk(input, 1).is_err(), "{input:?}");
        assert!(dechunk(input, input.len()).is_err(), "{input:?}");
    }
    let endless_extension = [&b"5;"[..], &[b'a'; MAX_CHUNK_LINE + 1]].concat();
    assert_eq!(
        dechunk(&endless_extension, 1024).unwrap_err(),
        ProtocolError::Chunk
    );
}

#[test]
fn request_framing_comes_from_the_headers_or_the_body() {
    use Framing::*;
    let mut headers = Fields::new();
    assert_eq!(
        request_framing(&mut headers, true, Some(0)),
        Ok((Empty, None))
    );
    assert_eq!(
        request_framing(&mut headers, false, Some(0)),
        Ok((Empty, None))
    );
    let extra = Some((CONTENT_LENGTH, HeaderValue::from(12u64)));
    assert_eq!(
        request_framing(&mut headers, false, Some(12)),
        Ok((Length(12), extra))
    );
    let extra = Some((TRANSFER_ENCODING, HeaderValue::from_static("chunked")));
    assert_eq!(
        request_framing(&mut headers, false, None),
        Ok((Chunked, extra))
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from_static("7"));
    assert_eq!(
        request_framing(&mut headers, false, Some(7)),
        Ok((Length(7), None))
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from_static("7, 8"));
    assert_eq!(
        request_framing(&mut headers, false, None),
        Err(InvalidLength)
    );
}

#[test]
fn chunked_request_never_also_carries_a_content_length() {
    let mut headers = Fields::new();
    headers.insert(CONTENT_LENGTH, HeaderValue::from_static("7"));
    headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    assert_eq!(
        request_framing(&mut headers, false, None),
        Ok((Framing::Chunked, None))
    );
    assert!(!headers.contains("content-length"));
}

#[test]
fn unusual_reason_phrases_are_kept_and_usual_ones_are_not() {
    let parsed = head("HTTP/1.1 403 Token Expired\r\n\r\n").unwrap().unwrap();
    assert_eq!(parsed.reason.as_deref(), Some(&b"Token Expired"[..]));
    let parsed = head("HTTP/1.1 403 Forbidden\r\n\r\n").unwrap().unwrap();
    assert_eq!(parsed.reason, None);
    let parsed = head("HTTP/1.1 599 \r\n\r\n").unwrap().unwrap();
    assert_eq!(parsed.reason, None);
}

#[test]
fn request_head_is_written_in_origin_form() {
    let mut head = complete("POST http://example.com/ignored HTTP/1.1\r\nHost: example.com\r\nx-a: 1\r\nContent-Length: 3\r\n\r\n").head;
    head.uri = Uri::from_static("/a/b?c=d");
    head.fields.remove("content-length");
    head.fields.append(
        HeaderName::from_static("x-a"),
        HeaderValue::from_static("2"),
    );
    let mut out = Vec::new();
    let extra = (CONTENT_LENGTH, HeaderValue::from(3u64));
    let name = HeaderName::from_static("x-request-id");
    encode_request_head(&head, Some(&extra), &[(&name, b"id-1")], &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "POST /a/b?c=d HTTP/1.1\r\nHost: example.com\r\nx-a: 1\r\nx-a: 2\r\ncontent-length: 3\r\nx-request-id: id-1\r\n\r\n"
    );
    let mut line = Vec::new();
    crate::http1::wire::encode_chunk_size(255, &mut line);
    assert_eq!(line, b"FF\r\n");
}

fn request(text: &str) -> Result<Option<RequestHead>, RequestHeadError> {
    parse_request_head(&mut BytesMut::from(text.as_bytes()), 8 * 1024)
}

fn complete(text: &str) -> RequestHead {
    request(text).expect("parses").expect("complete")
}

#[test]
fn request_head_is_split_off_and_what_follows_stays() {
    let mut buf =
        BytesMut::from(&b"\r\nGET /a?b=c HTTP/1.1\r\nHost: x\r\nX-One: 1\r\n\r\nGET /next"[..]);
    let head = parse_request_head(&mut buf, 8 * 1024).unwrap().unwrap();
    assert_eq!(head.head.method, Method::GET);
    assert_eq!(head.head.uri, "/a?b=c");
    assert_eq!(head.head.version, Version::HTTP_11);
    assert_eq!(head.head.fields.get("x-one"), Some(&b"1"[..]));
    assert_eq!(head.body, RequestBodyLength::Empty);
    assert!(head.keep_alive);
    assert_eq!(&buf[..], b"GET /next");
}

#[test]
fn partial_request_head_waits_until_it_is_too_large() {
    assert!(request("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
    let long = format!("GET / HTTP/1.1\r\nX-Big: {}", "a".repeat(9 * 1024));
    assert_eq!(request(&long).unwrap_err(), RequestHeadError::TooLarge);
    let whole = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(9 * 1024));
    assert_eq!(request(&whole).unwrap_err(), RequestHeadError::TooLarge);
    let mut many = String::from("GET / HTTP/1.1\r\n");
    for i in 0..=MAX_HEADERS {
        many.push_str(&format!("X-{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(request(&many).unwrap_err(), RequestHeadError::TooLarge);
}

#[test]
fn malformed_request_heads_are_refused() {
    for text in [
        "HELLO\r\n\r\n",
        "GET /a b HTTP/1.1\r\n\r\n",
        "GET / HTTP/2.0\r\n\r\n",
        "GET / HTTP/1.1\r\nX-Bad : 1\r\n\r\n",
        "GET / HTTP/1.1\r\nX-Fold: a\r\n b\r\n\r\n",
    ] {
        assert!(
            matches!(request(text), Err(RequestHeadError::Malformed(_))),
            "{text:?}"
        );
    }
}

#[test]
fn keep_alive_follows_the_version_and_connection_tokens() {
    let cases = [
        ("GET / HTTP/1.1\r\n\r\n", true),
        ("GET / HTTP/1.1\r\nConnection: close\r\n\r\n", false),
        (
            "GET / HTTP/1.1\r\nConnection: upgrade, Close\r\n\r\n",
            false,
        ),
        ("GET / HTTP/1.0\r\n\r\n", false),
        ("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true),
        (
            "GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n",
            false,
        ),
    ];
    for (text, keep_alive) in cases {
        assert_eq!(complete(text).keep_alive, keep_alive, "{text:?}");
    }
}

#[test]
fn request_body_framing_is_read_from_the_raw_lines() {
    use RequestBodyLength::*;
    let ok = [
        ("Content-Length: 5\r\n", Length(5), true),
        ("Content-Length: 0\r\n", Empty, true),
        ("Content-Length: 5, 5\r\n", Length(5), true),
        (
            "Content-Length: 5\r\nContent-Length: 5\r\n",
            Length(5),
            true,
        ),
        ("Transfer-Encoding: chunked\r\n", Chunked, false),
        ("Transfer-Encoding: Chunked\r\n", Chunked, false),
        ("X-A: 1\r\n", Empty, false),
    ];
    for (fields, body, given) in ok {
        let head = complete(&format!("POST / HTTP/1.1\r\n{fields}\r\n"));
        assert_eq!(head.body, body, "{fields:?}");
        assert_eq!(head.length_given, given, "{fields:?}");
    }
    let cookies = complete("GET / HTTP/1.1\r\nCookie: a=1\r\nCOOKIE: b=2\r\n\r\n");
    assert!(cookies.cookies_repeated);
    assert!(!complete("GET / HTTP/1.1\r\nCookie: a=1\r\n\r\n").cookies_repeated);
    let refused = [
        ("Content-Length: 5, 6\r\n", "malformed"),
        ("Content-Length: 5\r\nContent-Length: 6\r\n", "malformed"),
        ("Content-Length: -1\r\n", "malformed"),
        (
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            "malformed",
        ),
        ("Transfer-Encoding: gzip\r\n", "unsupported"),
        ("Transfer-Encoding: gzip, chunked\r\n", "unsupported"),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            "unsupported",
        ),
    ];
    for (fields, kind) in refused {
        let error = request(&format!("POST / HTTP/1.1\r\n{fields}\r\n")).unwrap_err();
        let got = match error {
            RequestHeadError::Malformed(_) => "malformed",
            RequestHeadError::UnsupportedCoding => "unsupported",
            RequestHeadError::TooLarge => "too large",
        };
        assert_eq!(got, kind, "{fields:?}");
    }
    let old = request("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap_err();
    assert!(matches!(old, RequestHeadError::Malformed(_)));
}

#[test]
fn expect_continue_is_noticed_whatever_its_case() {
    assert!(complete("POST / HTTP/1.1\r\nExpect: 100-Continue\r\n\r\n").expect_continue);
    assert!(!complete("POST / HTTP/1.1\r\nExpect: something\r\n\r\n").expect_continue);
    assert!(!complete("POST / HTTP/1.1\r\n\r\n").expect_continue);
}

#[test]
fn response_framing_towards_clients() {
    let ok = StatusCode::OK;
    let mut headers = Fields::new();
    let frame = |head, status, headers: &mut Fields, exact, version| {
        response_body_framing(head, status, headers, exact, version)
    };
    assert_eq!(
        frame(true, ok, &mut headers, Some(3), Version::HTTP_11),
        (Framing::Empty, None)
    );
    assert_eq!(
        frame(
            false,
            StatusCode::NOT_MODIFIED,
            &mut headers,
            None,
            Version::HTTP_11
        ),
        (Framing::Empty, None)
    );
    assert_eq!(
        frame(false, ok, &mut headers, Some(3), Version::HTTP_11),
        (Framing::Length(3), Some(3))
    );
    assert_eq!(
        frame(false, ok, &mut headers, None, Version::HTTP_11),
        (Framing::Chunked, None)
    );
    assert_eq!(
        frame(false, ok, &mut headers, None, Version::HTTP_10),
        (Framing::Close, None)
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(3));
    assert_eq!(
        frame(false, ok, &mut headers, Some(3), Version::HTTP_11),
        (Framing::Length(3), None),
        "a length the response has is not announced again"
    );
    assert_eq!(
        frame(false, ok, &mut headers, None, Version::HTTP_11),
        (Framing::Chunked, None)
    );
    assert!(
        !headers.contains("content-length"),
        "a length without a sized body goes"
    );
}

#[test]
fn control_bytes_in_a_field_value_are_refused_both_ways() {
    for bad in ["a\x01b", "a\x00b", "a\rb", "a\x7fb"] {
        let text = format!("HTTP/1.1 200 OK\r\nX-A: {bad}\r\nContent-Length: 0\r\n\r\n");
        assert!(head(&text).is_err(), "response with {bad:?}");
        let text = format!("GET / HTTP/1.1\r\nHost: x\r\nX-A: {bad}\r\n\r\n");
        assert!(request(&text).is_err(), "request with {bad:?}");
    }
    // Tabs and bytes past ASCII (obs-text) are field content.
    assert!(head("HTTP/1.1 200 OK\r\nX-A: a\tbé\r\n\r\n").is_ok());
}

#[test]
fn a_body_decoder_takes_its_length_across_reads_and_then_is_done() {
    let mut body = BodyDecoder::Length(5);
    let mut buf = BytesMut::new();
    assert_eq!(body.decode(&mut buf), Ok(Decoded::NeedMore));
    buf.extend_from_slice(b"hel");
    assert_eq!(body.decode(&mut buf), Ok(Decoded::Data(Bytes::from("hel"))));
    assert_eq!(body.exact(), Some(2));
    buf.extend_from_slice(b"loNEXT");
    assert_eq!(body.decode(&mut buf), Ok(Decoded::Data(Bytes::from("lo"))));
    assert!(body.is_done());
    assert_eq!(body.decode(&mut buf), Ok(Decoded::End));
    assert_eq!(&buf[..], b"NEXT", "bytes past the body stay");

    let mut until_close = BodyDecoder::UntilClose;
    assert_eq!(until_close.exact(), None);
    assert_eq!(
        until_close.decode(&mut buf),
        Ok(Decoded::Data(Bytes::from("NEXT")))
    );
    assert_eq!(until_close.decode(&mut buf), Ok(Decoded::NeedMore));
    assert!(!until_close.is_done());
}

/// Heads a client or an upstream might send, for the randomized tests to mutate.
const REQUEST_SEEDS: &[&str] = &[
    "GET /api/orders/7 HTTP/1.1\r\nHost: a\r\n\r\n",
    "POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
    "PUT /x?y=1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n",
    "GET http://h/p HTTP/1.0\r\nConnection: keep-alive, x\r\n\r\n",
    "\r\n\r\nDELETE / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n",
];
const RESPONSE_SEEDS: &[&str] = &[
    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nDate: x\r\n\r\nhi",
    "HTTP/1.1 403 Token Expired\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    "HTTP/1.0 204 No Content\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
];

/// `seed` with one to three random edits: a byte changed, inserted or removed, a piece
/// repeated, or the end cut. Inserted bytes favour those with a meaning in a head.
fn mutate(rng: &mut fastrand::Rng, seed: &[u8]) -> Vec<u8> {
    const SPECIAL: &[u8] = b"\r\n :,;\t\0%\x7f\x80\xff0123456789-";
    let mut bytes = seed.to_vec();
    for _ in 0..rng.usize(1..=3) {
        let at = rng.usize(0..=bytes.len());
        let byte = if rng.bool() {
            SPECIAL[rng.usize(..SPECIAL.len())]
        } else {
            rng.u8(..)
        };
        match rng.u8(0..5) {
            0 if at < bytes.len() => bytes[at] = byte,
            1 => bytes.insert(at, byte),
            2 if at < bytes.len() => {
                bytes.remove(at);
            }
            3 => {
                let end = rng.usize(at..=bytes.len());
                let piece = bytes[at..end].to_vec();
                bytes.splice(at..at, piece);
            }
            _ => bytes.truncate(at),
        }
    }
    bytes
}

/// Feeds `input` to `parse` in random pieces, as reads would bring it, until it gives
/// an answer or the input runs out; returns the answer and what stayed in the buffer.
fn parse_in_pieces<T>(
    rng: &mut fastrand::Rng,
    input: &[u8],
    mut parse: impl FnMut(&mut BytesMut) -> Result<Option<T>, String>,
) -> (Result<Option<T>, String>, BytesMut) {
    let mut buf = BytesMut::new();
    let mut fed = 0;
    loop {
        let end = (fed + rng.usize(1..=8)).min(input.len());
        buf.extend_from_slice(&input[fed..end]);
        fed = end;
        match parse(&mut buf) {
            Ok(None) if fed < input.len() => {}
            answer => return (answer, buf),
        }
    }
}

/// A field ficus relays is written back as it came: it must not be able to end its
/// line or the head early.
fn assert_fields_are_safe(fields: &Fields, input: &[u8]) {
    for (name, value) in fields.iter() {
        assert!(
            !name.is_empty() && name.iter().all(|&b| b.is_ascii_graphic() && b != b':'),
            "name {name:?} accepted from {input:?}"
        );
        assert!(
            !value.iter().any(|&b| matches!(b, b'\r' | b'\n' | b'\0')),
            "value {value:?} accepted from {input:?}"
        );
    }
}

/// Parses every seed, then 20,000 mutated copies of them, each whole and in random
/// pieces: the two answers must agree, whatever the split (a head split across reads is
/// neither refused nor read differently). `check` gets every head accepted, and its input.
fn parse_mutations<T: std::fmt::Debug>(
    seeds: &[&str],
    rng_seed: u64,
    parse: impl Fn(&mut BytesMut) -> Result<Option<T>, String> + Copy,
    mut check: impl FnMut(T, &[u8]),
) {
    let mut rng = fastrand::Rng::with_seed(rng_seed);
    for round in 0..20_000 {
        let seed = seeds[round % seeds.len()];
        let input = if round < seeds.len() {
            seed.as_bytes().to_vec()
        } else {
            mutate(&mut rng, seed.as_bytes())
        };
        let mut whole = BytesMut::from(&input[..]);
        let at_once = parse(&mut whole);
        let (in_pieces, rest) = parse_in_pieces(&mut rng, &input, parse);
        assert_eq!(
            format!("{at_once:?}"),
            format!("{in_pieces:?}"),
            "{input:?}"
        );
        match at_once {
            Ok(Some(head)) => {
                assert!(whole.starts_with(&rest), "{input:?}");
                check(head, &input);
            }
            _ if round < seeds.len() => panic!("seed {seed:?}: {at_once:?}"),
            _ => {}
        }
    }
}

#[test]
fn mutated_request_heads_parse_the_same_in_pieces_and_stay_safe() {
    let parse = |buf: &mut BytesMut| parse_request_head(buf, 1024).map_err(|e| e.to_string());
    parse_mutations(REQUEST_SEEDS, 0x0c0d_ec01, parse, |head, input| {
        assert_fields_are_safe(&head.head.fields, input);
        // No space or control byte ends the target early. (Bytes above ASCII pass here;
        // path normalization escapes them before routing.)
        let target = head.head.uri.to_string();
        assert!(
            target.bytes().all(|b| b > b' ' && b != 0x7f),
            "target {target:?} accepted from {input:?}"
        );
    });
}

#[test]
fn mutated_response_heads_parse_the_same_in_pieces_and_stay_safe() {
    let parse = |buf: &mut BytesMut| parse_response_head(buf).map_err(|e| e.to_string());
    parse_mutations(RESPONSE_SEEDS, 0x0c0d_ec02, parse, |mut head, input| {
        assert_fields_are_safe(&head.fields, input);
        // Deciding the framing never panics either, whatever the fields say.
        let _ = response_framing(&Method::GET, &mut head);
    });
}

#[test]
fn random_chunked_bodies_decode_to_what_was_sent() {
    let mut rng = fastrand::Rng::with_seed(0x0c0d_ec03);
    for round in 0..2_000 {
        // A body in chunks of random sizes, some with extensions, maybe trailers.
        let mut body = Vec::new();
        let mut wire = Vec::new();
        for _ in 0..rng.usize(0..6) {
            let chunk: Vec<u8> = (0..rng.usize(1..300)).map(|_| rng.u8(..)).collect();
            let size = if rng.bool() {
                format!("{:x}", chunk.len())
            } else {
                format!("{:X}", chunk.len())
            };
            wire.extend_from_slice(size.as_bytes());
            if rng.u8(0..4) == 0 {
                wire.extend_from_slice(b";ext=1");
            }
            wire.extend_from_slice(b"\r\n");
            wire.extend_from_slice(&chunk);
            wire.extend_from_slice(b"\r\n");
            body.extend_from_slice(&chunk);
        }
        wire.extend_from_slice(b"0\r\n");
        let trailer = rng.bool();
        if trailer {
            wire.extend_from_slice(b"X-Sum: 1\r\n");
        }
        wire.extend_from_slice(b"\r\n");
        let step = rng.usize(1..=wire.len());
        let (decoded, trailers, rest) = dechunk(&wire, step).expect("decodes");
        assert_eq!(decoded, body, "round {round}, step {step}");
        assert_eq!(trailers.is_some(), trailer, "round {round}");
        assert!(rest.is_empty());
        // Damaged, it is refused or read as some body, never a panic; and a read of
        // any size gets the same answer as any other.
        let damaged = mutate(&mut rng, &wire);
        let one = dechunk(&damaged, 1).map(|(b, t, _)| (b, t));
        let all = dechunk(&damaged, damaged.len().max(1)).map(|(b, t, _)| (b, t));
        assert_eq!(one, all, "{damaged:?}");
    }
}
