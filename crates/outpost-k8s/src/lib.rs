//! The Kubernetes backend of outpost (DESIGN.md §5): one pod per job that runs its steps to the
//! end by itself, even while the runner is away, and a runner that watches it, follows its logs
//! and reports. The only crate that depends on kube.
//!
//! # The pod
//! `outpost-<job id, lowercased, '_' → '-'>` in the configured namespace, `restartPolicy: Never`,
//! `activeDeadlineSeconds` from the job's timeout (else [`KubeConfig::default_timeout`]),
//! labelled `app.kubernetes.io/managed-by=outpost`, `outpost.dev/runner-id`,
//! `outpost.dev/job-id`, `outpost.dev/expires-at` and annotated `outpost.dev/version`. See
//! [`spec`] for its containers: an init container copies the step wrapper (`outpost-step`, from
//! the runner's image) into a shared `emptyDir`, another receives the checkout, services are
//! native sidecars with startup probes, and every step is a container whose entrypoint is the
//! wrapper, which waits for the previous step's marker, decides by the shared `when` rule, runs
//! `sh -c`, and writes its marker line, also as its termination message
//! (`/dev/termination-log`), which is how the runner learns how a step ended.
//!
//! # A job's run
//! 1. cache claims taken ([`caches`]); the pod created (an earlier attempt's removed first); its
//!    Secret (`<pod>-secrets`, the job's secrets, referenced by `secretKeyRef`, owned by the pod)
//!    created right after it; the checkout streamed into `outpost-receive` through `pods/attach`
//!    once that container runs;
//! 2. the steps, through the shared step loop (`StepDriver`): for each step the runner waits
//!    until its container runs, reports it started, follows its log (`follow`, `timestamps`,
//!    stripped before sending), and reads its end from the pod's status;
//! 3. the pod deleted and awaited gone, the caches released, the log cursor removed.
//!
//! Nothing polls: every wait is on the one shared watch of the runner's pods ([`watch`]), plus
//! the timers of the image pull grace and the unschedulable timeout.
//!
//! # Outcomes
//! From the termination message: success, failed with the exit code, timed out, cancelled,
//! skipped. `OOMKilled` → `oom`; a container waiting in `ErrImagePull`, `ImagePullBackOff` or
//! `InvalidImageName` past [`KubeConfig::image_pull_grace`] → `image_pull`; a pod unschedulable
//! past [`KubeConfig::unschedulable_timeout`] → `infrastructure` with the scheduler's message;
//! `DeadlineExceeded` → the job timed out; eviction, node loss, a failed init container →
//! `infrastructure`. On each of these the pod's events are written into the step's log, marked
//! `[outpost]`. A step whose container was stopped without its wrapper's marker leaves the later
//! steps' wrappers waiting for ever: they are reported skipped and the pod is removed.
//!
//! # Cancel, reattach, sweep
//! Cancel deletes the pod with [`KubeConfig::cancel_grace`]: the running step's wrapper gets
//! SIGTERM, forwards it and records `cancelled`; the run waits until the pod is gone.
//! [`Executor::running_jobs`] lists the runner's pods from the watch's store; `run(job,
//! Some(resume))` finds the pod again, recalls earlier steps' ends from their termination
//! messages, resumes the current step's log from the job's cursor file
//! (`<state_dir>/kubernetes/<job>.cursor`, see [`logs`]) and goes on. [`Executor::sweep`]
//! deletes the runner's pods, claims and secrets whose job is not live (asked right before each
//! deletion), cursor files of such jobs, and cache claims unused for
//! [`KubeConfig::cache_retention`].
//!
//! # API requests
//! Every request goes through a counting layer; [`KubeExecutor::api_requests`] is the total, and
//! each run logs the requests it made (target [`TIMING_TARGET`], field `api_requests`), which
//! `cargo xtask bench` can print.

