//! The marker file the step wrapper writes when a step ends, and that the next step's wrapper and
//! the runner read: one line of `key=value` fields.

use std::fmt;

use crate::Outcome;

/// How a step ended, as its wrapper wrote it to `<markers>/<index>.done`.
///
/// # Format
///
/// One line of ASCII `key=value` fields separated by single spaces, ending with a newline:
///
/// ```text
/// state=success exit=0
/// state=failed exit=3
/// state=timed_out exit=143
/// state=cancelled exit=143
/// state=cancelled
/// state=skipped
/// ```
///
/// - `state` (required): `success`, `failed`, `timed_out`, `cancelled` or `skipped`
///   ([`Outcome::as_str`]).
/// - `exit`: the step's exit code, 0 to 255 (128 + the signal's number when its command was
///   killed by a signal, 125 to 127 when the wrapper could not start it). Required for `success`
///   (always 0), `failed` (never 0) and `timed_out`; absent for `skipped`; for `cancelled`, absent
///   means the step was cancelled before its command started.
///
/// Readers ignore keys they do not know, so that fields can be added; a key given twice, a
/// field without `=`, or a value against the rules above is an error. The wrapper writes a marker
/// atomically (a temporary file renamed into place): a reader that sees the file sees all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    pub outcome: Outcome,
    pub exit: Option<i32>,
}

/// The longest marker text a reader needs to accept; anything longer is not a marker.
pub const MAX_MARKER_BYTES: usize = 1024;

/// The name of step `index`'s marker file in the markers directory: `<index>.done`.
pub fn marker_file_name(index: u32) -> String {
    format!("{index}.done")
}

/// Why a marker's text was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkerError {
    message: String,
}

impl fmt::Display for MarkerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for MarkerError {}

impl Marker {
    /// A step that was not run, by its `when`.
    pub fn skipped() -> Self {
        Self {
            outcome: Outcome::Skipped,
            exit: None,
        }
    }

    /// A step whose command ended with `exit` (0 is success, anything else a failure).
    pub fn exited(exit: i32) -> Self {
        Self {
            outcome: if exit == 0 {
                Outcome::Success
            } else {
                Outcome::Failed
            },
            exit: Some(exit),
        }
    }

    /// Reads a marker's text (see the [format](Marker#format)).
    ///
    /// # Errors
    ///
    /// [`MarkerError`] saying what is wrong with the text.
    pub fn parse(text: &str) -> Result<Marker, MarkerError> {
        let fail = |message: String| {
            Err(MarkerError {
                message: format!("invalid marker `{}`: {message}", shown(text)),
            })
        };
        if text.len() > MAX_MARKER_BYTES {
            return fail(format!("longer than {MAX_MARKER_BYTES} bytes"));
        }
        let line = text.strip_suffix('\n').unwrap_or(text);
        if line.contains('\n') {
            return fail("more than one line".to_owned());
        }
        let mut state = None;
        let mut exit = None;
        for field in line.split(' ').filter(|f| !f.is_empty()) {
            let Some((key, value)) = field.split_once('=') else {
                return fail(format!("field `{field}` is not of the form key=value"));
            };
            let slot = match key {
                "state" => &mut state,
                "exit" => &mut exit,
                // Fields added by a newer wrapper.
                _ => continue,
            };
            if slot.is_some() {
                return fail(format!("`{key}` is given twice"));
            }
            *slot = Some(value);
        }
        let Some(state) = state else {
            return fail("it has no `state`".to_owned());
        };
        let Some(outcome) = Outcome::parse(state) else {
            return fail(format!(
                "unknown state `{state}`; expected one of {}",
                Outcome::ALL.map(|o| format!("`{}`", o.as_str())).join(", ")
            ));
        };
        let exit = match exit {
            None => None,
            Some(text) => match text.parse::<i32>() {
                // Only digits: `+3` and `03` are not how the wrapper writes a code.
                Ok(code)
                    if (0..=255).contains(&code)
                        && text.bytes().all(|b| b.is_ascii_digit())
                        && (text == "0" || !text.starts_with('0')) =>
                {
                    Some(code)
                }
                _ => return fail(format!("`exit={text}` is not an exit code from 0 to 255")),
            },
        };
        let problem = match (outcome, exit) {
            (Outcome::Skipped, Some(_)) => Some("a skipped step has no exit code"),
            (Outcome::Success, Some(code)) if code != 0 => {
                Some("a successful step exits with code 0")
            }
            (Outcome::Failed, Some(0)) => Some("a failed step does not exit with code 0"),
            (Outcome::Success | Outcome::Failed | Outcome::TimedOut, None) => {
                Some("this state needs an exit code")
            }
            _ => None,
        };
        if let Some(problem) = problem {
            return fail(problem.to_owned());
        }
        Ok(Marker { outcome, exit })
    }
}

