//! The Kubernetes backend through the real `runner-k8s` and a real hub, on the kube stand-in (or
//! the cluster `OUTPOST_TEST_KUBECONFIG` names): several steps with `when`, env, variables and
//! a secret (which is in no pod spec, no hub record and no log), the checkout received in the
//! pod, a step's exit code with an `on_failure` step after it, nothing left behind, and the API
//! verbs the runner used within the chart's Role.

mod k8s_support;

use k8s_support::{PodRecorder, assert_within_role, cluster_or_skip, start_runner};
use outpost_e2e::{inline_job, step_header, text, wait_ended};
use outpost_protocol::{FailureClass, JobState, StepState};
use outpost_testkit::{TestHub, random_secret, unique};

/// Three steps: env and variables, a secret printed (masked in the log), a failure with its exit
/// code; then an `on_failure` and an `always` step, and an `on_success` one that is skipped.
const PIPELINE: &str = r#"version: 1
image: outpost-test/busybox:1
variables: { GREETING: hello, SHADOW: job }
secrets: [X]
steps:
  - name: env
    env: { SHADOW: step }
    run: |
      echo "$GREETING from $SHADOW, run $RUN_ID"
      echo "in $(pwd)"
      echo "secret is $X"
  - name: fail
    run: |
      echo "about to fail"
      exit 7
  - name: skipped
    run: echo "never printed"
  - name: report
    when: on_failure
    run: echo "reporting after a failure"
  - name: always
    when: always
    run: echo "always runs"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8s_runner_runs_steps_with_when_env_and_secrets_and_stays_within_its_role() {
    let Some(cluster) = cluster_or_skip(|_| {}).await else {
        return;
    };
    let hub = TestHub::start().await;
    let org = hub.create_org(&unique("org")).await;
    let secret = random_secret();
    let runner = start_runner(&hub, &org, &cluster, "", |b| {
        b.env("OUTPOST_SECRET_X", &secret)
    })
    .await;
    if let Some(sim) = &cluster.sim {
        sim.clear_requests();
    }
    let recorder = PodRecorder::start(&cluster).await;
    let run_id = unique("run");
    let job_id = hub
        .submit(&org, &inline_job(PIPELINE, &[("RUN_ID", &run_id)]))
        .await;
    let job = wait_ended(&hub, &org, &job_id).await;
    let log = text(&hub.log(&org, &job_id).await);
    assert_eq!(job.state, JobState::Failed, "{job:#?}\n{log}");
    let failure = job.failure.clone().expect("a failure");
    assert_eq!(failure.class, FailureClass::Script, "{job:#?}");
    assert_eq!(failure.message, "step `fail` exited with code 7");
    let states: Vec<StepState> = job.steps.iter().map(|s| s.state).collect();
    assert_eq!(
        states,
        [
            StepState::Success,
            StepState::Failed,
            StepState::Skipped,
            StepState::Success,
            StepState::Success
        ],
        "{job:#?}"
    );
    assert_eq!(job.steps[1].exit_code, Some(7), "{job:#?}");
    let expected = format!(
        "{}hello from step, run {run_id}\nin /workspace\nsecret is [MASKED]\n{}about to fail\n{}reporting after a failure\n{}always runs\n",
        step_header("env", true),
        step_header("fail", false),
        step_header("report", false),
        step_header("always", false),
    );
    assert_eq!(log, expected);
    assert!(!log.contains(&secret), "the secret is in the log");

    // The pod, in every version the cluster showed, and its events never held the secret.
    let versions: Vec<String> = recorder
        .seen()
        .into_iter()
        .filter(|p| p.contains(&job_id))
        .collect();
    assert!(!versions.is_empty(), "the recorder saw no pod of the job");
    assert!(
        versions.iter().all(|p| !p.contains(&secret)),
        "the secret is in the pod"
    );
    assert!(
        versions.iter().any(|p| p.contains("secretKeyRef")),
        "the steps do not reference the secret: {versions:?}"
    );
    let all_events = kube::Api::<k8s_openapi::api::core::v1::Event>::namespaced(
        cluster.client.clone(),
        &cluster.namespace,
    )
    .list(&Default::default())
    .await
    .expect("list events");
    let events = serde_json::to_string(&all_events.items).expect("json");
    assert!(!events.contains(&secret), "the secret is in an event");

    // Nothing the hub keeps of the job holds the secret.
    let record = serde_json::to_string(&job).expect("json");
    assert!(
        !record.contains(&secret),
        "the secret is in the hub's job record"
    );

    cluster.assert_nothing_left(&runner.id).await;
    assert_within_role(&cluster, &secret);
}
