//! The Docker backend of outpost (DESIGN.md §5): every job gets a bridge network, a workspace
//! volume, its service containers and cache volumes, and one container per step, on a local or
//! remote Docker engine reached through bollard.
//!
//! # How a job runs
//! - **Setup**, side by side: the job's network (the runner's spare network if one is ready or
//!   being made, else a new one, `outpost-net-<unique>`: see below), the volume
//!   `outpost-<job>-workspace` and the cache volumes `outpost-cache-<scope>-<name>` (reused by
//!   later jobs of the same scope and cache name; creating an existing volume returns it
//!   unchanged). A workspace volume that names another attempt (`outpost.attempt`) was left by an
//!   earlier run of the same job: what that run left is removed first, so a step never sees an
//!   earlier attempt's files.
//! - **Before the first step that runs**: the services start on the network with their name as
//!   alias, and the checkout (`job.workspace`, a host directory) is copied into the workspace
//!   volume by uploading a tar archive into the step's container once it is created and before
//!   it starts (it mounts the volume; no binary of its image is needed), or, with
//!   [`DockerConfig::helper_image`] set, into a helper container of that image that is created
//!   but never started. An empty checkout (an inline pipeline) is not copied at all. A failure
//!   there (an image that cannot be pulled, say) is that step's failure.
//! - **Each step**: a container `outpost-<job>-step-<n>` running `sh -c <run>` with no TTY and an
//!   init process, working directory `job.container_workspace`, attached before it is started so
//!   no byte is lost; exit code from wait, `OOMKilled` from inspect (asked only after a non-zero
//!   exit; `oom` then). Images per the pull policy: `always` pulls before the first create (once
//!   per job and image); otherwise the image is looked for only when the engine answers a create
//!   with 404, so a present image costs no call. Cancel and timeouts stop the container (signal,
//!   [`DockerConfig::stop_grace`], kill); it is removed with the rest at cleanup. The steps are
//!   driven by the loop every backend shares ([`outpost_executor::StepDriver`]).
//! - **Cleanup**: when `run` has returned its outcome, a task owned by the executor first makes
//!   the runner's spare network for its next job, then removes the job's containers, network and
//!   workspace volume (caches stay). [`DockerExecutor::wait_for_cleanups`] awaits these tasks,
//!   [`Executor::shutdown`] too and then removes the spares: call one before the runtime shuts
//!   down, or a cleanup may be cut short (the next sweep then finishes it). While a job's cleanup
//!   is under way, `running_jobs` does not list the job, a sweep leaves its resources to the
//!   cleanup, and a new run of the same job waits for it. When `run` fails with `EventsClosed`
//!   (the runner stopped reading), nothing is cleaned up, as when its future is dropped.
//!
//! # One network per job, made ahead
//! Creating a bridge network is most of the fixed cost of a job on the engine (a bridge device
//! and its iptables rules, a tenth of a second or more). So after a job, the backend creates one
//! spare network for the runner's next job, and the next job takes it. Every job still gets a
//! network that no other job used, so jobs are as isolated as with a network made on the spot.
//! A network's labels cannot change, so networks carry no `outpost.job-id`: the job's workspace
//! volume names its network (`outpost.network`). A sweep keeps the networks this process holds
//! (spares, and those of runs in progress) and those that a live job's volume names, and removes
//! the rest.
//!
//! # Where the time goes
//! Each run logs, when it returns, the time of each phase (setup, network, volumes, image,
//! workspace copy, services, create, attach, start, output, delivery, exit) as a `debug` event
//! of target [`TIMING_TARGET`] (message [`RUN_EVENT`], fields in microseconds, `…_us`); each
//! cleanup logs its own ([`CLEANUP_EVENT`], `cleanup_us`). `cargo xtask bench` reads them from
//! runner-docker's log for its breakdown.
//!
//! # Containers outlive the runner process
//! Dropping the future of `run` (a runner killed or restarting) stops nothing: the step keeps
//! running, so that a new process can take it over with `run(job, Some(Resume { .. }))`. The
//! resumed step's output is replayed from the container's logs and the first `output_bytes` raw
//! bytes are skipped. This needs a log driver that keeps logs readable (`json-file`, the
//! default, or `local`; or dual logging); with rotation (`max-size`), bytes rotated out before
//! the takeover are lost. Within one stream the order is exact; the interleaving of stdout with
//! stderr in the replay is the log driver's and can differ from the live one for writes close in
//! time, which shifts where the skip falls for steps writing both streams at once. Resources of
//! jobs that never come back are removed by [`Executor::sweep`].
//!
//! # Secrets
//! Secrets reach steps as environment variables of the step container only: never in labels,
//! never in an image, never in a service or helper container. `docker inspect` of a step container
//! shows its environment to whoever can talk to the engine (who can also read any file or memory
//! of the container); a file on a tmpfs would avoid inspect but not that, and would need a
//! wrapper script in every image, so environment variables it is.
//!
//! # Labels
//! Everything carries `outpost.managed=true`, `outpost.runner-id`, `outpost.expires-at` (Unix
//! seconds: the job's deadline, else creation plus [`DockerConfig::default_expiry`]) and
//! `outpost.kind` (`step`, `service`, `helper` for the workspace copier, `workspace`, `cache`,
//! `network`), and everything but networks `outpost.job-id`; step containers
//! `outpost.step-index`, service containers `outpost.service`, the workspace volume
//! `outpost.network` and `outpost.attempt`, cache volumes `outpost.cache-scope` and
//! `outpost.cache-name`. Cache volumes carry the job that created them, but a sweep removes them
//! by last use only (tracked by the backend, see [`DockerConfig::state_dir`]), never by job.
//!
//! # After a restart
//! `run` with `Resume { step_index, output_bytes }` reuses the job's network, workspace volume and
//! services, sends no `StepStarted` for the resumed step (the previous process did), and rebuilds
//! the outcomes of the earlier steps, which it does not report again, from their exited containers
//! for the `when` rules: exit code and `OOMKilled` are exact; a step that failed before its
//! container existed (an image pull) reads as `infrastructure`, and an earlier timed-out step as
//! a `script` failure. The job deadline is the original one (from the workspace volume's
//! `outpost.expires-at`); the step deadline counts from the container's start. A resumed step
//! whose container is gone fails with class `infrastructure`.

