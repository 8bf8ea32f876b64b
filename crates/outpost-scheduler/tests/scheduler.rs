//! The scheduler against the real hub binary (outpost-testkit) with real state directories and a
//! small in-process backend, [`ScriptExecutor`], whose step scripts are a tiny language:
//! `echo words…` (with `$NAME` expanded from the step's environment), `block` (until the test
//! releases it, or a cancel), `wait_cancel`, `fail N`; commands separated by `;`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use outpost_client::{ClientConfig, HubClient, RetryPolicy};
use outpost_executor::{
    CancellationToken, EventSender, ExecEvent, Executor, ExecutorError, JobId, JobOutcome,
    LiveJobs, OutputStream, PreparedJob, Resume, RunnerId, StepDecision, StepOutcome, StepPlan,
    SweepReport, job_outcome,
};
use outpost_protocol::{
    CompleteRequest, Failure, FailureClass, GitSource, JobDetails, JobResult, JobState, Source,
    StepState, SubmitJobRequest, paths,
};
use outpost_scheduler::{DrainStage, Scheduler, SchedulerConfig, SchedulerError, SchedulerHandle};
use outpost_testkit::{Org, TestHub, wait_until};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(60);

// -------------------------------------------------------------------------------------------
// The test backend
// -------------------------------------------------------------------------------------------

#[derive(Default)]
struct Record {
    /// Every `run` call: job id and resume point.
    runs: Vec<(JobId, Option<Resume>)>,
    /// Jobs whose first step has started.
    started: Vec<JobId>,
    /// When a job's cancellation token fired, as seen by a running step.
    cancelled_at: Vec<(JobId, Instant)>,
    /// The prepared jobs as received.
    jobs: Vec<PreparedJob>,
}

struct ScriptExecutor {
    record: Mutex<Record>,
    release: watch::Sender<bool>,
    /// What `running_jobs` answers.
    still_running: Vec<JobId>,
    can_resume: bool,
}

impl ScriptExecutor {
    fn new() -> Arc<Self> {
        Self::with_backend_jobs(Vec::new(), false)
    }

