//! A small JSONPath subset for shadow ignore rules (`$.meta.took_ms`,
//! `$.items[*].updated_at`, `$..etag`): parsing, canonical display, and
//! matching against concrete locations inside a JSON document.
//!
//! A pattern matches a location when its steps match a prefix of the
//! location, so a pattern also covers everything below what it names.

use std::fmt::{self, Write as _};

/// Longest pattern accepted, in bytes.
pub const MAX_PATTERN_BYTES: usize = 512;

/// One element of a concrete location inside a JSON document.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Seg {
    /// An object member.
    Key(String),
    /// An array element.
    Index(usize),
}

/// A borrowed [`Seg`], for walking a document without allocating a key per node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegRef<'a> {
    /// An object member.
    Key(&'a str),
    /// An array element.
    Index(usize),
}

impl Seg {
    /// This segment, borrowed.
    pub fn as_seg_ref(&self) -> SegRef<'_> {
        match self {
            Seg::Key(key) => SegRef::Key(key),
            Seg::Index(index) => SegRef::Index(*index),
        }
    }
}

impl SegRef<'_> {
    /// This segment, owned.
    pub fn into_seg(self) -> Seg {
        match self {
            SegRef::Key(key) => Seg::Key(key.to_owned()),
            SegRef::Index(index) => Seg::Index(index),
        }
    }
}

/// Lets matching and rendering take owned and borrowed locations alike.
trait PathSeg {
    fn view(&self) -> SegRef<'_>;
}

impl PathSeg for Seg {
    fn view(&self) -> SegRef<'_> {
        self.as_seg_ref()
    }
}

impl PathSeg for SegRef<'_> {
    fn view(&self) -> SegRef<'_> {
        *self
    }
}

/// A parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JsonPath {
    steps: Vec<Step>,
}

/// One step of a pattern: `.name`, `[N]`, `[*]`, `.*`, or any of them after `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Step {
    /// Preceded by `..`: zero or more segments may come before the one selected.
    descendant: bool,
    select: Select,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Select {
    Key(String),
    Index(usize),
    AnyIndex,
    Any,
}

impl Select {
    fn accepts(&self, seg: SegRef<'_>) -> bool {
        match (self, seg) {
            (Select::Key(key), SegRef::Key(seg)) => key == seg,
            (Select::Index(index), SegRef::Index(seg)) => *index == seg,
            (Select::AnyIndex, SegRef::Index(_)) | (Select::Any, _) => true,
            _ => false,
        }
    }
}

impl JsonPath {
    /// Parses a pattern; the error says what is wrong and where (a byte offset),
    /// in one short sentence fit for a config error message. Must start with `$`.
    pub fn parse(text: &str) -> Result<JsonPath, String> {
        if text.len() > MAX_PATTERN_BYTES {
            return Err(format!(
                "a JSON path is at most {MAX_PATTERN_BYTES} bytes, this one has {}",
                text.len()
            ));
        }
        if !text.starts_with('$') {
            return Err("a JSON path must start with '$'".to_owned());
        }
        let mut parser = Parser { text, pos: 1 };
        let mut steps = Vec::new();
        while parser.pos < text.len() {
            steps.push(parser.step()?);
        }
        Ok(JsonPath { steps })
    }

    /// Whether the concrete location `path` (from the document root) is matched by this pattern.
    /// `..name` matches `name` at any depth below (zero or more segments in between), `[*]` any
    /// index, `.*` any key or index, `[N]` that index, `.name`/`['name']` that key.
    /// A pattern also matches everything below a matched location.
    pub fn matches(&self, path: &[Seg]) -> bool {
        self.matches_path(path)
    }

