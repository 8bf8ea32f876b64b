//! One job's life in the runner, from assignment (or, after a restart, from its journal) to the
//! hub's acknowledgement of its completion:
//!
//! journal → load the pipeline (checkout) → resolve secrets → prepare → open the log (masker →
//! spool, progress file) and start its uploader → run the backend, turning its events into log
//! bytes and step updates → finish the log → queue the completion → wait until every log byte
//! and the completion are acknowledged → remove the job's files.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use outpost_client::HubClient;
use outpost_executor::{
    CacheSpec, CancellationToken, ExecEvent, Executor, ExecutorError, JobOutcome, PreparedJob,
    Resume, ServiceSpec, StepSpec, event_channel,
};
use outpost_logship::{Masker, Uploader, UploaderConfig, UploaderHandle};
use outpost_protocol::{
    CompleteRequest, Failure, FailureClass, JobAssignment, JobResult, StepState, StepUpdate,
    Timestamp,
};
use tokio::sync::OwnedSemaphorePermit;

use crate::config::SchedulerConfig;
use crate::handle::Shared;
use crate::leases::{JobControl, Leases};
use crate::log::{HubLogTarget, LogWriter, truncate_spool};
use crate::metrics::{LogStats, Metrics};
use crate::outbox::{Item, Outbox};
use crate::secrets::SecretProviders;
use crate::source::{self, LoadedPipeline, SourceFailure};
use crate::state::{JournalRecord, JournaledPipeline, ProgressRecord, StateDir, is_safe_job_id};

/// What every job task shares.
pub(crate) struct Ctx {
    pub config: SchedulerConfig,
    pub state: StateDir,
    pub client: HubClient,
    pub executor: Arc<dyn Executor>,
    pub outbox: Outbox,
    pub leases: Leases,
    pub metrics: Metrics,
    pub logs: LogStats,
    pub shared: Arc<Shared>,
    pub secrets: SecretProviders,
}

/// Marks a job as running (handle and gauge) while it lives.
struct RunningGuard {
    ctx: Arc<Ctx>,
    job_id: String,
}

impl RunningGuard {
    fn new(ctx: &Arc<Ctx>, job_id: &str) -> Self {
        ctx.shared.add_running(job_id);
        ctx.metrics.running.inc();
        Self {
            ctx: Arc::clone(ctx),
            job_id: job_id.to_owned(),
        }
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.ctx.shared.remove_running(&self.job_id);
        self.ctx.metrics.running.dec();
    }
}

/// Runs blocking work off the async threads; a panic in it becomes an I/O error.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(std::io::Error::other)?
}

/// A job's log while the job runs: the writer and its uploader.
struct OpenLog {
    writer: LogWriter,
    uploader: UploaderHandle,
}

impl Ctx {
    fn log_failed(&self, job_id: &str, what: &str, error: &dyn std::fmt::Display) {
        tracing::error!(%job_id, %error, "cannot {what}");
    }

