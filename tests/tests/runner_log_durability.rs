//! No log byte lost or duplicated (DESIGN.md §6.1, §6.2): a job's stored log equals its output
//! byte for byte across a hub restart mid-job, across a hub that is unreachable (connections
//! refused, then swallowed without an answer) for several of the runner's retry cycles, and
//! across a runner SIGKILLed and started again with the same state directory.
//!
//! The steps produce known output (`seq`) in phases and wait between phases on flag files the
//! test creates, so each fault happens at a known point of the output.

use std::path::{Path, PathBuf};
use std::time::Duration;

use outpost_e2e::{
    RUNNER_WAIT, inline_job, runner_for, scratch, seq, step_header, text, touch, wait_ended,
    wait_file, wait_log,
};
use outpost_protocol::{FailureClass, JobState, StepState};
use outpost_testkit::{
    FaultMode, FaultProxy, RunnerProcess, TestHub, metric_value, unique, wait_until,
};

/// Three phases of output, each after a flag; a second step after them.
const PHASES: &str = r#"version: 1
steps:
  - name: produce
    run: |
      seq 1 20000
      touch "$FLAGS/phase1-done"
      while [ ! -f "$FLAGS/go2" ] && [ -d "$FLAGS" ]; do sleep 0.05; done
      seq 20001 40000
      touch "$FLAGS/phase2-done"
      while [ ! -f "$FLAGS/go3" ] && [ -d "$FLAGS" ]; do sleep 0.05; done
      seq 40001 60000
  - name: after
    run: echo "second step"
"#;

/// The log up to the end of phase `n` (1 to 3), and the whole log.
fn phases_log(n: u64) -> String {
    format!("{}{}", step_header("produce", true), seq(1, 20000 * n))
}

fn phases_full_log() -> String {
    format!(
        "{}{}second step\n",
        phases_log(3),
        step_header("after", false)
    )
}

/// The runner's spool of a job (docs/runner.md, "State directory").
fn spool(runner: &RunnerProcess, job_id: &str) -> PathBuf {
    runner
        .state_dir()
        .join("jobs")
        .join(job_id)
        .join("log.spool")
}

/// Waits until the runner has spooled at least `len` bytes of the job's log.
async fn wait_spooled(path: &Path, len: usize) {
    wait_until(
        &format!("{} holds {len} bytes", path.display()),
        RUNNER_WAIT,
        || std::future::ready(std::fs::metadata(path).is_ok_and(|m| m.len() >= len as u64)),
    )
    .await;
}

