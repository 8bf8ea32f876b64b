//! One job's life in the runner, as one state machine with one owner, [`JobRun`]:
//!
//! ```text
//!   assigned ─┐                       ┌─► Work::Execute ─► running ─┐
//!             ├─► JobRun::prepare ────┤                             ├─► finishing ─► delivering ─┬─► delivered
//!  recovered ─┘   (journal, pipeline, ├─► Work::Report ─────────────┘   (completion   (log and   ├─► abandoned
//!                  secrets, resume)   └─► Work::Deliver ────────────────► queued)      outbox)   └─► lost
//! ```
//!
//! A newly assigned job and a job found in the journal after a restart build the same
//! [`JobRun`] and go through the same stages; each stage is a method that consumes the one
//! before. The ending (completion queued, slot freed, log and completion delivered, files
//! removed, registry entry dropped) runs in one place, [`Delivering::deliver`].

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use outpost_client::HubClient;
use outpost_executor::{
    CacheSpec, ExecEvent, Executor, ExecutorError, JobOutcome, PreparedJob, Resume, ServiceSpec,
    StepSpec, event_channel,
};
use outpost_logship::{JobLog, LogshipError, Masker, Uploader, UploaderConfig, UploaderHandle};
use outpost_protocol::text::clean_message;
use outpost_protocol::{
    CompleteRequest, Failure, FailureClass, JobAssignment, JobId, JobResult, LeaseId, RunnerId,
    StepState, StepUpdate, Timestamp,
};
use tokio::sync::OwnedSemaphorePermit;

use crate::config::SchedulerConfig;
use crate::handle::Shared;
use crate::log::HubLogTarget;
use crate::metrics::Metrics;
use crate::outbox::{Item, Outbox};
use crate::registry::{Entry, JobRegistry, LogLengths};
use crate::secrets::SecretProviders;
use crate::source::{self, LoadedPipeline, SourceFailure};
use crate::state::{JournalRecord, JournaledPipeline, StateDir, is_safe_job_id};

/// What every job shares.
pub(crate) struct Ctx {
    pub config: SchedulerConfig,
    pub state: StateDir,
    pub client: HubClient,
    pub executor: Arc<dyn Executor>,
    pub outbox: Outbox,
    pub metrics: Metrics,
    pub shared: Arc<Shared>,
    pub secrets: SecretProviders,
}

impl Ctx {
    fn registry(&self) -> &JobRegistry {
        &self.shared.registry
    }
}

/// How a job came to this runner.
pub(crate) enum Origin {
    /// The hub just handed it to this runner.
    Assigned(JobAssignment),
    /// A previous runner process journaled it; `backend_has` says whether the backend still
    /// runs it.
    Recovered {
        record: Box<JournalRecord>,
        backend_has: bool,
    },
}

/// What a prepared job does next.
enum Next {
    /// Open the log and do the work.
    Run(Work),
    /// The completion was queued by a previous runner process: deliver its log and it.
    Deliver { seq: u64, log_bytes: u64 },
}

/// The work of a job whose log is open.
enum Work {
    /// Run the steps on the backend (from the start, or resuming where a previous runner
    /// process was).
    Execute {
        job: Box<PreparedJob>,
        masker: Masker,
        resumed: bool,
    },
    /// Nothing runs: report this outcome, with this line (verbatim) in the log.
    Report { outcome: JobOutcome, line: String },
}

/// A job this runner holds: the one owner of its per-job state. Built registered (see
/// [`JobRegistry`]), it leaves the registry in [`Delivering::deliver`] or when dropped.
pub(crate) struct JobRun {
    ctx: Arc<Ctx>,
    entry: Arc<Entry>,
    runner_id: RunnerId,
    slot: Option<OwnedSemaphorePermit>,
    origin: Option<Origin>,
}

impl Drop for JobRun {
    fn drop(&mut self) {
        // Whatever path the job took (even an abandoned one), it is no longer live here.
        self.ctx.registry().set_running(&self.entry, false);
        self.ctx.registry().remove(&self.entry);
    }
}