    fn with_backend_jobs(still_running: Vec<JobId>, can_resume: bool) -> Arc<Self> {
        Arc::new(Self {
            record: Mutex::default(),
            release: watch::channel(false).0,
            still_running,
            can_resume,
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Record) -> T) -> T {
        f(&self.record.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn started(&self, job_id: &str) -> bool {
        self.with(|r| r.started.iter().any(|j| j == job_id))
    }

    fn cancelled_at(&self, job_id: &str) -> Option<Instant> {
        self.with(|r| {
            r.cancelled_at
                .iter()
                .find(|(j, _)| j == job_id)
                .map(|(_, at)| *at)
        })
    }

    fn release_blocked(&self) {
        self.release.send_replace(true);
    }

    async fn send(
        events: &EventSender,
        job_id: &JobId,
        event: ExecEvent,
    ) -> Result<(), ExecutorError> {
        events
            .send(event)
            .await
            .map_err(|_| ExecutorError::EventsClosed {
                job_id: job_id.clone(),
            })
    }

    /// Runs one step's script; `None` when it was cancelled.
    async fn run_script(
        &self,
        job: &PreparedJob,
        index: u32,
        script: &str,
        mut skip: u64,
        events: &EventSender,
        cancel: &CancellationToken,
    ) -> Result<StepOutcome, ExecutorError> {
        let step = &job.steps[index as usize];
        let env = job.step_env(step);
        for command in script.split(';').map(str::trim).filter(|c| !c.is_empty()) {
            let (word, rest) = command.split_once(' ').unwrap_or((command, ""));
            match word {
                "echo" => {
                    let mut line = rest
                        .split(' ')
                        .map(|w| match w.strip_prefix('$') {
                            Some(name) => env.get(name).cloned().unwrap_or_default(),
                            None => w.to_owned(),
                        })
                        .collect::<Vec<_>>()
                        .join(" ");
                    line.push('\n');
                    let mut bytes = line.as_bytes();
                    let skipped = bytes.len().min(usize::try_from(skip).unwrap_or(usize::MAX));
                    bytes = &bytes[skipped..];
                    skip -= skipped as u64;
                    // Small pieces, so that secrets arrive split across chunks.
                    for piece in bytes.chunks(3) {
                        let event = ExecEvent::Output {
                            index,
                            stream: OutputStream::Stdout,
                            data: Bytes::copy_from_slice(piece),
                        };
                        Self::send(events, &job.job_id, event).await?;
                    }
                }
                "block" | "wait_cancel" => {
                    let mut release = self.release.subscribe();
                    let released = async {
                        if word == "block" {
                            let _ = release.wait_for(|r| *r).await;
                        } else {
                            std::future::pending::<()>().await;
                        }
                    };
                    tokio::select! {
                        () = released => {}
                        () = cancel.cancelled() => {
                            let now = Instant::now();
                            self.record.lock().unwrap_or_else(PoisonError::into_inner)
                                .cancelled_at.push((job.job_id.clone(), now));
                            return Ok(StepOutcome::cancelled(&step.name));
                        }
                    }
                }
                "fail" => {
                    let code = rest.trim().parse().unwrap_or(1);
                    return Ok(StepOutcome::exited(code, &step.name));
                }
                other => panic!("unknown test script command `{other}`"),
            }
        }
        Ok(StepOutcome::success())
    }
}

#[async_trait]
impl Executor for ScriptExecutor {
    fn kind(&self) -> &'static str {
        "script"
    }

    async fn run(
        &self,
        job: PreparedJob,
        resume: Option<Resume>,
        events: EventSender,
        cancel: CancellationToken,
    ) -> Result<JobOutcome, ExecutorError> {
        {
            let mut r = self.record.lock().unwrap_or_else(PoisonError::into_inner);
            r.runs.push((job.job_id.clone(), resume));
            r.jobs.push(job.clone());
        }
        if resume.is_some() && !self.can_resume {
            return Err(ExecutorError::ResumeUnsupported {
                backend: "script",
                job_id: job.job_id.clone(),
            });
        }
        let mut plan = StepPlan::new();
        let mut outcomes = Vec::new();
        for step in &job.steps {
            // A resumed job replays the step it was in, minus the output already consumed
            // (steps before it count as succeeded).
            let mut skip = 0;
            if let Some(r) = resume {
                if step.index < r.step_index {
                    outcomes.push(StepOutcome::success());
                    continue;
                }
                if step.index == r.step_index {
                    skip = r.output_bytes;
                }
            }
            if plan.decide(step.when) == StepDecision::Skip || cancel.is_cancelled() {
                let outcome = if cancel.is_cancelled() {
                    StepOutcome::cancelled(&step.name)
                } else {
                    StepOutcome::skipped()
                };
                let event = ExecEvent::StepFinished {
                    index: step.index,
                    at: SystemTime::now(),
                    outcome: outcome.clone(),
                };
                Self::send(&events, &job.job_id, event).await?;
                plan.record(&outcome);
                outcomes.push(outcome);
                continue;
            }
            let event = ExecEvent::StepStarted {
                index: step.index,
                at: SystemTime::now(),
            };
            Self::send(&events, &job.job_id, event).await?;
            self.record
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .started
                .push(job.job_id.clone());
            let outcome = self
                .run_script(&job, step.index, &step.run, skip, &events, &cancel)
                .await?;
            let event = ExecEvent::StepFinished {
                index: step.index,
                at: SystemTime::now(),
                outcome: outcome.clone(),
            };
            Self::send(&events, &job.job_id, event).await?;
            plan.record(&outcome);
            outcomes.push(outcome);
        }
        Ok(job_outcome(&outcomes, None))
    }

    async fn running_jobs(&self, _runner_id: &RunnerId) -> Result<Vec<JobId>, ExecutorError> {
        Ok(self.still_running.clone())
    }

    async fn sweep(
        &self,
        _runner_id: &RunnerId,
        _live: &dyn LiveJobs,
    ) -> Result<SweepReport, ExecutorError> {
        Ok(SweepReport::default())
    }
}

// -------------------------------------------------------------------------------------------
// Helpers
// -------------------------------------------------------------------------------------------

struct Env {
    hub: TestHub,
    org: Org,
    token: String,
    state: tempfile::TempDir,
    secrets: tempfile::TempDir,
}

async fn env_with(hub: TestHub) -> Env {
    let org = hub.create_org(&outpost_testkit::unique("org")).await;
    let token = hub.create_runner_token(&org).await;
    Env {
        hub,
        org,
        token,
        state: tempfile::tempdir().expect("state dir"),
        secrets: tempfile::tempdir().expect("secrets dir"),
    }
}

async fn env() -> Env {
    env_with(TestHub::start().await).await
}

fn client(url: &str, token: &str) -> HubClient {
    let mut config = ClientConfig::new(url, token);
    config.retry = RetryPolicy {
        max_attempts: 3,
        max_elapsed: Duration::from_secs(5),
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(500),
    };
    config.request_timeout = Duration::from_secs(10);
    HubClient::new(config).expect("client")
}

impl Env {
    fn config(&self) -> SchedulerConfig {
        let mut config = SchedulerConfig::new(outpost_testkit::unique("runner"), self.state.path());
        config.acquire_wait = Duration::from_secs(5);
        config.secrets_dir = Some(self.secrets.path().to_owned());
        config
    }

    fn start(&self, config: SchedulerConfig, executor: Arc<ScriptExecutor>) -> Running {
        self.start_with(config, executor, &self.token)
    }

    fn start_with(
        &self,
        config: SchedulerConfig,
        executor: Arc<ScriptExecutor>,
        token: &str,
    ) -> Running {
        let mut registry = Registry::default();
        let scheduler = Scheduler::new(
            config,
            client(self.hub.url(), token),
            executor,
            &mut registry,
        )
        .expect("scheduler");
        let handle = scheduler.handle();
        let task = tokio::spawn(scheduler.run());
        Running {
            handle,
            task,
            registry,
        }
    }

    async fn submit(&self, pipeline: &str, variables: &[(&str, &str)]) -> String {
        let request = SubmitJobRequest {
            pipeline: Some(pipeline.to_owned()),
            variables: variables
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
            ..SubmitJobRequest::default()
        };
        self.hub.submit(&self.org, &request).await
    }

    async fn job(&self, job_id: &str) -> JobDetails {
        self.hub.job(&self.org, job_id).await
    }

    async fn wait_for_state(&self, job_id: &str, state: JobState) -> JobDetails {
        wait_until(&format!("job {job_id} is {state}"), DEADLINE, || async {
            self.job(job_id).await.state == state
        })
        .await;
        self.job(job_id).await
    }

    fn job_files_gone(&self, job_id: &str) -> bool {
        !self.state.path().join("jobs").join(job_id).exists()
            && !self.state.path().join("work").join(job_id).exists()
    }
}

struct Running {
    handle: SchedulerHandle,
    task: JoinHandle<Result<(), SchedulerError>>,
    registry: Registry,
}

impl Running {
    async fn wait_ready(&self) {
        wait_until("the scheduler is ready", DEADLINE, || {
            std::future::ready(self.handle.is_ready())
        })
        .await;
    }

    /// Drains and waits for `run` to return.
    async fn drain(self) -> Result<(), SchedulerError> {
        self.handle.drain();
        self.join().await
    }

    async fn join(self) -> Result<(), SchedulerError> {
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("run returns")
            .expect("run does not panic")
    }

    fn metrics(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("encode");
        text
    }
}

fn outbox_files(state: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(state.join("outbox"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect()
        })
        .unwrap_or_default()
}

// -------------------------------------------------------------------------------------------
// Tests
// -------------------------------------------------------------------------------------------

const SECRET: &str = "s3cr3t-deploy-value";

#[tokio::test]
async fn a_job_runs_to_success_with_its_log_masked_and_byte_exact() {
    let env = env().await;
    std::fs::write(
        env.secrets.path().join("DEPLOY_TOKEN"),
        format!("{SECRET}\n"),
    )
    .expect("secret");
    let executor = ScriptExecutor::new();
    let running = env.start(env.config(), executor.clone());
    let pipeline = "version: 1\n\
                    secrets: [DEPLOY_TOKEN]\n\
                    variables: { GREETING: hello, KEEP: kept }\n\
                    steps:\n\
                    \x20 - name: build\n\
                    \x20   run: echo building $GREETING $KEEP\n\
                    \x20 - name: deploy\n\
                    \x20   run: echo token $DEPLOY_TOKEN done\n";
    let job_id = env.submit(pipeline, &[("GREETING", "hi-from-hub")]).await;
    let job = env.wait_for_state(&job_id, JobState::Success).await;

    let expected =
        "── step build ──\nbuilding hi-from-hub kept\n\n── step deploy ──\ntoken [MASKED] done\n";
    assert_eq!(
        String::from_utf8_lossy(&env.hub.log(&env.org, &job_id).await),
        expected
    );
    assert_eq!(job.log_bytes, expected.len() as u64);
    let states: Vec<(String, StepState, Option<u64>)> = job
        .steps
        .iter()
        .map(|s| (s.name.clone(), s.state, s.log_offset))
        .collect();
    let deploy_at = expected.find("\n── step deploy").expect("header") as u64;
    assert_eq!(
        states,
        [
            ("build".to_owned(), StepState::Success, Some(0)),
            ("deploy".to_owned(), StepState::Success, Some(deploy_at)),
        ]
    );
    // The backend got the secret's value and the hub's variables over the pipeline's.
    let prepared = executor.with(|r| r.jobs[0].clone());
    assert_eq!(prepared.secrets[0].value, SECRET);
    assert_eq!(
        prepared.env.get("GREETING").map(String::as_str),
        Some("hi-from-hub")
    );
    assert_eq!(
        prepared.workspace,
        env.state.path().join("work").join(&job_id)
    );

    // Once acknowledged, nothing of the job is left on disk.
    wait_until("the job's files are removed", DEADLINE, || {
        std::future::ready(env.job_files_gone(&job_id))
    })
    .await;
    let metrics = running.metrics();
    assert!(
        metrics.contains("outpost_runner_jobs_total{result=\"success\"} 1"),
        "{metrics}"
    );
    running.drain().await.expect("clean drain");
    assert!(outbox_files(env.state.path()).is_empty());
}

#[tokio::test]
async fn a_missing_secret_fails_the_job_as_config_before_any_step() {
    let env = env().await;
    let executor = ScriptExecutor::new();
    let running = env.start(env.config(), executor.clone());
    let pipeline = "version: 1\nsecrets: [NOT_THERE]\nsteps:\n  - name: a\n    run: echo never\n";
    let job_id = env.submit(pipeline, &[]).await;
    let job = env.wait_for_state(&job_id, JobState::Error).await;
    let failure = job.failure.expect("failure");
    assert_eq!(failure.class, FailureClass::Config);
    assert!(
        failure.message.contains("`NOT_THERE`"),
        "{}",
        failure.message
    );
    let log = String::from_utf8_lossy(&env.hub.log(&env.org, &job_id).await).into_owned();
    assert!(log.contains("`NOT_THERE`"), "{log}");
    assert_eq!(executor.with(|r| r.runs.len()), 0, "no step may run");
    running.drain().await.expect("clean drain");
}

#[tokio::test]
async fn a_cancel_from_the_hub_reaches_the_running_job_through_the_heartbeat() {
    // Heartbeats are held for two minutes: only the long-poll's early answer can deliver the
    // cancel within the deadline.
    let hub = TestHub::builder()
        .lease_ttl_s(600)
        .heartbeat_interval_s(120)
        .max_wait_s(300)
        .start()
        .await;
    let env = env_with(hub).await;
    let executor = ScriptExecutor::new();
    let running = env.start(env.config(), executor.clone());
    let pipeline = "version: 1\nsteps:\n  - name: wait\n    run: echo waiting; wait_cancel\n";
    let job_id = env.submit(pipeline, &[]).await;
    wait_until("the job runs", DEADLINE, || {
        std::future::ready(executor.started(&job_id))
    })
    .await;
    let asked = Instant::now();
    env.hub
        .as_org(&env.org)
        .post_json(
            &paths::job_cancel(&env.org.name, &job_id),
            &serde_json::json!({}),
        )
        .await
        .expect(200);
    wait_until("the job's token fires", DEADLINE, || {
        std::future::ready(executor.cancelled_at(&job_id).is_some())
    })
    .await;
    let fired = executor.cancelled_at(&job_id).expect("fired");
    assert!(fired >= asked, "the token fired only after the cancel call");
    let job = env.wait_for_state(&job_id, JobState::Cancelled).await;
    assert_eq!(job.failure.map(|f| f.class), Some(FailureClass::Cancelled));
    let log = String::from_utf8_lossy(&env.hub.log(&env.org, &job_id).await).into_owned();
    assert_eq!(log, "── step wait ──\nwaiting\n");
    running.drain().await.expect("clean drain");
}

#[tokio::test]
async fn a_lost_lease_stops_the_job_and_nothing_more_is_reported() {
    // The hub extends live leases when it restarts, so an outage does not make one expire;
    // the lease is lost instead by the job ending under it (someone completes it with the
    // lease, as a runner on the other side of a partition would).
    let env = env_with(TestHub::builder().lease_ttl_s(3).start().await).await;
    let executor = ScriptExecutor::new();
    let running = env.start(env.config(), executor.clone());
    let pipeline = "version: 1\nsteps:\n  - name: wait\n    run: echo started; wait_cancel\n";
    let job_id = env.submit(pipeline, &[]).await;
    wait_until("the job runs", DEADLINE, || {
        std::future::ready(executor.started(&job_id))
    })
    .await;
    let journal = env.state.path().join("jobs").join(&job_id).join("job.json");
    let journal: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&journal).expect("journal")).expect("json");
    let lease_id = journal["assignment"]["lease_id"]
        .as_str()
        .expect("lease id")
        .to_owned();
    let elsewhere = CompleteRequest {
        lease_id: lease_id.into(),
        result: JobResult::Failed,
        failure: Some(Failure::new(FailureClass::Script, "ended elsewhere")),
        log_bytes: 0,
    };
    env.hub
        .http()
        .bearer(env.token.clone())
        .post_json(&paths::job_complete(&job_id), &elsewhere)
        .await
        .expect(200);
    wait_until("the job's token fires", DEADLINE, || {
        std::future::ready(executor.cancelled_at(&job_id).is_some())
    })
    .await;
    wait_until("the runner forgets the job", DEADLINE, || {
        std::future::ready(env.job_files_gone(&job_id) && running.handle.running_jobs().is_empty())
    })
    .await;
    let job = env.job(&job_id).await;
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(
        job.failure.map(|f| f.message).as_deref(),
        Some("ended elsewhere")
    );
    running.drain().await.expect("clean drain");
    assert!(outbox_files(env.state.path()).is_empty());
}

