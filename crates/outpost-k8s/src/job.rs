//! One job's run: its pod created (or found again after a restart), the checkout streamed into
//! it, then the steps followed one by one through the shared step loop (`StepDriver`): each step
//! container's log, its end from the pod's status, and what ended the pod when something did.
//! The pod runs its steps by itself (the wrapper waits for the previous step's marker); the
//! runner only watches, decides the same `when` rule ([`outpost_executor::StepPlan`]) and reports.

use std::collections::HashMap;
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::AsyncBufReadExt;
use k8s_openapi::api::core::v1::{Event, Pod, Secret as KubeSecret};
use kube::Api;
use kube::api::{AttachParams, DeleteParams, ListParams, LogParams, PostParams};
use outpost_executor::{
    CancellationToken, EventSender, ExecEvent, ExecutorError, OutputStream, PreparedJob, Resume,
    StepEnd, StepOutcome, StepRunner, StepSpec,
};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::Shared;
use crate::caches::CacheClaim;
use crate::error::{job_error, status_of};
use crate::logs::{Checkpoint, CursorFile, Piece, StampParser};
use crate::names::{self, JobNames};
use crate::outcome::{self, Ended, IMAGE_PULL_REASONS, Phase, PodEnd};
use crate::spec::{self, PodInputs};

/// Why waiting on the pod stopped short of what it waited for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stop {
    /// The job's cancel token fired.
    Cancelled,
    /// The pod's `activeDeadlineSeconds` passed.
    Deadline,
    /// The pod cannot go on: `infrastructure`, with this message.
    Broken(String),
    /// A container's image cannot be pulled (past the grace).
    ImagePull {
        container: String,
        image: String,
        reason: String,
        message: String,
    },
}

enum Wait<T> {
    Ready(T),
    Stop(Stop),
}

