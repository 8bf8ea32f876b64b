//! The Docker backend's figures, on a real `runner-docker` polling a real hub and the machine's
//! Docker engine: a trivial step through outpost against a bare `docker run` of the same image
//! and command (a ratio, both measured in the same run), and the wall time of a 5-step job.
//! Needs the engine and the image of `cargo xtask test-images`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use outpost_protocol::JobState;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::procs::{Ctx, Hub, ORG};
use super::table::{Row, Samples, Verdict, ms};

/// Built by `cargo xtask test-images` (xtask/src/test_images.rs).
const IMAGE: &str = crate::test_images::BUSYBOX;

/// The command of the trivial step: what a step's `run: "true"` becomes in its container.
const COMMAND: [&str; 3] = ["sh", "-c", "true"];

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
        let toml = format!(
            "hub = {hub:?}\ntoken_file = {token:?}\nname = {name:?}\nconcurrency = 1\n\
             state_dir = {state:?}\nacquire_wait = \"30s\"\n\n[proxy]\nfrom_env = false\n\n\
             [executor]\nstop_grace = \"1s\"\n",
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
            .env("RUST_LOG", "warn")
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
            .map(|r| r.runner_id)
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

/// Submits `pipeline` to the idle runner and times it from the submit to the job's end.
async fn job_wall_time(hub: &Hub, pipeline: &str) -> anyhow::Result<Duration> {
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
    Ok(took)
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
    // Warm-up, not counted: the image's layers in the page cache, the runner's first job.
    bare_run().await?;
    job_wall_time(&hub, &one).await?;
    let (mut bare, mut outpost) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    // Interleaved, so that both see the same machine.
    for _ in 0..rounds {
        bare.push(bare_run().await?);
        outpost.push(job_wall_time(&hub, &one).await?);
    }
    let mut pipelines = Vec::with_capacity(pipeline_rounds);
    for _ in 0..pipeline_rounds {
        pipelines.push(job_wall_time(&hub, &five).await?);
    }
    runner.stop().await?;
    hub.stop().await?;

    let (bare, outpost, pipelines) = (
        Samples::new(bare),
        Samples::new(outpost),
        Samples::new(pipelines),
    );
    let (bare_p50, outpost_p50) = (bare.quantile(0.5), outpost.quantile(0.5));
    let ratio = outpost_p50.as_secs_f64() / bare_p50.as_secs_f64().max(f64::EPSILON);
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
                "through outpost a job also gets its own network and workspace volume (and the \
                 workspace copy), its log shipped and its completion acknowledged; the previous \
                 job's cleanup may still run on the engine; outpost max {}, bare max {}",
                ms(outpost.max()),
                ms(bare.max())
            ),
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
