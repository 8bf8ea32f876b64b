//! Shared support of the Docker backend's tests: the engine gate, the test images, jobs, event
//! collection and a cleanup guard keyed on a per-test runner id.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{ListContainersOptions, ListNetworksOptions, ListVolumesOptions};
use bytes::Bytes;
use outpost_docker::{DockerConfig, DockerExecutor};
use outpost_executor::{
    CancellationToken, ExecEvent, Executor, ExecutorError, JobId, JobOutcome, OutputStream,
    PreparedJob, Resume, RunnerId, StepOutcome, StepSpec, When, event_channel,
};

/// Built by `cargo xtask test-images` (xtask/src/test_images.rs).
pub const BUSYBOX: &str = "outpost-test/busybox:1";
/// TCP echo server on port 7000, built by `cargo xtask test-images`.
pub const TCP_ECHO: &str = "outpost-test/tcp-echo:1";

const REQUIRE_ENV: &str = "OUTPOST_REQUIRE_DOCKER";

/// Whether the engine answers; the reason when it does not.
pub async fn docker_available() -> Result<Docker, String> {
    let docker = Docker::connect_with_defaults().map_err(|e| e.to_string())?;
    let docker = docker
        .negotiate_version()
        .await
        .map_err(|e| e.to_string())?;
    docker.ping().await.map_err(|e| e.to_string())?;
    Ok(docker)
}

/// One test's view of the engine: an executor with its own runner id, and a guard that removes
/// everything labelled with that id when the test ends (even by a panic).
pub struct Ctx {
    pub exec: DockerExecutor,
    pub docker: Docker,
    pub runner_id: RunnerId,
    _guard: outpost_testkit::DockerPurge,
}

/// `None` (after printing why) when the engine is absent and the CI does not require it.
pub async fn setup(config: DockerConfig) -> Option<Ctx> {
    let docker = match docker_available().await {
        Ok(d) => d,
        Err(reason) => {
            if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
                panic!("{REQUIRE_ENV}=1 but the docker engine is not reachable: {reason}");
            }
            println!("skipped: docker engine not reachable ({reason})");
            return None;
        }
    };
    for image in [BUSYBOX, TCP_ECHO] {
        if docker.inspect_image(image).await.is_err() {
            panic!("test image {image} is missing: run `cargo xtask test-images` first");
        }
    }
    let exec = DockerExecutor::connect(config)
        .await
        .expect("the executor connects to the engine the test client reached");
    let runner_id = format!("test-{:016x}", rand::random::<u64>());
    Some(Ctx {
        exec,
        docker,
        _guard: outpost_testkit::DockerPurge(runner_id.clone()),
        runner_id: runner_id.into(),
    })
}

/// A config for tests: short grace period.
pub fn config() -> DockerConfig {
    DockerConfig {
        stop_grace: Duration::from_secs(1),
        ..DockerConfig::default()
    }
}

pub fn step(index: u32, run: &str) -> StepSpec {
    StepSpec {
        index,
        name: format!("s{index}"),
        image: None,
        run: run.to_owned(),
        env: BTreeMap::new(),
        timeout: None,
        when: When::OnSuccess,
    }
}

pub fn job(ctx: &Ctx, workspace: &Path, steps: Vec<StepSpec>) -> PreparedJob {
    PreparedJob {
        job_id: JobId::new(format!("j-{:012x}", rand::random::<u64>() >> 16)),
        runner_id: ctx.runner_id.clone(),
        cache_scope: format!("scope-{}", ctx.runner_id),
        workspace: workspace.to_owned(),
        container_workspace: "/workspace".to_owned(),
        default_image: Some(BUSYBOX.to_owned()),
        env: BTreeMap::new(),
        secrets: Vec::new(),
        services: Vec::new(),
        caches: Vec::new(),
        steps,
        timeout: None,
    }
}

