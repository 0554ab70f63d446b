//! HTTP/1.1 heads and bodies as pure functions over byte buffers, both ways: heads
//! parsed with httparse into [`Fields`] that share the head's bytes, heads written
//! from them, bodies framed per RFC 9112 §6.3, and the chunked decoder. The server
//! (`server::h1`) and the upstream connection (`upstream::conn`) do the I/O.
//!
//! Upstreams are trusted more than clients but not blindly: every length is
//! bounded, every header line is validated by httparse, and anything ambiguous
//! (conflicting lengths, chunked over Content-Length) either fails the exchange
//! or closes the connection after it, so a confused upstream cannot make ficus
//! read the next response at the wrong place.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HeaderMap, HeaderName, HeaderValue, TRANSFER_ENCODING};
use http::{Method, StatusCode, Uri, Version};

pub use crate::http1::wire::Framing;
use crate::message::{Fields, Head, Span, write_field};

/// Most header lines in a response head (hyper's client allows the same).
pub const MAX_HEADERS: usize = 100;
/// Longest response head, status line included.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Longest trailer section.
const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// What an upstream sent that ficus will not relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The status line or a header line is malformed.
    #[error("malformed response head: {0}")]
    Head(&'static str),
    /// The head is longer than [`MAX_HEAD_BYTES`] or has more than [`MAX_HEADERS`] lines.
    #[error("response head too large")]
    HeadTooLarge,
    /// Content-Length is not one non-negative integer.
    #[error("invalid or conflicting content-length")]
    ContentLength,
    /// Transfer-Encoding in an HTTP/1.0 response.
    #[error("transfer-encoding in an HTTP/1.0 response")]
    TransferEncodingOnHttp10,
    /// A chunk-size line or the CRLF after a chunk is malformed.
    #[error("malformed chunked body")]
    Chunk,
    /// The trailer section is malformed or too long.
    #[error("malformed trailers")]
    Trailers,
}

/// How ficus frames a request with these headers and this body shape, and whether
/// it must add the header that says so. ficus's own rewrite leaves at most one of
/// Content-Length and `Transfer-Encoding: chunked`; should both be present,
/// Content-Length is removed, so the upstream never sees two framings.
pub fn request_framing(
    fields: &mut Fields,
    end_stream: bool,
    exact: Option<u64>,
) -> Result<(Framing, Option<(HeaderName, HeaderValue)>), InvalidLength> {
    if fields.contains(TRANSFER_ENCODING.as_str()) {
        fields.remove(CONTENT_LENGTH.as_str());
        return Ok((Framing::Chunked, None));
    }
    if let Some(value) = fields.get(CONTENT_LENGTH.as_str()) {
        let length = parse_digits(value).ok_or(InvalidLength)?;
        return Ok((Framing::Length(length), None));
    }
    Ok(match (end_stream, exact) {
        (true, _) | (false, Some(0)) => (Framing::Empty, None),
        (false, Some(length)) => (
            Framing::Length(length),
            Some((CONTENT_LENGTH, HeaderValue::from(length))),
        ),
        (false, None) => (
            Framing::Chunked,
            Some((TRANSFER_ENCODING, HeaderValue::from_static("chunked"))),
        ),
    })
}

/// A request's Content-Length is not one non-negative integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidLength;

/// A header field written after a request's own (ficus's forwarding headers).
pub type Field<'a> = (&'a HeaderName, &'a [u8]);