    /// Opens the job's log (resuming the spool if there is one) and starts its uploader.
    async fn open_log(
        &self,
        job_id: &str,
        masker: Masker,
        with_progress: bool,
    ) -> Result<OpenLog, String> {
        let spool = self.state.spool(job_id);
        let progress = with_progress.then(|| self.state.progress(job_id));
        let cap = self.config.log_cap_bytes;
        let writer = tokio::task::spawn_blocking(move || {
            LogWriter::open(&spool, progress.as_deref(), cap, masker)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        let reader = writer.reader();
        let spooled = reader.watch();
        let target = Arc::new(HubLogTarget {
            client: self.client.clone(),
            job_id: job_id.to_owned(),
            fatal: self.shared.fatal.clone(),
        });
        let uploader = Uploader::spawn(
            reader,
            target,
            UploaderConfig::default(),
            self.shared.abandon.child_token(),
        );
        self.outbox.set_log_gate(job_id, uploader.committed_watch());
        self.logs.track(job_id, spooled, uploader.committed_watch());
        Ok(OpenLog { writer, uploader })
    }

    async fn queue(&self, job_id: &str, item: Item) -> Option<u64> {
        match self.outbox.push(job_id, item).await {
            Ok(seq) => Some(seq),
            Err(e) => {
                self.log_failed(job_id, "queue a message to the hub in the outbox", &e);
                None
            }
        }
    }

    /// Removes the job's files once nothing more will be sent for it.
    async fn forget(&self, job_id: &str) {
        self.leases.remove(job_id);
        self.logs.forget(job_id);
        self.outbox.clear_log_gate(job_id);
        let state = self.state.clone();
        let id = job_id.to_owned();
        if let Err(e) = blocking(move || state.remove_job(&id)).await {
            self.log_failed(job_id, "remove the job's files", &e);
        }
    }
}

/// A newly assigned job, from journal to acknowledged completion.
pub(crate) async fn run_assigned(
    ctx: Arc<Ctx>,
    runner_id: String,
    assignment: JobAssignment,
    slot: OwnedSemaphorePermit,
) {
    let job_id = assignment.job_id.clone();
    let control = JobControl::new(ctx.shared.cancel_now.child_token());
    ctx.leases
        .insert(&job_id, &assignment.lease_id, Arc::clone(&control));
    if !is_safe_job_id(&job_id) {
        tracing::error!(job_id = ?job_id, "the hub sent a job id that is not safe as a file name");
        let failure = Failure::new(
            FailureClass::Infrastructure,
            "the runner cannot store a job with this id",
        );
        let request = CompleteRequest {
            lease_id: assignment.lease_id.clone(),
            result: JobResult::Error,
            failure: Some(failure),
            log_bytes: 0,
        };
        drop(slot);
        if let Some(seq) = ctx.queue(&job_id, Item::Complete(request)).await {
            ctx.metrics.job_ended(JobResult::Error);
            tokio::select! {
                () = ctx.outbox.wait_delivered(seq) => {}
                () = ctx.shared.abandon.cancelled() => {}
            }
        }
        ctx.leases.remove(&job_id);
        return;
    }

    // Files of an earlier assignment of the same job (its lease expired before it ran, and the
    // hub handed it out again) must not leak into this one.
    if !ctx.shared.running().contains(&job_id) {
        let state = ctx.state.clone();
        let id = job_id.clone();
        let stale = blocking(move || {
            if state.job_dir(&id).exists() {
                state.remove_job(&id)
            } else {
                Ok(())
            }
        });
        if let Err(e) = stale.await {
            ctx.log_failed(&job_id, "remove the files of an earlier assignment", &e);
        }
    }
    let running = RunningGuard::new(&ctx, &job_id);
    let mut record = JournalRecord {
        runner_id: runner_id.clone(),
        assignment: assignment.clone(),
        pipeline: None,
    };
    let journal = {
        let record = record.clone();
        let state = ctx.state.clone();
        blocking(move || record.write(&state)).await
    };
    if let Err(e) = journal {
        ctx.log_failed(&job_id, "journal the job", &e);
    }

    let prepared = prepare(&ctx, &assignment, &runner_id, &control.cancel).await;
    let masker = match &prepared {
        Ok(p) => p.masker.fresh(),
        Err(_) => Masker::none(),
    };
    if let Ok(p) = &prepared {
        record.pipeline = Some(JournaledPipeline {
            source_name: p.loaded.source_name.clone(),
            text: p.loaded.text.clone(),
            cache_scope: p.loaded.cache_scope.clone(),
        });
        let state = ctx.state.clone();
        if let Err(e) = blocking(move || record.write(&state)).await {
            ctx.log_failed(&job_id, "journal the job", &e);
        }
    }
    let log = match ctx.open_log(&job_id, masker, true).await {
        Ok(log) => log,
        Err(e) => {
            ctx.log_failed(&job_id, "open the job's log", &e);
            let failure = Failure::new(
                FailureClass::Infrastructure,
                format!("the runner cannot write the job's log: {e}"),
            );
            finish_without_log(&ctx, &job_id, &assignment.lease_id, failure, running, slot).await;
            return;
        }
    };
    let OpenLog {
        mut writer,
        uploader,
    } = log;
    let outcome = match prepared {
        Err(SourceFailure { failure, log }) => {
            if let Err(e) = writer.line(&log) {
                ctx.log_failed(&job_id, "write to the job's log", &e);
            }
            let result = if failure.class == FailureClass::Cancelled {
                JobResult::Cancelled
            } else {
                JobResult::Error
            };
            JobOutcome {
                result,
                failure: Some(failure),
            }
        }
        Ok(p) => match execute(&ctx, &mut writer, p.job, None, None, &control).await {
            Ok(outcome) => outcome,
            Err(e) => backend_failed(&ctx, &job_id, &mut writer, &e),
        },
    };
    finish(
        &ctx,
        &job_id,
        &assignment.lease_id,
        writer,
        uploader,
        outcome,
        &control,
        running,
        Some(slot),
    )
    .await;
}

/// A job prepared to run.
struct Prepared {
    job: PreparedJob,
    masker: Masker,
    loaded: LoadedPipeline,
}

/// Loads the pipeline, resolves the secrets and builds the prepared job.
async fn prepare(
    ctx: &Arc<Ctx>,
    assignment: &JobAssignment,
    runner_id: &str,
    cancel: &CancellationToken,
) -> Result<Prepared, SourceFailure> {
    let workspace = ctx.state.workspace(&assignment.job_id);
    if assignment.spec.source.is_none() {
        // Inline pipelines run in an empty workspace (checkouts create their own).
        let dir = workspace.clone();
        if let Err(e) = blocking(move || crate::state::create_private_dir(&dir)).await {
            return Err(source_failure(
                FailureClass::Infrastructure,
                format!("cannot create the workspace {}: {e}", workspace.display()),
            ));
        }
    }
    let loaded = source::load(&assignment.spec, &ctx.config.git, &workspace, cancel).await?;
    build(ctx, assignment, runner_id, loaded, workspace).await
}

fn source_failure(class: FailureClass, message: String) -> SourceFailure {
    SourceFailure {
        log: format!("error: {message}\n"),
        failure: Failure::new(class, message),
    }
}

/// Resolves the secrets of a loaded pipeline and builds the prepared job and its masker.
async fn build(
    ctx: &Arc<Ctx>,
    assignment: &JobAssignment,
    runner_id: &str,
    loaded: LoadedPipeline,
    workspace: PathBuf,
) -> Result<Prepared, SourceFailure> {
    let names = loaded.pipeline.secrets.clone();
    let providers = ctx.secrets.clone();
    let secrets = tokio::task::spawn_blocking(move || providers.resolve(&names))
        .await
        .map_err(|e| source_failure(FailureClass::Infrastructure, e.to_string()))?
        .map_err(|e| source_failure(FailureClass::Config, e.0))?;
    let pairs: Vec<(String, Vec<u8>)> = secrets
        .iter()
        .map(|s| (s.name.clone(), s.value.as_bytes().to_vec()))
        .collect();
    let masker =
        Masker::new(&pairs).map_err(|e| source_failure(FailureClass::Config, e.to_string()))?;
    let pipeline = &loaded.pipeline;
    let mut env: BTreeMap<String, String> = pipeline.variables.clone();
    env.extend(
        assignment
            .variables
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    let job = PreparedJob {
        job_id: assignment.job_id.clone(),
        runner_id: runner_id.to_owned(),
        cache_scope: loaded.cache_scope.clone(),
        workspace,
        container_workspace: ctx.config.container_workspace.clone(),
        default_image: pipeline.image.clone(),
        env,
        secrets,
        services: pipeline
            .services
            .iter()
            .map(|s| ServiceSpec {
                name: s.name.clone(),
                image: s.image.clone(),
                env: s.env.clone(),
                command: s.command.clone(),
            })
            .collect(),
        caches: pipeline
            .caches
            .iter()
            .map(|c| CacheSpec {
                name: c.name.clone(),
                path: c.path.clone(),
            })
            .collect(),
        steps: pipeline
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| StepSpec {
                index: u32::try_from(i).unwrap_or(u32::MAX),
                name: s.name.clone(),
                image: s.image.clone(),
                run: s.run.clone(),
                env: s.env.clone(),
                timeout: s.timeout,
                when: match s.when {
                    outpost_pipeline::When::OnSuccess => outpost_executor::When::OnSuccess,
                    outpost_pipeline::When::OnFailure => outpost_executor::When::OnFailure,
                    outpost_pipeline::When::Always => outpost_executor::When::Always,
                },
            })
            .collect(),
        timeout: pipeline.timeout,
    };
    Ok(Prepared {
        job,
        masker,
        loaded,
    })
}

/// Runs the backend and turns its events into log bytes and step updates. `resume` continues a
/// job a previous runner process started; `skip_header` names the step whose header (and
/// `running` update) the previous process already wrote.
async fn execute(
    ctx: &Arc<Ctx>,
    writer: &mut LogWriter,
    job: PreparedJob,
    resume: Option<Resume>,
    skip_header: Option<u32>,
    control: &Arc<JobControl>,
) -> Result<JobOutcome, ExecutorError> {
    let job_id = job.job_id.clone();
    let names: HashMap<u32, String> = job
        .steps
        .iter()
        .map(|s| (s.index, s.name.clone()))
        .collect();
    let mut steps = StepTracker {
        names,
        started: HashMap::new(),
        resumed: skip_header,
        log_error: false,
    };
    if let Some(r) = resume {
        writer.resume_step(r.step_index, r.output_bytes);
    }
    let (tx, mut rx) = event_channel();
    let run = ctx.executor.run(job, resume, tx, control.cancel.clone());
    tokio::pin!(run);
    loop {
        tokio::select! {
            biased;
            event = rx.recv() => match event {
                Some(event) => steps.handle(ctx, &job_id, writer, event).await,
                None => break (&mut run).await,
            },
            // Output paused: let the masker release what cannot be the start of a secret.
            () = tokio::time::sleep(OUTPUT_PAUSE), if writer.held_back() > 0 => {
                let released = writer.release();
                steps.log_result(&job_id, released);
            }
            result = &mut run => {
                // Events the backend sent before returning are still in the channel.
                while let Ok(event) = rx.try_recv() {
                    steps.handle(ctx, &job_id, writer, event).await;
                }
                break result;
            }
        }
    }
}

/// How long output must pause before the masker's held-back tail is released.
const OUTPUT_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);

/// What the event loop knows about the steps.
struct StepTracker {
    names: HashMap<u32, String>,
    /// When each step started and where its log section begins.
    started: HashMap<u32, (SystemTime, Option<u64>)>,
    /// The step a resumed job was in: its header is in the spool already.
    resumed: Option<u32>,
    log_error: bool,
}

impl StepTracker {
    fn name(&self, index: u32) -> String {
        self.names
            .get(&index)
            .cloned()
            .unwrap_or_else(|| format!("step {index}"))
    }

