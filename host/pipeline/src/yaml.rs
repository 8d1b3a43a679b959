//! A small YAML document tree with a position on every node, built from
//! saphyr-parser's events. It enforces the caps on hostile files (size,
//! depth, aliases, nodes), rejects duplicate keys, tags and multi-document
//! streams, and supports anchors, aliases and `<<` merge keys.

use std::collections::HashMap;
use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// A 1-based line and column in the pipeline file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

impl Pos {
    fn of(span: &Span) -> Self {
        Self {
            line: span.start.line() as u32,
            col: span.start.col() as u32 + 1,
        }
    }
}

/// How a scalar was written; plain scalars may be read as numbers or booleans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Plain,
    Quoted,
    Block,
}

/// The value of a node.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Scalar(String, Style),
    Seq(Vec<Node>),
    /// Keys are scalars, unique, in file order.
    Map(Vec<(Node, Node)>),
}

/// A value and where it starts in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub pos: Pos,
}

/// One step of a path into the tree, used to find positions for errors
/// found after deserialisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSeg {
    /// The value under a key.
    Key(String),
    /// The key itself (its position rather than its value's).
    KeyName(String),
    /// An item of a sequence.
    Index(usize),
}

impl Node {
    /// A short description of the node's kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Null => "nothing",
            Value::Scalar(..) => "a scalar",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The value under `key`, when this node is a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| matches!(&k.value, Value::Scalar(s, _) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The position of the deepest node the path reaches.
    pub fn locate(&self, path: &[PathSeg]) -> Pos {
        let mut node = self;
        for seg in path {
            let next = match (seg, &node.value) {
                (PathSeg::Key(k), Value::Map(_)) => node.get(k),
                (PathSeg::KeyName(k), Value::Map(entries)) => entries
                    .iter()
                    .find(|(key, _)| matches!(&key.value, Value::Scalar(s, _) if s == k))
                    .map(|(key, _)| key),
                (PathSeg::Index(i), Value::Seq(items)) => items.get(*i),
                // A scalar where a list was accepted stands for the list's item.
                (PathSeg::Index(0), Value::Scalar(..)) => Some(node),
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        node.pos
    }
}

/// Caps that keep a hostile file from exhausting the host.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub max_bytes: usize,
    pub max_depth: usize,
    pub max_aliases: usize,
    pub max_nodes: usize,
}

impl Default for Caps {
    fn default() -> Self {
        Self {
            max_bytes: 1024 * 1024,
            max_depth: 32,
            max_aliases: 100,
            max_nodes: 100_000,
        }
    }
}

/// A YAML error with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub pos: Pos,
    pub message: String,
}

impl YamlError {
    fn at(pos: Pos, message: impl Into<String>) -> Self {
        Self {
            pos,
            message: message.into(),
        }
    }
}

enum Frame {
    Seq(Pos, Option<usize>, Vec<Node>),
    Map(
        Pos,
        Option<usize>,
        Vec<(Node, Node)>,
        Option<Node>,
        Vec<String>,
    ),
}

/// Parses one YAML document into a tree, enforcing `caps`.
pub fn parse(src: &str, caps: Caps) -> Result<Node, YamlError> {
    if src.len() > caps.max_bytes {
        return Err(YamlError::at(
            Pos { line: 1, col: 1 },
            format!(
                "the file is {} bytes; the limit is {} bytes",
                src.len(),
                caps.max_bytes
            ),
        ));
    }
    let mut b = Builder {
        caps,
        anchors: HashMap::new(),
        stack: Vec::new(),
        root: None,
        nodes: 0,
        aliases: 0,
        documents: 0,
    };
    for item in Parser::new_from_str(src) {
        let (event, span) = item.map_err(|e| {
            YamlError::at(
                Pos {
                    line: e.marker().line() as u32,
                    col: e.marker().col() as u32 + 1,
                },
                format!("invalid YAML: {}", e.info()),
            )
        })?;
        b.event(event, &span)?;
    }
    b.root
        .ok_or_else(|| YamlError::at(Pos { line: 1, col: 1 }, "the file is empty"))
}

struct Builder {
    caps: Caps,
    anchors: HashMap<usize, Node>,
    stack: Vec<Frame>,
    root: Option<Node>,
    nodes: usize,
    aliases: usize,
    documents: usize,
}

fn count_nodes(n: &Node) -> usize {
    1 + match &n.value {
        Value::Seq(items) => items.iter().map(count_nodes).sum(),
        Value::Map(entries) => entries
            .iter()
            .map(|(k, v)| count_nodes(k) + count_nodes(v))
            .sum(),
        _ => 0,
    }
}

fn is_null(text: &str, style: ScalarStyle) -> bool {
    style == ScalarStyle::Plain && matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

impl Builder {
    fn event(&mut self, event: Event<'_>, span: &Span) -> Result<(), YamlError> {
        let pos = Pos::of(span);
        match event {
            Event::StreamStart | Event::StreamEnd | Event::Nothing | Event::DocumentEnd => Ok(()),
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(YamlError::at(
                        pos,
                        "a pipeline file holds one YAML document; found a second `---`",
                    ));
                }
                Ok(())
            }
            Event::Alias(id) => {
                self.aliases += 1;
                if self.aliases > self.caps.max_aliases {
                    return Err(YamlError::at(
                        pos,
                        format!("more than {} aliases", self.caps.max_aliases),
                    ));
                }
                let Some(target) = self.anchors.get(&id) else {
                    return Err(YamlError::at(pos, "alias to an unknown anchor"));
                };
                let mut node = target.clone();
                node.pos = pos;
                self.nodes += count_nodes(&node);
                self.push(node)
            }
            Event::Scalar(text, style, anchor, tag) => {
                if let Some(tag) = tag {
                    return Err(YamlError::at(
                        pos,
                        format!(
                            "YAML tags are not supported (found `{}{}`)",
                            tag.handle, tag.suffix
                        ),
                    ));
                }
                let value = if is_null(&text, style) {
                    Value::Null
                } else {
                    let style = match style {
                        ScalarStyle::Plain => Style::Plain,
                        ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted => Style::Quoted,
                        _ => Style::Block,
                    };
                    Value::Scalar(text.into_owned(), style)
                };
                let node = Node { value, pos };
                if anchor > 0 {
                    self.anchors.insert(anchor, node.clone());
                }
                self.nodes += 1;
                self.push(node)
            }
            Event::SequenceStart(anchor, ref tag) | Event::MappingStart(anchor, ref tag) => {
                if let Some(tag) = tag {
                    return Err(YamlError::at(
                        pos,
                        format!(
                            "YAML tags are not supported (found `{}{}`)",
                            tag.handle, tag.suffix
                        ),
                    ));
                }
                if self.stack.len() >= self.caps.max_depth {
                    return Err(YamlError::at(
                        pos,
                        format!("nesting deeper than {} levels", self.caps.max_depth),
                    ));
                }
                let anchor = (anchor > 0).then_some(anchor);
                let frame = if matches!(event, Event::SequenceStart(..)) {
                    Frame::Seq(pos, anchor, Vec::new())
                } else {
                    Frame::Map(pos, anchor, Vec::new(), None, Vec::new())
                };
                self.stack.push(frame);
                Ok(())
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Frame::Seq(pos, anchor, items)) => (
                        Node {
                            value: Value::Seq(items),
                            pos,
                        },
                        anchor,
                    ),
                    Some(Frame::Map(pos, anchor, entries, _, _)) => (
                        Node {
                            value: Value::Map(entries),
                            pos,
                        },
                        anchor,
                    ),
                    None => return Err(YamlError::at(pos, "unbalanced YAML collection")),
                };
                if let Some(a) = anchor {
                    self.anchors.insert(a, node.clone());
                }
                self.nodes += 1;
                self.push(node)
            }
        }
    }

    fn push(&mut self, node: Node) -> Result<(), YamlError> {
        if self.nodes > self.caps.max_nodes {
            return Err(YamlError::at(
                node.pos,
                format!("the document has more than {} values", self.caps.max_nodes),
            ));
        }
        match self.stack.last_mut() {
            None => {
                self.root = Some(node);
                Ok(())
            }
            Some(Frame::Seq(_, _, items)) => {
                items.push(node);
                Ok(())
            }
            Some(Frame::Map(_, _, entries, pending, merged)) => match pending.take() {
                None => {
                    match &node.value {
                        Value::Scalar(..) => {}
                        _ => {
                            return Err(YamlError::at(
                                node.pos,
                                format!("a key must be a plain string, found {}", node.kind()),
                            ));
                        }
                    }
                    *pending = Some(node);
                    Ok(())
                }
                Some(key) => insert_entry(entries, merged, key, node),
            },
        }
    }
}

