//! Steps as real host processes: environment, exit codes, `when` rules, output capture, signals,
//! timeouts and draining.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Fixture, check_event_order, read_pids, run, steps, wait_gone};
use outpost_executor::{ExecEvent, OutputStream, Secret, When};
use outpost_protocol::{FailureClass, JobResult, StepState};

#[tokio::test]
async fn steps_share_the_workspace_and_see_env_variables_and_secrets() {
    let fx = Fixture::new();
    let exec = fx.executor(fx.config());
    let mut job = fx.job(
        "j_env",
        steps(&[
            (
                "first",
                r#"echo "$GREETING $STEP_VAR $DEPLOY_TOKEN"
echo "$CI $OUTPOST $OUTPOST_JOB_ID $OUTPOST_STEP_NAME $OUTPOST_WORKSPACE"
pwd -P
echo made > made-by-first"#,
                When::OnSuccess,
            ),
            (
                "second",
                "cat made-by-first; echo \"$OUTPOST_STEP_NAME\"",
                When::OnSuccess,
            ),
        ]),
    );
    job.env = BTreeMap::from([
        ("GREETING".to_owned(), "hello".to_owned()),
        ("DEPLOY_TOKEN".to_owned(), "plain-value".to_owned()),
    ]);
    job.steps[0].env = BTreeMap::from([("STEP_VAR".to_owned(), "from-step".to_owned())]);
    job.secrets = vec![Secret {
        name: "DEPLOY_TOKEN".to_owned(),
        value: "s3cret".to_owned(),
    }];
    let workspace = job.workspace.clone();

    let done = run(&exec, job).await;

    check_event_order(&done.events, 2);
    assert_eq!(done.outcome().result, JobResult::Success);
    assert_eq!(done.outcome().failure, None);
    assert_eq!(done.step(0).exit_code, Some(0));
    let canonical = workspace.canonicalize().expect("workspace created");
    assert_eq!(
        done.stdout_str(0),
        format!(
            "hello from-step s3cret\ntrue true j_env first {}\n{}\n",
            workspace.display(),
            canonical.display()
        )
    );
    assert_eq!(done.stdout_str(1), "made\nsecond\n");
}

/// The runner's own token must not reach steps: this test runs [`runner_env_probe`] in a child
/// process of the test binary whose environment holds `OUTPOST_TOKEN`, as a runner's would.
#[tokio::test]
async fn the_runner_environment_does_not_reach_steps() {
    let exe = std::env::current_exe().expect("the test binary");
    let out = tokio::process::Command::new(exe)
        .args([
            "--exact",
            "runner_env_probe",
            "--ignored",
            "--test-threads=1",
        ])
        .env("OUTPOST_TOKEN", "hub-token-must-not-leak")
        .output()
        .await
        .expect("run the probe");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("1 passed"),
        "the probe did not run: {stdout}"
    );
}

#[tokio::test]
#[ignore = "run by the_runner_environment_does_not_reach_steps, with OUTPOST_TOKEN set"]
async fn runner_env_probe() {
    let Ok(token) = std::env::var("OUTPOST_TOKEN") else {
        println!("skipped: OUTPOST_TOKEN is not set");
        return;
    };
    let fx = Fixture::new();
    // The default base environment, taken from this (the runner's) process.
    let exec = fx.executor(outpost_process::ProcessConfig::new(
        &fx.work_root,
        &fx.cache_root,
    ));
    let job = fx.job(
        "j_leak",
        steps(&[("show", "env; echo \"PATH=$PATH\"", When::OnSuccess)]),
    );

    let done = run(&exec, job).await;

    let shown = done.stdout_str(0);
    assert!(
        !shown.contains(&token),
        "the runner's token leaked: {shown}"
    );
    let expected_path = std::env::var("PATH").unwrap_or_default();
    assert!(
        shown.ends_with(&format!("PATH={expected_path}\n")),
        "{shown}"
    );
}

#[tokio::test]
async fn the_base_environment_is_exactly_the_configured_one() {
    let fx = Fixture::new();
    let mut config = fx.config();
    config
        .base_env
        .insert("ONLY_IN_BASE".to_owned(), "yes".to_owned());
    config.base_env.insert(
        "OUTPOST_JOB_ID".to_owned(),
        "overridden-by-backend".to_owned(),
    );
    let exec = fx.executor(config);
    let job = fx.job(
        "j_base",
        steps(&[(
            "show",
            r#"echo "$ONLY_IN_BASE ${HOME-unset} $OUTPOST_JOB_ID""#,
            When::OnSuccess,
        )]),
    );

    let done = run(&exec, job).await;

    assert_eq!(done.stdout_str(0), "yes unset j_base\n");
}

