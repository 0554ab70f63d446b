//! JSON helpers for the comparison: a side-by-side walk of two documents, number and
//! scalar equality, a depth check before parsing, and bounded rendering of values.

use serde_json::{Number, Value};

use super::compare::MAX_VALUE_CHARS;
use super::jsonpath::{JsonPath, SegRef};

/// Whether the brackets of a JSON text nest at most `max` deep. Checked before parsing, so a deep
/// document is never parsed nor walked (the walk recurses once per level).
pub(super) fn nesting_within(body: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// Walks two JSON documents side by side, handing each differing location not ignored to `sink`,
/// which returns false to stop. Recursion depth is bounded by [`MAX_JSON_DEPTH`](super::compare::MAX_JSON_DEPTH) (see `classify`).
///
/// Ignore rules are followed as the walk goes down: a rule without `..` whose steps stopped
/// matching the path is not looked at again below that point, so a document costs about
/// (locations × rules still matching) rather than (locations × all rules).
pub(super) struct Walk<'v, 'r, F> {
    ignore: &'r [&'r JsonPath],
    path: Vec<SegRef<'v>>,
    /// Indices into `ignore` of the rules still matching the path, one run per depth:
    /// `live[starts[d]..starts[d + 1]]` (the last run ends at `live.len()`).
    live: Vec<usize>,
    starts: Vec<usize>,
    sink: F,
}

impl<'v, 'r, F> Walk<'v, 'r, F>
where
    F: FnMut(&[SegRef<'v>], Option<&'v Value>, Option<&'v Value>) -> bool,
{
    pub(super) fn new(ignore: &'r [&'r JsonPath], sink: F) -> Self {
        Walk {
            ignore,
            path: Vec::new(),
            live: (0..ignore.len()).collect(),
            starts: vec![0],
            sink,
        }
    }

    /// False once the sink asked to stop.
    pub(super) fn node(&mut self, a: &'v Value, b: &'v Value) -> bool {
        if self.ignored() {
            return true;
        }
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                for (key, av) in x {
                    if !self.child(SegRef::Key(key), Some(av), y.get(key)) {
                        return false;
                    }
                }
                for (key, bv) in y {
                    if !x.contains_key(key) && !self.child(SegRef::Key(key), None, Some(bv)) {
                        return false;
                    }
                }
                true
            }
            (Value::Array(x), Value::Array(y)) => {
                for index in 0..x.len().max(y.len()) {
                    if !self.child(SegRef::Index(index), x.get(index), y.get(index)) {
                        return false;
                    }
                }
                true
            }
            _ if same_scalar(a, b) => true,
            _ => (self.sink)(&self.path, Some(a), Some(b)),
        }
    }

    fn child(&mut self, seg: SegRef<'v>, a: Option<&'v Value>, b: Option<&'v Value>) -> bool {
        self.descend(seg);
        let go_on = match (a, b) {
            (Some(a), Some(b)) => self.node(a, b),
            _ if self.ignored() => true,
            _ => (self.sink)(&self.path, a, b),
        };
        self.ascend();
        go_on
    }

    /// Steps into `seg`, keeping the rules that still match.
    fn descend(&mut self, seg: SegRef<'v>) {
        let depth = self.path.len();
        let (from, to) = (self.starts[depth], self.live.len());
        self.starts.push(to);
        for i in from..to {
            let index = self.live[i];
            let rule = self.ignore[index];
            // Rules with `..` stay (matched in full by `ignored`); a rule already matched
            // by a prefix of the path never gets here (the walk stopped above).
            if rule.has_descendant() || rule.step_accepts(depth, seg) {
                self.live.push(index);
            }
        }
        self.path.push(seg);
    }

    fn ascend(&mut self) {
        self.path.pop();
        if let Some(start) = self.starts.pop() {
            self.live.truncate(start);
        }
    }

    fn ignored(&self) -> bool {
        let depth = self.path.len();
        let from = self.starts[depth];
        self.live[from..].iter().any(|&index| {
            let rule = self.ignore[index];
            if rule.has_descendant() {
                rule.matches_refs(&self.path)
            } else {
                // Every step so far accepted the path: a match once all steps are used.
                rule.len() <= depth
            }
        })
    }
}

/// Equality of two values that are not both objects nor both arrays.
pub(super) fn same_scalar(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Number(x), Value::Number(y)) => same_number(x, y),
        _ => false,
    }
}

/// Integers exactly, anything else as f64: 1 == 1.0 == 1e0.
fn same_number(x: &Number, y: &Number) -> bool {
    let integer = |n: &Number| {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    };
    match (integer(x), integer(y)) {
        (Some(x), Some(y)) => x == y,
        _ => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => x == y,
        },
    }
}

/// Compact JSON text, cut; serialization stops once the text is long enough to be cut.
/// The value of any object key `secret` names, at any depth, is written as `"[redacted]"`.
pub(super) fn compact(value: &Value, secret: &dyn Fn(&str) -> bool) -> String {
    // Enough bytes for MAX_VALUE_CHARS + 1 chars of any width.
    let mut writer = Bounded {
        buf: Vec::new(),
        limit: 4 * (MAX_VALUE_CHARS + 1),
    };
    // An error only means the limit was reached; what was written is kept.
    let _ = write_scrubbed(value, secret, &mut writer);
    let text = match std::str::from_utf8(&writer.buf) {
        Ok(text) => text,
        // Cut inside a char at the limit: keep the valid prefix.
        Err(e) => std::str::from_utf8(&writer.buf[..e.valid_up_to()]).unwrap_or_default(),
    };
    cut(text.to_owned())
}

/// Writes `value` as compact JSON, redacting the values of secret keys. Recursion is
/// bounded by [`MAX_JSON_DEPTH`](super::compare::MAX_JSON_DEPTH): deeper documents are never parsed.
fn write_scrubbed(
    value: &Value,
    secret: &dyn Fn(&str) -> bool,
    out: &mut Bounded,
) -> std::io::Result<()> {
    use std::io::Write;
    match value {
        Value::Object(map) => {
            out.write_all(b"{")?;
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                serde_json::to_writer(&mut *out, key)?;
                out.write_all(b":")?;
                if secret(key) {
                    serde_json::to_writer(&mut *out, super::compare::REDACTED)?;
                } else {
                    write_scrubbed(item, secret, out)?;
                }
            }
            out.write_all(b"}")
        }
        Value::Array(items) => {
            out.write_all(b"[")?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                write_scrubbed(item, secret, out)?;
            }
            out.write_all(b"]")
        }
        scalar => Ok(serde_json::to_writer(&mut *out, scalar)?),
    }
}

struct Bounded {
    buf: Vec<u8>,
    limit: usize,
}

impl std::io::Write for Bounded {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = self.limit.saturating_sub(self.buf.len());
        if room == 0 {
            return Err(std::io::Error::other("long enough"));
        }
        let taken = data.len().min(room);
        self.buf.extend_from_slice(&data[..taken]);
        Ok(taken)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Cuts `text` to at most MAX_VALUE_CHARS chars, the last being "…" when cut.
pub(super) fn cut(mut text: String) -> String {
    if let Some((end, _)) = text.char_indices().nth(MAX_VALUE_CHARS) {
        let keep = text
            .char_indices()
            .nth(MAX_VALUE_CHARS - 1)
            .map_or(end, |(i, _)| i);
        text.truncate(keep);
        text.push('…');
    }
    text
}