/// The state of one job's run.
pub(crate) struct JobRun<'a> {
    shared: &'a Shared,
    /// The job, with the runner's default timeout when it has none (the pod's deadline).
    job: &'a PreparedJob,
    names: JobNames,
    events: &'a EventSender,
    cancel: &'a CancellationToken,
    pods: Api<Pod>,
    /// The uid of the job's pod, once created or found.
    uid: Option<String>,
    /// The shared watch's store has shown that pod.
    seen: bool,
    /// Why the pod cannot run more steps: later steps are skipped.
    broken: Option<String>,
    /// A failure before the first step (the checkout could not be sent): that step's.
    setup_failure: Option<StepOutcome>,
    /// The pod was deleted for a cancel.
    deleted: bool,
    cursor: CursorFile,
    checkpoints: Vec<Checkpoint>,
    /// The step's output so far ended with a newline (or there was none).
    at_line_start: bool,
    /// When each container was first seen waiting for its image.
    pulling_since: HashMap<String, Instant>,
    unschedulable_since: Option<Instant>,
    expires_at: u64,
    pub(crate) caches: Vec<CacheClaim>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl<'a> JobRun<'a> {
    pub(crate) fn new(
        shared: &'a Shared,
        job: &'a PreparedJob,
        events: &'a EventSender,
        cancel: &'a CancellationToken,
    ) -> Self {
        let names = JobNames::new(job.job_id.as_str());
        let limit = job.timeout.unwrap_or(shared.config.default_timeout);
        Self {
            pods: Api::namespaced(shared.client.clone(), &shared.namespace),
            cursor: CursorFile::new(&shared.cursor_dir, &crate::cursor_name(job.job_id.as_str())),
            names,
            shared,
            job,
            events,
            cancel,
            uid: None,
            seen: false,
            broken: None,
            setup_failure: None,
            deleted: false,
            checkpoints: Vec::new(),
            at_line_start: true,
            pulling_since: HashMap::new(),
            unschedulable_since: None,
            expires_at: unix_now() + limit.as_secs(),
            caches: Vec::new(),
        }
    }

    fn err(&self, action: impl Into<String>, e: &kube::Error) -> ExecutorError {
        job_error(&self.job.job_id, action, e)
    }

    fn closed(&self) -> ExecutorError {
        ExecutorError::EventsClosed {
            job_id: self.job.job_id.clone(),
        }
    }

    async fn send(&mut self, event: ExecEvent) -> Result<(), ExecutorError> {
        if let ExecEvent::Output { data, .. } = &event
            && let Some(&last) = data.last()
        {
            self.at_line_start = last == b'\n';
        }
        if let ExecEvent::StepStarted { .. } = &event {
            self.at_line_start = true;
        }
        self.events.send(event).await.map_err(|_| self.closed())
    }

    async fn started(&mut self, step: &StepSpec) -> Result<(), ExecutorError> {
        self.send(ExecEvent::StepStarted {
            index: step.index,
            at: SystemTime::now(),
        })
        .await
    }

    async fn note(&mut self, step: &StepSpec, text: &str) -> Result<(), ExecutorError> {
        // The note starts a line of its own even when the step's output did not end one.
        let mut out = if self.at_line_start {
            String::new()
        } else {
            "\n".to_owned()
        };
        for line in text.lines() {
            out.push_str("[outpost] ");
            out.push_str(line);
            out.push('\n');
        }
        self.send(ExecEvent::Output {
            index: step.index,
            stream: OutputStream::Stderr,
            data: Bytes::from(out),
        })
        .await
    }

    /// Creates the pod (after removing an earlier attempt's), its Secret, and sends the checkout.
    pub(crate) async fn start_fresh(&mut self) -> Result<(), ExecutorError> {
        self.caches = crate::caches::acquire(self.shared, self.job).await?;
        let claims: Vec<String> = self.caches.iter().map(|c| c.name.clone()).collect();
        let receive = crate::workspace::has_content(&self.job.workspace)
            .await
            .map_err(|source| ExecutorError::Workspace {
                job_id: self.job.job_id.clone(),
                path: self.job.workspace.clone(),
                source,
            })?;
        let limit = self
            .job
            .timeout
            .unwrap_or(self.shared.config.default_timeout);
        let inputs = PodInputs {
            names: &self.names,
            namespace: &self.shared.namespace,
            expires_at: self.expires_at,
            deadline_seconds: limit.as_secs().max(1),
            cache_claims: &claims,
            receive,
        };
        let pod = spec::build_pod(self.job, &self.shared.config, &inputs).map_err(|e| {
            ExecutorError::Invalid {
                backend: crate::KIND,
                job_id: self.job.job_id.clone(),
                message: e.0,
            }
        })?;
        let mut attempts = 0;
        let created = loop {
            attempts += 1;
            match self.pods.create(&PostParams::default(), &pod).await {
                Ok(p) => break p,
                // An earlier run of this job left its pod: it goes, with what it owns.
                Err(e) if status_of(&e) == Some(409) && attempts < 4 => {
                    tracing::info!(pod = %self.names.pod, "removing the pod of an earlier attempt");
                    self.delete_pod(0).await?;
                    self.wait_gone(None).await?;
                }
                Err(e) => return Err(self.err(format!("create pod {}", self.names.pod), &e)),
            }
        };
        self.uid = created.metadata.uid.clone();
        let uid = self.uid.clone().unwrap_or_default();
        if !self.job.secrets.is_empty() {
            let secret = spec::build_secret(self.job, &inputs, &uid).map_err(|e| {
                ExecutorError::Invalid {
                    backend: crate::KIND,
                    job_id: self.job.job_id.clone(),
                    message: e.0,
                }
            })?;
            self.create_secret(&secret).await?;
        }
        if receive && let Err(failure) = self.send_workspace().await? {
            self.setup_failure = Some(failure);
        }
        Ok(())
    }

    async fn create_secret(&self, secret: &KubeSecret) -> Result<(), ExecutorError> {
        let api: Api<KubeSecret> =
            Api::namespaced(self.shared.client.clone(), &self.shared.namespace);
        let name = &self.names.secret;
        match api.create(&PostParams::default(), secret).await {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(409) => {
                // An earlier attempt's, owned by its pod: replaced by this one's.
                match api.delete(name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(e) if status_of(&e) == Some(404) => {}
                    Err(e) => return Err(self.err(format!("delete secret {name}"), &e)),
                }
                api.create(&PostParams::default(), secret)
                    .await
                    .map(|_| ())
                    .map_err(|e| self.err(format!("create secret {name}"), &e))
            }
            Err(e) => Err(self.err(format!("create secret {name}"), &e)),
        }
    }

    /// Streams the checkout into `outpost-receive` once it runs. The inner `Err` is a failure of
    /// the job (the first step's), the outer one of the backend.
    async fn send_workspace(&mut self) -> Result<Result<(), StepOutcome>, ExecutorError> {
        let c = names::RECEIVE_CONTAINER.to_owned();
        let wait = self
            .wait_pod(std::slice::from_ref(&c), true, |pod| {
                match outcome::phase(pod, &c) {
                    Phase::Running => Some(true),
                    Phase::Terminated(_) => Some(false),
                    Phase::Waiting { .. } => None,
                }
            })
            .await?;
        match wait {
            Wait::Ready(true) => {}
            Wait::Ready(false) => {}
            Wait::Stop(stop) => return Ok(Err(self.stop_outcome("the checkout", stop).await?)),
        }
        let ap = AttachParams::default()
            .container(names::RECEIVE_CONTAINER)
            .stdin(true)
            .stdout(false)
            .stderr(false);
        let mut attached = self
            .pods
            .attach(&self.names.pod, &ap)
            .await
            .map_err(|e| self.err(format!("attach to {}/{c}", self.names.pod), &e))?;
        let Some(mut stdin) = attached.stdin() else {
            return Ok(Err(outcome::infrastructure(
                "the receive container has no stdin",
            )));
        };
        let (mut stream, task) = crate::workspace::tar_stream(self.job.workspace.clone());
        let mut write_error = None;
        while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
            if let Err(e) = stdin.write_all(&chunk).await {
                write_error = Some(e);
                break;
            }
        }
        drop(stream);
        let _ = stdin.shutdown().await;
        drop(stdin);
        let built = task.await;
        match built {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                return Err(ExecutorError::Workspace {
                    job_id: self.job.job_id.clone(),
                    path: self.job.workspace.clone(),
                    source,
                });
            }
            Err(e) => {
                return Err(ExecutorError::Workspace {
                    job_id: self.job.job_id.clone(),
                    path: self.job.workspace.clone(),
                    source: std::io::Error::other(e.to_string()),
                });
            }
        }
        let ended = self
            .wait_pod(std::slice::from_ref(&c), true, |pod| {
                match outcome::phase(pod, &c) {
                    Phase::Terminated(e) => Some(e),
                    _ => None,
                }
            })
            .await?;
        drop(attached);
        match ended {
            Wait::Ready(Ended { exit_code: 0, .. }) => Ok(Ok(())),
            Wait::Ready(e) => Ok(Err(outcome::infrastructure(format!(
                "the checkout could not be received in the pod (exit code {}{}){}",
                e.exit_code,
                e.message
                    .as_deref()
                    .map(|m| format!(": {}", m.trim()))
                    .unwrap_or_default(),
                write_error
                    .map(|w| format!("; sending it failed: {w}"))
                    .unwrap_or_default()
            )))),
            Wait::Stop(stop) => Ok(Err(self.stop_outcome("the checkout", stop).await?)),
        }
    }

    /// Finds the pod of a job a previous runner process started.
    pub(crate) async fn start_resumed(&mut self) -> Result<(), ExecutorError> {
        self.shared.watch.ready().await;
        match self.shared.watch.get(&self.names.pod) {
            Some(pod) => {
                self.uid = pod.metadata.uid.clone();
                self.seen = true;
                self.expires_at = pod
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(names::labels::EXPIRES_AT))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(self.expires_at);
                self.checkpoints = self.cursor.load().await?;
                if !self.job.secrets.is_empty() {
                    let limit = self
                        .job
                        .timeout
                        .unwrap_or(self.shared.config.default_timeout);
                    let inputs = PodInputs {
                        names: &self.names,
                        namespace: &self.shared.namespace,
                        expires_at: self.expires_at,
                        deadline_seconds: limit.as_secs().max(1),
                        cache_claims: &[],
                        receive: false,
                    };
                    let uid = self.uid.clone().unwrap_or_default();
                    let secret = spec::build_secret(self.job, &inputs, &uid).map_err(|e| {
                        ExecutorError::Invalid {
                            backend: crate::KIND,
                            job_id: self.job.job_id.clone(),
                            message: e.0,
                        }
                    })?;
                    // The previous process may have died between the pod and its Secret.
                    let api: Api<KubeSecret> =
                        Api::namespaced(self.shared.client.clone(), &self.shared.namespace);
                    match api.create(&PostParams::default(), &secret).await {
                        Ok(_) => {}
                        Err(e) if status_of(&e) == Some(409) => {}
                        Err(e) => {
                            return Err(
                                self.err(format!("create secret {}", self.names.secret), &e)
                            );
                        }
                    }
                }
            }
            None => {
                self.broken = Some(format!(
                    "the job's pod {} is gone (deleted while no runner watched it)",
                    self.names.pod
                ));
            }
        }
        self.caches = crate::caches::held_by(self.shared, self.job).await?;
        Ok(())
    }

    /// Whether `pod` is this run's pod (a pod of the same name from another attempt is not).
    fn ours(&mut self, pod: &Pod) -> bool {
        let ours = match (&self.uid, &pod.metadata.uid) {
            (Some(a), Some(b)) => a == b,
            (None, Some(b)) => {
                self.uid = Some(b.clone());
                true
            }
            _ => false,
        };
        self.seen |= ours;
        ours
    }

    /// Waits until `ready` answers for the job's pod, or something stops the pod (its end, an
    /// unschedulable pod or an image of `containers` or of an init container that cannot be
    /// pulled, past their limits, a cancel when `watch_cancel`). Woken by the shared watch and
    /// by those limits' timers only.
    async fn wait_pod<T>(
        &mut self,
        containers: &[String],
        watch_cancel: bool,
        mut ready: impl FnMut(&Pod) -> Option<T>,
    ) -> Result<Wait<T>, ExecutorError> {
        let mut rx = self.shared.watch.subscribe();
        loop {
            rx.borrow_and_update();
            let now = Instant::now();
            let pod = self.shared.watch.get(&self.names.pod);
            match pod {
                Some(pod) if self.ours(&pod) => {
                    if let Some(t) = ready(&pod) {
                        return Ok(Wait::Ready(t));
                    }
                    if let Some(stop) = self.problem(&pod, containers, now) {
                        return Ok(Wait::Stop(stop));
                    }
                }
                // Once the store showed the pod, its absence there is its deletion.
                _ if self.uid.is_some() && (self.seen || self.confirmed_gone().await?) => {
                    return Ok(Wait::Stop(Stop::Broken(format!(
                        "the pod {} was deleted",
                        self.names.pod
                    ))));
                }
                _ => {}
            }
            if watch_cancel && self.cancel.is_cancelled() {
                return Ok(Wait::Stop(Stop::Cancelled));
            }
            let timer = self.next_timer();
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return Err(ExecutorError::Engine {
                            backend: crate::KIND,
                            action: "watch the job's pod".to_owned(),
                            job_id: self.job.job_id.clone(),
                            message: "the pod watch stopped".to_owned(),
                        });
                    }
                }
                () = sleep_until_opt(timer) => {}
                () = self.cancel.cancelled(), if watch_cancel => {}
            }
        }
    }

    /// Whether the pod, absent from the store, is really gone (the store may not have seen a
    /// pod just created yet): asked once of the API.
    async fn confirmed_gone(&self) -> Result<bool, ExecutorError> {
        match self.pods.get_opt(&self.names.pod).await {
            Ok(None) => Ok(true),
            Ok(Some(p)) => Ok(p.metadata.uid != self.uid),
            Err(e) => Err(self.err(format!("get pod {}", self.names.pod), &e)),
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        let c = &self.shared.config;
        let pulls = self
            .pulling_since
            .values()
            .map(|since| *since + c.image_pull_grace);
        let unschedulable = self
            .unschedulable_since
            .map(|since| since + c.unschedulable_timeout);
        pulls.chain(unschedulable).min()
    }

    /// What stops the pod now, if anything; starts the timers of the limits.
    fn problem(&mut self, pod: &Pod, containers: &[String], now: Instant) -> Option<Stop> {
        match outcome::pod_end(pod) {
            Some(PodEnd::Deadline) => return Some(Stop::Deadline),
            Some(PodEnd::Broken(m)) => return Some(Stop::Broken(m)),
            None => {}
        }
        if let Some(m) = outcome::failed_init(pod) {
            return Some(Stop::Broken(m));
        }
        let config = &self.shared.config;
        match outcome::unschedulable(pod) {
            Some(message) => {
                let since = *self.unschedulable_since.get_or_insert(now);
                if now >= since + config.unschedulable_timeout {
                    return Some(Stop::Broken(format!(
                        "the pod could not be scheduled for {}: {message}",
                        outpost_time::format(config.unschedulable_timeout)
                    )));
                }
            }
            None => self.unschedulable_since = None,
        }
        let spec = pod.spec.as_ref();
        let init = spec
            .and_then(|s| s.init_containers.as_ref())
            .into_iter()
            .flatten();
        let watched = init
            .chain(spec.map(|s| &s.containers).into_iter().flatten())
            .filter(|c| {
                c.name.starts_with("outpost-")
                    || c.name.starts_with("svc-")
                    || containers.contains(&c.name)
            });
        let mut pulling = Vec::new();
        for c in watched {
            if let Phase::Waiting {
                reason: Some(reason),
                message,
            } = outcome::phase(pod, &c.name)
                && IMAGE_PULL_REASONS.contains(&reason.as_str())
            {
                let since = *self.pulling_since.entry(c.name.clone()).or_insert(now);
                pulling.push(c.name.clone());
                if now >= since + config.image_pull_grace {
                    return Some(Stop::ImagePull {
                        container: c.name.clone(),
                        image: c.image.clone().unwrap_or_default(),
                        reason,
                        message: message.unwrap_or_default(),
                    });
                }
            }
        }
        self.pulling_since.retain(|name, _| pulling.contains(name));
        None
    }

    /// The outcome of a step (or of the checkout, `what`) that `stop` ended. For a failure,
    /// the pod's events are written into the step's log; the pod runs no more steps.
    async fn stop_outcome(&mut self, what: &str, stop: Stop) -> Result<StepOutcome, ExecutorError> {
        if self.deleted {
            // The pod went because of a cancel: whatever its last state said.
            return Ok(StepOutcome::cancelled(what));
        }
        let outcome = match &stop {
            Stop::Cancelled => {
                self.cancel_pod().await?;
                return Ok(StepOutcome::cancelled(what));
            }
            Stop::Deadline => {
                let limit = self
                    .job
                    .timeout
                    .unwrap_or(self.shared.config.default_timeout);
                StepOutcome::stopped_by_job_timeout(what, limit, None)
            }
            Stop::Broken(m) => outcome::infrastructure(m.clone()),
            Stop::ImagePull {
                container,
                image,
                reason,
                message,
            } => outcome::image_pull_outcome(container, image, reason, message),
        };
        self.broken = Some(
            outcome
                .failure
                .as_ref()
                .map_or_else(|| "the pod stopped".to_owned(), |f| f.message.clone()),
        );
        Ok(outcome)
    }

    /// Writes the failure and the pod's events into step `step`'s log.
    async fn report_failure(
        &mut self,
        step: &StepSpec,
        outcome: &StepOutcome,
    ) -> Result<(), ExecutorError> {
        let Some(failure) = &outcome.failure else {
            return Ok(());
        };
        let mut text = format!(
            "step `{}`: {} ({})\n",
            step.name, failure.message, failure.class
        );
        text.push_str(&format!("events of pod {}:\n", self.names.pod));
        text.push_str(&self.pod_events().await);
        self.note(step, &text).await
    }

    /// The pod's events, one line each, oldest first.
    async fn pod_events(&self) -> String {
        let api: Api<Event> = Api::namespaced(self.shared.client.clone(), &self.shared.namespace);
        let lp = ListParams::default().fields(&format!("involvedObject.name={}", self.names.pod));
        match api.list(&lp).await {
            Ok(list) => {
                let mut events: Vec<Event> = list.items;
                // Event times have second precision: within a second, the order they were
                // written in (resourceVersion, a number on every API server in practice).
                events.sort_by_key(|e| {
                    let time = e
                        .last_timestamp
                        .as_ref()
                        .map(|t| t.0)
                        .or(e.event_time.as_ref().map(|t| t.0))
                        .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0));
                    let written = e
                        .metadata
                        .resource_version
                        .as_deref()
                        .and_then(|v| v.parse::<u64>().ok());
                    (time, written)
                });
                if events.is_empty() {
                    return "  (none)\n".to_owned();
                }
                events
                    .iter()
                    .map(|e| {
                        format!(
                            "  {} {} {}: {}\n",
                            e.type_.as_deref().unwrap_or("Normal"),
                            e.involved_object.field_path.as_deref().unwrap_or("pod"),
                            e.reason.as_deref().unwrap_or("-"),
                            e.message.as_deref().unwrap_or("").trim()
                        )
                    })
                    .collect()
            }
            Err(e) => format!("  (cannot list them: {})\n", crate::error::api_message(&e)),
        }
    }

    /// Deletes the pod for a cancel (the running step's wrapper gets SIGTERM and records
    /// `cancelled`; the kubelet kills after the grace period). Once.
    async fn cancel_pod(&mut self) -> Result<(), ExecutorError> {
        if !self.deleted {
            let grace =
                u32::try_from(self.shared.config.cancel_grace.as_secs()).unwrap_or(u32::MAX);
            self.delete_pod(grace).await?;
            self.deleted = true;
        }
        Ok(())
    }

    async fn delete_pod(&self, grace: u32) -> Result<(), ExecutorError> {
        let dp = DeleteParams {
            grace_period_seconds: Some(grace),
            ..DeleteParams::default()
        };
        match self.pods.delete(&self.names.pod, &dp).await {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(self.err(format!("delete pod {}", self.names.pod), &e)),
        }
    }

    /// Waits until the pod (`uid`, else any of the job's name) is gone from the cluster.
    async fn wait_gone(&self, uid: Option<&str>) -> Result<(), ExecutorError> {
        let mut rx = self.shared.watch.subscribe();
        let mut asked = false;
        loop {
            rx.borrow_and_update();
            let present = self
                .shared
                .watch
                .get(&self.names.pod)
                .is_some_and(|p| uid.is_none() || p.metadata.uid.as_deref() == uid);
            if !present {
                // The store may not have seen a pod that was made and deleted just now; once
                // it showed this one, its absence is its deletion.
                let seen = self.seen && uid.is_some() && uid == self.uid.as_deref();
                if asked || seen {
                    return Ok(());
                }
                asked = true;
                match self.pods.get_opt(&self.names.pod).await {
                    Ok(None) => return Ok(()),
                    Ok(Some(p)) if uid.is_some() && p.metadata.uid.as_deref() != uid => {
                        return Ok(());
                    }
                    Ok(Some(_)) => {}
                    Err(e) => return Err(self.err(format!("get pod {}", self.names.pod), &e)),
                }
            }
            if rx.changed().await.is_err() {
                return Ok(());
            }
        }
    }

    /// Removes the pod at the end of the job (what it owns goes with it), waits until it is
    /// gone, releases the caches and the cursor file.
    pub(crate) async fn finish(mut self, cancelled: bool) -> Result<(), ExecutorError> {
        if cancelled {
            self.cancel_pod().await?;
        } else {
            // Every step has ended: only sidecars run, and nothing of theirs is kept. With
            // caches, a graceful delete (1s): the pod is gone only once its containers are, so
            // no process of this job still writes to a cache the next job mounts; without, the
            // object goes at once.
            let grace = if self.caches.is_empty() { 0 } else { 1 };
            self.delete_pod(grace).await?;
        }
        let uid = self.uid.clone();
        self.wait_gone(uid.as_deref()).await?;
        crate::caches::release(self.shared, self.job, &self.caches).await?;
        self.cursor.remove().await;
        Ok(())
    }

    /// Follows step `step`'s log from checkpoint `from` (the start without one), skipping up
    /// to `consumed`, then waits for the container's end; the step's outcome.
    async fn follow_step(
        &mut self,
        step: &StepSpec,
        from: Option<Checkpoint>,
        consumed: u64,
    ) -> Result<StepEnd, ExecutorError> {
        let container = names::step_container(step.index);
        let mut from = from;
        let mut consumed = consumed;
        loop {
            let lp = LogParams {
                container: Some(container.clone()),
                follow: true,
                timestamps: true,
                since_time: from.and_then(|c| jiff::Timestamp::from_second(c.at.as_second()).ok()),
                ..LogParams::default()
            };
            match self.read_log(step, &lp, from, &mut consumed).await? {
                LogEnd::Eof => break,
                LogEnd::Broken(e) => {
                    tracing::info!(pod = %self.names.pod, %container, error = %e, "the log stream broke; resuming");
                    from = Checkpoint::pick(&self.checkpoints, step.index, consumed);
                }
            }
        }
        let c = container.clone();
        let ended = self
            .wait_pod(
                std::slice::from_ref(&c),
                false,
                |pod| match outcome::phase(pod, &c) {
                    Phase::Terminated(e) => Some(e),
                    _ => None,
                },
            )
            .await?;
        let ended = match ended {
            Wait::Ready(e) => e,
            Wait::Stop(stop) => {
                let o = self.stop_outcome(&step.name, stop.clone()).await?;
                if stop == Stop::Deadline {
                    return self.deadline_end(step, None).await;
                }
                self.report_failure(step, &o).await?;
                return Ok(StepEnd::of(o));
            }
        };
        self.step_ended(step, &ended).await
    }

    /// The end of a step stopped by the pod's deadline, with the pod's events in its log.
    async fn deadline_end(
        &mut self,
        step: &StepSpec,
        exit: Option<i32>,
    ) -> Result<StepEnd, ExecutorError> {
        let limit = self
            .job
            .timeout
            .unwrap_or(self.shared.config.default_timeout);
        self.broken = Some("the job's deadline passed".to_owned());
        let end = StepEnd::job_timeout(step, limit, exit);
        self.report_failure(step, &end.outcome).await?;
        Ok(end)
    }

    /// The outcome of a step whose container ended.
    async fn step_ended(
        &mut self,
        step: &StepSpec,
        ended: &Ended,
    ) -> Result<StepEnd, ExecutorError> {
        let (mut o, marker) = outcome::step_outcome(step, ended);
        if self.deleted {
            return Ok(StepEnd::of(StepOutcome {
                exit_code: o.exit_code,
                ..StepOutcome::cancelled(&step.name)
            }));
        }
        if !outcome::pod_goes_on(&o, marker) {
            // Stopped by something else than the wrapper's own end: the pod tells what.
            let end = self
                .wait_pod(&[], true, |pod| {
                    let terminal = pod
                        .status
                        .as_ref()
                        .and_then(|s| s.phase.as_deref())
                        .is_some_and(|p| p == "Failed" || p == "Succeeded");
                    outcome::pod_end(pod).map(Some).or(terminal.then_some(None))
                })
                .await?;
            match end {
                Wait::Ready(Some(PodEnd::Deadline)) | Wait::Stop(Stop::Deadline) => {
                    return self.deadline_end(step, Some(ended.exit_code)).await;
                }
                Wait::Ready(Some(PodEnd::Broken(m))) | Wait::Stop(Stop::Broken(m)) => {
                    o = outcome::infrastructure(m);
                }
                Wait::Stop(Stop::Cancelled) => {
                    self.cancel_pod().await?;
                    return Ok(StepEnd::of(StepOutcome::cancelled(&step.name)));
                }
                Wait::Ready(None) | Wait::Stop(Stop::ImagePull { .. }) => {}
            }
            self.broken = Some(format!(
                "step `{}` did not end through its wrapper",
                step.name
            ));
        }
        if o.failure.as_ref().is_some_and(|f| {
            f.class != outpost_protocol::FailureClass::Script
                && f.class != outpost_protocol::FailureClass::Timeout
        }) {
            self.report_failure(step, &o).await?;
        }
        Ok(StepEnd::of(o))
    }

    /// Reads one log request to its end, sending the output past `consumed` and writing
    /// checkpoints. With `from`, the read began at its second: lines stamped before its time
    /// are dropped, and its line, found by its exact time, is at its offset.
    async fn read_log(
        &mut self,
        step: &StepSpec,
        lp: &LogParams,
        from: Option<Checkpoint>,
        consumed: &mut u64,
    ) -> Result<LogEnd, ExecutorError> {
        let stream = self.pods.log_stream(&self.names.pod, lp).await;
        let mut stream = match stream {
            Ok(s) => Box::pin(s),
            Err(e) => {
                let what = format!(
                    "follow the log of {}/{}",
                    self.names.pod,
                    names::step_container(step.index)
                );
                return Err(self.err(what, &e));
            }
        };
        let mut parser = StampParser::default();
        let mut f = Follow {
            step: step.index,
            offset: from.map_or(0, |c| c.offset),
            syncing: from,
            dropping: false,
            previous: None,
            last: self
                .checkpoints
                .iter()
                .filter(|c| c.step == step.index)
                .max_by_key(|c| c.offset)
                .map(|c| (c.at.as_second(), c.offset)),
            candidate: None,
            consumed: *consumed,
            out: Vec::new(),
            marks: Vec::new(),
            gap: None,
        };
        let mut cancel_seen = false;
        let mut ended = false;
        while !ended {
            let chunk = tokio::select! {
                chunk = stream.fill_buf() => match chunk {
                    Ok([]) => None,
                    Ok(c) => Some(Ok(c.to_vec())),
                    Err(e) => Some(Err(e)),
                },
                () = self.cancel.cancelled(), if !cancel_seen => {
                    cancel_seen = true;
                    // The step gets SIGTERM; its last output still arrives on this stream.
                    self.cancel_pod().await?;
                    continue;
                }
            };
            match chunk {
                None => {
                    parser.finish(&mut |piece| f.piece(piece));
                    f.end_chunk();
                    ended = true;
                }
                Some(Ok(c)) => {
                    stream.consume_unpin(c.len());
                    parser.feed(&c, &mut |piece| f.piece(piece));
                    f.end_chunk();
                }
                Some(Err(e)) => {
                    *consumed = f.consumed;
                    return Ok(LogEnd::Broken(e.to_string()));
                }
            }
            if let Some(at) = f.gap.take() {
                let text = format!(
                    "the start of the log lines of step `{}` from {at} on was rotated away by \
                     the kubelet while no runner read them; going on from the oldest line kept",
                    step.name
                );
                self.note(step, &text).await?;
            }
            for m in std::mem::take(&mut f.marks) {
                self.checkpoints.push(m);
                self.cursor.append(m).await.map_err(ExecutorError::from)?;
            }
            if !f.out.is_empty() {
                let data = Bytes::from(std::mem::take(&mut f.out));
                *consumed = f.consumed;
                self.send(ExecEvent::Output {
                    index: step.index,
                    stream: OutputStream::Stdout,
                    data,
                })
                .await?;
            }
        }
        *consumed = f.consumed;
        Ok(LogEnd::Eof)
    }

    /// Waits until step `step`'s container runs (or has ended) and follows it.
    async fn step_from_start(
        &mut self,
        step: &StepSpec,
        from: Option<Checkpoint>,
        consumed: u64,
        report_start: bool,
    ) -> Result<StepEnd, ExecutorError> {
        let c = names::step_container(step.index);
        let wait = self
            .wait_pod(std::slice::from_ref(&c), true, |pod| {
                match outcome::phase(pod, &c) {
                    Phase::Running | Phase::Terminated(_) => Some(()),
                    Phase::Waiting { .. } => None,
                }
            })
            .await?;
        match wait {
            Wait::Ready(()) => {
                if report_start {
                    self.started(step).await?;
                }
                self.follow_step(step, from, consumed).await
            }
            Wait::Stop(stop) => {
                if report_start {
                    self.started(step).await?;
                }
                let deadline = stop == Stop::Deadline;
                let o = self.stop_outcome(&step.name, stop).await?;
                if deadline {
                    return self.deadline_end(step, None).await;
                }
                if o.state != outpost_protocol::StepState::Cancelled {
                    self.report_failure(step, &o).await?;
                }
                Ok(StepEnd::of(o))
            }
        }
    }
}

