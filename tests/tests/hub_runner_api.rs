//! The runner side of the hub's API over HTTP against the real `outpost-hub` process:
//! registration, long-poll acquire, exactly-once assignment, leases, logs, steps, completion,
//! cancellation, label routing, log follow, health and metrics.

use std::collections::HashSet;
use std::time::Duration;

use outpost_e2e::{
    PROMPTLY, assert_pending, assigned_job, job, org_with_runner, running_job, step, woken,
};
use outpost_protocol::{
    CancelResponse, ErrorCode, Failure, FailureClass, JobResult, JobState, LogAppendResponse,
    RunnerList, StepState, Timestamp, paths,
};
use outpost_testkit::{TestHub, TestRunner, held, unique, wait_until};

/// The lease used by tests that let leases expire.
const SHORT_LEASE_S: u64 = 2;

async fn short_lease_hub() -> TestHub {
    TestHub::builder()
        .lease_ttl_s(SHORT_LEASE_S)
        .heartbeat_interval_s(1)
        .start()
        .await
}

#[tokio::test]
async fn register_again_with_the_same_name_returns_the_same_runner() {
    let hub = TestHub::builder()
        .lease_ttl_s(30)
        .heartbeat_interval_s(3)
        .start()
        .await;
    let org = hub.create_org(&unique("org")).await;
    let token = hub.create_runner_token(&org).await;
    let name = unique("runner");

    let first = TestRunner::register(hub.url(), &token, &name, &["linux", "gpu"]).await;
    assert_eq!(
        first.registration.lease_ttl_s, 30,
        "the configured lease ttl"
    );
    assert_eq!(
        first.registration.heartbeat_interval_s, 3,
        "the configured heartbeat interval"
    );
    let again = TestRunner::register(hub.url(), &token, &name, &["linux", "gpu"]).await;
    assert_eq!(again.runner_id, first.runner_id);
    let other = TestRunner::register(hub.url(), &token, &unique("runner"), &[]).await;
    assert_ne!(other.runner_id, first.runner_id);

    let list: RunnerList = hub
        .as_org(&org)
        .get(&paths::runners(&org.name))
        .await
        .expect(200)
        .json();
    assert_eq!(list.runners.len(), 2, "{list:?}");
    let listed = list
        .runners
        .iter()
        .find(|r| r.runner_id == first.runner_id)
        .unwrap_or_else(|| panic!("runner {} not listed: {list:?}", first.runner_id));
    assert_eq!(listed.name, name);
    let labels: HashSet<&str> = listed.labels.iter().map(String::as_str).collect();
    assert_eq!(labels, HashSet::from(["linux", "gpu"]));
    assert_eq!(listed.executor, "process");
    assert_eq!(listed.version, "0.0.0-test");
    assert_eq!(listed.running_jobs, 0);
}

#[tokio::test]
async fn acquire_answers_204_without_body_when_no_job_comes() {
    let hub = TestHub::start().await;
    let (_org, runner) = org_with_runner(&hub).await;
    let answer = runner.acquire_response(1).await;
    answer.expect(204);
    assert!(answer.body.is_empty(), "{answer:?}");
}

#[tokio::test]
async fn long_poll_acquire_returns_the_job_as_soon_as_it_is_submitted() {
    let hub = TestHub::builder().max_wait_s(120).start().await;
    let (org, runner) = org_with_runner(&hub).await;

    // wait_s = 60 while the test allows 30 s: it passes only if the submission wakes the poll.
    let poller = runner.clone();
    let poll = tokio::spawn(async move { poller.acquire(60).await });
    assert_pending(&hub, &poll, "acquire with no job queued").await;

    let job_id = hub.submit(&org, &job(&[])).await;
    let assignment = woken(poll, "the long-polling acquire")
        .await
        .expect("a job, not a 204");
    assert_eq!(assignment.job_id, job_id);
    assert!(!assignment.lease_id.as_str().is_empty());
    assert_eq!(assignment.spec.pipeline(), Some(outpost_e2e::PIPELINE));

    let details = hub.job(&org, &job_id).await;
    assert_eq!(details.state, JobState::Assigned);
    assert_eq!(
        details.runner_id.as_ref().map(|id| id.as_str()),
        Some(runner.runner_id.as_str())
    );
}

