//! A positioned YAML tree: every node knows its file, line and column.
//!
//! Built from libyaml's event parser ([`crate::libyaml`]; go-yaml v3, compose-go's parser, is a
//! translation of libyaml, so both accept the same documents; driven iteratively, so deep
//! nesting cannot overflow the stack). Aliases are expanded, merge keys (`<<: *base`, or a list of them) are applied
//! with explicit keys winning, and the compose tags `!reset` / `!override` are kept on the node
//! for the merge stage. Plain scalars are resolved with the YAML 1.2 core schema, as compose-go
//! (go-yaml v3) does: `yes`/`no` stay strings.

use std::fmt;
use std::sync::Arc;

use std::collections::HashMap;

use indexmap::IndexMap;

use crate::libyaml::{Event, Mark, Parser, Style};

use crate::error::Diagnostic;

/// Where a node starts: file, 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Span {
    pub file: Arc<str>,
    pub line: u32,
    pub col: u32,
}

impl Span {
    pub fn new(file: &Arc<str>, line: u32, col: u32) -> Span {
        Span {
            file: file.clone(),
            line,
            col,
        }
    }

    fn from_mark(file: &Arc<str>, m: Mark) -> Span {
        // libyaml marks: 0-based line and column.
        Span {
            file: file.clone(),
            line: u32::try_from(m.line).unwrap_or(u32::MAX).saturating_add(1),
            col: u32::try_from(m.column)
                .unwrap_or(u32::MAX)
                .saturating_add(1),
        }
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.col)
    }
}

/// Compose's merge tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeTag {
    /// `!reset`: drop the value inherited from earlier files (or `extends`).
    Reset,
    /// `!override`: replace the inherited value instead of merging with it.
    Override,
}

/// A mapping keeps its keys in file order; each key has its own position.
pub type Mapping = IndexMap<String, Entry>;

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key_span: Span,
    pub node: Node,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Mapping),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub span: Span,
    pub tag: Option<MergeTag>,
}

impl Node {
    pub fn new(value: Value, span: Span) -> Node {
        Node {
            value,
            span,
            tag: None,
        }
    }

    pub fn str(s: impl Into<String>, span: Span) -> Node {
        Node::new(Value::Str(s.into()), span)
    }

    pub fn as_map(&self) -> Option<&Mapping> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_map_mut(&mut self) -> Option<&mut Mapping> {
        match &mut self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// A key of a mapping node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map().and_then(|m| m.get(key)).map(|e| &e.node)
    }

