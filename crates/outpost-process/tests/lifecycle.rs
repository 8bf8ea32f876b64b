//! Cancellation, process-tree killing, the event channel closing, and what the backend refuses,
//! keeps (caches) and sweeps.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Fixture, check_event_order, read_pids, run, start, steps, wait_gone};
use outpost_executor::{
    CacheSpec, CancellationToken, Executor, ExecutorError, JobId, Resume, RunnerId, ServiceSpec,
    When, event_channel,
};
use outpost_process::MARKER_SUFFIX;
use outpost_protocol::{FailureClass, JobResult, StepState};

/// Starts two background sleeps, one of them through an intermediate shell, writes their pids
/// (and the intermediate's) to `pids`, then says `ready` and waits.
const TREE: &str = r#"sleep 1000 & echo $! > pids
sh -c 'sleep 1000 & echo $! >> pids; wait' & echo $! >> pids
while [ "$(wc -l < pids)" -lt 3 ]; do sleep 0.01; done
echo ready
wait"#;

#[tokio::test]
async fn cancel_kills_the_whole_process_tree_and_skips_the_rest() {
    let fx = Fixture::new();
    let exec = fx.executor(fx.config());
    let job = fx.job(
        "j_cancel",
        steps(&[
            ("tree", TREE, When::OnSuccess),
            ("cleanup", "echo cleanup", When::Always),
        ]),
    );
    let pid_file = job.workspace.join("pids");

    let mut running = start(&exec, job);
    running.until_stdout(0, "ready").await;
    let pids = read_pids(&pid_file);
    assert_eq!(pids.len(), 3);
    for &pid in &pids {
        assert!(
            common::alive(pid),
            "process {pid} should run before the cancel"
        );
    }
    running.cancel.cancel();
    let done = running.finish().await;

    check_event_order(&done.events, 2);
    assert_eq!(done.states(), [StepState::Cancelled, StepState::Skipped]);
    let failure = done.step(0).failure.as_ref().expect("failure");
    assert_eq!(failure.class, FailureClass::Cancelled);
    assert_eq!(done.outcome().result, JobResult::Cancelled);
    for pid in pids {
        wait_gone(pid).await;
    }
}

#[tokio::test]
async fn a_grace_of_zero_kills_at_once_even_when_sigterm_is_ignored() {
    let fx = Fixture::new();
    let mut config = fx.config();
    config.kill_grace = Duration::ZERO;
    let exec = fx.executor(config);
    let job = fx.job(
        "j_grace0",
        steps(&[(
            "stubborn",
            "trap '' TERM; sleep 1000 & echo $! > pids; echo ready; wait",
            When::OnSuccess,
        )]),
    );
    let pid_file = job.workspace.join("pids");

    let mut running = start(&exec, job);
    running.until_stdout(0, "ready").await;
    running.cancel.cancel();
    let done = running.finish().await;

    let step = done.step(0);
    assert_eq!(step.state, StepState::Cancelled);
    // Killed by SIGKILL (128 + 9), which only the backend sends: SIGTERM is ignored.
    assert_eq!(step.exit_code, Some(137));
    for pid in read_pids(&pid_file) {
        wait_gone(pid).await;
    }
}

#[tokio::test]
async fn a_step_that_traps_sigterm_exits_cleanly_within_the_grace() {
    let fx = Fixture::new();
    let mut config = fx.config();
    // Longer than the test's deadline: the step can only end by itself.
    config.kill_grace = Duration::from_secs(3600);
    let exec = fx.executor(config);
    let job = fx.job(
        "j_trap",
        steps(&[
            (
                "polite",
                // Builtins only: a child caught between fork and exec could swallow the
                // SIGTERM meant for it and then outlive the grace period.
                "trap 'echo got-term; exit 0' TERM; echo ready; while :; do :; done",
                When::OnSuccess,
            ),
            ("cleanup", "echo cleanup", When::Always),
        ]),
    );

    let mut running = start(&exec, job);
    running.until_stdout(0, "ready").await;
    running.cancel.cancel();
    let done = running.finish().await;

    check_event_order(&done.events, 2);
    let step = done.step(0);
    assert_eq!(step.state, StepState::Cancelled);
    assert_eq!(step.exit_code, Some(0));
    assert_eq!(done.stdout_str(0), "ready\ngot-term\n");
    assert_eq!(done.states()[1], StepState::Skipped);
    assert_eq!(done.outcome().result, JobResult::Cancelled);
}

