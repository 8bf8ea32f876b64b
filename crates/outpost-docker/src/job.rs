//! One job on the engine: its network, volumes and services, then its steps one container each,
//! and the reattachment of a step that a previous runner process started.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use bollard::container::LogOutput;
use bollard::errors::Error as EngineError;
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, EndpointSettings, HostConfig, Mount, MountType,
    NetworkingConfig, VolumeCreateRequest,
};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, CreateImageOptions, ListContainersOptions,
    ListVolumesOptions, LogsOptions, RemoveContainerOptions, UploadToContainerOptions,
    WaitContainerOptions,
};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use outpost_executor::{
    CancellationToken, EventSender, ExecEvent, ExecutorError, JobOutcome, OutputStream,
    PreparedJob, Resume, ServiceSpec, StepDriver, StepEnd, StepOutcome, StepRunner, StepSpec,
};
use outpost_protocol::{Failure, FailureClass};
use tokio::time::Instant;

use crate::auth::{self, ImageRef};
use crate::config::{PullPolicy, ResourceRequest, Resources};
use crate::names::{JobNames, Kind, job_labels, labels};
use crate::timing::Timings;
use crate::util::{engine_message, parse_rfc3339, status_of, unix_now};
use crate::{Shared, workspace};

type OutputFrames = Pin<Box<dyn Stream<Item = Result<LogOutput, EngineError>> + Send>>;

/// Why the engine would not create a container.
enum Refused {
    /// Its image is missing and could not be made present: `image_pull`.
    Image(Failure),
    /// Its configuration (400: a relative cache path, say).
    Config(String),
}

/// Why a running step was stopped from outside.
#[derive(Debug, Clone, Copy)]
enum Interrupt {
    Cancelled,
    StepTimeout(Duration),
    JobTimeout(Duration),
}

/// One run of one job. Dropping it (or the future of [`JobRun::run`]) leaves every container
/// running: containers outlive the runner process by design, so that a restarted runner can
/// reattach; cleanup happens only when the run ends.
pub(crate) struct JobRun<'a> {
    shared: &'a Shared,
    job: &'a PreparedJob,
    events: &'a EventSender,
    cancel: &'a CancellationToken,
    pub(crate) names: JobNames,
    expires_at: u64,
    job_deadline: Option<Instant>,
    /// The name of the job's network (held in `Shared::networks` from setup on); empty until
    /// setup chose it.
    pub(crate) network: String,
    /// This run's [`labels::ATTEMPT`], or the original run's when resumed.
    attempt: String,
    /// (volume name, mount path) of the job's caches.
    pub(crate) caches: Vec<(String, String)>,
    workspace_ready: bool,
    services_tried: bool,
    pulled: HashSet<String>,
    timings: Timings,
}

impl<'a> JobRun<'a> {
    pub(crate) fn new(
        shared: &'a Shared,
        job: &'a PreparedJob,
        events: &'a EventSender,
        cancel: &'a CancellationToken,
    ) -> Self {
        let names = JobNames::new(&shared.config, job.job_id.as_str());
        let caches = job
            .caches
            .iter()
            .map(|c| (names.cache(&job.cache_scope, &c.name), c.path.clone()))
            .collect();
        Self {
            shared,
            job,
            events,
            cancel,
            network: String::new(),
            attempt: new_attempt(),
            names,
            expires_at: 0,
            job_deadline: None,
            caches,
            workspace_ready: false,
            services_tried: false,
            pulled: HashSet::new(),
            timings: Timings::default(),
        }
    }

    fn engine_err(&self, action: impl Into<String>, e: &EngineError) -> ExecutorError {
        ExecutorError::Engine {
            backend: "docker",
            action: action.into(),
            job_id: self.job.job_id.clone(),
            message: engine_message(e),
        }
    }

    async fn send(&self, event: ExecEvent) -> Result<(), ExecutorError> {
        self.events
            .send(event)
            .await
            .map_err(|_| ExecutorError::EventsClosed {
                job_id: self.job.job_id.clone(),
            })
    }

    /// Sends a step's output, counting the time spent waiting for the runner to take it.
    async fn deliver(&mut self, event: ExecEvent) -> Result<(), ExecutorError> {
        let t = Instant::now();
        let sent = self.send(event).await;
        self.timings.delivery += t.elapsed();
        sent
    }

    fn labels(&self, kind: Kind) -> HashMap<String, String> {
        job_labels(
            self.job.runner_id.as_str(),
            self.job.job_id.as_str(),
            self.expires_at,
            kind,
        )
    }

    /// Runs the job (or takes it over at `resume`) and returns its outcome.
    pub(crate) async fn run(
        &mut self,
        resume: Option<Resume>,
    ) -> Result<JobOutcome, ExecutorError> {
        let started = Instant::now();
        self.setup(resume.is_some()).await?;
        self.timings.setup = started.elapsed();
        let (job, events, cancel) = (self.job, self.events, self.cancel);
        let driver = StepDriver {
            job,
            events,
            cancel,
            job_deadline: self.job_deadline,
            resume,
        };
        let outcome = driver.drive(self).await;
        self.timings.log(&job.job_id, started.elapsed());
        outcome
    }