#[tokio::test]
async fn drain_stops_taking_jobs_lets_the_running_one_finish_and_a_second_drain_cancels() {
    let env = env().await;
    let executor = ScriptExecutor::new();
    let mut config = env.config();
    config.drain_grace = Duration::from_secs(3600);
    let running = env.start(config, executor.clone());
    running.wait_ready().await;
    let pipeline = "version: 1\nsteps:\n  - name: work\n    run: echo start; block; echo end\n";
    let first = env.submit(pipeline, &[]).await;
    wait_until("the first job runs", DEADLINE, || {
        std::future::ready(executor.started(&first))
    })
    .await;

    assert_eq!(running.handle.drain(), DrainStage::Graceful);
    assert!(!running.handle.is_ready(), "readiness flips at once");
    let second = env.submit(pipeline, &[]).await;
    executor.release_blocked();
    env.wait_for_state(&first, JobState::Success).await;
    assert_eq!(
        String::from_utf8_lossy(&env.hub.log(&env.org, &first).await),
        "── step work ──\nstart\nend\n"
    );
    running.join().await.expect("drained");
    assert_eq!(
        env.job(&second).await.state,
        JobState::Queued,
        "no job taken while draining"
    );
    assert_eq!(executor.with(|r| r.runs.len()), 1);

    // A second drain request cancels the running job at once; it still reports everything.
    let executor = ScriptExecutor::new();
    let mut config = env.config();
    config.drain_grace = Duration::from_secs(3600);
    let running = env.start(config, executor.clone());
    let blocked = "version: 1\nsteps:\n  - name: wait\n    run: echo begun; wait_cancel\n";
    // The queued job is taken first (one slot), then the blocking one.
    wait_until("the queued job runs", DEADLINE, || {
        std::future::ready(executor.started(&second))
    })
    .await;
    let third = env.submit(blocked, &[]).await;
    executor.release_blocked();
    env.wait_for_state(&second, JobState::Success).await;
    wait_until("the blocking job runs", DEADLINE, || {
        std::future::ready(executor.started(&third))
    })
    .await;
    assert_eq!(running.handle.drain(), DrainStage::Graceful);
    assert_eq!(running.handle.running_jobs(), std::slice::from_ref(&third));
    assert_eq!(running.handle.drain(), DrainStage::CancelNow);
    running.join().await.expect("drained");
    let job = env.job(&third).await;
    assert_eq!(job.state, JobState::Cancelled);
    assert_eq!(
        String::from_utf8_lossy(&env.hub.log(&env.org, &third).await),
        "── step wait ──\nbegun\n"
    );
}

