//! Shared pieces of the end-to-end tests in `tests/tests/*.rs`: a valid pipeline, job and step
//! builders, the few multi-call setups the hub tests repeat, and the waits and file helpers the
//! runner tests share. Process and HTTP plumbing lives in `outpost-testkit`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use outpost_protocol::{
    JobAssignment, JobDetails, JobState, StepState, StepUpdate, SubmitJobRequest, Timestamp, paths,
};
use outpost_testkit::{
    Org, RunnerProcess, RunnerProcessBuilder, TestHub, TestRunner, unique, wait_until,
};
use tempfile::TempDir;
use tokio::task::JoinHandle;

/// A minimal valid pipeline.
pub const PIPELINE: &str = "version: 1\nsteps:\n  - name: build\n    run: echo hello\n";

/// How long a test waits for something the hub should do "at once" or within a short lease:
/// generous, so a slow machine does not fail a correct hub.
pub const PROMPTLY: Duration = Duration::from_secs(30);

/// An inline-pipeline job with `labels`.
pub fn job(labels: &[&str]) -> SubmitJobRequest {
    SubmitJobRequest {
        pipeline: Some(PIPELINE.to_owned()),
        labels: labels.iter().map(|l| (*l).to_owned()).collect(),
        ..SubmitJobRequest::default()
    }
}

/// A step update with only the required fields.
pub fn step(index: u32, name: &str, state: StepState) -> StepUpdate {
    StepUpdate {
        index,
        name: name.to_owned(),
        state,
        exit_code: None,
        started_at: None,
        finished_at: None,
        failure: None,
        log_offset: None,
    }
}

/// A fresh organization and one runner in it, registered with no labels.
pub async fn org_with_runner(hub: &TestHub) -> (Org, TestRunner) {
    let org = hub.create_org(&unique("org")).await;
    let runner = hub.register_runner(&org, &unique("runner"), &[]).await;
    (org, runner)
}

/// Submits a job without labels and acquires it with `runner`; panics unless the runner gets
/// exactly that job.
pub async fn assigned_job(hub: &TestHub, org: &Org, runner: &TestRunner) -> JobAssignment {
    let job_id = hub.submit(org, &job(&[])).await;
    let assignment = runner
        .acquire(0)
        .await
        .expect("the runner gets the queued job");
    assert_eq!(assignment.job_id, job_id);
    assignment
}

/// Like [`assigned_job`], then makes the job `running` with a first step update.
pub async fn running_job(hub: &TestHub, org: &Org, runner: &TestRunner) -> JobAssignment {
    let assignment = assigned_job(hub, org, runner).await;
    let mut update = step(0, "build", StepState::Running);
    update.started_at = Some(Timestamp::now());
    runner.step(&assignment, &update).await.expect(200);
    assert_eq!(
        hub.job(org, &assignment.job_id).await.state,
        JobState::Running
    );
    assignment
}

/// Asserts that a long-poll spawned as `task` is still waiting: one full round trip to the hub
/// after the spawn, and the task has not finished. The ordering evidence long-poll tests use
/// before they trigger the event that must wake the poll.
pub async fn assert_pending<T>(hub: &TestHub, task: &JoinHandle<T>, what: &str) {
    // Two round trips: the spawned request has had every chance to reach the hub first.
    for _ in 0..2 {
        hub.http().get(paths::HEALTHZ).await.expect(200);
    }
    assert!(
        !task.is_finished(),
        "{what} answered before the event that should wake it"
    );
}

