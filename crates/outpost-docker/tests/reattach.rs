//! Taking a job over after a runner restart, `running_jobs`, and the sweep of leftovers, against
//! the real engine. Needs `cargo xtask test-images`.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bollard::models::{ContainerCreateBody, NetworkCreateRequest, VolumeCreateRequest};
use bollard::query_parameters::CreateContainerOptions;
use common::*;
use outpost_docker::DockerConfig;
use outpost_executor::{
    CancellationToken, ExecEvent, Executor, JobId, OutputStream, Resume, event_channel,
};
use outpost_protocol::{FailureClass, JobResult, StepState};

/// Prints 20 lines, waits for a flag file the test creates through `docker exec`, prints 20
/// more: deterministic, no timing.
const GATED: &str = "i=0; while [ $i -lt 20 ]; do echo \"line-$i\"; i=$((i+1)); done; \
                     while [ ! -e /tmp/go ]; do sleep 0.05; done; \
                     while [ $i -lt 40 ]; do echo \"line-$i\"; i=$((i+1)); done";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_runner_takes_over_a_running_step_byte_exact() {
    let Some(ctx) = setup(config()).await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let j = job(
        &ctx,
        dir.path(),
        vec![step(0, GATED), step(1, "echo after")],
    );
    let job_id = j.job_id.clone();
    let expected: String = (0..40).map(|i| format!("line-{i}\n")).collect();

    // First runner process: runs until the step waits for the flag, then "dies" (its future is
    // dropped mid-step, as when the process is killed).
    let (tx, mut rx) = event_channel();
    let first = {
        let j = j.clone();
        let exec = &ctx.exec;
        async move { exec.run(j, None, tx, CancellationToken::new()).await }
    };
    let mut consumed: Vec<ExecEvent> = Vec::new();
    tokio::select! {
        _ = first => panic!("the first run must not end on its own"),
        () = async {
            while let Some(e) = rx.recv().await {
                consumed.push(e);
                if output(&consumed, 0, None).ends_with("line-19\n") {
                    break;
                }
            }
        } => {}
    }
    // `first` is dropped here. Whatever it had already sent counts as consumed.
    while let Ok(e) = rx.try_recv() {
        consumed.push(e);
    }
    let before = output_bytes(&consumed, 0, None);
    assert!(
        !consumed
            .iter()
            .any(|e| matches!(e, ExecEvent::StepFinished { .. }))
    );
    assert_eq!(
        ctx.exec
            .running_jobs(&ctx.runner_id)
            .await
            .expect("running jobs"),
        vec![job_id.clone()]
    );

    // The second process resumes, told that all but the last 3 bytes were consumed (so the skip
    // falls inside a frame); the step is released only once it is following.
    let resume_at = before.len() as u64 - 3;
    let step_container = format!("outpost-{job_id}-step-0");
    let docker = ctx.docker.clone();
    let release = async {
        let exec = docker
            .create_exec(
                &step_container,
                bollard::models::ExecConfig {
                    cmd: Some(vec!["touch".into(), "/tmp/go".into()]),
                    ..Default::default()
                },
            )
            .await
            .expect("create exec");
        docker.start_exec(&exec.id, None).await.expect("start exec");
    };
    let second = run_with(
        &ctx.exec,
        j,
        Some(Resume {
            step_index: 0,
            output_bytes: resume_at,
        }),
        CancellationToken::new(),
        |_, _| {},
    );
    let ((outcome, events), ()) = tokio::join!(second, release);
    let outcome = outcome.expect("the resumed run ends");
    assert_eq!(outcome.result, JobResult::Success, "{events:#?}");

    let after = output_bytes(&events, 0, Some(OutputStream::Stdout));
    let mut whole = before[..resume_at as usize].to_vec();
    whole.extend_from_slice(&after);
    assert_eq!(String::from_utf8_lossy(&whole), expected);
    assert!(after.starts_with(&before[resume_at as usize..]));
    // The resumed step was started by the first process; the next one starts normally.
    assert!(!started(&events, 0));
    assert_eq!(finished(&events, 0).state, StepState::Success);
    assert!(started(&events, 1));
    assert_eq!(output(&events, 1, None), "after\n");

    ctx.exec.wait_for_cleanups().await;
    assert_eq!(leftovers(&ctx, job_id.as_str()).await, (0, 0, 0));
    assert!(
        ctx.exec
            .running_jobs(&ctx.runner_id)
            .await
            .expect("list")
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_a_step_whose_container_is_gone_is_an_infrastructure_failure() {
    let Some(ctx) = setup(config()).await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut steps = vec![
        step(0, "true"),
        step(1, "echo next"),
        step(2, "echo cleanup"),
    ];
    steps[2].when = outpost_executor::When::OnFailure;
    let j = job(&ctx, dir.path(), steps);
    let (outcome, events) = run_with(
        &ctx.exec,
        j,
        Some(Resume {
            step_index: 0,
            output_bytes: 10,
        }),
        CancellationToken::new(),
        |_, _| {},
    )
    .await;
    let outcome = outcome.expect("runs");
    assert_eq!(outcome.result, JobResult::Failed);
    let s0 = finished(&events, 0);
    assert_eq!(
        s0.failure.map(|f| f.class),
        Some(FailureClass::Infrastructure)
    );
    assert_eq!(finished(&events, 1).state, StepState::Skipped);
    assert_eq!(output(&events, 2, None), "cleanup\n");
}

fn planted_labels(runner: &str, job: &str, kind: &str) -> HashMap<String, String> {
    HashMap::from([
        ("outpost.managed".to_owned(), "true".to_owned()),
        ("outpost.runner-id".to_owned(), runner.to_owned()),
        ("outpost.job-id".to_owned(), job.to_owned()),
        ("outpost.expires-at".to_owned(), "0".to_owned()),
        ("outpost.kind".to_owned(), kind.to_owned()),
    ])
}

async fn plant(docker: &bollard::Docker, runner: &str, job: &str, tag: &str) {
    let name = format!("outpost-{job}-{tag}");
    docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(format!("{name}-step-0")),
                ..Default::default()
            }),
            ContainerCreateBody {
                image: Some(BUSYBOX.to_owned()),
                cmd: Some(vec!["true".into()]),
                labels: Some(planted_labels(runner, job, "step")),
                ..Default::default()
            },
        )
        .await
        .expect("plant a container");
    docker
        .create_network(NetworkCreateRequest {
            name: format!("{name}-net"),
            labels: Some(planted_labels(runner, job, "network")),
            ..Default::default()
        })
        .await
        .expect("plant a network");
    for kind in ["workspace", "cache"] {
        docker
            .create_volume(VolumeCreateRequest {
                name: Some(format!("{name}-{kind}")),
                labels: Some(planted_labels(runner, job, kind)),
                ..Default::default()
            })
            .await
            .expect("plant a volume");
    }
}

