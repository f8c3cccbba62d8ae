//! A YAML/JSON document as a tree of nodes that remember their line and column.
//!
//! [`parse`] drives saphyr-parser's event stream with an explicit stack (no recursion, so depth
//! is bounded only by [`Limits::max_depth`]) and resolves plain scalars with the YAML 1.2 core
//! schema: only `true`/`false` are booleans (`yes`, `no`, `on`, `off` stay strings), `null`, `~`
//! and the empty scalar are null, integers may be decimal, `0x` hex or `0o` octal, floats include
//! `.inf` and `.nan`; quoted and block scalars are always strings. JSON parses as YAML.
//!
//! Hostile input fails with one clear [`Diagnostic`] rather than a panic or a hang: the size is
//! checked before parsing, invalid UTF-8 and control characters are located, nesting deeper than
//! `max_depth` stops the parser, and only one document, with unique string keys, is accepted.
//! Aliases (`*name`) are expanded, and every node they copy counts against `max_nodes` (so does
//! every copy kept for an anchor), which defeats "billion laughs" documents.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, Span, Tag};

use crate::diag::Diagnostic;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in document order; keys are nodes so that their positions are known.
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub kind: NodeKind,
}

/// Bounds that keep hostile documents from exhausting time or memory.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_bytes: usize,
    pub max_depth: usize,
    pub max_nodes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 16 * 1024 * 1024,
            max_depth: 256,
            max_nodes: 1_000_000,
        }
    }
}

/// Parses one YAML (or JSON) document whose root is a mapping.
pub fn parse(text: &[u8], limits: &Limits) -> Result<Node, Diagnostic> {
    let root = parse_value(text, limits)?;
    match root.kind {
        NodeKind::Map(_) => Ok(root),
        ref kind => Err(err(
            root.pos,
            format!(
                "the document root must be a mapping (of document, do, ...), got {}",
                describe(kind)
            ),
        )),
    }
}

/// Parses one YAML (or JSON) document with any root (workflow inputs, secrets files).
pub fn parse_value(text: &[u8], limits: &Limits) -> Result<Node, Diagnostic> {
    if text.len() > limits.max_bytes {
        return Err(Diagnostic::new(
            1,
            1,
            format!(
                "the document is too large: {} bytes (the limit is {} bytes)",
                text.len(),
                limits.max_bytes
            ),
        ));
    }
    let text = decode(text)?;
    check_characters(text)?;
    // A third-party parser must not take the process down: a panic in it becomes a diagnostic.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Builder::new(limits).run(text)
    })) {
        Ok(result) => result,
        Err(_) => Err(Diagnostic::new(
            1,
            1,
            "invalid YAML: the parser failed on this document",
        )),
    }
}

/// Checks that `text` is UTF-8 (saying where it is not) and drops a byte order mark.
fn decode(text: &[u8]) -> Result<&str, Diagnostic> {
    let text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
    match std::str::from_utf8(text) {
        Ok(s) => Ok(s),
        Err(e) => {
            let good = e.valid_up_to();
            // The prefix up to `good` is valid UTF-8 by construction.
            let prefix = std::str::from_utf8(&text[..good]).unwrap_or("");
            let (line, col) = line_col(prefix);
            let hint = if text.starts_with(b"\xFF\xFE") || text.starts_with(b"\xFE\xFF") {
                " (it looks like UTF-16; save it as UTF-8)"
            } else {
                ""
            };
            Err(Diagnostic::new(
                line,
                col,
                format!(
                    "the document is not valid UTF-8: invalid byte 0x{:02X} at byte offset {good}{hint}",
                    text[good]
                ),
            ))
        }
    }
}