impl JobRun {
    /// Registers a job. When the registry still holds an earlier assignment of the same job,
    /// that one is told its lease is lost and this waits until it is gone.
    pub(crate) async fn register(
        ctx: &Arc<Ctx>,
        runner_id: RunnerId,
        origin: Origin,
        slot: Option<OwnedSemaphorePermit>,
    ) -> JobRun {
        let (job_id, lease_id) = match &origin {
            Origin::Assigned(a) => (a.job_id.clone(), a.lease_id.clone()),
            Origin::Recovered { record, .. } => (
                record.assignment.job_id.clone(),
                record.assignment.lease_id.clone(),
            ),
        };
        let entry = loop {
            match ctx
                .registry()
                .register(&job_id, &lease_id, &ctx.shared.cancel_now)
            {
                Ok(entry) => break entry,
                Err(old) => {
                    tracing::warn!(%job_id, "the hub handed out a job this runner still holds; stopping the earlier assignment first");
                    ctx.registry().wait_gone(&old).await;
                }
            }
        };
        // Running (for the drain, `/readyz` and the gauge) from now until its steps are over:
        // a checkout is part of the run.
        ctx.registry().set_running(&entry, true);
        JobRun {
            ctx: Arc::clone(ctx),
            entry,
            runner_id,
            slot,
            origin: Some(origin),
        }
    }

    fn job_id(&self) -> &JobId {
        &self.entry.job_id
    }

    fn log_failed(&self, what: &str, error: &dyn std::fmt::Display) {
        tracing::error!(job_id = %self.job_id(), %error, "cannot {what}");
    }

    /// Drives the job through every stage to its end.
    pub(crate) async fn drive(mut self) {
        let next = self.prepare().await;
        let delivering = match next {
            Next::Deliver { seq, log_bytes } => self.redeliver(seq, log_bytes).await,
            Next::Run(work) => {
                let (running, work) = self.start(work).await;
                running.execute(work).await.finish().await
            }
        };
        delivering.deliver().await;
    }

    /// Journals the job, loads its pipeline, resolves its secrets, and decides what it does.
    async fn prepare(&mut self) -> Next {
        let origin = self.origin.take().expect("a job is prepared once");
        match origin {
            Origin::Assigned(assignment) => self.prepare_assigned(assignment).await,
            Origin::Recovered {
                record,
                backend_has,
            } => self.prepare_recovered(*record, backend_has).await,
        }
    }

    async fn prepare_assigned(&mut self, assignment: JobAssignment) -> Next {
        let ctx = Arc::clone(&self.ctx);
        if !is_safe_job_id(assignment.job_id.as_str()) {
            tracing::error!(job_id = ?assignment.job_id, "the hub sent a job id that is not safe as a file name");
            return Next::Run(report(
                FailureClass::Infrastructure,
                "the runner cannot store a job with this id".to_owned(),
            ));
        }
        // Files of an earlier assignment of the same job (its lease expired before it ran, and
        // the hub handed it out again) must not leak into this one.
        let stale = {
            let state = ctx.state.clone();
            let id = self.job_id().clone();
            blocking(move || state.remove_job(&id)).await
        };
        if let Err(e) = stale {
            self.log_failed("remove the files of an earlier assignment", &e);
        }
        let mut record = JournalRecord {
            runner_id: self.runner_id.clone(),
            assignment,
            pipeline: None,
        };
        self.journal(&record).await;
        let loaded = self.load(&record.assignment).await;
        let prepared = match loaded {
            Ok(loaded) => self.build(&record.assignment, loaded).await,
            Err(e) => Err(e),
        };
        match prepared {
            Ok(prepared) => {
                record.pipeline = Some(JournaledPipeline {
                    source_name: prepared.loaded.source_name.clone(),
                    text: prepared.loaded.text.clone(),
                    cache_scope: prepared.loaded.cache_scope.clone(),
                });
                self.journal(&record).await;
                Next::Run(Work::Execute {
                    job: Box::new(prepared.job),
                    masker: prepared.masker,
                    resumed: false,
                })
            }
            Err(SourceFailure { failure, log }) => {
                let result = if failure.class == FailureClass::Cancelled {
                    JobResult::Cancelled
                } else {
                    JobResult::Error
                };
                Next::Run(Work::Report {
                    outcome: JobOutcome {
                        result,
                        failure: Some(failure),
                    },
                    line: log,
                })
            }
        }
    }