enum LogEnd {
    Eof,
    Broken(String),
}

/// Where one log read is: the step's output offset, the checkpoint it looks for, what goes out.
struct Follow {
    step: u32,
    offset: u64,
    /// The checkpoint whose line the read has not reached yet.
    syncing: Option<Checkpoint>,
    /// Inside a line stamped before that checkpoint (dropped).
    dropping: bool,
    /// The previous line's timestamp.
    previous: Option<jiff::Timestamp>,
    /// The second and offset of the step's last checkpoint.
    last: Option<(i64, u64)>,
    /// The last line of the current chunk that can be found again by its time.
    candidate: Option<(jiff::Timestamp, u64)>,
    /// Output bytes the runner has (sent before, or now in `out`).
    consumed: u64,
    out: Vec<u8>,
    marks: Vec<Checkpoint>,
    /// The checkpoint's line was gone (rotated): its time, to say so.
    gap: Option<jiff::Timestamp>,
}

impl Follow {
    /// After a chunk: a checkpoint at the chunk's last line that can be found again, when the
    /// second changed since the last one or [`crate::logs::CHECKPOINT_BYTES`] of output came.
    /// So the last checkpoint before any consumed byte is at most about a chunk before it,
    /// which is what keeps it in the kubelet's current log file after a rotation.
    fn end_chunk(&mut self) {
        let Some((at, offset)) = self.candidate.take() else {
            return;
        };
        let due = match self.last {
            None => true,
            Some((second, last)) => {
                offset > last
                    && (at.as_second() > second || offset >= last + crate::logs::CHECKPOINT_BYTES)
            }
        };
        if due {
            self.last = Some((at.as_second(), offset));
            self.marks.push(Checkpoint {
                step: self.step,
                at,
                offset,
            });
        }
    }

