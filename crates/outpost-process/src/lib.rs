//! The process backend of outpost (DESIGN.md §5): every step of a job is a host process
//! `sh -c <run>` in the job's workspace directory, in a process group of its own, so that a cancel
//! or a timeout can stop the whole process tree of the step.
//!
//! # Behaviour, in brief
//!
//! - **Environment.** A step sees a clean base ([`ProcessConfig::base_env`], by default the
//!   runner's own [`BASE_ENV_VARS`]: `PATH`, `HOME`, `LANG`, `TMPDIR`), then
//!   [`PreparedJob::step_env`] (job variables, step env, secrets), then `CI=true`, `OUTPOST=true`,
//!   `OUTPOST_JOB_ID`, `OUTPOST_STEP_NAME`, `OUTPOST_WORKSPACE` and one `OUTPOST_CACHE_<NAME>` per
//!   cache. Nothing else of the runner's environment (its hub token, for one) reaches a step.
//!   stdin is `/dev/null`; stdout and stderr are pipes read in chunks and reported in the order read.
//! - **Stopping a step** (cancel, step timeout, job timeout): `SIGTERM` to the step's process
//!   group, then after [`ProcessConfig::kill_grace`] `SIGKILL` to the group (a grace of zero sends
//!   `SIGKILL` at once). A stopped step is `cancelled` or `timed_out` whatever its exit code.
//! - **Draining.** A step ends when its main process has exited *and* both pipes reached EOF. When a
//!   background process keeps a pipe open after the main process exited, the step's group is
//!   killed (`SIGKILL`) after [`ProcessConfig::drain_timeout`]; the step's result is still the main
//!   process's exit status. If a pipe is still open `drain_timeout` after a `SIGKILL` (a process
//!   that left the group with `setsid` holds it), the backend stops reading it: later output of
//!   that process is lost, and it is the only way output can be lost.
//! - **Leftovers.** Background processes a step leaves in its group without holding its output
//!   (`server >log 2>&1 &`) live on for the later steps of the job, and are killed (`SIGKILL` to
//!   every step's group) when the job ends, however it ends. Each step's main process is kept as an
//!   unreaped zombie until then, so its process group id cannot be reused by an unrelated process
//!   before the backend signals the group. Processes that leave their group (`setsid`,
//!   daemonizing) escape this; only a container backend contains them.
//! - **Signals.** A main process killed by a signal is reported with exit code `128 + signo` and a
//!   `script` failure naming the signal. A host OOM kill is a `SIGKILL` like any other and cannot be
//!   told apart, so it is reported as `script` too, never `oom`.
//! - **Services** are refused: a job with services ends before any step (every step skipped) with
//!   result `error` and a `config` failure, because it is the pipeline that does not fit this
//!   backend, not the backend that broke. **Images** are ignored. **Caches** are host directories
//!   `<cache_root>/<cache_scope>/<name>`, exported as `OUTPOST_CACHE_<NAME>` (uppercased, every
//!   character other than a letter or digit turned into `_`); the cache's container `path` is not
//!   used.
//! - **A step that cannot be started** (shell missing, workspace removed by an earlier step) is
//!   reported as a failed step with class `infrastructure`, and the job goes on as after any failure.
//! - **Steps** are driven by the loop every backend shares ([`StepDriver`]): `when` rules, the
//!   job timeout, a cancel between steps.
//! - **Resume** is unsupported: steps are children of the runner process and nothing records them
//!   across a restart. They do not necessarily die with the runner (each step has its own process
//!   group, so a terminal's `SIGINT` does not reach them), so a runner that crashes may leave steps
//!   running; [`Executor::running_jobs`] is always empty.
//! - **Sweep** removes per-job workspace directories directly under [`ProcessConfig::work_root`]
//!   whose job is not live (the runner's [`LiveJobs`] is asked right before each removal, so a
//!   job that started after the sweep listed the work root keeps its tree). The backend marks the workspaces it uses there with a sibling file
//!   `<dir>.outpost-process-job` holding the job id (beside the directory, not inside it, so a
//!   step's `git clean` cannot remove it and a checkout never shows it); a directory without such a
//!   marker is never touched. Workspaces outside `work_root` are neither marked nor swept. A job's
//!   workspace is not removed when the job ends: the sweep collects it.
//!
//! Only Linux, Android and FreeBSD are supported: waiting for a step's exit without reaping it
//! needs `waitid(WNOWAIT)`.

