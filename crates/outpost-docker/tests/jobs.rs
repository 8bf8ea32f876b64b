//! The Docker backend against the real engine: services, caches, failures, OOM, image pulls,
//! cancel and timeouts, secrets. Needs `cargo xtask test-images`; skipped without an engine
//! unless `OUTPOST_REQUIRE_DOCKER=1`.

mod common;

use std::time::Duration;

use common::*;
use outpost_docker::{ByteSize, DockerConfig, PullPolicy};
use outpost_executor::{
    CacheSpec, CancellationToken, ExecEvent, Executor, OutputStream, Secret, ServiceSpec, When,
};
use outpost_protocol::{FailureClass, JobResult, StepState};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_share_the_workspace_and_reach_a_service_by_name() {
    let Some(ctx) = setup(config()).await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("hello.txt"), "from-the-checkout\n").expect("write");
    std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
    std::fs::write(dir.path().join("sub/deep.txt"), "deep\n").expect("write");
    let mut j = job(
        &ctx,
        dir.path(),
        vec![
            step(0, "cat hello.txt sub/deep.txt; pwd; echo made > made.txt"),
            // The service may need a moment to listen: retry within the step, with a bound.
            step(
                1,
                "for i in $(seq 100); do out=$(echo ping | nc -w 1 echo 7000) && \
                 [ \"$out\" = ping ] && break; sleep 0.1; done; echo \"echo said $out\"; \
                 [ \"$out\" = ping ]",
            ),
            step(2, "cat made.txt; echo to-stderr >&2; echo to-stdout"),
        ],
    );
    j.services.push(ServiceSpec {
        name: "echo".into(),
        image: TCP_ECHO.into(),
        env: Default::default(),
        command: None,
    });
    j.env.insert("JOB_VAR".into(), "job".into());
    let job_id = j.job_id.clone();

    let (outcome, events) = run(&ctx.exec, j).await;
    let outcome = outcome.expect("the job runs");
    assert_eq!(outcome.result, JobResult::Success, "{events:#?}");
    assert_eq!(
        output(&events, 0, None),
        "from-the-checkout\ndeep\n/workspace\n"
    );
    assert_eq!(output(&events, 1, None), "echo said ping\n");
    assert_eq!(
        output(&events, 2, Some(OutputStream::Stdout)),
        "made\nto-stdout\n"
    );
    assert_eq!(
        output(&events, 2, Some(OutputStream::Stderr)),
        "to-stderr\n"
    );
    // Every step: StepStarted, outputs, StepFinished, in order.
    let order: Vec<(u32, &str)> = events
        .iter()
        .filter_map(|e| match e {
            ExecEvent::StepStarted { index, .. } => Some((*index, "start")),
            ExecEvent::StepFinished { index, .. } => Some((*index, "end")),
            ExecEvent::Output { .. } => None,
        })
        .collect();
    assert_eq!(
        order,
        [
            (0, "start"),
            (0, "end"),
            (1, "start"),
            (1, "end"),
            (2, "start"),
            (2, "end")
        ]
    );

    ctx.exec.wait_for_cleanups().await;
    assert_eq!(leftovers(&ctx, job_id.as_str()).await, (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_volume_is_seen_by_a_later_job_and_kept() {
    let Some(ctx) = setup(config()).await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let token = format!("{:x}", rand::random::<u64>());
    let cache = CacheSpec {
        name: "deps".into(),
        path: "/cache/deps".into(),
    };
    let mut first = job(
        &ctx,
        dir.path(),
        vec![step(0, &format!("echo {token} > /cache/deps/stamp"))],
    );
    first.caches.push(cache.clone());
    let (outcome, events) = run(&ctx.exec, first).await;
    assert_eq!(
        outcome.expect("runs").result,
        JobResult::Success,
        "{events:#?}"
    );
    ctx.exec.wait_for_cleanups().await;

    let mut second = job(&ctx, dir.path(), vec![step(0, "cat /cache/deps/stamp")]);
    second.caches.push(cache);
    let (outcome, events) = run(&ctx.exec, second).await;
    assert_eq!(
        outcome.expect("runs").result,
        JobResult::Success,
        "{events:#?}"
    );
    assert_eq!(output(&events, 0, None), format!("{token}\n"));
    ctx.exec.wait_for_cleanups().await;

    let volume = format!("outpost-cache-scope-{}-deps", ctx.runner_id);
    let kept = ctx
        .docker
        .inspect_volume(&volume)
        .await
        .expect("the cache volume outlives its jobs");
    assert_eq!(
        kept.labels.get("outpost.kind").map(String::as_str),
        Some("cache")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_reports_its_exit_code_and_runs_on_failure_steps() {
    let Some(ctx) = setup(config()).await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut steps = vec![
        step(0, "echo failing; exit 3"),
        step(1, "echo never"),
        step(2, "echo cleaning up"),
        step(3, "echo always"),
    ];
    steps[2].when = When::OnFailure;
    steps[3].when = When::Always;
    let (outcome, events) = run(&ctx.exec, job(&ctx, dir.path(), steps)).await;
    let outcome = outcome.expect("runs");
    assert_eq!(outcome.result, JobResult::Failed);
    let failure = outcome.failure.expect("a failure");
    assert_eq!(failure.class, FailureClass::Script);
    assert_eq!(failure.message, "step `s0` exited with code 3");
    let s0 = finished(&events, 0);
    assert_eq!((s0.state, s0.exit_code), (StepState::Failed, Some(3)));
    assert_eq!(finished(&events, 1).state, StepState::Skipped);
    assert!(!started(&events, 1));
    assert_eq!(finished(&events, 2).state, StepState::Success);
    assert_eq!(output(&events, 2, None), "cleaning up\n");
    assert_eq!(finished(&events, 3).state, StepState::Success);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_killed_step_is_reported_as_oom() {
    let Some(ctx) = setup(DockerConfig {
        memory: Some(ByteSize::mib(16)),
        ..config()
    })
    .await
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    // One 200 MB string, touched at once: killed at the limit without a long reclaim struggle
    // (a slowly growing buffer, `head -c 200m /dev/zero | tail`, can thrash for a minute first).
    let script = r#"awk 'BEGIN { s = sprintf("%200000000s", "") }'"#;
    let (outcome, events) = run(&ctx.exec, job(&ctx, dir.path(), vec![step(0, script)])).await;
    let outcome = outcome.expect("runs");
    assert_eq!(outcome.result, JobResult::Failed, "{events:#?}");
    let s0 = finished(&events, 0);
    assert_eq!(s0.state, StepState::Failed);
    assert_eq!(
        s0.failure.as_ref().map(|f| f.class),
        Some(FailureClass::Oom),
        "{s0:?}"
    );
    assert_ne!(s0.exit_code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_is_an_image_pull_failure() {
    let Some(ctx) = setup(config()).await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut steps = vec![step(0, "true"), step(1, "echo after")];
    steps[0].image = Some("outpost-test/does-not-exist:1".into());
    steps[1].when = When::OnFailure;
    let (outcome, events) = run(&ctx.exec, job(&ctx, dir.path(), steps)).await;
    let outcome = outcome.expect("runs");
    assert_eq!(outcome.result, JobResult::Failed);
    let failure = finished(&events, 0).failure.expect("failure");
    assert_eq!(failure.class, FailureClass::ImagePull, "{failure:?}");
    assert!(
        failure.message.contains("outpost-test/does-not-exist:1"),
        "{failure:?}"
    );
    // The engine's own words follow (here: that no registry is reachable).
    let engine_words = failure
        .message
        .strip_prefix("cannot pull image `outpost-test/does-not-exist:1`: ")
        .unwrap_or_default();
    assert!(!engine_words.trim().is_empty(), "{failure:?}");
    // The on_failure step still runs, in the (default) busybox image.
    assert_eq!(output(&events, 1, None), "after\n");

    let Some(never) = setup(DockerConfig {
        pull_policy: PullPolicy::Never,
        ..config()
    })
    .await
    else {
        return;
    };
    let mut steps = vec![step(0, "true")];
    steps[0].image = Some("outpost-test/does-not-exist:1".into());
    let (outcome, events) = run(&never.exec, job(&never, dir.path(), steps)).await;
    assert_eq!(outcome.expect("runs").result, JobResult::Failed);
    let failure = finished(&events, 0).failure.expect("failure");
    assert_eq!(failure.class, FailureClass::ImagePull);
    assert!(failure.message.contains("`never`"), "{failure:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_step_and_leaves_nothing_behind() {
    let Some(ctx) = setup(config()).await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut steps = vec![step(0, "echo started; sleep 300"), step(1, "echo never")];
    steps[1].when = When::Always;
    let mut j = job(&ctx, dir.path(), steps);
    j.services.push(ServiceSpec {
        name: "echo".into(),
        image: TCP_ECHO.into(),
        env: Default::default(),
        command: None,
    });
    let job_id = j.job_id.clone();
    let cancel = CancellationToken::new();
    let (outcome, events) = run_with(&ctx.exec, j, None, cancel.clone(), |e, _| {
        if let ExecEvent::Output { data, .. } = e
            && data.starts_with(b"started")
        {
            cancel.cancel();
        }
    })
    .await;
    let outcome = outcome.expect("runs");
    assert_eq!(outcome.result, JobResult::Cancelled, "{events:#?}");
    assert_eq!(finished(&events, 0).state, StepState::Cancelled);
    assert_eq!(finished(&events, 1).state, StepState::Skipped);

    ctx.exec.wait_for_cleanups().await;
    assert_eq!(leftovers(&ctx, job_id.as_str()).await, (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_and_job_timeouts_stop_everything_and_leave_nothing_behind() {
    let Some(ctx) = setup(config()).await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");

    let mut steps = vec![step(0, "sleep 300"), step(1, "echo on failure")];
    steps[0].timeout = Some(Duration::from_secs(1));
    steps[1].when = When::OnFailure;
    let step_job = job(&ctx, dir.path(), steps);
    let step_job_id = step_job.job_id.clone();
    let (outcome, events) = run(&ctx.exec, step_job).await;
    let outcome = outcome.expect("runs");
    assert_eq!(outcome.result, JobResult::TimedOut, "{events:#?}");
    let s0 = finished(&events, 0);
    assert_eq!(s0.state, StepState::TimedOut);
    assert_eq!(s0.failure.map(|f| f.class), Some(FailureClass::Timeout));
    // A step timeout is a failure like any other: on_failure steps run.
    assert_eq!(output(&events, 1, None), "on failure\n");

    let mut steps = vec![step(0, "sleep 300"), step(1, "echo always")];
    steps[1].when = When::Always;
    let mut job_timeout = job(&ctx, dir.path(), steps);
    job_timeout.timeout = Some(Duration::from_secs(2));
    let job_timeout_id = job_timeout.job_id.clone();
    let (outcome, events) = run(&ctx.exec, job_timeout).await;
    let outcome = outcome.expect("runs");
    assert_eq!(outcome.result, JobResult::TimedOut, "{events:#?}");
    assert_eq!(
        outcome.failure.map(|f| f.message),
        Some("the job timed out after 2s".to_owned())
    );
    assert_eq!(finished(&events, 0).state, StepState::TimedOut);
    // A job timeout ends the job: not even `always` steps run.
    assert_eq!(finished(&events, 1).state, StepState::Skipped);

    ctx.exec.wait_for_cleanups().await;
    assert_eq!(leftovers(&ctx, step_job_id.as_str()).await, (0, 0, 0));
    assert_eq!(leftovers(&ctx, job_timeout_id.as_str()).await, (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_steps_but_no_label_and_no_image() {
    // Also checks the limits every container gets from the runner's defaults.
    let Some(ctx) = setup(DockerConfig {
        cpus: Some(0.5),
        memory: Some(ByteSize::mib(64)),
        ..config()
    })
    .await
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("f"), "x").expect("write");
    let secret = format!("s3cret-{:016x}", rand::random::<u64>());
    let mut j = job(
        &ctx,
        dir.path(),
        vec![step(
            0,
            "case \"$DEPLOY_TOKEN\" in s3cret-*) echo has-secret;; esac; echo ready; sleep 300",
        )],
    );
    j.secrets.push(Secret {
        name: "DEPLOY_TOKEN".into(),
        value: secret.clone(),
    });
    j.services.push(ServiceSpec {
        name: "echo".into(),
        image: TCP_ECHO.into(),
        env: Default::default(),
        command: None,
    });
    let job_id = j.job_id.clone();
    let cancel = CancellationToken::new();
    let docker = ctx.docker.clone();
    let (tx, mut rx) = outpost_executor::event_channel();
    let exec = &ctx.exec;
    let inspect = async {
        let mut seen = String::new();
        while let Some(e) = rx.recv().await {
            if let ExecEvent::Output { data, .. } = &e {
                seen.push_str(&String::from_utf8_lossy(data));
            }
            if seen.contains("ready") {
                break;
            }
        }
        assert!(
            seen.contains("has-secret"),
            "the step got its secret: {seen}"
        );
        assert_secret_not_in_labels_or_images(&docker, job_id.as_str(), &secret).await;
        cancel.cancel();
        while rx.recv().await.is_some() {}
    };
    let (outcome, ()) = tokio::join!(exec.run(j, None, tx, cancel.clone()), inspect);
    assert_eq!(outcome.expect("runs").result, JobResult::Cancelled);
    ctx.exec.wait_for_cleanups().await;
}

async fn assert_secret_not_in_labels_or_images(
    docker: &bollard::Docker,
    job_id: &str,
    secret: &str,
) {
    let filters = std::collections::HashMap::from([(
        "label".to_owned(),
        vec![format!("outpost.job-id={job_id}")],
    )]);
    let containers = docker
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            all: true,
            filters: Some(filters.clone()),
            ..Default::default()
        }))
        .await
        .expect("list");
    assert!(containers.len() >= 2, "the step and the service run");
    let mut step_env_has_it = false;
    for c in &containers {
        let id = c.id.clone().expect("id");
        let inspected = docker.inspect_container(&id, None).await.expect("inspect");
        let host = inspected.host_config.expect("host config");
        assert_eq!(host.init, Some(true));
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(host.memory, Some(64 << 20));
        assert_eq!(host.privileged, Some(false));
        let config = inspected.config.expect("config");
        assert_ne!(config.tty, Some(true));
        let labels = serde_json::to_string(&config.labels).expect("json");
        assert!(!labels.contains(secret), "a label of {id} holds the secret");
        let kind = config
            .labels
            .as_ref()
            .and_then(|l| l.get("outpost.kind").cloned());
        let env = config.env.unwrap_or_default().join("\n");
        if kind.as_deref() == Some("step") {
            step_env_has_it |= env.contains(secret);
        } else {
            assert!(
                !env.contains(secret),
                "{kind:?} container {id} got the secret"
            );
        }
        let image = docker
            .inspect_image(&inspected.image.expect("image id"))
            .await
            .expect("inspect image");
        let image_json = serde_json::to_string(&image).expect("json");
        assert!(
            !image_json.contains(secret),
            "image of {id} holds the secret"
        );
    }
    // The documented trade-off: the step container's environment carries it.
    assert!(step_env_has_it);
    let volumes = docker
        .list_volumes(Some(bollard::query_parameters::ListVolumesOptions {
            filters: Some(filters.clone()),
        }))
        .await
        .expect("volumes");
    let json = serde_json::to_string(&volumes).expect("json");
    assert!(!json.contains(secret));
    let networks = docker
        .list_networks(Some(bollard::query_parameters::ListNetworksOptions {
            filters: Some(filters),
        }))
        .await
        .expect("networks");
    let json = serde_json::to_string(&networks).expect("json");
    assert!(!json.contains(secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_wins_over_a_step_that_never_stops_printing() {
    let Some(ctx) = setup(config()).await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let j = job(
        &ctx,
        dir.path(),
        vec![step(0, "while true; do echo spam; done")],
    );
    let cancel = CancellationToken::new();
    let (outcome, events) = run_with(&ctx.exec, j, None, cancel.clone(), |e, _| {
        if matches!(e, ExecEvent::Output { .. }) {
            cancel.cancel();
        }
    })
    .await;
    assert_eq!(outcome.expect("runs").result, JobResult::Cancelled);
    assert_eq!(finished(&events, 0).state, StepState::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_the_engine_refuses_is_a_config_failure() {
    let Some(ctx) = setup(config()).await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut j = job(&ctx, dir.path(), vec![step(0, "true")]);
    j.caches.push(CacheSpec {
        name: "c".into(),
        path: "relative/path".into(),
    });
    let (outcome, events) = run(&ctx.exec, j).await;
    assert_eq!(outcome.expect("runs").result, JobResult::Failed);
    let failure = finished(&events, 0).failure.expect("failure");
    assert_eq!(failure.class, FailureClass::Config, "{failure:?}");
    assert!(failure.message.contains("relative/path"), "{failure:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_job_takes_the_spare_network_and_shutdown_removes_it() {
    let Some(ctx) = setup(config()).await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(
        ctx.exec.spare_networks().is_empty(),
        "no spare before a job"
    );
    let first = job(&ctx, dir.path(), vec![step(0, "true")]);
    let (outcome, events) = run(&ctx.exec, first).await;
    assert_eq!(
        outcome.expect("runs").result,
        JobResult::Success,
        "{events:#?}"
    );
    let spare = ctx.exec.spare_networks();
    assert_eq!(spare.len(), 1, "one spare once the first job ended");

    // The second job's step container is on that spare network.
    let second = job(&ctx, dir.path(), vec![step(0, "echo ready; sleep 300")]);
    let job_id = second.job_id.clone();
    let container = format!("outpost-{job_id}-step-0");
    let cancel = CancellationToken::new();
    let (tx, mut rx) = outpost_executor::event_channel();
    let docker = ctx.docker.clone();
    let look = async {
        let mut seen = String::new();
        while !seen.contains("ready") {
            match rx.recv().await {
                Some(ExecEvent::Output { data, .. }) => {
                    seen.push_str(&String::from_utf8_lossy(&data));
                }
                Some(_) => {}
                None => panic!("the job ended before its step was ready"),
            }
        }
        let inspected = docker
            .inspect_container(&container, None)
            .await
            .expect("inspect the step");
        let mode = inspected.host_config.and_then(|h| h.network_mode);
        cancel.cancel();
        while rx.recv().await.is_some() {}
        mode
    };
    let (outcome, mode) = tokio::join!(ctx.exec.run(second, None, tx, cancel.clone()), look);
    assert_eq!(outcome.expect("runs").result, JobResult::Cancelled);
    assert_eq!(mode.as_ref(), spare.first(), "the job ran on the spare");

    ctx.exec.wait_for_cleanups().await;
    assert_eq!(leftovers(&ctx, job_id.as_str()).await, (0, 0, 0));
    let next = ctx.exec.spare_networks();
    assert_eq!(next.len(), 1);
    assert_ne!(next, spare, "a network serves one job only");

    ctx.exec.shutdown().await;
    assert!(ctx.exec.spare_networks().is_empty());
    assert_eq!(
        runner_networks(&ctx.docker, ctx.runner_id.as_str()).await,
        Vec::<String>::new(),
        "no network of the runner is left after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_helper_copies_the_checkout() {
    let Some(ctx) = setup(DockerConfig {
        helper_image: Some(BUSYBOX.to_owned()),
        ..config()
    })
    .await
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("f.txt"), "through the helper\n").expect("write");
    let j = job(&ctx, dir.path(), vec![step(0, "cat f.txt")]);
    let job_id = j.job_id.clone();
    let (outcome, events) = run(&ctx.exec, j).await;
    assert_eq!(
        outcome.expect("runs").result,
        JobResult::Success,
        "{events:#?}"
    );
    assert_eq!(output(&events, 0, None), "through the helper\n");
    assert_eq!(leftovers(&ctx, job_id.as_str()).await, (0, 0, 0));
}
