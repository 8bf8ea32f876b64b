//! A small YAML document tree with a source position on every node, built from
//! `saphyr-parser` events under hard limits (size, node count, depth) so that untrusted input
//! can neither exhaust memory (alias bombs) nor the stack (deep nesting).

use std::collections::HashMap;

use saphyr_parser::{Event, Marker, Parser, ScalarStyle, Tag};

/// Largest accepted pipeline text, in bytes.
pub(crate) const MAX_BYTES: usize = 1024 * 1024;
/// Largest number of nodes in the document, counting every expansion of an alias and every
/// anchored node once more (anchors are kept for later expansion).
pub(crate) const MAX_NODES: usize = 50_000;
/// Deepest nesting of lists and mappings.
pub(crate) const MAX_DEPTH: usize = 64;

/// A 1-based line and column (columns count characters, not bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    pub(crate) const START: Pos = Pos { line: 1, column: 1 };

    fn of(marker: &Marker) -> Pos {
        Pos {
            line: marker.line().max(1),
            column: marker.col() + 1,
        }
    }
}

/// One node of the document.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Node {
    pub pos: Pos,
    pub kind: Kind,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Kind {
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

/// A scalar: the text as written (after unquoting and unescaping) and its YAML 1.2 core-schema
/// type. Quoted scalars are always strings.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Scalar {
    pub text: String,
    pub ty: ScalarType,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ScalarType {
    Null,
    Bool,
    Int,
    Float,
    Str,
}

/// Why no tree could be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TreeError {
    /// Not well-formed YAML, or YAML this format does not use (tags, several documents).
    Syntax(Pos, String),
    /// Well-formed, but over one of the limits.
    Limit(Pos, String),
}

enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        size: usize,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        size: usize,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
    },
}

struct Builder {
    stack: Vec<Frame>,
    root: Option<Node>,
    /// Anchored nodes by anchor id, with their sizes in nodes.
    anchors: HashMap<usize, (Node, usize)>,
    nodes: usize,
}

impl Builder {
    fn count(&mut self, n: usize, pos: Pos) -> Result<(), TreeError> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            return Err(TreeError::Limit(
                pos,
                format!(
                    "the pipeline has too many YAML nodes (more than {MAX_NODES}, counting each \
                     use of an alias)"
                ),
            ));
        }
        Ok(())
    }

    /// Hands a finished node of `size` nodes to its parent (or makes it the root).
    fn complete(&mut self, node: Node, size: usize, anchor: usize) -> Result<(), TreeError> {
        if anchor != 0 {
            // The stored copy costs memory too, so it counts against the budget.
            self.count(size, node.pos)?;
            self.anchors.insert(anchor, (node.clone(), size));
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, size: s, .. }) => {
                *s += size;
                items.push(node);
            }
            Some(Frame::Map {
                entries,
                key,
                size: s,
                ..
            }) => {
                *s += size;
                match key.take() {
                    None => *key = Some(node),
                    Some(k) => {
                        let mut node = node;
                        // An omitted value (`key:`) sits at the colon; the key is the better
                        // place to point at.
                        if is_omitted(&node) {
                            node.pos = k.pos;
                        }
                        entries.push((k, node));
                    }
                }
            }
        }
        Ok(())
    }

    fn open(&mut self, frame: Frame, pos: Pos) -> Result<(), TreeError> {
        self.count(1, pos)?;
        if self.stack.len() >= MAX_DEPTH {
            return Err(TreeError::Limit(pos, too_deep()));
        }
        self.stack.push(frame);
        Ok(())
    }
}

fn too_deep() -> String {
    format!("the pipeline nests lists and mappings too deeply (more than {MAX_DEPTH} levels)")
}

