//! Request-path canonicalization.
//!
//! The proxy matches routes against, and forwards, one canonical form of the
//! request path. If matching used one spelling and the backend saw another,
//! tricks such as `/public/%2e%2e/admin`, `//admin` or `/public/..;/admin`
//! could reach a route that the plain path would not (path confusion / route
//! bypass). [`normalize`] either produces that canonical form or rejects the
//! path outright when no safe canonical form exists.

use std::borrow::Cow;

/// Why a path was rejected. Closed set; each maps to a 400 Bad Request in the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with '/' (e.g. `*`, an empty path, `abc`).
    #[error("request path must start with '/'")]
    NotOriginForm,
    /// A '%' is not followed by two hex digits.
    #[error("'%' in path is not followed by two hex digits")]
    BadPercentEncoding,
    /// `%2F` or `%5C`: an encoded '/' or '\'.
    #[error("encoded '/' or '\\' in path")]
    EncodedSeparator,
    /// A raw '\'.
    #[error("backslash in path")]
    Backslash,
    /// `%00`, or a raw NUL or other ASCII control character.
    #[error("NUL or control character in path")]
    NulByte,
    /// The fully percent-decoded path is not valid UTF-8 (e.g. overlong `%C0%AE`).
    #[error("percent-decoded path is not valid UTF-8")]
    InvalidUtf8,
    /// A segment that is "." or ".." once its `;params` are removed (e.g. `..;x=1`).
    #[error("'.' or '..' path segment with ';' parameters")]
    DotSegmentWithParams,
}

/// Normalizes a request path. Returns `Cow::Borrowed` (no allocation) when the path is already canonical,
/// which is the common case on the hot path.
///
/// The canonical form: starts with '/', has no empty segments (runs of '/' are
/// merged) except a preserved trailing '/', no "." or ".." segments, and every
/// byte is either a literal RFC 3986 path character or an upper-case `%XX`
/// escape of a byte that is not unreserved. Raw bytes that are not valid
/// literally in a path (non-ASCII, `"`, `{`, `|`, ...) are percent-encoded so
/// that they route exactly like their encoded spelling.
///
/// # Errors
///
/// Returns a [`PathError`] when the path is not origin-form or contains an
/// encoding that has no safe canonical form (see the variants).
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if is_canonical(path) {
        return Ok(Cow::Borrowed(path));
    }
    let normalized = normalize_slow(path)?;
    // Paths with canonical escapes such as "%20" take the slow path but come
    // out unchanged; hand back the original so callers can tell nothing changed.
    if normalized == path {
        Ok(Cow::Borrowed(path))
    } else {
        Ok(Cow::Owned(normalized))
    }
}

/// The non-empty segments of a normalized path: `"/api//users/1/"` -> `["api", "users", "1"]`; `"/"` -> `[]`.
pub fn segments(path: &str) -> impl Iterator<Item = &str> {
    // A byte loop: `split` sets up a substring searcher per call, which costs more
    // than the few short segments of a request path (this runs on every request).
    let bytes = path.as_bytes();
    let mut at = 0;
    std::iter::from_fn(move || {
        while bytes.get(at) == Some(&b'/') {
            at += 1;
        }
        let start = at;
        while bytes.get(at).is_some_and(|&b| b != b'/') {
            at += 1;
        }
        // Cut at '/' (ASCII) or the end: always on character boundaries.
        path.get(start..at).filter(|segment| !segment.is_empty())
    })
}

/// Single allocation-free scan: true when `normalize` would return `path` unchanged.
///
/// Deliberately conservative: anything unusual (any '%', bad byte, dot
/// segment, "//") is left to the slow path, which also produces the errors.
/// This runs on every request, so it is one pass over the bytes with a table lookup each.
fn is_canonical(path: &str) -> bool {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return false;
    }
    let mut segment_start = 1;
    let mut has_params = false;
    // One step past the end acts as a closing '/', so the last segment is checked too.
    for i in 1..=bytes.len() {
        let byte = bytes.get(i).copied().unwrap_or(b'/');
        if byte == b'/' {
            let segment = &bytes[segment_start..i];
            if segment.is_empty() {
                // Only fine as the last piece: "/" or a trailing '/'.
                if i < bytes.len() {
                    return false;
                }
            } else if is_dot_bytes(segment) || (has_params && is_dot_bytes(params_cut(segment))) {
                return false;
            }
            segment_start = i + 1;
            has_params = false;
        } else if !LITERAL_PATH_BYTE[usize::from(byte)] {
            return false;
        } else if byte == b';' {
            has_params = true;
        }
    }
    true
}

