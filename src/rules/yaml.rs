//! A YAML document as a tree of nodes that remember where they were written.
//!
//! serde (and so `serde_yaml`) forgets positions once a value is built, and stops at the first
//! error; `recuerda check` must point at every problem's line and column. So the loader reads
//! the event stream of libyaml-rs — the parser `serde_yaml` (yaml_serde) itself runs on — and
//! keeps each node's mark. The few `unsafe` lines below mirror yaml_serde's own wrapper.

use libyaml_rs as sys;
use std::collections::BTreeMap;
use std::mem::MaybeUninit;

/// Deepest nesting accepted; rule files need about 8 levels.
pub const MAX_DEPTH: usize = 64;
/// Most nodes a document may expand to, counting each alias use as a copy of its target: this
/// stops "billion laughs" alias bombs before they cost memory.
pub const MAX_NODES: usize = 100_000;

/// A 1-based position in the file; `column` counts characters, not bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarStyle {
    Plain,
    SingleQuoted,
    DoubleQuoted,
    Literal,
    Folded,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub kind: NodeKind,
    pub pos: Pos,
    /// Byte range of the node in the source (for scalars, including quotes).
    pub span: (usize, usize),
}

#[derive(Debug, Clone)]
pub enum NodeKind {
    Scalar { value: String, style: ScalarStyle },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

/// A syntax problem, or a document over the size limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub message: String,
    pub pos: Option<Pos>,
    /// A syntax error from the parser (rather than a limit or a second document).
    pub syntax: bool,
}

impl Node {
    /// What kind of value this is, for "expected a list, found a map" messages.
    pub fn describe(&self) -> String {
        match &self.kind {
            NodeKind::Seq(_) => "a list".into(),
            NodeKind::Map(_) => "a map".into(),
            NodeKind::Scalar { value, style } => {
                if *style != ScalarStyle::Plain {
                    return format!("the text `{value}`");
                }
                match plain_scalar_json(value) {
                    serde_json::Value::Null => "nothing (null)".into(),
                    serde_json::Value::Bool(b) => format!("`{b}` (true/false)"),
                    serde_json::Value::Number(n) => format!("the number `{n}`"),
                    _ => format!("the text `{value}`"),
                }
            }
        }
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.kind {
            NodeKind::Map(entries) => Some(entries),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.kind {
            NodeKind::Seq(items) => Some(items),
            _ => None,
        }
    }

    /// The text of a scalar that is text (quoted, or plain and not a number, bool or null).
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { value, style } => {
                if *style == ScalarStyle::Plain && !plain_scalar_json(value).is_string() {
                    None
                } else {
                    Some(value)
                }
            }
            _ => None,
        }
    }

    /// The text of any scalar, whatever it looks like (`990`, `true`, `cita`).
    pub fn scalar_text(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar { value, style: ScalarStyle::Plain } if plain_scalar_json(value).is_null())
    }

    /// A scalar as JSON, read the way yaml_serde reads it (YAML 1.2 core schema).
    pub fn to_json_scalar(&self) -> Option<serde_json::Value> {
        match &self.kind {
            NodeKind::Scalar {
                value,
                style: ScalarStyle::Plain,
            } => Some(plain_scalar_json(value)),
            NodeKind::Scalar { value, .. } => Some(serde_json::Value::String(value.clone())),
            _ => None,
        }
    }

    /// Where the character at 1-based `(line, column)` *inside this scalar's value* was
    /// written in the file. Exact for one-line plain and quoted scalars and for literal blocks
    /// (`|`); otherwise the scalar's own start, which is still the right line to look at.
    pub fn pos_inside(&self, source: &str, line: usize, column: usize) -> Pos {
        let NodeKind::Scalar { style, .. } = &self.kind else {
            return self.pos;
        };
        let raw = source.get(self.span.0..self.span.1).unwrap_or("");
        match style {
            ScalarStyle::Plain if line == 1 && !raw.contains('\n') => Pos {
                line: self.pos.line,
                column: self.pos.column + column - 1,
            },
            ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted
                if line == 1 && !raw.contains('\n') =>
            {
                let offset = quoted_offset(raw, *style == ScalarStyle::DoubleQuoted, column - 1);
                Pos {
                    line: self.pos.line,
                    column: self.pos.column + offset,
                }
            }
            ScalarStyle::Literal => {
                // The header (`|`, `|-`) is on the node's line; content starts on the next one,
                // indented by the first content line's indentation.
                let content_lines: Vec<&str> = raw.lines().skip(1).collect();
                let indent = content_lines
                    .iter()
                    .find(|l| !l.trim().is_empty())
                    .map(|l| l.chars().take_while(|c| *c == ' ').count())
                    .unwrap_or(0);
                Pos {
                    line: self.pos.line + line,
                    column: indent + column,
                }
            }
            _ => self.pos,
        }
    }
}

