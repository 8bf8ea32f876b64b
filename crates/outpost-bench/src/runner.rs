//! The runner's figures, on a real `runner-process` polling a real hub: enqueue to the first
//! step's process, cancel to the step's process gone, and the idle runner's memory.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use outpost_protocol::JobState;

use crate::dispatch::NOOP_PIPELINE;
use crate::procs::{Ctx, Hub, Runner, rss_bytes, wait_for};
use crate::table::{Row, Samples, Verdict, mib, ms};

fn unix_nanos() -> anyhow::Result<u128> {
    Ok(SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_nanos())
}

/// A file's content once it is a complete line (a step writes it; it may be seen half-written).
fn read_line_file(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.ends_with('\n').then(|| text.trim().to_owned())
}

/// Waits for the first line of `path` and parses it.
async fn wait_file<T: std::str::FromStr>(path: &Path, limit: Duration) -> anyhow::Result<T> {
    let text = wait_for(
        &format!("{} to be written", path.display()),
        limit,
        Duration::from_micros(500),
        || async { Ok(read_line_file(path)) },
    )
    .await?;
    text.parse()
        .map_err(|_| anyhow::anyhow!("{} holds {text:?}, not a number", path.display()))
}

/// Row 2: submit a job whose one step writes `date +%s%N` to a file; the step's process started
/// no later than that timestamp, which is compared with the wall clock just before the submit.
pub async fn first_step(ctx: &Ctx, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let rounds = ctx.pick(100, 10);
    let marks = ctx.dir("first-step-marks")?;
    let hub = Hub::start(ctx, "first-step").await?;
    let runner = Runner::start(ctx, &hub, "bench-first-step", 1, "10s").await?;
    let mut samples = Vec::with_capacity(rounds);
    for i in 0..rounds {
        hub.wait_parked(1, Duration::from_secs(10)).await?;
        let mark = marks.join(format!("{i}"));
        let pipeline = format!(
            "version: 1\nsteps:\n  - name: stamp\n    run: \"date +%s%N > '{}'\"\n",
            mark.display()
        );
        let t0 = unix_nanos()?;
        let job = hub.submit(&pipeline).await?;
        let stamp: u128 = wait_file(&mark, Duration::from_secs(10))
            .await
            .with_context(|| format!("job {job}: the step never wrote its timestamp"))?;
        samples.push(Duration::from_nanos(
            u64::try_from(stamp.saturating_sub(t0)).unwrap_or(u64::MAX),
        ));
        let ended = hub.wait_ended(&job, Duration::from_secs(10)).await?;
        if ended.state != JobState::Success {
            bail!("job {job} ended as {}, not success", ended.state);
        }
    }
    runner.stop().await?;
    hub.stop().await?;
    let baseline = bare_spawn(ctx.pick(50, 10)).await?;
    let s = Samples::new(samples);
    let p50 = s.quantile(0.5);
    rows.push(Row {
        bench: "first-step",
        what: "enqueue → first step's process started (process backend)".to_owned(),
        measured: format!("p50 {}, p99 {}", ms(p50), ms(s.quantile(0.99))),
        target: "p50 ≤ 10 ms".to_owned(),
        verdict: Verdict::of(p50 <= Duration::from_millis(10)),
        notes: vec![
            format!(
                "{} jobs, one at a time, to an idle runner-process (concurrency 1) parked in \
                 acquire; the step is `date +%s%N > FILE`; figure = that timestamp minus the \
                 wall clock just before the submit request (so it includes the submit, the \
                 pickup, the job's setup, and `sh` starting `date`); max {}",
                s.len(),
                ms(s.max())
            ),
            format!(
                "for scale, `sh -c 'date +%s%N'` spawned straight from the bench: p50 {}",
                ms(baseline.quantile(0.5))
            ),
        ],
    });
    Ok(())
}

/// Time from spawning `sh -c 'date +%s%N'` to the timestamp it prints.
async fn bare_spawn(rounds: usize) -> anyhow::Result<Samples> {
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t0 = unix_nanos()?;
        let out = tokio::process::Command::new("sh")
            .args(["-c", "date +%s%N"])
            .output()
            .await
            .context("cannot run sh")?;
        let stamp: u128 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .context("`date +%s%N` printed no number")?;
        samples.push(Duration::from_nanos(
            u64::try_from(stamp.saturating_sub(t0)).unwrap_or(u64::MAX),
        ));
    }
    Ok(Samples::new(samples))
}

