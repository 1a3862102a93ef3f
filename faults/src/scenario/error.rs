//! Errors in scenario, suite and regression files, each naming the file,
//! line, column and field.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::catalogue::{Rate, Target};
use crate::spans::{line_col, FieldPath, Located};

/// Error loading a scenario, suite or regression file, or a directory of them.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file or directory could not be read.
    #[error("{}: cannot read: {source}", file.display())]
    Read {
        /// What could not be read.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file was read but is wrong.
    #[error(transparent)]
    File(#[from] FileError),
}

/// What is wrong where in one file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FileError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// Dotted path of the field (`faults[2].at_ms`); empty when the text is
    /// not TOML at all.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// A file's text, for turning spans and field paths into [`FileError`]s.
#[derive(Debug)]
pub(crate) struct Source<'a> {
    pub(crate) file: &'a Path,
    pub(crate) text: &'a str,
}

impl Source<'_> {
    /// An error at a field our own checks found wrong.
    pub(crate) fn at_field(&self, field: &FieldPath, message: impl Into<String>) -> FileError {
        let offset = Located::parse(self.text)
            .and_then(|doc| doc.span_of(field))
            .map_or(0, |span| span.start);
        self.error(offset, field, message.into())
    }

    /// An error from the TOML parser or serde: toml's span says where; the
    /// field is the one covering that span, plus the one serde names in
    /// "missing field `x`" or "unknown field `x`".
    pub(crate) fn toml_error(&self, error: &toml::de::Error) -> FileError {
        let message = error.message().trim().to_string();
        let Some(doc) = Located::parse(self.text) else {
            let offset = error.span().map_or(0, |s| s.start);
            return self.error(offset, &FieldPath::default(), message);
        };
        let mut offset = error.span().map_or(0, |s| s.start);
        let mut field = error
            .span()
            .map(|s| doc.path_at(s.start))
            .unwrap_or_default();
        // serde spans a missing field's table: from its `[header]`, or, for
        // the top level, from its first key, which the field is not part of.
        let at_header = error
            .span()
            .is_some_and(|s| self.text[s.start.min(self.text.len())..].starts_with('['));
        if message.starts_with("missing field") && !at_header {
            field.0.pop();
        }
        if let Some((leaf, start)) = culprit_leaf(&doc, &field, &message) {
            // serde read the table as a whole (an internally tagged fault)
            // and kept no span for the value it refused: find that value.
            field = leaf;
            offset = start;
        } else if let Some(name) = named_field(&message) {
            if field.0.last() != Some(&crate::spans::Seg::Key(name.to_string())) {
                field = field.key(name);
            }
            // An unknown key has a span of its own, nearer than its table's.
            if let Some(span) = doc.span_of(&field) {
                offset = span.start;
            }
        }
        self.error(offset, &field, message)
    }

    fn error(&self, offset: usize, field: &FieldPath, message: String) -> FileError {
        let (line, column) = line_col(self.text, offset);
        FileError {
            file: self.file.to_path_buf(),
            line,
            column,
            field: field.to_string(),
            message,
        }
    }
}

/// Reads a TOML file of any shape (a daemon's configuration, say) with the
/// errors scenario files get: file, line, column and field.
pub fn parse_toml<T: serde::de::DeserializeOwned>(file: &Path, text: &str) -> Result<T, FileError> {
    let source = Source { file, text };
    toml::from_str(text).map_err(|e| source.toml_error(&e))
}

/// An error at the field `keys` (`["net", "listen"]`) of a TOML file that
/// parsed but holds a value our own checks refuse.
pub fn field_error(
    file: &Path,
    text: &str,
    keys: &[&str],
    message: impl Into<String>,
) -> FileError {
    Source { file, text }.at_field(&FieldPath::keys(keys), message)
}

/// The plain value under `field` that serde's `message` is about: the one
/// whose own check (target, rate) fails with exactly that message, or the
/// string an "unknown variant `x`" names. Never a guess: no match, no leaf.
fn culprit_leaf(doc: &Located, field: &FieldPath, message: &str) -> Option<(FieldPath, usize)> {
    let variant = message
        .strip_prefix("unknown variant `")
        .and_then(|rest| rest.split('`').next());
    doc.leaves_under(field)
        .into_iter()
        .find(|(_, _, value)| {
            let text = value.as_str();
            let number = value.as_float().or(value.as_integer().map(|i| i as f64));
            variant.is_some() && text == variant
                || text.is_some_and(|t| {
                    Target::try_from(t.to_string()).err().as_deref() == Some(message)
                })
                || number.is_some_and(|n| Rate::try_from(n).err().as_deref() == Some(message))
        })
        .map(|(path, span, _)| (path, span.start))
}

/// The field serde names in its "missing field" and "unknown field" messages.
fn named_field(message: &str) -> Option<&str> {
    let rest = message
        .strip_prefix("missing field `")
        .or_else(|| message.strip_prefix("unknown field `"))?;
    rest.split('`').next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_name_their_field() {
        assert_eq!(named_field("missing field `name`"), Some("name"));
        assert_eq!(
            named_field("unknown field `vcpuz`, expected one of `kind`, `vcpus`"),
            Some("vcpuz")
        );
        assert_eq!(named_field("invalid type: string"), None);
    }

    #[test]
    fn errors_read_as_file_line_column_field_message() {
        let error = FileError {
            file: PathBuf::from("scenarios/x.toml"),
            line: 3,
            column: 9,
            field: "guest.vcpus".into(),
            message: "must be 1..=8, got 0".into(),
        };
        assert_eq!(
            error.to_string(),
            "scenarios/x.toml:3:9: guest.vcpus: must be 1..=8, got 0"
        );
    }
}
