//! The hub killed with SIGKILL mid-way and started again on the same port and database: nothing
//! it acknowledged is lost (orgs, tokens and revocations, jobs, steps, log bytes, completions),
//! and a runner carries on with the same runner id and lease, even when the hub was down for
//! longer than the lease.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use http::Method;
use outpost_e2e::{PROMPTLY, assigned_job, job, running_job, step};
use outpost_protocol::{
    CompleteResponse, JobList, JobResult, JobState, RunnerTokenList, StepState, Timestamp, paths,
};
use outpost_testkit::{TestHub, TestRunner, held, unique, wait_until};

const LEASE_S: u64 = 3;

#[tokio::test]
async fn a_hub_killed_mid_job_loses_nothing_it_acknowledged() {
    let mut hub = TestHub::builder()
        .lease_ttl_s(LEASE_S)
        .heartbeat_interval_s(1)
        .start()
        .await;
    let url = hub.url().to_owned();
    let org = hub.create_org(&unique("org")).await;
    let other = hub.create_org(&unique("other")).await;
    let kept = hub.create_runner_token_with_id(&org, "kept").await;
    let revoked = hub.create_runner_token_with_id(&org, "revoked").await;
    let revoke = hub
        .as_org(&org)
        .delete(&paths::runner_token(&org.name, &revoked.id))
        .await;
    assert!(revoke.status.is_success(), "{revoke:?}");
    let tokens_before: RunnerTokenList = hub
        .as_org(&org)
        .get(&paths::runner_tokens(&org.name))
        .await
        .expect(200)
        .json();
    let runner_name = unique("runner");
    let runner = TestRunner::register(hub.url(), &kept.token, &runner_name, &["linux"]).await;

    // A finished job: log, step and completion acknowledged.
    let finished = assigned_job(&hub, &org, &runner).await;
    runner.append_log_ok(&finished, 0, "finished log\n").await;
    let mut fin_step = step(0, "build", StepState::Success);
    fin_step.exit_code = Some(0);
    runner.step(&finished, &fin_step).await.expect(200);
    let done = TestRunner::completion(&finished, JobResult::Success, None, 13);
    runner.complete(&finished.job_id, &done).await.expect(200);
    // A running job with a step and some log.
    let running = running_job(&hub, &org, &runner).await;
    let committed = runner
        .append_log_ok(&running, 0, "before the crash\n")
        .await;
    assert_eq!(committed, 17);
    let beat = runner.heartbeat(&[held(&running)], 0).await;
    let expiry = beat.jobs[0]
        .lease_expires_at
        .expect("a live lease has an expiry");
    // A queued job and a cancelled one.
    let queued = hub.submit(&org, &job(&[])).await;
    let cancelled = hub.submit(&org, &job(&[])).await;
    hub.as_org(&org)
        .post_json(&paths::job_cancel(&org.name, &cancelled), &())
        .await
        .expect(200);
    let running_before = hub.job(&org, &running.job_id).await;
    let finished_before = hub.job(&org, &finished.job_id).await;

    hub.kill().await;
    let down = hub.http().send(Method::GET, paths::HEALTHZ, None).await;
    assert!(down.is_err(), "the killed hub still answers: {down:?}");
    // Stay down past the running job's lease expiry: downtime must not count against runners.
    let past_expiry = expiry.system_time() + Duration::from_secs(1);
    wait_until("the lease's expiry has passed", PROMPTLY, || {
        std::future::ready(SystemTime::now() > past_expiry)
    })
    .await;
    hub.restart().await;
    assert_eq!(hub.url(), url, "the hub came back on another address");

    // Orgs, keys and tokens are all there; the revocation held.
    hub.as_org(&other)
        .get(&paths::jobs(&other.name))
        .await
        .expect(200);
    let tokens_after: RunnerTokenList = hub
        .as_org(&org)
        .get(&paths::runner_tokens(&org.name))
        .await
        .expect(200)
        .json();
    let sorted = |mut list: RunnerTokenList| {
        list.tokens.sort_by(|a, b| a.id.cmp(&b.id));
        list.tokens
    };
    assert_eq!(sorted(tokens_after), sorted(tokens_before));
    runner
        .with_token(&revoked.token)
        .acquire_response(0)
        .await
        .expect(401);

    // The jobs are as acknowledged.
    let running_after = hub.job(&org, &running.job_id).await;
    assert_eq!(running_after.state, JobState::Running, "{running_after:?}");
    assert_eq!(running_after.log_bytes, 17);
    assert_eq!(running_after.steps, running_before.steps);
    assert_eq!(running_after.started_at, running_before.started_at);
    assert_eq!(hub.log(&org, &running.job_id).await, b"before the crash\n");
    assert_eq!(hub.job(&org, &finished.job_id).await, finished_before);
    assert_eq!(finished_before.state, JobState::Success);
    assert_eq!(hub.log(&org, &finished.job_id).await, b"finished log\n");
    assert_eq!(hub.job(&org, &queued).await.state, JobState::Queued);
    assert_eq!(hub.job(&org, &cancelled).await.state, JobState::Cancelled);
    let list: JobList = hub
        .as_org(&org)
        .get(&paths::jobs(&org.name))
        .await
        .expect(200)
        .json();
    assert_eq!(list.jobs.len(), 4, "{list:?}");

    // The runner carries on: same id, same lease, log from the old committed offset.
    let again = TestRunner::register(hub.url(), &kept.token, &runner_name, &["linux"]).await;
    assert_eq!(again.runner_id, runner.runner_id);
    let beat = runner.heartbeat(&[held(&running)], 0).await;
    assert!(
        !beat.jobs[0].lease_lost,
        "the lease did not survive the restart: {beat:?}"
    );
    let renewed = beat.jobs[0]
        .lease_expires_at
        .expect("a renewed lease has an expiry");
    assert!(
        renewed > Timestamp::from(past_expiry),
        "the lease was not extended: {renewed}"
    );
    assert_eq!(runner.append_log_ok(&running, 0, Vec::new()).await, 17);
    assert_eq!(
        runner
            .append_log_ok(&running, 17, "after the crash\n")
            .await,
        33
    );
    let mut s = step(0, "build", StepState::Success);
    s.exit_code = Some(0);
    runner.step(&running, &s).await.expect(200);
    let done = TestRunner::completion(&running, JobResult::Success, None, 33);
    let answer: CompleteResponse = runner
        .complete(&running.job_id, &done)
        .await
        .expect(200)
        .json();
    assert_eq!(answer.state, JobState::Success);
    assert_eq!(
        hub.log(&org, &running.job_id).await,
        b"before the crash\nafter the crash\n"
    );
    // The finished job's completion is still idempotent across the restart.
    let done = TestRunner::completion(&finished, JobResult::Success, None, 13);
    runner.complete(&finished.job_id, &done).await.expect(200);
    // The queued job is still handed out.
    assert_eq!(
        runner.acquire(0).await.map(|j| j.job_id.into_string()),
        Some(queued)
    );
}

