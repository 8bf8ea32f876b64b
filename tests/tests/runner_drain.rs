//! The drain contract (DESIGN.md §6.4) on the real runner-process: the first SIGTERM turns
//! `/readyz` unready and stops taking jobs while the running job finishes, then the runner exits
//! 0; a second SIGTERM cancels the running job at once, which still reports `cancelled` with its
//! full log.

use outpost_e2e::{
    RUNNER_WAIT, inline_job, runner_for, scratch, seq, step_header, text, touch, wait_ended,
    wait_log,
};
use outpost_protocol::{FailureClass, JobState, StepState};
use outpost_testkit::{RunnerProcess, TestHub, unique, wait_until};

const WAITS_FOR_FINISH: &str = r#"version: 1
steps:
  - name: work
    run: |
      echo working
      while [ ! -f "$FLAGS/finish" ] && [ -d "$FLAGS" ]; do sleep 0.05; done
      echo finished
"#;

const QUICK: &str = "version: 1\nsteps:\n  - name: quick\n    run: echo quick\n";

async fn wait_unready(runner: &RunnerProcess) {
    wait_until("/readyz answers 503", RUNNER_WAIT, || async {
        runner.readyz().await == Some(503)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_sigterm_drains_the_runner() {
    let hub = TestHub::start().await;
    let org = hub.create_org(&unique("org")).await;
    // Two slots: a runner that did not drain would take the second job at once.
    let mut runner = runner_for(&hub, &org, hub.url(), |b| {
        b.concurrency(2).config("drain_grace = \"10m\"\n")
    })
    .await;
    let flags = scratch();
    let flags_var = flags.path().display().to_string();
    let running = hub
        .submit(
            &org,
            &inline_job(WAITS_FOR_FINISH, &[("FLAGS", &flags_var)]),
        )
        .await;
    let started = format!("{}working\n", step_header("work", true));
    wait_log(
        &hub,
        &org,
        &running,
        "shows the step working",
        RUNNER_WAIT,
        |log| log == started.as_bytes(),
    )
    .await;

    runner.sigterm();
    wait_unready(&runner).await;
    assert_eq!(
        runner.healthz().await,
        Some(200),
        "a draining runner is alive"
    );
    let later = hub.submit(&org, &inline_job(QUICK, &[])).await;
    assert_eq!(hub.job(&org, &running).await.state, JobState::Running);

    touch(&flags.path().join("finish"));
    let status = runner.wait_exit(RUNNER_WAIT).await;
    assert!(status.success(), "the drained runner exited with {status}");

    let job = wait_ended(&hub, &org, &running).await;
    assert_eq!(job.state, JobState::Success, "{job:#?}");
    assert_eq!(job.steps[0].exit_code, Some(0), "{job:#?}");
    assert_eq!(
        text(&hub.log(&org, &running).await),
        format!("{started}finished\n")
    );
    // The runner is gone, so this is final: the job submitted during the drain was not taken.
    let queued = hub.job(&org, &later).await;
    assert_eq!(queued.state, JobState::Queued, "{queued:#?}");
    assert_eq!(queued.runner_id, None, "{queued:#?}");
}

const NEVER_ENDS: &str = r#"version: 1
steps:
  - name: endless
    run: |
      seq 1 5000
      while [ ! -f "$FLAGS/never" ] && [ -d "$FLAGS" ]; do sleep 0.05; done
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_cancels_the_runners_job_with_its_full_log() {
    let hub = TestHub::start().await;
    let org = hub.create_org(&unique("org")).await;
    let mut runner = runner_for(&hub, &org, hub.url(), |b| {
        b.config("drain_grace = \"10m\"\n[executor]\nkill_grace = \"0s\"\n")
    })
    .await;
    let flags = scratch();
    let flags_var = flags.path().display().to_string();
    let job_id = hub
        .submit(&org, &inline_job(NEVER_ENDS, &[("FLAGS", &flags_var)]))
        .await;
    let output = format!("{}{}", step_header("endless", true), seq(1, 5000));
    wait_log(
        &hub,
        &org,
        &job_id,
        "holds the output",
        RUNNER_WAIT,
        |log| log == output.as_bytes(),
    )
    .await;

    runner.sigterm();
    wait_unready(&runner).await;
    // Draining alone lets it run.
    assert_eq!(hub.job(&org, &job_id).await.state, JobState::Running);
    runner.sigterm();
    let status = runner.wait_exit(RUNNER_WAIT).await;
    assert!(status.success(), "the runner exited with {status}");

    let job = wait_ended(&hub, &org, &job_id).await;
    assert_eq!(job.state, JobState::Cancelled, "{job:#?}");
    assert_eq!(
        job.failure.as_ref().map(|f| f.class),
        Some(FailureClass::Cancelled),
        "{job:#?}"
    );
    assert_eq!(job.steps[0].state, StepState::Cancelled, "{job:#?}");
    assert_eq!(text(&hub.log(&org, &job_id).await), output);
    assert_eq!(job.log_bytes, output.len() as u64);
}
