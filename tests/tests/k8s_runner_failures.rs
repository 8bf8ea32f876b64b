//! How the Kubernetes backend reports what the pod's status says, through the real `runner-k8s`:
//! a step killed for its memory (`oom`), an image that cannot be pulled (`image_pull`), a pod
//! that cannot be scheduled (`infrastructure`, with the scheduler's message) and the job's
//! deadline (`timeout`), each with the pod's events in the job's log; nothing is left behind.
//!
//! The limits that make each happen are the runner's settings (a memory default, a short image
//! pull grace and unschedulable timeout): the test waits for the job's end, never for a time.

mod k8s_support;

use k8s_support::{Cluster, cluster_or_skip, start_runner};
use outpost_e2e::{inline_job, text, wait_ended};
use outpost_protocol::{FailureClass, JobDetails, JobState, StepState};
use outpost_testkit::{Org, TestHub, unique};

const OOM: &str = r#"version: 1
image: outpost-test/busybox:1
steps:
  - name: hog
    run: |
      echo "allocating"
      dd if=/dev/zero of=/dev/null bs=256M count=1
  - name: after
    when: on_failure
    run: echo "ran after the oom"
"#;

const IMAGE_PULL: &str = r#"version: 1
image: outpost-test/busybox:1
steps:
  - name: first
    run: echo "first ran"
  - name: missing
    image: outpost-test/not-there:404
    run: echo "not-run-1"
  - name: after
    when: always
    run: echo "not-run-2, the pod cannot go on"
"#;

const DEADLINE: &str = r#"version: 1
image: outpost-test/busybox:1
timeout: 10s
steps:
  - name: long
    run: |
      echo "starting"
      while true; do sleep 1; done
  - name: after
    when: always
    run: echo "never"
"#;

async fn run_job(hub: &TestHub, org: &Org, pipeline: &str) -> (JobDetails, String) {
    let job_id = hub.submit(org, &inline_job(pipeline, &[])).await;
    let job = wait_ended(hub, org, &job_id).await;
    let log = text(&hub.log(org, &job_id).await);
    (job, log)
}

fn states(job: &JobDetails) -> Vec<StepState> {
    job.steps.iter().map(|s| s.state).collect()
}

