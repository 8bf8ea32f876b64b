//! The backend contract of outpost (DESIGN.md §5): an [`Executor`] runs a whole prepared job, not a
//! single step, because the Kubernetes backend runs every step of a job inside one pod on its own
//! while the Docker and process backends drive steps one by one.
//!
//! A backend receives a [`PreparedJob`] (steps, images, environment, resolved secrets, workspace,
//! caches, services, timeouts), reports what happens through an [`EventSender`] (step started,
//! output bytes, step finished), honours a [`CancellationToken`], and returns the [`JobOutcome`].
//! It can list the jobs it still has running ([`Executor::running_jobs`]) for reattachment after a
//! runner restart, and sweep what it left behind ([`Executor::sweep`]).
//!
//! This crate pulls in no I/O stack: backends depend on it, never the other way round.

mod model;
mod plan;

use std::collections::HashSet;

use async_trait::async_trait;
pub use tokio_util::sync::CancellationToken;

pub use crate::model::*;
pub use crate::plan::{StepDecision, StepPlan, job_outcome};

/// The sending half of a job's event stream. Bounded: a backend that produces output faster than
/// the runner can mask and spool it waits, so memory stays bounded.
pub type EventSender = tokio::sync::mpsc::Sender<ExecEvent>;
/// The receiving half of a job's event stream.
pub type EventReceiver = tokio::sync::mpsc::Receiver<ExecEvent>;

/// Creates an event channel of the size backends are expected to use.
pub fn event_channel() -> (EventSender, EventReceiver) {
    tokio::sync::mpsc::channel(256)
}

/// A backend that runs whole jobs: process, Docker, Kubernetes.
#[async_trait]
pub trait Executor: Send + Sync + 'static {
    /// The backend's name as registered with the hub: `process`, `docker`, `kubernetes`.
    fn kind(&self) -> &'static str;

    /// Tells the backend this runner's id at the hub, as soon as registration answered and before
    /// any [`running_jobs`](Executor::running_jobs) or [`sweep`](Executor::sweep): backends that
    /// label what they create need it to tell their own leftovers from other runners'.
    fn set_runner_id(&self, _runner_id: &str) {}

    /// Runs `job` to its end and returns how it ended.
    ///
    /// Steps run in order; [`StepPlan`] decides which run after a failure (`when`). For every step
    /// the backend sends either `StepStarted`, any number of `Output`, then `StepFinished`, or a
    /// lone `StepFinished` with [`StepState::Skipped`](outpost_protocol::StepState::Skipped).
    /// Output must not be lost: a backend attaches to a step's output before the step starts.
    ///
    /// When `cancel` fires, the running step is stopped (grace period, then killed) and no further
    /// step runs; the outcome is then `cancelled`. Step and job timeouts in `job` are enforced by
    /// the backend (a timed-out step is `timed_out` with failure class `timeout`).
    ///
    /// `resume` is set when a restarted runner takes over a job that this backend may still be
    /// running (see [`Executor::running_jobs`]); a backend that cannot resume returns
    /// [`ExecutorError::ResumeUnsupported`].
    ///
    /// An `Err` means the backend itself failed (engine unreachable, workspace unwritable); the
    /// runner reports the job as an `infrastructure` error.
    async fn run(
        &self,
        job: PreparedJob,
        resume: Option<Resume>,
        events: EventSender,
        cancel: CancellationToken,
    ) -> Result<JobOutcome, ExecutorError>;

    /// The ids of the jobs whose steps this backend (this runner) still has running or finished
    /// but not yet collected, e.g. containers labelled with this runner's id. Used after a restart.
    async fn running_jobs(&self) -> Result<Vec<String>, ExecutorError>;

    /// Removes what this runner left behind (containers, volumes, networks, pods, directories) that
    /// belongs to none of `live_jobs`. Safe to call at start and on a timer.
    async fn sweep(&self, live_jobs: &HashSet<String>) -> Result<SweepReport, ExecutorError>;
}

/// What a sweep removed, for logs and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// One line per removed resource, e.g. `container 3f2a… (job j_1)`.
    pub removed: Vec<String>,
    /// Resources that could not be removed, with the reason.
    pub failed: Vec<String>,
}

/// Failures of a backend itself (not of the job's steps, which are outcomes).
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The engine (Docker daemon, Kubernetes API) could not be reached or refused a call.
    #[error("{backend} engine error during {action} for job {job_id}: {message}")]
    Engine {
        backend: &'static str,
        action: String,
        job_id: String,
        message: String,
    },
    /// The job's workspace could not be prepared or used.
    #[error("workspace {path} of job {job_id}: {source}")]
    Workspace {
        job_id: String,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The job is invalid for this backend (e.g. no image for a step on the Docker backend).
    #[error("job {job_id} cannot run on the {backend} backend: {message}")]
    Invalid {
        backend: &'static str,
        job_id: String,
        message: String,
    },
    /// The backend cannot take over a job that a previous runner process started.
    #[error("the {backend} backend cannot resume job {job_id} after a runner restart")]
    ResumeUnsupported {
        backend: &'static str,
        job_id: String,
    },
    /// The runner stopped reading events (it is shutting down).
    #[error("the event receiver of job {job_id} was dropped")]
    EventsClosed { job_id: String },
}
