//! What a route's shadow remembers between requests: learned noise and its most recent
//! mismatches, both bounded, for `/shadow/mismatches`.

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderName;
use serde::Serialize;

use super::compare::{Comparison, Noise};
use super::jsonpath::JsonPath;

/// Mismatches kept per route, newest first.
pub const MISMATCHES_KEPT: usize = 32;
/// Most noise entries (header names plus JSON paths) learned per route.
pub const MAX_NOISE: usize = 256;

/// One recorded disagreement. Holds no request headers and no query string: only what
/// is safe to show (header values in the diff are redacted by the comparison).
#[derive(Debug, Clone, Serialize)]
pub struct Mismatch {
    /// When it was seen, RFC 3339 in UTC.
    pub time: String,
    /// The request's method.
    pub method: String,
    /// The request's path (no query: it may carry secrets).
    pub path: String,
    /// The request id both sides received.
    pub request_id: String,
    /// The primary's status.
    pub primary_status: u16,
    /// The shadow's status.
    pub shadow_status: u16,
    /// What differs.
    pub diff: Comparison,
}

/// The newest [`MISMATCHES_KEPT`] mismatches of one route.
#[derive(Debug, Default, Clone)]
pub struct MismatchLog(VecDeque<Mismatch>);

impl MismatchLog {
    /// Keeps `mismatch`, forgetting the oldest beyond the bound.
    pub fn push(&mut self, mismatch: Mismatch) {
        if self.0.len() == MISMATCHES_KEPT {
            self.0.pop_back();
        }
        self.0.push_front(mismatch);
    }

    /// Newest first.
    pub fn iter(&self) -> impl Iterator<Item = &Mismatch> {
        self.0.iter()
    }
}

/// Longest learned JSON path kept: keys come from response bodies.
pub const MAX_NOISE_PATH_CHARS: usize = 256;

/// Adds what `learned` found to `noise`, skipping what is known, up to [`MAX_NOISE`] entries.
/// Never learns the whole document (`$`, when the two answers' shapes differ entirely) nor
/// paths longer than [`MAX_NOISE_PATH_CHARS`]. Returns the entries that are new.
pub fn merge_noise(noise: &mut Noise, learned: Noise) -> Vec<String> {
    let mut added = Vec::new();
    for name in learned.headers {
        if noise.headers.len() + noise.json.len() >= MAX_NOISE {
            break;
        }
        if !noise.headers.contains(&name) {
            added.push(format!("header {name}"));
            noise.headers.push(name);
        }
    }
    for path in learned.json {
        if noise.headers.len() + noise.json.len() >= MAX_NOISE {
            break;
        }
        let text = path.to_string();
        if text == "$" || text.len() > MAX_NOISE_PATH_CHARS || noise.json.contains(&path) {
            continue;
        }
        added.push(text);
        noise.json.push(path);
    }
    added
}

/// The learned noise as operators read it: header names and JSON paths.
pub fn describe_noise(noise: &Noise) -> (Vec<String>, Vec<String>) {
    (
        noise.headers.iter().map(HeaderName::to_string).collect(),
        noise.json.iter().map(JsonPath::to_string).collect(),
    )
}

/// Now as RFC 3339 in UTC, to the millisecond.
pub fn now_rfc3339() -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(since.as_secs(), since.subsec_millis())
}

/// `secs` after the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn rfc3339(secs: u64, millis: u32) -> String {
    let days = secs / 86_400;
    let rest = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`, for non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        let cases = [
            (0, 0, "1970-01-01T00:00:00.000Z"),
            (951_782_400, 5, "2000-02-29T00:00:00.005Z"),
            (1_795_804_199, 999, "2026-11-27T18:29:59.999Z"),
            (4_102_444_800, 0, "2100-01-01T00:00:00.000Z"),
        ];
        for (secs, millis, want) in cases {
            assert_eq!(rfc3339(secs, millis), want, "{secs}");
        }
    }

    #[test]
    fn log_keeps_the_newest_mismatches() {
        let mut log = MismatchLog::default();
        for i in 0..(MISMATCHES_KEPT + 5) {
            log.push(Mismatch {
                time: String::new(),
                method: "GET".into(),
                path: format!("/{i}"),
                request_id: String::new(),
                primary_status: 200,
                shadow_status: 200,
                diff: Comparison {
                    differences: Vec::new(),
                    truncated: false,
                },
            });
        }
        let paths: Vec<&str> = log.iter().map(|m| m.path.as_str()).collect();
        assert_eq!(paths.len(), MISMATCHES_KEPT);
        assert_eq!(paths[0], format!("/{}", MISMATCHES_KEPT + 4));
        assert_eq!(paths[MISMATCHES_KEPT - 1], "/5");
    }

    #[test]
    fn merge_noise_adds_only_new_entries_up_to_the_bound() {
        let mut noise = Noise::default();
        let learned = Noise {
            headers: vec![HeaderName::from_static("etag")],
            json: vec![JsonPath::parse("$.ts").unwrap()],
        };
        assert_eq!(merge_noise(&mut noise, learned.clone()).len(), 2);
        assert!(merge_noise(&mut noise, learned).is_empty());
        let whole = Noise {
            headers: Vec::new(),
            json: vec![
                JsonPath::parse("$").unwrap(),
                JsonPath::parse(&format!("$.{}", "k".repeat(300))).unwrap(),
            ],
        };
        assert!(
            merge_noise(&mut noise, whole).is_empty(),
            "never the root, never huge keys"
        );
        for i in 0..(MAX_NOISE * 2) {
            let path = JsonPath::parse(&format!("$.k{i}")).unwrap();
            merge_noise(
                &mut noise,
                Noise {
                    headers: Vec::new(),
                    json: vec![path],
                },
            );
        }
        assert_eq!(noise.headers.len() + noise.json.len(), MAX_NOISE);
    }
}
