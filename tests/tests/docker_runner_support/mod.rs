//! What the `docker_runner_*` tests share: the engine gate, the real `runner-docker` started
//! against a hub with its runner id looked up there, the engine's view of a runner's or a job's
//! resources through the `docker` CLI, and a guard that removes whatever a test left.
//!
//! Needs the images of `cargo xtask test-images`. Without an engine a test prints that it was
//! skipped, unless `OUTPOST_REQUIRE_DOCKER=1`, which makes that a failure.

#![allow(dead_code)] // each test binary uses a different part

use std::process::Output;

use outpost_e2e::{RUNNER_WAIT, runner_for};
use outpost_protocol::{RunnerList, paths};
use outpost_testkit::{Org, RunnerProcess, RunnerProcessBuilder, TestHub, bin_path, unique};

/// Built by `cargo xtask test-images`: busybox applets and `sh`.
pub const BUSYBOX: &str = "outpost-test/busybox:1";
/// Built by `cargo xtask test-images`: a TCP echo server on port 7000.
pub const TCP_ECHO: &str = "outpost-test/tcp-echo:1";

const REQUIRE_ENV: &str = "OUTPOST_REQUIRE_DOCKER";

/// Runs the `docker` CLI; `None` when it cannot be started at all.
pub async fn docker(args: &[&str]) -> Option<Output> {
    tokio::process::Command::new("docker")
        .args(args)
        .output()
        .await
        .ok()
}

/// Runs the `docker` CLI and answers its stdout; panics with its stderr when it fails.
pub async fn docker_ok(args: &[&str]) -> String {
    let out = docker(args)
        .await
        .unwrap_or_else(|| panic!("cannot run `docker {}`", args.join(" ")));
    assert!(
        out.status.success(),
        "`docker {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether the test can run: `false` (after printing why) when the engine is not reachable and
/// the environment does not require it. Panics when it is required but absent, and when the
/// test images are missing.
pub async fn engine_or_skip() -> bool {
    let reason = match docker(&["version", "--format", "{{.Server.Version}}"]).await {
        None => Some("the docker CLI cannot be run".to_owned()),
        Some(out) if !out.status.success() => Some(
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .lines()
                .last()
                .unwrap_or("docker version failed")
                .to_owned(),
        ),
        Some(_) => None,
    };
    if let Some(reason) = reason {
        if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
            panic!("{REQUIRE_ENV}=1 but the docker engine is not reachable: {reason}");
        }
        println!("skipped: docker engine not reachable ({reason})");
        return false;
    }
    for image in [BUSYBOX, TCP_ECHO] {
        let found = docker(&["image", "inspect", "--format", "{{.Id}}", image]).await;
        assert!(
            found.is_some_and(|o| o.status.success()),
            "test image {image} is missing: run `cargo xtask test-images` first"
        );
    }
    true
}

/// A `runner-docker` process and its id at the hub. Dropping it kills the process, then removes
/// everything on the engine labelled with its id (the safety net of a failing test; a passing
/// test asserts with [`assert_nothing_left`] first).
pub struct DockerRunner {
    /// Declared first: dropped (killed) before the purge below runs.
    pub process: RunnerProcess,
    pub id: String,
    _purge: outpost_testkit::DockerPurge,
}

/// Starts `runner-docker` with a unique name for `org` against the hub, waits until it is
/// ready, and looks its runner id up in the hub's runner list.
pub async fn start_runner(
    hub: &TestHub,
    org: &Org,
    configure: impl FnOnce(RunnerProcessBuilder) -> RunnerProcessBuilder,
) -> DockerRunner {
    let name = unique("docker-runner");
    let process = runner_for(hub, org, hub.url(), |b| {
        configure(b.binary(bin_path("runner-docker")).name(name.clone()))
    })
    .await;
    let id = runner_id(hub, org, &name).await;
    DockerRunner {
        process,
        _purge: outpost_testkit::DockerPurge(id.clone()),
        id,
    }
}

/// The id the hub gave the runner named `name`.
pub async fn runner_id(hub: &TestHub, org: &Org, name: &str) -> String {
    let answer = hub.as_org(org).get(&paths::runners(&org.name)).await;
    let list: RunnerList = answer.expect(200).json();
    let ids: Vec<&str> = list
        .runners
        .iter()
        .filter(|r| r.name == name)
        .map(|r| r.runner_id.as_str())
        .collect();
    assert_eq!(ids.len(), 1, "runner {name} in {list:#?}");
    ids[0].to_owned()
}

/// What is on the engine with the label `key=value`: `(containers, networks, volumes)`, each a
/// list of names. Volumes of kind `cache` are left out unless `with_caches` (caches outlive jobs
/// by design). A network carries no job id (the backend makes it before its job, as the
/// runner's spare): a job's network is the one its containers and workspace volume name
/// (label `outpost.network`); a runner's networks are those labelled with its id, less the one
/// spare no resource names.
pub async fn resources(
    key: &str,
    value: &str,
    with_caches: bool,
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let label = format!("label={key}={value}");
    let names =
        |text: String| -> Vec<String> { text.split_whitespace().map(str::to_owned).collect() };
    let containers =
        names(docker_ok(&["ps", "-a", "--filter", &label, "--format", "{{.Names}}"]).await);
    let mut volumes =
        names(docker_ok(&["volume", "ls", "--filter", &label, "--format", "{{.Name}}"]).await);
    let named = |kind: &'static str| {
        let label = label.clone();
        async move {
            let mut args = vec![kind];
            if kind == "volume" {
                args.push("ls");
            } else {
                args.push("-a");
            }
            args.extend([
                "--filter",
                &label,
                "--format",
                "{{.Label \"outpost.network\"}}",
            ]);
            names(docker_ok(&args).await)
        }
    };
    let mut referenced: Vec<String> = named("volume").await;
    referenced.extend(named("ps").await);
    referenced.retain(|n| !n.is_empty() && n != "<no" && n != "value>");
    referenced.sort();
    referenced.dedup();
    let labelled =
        names(docker_ok(&["network", "ls", "--filter", &label, "--format", "{{.Name}}"]).await);
    let mut networks: Vec<String> = Vec::new();
    let mut spare_allowed = key == "outpost.runner-id";
    for n in labelled {
        if !referenced.contains(&n) && spare_allowed {
            spare_allowed = false;
            continue;
        }
        networks.push(n);
    }
    for n in referenced {
        if !networks.contains(&n) && network_exists(&n).await {
            networks.push(n);
        }
    }
    if !with_caches {
        let caches = names(
            docker_ok(&[
                "volume",
                "ls",
                "--filter",
                &label,
                "--filter",
                "label=outpost.kind=cache",
                "--format",
                "{{.Name}}",
            ])
            .await,
        );
        volumes.retain(|v| !caches.contains(v));
    }
    (containers, networks, volumes)
}