/// One line of the log the writer sends: 12 bytes, so offset `12 * i` starts line `i`.
fn line(i: u64) -> String {
    format!("line {i:06}\n")
}

fn expected_log(len: u64) -> Vec<u8> {
    let lines = len.div_ceil(12);
    let text: String = (0..lines).map(line).collect();
    text.as_bytes()[..usize::try_from(len).expect("small log")].to_vec()
}

#[tokio::test]
async fn log_bytes_acknowledged_before_a_kill_survive_it() {
    let mut hub = TestHub::start().await;
    let org = hub.create_org(&unique("org")).await;
    let runner = hub.register_runner(&org, &unique("runner"), &[]).await;
    let job = assigned_job(&hub, &org, &runner).await;

    // A writer appends four lines per call as fast as the hub acknowledges, until a call fails.
    let acked = Arc::new(AtomicU64::new(0));
    let writer = {
        let (runner, acked, job) = (runner.clone(), acked.clone(), job.clone());
        tokio::spawn(async move {
            let mut i = 0;
            loop {
                let chunk: String = (i..i + 4).map(line).collect();
                let path = paths::job_log(job.job_id.as_str(), job.lease_id.as_str(), i * 12);
                match runner
                    .http
                    .send(
                        Method::POST,
                        &path,
                        Some(("application/octet-stream", chunk.into())),
                    )
                    .await
                {
                    Ok(answer) if answer.code() == 200 => {
                        let committed = answer
                            .json::<outpost_protocol::LogAppendResponse>()
                            .committed;
                        assert_eq!(committed, (i + 4) * 12, "{answer:?}");
                        acked.store(committed, Ordering::SeqCst);
                        i += 4;
                    }
                    Ok(answer) => panic!("append refused while the hub was up: {answer:?}"),
                    Err(_) => return,
                }
            }
        })
    };
    wait_until("the writer has some log acknowledged", PROMPTLY, || {
        std::future::ready(acked.load(Ordering::SeqCst) >= 12 * 200)
    })
    .await;
    hub.kill().await;
    match tokio::time::timeout(PROMPTLY, writer).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("the writer failed: {e}"),
        Err(_) => panic!("the writer did not notice the hub was gone"),
    }
    let acknowledged = acked.load(Ordering::SeqCst);

    // The bytes live in the job's log file beside the database; a kill between a write and
    // its commit may leave more there than was committed, never less.
    let file = log_file(&hub, job.job_id.as_str());
    let on_disk = std::fs::read(&file).expect("the job's log file");
    hub.restart().await;
    let committed = runner.append_log_ok(&job, 0, Vec::new()).await;
    assert!(
        committed >= acknowledged,
        "acknowledged {acknowledged} bytes, the hub kept {committed}"
    );
    let held = usize::try_from(committed).expect("small");
    assert!(
        on_disk.len() >= held,
        "the file holds {} of {committed} committed bytes",
        on_disk.len()
    );
    assert_eq!(
        on_disk[..held],
        expected_log(committed),
        "the file is not the log"
    );
    assert_eq!(
        hub.log(&org, &job.job_id).await,
        expected_log(committed),
        "the log is not a prefix"
    );
    // The runner resends from the hub's committed offset and finishes.
    let rest = expected_log(committed + 100)[usize::try_from(committed).expect("small")..].to_vec();
    assert_eq!(
        runner.append_log_ok(&job, committed, rest).await,
        committed + 100
    );
    let done = TestRunner::completion(&job, JobResult::Success, None, committed + 100);
    runner.complete(&job.job_id, &done).await.expect(200);
    assert_eq!(
        hub.log(&org, &job.job_id).await,
        expected_log(committed + 100)
    );
    assert_eq!(
        std::fs::read(&file).expect("the job's log file"),
        expected_log(committed + 100),
        "the file is not exactly the committed log"
    );
}

