//! Cancel and sweep through the real `runner-k8s`: a job cancelled mid-step ends `cancelled`
//! (the step got SIGTERM: its trap ran) and leaves nothing in the cluster; objects planted with
//! the runner's labels for a job the runner does not hold are removed by the sweep it runs at
//! start, while another runner's are kept.

mod k8s_support;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use k8s_support::{cluster_or_skip, start_runner};
use kube::api::PostParams;
use outpost_e2e::{RUNNER_WAIT, inline_job, text, wait_ended, wait_log};
use outpost_protocol::{FailureClass, JobState, StepState, paths};
use outpost_testkit::{TestHub, unique, wait_until};

const LONG: &str = r#"version: 1
image: outpost-test/busybox:1
steps:
  - name: wait
    run: |
      trap 'echo "got SIGTERM"; exit 143' TERM
      echo "waiting for the cancel"
      while true; do sleep 0.2; done
  - name: after
    when: always
    run: echo "never"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8s_runner_cancel_stops_the_step_and_leaves_nothing() {
    let Some(cluster) = cluster_or_skip(|_| {}).await else {
        return;
    };
    let hub = TestHub::start().await;
    let org = hub.create_org(&unique("org")).await;
    let runner = start_runner(&hub, &org, &cluster, "", |b| b).await;
    let job_id = hub.submit(&org, &inline_job(LONG, &[])).await;
    wait_log(
        &hub,
        &org,
        &job_id,
        "shows the step waiting",
        RUNNER_WAIT,
        |log| text(log).contains("waiting for the cancel\n"),
    )
    .await;
    hub.as_org(&org)
        .post_json(&paths::job_cancel(&org.name, &job_id), &())
        .await
        .expect(200);
    let job = wait_ended(&hub, &org, &job_id).await;
    let log = text(&hub.log(&org, &job_id).await);
    assert_eq!(job.state, JobState::Cancelled, "{job:#?}\n{log}");
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
    assert!(
        log.contains("got SIGTERM\n"),
        "the step did not get SIGTERM:\n{log}"
    );
    assert!(!log.contains("never"), "{log}");
    // The run ends only once the pod is gone.
    cluster.assert_nothing_left(&runner.id).await;
}

fn meta(name: &str, runner_id: &str, job_id: &str, kind: &str) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "labels": {
            "app.kubernetes.io/managed-by": "outpost",
            "outpost.dev/runner-id": runner_id,
            "outpost.dev/job-id": job_id,
            "outpost.dev/kind": kind,
            "outpost.dev/expires-at": "1",
        },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8s_runner_sweeps_what_its_dead_jobs_left_and_keeps_the_rest() {
    let Some(cluster) = cluster_or_skip(|_| {}).await else {
        return;
    };
    let hub = TestHub::start().await;
    let org = hub.create_org(&unique("org")).await;
    // A first process registers the runner (its id is what the leftovers carry), then stops.
    let mut runner = start_runner(&hub, &org, &cluster, "", |b| b).await;
    runner.process.sigkill().await;
    let dead_job = unique("j");
    let tag = unique("sweep").to_lowercase().replace('_', "-");
    let ours = |what: &str| format!("{tag}-{what}");
    let pp = PostParams::default();
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": meta(&ours("pod"), &runner.id, &dead_job, "pod"),
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "c", "image": "outpost-test/busybox:1", "command": ["sh", "-c", "sleep 3600"]}]},
    }))
    .expect("a pod");
    cluster.pods().create(&pp, &pod).await.expect("plant a pod");
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": meta(&ours("secrets"), &runner.id, &dead_job, "secret"),
        "stringData": {"k": "v"},
    }))
    .expect("a secret");
    cluster
        .secrets()
        .create(&pp, &secret)
        .await
        .expect("plant a secret");
    let claim = |name: String, runner_id: &str| -> PersistentVolumeClaim {
        serde_json::from_value(serde_json::json!({
            "metadata": meta(&name, runner_id, &dead_job, "workspace"),
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}},
        }))
        .expect("a claim")
    };
    cluster
        .claims()
        .create(&pp, &claim(ours("workspace"), &runner.id))
        .await
        .expect("plant a claim");
    // Another runner's: not this runner's to sweep.
    cluster
        .claims()
        .create(&pp, &claim(ours("other"), "r_someone-else"))
        .await
        .expect("plant another runner's claim");

    runner.process.restart().await;
    runner.process.wait_ready(RUNNER_WAIT).await;
    cluster.assert_nothing_left(&runner.id).await;
    let other = ours("other");
    wait_until(
        "the other runner's claim is still there",
        RUNNER_WAIT,
        || {
            let claims = cluster.claims();
            let other = other.clone();
            async move { claims.get_opt(&other).await.ok().flatten().is_some() }
        },
    )
    .await;
    let swept = runner.process.stderr();
    assert!(
        swept.contains(&ours("pod")),
        "the sweep did not say it removed the pod:\n{swept}"
    );
    let _ = cluster.claims().delete(&other, &Default::default()).await;
}