/// Awaits a long-poll task that must be woken: panics when it has not answered within
/// [`PROMPTLY`], far less than the `wait_s` it was started with.
pub async fn woken<T>(task: JoinHandle<T>, what: &str) -> T {
    match tokio::time::timeout(PROMPTLY, task).await {
        Ok(Ok(value)) => value,
        Ok(Err(e)) => panic!("{what}: the task failed: {e}"),
        Err(_) => panic!("{what} was not woken within {PROMPTLY:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Runner end-to-end tests (tests/tests/runner_*.rs): the real runner-process against a real hub.
// ---------------------------------------------------------------------------------------------

/// How long a test waits for a runner to do something it does in well under a second on an idle
/// machine (take a job, finish a short step, deliver its results): generous for a loaded CI.
pub const RUNNER_WAIT: Duration = Duration::from_secs(60);

/// A runner token for `org` and the runner-process started with it against `url` (the hub's or
/// a proxy's), not yet necessarily registered.
pub async fn runner_for(
    hub: &TestHub,
    org: &Org,
    url: &str,
    configure: impl FnOnce(RunnerProcessBuilder) -> RunnerProcessBuilder,
) -> RunnerProcess {
    let token = hub.create_runner_token(org).await;
    let runner = configure(RunnerProcess::builder(url, token)).start().await;
    runner.wait_ready(RUNNER_WAIT).await;
    runner
}

/// An inline-pipeline job without labels, with submission `variables`.
pub fn inline_job(pipeline: &str, variables: &[(&str, &str)]) -> SubmitJobRequest {
    SubmitJobRequest {
        pipeline: Some(pipeline.to_owned()),
        variables: variables
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..SubmitJobRequest::default()
    }
}

/// Polls the job until `done` holds for it; panics at `deadline` with the job as last seen.
pub async fn wait_job(
    hub: &TestHub,
    org: &Org,
    job_id: &str,
    what: &str,
    deadline: Duration,
    done: impl Fn(&JobDetails) -> bool,
) -> JobDetails {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        let job = hub.job(org, job_id).await;
        if done(&job) {
            return job;
        }
        if tokio::time::Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting until job {job_id} {what}: {job:#?}");
        }
        tokio::time::sleep(outpost_testkit::POLL_INTERVAL * 5).await;
    }
}

/// Waits until the job has ended (any terminal state) and answers it.
pub async fn wait_ended(hub: &TestHub, org: &Org, job_id: &str) -> JobDetails {
    wait_job(hub, org, job_id, "has ended", RUNNER_WAIT, |j| {
        j.state.is_terminal()
    })
    .await
}

/// Polls the job's stored log until `done` holds for it; answers the log. Panics at `deadline`
/// with the log's tail.
pub async fn wait_log(
    hub: &TestHub,
    org: &Org,
    job_id: &str,
    what: &str,
    deadline: Duration,
    done: impl Fn(&[u8]) -> bool,
) -> Vec<u8> {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        let log = hub.log(org, job_id).await;
        if done(&log) {
            return log;
        }
        if tokio::time::Instant::now() >= end {
            let from = log.len().saturating_sub(400);
            panic!(
                "timed out after {deadline:?} waiting until the log of job {job_id} {what}; it \
                 has {} bytes, ending: {:?}",
                log.len(),
                String::from_utf8_lossy(&log[from..])
            );
        }
        tokio::time::sleep(outpost_testkit::POLL_INTERVAL * 5).await;
    }
}

/// Waits until the file at `path` exists (a step's own progress marker).
pub async fn wait_file(path: &Path, deadline: Duration) {
    wait_until(&format!("{} exists", path.display()), deadline, || {
        std::future::ready(path.exists())
    })
    .await;
}

/// Creates the (empty) file at `path`: a flag a step polls for. Steps poll with
/// `while [ ! -f "$FLAGS/x" ] && [ -d "$FLAGS" ]`, so that a test that fails (and removes its
/// flag directory) leaves no step polling forever, even one orphaned by a killed runner.
pub fn touch(path: &Path) {
    std::fs::write(path, b"").unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
}

/// A temporary directory for a test's flags and secrets.
pub fn scratch() -> TempDir {
    tempfile::Builder::new()
        .prefix("outpost-e2e-")
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"))
}

/// The header line the runner writes into the log when step `name` starts: the first step's
/// opens the log, every later one follows an empty line.
pub fn step_header(name: &str, first: bool) -> String {
    if first {
        format!("── step {name} ──\n")
    } else {
        format!("\n── step {name} ──\n")
    }
}

/// The output of `seq from to`.
pub fn seq(from: u64, to: u64) -> String {
    (from..=to).map(|i| format!("{i}\n")).collect()
}

/// Whether a process with this pid exists and is not a zombie (a zombie has exited; it only
/// waits for a parent to reap it, which a container's init may never do).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) state ...`; comm may contain spaces and parentheses: the state follows the
    // last `)`.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .unwrap_or("?");
    !matches!(state, "Z" | "X" | "x")
}

/// Every regular file under `dir`, recursively, with its bytes (a plain file read; files that
/// vanish while walking are skipped).
pub fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t) if t.is_file() => {
                    if let Ok(bytes) = std::fs::read(&path) {
                        out.push((path, bytes));
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// Where `needle` occurs in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > haystack.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The log as text for assertion messages.
pub fn text(log: &[u8]) -> String {
    String::from_utf8_lossy(log).into_owned()
}