    /// The network, the workspace volume and the cache volumes, made side by side. A resumed run
    /// reuses the network and volume its job has (named on the volume); a fresh run that meets
    /// the workspace volume of an earlier attempt of the same job removes what that attempt left.
    async fn setup(&mut self, resuming: bool) -> Result<(), ExecutorError> {
        let now = unix_now();
        self.expires_at = now + self.shared.config.default_expiry.as_secs();
        if let Some(t) = self.job.timeout {
            self.expires_at = now + t.as_secs();
            self.job_deadline = Some(Instant::now() + t);
        }
        let mut need_volume = true;
        if resuming {
            // The previous process started the services before its first step container.
            self.services_tried = true;
            let t = Instant::now();
            let found = self.adopt(now).await?;
            self.timings.reset = t.elapsed();
            need_volume = !found;
            if !self.network.is_empty() {
                let t = Instant::now();
                self.create_caches().await?;
                self.timings.volumes = t.elapsed();
                return Ok(());
            }
        }
        let mut lease = self
            .shared
            .networks
            .take(&self.shared.config, &self.job.runner_id);
        self.network = lease.name.clone();
        let docker = self.shared.docker.clone();
        let t = Instant::now();
        let network = async {
            let ready = lease.ready(&docker).await;
            (ready, t.elapsed())
        };
        let volumes = async {
            let created = if need_volume {
                self.create_workspace_volume(!resuming).await
            } else {
                Ok(())
            };
            let created = match created {
                Ok(()) => self.create_caches().await,
                Err(e) => Err(e),
            };
            (created, t.elapsed())
        };
        let ((network, network_took), (volumes, volumes_took)) = tokio::join!(network, volumes);
        self.timings.network = network_took;
        self.timings.volumes = volumes_took;
        volumes?;
        network.map_err(|message| ExecutorError::Engine {
            backend: "docker",
            action: format!("create network {}", self.network),
            job_id: self.job.job_id.clone(),
            message,
        })
    }

    /// Takes over what the job's previous run left: the network and deadline named on its
    /// workspace volume. `false` when the volume is gone.
    async fn adopt(&mut self, now: u64) -> Result<bool, ExecutorError> {
        let docker = &self.shared.docker;
        let volume = match docker.inspect_volume(&self.names.workspace).await {
            Ok(v) => v,
            Err(e) if status_of(&e) == Some(404) => return Ok(false),
            Err(e) => {
                return Err(self.engine_err(format!("inspect volume {}", self.names.workspace), &e));
            }
        };
        self.workspace_ready = true;
        if let Some(attempt) = volume.labels.get(labels::ATTEMPT) {
            self.attempt = attempt.clone();
        }
        // The original deadline, not a new one from now.
        let original = volume
            .labels
            .get(labels::EXPIRES_AT)
            .and_then(|v| v.parse::<u64>().ok());
        if let (Some(exp), Some(_)) = (original, self.job.timeout) {
            self.expires_at = exp;
            self.job_deadline = Some(Instant::now() + Duration::from_secs(exp.saturating_sub(now)));
        }
        if let Some(network) = volume.labels.get(labels::NETWORK) {
            self.shared.networks.hold(network);
            self.network = network.clone();
        }
        Ok(true)
    }

    /// Creates the workspace volume, naming the job's network and this attempt on it. With
    /// `fresh`, a volume that names another attempt was left by an earlier run of the same job:
    /// what that run left is removed, then the volume made anew (a step never sees an earlier
    /// attempt's files).
    async fn create_workspace_volume(&self, fresh: bool) -> Result<(), ExecutorError> {
        let docker = &self.shared.docker;
        let mut l = self.labels(Kind::Workspace);
        l.insert(labels::NETWORK.to_owned(), self.network.clone());
        l.insert(labels::ATTEMPT.to_owned(), self.attempt.clone());
        let name = &self.names.workspace;
        for _ in 0..2 {
            let created = docker
                .create_volume(VolumeCreateRequest {
                    name: Some(name.clone()),
                    labels: Some(l.clone()),
                    ..Default::default()
                })
                .await;
            let earlier = match created {
                Ok(v) if !fresh || v.labels.get(labels::ATTEMPT) == Some(&self.attempt) => {
                    return Ok(());
                }
                Ok(v) => v.labels,
                // Engines that refuse to return an existing volume with other labels.
                Err(e) if status_of(&e) == Some(409) => HashMap::new(),
                Err(e) => return Err(self.engine_err(format!("create volume {name}"), &e)),
            };
            tracing::info!(job_id = %self.job.job_id, volume = %name,
                "removing what an earlier attempt of this job left");
            let network = earlier
                .get(labels::NETWORK)
                .filter(|n| !self.shared.networks.is_held(n));
            crate::cleanup::remove_job_resources(
                docker,
                self.job.runner_id.as_str(),
                self.job.job_id.as_str(),
                network.map(String::as_str),
                Some(name),
                true,
            )
            .await;
        }
        Err(ExecutorError::Engine {
            backend: "docker",
            action: format!("create volume {name}"),
            job_id: self.job.job_id.clone(),
            message: "the volume of an earlier attempt of this job cannot be removed".to_owned(),
        })
    }

