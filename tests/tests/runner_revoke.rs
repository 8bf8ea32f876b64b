//! A revoked runner token stops the runner: revoked through the admin API while the runner idles
//! in its acquire long-poll, the runner takes no job submitted afterwards and exits with code 3
//! (docs/runner.md: "3 when the hub refused the token").

use std::time::Duration;

use outpost_e2e::{RUNNER_WAIT, inline_job};
use outpost_protocol::{JobState, paths};
use outpost_testkit::{RunnerProcess, TestHub, unique};

const QUICK: &str = "version: 1\nsteps:\n  - name: quick\n    run: echo quick\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_whose_token_is_revoked_takes_no_job_and_exits_3() {
    let hub = TestHub::start().await;
    let org = hub.create_org(&unique("org")).await;
    let token = hub.create_runner_token_with_id(&org, "revoked").await;
    // A short long-poll, so the runner's next call (the one refused) comes soon.
    let mut runner = RunnerProcess::builder(hub.url(), &token.token)
        .config("acquire_wait = \"3s\"\n")
        .start()
        .await;
    runner.wait_ready(RUNNER_WAIT).await;

    // The runner idles in its acquire long-poll while the token is revoked.
    let revoke = hub
        .as_org(&org)
        .delete(&paths::runner_token(&org.name, &token.id))
        .await;
    assert!(revoke.status.is_success(), "{revoke:?}");
    let job_id = hub.submit(&org, &inline_job(QUICK, &[])).await;

    let status = runner.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(
        status.code(),
        Some(3),
        "the runner exited with {status}:\n{}",
        runner.stderr_tail(20)
    );
    // The runner is gone, so this is final: the job was never handed to it.
    let job = hub.job(&org, &job_id).await;
    assert_eq!(job.state, JobState::Queued, "{job:#?}");
    assert_eq!(job.runner_id, None, "{job:#?}");
    assert!(
        runner.stderr().contains("refused the runner token"),
        "the runner does not say why it stopped:\n{}",
        runner.stderr_tail(20)
    );
}
