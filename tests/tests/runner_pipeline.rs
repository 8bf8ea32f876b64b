//! The real runner-process runs a pipeline end to end against the real hub: step order and
//! `when` rules, variables from the pipeline and the submission, step env, secrets from both
//! built-in providers (masked in the log), each step's state and exit code, the exact log, and
//! the runner's metrics afterwards.

use outpost_e2e::{RUNNER_WAIT, inline_job, runner_for, scratch, step_header, text, wait_ended};
use outpost_protocol::{FailureClass, JobState, StepState};
use outpost_testkit::{TestHub, metric_value, random_secret, unique, wait_until};

const PIPELINE: &str = r#"version: 1
variables:
  GREETING: hello
  OVERRIDE_ME: from-pipeline
  STEP_BEATS_ME: from-pipeline
secrets: [TOKEN_ENV, TOKEN_FILE]
steps:
  - name: build
    env: { STEP_VAR: step-value, STEP_BEATS_ME: from-step }
    run: |
      echo "greeting=$GREETING step=$STEP_VAR sub=$SUBMITTED over=$OVERRIDE_ME beat=$STEP_BEATS_ME"
      echo "env-secret=$TOKEN_ENV"
      echo "file-secret=$TOKEN_FILE"
      [ "$TOKEN_ENV" = "$(cat "$EXPECT/TOKEN_ENV")" ] && echo "env secret matches (${#TOKEN_ENV} bytes)"
      [ "$TOKEN_FILE" = "$(cat "$EXPECT/TOKEN_FILE")" ] && echo "file secret matches (${#TOKEN_FILE} bytes)"
      true
  - name: early-report
    when: on_failure
    run: echo "nothing failed yet, so this never runs"
  - name: test
    run: |
      echo "testing on stderr" >&2
      exit 3
  - name: deploy
    run: echo "a failed job is not deployed"
  - name: report
    when: on_failure
    run: echo "reporting the failure"
  - name: cleanup
    when: always
    run: echo "cleaning up"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_runs_a_pipeline_with_when_rules_variables_and_secrets() {
    let hub = TestHub::start().await;
    let org = hub.create_org(&unique("org")).await;
    let env_secret = random_secret();
    let file_secret = format!("file-{}", random_secret());
    let dirs = scratch();
    let secrets = dirs.path().join("secrets");
    let expect = dirs.path().join("expect");
    for d in [&secrets, &expect] {
        std::fs::create_dir(d).expect("create a scratch dir");
    }
    // The provider trims one trailing newline of a secret file.
    std::fs::write(secrets.join("TOKEN_FILE"), format!("{file_secret}\n")).expect("write");
    std::fs::write(expect.join("TOKEN_ENV"), &env_secret).expect("write");
    std::fs::write(expect.join("TOKEN_FILE"), &file_secret).expect("write");
    let runner = runner_for(&hub, &org, hub.url(), |b| {
        b.env("OUTPOST_SECRET_TOKEN_ENV", &env_secret)
            .secrets_dir(&secrets)
    })
    .await;

    let expect_dir = expect.display().to_string();
    let request = inline_job(
        PIPELINE,
        &[
            ("SUBMITTED", "from-submission"),
            ("OVERRIDE_ME", "from-submission"),
            ("EXPECT", &expect_dir),
        ],
    );
    let job_id = hub.submit(&org, &request).await;
    let job = wait_ended(&hub, &org, &job_id).await;

    assert_eq!(job.state, JobState::Failed, "{job:#?}");
    let failure = job.failure.clone().expect("a failed job has a failure");
    assert_eq!(failure.class, FailureClass::Script, "{job:#?}");
    assert!(failure.message.contains("`test`"), "{failure:?}");
    assert!(failure.message.contains('3'), "{failure:?}");
    let steps: Vec<(u32, &str, StepState, Option<i32>)> = job
        .steps
        .iter()
        .map(|s| (s.index, s.name.as_str(), s.state, s.exit_code))
        .collect();
    assert_eq!(
        steps,
        [
            (0, "build", StepState::Success, Some(0)),
            (1, "early-report", StepState::Skipped, None),
            (2, "test", StepState::Failed, Some(3)),
            (3, "deploy", StepState::Skipped, None),
            (4, "report", StepState::Success, Some(0)),
            (5, "cleanup", StepState::Success, Some(0)),
        ],
        "{job:#?}"
    );
    let test_step = &job.steps[2];
    assert_eq!(
        test_step.failure.as_ref().map(|f| f.class),
        Some(FailureClass::Script),
        "{test_step:?}"
    );

    let expected = [
        step_header("build", true),
        "greeting=hello step=step-value sub=from-submission over=from-submission \
         beat=from-step\n"
            .to_owned(),
        "env-secret=[MASKED]\n".to_owned(),
        "file-secret=[MASKED]\n".to_owned(),
        format!("env secret matches ({} bytes)\n", env_secret.len()),
        format!("file secret matches ({} bytes)\n", file_secret.len()),
        step_header("test", false),
        "testing on stderr\n".to_owned(),
        step_header("report", false),
        "reporting the failure\n".to_owned(),
        step_header("cleanup", false),
        "cleaning up\n".to_owned(),
    ]
    .concat();
    let log = hub.log(&org, &job_id).await;
    assert_eq!(text(&log), expected);
    assert_eq!(job.log_bytes, expected.len() as u64);
    // Each step's section starts where its header does.
    for step in &job.steps {
        if let Some(offset) = step.log_offset {
            let at = usize::try_from(offset).expect("small offset");
            let rest = &expected[at..];
            let header = format!("── step {} ──", step.name);
            assert!(
                rest.trim_start_matches('\n').starts_with(&header),
                "step {} offset {offset} points at {:?}",
                step.name,
                &rest[..rest.len().min(40)]
            );
        }
    }
    drop(runner);
}

