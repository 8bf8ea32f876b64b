//! The hub's Prometheus metrics (`GET /metrics`, text format via `prometheus-client`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use outpost_protocol::JobState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HttpLabels {
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    pub reason: &'static str,
}

/// What the accept loop and its connections count.
#[derive(Clone, Debug, Default)]
pub(crate) struct ConnectionMetrics {
    /// Connections open now.
    pub open: Gauge,
    /// `max_connections` in force.
    pub limit: Gauge,
    /// Connections closed at once because `max_connections` were open.
    pub refused: Counter,
    /// Connections the hub closed for a timeout, by which one.
    pub timed_out: Family<ReasonLabels, Counter>,
}

impl ConnectionMetrics {
    pub(crate) fn timed_out(&self, reason: &'static str) {
        self.timed_out.get_or_create(&ReasonLabels { reason }).inc();
    }
}

/// Every metric of the hub, registered once.
pub(crate) struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub jobs: Family<StateLabels, Gauge>,
    pub queue_depth: Gauge,
    pub acquire_waiting: Gauge,
    pub heartbeat_waiting: Gauge,
    pub log_followers: Gauge,
    pub log_bytes: Counter,
    pub jobs_submitted: Counter,
    pub jobs_finished: Family<StateLabels, Counter>,
    pub pickup_latency: Histogram,
    pub acquire_wakeups: Counter,
    pub connections: ConnectionMetrics,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("outpost_hub");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route, method and status",
            http_requests.clone(),
        );
        let jobs = Family::<StateLabels, Gauge>::default();
        registry.register("jobs", "Jobs in the store, by state", jobs.clone());
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Jobs waiting for a runner",
            queue_depth.clone(),
        );
        let acquire_waiting = Gauge::default();
        registry.register(
            "acquire_waiting",
            "Runner acquire requests held open (long-poll)",
            acquire_waiting.clone(),
        );
        let heartbeat_waiting = Gauge::default();
        registry.register(
            "heartbeat_waiting",
            "Runner heartbeat requests held open (long-poll)",
            heartbeat_waiting.clone(),
        );
        let log_followers = Gauge::default();
        registry.register(
            "log_followers",
            "Log reads following a job",
            log_followers.clone(),
        );
        let log_bytes = Counter::default();
        registry.register("log_bytes_appended", "Log bytes stored", log_bytes.clone());
        let jobs_submitted = Counter::default();
        registry.register("jobs_submitted", "Jobs submitted", jobs_submitted.clone());
        let jobs_finished = Family::<StateLabels, Counter>::default();
        registry.register(
            "jobs_finished",
            "Jobs that ended, by final state (runner completions, lost, cancelled)",
            jobs_finished.clone(),
        );
        let pickup_latency = Histogram::new(exponential_buckets(0.000_25, 2.0, 20));
        registry.register(
            "pickup_latency_seconds",
            "Seconds from a job entering the queue to a runner acquiring it",
            pickup_latency.clone(),
        );
        let acquire_wakeups = Counter::default();
        registry.register(
            "acquire_wakeups",
            "Held acquire requests woken to claim a job (one per job entering the queue, and one \
             more for each woken request that left without claiming)",
            acquire_wakeups.clone(),
        );
        let connections = ConnectionMetrics::default();
        registry.register(
            "connections",
            "Client connections open",
            connections.open.clone(),
        );
        registry.register(
            "connections_limit",
            "The most client connections open at once (max_connections, or its automatic value)",
            connections.limit.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed as soon as accepted, because max_connections were open",
            connections.refused.clone(),
        );
        registry.register(
            "connections_timed_out",
            "Connections the hub closed for a timeout, by reason (header, idle, tls_handshake)",
            connections.timed_out.clone(),
        );
        Self {
            registry,
            connections,
            http_requests,
            jobs,
            queue_depth,
            acquire_waiting,
            heartbeat_waiting,
            log_followers,
            log_bytes,
            jobs_submitted,
            jobs_finished,
            pickup_latency,
            acquire_wakeups,
        }
    }

    pub(crate) fn job_finished(&self, state: JobState) {
        self.jobs_finished
            .get_or_create(&StateLabels {
                state: state.as_str().to_owned(),
            })
            .inc();
    }

    /// Sets the job gauges from the store's counts (every state, zero when absent).
    pub(crate) fn set_job_counts(&self, counts: &[(JobState, u64)]) {
        for state in JobState::ALL {
            let n = counts
                .iter()
                .find(|(s, _)| *s == state)
                .map_or(0, |(_, n)| *n);
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            self.jobs
                .get_or_create(&StateLabels {
                    state: state.as_str().to_owned(),
                })
                .set(n);
            if state == JobState::Queued {
                self.queue_depth.set(n);
            }
        }
    }

    /// The registry in Prometheus text format.
    pub(crate) fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