#[tokio::test]
async fn a_failing_step_runs_on_failure_and_always_steps_and_skips_on_success_ones() {
    let fx = Fixture::new();
    let exec = fx.executor(fx.config());
    let job = fx.job(
        "j_fail",
        steps(&[
            ("ok", "echo ok", When::OnSuccess),
            ("fail", "echo before; exit 3", When::OnSuccess),
            ("next", "echo should-not-run", When::OnSuccess),
            ("recover", "echo recovering", When::OnFailure),
            ("cleanup", "echo cleanup", When::Always),
        ]),
    );

    let done = run(&exec, job).await;

    check_event_order(&done.events, 5);
    use StepState::*;
    assert_eq!(done.states(), [Success, Failed, Skipped, Success, Success]);
    let failed = done.step(1);
    assert_eq!(failed.exit_code, Some(3));
    let failure = failed.failure.as_ref().expect("failure");
    assert_eq!(failure.class, FailureClass::Script);
    assert_eq!(failure.message, "step `fail` exited with code 3");
    assert_eq!(done.stdout_str(3), "recovering\n");
    assert_eq!(done.stdout_str(4), "cleanup\n");
    let outcome = done.outcome();
    assert_eq!(outcome.result, JobResult::Failed);
    assert_eq!(outcome.failure.as_ref(), Some(failure));
}

#[tokio::test]
async fn stdout_and_stderr_are_captured_byte_exact() {
    let fx = Fixture::new();
    let exec = fx.executor(fx.config());
    let job = fx.job(
        "j_bytes",
        steps(&[(
            "bytes",
            r"printf '\000\001\002'; printf 'e\377r' >&2; printf 'x'",
            When::OnSuccess,
        )]),
    );

    let done = run(&exec, job).await;

    check_event_order(&done.events, 1);
    assert_eq!(done.stdout(0), b"\0\x01\x02x");
    assert_eq!(done.stderr(0), b"e\xffr");
}

#[tokio::test]
async fn large_output_arrives_whole_and_in_order() {
    const LEN: usize = 20 * 1024 * 1024;
    let fx = Fixture::new();
    let exec = fx.executor(fx.config());
    let job = fx.job(
        "j_large",
        steps(&[
            (
                "big",
                "yes 0123456789abcdef | head -c 20971520; head -c 1048576 /dev/zero >&2",
                When::OnSuccess,
            ),
            ("after", "echo after", When::OnSuccess),
        ]),
    );

    let done = run(&exec, job).await;

    check_event_order(&done.events, 2);
    let expected: Vec<u8> = b"0123456789abcdef\n"
        .iter()
        .copied()
        .cycle()
        .take(LEN)
        .collect();
    let out = done.stdout(0);
    assert_eq!(out.len(), LEN);
    assert!(out == expected, "stdout differs from the expected pattern");
    assert_eq!(done.stderr(0), vec![0u8; 1024 * 1024]);
    assert!(
        done.events
            .iter()
            .filter(|e| matches!(
                e,
                ExecEvent::Output {
                    stream: OutputStream::Stdout,
                    ..
                }
            ))
            .count()
            > 1,
        "20 MiB came as one chunk"
    );
    assert_eq!(done.stdout_str(1), "after\n");
    assert_eq!(done.outcome().result, JobResult::Success);
}

#[tokio::test]
async fn death_by_signal_is_128_plus_the_signal_number() {
    let fx = Fixture::new();
    let exec = fx.executor(fx.config());
    let job = fx.job(
        "j_signal",
        steps(&[
            ("boom", "kill -KILL $$", When::OnSuccess),
            ("term", "kill -TERM $$", When::Always),
        ]),
    );

    let done = run(&exec, job).await;

    check_event_order(&done.events, 2);
    for (index, code, message) in [
        (0, 137, "step `boom` was killed by signal 9 (SIGKILL)"),
        (1, 143, "step `term` was killed by signal 15 (SIGTERM)"),
    ] {
        let step = done.step(index);
        assert_eq!(step.state, StepState::Failed);
        assert_eq!(step.exit_code, Some(code));
        let failure = step.failure.as_ref().expect("failure");
        assert_eq!(failure.class, FailureClass::Script);
        assert_eq!(failure.message, message);
    }
    assert_eq!(done.outcome().result, JobResult::Failed);
}