#[tokio::test]
async fn a_completion_queued_while_the_hub_is_down_is_delivered_when_it_returns() {
    let mut env = env().await;
    let executor = ScriptExecutor::new();
    let running = env.start(env.config(), executor.clone());
    let pipeline =
        "version: 1\nsteps:\n  - name: work\n    run: echo before; block; echo after the outage\n";
    let job_id = env.submit(pipeline, &[]).await;
    wait_until("the job runs", DEADLINE, || {
        std::future::ready(executor.started(&job_id))
    })
    .await;
    env.hub.kill().await;
    executor.release_blocked();
    let state = env.state.path().to_owned();
    wait_until("the completion is in the outbox", DEADLINE, || {
        let queued = outbox_files(&state)
            .iter()
            .any(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains("\"complete\"")));
        std::future::ready(queued)
    })
    .await;
    env.hub.restart().await;
    let job = env.wait_for_state(&job_id, JobState::Success).await;
    let expected = "── step work ──\nbefore\nafter the outage\n";
    assert_eq!(
        String::from_utf8_lossy(&env.hub.log(&env.org, &job_id).await),
        expected
    );
    assert_eq!(job.log_bytes, expected.len() as u64);
    wait_until("the job's files are removed", DEADLINE, || {
        std::future::ready(env.job_files_gone(&job_id))
    })
    .await;
    running.drain().await.expect("clean drain");
    assert!(outbox_files(env.state.path()).is_empty());
}

