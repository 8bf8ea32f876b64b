//! The scheduler's main loop: recovery of journaled jobs, registration, the acquire long-poll
//! while slots are free, the heartbeat and outbox tasks, and the drain.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use outpost_client::{ClientError, HubClient};
use outpost_executor::Executor;
use outpost_protocol::{
    AcquireRequest, ErrorCode, JobId, RegisterRequest, RegisterResponse, RunnerId,
};
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{HUB_RETRY, SchedulerConfig};
use crate::error::SchedulerError;
use crate::handle::{SchedulerHandle, Shared};
use crate::heartbeat::heartbeat_loop;
use crate::job::{Ctx, JobRun, Origin};
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::registry::JobRegistry;
use crate::secrets::SecretProviders;
use crate::state::{JournalRecord, StateDir};

/// The runner's scheduler: takes jobs from the hub and runs them on a backend. See the crate
/// documentation for the whole contract.
pub struct Scheduler {
    ctx: Arc<Ctx>,
    slots: Arc<Semaphore>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("name", &self.ctx.config.name)
            .field("executor", &self.ctx.executor.kind())
            .field("state_dir", &self.ctx.config.state_dir)
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// Checks the settings, creates the state directory, loads the outbox and registers the
    /// metrics. Blocking (a few file system calls): call it at startup.
    pub fn new(
        config: SchedulerConfig,
        client: HubClient,
        executor: Arc<dyn Executor>,
        registry: &mut Registry,
    ) -> Result<Self, SchedulerError> {
        if config.concurrency == 0 {
            return Err(SchedulerError::Config {
                setting: "concurrency",
                reason: "must be at least 1".to_owned(),
            });
        }
        if config.name.trim().is_empty() {
            return Err(SchedulerError::Config {
                setting: "name",
                reason: "must not be empty".to_owned(),
            });
        }
        if config.acquire_wait.is_zero() {
            return Err(SchedulerError::Config {
                setting: "acquire_wait",
                reason: "must be at least 1s".to_owned(),
            });
        }
        let state = StateDir::new(config.state_dir.clone());
        state
            .create()
            .map_err(|e| SchedulerError::state("create directory", &config.state_dir, e))?;
        let metrics = Metrics::register(registry);
        // Entries of an earlier runner version name no lease: the journal has it.
        let journal = state.clone();
        let lease_of = move |job_id: &JobId| {
            JournalRecord::read(&journal, job_id)
                .ok()
                .map(|record| record.assignment.lease_id)
        };
        let outbox = Outbox::open(&state.outbox(), metrics.outbox_depth.clone(), lease_of)
            .map_err(|e| SchedulerError::state("open the outbox", state.outbox(), e))?;
        let slots = Arc::new(Semaphore::new(config.concurrency as usize));
        let secrets = SecretProviders {
            env_prefix: config.secret_env_prefix.clone(),
            dir: config.secrets_dir.clone(),
        };
        let registry = JobRegistry::new(metrics.running.clone());
        let ctx = Arc::new(Ctx {
            config,
            state,
            client,
            executor,
            outbox,
            metrics,
            shared: Arc::new(Shared::new(registry)),
            secrets,
        });
        Ok(Self { ctx, slots })
    }

    /// A handle to drain the scheduler and ask about it.
    pub fn handle(&self) -> SchedulerHandle {
        SchedulerHandle {
            shared: Arc::clone(&self.ctx.shared),
        }
    }