    /// The scalar as text, as compose stringifies scalars (`true`, `3`, `1.5`); None for
    /// null and collections.
    pub fn scalar_text(&self) -> Option<String> {
        match &self.value {
            Value::Bool(b) => Some(b.to_string()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(format_float(*f)),
            Value::Str(s) => Some(s.clone()),
            _ => None,
        }
    }

    /// What kind of value this is, for messages.
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// A short rendering of the value for messages.
    pub fn describe(&self) -> String {
        match &self.value {
            Value::Str(s) => format!("{s:?}"),
            Value::Null => "null".into(),
            Value::Seq(_) | Value::Map(_) => self.kind().into(),
            _ => self.scalar_text().unwrap_or_default(),
        }
    }

    /// Convert to JSON (keys in file order), for extension fields and pass-through values.
    pub fn to_json(&self) -> serde_json::Value {
        match &self.value {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or_else(|| serde_json::Value::String(format_float(*f))),
            Value::Str(s) => serde_json::Value::String(s.clone()),
            Value::Seq(items) => {
                serde_json::Value::Array(items.iter().map(Node::to_json).collect())
            }
            Value::Map(m) => serde_json::Value::Object(
                m.iter()
                    .map(|(k, e)| (k.clone(), e.node.to_json()))
                    .collect(),
            ),
        }
    }
}

pub fn format_float(f: f64) -> String {
    if f.is_nan() {
        ".nan".into()
    } else if f.is_infinite() {
        if f > 0.0 {
            ".inf".into()
        } else {
            "-.inf".into()
        }
    } else {
        f.to_string()
    }
}

/// Limits that keep hostile input (alias bombs, absurd nesting) from exhausting memory or stack.
const MAX_NODES: usize = 500_000;
const MAX_DEPTH: usize = 256;

enum Frame {
    Seq {
        items: Vec<Node>,
        span: Span,
        anchor: usize,
        tag: Option<MergeTag>,
    },
    Map {
        map: Mapping,
        merges: Vec<Node>,
        pending_key: Option<(String, Span, bool)>,
        span: Span,
        anchor: usize,
        tag: Option<MergeTag>,
    },
}

/// Parse a file holding one YAML document into a positioned tree. An empty document is
/// `Null`; a second document is an error (compose files: [`parse_documents`]).
pub fn parse(source: &str, file: &Arc<str>) -> Result<Node, Vec<Diagnostic>> {
    let mut docs = parse_documents(source, file)?.into_iter();
    let first = docs
        .next()
        .unwrap_or_else(|| Node::new(Value::Null, Span::new(file, 1, 1)));
    match docs.next() {
        None => Ok(first),
        Some(second) => Err(vec![Diagnostic::new(
            second.span,
            "",
            "expected one YAML document; found a second `---` document",
        )]),
    }
}

/// Parse every YAML document of a file (at least one: an empty file is one `Null`). docker
/// compose reads a file of several `---` documents as that many files, merged in order.
pub fn parse_documents(source: &str, file: &Arc<str>) -> Result<Vec<Node>, Vec<Diagnostic>> {
    let mut builder = Builder {
        file: file.clone(),
        stack: Vec::new(),
        anchors: Vec::new(),
        anchor_ids: HashMap::new(),
        anchors_defined: 0,
        nodes: 0,
        root: None,
        errors: Vec::new(),
        documents: Vec::new(),
        document_start: Span::new(file, 1, 1),
    };
    let invalid = |e: crate::libyaml::Error| {
        let message = match e.context {
            Some(context) => format!("invalid YAML: {context}: {}", e.problem),
            None => format!("invalid YAML: {}", e.problem),
        };
        vec![Diagnostic::new(Span::from_mark(file, e.mark), "", message)]
    };
    let mut parser = Parser::new(source).map_err(invalid)?;
    loop {
        match parser.next_event() {
            Ok((Event::StreamEnd, _)) => break,
            Ok((ev, mark)) => {
                if let Err(d) = builder.event(ev, mark) {
                    builder.errors.push(d);
                    break;
                }
            }
            Err(e) => {
                builder.errors.extend(invalid(e));
                break;
            }
        }
    }
    if !builder.errors.is_empty() {
        return Err(builder.errors);
    }
    if builder.documents.is_empty() {
        builder
            .documents
            .push(Node::new(Value::Null, Span::new(file, 1, 1)));
    }
    Ok(builder.documents)
}

struct Builder {
    file: Arc<str>,
    stack: Vec<Frame>,
    anchors: Vec<Option<Node>>,
    /// Anchor names to ids (a later `&name` replaces an earlier one, as in go-yaml).
    anchor_ids: HashMap<String, usize>,
    anchors_defined: usize,
    nodes: usize,
    root: Option<Node>,
    errors: Vec<Diagnostic>,
    /// The documents read so far.
    documents: Vec<Node>,
    document_start: Span,
}

impl Builder {
    fn span(&self, m: Mark) -> Span {
        Span::from_mark(&self.file, m)
    }

    /// An anchor's id (0: none); a new definition of a name gets a new id.
    fn anchor(&mut self, name: Option<String>) -> usize {
        match name {
            None => 0,
            Some(name) => {
                self.anchors_defined += 1;
                self.anchor_ids.insert(name, self.anchors_defined);
                self.anchors_defined
            }
        }
    }

