//! The log pipeline figure: the runner's own pieces — the scheduler's log writer
//! (`outpost_logship::JobLog` with a masker, step sections and reattach progress records), the
//! `Uploader`, and the scheduler's `HubLogTarget` over `HubClient::append_log` — in the bench
//! process, uploading to a real hub process that stores every byte.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use async_trait::async_trait;
use bytes::Bytes;
use outpost_client::Completion;
use outpost_logship::{
    JobLog, LogTarget, Masker, TargetError, UNLIMITED, Uploader, UploaderConfig,
};
use outpost_protocol::{AcquireRequest, CompleteRequest, JobResult, MASK, RegisterRequest};
use outpost_scheduler::HubLogTarget;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::dispatch::NOOP_PIPELINE;
use crate::procs::{Ctx, Hub, ORG, cpu_time};
use crate::table::{Row, Verdict, mib};

const SECRETS: [(&str, &str); 3] = [
    ("DEPLOY_TOKEN", "dtk_5f2b9c1e7a4d8e03b6c9"),
    ("DB_PASSWORD", "correct horse battery staple"),
    ("API_KEY", "ak-live-93c1d7e2f0a84b56"),
];

/// Size of one write, as a step's output pipe delivers it.
const WRITE: usize = 64 * 1024;

/// The runner's own `HubLogTarget`, counting its calls and the time spent waiting on their
/// answers (two atomic adds per call: the target itself is the one the scheduler ships).
struct Counted {
    target: HubLogTarget,
    calls: AtomicU64,
    busy_us: AtomicU64,
}

#[async_trait]
impl LogTarget for Counted {
    async fn append(&self, offset: u64, bytes: Bytes) -> Result<u64, TargetError> {
        let started = Instant::now();
        let answer = self.target.append(offset, bytes).await;
        let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.busy_us.fetch_add(took, Ordering::Relaxed);
        answer
    }
}

/// About 1 MiB of build-log-like lines, with a secret (in one of its forms) every 50 lines.
fn sample_output() -> Vec<u8> {
    let mut out = Vec::with_capacity(1 << 20);
    let mut i = 0usize;
    while out.len() < (1 << 20) {
        let line = match i % 5 {
            0 => format!(
                "   Compiling crate-{i} v0.{}.{} (/build/src/crate-{i})\n",
                i % 7,
                i % 13
            ),
            1 => format!("test tests::case_{i} ... ok\n"),
            2 => format!(
                "[2024-05-01T12:00:{:02}Z INFO  worker] processed batch {i} in {} ms\n",
                i % 60,
                i % 997
            ),
            3 => format!(
                "    Finished `release` profile [optimized] target(s) in {}.{}s\n",
                i % 90,
                i % 10
            ),
            _ => format!(
                "+ cp -r target/release/bin-{i} /dist/  # {} bytes\n",
                i * 37
            ),
        };
        out.extend_from_slice(line.as_bytes());
        if i.is_multiple_of(50) {
            let (_, value) = SECRETS[(i / 50) % SECRETS.len()];
            out.extend_from_slice(
                format!("export TOKEN={value}; curl -H 'x: {value}'\n").as_bytes(),
            );
        }
        i += 1;
    }
    out
}

/// What one run of the pipeline measured.
struct Run {
    total: u64,
    elapsed: Duration,
    write_elapsed: Duration,
    calls: u64,
    busy: Duration,
    hub_cpu: Duration,
    stored: u64,
    hub_rss: u64,
}

impl Run {
    fn rate(&self) -> f64 {
        self.total as f64 / (1024.0 * 1024.0) / self.elapsed.as_secs_f64()
    }
}

/// Row 5: the pipeline with everything in the bench's work directory (on this machine's disk,
/// unless TMPDIR says otherwise), then, for comparison, with the hub's database and the spool
/// on tmpfs (`/dev/shm`), which takes the disk out of the figure.
pub async fn pipeline(ctx: &Ctx, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let total: u64 = ctx.pick(256, 32) << 20;
    let disk = run_once(ctx, &ctx.work, total).await?;
    rows.push(row(
        "log pipeline (mask + spool + upload + hub store), loopback",
        &disk,
        100.0,
        format!(
            "{} of build-log-like text (a secret every ~50 lines) written as one step's output in \
             64 KiB pieces through the runner's log writer (JobLog: masking 3 secrets in all \
             their forms, spool, reattach progress records), uploaded by the Uploader (1 MiB \
             batches) through the scheduler's HubLogTarget to a real outpost-hub process that \
             stores it (log files + SQLite offsets), spool and hub data in {}; timed from the \
             first write until the hub committed the last byte",
            mib(total),
            ctx.work.display()
        ),
    ));
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        let base = tempfile::Builder::new()
            .prefix("outpost-bench-")
            .tempdir_in(shm)
            .context("cannot create a directory in /dev/shm")?;
        let tmpfs = run_once(ctx, base.path(), total).await?;
        rows.push(row(
            "log pipeline as above, database and spool on tmpfs",
            &tmpfs,
            250.0,
            "the same run with the hub's data and the spool in /dev/shm: the difference to the \
             row above is what the disk costs (the hub's fsyncs and writeback)"
                .to_owned(),
        ));
    }
    Ok(())
}

