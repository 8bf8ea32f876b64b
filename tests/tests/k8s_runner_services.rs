//! The Kubernetes backend's pod parts composed by the real `runner-k8s`: a step reaches a service
//! (a native sidecar) by its name, steps share the workspace, a git checkout reaches it, and a
//! later job sees what an earlier one wrote to a cache claim. Every value checked is computed by
//! the steps, so it is in the log only if they really ran.

mod k8s_support;

use k8s_support::{assert_within_role, cluster_or_skip, start_runner};
use outpost_e2e::{inline_job, step_header, text, wait_ended};
use outpost_protocol::{GitSource, JobState, Source, SubmitJobRequest};
use outpost_testkit::{TestHub, random_secret, unique};

fn writer(cache: &str) -> String {
    format!(
        r#"version: 1
image: outpost-test/busybox:1
services:
  - {{ name: echo, image: outpost-test/tcp-echo:1, ready: {{ tcp: 7000, timeout: 60s, interval: 1s }} }}
caches:
  - {{ name: {cache}, path: /cache }}
steps:
  - name: ping
    run: |
      # Without a readiness check a service may need a moment: retry, with a bound.
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
async fn k8s_runner_reaches_a_service_by_name_and_shares_a_cache_between_jobs() {
    let Some(cluster) = cluster_or_skip(|_| {}).await else {
        return;
    };
    let hub = TestHub::start().await;
    let org = hub.create_org(&unique("org")).await;
    let runner = start_runner(&hub, &org, &cluster, "", |b| b).await;
    let cache = format!("c{}", &random_secret()[..12].to_lowercase());
    let token = random_secret();
    let reversed: String = token.chars().rev().collect();

    let first = hub
        .submit(&org, &inline_job(&writer(&cache), &[("TOKEN", &token)]))
        .await;
    let job = wait_ended(&hub, &org, &first).await;
    let log = text(&hub.log(&org, &first).await);
    assert_eq!(job.state, JobState::Success, "{job:#?}\n{log}");
    let expected = format!(
        "{}echo said ping-{token}\n{}workspace has {reversed}-gnip\n",
        step_header("ping", true),
        step_header("store", false),
    );
    assert_eq!(log, expected);

    let second = hub.submit(&org, &inline_job(&reader(&cache), &[])).await;
    let job = wait_ended(&hub, &org, &second).await;
    let log = text(&hub.log(&org, &second).await);
    assert_eq!(job.state, JobState::Success, "{job:#?}\n{log}");
    assert_eq!(
        log,
        format!("{}cache has {token}\n", step_header("load", true))
    );

    // A checkout (cloned by the runner, streamed into the pod) is the steps' workspace.
    let repo = tempfile::tempdir().expect("a temporary directory");
    let word = random_secret();
    let dir = repo.path();
    std::fs::write(dir.join("word.txt"), format!("{word}\n")).expect("write word.txt");
    std::fs::create_dir(dir.join("sub")).expect("mkdir sub");
    std::fs::write(dir.join("sub/file"), "nested\n").expect("write sub/file");
    std::fs::write(
        dir.join(".outpost.yml"),
        "version: 1\nimage: outpost-test/busybox:1\nsteps:\n  - name: show\n    run: echo \"from-$(cat word.txt) $(cat sub/file)\"\n",
    )
    .expect("write the pipeline");
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(["-c", "user.name=e2e", "-c", "user.email=e2e@example.com"])
            .args(args)
            .current_dir(dir)
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "init"]);
    let from_git = SubmitJobRequest {
        source: Some(Source {
            git: GitSource {
                url: format!("file://{}", repo.path().display()),
                git_ref: Some("main".to_owned()),
            },
            path: ".outpost.yml".to_owned(),
        }),
        ..SubmitJobRequest::default()
    };
    let third = hub.submit(&org, &from_git).await;
    let job = wait_ended(&hub, &org, &third).await;
    let log = text(&hub.log(&org, &third).await);
    assert_eq!(job.state, JobState::Success, "{job:#?}\n{log}");
    assert_eq!(
        log,
        format!("{}from-{word} nested\n", step_header("show", true))
    );

    cluster.assert_nothing_left(&runner.id).await;
    // The cache claim stays for later jobs, free again.
    let claims = cluster
        .claims()
        .list(&kube::api::ListParams::default().labels("outpost.dev/kind=cache"))
        .await
        .expect("list claims");
    let ours: Vec<_> = claims
        .items
        .iter()
        .filter(|c| {
            c.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("outpost.dev/cache-name"))
                .is_some_and(|n| *n == cache)
        })
        .collect();
    assert_eq!(ours.len(), 1, "one claim for the cache: {ours:#?}");
    let notes = ours[0].metadata.annotations.clone().unwrap_or_default();
    assert!(!notes.contains_key("outpost.dev/in-use-by"), "{notes:?}");
    assert!(notes.contains_key("outpost.dev/last-used"), "{notes:?}");
    // Attach (the checkout), cache claims (list, create, patch), pods and their logs: all
    // within the Role.
    assert_within_role(&cluster, &token);
    let name = ours[0].metadata.name.clone().unwrap_or_default();
    let _ = cluster.claims().delete(&name, &Default::default()).await;
}