    /// Runs until a drain completes (`Ok`) or the hub refuses the token
    /// ([`SchedulerError::Unauthorized`], after the running jobs were cancelled and their
    /// results queued in the outbox).
    pub async fn run(self) -> Result<(), SchedulerError> {
        let ctx = self.ctx;
        let shared = Arc::clone(&ctx.shared);
        let fatal = shared.fatal.clone();
        // Stops the supporting tasks once everything is delivered (or abandoned).
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut jobs = JoinSet::new();

        tasks.spawn(ctx.outbox.clone().run(
            ctx.client.clone(),
            shared.registry.clone(),
            fatal.clone(),
            stop.clone(),
        ));
        tasks.spawn(refresh_metrics(Arc::clone(&ctx), stop.clone()));

        // Jobs a previous run left: reattach, or report them.
        recover(&ctx, &self.slots, &mut jobs).await;

        // Registration.
        let registered = tokio::select! {
            r = register(&ctx) => r,
            () = shared.draining.cancelled() => None,
            () = fatal.token().cancelled() => None,
        };
        if let Some(registration) = registered {
            let runner_id = registration.runner_id.clone();
            let interval = Duration::from_secs(registration.heartbeat_interval_s.max(1));
            let wait = ctx
                .config
                .heartbeat_wait
                .unwrap_or(interval)
                .min(interval)
                .max(Duration::from_secs(1));
            tracing::info!(%runner_id, lease_ttl_s = registration.lease_ttl_s, heartbeat_wait = ?wait, "registered with the hub");
            tasks.spawn(heartbeat_loop(
                shared.registry.clone(),
                ctx.client.clone(),
                runner_id.clone(),
                wait,
                fatal.clone(),
                stop.clone(),
            ));
            tasks.spawn(sweep_loop(
                Arc::clone(&ctx),
                runner_id.clone(),
                stop.clone(),
            ));
            shared.accepting.store(true, Ordering::SeqCst);
            acquire_loop(&ctx, &self.slots, &runner_id, &mut jobs).await;
            shared.accepting.store(false, Ordering::SeqCst);
        }

        // Draining: the jobs get the grace period, then are cancelled.
        if fatal.token().is_cancelled() {
            shared.cancel_now.cancel();
        }
        let grace = tokio::time::sleep(ctx.config.drain_grace);
        tokio::pin!(grace);
        let stopped = shared.registry.wait_until(|c| c.running == 0);
        tokio::pin!(stopped);
        let mut graceful = !shared.cancel_now.is_cancelled();
        loop {
            tokio::select! {
                () = &mut stopped => break,
                () = &mut grace, if graceful => {
                    tracing::warn!(grace = ?ctx.config.drain_grace, "drain grace period over: cancelling running jobs");
                    shared.cancel_now.cancel();
                    graceful = false;
                }
                () = fatal.token().cancelled(), if graceful => {
                    shared.cancel_now.cancel();
                    graceful = false;
                }
                Some(_) = jobs.join_next() => {}
            }
        }
        // Every job has ended; wait until their logs and results are delivered.
        if fatal.token().is_cancelled() {
            // Nothing can be delivered with a refused token: keep it all for the next start.
            shared.abandon.cancel();
        }
        loop {
            tokio::select! {
                next = jobs.join_next() => if next.is_none() { break },
                () = shared.abandon.cancelled() => break,
                () = fatal.token().cancelled(), if !shared.abandon.is_cancelled() => {
                    shared.abandon.cancel();
                }
            }
        }
        tokio::select! {
            () = ctx.outbox.wait_empty() => {}
            () = shared.abandon.cancelled() => {}
            () = fatal.token().cancelled() => {}
        }
        jobs.shutdown().await;
        // The backend's own background work (cleanups after the jobs' outcomes) ends before
        // the runner does, so nothing of a job outlives a drain.
        ctx.executor.shutdown().await;
        stop.cancel();
        while tasks.join_next().await.is_some() {}

        let left = ctx.outbox.len();
        if left > 0 {
            tracing::warn!(
                entries = left,
                "stopping with undelivered results in the outbox; they are sent at the next start"
            );
        }
        match fatal.endpoint() {
            Some(endpoint) => Err(SchedulerError::Unauthorized { endpoint }),
            None => Ok(()),
        }
    }
}