/// Characters of `raw` (a quoted scalar, quotes included) before the value's `nth` character.
fn quoted_offset(raw: &str, double: bool, nth: usize) -> usize {
    let chars: Vec<char> = raw.chars().collect();
    let mut i = 1; // the opening quote
    let mut seen = 0;
    while seen < nth && i < chars.len() {
        let step = match (double, chars[i]) {
            (true, '\\') => match chars.get(i + 1) {
                Some('x') => 4,
                Some('u') => 6,
                Some('U') => 10,
                _ => 2,
            },
            (false, '\'') if chars.get(i + 1) == Some(&'\'') => 2,
            _ => 1,
        };
        i += step;
        seen += 1;
    }
    i
}

/// Reads a plain scalar as yaml_serde does: null, booleans, integers and floats, else text.
pub fn plain_scalar_json(value: &str) -> serde_json::Value {
    match value {
        "" | "~" | "null" | "Null" | "NULL" => return serde_json::Value::Null,
        "true" | "True" | "TRUE" => return serde_json::Value::Bool(true),
        "false" | "False" | "FALSE" => return serde_json::Value::Bool(false),
        _ => {}
    }
    if let Ok(n) = value.parse::<i64>() {
        return n.into();
    }
    let looks_numeric = value
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'))
        && value.chars().any(|c| c.is_ascii_digit());
    if looks_numeric {
        if let Some(n) = value
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
        {
            return serde_json::Value::Number(n);
        }
    }
    serde_json::Value::String(value.to_string())
}

/// Parses one YAML document. An empty document is a null scalar at 1:1.
pub fn parse(source: &str) -> Result<Node, YamlError> {
    let events = read_events(source)?;
    Builder {
        events: &events,
        next: 0,
        anchors: BTreeMap::new(),
        nodes: 0,
    }
    .document()
}

#[derive(Debug)]
enum Event {
    DocumentStart,
    DocumentEnd,
    StreamEnd,
    Alias(Vec<u8>),
    Scalar {
        anchor: Option<Vec<u8>>,
        value: String,
        style: ScalarStyle,
    },
    SeqStart(Option<Vec<u8>>),
    SeqEnd,
    MapStart(Option<Vec<u8>>),
    MapEnd,
    Other,
}

struct Marked {
    event: Event,
    pos: Pos,
    span: (usize, usize),
}

/// Owns a libyaml parser; deletes it on drop.
struct RawParser {
    sys: Box<MaybeUninit<sys::yaml_parser_t>>,
}

impl Drop for RawParser {
    fn drop(&mut self) {
        // SAFETY: `sys` was initialized by `yaml_parser_initialize` in `read_events` before a
        // `RawParser` was built, and is deleted exactly once, here.
        unsafe { sys::yaml_parser_delete(self.sys.as_mut_ptr()) }
    }
}