/// 1-based line and column (in characters) just after `prefix`.
fn line_col(prefix: &str) -> (u32, u32) {
    let line = prefix.matches('\n').count() + 1;
    let last = prefix.rfind('\n').map_or(prefix, |i| &prefix[i + 1..]);
    (to_u32(line), to_u32(last.chars().count() + 1))
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// YAML allows only printable characters (plus tab and line breaks) in a document; anything else
/// is most likely a binary file.
fn check_characters(text: &str) -> Result<(), Diagnostic> {
    let printable = |c: char| {
        matches!(c, '\t' | '\n' | '\r' | ' '..='~' | '\u{85}' | '\u{A0}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}')
            || c >= '\u{10000}'
    };
    match text.char_indices().find(|&(_, c)| !printable(c)) {
        None => Ok(()),
        Some((i, c)) => {
            let (line, col) = line_col(&text[..i]);
            Err(Diagnostic::new(
                line,
                col,
                format!(
                    "the document contains a control character (U+{:04X}); is it a binary file?",
                    u32::from(c)
                ),
            ))
        }
    }
}

fn pos_of(span: &Span) -> Pos {
    Pos {
        line: to_u32(span.start.line()),
        col: to_u32(span.start.col() + 1),
    }
}

fn scan_error(e: &ScanError) -> Diagnostic {
    let m = e.marker();
    let info = e.info();
    let message = if info == "recursion limit exceeded" {
        "nesting is too deep: flow collections ('[' and '{') nest at most 255 levels".to_string()
    } else {
        format!("invalid YAML: {info}")
    };
    Diagnostic::new(to_u32(m.line()), to_u32(m.col() + 1), message)
}

/// A finished node with the number of nodes in it and its height.
struct Built {
    node: Node,
    size: usize,
    height: usize,
}

enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Node>,
        size: usize,
        height: usize,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
        seen: HashMap<String, Pos>,
        size: usize,
        height: usize,
    },
}

struct Builder<'l> {
    limits: &'l Limits,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Built>,
    nodes: usize,
    /// Whether an anchor was seen: then copies count too, and messages say so.
    anchors_used: bool,
    root: Option<Node>,
}

fn err(pos: Pos, message: impl Into<String>) -> Diagnostic {
    Diagnostic::new(pos.line, pos.col, message)
}

impl<'l> Builder<'l> {
    fn new(limits: &'l Limits) -> Self {
        Builder {
            limits,
            stack: Vec::new(),
            anchors: HashMap::new(),
            nodes: 0,
            anchors_used: false,
            root: None,
        }
    }

    fn run(mut self, text: &str) -> Result<Node, Diagnostic> {
        let mut parser = Parser::new_from_str(text);
        let mut documents = 0usize;
        loop {
            let (event, span) = match parser.next_event() {
                None => break,
                Some(Ok(ev)) => ev,
                Some(Err(e)) => return Err(scan_error(&e)),
            };
            let pos = pos_of(&span);
            match event {
                Event::StreamStart | Event::Nothing | Event::DocumentEnd => {}
                Event::StreamEnd => break,
                Event::DocumentStart(_) => {
                    documents += 1;
                    if documents > 1 {
                        return Err(err(
                            pos,
                            "a second YAML document starts here; a workflow file must hold exactly one document",
                        ));
                    }
                }
                Event::Scalar(value, style, anchor, tag) => {
                    let node = scalar(&value, style, tag.as_deref(), pos)?;
                    self.count(1, pos)?;
                    self.finish(
                        Built {
                            node,
                            size: 1,
                            height: 1,
                        },
                        anchor,
                    )?;
                }
                Event::SequenceStart(anchor, tag) => {
                    check_collection_tag(tag.as_deref(), "seq", pos)?;
                    self.push(pos)?;
                    self.stack.push(Frame::Seq {
                        pos,
                        anchor,
                        items: Vec::new(),
                        size: 1,
                        height: 0,
                    });
                }
                Event::MappingStart(anchor, tag) => {
                    check_collection_tag(tag.as_deref(), "map", pos)?;
                    self.push(pos)?;
                    self.stack.push(Frame::Map {
                        pos,
                        anchor,
                        entries: Vec::new(),
                        key: None,
                        seen: HashMap::new(),
                        size: 1,
                        height: 0,
                    });
                }
                Event::SequenceEnd | Event::MappingEnd => {
                    let (built, anchor) = match self.stack.pop() {
                        Some(Frame::Seq {
                            pos,
                            anchor,
                            items,
                            size,
                            height,
                        }) => (
                            Built {
                                node: Node {
                                    pos,
                                    kind: NodeKind::Seq(items),
                                },
                                size,
                                height: height + 1,
                            },
                            anchor,
                        ),
                        Some(Frame::Map {
                            pos,
                            anchor,
                            entries,
                            size,
                            height,
                            ..
                        }) => (
                            Built {
                                node: Node {
                                    pos,
                                    kind: NodeKind::Map(entries),
                                },
                                size,
                                height: height + 1,
                            },
                            anchor,
                        ),
                        None => return Err(err(pos, "invalid YAML: unbalanced collection end")),
                    };
                    self.finish(built, anchor)?;
                }
                Event::Alias(id) => {
                    let Some(target) = self.anchors.get(&id) else {
                        return Err(err(
                            pos,
                            "this alias refers to an anchor whose node is not complete (a node cannot contain an alias of itself)",
                        ));
                    };
                    let (size, height) = (target.size, target.height);
                    if self.stack.len() + height > self.limits.max_depth {
                        return Err(err(
                            pos,
                            format!(
                                "nesting is too deep: this alias expands beyond {} levels",
                                self.limits.max_depth
                            ),
                        ));
                    }
                    let node = Node {
                        pos,
                        ..target.node.clone()
                    };
                    self.count(size, pos)?;
                    self.finish(Built { node, size, height }, 0)?;
                }
            }
        }
        match self.root.take() {
            Some(Node {
                kind: NodeKind::Null,
                ..
            }) if is_blank(text) => Err(Diagnostic::new(1, 1, "the document is empty")),
            Some(root) => Ok(root),
            None => Err(Diagnostic::new(1, 1, "the document is empty")),
        }
    }