#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
compile_error!("outpost-process needs waitid(2) with WNOWAIT: Linux, Android or FreeBSD");

mod backend;
mod env;
mod group;
mod step;
mod sweep;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use outpost_executor::{
    CancellationToken, EventSender, ExecEvent, Executor, ExecutorError, JobId, JobOutcome,
    LiveJobs, PreparedJob, Resume, RunnerId, StepDriver, StepEnd, StepOutcome, StepRunner,
    StepSpec, SweepReport,
};
use outpost_protocol::{Failure, FailureClass, JobResult};

pub use crate::backend::{ProcessBackend, ProcessSection};
pub use crate::env::{BASE_ENV_VARS, base_env_from_runner, cache_env_name};
pub use crate::sweep::MARKER_SUFFIX;

use crate::group::JobGroups;
use crate::step::StepContext;

/// The backend's name as registered with the hub.
pub const KIND: &str = "process";

/// Default of [`ProcessConfig::kill_grace`].
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(10);
/// Default of [`ProcessConfig::drain_timeout`].
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Default of [`ProcessConfig::shell`].
pub const DEFAULT_SHELL: &str = "sh";

/// Settings of the process backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessConfig {
    /// The directory under which the runner creates per-job workspaces. Workspaces directly under
    /// it are marked and removed by [`Executor::sweep`] once their job is no longer live.
    pub work_root: PathBuf,
    /// Caches live in `<cache_root>/<cache_scope>/<name>`.
    pub cache_root: PathBuf,
    /// Time between `SIGTERM` and `SIGKILL` when a step is stopped; zero sends `SIGKILL` at once.
    pub kill_grace: Duration,
    /// How long output is still read after a step's main process exited while a background
    /// process holds its stdout or stderr, before the step's process group is killed.
    pub drain_timeout: Duration,
    /// The shell that runs each step's script as `<shell> -c <run>`.
    pub shell: String,
    /// The environment every step starts from, before the job's own variables.
    pub base_env: BTreeMap<String, String>,
}

impl ProcessConfig {
    /// The documented defaults: grace [`DEFAULT_KILL_GRACE`], drain [`DEFAULT_DRAIN_TIMEOUT`],
    /// shell [`DEFAULT_SHELL`], and a base environment taken from the runner's own environment
    /// for the variables in [`BASE_ENV_VARS`] only ([`base_env_from_runner`]).
    pub fn new(work_root: impl Into<PathBuf>, cache_root: impl Into<PathBuf>) -> Self {
        Self {
            work_root: work_root.into(),
            cache_root: cache_root.into(),
            kill_grace: DEFAULT_KILL_GRACE,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            shell: DEFAULT_SHELL.to_owned(),
            base_env: base_env_from_runner(),
        }
    }
}

/// The process backend. Cheap to share: wrap it in an `Arc` and run many jobs at once.
#[derive(Debug)]
pub struct ProcessExecutor {
    config: ProcessConfig,
}

impl ProcessExecutor {
    pub fn new(config: ProcessConfig) -> Self {
        Self { config }
    }

    pub fn config(&self) -> &ProcessConfig {
        &self.config
    }
}