    /// Creates the cache volumes (an existing one is returned unchanged: later jobs reuse it)
    /// and records their use.
    async fn create_caches(&self) -> Result<(), ExecutorError> {
        let docker = &self.shared.docker;
        let creations = self.caches.iter().map(|(volume, _)| {
            let mut l = self.labels(Kind::Cache);
            l.insert(labels::CACHE_SCOPE.to_owned(), self.job.cache_scope.clone());
            if let Some(c) = self
                .job
                .caches
                .iter()
                .find(|c| self.names.cache(&self.job.cache_scope, &c.name) == *volume)
            {
                l.insert(labels::CACHE_NAME.to_owned(), c.name.clone());
            }
            async move {
                docker
                    .create_volume(VolumeCreateRequest {
                        name: Some(volume.clone()),
                        labels: Some(l),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| self.engine_err(format!("create cache volume {volume}"), &e))
            }
        });
        for created in futures_util::future::join_all(creations).await {
            created?;
        }
        let volumes: Vec<String> = self.caches.iter().map(|(v, _)| v.clone()).collect();
        self.shared.cache_index.touch(&volumes, unix_now()).await;
        Ok(())
    }

    /// Runs one step in a new container: image, workspace and services first (failures there are
    /// the step's), then create, attach, start, stream, wait.
    async fn fresh_step(
        &mut self,
        step: &StepSpec,
        job_deadline: Option<Instant>,
    ) -> Result<StepEnd, ExecutorError> {
        let started = Instant::now();
        self.send(ExecEvent::StepStarted {
            index: step.index,
            at: SystemTime::now(),
        })
        .await?;
        let step_deadline = step.timeout.map(|t| started + t);
        let job_timeout = self.job.timeout.unwrap_or_default();
        let cancel = self.cancel.clone();
        let prepared = tokio::select! {
            r = self.prepare_step(step) => Ok(r?),
            () = cancel.cancelled() => Err(Interrupt::Cancelled),
            () = sleep_until(step_deadline) => {
                Err(Interrupt::StepTimeout(step.timeout.unwrap_or_default()))
            }
            () = sleep_until(job_deadline) => Err(Interrupt::JobTimeout(job_timeout)),
        };
        let end = match prepared {
            Ok(Ok(frames)) => {
                self.drive(step, frames, false, 0, step_deadline, job_deadline)
                    .await?
            }
            Ok(Err(failure)) => StepEnd::of(StepOutcome::failed(failure, None)),
            Err(interrupt) => self.interrupted(step, interrupt),
        };
        Ok(end)
    }

    /// Everything before the step's container streams output. `Ok(Err(failure))` is the step's
    /// own failure (image, services, limits, a command the image cannot start).
    async fn prepare_step(
        &mut self,
        step: &StepSpec,
    ) -> Result<Result<OutputFrames, Failure>, ExecutorError> {
        let job = self.job;
        let Some(image) = job.step_image(step) else {
            return Ok(Err(Failure::new(
                FailureClass::Config,
                format!(
                    "step `{}` has no image and the pipeline no default image",
                    step.name
                ),
            )));
        };
        if !self.workspace_ready
            && let Some(helper) = self.shared.config.helper_image.clone()
        {
            let t = Instant::now();
            let copied = self.copy_workspace(&helper).await?;
            self.timings.workspace_copy += t.elapsed();
            if let Err(f) = copied {
                return Ok(Err(f));
            }
        }
        if !self.services_tried {
            self.services_tried = true;
            let t = Instant::now();
            for service in &job.services {
                if let Err(f) = self.start_service(service).await? {
                    return Ok(Err(f));
                }
            }
            self.timings.services += t.elapsed();
        }
        let resources = match self
            .shared
            .config
            .resources_for(image, ResourceRequest::default())
        {
            Ok(r) => r,
            Err(message) => return Ok(Err(Failure::new(FailureClass::Config, message))),
        };
        let name = self.names.step(step.index);
        let mut labels = self.labels(Kind::Step);
        labels.insert(labels::STEP_INDEX.to_owned(), step.index.to_string());
        let env = job
            .step_env(step)
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut mounts = vec![volume_mount(
            &self.names.workspace,
            &job.container_workspace,
        )];
        mounts.extend(self.caches.iter().map(|(v, p)| volume_mount(v, p)));
        let body = ContainerCreateBody {
            image: Some(image.to_owned()),
            cmd: Some(vec!["sh".to_owned(), "-c".to_owned(), step.run.clone()]),
            env: Some(env),
            working_dir: Some(job.container_workspace.clone()),
            labels: Some(labels),
            tty: Some(false),
            open_stdin: Some(false),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            host_config: Some(self.host_config(mounts, resources)),
            ..Default::default()
        };
        let t = Instant::now();
        let created = self.create_container(&name, body).await?;
        self.timings.create += t.elapsed();
        match created {
            Ok(()) => {}
            Err(Refused::Image(f)) => return Ok(Err(f)),
            Err(Refused::Config(message)) => {
                return Ok(Err(Failure::new(
                    FailureClass::Config,
                    format!("step `{}` cannot be created: {message}", step.name),
                )));
            }
        }
        if !self.workspace_ready {
            // Into the step's own container, created but not started: it mounts the workspace
            // volume as a helper would, and spares creating and removing one.
            let t = Instant::now();
            self.upload_workspace(&name).await?;
            self.timings.workspace_copy += t.elapsed();
        }
        let t = Instant::now();
        let attached = self
            .shared
            .docker
            .attach_container(
                &name,
                Some(AttachContainerOptions {
                    stream: true,
                    stdout: true,
                    stderr: true,
                    ..Default::default()
                }),
            )
            .await
            .map_err(|e| self.engine_err(format!("attach to {name}"), &e))?;
        self.timings.attach += t.elapsed();
        let t = Instant::now();
        let start = self.shared.docker.start_container(&name, None).await;
        self.timings.start += t.elapsed();
        if let Err(e) = start {
            return match status_of(&e) {
                // The engine refused the container's command or config: the pipeline's fault.
                Some(400..=499) | Some(500) => Ok(Err(Failure::new(
                    FailureClass::Config,
                    format!(
                        "step `{}` could not start: {}",
                        step.name,
                        engine_message(&e)
                    ),
                ))),
                _ => Err(self.engine_err(format!("start {name}"), &e)),
            };
        }
        Ok(Ok(attached.output))
    }

    fn host_config(&self, mounts: Vec<Mount>, resources: Resources) -> HostConfig {
        HostConfig {
            init: Some(true),
            network_mode: Some(self.network.clone()),
            mounts: Some(mounts),
            memory: resources.memory,
            // No swap beyond the memory limit, so a limit means what it says.
            memory_swap: resources.memory,
            nano_cpus: resources.nano_cpus,
            privileged: Some(resources.privileged),
            ..Default::default()
        }
    }

    /// Creates a container, replacing a stale one of the same name, and making its image present
    /// per the pull policy. Unless the policy is `always`, the image is looked for only when the
    /// engine answers that something is missing (404): a present image, the common case, costs
    /// no call of its own.
    async fn create_container(
        &mut self,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<Result<(), Refused>, ExecutorError> {
        let image = body.image.clone().unwrap_or_default();
        if self.shared.config.pull_policy == PullPolicy::Always
            && let Err(f) = self.ensure_image(&image).await
        {
            return Ok(Err(Refused::Image(f)));
        }
        let docker = self.shared.docker.clone();
        let options = || CreateContainerOptions {
            name: Some(name.to_owned()),
            ..Default::default()
        };
        let mut looked_for_image = false;
        loop {
            let mut created = docker.create_container(Some(options()), body.clone()).await;
            if let Err(e) = &created
                && status_of(e) == Some(409)
            {
                force_remove(&docker, name).await;
                created = docker.create_container(Some(options()), body.clone()).await;
            }
            match created {
                Ok(_) => return Ok(Ok(())),
                Err(e) if status_of(&e) == Some(400) => {
                    return Ok(Err(Refused::Config(engine_message(&e))));
                }
                Err(e) if status_of(&e) == Some(404) && !looked_for_image => {
                    looked_for_image = true;
                    if let Err(f) = self.ensure_image(&image).await {
                        return Ok(Err(Refused::Image(f)));
                    }
                }
                Err(e) => return Err(self.engine_err(format!("create {name}"), &e)),
            }
        }
    }

    /// Makes `image` available per the pull policy; a failure is the step's `image_pull`.
    async fn ensure_image(&mut self, image: &str) -> Result<(), Failure> {
        let t = Instant::now();
        let ensured = self.ensure_image_untimed(image).await;
        self.timings.image += t.elapsed();
        ensured
    }

    async fn ensure_image_untimed(&mut self, image: &str) -> Result<(), Failure> {
        if self.pulled.contains(image) {
            return Ok(());
        }
        let docker = &self.shared.docker;
        let policy = self.shared.config.pull_policy;
        if policy != PullPolicy::Always {
            match docker.inspect_image(image).await {
                Ok(_) => {
                    self.pulled.insert(image.to_owned());
                    return Ok(());
                }
                Err(e) if status_of(&e) == Some(404) => {
                    if policy == PullPolicy::Never {
                        return Err(Failure::new(
                            FailureClass::ImagePull,
                            format!(
                                "image `{image}` is not present on the engine and the pull policy \
                                 is `never`"
                            ),
                        ));
                    }
                }
                Err(e) => {
                    return Err(Failure::new(
                        FailureClass::ImagePull,
                        format!("cannot inspect image `{image}`: {}", engine_message(&e)),
                    ));
                }
            }
        }
        let reference = ImageRef::parse(image);
        let credentials = auth::credentials_for(
            self.shared.docker_config_path.as_deref(),
            &reference.registry,
        )
        .await
        .map_err(|e| {
            Failure::new(
                FailureClass::ImagePull,
                format!("cannot pull image `{image}`: {e}"),
            )
        })?;
        let mut progress = docker.create_image(
            Some(CreateImageOptions {
                from_image: Some(reference.from_image),
                tag: reference.tag,
                ..Default::default()
            }),
            None,
            credentials,
        );
        while let Some(item) = progress.next().await {
            let message = match item {
                Ok(info) => match info.error_detail.and_then(|d| d.message) {
                    Some(m) => m,
                    None => continue,
                },
                Err(e) => engine_message(&e),
            };
            return Err(Failure::new(
                FailureClass::ImagePull,
                format!("cannot pull image `{image}`: {message}"),
            ));
        }
        self.pulled.insert(image.to_owned());
        Ok(())
    }

    /// Copies the checkout into the workspace volume through a container of `helper_image`
    /// (configured) that is created (so the volume is mounted) but never started: the image needs
    /// no binary at all. A helper image that cannot be made present is the step's `image_pull`
    /// failure.
    async fn copy_workspace(
        &mut self,
        helper_image: &str,
    ) -> Result<Result<(), Failure>, ExecutorError> {
        let job = self.job;
        let docker = self.shared.docker.clone();
        let name = self.names.helper();
        let body = ContainerCreateBody {
            image: Some(helper_image.to_owned()),
            // Never run; set so that images without a command can be used too.
            cmd: Some(vec!["/outpost-helper-is-never-started".to_owned()]),
            entrypoint: Some(Vec::new()),
            labels: Some(self.labels(Kind::Helper)),
            host_config: Some(HostConfig {
                network_mode: Some("none".to_owned()),
                mounts: Some(vec![volume_mount(
                    &self.names.workspace,
                    &self.job.container_workspace,
                )]),
                ..Default::default()
            }),
            ..Default::default()
        };
        match self.create_container(&name, body).await? {
            Ok(()) => {}
            Err(Refused::Image(f)) => return Ok(Err(f)),
            Err(Refused::Config(message)) => {
                return Err(ExecutorError::Engine {
                    backend: "docker",
                    action: format!("create the workspace helper {name}"),
                    job_id: job.job_id.clone(),
                    message,
                });
            }
        }
        let uploaded = self.upload_workspace(&name).await;
        force_remove(&docker, &name).await;
        uploaded.map(Ok)
    }

    /// Uploads the checkout (`job.workspace`) into the workspace volume through `container`, a
    /// created container that mounts it at `job.container_workspace`. An empty checkout (an
    /// inline pipeline) is not uploaded at all.
    async fn upload_workspace(&mut self, container: &str) -> Result<(), ExecutorError> {
        let job = self.job;
        let dir = job.workspace.clone();
        let workspace_err = |source| ExecutorError::Workspace {
            job_id: job.job_id.clone(),
            path: dir.clone(),
            source,
        };
        if !workspace::has_content(&dir).await.map_err(workspace_err)? {
            self.workspace_ready = true;
            return Ok(());
        }
        let (archive, builder) = workspace::tar_stream(dir.clone());
        let uploaded = self
            .shared
            .docker
            .upload_to_container(
                container,
                Some(UploadToContainerOptions {
                    path: job.container_workspace.clone(),
                    ..Default::default()
                }),
                bollard::body_stream(archive),
            )
            .await;
        match builder.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(workspace_err(e)),
            Err(e) => return Err(workspace_err(std::io::Error::other(e))),
        }
        uploaded.map_err(|e| self.engine_err("copy the workspace into its volume", &e))?;
        self.workspace_ready = true;
        Ok(())
    }

    /// Starts one service (or finds it running after a restart).
    async fn start_service(
        &mut self,
        service: &ServiceSpec,
    ) -> Result<Result<(), Failure>, ExecutorError> {
        let name = self.names.service(&service.name);
        let resources = self
            .shared
            .config
            .resources_for(&service.image, ResourceRequest::default())
            .unwrap_or_default();
        let mut labels = self.labels(Kind::Service);
        labels.insert(labels::SERVICE.to_owned(), service.name.clone());
        let body = ContainerCreateBody {
            image: Some(service.image.clone()),
            cmd: service.command.clone(),
            env: Some(
                service
                    .env
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect(),
            ),
            labels: Some(labels),
            host_config: Some(self.host_config(Vec::new(), resources)),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    self.network.clone(),
                    EndpointSettings {
                        aliases: Some(vec![service.name.clone()]),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        };
        match self.create_container(&name, body).await? {
            Ok(()) => {}
            Err(Refused::Image(f)) => {
                return Ok(Err(Failure::new(
                    f.class,
                    format!("service `{}`: {}", service.name, f.message),
                )));
            }
            Err(Refused::Config(message)) => {
                return Ok(Err(Failure::new(
                    FailureClass::Config,
                    format!("service `{}` cannot be created: {message}", service.name),
                )));
            }
        }
        if let Err(e) = self.shared.docker.start_container(&name, None).await {
            return Ok(Err(Failure::new(
                FailureClass::Config,
                format!(
                    "service `{}` could not start: {}",
                    service.name,
                    engine_message(&e)
                ),
            )));
        }
        Ok(Ok(()))
    }

    /// Streams a step's output until its container exits, stopping it on cancel or timeout, then
    /// reads how it ended. `skip` raw bytes at the start of `frames` were consumed before.
    async fn drive(
        &mut self,
        step: &StepSpec,
        mut frames: OutputFrames,
        mut from_logs: bool,
        mut skip: u64,
        step_deadline: Option<Instant>,
        job_deadline: Option<Instant>,
    ) -> Result<StepEnd, ExecutorError> {
        let name = self.names.step(step.index);
        let docker = self.shared.docker.clone();
        let grace = self.shared.config.stop_grace;
        let cancel = self.cancel.clone();
        let mut interrupt: Option<Interrupt> = None;
        let mut stopping: Option<Pin<Box<dyn Future<Output = ()> + Send>>> = None;
        let mut position: u64 = 0;
        let mut fell_back = false;
        let step_sleep = sleep_until(step_deadline);
        let job_sleep = sleep_until(job_deadline);
        tokio::pin!(step_sleep, job_sleep);
        let streaming = Instant::now();
        loop {
            let mut fire = None;
            tokio::select! {
                frame = frames.next() => match frame {
                    Some(Ok(frame)) => {
                        let (stream, data) = match frame {
                            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                                (OutputStream::Stdout, message)
                            }
                            LogOutput::StdErr { message } => (OutputStream::Stderr, message),
                            LogOutput::StdIn { .. } => continue,
                        };
                        let len = data.len() as u64;
                        position += len;
                        if skip >= len {
                            skip -= len;
                            continue;
                        }
                        let data: Bytes = data.slice(usize::try_from(skip).unwrap_or(0)..);
                        skip = 0;
                        self.deliver(ExecEvent::Output { index: step.index, stream, data }).await?;
                    }
                    Some(Err(e)) if !fell_back => {
                        // The attach stream broke (e.g. the engine restarted): the log driver
                        // still has everything, so follow it from where this stream was.
                        tracing::warn!(job_id = %self.job.job_id, container = %name, error = %e,
                            "output stream broke; continuing from the container's logs");
                        fell_back = true;
                        from_logs = true;
                        skip += position;
                        position = 0;
                        frames = follow_logs(&docker, &name);
                    }
                    Some(Err(e)) => {
                        let message = format!(
                            "lost the output of step `{}`: {}", step.name, engine_message(&e));
                        if let Some(stop) = stopping.take() {
                            stop.await;
                        }
                        return Ok(StepEnd::of(StepOutcome::failed(
                            Failure::new(FailureClass::Infrastructure, message), None)));
                    }
                    None => break,
                },
                () = async { if let Some(s) = stopping.as_mut() { s.await } else { std::future::pending().await } },
                    if stopping.is_some() => {
                    stopping = None;
                }
                () = cancel.cancelled(), if interrupt.is_none() => {
                    fire = Some(Interrupt::Cancelled);
                }
                () = &mut step_sleep, if interrupt.is_none() => {
                    fire = Some(Interrupt::StepTimeout(step.timeout.unwrap_or_default()));
                }
                () = &mut job_sleep, if interrupt.is_none() => {
                    fire = Some(Interrupt::JobTimeout(self.job.timeout.unwrap_or_default()));
                }
            }
            if let Some(i) = fire {
                interrupt = Some(i);
                stopping = Some(Box::pin(stop_container(
                    docker.clone(),
                    name.clone(),
                    grace,
                )));
            }
        }
        if let Some(stop) = stopping.take() {
            stop.await;
        }
        self.timings.output += streaming.elapsed();
        if from_logs {
            // A followed log stream can end before the container's last output (seen on engine
            // 20.10 with json-file: a follow that is still reading the existing log when the
            // container writes more and exits stops at the size it saw). Once the container
            // has stopped its log is complete: read it again and deliver what this stream missed.
            self.deliver_rest(step, &name, position + skip).await?;
        }
        if let Some(i) = interrupt {
            return Ok(self.interrupted(step, i));
        }
        let t = Instant::now();
        let end = self.exit_outcome(step, &name).await;
        self.timings.exit += t.elapsed();
        end
    }

    /// Waits for the step's container to stop, then sends its logged output after the first
    /// `delivered` raw bytes.
    async fn deliver_rest(
        &mut self,
        step: &StepSpec,
        name: &str,
        delivered: u64,
    ) -> Result<(), ExecutorError> {
        let docker = self.shared.docker.clone();
        let mut wait = docker.wait_container(
            name,
            Some(WaitContainerOptions {
                condition: "not-running".to_owned(),
            }),
        );
        // The outcome itself is read by `exit_outcome`; here only "it has stopped" matters.
        let _ = wait.next().await;
        let mut frames = docker.logs(
            name,
            Some(LogsOptions {
                follow: false,
                stdout: true,
                stderr: true,
                timestamps: false,
                ..Default::default()
            }),
        );
        let mut skip = delivered;
        while let Some(frame) = frames.next().await {
            let (stream, data) = match frame {
                Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                    (OutputStream::Stdout, message)
                }
                Ok(LogOutput::StdErr { message }) => (OutputStream::Stderr, message),
                Ok(LogOutput::StdIn { .. }) => continue,
                Err(e) => {
                    tracing::warn!(job_id = %self.job.job_id, container = %name, error = %engine_message(&e),
                        "cannot read the rest of a step's logs");
                    return Ok(());
                }
            };
            let len = data.len() as u64;
            if skip >= len {
                skip -= len;
                continue;
            }
            let data: Bytes = data.slice(usize::try_from(skip).unwrap_or(0)..);
            skip = 0;
            self.deliver(ExecEvent::Output {
                index: step.index,
                stream,
                data,
            })
            .await?;
        }
        Ok(())
    }

