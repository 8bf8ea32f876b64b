//! The command line, parsed by hand (the wrapper takes no dependency for it): subcommands, their
//! options (`--name value` or `--name=value`) and durations (`90s`, `1m30s`, `500ms`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use outpost_steprules::When;

use crate::error::Error;

/// The usage text, printed by `help` and after a usage error.
pub const USAGE: &str = "\
usage:
  outpost-step install <dir>
  outpost-step receive <dir> [--marker <file>]
  outpost-step run --index <n> --markers <dir> [--when on_success|on_failure|always]
                   [--timeout <duration>] [--grace <duration>] [--verbose]
                   [--termination-log <file>] -- <command> [<arg>...]
  outpost-step help | version

durations: whole numbers with units h, m, s, ms, largest first: 90s, 1m30s, 500ms";

/// The internal subcommand that starts a step's command (see `run::exec`); not for people.
pub const EXEC_SUBCOMMAND: &str = "_exec";

/// The grace period between SIGTERM and SIGKILL when `--grace` is not given.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Copy this executable to `<dir>/outpost-step`.
    Install {
        dir: PathBuf,
    },
    /// Extract a tar stream from stdin into `dir`, then write `marker` if given.
    Receive {
        dir: PathBuf,
        marker: Option<PathBuf>,
    },
    /// Wait for the previous step, decide, run the step, write its marker.
    Run(RunArgs),
    /// Internal: clear the signal mask and exec `command` (how `run` starts a step).
    Exec {
        command: Vec<OsString>,
    },
    Help,
    Version,
}

/// The options of `run`.
#[derive(Debug, PartialEq, Eq)]
pub struct RunArgs {
    /// The step's position in the job, from 0.
    pub index: u32,
    /// The directory shared by all steps' wrappers, holding `<index>.done` files.
    pub markers: PathBuf,
    pub when: When,
    /// The step's own time limit.
    pub timeout: Option<Duration>,
    /// How long the command has between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// Notes on stderr for every phase (waiting, deciding, the marker written), for debugging
    /// a pod; off by default, since stderr is the step's log.
    pub verbose: bool,
    /// A file that gets the marker line too (Kubernetes' `terminationMessagePath`), so that the
    /// runner reads how the step ended from the pod's status.
    pub termination_log: Option<PathBuf>,
    /// The program and its arguments, run as given (PATH lookup for the program).
    pub command: Vec<OsString>,
}

/// Parses the arguments after the program name.
pub fn parse(args: Vec<OsString>) -> Result<Command, Error> {
    let mut args = args.into_iter();
    let Some(sub) = args.next() else {
        return Err(usage("no subcommand given"));
    };
    let sub = sub.to_string_lossy().into_owned();
    let rest: Vec<OsString> = args.collect();
    match sub.as_str() {
        "install" => {
            let (opts, positional) = Options::split(rest, &[])?;
            let dir = one_positional(positional, "install", "<dir>")?;
            opts.finish()?;
            Ok(Command::Install { dir })
        }
        "receive" => {
            let (mut opts, positional) = Options::split(rest, &["marker"])?;
            let dir = one_positional(positional, "receive", "<dir>")?;
            let marker = opts.take("marker").map(PathBuf::from);
            opts.finish()?;
            Ok(Command::Receive { dir, marker })
        }
        "run" => run_args(rest).map(Command::Run),
        EXEC_SUBCOMMAND => match rest.split_first() {
            Some((dashes, command)) if dashes == "--" && !command.is_empty() => Ok(Command::Exec {
                command: command.to_vec(),
            }),
            _ => Err(usage("`_exec` needs `--` and a command")),
        },
        "help" | "--help" | "-h" => Ok(Command::Help),
        "version" | "--version" | "-V" => Ok(Command::Version),
        other => Err(usage(&format!("unknown subcommand `{other}`"))),
    }
}