mod backend;
mod caches;
mod config;
mod count;
mod error;
mod job;
pub mod logs;
pub mod names;
mod outcome;
mod quantity;
pub mod spec;
mod watch;
mod workspace;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret as KubeSecret};
use kube::Api;
use kube::api::{DeleteParams, ListParams};
use outpost_executor::{
    CancellationToken, EventSender, Executor, ExecutorError, JobId, JobOutcome, LiveJobs,
    PreparedJob, Resume, RunnerId, StepDriver, SweepReport,
};

pub use crate::backend::{KubeBackend, kubeconfig_override};
pub use crate::caches::IN_USE_SINCE;
pub use crate::config::{KubeConfig, PullPolicy, WorkspaceVolume};
pub use crate::error::K8sError;

use crate::count::RequestCount;
use crate::error::{backend_error, status_of};
use crate::names::{annotations, labels};
use crate::watch::PodWatch;

/// The backend's name at the hub.
pub const KIND: &str = "kubernetes";

/// The tracing target of the per-run summary (`api_requests`, `run_us`).
pub const TIMING_TARGET: &str = "outpost_k8s::timing";

/// What every job of this executor shares.
pub(crate) struct Shared {
    pub(crate) client: kube::Client,
    pub(crate) config: KubeConfig,
    pub(crate) namespace: String,
    pub(crate) watch: PodWatch,
    pub(crate) requests: RequestCount,
    /// `<state_dir>/kubernetes`: the log cursors.
    pub(crate) cursor_dir: PathBuf,
}

/// The Kubernetes backend.
pub struct KubeExecutor {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for KubeExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeExecutor")
            .field("namespace", &self.shared.namespace)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

/// The name of a job's cursor file: the id itself when it is a plain file name, else a hash.
pub(crate) fn cursor_name(job_id: &str) -> String {
    let plain = !job_id.is_empty()
        && !job_id.starts_with('.')
        && job_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if plain {
        job_id.to_owned()
    } else {
        names::hashed(job_id)
    }
}

impl KubeExecutor {
    /// Connects with `client_config` (from a kubeconfig or the pod's service account), checks
    /// that the namespace's pods can be listed, and starts the one watch of the runner's pods.
    /// `state_dir` is the backend's own directory (log cursors).
    pub async fn connect(
        config: KubeConfig,
        client_config: kube::Config,
        state_dir: PathBuf,
    ) -> Result<Self, ExecutorError> {
        config.validate()?;
        let namespace = config
            .namespace
            .clone()
            .unwrap_or_else(|| client_config.default_namespace.clone());
        let cluster = client_config.cluster_url.to_string();
        let requests = RequestCount::default();
        let counter = requests.clone();
        let count =
            tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
                counter.record();
                req
            });
        let client = kube::client::ClientBuilder::try_from(client_config)
            .map_err(|e| ExecutorError::Backend {
                backend: KIND,
                action: "connect".to_owned(),
                message: format!("cannot build a client for {cluster}: {e}"),
            })?
            .with_layer(&count)
            .build();
        let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        let probe = ListParams::default().labels(&managed_selector()).limit(1);
        pods.list(&probe)
            .await
            .map_err(|e| ExecutorError::Backend {
                backend: KIND,
                action: "connect".to_owned(),
                message: format!(
                    "cannot list pods in namespace {namespace} of {cluster}: {}; check the \
                 kubeconfig (--kubeconfig, KUBECONFIG) or the service account's Role",
                    error::api_message(&e)
                ),
            })?;
        let watch = PodWatch::start(pods, &namespace);
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                config,
                namespace,
                watch,
                requests,
                cursor_dir: state_dir,
            }),
        })
    }

    /// The API requests made so far (all jobs, the watch, sweeps).
    pub fn api_requests(&self) -> u64 {
        self.shared.requests.total()
    }

    pub fn namespace(&self) -> &str {
        &self.shared.namespace
    }

    pub fn client(&self) -> &kube::Client {
        &self.shared.client
    }

    pub fn config(&self) -> &KubeConfig {
        &self.shared.config
    }

    async fn run_job(
        &self,
        job: &PreparedJob,
        resume: Option<Resume>,
        events: &EventSender,
        cancel: &CancellationToken,
    ) -> Result<JobOutcome, ExecutorError> {
        let shared = &*self.shared;
        if job.runner_id.as_str().is_empty() {
            return Err(ExecutorError::Invalid {
                backend: KIND,
                job_id: job.job_id.clone(),
                message: "the job has no runner id to label its resources with".to_owned(),
            });
        }
        if let Some(step) = job.steps.iter().find(|s| job.step_image(s).is_none()) {
            return Err(ExecutorError::Invalid {
                backend: KIND,
                job_id: job.job_id.clone(),
                message: format!(
                    "step `{}` names no image and the pipeline has no default image",
                    step.name
                ),
            });
        }
        // The pod's deadline is the job's: with the runner's default when the job has none, so
        // that the driver's timeout message says the real limit.
        let mut limited = job.clone();
        limited.timeout.get_or_insert(shared.config.default_timeout);
        let job = &limited;
        let mut run = job::JobRun::new(shared, job, events, cancel);
        let started = match resume {
            None => run.start_fresh().await,
            Some(_) => run.start_resumed().await,
        };
        if let Err(e) = started {
            if !matches!(e, ExecutorError::EventsClosed { .. }) {
                let _ = run.finish(false).await;
            }
            return Err(e);
        }
        let deadline = job.timeout.map(|t| tokio::time::Instant::now() + t);
        let driver = StepDriver {
            job,
            events,
            cancel,
            job_deadline: deadline,
            resume,
        };
        let result = driver.drive(&mut run).await;
        match result {
            // The runner is going away: the pod goes on for the next process.
            Err(ExecutorError::EventsClosed { .. }) => result,
            Err(e) => {
                let _ = run.finish(cancel.is_cancelled()).await;
                Err(e)
            }
            Ok(outcome) => {
                run.finish(cancel.is_cancelled()).await?;
                Ok(outcome)
            }
        }
    }
}

