//! The closed set of ways a proxied request can fail, and whose fault each is.

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::Full;

use crate::message::{Reply, RequestId};
use crate::metrics::UpstreamErrorKind;
use crate::routing::path::PathError;
use crate::upstream::SendError;

/// Why ficus answered a request itself instead of relaying the upstream's answer.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The client sent a path ficus will not route (see [`PathError`]).
    #[error("bad request path: {0}")]
    BadPath(#[from] PathError),
    /// The request target is not a path (`*`, authority-form) or the method is CONNECT.
    #[error("unsupported request target")]
    BadTarget,
    /// The request target is longer than ficus accepts.
    #[error("request target too long")]
    UriTooLong,
    /// Host is missing (HTTP/1.1), repeated, or not a plain `host[:port]`.
    #[error("missing, repeated or malformed Host")]
    BadHost,
    /// The client's request body failed (it went away or broke framing) while forwarding.
    #[error("client aborted its request body: {cause}")]
    ClientAborted {
        /// The underlying error, for logs.
        cause: String,
    },
    /// The upstream failed; the cause is logged, never sent to the client.
    #[error("upstream {kind:?}: {cause}")]
    Upstream {
        /// What went wrong, as a closed kind.
        kind: UpstreamErrorKind,
        /// The underlying error, for logs.
        cause: String,
    },
}

impl ProxyError {
    /// The status the client sees. No catch-all arm: a new variant must choose.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadPath(_) | ProxyError::BadTarget | ProxyError::BadHost => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::ClientAborted { .. } => StatusCode::BAD_REQUEST,
            ProxyError::UriTooLong => StatusCode::URI_TOO_LONG,
            ProxyError::Upstream { kind, .. } => match kind {
                UpstreamErrorKind::Connect | UpstreamErrorKind::Protocol => StatusCode::BAD_GATEWAY,
                UpstreamErrorKind::ConnectTimeout | UpstreamErrorKind::Timeout => {
                    StatusCode::GATEWAY_TIMEOUT
                }
            },
        }
    }

    /// The closed error name in the JSON body.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::BadPath(_) => "bad_path",
            ProxyError::BadTarget => "bad_target",
            ProxyError::UriTooLong => "uri_too_long",
            ProxyError::BadHost => "bad_host",
            ProxyError::ClientAborted { .. } => "client_aborted",
            ProxyError::Upstream { kind, .. } => match kind {
                UpstreamErrorKind::Connect => "upstream_connect",
                UpstreamErrorKind::ConnectTimeout => "upstream_connect_timeout",
                UpstreamErrorKind::Timeout => "upstream_timeout",
                UpstreamErrorKind::Protocol => "upstream_protocol",
            },
        }
    }

    /// The reply: a short JSON body naming the error kind and the request id, no internals.
    pub fn to_reply(&self, request_id: &RequestId) -> Reply<Full<Bytes>> {
        let body = json_body(self.kind(), Some(request_id.as_bytes()));
        let mut reply = Reply::new(self.status(), Full::new(Bytes::from(body)));
        reply.fields.append(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        reply
            .fields
            .append(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        reply
    }
}

/// The JSON body of ficus's own error answers: the closed error kind and the request id.
/// Built by serde_json, as a client's own id may hold `"` or `\`.
pub fn json_body(kind: &str, request_id: Option<&[u8]>) -> String {
    let mut body = serde_json::json!({ "error": kind });
    if let Some(id) = request_id {
        body["request_id"] = String::from_utf8_lossy(id).into();
    }
    body.to_string()
}

/// Turns a failed upstream exchange into whose fault it was: the client's body
/// failing is the client's, everything else the upstream's (by closed kind).
pub fn from_send_error(error: &SendError) -> ProxyError {
    let cause = error_chain(error);
    match error {
        SendError::ConnectTimeout(_) => ProxyError::Upstream {
            kind: UpstreamErrorKind::ConnectTimeout,
            cause,
        },
        SendError::Connect(_) => ProxyError::Upstream {
            kind: UpstreamErrorKind::Connect,
            cause,
        },
        SendError::ClientBody(_) => ProxyError::ClientAborted { cause },
        SendError::Protocol(_)
        | SendError::Io(_)
        | SendError::Closed
        | SendError::Truncated
        | SendError::BodyLength => ProxyError::Upstream {
            kind: UpstreamErrorKind::Protocol,
            cause,
        },
    }
}

/// An error and its causes on one line, for logs.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