/// A job that marks the cache and waits for `/tmp/go` in its container.
fn holder(cache: &str) -> String {
    format!(
        r#"version: 1
image: outpost-test/busybox:1
caches:
  - {{ name: {cache}, path: /cache }}
steps:
  - name: hold
    run: |
      echo first > /cache/who
      echo "holding"
      while [ ! -e /tmp/go ]; do sleep 0.05; done
"#
    )
}

/// What the cache holds when the job runs, if anything.
fn peeker(cache: &str) -> String {
    format!(
        r#"version: 1
image: outpost-test/busybox:1
caches:
  - {{ name: {cache}, path: /cache }}
steps:
  - name: peek
    run: echo "sees $(cat /cache/who 2>/dev/null || echo nothing)"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8s_runner_gives_a_cache_claim_to_one_job_at_a_time() {
    let Some(cluster) = cluster_or_skip(|_| {}).await else {
        return;
    };
    if cluster.sim.is_none() {
        println!("skipped: the test releases the step with docker exec on the stand-in's node");
        return;
    }
    let hub = TestHub::start().await;
    let org = hub.create_org(&unique("org")).await;
    let runner = start_runner(&hub, &org, &cluster, "", |b| b.concurrency(2)).await;
    let cache = format!("c{}", &random_secret()[..12].to_lowercase());

    let first = hub.submit(&org, &inline_job(&holder(&cache), &[])).await;
    outpost_e2e::wait_log(
        &hub,
        &org,
        &first,
        "shows the step holding the cache",
        outpost_e2e::RUNNER_WAIT,
        |log| text(log).contains("holding\n"),
    )
    .await;
    // The claim is the first job's while it runs: the second gets a claim of its own.
    let second = hub.submit(&org, &inline_job(&peeker(&cache), &[])).await;
    let job = wait_ended(&hub, &org, &second).await;
    let log = text(&hub.log(&org, &second).await);
    assert_eq!(job.state, JobState::Success, "{job:#?}\n{log}");
    assert_eq!(log, format!("{}sees nothing\n", step_header("peek", true)));

    let pod = cluster.wait_pod(&first).await;
    let pod = pod.metadata.name.unwrap_or_default();
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "--filter",
            &format!("label=outpost-kube-sim.pod={pod}"),
            "--filter",
            "label=outpost-kube-sim.container=step-0",
            "--format",
            "{{.Names}}",
        ])
        .output()
        .expect("docker ps runs");
    let container = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let touched = std::process::Command::new("docker")
        .args(["exec", &container, "touch", "/tmp/go"])
        .output()
        .expect("docker exec runs");
    assert!(
        touched.status.success(),
        "{}",
        String::from_utf8_lossy(&touched.stderr)
    );
    let job = wait_ended(&hub, &org, &first).await;
    assert_eq!(job.state, JobState::Success, "{job:#?}");
    cluster.assert_nothing_left(&runner.id).await;

    // Two claims of the cache, both free again; a third job takes one of them.
    let selector = format!("outpost.dev/kind=cache,outpost.dev/cache-name={cache}");
    let claims = cluster
        .claims()
        .list(&kube::api::ListParams::default().labels(&selector))
        .await
        .expect("list claims")
        .items;
    assert_eq!(claims.len(), 2, "{claims:#?}");
    for c in &claims {
        let notes = c.metadata.annotations.clone().unwrap_or_default();
        assert!(!notes.contains_key("outpost.dev/in-use-by"), "{notes:?}");
    }
    let third = hub.submit(&org, &inline_job(&peeker(&cache), &[])).await;
    let job = wait_ended(&hub, &org, &third).await;
    assert_eq!(job.state, JobState::Success, "{job:#?}");
    let after = cluster
        .claims()
        .list(&kube::api::ListParams::default().labels(&selector))
        .await
        .expect("list claims")
        .items;
    assert_eq!(after.len(), 2, "a third claim was made: {after:#?}");
    for c in &after {
        let name = c.metadata.name.clone().unwrap_or_default();
        let _ = cluster.claims().delete(&name, &Default::default()).await;
    }
}