#[tokio::test]
async fn two_runners_racing_for_one_job_exactly_one_wins_every_round() {
    let hub = TestHub::start().await;
    let org = hub.create_org(&unique("org")).await;
    let a = hub.register_runner(&org, &unique("a"), &[]).await;
    let b = hub.register_runner(&org, &unique("b"), &[]).await;

    for round in 0..50 {
        let job_id = hub.submit(&org, &job(&[])).await;
        let (got_a, got_b) = tokio::join!(a.acquire(0), b.acquire(0));
        let winner = match (&got_a, &got_b) {
            (Some(j), None) => {
                assert_eq!(j.job_id, job_id, "round {round}");
                &a
            }
            (None, Some(j)) => {
                assert_eq!(j.job_id, job_id, "round {round}");
                &b
            }
            (Some(_), Some(_)) => {
                panic!("round {round}: both runners got a job: {got_a:?} {got_b:?}")
            }
            (None, None) => panic!("round {round}: neither runner got the queued job"),
        };
        let details = hub.job(&org, &job_id).await;
        assert_eq!(details.state, JobState::Assigned, "round {round}");
        assert_eq!(
            details.runner_id.as_ref().map(|id| id.as_str()),
            Some(winner.runner_id.as_str()),
            "round {round}"
        );
    }
}

#[tokio::test]
async fn two_parked_runners_each_get_one_of_two_jobs() {
    let hub = TestHub::start().await;
    let org = hub.create_org(&unique("org")).await;
    let a = hub.register_runner(&org, &unique("a"), &[]).await;
    let b = hub.register_runner(&org, &unique("b"), &[]).await;

    for round in 0..10 {
        let (pa, pb) = (a.clone(), b.clone());
        let poll_a = tokio::spawn(async move { pa.acquire(60).await });
        let poll_b = tokio::spawn(async move { pb.acquire(60).await });
        assert_pending(&hub, &poll_a, "runner a's acquire").await;
        assert_pending(&hub, &poll_b, "runner b's acquire").await;

        let first = hub.submit(&org, &job(&[])).await;
        // Exactly one poll is woken by the first job; the other keeps waiting.
        wait_until("one acquire has answered", PROMPTLY, || {
            std::future::ready(poll_a.is_finished() || poll_b.is_finished())
        })
        .await;
        hub.http().get(paths::HEALTHZ).await.expect(200);
        assert!(
            !(poll_a.is_finished() && poll_b.is_finished()),
            "round {round}: one job woke both acquires"
        );
        let second = hub.submit(&org, &job(&[])).await;
        let got_a = woken(poll_a, "runner a's acquire")
            .await
            .expect("a job for a");
        let got_b = woken(poll_b, "runner b's acquire")
            .await
            .expect("a job for b");
        let got = HashSet::from([got_a.job_id.into_string(), got_b.job_id.into_string()]);
        assert_eq!(got, HashSet::from([first, second]), "round {round}");
    }
}

#[tokio::test]
async fn an_assigned_job_whose_lease_expires_goes_back_to_the_queue() {
    let hub = short_lease_hub().await;
    let org = hub.create_org(&unique("org")).await;
    let a = hub.register_runner(&org, &unique("a"), &[]).await;
    let b = hub.register_runner(&org, &unique("b"), &[]).await;
    let first = assigned_job(&hub, &org, &a).await;

    // Runner a never heartbeats nor starts the job.
    wait_until(
        "the expired assigned job is queued again",
        PROMPTLY,
        || async { hub.job(&org, &first.job_id).await.state == JobState::Queued },
    )
    .await;
    let details = hub.job(&org, &first.job_id).await;
    assert_eq!(
        details.failure, None,
        "a requeued job carries no failure: {details:?}"
    );

    let second = b
        .acquire(0)
        .await
        .expect("the requeued job is handed out again");
    assert_eq!(second.job_id, first.job_id);
    assert_ne!(
        second.lease_id, first.lease_id,
        "a new assignment has a new lease"
    );

    let beat = a.heartbeat(&[held(&first)], 0).await;
    assert!(
        beat.jobs[0].lease_lost,
        "the first runner's lease is lost: {beat:?}"
    );
    let late = TestRunner::completion(&first, JobResult::Success, None, 0);
    a.complete(&first.job_id, &late)
        .await
        .expect_error(409, ErrorCode::LeaseMismatch);
    assert_eq!(hub.job(&org, &first.job_id).await.state, JobState::Assigned);
}

