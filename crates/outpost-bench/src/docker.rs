//! The Docker backend's figures, on a real `runner-docker` polling a real hub and the machine's
//! Docker engine: a trivial step through outpost against a bare `docker run` of the same image
//! and command (a ratio, both measured in the same run), where its fixed cost goes, and the wall
//! time of a 5-step job. Needs the engine and the image of `cargo xtask test-images`.
//!
//! The breakdown is the runner's own: `DockerExecutor` logs the time of each phase of every run
//! (and of every cleanup) as a debug event of target `outpost_docker::timing`
//! (crates/outpost-docker/src/timing.rs), which the bench turns on and reads from runner-docker's
//! JSON log. So it is the code that ships that is measured, not a copy of it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use outpost_protocol::JobState;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::procs::{Ctx, Hub, ORG};
use crate::table::{Row, Samples, Verdict, ms};

/// Built by `cargo xtask test-images` (xtask/src/test_images.rs).
const IMAGE: &str = "outpost-test/busybox:1";

/// The command of the trivial step: what a step's `run: "true"` becomes in its container.
const COMMAND: [&str; 3] = ["sh", "-c", "true"];

/// The tracing target and messages of the Docker backend's timing events
/// (`outpost_docker::{TIMING_TARGET, RUN_EVENT, CLEANUP_EVENT}`; xtask does not link the backend).
const TIMING_TARGET: &str = "outpost_docker::timing";
const RUN_EVENT: &str = "job timings";
const CLEANUP_EVENT: &str = "cleanup timings";

/// The phases of a run's timing event, in the order of a job's life, with what they cover.
const PHASES: &[(&str, &str)] = &[
    ("setup_us", "setup (network, volumes, earlier attempt)"),
    ("network_us", "network"),
    ("volumes_us", "workspace and cache volumes"),
    ("reset_us", "earlier attempt / takeover"),
    ("image_us", "image"),
    ("workspace_copy_us", "workspace copy"),
    ("services_us", "services"),
    ("create_us", "container create"),
    ("attach_us", "attach"),
    ("start_us", "start"),
    ("output_us", "run until the output ends"),
    ("delivery_us", "output delivery to the runner"),
    ("exit_us", "exit status (wait, inspect)"),
];

/// A job of `steps` steps, each `true`, in the test image.
fn pipeline(steps: usize) -> String {
    let mut text = format!("version: 1\nimage: {IMAGE}\nsteps:\n");
    for i in 1..=steps {
        text.push_str(&format!("  - name: s{i}\n    run: \"true\"\n"));
    }
    text
}

/// Fails with what to do when the engine or the image is missing.
async fn check_engine() -> anyhow::Result<()> {
    let version = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .await
        .context("cannot run the docker CLI")?;
    if !version.status.success() {
        bail!(
            "docker engine not reachable: {}",
            String::from_utf8_lossy(&version.stderr).trim()
        );
    }
    let image = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", IMAGE])
        .output()
        .await
        .context("cannot run the docker CLI")?;
    if !image.status.success() {
        bail!("image {IMAGE} is missing: run `cargo xtask test-images` first");
    }
    Ok(())
}