#[async_trait]
impl Executor for ProcessExecutor {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn run(
        &self,
        job: PreparedJob,
        resume: Option<Resume>,
        events: EventSender,
        cancel: CancellationToken,
    ) -> Result<JobOutcome, ExecutorError> {
        if resume.is_some() {
            return Err(ExecutorError::ResumeUnsupported {
                backend: KIND,
                job_id: job.job_id,
            });
        }
        let started = tokio::time::Instant::now();

        if let Some(failure) = unsupported(&job) {
            tracing::info!(job_id = %job.job_id, message = %failure.message, "job refused");
            for step in &job.steps {
                send(
                    &events,
                    &job.job_id,
                    finished(step.index, StepOutcome::skipped()),
                )
                .await?;
            }
            return Ok(JobOutcome {
                result: JobResult::Error,
                failure: Some(failure),
            });
        }

        self.prepare_workspace(&job).await?;
        let caches = self.prepare_caches(&job).await?;

        let mut steps = ProcessSteps {
            config: &self.config,
            job: &job,
            caches: &caches,
            events: &events,
            cancel: &cancel,
            groups: JobGroups::new(job.job_id.as_str()),
        };
        let driver = StepDriver {
            job: &job,
            events: &events,
            cancel: &cancel,
            job_deadline: job.timeout.map(|t| started + t),
            resume: None,
        };
        let result = driver.drive(&mut steps).await;
        steps.groups.finish().await;
        result
    }

    async fn running_jobs(&self, _runner_id: &RunnerId) -> Result<Vec<JobId>, ExecutorError> {
        Ok(Vec::new())
    }

    /// The work root belongs to this runner alone, so `runner_id` is not needed to tell its
    /// workspaces from another runner's.
    async fn sweep(
        &self,
        _runner_id: &RunnerId,
        live: &dyn LiveJobs,
    ) -> Result<SweepReport, ExecutorError> {
        let joined = |e: tokio::task::JoinError| ExecutorError::Backend {
            backend: KIND,
            action: format!("sweep of {}", self.config.work_root.display()),
            message: e.to_string(),
        };
        let work_root = self.config.work_root.clone();
        let (marked, mut report) = tokio::task::spawn_blocking(move || sweep::marked(&work_root))
            .await
            .map_err(joined)?;
        for workspace in marked {
            // Asked now, not when the list was made: a job that started since keeps its tree.
            if live.is_live(&workspace.job_id) {
                continue;
            }
            let removed = tokio::task::spawn_blocking(move || sweep::remove(&workspace))
                .await
                .map_err(joined)?;
            report.removed.extend(removed.removed);
            report.failed.extend(removed.failed);
        }
        Ok(report)
    }
}

/// The steps of one job, run by the shared step loop.
struct ProcessSteps<'a> {
    config: &'a ProcessConfig,
    job: &'a PreparedJob,
    caches: &'a BTreeMap<String, String>,
    events: &'a EventSender,
    cancel: &'a CancellationToken,
    groups: JobGroups,
}

impl StepRunner for ProcessSteps<'_> {
    async fn run_step(
        &mut self,
        step: &StepSpec,
        job_deadline: Option<tokio::time::Instant>,
    ) -> Result<StepEnd, ExecutorError> {
        let ctx = StepContext {
            job: self.job,
            step,
            config: self.config,
            caches: self.caches,
            job_deadline,
            events: self.events,
            cancel: self.cancel,
        };
        step::run(ctx, &mut self.groups).await
    }

    /// Never called: `run` refuses a resume before any step.
    async fn resume_step(
        &mut self,
        _step: &StepSpec,
        _resume: Resume,
        _job_deadline: Option<tokio::time::Instant>,
    ) -> Result<StepEnd, ExecutorError> {
        Err(self.resume_unsupported())
    }

    /// Never called, as `resume_step`.
    async fn earlier_outcome(&mut self, _step: &StepSpec) -> Result<StepOutcome, ExecutorError> {
        Err(self.resume_unsupported())
    }
}

impl ProcessSteps<'_> {
    fn resume_unsupported(&self) -> ExecutorError {
        ExecutorError::ResumeUnsupported {
            backend: KIND,
            job_id: self.job.job_id.clone(),
        }
    }
}