/// A row of the log pipeline; `target` in MiB/s (issue 12: ≥ 100 on disk, ≥ 250 on tmpfs).
fn row(what: &str, run: &Run, target: f64, method: String) -> Row {
    let rate = run.rate();
    Row {
        bench: "logs",
        what: what.to_owned(),
        measured: format!("{rate:.0} MiB/s"),
        target: format!("≥ {target:.0} MiB/s"),
        verdict: Verdict::of(rate >= target),
        notes: vec![
            method,
            format!(
                "{:.2} s in all, writing (mask + spool) alone {:.2} s; {} append_log calls, \
                 {:.2} s in all waiting on their answers; hub CPU {:.2} s",
                run.elapsed.as_secs_f64(),
                run.write_elapsed.as_secs_f64(),
                run.calls,
                run.busy.as_secs_f64(),
                run.hub_cpu.as_secs_f64()
            ),
            format!(
                "checked afterwards: the hub holds {} bytes (= the spool), the stored tail is \
                 masked; hub RSS after the upload {}",
                run.stored,
                mib(run.hub_rss)
            ),
        ],
    }
}

/// `total` bytes written through JobLog (mask + spool), uploaded by the Uploader to a real hub
/// whose directory is under `base`, timed from the first write until the hub has committed the
/// last byte.
async fn run_once(ctx: &Ctx, base: &Path, total: u64) -> anyhow::Result<Run> {
    let hub = Hub::start_in(ctx, base, "logs").await?;
    let runner = hub.runner_client()?;
    let registered = runner
        .register(&RegisterRequest {
            name: "bench-logs".to_owned(),
            labels: Vec::new(),
            executor: "bench".to_owned(),
            version: "0".to_owned(),
            capacity: 1,
        })
        .await
        .context("registering the log runner")?;
    let job_id = hub.submit(NOOP_PIPELINE).await?;
    let job = runner
        .acquire(&AcquireRequest {
            runner_id: registered.runner_id,
            free_slots: 1,
            wait_s: 10,
        })
        .await
        .context("acquiring the log job")?
        .context("no job to acquire")?;
    if job.job_id != job_id {
        bail!("acquired {} instead of {job_id}", job.job_id);
    }

    let secrets: Vec<(String, Vec<u8>)> = SECRETS
        .iter()
        .map(|(name, value)| ((*name).to_owned(), value.as_bytes().to_vec()))
        .collect();
    let masker = Masker::new(&secrets).context("building the masker")?;
    let dir = ctx.dir_in(base, "logs-spool")?;
    let mut log = JobLog::with_progress(
        &dir.join("log.spool"),
        &dir.join("progress"),
        UNLIMITED,
        masker,
    )
    .context("opening the job log")?;
    let target = Arc::new(Counted {
        target: HubLogTarget::new(runner.clone(), job.job_id.clone(), job.lease_id.clone()),
        calls: AtomicU64::new(0),
        busy_us: AtomicU64::new(0),
    });
    let input = sample_output();
    let cancel = CancellationToken::new();

    let hub_cpu0 = cpu_time(hub.pid())?;
    let started = Instant::now();
    let uploader = Uploader::spawn(
        log.reader(),
        Arc::clone(&target) as Arc<dyn LogTarget>,
        UploaderConfig::default(),
        cancel.clone(),
    );
    // As the scheduler's event loop does it: on the async task, one step section, every piece
    // of output through `JobLog::output`.
    log.start_step(0, "build").context("starting the step")?;
    let mut written = 0u64;
    'outer: loop {
        for piece in input.chunks(WRITE) {
            let left = total - written;
            if left == 0 {
                break 'outer;
            }
            let piece = &piece[..piece.len().min(usize::try_from(left).unwrap_or(usize::MAX))];
            log.output(0, piece).context("writing to the job log")?;
            written += piece.len() as u64;
            // Let the uploader run beside the writer, as it does beside the event loop.
            tokio::task::yield_now().await;
        }
    }
    log.end_step(0).context("ending the step")?;
    let write_elapsed = started.elapsed();
    let final_len = log.finish().await.context("finishing the job log")?;
    let committed = tokio::time::timeout(Duration::from_secs(300), uploader.finish(final_len))
        .await
        .context("the upload did not finish within 300 s")?
        .context("uploading the log")?;
    let elapsed = started.elapsed();
    let hub_cpu = cpu_time(hub.pid())?.saturating_sub(hub_cpu0);
    cancel.cancel();
    if committed != final_len {
        bail!("the hub committed {committed} bytes of {final_len}");
    }

    // Off the clock: the job completes with its full log, and the stored tail is masked.
    let completion = runner
        .complete(
            &job.job_id,
            &CompleteRequest {
                lease_id: job.lease_id.clone(),
                result: JobResult::Success,
                failure: None,
                log_bytes: final_len,
            },
        )
        .await
        .context("completing the log job")?;
    if let Completion::LogIncomplete { committed } = completion {
        bail!("the hub says it holds only {committed} of {final_len} log bytes");
    }
    let details = hub.admin.get_job(ORG, &job_id).await?;
    let tail = hub
        .admin
        .read_log(ORG, &job_id, final_len.saturating_sub(1 << 20))
        .await
        .context("reading the stored log's tail")?;
    let tail_text = String::from_utf8_lossy(&tail);
    let leaked = SECRETS.iter().any(|(_, v)| tail_text.contains(v));
    let masked = tail_text.contains(MASK);
    let hub_rss = super::procs::rss_bytes(hub.pid()).unwrap_or(0);
    hub.stop().await?;
    if details.log_bytes != final_len || leaked || !masked {
        bail!(
            "the stored log is wrong: {} bytes (expected {final_len}), secret in the tail: \
             {leaked}, mask in the tail: {masked}",
            details.log_bytes
        );
    }

    Ok(Run {
        total,
        elapsed,
        write_elapsed,
        calls: target.calls.load(Ordering::Relaxed),
        busy: Duration::from_micros(target.busy_us.load(Ordering::Relaxed)),
        hub_cpu,
        stored: details.log_bytes,
        hub_rss,
    })
}