mod auth;
mod backend;
mod caches;
mod cleanup;
mod config;
mod error;
mod job;
mod names;
mod network;
mod timing;
mod util;
mod workspace;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bollard::Docker;
use outpost_executor::{
    CancellationToken, EventSender, Executor, ExecutorError, JobId, JobOutcome, LiveJobs,
    PreparedJob, Resume, RunnerId, SweepReport,
};

pub use crate::backend::DockerBackend;
pub use crate::config::{ByteSize, DockerConfig, PullPolicy, ResourceRequest, Resources};
pub use crate::error::DockerError;
pub use crate::names::{Kind, labels};
pub use crate::timing::{CLEANUP_EVENT, RUN_EVENT, TARGET as TIMING_TARGET};

use crate::caches::CacheIndex;
use crate::cleanup::{Cleanups, remove_job_resources};
use crate::job::{JobRun, force_remove, list_containers, list_volumes};
use crate::names::runner_filter;
use crate::network::Networks;
use crate::util::{engine_message, parse_rfc3339, status_of, unix_now};

/// What every job of this executor shares.
pub(crate) struct Shared {
    pub(crate) docker: Docker,
    pub(crate) config: DockerConfig,
    pub(crate) cache_index: CacheIndex,
    pub(crate) docker_config_path: Option<PathBuf>,
    pub(crate) networks: Networks,
}

/// The Docker backend.
pub struct DockerExecutor {
    shared: Arc<Shared>,
    /// The cleanups of finished jobs, still removing their resources.
    cleanups: Cleanups,
}

impl std::fmt::Debug for DockerExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerExecutor")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

fn docker_host() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".to_owned())
}

fn unreachable(message: String) -> ExecutorError {
    ExecutorError::Backend {
        backend: "docker",
        action: "connect".to_owned(),
        message,
    }
}

impl DockerExecutor {
    /// Connects to the engine named by `DOCKER_HOST` (default `unix:///var/run/docker.sock`) and
    /// settles on the API version both sides speak (the engine may be older than bollard).
    pub async fn connect(config: DockerConfig) -> Result<Self, ExecutorError> {
        config.validate().map_err(|e| ExecutorError::Config {
            backend: "docker",
            message: e.to_string(),
        })?;
        let host = docker_host();
        let hint = "set DOCKER_HOST (e.g. unix:///var/run/docker.sock or tcp://host:2375), or \
                    check that the engine runs and that this user may open its socket";
        let docker = Docker::connect_with_defaults()
            .map_err(|e| unreachable(format!("docker is not reachable at {host}: {e}; {hint}")))?
            .with_timeout(config.api_timeout);
        let docker = docker.negotiate_version().await.map_err(|e| {
            unreachable(format!(
                "docker is not reachable at {host}: {}; {hint}",
                engine_message(&e)
            ))
        })?;
        let cache_index = CacheIndex::load(config.state_dir.clone())
            .await
            .map_err(|e| ExecutorError::Backend {
                backend: "docker",
                action: "load the cache index".to_owned(),
                message: e.to_string(),
            })?;
        let docker_config_path = config
            .docker_config_path
            .clone()
            .or_else(auth::default_config_path);
        Ok(Self {
            shared: Arc::new(Shared {
                docker,
                config,
                cache_index,
                docker_config_path,
                networks: Networks::default(),
            }),
            cleanups: Cleanups::default(),
        })
    }

