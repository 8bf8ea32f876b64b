//! Live logs with secrets configured: the masker holds back a tail that could still become a
//! secret, but once output pauses, what cannot begin one reaches the hub while the step is still
//! running (a prompt or a "waiting for …" line must be visible live, not only at the step's end).

use outpost_e2e::{RUNNER_WAIT, inline_job, runner_for, scratch, touch, wait_ended, wait_log};
use outpost_protocol::JobState;
use outpost_testkit::{TestHub, unique};

const PIPELINE: &str = r#"version: 1
secrets: [TOKEN]
steps:
  - name: wait
    run: |
      printf 'waiting for approval'
      while [ ! -f "$FLAGS/go" ]; do sleep 0.05; done
      echo " ... approved"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_shows_a_quiet_steps_last_line_live_with_secrets_configured() {
    let hub = TestHub::start().await;
    let org = hub.create_org(&unique("live")).await;
    let flags = scratch();
    let runner = runner_for(&hub, &org, hub.url(), |b| {
        b.env(
            "OUTPOST_SECRET_TOKEN",
            "a-secret-that-is-long-enough-to-hold-bytes-back",
        )
    })
    .await;
    let flags_dir = flags.path().display().to_string();
    let job_id = hub
        .submit(&org, &inline_job(PIPELINE, &[("FLAGS", &flags_dir)]))
        .await;

    // The step has printed its prompt and now waits: the prompt must reach the hub before the
    // step can go on.
    let log = wait_log(
        &hub,
        &org,
        &job_id,
        "shows the prompt",
        RUNNER_WAIT,
        |log| log.ends_with(b"waiting for approval"),
    )
    .await;
    assert!(!String::from_utf8_lossy(&log).contains("approved"));

    touch(&flags.path().join("go"));
    let job = wait_ended(&hub, &org, &job_id).await;
    assert_eq!(job.state, JobState::Success, "{job:#?}");
    let log = hub.log(&org, &job_id).await;
    assert!(
        log.ends_with(b"waiting for approval ... approved\n"),
        "{:?}",
        String::from_utf8_lossy(&log)
    );
    drop(runner);
}
