//! Dispatch to parked runners without a herd (issue 10, finding 6): a job entering the queue
//! wakes one held acquire that can take it, not every one, and no job waits while a runner that
//! could take it is parked. (The hand-over of a wake-up whose acquire left without claiming is
//! tested on the hub's waiter registry itself, where the race can be set up exactly.)

use std::collections::HashSet;

use outpost_e2e::{PROMPTLY, assert_pending, job, woken};
use outpost_protocol::JobAssignment;
use outpost_testkit::{TestHub, TestRunner, unique};
use tokio::task::JoinHandle;

/// Parks `runner` in a 60 s acquire (twice what a test waits for a wake-up).
fn park(runner: &TestRunner) -> JoinHandle<Option<JobAssignment>> {
    let runner = runner.clone();
    tokio::spawn(async move { runner.acquire(60).await })
}

const WAITING: &str = "outpost_hub_acquire_waiting";
const WAKEUPS: &str = "outpost_hub_acquire_wakeups_total";

#[tokio::test]
async fn each_job_wakes_one_parked_runner_and_none_is_left_waiting() {
    const RUNNERS: usize = 10;
    let hub = TestHub::builder().max_wait_s(120).start().await;
    let org = hub.create_org(&unique("org")).await;
    let mut runners = Vec::new();
    for i in 0..RUNNERS {
        runners.push(
            hub.register_runner(&org, &format!("r{i}"), &["linux"])
                .await,
        );
    }
    let mut polls: Vec<_> = runners.iter().map(park).collect();
    hub.wait_metric(WAITING, RUNNERS as f64, PROMPTLY).await;

    // One job: one poll answers with it, one wake-up was sent, the other nine hold on.
    let first = hub.submit(&org, &job(&["linux"])).await;
    outpost_testkit::wait_until("one acquire has answered", PROMPTLY, || {
        std::future::ready(polls.iter().any(|p| p.is_finished()))
    })
    .await;
    let done = polls
        .iter()
        .position(|p| p.is_finished())
        .expect("a finished poll");
    let got = woken(polls.remove(done), "the woken acquire")
        .await
        .expect("a job");
    assert_eq!(got.job_id, first);
    assert_eq!(hub.metric(WAKEUPS).await, Some(1.0), "one job, one wake-up");
    for poll in &polls {
        assert_pending(&hub, poll, "a parked acquire the job did not need").await;
    }

    // As many jobs as parked runners, submitted back to back: every one is handed out at once,
    // each to a different runner, with one wake-up each.
    let mut submitted = HashSet::new();
    for _ in 0..polls.len() {
        submitted.insert(hub.submit(&org, &job(&["linux"])).await.to_string());
    }
    let mut handed = HashSet::new();
    for poll in polls {
        let got = woken(poll, "a parked acquire").await.expect("a job");
        assert!(
            handed.insert(got.job_id.to_string()),
            "{} twice",
            got.job_id
        );
    }
    assert_eq!(handed, submitted);
    assert_eq!(hub.metric(WAKEUPS).await, Some(RUNNERS as f64));
}

#[tokio::test]
async fn a_job_only_one_parked_runner_can_take_goes_to_it() {
    let hub = TestHub::builder().max_wait_s(120).start().await;
    let org = hub.create_org(&unique("org")).await;
    // The plain runners park first: they have waited longest, and still are not woken.
    let mut plain = Vec::new();
    for i in 0..5 {
        let runner = hub
            .register_runner(&org, &format!("plain{i}"), &["linux"])
            .await;
        plain.push(park(&runner));
    }
    hub.wait_metric(WAITING, 5.0, PROMPTLY).await;
    let gpu = hub.register_runner(&org, "gpu", &["linux", "gpu"]).await;
    let gpu_poll = park(&gpu);
    hub.wait_metric(WAITING, 6.0, PROMPTLY).await;

    let gpu_job = hub.submit(&org, &job(&["gpu"])).await;
    let got = woken(gpu_poll, "the gpu runner's acquire")
        .await
        .expect("the gpu job");
    assert_eq!(got.job_id, gpu_job);
    assert_eq!(hub.metric(WAKEUPS).await, Some(1.0));
    for poll in &plain {
        assert_pending(&hub, poll, "a runner without the label").await;
    }

    // A job any runner takes goes to one of the plain runners, which waited longest.
    let any = hub.submit(&org, &job(&["linux"])).await;
    outpost_testkit::wait_until("a plain acquire has answered", PROMPTLY, || {
        std::future::ready(plain.iter().any(|p| p.is_finished()))
    })
    .await;
    let done = plain
        .iter()
        .position(|p| p.is_finished())
        .expect("finished");
    let got = woken(plain.remove(done), "a plain acquire")
        .await
        .expect("a job");
    assert_eq!(got.job_id, any);
}
