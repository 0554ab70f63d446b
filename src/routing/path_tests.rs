use super::*;

use PathError::*;

/// (input, expected result). `Ok` outputs equal to the input must come back borrowed.
const CASES: &[(&str, Result<&str, PathError>)] = &[
    // Already canonical.
    ("/", Ok("/")),
    ("/api/users/1", Ok("/api/users/1")),
    ("/api/users/1/", Ok("/api/users/1/")),
    ("/api/orders;x=1", Ok("/api/orders;x=1")),
    ("/a/;/b", Ok("/a/;/b")),
    ("/a/.x/..y/...", Ok("/a/.x/..y/...")),
    ("/a%20b", Ok("/a%20b")),
    ("/caf%C3%A9", Ok("/caf%C3%A9")),
    // Dot segments.
    ("/api/users/../admin", Ok("/api/admin")),
    ("/api/./users", Ok("/api/users")),
    ("/../../etc", Ok("/etc")),
    ("/a/b/..", Ok("/a/")),
    ("/a/.", Ok("/a/")),
    ("/a/./", Ok("/a/")),
    ("/..", Ok("/")),
    ("/.", Ok("/")),
    ("/a/..", Ok("/")),
    ("/a/../", Ok("/")),
    // Encoded dots and unreserved characters are decoded.
    ("/api/%75sers/1", Ok("/api/users/1")),
    ("/%2e%2e/admin", Ok("/admin")),
    ("/api/.%2e/admin", Ok("/admin")),
    ("/api/%2E./x", Ok("/x")),
    ("/%41%7a%2D%5F%7E", Ok("/Az-_~")),
    // Slash runs.
    ("//api/users/1", Ok("/api/users/1")),
    ("/api//users///1", Ok("/api/users/1")),
    ("//", Ok("/")),
    ("/a//", Ok("/a/")),
    // Other escapes stay encoded, upper-cased; never decoded into delimiters.
    ("/caf%c3%a9", Ok("/caf%C3%A9")),
    ("/a%3fb", Ok("/a%3Fb")),
    ("/a%23b", Ok("/a%23b")),
    ("/a%0a", Ok("/a%0A")),
    // Raw bytes that are not literal path characters get encoded.
    ("/café", Ok("/caf%C3%A9")),
    ("/{\"a\"}", Ok("/%7B%22a%22%7D")),
    ("/a b|c", Ok("/a%20b%7Cc")),
    // Errors.
    ("*", Err(NotOriginForm)),
    ("", Err(NotOriginForm)),
    ("abc", Err(NotOriginForm)),
    ("%2F", Err(NotOriginForm)),
    ("/api%2Fadmin", Err(EncodedSeparator)),
    ("/api%2fadmin", Err(EncodedSeparator)),
    ("/a%5Cb", Err(EncodedSeparator)),
    ("/a%5cb", Err(EncodedSeparator)),
    ("/a\\b", Err(Backslash)),
    ("/a%zz\\", Err(Backslash)),
    ("/a%zz", Err(BadPercentEncoding)),
    ("/a%2", Err(BadPercentEncoding)),
    ("/a%", Err(BadPercentEncoding)),
    ("/a%%41", Err(BadPercentEncoding)),
    ("/a%00", Err(NulByte)),
    ("/a\0b", Err(NulByte)),
    ("/a\nb", Err(NulByte)),
    ("/a\x7fb", Err(NulByte)),
    ("/%c0%ae%c0%ae/admin", Err(InvalidUtf8)),
    ("/%FF", Err(InvalidUtf8)),
    ("/%A9", Err(InvalidUtf8)),
    ("/%C3", Err(InvalidUtf8)),
    ("/%C3é", Err(InvalidUtf8)),
    ("/public/..;/admin", Err(DotSegmentWithParams)),
    ("/public/.;/x", Err(DotSegmentWithParams)),
    ("/public/..;x=1/admin", Err(DotSegmentWithParams)),
    ("/public/%2e%2e;/admin", Err(DotSegmentWithParams)),
    ("/public/..%3b/admin", Err(DotSegmentWithParams)),
    ("/a/..;", Err(DotSegmentWithParams)),
];