    fn log_result(&mut self, job_id: &str, result: Result<(), outpost_logship::LogshipError>) {
        if let Err(e) = result
            && !self.log_error
        {
            self.log_error = true;
            tracing::error!(%job_id, error = %e, "cannot write to the job's log; output is lost");
        }
    }

    async fn handle(
        &mut self,
        ctx: &Arc<Ctx>,
        job_id: &str,
        writer: &mut LogWriter,
        event: ExecEvent,
    ) {
        match event {
            ExecEvent::StepStarted { index, at } => {
                let name = self.name(index);
                if self.resumed.take() == Some(index) {
                    self.started.insert(index, (at, None));
                    return;
                }
                let offset = match writer.start_step(index, &name) {
                    Ok(offset) => Some(offset),
                    Err(e) => {
                        self.log_result(job_id, Err(e));
                        None
                    }
                };
                self.started.insert(index, (at, offset));
                let update = StepUpdate {
                    index,
                    name,
                    state: StepState::Running,
                    exit_code: None,
                    started_at: Some(Timestamp::from(at)),
                    finished_at: None,
                    failure: None,
                    log_offset: offset,
                };
                ctx.queue(job_id, Item::Step(update)).await;
            }
            ExecEvent::Output { index, data, .. } => {
                let result = writer.output(index, &data);
                self.log_result(job_id, result);
            }
            ExecEvent::StepFinished { index, at, outcome } => {
                let result = writer.end_step(index);
                self.log_result(job_id, result);
                let (started_at, log_offset) = match self.started.get(&index) {
                    Some((at, offset)) => (Some(Timestamp::from(*at)), *offset),
                    None => (None, None),
                };
                let update = StepUpdate {
                    index,
                    name: self.name(index),
                    state: outcome.state,
                    exit_code: outcome.exit_code,
                    started_at,
                    finished_at: Some(Timestamp::from(at)),
                    failure: outcome.failure.map(|f| Failure {
                        message: writer.mask_str(&f.message),
                        class: f.class,
                    }),
                    log_offset,
                };
                ctx.queue(job_id, Item::Step(update)).await;
            }
        }
    }
}

/// The outcome of a job whose backend failed.
fn backend_failed(
    ctx: &Arc<Ctx>,
    job_id: &str,
    writer: &mut LogWriter,
    error: &ExecutorError,
) -> JobOutcome {
    let message = writer.mask_str(&format!(
        "the {} backend failed: {error}",
        ctx.executor.kind()
    ));
    tracing::error!(%job_id, %message, "job failed in the backend");
    if let Err(e) = writer.line(&format!("error: {message}")) {
        ctx.log_failed(job_id, "write to the job's log", &e);
    }
    JobOutcome {
        result: JobResult::Error,
        failure: Some(Failure::new(FailureClass::Infrastructure, message)),
    }
}

/// Ends a job: finishes its log, queues its completion, frees its slot, then waits until the
/// hub has every log byte and the completion, and removes the job's files.
#[allow(clippy::too_many_arguments)]
async fn finish(
    ctx: &Arc<Ctx>,
    job_id: &str,
    lease_id: &str,
    writer: LogWriter,
    uploader: UploaderHandle,
    outcome: JobOutcome,
    control: &Arc<JobControl>,
    running: RunningGuard,
    slot: Option<OwnedSemaphorePermit>,
) {
    let failure = outcome.failure.map(|f| Failure {
        message: writer.mask_str(&f.message),
        class: f.class,
    });
    let mut writer = writer;
    let finished = tokio::task::spawn_blocking(move || writer.finish()).await;
    let log_bytes = match finished {
        Ok(Ok(len)) => len,
        Ok(Err(e)) => {
            ctx.log_failed(job_id, "finish the job's log", &e);
            uploader.spooled()
        }
        Err(e) => {
            ctx.log_failed(job_id, "finish the job's log", &e);
            uploader.spooled()
        }
    };
    if control.is_lost() {
        // The hub gave the job up (it may even run elsewhere by now): send nothing more.
        tracing::warn!(%job_id, "the job's lease was lost; its result and log are not reported");
        drop(uploader);
        drop(running);
        drop(slot);
        ctx.forget(job_id).await;
        return;
    }
    let request = CompleteRequest {
        lease_id: lease_id.to_owned(),
        result: outcome.result,
        failure,
        log_bytes,
    };
    tracing::info!(%job_id, result = %outcome.result.state(), log_bytes, "job ended");
    let seq = ctx.queue(job_id, Item::Complete(request)).await;
    ctx.metrics.job_ended(outcome.result);
    drop(running);
    drop(slot);
    if let Err(e) = uploader.finish(log_bytes).await {
        tracing::warn!(%job_id, error = %e, "the job's log upload stopped before the end");
    }
    let Some(seq) = seq else { return };
    tokio::select! {
        () = ctx.outbox.wait_delivered(seq) => {}
        () = ctx.shared.abandon.cancelled() => return,
    }
    ctx.forget(job_id).await;
}

/// Ends a job that has no log (the spool could not be opened).
async fn finish_without_log(
    ctx: &Arc<Ctx>,
    job_id: &str,
    lease_id: &str,
    failure: Failure,
    running: RunningGuard,
    slot: OwnedSemaphorePermit,
) {
    let request = CompleteRequest {
        lease_id: lease_id.to_owned(),
        result: JobResult::Error,
        failure: Some(failure),
        log_bytes: 0,
    };
    let seq = ctx.queue(job_id, Item::Complete(request)).await;
    ctx.metrics.job_ended(JobResult::Error);
    drop(running);
    drop(slot);
    if let Some(seq) = seq {
        tokio::select! {
            () = ctx.outbox.wait_delivered(seq) => {}
            () = ctx.shared.abandon.cancelled() => return,
        }
    }
    ctx.forget(job_id).await;
}

/// A job found in the journal after a restart. `backend_has` says whether the backend still
/// runs it; `slot` is a free slot for it if one was left.
pub(crate) async fn recover(
    ctx: Arc<Ctx>,
    job_id: String,
    backend_has: bool,
    slot: Option<OwnedSemaphorePermit>,
) {
    let record = {
        let state = ctx.state.clone();
        let id = job_id.clone();
        blocking(move || JournalRecord::read(&state, &id)).await
    };
    let record = match record {
        Ok(record) => record,
        Err(e) => {
            ctx.log_failed(&job_id, "read the job's journal; forgetting the job", &e);
            ctx.forget(&job_id).await;
            return;
        }
    };
    let lease_id = record.assignment.lease_id.clone();
    let control = JobControl::new(ctx.shared.cancel_now.child_token());
    // Renews the lease at once: the hub extends it if it is still ours.
    ctx.leases.insert(&job_id, &lease_id, Arc::clone(&control));

    if let Some((seq, request)) = ctx.outbox.pending_completion(&job_id) {
        tracing::info!(%job_id, "resuming the upload of an ended job's log");
        drop(slot);
        match ctx.open_log(&job_id, Masker::none(), false).await {
            Ok(log) => {
                if let Err(e) = log.uploader.finish(request.log_bytes).await {
                    tracing::warn!(%job_id, error = %e, "the job's log upload stopped before the end");
                }
            }
            Err(e) => ctx.log_failed(&job_id, "open the job's log", &e),
        }
        tokio::select! {
            () = ctx.outbox.wait_delivered(seq) => {}
            () = ctx.shared.abandon.cancelled() => return,
        }
        ctx.forget(&job_id).await;
        return;
    }

    let running = RunningGuard::new(&ctx, &job_id);
    let last = {
        let path = ctx.state.progress(&job_id);
        blocking(move || ProgressRecord::read_last(&path)).await
    };
    let last = last.unwrap_or_else(|e| {
        ctx.log_failed(&job_id, "read the job's progress file", &e);
        None
    });
    let kind = ctx.executor.kind();
    let mut reason =
        format!("the runner restarted and the {kind} backend could not resume the job");

    if backend_has && let Some(journaled) = &record.pipeline {
        let spool = ctx.state.spool(&job_id);
        let keep = last.map_or(0, |l| l.spool_len);
        if let Err(e) = blocking(move || match truncate_spool(&spool, keep) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        })
        .await
        {
            ctx.log_failed(&job_id, "cut the job's spool back", &e);
        }
        let rebuilt = match source::parse(
            &journaled.source_name,
            journaled.text.clone(),
            journaled.cache_scope.clone(),
        ) {
            Ok(loaded) => {
                build(
                    &ctx,
                    &record.assignment,
                    &record.runner_id,
                    loaded,
                    ctx.state.workspace(&job_id),
                )
                .await
            }
            Err(e) => Err(e),
        };
        match rebuilt {
            Ok(prepared) => {
                tracing::info!(%job_id, "reattaching to a job the backend still runs");
                match ctx.open_log(&job_id, prepared.masker, true).await {
                    Ok(OpenLog {
                        mut writer,
                        uploader,
                    }) => {
                        let resume = Resume {
                            step_index: last.map_or(0, |l| l.step_index),
                            output_bytes: last.map_or(0, |l| l.raw_bytes),
                        };
                        // Without a record no step header was written: nothing to skip.
                        let skip_header = last.map(|l| l.step_index);
                        let result = execute(
                            &ctx,
                            &mut writer,
                            prepared.job,
                            Some(resume),
                            skip_header,
                            &control,
                        )
                        .await;
                        let outcome = match result {
                            Err(ExecutorError::ResumeUnsupported { .. }) => {
                                not_resumed(&ctx, &job_id, &mut writer, &reason)
                            }
                            Err(e) => backend_failed(&ctx, &job_id, &mut writer, &e),
                            Ok(outcome) => outcome,
                        };
                        finish(
                            &ctx, &job_id, &lease_id, writer, uploader, outcome, &control, running,
                            slot,
                        )
                        .await;
                        return;
                    }
                    Err(e) => {
                        ctx.log_failed(&job_id, "open the job's log", &e);
                        control.cancel.cancel();
                        reason =
                            format!("the runner restarted and cannot write the job's log: {e}");
                    }
                }
            }
            Err(failure) => {
                reason = format!(
                    "the runner restarted and cannot resume the job: {}",
                    failure.failure.message
                );
            }
        }
    }

