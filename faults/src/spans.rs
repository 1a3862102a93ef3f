//! From byte offsets to what a person reads in an error: a line and column,
//! and the dotted path of the field (`faults[2].at_ms`). serde tells us
//! where it failed as a span; our own checks tell us which field. toml_edit's
//! span-keeping document links the two.

use std::fmt;
use std::ops::Range;

use toml_edit::{ImDocument, Item, Table, Value};

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// A table key.
    Key(String),
    /// An array element.
    Index(usize),
}

/// A field path, shown as `faults[2].at_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldPath(pub Vec<Seg>);

impl FieldPath {
    /// A path of keys only.
    pub fn keys(keys: &[&str]) -> FieldPath {
        FieldPath(keys.iter().map(|k| Seg::Key((*k).to_string())).collect())
    }

    /// This path, one key deeper.
    pub fn key(&self, key: &str) -> FieldPath {
        let mut path = self.clone();
        path.0.push(Seg::Key(key.to_string()));
        path
    }

    /// This path, one index deeper.
    pub fn index(&self, index: usize) -> FieldPath {
        let mut path = self.clone();
        path.0.push(Seg::Index(index));
        path
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a Item),
    Table(&'a Table),
    Value(&'a Value),
}

struct Child<'a> {
    seg: Seg,
    node: Node<'a>,
    key_span: Option<Range<usize>>,
}

impl<'a> Node<'a> {
    fn span(self) -> Option<Range<usize>> {
        match self {
            Node::Item(item) => item.span(),
            Node::Table(table) => table.span(),
            Node::Value(value) => value.span(),
        }
    }

    fn children(self) -> Vec<Child<'a>> {
        let table_children = |table: &'a Table| {
            table
                .iter()
                .map(|(k, item)| Child {
                    seg: Seg::Key(k.to_string()),
                    node: Node::Item(item),
                    key_span: table.key(k).and_then(|key| key.span()),
                })
                .collect()
        };
        let index = |(i, node): (usize, Node<'a>)| Child {
            seg: Seg::Index(i),
            node,
            key_span: None,
        };
        match self {
            Node::Item(Item::Table(table)) | Node::Table(table) => table_children(table),
            Node::Item(Item::ArrayOfTables(tables)) => tables
                .iter()
                .map(Node::Table)
                .enumerate()
                .map(index)
                .collect(),
            Node::Item(Item::Value(value)) => Node::Value(value).children(),
            Node::Item(Item::None) => Vec::new(),
            Node::Value(Value::Array(array)) => array
                .iter()
                .map(Node::Value)
                .enumerate()
                .map(index)
                .collect(),
            Node::Value(Value::InlineTable(table)) => table
                .iter()
                .map(|(k, value)| Child {
                    seg: Seg::Key(k.to_string()),
                    node: Node::Value(value),
                    key_span: table.key(k).and_then(|key| key.span()),
                })
                .collect(),
            Node::Value(_) => Vec::new(),
        }
    }
}

/// A parsed document that can answer where a field is and which field is at
/// an offset. `None` when the text is not even well-formed TOML.
pub struct Located {
    doc: ImDocument<String>,
}

impl fmt::Debug for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Located").finish_non_exhaustive()
    }
}

impl Located {
    /// Parses `text` keeping spans.
    pub fn parse(text: &str) -> Option<Located> {
        ImDocument::parse(text.to_string())
            .ok()
            .map(|doc| Located { doc })
    }

    /// Byte span of the field at `path`: its value, else its key, else the
    /// nearest enclosing field that has a span.
    pub fn span_of(&self, path: &FieldPath) -> Option<Range<usize>> {
        let mut node = Node::Item(self.doc.as_item());
        let mut best = None;
        for seg in &path.0 {
            let child = node.children().into_iter().find(|c| &c.seg == seg)?;
            best = child.node.span().or(child.key_span.clone()).or(best);
            node = child.node;
        }
        best
    }

    /// The deepest field whose key or value covers `offset`.
    pub fn path_at(&self, offset: usize) -> FieldPath {
        let mut path = FieldPath::default();
        find(Node::Item(self.doc.as_item()), offset, &mut path);
        path
    }

    /// Every plain value (string, number, bool, date) at or below `path`,
    /// with its path and span, in document order.
    pub fn leaves_under(&self, path: &FieldPath) -> Vec<(FieldPath, Range<usize>, &Value)> {
        let mut node = Node::Item(self.doc.as_item());
        for seg in &path.0 {
            match node.children().into_iter().find(|c| &c.seg == seg) {
                Some(child) => node = child.node,
                None => return Vec::new(),
            }
        }
        let mut leaves = Vec::new();
        collect_leaves(node, path, &mut leaves);
        leaves
    }
}

fn collect_leaves<'a>(
    node: Node<'a>,
    path: &FieldPath,
    leaves: &mut Vec<(FieldPath, Range<usize>, &'a Value)>,
) {
    let value = match node {
        Node::Value(value) => Some(value),
        Node::Item(Item::Value(value)) => Some(value),
        _ => None,
    };
    if let Some(value) = value.filter(|v| !v.is_array() && !v.is_inline_table()) {
        if let Some(span) = value.span() {
            leaves.push((path.clone(), span, value));
        }
        return;
    }
    for child in node.children() {
        let mut deeper = path.clone();
        deeper.0.push(child.seg);
        collect_leaves(child.node, &deeper, leaves);
    }
}

fn covers(span: &Option<Range<usize>>, offset: usize) -> bool {
    span.as_ref()
        .is_some_and(|s| s.start <= offset && offset < s.end.max(s.start + 1))
}

/// Depth-first: a table's span covers only its header, so a table's
/// children are searched whether or not the table covers `offset`.
fn find(node: Node<'_>, offset: usize, path: &mut FieldPath) -> bool {
    for child in node.children() {
        path.0.push(child.seg.clone());
        if find(child.node, offset, path) {
            return true;
        }
        if covers(&child.node.span(), offset) || covers(&child.key_span, offset) {
            return true;
        }
        path.0.pop();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str =
        "name = \"x\"\n[guest]\nvcpus = 0\n\n[[faults]]\nat_ms = 5\nbetween = [\"a\", \"b\"]\n";

    #[test]
    fn lines_and_columns_are_one_based() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("ab", 99), (1, 3));
        assert_eq!(line_col("é\n", 1), (1, 1));
    }

    #[test]
    fn a_path_finds_its_line() {
        let doc = Located::parse(TEXT).unwrap();
        let span = doc.span_of(&FieldPath::keys(&["guest", "vcpus"])).unwrap();
        assert_eq!(line_col(TEXT, span.start), (3, 9));
        let span = doc
            .span_of(&FieldPath::keys(&["faults"]).index(0).key("at_ms"))
            .unwrap();
        assert_eq!(line_col(TEXT, span.start).0, 6);
        let span = doc
            .span_of(
                &FieldPath::keys(&["faults"])
                    .index(0)
                    .key("between")
                    .index(1),
            )
            .unwrap();
        assert_eq!(line_col(TEXT, span.start), (7, 17));
    }

    #[test]
    fn an_offset_finds_its_path() {
        let doc = Located::parse(TEXT).unwrap();
        let offset = TEXT.find("0\n").unwrap();
        assert_eq!(doc.path_at(offset).to_string(), "guest.vcpus");
        let offset = TEXT.find("\"b\"").unwrap();
        assert_eq!(doc.path_at(offset).to_string(), "faults[0].between[1]");
    }
}