/// Runs `job` to its end while collecting its events; `on_event` sees each as it arrives.
pub async fn run_with(
    exec: &DockerExecutor,
    job: PreparedJob,
    resume: Option<Resume>,
    cancel: CancellationToken,
    mut on_event: impl FnMut(&ExecEvent, &[ExecEvent]),
) -> (Result<JobOutcome, ExecutorError>, Vec<ExecEvent>) {
    let (tx, mut rx) = event_channel();
    let collect = async {
        let mut events = Vec::new();
        while let Some(e) = rx.recv().await {
            on_event(&e, &events);
            events.push(e);
        }
        events
    };
    let ran = tokio::join!(exec.run(job, resume, tx, cancel), collect);
    // So that a test's end (which ends the runtime) never cuts a cleanup short.
    exec.wait_for_cleanups().await;
    ran
}

pub async fn run(
    exec: &DockerExecutor,
    job: PreparedJob,
) -> (Result<JobOutcome, ExecutorError>, Vec<ExecEvent>) {
    run_with(exec, job, None, CancellationToken::new(), |_, _| {}).await
}

/// The concatenated output of step `index` (of one stream, or both).
pub fn output(events: &[ExecEvent], index: u32, only: Option<OutputStream>) -> String {
    String::from_utf8_lossy(&output_bytes(events, index, only)).into_owned()
}

pub fn output_bytes(events: &[ExecEvent], index: u32, only: Option<OutputStream>) -> Vec<u8> {
    events
        .iter()
        .filter_map(|e| match e {
            ExecEvent::Output {
                index: i,
                stream,
                data,
            } if *i == index && only.is_none_or(|o| o == *stream) => Some(data.clone()),
            _ => None,
        })
        .collect::<Vec<Bytes>>()
        .concat()
}

/// The outcome reported for step `index`.
pub fn finished(events: &[ExecEvent], index: u32) -> StepOutcome {
    events
        .iter()
        .find_map(|e| match e {
            ExecEvent::StepFinished {
                index: i, outcome, ..
            } if *i == index => Some(outcome.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no StepFinished for step {index} in {events:#?}"))
}

pub fn started(events: &[ExecEvent], index: u32) -> bool {
    events
        .iter()
        .any(|e| matches!(e, ExecEvent::StepStarted { index: i, .. } if *i == index))
}

/// What of a job is still on the engine once its cleanup is over: (containers, networks,
/// volumes). Containers and volumes carry the job's id; a network carries none (it may have been
/// made before its job), so every network of the test's runner counts but the executor's spares.
pub async fn leftovers(ctx: &Ctx, job_id: &str) -> (usize, usize, usize) {
    let (containers, _, volumes) = labelled(&ctx.docker, job_id).await;
    let spares = ctx.exec.spare_networks();
    let networks = runner_networks(&ctx.docker, ctx.runner_id.as_str())
        .await
        .into_iter()
        .filter(|n| !spares.contains(n))
        .count();
    (containers, networks, volumes)
}

/// The names of the networks labelled with runner `runner_id`.
pub async fn runner_networks(docker: &Docker, runner_id: &str) -> Vec<String> {
    let filters = std::collections::HashMap::from([(
        "label".to_owned(),
        vec![format!("outpost.runner-id={runner_id}")],
    )]);
    docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some(filters),
        }))
        .await
        .expect("list networks")
        .into_iter()
        .filter_map(|n| n.name)
        .collect()
}

/// (containers, networks, volumes) labelled with job `job_id`, whichever runner made them.
pub async fn labelled(docker: &Docker, job_id: &str) -> (usize, usize, usize) {
    let filters = std::collections::HashMap::from([(
        "label".to_owned(),
        vec![format!("outpost.job-id={job_id}")],
    )]);
    let containers = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters.clone()),
            ..Default::default()
        }))
        .await
        .expect("list containers");
    let networks = docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some(filters.clone()),
        }))
        .await
        .expect("list networks");
    let volumes = docker
        .list_volumes(Some(ListVolumesOptions {
            filters: Some(filters),
        }))
        .await
        .expect("list volumes")
        .volumes
        .unwrap_or_default();
    (containers.len(), networks.len(), volumes.len())
}