    fn tag(
        &self,
        tag: Option<String>,
        _span: &Span,
    ) -> Result<(Option<MergeTag>, Option<String>), Diagnostic> {
        let Some(tag) = tag else {
            return Ok((None, None));
        };
        if let Some(local) = tag.strip_prefix('!') {
            return match local {
                "reset" => Ok((Some(MergeTag::Reset), None)),
                "override" => Ok((Some(MergeTag::Override), None)),
                // `! x`: the non-specific tag, a string.
                "" => Ok((None, Some("tag:yaml.org,2002:str".into()))),
                // Other local tags (`!Ref`, `!secret`): go-yaml decodes the value as if
                // untagged, and docker compose loads it; so do we.
                _ => Ok((None, None)),
            };
        }
        Ok((None, Some(tag)))
    }

    /// Counts a new sequence or mapping and refuses nesting deeper than [`MAX_DEPTH`].
    fn enter_collection(&mut self, span: &Span) -> Result<(), Diagnostic> {
        self.count(1, span)?;
        if self.stack.len() >= MAX_DEPTH {
            return Err(Diagnostic::new(
                span.clone(),
                "",
                format!("nesting deeper than {MAX_DEPTH} levels"),
            ));
        }
        Ok(())
    }

    fn count(&mut self, n: usize, span: &Span) -> Result<(), Diagnostic> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            return Err(Diagnostic::new(
                span.clone(),
                "",
                format!("document expands to more than {MAX_NODES} nodes (alias bomb?)"),
            ));
        }
        Ok(())
    }

    fn remember(&mut self, anchor: usize, node: &Node) {
        if anchor == 0 {
            return;
        }
        if self.anchors.len() <= anchor {
            self.anchors.resize(anchor + 1, None);
        }
        self.anchors[anchor] = Some(node.clone());
    }

    fn event(&mut self, ev: Event, mark: Mark) -> Result<(), Diagnostic> {
        let span = self.span(mark);
        match ev {
            Event::StreamStart | Event::StreamEnd => Ok(()),
            Event::DocumentEnd => {
                let root = self
                    .root
                    .take()
                    .unwrap_or_else(|| Node::new(Value::Null, self.document_start.clone()));
                self.documents.push(root);
                Ok(())
            }
            Event::DocumentStart { version } => {
                if version.is_some_and(|v| v != (1, 1)) {
                    // go-yaml v3 reads YAML 1.1 documents only.
                    return Err(Diagnostic::new(
                        span,
                        "",
                        "invalid YAML: found incompatible YAML document (write %YAML 1.1, or no %YAML line)",
                    ));
                }
                self.document_start = span;
                Ok(())
            }
            Event::Alias(name) => {
                let id = self.anchor_ids.get(&name).copied().unwrap_or(0);
                let node = self
                    .anchors
                    .get(id)
                    .and_then(|n| n.clone())
                    .ok_or_else(|| {
                        Diagnostic::new(span.clone(), "", "alias to an unknown anchor")
                    })?;
                let (size, height) = node_size(&node);
                self.count(size, &span)?;
                if self.stack.len() + height > MAX_DEPTH {
                    return Err(Diagnostic::new(
                        span,
                        "",
                        format!("nesting deeper than {MAX_DEPTH} levels (through aliases)"),
                    ));
                }
                self.push_value(node, false)
            }
            Event::Scalar {
                value: text,
                style,
                anchor,
                tag,
                raw,
            } => {
                self.count(1, &span)?;
                let quote = raw.trim_start_matches(|c| c != '"' && c != '\'');
                if style == Style::Quoted && quote.starts_with('"') && escapes_slash(quote) {
                    // YAML 1.2's `\/`, which libyaml knows and go-yaml v3 does not.
                    return Err(Diagnostic::new(
                        span,
                        "",
                        "invalid YAML: found unknown escape character `\\/` (write / alone)",
                    ));
                }
                let anchor = self.anchor(anchor);
                let (merge_tag, yaml_tag) = self.tag(tag, &span)?;
                let plain = style == Style::Plain;
                let value = resolve_scalar(&text, plain, yaml_tag.as_ref(), &span)?;
                let is_merge_key = plain && text == "<<" && yaml_tag.is_none();
                let mut node = Node::new(value, span);
                node.tag = merge_tag;
                self.remember(anchor, &node);
                self.push_value(node, is_merge_key)
            }
            Event::SequenceStart { anchor, tag } => {
                self.enter_collection(&span)?;
                let anchor = self.anchor(anchor);
                let (merge_tag, _) = self.tag(tag, &span)?;
                self.stack.push(Frame::Seq {
                    items: Vec::new(),
                    span,
                    anchor,
                    tag: merge_tag,
                });
                Ok(())
            }
            Event::MappingStart { anchor, tag } => {
                self.enter_collection(&span)?;
                let anchor = self.anchor(anchor);
                let (merge_tag, _) = self.tag(tag, &span)?;
                self.stack.push(Frame::Map {
                    map: Mapping::new(),
                    merges: Vec::new(),
                    pending_key: None,
                    span,
                    anchor,
                    tag: merge_tag,
                });
                Ok(())
            }
            Event::SequenceEnd => match self.stack.pop() {
                Some(Frame::Seq {
                    items,
                    span,
                    anchor,
                    tag,
                }) => {
                    let mut node = Node::new(Value::Seq(items), span);
                    node.tag = tag;
                    self.remember(anchor, &node);
                    self.push_value(node, false)
                }
                _ => Err(Diagnostic::new(span, "", "unbalanced sequence end")),
            },
            Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Map {
                    mut map,
                    merges,
                    span,
                    anchor,
                    tag,
                    ..
                }) => {
                    // A block mapping's start event is marked at its first `:`; point at
                    // its first key instead.
                    let span = match map.first() {
                        Some((_, e))
                            if (e.key_span.line, e.key_span.col) < (span.line, span.col) =>
                        {
                            e.key_span.clone()
                        }
                        _ => span,
                    };
                    apply_merges(&mut map, merges)?;
                    let mut node = Node::new(Value::Map(map), span);
                    node.tag = tag;
                    self.remember(anchor, &node);
                    self.push_value(node, false)
                }
                _ => Err(Diagnostic::new(span, "", "unbalanced mapping end")),
            },
        }
    }

    fn push_value(&mut self, node: Node, is_merge_key: bool) -> Result<(), Diagnostic> {
        match self.stack.last_mut() {
            None => {
                self.root = Some(node);
                Ok(())
            }
            Some(Frame::Seq { items, .. }) => {
                items.push(node);
                Ok(())
            }
            Some(Frame::Map {
                map,
                merges,
                pending_key,
                ..
            }) => match pending_key.take() {
                None => {
                    let key = match &node.value {
                        Value::Str(s) => s.clone(),
                        Value::Null => "null".to_string(),
                        Value::Seq(_) | Value::Map(_) => {
                            return Err(Diagnostic::new(
                                node.span,
                                "",
                                "a mapping key must be a scalar, not a list or mapping",
                            ));
                        }
                        _ => node.scalar_text().unwrap_or_default(),
                    };
                    *pending_key = Some((key, node.span, is_merge_key));
                    Ok(())
                }
                Some((key, key_span, true)) => {
                    let _ = key;
                    match &node.value {
                        Value::Map(_) => merges.push(node),
                        Value::Seq(items) => {
                            for item in items {
                                if item.as_map().is_none() {
                                    return Err(Diagnostic::new(
                                        item.span.clone(),
                                        "",
                                        "a merge key `<<` takes a mapping or a list of mappings",
                                    ));
                                }
                            }
                            merges.extend(items.iter().cloned());
                        }
                        _ => {
                            return Err(Diagnostic::new(
                                key_span,
                                "",
                                "a merge key `<<` takes a mapping or a list of mappings",
                            ));
                        }
                    }
                    Ok(())
                }
                Some((key, key_span, false)) => {
                    if let Some(prev) = map.get(&key) {
                        return Err(Diagnostic::new(
                            key_span,
                            "",
                            format!(
                                "duplicate key {key:?} (first defined at line {})",
                                prev.key_span.line
                            ),
                        ));
                    }
                    map.insert(key, Entry { key_span, node });
                    Ok(())
                }
            },
        }
    }
}

