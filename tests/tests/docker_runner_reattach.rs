//! Reattach after a runner restart (DESIGN.md §6.3), through the real `runner-docker`: the runner
//! is SIGKILLed while a step's container runs, started again with the same state directory, and
//! the job finishes as if nothing happened: byte-exact log, later steps run, the lease kept, and
//! nothing left on the engine.
//!
//! The step prints known output in two phases; between them it waits for a flag file inside its
//! own container, which the test creates with `docker exec`: no timing decides anything.

mod docker_runner_support;

use docker_runner_support::{
    assert_nothing_left, docker_ok, engine_or_skip, runner_id, start_runner, step_container,
    touch_in,
};
use outpost_e2e::{RUNNER_WAIT, inline_job, seq, step_header, text, wait_ended, wait_log};
use outpost_protocol::{JobState, StepState};
use outpost_testkit::{TestHub, unique, wait_until};

/// Phase 1, a wait for `/tmp/go` (created by the test in the container), phase 2; a second step.
const PHASES: &str = r#"version: 1
image: outpost-test/busybox:1
steps:
  - name: produce
    run: |
      seq 1 20000
      while [ ! -e /tmp/go ]; do sleep 0.05; done
      seq 20001 40000
  - name: after
    run: echo "second step"
"#;

fn phase1_log() -> String {
    format!("{}{}", step_header("produce", true), seq(1, 20000))
}

fn full_log() -> String {
    format!(
        "{}{}{}second step\n",
        step_header("produce", true),
        seq(1, 40000),
        step_header("after", false)
    )
}

/// Whether the container is running, as the engine says.
async fn running(container: &str) -> bool {
    docker_ok(&["inspect", "--format", "{{.State.Running}}", container])
        .await
        .trim()
        == "true"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_runner_killed_mid_step_reattaches_and_the_job_ends_as_if_nothing_happened() {
    if !engine_or_skip().await {
        return;
    }
    let hub = TestHub::start().await;
    let org = hub.create_org(&unique("org")).await;
    let mut runner = start_runner(&hub, &org, |b| b).await;
    let job_id = hub.submit(&org, &inline_job(PHASES, &[])).await;

    // Phase 1 is at the hub, and the step waits in its container.
    let phase1 = phase1_log();
    wait_log(&hub, &org, &job_id, "holds phase 1", RUNNER_WAIT, |log| {
        log.len() >= phase1.len()
    })
    .await;
    assert_eq!(text(&hub.log(&org, &job_id).await), phase1);
    let container = step_container(&job_id, 0).await;
    assert!(running(&container).await, "{container} is not running");
    let before = hub.job(&org, &job_id).await;
    assert_eq!(before.state, JobState::Running, "{before:#?}");
    assert_eq!(before.runner_id.as_deref(), Some(runner.id.as_str()));

    runner.process.sigkill().await;
    // The step outlives the runner.
    assert!(
        running(&container).await,
        "{container} stopped with the runner"
    );
    runner.process.restart().await;
    runner.process.wait_ready(RUNNER_WAIT).await;
    assert_eq!(
        runner_id(&hub, &org, runner.process.name()).await,
        runner.id,
        "the restarted runner has another id"
    );
    let reattached = "reattaching to a job the backend still runs";
    wait_until("the restarted runner reattaches", RUNNER_WAIT, || {
        std::future::ready(runner.process.stderr().contains(reattached))
    })
    .await;
    // Released only now: phase 2 is produced while the new process follows the container.
    touch_in(&container, "/tmp/go").await;

    let job = wait_ended(&hub, &org, &job_id).await;
    assert_eq!(job.state, JobState::Success, "{job:#?}");
    assert_eq!(job.failure, None, "{job:#?}");
    let states: Vec<StepState> = job.steps.iter().map(|s| s.state).collect();
    assert_eq!(states, [StepState::Success, StepState::Success], "{job:#?}");
    // The lease was kept: the same runner holds the job, which was never handed out again (a
    // lost lease would have refused the completion: the job would be `lost`, not `success`).
    assert_eq!(job.runner_id.as_deref(), Some(runner.id.as_str()));
    assert_eq!(job.started_at, before.started_at, "{job:#?}");

    let expected = full_log();
    let log = hub.log(&org, &job_id).await;
    if log != expected.as_bytes() {
        let at = log
            .iter()
            .zip(expected.as_bytes())
            .position(|(a, b)| a != b)
            .unwrap_or(log.len().min(expected.len()));
        let from = at.saturating_sub(60);
        panic!(
            "the stored log ({} bytes) differs from the output ({} bytes) at byte {at}: stored \
             …{:?}…, expected …{:?}…",
            log.len(),
            expected.len(),
            text(&log[from..(at + 60).min(log.len())]),
            &expected[from..(at + 60).min(expected.len())]
        );
    }
    assert_eq!(job.log_bytes, expected.len() as u64);
    let header = step_header("produce", true);
    assert_eq!(text(&log).matches(header.trim()).count(), 1, "step header");

    assert_nothing_left(&runner.id).await;
    let job_dir = runner.process.state_dir().join("jobs").join(&job_id);
    let work_dir = runner.process.state_dir().join("work").join(&job_id);
    wait_until("the job's files are removed", RUNNER_WAIT, || {
        std::future::ready(!job_dir.exists() && !work_dir.exists())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_runner_and_hub_both_killed_mid_log_end_with_a_byte_exact_log_and_one_status() {
    if !engine_or_skip().await {
        return;
    }
    let mut hub = TestHub::start().await;
    let org = hub.create_org(&unique("org")).await;
    let mut runner = start_runner(&hub, &org, |b| b).await;
    let job_id = hub.submit(&org, &inline_job(PHASES, &[])).await;
    let phase1 = phase1_log();
    wait_log(&hub, &org, &job_id, "holds phase 1", RUNNER_WAIT, |log| {
        log.len() >= phase1.len()
    })
    .await;
    let container = step_container(&job_id, 0).await;
    let before = hub.job(&org, &job_id).await;

    // Both die at once, mid-log; the step goes on alone and writes phase 2 while nobody reads.
    hub.kill().await;
    runner.process.sigkill().await;
    touch_in(&container, "/tmp/go").await;
    wait_until("the step's container ends on its own", RUNNER_WAIT, || {
        let container = container.clone();
        async move { !running(&container).await }
    })
    .await;

    // The hub comes back from its log files and database; the runner from its state directory.
    hub.restart().await;
    runner.process.restart().await;
    runner.process.wait_ready(RUNNER_WAIT).await;
    let job = wait_ended(&hub, &org, &job_id).await;
    assert_eq!(job.state, JobState::Success, "{job:#?}");
    let states: Vec<StepState> = job.steps.iter().map(|s| s.state).collect();
    assert_eq!(states, [StepState::Success, StepState::Success], "{job:#?}");
    // One final status: the job was never handed out again or ended twice.
    assert_eq!(job.runner_id.as_deref(), Some(runner.id.as_str()));
    assert_eq!(job.started_at, before.started_at, "{job:#?}");
    let expected = full_log();
    let log = hub.log(&org, &job_id).await;
    assert_eq!(
        text(&log),
        expected,
        "the stored log is not the output, byte for byte"
    );
    assert_eq!(job.log_bytes, expected.len() as u64);
    // What the hub holds survives one more restart as it is.
    hub.restart().await;
    assert_eq!(text(&hub.log(&org, &job_id).await), expected);
    assert_eq!(hub.job(&org, &job_id).await.state, JobState::Success);
    assert_nothing_left(&runner.id).await;
}