#[tokio::test]
async fn a_step_timeout_fails_the_step_and_the_job_goes_on() {
    let fx = Fixture::new();
    let exec = fx.executor(fx.config());
    let mut job = fx.job(
        "j_step_timeout",
        steps(&[
            ("slow", "sleep 1000", When::OnSuccess),
            ("next", "echo should-not-run", When::OnSuccess),
            ("recover", "echo recovering", When::OnFailure),
            ("cleanup", "echo cleanup", When::Always),
        ]),
    );
    job.steps[0].timeout = Some(Duration::from_millis(100));

    let done = run(&exec, job).await;

    check_event_order(&done.events, 4);
    use StepState::*;
    assert_eq!(done.states(), [TimedOut, Skipped, Success, Success]);
    let failure = done.step(0).failure.as_ref().expect("failure");
    assert_eq!(failure.class, FailureClass::Timeout);
    assert_eq!(failure.message, "step `slow` timed out after 100ms");
    assert_eq!(done.stdout_str(2), "recovering\n");
    assert_eq!(done.outcome().result, JobResult::TimedOut);
    assert_eq!(done.outcome().failure.as_ref(), Some(failure));
}

#[tokio::test]
async fn a_job_timeout_stops_the_step_and_skips_the_rest() {
    let fx = Fixture::new();
    let exec = fx.executor(fx.config());
    let mut job = fx.job(
        "j_job_timeout",
        steps(&[
            ("slow", "sleep 1000", When::OnSuccess),
            ("recover", "echo recovering", When::OnFailure),
            ("cleanup", "echo cleanup", When::Always),
        ]),
    );
    job.timeout = Some(Duration::from_millis(300));

    let done = run(&exec, job).await;

    check_event_order(&done.events, 3);
    use StepState::*;
    assert_eq!(done.states(), [TimedOut, Skipped, Skipped]);
    let step_failure = done.step(0).failure.as_ref().expect("failure");
    assert_eq!(step_failure.class, FailureClass::Timeout);
    assert_eq!(
        step_failure.message,
        "step `slow` was stopped because the job timed out after 300ms"
    );
    let outcome = done.outcome();
    assert_eq!(outcome.result, JobResult::TimedOut);
    let failure = outcome.failure.as_ref().expect("job failure");
    assert_eq!(failure.class, FailureClass::Timeout);
    assert_eq!(failure.message, "the job timed out after 300ms");
}

#[tokio::test]
async fn a_background_child_holding_stdout_does_not_hang_the_step() {
    let fx = Fixture::new();
    let mut config = fx.config();
    config.drain_timeout = Duration::from_millis(100);
    let exec = fx.executor(config);
    let job = fx.job(
        "j_holder",
        steps(&[
            (
                "bg",
                "sleep 1000 & echo $! > bg.pid; echo done",
                When::OnSuccess,
            ),
            ("after", "echo after", When::OnSuccess),
        ]),
    );
    let pid_file = job.workspace.join("bg.pid");

    let done = run(&exec, job).await;

    check_event_order(&done.events, 2);
    assert_eq!(done.step(0).state, StepState::Success);
    assert_eq!(done.stdout_str(0), "done\n");
    assert_eq!(done.stdout_str(1), "after\n");
    for pid in read_pids(&pid_file) {
        wait_gone(pid).await;
    }
}

#[tokio::test]
async fn a_background_child_with_its_own_output_lives_until_the_job_ends() {
    let fx = Fixture::new();
    let mut config = fx.config();
    // Only EOF can end the first step: the drain deadline would outlast the test's.
    config.drain_timeout = Duration::from_secs(3600);
    let exec = fx.executor(config);
    let job = fx.job(
        "j_server",
        steps(&[
            (
                "start",
                "sleep 1000 >/dev/null 2>&1 & echo $! > bg.pid",
                When::OnSuccess,
            ),
            (
                "use",
                "kill -0 \"$(cat bg.pid)\" && echo alive",
                When::OnSuccess,
            ),
        ]),
    );
    let pid_file = job.workspace.join("bg.pid");

    let done = run(&exec, job).await;

    assert_eq!(done.outcome().result, JobResult::Success);
    assert_eq!(done.stdout_str(1), "alive\n");
    for pid in read_pids(&pid_file) {
        wait_gone(pid).await;
    }
}

#[tokio::test]
async fn a_step_that_cannot_start_fails_as_infrastructure() {
    let fx = Fixture::new();
    let mut config = fx.config();
    config.shell = fx.dir.path().join("no-such-shell").display().to_string();
    let exec = fx.executor(config);
    let job = fx.job(
        "j_noshell",
        steps(&[
            ("first", "echo hi", When::OnSuccess),
            ("second", "echo hi", When::OnSuccess),
        ]),
    );

    let done = run(&exec, job).await;

    check_event_order(&done.events, 2);
    assert_eq!(done.states(), [StepState::Failed, StepState::Skipped]);
    let failure = done.step(0).failure.as_ref().expect("failure");
    assert_eq!(failure.class, FailureClass::Infrastructure);
    assert!(
        failure.message.starts_with("could not start step `first`"),
        "{}",
        failure.message
    );
    assert_eq!(done.outcome().result, JobResult::Failed);
}