/// One bare `docker run --rm IMAGE sh -c true`, timed from spawning the CLI to its exit.
async fn bare_run() -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let out = Command::new("docker")
        .args(["run", "--rm", IMAGE])
        .args(COMMAND)
        .output()
        .await
        .context("cannot run `docker run`")?;
    let took = t0.elapsed();
    if !out.status.success() {
        bail!(
            "`docker run --rm {IMAGE} {}` failed: {}",
            COMMAND.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(took)
}

/// A running `runner-docker` (concurrency 1) registered with the hub; its id for the cleanup.
struct DockerRunner {
    child: Child,
    id: String,
    stderr: PathBuf,
}

impl DockerRunner {
    async fn start(ctx: &Ctx, hub: &Hub, name: &str) -> anyhow::Result<DockerRunner> {
        let dir = ctx.dir(&format!("runner-{name}"))?;
        let token_file = dir.join("token");
        std::fs::write(&token_file, &hub.runner_token)
            .with_context(|| format!("cannot write {}", token_file.display()))?;
        let config = dir.join("runner.toml");
        // JSON logs, so that the backend's timing events can be read back.
        let toml = format!(
            "hub = {hub:?}\ntoken_file = {token:?}\nname = {name:?}\nconcurrency = 1\n\
             state_dir = {state:?}\nacquire_wait = \"30s\"\nlog_format = \"json\"\n\n\
             [proxy]\nfrom_env = false\n\n[executor]\nstop_grace = \"1s\"\n",
            hub = hub.url,
            token = token_file.display().to_string(),
            state = dir.join("state").display().to_string(),
        );
        std::fs::write(&config, toml)
            .with_context(|| format!("cannot write {}", config.display()))?;
        let stderr = dir.join("runner-docker.stderr");
        let file = std::fs::File::create(&stderr)
            .with_context(|| format!("cannot create {}", stderr.display()))?;
        let parked_before = hub
            .metrics()
            .await?
            .sum("outpost_hub_acquire_waiting", None) as u64;
        let child = Command::new(ctx.bin_dir.join("runner-docker"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", format!("warn,{TIMING_TARGET}=debug"))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start runner-docker (is it built?)")?;
        hub.wait_parked(parked_before + 1, Duration::from_secs(30))
            .await
            .with_context(|| {
                format!(
                    "runner-docker did not start polling; see {}",
                    stderr.display()
                )
            })?;
        let id = hub
            .admin
            .list_runners(ORG)
            .await
            .context("listing runners")?
            .into_iter()
            .find(|r| r.name == name)
            .map(|r| r.runner_id.into_string())
            .with_context(|| format!("runner {name} is not in the hub's list"))?;
        Ok(DockerRunner { child, id, stderr })
    }

    /// SIGTERM (a drain; it is idle), then removes whatever of its jobs is left on the engine.
    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).context("pid out of range")?);
            if let Err(e) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM) {
                eprintln!("bench: cannot signal runner-docker: {e}");
            }
        }
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            eprintln!(
                "bench: runner-docker did not stop within 30 s: killing it (see {})",
                self.stderr.display()
            );
            self.child.kill().await.context("killing runner-docker")?;
        }
        remove_labelled(&format!("label=outpost.runner-id={}", self.id)).await;
        Ok(())
    }
}

/// The timing events in a runner-docker JSON log: per job, the fields of its run event and of its
/// cleanup event (microseconds).
#[derive(Debug, Default)]
struct Timings {
    runs: BTreeMap<String, BTreeMap<String, u64>>,
    cleanups: BTreeMap<String, u64>,
}

impl Timings {
    /// Reads `log` (lines that are not timing events are skipped).
    fn read(log: &Path) -> anyhow::Result<Timings> {
        let text = std::fs::read_to_string(log)
            .with_context(|| format!("cannot read {}", log.display()))?;
        let mut timings = Timings::default();
        for line in text.lines() {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if event["target"] != TIMING_TARGET {
                continue;
            }
            let fields = &event["fields"];
            let Some(job) = fields["job_id"].as_str() else {
                continue;
            };
            let numbers: BTreeMap<String, u64> = fields
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                .collect();
            match fields["message"].as_str() {
                Some(RUN_EVENT) => {
                    timings.runs.insert(job.to_owned(), numbers);
                }
                Some(CLEANUP_EVENT) => {
                    if let Some(&us) = numbers.get("cleanup_us") {
                        timings.cleanups.insert(job.to_owned(), us);
                    }
                }
                _ => {}
            }
        }
        Ok(timings)
    }