const OK_PIPELINE: &str = "version: 1\nsteps:\n  - name: ok\n    run: echo fine\n";
const FAILING_PIPELINE: &str = "version: 1\nsteps:\n  - name: bad\n    run: exit 1\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_metrics_count_jobs_by_result_and_pickup_latency() {
    let hub = TestHub::start().await;
    let org = hub.create_org(&unique("org")).await;
    let runner = runner_for(&hub, &org, hub.url(), |b| b).await;

    let before = runner.metrics().await;
    let pickups = "outpost_runner_pickup_latency_seconds_count";
    assert_eq!(metric_value(&before, pickups), Some(0.0), "{before}");

    let ok = hub.submit(&org, &inline_job(OK_PIPELINE, &[])).await;
    assert_eq!(wait_ended(&hub, &org, &ok).await.state, JobState::Success);
    let bad = hub.submit(&org, &inline_job(FAILING_PIPELINE, &[])).await;
    assert_eq!(wait_ended(&hub, &org, &bad).await.state, JobState::Failed);

    let success = r#"outpost_runner_jobs_total{result="success"}"#;
    let failed = r#"outpost_runner_jobs_total{result="failed"}"#;
    wait_until("the runner counted both jobs", RUNNER_WAIT, || async {
        let m = runner.metrics().await;
        metric_value(&m, success) == Some(1.0) && metric_value(&m, failed) == Some(1.0)
    })
    .await;
    let after = runner.metrics().await;
    assert_eq!(metric_value(&after, pickups), Some(2.0), "{after}");
    let sum = metric_value(&after, "outpost_runner_pickup_latency_seconds_sum")
        .unwrap_or_else(|| panic!("no pickup latency sum: {after}"));
    assert!(sum >= 0.0, "{after}");
    assert_eq!(
        metric_value(&after, r#"outpost_runner_jobs_total{result="error"}"#),
        None,
        "{after}"
    );
    assert_eq!(
        metric_value(&after, "outpost_runner_running_jobs"),
        Some(0.0),
        "{after}"
    );
    // The gauge is refreshed every second: wait for a refresh after the first success.
    let since = "outpost_runner_seconds_since_last_hub_success";
    assert!(
        metric_value(&after, since).is_some(),
        "no {since} gauge: {after}"
    );
    wait_until(
        "the runner reports a recent hub success",
        RUNNER_WAIT,
        || async { metric_value(&runner.metrics().await, since).is_some_and(|s| s >= 0.0) },
    )
    .await;
}