impl ProcessExecutor {
    /// Marks the workspace for the sweep (when it lies under `work_root`), then creates it.
    async fn prepare_workspace(&self, job: &PreparedJob) -> Result<(), ExecutorError> {
        let workspace_error = |source| ExecutorError::Workspace {
            job_id: job.job_id.clone(),
            path: job.workspace.clone(),
            source,
        };
        let work_root = self.config.work_root.clone();
        let workspace = job.workspace.clone();
        let job_id = job.job_id.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            // The marker first: a crash between the two leaves a marker without a directory,
            // which the sweep clears, never a directory nobody will remove.
            sweep::mark(&work_root, &workspace, job_id.as_str())?;
            std::fs::create_dir_all(&workspace)
        })
        .await
        .map_err(|e| workspace_error(std::io::Error::other(e.to_string())))?
        .map_err(workspace_error)
    }

    /// Creates the job's cache directories and returns their environment variables.
    async fn prepare_caches(
        &self,
        job: &PreparedJob,
    ) -> Result<BTreeMap<String, String>, ExecutorError> {
        let mut vars = BTreeMap::new();
        for cache in &job.caches {
            let dir = self
                .config
                .cache_root
                .join(&job.cache_scope)
                .join(&cache.name);
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(|source| ExecutorError::Workspace {
                    job_id: job.job_id.clone(),
                    path: dir.clone(),
                    source,
                })?;
            vars.insert(
                cache_env_name(&cache.name),
                dir.to_string_lossy().into_owned(),
            );
        }
        Ok(vars)
    }
}

/// Why this backend cannot run `job` at all, as a `config` failure.
fn unsupported(job: &PreparedJob) -> Option<Failure> {
    if !job.services.is_empty() {
        let names: Vec<&str> = job.services.iter().map(|s| s.name.as_str()).collect();
        return Some(Failure::new(
            FailureClass::Config,
            format!(
                "the process backend cannot run services ({}); use the docker backend",
                names.join(", ")
            ),
        ));
    }
    if !is_path_component(&job.cache_scope) && !job.caches.is_empty() {
        return Some(Failure::new(
            FailureClass::Config,
            format!(
                "cache scope `{}` is not a valid directory name",
                job.cache_scope
            ),
        ));
    }
    let mut vars = HashSet::new();
    for cache in &job.caches {
        if !is_path_component(&cache.name) {
            return Some(Failure::new(
                FailureClass::Config,
                format!("cache name `{}` is not a valid directory name", cache.name),
            ));
        }
        let var = cache_env_name(&cache.name);
        if !vars.insert(var.clone()) {
            return Some(Failure::new(
                FailureClass::Config,
                format!(
                    "caches `{}` and another one both map to the variable {var}",
                    cache.name
                ),
            ));
        }
    }
    None
}

/// A single normal path component: no separator, not `.` or `..`, not empty.
fn is_path_component(name: &str) -> bool {
    let mut components = Path::new(name).components();
    matches!(
        (components.next(), components.next()),
        (Some(std::path::Component::Normal(_)), None)
    ) && !name.contains('/')
        && !name.contains('\0')
}

fn finished(index: u32, outcome: StepOutcome) -> ExecEvent {
    ExecEvent::StepFinished {
        index,
        at: SystemTime::now(),
        outcome,
    }
}

/// Sends one event, waiting for room (backpressure).
async fn send(events: &EventSender, job_id: &JobId, event: ExecEvent) -> Result<(), ExecutorError> {
    events
        .send(event)
        .await
        .map_err(|_| ExecutorError::EventsClosed {
            job_id: job_id.clone(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, expected: bool) {
        assert_eq!(is_path_component(name), expected, "{name:?}");
    }

    #[test]
    fn path_components() {
        check("cargo", true);
        check("org-1_pipe.x", true);
        check("", false);
        check(".", false);
        check("..", false);
        check("a/b", false);
        check("/abs", false);
        check("a\0b", false);
    }
}