    fn interrupted(&self, step: &StepSpec, interrupt: Interrupt) -> StepEnd {
        match interrupt {
            Interrupt::Cancelled => StepEnd::of(StepOutcome::cancelled(&step.name)),
            Interrupt::StepTimeout(after) => StepEnd::of(StepOutcome::timed_out(&step.name, after)),
            Interrupt::JobTimeout(after) => StepEnd::job_timeout(step, after, None),
        }
    }

    /// The exit code (from wait) and `OOMKilled` (from inspect) of a step's exited container. A
    /// zero exit is a success whatever inspect would say, so it is not asked then.
    async fn exit_outcome(&self, step: &StepSpec, name: &str) -> Result<StepEnd, ExecutorError> {
        let docker = &self.shared.docker;
        let mut code: Option<i64> = None;
        let mut wait = docker.wait_container(
            name,
            Some(WaitContainerOptions {
                condition: "not-running".to_owned(),
            }),
        );
        match wait.next().await {
            Some(Ok(r)) => code = Some(r.status_code),
            Some(Err(EngineError::DockerContainerWaitError { code: c, .. })) => code = Some(c),
            Some(Err(e)) if status_of(&e) == Some(404) => {}
            Some(Err(e)) => return Err(self.engine_err(format!("wait for {name}"), &e)),
            None => {}
        }
        if code == Some(0) {
            return Ok(StepEnd::of(StepOutcome::success()));
        }
        let inspected = match docker.inspect_container(name, None).await {
            Ok(i) => i,
            Err(e) if status_of(&e) == Some(404) => {
                return Ok(StepEnd::of(gone(step)));
            }
            Err(e) => return Err(self.engine_err(format!("inspect {name}"), &e)),
        };
        let state = inspected.state.unwrap_or_default();
        let code = state.exit_code.or(code).unwrap_or(-1);
        Ok(StepEnd::of(classify_exit(
            step,
            code,
            state.oom_killed.unwrap_or(false),
            self.shared.config.memory.map(|m| m.to_string()),
        )))
    }

