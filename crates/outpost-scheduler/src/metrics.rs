//! The scheduler's Prometheus metrics (DESIGN.md §6.7), registered into the agent's registry.
//!
//! | metric | type | meaning |
//! | --- | --- | --- |
//! | `outpost_runner_jobs_total{result}` | counter | jobs ended, by result (`success`, `failed`, …) |
//! | `outpost_runner_pickup_latency_seconds` | histogram | job `created_at` at the hub → assignment received |
//! | `outpost_runner_acquire_duration_seconds` | histogram | duration of one acquire call (long-poll included) |
//! | `outpost_runner_running_jobs` | gauge | jobs the backend is running |
//! | `outpost_runner_unsent_log_bytes` | gauge | spooled log bytes the hub has not committed, all jobs |
//! | `outpost_runner_seconds_since_last_hub_success` | gauge | since the last successful hub call (−1 before the first) |
//! | `outpost_runner_outbox_depth` | gauge | step updates and completions waiting for delivery |
//!
//! The two time-dependent gauges are refreshed every second while the scheduler runs.

use std::sync::atomic::AtomicU64;

use outpost_protocol::JobResult;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The metric handles (cheap to clone: they share their values).
#[derive(Clone)]
pub(crate) struct Metrics {
    pub jobs: Family<Vec<(String, String)>, Counter>,
    pub pickup_latency: Histogram,
    pub acquire_duration: Histogram,
    pub running: Gauge,
    pub unsent_log_bytes: Gauge,
    pub seconds_since_hub: Gauge<f64, AtomicU64>,
    pub outbox_depth: Gauge,
}

impl Metrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            jobs: Family::default(),
            // 1 ms … ~33 s
            pickup_latency: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            // 1 ms … ~65 s (long-polls end at `wait_s`)
            acquire_duration: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            running: Gauge::default(),
            unsent_log_bytes: Gauge::default(),
            seconds_since_hub: Gauge::default(),
            outbox_depth: Gauge::default(),
        };
        metrics.seconds_since_hub.set(-1.0);
        registry.register(
            "outpost_runner_jobs",
            "Jobs ended, by result",
            metrics.jobs.clone(),
        );
        registry.register(
            "outpost_runner_pickup_latency_seconds",
            "Time from a job's creation at the hub to its assignment reaching the runner",
            metrics.pickup_latency.clone(),
        );
        registry.register(
            "outpost_runner_acquire_duration_seconds",
            "Duration of one acquire call, long-poll included",
            metrics.acquire_duration.clone(),
        );
        registry.register(
            "outpost_runner_running_jobs",
            "Jobs the backend is running",
            metrics.running.clone(),
        );
        registry.register(
            "outpost_runner_unsent_log_bytes",
            "Spooled log bytes the hub has not committed yet, over all jobs",
            metrics.unsent_log_bytes.clone(),
        );
        registry.register(
            "outpost_runner_seconds_since_last_hub_success",
            "Seconds since the last successful call to the hub (-1 before the first)",
            metrics.seconds_since_hub.clone(),
        );
        registry.register(
            "outpost_runner_outbox_depth",
            "Step updates and completions waiting for delivery to the hub",
            metrics.outbox_depth.clone(),
        );
        metrics
    }

    pub(crate) fn job_ended(&self, result: JobResult) {
        let label = result.state().as_str().to_owned();
        self.jobs
            .get_or_create(&vec![("result".to_owned(), label)])
            .inc();
    }
}