fn read_events(source: &str) -> Result<Vec<Marked>, YamlError> {
    let input = source.as_bytes();
    let mut parser = {
        let mut sys_parser = Box::new(MaybeUninit::<sys::yaml_parser_t>::uninit());
        // SAFETY: initialize writes the whole struct; on failure nothing needs freeing.
        if unsafe { sys::yaml_parser_initialize(sys_parser.as_mut_ptr()) }.fail {
            return Err(YamlError {
                message: "out of memory starting the YAML parser".into(),
                pos: None,
                syntax: false,
            });
        }
        RawParser { sys: sys_parser }
    };
    let p = parser.sys.as_mut_ptr();
    // SAFETY: `p` is initialized; `input` outlives the parser, which is dropped at the end of
    // this function.
    unsafe {
        sys::yaml_parser_set_encoding(p, sys::YAML_UTF8_ENCODING);
        sys::yaml_parser_set_input_string(p, input.as_ptr(), input.len() as u64);
    }
    let mut out = Vec::new();
    // Collections open at this point of the stream: a node's depth in the tree. Checked here,
    // as events arrive, and not only when the tree is built: libyaml's work per event grows
    // with the nesting, so reading 100,000 `[` to the end took minutes before the builder
    // could refuse them.
    let mut open = 0usize;
    // Nodes written out (each counts at least once in the builder's `MAX_NODES`): bounds the
    // events kept in memory for a large flat file too.
    let mut nodes = 0usize;
    loop {
        let mut event = MaybeUninit::<sys::yaml_event_t>::uninit();
        // SAFETY: `p` is a live parser; `event` is written by a successful parse and deleted
        // right after we copy what we need out of it.
        let marked = unsafe {
            if sys::yaml_parser_parse(p, event.as_mut_ptr()).fail {
                return Err(parse_error(p));
            }
            let e = event.as_mut_ptr();
            let marked = convert(&*e, input);
            sys::yaml_event_delete(e);
            marked
        };
        match marked.event {
            Event::Scalar { .. } | Event::Alias(_) | Event::SeqStart(_) | Event::MapStart(_)
                if open > MAX_DEPTH =>
            {
                // The same refusal the builder would make, at the same node.
                return Err(YamlError {
                    message: format!("nesting deeper than {MAX_DEPTH} levels: flatten the file"),
                    pos: Some(marked.pos),
                    syntax: false,
                });
            }
            Event::Scalar { .. } | Event::Alias(_) | Event::SeqStart(_) | Event::MapStart(_)
                if nodes >= MAX_NODES =>
            {
                return Err(YamlError {
                    message: format!(
                        "the document expands to more than {MAX_NODES} values (aliases `*name` repeat what they point at): write it out plainly"
                    ),
                    pos: Some(marked.pos),
                    syntax: false,
                });
            }
            _ => {}
        }
        match marked.event {
            Event::Scalar { .. } | Event::Alias(_) => nodes += 1,
            Event::SeqStart(_) | Event::MapStart(_) => {
                nodes += 1;
                open += 1;
            }
            Event::SeqEnd | Event::MapEnd => open = open.saturating_sub(1),
            _ => {}
        }
        let end = matches!(marked.event, Event::StreamEnd);
        out.push(marked);
        if end {
            return Ok(out);
        }
    }
}

/// SAFETY: `p` must be a live parser whose last call failed.
unsafe fn parse_error(p: *const sys::yaml_parser_t) -> YamlError {
    let parser = &*p;
    let problem = c_text(parser.problem).unwrap_or_else(|| "invalid YAML".into());
    let message = match c_text(parser.context) {
        Some(context) => format!("{problem} ({context})"),
        None => problem,
    };
    let mark = parser.problem_mark;
    YamlError {
        message,
        pos: Some(Pos {
            line: mark.line as usize + 1,
            column: mark.column as usize + 1,
        }),
        syntax: true,
    }
}

/// SAFETY: `ptr` is null or a NUL-terminated string that lives as long as the parser.
unsafe fn c_text(ptr: *const std::ffi::c_char) -> Option<String> {
    if ptr.is_null() {
        return None;
    }
    Some(std::ffi::CStr::from_ptr(ptr).to_string_lossy().into_owned())
}

/// SAFETY: `ptr` is null or NUL-terminated.
unsafe fn c_bytes(ptr: *const u8) -> Option<Vec<u8>> {
    c_text(ptr.cast()).map(String::into_bytes)
}