    /// Takes over the step that a previous runner process was running: replays its logs from the
    /// start, skipping the `output_bytes` that process already consumed.
    async fn take_over(
        &mut self,
        step: &StepSpec,
        output_bytes: u64,
        job_deadline: Option<Instant>,
    ) -> Result<StepEnd, ExecutorError> {
        let name = self.names.step(step.index);
        let docker = self.shared.docker.clone();
        let inspected = match docker.inspect_container(&name, None).await {
            Ok(i) => i,
            Err(e) if status_of(&e) == Some(404) => return Ok(StepEnd::of(gone(step))),
            Err(e) => return Err(self.engine_err(format!("inspect {name}"), &e)),
        };
        let state = inspected.state.unwrap_or_default();
        let frames: OutputFrames = if state.status == Some(ContainerStateStatusEnum::CREATED) {
            // The previous process died between create and start: start it now.
            let attached = docker
                .attach_container(
                    &name,
                    Some(AttachContainerOptions {
                        stream: true,
                        stdout: true,
                        stderr: true,
                        ..Default::default()
                    }),
                )
                .await
                .map_err(|e| self.engine_err(format!("attach to {name}"), &e))?;
            docker
                .start_container(&name, None)
                .await
                .map_err(|e| self.engine_err(format!("start {name}"), &e))?;
            attached.output
        } else {
            follow_logs(&docker, &name)
        };
        let started = state
            .started_at
            .as_deref()
            .and_then(parse_rfc3339)
            .unwrap_or_else(SystemTime::now);
        // A step that already exited ended within its time, or it would have been stopped:
        // only a running one is held to its deadlines.
        let running = matches!(
            state.status,
            Some(ContainerStateStatusEnum::RUNNING | ContainerStateStatusEnum::CREATED)
        );
        let step_deadline = step.timeout.filter(|_| running).map(|t| {
            let elapsed = SystemTime::now()
                .duration_since(started)
                .unwrap_or_default();
            Instant::now() + t.saturating_sub(elapsed)
        });
        let job_deadline = job_deadline.filter(|_| running);
        let from_logs = state.status != Some(ContainerStateStatusEnum::CREATED);
        self.drive(
            step,
            frames,
            from_logs,
            output_bytes,
            step_deadline,
            job_deadline,
        )
        .await
    }