/// Whether a double-quoted scalar as written holds the escape `\/`.
fn escapes_slash(raw: &str) -> bool {
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' && chars.next() == Some('/') {
            return true;
        }
    }
    false
}

/// `<<` merges: explicit keys win; among merged mappings, earlier ones win.
fn apply_merges(map: &mut Mapping, merges: Vec<Node>) -> Result<(), Diagnostic> {
    for merged in merges {
        if let Value::Map(m) = merged.value {
            for (k, e) in m {
                if !map.contains_key(&k) {
                    map.insert(k, e);
                }
            }
        }
    }
    Ok(())
}

/// Number of nodes and height of a tree (iteratively, to stay safe on deep trees).
fn node_size(node: &Node) -> (usize, usize) {
    let mut n = 0usize;
    let mut height = 0usize;
    let mut todo = vec![(node, 1usize)];
    while let Some((x, depth)) = todo.pop() {
        n += 1;
        height = height.max(depth);
        match &x.value {
            Value::Seq(items) => todo.extend(items.iter().map(|i| (i, depth + 1))),
            Value::Map(m) => todo.extend(m.values().map(|e| (&e.node, depth + 1))),
            _ => {}
        }
    }
    (n, height)
}

fn resolve_scalar(
    text: &str,
    plain: bool,
    tag: Option<&String>,
    span: &Span,
) -> Result<Value, Diagnostic> {
    if let Some(tag) = tag {
        if let Some(suffix) = tag.strip_prefix("tag:yaml.org,2002:") {
            return match suffix {
                "str" => Ok(Value::Str(text.to_string())),
                "null" => Ok(Value::Null),
                "bool" | "int" | "float" => {
                    let v = resolve_plain(text);
                    let ok = matches!(
                        (&v, suffix),
                        (Value::Bool(_), "bool")
                            | (Value::Int(_), "int")
                            | (Value::Float(_), "float")
                            | (Value::Int(_), "float")
                    );
                    if ok {
                        Ok(match v {
                            Value::Int(i) if suffix == "float" => Value::Float(i as f64),
                            v => v,
                        })
                    } else {
                        Err(Diagnostic::new(
                            span.clone(),
                            "",
                            format!("{text:?} is not a valid !!{suffix}"),
                        ))
                    }
                }
                other => Err(Diagnostic::new(
                    span.clone(),
                    "",
                    format!("unsupported tag !!{other} on a scalar"),
                )),
            };
        }
    }
    if !plain {
        return Ok(Value::Str(text.to_string()));
    }
    Ok(resolve_plain(text))
}