#[tokio::test]
async fn after_a_restart_a_job_the_backend_cannot_resume_is_uploaded_and_reported() {
    let mut env = env().await;
    let executor = ScriptExecutor::new();
    let config = env.config();
    let running = env.start(config.clone(), executor.clone());
    let pipeline =
        "version: 1\nsteps:\n  - name: work\n    run: echo spooled before the crash; block\n";
    let job_id = env.submit(pipeline, &[]).await;
    wait_until("the job runs", DEADLINE, || {
        std::future::ready(executor.started(&job_id))
    })
    .await;
    // Nothing reaches the hub from now on: the bytes exist only in the spool.
    env.hub.kill().await;
    let expected_prefix = "── step work ──\nspooled before the crash\n";
    let spool = env
        .state
        .path()
        .join("jobs")
        .join(&job_id)
        .join("log.spool");
    wait_until("the output is spooled", DEADLINE, || {
        let len = std::fs::metadata(&spool).map(|m| m.len()).unwrap_or(0);
        std::future::ready(len == expected_prefix.len() as u64)
    })
    .await;
    // The runner dies (its tasks are dropped mid-flight, as in a crash).
    running.task.abort();
    let _ = running.task.await;
    env.hub.restart().await;

    // The new runner's backend still knows the job but cannot resume it.
    let executor = ScriptExecutor::with_backend_jobs(vec![JobId::new(job_id.clone())], false);
    let running = env.start(config, executor.clone());
    let job = env.wait_for_state(&job_id, JobState::Error).await;
    let failure = job.failure.expect("failure");
    assert_eq!(failure.class, FailureClass::Infrastructure);
    assert_eq!(
        failure.message,
        "the runner restarted and the script backend could not resume the job"
    );
    let log = String::from_utf8_lossy(&env.hub.log(&env.org, &job_id).await).into_owned();
    assert!(log.starts_with(expected_prefix), "{log}");
    assert!(log.ends_with("could not resume the job ──\n"), "{log}");
    assert_eq!(job.log_bytes, log.len() as u64);
    // It was offered to the backend as a resume from what the spool holds.
    let runs = executor.with(|r| r.runs.clone());
    assert_eq!(
        runs,
        [(
            JobId::new(job_id.clone()),
            Some(Resume {
                step_index: 0,
                output_bytes: "spooled before the crash\n".len() as u64
            })
        )]
    );
    wait_until("the job's files are removed", DEADLINE, || {
        std::future::ready(env.job_files_gone(&job_id))
    })
    .await;
    running.drain().await.expect("clean drain");
}