    /// The outcome of a step before the resumed one, for the `when` rules: from its exited
    /// container, or (no container although the rules ran it) a failure before its container
    /// existed, whose class is no longer known.
    async fn recall(&self, step: &StepSpec) -> Result<StepOutcome, ExecutorError> {
        let name = self.names.step(step.index);
        match self.shared.docker.inspect_container(&name, None).await {
            Ok(i) => {
                let state = i.state.unwrap_or_default();
                Ok(classify_exit(
                    step,
                    state.exit_code.unwrap_or(-1),
                    state.oom_killed.unwrap_or(false),
                    None,
                ))
            }
            Err(e) if status_of(&e) == Some(404) => Ok(StepOutcome::failed(
                Failure::new(
                    FailureClass::Infrastructure,
                    format!(
                        "step `{}` failed before its container was created (seen after a runner \
                         restart)",
                        step.name
                    ),
                ),
                None,
            )),
            Err(e) => Err(self.engine_err(format!("inspect {name}"), &e)),
        }
    }
}

impl StepRunner for JobRun<'_> {
    async fn run_step(
        &mut self,
        step: &StepSpec,
        job_deadline: Option<Instant>,
    ) -> Result<StepEnd, ExecutorError> {
        self.fresh_step(step, job_deadline).await
    }

    async fn resume_step(
        &mut self,
        step: &StepSpec,
        resume: Resume,
        job_deadline: Option<Instant>,
    ) -> Result<StepEnd, ExecutorError> {
        self.take_over(step, resume.output_bytes, job_deadline)
            .await
    }

    async fn earlier_outcome(&mut self, step: &StepSpec) -> Result<StepOutcome, ExecutorError> {
        self.recall(step).await
    }
}