    // The backend cannot resume the job: upload what was spooled, and report it as an error.
    match ctx.open_log(&job_id, Masker::none(), false).await {
        Ok(OpenLog {
            mut writer,
            uploader,
        }) => {
            let outcome = not_resumed(&ctx, &job_id, &mut writer, &reason);
            finish(
                &ctx, &job_id, &lease_id, writer, uploader, outcome, &control, running, slot,
            )
            .await;
        }
        Err(e) => {
            ctx.log_failed(&job_id, "open the job's log", &e);
            let slot = match slot {
                Some(slot) => slot,
                None => {
                    drop(running);
                    return;
                }
            };
            finish_without_log(
                &ctx,
                &job_id,
                &lease_id,
                Failure::new(FailureClass::Infrastructure, reason),
                running,
                slot,
            )
            .await;
        }
    }
}

/// The outcome of a journaled job the backend could not take over.
fn not_resumed(ctx: &Arc<Ctx>, job_id: &str, writer: &mut LogWriter, reason: &str) -> JobOutcome {
    tracing::warn!(%job_id, %reason, "reporting a job the runner could not resume");
    if let Err(e) = writer.line(&format!("── {reason} ──")) {
        ctx.log_failed(job_id, "write to the job's log", &e);
    }
    JobOutcome {
        result: JobResult::Error,
        failure: Some(Failure::new(FailureClass::Infrastructure, reason)),
    }
}