#[tokio::test]
async fn a_running_job_whose_lease_expires_ends_lost_as_runner_lost() {
    let hub = short_lease_hub().await;
    let (org, runner) = org_with_runner(&hub).await;
    let assignment = assigned_job(&hub, &org, &runner).await;
    assert_eq!(runner.append_log_ok(&assignment, 0, "started\n").await, 8);
    assert_eq!(
        hub.job(&org, &assignment.job_id).await.state,
        JobState::Running
    );

    wait_until(
        "the running job without heartbeats is lost",
        PROMPTLY,
        || async { hub.job(&org, &assignment.job_id).await.state == JobState::Lost },
    )
    .await;
    let details = hub.job(&org, &assignment.job_id).await;
    let failure = details
        .failure
        .clone()
        .expect("a lost job carries a failure");
    assert_eq!(failure.class, FailureClass::RunnerLost, "{details:?}");
    assert!(details.finished_at.is_some(), "{details:?}");
    assert_eq!(details.log_bytes, 8, "the log received before is kept");

    let beat = runner.heartbeat(&[held(&assignment)], 0).await;
    assert!(beat.jobs[0].lease_lost, "{beat:?}");
    assert_eq!(beat.jobs[0].lease_expires_at, None, "{beat:?}");
    assert!(
        runner.acquire(0).await.is_none(),
        "a lost job is not handed out again"
    );
    let late = TestRunner::completion(&assignment, JobResult::Success, None, 8);
    let answer = runner.complete(&assignment.job_id, &late).await;
    assert!(
        answer.status.is_client_error(),
        "a completion after lost is refused: {answer:?}"
    );
    answer.expect_client_error();
    assert_eq!(
        hub.job(&org, &assignment.job_id).await.state,
        JobState::Lost
    );
}

#[tokio::test]
async fn heartbeats_keep_a_lease_alive_past_its_ttl() {
    let hub = short_lease_hub().await;
    let (org, runner) = org_with_runner(&hub).await;
    let assignment = running_job(&hub, &org, &runner).await;

    // Three lease lifetimes of heartbeats, paced like a runner's: the job must stay running and
    // the expiry move on.
    let end = tokio::time::Instant::now() + Duration::from_secs(3 * SHORT_LEASE_S);
    let mut last_expiry = assignment.lease_expires_at;
    while tokio::time::Instant::now() < end {
        let beat = runner.heartbeat(&[held(&assignment)], 0).await;
        let status = &beat.jobs[0];
        assert!(
            !status.lease_lost,
            "lease lost while heartbeating: {beat:?}"
        );
        assert!(!status.cancel_requested, "{beat:?}");
        let expiry = status
            .lease_expires_at
            .expect("a renewed lease has an expiry");
        assert!(
            expiry >= last_expiry,
            "the expiry went back: {expiry} < {last_expiry}"
        );
        last_expiry = expiry;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        last_expiry > assignment.lease_expires_at,
        "the lease was never extended"
    );
    assert_eq!(
        hub.job(&org, &assignment.job_id).await.state,
        JobState::Running
    );
}

#[tokio::test]
async fn a_job_is_running_from_its_first_log_byte() {
    let hub = TestHub::start().await;
    let (org, runner) = org_with_runner(&hub).await;
    let assignment = assigned_job(&hub, &org, &runner).await;
    assert_eq!(
        hub.job(&org, &assignment.job_id).await.state,
        JobState::Assigned
    );
    // Asking for `committed` with an empty body sends no byte: still assigned.
    assert_eq!(runner.append_log_ok(&assignment, 0, Vec::new()).await, 0);
    assert_eq!(
        hub.job(&org, &assignment.job_id).await.state,
        JobState::Assigned
    );
    runner.append_log_ok(&assignment, 0, "x").await;
    let details = hub.job(&org, &assignment.job_id).await;
    assert_eq!(details.state, JobState::Running);
    assert!(details.started_at.is_some(), "{details:?}");
}

#[tokio::test]
async fn a_job_is_running_from_its_first_step_update() {
    let hub = TestHub::start().await;
    let (org, runner) = org_with_runner(&hub).await;
    let assignment = running_job(&hub, &org, &runner).await;
    let details = hub.job(&org, &assignment.job_id).await;
    assert!(details.started_at.is_some(), "{details:?}");
    assert_eq!(details.log_bytes, 0);
}