/// A value for [`labels::ATTEMPT`] that no other run has: time and a process-wide counter.
fn new_attempt() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{:x}-{nanos:x}-{n:x}", std::process::id())
}

fn gone(step: &StepSpec) -> StepOutcome {
    StepOutcome::failed(
        Failure::new(
            FailureClass::Infrastructure,
            format!(
                "the container of step `{}` is gone (removed outside the runner?)",
                step.name
            ),
        ),
        None,
    )
}

/// A non-zero exit of a container the kernel OOM-killed something in is `oom`; other non-zero
/// exits are `script`. (A zero exit is a success even if a child was OOM-killed and the script
/// coped with it.)
fn classify_exit(step: &StepSpec, code: i64, oom: bool, limit: Option<String>) -> StepOutcome {
    let code = i32::try_from(code).unwrap_or(-1);
    if oom && code != 0 {
        let limit = limit.map(|l| format!(" (limit {l})")).unwrap_or_default();
        return StepOutcome::failed(
            Failure::new(
                FailureClass::Oom,
                format!(
                    "step `{}` ran out of memory{limit} and was killed (exit code {code})",
                    step.name
                ),
            ),
            Some(code),
        );
    }
    StepOutcome::exited(code, &step.name)
}

fn volume_mount(volume: &str, target: &str) -> Mount {
    Mount {
        typ: Some(MountType::VOLUME),
        source: Some(volume.to_owned()),
        target: Some(target.to_owned()),
        ..Default::default()
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The container's whole output from its first byte, following until it exits. Replayable only
/// with a log driver that keeps logs (`json-file`, `local`, or dual logging).
fn follow_logs(docker: &bollard::Docker, name: &str) -> OutputFrames {
    Box::pin(docker.logs(
        name,
        Some(LogsOptions {
            follow: true,
            stdout: true,
            stderr: true,
            timestamps: false,
            ..Default::default()
        }),
    ))
}

/// Stop (signal, grace period), then kill if stopping failed. Removal is the cleanup's job.
async fn stop_container(docker: bollard::Docker, name: String, grace: Duration) {
    let t =
        i32::try_from(grace.as_secs() + u64::from(grace.subsec_nanos() > 0)).unwrap_or(i32::MAX);
    let stopped = docker
        .stop_container(
            &name,
            Some(bollard::query_parameters::StopContainerOptions {
                t: Some(t),
                signal: None,
            }),
        )
        .await;
    match stopped {
        Ok(()) => {}
        Err(e) if status_of(&e) == Some(404) => {}
        Err(e) => {
            tracing::warn!(container = %name, error = %e, "stop failed; killing");
            if let Err(e) = docker.kill_container(&name, None).await {
                tracing::warn!(container = %name, error = %e, "kill failed");
            }
        }
    }
}

/// Removes a container whatever its state; a missing one is fine.
pub(crate) async fn force_remove(docker: &bollard::Docker, name: &str) -> Option<EngineError> {
    match docker
        .remove_container(
            name,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await
    {
        Ok(()) => None,
        Err(e) if status_of(&e) == Some(404) => None,
        Err(e) => Some(e),
    }
}

/// Lists this runner's containers (all states) matching `filters`.
pub(crate) async fn list_containers(
    docker: &bollard::Docker,
    filters: HashMap<String, Vec<String>>,
) -> Result<Vec<bollard::models::ContainerSummary>, EngineError> {
    docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
}

/// Lists volumes matching `filters`.
pub(crate) async fn list_volumes(
    docker: &bollard::Docker,
    filters: HashMap<String, Vec<String>>,
) -> Result<Vec<bollard::models::Volume>, EngineError> {
    Ok(docker
        .list_volumes(Some(ListVolumesOptions {
            filters: Some(filters),
        }))
        .await?
        .volumes
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use outpost_protocol::StepState;

    use super::*;

    fn step() -> StepSpec {
        StepSpec {
            index: 0,
            name: "build".into(),
            image: None,
            run: "true".into(),
            env: Default::default(),
            timeout: None,
            when: Default::default(),
        }
    }

    #[test]
    fn exits_are_classified() {
        let s = step();
        assert_eq!(classify_exit(&s, 0, false, None), StepOutcome::success());
        assert_eq!(classify_exit(&s, 0, true, None), StepOutcome::success());
        let script = classify_exit(&s, 3, false, None);
        assert_eq!(script.exit_code, Some(3));
        assert_eq!(script.failure.map(|f| f.class), Some(FailureClass::Script));
        let oom = classify_exit(&s, 137, true, Some("16MiB".into()));
        assert_eq!(oom.state, StepState::Failed);
        assert_eq!(
            oom.failure.as_ref().map(|f| f.class),
            Some(FailureClass::Oom)
        );
    }
}
