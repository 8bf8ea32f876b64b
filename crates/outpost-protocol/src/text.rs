//! The rules for text a runner sends that people see: names (of runners, steps, executors and
//! versions), labels and failure messages. The hub checks them (a `422` naming the field), the
//! runner keeps to them, and whoever prints such text escapes what is left ([`escape_control`]),
//! so no runner can forge a line in a log or drive a terminal.

use std::borrow::Cow;
use std::fmt::Write as _;

/// The longest name, in characters: the pipeline's longest step name
/// (`outpost_pipeline::MAX_STEP_NAME_CHARS`).
pub const MAX_NAME_CHARS: usize = 100;
/// The longest label, in characters.
pub const MAX_LABEL_CHARS: usize = 63;
/// The most labels a runner or a job has.
pub const MAX_LABELS: usize = 32;
/// The longest failure message, in characters (a tool's error output fits).
pub const MAX_MESSAGE_CHARS: usize = 16 * 1024;

/// A name: one line of printable characters, 1 to [`MAX_NAME_CHARS`], no whitespace at either
/// end (the pipeline's rule for step names). The error says what is wrong, without the field.
pub fn check_name(name: &str) -> Result<(), String> {
    let chars = name.chars().count();
    if name.trim().is_empty() {
        Err("it is empty".to_owned())
    } else if chars > MAX_NAME_CHARS {
        Err(format!(
            "it is {chars} characters long; at most {MAX_NAME_CHARS}"
        ))
    } else if name.chars().any(char::is_control) {
        Err("it must be one line of printable characters".to_owned())
    } else if name.trim() != name {
        Err("it starts or ends with whitespace".to_owned())
    } else {
        Ok(())
    }
}

/// A label: 1 to [`MAX_LABEL_CHARS`] printable characters without whitespace or commas.
pub fn check_label(label: &str) -> Result<(), String> {
    let chars = label.chars().count();
    if label.is_empty() {
        Err("a label is empty".to_owned())
    } else if chars > MAX_LABEL_CHARS {
        Err(format!(
            "label {} is {chars} characters long; at most {MAX_LABEL_CHARS}",
            shown(label)
        ))
    } else if label
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == ',')
    {
        Err(format!(
            "label {} has whitespace, a comma or a control character",
            shown(label)
        ))
    } else {
        Ok(())
    }
}

/// A failure message: at most [`MAX_MESSAGE_CHARS`], printable characters, newlines and tabs
/// (a tool's error output is often several lines).
pub fn check_message(message: &str) -> Result<(), String> {
    let chars = message.chars().count();
    if chars > MAX_MESSAGE_CHARS {
        Err(format!(
            "it is {chars} characters long; at most {MAX_MESSAGE_CHARS}"
        ))
    } else if message.chars().any(refused_in_message) {
        Err("it has control characters other than newlines and tabs".to_owned())
    } else {
        Ok(())
    }
}

/// `message` made to pass [`check_message`]: refused control characters written as escapes
/// (`\u{1b}`), and cut at [`MAX_MESSAGE_CHARS`] with `…`. What a runner sends.
pub fn clean_message(message: &str) -> Cow<'_, str> {
    if check_message(message).is_ok() {
        return Cow::Borrowed(message);
    }
    let mut out = String::with_capacity(message.len());
    let mut chars = 0;
    for c in message.chars() {
        let start = out.len();
        if refused_in_message(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        chars += out[start..].chars().count();
        if chars > MAX_MESSAGE_CHARS - 1 {
            out.truncate(start);
            out.push('…');
            break;
        }
    }
    Cow::Owned(out)
}

/// `text` with every control character written as an escape (`\n`, `\u{1b}`), for one line of a
/// log or a terminal. Text without any is borrowed as it is.
pub fn escape_control(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            let _ = write!(out, "{}", c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn refused_in_message(c: char) -> bool {
    c.is_control() && c != '\n' && c != '\t'
}

/// A label as shown in an error: escaped, and cut short.
fn shown(label: &str) -> String {
    let cut: String = label.chars().take(MAX_LABEL_CHARS).collect();
    format!("`{}`", escape_control(&cut))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let check = |name: &str, ok: bool| assert_eq!(check_name(name).is_ok(), ok, "{name:?}");
        check("build", true);
        check("build → test (linux)", true);
        check(&"x".repeat(MAX_NAME_CHARS), true);
        check(&"x".repeat(MAX_NAME_CHARS + 1), false);
        check("", false);
        check("   ", false);
        check(" lead", false);
        check("two\nlines", false);
        check("\x1b[2J", false);
        check("nul\0", false);
        check("c1\u{9b}31m", false);
    }

    #[test]
    fn labels() {
        let check = |label: &str, ok: bool| assert_eq!(check_label(label).is_ok(), ok, "{label:?}");
        check("linux", true);
        check("gpu:a100", true);
        check(&"l".repeat(MAX_LABEL_CHARS), true);
        check(&"l".repeat(MAX_LABEL_CHARS + 1), false);
        check("", false);
        check("a b", false);
        check("a,b", false);
        check("\x1b[31mred", false);
        assert!(check_label("\x1bx").unwrap_err().contains("\\u{1b}"));
    }

    #[test]
    fn messages_are_checked_and_cleaned() {
        let check =
            |message: &str, ok: bool| assert_eq!(check_message(message).is_ok(), ok, "{message:?}");
        check("", true);
        check("exit 2:\n\terror: failed", true);
        check("\x1b]0;title\x07", false);
        check("carriage\rreturn", false);
        check(&"m".repeat(MAX_MESSAGE_CHARS + 1), false);

        assert_eq!(clean_message("fine\nlines"), "fine\nlines");
        assert_eq!(clean_message("red \x1b[31m!"), "red \\u{1b}[31m!");
        let long = "m".repeat(MAX_MESSAGE_CHARS * 2);
        let long = clean_message(&long);
        assert_eq!(long.chars().count(), MAX_MESSAGE_CHARS);
        assert!(long.ends_with('…'));
        let escapes = "\x1b".repeat(MAX_MESSAGE_CHARS);
        let escapes = clean_message(&escapes);
        assert!(check_message(&escapes).is_ok());
    }

    #[test]
    fn control_characters_are_escaped_for_one_line() {
        assert!(matches!(escape_control("plain ✔"), Cow::Borrowed(_)));
        assert_eq!(escape_control("a\nb"), "a\\nb");
        assert_eq!(escape_control("\x1b]0;t\x07"), "\\u{1b}]0;t\\u{7}");
        assert_eq!(escape_control("tab\tcr\r"), "tab\\tcr\\r");
    }
}