    /// [`JsonPath::matches`] for a borrowed location.
    pub fn matches_refs(&self, path: &[SegRef<'_>]) -> bool {
        self.matches_path(path)
    }

    /// A pattern matching exactly `path` with every array index replaced by `[*]`.
    pub fn generalize(path: &[Seg]) -> JsonPath {
        Self::generalize_path(path)
    }

    /// [`JsonPath::generalize`] for a borrowed location.
    pub fn generalize_refs(path: &[SegRef<'_>]) -> JsonPath {
        Self::generalize_path(path)
    }

    fn generalize_path<T: PathSeg>(path: &[T]) -> JsonPath {
        let steps = path
            .iter()
            .map(|seg| Step {
                descendant: false,
                select: match seg.view() {
                    SegRef::Key(key) => Select::Key(key.to_owned()),
                    SegRef::Index(_) => Select::AnyIndex,
                },
            })
            .collect();
        JsonPath { steps }
    }

    /// Whether the pattern has a `..` step (then only [`JsonPath::matches_refs`] can tell).
    pub fn has_descendant(&self) -> bool {
        self.steps.iter().any(|step| step.descendant)
    }

    /// For a pattern without `..`: its number of steps (it matches a location when its
    /// steps accept the location's first that many segments).
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether the pattern is `$` alone, which matches every location.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// For a pattern without `..`: whether step `index` accepts `seg` (false past the end).
    pub fn step_accepts(&self, index: usize, seg: SegRef<'_>) -> bool {
        self.steps
            .get(index)
            .is_some_and(|step| step.select.accepts(seg))
    }

    /// Bounded: O(steps × segments) time, no backtracking.
    fn matches_path<T: PathSeg>(&self, path: &[T]) -> bool {
        if !self.steps.iter().any(|step| step.descendant) {
            return self.steps.len() <= path.len()
                && self
                    .steps
                    .iter()
                    .zip(path)
                    .all(|(step, seg)| step.select.accepts(seg.view()));
        }
        // reach[j]: the steps taken so far match exactly path[..j]. On the stack for the
        // depths a comparison walks (documents nest at most MAX_JSON_DEPTH): this runs for
        // every location of a document, once per `..` rule.
        const ON_STACK: usize = 80;
        let (mut reach_stack, mut next_stack) = ([false; ON_STACK], [false; ON_STACK]);
        let (mut reach_heap, mut next_heap);
        let (mut reach, mut next): (&mut [bool], &mut [bool]) = if path.len() < ON_STACK {
            (
                &mut reach_stack[..=path.len()],
                &mut next_stack[..=path.len()],
            )
        } else {
            reach_heap = vec![false; path.len() + 1];
            next_heap = vec![false; path.len() + 1];
            (&mut reach_heap, &mut next_heap)
        };
        reach[0] = true;
        for step in &self.steps {
            next.fill(false);
            // Whether some reach[j'] with j' <= j holds: a `..` step may skip to here.
            let mut reached_before = false;
            for (j, seg) in path.iter().enumerate() {
                reached_before |= reach[j];
                let from = if step.descendant {
                    reached_before
                } else {
                    reach[j]
                };
                next[j + 1] = from && step.select.accepts(seg.view());
            }
            std::mem::swap(&mut reach, &mut next);
            if !reach.contains(&true) {
                return false;
            }
        }
        true
    }
}

impl fmt::Display for JsonPath {
    /// The canonical text, which parses back to an equal pattern.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('$')?;
        for step in &self.steps {
            if step.descendant {
                f.write_str("..")?;
            }
            match &step.select {
                Select::Key(key) if is_identifier(key) => {
                    if !step.descendant {
                        f.write_char('.')?;
                    }
                    f.write_str(key)?;
                }
                Select::Key(key) => write_quoted(f, key)?,
                Select::Index(index) => write!(f, "[{index}]")?,
                Select::AnyIndex => f.write_str("[*]")?,
                Select::Any if step.descendant => f.write_char('*')?,
                Select::Any => f.write_str(".*")?,
            }
        }
        Ok(())
    }
}

/// Renders a concrete location: `$.items[3].updated_at`; keys that are not plain identifiers
/// (`[A-Za-z_][A-Za-z0-9_-]*`) as `['...']` with `'` and `\` escaped.
pub fn render(path: &[Seg]) -> String {
    render_path(path)
}

/// [`render`] for a borrowed location.
pub fn render_refs(path: &[SegRef<'_>]) -> String {
    render_path(path)
}

fn render_path<T: PathSeg>(path: &[T]) -> String {
    let mut out = String::from("$");
    for seg in path {
        // Writing to a String cannot fail.
        let _ = match seg.view() {
            SegRef::Key(key) if is_identifier(key) => write!(out, ".{key}"),
            SegRef::Key(key) => write_quoted(&mut out, key),
            SegRef::Index(index) => write!(out, "[{index}]"),
        };
    }
    out
}

fn is_identifier(key: &str) -> bool {
    let mut bytes = key.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn write_quoted(out: &mut impl fmt::Write, key: &str) -> fmt::Result {
    out.write_str("['")?;
    for c in key.chars() {
        if c == '\'' || c == '\\' {
            out.write_char('\\')?;
        }
        out.write_char(c)?;
    }
    out.write_str("']")
}

/// Invariant: `pos` is always on a char boundary of `text` (it only advances past whole chars).
struct Parser<'t> {
    text: &'t str,
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.text
            .get(self.pos..)
            .and_then(|rest| rest.chars().next())
    }

    fn eat(&mut self, c: char) -> bool {
        let found = self.peek() == Some(c);
        if found {
            self.pos += c.len_utf8();
        }
        found
    }

    fn step(&mut self) -> Result<Step, String> {
        if self
            .text
            .get(self.pos..)
            .is_some_and(|r| r.starts_with(".."))
        {
            self.pos += 2;
            let select = match self.peek() {
                Some('[') => self.bracket()?,
                Some('*') => {
                    self.pos += 1;
                    Select::Any
                }
                _ => match self.name() {
                    Some(name) => Select::Key(name),
                    None => {
                        return Err(format!(
                            "expected a key name, '*' or '[' after '..' at offset {}",
                            self.pos
                        ));
                    }
                },
            };
            return Ok(Step {
                descendant: true,
                select,
            });
        }
        let select = match self.peek() {
            Some('.') => {
                self.pos += 1;
                if self.eat('*') {
                    Select::Any
                } else {
                    match self.name() {
                        Some(name) => Select::Key(name),
                        None => {
                            return Err(format!(
                                "expected a key name after '.' at offset {}",
                                self.pos
                            ));
                        }
                    }
                }
            }
            Some('[') => self.bracket()?,
            Some(other) => {
                return Err(format!(
                    "expected '.', '..' or '[' at offset {}, found '{other}'",
                    self.pos
                ));
            }
            None => return Err(format!("unexpected end at offset {}", self.pos)),
        };
        Ok(Step {
            descendant: false,
            select,
        })
    }

    /// A bare key name: letters, digits, `_` and `-` (any script).
    fn name(&mut self) -> Option<String> {
        let rest = self.text.get(self.pos..)?;
        let len = rest
            .char_indices()
            .find(|&(_, c)| !(c.is_alphanumeric() || c == '_' || c == '-'))
            .map_or(rest.len(), |(i, _)| i);
        if len == 0 {
            return None;
        }
        self.pos += len;
        rest.get(..len).map(str::to_owned)
    }

    /// `[N]`, `[*]`, `['key']` or `["key"]`, starting at the `[`.
    fn bracket(&mut self) -> Result<Select, String> {
        self.pos += 1;
        let select = match self.peek() {
            Some('*') => {
                self.pos += 1;
                Select::AnyIndex
            }
            Some(c) if c.is_ascii_digit() => self.index()?,
            Some(quote @ ('\'' | '"')) => Select::Key(self.quoted(quote)?),
            _ => {
                return Err(format!(
                    "expected an index, '*' or a quoted key after '[' at offset {}",
                    self.pos
                ));
            }
        };
        if !self.eat(']') {
            return Err(format!("expected ']' at offset {}", self.pos));
        }
        Ok(select)
    }

    fn index(&mut self) -> Result<Select, String> {
        let start = self.pos;
        let rest = self.text.get(start..).unwrap_or("");
        let len = rest.bytes().take_while(u8::is_ascii_digit).count();
        self.pos += len;
        rest.get(..len)
            .and_then(|digits| digits.parse().ok())
            .map(Select::Index)
            .ok_or_else(|| format!("index too large at offset {start}"))
    }

    fn quoted(&mut self, quote: char) -> Result<String, String> {
        let start = self.pos;
        self.pos += 1;
        let mut key = String::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(format!(
                    "unterminated quoted key starting at offset {start}"
                ));
            };
            let at = self.pos;
            self.pos += c.len_utf8();
            if c == quote {
                return Ok(key);
            }
            if c == '\\' {
                match self.peek() {
                    Some(escaped @ ('\\' | '\'' | '"')) => {
                        self.pos += 1;
                        key.push(escaped);
                    }
                    Some(other) => {
                        return Err(format!("unknown escape '\\{other}' at offset {at}"));
                    }
                    None => {
                        return Err(format!(
                            "unterminated quoted key starting at offset {start}"
                        ));
                    }
                }
            } else {
                key.push(c);
            }
        }
    }
}

#[cfg(test)]
#[path = "jsonpath_tests.rs"]
mod tests;