/// Registers with the hub, retrying transient failures; `None` when the token is refused.
async fn register(ctx: &Arc<Ctx>) -> Option<RegisterResponse> {
    let request = RegisterRequest {
        name: ctx.config.name.clone(),
        labels: ctx.config.labels.clone(),
        executor: ctx.executor.kind().to_owned(),
        version: ctx.config.version.clone(),
        capacity: ctx.config.concurrency,
    };
    let mut failures: u32 = 0;
    loop {
        match ctx.client.register(&request).await {
            Ok(response) => return Some(response),
            Err(ClientError::Unauthorized { endpoint }) => {
                ctx.shared.fatal.unauthorized(endpoint);
                return None;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let delay = HUB_RETRY.delay(failures);
                tracing::warn!(error = %e, ?delay, "registration failed; will retry");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Finds the journaled jobs and starts a task for each, registered before this returns (so
/// the first sweep sees them live).
async fn recover(ctx: &Arc<Ctx>, slots: &Arc<Semaphore>, jobs: &mut JoinSet<()>) {
    let state = ctx.state.clone();
    let journaled = tokio::task::spawn_blocking(move || {
        let ids = state.journaled_jobs()?;
        Ok::<_, std::io::Error>(
            ids.into_iter()
                .map(|id| {
                    let record = JournalRecord::read(&state, &id);
                    (id, record)
                })
                .collect::<Vec<_>>(),
        )
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|r| r);
    let journaled = match journaled {
        Ok(journaled) => journaled,
        Err(e) => {
            tracing::error!(error = %e, "cannot list the journaled jobs");
            return;
        }
    };
    if journaled.is_empty() {
        return;
    }
    tracing::info!(
        jobs = journaled.len(),
        "found jobs of a previous run in the journal"
    );
    let mut records = Vec::new();
    for (job_id, record) in journaled {
        match record {
            Ok(record) => records.push(record),
            Err(e) => {
                tracing::error!(%job_id, error = %e, "cannot read the job's journal; forgetting the job");
                let state = ctx.state.clone();
                let removed = tokio::task::spawn_blocking(move || state.remove_job(&job_id)).await;
                if let Ok(Err(e)) = removed {
                    tracing::error!(error = %e, "cannot remove the files of a job with an unreadable journal");
                }
            }
        }
    }
    // Backends that label their resources by runner id (Docker) list the jobs of the runner id
    // the jobs were acquired under.
    let mut in_backend: HashSet<JobId> = HashSet::new();
    let runner_ids: HashSet<&RunnerId> = records.iter().map(|r| &r.runner_id).collect();
    for runner_id in runner_ids {
        match ctx.executor.running_jobs(runner_id).await {
            Ok(ids) => in_backend.extend(ids),
            Err(e) => {
                tracing::error!(error = %e, "cannot ask the backend which jobs it still runs");
            }
        }
    }
    for record in records {
        let backend_has = in_backend.contains(&record.assignment.job_id);
        let slot = if backend_has {
            Arc::clone(slots).try_acquire_owned().ok()
        } else {
            None
        };
        let runner_id = record.runner_id.clone();
        let origin = Origin::Recovered {
            record: Box::new(record),
            backend_has,
        };
        let run = JobRun::register(ctx, runner_id, origin, slot).await;
        jobs.spawn(run.drive());
    }
}

/// Takes jobs while slots are free, until a drain or a refused token.
async fn acquire_loop(
    ctx: &Arc<Ctx>,
    slots: &Arc<Semaphore>,
    runner_id: &RunnerId,
    jobs: &mut JoinSet<()>,
) {
    let shared = &ctx.shared;
    let fatal = shared.fatal.token().clone();
    let mut wait_s = ctx.config.acquire_wait.as_secs().max(1);
    let mut failures: u32 = 0;
    loop {
        // Reap ended job tasks as we go, so the set does not grow.
        while jobs.try_join_next().is_some() {}
        let slot = tokio::select! {
            slot = Arc::clone(slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
            () = shared.draining.cancelled() => return,
            () = fatal.cancelled() => return,
        };
        let request = AcquireRequest {
            runner_id: runner_id.clone(),
            free_slots: u32::try_from(slots.available_permits() + 1).unwrap_or(u32::MAX),
            wait_s,
        };
        let started = Instant::now();
        let result = tokio::select! {
            r = ctx.client.acquire(&request) => r,
            () = shared.draining.cancelled() => return,
            () = fatal.cancelled() => return,
        };
        ctx.metrics
            .acquire_duration
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(Some(assignment)) => {
                failures = 0;
                let waited = SystemTime::now()
                    .duration_since(assignment.created_at.system_time())
                    .unwrap_or_default();
                ctx.metrics.pickup_latency.observe(waited.as_secs_f64());
                tracing::info!(job_id = %assignment.job_id, "job assigned");
                let origin = Origin::Assigned(assignment);
                let run = JobRun::register(ctx, runner_id.clone(), origin, Some(slot)).await;
                jobs.spawn(run.drive());
            }
            Ok(None) => failures = 0,
            Err(ClientError::Unauthorized { endpoint }) => {
                shared.fatal.unauthorized(endpoint);
                return;
            }
            // The hub caps `wait_s` (its `max_wait_s`) and refuses more: ask for less.
            Err(e @ ClientError::Api { .. })
                if e.code() == Some(ErrorCode::BadRequest) && wait_s > 1 =>
            {
                wait_s = (wait_s / 2).max(1);
                tracing::warn!(error = %e, wait_s, "the hub refused the acquire wait; using a shorter one");
            }
            Err(e) => {
                drop(slot);
                failures = failures.saturating_add(1);
                let delay = HUB_RETRY.delay(failures);
                tracing::warn!(error = %e, ?delay, "acquire failed; will retry");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shared.draining.cancelled() => return,
                }
            }
        }
    }
}

/// Refreshes the time-dependent gauges every second.
async fn refresh_metrics(ctx: Arc<Ctx>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let since = ctx
            .client
            .last_success()
            .map_or(-1.0, |at| at.elapsed().as_secs_f64());
        ctx.metrics.seconds_since_hub.set(since);
        ctx.metrics
            .unsent_log_bytes
            .set(i64::try_from(ctx.shared.registry.unsent_log_bytes()).unwrap_or(i64::MAX));
    }
}

/// Sweeps the backend's leftovers at start and every `sweep_interval`. What is live is asked of
/// the registry, resource by resource.
async fn sweep_loop(ctx: Arc<Ctx>, runner_id: RunnerId, stop: CancellationToken) {
    let mut tick = tokio::time::interval(ctx.config.sweep_interval.max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        match ctx.executor.sweep(&runner_id, &ctx.shared.registry).await {
            Ok(report) => {
                for removed in &report.removed {
                    tracing::info!(%removed, "swept a leftover of an earlier job");
                }
                for failed in &report.failed {
                    tracing::warn!(%failed, "cannot sweep a leftover of an earlier job");
                }
            }
            Err(e) => tracing::warn!(error = %e, "sweeping the backend's leftovers failed"),
        }
    }
}
