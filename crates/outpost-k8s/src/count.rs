//! Counts the API requests the backend makes: in all, and per job (the requests made from within
//! a job's task, through a task-local counter), so that `cargo xtask bench` can print what a job
//! costs the API server. The one shared watch counts for no job.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

tokio::task_local! {
    static JOB_REQUESTS: Arc<AtomicU64>;
}

/// The request counters of an executor.
#[derive(Debug, Default, Clone)]
pub struct RequestCount {
    total: Arc<AtomicU64>,
}

impl RequestCount {
    /// Counts one request: in all, and for the job whose task makes it.
    pub fn record(&self) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let _ = JOB_REQUESTS.try_with(|c| c.fetch_add(1, Ordering::Relaxed));
    }

    /// Every request so far.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

/// Runs `fut` counting its requests into `counter`.
pub async fn counted<F: std::future::Future>(counter: Arc<AtomicU64>, fut: F) -> F::Output {
    JOB_REQUESTS.scope(counter, fut).await
}
