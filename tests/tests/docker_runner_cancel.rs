//! Cancel from the hub through the real `runner-docker`: the running step's container is
//! stopped, a later `always` step is skipped, and the job's containers (step and service),
//! network and workspace volume are all removed; the runner goes on taking jobs.

mod docker_runner_support;

use docker_runner_support::{assert_nothing_left, engine_or_skip, resources, start_runner};
use outpost_e2e::{RUNNER_WAIT, inline_job, step_header, text, wait_ended, wait_log};
use outpost_protocol::{CancelResponse, FailureClass, JobState, StepState, paths};
use outpost_testkit::{TestHub, unique};

const PIPELINE: &str = r#"version: 1
image: outpost-test/busybox:1
services:
  - { name: echo, image: outpost-test/tcp-echo:1 }
steps:
  - name: wait
    run: |
      echo started
      sleep 600
  - name: after
    when: always
    run: echo "never runs after a cancel"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_runner_cancel_from_the_hub_leaves_nothing_of_the_job() {
    if !engine_or_skip().await {
        return;
    }
    let hub = TestHub::start().await;
    let org = hub.create_org(&unique("org")).await;
    let runner = start_runner(&hub, &org, |b| {
        b.config("[executor]\nstop_grace = \"1s\"\n")
    })
    .await;
    let job_id = hub.submit(&org, &inline_job(PIPELINE, &[])).await;
    let started = format!("{}started\n", step_header("wait", true));
    wait_log(
        &hub,
        &org,
        &job_id,
        "shows the step started",
        RUNNER_WAIT,
        |log| log == started.as_bytes(),
    )
    .await;
    let (containers, networks, volumes) = resources("outpost.job-id", &job_id, false).await;
    assert!(
        containers.len() == 2 && networks.len() == 1 && volumes.len() == 1,
        "the job's step and service containers, network and workspace volume while it runs: \
         {containers:?} {networks:?} {volumes:?}"
    );

    let answer = hub
        .as_org(&org)
        .post_json(&paths::job_cancel(&org.name, &job_id), &())
        .await;
    let cancel: CancelResponse = answer.expect(200).json();
    assert_eq!(cancel.job_id, job_id);

    let job = wait_ended(&hub, &org, &job_id).await;
    assert_eq!(job.state, JobState::Cancelled, "{job:#?}");
    assert_eq!(
        job.failure.as_ref().map(|f| f.class),
        Some(FailureClass::Cancelled),
        "{job:#?}"
    );
    let states: Vec<StepState> = job.steps.iter().map(|s| s.state).collect();
    assert_eq!(
        states,
        [StepState::Cancelled, StepState::Skipped],
        "{job:#?}"
    );
    assert_eq!(text(&hub.log(&org, &job_id).await), started);
    assert_nothing_left(&runner.id).await;
    assert_eq!(
        resources("outpost.job-id", &job_id, true).await,
        (Vec::new(), Vec::new(), Vec::new()),
        "the job left resources behind"
    );
    // The runner goes on taking jobs.
    assert_eq!(runner.process.readyz().await, Some(200));
}