    async fn prepare_recovered(&mut self, record: JournalRecord, backend_has: bool) -> Next {
        let ctx = Arc::clone(&self.ctx);
        if let Some((seq, request)) = ctx.outbox.pending_completion(self.job_id()) {
            tracing::info!(job_id = %self.job_id(), "resuming the upload of an ended job's log");
            return Next::Deliver {
                seq,
                log_bytes: request.log_bytes,
            };
        }
        let kind = ctx.executor.kind();
        let not_resumed = |reason: String| {
            tracing::warn!(job_id = %self.job_id(), %reason, "reporting a job the runner could not resume");
            Next::Run(report(FailureClass::Infrastructure, reason))
        };
        let Some(journaled) = record.pipeline.as_ref().filter(|_| backend_has) else {
            return not_resumed(format!(
                "the runner restarted and the {kind} backend could not resume the job"
            ));
        };
        let rebuilt = match source::parse(
            &journaled.source_name,
            journaled.text.clone(),
            journaled.cache_scope.clone(),
        ) {
            Ok(loaded) => self.build(&record.assignment, loaded).await,
            Err(e) => Err(e),
        };
        match rebuilt {
            Ok(prepared) => {
                tracing::info!(job_id = %self.job_id(), "reattaching to a job the backend still runs");
                Next::Run(Work::Execute {
                    job: Box::new(prepared.job),
                    masker: prepared.masker,
                    resumed: true,
                })
            }
            Err(failure) => not_resumed(format!(
                "the runner restarted and cannot resume the job: {}",
                failure.failure.message
            )),
        }
    }

    async fn journal(&self, record: &JournalRecord) {
        let record = record.clone();
        let state = self.ctx.state.clone();
        if let Err(e) = blocking(move || record.write(&state)).await {
            self.log_failed("journal the job", &e);
        }
    }

    /// Loads the pipeline: inline, or checked out into the job's workspace.
    async fn load(&self, assignment: &JobAssignment) -> Result<LoadedPipeline, SourceFailure> {
        let workspace = self.ctx.state.workspace(self.job_id());
        if let outpost_protocol::JobSpec::Inline { .. } = assignment.spec {
            // Inline pipelines run in an empty workspace (checkouts create their own).
            let dir = workspace.clone();
            if let Err(e) = blocking(move || crate::state::create_private_dir(&dir)).await {
                return Err(source_failure(
                    FailureClass::Infrastructure,
                    format!("cannot create the workspace {}: {e}", workspace.display()),
                ));
            }
        }
        source::load(
            &assignment.spec,
            &self.ctx.config.git,
            &workspace,
            &self.entry.cancel,
        )
        .await
    }

    /// Resolves the secrets of a loaded pipeline and builds the prepared job and its masker.
    async fn build(
        &self,
        assignment: &JobAssignment,
        loaded: LoadedPipeline,
    ) -> Result<Prepared, SourceFailure> {
        let workspace = self.ctx.state.workspace(self.job_id());
        let names = loaded.pipeline.secrets.clone();
        let providers = self.ctx.secrets.clone();
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
        let job = prepared_job(
            &self.ctx.config,
            assignment,
            &self.runner_id,
            &loaded,
            workspace,
            secrets,
        );
        Ok(Prepared {
            job,
            masker,
            loaded,
        })
    }

    /// Opens the job's log and starts its uploader. A job that resumes takes the spool over
    /// where its progress records end. A log that cannot be opened turns the work into an
    /// `infrastructure` error.
    async fn start(self, work: Work) -> (Running, Work) {
        let (masker, progress, reattach) = match &work {
            Work::Execute {
                masker, resumed, ..
            } => (masker.fresh(), true, *resumed),
            Work::Report { .. } => (Masker::none(), false, false),
        };
        if !is_safe_job_id(self.job_id().as_str()) {
            return (
                Running {
                    run: self,
                    log: None,
                },
                work,
            );
        }
        match self.open_log(masker, progress, reattach).await {
            Ok(log) => (
                Running {
                    run: self,
                    log: Some(log),
                },
                work,
            ),
            Err(e) => {
                self.log_failed("open the job's log", &e);
                let work = Work::Report {
                    outcome: JobOutcome {
                        result: JobResult::Error,
                        failure: Some(Failure::new(
                            FailureClass::Infrastructure,
                            format!("the runner cannot write the job's log: {e}"),
                        )),
                    },
                    line: String::new(),
                };
                (
                    Running {
                        run: self,
                        log: None,
                    },
                    work,
                )
            }
        }
    }