fn managed_selector() -> String {
    format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE)
}

fn label<'a>(meta: &'a kube::api::ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

/// The job id a pod or claim belongs to: its annotation (exact), else its label.
fn job_of(meta: &kube::api::ObjectMeta) -> Option<String> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(annotations::JOB_ID).cloned())
        .or_else(|| label(meta, labels::JOB_ID).map(str::to_owned))
}

#[async_trait]
impl Executor for KubeExecutor {
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
        let requests = Arc::new(AtomicU64::new(0));
        let start = std::time::Instant::now();
        let result = count::counted(
            requests.clone(),
            self.run_job(&job, resume, &events, &cancel),
        )
        .await;
        tracing::debug!(
            target: TIMING_TARGET,
            job_id = %job.job_id,
            api_requests = requests.load(Ordering::Relaxed),
            run_us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX),
            "run"
        );
        result
    }

    async fn running_jobs(&self, runner_id: &RunnerId) -> Result<Vec<JobId>, ExecutorError> {
        self.shared.watch.ready().await;
        let runner = names::label_value(runner_id.as_str());
        let mut jobs: Vec<JobId> = self
            .shared
            .watch
            .all()
            .iter()
            .filter(|p| label(&p.metadata, labels::RUNNER_ID) == Some(runner.as_str()))
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| job_of(&p.metadata))
            .map(JobId::from)
            .collect();
        jobs.sort();
        jobs.dedup();
        Ok(jobs)
    }

    async fn sweep(
        &self,
        runner_id: &RunnerId,
        live: &dyn LiveJobs,
    ) -> Result<SweepReport, ExecutorError> {
        let shared = &*self.shared;
        let mut report = SweepReport::default();
        shared.watch.ready().await;
        let runner = names::label_value(runner_id.as_str());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());

        // Pods, from the watch's store.
        let pods: Api<Pod> = Api::namespaced(shared.client.clone(), &shared.namespace);
        let all_pods = shared.watch.all();
        for pod in &all_pods {
            let meta = &pod.metadata;
            if label(meta, labels::RUNNER_ID) != Some(runner.as_str())
                || meta.deletion_timestamp.is_some()
            {
                continue;
            }
            let (Some(name), Some(job)) = (meta.name.as_deref(), job_of(meta)) else {
                continue;
            };
            if live.is_live(&job) {
                continue;
            }
            let line = format!("pod {name} (job {job})");
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            };
            match pods.delete(name, &dp).await {
                Ok(_) => report.removed.push(line),
                Err(e) if status_of(&e) == Some(404) => {}
                Err(e) => report
                    .failed
                    .push(format!("{line}: {}", error::api_message(&e))),
            }
        }

        // Secrets (normally owned by their pod; these are what no pod owns any more).
        let secrets: Api<KubeSecret> = Api::namespaced(shared.client.clone(), &shared.namespace);
        let list = secrets
            .list(
                &ListParams::default()
                    .labels(&names::runner_selector(runner_id.as_str(), Some("secret"))),
            )
            .await
            .map_err(|e| backend_error("list the runner's secrets", &e))?;
        for s in &list.items {
            let meta = &s.metadata;
            let (Some(name), Some(job)) = (meta.name.as_deref(), job_of(meta)) else {
                continue;
            };
            if live.is_live(&job) {
                continue;
            }
            let line = format!("secret {name} (job {job})");
            match secrets.delete(name, &DeleteParams::default()).await {
                Ok(_) => report.removed.push(line),
                Err(e) if status_of(&e) == Some(404) => {}
                Err(e) => report
                    .failed
                    .push(format!("{line}: {}", error::api_message(&e))),
            }
        }

        // Workspace claims of jobs that are not live; cache claims (of any runner) past retention.
        let claims: Api<PersistentVolumeClaim> =
            Api::namespaced(shared.client.clone(), &shared.namespace);
        let list = claims
            .list(&ListParams::default().labels(&managed_selector()))
            .await
            .map_err(|e| backend_error("list the claims", &e))?;
        let has_pod = |job: &str| {
            all_pods
                .iter()
                .any(|p| job_of(&p.metadata).as_deref() == Some(job))
        };
        let retention = shared.config.cache_retention.as_secs();
        for c in &list.items {
            let meta = &c.metadata;
            let Some(name) = meta.name.as_deref() else {
                continue;
            };
            if meta.deletion_timestamp.is_some() {
                continue;
            }
            let kind = label(meta, labels::KIND);
            let line = if kind == Some("cache") {
                if !caches::expired(c, retention, now, |job| has_pod(job) || live.is_live(job)) {
                    continue;
                }
                format!("cache claim {name}")
            } else {
                if label(meta, labels::RUNNER_ID) != Some(runner.as_str()) {
                    continue;
                }
                let Some(job) = job_of(meta) else { continue };
                if live.is_live(&job) {
                    continue;
                }
                format!("claim {name} (job {job})")
            };
            match claims.delete(name, &DeleteParams::default()).await {
                Ok(_) => report.removed.push(line),
                Err(e) if status_of(&e) == Some(404) => {}
                Err(e) => report
                    .failed
                    .push(format!("{line}: {}", error::api_message(&e))),
            }
        }

        // Log cursors of jobs that are not live.
        if let Ok(mut dir) = tokio::fs::read_dir(&shared.cursor_dir).await {
            while let Ok(Some(entry)) = dir.next_entry().await {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(job) = name.strip_suffix(".cursor") else {
                    continue;
                };
                // A hashed name (an id that is no plain file name) cannot be asked about; its
                // job's end removes it.
                if job.starts_with("h-") || live.is_live(job) {
                    continue;
                }
                if tokio::fs::remove_file(entry.path()).await.is_ok() {
                    report.removed.push(format!("log cursor {name}"));
                }
            }
        }
        Ok(report)
    }
}
