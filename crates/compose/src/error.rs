//! Load errors: each one points at a file, line and column, names the field path, says what is
//! wrong and, where it can, what was meant.

use std::fmt;
use std::sync::Arc;

use crate::yaml::Span;

/// One problem found while loading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file as given (path, or `-` for standard input); empty when no file is involved.
    pub file: Arc<str>,
    /// 1-based line; 0 when the problem is not tied to a position.
    pub line: u32,
    /// 1-based column; 0 when the problem is not tied to a position.
    pub col: u32,
    /// Field path such as `services.web.deploy.replicas` (may be empty).
    pub path: String,
    pub message: String,
    /// What was probably meant, or how to fix it.
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn new(span: Span, path: impl Into<String>, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: span.file,
            line: span.line,
            col: span.col,
            path: path.into(),
            message: message.into(),
            hint: None,
        }
    }

    /// A problem with no position (a missing file, a bad option).
    pub fn general(message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: Arc::from(""),
            line: 0,
            col: 0,
            path: String::new(),
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Diagnostic {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_path(mut self, path: impl Into<String>) -> Diagnostic {
        self.path = path.into();
        self
    }

    pub fn span(&self) -> Span {
        Span {
            file: self.file.clone(),
            line: self.line,
            col: self.col,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.file.is_empty() {
            if self.line > 0 {
                write!(f, "{}:{}:{}: ", self.file, self.line, self.col)?;
            } else {
                write!(f, "{}: ", self.file)?;
            }
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " ({h})")?;
        }
        Ok(())
    }
}

/// Every error found while loading, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LoadErrors(pub Vec<Diagnostic>);

impl LoadErrors {
    pub fn single(d: Diagnostic) -> LoadErrors {
        LoadErrors(vec![d])
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Collects diagnostics while a stage runs, so one run reports every problem.
#[derive(Debug, Default)]
pub struct Errors {
    pub list: Vec<Diagnostic>,
}

impl Errors {
    pub fn push(&mut self, d: Diagnostic) {
        self.list.push(d);
    }

    pub fn at(&mut self, span: &Span, path: &str, message: impl Into<String>) {
        self.list.push(Diagnostic::new(span.clone(), path, message));
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn into_result<T>(self, value: T) -> Result<T, LoadErrors> {
        if self.list.is_empty() {
            Ok(value)
        } else {
            let mut list = self.list;
            list.sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
            // (stable sort: within one position, the earliest stage comes first)
            // One error per position: the first stage to notice a problem explains it best.
            list.dedup_by(|b, a| {
                a.file == b.file && a.line == b.line && a.col == b.col && a.line > 0
            });
            Err(LoadErrors(list))
        }
    }
}
