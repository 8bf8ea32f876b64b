//! Where a job's fixed cost on the engine goes, phase by phase. Each run logs its figures as one
//! `debug` event of target [`TARGET`] when it returns, and each cleanup one when it is done, so
//! that `cargo xtask bench` prints the breakdown of the code that ships (it reads runner-docker's
//! log) rather than of a copy.

use std::time::Duration;

use outpost_executor::JobId;

/// The tracing target of the timing events (`RUST_LOG=outpost_docker::timing=debug`).
pub const TARGET: &str = "outpost_docker::timing";

/// The message of the event a run logs as it returns its outcome.
pub const RUN_EVENT: &str = "job timings";
/// The message of the event a cleanup logs when it is done.
pub const CLEANUP_EVENT: &str = "cleanup timings";

/// Time spent per phase of one run, summed over its steps. Phases that overlap (network and
/// volumes are created side by side) each count their own time; `setup` and `total` are wall
/// times.
#[derive(Debug, Clone, Default)]
pub(crate) struct Timings {
    /// Setup as a whole: reset, network, volumes.
    pub setup: Duration,
    /// Finding and removing what an earlier attempt of the same job left.
    pub reset: Duration,
    pub network: Duration,
    /// The workspace volume and the cache volumes.
    pub volumes: Duration,
    /// Making images present (inspect, pull).
    pub image: Duration,
    /// Copying the checkout into the workspace volume (helper container).
    pub workspace_copy: Duration,
    pub services: Duration,
    pub create: Duration,
    pub attach: Duration,
    pub start: Duration,
    /// From the start of a step's container to the end of its output stream, less `delivery`:
    /// the step's own run time as the engine streams it.
    pub output: Duration,
    /// Handing output to the runner (waiting for room in the event channel).
    pub delivery: Duration,
    /// Reading how the container ended (wait, inspect).
    pub exit: Duration,
}

/// Microseconds, the unit of the logged figures.
fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Timings {
    /// Logs the run's figures; `total` is the run's wall time up to its outcome.
    pub(crate) fn log(&self, job_id: &JobId, total: Duration) {
        tracing::debug!(
            target: TARGET,
            job_id = %job_id,
            total_us = us(total),
            setup_us = us(self.setup),
            reset_us = us(self.reset),
            network_us = us(self.network),
            volumes_us = us(self.volumes),
            image_us = us(self.image),
            workspace_copy_us = us(self.workspace_copy),
            services_us = us(self.services),
            create_us = us(self.create),
            attach_us = us(self.attach),
            start_us = us(self.start),
            output_us = us(self.output.saturating_sub(self.delivery)),
            delivery_us = us(self.delivery),
            exit_us = us(self.exit),
            "{RUN_EVENT}"
        );
    }
}

/// Logs how long a job's cleanup took (after its run had returned).
pub(crate) fn log_cleanup(job_id: &JobId, took: Duration) {
    tracing::debug!(
        target: TARGET,
        job_id = %job_id,
        cleanup_us = us(took),
        "{CLEANUP_EVENT}"
    );
}