/// Writes the request line and headers (origin-form target, HTTP/1.1) to `out`: the
/// request's own, then the framing header ficus adds, then `fields`.
pub fn encode_request_head(
    head: &Head,
    framing: Option<&(HeaderName, HeaderValue)>,
    fields: &[Field<'_>],
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    let target = head.uri.path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    head.fields.write_to(out);
    if let Some((name, value)) = framing {
        write_field(name.as_str().as_bytes(), value.as_bytes(), out);
    }
    for (name, value) in fields {
        write_field(name.as_str().as_bytes(), value, out);
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes a response's status line and headers to `out`: its own headers, then the
/// fields the server adds (`extra`: framing, `date`, `connection`). The status line
/// says HTTP/1.1 whatever the client spoke (RFC 9110 §2.5); `reason` replaces the
/// status's usual phrase.
pub fn encode_response_head(
    status: StatusCode,
    reason: Option<&[u8]>,
    fields: &Fields,
    extra: &[(&HeaderName, &[u8])],
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    let reason = reason.unwrap_or_else(|| status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
    fields.write_to(out);
    for (name, value) in extra {
        write_field(name.as_str().as_bytes(), value, out);
    }
    out.extend_from_slice(b"\r\n");
}

/// How a response to a client is framed, per RFC 9112 §6.3 from the server's side:
/// no body after HEAD, 1xx, 204 and 304; else the body's exact size if known, as
/// the Content-Length it has or one to announce (`Some(length)`); else chunked for
/// HTTP/1.1 clients and close-delimited for HTTP/1.0 ones. A Content-Length on a
/// body of unknown size is removed. Transfer-Encoding must already be gone (it is
/// hop-by-hop).
pub fn response_body_framing(
    head_request: bool,
    status: StatusCode,
    fields: &mut Fields,
    exact: Option<u64>,
    client: Version,
) -> (Framing, Option<u64>) {
    let length = CONTENT_LENGTH.as_str();
    if status.is_informational() || status == StatusCode::NO_CONTENT {
        // These never have a body, and a length on them is wrong (RFC 9110 §8.6).
        fields.remove(length);
        return (Framing::Empty, None);
    }
    if head_request || status == StatusCode::NOT_MODIFIED {
        // The length, if any, is the one a GET would have had: kept.
        return (Framing::Empty, None);
    }
    if fields.contains(length) {
        // Set by the upstream, whose client checked it and sized the body by it, or by
        // ficus, whose bodies have an exact size: the body's size is the length.
        if let Some(length) = exact {
            return (Framing::Length(length), None);
        }
        fields.remove(length);
    }
    match exact {
        Some(length) => (Framing::Length(length), Some(length)),
        None if client == Version::HTTP_11 => (Framing::Chunked, None),
        None => (Framing::Close, None),
    }
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    /// The status.
    pub status: StatusCode,
    /// The reason phrase, when it is not the status's usual one (`403 Token Expired`).
    pub reason: Option<Bytes>,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// The header fields.
    pub fields: Fields,
    /// Its framing fields, read from the raw lines.
    facts: Facts,
}

/// Parses a response head at the start of `buf`. On success the head's bytes are
/// split off `buf` (header values share them, with no copy); `Ok(None)` means more
/// bytes are needed.
pub fn parse_response_head(buf: &mut BytesMut) -> Result<Option<ResponseHead>, ProtocolError> {
    let mut lines = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut facts = Facts::default();
    let (len, code, version, spans, reason) = {
        let mut response = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            buf,
            &mut lines,
        );
        match parsed {
            Ok(httparse::Status::Complete(len)) => {
                let base = buf.as_ptr() as usize;
                for header in response.headers.iter() {
                    facts.observe(header.name.as_bytes(), header.value);
                }
                let reason = response.reason.unwrap_or("");
                let code = response.code.unwrap_or(0);
                let usual = StatusCode::from_u16(code)
                    .ok()
                    .and_then(|status| status.canonical_reason())
                    .unwrap_or("");
                // Offsets into `buf`, like the header spans above.
                let reason = (!reason.is_empty() && reason != usual)
                    .then(|| (reason.as_ptr() as usize - base, reason.len()));
                (
                    len,
                    code,
                    response.version.unwrap_or(1),
                    // Only a complete head costs an allocation.
                    record_spans(base, response.headers),
                    reason,
                )
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
                return Err(ProtocolError::HeadTooLarge);
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(ProtocolError::HeadTooLarge),
            Err(e) => return Err(ProtocolError::Head(parse_error(e))),
        }
    };
    if len > MAX_HEAD_BYTES {
        return Err(ProtocolError::HeadTooLarge);
    }
    let status = StatusCode::from_u16(code).map_err(|_| ProtocolError::Head("status code"))?;
    let version = if version == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let head = buf.split_to(len).freeze();
    let reason = reason.map(|(start, len)| head.slice(start..start + len));
    let mut fields = Fields::received(head, spans);
    if facts.length_items > 1
        && !facts.length_invalid
        && let Some(length) = facts.length
    {
        // `5, 5` or two fields of 5: relayed once, as clients expect.
        fields.insert(CONTENT_LENGTH, HeaderValue::from(length));
    }
    Ok(Some(ResponseHead {
        status,
        reason,
        version,
        fields,
        facts,
    }))
}

/// Where each of `headers` sits in the buffer starting at `base`.
fn record_spans(base: usize, headers: &[httparse::Header<'_>]) -> Vec<Span> {
    // Offsets into the buffer httparse borrowed: callers bound a head to far less than
    // 4 GiB before building from them, so they fit in u32.
    let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
    let span = |header: &httparse::Header<'_>| {
        let (name, value) = (header.name.as_bytes(), header.value);
        Span {
            name: (offset(name), offset(name) + name.len() as u32),
            value: (offset(value), offset(value) + value.len() as u32),
        }
    };
    headers.iter().map(span).collect()
}

/// A client's request head that ficus will not serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestHeadError {
    /// The request line or a header line is malformed: answered 400.
    #[error("malformed request head: {0}")]
    Malformed(&'static str),
    /// The head is over the configured size or has more than [`MAX_HEADERS`] lines:
    /// answered 431.
    #[error("request head too large")]
    TooLarge,
    /// A transfer coding other than a single `chunked`: answered 501 (RFC 9112 §6.1).
    #[error("unsupported transfer coding")]
    UnsupportedCoding,
}

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    /// Method, target, version (HTTP/1.0 or HTTP/1.1) and fields.
    pub head: Head,
    /// How its body is delimited.
    pub body: RequestBodyLength,
    /// Whether the client lets the connection carry another request after this one.
    pub keep_alive: bool,
    /// Whether the client sent `Expect: 100-continue`.
    pub expect_continue: bool,
    /// The client sent a Content-Length (valid, and maybe as `5, 5`): the upstream gets
    /// ficus's own line for it, never the client's spacing, case or repetition.
    pub length_given: bool,
    /// The client sent more than one Cookie line: the upstream gets them joined.
    pub cookies_repeated: bool,
}

/// What framing needs from a message's header lines, gathered as httparse returns
/// them rather than looked up in the fields afterwards.
#[derive(Debug, Default)]
struct Facts {
    length: Option<u64>,
    length_invalid: bool,
    /// How many Content-Length items (across lists and repeated fields) were seen.
    length_items: u32,
    /// Transfer-Encoding codings seen, and whether every one of them is chunked.
    codings: u32,
    only_chunked: bool,
    last_chunked: bool,
    close: bool,
    keep_alive: bool,
    expect_continue: bool,
    /// Cookie lines seen.
    cookies: u32,
}

impl Facts {
    fn observe(&mut self, name: &[u8], value: &[u8]) {
        match name.len() {
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                // `Content-Length: 5, 5` is a list of one length (RFC 9110 §8.6).
                for item in value.split(|&b| b == b',') {
                    self.length_items += 1;
                    match parse_digits(item.trim_ascii()) {
                        Some(n) if self.length.is_none_or(|l| l == n) => self.length = Some(n),
                        _ => self.length_invalid = true,
                    }
                }
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                for coding in value.split(|&b| b == b',') {
                    if self.codings == 0 {
                        self.only_chunked = true;
                    }
                    self.codings += 1;
                    self.last_chunked = coding.trim_ascii().eq_ignore_ascii_case(b"chunked");
                    self.only_chunked &= self.last_chunked;
                }
            }
            10 if name.eq_ignore_ascii_case(b"connection") => {
                // A value that is not plain ASCII is taken for `close`.
                self.close |= !value.is_ascii();
                for token in value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    self.close |= token.eq_ignore_ascii_case(b"close");
                    self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            }
            6 if name.eq_ignore_ascii_case(b"expect") => {
                self.expect_continue = value.eq_ignore_ascii_case(b"100-continue");
            }
            6 if name.eq_ignore_ascii_case(b"cookie") => self.cookies += 1,
            _ => {}
        }
    }

    /// Whether the sender lets the connection carry another message after this one:
    /// HTTP/1.1 unless told `close`, HTTP/1.0 only with `keep-alive`.
    fn keeps_alive(&self, version: Version) -> bool {
        !self.close && (version == Version::HTTP_11 || self.keep_alive)
    }

    /// How a request body is delimited (RFC 9112 §6.3). Anything a server and the upstream
    /// behind it could read differently is refused (request smuggling): both
    /// Content-Length and Transfer-Encoding, a coding other than chunked last,
    /// Transfer-Encoding on HTTP/1.0, a malformed or conflicting Content-Length.
    fn body(&self, version: Version) -> Result<RequestBodyLength, RequestHeadError> {
        if self.codings > 0 {
            return if version == Version::HTTP_10 {
                Err(RequestHeadError::Malformed("transfer-encoding in HTTP/1.0"))
            } else if self.length_items > 0 {
                Err(RequestHeadError::Malformed(
                    "both content-length and transfer-encoding",
                ))
            } else if self.codings == 1 && self.only_chunked {
                Ok(RequestBodyLength::Chunked)
            } else {
                // gzip, chunked: ficus would decode the chunks and pass on gzip bytes
                // labelled as nothing. Other codings it does not decode at all.
                Err(RequestHeadError::UnsupportedCoding)
            };
        }
        if self.length_invalid {
            return Err(RequestHeadError::Malformed("content-length"));
        }
        Ok(match self.length {
            None | Some(0) => RequestBodyLength::Empty,
            Some(n) => RequestBodyLength::Length(n),
        })
    }
}

/// Parses a request head at the start of `buf`, skipping the empty lines a client
/// may send before it (RFC 9112 §2.2). On success the head's bytes are split off
/// `buf`, and the target and header values share them; `Ok(None)` means more bytes
/// are needed. A head longer than `max_bytes` is [`RequestHeadError::TooLarge`].
pub fn parse_request_head(
    buf: &mut BytesMut,
    max_bytes: usize,
) -> Result<Option<RequestHead>, RequestHeadError> {
    let mut lines = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut facts = Facts::default();
    let (len, method, target, version, spans) = {
        let mut request = httparse::Request::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut request,
            buf,
            &mut lines,
        );
        match parsed {
            Ok(httparse::Status::Complete(len)) if len > max_bytes => {
                return Err(RequestHeadError::TooLarge);
            }
            Ok(httparse::Status::Complete(len)) => {
                let base = buf.as_ptr() as usize;
                for header in request.headers.iter() {
                    facts.observe(header.name.as_bytes(), header.value);
                }
                // Complete: httparse has set the method, target and version.
                let method = Method::from_bytes(request.method.unwrap_or("").as_bytes())
                    .map_err(|_| RequestHeadError::Malformed("method"))?;
                let target = request.path.unwrap_or("");
                let target = (target.as_ptr() as usize - base, target.len());
                (
                    len,
                    method,
                    target,
                    request.version.unwrap_or(1),
                    record_spans(base, request.headers),
                )
            }
            Ok(httparse::Status::Partial) if buf.len() > max_bytes => {
                return Err(RequestHeadError::TooLarge);
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(RequestHeadError::TooLarge),
            Err(e) => return Err(RequestHeadError::Malformed(parse_error(e))),
        }
    };
    let version = if version == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let body = facts.body(version)?;
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target.0..target.0 + target.1))
        .map_err(|_| RequestHeadError::Malformed("target"))?;
    let fields = Fields::received(head, spans);
    Ok(Some(RequestHead {
        head: Head {
            method,
            uri,
            version,
            fields,
        },
        body,
        keep_alive: facts.keeps_alive(version),
        expect_continue: facts.expect_continue,
        length_given: facts.length_items > 0,
        cookies_repeated: facts.cookies > 1,
    }))
}