/// The marker's line, without its newline: `state=failed exit=3`.
impl fmt::Display for Marker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "state={}", self.outcome.as_str())?;
        if let Some(code) = self.exit {
            write!(f, " exit={code}")?;
        }
        Ok(())
    }
}

/// The text as a message shows it: escaped, and cut after 60 characters.
fn shown(text: &str) -> String {
    let line = text.strip_suffix('\n').unwrap_or(text);
    let mut out: String = line.chars().take(60).collect::<String>();
    if out.len() < line.len() {
        out.push('…');
    }
    out.escape_debug().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `text` and compares with `expected`: the marker written back, or the error.
    #[track_caller]
    fn check(text: &str, expected: &str) {
        let got = match Marker::parse(text) {
            Ok(m) => m.to_string(),
            Err(e) => e.to_string(),
        };
        assert_eq!(got, expected, "text: {text:?}");
    }

    #[test]
    fn valid_markers() {
        check("state=success exit=0\n", "state=success exit=0");
        check("state=failed exit=3\n", "state=failed exit=3");
        check("state=failed exit=255", "state=failed exit=255");
        check("state=timed_out exit=0\n", "state=timed_out exit=0");
        check("state=timed_out exit=137\n", "state=timed_out exit=137");
        check("state=cancelled exit=143\n", "state=cancelled exit=143");
        check("state=cancelled\n", "state=cancelled");
        check("state=skipped\n", "state=skipped");
        // Order does not matter, unknown fields are ignored, extra spaces are harmless.
        check("exit=1 state=failed\n", "state=failed exit=1");
        check(
            "state=failed  exit=2 duration_ms=12 reason=oom\n",
            "state=failed exit=2",
        );
    }

    #[test]
    fn invalid_markers() {
        check("", "invalid marker ``: it has no `state`");
        check("exit=0\n", "invalid marker `exit=0`: it has no `state`");
        check(
            "state=done exit=0\n",
            "invalid marker `state=done exit=0`: unknown state `done`; expected one of \
             `success`, `failed`, `timed_out`, `cancelled`, `skipped`",
        );
        check(
            "state=failed exit=3 state=success\n",
            "invalid marker `state=failed exit=3 state=success`: `state` is given twice",
        );
        check(
            "state=failed exit\n",
            "invalid marker `state=failed exit`: field `exit` is not of the form key=value",
        );
        for bad in ["-1", "256", "+3", "03", "x", ""] {
            check(
                &format!("state=failed exit={bad}\n"),
                &format!(
                    "invalid marker `state=failed exit={bad}`: `exit={bad}` is not an exit code \
                     from 0 to 255"
                ),
            );
        }
        check(
            "state=skipped exit=0\n",
            "invalid marker `state=skipped exit=0`: a skipped step has no exit code",
        );
        check(
            "state=success exit=1\n",
            "invalid marker `state=success exit=1`: a successful step exits with code 0",
        );
        check(
            "state=failed exit=0\n",
            "invalid marker `state=failed exit=0`: a failed step does not exit with code 0",
        );
        check(
            "state=failed\n",
            "invalid marker `state=failed`: this state needs an exit code",
        );
        check(
            "state=success\n",
            "invalid marker `state=success`: this state needs an exit code",
        );
        check(
            "state=success exit=0\nstate=failed exit=1\n",
            "invalid marker `state=success exit=0\\nstate=failed exit=1`: more than one line",
        );
        let long = format!("state=skipped {}", "x".repeat(MAX_MARKER_BYTES));
        let got = Marker::parse(&long).expect_err("too long").to_string();
        assert!(got.ends_with("…`: longer than 1024 bytes"), "{got}");
    }

    #[test]
    fn constructors_and_file_names() {
        assert_eq!(Marker::exited(0).to_string(), "state=success exit=0");
        assert_eq!(Marker::exited(2).to_string(), "state=failed exit=2");
        assert_eq!(Marker::skipped().to_string(), "state=skipped");
        assert_eq!(marker_file_name(0), "0.done");
        assert_eq!(marker_file_name(12), "12.done");
    }
}