async fn network_exists(name: &str) -> bool {
    let filter = format!("name=^{name}$");
    !docker_ok(&[
        "network",
        "ls",
        "--filter",
        &filter,
        "--format",
        "{{.Name}}",
    ])
    .await
    .trim()
    .is_empty()
}

/// Waits until no container, network or (non-cache) volume labelled with `runner_id` is left on
/// the engine: the backend removes a job's resources right after the job ends.
pub async fn assert_nothing_left(runner_id: &str) {
    let end = tokio::time::Instant::now() + RUNNER_WAIT;
    let last = loop {
        let left = resources("outpost.runner-id", runner_id, false).await;
        if left.0.is_empty() && left.1.is_empty() && left.2.is_empty() {
            return;
        }
        if tokio::time::Instant::now() >= end {
            break left;
        }
        tokio::time::sleep(outpost_testkit::POLL_INTERVAL * 5).await;
    };
    panic!(
        "runner {runner_id} left resources behind: containers {:?}, networks {:?}, volumes {:?}",
        last.0, last.1, last.2
    );
}

/// The name of step `index`'s container of `job_id`, once the runner created it.
pub async fn step_container(job_id: &str, index: u32) -> String {
    let job = format!("label=outpost.job-id={job_id}");
    let step = format!("label=outpost.step-index={index}");
    let args = [
        "ps",
        "-a",
        "--filter",
        job.as_str(),
        "--filter",
        "label=outpost.kind=step",
        "--filter",
        step.as_str(),
        "--format",
        "{{.Names}}",
    ];
    let end = tokio::time::Instant::now() + RUNNER_WAIT;
    loop {
        let name = docker_ok(&args).await.trim().to_owned();
        if !name.is_empty() {
            return name;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "job {job_id} has no container for step {index} after {RUNNER_WAIT:?}"
        );
        tokio::time::sleep(outpost_testkit::POLL_INTERVAL * 5).await;
    }
}

/// Creates the file `path` inside the running container `container` (how a test releases a
/// step waiting on a flag: the step runs in the container, not on the test's host).
pub async fn touch_in(container: &str, path: &str) {
    docker_ok(&["exec", container, "touch", path]).await;
}