/// Row 3: a step that writes its pid and sleeps; cancel through the hub; poll `/proc/<pid>`
/// until it is gone (killed and reaped). The runner has `kill_grace = "0s"`.
pub async fn cancel(ctx: &Ctx, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let rounds = ctx.pick(10, 3);
    let marks = ctx.dir("cancel-marks")?;
    let hub = Hub::start(ctx, "cancel").await?;
    let runner = Runner::start(ctx, &hub, "bench-cancel", 1, "0s").await?;
    let mut samples = Vec::with_capacity(rounds);
    for i in 0..rounds {
        hub.wait_parked(1, Duration::from_secs(10)).await?;
        let pidfile = marks.join(format!("{i}.pid"));
        let pipeline = format!(
            "version: 1\nsteps:\n  - name: sleep\n    run: \"echo $$ > '{}' && exec sleep 600\"\n",
            pidfile.display()
        );
        let job = hub.submit(&pipeline).await?;
        let pid: u32 = wait_file(&pidfile, Duration::from_secs(10))
            .await
            .with_context(|| format!("job {job}: the step never wrote its pid"))?;
        // Steady state: the runner holds its heartbeat long-poll for the job.
        hub.wait_gauge("outpost_hub_heartbeat_waiting", 1, Duration::from_secs(30))
            .await
            .context("the runner holds no heartbeat long-poll")?;
        let proc_dir = format!("/proc/{pid}");
        let t0 = tokio::time::Instant::now();
        hub.admin
            .cancel_job(super::procs::ORG, &job)
            .await
            .with_context(|| format!("cancelling {job}"))?;
        wait_for(
            &format!("step process {pid} to be gone"),
            Duration::from_secs(30),
            Duration::from_micros(500),
            || async { Ok((!Path::new(&proc_dir).exists()).then_some(())) },
        )
        .await?;
        samples.push(t0.elapsed());
        let ended = hub.wait_ended(&job, Duration::from_secs(30)).await?;
        if ended.state != JobState::Cancelled {
            bail!("job {job} ended as {}, not cancelled", ended.state);
        }
    }
    runner.stop().await?;
    hub.stop().await?;
    let s = Samples::new(samples);
    rows.push(Row {
        bench: "cancel",
        what: "cancel requested → step process gone (grace period 0)".to_owned(),
        measured: format!("max {}, p50 {}", ms(s.max()), ms(s.quantile(0.5))),
        target: "≤ 1 s".to_owned(),
        verdict: Verdict::of(s.max() <= Duration::from_secs(1)),
        notes: vec![format!(
            "{} rounds on a runner-process with [executor] kill_grace = \"0s\": the step writes \
             its pid (`echo $$ > FILE && exec sleep 600`); once the runner's heartbeat \
             long-poll is held, timed from just before the cancel request until /proc/<pid> is \
             gone (killed and reaped)",
            s.len()
        )],
    });
    Ok(())
}

/// Row 6: VmRSS of a registered runner-process idling in acquire.
pub async fn idle_rss(ctx: &Ctx, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let settle = Duration::from_secs(ctx.pick(3, 1));
    let hub = Hub::start(ctx, "runner-rss").await?;
    let runner = Runner::start(ctx, &hub, "bench-idle", 1, "10s").await?;
    tokio::time::sleep(settle).await;
    let (idle, idle_max) = sample_rss(runner.pid()).await?;
    // One job through it, then idle again: what a runner that has worked keeps.
    let job = hub.submit(NOOP_PIPELINE).await?;
    hub.wait_ended(&job, Duration::from_secs(10)).await?;
    hub.wait_parked(1, Duration::from_secs(10)).await?;
    tokio::time::sleep(settle).await;
    let (after_job, _) = sample_rss(runner.pid()).await?;
    runner.stop().await?;
    hub.stop().await?;
    rows.push(Row {
        bench: "runner-rss",
        what: "runner idle RSS (runner-process)".to_owned(),
        measured: mib(idle),
        target: "≤ 20 MiB".to_owned(),
        verdict: Verdict::of(idle_max <= 20 * 1024 * 1024),
        notes: vec![format!(
            "VmRSS of a registered runner-process parked in acquire, {:.0} s after it started \
             polling (highest of 4 samples: {}); after one job and {:.0} s idle again: {}",
            settle.as_secs_f64(),
            mib(idle_max),
            settle.as_secs_f64(),
            mib(after_job)
        )],
    });
    Ok(())
}

/// Four VmRSS samples 50 ms apart: the last and the highest.
async fn sample_rss(pid: u32) -> anyhow::Result<(u64, u64)> {
    let (mut last, mut max) = (0, 0);
    for _ in 0..4 {
        last = rss_bytes(pid)?;
        max = max.max(last);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((last, max))
}