fn key_text(node: &Node) -> &str {
    match &node.value {
        Value::Scalar(s, _) => s,
        _ => "",
    }
}

/// Adds `key: value` to a mapping. Keys that came from a `<<` merge may be
/// overridden by explicit ones; explicit duplicates are errors.
fn insert_entry(
    entries: &mut Vec<(Node, Node)>,
    merged: &mut Vec<String>,
    key: Node,
    value: Node,
) -> Result<(), YamlError> {
    if matches!(&key.value, Value::Scalar(s, Style::Plain) if s == "<<") {
        // Merge key: entries of the merged mapping(s) that are not set here.
        let sources = match value.value {
            Value::Map(m) => vec![m],
            Value::Seq(items) => items
                .into_iter()
                .map(|n| match n.value {
                    Value::Map(m) => Ok(m),
                    _ => Err(YamlError::at(n.pos, "`<<` merges mappings only")),
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(YamlError::at(value.pos, "`<<` merges mappings only")),
        };
        for source in sources {
            for (k, v) in source {
                if !entries.iter().any(|(e, _)| key_text(e) == key_text(&k)) {
                    merged.push(key_text(&k).to_string());
                    entries.push((k, v));
                }
            }
        }
        return Ok(());
    }
    let name = key_text(&key).to_string();
    if let Some(i) = merged.iter().position(|m| *m == name) {
        merged.remove(i);
        if let Some(entry) = entries.iter_mut().find(|(e, _)| key_text(e) == name) {
            *entry = (key, value);
        }
        return Ok(());
    }
    if let Some((first, _)) = entries.iter().find(|(e, _)| key_text(e) == name) {
        return Err(YamlError::at(
            key.pos,
            format!(
                "duplicate key `{}` (first defined at line {})",
                key_text(&key),
                first.pos.line
            ),
        ));
    }
    entries.push((key, value));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let n = parse("a:\n  b: [1, 2]\n", Caps::default()).unwrap();
        let b = n.get("a").unwrap().get("b").unwrap();
        assert_eq!(b.pos, Pos { line: 2, col: 6 });
        assert_eq!(
            n.locate(&[
                PathSeg::Key("a".into()),
                PathSeg::Key("b".into()),
                PathSeg::Index(1)
            ]),
            Pos { line: 2, col: 10 }
        );
    }

    #[test]
    fn billion_laughs_is_capped() {
        let mut src = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            src.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let err = parse(&src, Caps::default()).unwrap_err();
        assert!(err.message.contains("more than"), "{err:?}");
    }

    #[test]
    fn merge_keys() {
        let n = parse(
            "base: &b {x: 1, y: 2}\nstage:\n  <<: *b\n  y: 3\n",
            Caps::default(),
        )
        .unwrap();
        let stage = n.get("stage").unwrap();
        assert!(matches!(&stage.get("x").unwrap().value, Value::Scalar(s, _) if s == "1"));
        assert!(matches!(&stage.get("y").unwrap().value, Value::Scalar(s, _) if s == "3"));
    }
}