fn parse_error(error: httparse::Error) -> &'static str {
    match error {
        httparse::Error::HeaderName => "header name",
        httparse::Error::HeaderValue => "header value",
        httparse::Error::NewLine => "line ending",
        httparse::Error::Status => "status code",
        httparse::Error::Token => "token",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "version",
    }
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// Exactly this many bytes (0 for responses that cannot have a body).
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Everything until the upstream closes the connection.
    Close,
}

/// How the body of `head`, the answer to a `method` request, is delimited
/// (RFC 9112 §6.3), and whether the connection may carry another request after it.
/// Removes a Content-Length that chunked coding overrides, so nobody relays it.
pub fn response_framing(
    method: &Method,
    head: &mut ResponseHead,
) -> Result<(ResponseFraming, bool), ProtocolError> {
    let facts = &head.facts;
    let mut reusable = facts.keeps_alive(head.version);
    let status = head.status;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        // The connection speaks another protocol from here on.
        return Ok((ResponseFraming::Length(0), false));
    }
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((ResponseFraming::Length(0), reusable));
    }
    if facts.codings > 0 {
        if head.version == Version::HTTP_10 {
            return Err(ProtocolError::TransferEncodingOnHttp10);
        }
        let chunked = facts.last_chunked;
        if facts.length_items > 0 {
            // Both framings: chunked wins, but the sender is confused (or smuggling).
            head.fields.remove(CONTENT_LENGTH.as_str());
            reusable = false;
        }
        return Ok(if chunked {
            (ResponseFraming::Chunked, reusable)
        } else {
            (ResponseFraming::Close, false)
        });
    }
    if facts.length_invalid {
        return Err(ProtocolError::ContentLength);
    }
    Ok(match facts.length {
        Some(length) => (ResponseFraming::Length(length), reusable),
        None => (ResponseFraming::Close, false),
    })
}