/// Parses `text` into a tree. `Ok(None)` means the text holds no document at all (empty, or
/// only comments).
pub(crate) fn load(text: &str) -> Result<Option<Node>, TreeError> {
    if text.len() > MAX_BYTES {
        return Err(TreeError::Limit(
            Pos::START,
            format!(
                "the pipeline file is too large ({} bytes; the limit is {MAX_BYTES} bytes, 1 MiB)",
                text.len()
            ),
        ));
    }
    let mut parser = Parser::new_from_str(text);
    let mut b = Builder {
        stack: Vec::new(),
        root: None,
        anchors: HashMap::new(),
        nodes: 0,
    };
    let mut documents = 0usize;
    while let Some(next) = parser.next_event() {
        let (event, span) = next.map_err(|e| {
            let pos = Pos::of(e.marker());
            if e.info() == "recursion limit exceeded" {
                // The scanner's own limit on flow nesting, met before ours while it looks ahead.
                TreeError::Limit(pos, too_deep())
            } else {
                TreeError::Syntax(pos, format!("invalid YAML: {}", e.info()))
            }
        })?;
        let pos = Pos::of(&span.start);
        match event {
            Event::Nothing | Event::StreamStart | Event::DocumentEnd => {}
            Event::StreamEnd => break,
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(TreeError::Syntax(
                        pos,
                        "a second YAML document starts here; a pipeline file holds exactly one"
                            .to_owned(),
                    ));
                }
            }
            Event::Alias(id) => {
                let Some((node, size)) = b.anchors.get(&id) else {
                    return Err(TreeError::Syntax(
                        pos,
                        "an alias may not refer to a node that contains it".to_owned(),
                    ));
                };
                let (mut node, size) = (node.clone(), *size);
                b.count(size, pos)?;
                node.pos = pos;
                b.complete(node, size, 0)?;
            }
            Event::Scalar(value, style, anchor, tag) => {
                b.count(1, pos)?;
                let forced_str = check_tag(tag.as_deref(), pos, true)?;
                let ty = if forced_str || style != ScalarStyle::Plain {
                    ScalarType::Str
                } else {
                    resolve(&value)
                };
                let node = Node {
                    pos,
                    kind: Kind::Scalar(Scalar {
                        text: value.into_owned(),
                        ty,
                    }),
                };
                b.complete(node, 1, anchor)?;
            }
            Event::SequenceStart(anchor, tag) => {
                check_tag(tag.as_deref(), pos, false)?;
                let frame = Frame::Seq {
                    pos,
                    anchor,
                    size: 1,
                    items: Vec::new(),
                };
                b.open(frame, pos)?;
            }
            Event::MappingStart(anchor, tag) => {
                check_tag(tag.as_deref(), pos, false)?;
                let frame = Frame::Map {
                    pos,
                    anchor,
                    size: 1,
                    entries: Vec::new(),
                    key: None,
                };
                b.open(frame, pos)?;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, size, anchor) = match b.stack.pop() {
                    Some(Frame::Seq {
                        pos,
                        anchor,
                        size,
                        items,
                    }) => (
                        Node {
                            pos,
                            kind: Kind::Seq(items),
                        },
                        size,
                        anchor,
                    ),
                    Some(Frame::Map {
                        pos,
                        anchor,
                        size,
                        entries,
                        ..
                    }) => (
                        Node {
                            pos,
                            kind: Kind::Map(entries),
                        },
                        size,
                        anchor,
                    ),
                    None => {
                        return Err(TreeError::Syntax(
                            pos,
                            "unbalanced end of a list or mapping".to_owned(),
                        ));
                    }
                };
                b.complete(node, size, anchor)?;
            }
        }
    }
    Ok(b.root)
}

/// An empty plain scalar, as YAML makes of a value left out.
fn is_omitted(node: &Node) -> bool {
    matches!(&node.kind, Kind::Scalar(s) if s.ty == ScalarType::Null && s.text.is_empty())
}

/// Accepts only `!!str` on scalars (which makes the scalar a string); every other tag is an
/// error, since the pipeline format gives tags no meaning. Returns whether `!!str` was given.
fn check_tag(tag: Option<&Tag>, pos: Pos, scalar: bool) -> Result<bool, TreeError> {
    match tag {
        None => Ok(false),
        Some(tag) if scalar && tag.is_yaml_core_schema() && tag.suffix == "str" => Ok(true),
        Some(tag) => Err(TreeError::Syntax(
            pos,
            format!("YAML tags are not used in pipeline files (found `{tag}`); remove it"),
        )),
    }
}