    fn push(&mut self, pos: Pos) -> Result<(), Diagnostic> {
        if self.stack.len() >= self.limits.max_depth {
            return Err(err(
                pos,
                format!(
                    "nesting is too deep: more than {} levels",
                    self.limits.max_depth
                ),
            ));
        }
        self.count(1, pos)
    }

    fn count(&mut self, n: usize, pos: Pos) -> Result<(), Diagnostic> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > self.limits.max_nodes {
            let why = if self.anchors_used {
                " (anchors and aliases count every node they copy)"
            } else {
                ""
            };
            return Err(err(
                pos,
                format!(
                    "the document has too many nodes: more than {}{why}",
                    self.limits.max_nodes
                ),
            ));
        }
        Ok(())
    }

    /// Hands a finished node to its parent (or makes it the root), remembering it for aliases
    /// when it carries an anchor.
    fn finish(&mut self, built: Built, anchor: usize) -> Result<(), Diagnostic> {
        if anchor != 0 {
            // The copy kept for aliases costs as much as the node itself.
            self.anchors_used = true;
            self.count(built.size, built.node.pos)?;
            self.anchors.insert(
                anchor,
                Built {
                    node: built.node.clone(),
                    size: built.size,
                    height: built.height,
                },
            );
        }
        let Built {
            node,
            size: child_size,
            height: child_height,
        } = built;
        match self.stack.last_mut() {
            None => {
                self.root = Some(node);
            }
            Some(Frame::Seq {
                items,
                size,
                height,
                ..
            }) => {
                items.push(node);
                *size += child_size;
                *height = (*height).max(child_height);
            }
            Some(Frame::Map {
                entries,
                key,
                seen,
                size,
                height,
                ..
            }) => {
                *size += child_size;
                *height = (*height).max(child_height);
                match key.take() {
                    Some(k) => entries.push((k, node)),
                    None => {
                        let NodeKind::Str(name) = &node.kind else {
                            return Err(err(
                                node.pos,
                                format!(
                                    "mapping keys must be strings, got {} (quote the key)",
                                    describe(&node.kind)
                                ),
                            ));
                        };
                        match seen.entry(name.clone()) {
                            Entry::Occupied(first) => {
                                return Err(err(
                                    node.pos,
                                    format!(
                                        "duplicate key '{name}' in this mapping (first at line {})",
                                        first.get().line
                                    ),
                                ));
                            }
                            Entry::Vacant(slot) => {
                                slot.insert(node.pos);
                            }
                        }
                        *key = Some(node);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether the document has no content at all (only comments, directives and markers).
fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#') || t == "---" || t == "..." || t.starts_with('%')
    })
}

/// "a string", "a number", ... for messages.
pub fn describe(kind: &NodeKind) -> &'static str {
    match kind {
        NodeKind::Null => "null",
        NodeKind::Bool(_) => "a boolean",
        NodeKind::Int(_) | NodeKind::Float(_) => "a number",
        NodeKind::Str(_) => "a string",
        NodeKind::Seq(_) => "a list",
        NodeKind::Map(_) => "a mapping",
    }
}

fn core_tag(tag: Option<&Tag>, pos: Pos) -> Result<Option<&str>, Diagnostic> {
    match tag {
        None => Ok(None),
        Some(t) if t.is_yaml_core_schema() => Ok(Some(t.suffix.as_str())),
        Some(t) => Err(err(
            pos,
            format!(
                "unsupported YAML tag '{t}' (only the core schema tags !!str, !!int, !!float, !!bool, !!null, !!seq, !!map are allowed)"
            ),
        )),
    }
}

fn check_collection_tag(tag: Option<&Tag>, want: &str, pos: Pos) -> Result<(), Diagnostic> {
    match core_tag(tag, pos)? {
        None => Ok(()),
        Some(s) if s == want => Ok(()),
        Some(s) => Err(err(
            pos,
            format!(
                "the tag '!!{s}' cannot be used on a {}",
                if want == "seq" { "list" } else { "mapping" }
            ),
        )),
    }
}

fn scalar(
    value: &str,
    style: ScalarStyle,
    tag: Option<&Tag>,
    pos: Pos,
) -> Result<Node, Diagnostic> {
    let kind = match core_tag(tag, pos)? {
        Some("str") => NodeKind::Str(value.to_string()),
        Some("null") => match resolve_plain(value) {
            NodeKind::Null => NodeKind::Null,
            _ => return Err(err(pos, format!("'{value}' is not a valid !!null"))),
        },
        Some("bool") => match resolve_plain(value) {
            k @ NodeKind::Bool(_) => k,
            _ => {
                return Err(err(
                    pos,
                    format!("'{value}' is not a valid !!bool (only true or false)"),
                ));
            }
        },
        Some("int") => match resolve_plain(value) {
            k @ NodeKind::Int(_) => k,
            _ => return Err(err(pos, format!("'{value}' is not a valid !!int"))),
        },
        Some("float") => match resolve_plain(value) {
            NodeKind::Int(i) => NodeKind::Float(i as f64),
            k @ NodeKind::Float(_) => k,
            _ => return Err(err(pos, format!("'{value}' is not a valid !!float"))),
        },
        Some(other) => {
            return Err(err(
                pos,
                format!(
                    "the tag '!!{other}' is not supported (use !!str, !!int, !!float, !!bool or !!null)"
                ),
            ));
        }
        None => match style {
            ScalarStyle::Plain => resolve_plain(value),
            _ => NodeKind::Str(value.to_string()),
        },
    };
    Ok(Node { pos, kind })
}

/// Resolves a plain scalar with the YAML 1.2 core schema.
fn resolve_plain(s: &str) -> NodeKind {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return NodeKind::Null,
        "true" | "True" | "TRUE" => return NodeKind::Bool(true),
        "false" | "False" | "FALSE" => return NodeKind::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return NodeKind::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return NodeKind::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return NodeKind::Float(f64::NAN),
        _ => {}
    }
    if let Some(hex) = s.strip_prefix("0x")
        && !hex.is_empty()
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return radix_int(hex, 16);
    }
    if let Some(oct) = s.strip_prefix("0o")
        && !oct.is_empty()
        && oct.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return radix_int(oct, 8);
    }
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return match s.parse::<i64>() {
            Ok(i) => NodeKind::Int(i),
            // Out of the i64 range: keep the magnitude as a float, like JSON parsers do.
            Err(_) => s
                .parse::<f64>()
                .map_or_else(|_| NodeKind::Str(s.to_string()), NodeKind::Float),
        };
    }
    if is_core_float(digits)
        && let Ok(f) = s.parse::<f64>()
    {
        return NodeKind::Float(f);
    }
    NodeKind::Str(s.to_string())
}

