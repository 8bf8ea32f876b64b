//! The scheduler's main loop: recovery of journaled jobs, registration, the acquire long-poll
//! while slots are free, the heartbeat and outbox tasks, and the drain.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use outpost_client::{ClientError, HubClient};
use outpost_executor::Executor;
use outpost_protocol::{AcquireRequest, ErrorCode, RegisterRequest, RegisterResponse};
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::SchedulerConfig;
use crate::error::SchedulerError;
use crate::handle::{SchedulerHandle, Shared};
use crate::job::{self, Ctx};
use crate::leases::{Leases, heartbeat_loop};
use crate::metrics::{LogStats, Metrics};
use crate::outbox::{Outbox, backoff};
use crate::secrets::SecretProviders;
use crate::state::JournalRecord;
use crate::state::StateDir;

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
        let outbox = Outbox::open(&state.outbox(), metrics.outbox_depth.clone())
            .map_err(|e| SchedulerError::state("open the outbox", state.outbox(), e))?;
        let slots = Arc::new(Semaphore::new(config.concurrency as usize));
        let secrets = SecretProviders {
            env_prefix: config.secret_env_prefix.clone(),
            dir: config.secrets_dir.clone(),
        };
        let ctx = Arc::new(Ctx {
            config,
            state,
            client,
            executor,
            outbox,
            leases: Leases::default(),
            metrics,
            logs: LogStats::default(),
            shared: Arc::new(Shared::default()),
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

        tasks.spawn(
            ctx.outbox
                .clone()
                .run(ctx.client.clone(), fatal.clone(), stop.clone()),
        );
        tasks.spawn(refresh_metrics(Arc::clone(&ctx), stop.clone()));

        // Jobs a previous run left: reattach, or report them.
        let journaled = recover(&ctx, &self.slots, &mut jobs).await;

        // Registration.
        let registered = tokio::select! {
            r = register(&ctx) => r,
            () = shared.draining.cancelled() => None,
            () = fatal.token().cancelled() => None,
        };
        let mut live: HashSet<String> = journaled;
        if let Some(registration) = registered {
            let runner_id = registration.runner_id.clone();
            ctx.executor.set_runner_id(&runner_id);
            let interval = Duration::from_secs(registration.heartbeat_interval_s.max(1));
            let wait = ctx
                .config
                .heartbeat_wait
                .unwrap_or(interval)
                .min(interval)
                .max(Duration::from_secs(1));
            tracing::info!(%runner_id, lease_ttl_s = registration.lease_ttl_s, heartbeat_wait = ?wait, "registered with the hub");
            tasks.spawn(heartbeat_loop(
                ctx.leases.clone(),
                ctx.client.clone(),
                runner_id.clone(),
                wait,
                fatal.clone(),
                stop.clone(),
            ));
            tasks.spawn(sweep_loop(
                Arc::clone(&ctx),
                std::mem::take(&mut live),
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
        let mut graceful = !shared.cancel_now.is_cancelled();
        while !shared.running().is_empty() {
            tokio::select! {
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
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
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
                let delay = backoff(failures);
                tracing::warn!(error = %e, ?delay, "registration failed; will retry");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Finds the journaled jobs and starts a task for each; answers their ids.
async fn recover(
    ctx: &Arc<Ctx>,
    slots: &Arc<Semaphore>,
    jobs: &mut JoinSet<()>,
) -> HashSet<String> {
    let state = ctx.state.clone();
    let journaled = match tokio::task::spawn_blocking(move || state.journaled_jobs()).await {
        Ok(Ok(ids)) => ids,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot list the journaled jobs");
            Vec::new()
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot list the journaled jobs");
            Vec::new()
        }
    };
    if journaled.is_empty() {
        return HashSet::new();
    }
    // Backends that label their resources by runner id (Docker) need it before they can list
    // their jobs; the journal has the id the jobs were acquired under.
    let state = ctx.state.clone();
    let first = journaled[0].clone();
    if let Ok(Ok(record)) =
        tokio::task::spawn_blocking(move || JournalRecord::read(&state, &first)).await
    {
        ctx.executor.set_runner_id(&record.runner_id);
    }
    let in_backend: HashSet<String> = match ctx.executor.running_jobs().await {
        Ok(ids) => ids.into_iter().collect(),
        Err(e) => {
            tracing::error!(error = %e, "cannot ask the backend which jobs it still runs");
            HashSet::new()
        }
    };
    tracing::info!(
        jobs = journaled.len(),
        "found jobs of a previous run in the journal"
    );
    for job_id in &journaled {
        let has = in_backend.contains(job_id);
        let slot = if has {
            Arc::clone(slots).try_acquire_owned().ok()
        } else {
            None
        };
        jobs.spawn(job::recover(Arc::clone(ctx), job_id.clone(), has, slot));
    }
    journaled.into_iter().collect()
}

/// Takes jobs while slots are free, until a drain or a refused token.
async fn acquire_loop(
    ctx: &Arc<Ctx>,
    slots: &Arc<Semaphore>,
    runner_id: &str,
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
            runner_id: runner_id.to_owned(),
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
                jobs.spawn(job::run_assigned(
                    Arc::clone(ctx),
                    runner_id.to_owned(),
                    assignment,
                    slot,
                ));
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
                let delay = backoff(failures);
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
            .set(i64::try_from(ctx.logs.unsent()).unwrap_or(i64::MAX));
    }
}

/// Sweeps the backend's leftovers at start and every `sweep_interval`.
async fn sweep_loop(ctx: Arc<Ctx>, journaled: HashSet<String>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(ctx.config.sweep_interval.max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let mut live: HashSet<String> = ctx.shared.running().into_iter().collect();
        if first {
            live.extend(journaled.iter().cloned());
            first = false;
        }
        // Jobs still journaled (e.g. uploading their log) are alive too.
        let state = ctx.state.clone();
        if let Ok(Ok(ids)) = tokio::task::spawn_blocking(move || state.journaled_jobs()).await {
            live.extend(ids);
        }
        match ctx.executor.sweep(&live).await {
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