    /// The p50 of `field` over `jobs` (those that logged it).
    fn p50(&self, jobs: &[String], field: &str) -> Option<Duration> {
        let samples: Vec<Duration> = jobs
            .iter()
            .filter_map(|j| self.runs.get(j)?.get(field))
            .map(|&us| Duration::from_micros(us))
            .collect();
        (!samples.is_empty()).then(|| Samples::new(samples).quantile(0.5))
    }
}

/// Waits until runner-docker has logged the end of `job`'s cleanup (the removal of its
/// containers, network and volume, and the spare network for the next job), so that the next
/// measurement does not share the engine with it.
async fn wait_cleaned(log: &Path, job: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if Timings::read(log)?.cleanups.contains_key(job) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "runner-docker logged no cleanup of job {job} within 60 s (see {})",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Removes every container, network and volume matching the `label=…` filter.
async fn remove_labelled(filter: &str) {
    for (list, remove) in [
        (&["ps", "-a"][..], &["rm", "-f"][..]),
        (&["network", "ls"][..], &["network", "rm"][..]),
        (&["volume", "ls"][..], &["volume", "rm", "-f"][..]),
    ] {
        let Ok(out) = Command::new("docker")
            .args(list)
            .args(["--filter", filter, "-q"])
            .output()
            .await
        else {
            continue;
        };
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(remove)
                .args(&ids)
                .output()
                .await;
        }
    }
}

/// Submits `pipeline` to the idle runner and times it from the submit to the job's end; the job's
/// id with it.
async fn job_wall_time(hub: &Hub, pipeline: &str) -> anyhow::Result<(Duration, String)> {
    hub.wait_parked(1, Duration::from_secs(60)).await?;
    let t0 = Instant::now();
    let job = hub.submit(pipeline).await?;
    let ended = hub.wait_ended(&job, Duration::from_secs(120)).await?;
    let took = t0.elapsed();
    if ended.state != JobState::Success {
        bail!(
            "job {job} ended as {}, not success: {:?}",
            ended.state,
            ended.failure
        );
    }
    Ok((took, job))
}

/// Where a one-step job's time goes, as runner-docker logged it: the p50 of each phase of the
/// executor's run, of the run as a whole, of what lies outside it (pickup, log upload,
/// completion: the job's wall time less the run) and of the cleanup after it.
fn breakdown(timings: &Timings, jobs: &[String], walls: &BTreeMap<String, Duration>) -> String {
    let Some(total) = timings.p50(jobs, "total_us") else {
        return "breakdown unavailable: runner-docker logged no timing events (target \
                outpost_docker::timing)"
            .to_owned();
    };
    let mut parts: Vec<String> = PHASES
        .iter()
        .filter_map(|&(field, what)| Some(format!("{what} {}", ms(timings.p50(jobs, field)?))))
        .collect();
    let outside: Vec<Duration> = jobs
        .iter()
        .filter_map(|j| {
            let run = Duration::from_micros(*timings.runs.get(j)?.get("total_us")?);
            Some(walls.get(j)?.saturating_sub(run))
        })
        .collect();
    parts.push(format!("the executor's run in all {}", ms(total)));
    parts.push(format!(
        "outside it (pickup, log upload, completion) {}",
        ms(Samples::new(outside).quantile(0.5))
    ));
    let cleanups: Vec<Duration> = jobs
        .iter()
        .filter_map(|j| timings.cleanups.get(j))
        .map(|&us| Duration::from_micros(us))
        .collect();
    if !cleanups.is_empty() {
        parts.push(format!(
            "cleanup after the outcome (spare network, removals; off the critical path) {}",
            ms(Samples::new(cleanups).quantile(0.5))
        ));
    }
    format!(
        "breakdown, p50 of the {} jobs as runner-docker timed them: {}",
        jobs.len(),
        parts.join(", ")
    )
}

