//! Weighted splits with sticky assignment.
//!
//! A sticky key (a header or a cookie) is hashed with xxh3, which is stable
//! across builds, platforms and Rust releases (`DefaultHasher` is not: an
//! upgrade would reshuffle every user), and mapped to a bucket in 0..10_000.
//! Sides own consecutive bucket ranges in the order of their names, so for a
//! two-way split raising one side's weight only moves users towards it.

use http::header::{COOKIE, HeaderName};

use crate::message::Fields;

/// Buckets in the split space: weights are kept in basis points.
pub const BUCKETS: u32 = 10_000;

/// Where the sticky key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StickyKey {
    /// The value of this request header.
    Header(HeaderName),
    /// The value of this cookie.
    Cookie(Box<str>),
}

impl StickyKey {
    /// Parses `header:NAME` or `cookie:NAME`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.split_once(':') {
            Some(("header", name)) => HeaderName::from_bytes(name.trim().as_bytes())
                .map(StickyKey::Header)
                .map_err(|_| format!("\"{name}\" is not a valid header name")),
            Some(("cookie", name)) if is_cookie_name(name.trim()) => {
                Ok(StickyKey::Cookie(name.trim().into()))
            }
            Some(("cookie", name)) => Err(format!("\"{name}\" is not a valid cookie name")),
            _ => Err(format!(
                "\"{text}\" is not a sticky key; write \"header:NAME\" or \"cookie:NAME\""
            )),
        }
    }

    /// The key's value in a request, if present and non-empty.
    pub fn find<'h>(&self, fields: &'h Fields) -> Option<&'h [u8]> {
        let value = match self {
            StickyKey::Header(name) => fields.get(name.as_str()),
            StickyKey::Cookie(name) => fields
                .get_all(COOKIE.as_str())
                .find_map(|line| cookie_value(line, name.as_bytes())),
        };
        value.filter(|v| !v.is_empty())
    }
}

impl std::fmt::Display for StickyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StickyKey::Header(name) => write!(f, "header:{name}"),
            StickyKey::Cookie(name) => write!(f, "cookie:{name}"),
        }
    }
}

fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

/// Finds `name=value` in one `Cookie` header line (`a=1; b=2`).
fn cookie_value<'h>(line: &'h [u8], name: &[u8]) -> Option<&'h [u8]> {
    line.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        (&pair[..eq] == name).then(|| {
            let value = &pair[eq + 1..];
            // RFC 6265 allows a value in double quotes; the quotes are not part of it.
            value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(value)
        })
    })
}

/// The bucket (0..10_000) of a sticky key. Stable forever: changing it would move users.
pub fn bucket(key: &[u8]) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(key) % u64::from(BUCKETS)) as u32
}

/// How a side was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignment {
    /// From the sticky key's bucket.
    Sticky(u32),
    /// A random draw: no sticky key configured or present.
    Random(u32),
}

/// A compiled split: sides in name order with their cumulative upper bucket bounds.
#[derive(Debug, Clone)]
pub struct Split {
    /// `(side index, exclusive upper bound in buckets)`, ascending; the last bound is 10_000.
    bounds: Vec<(usize, u32)>,
    /// Key that keeps one user on one side.
    pub sticky: Option<StickyKey>,
}

impl Split {
    /// Builds a split from weights in basis points (in side order) that sum to [`BUCKETS`].
    pub fn new(weights_bp: &[u32], sticky: Option<StickyKey>) -> Self {
        let mut upper = 0;
        let bounds = weights_bp
            .iter()
            .enumerate()
            .filter(|&(_, &w)| w > 0)
            .map(|(side, &w)| {
                upper += w;
                (side, upper)
            })
            .collect();
        Split { bounds, sticky }
    }

    /// The side a bucket falls on.
    pub fn side_for_bucket(&self, bucket: u32) -> usize {
        self.bounds
            .iter()
            .find(|&&(_, upper)| bucket < upper)
            .or(self.bounds.last())
            .map_or(0, |&(side, _)| side)
    }

    /// Chooses a side for a request.
    pub fn choose(&self, fields: &Fields) -> (usize, Assignment) {
        let assignment = match self.sticky.as_ref().and_then(|k| k.find(fields)) {
            Some(key) => Assignment::Sticky(bucket(key)),
            None => Assignment::Random(fastrand::u32(..BUCKETS)),
        };
        let (Assignment::Sticky(b) | Assignment::Random(b)) = assignment;
        (self.side_for_bucket(b), assignment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn bucket_is_stable_across_builds() {
        // Pinned values: if these change, every sticky user would move sides on upgrade.
        assert_eq!(bucket(b""), 3138);
        assert_eq!(bucket(b"user-1"), 6057);
        assert_eq!(bucket(b"alice"), 8080);
    }

    #[test]
    fn raising_a_weight_only_moves_users_towards_it() {
        let mut previous: Option<Vec<usize>> = None;
        for new_pct in [0u32, 1, 5, 25, 50, 75, 100] {
            let split = Split::new(&[(100 - new_pct) * 100, new_pct * 100], None);
            let sides: Vec<usize> = (0..5_000)
                .map(|u| split.side_for_bucket(bucket(format!("user-{u}").as_bytes())))
                .collect();
            if let Some(prev) = &previous {
                for (before, after) in prev.iter().zip(&sides) {
                    assert!(
                        !(*before == 1 && *after == 0),
                        "a user moved back to the old side"
                    );
                }
            }
            previous = Some(sides);
        }
    }

    #[test]
    fn zero_weight_side_gets_nothing() {
        let split = Split::new(&[10_000, 0], None);
        assert!((0..BUCKETS).all(|b| split.side_for_bucket(b) == 0));
        let split = Split::new(&[0, 10_000], None);
        assert!((0..BUCKETS).all(|b| split.side_for_bucket(b) == 1));
    }

    #[test]
    fn finds_header_and_cookie_keys() {
        let mut map = http::HeaderMap::new();
        map.insert("x-user-id", HeaderValue::from_static("42"));
        map.append(COOKIE, HeaderValue::from_static("a=1; uid=\"abc\""));
        map.append(COOKIE, HeaderValue::from_static("session=s1"));
        let headers = Fields::from_map(map);
        let header = StickyKey::parse("header:X-User-Id").unwrap();
        assert_eq!(header.find(&headers), Some(&b"42"[..]));
        assert_eq!(
            StickyKey::parse("cookie:uid").unwrap().find(&headers),
            Some(&b"abc"[..])
        );
        assert_eq!(
            StickyKey::parse("cookie:session").unwrap().find(&headers),
            Some(&b"s1"[..])
        );
        assert_eq!(
            StickyKey::parse("cookie:missing").unwrap().find(&headers),
            None
        );
    }

    #[test]
    fn rejects_bad_sticky_keys() {
        assert!(
            StickyKey::parse("x-user-id")
                .unwrap_err()
                .contains("header:NAME")
        );
        assert!(StickyKey::parse("header:bad name").is_err());
        assert!(StickyKey::parse("cookie:").is_err());
        assert!(StickyKey::parse("query:user").is_err());
    }
}