#[tokio::test]
async fn after_a_restart_a_job_the_backend_still_runs_is_reattached() {
    let mut env = env().await;
    let executor = ScriptExecutor::new();
    // A restarted runner keeps its name, so it is the same runner at the hub.
    let config = env.config();
    let running = env.start(config.clone(), executor.clone());
    let pipeline = "version: 1\nsteps:\n  - name: first\n    run: echo one\n  - name: work\n    run: echo before; block; echo after\n";
    let job_id = env.submit(pipeline, &[]).await;
    let spooled = "── step first ──\none\n\n── step work ──\nbefore\n";
    let spool = env
        .state
        .path()
        .join("jobs")
        .join(&job_id)
        .join("log.spool");
    wait_until("the job runs", DEADLINE, || {
        std::future::ready(executor.started(&job_id))
    })
    .await;
    env.hub.kill().await;
    wait_until("the output is spooled", DEADLINE, || {
        let len = std::fs::metadata(&spool).map(|m| m.len()).unwrap_or(0);
        std::future::ready(len == spooled.len() as u64)
    })
    .await;
    running.task.abort();
    let _ = running.task.await;
    env.hub.restart().await;

    let executor = ScriptExecutor::with_backend_jobs(vec![JobId::new(job_id.clone())], true);
    let running = env.start(config, executor.clone());
    wait_until("the job is resumed", DEADLINE, || {
        eprintln!(
            "runs {:?} started {:?}",
            executor.with(|r| r.runs.clone()),
            executor.with(|r| r.started.clone())
        );
        std::future::ready(executor.started(&job_id))
    })
    .await;
    executor.release_blocked();
    let job = env.wait_for_state(&job_id, JobState::Success).await;
    let expected = format!("{spooled}after\n");
    assert_eq!(
        String::from_utf8_lossy(&env.hub.log(&env.org, &job_id).await),
        expected
    );
    assert_eq!(job.log_bytes, expected.len() as u64);
    let runs = executor.with(|r| r.runs.clone());
    assert_eq!(
        runs,
        [(
            JobId::new(job_id.clone()),
            Some(Resume {
                step_index: 1,
                output_bytes: "before\n".len() as u64
            })
        )]
    );
    let states: Vec<StepState> = job.steps.iter().map(|s| s.state).collect();
    assert_eq!(states, [StepState::Success, StepState::Success]);
    running.drain().await.expect("clean drain");
}

