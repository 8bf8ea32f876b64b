//! The Docker backend's parts composed by the real `runner-docker`: a step reaches a service by
//! its name, steps share the job's workspace, and a later job sees what an earlier one wrote to a
//! cache. Every value checked is computed by the steps (the pipeline text does not contain it),
//! so it is in the log only if the steps really ran.

mod docker_runner_support;

use docker_runner_support::{assert_nothing_left, engine_or_skip, resources, start_runner};
use outpost_e2e::{inline_job, step_header, text, wait_ended};
use outpost_protocol::{JobState, StepState};
use outpost_testkit::{TestHub, random_secret, unique};

/// Talks to the `echo` service, writes to the workspace and to the cache `CACHE`.
fn writer(cache: &str) -> String {
    format!(
        r#"version: 1
image: outpost-test/busybox:1
services:
  - {{ name: echo, image: outpost-test/tcp-echo:1 }}
caches:
  - {{ name: {cache}, path: /cache }}
steps:
  - name: ping
    run: |
      # The service may need a moment to listen: retry within the step, with a bound.
      for i in $(seq 100); do
        out=$(echo "ping-$TOKEN" | nc -w 1 echo 7000) && [ -n "$out" ] && break
        sleep 0.1
      done
      echo "echo said $out"
      echo "$out" | rev > reply.txt
  - name: store
    run: |
      echo "workspace has $(cat reply.txt)"
      echo "$(echo "$TOKEN" | rev)" > /cache/token
"#
    )
}

/// Reads what the writer's job left in the cache `CACHE`.
fn reader(cache: &str) -> String {
    format!(
        r#"version: 1
image: outpost-test/busybox:1
caches:
  - {{ name: {cache}, path: /cache }}
steps:
  - name: load
    run: echo "cache has $(cat /cache/token | rev)"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_runner_reaches_a_service_by_name_and_shares_a_cache_between_jobs() {
    if !engine_or_skip().await {
        return;
    }
    let hub = TestHub::start().await;
    let org = hub.create_org(&unique("org")).await;
    let runner = start_runner(&hub, &org, |b| b).await;
    // Unique: cache volumes are shared by every job of the same scope and cache name.
    let cache = format!("c{}", &random_secret()[..12]);
    let token = random_secret();
    let reversed: String = token.chars().rev().collect();

    let first = hub
        .submit(&org, &inline_job(&writer(&cache), &[("TOKEN", &token)]))
        .await;
    let job = wait_ended(&hub, &org, &first).await;
    let log = text(&hub.log(&org, &first).await);
    assert_eq!(job.state, JobState::Success, "{job:#?}\n{log}");
    let states: Vec<StepState> = job.steps.iter().map(|s| s.state).collect();
    assert_eq!(states, [StepState::Success, StepState::Success], "{job:#?}");
    let expected = format!(
        "{}echo said ping-{token}\n{}workspace has {reversed}-gnip\n",
        step_header("ping", true),
        step_header("store", false),
    );
    assert_eq!(log, expected);

    // The cache volume outlives the job; nothing else of it does.
    let (_, _, volumes) = resources("outpost.runner-id", &runner.id, true).await;
    assert!(
        volumes.iter().any(|v| v.ends_with(&format!("-{cache}"))),
        "no cache volume {cache} among {volumes:?}"
    );
    assert_nothing_left(&runner.id).await;

    let second = hub.submit(&org, &inline_job(&reader(&cache), &[])).await;
    let job = wait_ended(&hub, &org, &second).await;
    let log = text(&hub.log(&org, &second).await);
    assert_eq!(job.state, JobState::Success, "{job:#?}\n{log}");
    assert_eq!(
        log,
        format!("{}cache has {token}\n", step_header("load", true))
    );
    assert_nothing_left(&runner.id).await;
}