#[tokio::test]
async fn a_job_cancelled_before_it_starts_runs_nothing() {
    let fx = Fixture::new();
    let exec = fx.executor(fx.config());
    let job = fx.job(
        "j_precancel",
        steps(&[
            ("a", "touch ran", When::OnSuccess),
            ("b", "touch ran", When::Always),
        ]),
    );
    let ran = job.workspace.join("ran");
    let (tx, mut rx) = event_channel();
    let cancel = CancellationToken::new();
    cancel.cancel();

    let outcome = exec.run(job, None, tx, cancel).await.expect("run");

    let mut events = Vec::new();
    while let Some(e) = rx.recv().await {
        events.push(e);
    }
    check_event_order(&events, 2);
    assert_eq!(outcome.result, JobResult::Cancelled);
    assert_eq!(
        outcome.failure.map(|f| f.class),
        Some(FailureClass::Cancelled)
    );
    assert!(!ran.exists());
}

#[tokio::test]
async fn a_dropped_event_receiver_stops_the_job() {
    let fx = Fixture::new();
    let exec = fx.executor(fx.config());
    let job = fx.job("j_closed", steps(&[("tree", TREE, When::OnSuccess)]));
    let pid_file = job.workspace.join("pids");

    let mut running = start(&exec, job);
    running.until_stdout(0, "ready").await;
    let pids = read_pids(&pid_file);
    let result = running.drop_receiver().await;

    assert!(
        matches!(&result, Err(ExecutorError::EventsClosed { job_id }) if job_id == "j_closed"),
        "{result:?}"
    );
    for pid in pids {
        wait_gone(pid).await;
    }
}

#[tokio::test]
async fn services_are_refused_before_any_step() {
    let fx = Fixture::new();
    let exec = fx.executor(fx.config());
    let mut job = fx.job(
        "j_services",
        steps(&[
            ("a", "touch ran", When::OnSuccess),
            ("b", "touch ran", When::Always),
        ]),
    );
    job.services = vec![ServiceSpec {
        name: "db".to_owned(),
        image: "postgres:16".to_owned(),
        env: Default::default(),
        command: None,
    }];
    let ran = job.workspace.join("ran");

    let done = run(&exec, job).await;

    check_event_order(&done.events, 2);
    assert_eq!(done.states(), [StepState::Skipped, StepState::Skipped]);
    let outcome = done.outcome();
    assert_eq!(outcome.result, JobResult::Error);
    let failure = outcome.failure.as_ref().expect("failure");
    assert_eq!(failure.class, FailureClass::Config);
    assert_eq!(
        failure.message,
        "the process backend cannot run services (db); use the docker backend"
    );
    assert!(!ran.exists());
}

#[tokio::test]
async fn caches_are_host_directories_kept_between_jobs() {
    let fx = Fixture::new();
    let exec = fx.executor(fx.config());
    let cache = CacheSpec {
        name: "cargo-home".to_owned(),
        path: "/cache/cargo".to_owned(),
    };
    let mut first = fx.job(
        "j_cache1",
        steps(&[(
            "write",
            r#"echo "$OUTPOST_CACHE_CARGO_HOME"; echo kept > "$OUTPOST_CACHE_CARGO_HOME/f""#,
            When::OnSuccess,
        )]),
    );
    first.caches = vec![cache.clone()];
    let mut second = fx.job(
        "j_cache2",
        steps(&[(
            "read",
            r#"cat "$OUTPOST_CACHE_CARGO_HOME/f""#,
            When::OnSuccess,
        )]),
    );
    second.caches = vec![cache];

    let done = run(&exec, first).await;
    let dir = fx.cache_root.join("scope").join("cargo-home");
    assert_eq!(done.stdout_str(0), format!("{}\n", dir.display()));
    assert_eq!(
        std::fs::read_to_string(dir.join("f")).expect("cache file"),
        "kept\n"
    );

    let done = run(&exec, second).await;
    assert_eq!(done.stdout_str(0), "kept\n");
}