/// The log file of `job_id` under `<database>.logs/<org id>/`.
fn log_file(hub: &TestHub, job_id: &str) -> std::path::PathBuf {
    let mut logs = hub.database_path().as_os_str().to_owned();
    logs.push(".logs");
    let found: Vec<_> = std::fs::read_dir(&logs)
        .expect("the hub's log folder")
        .map(|org| org.expect("entry").path().join(format!("{job_id}.log")))
        .filter(|path| path.is_file())
        .collect();
    assert_eq!(found.len(), 1, "log files of {job_id}: {found:?}");
    found[0].clone()
}

#[tokio::test]
async fn a_hub_restarted_twice_keeps_its_admin_key_and_orgs() {
    let mut hub = TestHub::start().await;
    let org = hub.create_org(&unique("org")).await;
    let job_id = hub.submit(&org, &job(&[])).await;
    for round in 0..2 {
        hub.restart().await;
        assert!(hub.is_running());
        hub.http().get(paths::HEALTHZ).await.expect(200);
        let listed: JobList = hub
            .admin()
            .get(&paths::jobs(&org.name))
            .await
            .expect(200)
            .json();
        let ids: Vec<String> = listed
            .jobs
            .into_iter()
            .map(|j| j.job_id.into_string())
            .collect();
        assert_eq!(ids, vec![job_id.clone()], "round {round}");
    }
}