#[tokio::test]
async fn when_the_drain_grace_period_ends_running_jobs_are_cancelled() {
    let env = env().await;
    let executor = ScriptExecutor::new();
    let mut config = env.config();
    config.drain_grace = Duration::from_millis(200);
    let running = env.start(config, executor.clone());
    let pipeline = "version: 1\nsteps:\n  - name: wait\n    run: wait_cancel\n  - name: cleanup\n    run: echo cleaning\n    when: always\n";
    let job_id = env.submit(pipeline, &[]).await;
    wait_until("the job runs", DEADLINE, || {
        std::future::ready(executor.started(&job_id))
    })
    .await;
    assert_eq!(running.handle.drain(), DrainStage::Graceful);
    running.join().await.expect("drained");
    assert!(executor.cancelled_at(&job_id).is_some());
    let job = env.job(&job_id).await;
    assert_eq!(job.state, JobState::Cancelled);
    let states: Vec<StepState> = job.steps.iter().map(|s| s.state).collect();
    assert_eq!(states, [StepState::Cancelled, StepState::Cancelled]);
}

#[tokio::test]
async fn a_git_source_is_checked_out_by_the_runner_and_its_pipeline_parsed() {
    let env = env().await;
    let repo = tempfile::tempdir().expect("repo");
    let git = |args: &[&str]| {
        let status = std::process::Command::new("git")
            .args(args)
            .current_dir(repo.path())
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .stdout(std::process::Stdio::null())
            .status()
            .expect("git");
        assert!(status.success(), "git {args:?}");
    };
    git(&["init", "--quiet", "--initial-branch=main"]);
    std::fs::write(
        repo.path().join(".outpost.yml"),
        "version: 1\nsteps:\n  - name: from-repo\n    run: echo checked out\n",
    )
    .expect("write");
    std::fs::write(
        repo.path().join("broken.yml"),
        "version: 1\nsteps:\n  - name: x\n    runn: y\n",
    )
    .expect("write");
    std::fs::write(repo.path().join("source.txt"), "repository content\n").expect("write");
    git(&["add", "."]);
    git(&["commit", "--quiet", "-m", "c"]);
    let url = format!("file://{}", repo.path().display());

    let executor = ScriptExecutor::new();
    let running = env.start(env.config(), executor.clone());
    let submit = |path: &str| SubmitJobRequest {
        source: Some(Source {
            git: GitSource {
                url: url.clone(),
                git_ref: Some("main".to_owned()),
            },
            path: path.to_owned(),
        }),
        ..SubmitJobRequest::default()
    };
    let good = env.hub.submit(&env.org, &submit(".outpost.yml")).await;
    env.wait_for_state(&good, JobState::Success).await;
    assert_eq!(
        String::from_utf8_lossy(&env.hub.log(&env.org, &good).await),
        "── step from-repo ──\nchecked out\n"
    );
    let prepared = executor.with(|r| r.jobs[0].clone());
    assert!(
        prepared.cache_scope.starts_with("tmp-"),
        "{}",
        prepared.cache_scope
    );

    let bad = env.hub.submit(&env.org, &submit("broken.yml")).await;
    let job = env.wait_for_state(&bad, JobState::Error).await;
    let failure = job.failure.expect("failure");
    assert_eq!(failure.class, FailureClass::Config);
    assert!(
        failure.message.contains("broken.yml:4:5"),
        "{}",
        failure.message
    );
    let log = String::from_utf8_lossy(&env.hub.log(&env.org, &bad).await).into_owned();
    assert!(log.contains("broken.yml:4:5"), "{log}");
    assert_eq!(executor.with(|r| r.runs.len()), 1);
    running.drain().await.expect("clean drain");
}