/// Asserts the job succeeded with exactly the phases' output, both steps `success`.
async fn assert_whole_log(hub: &TestHub, org: &outpost_testkit::Org, job_id: &str) {
    let job = wait_ended(hub, org, job_id).await;
    assert_eq!(job.state, JobState::Success, "{job:#?}");
    let states: Vec<StepState> = job.steps.iter().map(|s| s.state).collect();
    assert_eq!(states, [StepState::Success, StepState::Success], "{job:#?}");
    let expected = phases_full_log();
    let log = hub.log(org, job_id).await;
    if log != expected.as_bytes() {
        let at = log
            .iter()
            .zip(expected.as_bytes())
            .position(|(a, b)| a != b)
            .unwrap_or(log.len().min(expected.len()));
        let from = at.saturating_sub(60);
        panic!(
            "the stored log ({} bytes) differs from the output ({} bytes) at byte {at}: stored \
             …{:?}…, expected …{:?}…",
            log.len(),
            expected.len(),
            text(&log[from..(at + 60).min(log.len())]),
            &expected[from..(at + 60).min(expected.len())]
        );
    }
    assert_eq!(job.log_bytes, expected.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_log_survives_a_hub_restart_mid_job() {
    let mut hub = TestHub::start().await;
    let org = hub.create_org(&unique("org")).await;
    let runner = runner_for(&hub, &org, hub.url(), |b| b).await;
    let flags = scratch();
    let flags_var = flags.path().display().to_string();
    let job_id = hub
        .submit(&org, &inline_job(PHASES, &[("FLAGS", &flags_var)]))
        .await;

    let phase1 = phases_log(1);
    wait_log(&hub, &org, &job_id, "holds phase 1", RUNNER_WAIT, |log| {
        log.len() >= phase1.len()
    })
    .await;
    hub.kill().await;
    // Phase 2 is produced and spooled while the hub is down.
    touch(&flags.path().join("go2"));
    wait_file(&flags.path().join("phase2-done"), RUNNER_WAIT).await;
    wait_spooled(&spool(&runner, &job_id), phases_log(2).len()).await;
    hub.restart().await;
    // Phase 3 is produced after it is back.
    touch(&flags.path().join("go3"));
    assert_whole_log(&hub, &org, &job_id).await;
}

/// How often the runner's hub client logged a failed call it retries.
fn retries(runner: &RunnerProcess, detail: &str) -> usize {
    runner
        .stderr()
        .lines()
        .filter(|l| l.contains("hub call failed, retrying") && l.contains(detail))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_log_survives_an_unreachable_hub() {
    // The outage lasts beyond one request timeout of the runner (30 s): a lease far longer.
    let hub = TestHub::builder().lease_ttl_s(600).start().await;
    let org = hub.create_org(&unique("org")).await;
    let proxy = FaultProxy::to_url(hub.url()).await;
    let runner = runner_for(&hub, &org, &proxy.url(), |b| {
        b.env("RUST_LOG", "info,outpost_client=debug")
    })
    .await;
    let flags = scratch();
    let flags_var = flags.path().display().to_string();
    let job_id = hub
        .submit(&org, &inline_job(PHASES, &[("FLAGS", &flags_var)]))
        .await;
    let phase1 = phases_log(1);
    wait_log(&hub, &org, &job_id, "holds phase 1", RUNNER_WAIT, |log| {
        log.len() >= phase1.len()
    })
    .await;

    // Refused: phase 2 is spooled; the runner retries, several cycles, and knows it is cut off.
    proxy.set_mode(FaultMode::Refuse);
    let before = retries(&runner, "");
    touch(&flags.path().join("go2"));
    wait_file(&flags.path().join("phase2-done"), RUNNER_WAIT).await;
    wait_spooled(&spool(&runner, &job_id), phases_log(2).len()).await;
    let since = "outpost_runner_seconds_since_last_hub_success";
    let first = metric_value(&runner.metrics().await, since)
        .unwrap_or_else(|| runner.fail(&format!("no {since} gauge")));
    wait_until(
        "the runner retried several times while refused",
        RUNNER_WAIT,
        || std::future::ready(retries(&runner, "") >= before + 6),
    )
    .await;
    wait_until(
        "the seconds since the last hub success grow",
        RUNNER_WAIT,
        || async { metric_value(&runner.metrics().await, since).is_some_and(|now| now > first) },
    )
    .await;
    let unsent = metric_value(&runner.metrics().await, "outpost_runner_unsent_log_bytes");
    assert!(
        unsent.is_some_and(|u| u > 0.0),
        "phase 2 is spooled but not sent: unsent log bytes {unsent:?}"
    );
    assert_eq!(
        hub.log(&org, &job_id).await.len(),
        phase1.len(),
        "bytes reached the hub through a refusing proxy"
    );

    // Swallowed: requests get no answer; the runner times out and retries.
    proxy.set_mode(FaultMode::Blackhole);
    let timeouts = retries(&runner, "no answer within");
    wait_until(
        "a request to the swallowing proxy timed out and was retried",
        Duration::from_secs(180),
        || std::future::ready(retries(&runner, "no answer within") > timeouts),
    )
    .await;
    assert_eq!(
        hub.log(&org, &job_id).await.len(),
        phase1.len(),
        "bytes reached the hub through a swallowing proxy"
    );
    let stats = proxy.stats();
    assert!(stats.refused > 0 && stats.blackholed > 0, "{stats:?}");

    // Reachable again: phase 2 arrives, then phase 3 is produced.
    proxy.set_mode(FaultMode::Pass);
    let phase2 = phases_log(2);
    wait_log(&hub, &org, &job_id, "holds phase 2", RUNNER_WAIT, |log| {
        log.len() >= phase2.len()
    })
    .await;
    touch(&flags.path().join("go3"));
    assert_whole_log(&hub, &org, &job_id).await;
}

/// Waits between phases; the last line is never printed (the runner is killed before).
const KILLED: &str = r#"version: 1
steps:
  - name: produce
    run: |
      echo start
      while [ ! -f "$FLAGS/go1" ] && [ -d "$FLAGS" ]; do sleep 0.05; done
      seq 1 20000
      touch "$FLAGS/phase1-done"
      while [ ! -f "$FLAGS/go2" ] && [ -d "$FLAGS" ]; do sleep 0.05; done
      echo "printed after the runner died"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_killed_and_restarted_delivers_every_spooled_byte_and_the_result() {
    let hub = TestHub::start().await;
    let org = hub.create_org(&unique("org")).await;
    let proxy = FaultProxy::to_url(hub.url()).await;
    let mut runner = runner_for(&hub, &org, &proxy.url(), |b| b).await;
    let flags = scratch();
    let flags_var = flags.path().display().to_string();
    let job_id = hub
        .submit(&org, &inline_job(KILLED, &[("FLAGS", &flags_var)]))
        .await;
    let started = format!("{}start\n", step_header("produce", true));
    wait_log(&hub, &org, &job_id, "shows the start", RUNNER_WAIT, |log| {
        log == started.as_bytes()
    })
    .await;

    // Cut the hub off, let phase 1 be spooled (and only spooled), then kill the runner.
    proxy.set_mode(FaultMode::Refuse);
    touch(&flags.path().join("go1"));
    wait_file(&flags.path().join("phase1-done"), RUNNER_WAIT).await;
    let spooled = format!("{started}{}", seq(1, 20000));
    let spool_path = spool(&runner, &job_id);
    wait_spooled(&spool_path, spooled.len()).await;
    runner.sigkill().await;
    let on_disk = std::fs::read(&spool_path).expect("the spool survives the kill");
    assert_eq!(
        text(&on_disk),
        spooled,
        "the spool holds the output as masked"
    );
    assert_eq!(
        hub.log(&org, &job_id).await,
        started.as_bytes(),
        "bytes reached the hub through a refusing proxy"
    );

    proxy.set_mode(FaultMode::Pass);
    runner.restart().await;
    let job = wait_ended(&hub, &org, &job_id).await;
    // The process backend cannot take a step over: the job ends as an infrastructure error.
    assert_eq!(job.state, JobState::Error, "{job:#?}");
    assert_eq!(
        job.failure.as_ref().map(|f| f.class),
        Some(FailureClass::Infrastructure),
        "{job:#?}"
    );
    let log = hub.log(&org, &job_id).await;
    assert!(
        log.starts_with(spooled.as_bytes()),
        "the stored log does not start with every spooled byte: {} of {} bytes, ending …{:?}",
        log.len(),
        spooled.len(),
        text(&log[log.len().saturating_sub(200)..])
    );
    let note = text(&log[spooled.len()..]);
    assert!(
        note.ends_with('\n') && note.matches('\n').count() == 1 && note.contains("restarted"),
        "after the spooled bytes the runner adds one line saying why, not {note:?}"
    );
    assert_eq!(job.log_bytes, log.len() as u64);
    // Delivered: the job's files leave the state directory.
    let job_dir = runner.state_dir().join("jobs").join(&job_id);
    wait_until("the job's files are removed", RUNNER_WAIT, || {
        std::future::ready(!job_dir.exists())
    })
    .await;
    // The orphaned step goes on polling; let it end (it dies writing to the dead pipe).
    touch(&flags.path().join("go2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_and_hub_both_killed_mid_log_end_with_every_byte_once_and_one_status() {
    let mut hub = TestHub::start().await;
    let org = hub.create_org(&unique("org")).await;
    let mut runner = runner_for(&hub, &org, hub.url(), |b| b).await;
    let flags = scratch();
    let flags_var = flags.path().display().to_string();
    let job_id = hub
        .submit(&org, &inline_job(KILLED, &[("FLAGS", &flags_var)]))
        .await;
    let started = format!("{}start\n", step_header("produce", true));
    wait_log(&hub, &org, &job_id, "shows the start", RUNNER_WAIT, |log| {
        log == started.as_bytes()
    })
    .await;
    // Phase 1 is produced; the hub dies while the log streams to it, the runner right after.
    touch(&flags.path().join("go1"));
    let spooled = format!("{started}{}", seq(1, 20000));
    let spool_path = spool(&runner, &job_id);
    wait_log(
        &hub,
        &org,
        &job_id,
        "has part of phase 1",
        RUNNER_WAIT,
        |log| log.len() > started.len(),
    )
    .await;
    hub.kill().await;
    wait_spooled(&spool_path, spooled.len()).await;
    runner.sigkill().await;
    let held = hub_log_len_after_restart(&mut hub, &org, &job_id).await;
    assert!(
        held >= started.len() as u64 && held <= spooled.len() as u64,
        "after its kill the hub holds {held} bytes"
    );

    runner.restart().await;
    let job = wait_ended(&hub, &org, &job_id).await;
    assert_eq!(job.state, JobState::Error, "{job:#?}");
    assert_eq!(
        job.failure.as_ref().map(|f| f.class),
        Some(FailureClass::Infrastructure),
        "{job:#?}"
    );
    // Every spooled byte exactly once (what the hub had acknowledged before its kill was not
    // sent again on top), then the runner's one line saying why.
    let log = hub.log(&org, &job_id).await;
    assert!(
        log.starts_with(spooled.as_bytes()),
        "the stored log is not the spooled output: {} of {} bytes, ending …{:?}",
        log.len(),
        spooled.len(),
        text(&log[log.len().saturating_sub(200)..])
    );
    let note = text(&log[spooled.len()..]);
    assert!(
        note.ends_with('\n') && note.matches('\n').count() == 1 && note.contains("restarted"),
        "after the spooled bytes the runner adds one line saying why, not {note:?}"
    );
    assert_eq!(job.log_bytes, log.len() as u64);
    // One final status: it stays as it is through another hub restart.
    let finished_at = job.finished_at;
    hub.restart().await;
    let again = hub.job(&org, &job_id).await;
    assert_eq!(
        (again.state, again.finished_at),
        (JobState::Error, finished_at)
    );
    assert_eq!(hub.log(&org, &job_id).await, log);
    touch(&flags.path().join("go2"));
}

/// Restarts a killed hub and answers how many log bytes of the job it holds.
async fn hub_log_len_after_restart(
    hub: &mut TestHub,
    org: &outpost_testkit::Org,
    job_id: &str,
) -> u64 {
    hub.restart().await;
    hub.log(org, job_id).await.len() as u64
}
