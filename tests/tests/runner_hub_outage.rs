//! What the runner says about the hub (issue 10, finding 7): a warning once when the hub stops
//! answering (with the cause) and once when it answers again, however many calls failed in
//! between; and no "lease is lost" warning for a job whose completion the hub acknowledged.

use outpost_e2e::{RUNNER_WAIT, inline_job, runner_for, wait_ended};
use outpost_protocol::JobState;
use outpost_testkit::{TestHub, unique, wait_until};

const QUICK: &str = "version: 1\nsteps:\n  - name: quick\n    run: echo quick\n";
const UNREACHABLE: &str = "the hub is unreachable";
const BACK: &str = "the hub answers again";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_says_once_that_the_hub_is_gone_and_once_that_it_is_back() {
    let mut hub = TestHub::start().await;
    let org = hub.create_org(&unique("org")).await;
    let runner = runner_for(&hub, &org, hub.url(), |b| {
        b.config("acquire_wait = \"2s\"\n")
    })
    .await;

    hub.kill().await;
    wait_until(
        "the runner says the hub is unreachable",
        RUNNER_WAIT,
        || std::future::ready(runner.stderr().contains(UNREACHABLE)),
    )
    .await;
    hub.restart().await;
    wait_until("the runner says the hub is back", RUNNER_WAIT, || {
        std::future::ready(runner.stderr().contains(BACK))
    })
    .await;
    let job_id = hub.submit(&org, &inline_job(QUICK, &[])).await;
    let job = wait_ended(&hub, &org, &job_id).await;
    assert_eq!(job.state, JobState::Success, "{job:#?}");

    let stderr = runner.stderr();
    let said = |what: &str| {
        stderr
            .lines()
            .filter(|l| l.contains(what) && l.contains("WARN"))
            .count()
    };
    assert_eq!(said(UNREACHABLE), 1, "once per outage:\n{stderr}");
    assert_eq!(said(BACK), 1, "once when it is back:\n{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains(UNREACHABLE))
        .expect("the line");
    assert!(
        line.contains("error") && line.contains("/api/v1/runner/"),
        "the warning names the call and its cause: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_lease_is_lost_for_jobs_whose_completion_was_acknowledged() {
    // Short heartbeat holds and two slots: heartbeats come often, and a new job's lease sends a
    // fresh one at once, listing whatever the registry still holds.
    let hub = TestHub::builder()
        .heartbeat_interval_s(1)
        .lease_ttl_s(6)
        .start()
        .await;
    let org = hub.create_org(&unique("org")).await;
    let mut runner = runner_for(&hub, &org, hub.url(), |b| b.concurrency(2)).await;
    let mut jobs = Vec::new();
    for _ in 0..20 {
        jobs.push(hub.submit(&org, &inline_job(QUICK, &[])).await);
    }
    for job_id in &jobs {
        let job = wait_ended(&hub, &org, job_id).await;
        assert_eq!(job.state, JobState::Success, "{job:#?}");
    }
    // A drain ends once every job has left the runner: after that, nothing more can be said
    // about their leases.
    runner.sigterm();
    let status = runner.wait_exit(RUNNER_WAIT).await;
    assert!(status.success(), "{status}:\n{}", runner.stderr_tail(20));
    let stderr = runner.stderr();
    assert!(
        !stderr.contains("lease is lost"),
        "a delivered job's lease was reported lost:\n{stderr}"
    );
}
