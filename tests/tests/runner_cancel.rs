//! Cancel from the hub reaches the runner and kills the step's whole process tree: children and
//! grandchildren started in the background, not only the step's shell.

use outpost_e2e::{
    RUNNER_WAIT, inline_job, pid_alive, runner_for, scratch, step_header, text, wait_ended,
    wait_log,
};
use outpost_protocol::{CancelResponse, FailureClass, JobState, StepState, paths};
use outpost_testkit::{TestHub, unique, wait_until};

/// Starts a background child, a background subshell with a grandchild of its own, records every
/// pid (the shell's too), then waits for them.
const TREE: &str = r#"version: 1
steps:
  - name: tree
    run: |
      sleep 600 &
      echo $! >> "$PIDS/pids"
      ( sleep 600 & echo $! >> "$PIDS/pids"; wait ) &
      echo $! >> "$PIDS/pids"
      echo $$ >> "$PIDS/pids"
      # The subshell writes its child's pid on its own time: report once all four are there.
      while [ "$(wc -l < "$PIDS/pids")" -lt 4 ]; do sleep 0.01; done
      echo "tree started"
      wait
  - name: after
    when: always
    run: echo "never runs after a cancel"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_cancel_from_the_hub_kills_the_steps_process_tree() {
    let hub = TestHub::start().await;
    let org = hub.create_org(&unique("org")).await;
    let runner = runner_for(&hub, &org, hub.url(), |b| {
        b.config("[executor]\nkill_grace = \"0s\"\n")
    })
    .await;
    let dir = scratch();
    let pids_var = dir.path().display().to_string();
    let job_id = hub
        .submit(&org, &inline_job(TREE, &[("PIDS", &pids_var)]))
        .await;
    let started = format!("{}tree started\n", step_header("tree", true));
    wait_log(
        &hub,
        &org,
        &job_id,
        "shows the tree started",
        RUNNER_WAIT,
        |log| log == started.as_bytes(),
    )
    .await;
    let pids: Vec<u32> = std::fs::read_to_string(dir.path().join("pids"))
        .expect("the step wrote its pids")
        .lines()
        .map(|l| l.trim().parse().expect("a pid"))
        .collect();
    assert_eq!(pids.len(), 4, "{pids:?}");
    for pid in &pids {
        assert!(pid_alive(*pid), "process {pid} of the step is not running");
    }

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
    wait_until("every process of the step is gone", RUNNER_WAIT, || {
        std::future::ready(pids.iter().all(|pid| !pid_alive(*pid)))
    })
    .await;
    // The runner goes on taking jobs.
    assert_eq!(runner.readyz().await, Some(200));
}