#[tokio::test]
async fn an_invalid_cache_name_is_a_config_failure() {
    let fx = Fixture::new();
    let exec = fx.executor(fx.config());
    let mut job = fx.job("j_badcache", steps(&[("a", "true", When::OnSuccess)]));
    job.caches = vec![CacheSpec {
        name: "../escape".to_owned(),
        path: "/cache".to_owned(),
    }];

    let done = run(&exec, job).await;

    assert_eq!(done.states(), [StepState::Skipped]);
    assert_eq!(done.outcome().result, JobResult::Error);
    assert_eq!(
        done.outcome().failure.as_ref().map(|f| f.class),
        Some(FailureClass::Config)
    );
    assert!(!fx.dir.path().join("escape").exists());
}

#[tokio::test]
async fn sweep_removes_only_marked_workspaces_of_dead_jobs() {
    let fx = Fixture::new();
    let exec = fx.executor(fx.config());
    for id in ["j_dead", "j_live"] {
        let job = fx.job(id, steps(&[("a", "echo x > file", When::OnSuccess)]));
        assert_eq!(run(&exec, job).await.outcome().result, JobResult::Success);
    }
    // A directory nobody marked, and a workspace outside the work root.
    let unmarked = fx.work_root.join("unmarked");
    std::fs::create_dir_all(&unmarked).expect("mkdir");
    std::fs::write(unmarked.join("keep"), "keep").expect("write");
    let mut outside = fx.job("j_outside", steps(&[("a", "true", When::OnSuccess)]));
    outside.workspace = fx.dir.path().join("elsewhere");
    assert_eq!(
        run(&exec, outside).await.outcome().result,
        JobResult::Success
    );

    let runner = RunnerId::from(common::RUNNER);
    let live = HashSet::from([JobId::from("j_live")]);
    let report = exec.sweep(&runner, &live).await.expect("sweep");

    assert_eq!(report.failed, Vec::<String>::new());
    assert_eq!(
        report.removed,
        [format!(
            "workspace {} (job j_dead)",
            fx.work_root.join("j_dead").display()
        )]
    );
    assert!(!fx.work_root.join("j_dead").exists());
    assert!(!fx.work_root.join(format!("j_dead{MARKER_SUFFIX}")).exists());
    assert!(fx.work_root.join("j_live").join("file").exists());
    assert!(fx.work_root.join(format!("j_live{MARKER_SUFFIX}")).exists());
    assert!(unmarked.join("keep").exists());
    assert!(fx.dir.path().join("elsewhere").exists());

    // Once the live job is over, it goes too; a second sweep finds nothing more.
    let report = exec
        .sweep(&runner, &HashSet::<JobId>::new())
        .await
        .expect("sweep");
    assert_eq!(report.removed.len(), 1);
    assert!(!fx.work_root.join("j_live").exists());
    assert!(
        exec.sweep(&runner, &HashSet::<JobId>::new())
            .await
            .expect("sweep")
            .removed
            .is_empty()
    );
    assert!(unmarked.join("keep").exists());
}

#[tokio::test]
async fn resume_is_unsupported_and_nothing_is_reattached() {
    let fx = Fixture::new();
    let exec = fx.executor(fx.config());
    let job = fx.job("j_resume", steps(&[("a", "touch ran", When::OnSuccess)]));
    let ran = job.workspace.join("ran");
    let (tx, _rx) = event_channel();

    let result = exec
        .run(
            job,
            Some(Resume {
                step_index: 0,
                output_bytes: 0,
            }),
            tx,
            CancellationToken::new(),
        )
        .await;

    assert!(
        matches!(&result, Err(ExecutorError::ResumeUnsupported { backend: "process", job_id }) if job_id == "j_resume"),
        "{result:?}"
    );
    assert!(!ran.exists());
    assert_eq!(
        exec.running_jobs(&RunnerId::from(common::RUNNER))
            .await
            .expect("running jobs"),
        Vec::<JobId>::new()
    );
    assert_eq!(exec.kind(), "process");
}