#[tokio::test]
async fn log_appends_are_idempotent_and_gaps_are_refused_with_committed() {
    let hub = TestHub::start().await;
    let (org, runner) = org_with_runner(&hub).await;
    let job = assigned_job(&hub, &org, &runner).await;
    let id = job.job_id.as_str();

    assert_eq!(runner.append_log_ok(&job, 0, "hello ").await, 6);
    // The same bytes again: nothing changes.
    assert_eq!(runner.append_log_ok(&job, 0, "hello ").await, 6);
    assert_eq!(hub.log(&org, id).await, b"hello ");
    // Overlapping resend: only the new part is added.
    assert_eq!(runner.append_log_ok(&job, 3, "lo world").await, 11);
    assert_eq!(hub.log(&org, id).await, b"hello world");
    // Entirely below committed: harmless.
    assert_eq!(runner.append_log_ok(&job, 2, "llo").await, 11);
    // A gap: refused, with where to resend from.
    let gap = runner
        .append_log(&job, 12, "!")
        .await
        .expect_error(409, ErrorCode::LogGap);
    assert_eq!(gap.committed, Some(11), "{gap:?}");
    assert_eq!(hub.log(&org, id).await, b"hello world");
    // An empty body at offset 0 asks for committed.
    let probe: LogAppendResponse = runner
        .append_log(&job, 0, Vec::new())
        .await
        .expect(200)
        .json();
    assert_eq!(probe.committed, 11);
    // Exactly at committed: appended.
    assert_eq!(runner.append_log_ok(&job, 11, "!\n").await, 13);

    let read = hub
        .as_org(&org)
        .get(&paths::job_log_read(&org.name, id, 6, false))
        .await;
    assert_eq!(read.expect(200).body.as_ref(), b"world!\n");
    assert_eq!(hub.job(&org, id).await.log_bytes, 13);

    // A full chunk of MAX_LOG_CHUNK bytes is accepted whole.
    let big = vec![b'z'; outpost_protocol::MAX_LOG_CHUNK];
    let committed = runner.append_log_ok(&job, 13, big).await;
    assert_eq!(committed, 13 + outpost_protocol::MAX_LOG_CHUNK as u64);
}

#[tokio::test]
async fn completion_is_refused_while_the_log_is_short_then_accepted_and_idempotent() {
    let hub = TestHub::start().await;
    let (org, runner) = org_with_runner(&hub).await;
    let job = assigned_job(&hub, &org, &runner).await;
    let id = job.job_id.as_str();

    runner.append_log_ok(&job, 0, "12345").await;
    let done = TestRunner::completion(&job, JobResult::Success, None, 10);
    let refused = runner
        .complete(id, &done)
        .await
        .expect_error(409, ErrorCode::LogIncomplete);
    assert_eq!(refused.committed, Some(5), "{refused:?}");
    assert_eq!(
        hub.job(&org, id).await.state,
        JobState::Running,
        "refused means not completed"
    );

    runner.append_log_ok(&job, 5, "67890").await;
    let accepted: outpost_protocol::CompleteResponse =
        runner.complete(id, &done).await.expect(200).json();
    assert_eq!(accepted.job_id, id);
    assert_eq!(accepted.state, JobState::Success);
    // The same completion again (a retry whose answer was lost): 200, same outcome.
    let again: outpost_protocol::CompleteResponse =
        runner.complete(id, &done).await.expect(200).json();
    assert_eq!(again, accepted);

    let details = hub.job(&org, id).await;
    assert_eq!(details.state, JobState::Success);
    assert_eq!(details.failure, None);
    assert_eq!(details.log_bytes, 10);
    assert!(details.finished_at.is_some(), "{details:?}");
    assert_eq!(hub.log(&org, id).await, b"1234567890");
    // The lease ended with the job.
    let beat = runner.heartbeat(&[held(&job)], 0).await;
    assert!(beat.jobs[0].lease_lost, "{beat:?}");
}

#[tokio::test]
async fn a_failed_completion_keeps_its_failure_class_and_message() {
    let hub = TestHub::start().await;
    let (org, runner) = org_with_runner(&hub).await;
    let job = running_job(&hub, &org, &runner).await;
    let failure = Failure::new(FailureClass::Script, "step build exited with 2");
    let done = TestRunner::completion(&job, JobResult::Failed, Some(failure.clone()), 0);
    runner.complete(&job.job_id, &done).await.expect(200);
    let details = hub.job(&org, &job.job_id).await;
    assert_eq!(details.state, JobState::Failed);
    assert_eq!(details.failure, Some(failure));
}