fn run_args(args: Vec<OsString>) -> Result<RunArgs, Error> {
    // Everything after `--` is the command, never an option of ours.
    let split = args.iter().position(|a| a == "--");
    let (ours, command) = match split {
        Some(at) => {
            let mut ours = args;
            let command = ours.split_off(at + 1);
            ours.pop();
            (ours, command)
        }
        None => return Err(usage("`run` needs `--` followed by the command to run")),
    };
    if command.is_empty() {
        return Err(usage("`run` needs a command after `--`"));
    }
    // The one flag without a value.
    let before = ours.len();
    let ours: Vec<OsString> = ours.into_iter().filter(|a| a != "--verbose").collect();
    let verbose = match before - ours.len() {
        0 => false,
        1 => true,
        _ => return Err(usage("option `--verbose` is given twice")),
    };
    let (mut opts, positional) = Options::split(
        ours,
        &[
            "index",
            "markers",
            "when",
            "timeout",
            "grace",
            "termination-log",
        ],
    )?;
    if let Some(extra) = positional.first() {
        return Err(usage(&format!(
            "unexpected argument `{}` before `--`",
            extra.to_string_lossy()
        )));
    }
    let index = match opts.take("index") {
        None => return Err(usage("`run` needs `--index <n>`")),
        Some(text) => {
            let text = text.to_string_lossy();
            text.parse::<u32>().map_err(|_| {
                usage(&format!(
                    "`--index {text}`: expected a step position, a whole number from 0"
                ))
            })?
        }
    };
    let Some(markers) = opts.take("markers").map(PathBuf::from) else {
        return Err(usage("`run` needs `--markers <dir>`"));
    };
    let when = match opts.take("when") {
        None => When::default(),
        Some(text) => {
            let text = text.to_string_lossy();
            When::parse(&text).ok_or_else(|| {
                usage(&format!(
                    "`--when {text}`: expected `on_success`, `on_failure` or `always`"
                ))
            })?
        }
    };
    let timeout = match opts.take("timeout") {
        None => None,
        Some(text) => {
            let text = text.to_string_lossy();
            match parse_duration(&text) {
                Ok(d) if d.is_zero() => {
                    return Err(usage(&format!(
                        "`--timeout {text}`: a time limit must be longer than zero"
                    )));
                }
                Ok(d) => Some(d),
                Err(e) => return Err(usage(&format!("`--timeout {text}`: {e}"))),
            }
        }
    };
    let grace = match opts.take("grace") {
        None => DEFAULT_GRACE,
        Some(text) => {
            let text = text.to_string_lossy();
            parse_duration(&text).map_err(|e| usage(&format!("`--grace {text}`: {e}")))?
        }
    };
    let termination_log = opts.take("termination-log").map(PathBuf::from);
    opts.finish()?;
    Ok(RunArgs {
        index,
        markers,
        when,
        timeout,
        grace,
        verbose,
        termination_log,
        command,
    })
}

/// The `--name value` options of one subcommand, by name, and what is left to take.
struct Options {
    given: Vec<(String, OsString)>,
}

impl Options {
    /// Splits `args` into the options in `known` (each at most once) and positional arguments.
    fn split(args: Vec<OsString>, known: &[&str]) -> Result<(Options, Vec<OsString>), Error> {
        let mut given: Vec<(String, OsString)> = Vec::new();
        let mut positional = Vec::new();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let text = arg.to_string_lossy();
            let Some(option) = text.strip_prefix("--") else {
                if text.starts_with('-') && text.len() > 1 {
                    return Err(usage(&format!("unknown option `{text}`")));
                }
                positional.push(arg);
                continue;
            };
            let (name, inline) = match option.split_once('=') {
                Some((name, value)) => (name.to_owned(), Some(OsString::from(value))),
                None => (option.to_owned(), None),
            };
            if !known.contains(&name.as_str()) {
                return Err(usage(&format!("unknown option `--{name}`")));
            }
            if given.iter().any(|(n, _)| *n == name) {
                return Err(usage(&format!("option `--{name}` is given twice")));
            }
            let value = match inline {
                Some(v) => v,
                None => args
                    .next()
                    .ok_or_else(|| usage(&format!("option `--{name}` needs a value")))?,
            };
            given.push((name, value));
        }
        Ok((Options { given }, positional))
    }

    fn take(&mut self, name: &str) -> Option<OsString> {
        let at = self.given.iter().position(|(n, _)| n == name)?;
        Some(self.given.remove(at).1)
    }

    /// Every known option is taken by its subcommand; this only guards against a forgotten one.
    fn finish(self) -> Result<(), Error> {
        match self.given.first() {
            None => Ok(()),
            Some((name, _)) => Err(usage(&format!("option `--{name}` is not used here"))),
        }
    }
}

fn one_positional(positional: Vec<OsString>, sub: &str, what: &str) -> Result<PathBuf, Error> {
    let mut positional = positional.into_iter();
    let Some(first) = positional.next() else {
        return Err(usage(&format!("`{sub}` needs {what}")));
    };
    if let Some(extra) = positional.next() {
        return Err(usage(&format!(
            "`{sub}` takes one {what}; unexpected `{}`",
            extra.to_string_lossy()
        )));
    }
    Ok(PathBuf::from(first))
}

fn usage(message: &str) -> Error {
    Error::Usage(message.to_owned())
}