fn radix_int(digits: &str, radix: u32) -> NodeKind {
    match u128::from_str_radix(digits, radix) {
        Ok(v) => i64::try_from(v).map_or(NodeKind::Float(v as f64), NodeKind::Int),
        Err(_) => NodeKind::Float(f64::INFINITY),
    }
}

/// `( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?` (sign already removed).
fn is_core_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let int_digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    i += int_digits;
    let mut frac_digits = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        frac_digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        i += frac_digits;
    }
    if int_digits == 0 && frac_digits == 0 {
        return false;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'-' | b'+')) {
            i += 1;
        }
        let exp = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        if exp == 0 {
            return false;
        }
        i += exp;
    }
    i == b.len()
}

impl Node {
    /// The node as plain JSON: integers as i64, floats as f64, non-finite floats as null.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match &self.kind {
            NodeKind::Null => Value::Null,
            NodeKind::Bool(b) => Value::Bool(*b),
            NodeKind::Int(i) => Value::from(*i),
            NodeKind::Float(f) => {
                serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)
            }
            NodeKind::Str(s) => Value::String(s.clone()),
            NodeKind::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeKind::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.as_str().unwrap_or_default().to_string(), v.to_json()))
                    .collect(),
            ),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Str(s) => Some(s),
            _ => None,
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

    /// The value under `key` when this node is a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// "a string", "a number", ... for messages.
    pub fn describe(&self) -> &'static str {
        describe(&self.kind)
    }

    /// The descendant at a JSON pointer (`/a/0/b`), or the deepest node reached.
    pub fn at_pointer(&self, pointer: &str) -> &Node {
        let mut node = self;
        for raw in pointer.split('/').skip(1) {
            let token = raw.replace("~1", "/").replace("~0", "~");
            let next = match &node.kind {
                NodeKind::Map(entries) => entries
                    .iter()
                    .find(|(k, _)| k.as_str() == Some(&token))
                    .map(|(_, v)| v),
                NodeKind::Seq(items) => token.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        node
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(text: &str) -> Node {
        match parse(text.as_bytes(), &Limits::default()) {
            Ok(n) => n,
            Err(d) => panic!("{text:?} should parse, got {d}"),
        }
    }

    fn fails(text: &[u8]) -> String {
        fails_with(text, &Limits::default())
    }

    fn fails_with(text: &[u8], limits: &Limits) -> String {
        match parse(text, limits) {
            Ok(n) => panic!("should fail, parsed {:?}", n.to_json()),
            Err(d) => d.to_string(),
        }
    }

    #[test]
    fn core_schema_scalars() {
        let n = ok(
            "a: yes\nb: no\nc: on\nd: off\ne: true\nf: False\ng: ~\nh: null\ni:\nj: 0x1F\nk: 0o17\nl: -12\n\
                    m: +7\nn: 1.5\no: .inf\np: -.Inf\nq: .nan\nr: 1e3\ns: '12'\nt: \"true\"\nu: 1_000\nv: 0.1.0\nw: |\n  x\n",
        );
        assert_eq!(
            n.to_json(),
            json!({"a": "yes", "b": "no", "c": "on", "d": "off", "e": true, "f": false, "g": null, "h": null,
                   "i": null, "j": 31, "k": 15, "l": -12, "m": 7, "n": 1.5, "o": null, "p": null, "q": null,
                   "r": 1000.0, "s": "12", "t": "true", "u": "1_000", "v": "0.1.0", "w": "x\n"})
        );
        assert!(matches!(n.get("o").map(|n| &n.kind), Some(NodeKind::Float(f)) if f.is_infinite()));
        assert!(matches!(n.get("q").map(|n| &n.kind), Some(NodeKind::Float(f)) if f.is_nan()));
        assert_eq!(ok("a: 99999999999999999999").to_json(), json!({"a": 1e20}));
        assert_eq!(
            ok("a: !!str 12\nb: !!float 1\n").to_json(),
            json!({"a": "12", "b": 1.0})
        );
    }

    #[test]
    fn positions_are_one_based() {
        let n = ok("document:\n  name: x\ndo: [ {a: 1} ]\n");
        let doc = n.get("document").unwrap();
        assert_eq!(doc.pos, Pos { line: 2, col: 3 });
        let name = doc.get("name").unwrap();
        assert_eq!(name.pos, Pos { line: 2, col: 9 });
        let seq = n.get("do").unwrap();
        assert_eq!(seq.pos, Pos { line: 3, col: 5 });
        assert_eq!(n.at_pointer("/do/0/a").pos, Pos { line: 3, col: 11 });
    }

    #[test]
    fn json_documents_parse() {
        let n = ok(
            r#"{"document": {"dsl": "1.0.0", "n": 1.5, "t": true, "z": null}, "do": [{"a": {"wait": "PT1S"}}]}"#,
        );
        assert_eq!(
            n.to_json(),
            json!({"document": {"dsl": "1.0.0", "n": 1.5, "t": true, "z": null}, "do": [{"a": {"wait": "PT1S"}}]})
        );
        let n = ok("{\n  \"a\":1,\n  \"b\":[1,2]\n}");
        assert_eq!(n.to_json(), json!({"a": 1, "b": [1, 2]}));
    }

    #[test]
    fn invalid_utf8_is_located() {
        let msg = fails(b"a: 1\nb: x\xFFy\n");
        assert_eq!(
            msg,
            "2:5: the document is not valid UTF-8: invalid byte 0xFF at byte offset 9"
        );
        assert!(fails(b"\xFF\xFEa\x00:\x00").contains("UTF-16"));
    }

    #[test]
    fn binary_garbage_is_refused() {
        let msg = fails(b"a: 1\n\x00\x01\x02\x03");
        assert_eq!(
            msg,
            "2:1: the document contains a control character (U+0000); is it a binary file?"
        );
        let garbage: Vec<u8> = (0u32..4096)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let _ = parse(&garbage, &Limits::default()).unwrap_err();
    }

    #[test]
    fn random_inputs_never_panic() {
        // Small deterministic fuzz over YAML-ish fragments.
        let parts = [
            "a", ":", " ", "\n", "-", "[", "]", "{", "}", ",", "&x", "*x", "!!str", "'", "\"", "|",
            ">", "#", "?", "---", "  ", "1", "~",
        ];
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..3000 {
            let mut s = String::new();
            for _ in 0..(seed % 24) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                s.push_str(parts[(seed % parts.len() as u64) as usize]);
            }
            let _ = parse(s.as_bytes(), &Limits::default());
            seed = seed.wrapping_add(1);
        }
    }

    #[test]
    fn root_must_be_a_mapping() {
        assert_eq!(
            fails(b"- a\n- b\n"),
            "1:1: the document root must be a mapping (of document, do, ...), got a list"
        );
        assert_eq!(
            fails(b"just text"),
            "1:1: the document root must be a mapping (of document, do, ...), got a string"
        );
        assert_eq!(
            fails(b"~"),
            "1:1: the document root must be a mapping (of document, do, ...), got null"
        );
    }

    #[test]
    fn empty_documents() {
        assert_eq!(fails(b""), "1:1: the document is empty");
        assert_eq!(fails(b"# nothing here\n\n"), "1:1: the document is empty");
        assert_eq!(fails(b"---\n...\n"), "1:1: the document is empty");
    }

    #[test]
    fn multiple_documents() {
        assert_eq!(
            fails(b"a: 1\n---\nb: 2\n"),
            "2:1: a second YAML document starts here; a workflow file must hold exactly one document"
        );
    }

    #[test]
    fn duplicate_keys() {
        assert_eq!(
            fails(b"a: 1\nb:\n  c: 1\n  c: 2\n"),
            "4:3: duplicate key 'c' in this mapping (first at line 3)"
        );
        assert_eq!(
            fails(b"{\"a\": 1, \"a\": 2}"),
            "1:10: duplicate key 'a' in this mapping (first at line 1)"
        );
    }

    #[test]
    fn non_string_keys() {
        assert_eq!(
            fails(b"a: 1\n3: x\n"),
            "2:1: mapping keys must be strings, got a number (quote the key)"
        );
        assert_eq!(
            fails(b"true: x\n"),
            "1:1: mapping keys must be strings, got a boolean (quote the key)"
        );
        assert_eq!(
            fails(b"? [a]\n: b\n"),
            "1:3: mapping keys must be strings, got a list (quote the key)"
        );
        assert_eq!(ok("'3': x\n").to_json(), json!({"3": "x"}));
    }

    #[test]
    fn syntax_errors_have_positions() {
        let msg = fails(b"a: 1\nb: [1, 2\n");
        assert!(msg.starts_with("3:1: invalid YAML:"), "{msg}");
        let msg = fails(b"a: 'unterminated\n");
        assert!(msg.contains("invalid YAML"), "{msg}");
    }

    #[test]
    fn tags() {
        assert!(fails(b"a: !foo x\n").contains("unsupported YAML tag '!foo'"));
        assert!(fails(b"a: !!int x\n").contains("'x' is not a valid !!int"));
        assert!(fails(b"a: !!binary eA==\n").contains("'!!binary' is not supported"));
    }

    #[test]
    fn size_limit_is_checked_before_parsing() {
        let big = vec![b'a'; 50 * 1024 * 1024];
        let start = std::time::Instant::now();
        let msg = fails(&big);
        assert_eq!(
            msg,
            "1:1: the document is too large: 52428800 bytes (the limit is 16777216 bytes)"
        );
        assert!(start.elapsed() < std::time::Duration::from_millis(500));
    }

    #[test]
    fn deep_nesting_fails_fast() {
        let start = std::time::Instant::now();
        for text in [
            "[".repeat(10_000),
            "{".repeat(10_000),
            format!("a: {}1", "[".repeat(10_000)),
        ] {
            let msg = fails(text.as_bytes());
            assert!(msg.contains("nesting is too deep"), "{msg}");
        }
        // Block nesting: `- - - - ... x` nests a list per dash.
        let text = format!("{}x\n", "- ".repeat(10_000));
        assert_eq!(
            fails(text.as_bytes()),
            "1:513: nesting is too deep: more than 256 levels"
        );
        // Indented mappings, 10,000 deep.
        let mut text = String::new();
        for i in 0..10_000 {
            text.push_str(&" ".repeat(i % 200));
            text.push_str("k:\n");
            if i % 200 == 199 {
                break;
            }
        }
        let limits = Limits {
            max_depth: 100,
            ..Limits::default()
        };
        assert_eq!(
            fails_with(text.as_bytes(), &limits),
            "101:101: nesting is too deep: more than 100 levels"
        );
        assert!(
            start.elapsed() < std::time::Duration::from_secs(2),
            "took {:?}",
            start.elapsed()
        );
    }

    #[test]
    fn aliases_expand_within_budget() {
        let n = ok("base: &b {x: 1}\ncopy: *b\nlist: [&s str, *s]\n");
        assert_eq!(
            n.to_json(),
            json!({"base": {"x": 1}, "copy": {"x": 1}, "list": ["str", "str"]})
        );
        assert_eq!(n.get("copy").unwrap().pos, Pos { line: 2, col: 7 });
    }

    #[test]
    fn billion_laughs_is_refused() {
        let mut text = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..10 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let start = std::time::Instant::now();
        let msg = fails(text.as_bytes());
        assert!(msg.contains("too many nodes: more than 1000000"), "{msg}");
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn unknown_and_recursive_aliases() {
        assert!(fails(b"a: *nope\n").contains("invalid YAML"));
        let msg = fails(b"a: &x [1, *x]\n");
        assert!(msg.contains("not complete"), "{msg}");
    }

    #[test]
    fn byte_order_mark_is_ignored() {
        assert_eq!(ok("\u{FEFF}a: 1\n").to_json(), json!({"a": 1}));
    }
}