#[tokio::test]
async fn a_revoked_token_stops_the_runner_without_taking_a_job() {
    let env = env().await;
    let created = env
        .hub
        .create_runner_token_with_id(&env.org, "to revoke")
        .await;
    // Revoked while the runner is idle: the next acquire is refused.
    let executor = ScriptExecutor::new();
    let running = env.start_with(env.config(), executor.clone(), &created.token);
    running.wait_ready().await;
    env.hub
        .as_org(&env.org)
        .delete(&paths::runner_token(&env.org.name, &created.id))
        .await;
    let result = running.join().await;
    assert!(
        matches!(&result, Err(SchedulerError::Unauthorized { endpoint }) if endpoint.contains("/runner/")),
        "{result:?}"
    );

    // Revoked before the start: registration is refused, and a queued job stays queued.
    let job_id = env
        .submit("version: 1\nsteps:\n  - name: a\n    run: echo a\n", &[])
        .await;
    let running = env.start_with(env.config(), executor.clone(), &created.token);
    let result = running.join().await;
    assert!(
        matches!(result, Err(SchedulerError::Unauthorized { .. })),
        "{result:?}"
    );
    assert_eq!(env.job(&job_id).await.state, JobState::Queued);
    assert_eq!(executor.with(|r| r.runs.len()), 0);
}