    fn piece(&mut self, piece: Piece<'_>) {
        match piece {
            Piece::Stamp(ts) => {
                if let Some(cp) = self.syncing {
                    if ts < cp.at {
                        self.dropping = true;
                        self.previous = Some(ts);
                        return;
                    }
                    self.syncing = None;
                    self.dropping = false;
                    if ts == cp.at {
                        self.offset = cp.offset;
                    } else {
                        // Where this line is in the step's output cannot be known: nothing is
                        // skipped.
                        self.gap = Some(cp.at);
                        self.offset = self.consumed;
                    }
                }
                if self.previous != Some(ts) {
                    // A line whose time tells it apart from the one before: it can be found
                    // again by that time.
                    self.candidate = Some((ts, self.offset));
                }
                self.previous = Some(ts);
            }
            Piece::Content(c) => {
                if self.dropping || self.syncing.is_some() {
                    return;
                }
                let len = c.len() as u64;
                let end = self.offset + len;
                if end > self.consumed {
                    let from = usize::try_from(self.consumed.saturating_sub(self.offset))
                        .unwrap_or(usize::MAX);
                    self.out.extend_from_slice(&c[from.min(c.len())..]);
                    self.consumed = end;
                }
                self.offset = end;
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl StepRunner for JobRun<'_> {
    async fn run_step(
        &mut self,
        step: &StepSpec,
        _job_deadline: Option<Instant>,
    ) -> Result<StepEnd, ExecutorError> {
        if let Some(o) = self.setup_failure.take() {
            self.started(step).await?;
            self.report_failure(step, &o).await?;
            self.broken = Some("the checkout did not reach the pod".to_owned());
            return Ok(StepEnd::of(o));
        }
        if self.broken.is_some() {
            // Its wrapper waits for a marker that never comes: the pod cannot run it.
            return Ok(StepEnd::of(StepOutcome::skipped()));
        }
        self.step_from_start(step, None, 0, true).await
    }

    async fn resume_step(
        &mut self,
        step: &StepSpec,
        resume: Resume,
        _job_deadline: Option<Instant>,
    ) -> Result<StepEnd, ExecutorError> {
        if let Some(why) = &self.broken {
            return Ok(StepEnd::of(outcome::infrastructure(why.clone())));
        }
        let from = Checkpoint::pick(&self.checkpoints, step.index, resume.output_bytes);
        self.step_from_start(step, from, resume.output_bytes, false)
            .await
    }

    async fn earlier_outcome(&mut self, step: &StepSpec) -> Result<StepOutcome, ExecutorError> {
        if let Some(why) = &self.broken {
            return Ok(outcome::infrastructure(why.clone()));
        }
        let c = names::step_container(step.index);
        let wait = self
            .wait_pod(
                std::slice::from_ref(&c),
                false,
                |pod| match outcome::phase(pod, &c) {
                    Phase::Terminated(e) => Some(e),
                    _ => None,
                },
            )
            .await?;
        Ok(match wait {
            Wait::Ready(e) => outcome::step_outcome(step, &e).0,
            Wait::Stop(Stop::Deadline) => {
                let limit = self
                    .job
                    .timeout
                    .unwrap_or(self.shared.config.default_timeout);
                StepOutcome::stopped_by_job_timeout(&step.name, limit, None)
            }
            Wait::Stop(_) => outcome::infrastructure(format!(
                "step `{}` has no end in the pod's status",
                step.name
            )),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log of `lines` as (second, nanos, text), read with `from` after `consumed` bytes: what
    /// goes out, and the checkpoints written.
    fn read(
        lines: &[(i64, i32, &str)],
        from: Option<Checkpoint>,
        consumed: u64,
        known: &[Checkpoint],
    ) -> (String, Vec<Checkpoint>, bool) {
        let mut f = Follow {
            step: 0,
            offset: from.map_or(0, |c| c.offset),
            syncing: from,
            dropping: false,
            previous: None,
            last: known
                .iter()
                .max_by_key(|c| c.offset)
                .map(|c| (c.at.as_second(), c.offset)),
            candidate: None,
            consumed,
            out: Vec::new(),
            marks: Vec::new(),
            gap: None,
        };
        let mut p = StampParser::default();
        for (s, n, text) in lines {
            let ts = jiff::Timestamp::new(*s, *n).expect("in range");
            let line = format!("{ts} {text}\n");
            p.feed(line.as_bytes(), &mut |piece| f.piece(piece));
            f.end_chunk();
        }
        p.finish(&mut |piece| f.piece(piece));
        f.end_chunk();
        (
            String::from_utf8(f.out).expect("utf-8"),
            f.marks,
            f.gap.is_some(),
        )
    }

    fn log() -> Vec<(i64, i32, &'static str)> {
        vec![
            (100, 1, "a"),
            (100, 2, "b"),
            (101, 1, "c"),
            (101, 5, "d"),
            (102, 0, "e"),
        ]
    }

    #[test]
    fn a_first_read_sends_everything_and_checkpoints_each_second() {
        let (out, marks, gap) = read(&log(), None, 0, &[]);
        assert_eq!(out, "a\nb\nc\nd\ne\n");
        assert!(!gap);
        let got: Vec<(i64, u64)> = marks.iter().map(|m| (m.at.as_second(), m.offset)).collect();
        assert_eq!(got, [(100, 0), (101, 4), (102, 8)]);
    }

    #[test]
    fn a_resume_finds_its_line_by_time_and_skips_what_was_sent() {
        let (_, marks, _) = read(&log(), None, 0, &[]);
        // 7 bytes were sent ("a b c d" minus the last newline): from the 101 checkpoint.
        let from = Checkpoint::pick(&marks, 0, 7);
        assert_eq!(from.map(|c| c.offset), Some(4));
        // sinceTime=101 returns the lines from second 101 on; one of them, stamped before the
        // checkpoint's line, is not the checkpoint's.
        let since: Vec<_> = log().into_iter().filter(|l| l.0 >= 101).collect();
        let (out, more, gap) = read(&since, from, 7, &marks);
        assert_eq!(out, "\ne\n");
        assert!(!gap);
        assert!(more.is_empty(), "no checkpoint twice: {more:?}");
        // A line of the same second stamped before the checkpoint's is dropped, not sent.
        let cp = Checkpoint {
            step: 0,
            at: jiff::Timestamp::new(101, 5).expect("in range"),
            offset: 6,
        };
        let (out, _, gap) = read(&since, Some(cp), 6, &[cp]);
        assert_eq!(out, "d\ne\n");
        assert!(!gap);
    }

    #[test]
    fn a_rotated_away_checkpoint_line_is_said_and_nothing_skipped() {
        let cp = Checkpoint {
            step: 0,
            at: jiff::Timestamp::new(100, 1).expect("in range"),
            offset: 0,
        };
        let rest: Vec<_> = log().into_iter().skip(3).collect();
        let (out, _, gap) = read(&rest, Some(cp), 6, &[cp]);
        assert!(gap);
        assert_eq!(out, "d\ne\n");
    }

    #[test]
    fn bursts_get_a_checkpoint_every_so_many_bytes() {
        let line = "x".repeat(99);
        let lines: Vec<(i64, i32, &str)> = (0..1000).map(|i| (200, i + 1, line.as_str())).collect();
        let (_, marks, _) = read(&lines, None, 0, &[]);
        let offsets: Vec<u64> = marks.iter().map(|m| m.offset).collect();
        // 41 lines of 100 bytes are the first to reach 4 KiB.
        let expected: Vec<u64> = (0..25).map(|i| i * 4100).collect();
        assert_eq!(offsets, expected);
    }
}