/// How a client's request body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBodyLength {
    /// No body: neither Content-Length nor Transfer-Encoding (or Content-Length: 0).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
}

/// A Content-Length value: one run of ASCII digits that fits in u64.
fn parse_digits(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || bytes.len() > 19 {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// Takes what `buf` holds of a body with `left` bytes to go, counting it off `left`.
fn take_length(buf: &mut BytesMut, left: &mut u64) -> Bytes {
    let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
    *left -= take as u64;
    buf.split_to(take).freeze()
}

/// What the chunked decoder produced from the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The trailer fields, after the last chunk; the body has ended.
    Trailers(HeaderMap),
    /// The body has ended.
    End,
    /// More bytes are needed.
    NeedMore,
}

/// Where a body read from a connection's buffer stands: so many bytes to go, chunked,
/// until the peer closes, or ended. Shared by the server's request bodies and the
/// upstream client's answers; each does its own I/O and decides what an end means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyDecoder {
    /// This many bytes to go.
    Length(u64),
    /// Chunked coding.
    Chunked(Chunked),
    /// Everything until the peer closes the connection.
    UntilClose,
    /// Ended.
    Done,
}

impl BodyDecoder {
    /// Decodes what `buf` holds of the body. A body whose last length byte this takes is
    /// `Done` afterwards (the data is still returned).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ProtocolError> {
        match self {
            BodyDecoder::Done => Ok(Decoded::End),
            BodyDecoder::Length(_) | BodyDecoder::UntilClose if buf.is_empty() => {
                Ok(Decoded::NeedMore)
            }
            BodyDecoder::Length(left) => {
                let data = take_length(buf, left);
                if *left == 0 {
                    *self = BodyDecoder::Done;
                }
                Ok(Decoded::Data(data))
            }
            BodyDecoder::Chunked(state) => state.decode(buf),
            BodyDecoder::UntilClose => Ok(Decoded::Data(buf.split().freeze())),
        }
    }

    /// Whether the body has ended.
    pub fn is_done(&self) -> bool {
        *self == BodyDecoder::Done
    }

    /// How many bytes are left, when that is known.
    pub fn exact(&self) -> Option<u64> {
        match self {
            BodyDecoder::Done => Some(0),
            BodyDecoder::Length(n) => Some(*n),
            BodyDecoder::Chunked(_) | BodyDecoder::UntilClose => None,
        }
    }
}