/// The YAML 1.2 core schema type of a plain scalar.
fn resolve(text: &str) -> ScalarType {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return ScalarType::Null,
        "true" | "True" | "TRUE" | "false" | "False" | "FALSE" => return ScalarType::Bool,
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" | "-.inf" | "-.Inf" | "-.INF"
        | ".nan" | ".NaN" | ".NAN" => return ScalarType::Float,
        _ => {}
    }
    let digits = |s: &str, radix: u32| !s.is_empty() && s.chars().all(|c| c.is_digit(radix));
    if text.strip_prefix("0x").is_some_and(|h| digits(h, 16))
        || text.strip_prefix("0o").is_some_and(|o| digits(o, 8))
    {
        return ScalarType::Int;
    }
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    if digits(unsigned, 10) {
        return ScalarType::Int;
    }
    // [0-9]* ( . [0-9]* )? ( [eE] [-+]? [0-9]+ )?, with at least one digit in the mantissa
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => (&unsigned[..i], Some(&unsigned[i + 1..])),
        None => (unsigned, None),
    };
    let (int_part, frac_part) = match mantissa.split_once('.') {
        Some((i, f)) => (i, f),
        None => (mantissa, ""),
    };
    let mantissa_ok = (digits(int_part, 10) || int_part.is_empty())
        && (digits(frac_part, 10) || frac_part.is_empty())
        && !(int_part.is_empty() && frac_part.is_empty());
    let exponent_ok = match exponent {
        None => true,
        Some(e) => digits(e.strip_prefix(['-', '+']).unwrap_or(e), 10),
    };
    if mantissa_ok && exponent_ok {
        ScalarType::Float
    } else {
        ScalarType::Str
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_core_schema_types() {
        let cases = [
            ("", ScalarType::Null),
            ("~", ScalarType::Null),
            ("null", ScalarType::Null),
            ("true", ScalarType::Bool),
            ("FALSE", ScalarType::Bool),
            ("yes", ScalarType::Str),
            ("1", ScalarType::Int),
            ("-12", ScalarType::Int),
            ("0x1F", ScalarType::Int),
            ("0o17", ScalarType::Int),
            ("0o19", ScalarType::Str),
            ("1.10", ScalarType::Float),
            (".5", ScalarType::Float),
            ("1e5", ScalarType::Float),
            ("1.", ScalarType::Float),
            (".", ScalarType::Str),
            ("1e", ScalarType::Str),
            ("-.inf", ScalarType::Float),
            ("1.2.3", ScalarType::Str),
            ("30m", ScalarType::Str),
            ("alpine:3.20", ScalarType::Str),
        ];
        for (text, want) in cases {
            assert_eq!(resolve(text), want, "{text:?}");
        }
    }

    #[test]
    fn quoted_and_tagged_scalars_are_strings() {
        let root = load("a: '1'\nb: !!str 2\nc: 3\n")
            .expect("valid")
            .expect("document");
        let Kind::Map(entries) = root.kind else {
            panic!("not a map: {root:?}")
        };
        let types: Vec<_> = entries
            .iter()
            .map(|(_, v)| match &v.kind {
                Kind::Scalar(s) => s.ty,
                other => panic!("not a scalar: {other:?}"),
            })
            .collect();
        assert_eq!(types, [ScalarType::Str, ScalarType::Str, ScalarType::Int]);
    }

    #[test]
    fn empty_text_has_no_document() {
        assert_eq!(load(""), Ok(None));
        assert_eq!(load("# just a comment\n"), Ok(None));
    }

    #[test]
    fn alias_expands_with_the_alias_position() {
        let root = load("a: &x [1, 2]\nb: *x\n").expect("valid").expect("doc");
        let Kind::Map(entries) = root.kind else {
            panic!("not a map")
        };
        assert_eq!(entries[1].1.pos, Pos { line: 2, column: 4 });
        assert_eq!(entries[0].1.kind, entries[1].1.kind);
    }
}
