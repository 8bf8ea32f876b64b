//! The scheduler's error type.

use std::path::PathBuf;

/// Why the scheduler could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// A setting is out of range.
    #[error("invalid scheduler setting `{setting}`: {reason}")]
    Config {
        /// The setting's name, e.g. `concurrency`.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A file or directory of the state directory could not be created, read or written.
    #[error("state directory: cannot {action} {path}: {source}")]
    State {
        /// What was being done, e.g. `create directory`.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        source: std::io::Error,
    },
    /// The hub refused the runner token (revoked or invalid). The runner took no further work,
    /// finished or cancelled what it was running, and left undelivered results in its outbox.
    #[error(
        "the hub refused the runner token at {endpoint} (revoked or invalid); no further jobs were taken"
    )]
    Unauthorized {
        /// The call that was refused, e.g. `POST /api/v1/runner/acquire`.
        endpoint: String,
    },
}

impl SchedulerError {
    pub(crate) fn state(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Self::State {
            action,
            path: path.into(),
            source,
        }
    }
}