/// A network as this version makes them (no job label) named `name`, and, for `job`, the
/// workspace volume of that job naming it.
async fn plant_network(docker: &bollard::Docker, runner: &str, job: Option<&str>, name: &str) {
    let mut labels = planted_labels(runner, "", "network");
    labels.remove("outpost.job-id");
    docker
        .create_network(NetworkCreateRequest {
            name: name.to_owned(),
            labels: Some(labels),
            ..Default::default()
        })
        .await
        .expect("plant a network");
    if let Some(job) = job {
        let mut labels = planted_labels(runner, job, "workspace");
        labels.insert("outpost.network".to_owned(), name.to_owned());
        docker
            .create_volume(VolumeCreateRequest {
                name: Some(format!("{name}-workspace")),
                labels: Some(labels),
                ..Default::default()
            })
            .await
            .expect("plant a volume");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_removes_what_dead_jobs_of_this_runner_left() {
    let Some(ctx) = setup(DockerConfig {
        cache_retention: Duration::ZERO,
        ..config()
    })
    .await
    else {
        return;
    };
    // Another "runner" on the same engine: its id differs, the sweep must not touch it.
    let Some(other) = setup(config()).await else {
        return;
    };
    let docker = &ctx.docker;
    let me = ctx.runner_id.as_str();
    plant(docker, me, "dead-job", "a").await;
    plant(docker, me, "live-job", "b").await;
    plant(docker, other.runner_id.as_str(), "dead-job", "c").await;
    // Networks name no job: the workspace volume of the job they serve does, or nothing does.
    let net = |tag: &str| format!("outpost-net-{me}-{tag}");
    plant_network(docker, me, Some("live-job"), &net("live")).await;
    plant_network(docker, me, Some("dead-job"), &net("dead")).await;
    plant_network(docker, me, None, &net("orphan")).await;

    let mut running = ctx
        .exec
        .running_jobs(&ctx.runner_id)
        .await
        .expect("running jobs");
    running.sort();
    assert_eq!(running, ["dead-job", "live-job"]);

    let live = HashSet::from([JobId::from("live-job")]);
    let report = ctx.exec.sweep(&ctx.runner_id, &live).await.expect("sweep");
    assert!(report.failed.is_empty(), "{report:?}");
    // The dead job's container, networks and workspace volumes, both cache volumes (a
    // retention of zero: caches are kept by use, not by job liveness), and the orphan network.
    assert_eq!(report.removed.len(), 8, "{report:?}");
    assert!(
        report
            .removed
            .contains(&format!("network {} (job dead-job)", net("dead"))),
        "{report:?}"
    );
    assert!(
        report
            .removed
            .contains(&format!("network {} (job none)", net("orphan"))),
        "{report:?}"
    );
    assert_eq!(
        labelled(docker, "dead-job").await,
        (1, 1, 2),
        "the other runner's stay"
    );
    assert_eq!(
        labelled(docker, "live-job").await,
        (1, 1, 2),
        "the live job keeps all but its cache"
    );
    let mut networks = runner_networks(docker, me).await;
    networks.sort();
    assert_eq!(
        networks,
        ["outpost-live-job-b-net".to_owned(), net("live")],
        "the live job keeps its networks"
    );
    assert_eq!(
        ctx.exec
            .running_jobs(&ctx.runner_id)
            .await
            .expect("running jobs"),
        ["live-job"]
    );

    // With the default retention, a fresh cache volume stays.
    plant(docker, other.runner_id.as_str(), "dead-job-2", "d").await;
    let report = other
        .exec
        .sweep(&other.runner_id, &HashSet::<JobId>::new())
        .await
        .expect("sweep");
    let volumes = docker
        .list_volumes(Some(bollard::query_parameters::ListVolumesOptions {
            filters: Some(HashMap::from([(
                "label".to_owned(),
                vec![format!("outpost.runner-id={}", other.runner_id)],
            )])),
        }))
        .await
        .expect("list")
        .volumes
        .unwrap_or_default();
    let kinds: Vec<_> = volumes
        .iter()
        .map(|v| v.labels.get("outpost.kind").cloned().unwrap_or_default())
        .collect();
    assert_eq!(kinds, ["cache", "cache"], "{report:?}");
}
