//! Validation of a route's `shadow = { ... }`.

use std::time::Duration;

use http::{HeaderName, Method};
use toml::Spanned;

use super::file::{FileCompare, FileIgnore, FileShadow};
use super::{Compiler, defaults, parse_method, unknown_upstream};
use crate::shadow::compare::{CompareSpec, HeaderSelection};
use crate::shadow::jsonpath::JsonPath;

/// Largest `max_body` accepted: every in-flight shadow may buffer two bodies this size.
pub const MAX_SHADOW_BODY: u64 = 64 * 1024 * 1024;
/// Largest `concurrency` accepted.
pub const MAX_SHADOW_CONCURRENCY: u32 = 10_000;
/// Headers whose values never appear in mismatch records or logs, whatever `redact` says.
pub const ALWAYS_REDACTED: [HeaderName; 4] = [
    http::header::AUTHORIZATION,
    http::header::COOKIE,
    http::header::SET_COOKIE,
    http::header::PROXY_AUTHORIZATION,
];

/// A validated `shadow` setting.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowSpec {
    /// Index of the upstream mirrored to.
    pub upstream: usize,
    /// Fraction of the route's requests mirrored.
    pub sample: f64,
    /// Methods mirrored.
    pub methods: Vec<Method>,
    /// Largest request or response body buffered, in bytes.
    pub max_body: usize,
    /// Deadline for the shadow exchange (request, response and body).
    pub timeout: Duration,
    /// Most shadow requests in flight for the route.
    pub concurrency: usize,
    /// What is compared, and what is ignored.
    pub compare: CompareSpec,
    /// When set, this fraction of mirrored requests is also sent a second time to the
    /// primary upstream, and fields that differ between the two answers are learned as noise.
    pub learn_noise: Option<f64>,
    /// Headers never shown: [`ALWAYS_REDACTED`] plus the route's `redact` list.
    pub redact: Vec<HeaderName>,
    /// Line of the `shadow` key.
    pub line: usize,
}

impl ShadowSpec {
    /// Whether `name`'s values must never be shown.
    pub fn redacts(&self, name: &HeaderName) -> bool {
        self.redact.contains(name)
    }
}

