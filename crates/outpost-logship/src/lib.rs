//! The runner's log pipeline (DESIGN.md §6 points 1 and 6): a job's output is masked
//! ([`Masker`]), appended to a per-job spool file on disk ([`Spool`]), and uploaded to the hub
//! from the hub's committed offset ([`Uploader`]) through the [`LogTarget`] trait the runner
//! implements with its hub client. [`JobLog`] puts the writing half together: it is the one log
//! writer of the runner (step sections, runner lines, reattach [`ProgressRecord`]s).
//!
//! ```text
//! executor output ──► JobLog::output ──► Masker ──► Spool (file) ──► Uploader ──► LogTarget (hub)
//!                                                   │ len watch ──────┘ wakes
//! ```
//!
//! Memory stays bounded whatever the length of a hub outage: output goes to disk at once, the
//! masker holds back less than the longest secret form, and the uploader reads one batch
//! (≤ [`outpost_protocol::MAX_LOG_CHUNK`]) at a time from the file.

mod forms;
mod joblog;
mod masker;
mod progress;
mod spool;
mod upload;

use std::io;
use std::path::PathBuf;

pub use crate::forms::MIN_SECRET_LEN;
pub use crate::joblog::JobLog;
pub use crate::masker::Masker;
pub use crate::progress::ProgressRecord;
pub use crate::spool::{Spool, SpoolReader, UNLIMITED, truncation_notice};
pub use crate::upload::{LogTarget, TargetError, Uploader, UploaderConfig, UploaderHandle};

/// Errors of the log pipeline.
#[derive(Debug, thiserror::Error)]
pub enum LogshipError {
    /// A secret's value is too short to be masked without mangling ordinary output (empty
    /// values included); the job must not run with it.
    #[error(
        "secret {name} cannot be masked: its value is {len} bytes long, the minimum is {min}",
        min = MIN_SECRET_LEN
    )]
    UnmaskableSecret {
        /// The secret's name (never its value).
        name: String,
        /// Length of the value in bytes.
        len: usize,
    },
    /// The matcher over all forms of the secrets could not be built (far too many or too long
    /// secrets).
    #[error("cannot build the masker for {secrets} secrets: {message}")]
    Matcher {
        /// How many secrets were given.
        secrets: usize,
        /// The underlying error.
        message: String,
    },
    /// A file operation on a spool failed.
    #[error("log spool {path}: cannot {op}: {source}")]
    Spool {
        /// The spool file.
        path: PathBuf,
        /// What was being done (`open`, `append to`, `read`, `sync`, ...).
        op: &'static str,
        /// The underlying error.
        source: io::Error,
    },
    /// A write came after [`JobLog::finish`].
    #[error("log spool {path}: written to after the job's log was finished")]
    Finished {
        /// The spool file.
        path: PathBuf,
    },
    /// The hub refused the upload for good (job not found, unauthorized, ...); the uploader
    /// stopped.
    #[error("log upload of {path} stopped at {committed} bytes: {message}")]
    UploadFatal {
        /// The spool file being uploaded.
        path: PathBuf,
        /// Bytes the hub had committed.
        committed: u64,
        /// The target's message.
        message: String,
    },
    /// The uploader was cancelled (runner shutdown) before everything was committed; the spool
    /// keeps the rest for the next start.
    #[error("log upload of {path} cancelled at {committed} bytes of {spooled}")]
    Cancelled {
        /// The spool file being uploaded.
        path: PathBuf,
        /// Bytes the hub had committed.
        committed: u64,
        /// Bytes in the spool.
        spooled: u64,
    },
    /// A background task of the pipeline (the uploader, a blocking file operation) ended
    /// abnormally: it panicked or was aborted.
    #[error("background task for log spool {path} failed: {message}")]
    Task {
        /// The spool file being uploaded.
        path: PathBuf,
        /// What happened.
        message: String,
    },
}