/// SAFETY: `e` is an event just produced by `yaml_parser_parse`.
unsafe fn convert(e: &sys::yaml_event_t, input: &[u8]) -> Marked {
    let start = e.start_mark;
    let pos = Pos {
        line: start.line as usize + 1,
        column: start.column as usize + 1,
    };
    let span = (
        (start.index as usize).min(input.len()),
        (e.end_mark.index as usize).min(input.len()),
    );
    let event = match e.type_ {
        sys::YAML_STREAM_END_EVENT => Event::StreamEnd,
        sys::YAML_DOCUMENT_START_EVENT => Event::DocumentStart,
        sys::YAML_DOCUMENT_END_EVENT => Event::DocumentEnd,
        sys::YAML_ALIAS_EVENT => Event::Alias(c_bytes(e.data.alias.anchor).unwrap_or_default()),
        sys::YAML_SCALAR_EVENT => {
            let s = e.data.scalar;
            let bytes = if s.value.is_null() {
                &[][..]
            } else {
                std::slice::from_raw_parts(s.value, s.length as usize)
            };
            Event::Scalar {
                anchor: c_bytes(s.anchor),
                value: String::from_utf8_lossy(bytes).into_owned(),
                style: match s.style {
                    sys::YAML_SINGLE_QUOTED_SCALAR_STYLE => ScalarStyle::SingleQuoted,
                    sys::YAML_DOUBLE_QUOTED_SCALAR_STYLE => ScalarStyle::DoubleQuoted,
                    sys::YAML_LITERAL_SCALAR_STYLE => ScalarStyle::Literal,
                    sys::YAML_FOLDED_SCALAR_STYLE => ScalarStyle::Folded,
                    _ => ScalarStyle::Plain,
                },
            }
        }
        sys::YAML_SEQUENCE_START_EVENT => Event::SeqStart(c_bytes(e.data.sequence_start.anchor)),
        sys::YAML_SEQUENCE_END_EVENT => Event::SeqEnd,
        sys::YAML_MAPPING_START_EVENT => Event::MapStart(c_bytes(e.data.mapping_start.anchor)),
        sys::YAML_MAPPING_END_EVENT => Event::MapEnd,
        _ => Event::Other,
    };
    Marked { event, pos, span }
}

struct Builder<'e> {
    events: &'e [Marked],
    next: usize,
    anchors: BTreeMap<Vec<u8>, Node>,
    /// Nodes built so far, alias copies included.
    nodes: usize,
}

impl Builder<'_> {
    fn document(mut self) -> Result<Node, YamlError> {
        // Skip the stream start.
        while let Some(m) = self.events.get(self.next) {
            match m.event {
                Event::DocumentStart => {
                    self.next += 1;
                    break;
                }
                Event::StreamEnd => {
                    return Ok(Node {
                        kind: NodeKind::Scalar {
                            value: String::new(),
                            style: ScalarStyle::Plain,
                        },
                        pos: Pos { line: 1, column: 1 },
                        span: (0, 0),
                    })
                }
                _ => self.next += 1,
            }
        }
        let root = self.node(0)?;
        // After the root: the document end, then either the stream end or a second document.
        while let Some(m) = self.events.get(self.next) {
            match m.event {
                Event::DocumentEnd | Event::Other => self.next += 1,
                Event::StreamEnd => break,
                _ => {
                    return Err(YamlError {
                        message:
                            "a second YAML document (`---`) in one file: keep one document per file"
                                .into(),
                        pos: Some(m.pos),
                        syntax: false,
                    })
                }
            }
        }
        Ok(root)
    }

    fn count(&mut self, n: usize, pos: Pos) -> Result<(), YamlError> {
        self.nodes += n;
        if self.nodes > MAX_NODES {
            return Err(YamlError {
                message: format!(
                    "the document expands to more than {MAX_NODES} values (aliases `*name` repeat what they point at): write it out plainly"
                ),
                pos: Some(pos),
                syntax: false,
            });
        }
        Ok(())
    }

    fn node(&mut self, depth: usize) -> Result<Node, YamlError> {
        let Some(m) = self.events.get(self.next) else {
            return Err(YamlError {
                message: "unexpected end of the document".into(),
                pos: None,
                syntax: false,
            });
        };
        self.next += 1;
        if depth > MAX_DEPTH {
            return Err(YamlError {
                message: format!("nesting deeper than {MAX_DEPTH} levels: flatten the file"),
                pos: Some(m.pos),
                syntax: false,
            });
        }
        let (anchor, node) = match &m.event {
            Event::Scalar {
                anchor,
                value,
                style,
            } => {
                self.count(1, m.pos)?;
                (
                    anchor.clone(),
                    Node {
                        kind: NodeKind::Scalar {
                            value: value.clone(),
                            style: *style,
                        },
                        pos: m.pos,
                        span: m.span,
                    },
                )
            }
            Event::Alias(name) => {
                let Some(target) = self.anchors.get(name).cloned() else {
                    return Err(YamlError {
                        message: format!(
                            "unknown alias `*{}`: define `&{0}` before using it",
                            String::from_utf8_lossy(name)
                        ),
                        pos: Some(m.pos),
                        syntax: false,
                    });
                };
                self.count(size(&target), m.pos)?;
                // The copy keeps the anchor's positions: problems inside it are reported where
                // the text actually is.
                return Ok(target);
            }
            Event::SeqStart(anchor) => {
                self.count(1, m.pos)?;
                let mut items = Vec::new();
                loop {
                    match self.events.get(self.next).map(|e| &e.event) {
                        Some(Event::SeqEnd) => {
                            self.next += 1;
                            break;
                        }
                        _ => items.push(self.node(depth + 1)?),
                    }
                }
                (
                    anchor.clone(),
                    Node {
                        kind: NodeKind::Seq(items),
                        pos: m.pos,
                        span: m.span,
                    },
                )
            }
            Event::MapStart(anchor) => {
                self.count(1, m.pos)?;
                let mut entries = Vec::new();
                loop {
                    match self.events.get(self.next).map(|e| &e.event) {
                        Some(Event::MapEnd) => {
                            self.next += 1;
                            break;
                        }
                        _ => {
                            let key = self.node(depth + 1)?;
                            let value = self.node(depth + 1)?;
                            entries.push((key, value));
                        }
                    }
                }
                (
                    anchor.clone(),
                    Node {
                        kind: NodeKind::Map(entries),
                        pos: m.pos,
                        span: m.span,
                    },
                )
            }
            other => {
                return Err(YamlError {
                    message: format!("unexpected YAML event {other:?}"),
                    pos: Some(m.pos),
                    syntax: false,
                })
            }
        };
        if let Some(anchor) = anchor {
            self.anchors.insert(anchor, node.clone());
        }
        Ok(node)
    }
}