/// Incremental decoder of a chunked body (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk, with this many bytes left.
    Data(u64),
    /// Expecting the CRLF that ends a chunk.
    DataEnd,
    /// After the last chunk: trailers or the final CRLF.
    Trailer,
    /// The body has ended.
    Done,
}

impl Chunked {
    /// Decodes what it can from the start of `buf`, consuming it.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ProtocolError> {
        loop {
            match *self {
                Chunked::Size => {
                    if !buf.first().is_some_and(u8::is_ascii_hexdigit) {
                        if buf.is_empty() {
                            return Ok(Decoded::NeedMore);
                        }
                        return Err(ProtocolError::Chunk);
                    }
                    let parsed = httparse::parse_chunk_size(buf);
                    if let Ok(httparse::Status::Complete((used, _))) = parsed
                        && buf[..used - 1].contains(&b'\n')
                    {
                        // A bare LF inside an extension: hyper refuses it, and so do we.
                        return Err(ProtocolError::Chunk);
                    }
                    match parsed {
                        Ok(httparse::Status::Complete((used, 0))) => {
                            buf.advance(used);
                            *self = Chunked::Trailer;
                        }
                        Ok(httparse::Status::Complete((used, size))) => {
                            buf.advance(used);
                            *self = Chunked::Data(size);
                        }
                        Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                            return Err(ProtocolError::Chunk);
                        }
                        Ok(httparse::Status::Partial) => return Ok(Decoded::NeedMore),
                        Err(_) => return Err(ProtocolError::Chunk),
                    }
                }
                Chunked::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let rest = left - take as u64;
                    *self = if rest == 0 {
                        Chunked::DataEnd
                    } else {
                        Chunked::Data(rest)
                    };
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                Chunked::DataEnd => {
                    if buf.len() < 2 {
                        return match buf.first() {
                            None | Some(b'\r') => Ok(Decoded::NeedMore),
                            Some(_) => Err(ProtocolError::Chunk),
                        };
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ProtocolError::Chunk);
                    }
                    buf.advance(2);
                    *self = Chunked::Size;
                }
                Chunked::Trailer => return self.trailer(buf),
                Chunked::Done => return Ok(Decoded::End),
            }
        }
    }

    fn trailer(&mut self, buf: &mut BytesMut) -> Result<Decoded, ProtocolError> {
        if buf.starts_with(b"\r\n") {
            buf.advance(2);
            *self = Chunked::Done;
            return Ok(Decoded::End);
        }
        if buf.len() < 2 {
            return Ok(Decoded::NeedMore);
        }
        let mut fields = [httparse::EMPTY_HEADER; 32];
        match httparse::parse_headers(buf, &mut fields) {
            Ok(httparse::Status::Complete((used, fields))) => {
                let mut trailers = HeaderMap::with_capacity(fields.len());
                for field in fields {
                    let name = HeaderName::from_bytes(field.name.as_bytes())
                        .map_err(|_| ProtocolError::Trailers)?;
                    let value = HeaderValue::from_bytes(field.value)
                        .map_err(|_| ProtocolError::Trailers)?;
                    trailers.append(name, value);
                }
                buf.advance(used);
                *self = Chunked::Done;
                Ok(Decoded::Trailers(trailers))
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_TRAILER_BYTES => {
                Err(ProtocolError::Trailers)
            }
            Ok(httparse::Status::Partial) => Ok(Decoded::NeedMore),
            Err(_) => Err(ProtocolError::Trailers),
        }
    }
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
