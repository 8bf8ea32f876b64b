//! The wrapper's error: each variant names the thing at fault (the option, the path, the byte
//! offset in the tar stream, the marker file), and maps to an exit code.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use outpost_steprules::MarkerError;

/// Why a subcommand failed.
#[derive(Debug)]
pub enum Error {
    /// The command line is wrong; the message says how.
    Usage(String),
    /// A file system operation failed; `what` says which and on what path.
    Io { what: String, source: io::Error },
    /// The tar stream on stdin is malformed or refused, at byte `offset` of the stream.
    Tar { offset: u64, message: String },
    /// A marker file exists but does not hold a valid marker.
    Marker { path: PathBuf, source: MarkerError },
    /// The step's command could not be started; `exit` is 126 or 127, as a shell would say.
    Spawn {
        program: String,
        exit: i32,
        source: io::Error,
    },
    /// Something the wrapper needs from the system failed (signal mask, waiting for children).
    System { what: String, source: nix::Error },
}

/// The exit code of a usage error.
pub const EXIT_USAGE: i32 = 2;
/// The exit code (and the marker's `exit`) when the wrapper itself failed around the step.
pub const EXIT_WRAPPER: i32 = 125;

impl Error {
    /// An I/O error on `path`: "cannot {verb} `{path}`".
    pub fn io(verb: &str, path: &Path, source: io::Error) -> Self {
        Error::Io {
            what: format!("cannot {verb} `{}`", path.display()),
            source,
        }
    }

    pub fn system(what: &str, source: nix::Error) -> Self {
        Error::System {
            what: what.to_owned(),
            source,
        }
    }

    /// The process's exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => EXIT_USAGE,
            Error::Spawn { exit, .. } => *exit,
            Error::Io { .. } | Error::Tar { .. } | Error::Marker { .. } | Error::System { .. } => {
                EXIT_WRAPPER
            }
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(message) => f.write_str(message),
            Error::Io { what, source } => write!(f, "{what}: {source}"),
            Error::Tar { offset, message } => {
                write!(f, "invalid tar stream at byte {offset}: {message}")
            }
            Error::Marker { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Spawn {
                program, source, ..
            } => write!(f, "cannot run `{program}`: {source}"),
            Error::System { what, source } => write!(f, "{what}: {source}"),
        }
    }
}

impl std::error::Error for Error {}