impl Compiler {
    /// Validates `raw` for route `route`; `primary` lists the route's own upstreams.
    pub(super) fn shadow(
        &mut self,
        route: &str,
        raw: &Spanned<FileShadow>,
        upstreams: &[&str],
        primary: &[&str],
    ) -> Option<ShadowSpec> {
        let at = raw.span().start;
        let s = raw.get_ref();
        let before = self.problems.len();
        let fail = |this: &mut Self, msg: String| {
            this.problem(Some(at), format!("route \"{route}\": shadow.{msg}"))
        };
        let upstream = upstreams.iter().position(|u| *u == s.upstream);
        match upstream {
            None => fail(self, unknown_upstream("upstream", &s.upstream, upstreams)),
            Some(_) if primary.len() == 1 && primary[0] == s.upstream => fail(
                self,
                format!(
                    "upstream: \"{}\" already answers this route; mirror to the new service instead",
                    s.upstream
                ),
            ),
            Some(_) => {}
        }
        if !(0.0..=1.0).contains(&s.sample) {
            fail(
                self,
                format!("sample: {} is not a fraction; use 0.0 to 1.0", s.sample),
            );
        }
        let methods = match &s.methods {
            None => vec![Method::GET, Method::HEAD],
            Some(list) if list.is_empty() => {
                fail(
                    self,
                    "methods: empty; remove the key to mirror GET and HEAD".into(),
                );
                Vec::new()
            }
            Some(list) => list
                .iter()
                .filter_map(|m| {
                    parse_method(m)
                        .map_err(|e| fail(self, format!("methods: {e}")))
                        .ok()
                })
                .collect(),
        };
        let max_body = s.max_body.unwrap_or(defaults::SHADOW_MAX_BODY as u64);
        if max_body > MAX_SHADOW_BODY {
            fail(
                self,
                format!("max_body: {max_body} bytes is more than the limit of {MAX_SHADOW_BODY}"),
            );
        }
        let concurrency = s
            .concurrency
            .map_or(defaults::SHADOW_CONCURRENCY, |n| n as usize);
        if concurrency == 0 || concurrency > MAX_SHADOW_CONCURRENCY as usize {
            fail(
                self,
                format!("concurrency: must be from 1 to {MAX_SHADOW_CONCURRENCY}"),
            );
        }
        let timeout = self.duration(
            at,
            &format!("route \"{route}\": shadow.timeout"),
            s.timeout.as_ref(),
            defaults::SHADOW_TIMEOUT,
        );
        let compare = self.compare_spec(
            route,
            at,
            s.compare.as_ref().unwrap_or(&FileCompare::default()),
            s.ignore.as_ref().unwrap_or(&FileIgnore::default()),
        );
        let learn_noise = match (s.noise.as_deref(), s.noise_sample) {
            (None | Some("off"), None) => None,
            (None | Some("off"), Some(_)) => {
                fail(
                    self,
                    "noise_sample: only applies with noise = \"learn\"".into(),
                );
                None
            }
            (Some("learn"), sample) => {
                let sample = sample.unwrap_or(defaults::SHADOW_NOISE_SAMPLE);
                if !(sample > 0.0 && sample <= 1.0) {
                    fail(
                        self,
                        format!("noise_sample: {sample} must be above 0.0 and at most 1.0"),
                    );
                }
                Some(sample)
            }
            (Some(other), _) => {
                fail(
                    self,
                    format!("noise: \"{other}\" is not a mode; use \"learn\" or \"off\""),
                );
                None
            }
        };
        let mut redact = ALWAYS_REDACTED.to_vec();
        for name in s.redact.iter().flatten() {
            match self.header_name(route, at, "redact", name) {
                Some(name) if !redact.contains(&name) => redact.push(name),
                _ => {}
            }
        }
        if self.problems.len() > before {
            return None;
        }
        Some(ShadowSpec {
            upstream: upstream?,
            sample: s.sample,
            methods,
            // Invariant: checked against MAX_SHADOW_BODY above, which fits any usize ficus runs on.
            max_body: usize::try_from(max_body).unwrap_or(usize::MAX),
            timeout,
            concurrency,
            compare,
            learn_noise,
            redact,
            line: self.lines.of(at),
        })
    }

    fn compare_spec(
        &mut self,
        route: &str,
        at: usize,
        compare: &FileCompare,
        ignore: &FileIgnore,
    ) -> CompareSpec {
        let headers = match compare.headers.as_deref() {
            None | Some([]) => HeaderSelection::None,
            Some([all]) if all == "*" => HeaderSelection::All,
            Some(names) => HeaderSelection::List(
                names
                    .iter()
                    .filter_map(|n| self.header_name(route, at, "compare.headers", n))
                    .collect(),
            ),
        };
        let ignore_headers = ignore
            .headers
            .iter()
            .flatten()
            .filter_map(|n| self.header_name(route, at, "ignore.headers", n))
            .collect();
        let ignore_json = ignore
            .json
            .iter()
            .flatten()
            .filter_map(|text| match JsonPath::parse(text) {
                Ok(path) => Some(path),
                Err(e) => {
                    self.problem(
                        Some(at),
                        format!("route \"{route}\": shadow.ignore.json: \"{text}\": {e}"),
                    );
                    None
                }
            })
            .collect();
        CompareSpec {
            status: compare.status.unwrap_or(true),
            headers,
            body: compare.body.unwrap_or(true),
            ignore_headers,
            ignore_json,
        }
    }

    fn header_name(&mut self, route: &str, at: usize, key: &str, text: &str) -> Option<HeaderName> {
        // `*` is a valid header-name character, but here it only means "all headers".
        match HeaderName::from_bytes(text.as_bytes()) {
            Ok(name) if text != "*" => Some(name),
            _ => {
                let hint = if text == "*" {
                    "\"*\" only means all headers in compare.headers, as its only entry"
                } else {
                    "not a header name"
                };
                self.problem(
                    Some(at),
                    format!("route \"{route}\": shadow.{key}: \"{text}\": {hint}"),
                );
                None
            }
        }
    }
}