#[test]
fn table() {
    for &(input, expected) in CASES {
        let got = normalize(input);
        assert_eq!(got.as_deref(), expected.as_deref(), "input {input:?}");
        if let Ok(output) = got {
            assert_eq!(
                matches!(output, Cow::Borrowed(_)),
                output == input,
                "borrowed iff unchanged, input {input:?}"
            );
        }
    }
}

#[test]
fn canonical_inputs_do_not_allocate() {
    for input in ["/", "/api/users/1", "/api/users/1/", "/api/orders;x=1"] {
        assert!(
            matches!(normalize(input), Ok(Cow::Borrowed(_))),
            "{input:?}"
        );
        assert!(is_canonical(input), "{input:?}");
    }
}

#[test]
fn segments_skips_empty_pieces() {
    let collect = |path| segments(path).collect::<Vec<_>>();
    assert_eq!(collect("/api//users/1/"), ["api", "users", "1"]);
    assert_eq!(collect("/"), Vec::<&str>::new());
    assert_eq!(collect(""), Vec::<&str>::new());
    assert_eq!(collect("/a;b/%20"), ["a;b", "%20"]);
    // The same pieces as splitting on '/', for any text, multi-byte characters too.
    let alphabet = ["/", "a", "é", "//", "ü/", "%2F", ";"];
    for n in 0..4000usize {
        let text: String = (0..n % 9)
            .map(|i| alphabet[(n / 7 + i * 5 + n % 11 * i) % alphabet.len()])
            .collect();
        let expected: Vec<&str> = text.split('/').filter(|s| !s.is_empty()).collect();
        let got: Vec<&str> = segments(&text).collect();
        assert_eq!(got, expected, "{text:?}");
    }
}

#[test]
fn error_messages_are_readable() {
    assert_eq!(EncodedSeparator.to_string(), "encoded '/' or '\\' in path");
    assert_eq!(
        NotOriginForm.to_string(),
        "request path must start with '/'"
    );
}

#[test]
fn randomized_inputs_are_safe_and_idempotent() {
    const ALPHABET: &[char] = &[
        '/', '.', '%', '2', 'e', 'E', 'f', 'F', 'a', '5', 'c', 'C', ';', 'x', '0', '\\', '3', 'B',
    ];
    let mut rng = fastrand::Rng::with_seed(0x5eed_f1c5);
    let mut accepted = 0;
    for _ in 0..20_000 {
        let len = rng.usize(0..24);
        // Mostly origin-form, so that the interesting rules get exercised.
        let mut input = String::from(if rng.u8(0..10) == 0 { "" } else { "/" });
        input.extend((0..len).map(|_| ALPHABET[rng.usize(..ALPHABET.len())]));

        // The fast path must never accept what the slow path would change.
        if is_canonical(&input) {
            assert_eq!(normalize_slow(&input).as_deref(), Ok(input.as_str()));
        }
        let Ok(output) = normalize(&input) else {
            continue;
        };
        accepted += 1;
        assert!(output.starts_with('/'), "{input:?} -> {output:?}");
        assert!(!output.contains("//"), "{input:?} -> {output:?}");
        assert!(
            segments(&output).all(|segment| segment != "." && segment != ".."),
            "{input:?} -> {output:?}"
        );
        let again = normalize(&output);
        assert!(
            matches!(again, Ok(Cow::Borrowed(_))),
            "not borrowed: {input:?} -> {output:?} -> {again:?}"
        );
        assert_eq!(again.as_deref(), Ok(&*output), "{input:?}");
    }
    // Guard against a generator that only ever produces rejected paths.
    assert!(accepted > 1_000, "only {accepted} accepted");
}

#[test]
fn fast_path_table_matches_the_byte_rule() {
    for byte in 0..=255u8 {
        assert_eq!(
            LITERAL_PATH_BYTE[usize::from(byte)],
            is_literal_path_byte(byte),
            "byte {byte:#04x}"
        );
    }
}