/// The part of a segment before its first ';'.
fn params_cut(segment: &[u8]) -> &[u8] {
    segment.split(|&b| b == b';').next().unwrap_or(segment)
}

fn is_dot_bytes(segment: &[u8]) -> bool {
    segment == b"." || segment == b".."
}

/// [`is_literal_path_byte`] as a lookup table, for the per-request fast path.
static LITERAL_PATH_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
            );
        i += 1;
    }
    table
};

/// Full normalization, applying the rules in order so that errors are reported
/// by priority (e.g. a raw '\' wins over a later bad escape).
fn normalize_slow(path: &str) -> Result<String, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    for byte in path.bytes() {
        match byte {
            b'\\' => return Err(PathError::Backslash),
            0x00..=0x1F | 0x7F => return Err(PathError::NulByte),
            _ => {}
        }
    }
    let canonical = canonicalize_encoding(path)?;
    resolve_segments(&canonical)
}

/// Decodes escapes of unreserved characters, upper-cases all other escapes,
/// percent-encodes raw bytes that may not appear literally, and checks that the
/// fully decoded path is UTF-8. The result is pure ASCII and only '/' in it
/// separates segments.
fn canonicalize_encoding(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    // Every %XX decoded, raw bytes as-is: what a backend would ultimately see.
    let mut decoded = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte != b'%' {
            if byte == b'/' || is_literal_path_byte(byte) {
                out.push(char::from(byte));
            } else {
                push_escaped(&mut out, byte);
            }
            decoded.push(byte);
            i += 1;
            continue;
        }
        // `get` rather than indexing: a '%' may be the last or second-to-last byte.
        let high = bytes.get(i + 1).copied().and_then(hex_value);
        let low = bytes.get(i + 2).copied().and_then(hex_value);
        let (Some(high), Some(low)) = (high, low) else {
            return Err(PathError::BadPercentEncoding);
        };
        let value = (high << 4) | low;
        match value {
            b'/' | b'\\' => return Err(PathError::EncodedSeparator),
            0x00 => return Err(PathError::NulByte),
            _ if is_unreserved(value) => out.push(char::from(value)),
            _ => push_escaped(&mut out, value),
        }
        decoded.push(value);
        i += 3;
    }
    if std::str::from_utf8(&decoded).is_err() {
        return Err(PathError::InvalidUtf8);
    }
    Ok(out)
}

/// Merges '/' runs and removes dot segments (RFC 3986 §5.2.4), never climbing
/// above the root. `canonical` starts with '/' and has its escapes canonicalized,
/// so `%2e` has already become a literal '.'.
fn resolve_segments(canonical: &str) -> Result<String, PathError> {
    let mut stack: Vec<&str> = Vec::new();
    // A path ending in "." or ".." names a directory, so it keeps a trailing '/'.
    let mut ends_in_dot = false;
    for segment in segments(canonical) {
        if param_head(segment).is_some_and(is_dot) {
            return Err(PathError::DotSegmentWithParams);
        }
        match segment {
            "." => ends_in_dot = true,
            ".." => {
                stack.pop();
                ends_in_dot = true;
            }
            _ => {
                stack.push(segment);
                ends_in_dot = false;
            }
        }
    }
    let mut out = String::with_capacity(canonical.len());
    for segment in &stack {
        out.push('/');
        out.push_str(segment);
    }
    if stack.is_empty() || ends_in_dot || canonical.ends_with('/') {
        out.push('/');
    }
    Ok(out)
}

/// The part of a segment before its first parameter delimiter, if it has one.
///
/// An encoded `%3B` counts as a delimiter too: some backends decode before
/// stripping parameters, so `..%3B` must not sneak past the `..;` check.
fn param_head(segment: &str) -> Option<&str> {
    let semicolon = segment.find(';');
    let encoded = segment.find("%3B");
    let cut = match (semicolon, encoded) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    // `cut` comes from `find`, so it is a char boundary within the segment.
    segment.get(..cut)
}

fn is_dot(segment: &str) -> bool {
    segment == "." || segment == ".."
}

/// RFC 3986 §2.3 unreserved: ALPHA / DIGIT / '-' / '.' / '_' / '~'.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// Bytes that may appear literally in a canonical segment: RFC 3986 `pchar`
/// minus `pct-encoded` (unreserved, sub-delims, ':' and '@').
fn is_literal_path_byte(byte: u8) -> bool {
    is_unreserved(byte) || b"!$&'()*+,;=:@".contains(&byte)
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

fn push_escaped(out: &mut String, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(byte >> 4)]));
    out.push(char::from(HEX[usize::from(byte & 0x0F)]));
}

#[cfg(test)]
#[path = "path_tests.rs"]
mod tests;