    /// The engine client (for tests and diagnostics).
    pub fn client(&self) -> &Docker {
        &self.shared.docker
    }

    pub fn config(&self) -> &DockerConfig {
        &self.shared.config
    }

    /// Waits until every cleanup started so far has finished: then nothing of a job whose run
    /// returned is left on the engine (but its caches), and the spare network for the next job
    /// exists ([`DockerExecutor::spare_networks`]).
    pub async fn wait_for_cleanups(&self) {
        self.cleanups.wait_all().await;
    }

    /// The names of the spare networks this executor keeps for the next jobs (one per runner id
    /// at most). They belong to no job; [`Executor::shutdown`] removes them.
    pub fn spare_networks(&self) -> Vec<String> {
        self.shared.networks.spares()
    }
}

#[async_trait]
impl Executor for DockerExecutor {
    fn kind(&self) -> &'static str {
        "docker"
    }

    async fn run(
        &self,
        job: PreparedJob,
        resume: Option<Resume>,
        events: EventSender,
        cancel: CancellationToken,
    ) -> Result<JobOutcome, ExecutorError> {
        if job.runner_id.as_str().is_empty() {
            return Err(ExecutorError::Invalid {
                backend: "docker",
                job_id: job.job_id.clone(),
                message: "the job has no runner id to label its resources with".to_owned(),
            });
        }
        // A run of a job whose earlier run is still being cleaned up would lose its resources
        // to that cleanup.
        self.cleanups.wait_for(job.job_id.as_str()).await;
        let mut run = JobRun::new(&self.shared, &job, &events, &cancel);
        let result = run.run(resume).await;
        let network = run.network.clone();
        if matches!(result, Err(ExecutorError::EventsClosed { .. })) {
            // The runner is shutting down: leave the containers for the next process.
            self.shared.networks.release(&network);
            return result;
        }
        let shared = self.shared.clone();
        let caches: Vec<String> = run.caches.iter().map(|(v, _)| v.clone()).collect();
        let workspace = run.names.workspace.clone();
        let (runner_id, job_id) = (job.runner_id.clone(), job.job_id.clone());
        // After the outcome, not before: the runner reports the job meanwhile.
        self.cleanups.spawn(job.job_id.clone(), async move {
            // The spare first: the runner's next job may already be waiting for it.
            shared
                .networks
                .refill(&shared.docker, &shared.config, &runner_id)
                .await;
            remove_job_resources(
                &shared.docker,
                runner_id.as_str(),
                job_id.as_str(),
                Some(&network),
                Some(&workspace),
                false,
            )
            .await;
            shared.networks.release(&network);
            shared.cache_index.touch(&caches, unix_now()).await;
        });
        result
    }

    async fn running_jobs(&self, runner_id: &RunnerId) -> Result<Vec<JobId>, ExecutorError> {
        let filters = runner_filter(runner_id.as_str(), &[(labels::KIND, Kind::Step.as_str())]);
        let containers = list_containers(&self.shared.docker, filters)
            .await
            .map_err(|e| engine_error("list step containers", &e))?;
        let jobs: BTreeSet<JobId> = containers
            .into_iter()
            .filter_map(|c| c.labels?.get(labels::JOB_ID).cloned())
            // A job being cleaned up has ended: its containers are on their way out.
            .filter(|job| !self.cleanups.is_pending(job))
            .map(JobId::from)
            .collect();
        Ok(jobs.into_iter().collect())
    }

    async fn sweep(
        &self,
        runner_id: &RunnerId,
        live: &dyn LiveJobs,
    ) -> Result<SweepReport, ExecutorError> {
        let docker = &self.shared.docker;
        // Asked per resource right before its removal, never from a list made earlier. A job
        // whose cleanup is pending is left to that cleanup.
        let dead = |labels: Option<&HashMap<String, String>>| {
            labels
                .and_then(|l| l.get(labels::JOB_ID))
                .is_some_and(|j| !live.is_live(j) && !self.cleanups.is_pending(j))
        };
        let mut report = SweepReport::default();
        let filters = runner_filter(runner_id.as_str(), &[]);
        // Listed first: a network names no job, the workspace volume of the job it serves does.
        let volumes = list_volumes(docker, filters.clone())
            .await
            .map_err(|e| engine_error("list volumes", &e))?;
        let network_jobs: HashMap<String, String> = volumes
            .iter()
            .filter_map(|v| {
                Some((
                    v.labels.get(labels::NETWORK)?.clone(),
                    v.labels.get(labels::JOB_ID)?.clone(),
                ))
            })
            .collect();

        let containers = list_containers(docker, filters.clone())
            .await
            .map_err(|e| engine_error("list containers", &e))?;
        for c in &containers {
            if !dead(c.labels.as_ref()) {
                continue;
            }
            let id = c.id.clone().unwrap_or_default();
            let line = describe(
                "container",
                &id,
                c.names.as_ref().and_then(|n| n.first()),
                c.labels.as_ref(),
            );
            match force_remove(docker, &id).await {
                None => report.removed.push(line),
                Some(e) => report
                    .failed
                    .push(format!("{line}: {}", engine_message(&e))),
            }
        }

        let networks = docker
            .list_networks(Some(bollard::query_parameters::ListNetworksOptions {
                filters: Some(filters.clone()),
            }))
            .await
            .map_err(|e| engine_error("list networks", &e))?;
        for n in &networks {
            let name = n.name.clone().unwrap_or_default();
            if self.shared.networks.is_held(&name) {
                continue;
            }
            // Its job, by its own label (networks of older versions) or by the volume naming
            // it; a network no job names is a spare of an earlier process.
            let job = n
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::JOB_ID))
                .or_else(|| network_jobs.get(&name));
            if job.is_some_and(|j| live.is_live(j) || self.cleanups.is_pending(j)) {
                continue;
            }
            let id = n.id.clone().unwrap_or_default();
            let line = format!(
                "network {name} (job {})",
                job.map_or("none", String::as_str)
            );
            match docker.remove_network(&id).await {
                Ok(()) => report.removed.push(line),
                Err(e) if status_of(&e) == Some(404) => {}
                Err(e) => report
                    .failed
                    .push(format!("{line}: {}", engine_message(&e))),
            }
        }

        let now = unix_now();
        let retention = self.shared.config.cache_retention.as_secs();
        for v in volumes {
            let kind = v.labels.get(labels::KIND).map(String::as_str);
            let line = describe("volume", &v.name, None, Some(&v.labels));
            let remove = match kind {
                Some("cache") => {
                    let created = v
                        .created_at
                        .as_deref()
                        .and_then(parse_rfc3339)
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_secs());
                    let last = self
                        .shared
                        .cache_index
                        .last_use(&v.name)
                        .unwrap_or(0)
                        .max(created);
                    now.saturating_sub(last) >= retention
                }
                _ => dead(Some(&v.labels)),
            };
            if !remove {
                continue;
            }
            match docker
                .remove_volume(
                    &v.name,
                    None::<bollard::query_parameters::RemoveVolumeOptions>,
                )
                .await
            {
                Ok(()) => {
                    self.shared.cache_index.forget(&v.name).await;
                    report.removed.push(line);
                }
                Err(e) if status_of(&e) == Some(404) => {}
                // In use by a container: a job is using the cache, keep it.
                Err(e) if status_of(&e) == Some(409) && kind == Some("cache") => {}
                Err(e) => report
                    .failed
                    .push(format!("{line}: {}", engine_message(&e))),
            }
        }
        Ok(report)
    }

    async fn shutdown(&self) {
        self.wait_for_cleanups().await;
        self.shared
            .networks
            .remove_spares(&self.shared.docker)
            .await;
    }
}

fn engine_error(action: &str, e: &bollard::errors::Error) -> ExecutorError {
    ExecutorError::Backend {
        backend: "docker",
        action: action.to_owned(),
        message: engine_message(e),
    }
}

fn describe(
    what: &str,
    id: &str,
    name: Option<&String>,
    labels: Option<&HashMap<String, String>>,
) -> String {
    let name = name.map_or(id, |n| n.trim_start_matches('/'));
    let job = labels
        .and_then(|l| l.get(labels::JOB_ID))
        .map_or("?", String::as_str);
    format!("{what} {name} (job {job})")
}
