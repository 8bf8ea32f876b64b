//! Time arithmetic that every outpost crate shares, written once: the retry [`Backoff`] (true
//! full jitter) that the hub client, the outbox, the log uploader and the runner's loops use;
//! durations in configuration files ([`serde_duration`]); and one way of showing a duration to
//! a person ([`format`]). No I/O.

mod backoff;
mod format;
pub mod serde_duration;

pub use crate::backoff::Backoff;
pub use crate::format::format;