    async fn open_log(
        &self,
        masker: Masker,
        progress: bool,
        reattach: bool,
    ) -> Result<OpenLog, LogshipError> {
        let spool = self.ctx.state.spool(self.job_id());
        let progress_path = self.ctx.state.progress(self.job_id());
        let cap = self.ctx.config.log_cap_bytes;
        let opened = tokio::task::spawn_blocking(move || {
            if reattach {
                let (log, last) = JobLog::reattach(&spool, &progress_path, cap, masker)?;
                let resume = Resume {
                    step_index: last.map_or(0, |l| l.step_index),
                    output_bytes: last.map_or(0, |l| l.raw_bytes),
                };
                // Without a record no step header was written: nothing to skip.
                Ok((log, Some((resume, last.map(|l| l.step_index)))))
            } else if progress {
                JobLog::with_progress(&spool, &progress_path, cap, masker).map(|l| (l, None))
            } else {
                JobLog::open(&spool, cap, masker).map(|l| (l, None))
            }
        })
        .await
        .map_err(|e| LogshipError::Task {
            path: self.ctx.state.spool(self.job_id()),
            message: e.to_string(),
        })??;
        let (writer, resume) = opened;
        let reader = writer.reader();
        let spooled = reader.watch();
        let target = Arc::new(HubLogTarget::with_fatal(
            self.ctx.client.clone(),
            self.job_id().clone(),
            self.entry.lease_id.clone(),
            self.ctx.shared.fatal.clone(),
        ));
        let uploader = Uploader::spawn(
            reader,
            target,
            UploaderConfig::default(),
            self.ctx.shared.abandon.child_token(),
        );
        self.ctx.registry().set_log(
            &self.entry,
            LogLengths {
                spooled,
                committed: uploader.committed_watch(),
            },
        );
        Ok(OpenLog {
            writer,
            uploader,
            resume: resume.map(|(r, _)| r),
            skip_header: resume.and_then(|(_, s)| s),
        })
    }

    /// A job whose completion a previous runner process queued: upload the rest of its log.
    async fn redeliver(mut self, seq: u64, log_bytes: u64) -> Delivering {
        self.ctx.registry().set_running(&self.entry, false);
        drop(self.slot.take());
        let uploader = match self.open_log(Masker::none(), false, false).await {
            Ok(log) => Some(log.uploader),
            Err(e) => {
                self.log_failed("open the job's log", &e);
                None
            }
        };
        Delivering {
            run: self,
            seq: Some(seq),
            uploader,
            log_bytes,
        }
    }
}

/// A job prepared to run.
struct Prepared {
    job: PreparedJob,
    masker: Masker,
    loaded: LoadedPipeline,
}

/// A job's log while the job runs: the writer, its uploader, and where a resumed job goes on.
struct OpenLog {
    writer: JobLog,
    uploader: UploaderHandle,
    resume: Option<Resume>,
    /// The step whose header (and `running` update) the previous runner process wrote.
    skip_header: Option<u32>,
}

/// Stage: the log is open (when it could be); the backend runs the steps, or nothing runs.
struct Running {
    run: JobRun,
    log: Option<OpenLog>,
}

impl Running {
    async fn execute(mut self, work: Work) -> Finishing {
        let outcome = match work {
            Work::Execute { job, resumed, .. } => {
                let resume = if resumed {
                    self.log.as_ref().and_then(|l| l.resume)
                } else {
                    None
                };
                let result = self.events(*job, resume).await;
                match result {
                    Ok(outcome) => outcome,
                    Err(ExecutorError::ResumeUnsupported { .. }) => {
                        let kind = self.run.ctx.executor.kind();
                        self.not_resumed(format!(
                            "the runner restarted and the {kind} backend could not resume the job"
                        ))
                    }
                    Err(e) => self.backend_failed(&e),
                }
            }
            Work::Report { outcome, line } => {
                self.line(&line);
                outcome
            }
        };
        Finishing {
            run: self.run,
            log: self.log,
            outcome,
        }
    }

