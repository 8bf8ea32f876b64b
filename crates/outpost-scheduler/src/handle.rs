//! The handle the agent holds on a running scheduler: the drain contract (DESIGN.md §6.4),
//! readiness for `/readyz`, and what is running.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use outpost_protocol::JobId;
use tokio_util::sync::CancellationToken;

use crate::fatal::Fatal;
use crate::registry::JobRegistry;

/// State shared by the scheduler's tasks and its handles.
#[derive(Debug)]
pub(crate) struct Shared {
    drains: AtomicU32,
    /// First drain request: take no more jobs.
    pub draining: CancellationToken,
    /// Second request, or the grace period over, or the token refused: cancel every job. The
    /// parent of every job's cancellation token.
    pub cancel_now: CancellationToken,
    /// Third request: stop waiting for the hub; undelivered results stay in the outbox.
    pub abandon: CancellationToken,
    /// Registered and taking jobs.
    pub accepting: AtomicBool,
    pub fatal: Fatal,
    /// The jobs this runner holds.
    pub registry: JobRegistry,
}

impl Shared {
    pub(crate) fn new(registry: JobRegistry) -> Self {
        Self {
            drains: AtomicU32::new(0),
            draining: CancellationToken::new(),
            cancel_now: CancellationToken::new(),
            abandon: CancellationToken::new(),
            accepting: AtomicBool::new(false),
            fatal: Fatal::default(),
            registry,
        }
    }
}

/// Controls a scheduler from outside (signals, health endpoints). Cheap to clone.
#[derive(Debug, Clone)]
pub struct SchedulerHandle {
    pub(crate) shared: Arc<Shared>,
}

/// What a drain request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainStage {
    /// First request: no new jobs, readiness off; running jobs get the grace period.
    Graceful,
    /// Second request: every running job is cancelled now (each still reports its status and
    /// full log).
    CancelNow,
    /// Third and later requests: stop waiting for the hub; what was not delivered stays in the
    /// outbox and the spools for the next start.
    Abandon,
}

impl SchedulerHandle {
    /// Asks the scheduler to stop. The first call drains gracefully, the second cancels the
    /// running jobs at once, a third stops waiting for the hub (see [`DrainStage`]). `run`
    /// returns once the drain is complete.
    pub fn drain(&self) -> DrainStage {
        let n = self.shared.drains.fetch_add(1, Ordering::SeqCst) + 1;
        self.shared.draining.cancel();
        match n {
            1 => {
                tracing::info!("drain requested: taking no more jobs");
                DrainStage::Graceful
            }
            2 => {
                tracing::warn!("second drain request: cancelling running jobs now");
                self.shared.cancel_now.cancel();
                DrainStage::CancelNow
            }
            _ => {
                tracing::warn!("drain requested again: no longer waiting for the hub");
                self.shared.cancel_now.cancel();
                self.shared.abandon.cancel();
                DrainStage::Abandon
            }
        }
    }

    /// Whether the runner takes jobs: registered, not draining, token accepted. For `/readyz`.
    pub fn is_ready(&self) -> bool {
        self.shared.accepting.load(Ordering::SeqCst)
            && !self.shared.draining.is_cancelled()
            && !self.shared.fatal.token().is_cancelled()
    }

    /// Whether a drain was requested.
    pub fn is_draining(&self) -> bool {
        self.shared.draining.is_cancelled()
    }

    /// The ids of the jobs the backend is running now, sorted.
    pub fn running_jobs(&self) -> Vec<JobId> {
        self.shared.registry.running()
    }
}