#[tokio::test]
async fn step_updates_are_upserts_and_idempotent() {
    let hub = TestHub::start().await;
    let (org, runner) = org_with_runner(&hub).await;
    let job = assigned_job(&hub, &org, &runner).await;
    let id = job.job_id.as_str();

    let started = Timestamp::now();
    let mut build = step(0, "build", StepState::Running);
    build.started_at = Some(started);
    build.log_offset = Some(0);
    runner.step(&job, &build).await.expect(200);
    runner.step(&job, &build).await.expect(200);
    let mut test = step(1, "test", StepState::Pending);
    runner.step(&job, &test).await.expect(200);

    build.state = StepState::Success;
    build.exit_code = Some(0);
    build.finished_at = Some(Timestamp::now());
    runner.step(&job, &build).await.expect(200);
    runner.step(&job, &build).await.expect(200);
    test.state = StepState::Failed;
    test.exit_code = Some(3);
    test.failure = Some(Failure::new(FailureClass::Script, "exit 3"));
    test.log_offset = Some(42);
    runner.step(&job, &test).await.expect(200);

    let details = hub.job(&org, id).await;
    assert_eq!(details.state, JobState::Running);
    let mut steps = details.steps.clone();
    steps.sort_by_key(|s| s.index);
    assert_eq!(steps, vec![build.into(), test.into()], "{details:?}");
}

#[tokio::test]
async fn cancel_reaches_a_held_heartbeat_at_once() {
    // Every cap on the heartbeat's wait well above the test's deadline: an answer within the
    // deadline can only come from the cancel.
    let hub = TestHub::builder()
        .lease_ttl_s(600)
        .heartbeat_interval_s(120)
        .max_wait_s(120)
        .start()
        .await;
    let (org, runner) = org_with_runner(&hub).await;
    let job = running_job(&hub, &org, &runner).await;

    // wait_s = 60 while the test allows 30 s: passes only if the cancel wakes the heartbeat.
    let beater = runner.clone();
    let lease = held(&job);
    let beat = tokio::spawn(async move { beater.heartbeat(&[lease], 60).await });
    assert_pending(&hub, &beat, "the heartbeat of a job nobody cancelled").await;

    let cancel = hub
        .as_org(&org)
        .post_json(&paths::job_cancel(&org.name, job.job_id.as_str()), &())
        .await;
    let cancel: CancelResponse = cancel.expect(200).json();
    assert_eq!(cancel.job_id, job.job_id);
    assert_eq!(
        cancel.state,
        JobState::Running,
        "a running job ends through its runner"
    );
    assert!(cancel.cancel_requested);

    let beat = woken(beat, "the held heartbeat").await;
    let status = &beat.jobs[0];
    assert!(status.cancel_requested, "{beat:?}");
    assert!(
        !status.lease_lost,
        "cancel does not take the lease away: {beat:?}"
    );

    // The runner stops the job and reports it cancelled.
    let failure = Failure::new(FailureClass::Cancelled, "cancelled by a user");
    let done = TestRunner::completion(&job, JobResult::Cancelled, Some(failure), 0);
    runner.complete(&job.job_id, &done).await.expect(200);
    let details = hub.job(&org, &job.job_id).await;
    assert_eq!(details.state, JobState::Cancelled);
    assert_eq!(
        details.failure.map(|f| f.class),
        Some(FailureClass::Cancelled)
    );
}

#[tokio::test]
async fn cancel_of_a_queued_job_is_immediate_and_it_is_never_handed_out() {
    let hub = TestHub::start().await;
    let (org, runner) = org_with_runner(&hub).await;
    let job_id = hub.submit(&org, &job(&[])).await;

    let answer = hub
        .as_org(&org)
        .post_json(&paths::job_cancel(&org.name, &job_id), &())
        .await;
    let cancel: CancelResponse = answer.expect(200).json();
    assert_eq!(cancel.job_id, job_id);
    assert_eq!(cancel.state, JobState::Cancelled);
    let details = hub.job(&org, &job_id).await;
    assert_eq!(details.state, JobState::Cancelled);
    assert!(details.finished_at.is_some(), "{details:?}");
    assert!(
        runner.acquire(0).await.is_none(),
        "a cancelled job is not handed out"
    );

    // Cancelling again is harmless and changes nothing.
    let again = hub
        .as_org(&org)
        .post_json(&paths::job_cancel(&org.name, &job_id), &())
        .await;
    assert!(
        again.status.is_success() || again.code() == 409,
        "{again:?}"
    );
    assert_eq!(hub.job(&org, &job_id).await.state, JobState::Cancelled);
}