    /// Runs the backend and turns its events into log bytes and step updates.
    async fn events(
        &mut self,
        job: PreparedJob,
        resume: Option<Resume>,
    ) -> Result<JobOutcome, ExecutorError> {
        let ctx = Arc::clone(&self.run.ctx);
        let job_id = job.job_id.clone();
        let mut steps = StepTracker {
            names: job
                .steps
                .iter()
                .map(|s| (s.index, s.name.clone()))
                .collect(),
            started: HashMap::new(),
            resumed: self.log.as_ref().and_then(|l| l.skip_header),
            log_error: false,
            lease_id: self.run.entry.lease_id.clone(),
        };
        let (tx, mut rx) = event_channel();
        let run = ctx
            .executor
            .run(job, resume, tx, self.run.entry.cancel.clone());
        tokio::pin!(run);
        let Some(log) = self.log.as_mut() else {
            // No log: run without writing (events are still drained so the backend never
            // blocks).
            loop {
                tokio::select! {
                    event = rx.recv() => if event.is_none() { return run.await },
                    result = &mut run => return result,
                }
            }
        };
        let writer = &mut log.writer;
        loop {
            tokio::select! {
                biased;
                event = rx.recv() => match event {
                    Some(event) => steps.handle(&ctx, &job_id, writer, event).await,
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
                        steps.handle(&ctx, &job_id, writer, event).await;
                    }
                    break result;
                }
            }
        }
    }

    fn line(&mut self, text: &str) {
        let text = text.trim_end_matches('\n');
        if text.is_empty() {
            return;
        }
        if let Some(log) = &mut self.log
            && let Err(e) = log.writer.write_line(text)
        {
            self.run.log_failed("write to the job's log", &e);
        }
    }

    fn mask(&self, text: &str) -> String {
        match &self.log {
            Some(log) => log.writer.mask_str(text),
            None => text.to_owned(),
        }
    }

    /// The outcome of a job whose backend failed.
    fn backend_failed(&mut self, error: &ExecutorError) -> JobOutcome {
        let message = self.mask(&format!(
            "the {} backend failed: {error}",
            self.run.ctx.executor.kind()
        ));
        tracing::error!(job_id = %self.run.job_id(), %message, "job failed in the backend");
        self.line(&format!("error: {message}"));
        JobOutcome {
            result: JobResult::Error,
            failure: Some(Failure::new(FailureClass::Infrastructure, message)),
        }
    }

    /// The outcome of a journaled job the backend could not take over.
    fn not_resumed(&mut self, reason: String) -> JobOutcome {
        tracing::warn!(job_id = %self.run.job_id(), %reason, "reporting a job the runner could not resume");
        let (outcome, line) = error_outcome(FailureClass::Infrastructure, reason);
        self.line(&line);
        outcome
    }
}

/// Stage: the steps are over; the log is finished and the completion queued.
struct Finishing {
    run: JobRun,
    log: Option<OpenLog>,
    outcome: JobOutcome,
}

impl Finishing {
    async fn finish(self) -> Delivering {
        let Finishing {
            mut run,
            log,
            outcome,
        } = self;
        let ctx = Arc::clone(&run.ctx);
        ctx.registry().set_running(&run.entry, false);
        let (log_bytes, uploader, failure) = match log {
            Some(mut log) => {
                let failure = outcome.failure.map(|f| Failure {
                    message: log.writer.mask_str(&f.message),
                    class: f.class,
                });
                let log_bytes = match log.writer.finish().await {
                    Ok(len) => len,
                    Err(e) => {
                        run.log_failed("finish the job's log", &e);
                        log.uploader.spooled()
                    }
                };
                (log_bytes, Some(log.uploader), failure)
            }
            None => (0, None, outcome.failure),
        };
        // The hub refuses control characters and huge messages (a tool's raw stderr may have
        // both): send them escaped and cut, never lose the completion over them.
        let failure = failure.map(|f| Failure {
            message: clean_message(&f.message).into_owned(),
            class: f.class,
        });
        if run.entry.is_lost() {
            // The hub gave the job up (it may even run elsewhere by now): send nothing more.
            tracing::warn!(job_id = %run.job_id(), "the job's lease was lost; its result and log are not reported");
            drop(run.slot.take());
            return Delivering {
                run,
                seq: None,
                uploader: None,
                log_bytes,
            };
        }
        let request = CompleteRequest {
            lease_id: run.entry.lease_id.clone(),
            result: outcome.result,
            failure,
            log_bytes,
        };
        tracing::info!(job_id = %run.job_id(), result = %outcome.result.state(), log_bytes, "job ended");
        let seq = ctx
            .outbox
            .push(run.job_id(), &run.entry.lease_id, Item::Complete(request))
            .await;
        ctx.metrics.job_ended(outcome.result);
        // The slot is free as soon as the steps are over; delivery goes on beside new jobs.
        drop(run.slot.take());
        let seq = match seq {
            Ok(seq) => Some(seq),
            Err(e) => {
                run.log_failed("queue the completion in the outbox", &e);
                None
            }
        };
        Delivering {
            run,
            seq,
            uploader,
            log_bytes,
        }
    }
}