#[track_caller]
fn assert_events_in_log(log: &str, what: &str) {
    assert!(
        log.contains("[outpost] events of pod outpost-"),
        "no events of the pod in the log of the {what} job:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8s_runner_reports_oom_image_pull_and_deadline_with_the_pods_events() {
    let Some(cluster) = cluster_or_skip(|_| {}).await else {
        return;
    };
    let hub = TestHub::start().await;
    let org = hub.create_org(&unique("org")).await;
    let runner = start_runner(
        &hub,
        &org,
        &cluster,
        "memory = \"48Mi\"\nimage_pull_grace = \"1s\"",
        |b| b.concurrency(3),
    )
    .await;

    let (oom, image, deadline) = tokio::join!(
        run_job(&hub, &org, OOM),
        run_job(&hub, &org, IMAGE_PULL),
        run_job(&hub, &org, DEADLINE),
    );

    let (job, log) = oom;
    assert_eq!(job.state, JobState::Failed, "{job:#?}\n{log}");
    let failure = job.failure.clone().expect("a failure");
    assert_eq!(failure.class, FailureClass::Oom, "{job:#?}\n{log}");
    // The wrapper outlived its step: the pod went on to the on_failure step.
    assert_eq!(
        states(&job),
        [StepState::Failed, StepState::Success],
        "{job:#?}"
    );
    assert!(
        log.contains("allocating\n") && log.contains("ran after the oom\n"),
        "{log}"
    );
    assert_events_in_log(&log, "oom");

    let (job, log) = image;
    assert_eq!(job.state, JobState::Failed, "{job:#?}\n{log}");
    let failure = job.failure.clone().expect("a failure");
    assert_eq!(failure.class, FailureClass::ImagePull, "{job:#?}\n{log}");
    assert!(
        failure.message.contains("outpost-test/not-there:404"),
        "{failure:?}"
    );
    assert_eq!(
        states(&job),
        [StepState::Success, StepState::Failed, StepState::Skipped],
        "{job:#?}"
    );
    assert!(log.contains("first ran\n"), "{log}");
    assert!(!log.contains("not-run-"), "{log}");
    assert_events_in_log(&log, "image pull");
    assert!(
        log.contains("not-there:404"),
        "the pull failure's event is not in the log:\n{log}"
    );

    let (job, log) = deadline;
    assert_eq!(job.state, JobState::TimedOut, "{job:#?}\n{log}");
    let failure = job.failure.clone().expect("a failure");
    assert_eq!(failure.class, FailureClass::Timeout, "{job:#?}\n{log}");
    assert_eq!(failure.message, "the job timed out after 10s");
    assert_eq!(
        states(&job),
        [StepState::TimedOut, StepState::Skipped],
        "{job:#?}"
    );
    // Whether the step got to print before the deadline depends on how fast the node started
    // the pod: not asserted.
    assert_events_in_log(&log, "deadline");

    cluster.assert_nothing_left(&runner.id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8s_runner_reports_an_unschedulable_pod_with_the_schedulers_message() {
    let Some(cluster) = cluster_or_skip(|_| {}).await else {
        return;
    };
    let hub = TestHub::start().await;
    let org = hub.create_org(&unique("org")).await;
    // More memory than any node has: the scheduler leaves the pod Pending.
    let runner = start_runner(
        &hub,
        &org,
        &cluster,
        // An emptyDir workspace: no claim that is not bound yet, so memory is the one reason.
        "memory = \"64Ti\"\nunschedulable_timeout = \"1s\"\nworkspace = \"empty_dir\"",
        |b| b,
    )
    .await;
    let pipeline =
        "version: 1\nimage: outpost-test/busybox:1\nsteps:\n  - name: s\n    run: echo never\n";
    let (job, log) = run_job(&hub, &org, pipeline).await;
    assert_eq!(job.state, JobState::Failed, "{job:#?}\n{log}");
    let failure = job.failure.clone().expect("a failure");
    assert_eq!(
        failure.class,
        FailureClass::Infrastructure,
        "{job:#?}\n{log}"
    );
    assert!(
        failure.message.contains("could not be scheduled") && failure.message.contains("memory"),
        "not the scheduler's message: {failure:?}"
    );
    assert_events_in_log(&log, "unschedulable");
    assert!(log.contains("FailedScheduling"), "{log}");
    finish(&cluster, &runner.id).await;
}

async fn finish(cluster: &Cluster, runner_id: &str) {
    cluster.assert_nothing_left(runner_id).await;
}

const WAITS: &str = r#"version: 1
image: outpost-test/busybox:1
steps:
  - name: wait
    run: |
      echo "waiting"
      while true; do sleep 0.2; done
  - name: after
    when: always
    run: echo "not-run-3"
"#;

/// Runs [`WAITS`] and, once its step has said it waits, does `disrupt` to its pod; the job's
/// details and log.
async fn disrupted(
    cluster: &Cluster,
    disrupt: impl AsyncFnOnce(&outpost_kube_sim::KubeSim, &str),
) -> Option<(JobDetails, String, String)> {
    let Some(sim) = cluster.sim.as_ref() else {
        println!("skipped: disrupting a pod needs the stand-in's node controls");
        return None;
    };
    let hub = TestHub::start().await;
    let org = hub.create_org(&unique("org")).await;
    let runner = start_runner(&hub, &org, cluster, "", |b| b).await;
    let job_id = hub.submit(&org, &inline_job(WAITS, &[])).await;
    outpost_e2e::wait_log(
        &hub,
        &org,
        &job_id,
        "shows the step waiting",
        outpost_e2e::RUNNER_WAIT,
        |log| text(log).contains("waiting\n"),
    )
    .await;
    let pod = cluster.wait_pod(&job_id).await;
    disrupt(sim, pod.metadata.name.as_deref().expect("a name")).await;
    let job = wait_ended(&hub, &org, &job_id).await;
    let log = text(&hub.log(&org, &job_id).await);
    finish(cluster, &runner.id).await;
    Some((job, log, runner.id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8s_runner_reports_an_evicted_pod_and_a_lost_node_as_infrastructure() {
    let Some(cluster) = cluster_or_skip(|_| {}).await else {
        return;
    };
    let evicted = disrupted(&cluster, async |sim, pod| {
        sim.evict("default", pod).await.expect("evict the pod");
    })
    .await;
    let Some((job, log, _)) = evicted else {
        return;
    };
    assert_eq!(job.state, JobState::Failed, "{job:#?}\n{log}");
    let failure = job.failure.clone().expect("a failure");
    assert_eq!(
        failure.class,
        FailureClass::Infrastructure,
        "{job:#?}\n{log}"
    );
    assert!(failure.message.contains("evicted"), "{failure:?}");
    assert_eq!(
        states(&job),
        [StepState::Failed, StepState::Skipped],
        "{job:#?}"
    );
    assert_events_in_log(&log, "evicted");
    assert!(
        log.contains("Evicted"),
        "the eviction's event is not in the log:\n{log}"
    );
    assert!(!log.contains("not-run-"), "{log}");

    let lost = disrupted(&cluster, async |sim, _pod| {
        sim.lose_node().await.expect("lose the node");
    })
    .await;
    let Some((job, log, _)) = lost else {
        return;
    };
    assert_eq!(job.state, JobState::Failed, "{job:#?}\n{log}");
    let failure = job.failure.clone().expect("a failure");
    assert_eq!(
        failure.class,
        FailureClass::Infrastructure,
        "{job:#?}\n{log}"
    );
    assert_eq!(
        states(&job),
        [StepState::Failed, StepState::Skipped],
        "{job:#?}"
    );
    assert_events_in_log(&log, "node loss");
}
