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
//! Backends that drive steps one by one share one step loop, [`StepDriver`]: they implement
//! [`StepRunner`] (run one step, take one over after a restart, recall an earlier step's outcome)
//! and the loop applies the `when` rules ([`StepPlan`]), the job's deadline and cancellation
//! between steps, and reports every step's end.
//!
//! This crate pulls in no I/O stack: backends depend on it, never the other way round.

mod backend;
mod driver;
mod model;
mod plan;

use std::collections::HashSet;

use async_trait::async_trait;
pub use outpost_protocol::{JobId, RunnerId};
pub use tokio_util::sync::CancellationToken;

pub use crate::backend::{Backend, BackendEnv};
pub use crate::driver::{StepDriver, StepEnd, StepRunner};
pub use crate::model::*;
pub use crate::plan::{StepDecision, StepPlan, job_outcome, job_timeout_failure};

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
///
/// The runner's id reaches a backend in one way only: with each call that needs it
/// (`job.runner_id` in [`run`](Executor::run), the argument of [`running_jobs`](Executor::running_jobs)
/// and [`sweep`](Executor::sweep)). A backend keeps no copy of it and no registry of live jobs:
/// the runner's own registry is the one ([`LiveJobs`]).
#[async_trait]
pub trait Executor: Send + Sync + 'static {
    /// The backend's name as registered with the hub: `process`, `docker`, `kubernetes`.
    fn kind(&self) -> &'static str;

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
    /// The runner holds the job live ([`LiveJobs::is_live`]) from before this is called until
    /// after it returned, so no sweep touches the job's resources meanwhile.
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

    /// The ids of the jobs of runner `runner_id` whose steps this backend still has running or
    /// finished but not yet collected, e.g. containers labelled with the runner's id. Used after
    /// a restart.
    async fn running_jobs(&self, runner_id: &RunnerId) -> Result<Vec<JobId>, ExecutorError>;

    /// Removes what runner `runner_id` left behind (containers, volumes, networks, pods,
    /// directories) that belongs to no live job. `live` is asked right before each removal, so a
    /// job that started after the sweep listed its resources is never swept. Safe to call at
    /// start and on a timer.
    async fn sweep(
        &self,
        runner_id: &RunnerId,
        live: &dyn LiveJobs,
    ) -> Result<SweepReport, ExecutorError>;

    /// Waits for the work a backend does after a job's [`run`](Executor::run) returned (the
    /// Docker backend removes a job's containers, network and volume then). The runner calls it
    /// once no job runs any more, before it exits; without it that work may be cut short, and
    /// the next sweep finishes it. Nothing to wait for by default.
    async fn shutdown(&self) {}
}

/// What the runner holds live right now; asked at removal time, per resource, so a job that
/// started after the sweep listed resources is never swept.
pub trait LiveJobs: Send + Sync {
    fn is_live(&self, job_id: &str) -> bool;
}

/// A fixed set of live jobs, for tests and simple callers.
impl LiveJobs for HashSet<JobId> {
    fn is_live(&self, job_id: &str) -> bool {
        self.contains(job_id)
    }
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
    /// The engine (Docker daemon, Kubernetes API) could not be reached or refused a call while
    /// running a job.
    #[error("{backend} engine error during {action} for job {job_id}: {message}")]
    Engine {
        backend: &'static str,
        action: String,
        job_id: JobId,
        message: String,
    },
    /// The engine could not be reached or refused a call outside of any one job (connecting,
    /// listing running jobs, sweeping).
    #[error("{backend} engine error during {action}: {message}")]
    Backend {
        backend: &'static str,
        action: String,
        message: String,
    },
    /// The backend's own settings are invalid.
    #[error("invalid {backend} backend configuration: {message}")]
    Config {
        backend: &'static str,
        message: String,
    },
    /// The job's workspace could not be prepared or used.
    #[error("workspace {path} of job {job_id}: {source}")]
    Workspace {
        job_id: JobId,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The job is invalid for this backend (e.g. no runner id to label its resources with).
    #[error("job {job_id} cannot run on the {backend} backend: {message}")]
    Invalid {
        backend: &'static str,
        job_id: JobId,
        message: String,
    },
    /// The backend cannot take over a job that a previous runner process started.
    #[error("the {backend} backend cannot resume job {job_id} after a runner restart")]
    ResumeUnsupported {
        backend: &'static str,
        job_id: JobId,
    },
    /// The runner stopped reading events (it is shutting down).
    #[error("the event receiver of job {job_id} was dropped")]
    EventsClosed { job_id: JobId },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_of_ids_answers_by_str() {
        let live: HashSet<JobId> = HashSet::from([JobId::from("j_1")]);
        let live: &dyn LiveJobs = &live;
        assert!(live.is_live("j_1"));
        assert!(!live.is_live("j_2"));
    }
}
