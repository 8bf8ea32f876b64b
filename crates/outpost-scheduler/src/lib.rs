//! The heart of the outpost runner (DESIGN.md §3, §5, §6): it registers with the hub, takes jobs
//! with one acquire long-poll while slots are free, keeps their leases alive with one batched
//! heartbeat long-poll (through which a cancel arrives in about one round trip), runs them on an
//! [`Executor`](outpost_executor::Executor), and reports their steps, logs and results.
//!
//! What makes it dependable:
//! - **Persistent outbox**: step updates and completions are fsynced files in the state
//!   directory, retried with backoff until the hub acknowledges them, across hub outages and
//!   runner restarts. A completion goes out only after every log byte is committed.
//! - **Job journal**: every assignment is journaled before anything else, so a restarted runner
//!   knows what it was running. On restart, a job the backend still runs is reattached
//!   (`Resume` from the progress records, same lease); one it cannot resume gets its whole
//!   spool uploaded and is completed as `error`/`infrastructure`.
//! - **Drain contract** ([`SchedulerHandle::drain`]): the first request stops taking jobs and
//!   flips readiness; running jobs get [`SchedulerConfig::drain_grace`], then are cancelled; a
//!   second request cancels at once. Every job still gets its final status and full log before
//!   [`Scheduler::run`] returns.
//!
//! Sources and secrets stay inside the premises: git sources are checked out by the runner with
//! the git CLI and credentials from [`GitConfig`] only; secrets come from `OUTPOST_SECRET_<NAME>`
//! environment variables or a directory with one file per secret (one trailing newline of a
//! file is trimmed), and are masked out of every log byte before it is written to disk.
//!
//! ```no_run
//! # async fn demo(executor: std::sync::Arc<dyn outpost_executor::Executor>) -> Result<(), Box<dyn std::error::Error>> {
//! use outpost_client::{ClientConfig, HubClient};
//! use outpost_scheduler::{Scheduler, SchedulerConfig};
//!
//! let client = HubClient::new(ClientConfig::new("https://hub.example.com", "runner-token"))?;
//! let mut registry = prometheus_client::registry::Registry::default();
//! let config = SchedulerConfig::new("builder-1", "/var/lib/outpost");
//! let scheduler = Scheduler::new(config, client, executor, &mut registry)?;
//! let handle = scheduler.handle(); // drain() on SIGTERM, is_ready() for /readyz
//! scheduler.run().await?;
//! # Ok(()) }
//! ```

mod config;
mod error;
mod fatal;
mod handle;
mod heartbeat;
mod job;
mod log;
mod metrics;
mod outbox;
mod registry;
mod scheduler;
mod secrets;
mod source;
mod state;

pub use crate::config::{
    DEFAULT_CONTAINER_WORKSPACE, DEFAULT_LOG_CAP_BYTES, DEFAULT_SECRET_ENV_PREFIX, GitConfig,
    SchedulerConfig,
};
pub use crate::error::SchedulerError;
pub use crate::handle::{DrainStage, SchedulerHandle};
pub use crate::log::HubLogTarget;
pub use crate::scheduler::Scheduler;
