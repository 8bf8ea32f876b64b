//! The error of [`crate::parse`]: every problem names the file, a 1-based line and column, and
//! what is wrong, in the form `file:line:column: message`.

use std::fmt;

/// Why a pipeline file was refused.
///
/// Every variant but [`PipelineError::Multiple`] is one problem at one place; `Multiple` holds
/// several of them, in the order they appear in the file. The accessors ([`file`](Self::file),
/// [`line`](Self::line), [`column`](Self::column), [`message`](Self::message)) answer for the
/// first problem; [`errors`](Self::errors) lists them all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipelineError {
    /// The text is not well-formed YAML, or uses YAML features the format has no use for
    /// (tags, several documents in one file).
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        /// The file name given to [`crate::parse`].
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column, in characters.
        column: usize,
        /// What is wrong, lowercase, without a trailing period.
        message: String,
    },
    /// Well-formed YAML that is not a valid pipeline (unknown key, wrong type, bad value,
    /// duplicate name, missing key).
    #[error("{file}:{line}:{column}: {message}")]
    Invalid {
        /// The file name given to [`crate::parse`].
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column, in characters.
        column: usize,
        /// What is wrong, lowercase, without a trailing period.
        message: String,
    },
    /// The input is over a hard limit (size, node count including alias expansions, nesting
    /// depth); parsing stopped there.
    #[error("{file}:{line}:{column}: {message}")]
    TooLarge {
        /// The file name given to [`crate::parse`].
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column, in characters.
        column: usize,
        /// Which limit, and its value.
        message: String,
    },
    /// Several problems (at least two), in file order, one per line when displayed. Never
    /// nested. `omitted` counts further problems that were found but not kept.
    #[error("{}", display_multiple(errors, *omitted))]
    Multiple {
        /// The problems kept, in file order.
        errors: Vec<PipelineError>,
        /// How many more problems were found beyond `errors`.
        omitted: usize,
    },
}

fn display_multiple(errors: &[PipelineError], omitted: usize) -> String {
    let mut out = String::new();
    for (i, e) in errors.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&e.to_string());
    }
    if omitted > 0 {
        use fmt::Write as _;
        let _ = write!(
            out,
            "\n({omitted} more error{} not shown)",
            if omitted == 1 { "" } else { "s" }
        );
    }
    out
}

impl PipelineError {
    /// The individual problems: itself, or the list of a [`PipelineError::Multiple`].
    pub fn errors(&self) -> &[PipelineError] {
        match self {
            PipelineError::Multiple { errors, .. } => errors,
            single => std::slice::from_ref(single),
        }
    }

    fn first(&self) -> (&str, usize, usize, &str) {
        match self {
            PipelineError::Syntax {
                file,
                line,
                column,
                message,
            }
            | PipelineError::Invalid {
                file,
                line,
                column,
                message,
            }
            | PipelineError::TooLarge {
                file,
                line,
                column,
                message,
            } => (file, *line, *column, message),
            PipelineError::Multiple { errors, .. } => match errors.first() {
                Some(e) => e.first(),
                // Never built empty; answer something sensible all the same.
                None => ("", 1, 1, "invalid pipeline"),
            },
        }
    }

    /// The file name given to [`crate::parse`].
    pub fn file(&self) -> &str {
        self.first().0
    }

    /// The 1-based line of the (first) problem.
    pub fn line(&self) -> usize {
        self.first().1
    }

    /// The 1-based column, in characters, of the (first) problem.
    pub fn column(&self) -> usize {
        self.first().2
    }

    /// The message of the (first) problem, without the `file:line:column: ` prefix.
    pub fn message(&self) -> &str {
        self.first().3
    }
}