#[tokio::test]
async fn jobs_go_only_to_runners_that_have_all_their_labels() {
    let hub = TestHub::start().await;
    let org = hub.create_org(&unique("org")).await;
    let plain = hub
        .register_runner(&org, &unique("plain"), &["linux"])
        .await;
    let gpu = hub
        .register_runner(&org, &unique("gpu"), &["linux", "gpu"])
        .await;

    let gpu_job = hub.submit(&org, &job(&["gpu"])).await;
    assert!(
        plain.acquire(1).await.is_none(),
        "a job labelled gpu went to a runner without gpu"
    );
    let got = gpu
        .acquire(0)
        .await
        .expect("the gpu runner gets the gpu job");
    assert_eq!(got.job_id, gpu_job);
    assert_eq!(got.labels, vec!["gpu".to_owned()]);

    let both = hub.submit(&org, &job(&["gpu", "arm"])).await;
    assert!(
        gpu.acquire(0).await.is_none(),
        "a runner lacking `arm` got a job that needs it"
    );
    assert_eq!(hub.job(&org, &both).await.state, JobState::Queued);

    let any = hub.submit(&org, &job(&[])).await;
    let got = plain
        .acquire(0)
        .await
        .expect("a job without labels goes to any runner");
    assert_eq!(got.job_id, any);

    // A parked runner without gpu is not woken by a gpu job.
    let poller = plain.clone();
    let poll = tokio::spawn(async move { poller.acquire(2).await });
    assert_pending(&hub, &poll, "the plain runner's acquire").await;
    let second_gpu = hub.submit(&org, &job(&["gpu"])).await;
    assert_eq!(woken(poll, "the plain runner's acquire").await, None);
    assert_eq!(
        gpu.acquire(0).await.map(|j| j.job_id.into_string()),
        Some(second_gpu)
    );
}

#[tokio::test]
async fn log_follow_streams_bytes_as_they_arrive_and_ends_with_the_job() {
    let hub = TestHub::start().await;
    let (org, runner) = org_with_runner(&hub).await;
    let job = assigned_job(&hub, &org, &runner).await;
    let id = job.job_id.as_str();

    runner.append_log_ok(&job, 0, "one\n").await;
    let mut follow = hub
        .as_org(&org)
        .get_streaming(&paths::job_log_read(&org.name, id, 0, true))
        .await;
    assert_eq!(follow.status.as_u16(), 200, "{follow:?}");
    follow.read_until_len(4, PROMPTLY).await;
    assert_eq!(follow.received(), b"one\n");

    runner.append_log_ok(&job, 4, "two\n").await;
    follow.read_until_len(8, PROMPTLY).await;
    assert_eq!(follow.received(), b"one\ntwo\n");

    // A follower from an offset sees only what comes after it.
    let mut late = hub
        .as_org(&org)
        .get_streaming(&paths::job_log_read(&org.name, id, 4, true))
        .await;
    late.read_until_len(4, PROMPTLY).await;
    assert_eq!(late.received(), b"two\n");

    runner.append_log_ok(&job, 8, "three\n").await;
    let done = TestRunner::completion(&job, JobResult::Success, None, 14);
    runner.complete(id, &done).await.expect(200);
    assert_eq!(follow.read_to_end(PROMPTLY).await, b"one\ntwo\nthree\n");
    assert_eq!(late.read_to_end(PROMPTLY).await, b"two\nthree\n");

    // Following a job that has ended returns its log and ends at once.
    let mut ended = hub
        .as_org(&org)
        .get_streaming(&paths::job_log_read(&org.name, id, 0, true))
        .await;
    assert_eq!(ended.read_to_end(PROMPTLY).await, b"one\ntwo\nthree\n");
}

#[tokio::test]
async fn healthz_and_metrics_answer() {
    let hub = TestHub::start().await;
    let (org, runner) = org_with_runner(&hub).await;
    let job = assigned_job(&hub, &org, &runner).await;
    runner.append_log_ok(&job, 0, "x").await;

    let health = hub.http().get(paths::HEALTHZ).await;
    health.expect(200);

    let metrics = hub.http().get(paths::METRICS).await;
    metrics.expect(200);
    let content_type = metrics
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain")
            || content_type.starts_with("application/openmetrics-text"),
        "metrics content type {content_type:?}"
    );
    let text = metrics.text();
    assert!(text.contains("# TYPE "), "not Prometheus text: {text}");
    assert!(
        text.lines().any(|l| l.starts_with("outpost")),
        "no outpost metric in: {text}"
    );
}