/// Stage: the completion is queued (`seq`); the log goes on uploading until the hub has it.
struct Delivering {
    run: JobRun,
    seq: Option<u64>,
    uploader: Option<UploaderHandle>,
    log_bytes: u64,
}

impl Delivering {
    /// The one ending: waits until the hub has every log byte and the completion, then removes
    /// the job's files and leaves the registry. On the third drain request it stops waiting
    /// (abandoned): the files stay for the next start. A job whose lease was lost (`seq`
    /// `None`) is forgotten at once.
    async fn deliver(self) {
        let Delivering {
            run,
            seq,
            uploader,
            log_bytes,
        } = self;
        let ctx = Arc::clone(&run.ctx);
        if let Some(uploader) = uploader
            && let Err(e) = uploader.finish(log_bytes).await
        {
            tracing::warn!(job_id = %run.job_id(), error = %e, "the job's log upload stopped before the end");
        }
        if let Some(seq) = seq {
            tokio::select! {
                () = ctx.outbox.wait_delivered(seq) => {}
                () = ctx.shared.abandon.cancelled() => {
                    tracing::warn!(job_id = %run.job_id(), "stopping without the hub's acknowledgement; the job's files stay for the next start");
                    return;
                }
            }
        }
        if is_safe_job_id(run.job_id().as_str()) {
            let state = ctx.state.clone();
            let id = run.job_id().clone();
            if let Err(e) = blocking(move || state.remove_job(&id)).await {
                run.log_failed("remove the job's files", &e);
            }
        }
        // Dropping `run` leaves the registry.
    }
}

/// Work that runs nothing and reports an `error` of `class`, with the reason in the log.
fn report(class: FailureClass, reason: String) -> Work {
    let (outcome, line) = error_outcome(class, reason);
    Work::Report { outcome, line }
}

/// An `error` outcome of `class`, and the log line that says why.
fn error_outcome(class: FailureClass, reason: String) -> (JobOutcome, String) {
    let line = format!("── {reason} ──");
    let outcome = JobOutcome {
        result: JobResult::Error,
        failure: Some(Failure::new(class, reason)),
    };
    (outcome, line)
}

/// Runs blocking work off the async threads; a panic in it becomes an I/O error.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(std::io::Error::other)?
}

fn source_failure(class: FailureClass, message: String) -> SourceFailure {
    SourceFailure {
        log: format!("error: {message}\n"),
        failure: Failure::new(class, message),
    }
}

/// The prepared job of a loaded pipeline.
fn prepared_job(
    config: &SchedulerConfig,
    assignment: &JobAssignment,
    runner_id: &RunnerId,
    loaded: &LoadedPipeline,
    workspace: PathBuf,
    secrets: Vec<outpost_executor::Secret>,
) -> PreparedJob {
    let pipeline = &loaded.pipeline;
    let mut env: BTreeMap<String, String> = pipeline.variables.clone();
    env.extend(
        assignment
            .variables
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    PreparedJob {
        job_id: assignment.job_id.clone(),
        runner_id: runner_id.clone(),
        cache_scope: loaded.cache_scope.clone(),
        workspace,
        container_workspace: config.container_workspace.clone(),
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
    /// The job's lease: step updates carry it.
    lease_id: LeaseId,
}

impl StepTracker {
    fn name(&self, index: u32) -> String {
        self.names
            .get(&index)
            .cloned()
            .unwrap_or_else(|| format!("step {index}"))
    }

    fn log_result(&mut self, job_id: &JobId, result: Result<(), LogshipError>) {
        if let Err(e) = result
            && !self.log_error
        {
            self.log_error = true;
            tracing::error!(%job_id, error = %e, "cannot write to the job's log; output is lost");
        }
    }

    async fn queue(&self, ctx: &Ctx, job_id: &JobId, update: StepUpdate) {
        if let Err(e) = ctx
            .outbox
            .push(job_id, &self.lease_id, Item::Step(update))
            .await
        {
            tracing::error!(%job_id, error = %e, "cannot queue a step update in the outbox");
        }
    }

    async fn handle(&mut self, ctx: &Ctx, job_id: &JobId, writer: &mut JobLog, event: ExecEvent) {
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
                self.queue(ctx, job_id, update).await;
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
                        message: clean_message(&writer.mask_str(&f.message)).into_owned(),
                        class: f.class,
                    }),
                    log_offset,
                };
                self.queue(ctx, job_id, update).await;
            }
        }
    }
}