fn size(node: &Node) -> usize {
    1 + match &node.kind {
        NodeKind::Scalar { .. } => 0,
        NodeKind::Seq(items) => items.iter().map(size).sum(),
        NodeKind::Map(entries) => entries.iter().map(|(k, v)| size(k) + size(v)).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: usize, column: usize) -> Pos {
        Pos { line, column }
    }

    #[test]
    fn nodes_know_where_they_are() {
        let text = "rules:\n  - name: hola\n    send: {template: 990, to: \"x{{a}}\"}\n";
        let root = parse(text).unwrap();
        let rules = &root.as_map().unwrap()[0];
        assert_eq!(rules.0.pos, at(1, 1));
        let rule = &rules.1.as_seq().unwrap()[0];
        let (k, v) = &rule.as_map().unwrap()[0];
        assert_eq!(
            (k.pos, v.pos, v.as_str()),
            (at(2, 5), at(2, 11), Some("hola"))
        );
        let send = &rule.as_map().unwrap()[1].1;
        let to = &send.as_map().unwrap()[1].1;
        assert_eq!(to.pos, at(3, 31));
        assert_eq!(to.pos_inside(text, 1, 2), at(3, 33));
    }

    #[test]
    fn positions_inside_escaped_and_block_strings() {
        let text = "a: \"\\t{{x}}\"\nb: |\n  uno\n   dos {{y}}\n";
        let root = parse(text).unwrap();
        let m = root.as_map().unwrap();
        // value "\t{{x}}": the `{` is the value's 2nd char, the file's column 7.
        assert_eq!(m[0].1.pos_inside(text, 1, 2), at(1, 7));
        // "uno\n dos {{y}}": line 2, column 6 is `{`.
        assert_eq!(m[1].1.pos_inside(text, 2, 6), at(4, 8));
    }

    #[test]
    fn syntax_errors_are_located() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.pos.is_some(), "{err:?}");
        let err = parse("a: 1\n  b: 2\n").unwrap_err();
        assert_eq!(err.pos.map(|p| p.line), Some(2), "{err:?}");
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let err = parse(&text).unwrap_err();
        assert!(err.message.contains("more than"), "{err:?}");
        // Modest sharing is fine.
        let ok = parse("base: &b {x: 1}\nother: *b\n").unwrap();
        assert_eq!(ok.as_map().unwrap()[1].1.as_map().unwrap().len(), 1);
    }

    #[test]
    fn deep_nesting_is_refused() {
        let text = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let err = parse(&text).unwrap_err();
        assert!(err.message.contains("deeper"), "{err:?}");
    }

    #[test]
    fn scalars_read_like_yaml_serde() {
        for (text, want) in [
            ("990", serde_json::json!(990)),
            ("true", serde_json::json!(true)),
            ("~", serde_json::Value::Null),
            ("1.5", serde_json::json!(1.5)),
            ("yes", serde_json::json!("yes")),
            ("norte", serde_json::json!("norte")),
        ] {
            assert_eq!(plain_scalar_json(text), want, "{text}");
        }
    }
}
