//! Shared pieces of the end-to-end tests in `tests/tests/*.rs`: a valid pipeline, job and step
//! builders, and the few multi-call setups the hub tests repeat. Process and HTTP plumbing lives
//! in `outpost-testkit`.

use std::time::Duration;

use outpost_protocol::{
    JobAssignment, JobState, StepState, StepUpdate, SubmitJobRequest, Timestamp, paths,
};
use outpost_testkit::{Org, TestHub, TestRunner, unique};
use tokio::task::JoinHandle;

/// A minimal valid pipeline.
pub const PIPELINE: &str = "version: 1\nsteps:\n  - name: build\n    run: echo hello\n";

/// How long a test waits for something the hub should do "at once" or within a short lease:
/// generous, so a slow machine does not fail a correct hub.
pub const PROMPTLY: Duration = Duration::from_secs(30);

/// An inline-pipeline job with `labels`.
pub fn job(labels: &[&str]) -> SubmitJobRequest {
    SubmitJobRequest {
        pipeline: Some(PIPELINE.to_owned()),
        labels: labels.iter().map(|l| (*l).to_owned()).collect(),
        ..SubmitJobRequest::default()
    }
}

/// A step update with only the required fields.
pub fn step(index: u32, name: &str, state: StepState) -> StepUpdate {
    StepUpdate {
        index,
        name: name.to_owned(),
        state,
        exit_code: None,
        started_at: None,
        finished_at: None,
        failure: None,
        log_offset: None,
    }
}

/// A fresh organization and one runner in it, registered with no labels.
pub async fn org_with_runner(hub: &TestHub) -> (Org, TestRunner) {
    let org = hub.create_org(&unique("org")).await;
    let runner = hub.register_runner(&org, &unique("runner"), &[]).await;
    (org, runner)
}

/// Submits a job without labels and acquires it with `runner`; panics unless the runner gets
/// exactly that job.
pub async fn assigned_job(hub: &TestHub, org: &Org, runner: &TestRunner) -> JobAssignment {
    let job_id = hub.submit(org, &job(&[])).await;
    let assignment = runner
        .acquire(0)
        .await
        .expect("the runner gets the queued job");
    assert_eq!(assignment.job_id, job_id);
    assignment
}

/// Like [`assigned_job`], then makes the job `running` with a first step update.
pub async fn running_job(hub: &TestHub, org: &Org, runner: &TestRunner) -> JobAssignment {
    let assignment = assigned_job(hub, org, runner).await;
    let mut update = step(0, "build", StepState::Running);
    update.started_at = Some(Timestamp::now());
    runner.step(&assignment.job_id, &update).await.expect(200);
    assert_eq!(
        hub.job(org, &assignment.job_id).await.state,
        JobState::Running
    );
    assignment
}

/// Asserts that a long-poll spawned as `task` is still waiting: one full round trip to the hub
/// after the spawn, and the task has not finished. The ordering evidence long-poll tests use
/// before they trigger the event that must wake the poll.
pub async fn assert_pending<T>(hub: &TestHub, task: &JoinHandle<T>, what: &str) {
    // Two round trips: the spawned request has had every chance to reach the hub first.
    for _ in 0..2 {
        hub.http().get(paths::HEALTHZ).await.expect(200);
    }
    assert!(
        !task.is_finished(),
        "{what} answered before the event that should wake it"
    );
}

/// Awaits a long-poll task that must be woken: panics when it has not answered within
/// [`PROMPTLY`], far less than the `wait_s` it was started with.
pub async fn woken<T>(task: JoinHandle<T>, what: &str) -> T {
    match tokio::time::timeout(PROMPTLY, task).await {
        Ok(Ok(value)) => value,
        Ok(Err(e)) => panic!("{what}: the task failed: {e}"),
        Err(_) => panic!("{what} was not woken within {PROMPTLY:?}"),
    }
}