/// Rows 8 and 9: the docker step overhead ratio, and the wall time of a 5-step job.
pub async fn overhead(ctx: &Ctx, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    check_engine().await?;
    let rounds = ctx.pick(10, 3);
    let pipeline_rounds = ctx.pick(5, 2);
    let hub = Hub::start(ctx, "docker").await?;
    let runner = DockerRunner::start(ctx, &hub, "bench-docker").await?;
    let one = pipeline(1);
    let five = pipeline(5);
    // Warm-up, not counted: the image's layers in the page cache, the runner's first job (which
    // makes its network itself: the spare for the next job is made after it).
    bare_run().await?;
    let (_, warm_up) = job_wall_time(&hub, &one).await?;
    wait_cleaned(&runner.stderr, &warm_up).await?;
    let (mut bare, mut outpost) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    let mut jobs = Vec::with_capacity(rounds);
    let mut walls = BTreeMap::new();
    // Interleaved, so that both see the same machine; each job's cleanup is over before the next
    // bare run, so that neither shares the engine with it.
    for _ in 0..rounds {
        bare.push(bare_run().await?);
        let (took, job) = job_wall_time(&hub, &one).await?;
        wait_cleaned(&runner.stderr, &job).await?;
        outpost.push(took);
        walls.insert(job.clone(), took);
        jobs.push(job);
    }
    let mut pipelines = Vec::with_capacity(pipeline_rounds);
    for _ in 0..pipeline_rounds {
        pipelines.push(job_wall_time(&hub, &five).await?.0);
    }
    let timings = Timings::read(&runner.stderr)?;
    runner.stop().await?;
    hub.stop().await?;

    let (bare, outpost, pipelines) = (
        Samples::new(bare),
        Samples::new(outpost),
        Samples::new(pipelines),
    );
    let (bare_p50, outpost_p50) = (bare.quantile(0.5), outpost.quantile(0.5));
    let ratio = outpost_p50.as_secs_f64() / bare_p50.as_secs_f64().max(f64::EPSILON);
    let breakdown = breakdown(&timings, &jobs, &walls);
    rows.push(Row {
        bench: "docker",
        what: "docker step overhead over a bare `docker run` of the same image and command"
            .to_owned(),
        measured: format!("{ratio:.2}× (p50 {} vs {})", ms(outpost_p50), ms(bare_p50)),
        target: "≤ 1.2×".to_owned(),
        verdict: Verdict::of(ratio <= 1.2),
        notes: vec![
            format!(
                "{} one-step jobs (`run: \"true\"` in {IMAGE}) through a real hub and an idle \
                 runner-docker (concurrency 1), each timed from the submit request to the job's \
                 end as the hub reports it (polled every 5 ms), interleaved with {} bare \
                 `docker run --rm {IMAGE} {}` timed from spawning the CLI to its exit; ratio of \
                 the p50s; after one warm-up of each",
                outpost.len(),
                bare.len(),
                COMMAND.join(" ")
            ),
            format!(
                "through outpost a job also gets its own network (the spare the runner made \
                 after the previous job) and workspace volume, its log shipped and its \
                 completion acknowledged; each job's cleanup ends before the next bare run; \
                 outpost max {}, bare max {}",
                ms(outpost.max()),
                ms(bare.max())
            ),
            breakdown,
        ],
    });
    let p50 = pipelines.quantile(0.5);
    rows.push(Row {
        bench: "docker",
        what: "job wall time of a 5-step pipeline (docker backend)".to_owned(),
        measured: format!("p50 {}", ms(p50)),
        target: "— (reported)".to_owned(),
        verdict: Verdict::Pass,
        notes: vec![format!(
            "{} jobs of 5 steps (`run: \"true\"` each, {IMAGE}) on the same runner-docker, \
             submit to end; max {}; for scale, 5 bare `docker run`s at their p50: {}",
            pipelines.len(),
            ms(pipelines.max()),
            ms(bare_p50 * 5)
        )],
    });
    Ok(())
}