/// YAML 1.2 core schema resolution of a plain scalar.
pub fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    if let Some(i) = parse_int(text) {
        return Value::Int(i);
    }
    if is_float(text) {
        if let Ok(f) = text.parse::<f64>() {
            return Value::Float(f);
        }
    }
    Value::Str(text.to_string())
}

fn parse_int(text: &str) -> Option<i64> {
    let (neg, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (radix, body) = if let Some(h) = digits.strip_prefix("0x") {
        (16, h)
    } else if let Some(o) = digits.strip_prefix("0o") {
        (8, o)
    } else if digits.len() > 1 && digits.starts_with('0') && digits.chars().all(|c| c.is_digit(8)) {
        // `0640`: octal, as go-yaml v3 (compose-go) keeps it from YAML 1.1; secret and config
        // modes are written this way.
        (8, &digits[1..])
    } else {
        (10, digits)
    };
    if body.is_empty() || !body.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let v = i64::from_str_radix(body, radix).ok()?;
    Some(if neg { -v } else { v })
}

fn is_float(text: &str) -> bool {
    let t = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (mantissa, exp) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], Some(&t[i + 1..])),
        None => (t, None),
    };
    let (int_part, frac) = match mantissa.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (mantissa, None),
    };
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    let mantissa_ok = match frac {
        Some(f) => digits(int_part) && digits(f) && !(int_part.is_empty() && f.is_empty()),
        None => !int_part.is_empty() && digits(int_part),
    };
    let exp_ok = match exp {
        None => true,
        Some(e) => {
            let e = e.strip_prefix(['-', '+']).unwrap_or(e);
            !e.is_empty() && digits(e)
        }
    };
    mantissa_ok && exp_ok && (frac.is_some() || exp.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(src: &str) -> Node {
        parse(src, &Arc::from("t.yaml")).unwrap()
    }

    #[test]
    fn nodes_carry_one_based_line_and_column() {
        let n = p("services:\n  web:\n    image: nginx\n");
        let image = n
            .get("services")
            .unwrap()
            .get("web")
            .unwrap()
            .get("image")
            .unwrap();
        assert_eq!((image.span.line, image.span.col), (3, 12));
        let web = &n.get("services").unwrap().as_map().unwrap()["web"];
        assert_eq!((web.key_span.line, web.key_span.col), (2, 3));
    }

    #[test]
    fn scalars_follow_the_yaml_1_2_core_schema() {
        let n = p("a: yes\nb: true\nc: 010\nd: 0x1f\ne: 1.5\nf: ~\ng: '3'\nh: 1e3\ni: .5\n");
        assert_eq!(n.get("a").unwrap().value, Value::Str("yes".into()));
        assert_eq!(n.get("b").unwrap().value, Value::Bool(true));
        assert_eq!(
            n.get("c").unwrap().value,
            Value::Int(8),
            "0-prefixed octal, as go-yaml v3"
        );
        assert_eq!(n.get("d").unwrap().value, Value::Int(31));
        assert_eq!(n.get("e").unwrap().value, Value::Float(1.5));
        assert_eq!(n.get("f").unwrap().value, Value::Null);
        assert_eq!(n.get("g").unwrap().value, Value::Str("3".into()));
        assert_eq!(n.get("h").unwrap().value, Value::Float(1000.0));
        assert_eq!(n.get("i").unwrap().value, Value::Float(0.5));
    }

    #[test]
    fn merge_keys_apply_with_explicit_keys_winning() {
        let n = p("base: &b {x: 1, y: 2}\nother: &o {y: 9, z: 3}\nm:\n  y: 5\n  <<: [*b, *o]\n");
        let m = n.get("m").unwrap();
        assert_eq!(m.get("x").unwrap().value, Value::Int(1));
        assert_eq!(m.get("y").unwrap().value, Value::Int(5));
        assert_eq!(m.get("z").unwrap().value, Value::Int(3));
    }

    #[test]
    fn aliases_copy_the_anchored_node() {
        let n = p("a: &x [1, 2]\nb: *x\n");
        assert_eq!(n.get("b").unwrap().as_seq().unwrap().len(), 2);
    }

    #[test]
    fn reset_and_override_tags_are_kept() {
        let n = p("a: !reset []\nb: !override {x: 1}\nc: !other 3\n");
        assert_eq!(n.get("a").unwrap().tag, Some(MergeTag::Reset));
        assert_eq!(n.get("b").unwrap().tag, Some(MergeTag::Override));
        // Other local tags are ignored, as go-yaml does.
        assert_eq!(n.get("c").unwrap().tag, None);
        assert_eq!(n.get("c").unwrap().value, Value::Int(3));
    }

    /// What go-yaml v3 reads and a reader written from the YAML specification refuses or
    /// reads otherwise (found with the yaml-test-suite data and real compose files).
    #[test]
    fn reads_what_go_yaml_reads() {
        // Comments between flow items, a closing `]` indented less than the items.
        let n = p(
            "a:\n  b: [\n    \"x\",\n    # note\n    \"y\"\n  ]\n  c: {\n    k: v, # note\n    l: w\n}\n",
        );
        let b = n.get("a").unwrap().get("b").unwrap();
        assert_eq!(b.to_json(), serde_json::json!(["x", "y"]));
        let c = n.get("a").unwrap().get("c").unwrap();
        assert_eq!(c.to_json(), serde_json::json!({"k": "v", "l": "w"}));
        // A later anchor of the same name replaces the earlier one.
        let n = p("a: &x 1\nb: *x\nc: &x 2\nd: *x\n");
        assert_eq!(
            n.to_json(),
            serde_json::json!({"a": 1, "b": 1, "c": 2, "d": 2})
        );
        // U+0085 is a line break inside a quoted scalar (folded to a space).
        let n = p("a: 'x\u{85}y'\n");
        assert_eq!(n.get("a").unwrap().as_str(), Some("x y"));
        // go-yaml v3 refuses YAML 1.2's `\/` escape and `%YAML 1.2`; `%YAML 1.1` is fine.
        let refused = |src: &str| {
            parse(src, &Arc::from("t.yaml")).unwrap_err()[0]
                .message
                .clone()
        };
        assert!(refused("a: \"x\\/y\"\n").contains("unknown escape"));
        assert!(refused("%YAML 1.2\n---\na: 1\n").contains("incompatible YAML document"));
        assert_eq!(
            p("%YAML 1.1\n---\na: 'x\\/y'\n").get("a").unwrap().as_str(),
            Some("x\\/y")
        );
    }

    #[test]
    fn duplicate_keys_and_syntax_errors_have_positions() {
        let e = parse("a: 1\nb: 2\na: 3\n", &Arc::from("t.yaml")).unwrap_err();
        assert_eq!((e[0].line, e[0].col), (3, 1));
        assert!(e[0].message.contains("duplicate key"));
        let e = parse("a: [1, 2\nb: 3\n", &Arc::from("t.yaml")).unwrap_err();
        assert!(e[0].message.starts_with("invalid YAML"));
    }

    #[test]
    fn sequences_and_mappings_cannot_nest_deeper_than_the_limit() {
        // Block style: flow style hits yaml-rust2's own recursion limit first.
        let seq = |depth: usize| format!("a:\n{}x\n", "- ".repeat(depth));
        let map = |depth: usize| -> String {
            let mut src: String = (0..depth)
                .map(|i| format!("{}k:\n", " ".repeat(i)))
                .collect();
            src.push_str(&" ".repeat(depth));
            src.push_str("x: 1\n");
            src
        };
        for (kind, src) in [("sequence", seq(MAX_DEPTH)), ("mapping", map(MAX_DEPTH))] {
            let e = parse(&src, &Arc::from("t.yaml")).unwrap_err();
            assert!(e[0].message.contains("nesting deeper"), "{kind}: {e:?}");
        }
        assert!(parse(&seq(MAX_DEPTH - 4), &Arc::from("t.yaml")).is_ok());
        assert!(parse(&map(MAX_DEPTH - 4), &Arc::from("t.yaml")).is_ok());
    }

    #[test]
    fn aliases_cannot_nest_deeper_than_the_limit() {
        let mut src = String::from(
            "a0: &a0 [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[x]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]\n",
        );
        for i in 1..8 {
            let prev = i - 1;
            let open = "[".repeat(48);
            let close = "]".repeat(48);
            src.push_str(&format!("a{i}: &a{i} {open}*a{prev}{close}\n"));
        }
        let e = parse(&src, &Arc::from("t.yaml")).unwrap_err();
        assert!(e[0].message.contains("nesting deeper"), "{e:?}");
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut src = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let prev = i - 1;
            src.push_str(&format!(
                "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        let e = parse(&src, &Arc::from("t.yaml")).unwrap_err();
        assert!(e[0].message.contains("alias bomb"));
    }
}