/// Parses `90s`, `1m30s`, `1h`, `500ms`, `0s`: whole numbers with units h, m, s, ms, largest
/// first, each at most once.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const EXPECTED: &str = "expected whole numbers with units h, m, s or ms, largest first, like \
                            `90s`, `1m30s` or `500ms`";
    if text.is_empty() {
        return Err(format!("it is empty; {EXPECTED}"));
    }
    let mut total = Duration::ZERO;
    let mut last_rank = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(EXPECTED.to_owned());
        }
        let (number, tail) = rest.split_at(digits);
        let (unit, rank, len) = if tail.starts_with("ms") {
            (Duration::from_millis(1), 4, 2)
        } else {
            match tail.bytes().next() {
                Some(b'h') => (Duration::from_secs(3600), 1, 1),
                Some(b'm') => (Duration::from_secs(60), 2, 1),
                Some(b's') => (Duration::from_secs(1), 3, 1),
                None => return Err(format!("its last number has no unit; {EXPECTED}")),
                Some(_) => return Err(EXPECTED.to_owned()),
            }
        };
        if rank <= last_rank {
            return Err(EXPECTED.to_owned());
        }
        last_rank = rank;
        let part = number
            .parse::<u32>()
            .ok()
            .and_then(|n| unit.checked_mul(n))
            .and_then(|d| total.checked_add(d));
        total = part.ok_or_else(|| "it is too long".to_owned())?;
        rest = &tail[len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `line` (split on spaces) and compares the result, in Debug form or as the error's
    /// text, with `expected`.
    #[track_caller]
    fn check(line: &str, expected: &str) {
        let args = line
            .split(' ')
            .filter(|a| !a.is_empty())
            .map(OsString::from);
        let got = match parse(args.collect()) {
            Ok(c) => format!("{c:?}"),
            Err(e) => e.to_string(),
        };
        assert_eq!(got, expected, "command line: {line}");
    }

    #[test]
    fn subcommands() {
        check("install /outpost/bin", r#"Install { dir: "/outpost/bin" }"#);
        check(
            "receive /workspace",
            r#"Receive { dir: "/workspace", marker: None }"#,
        );
        check(
            "receive /workspace --marker=/m/receive.done",
            r#"Receive { dir: "/workspace", marker: Some("/m/receive.done") }"#,
        );
        check(
            "run --index 2 --markers /m -- sh -c true",
            r#"Run(RunArgs { index: 2, markers: "/m", when: OnSuccess, timeout: None, grace: 10s, verbose: false, termination_log: None, command: ["sh", "-c", "true"] })"#,
        );
        check(
            "run --when=always --timeout 1m30s --grace 0s --verbose --markers /m --index 0 -- sh -c -- --verbose",
            r#"Run(RunArgs { index: 0, markers: "/m", when: Always, timeout: Some(90s), grace: 0ns, verbose: true, termination_log: None, command: ["sh", "-c", "--", "--verbose"] })"#,
        );
        check(
            "run --index 1 --markers /m --termination-log /dev/termination-log -- true",
            r#"Run(RunArgs { index: 1, markers: "/m", when: OnSuccess, timeout: None, grace: 10s, verbose: false, termination_log: Some("/dev/termination-log"), command: ["true"] })"#,
        );
        check("_exec -- sh -c x", r#"Exec { command: ["sh", "-c", "x"] }"#);
        check("_exec sh", "`_exec` needs `--` and a command");
        check("help", "Help");
        check("--version", "Version");
    }

    #[test]
    fn usage_errors() {
        check("", "no subcommand given");
        check("start", "unknown subcommand `start`");
        check("install", "`install` needs <dir>");
        check("install a b", "`install` takes one <dir>; unexpected `b`");
        check("install --force a", "unknown option `--force`");
        check("receive -x a", "unknown option `-x`");
        check("receive a --marker", "option `--marker` needs a value");
        check(
            "receive a --marker m --marker n",
            "option `--marker` is given twice",
        );
        check(
            "run --index 0 --markers /m",
            "`run` needs `--` followed by the command to run",
        );
        check(
            "run --index 0 --markers /m --",
            "`run` needs a command after `--`",
        );
        check("run --markers /m -- true", "`run` needs `--index <n>`");
        check("run --index 0 -- true", "`run` needs `--markers <dir>`");
        check(
            "run --index -1 --markers /m -- true",
            "`--index -1`: expected a step position, a whole number from 0",
        );
        check(
            "run --index 0 --markers /m --when never -- true",
            "`--when never`: expected `on_success`, `on_failure` or `always`",
        );
        check(
            "run --index 0 --markers /m --timeout 0s -- true",
            "`--timeout 0s`: a time limit must be longer than zero",
        );
        check(
            "run --index 0 --markers /m --timeout 90 -- true",
            "`--timeout 90`: its last number has no unit; expected whole numbers with units h, \
             m, s or ms, largest first, like `90s`, `1m30s` or `500ms`",
        );
        check(
            "run --index 0 --markers /m extra -- true",
            "unexpected argument `extra` before `--`",
        );
    }

    #[test]
    fn durations() {
        let ok = [
            ("90s", Duration::from_secs(90)),
            ("1m30s", Duration::from_secs(90)),
            ("1h", Duration::from_secs(3600)),
            ("1h0m5s", Duration::from_secs(3605)),
            ("500ms", Duration::from_millis(500)),
            ("1s500ms", Duration::from_millis(1500)),
            ("0s", Duration::ZERO),
        ];
        for (text, expected) in ok {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
        for bad in [
            "", "s", "5", "1.5s", "5x", "30s1m", "1s1s", "-5s", "5 s", "1ms5s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad} should be refused");
        }
        assert_eq!(
            parse_duration("99999999999s"),
            Err("it is too long".to_owned())
        );
    }
}
