//! The runner side of the hub over real sockets: registration, dispatch (wake-up, FIFO, labels,
//! races), heartbeats and cancel, logs, steps, completion, lease expiry and restarts.

mod common;

use bytes::Bytes;
use common::{DEADLINE, TestHub, acquire, unique, wait_until};
use http::StatusCode;
use http_body_util::BodyExt;
use outpost_protocol::{
    CancelResponse, CompleteRequest, CompleteResponse, ErrorCode, FailureClass, HeartbeatRequest,
    HeartbeatResponse, HeldLease, JobAssignment, JobResult, JobState, LogAppendResponse,
    RunnerList, StepState, StepUpdate, Timestamp, paths,
};

fn held(job: &JobAssignment) -> HeldLease {
    HeldLease {
        job_id: job.job_id.clone(),
        lease_id: job.lease_id.clone(),
    }
}

async fn heartbeat(
    api: &common::Api,
    runner_id: &str,
    jobs: &[HeldLease],
    wait_s: u64,
) -> HeartbeatResponse {
    let request = HeartbeatRequest {
        runner_id: runner_id.into(),
        jobs: jobs.to_vec(),
        wait_s,
    };
    api.post_json(paths::HEARTBEAT, &request)
        .await
        .expect_status(StatusCode::OK)
        .json()
}

async fn append(
    api: &common::Api,
    job_id: &str,
    lease_id: &str,
    offset: u64,
    bytes: &'static [u8],
) -> common::Answer {
    api.post_bytes(
        &paths::job_log(job_id, lease_id, offset),
        Bytes::from_static(bytes),
    )
    .await
}

fn completion(job: &JobAssignment, result: JobResult, log_bytes: u64) -> CompleteRequest {
    CompleteRequest {
        lease_id: job.lease_id.clone(),
        result,
        failure: None,
        log_bytes,
    }
}

#[tokio::test]
async fn registration_is_idempotent_by_name_and_updates_the_runner() {
    let hub = TestHub::start(|_| {}).await;
    let org = hub.org(&unique("reg")).await;
    let first = org.register("builder", &["linux"]).await;
    let again = org.register("builder", &["linux", "gpu"]).await;
    let other = org.register("other", &[]).await;
    assert_eq!(first, again);
    assert_ne!(first, other);
    let list: RunnerList = org
        .api
        .get(&paths::runners(&org.name))
        .await
        .expect_status(StatusCode::OK)
        .json();
    let builder = list
        .runners
        .iter()
        .find(|r| r.runner_id == first)
        .expect("listed");
    assert_eq!(builder.labels, vec!["linux".to_owned(), "gpu".to_owned()]);
    assert_eq!(list.runners.len(), 2);
}

#[tokio::test]
async fn acquire_is_woken_by_an_enqueue() {
    let hub = TestHub::start(|_| {}).await;
    let org = hub.org(&unique("wake")).await;
    let runner = org.register("r", &[]).await;
    let api = org.runner_api.clone();
    let runner_id = runner.clone();
    // wait_s is the maximum: only the enqueue can answer it within the test's deadline.
    let pending = tokio::spawn(async move { acquire(&api, &runner_id, 120).await });
    hub.wait_metric("outpost_hub_acquire_waiting", 1.0).await;
    assert!(
        !pending.is_finished(),
        "acquire answered before any job existed"
    );
    let job_id = org.submit(&[]).await;
    let job = tokio::time::timeout(DEADLINE, pending)
        .await
        .expect("woken")
        .expect("task");
    let job = job.expect("a job, not 204");
    assert_eq!(job.job_id, job_id);
    let details = org.job(&job_id).await;
    assert_eq!(details.state, JobState::Assigned);
    assert_eq!(
        details.runner_id.as_ref().map(|r| r.as_str()),
        Some(runner.as_str())
    );
    hub.wait_metric("outpost_hub_acquire_waiting", 0.0).await;
}

#[tokio::test]
async fn acquire_answers_204_after_wait_s_and_on_free_slots_zero() {
    let hub = TestHub::start(|_| {}).await;
    let org = hub.org(&unique("idle")).await;
    let runner = org.register("r", &[]).await;
    assert!(org.acquire(&runner, 1).await.is_none());
    let job_id = org.submit(&[]).await;
    let request = outpost_protocol::AcquireRequest {
        runner_id: runner.clone().into(),
        free_slots: 0,
        wait_s: 0,
    };
    let answer = org.runner_api.post_json(paths::ACQUIRE, &request).await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    assert_eq!(
        org.acquire(&runner, 0)
            .await
            .map(|j| j.job_id.into_string()),
        Some(job_id)
    );
}

#[tokio::test]
async fn dispatch_is_fifo_and_routes_by_labels() {
    let hub = TestHub::start(|_| {}).await;
    let org = hub.org(&unique("fifo")).await;
    let plain = org.register("plain", &["linux"]).await;
    let gpu = org.register("gpu", &["linux", "gpu"]).await;
    let a = org.submit(&["linux", "gpu"]).await;
    let b = org.submit(&[]).await;
    let c = org.submit(&["linux"]).await;
    // The plain runner skips the gpu job and takes the others in order.
    assert_eq!(
        org.acquire(&plain, 0).await.map(|j| j.job_id.into_string()),
        Some(b)
    );
    assert_eq!(
        org.acquire(&plain, 0).await.map(|j| j.job_id.into_string()),
        Some(c)
    );
    assert!(org.acquire(&plain, 0).await.is_none());
    let job = org.acquire(&gpu, 0).await.expect("the gpu job");
    assert_eq!(job.job_id, a);
    assert_eq!(job.labels, vec!["linux".to_owned(), "gpu".to_owned()]);
    assert_eq!(job.spec.pipeline(), Some(common::PIPELINE));
}

#[tokio::test]
async fn another_orgs_runner_never_sees_a_job() {
    let hub = TestHub::start(|_| {}).await;
    let a = hub.org(&unique("a")).await;
    let b = hub.org(&unique("b")).await;
    let runner_b = b.register("r", &[]).await;
    let job_a = a.submit(&[]).await;
    assert!(b.acquire(&runner_b, 0).await.is_none());
    // A runner id of org B used with org A's token is unknown there.
    let request = outpost_protocol::AcquireRequest {
        runner_id: runner_b.clone().into(),
        free_slots: 1,
        wait_s: 0,
    };
    a.runner_api
        .post_json(paths::ACQUIRE, &request)
        .await
        .expect_error(StatusCode::NOT_FOUND, ErrorCode::NotFound);
    // Org B's token touching org A's job: 404 on every runner call.
    b.runner_api
        .post_bytes(&paths::job_log(&job_a, "l_x", 0), Bytes::new())
        .await
        .expect_error(StatusCode::NOT_FOUND, ErrorCode::NotFound);
    let step = StepUpdate {
        index: 0,
        name: "x".into(),
        state: StepState::Running,
        exit_code: None,
        started_at: None,
        finished_at: None,
        failure: None,
        log_offset: None,
    };
    b.runner_api
        .post_json(&paths::job_steps(&job_a, "l_x"), &step)
        .await
        .expect_error(StatusCode::NOT_FOUND, ErrorCode::NotFound);
    let complete = CompleteRequest {
        lease_id: "l_x".into(),
        result: JobResult::Success,
        failure: None,
        log_bytes: 0,
    };
    b.runner_api
        .post_json(&paths::job_complete(&job_a), &complete)
        .await
        .expect_error(StatusCode::NOT_FOUND, ErrorCode::NotFound);
}

#[tokio::test]
async fn two_runners_racing_never_share_a_job() {
    let hub = TestHub::start(|_| {}).await;
    let org = hub.org(&unique("race")).await;
    let r1 = org.register("one", &[]).await;
    let r2 = org.register("two", &[]).await;
    // Racing claims: both ask at once for the one queued job.
    for round in 0..40 {
        let job_id = org.submit(&[]).await;
        let (a, b) = tokio::join!(org.acquire(&r1, 0), org.acquire(&r2, 0));
        let winners: Vec<_> = [a, b].into_iter().flatten().collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one runner gets the job"
        );
        assert_eq!(winners[0].job_id, job_id);
    }
    // Racing wake-ups: both held, one job enqueued, then a second one for the loser.
    for round in 0..15 {
        let (api1, api2) = (org.runner_api.clone(), org.runner_api.clone());
        let (id1, id2) = (r1.clone(), r2.clone());
        let one = tokio::spawn(async move { acquire(&api1, &id1, 60).await });
        let two = tokio::spawn(async move { acquire(&api2, &id2, 60).await });
        hub.wait_metric("outpost_hub_acquire_waiting", 2.0).await;
        let first = org.submit(&[]).await;
        hub.wait_metric("outpost_hub_acquire_waiting", 1.0).await;
        let second = org.submit(&[]).await;
        let a = one.await.expect("task").expect("runner one got a job");
        let b = two.await.expect("task").expect("runner two got a job");
        let mut got = vec![a.job_id, b.job_id];
        got.sort();
        let mut want = vec![first, second];
        want.sort();
        assert_eq!(
            got, want,
            "round {round}: each job went to exactly one runner"
        );
    }
}

#[tokio::test]
async fn heartbeat_is_woken_by_a_cancel_and_the_job_ends_cancelled() {
    // A hold far beyond the test's deadline: only the cancel can answer it in time.
    let hub = TestHub::start(|c| {
        c.heartbeat_interval_s = 120;
        c.lease_ttl_s = 600;
    })
    .await;
    let org = hub.org(&unique("hb")).await;
    let runner = org.register("r", &[]).await;
    let job_id = org.submit(&[]).await;
    let job = org.acquire(&runner, 0).await.expect("job");
    assert_eq!(
        append(
            &org.runner_api,
            &job_id,
            job.lease_id.as_str(),
            0,
            b"working\n"
        )
        .await
        .status,
        StatusCode::OK
    );
    let (api, runner_id, lease) = (org.runner_api.clone(), runner.clone(), held(&job));
    let pending = tokio::spawn(async move { heartbeat(&api, &runner_id, &[lease], 120).await });
    hub.wait_metric("outpost_hub_heartbeat_waiting", 1.0).await;
    assert!(
        !pending.is_finished(),
        "heartbeat answered before the cancel"
    );
    let cancel: CancelResponse = org
        .api
        .post_json(
            &paths::job_cancel(&org.name, &job_id),
            &serde_json::json!({}),
        )
        .await
        .expect_status(StatusCode::OK)
        .json();
    assert_eq!(
        (cancel.state, cancel.cancel_requested),
        (JobState::Running, true)
    );
    let answer = tokio::time::timeout(DEADLINE, pending)
        .await
        .expect("woken")
        .expect("task");
    assert_eq!(answer.jobs.len(), 1);
    assert!(
        answer.jobs[0].cancel_requested && !answer.jobs[0].lease_lost,
        "{answer:?}"
    );
    // Later heartbeats keep reporting it.
    let again = heartbeat(&org.runner_api, &runner, &[held(&job)], 0).await;
    assert!(again.jobs[0].cancel_requested);
    let done: CompleteResponse = org
        .runner_api
        .post_json(
            &paths::job_complete(&job_id),
            &completion(&job, JobResult::Cancelled, 8),
        )
        .await
        .expect_status(StatusCode::OK)
        .json();
    assert_eq!(done.state, JobState::Cancelled);
    assert_eq!(org.job(&job_id).await.state, JobState::Cancelled);
}

#[tokio::test]
async fn heartbeat_reports_unknown_and_foreign_leases_as_lost() {
    let hub = TestHub::start(|_| {}).await;
    let org = hub.org(&unique("lost")).await;
    let runner = org.register("r", &[]).await;
    let other = org.register("other", &[]).await;
    org.submit(&[]).await;
    let job = org.acquire(&runner, 0).await.expect("job");
    let wrong_lease = HeldLease {
        job_id: job.job_id.clone(),
        lease_id: "l_wrong".into(),
    };
    let unknown = HeldLease {
        job_id: "j_nope".into(),
        lease_id: "l_nope".into(),
    };
    let answer = heartbeat(
        &org.runner_api,
        &runner,
        &[held(&job), wrong_lease, unknown],
        5,
    )
    .await;
    let lost: Vec<bool> = answer.jobs.iter().map(|s| s.lease_lost).collect();
    assert_eq!(lost, vec![false, true, true]);
    assert!(answer.jobs[0].lease_expires_at.is_some());
    // Another runner of the org cannot renew this lease.
    let answer = heartbeat(&org.runner_api, &other, &[held(&job)], 0).await;
    assert!(answer.jobs[0].lease_lost);
}

#[tokio::test]
async fn logs_replay_idempotently_and_refuse_gaps() {
    let hub = TestHub::start(|c| c.max_log_chunk_bytes = 64).await;
    let org = hub.org(&unique("log")).await;
    let runner = org.register("r", &[]).await;
    let job_id = org.submit(&[]).await;
    let api = &org.runner_api;
    // A queued job has no log yet.
    append(api, &job_id, "l_none", 0, b"x")
        .await
        .expect_error(StatusCode::CONFLICT, ErrorCode::InvalidState);
    let job = org.acquire(&runner, 0).await.expect("job");
    let lease = job.lease_id.as_str();
    let committed = |a: common::Answer| {
        a.expect_status(StatusCode::OK)
            .json::<LogAppendResponse>()
            .committed
    };
    assert_eq!(committed(append(api, &job_id, lease, 0, b"").await), 0);
    assert_eq!(
        org.job(&job_id).await.state,
        JobState::Assigned,
        "an empty append starts nothing"
    );
    assert_eq!(
        committed(append(api, &job_id, lease, 0, b"hello ").await),
        6
    );
    assert_eq!(
        org.job(&job_id).await.state,
        JobState::Running,
        "the first byte starts the job"
    );
    assert_eq!(
        committed(append(api, &job_id, lease, 0, b"hello ").await),
        6,
        "a replay adds nothing"
    );
    assert_eq!(
        committed(append(api, &job_id, lease, 3, b"lo world").await),
        11,
        "only the new part lands"
    );
    let gap = append(api, &job_id, lease, 20, b"!").await;
    let body = gap.expect_error(StatusCode::CONFLICT, ErrorCode::LogGap);
    assert_eq!(body.committed, Some(11));
    assert_eq!(
        committed(append(api, &job_id, lease, 0, b"").await),
        11,
        "an empty body tells committed"
    );
    let big = Bytes::from(vec![b'x'; 65]);
    api.post_bytes(&paths::job_log(&job_id, lease, 11), big)
        .await
        .expect_error(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge);
    // Reads from any offset; past the end is a 400 naming both numbers.
    let read = |offset: u64| {
        let path = paths::job_log_read(&org.name, &job_id, offset, false);
        let api = org.api.clone();
        async move { api.get(&path).await }
    };
    let all = read(0).await.expect_status(StatusCode::OK);
    assert_eq!(
        all.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/octet-stream")
    );
    assert_eq!(&all.body[..], b"hello world");
    assert_eq!(
        &read(6).await.expect_status(StatusCode::OK).body[..],
        b"world"
    );
    assert_eq!(&read(11).await.expect_status(StatusCode::OK).body[..], b"");
    let past = read(12).await;
    let message = past
        .expect_error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest)
        .error
        .message;
    assert!(
        message.contains("12") && message.contains("11"),
        "{message}"
    );
    // A missing offset is a 400 JSON answer, not axum's plain text.
    api.post_bytes(
        &format!("/api/v1/runner/jobs/{job_id}/log"),
        Bytes::from_static(b"x"),
    )
    .await
    .expect_error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest);
    api.post_bytes(
        &format!("/api/v1/runner/jobs/{job_id}/log?offset=-1"),
        Bytes::from_static(b"x"),
    )
    .await
    .expect_error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest);
    assert_eq!(job.job_id, job_id);
}

#[tokio::test]
async fn many_small_appends_read_back_whole_from_any_offset() {
    let hub = TestHub::start(|_| {}).await;
    let org = hub.org(&unique("chunks")).await;
    let runner = org.register("r", &[]).await;
    let job_id = org.submit(&[]).await;
    let job = org.acquire(&runner, 0).await.expect("job");
    let mut expected = Vec::new();
    for i in 0..300u32 {
        let line = format!("line {i:04} {}\n", "x".repeat((i % 7) as usize * 300));
        let offset = expected.len() as u64;
        expected.extend_from_slice(line.as_bytes());
        let answer = org
            .runner_api
            .post_bytes(
                &paths::job_log(&job_id, job.lease_id.as_str(), offset),
                line.into_bytes(),
            )
            .await;
        assert_eq!(
            answer
                .expect_status(StatusCode::OK)
                .json::<LogAppendResponse>()
                .committed,
            expected.len() as u64
        );
    }
    for offset in [0usize, 1, 4095, 65_535, 65_536, 100_000, expected.len() - 1] {
        let answer = org
            .api
            .get(&paths::job_log_read(
                &org.name,
                &job_id,
                offset as u64,
                false,
            ))
            .await;
        assert_eq!(
            answer.expect_status(StatusCode::OK).body,
            Bytes::copy_from_slice(&expected[offset..]),
            "offset {offset}"
        );
    }
}

#[tokio::test]
async fn completion_waits_for_the_whole_log_and_is_idempotent() {
    let hub = TestHub::start(|_| {}).await;
    let org = hub.org(&unique("done")).await;
    let runner = org.register("r", &[]).await;
    let job_id = org.submit(&[]).await;
    let job = org.acquire(&runner, 0).await.expect("job");
    let api = &org.runner_api;
    let path = paths::job_complete(&job_id);
    let lease = job.lease_id.as_str();
    append(api, &job_id, lease, 0, b"hello")
        .await
        .expect_status(StatusCode::OK);
    let short = api
        .post_json(&path, &completion(&job, JobResult::Success, 11))
        .await;
    assert_eq!(
        short
            .expect_error(StatusCode::CONFLICT, ErrorCode::LogIncomplete)
            .committed,
        Some(5)
    );
    assert_eq!(
        org.job(&job_id).await.state,
        JobState::Running,
        "a refused completion changes nothing"
    );
    let wrong = CompleteRequest {
        lease_id: "l_wrong".into(),
        ..completion(&job, JobResult::Success, 5)
    };
    api.post_json(&path, &wrong)
        .await
        .expect_error(StatusCode::CONFLICT, ErrorCode::LeaseMismatch);
    append(api, &job_id, lease, 5, b" world")
        .await
        .expect_status(StatusCode::OK);
    for _ in 0..2 {
        let done: CompleteResponse = api
            .post_json(&path, &completion(&job, JobResult::Success, 11))
            .await
            .expect_status(StatusCode::OK)
            .json();
        assert_eq!(
            (done.job_id.as_str(), done.state),
            (job_id.as_str(), JobState::Success)
        );
    }
    api.post_json(&path, &completion(&job, JobResult::Failed, 11))
        .await
        .expect_error(StatusCode::CONFLICT, ErrorCode::InvalidState);
    // The log is closed after the end: new bytes are refused, a replay is harmless.
    let closed = append(api, &job_id, lease, 11, b"!")
        .await
        .expect_error(StatusCode::CONFLICT, ErrorCode::JobEnded);
    assert_eq!(closed.committed, Some(11));
    append(api, &job_id, lease, 5, b" world")
        .await
        .expect_status(StatusCode::OK);
    let details = org.job(&job_id).await;
    assert_eq!((details.state, details.log_bytes), (JobState::Success, 11));
    assert!(details.finished_at.is_some());
}

#[tokio::test]
async fn steps_are_upserted_by_index_and_start_the_job() {
    let hub = TestHub::start(|_| {}).await;
    let org = hub.org(&unique("steps")).await;
    let runner = org.register("r", &[]).await;
    let job_id = org.submit(&[]).await;
    let job = org.acquire(&runner, 0).await.expect("job");
    let mut step = StepUpdate {
        index: 0,
        name: "hello".into(),
        state: StepState::Running,
        exit_code: None,
        started_at: Some(Timestamp::now()),
        finished_at: None,
        failure: None,
        log_offset: Some(0),
    };
    let path = paths::job_steps(&job_id, job.lease_id.as_str());
    org.runner_api
        .post_json(&path, &step)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(org.job(&job_id).await.state, JobState::Running);
    step.state = StepState::Failed;
    step.exit_code = Some(3);
    step.failure = Some(outpost_protocol::Failure::new(
        FailureClass::Script,
        "exit 3",
    ));
    for _ in 0..2 {
        org.runner_api
            .post_json(&path, &step)
            .await
            .expect_status(StatusCode::OK);
    }
    let second = StepUpdate {
        index: 1,
        name: "notify".into(),
        state: StepState::Skipped,
        ..step.clone()
    };
    org.runner_api
        .post_json(&path, &second)
        .await
        .expect_status(StatusCode::OK);
    let details = org.job(&job_id).await;
    assert_eq!(details.steps.len(), 2);
    assert_eq!(details.steps[0], outpost_protocol::StepInfo::from(step));
    assert_eq!(details.steps[1].state, StepState::Skipped);
    // Strict bodies: an unknown field and a wrong type are 400 with the JSON error body.
    let bad = serde_json::json!({"index": 0, "name": "x", "state": "running", "colour": "red"});
    let answer = org.runner_api.post_json(&path, &bad).await;
    let message = answer
        .expect_error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest)
        .error
        .message;
    assert!(message.contains("colour"), "{message}");
    let bad = serde_json::json!({"index": "zero", "name": "x", "state": "running"});
    org.runner_api
        .post_json(&path, &bad)
        .await
        .expect_error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest);
}

#[tokio::test]
async fn an_expired_lease_requeues_an_unstarted_job_and_loses_a_started_one() {
    let hub = TestHub::start(|c| c.lease_ttl_s = 1).await;
    let org = hub.org(&unique("expiry")).await;
    let runner = org.register("r", &[]).await;
    let rescuer = org.register("rescuer", &[]).await;
    let unstarted = org.submit(&[]).await;
    let first = org.acquire(&runner, 0).await.expect("job");
    assert_eq!(first.job_id, unstarted);
    // Never started: back in the queue once the lease runs out, and another runner takes it.
    wait_until("the unstarted job is requeued", || async {
        org.job(&unstarted).await.state == JobState::Queued
    })
    .await;
    let again = org.acquire(&rescuer, 0).await.expect("requeued job");
    assert_eq!(again.job_id, unstarted);
    assert_ne!(again.lease_id, first.lease_id);
    // Started by the rescuer, so its own expiry cannot put it back in the queue below.
    append(
        &org.runner_api,
        &unstarted,
        again.lease_id.as_str(),
        0,
        b"rescued",
    )
    .await
    .expect_status(StatusCode::OK);
    let lost = heartbeat(&org.runner_api, &runner, &[held(&first)], 0).await;
    assert!(lost.jobs[0].lease_lost, "the old lease is gone");
    // Started, then silent: lost with failure class runner_lost.
    let started = org.submit(&[]).await;
    let job = org.acquire(&runner, 0).await.expect("job");
    assert_eq!(job.job_id, started);
    append(
        &org.runner_api,
        &started,
        job.lease_id.as_str(),
        0,
        b"partial",
    )
    .await
    .expect_status(StatusCode::OK);
    wait_until("the started job is lost", || async {
        org.job(&started).await.state == JobState::Lost
    })
    .await;
    let details = org.job(&started).await;
    assert_eq!(
        details.failure.map(|f| f.class),
        Some(FailureClass::RunnerLost)
    );
    let late = heartbeat(&org.runner_api, &runner, &[held(&job)], 0).await;
    assert!(late.jobs[0].lease_lost);
    org.runner_api
        .post_json(
            &paths::job_complete(&started),
            &completion(&job, JobResult::Success, 7),
        )
        .await
        .expect_error(StatusCode::CONFLICT, ErrorCode::InvalidState);
    // The job has ended: the dead runner's late bytes are refused, its replays harmless.
    let closed = append(&org.runner_api, &started, job.lease_id.as_str(), 7, b"!")
        .await
        .expect_error(StatusCode::CONFLICT, ErrorCode::JobEnded);
    assert_eq!(closed.committed, Some(7));
    append(
        &org.runner_api,
        &started,
        job.lease_id.as_str(),
        0,
        b"partial",
    )
    .await
    .expect_status(StatusCode::OK);
}

#[tokio::test]
async fn heartbeats_keep_a_short_lease_alive() {
    let hub = TestHub::start(|c| c.lease_ttl_s = 1).await;
    let org = hub.org(&unique("alive")).await;
    let runner = org.register("r", &[]).await;
    let job_id = org.submit(&[]).await;
    let job = org.acquire(&runner, 0).await.expect("job");
    // Each heartbeat is held for half a lease; five of them outlast the lease twice over.
    let start = Timestamp::now();
    let mut beats = 0;
    while Timestamp::now().unix_millis() - start.unix_millis() < 2_500 {
        let answer = heartbeat(&org.runner_api, &runner, &[held(&job)], 1).await;
        assert!(
            !answer.jobs[0].lease_lost,
            "lease lost after {beats} heartbeats"
        );
        beats += 1;
    }
    assert_eq!(org.job(&job_id).await.state, JobState::Assigned);
}

#[tokio::test]
async fn wait_s_is_bounded_and_bad_bodies_are_json_errors() {
    let hub = TestHub::start(|c| c.max_wait_s = 30).await;
    let org = hub.org(&unique("limits")).await;
    let runner = org.register("r", &[]).await;
    let api = &org.runner_api;
    let over = serde_json::json!({"runner_id": runner, "free_slots": 1, "wait_s": 31});
    let message = api
        .post_json(paths::ACQUIRE, &over)
        .await
        .expect_error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest)
        .error
        .message;
    assert!(message.contains("30"), "{message}");
    let over = serde_json::json!({"runner_id": runner, "jobs": [], "wait_s": 31});
    api.post_json(paths::HEARTBEAT, &over)
        .await
        .expect_error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest);
    let negative = serde_json::json!({"runner_id": runner, "free_slots": 1, "wait_s": -1});
    api.post_json(paths::ACQUIRE, &negative)
        .await
        .expect_error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest);
    let malformed = api
        .raw(
            http::Method::POST,
            paths::ACQUIRE,
            Some("application/json"),
            "{\"runner_id\":",
        )
        .await;
    malformed.expect_error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest);
    let wrong_type = api
        .raw(http::Method::POST, paths::ACQUIRE, Some("text/plain"), "{}")
        .await;
    wrong_type.expect_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, ErrorCode::BadRequest);
    let unknown_runner = serde_json::json!({"runner_id": "r_nope", "free_slots": 1, "wait_s": 0});
    api.post_json(paths::ACQUIRE, &unknown_runner)
        .await
        .expect_error(StatusCode::NOT_FOUND, ErrorCode::NotFound);
    // Unknown job ids.
    api.post_bytes(&paths::job_log("j_nope", "l_nope", 0), Bytes::new())
        .await
        .expect_error(StatusCode::NOT_FOUND, ErrorCode::NotFound);
    org.api
        .get(&paths::job(&org.name, "j_nope"))
        .await
        .expect_error(StatusCode::NOT_FOUND, ErrorCode::NotFound);
}

#[tokio::test]
async fn a_revoked_token_is_refused_on_its_next_call() {
    let hub = TestHub::start(|_| {}).await;
    let org = hub.org(&unique("revoke")).await;
    org.register("r", &[]).await;
    org.api
        .delete(&paths::runner_token(&org.name, &org.token_id))
        .await
        .expect_status(StatusCode::NO_CONTENT);
    let request = outpost_protocol::RegisterRequest {
        name: "r".into(),
        labels: vec![],
        executor: "process".into(),
        version: "0".into(),
        capacity: 1,
    };
    org.runner_api
        .post_json(paths::REGISTER, &request)
        .await
        .expect_error(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized);
}

#[tokio::test]
async fn follow_streams_new_bytes_and_ends_with_the_job() {
    let hub = TestHub::start(|_| {}).await;
    let org = hub.org(&unique("follow")).await;
    let runner = org.register("r", &[]).await;
    let job_id = org.submit(&[]).await;
    let job = org.acquire(&runner, 0).await.expect("job");
    append(&org.runner_api, &job_id, job.lease_id.as_str(), 0, b"one\n")
        .await
        .expect_status(StatusCode::OK);
    let request = org
        .api
        .request(
            http::Method::GET,
            &paths::job_log_read(&org.name, &job_id, 0, true),
        )
        .body(http_body_util::Full::new(Bytes::new()))
        .expect("request");
    let response = org.api.send_streaming(request).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut received = Vec::new();
    let mut next_chunk = async || -> Option<Bytes> {
        loop {
            let frame = tokio::time::timeout(DEADLINE, body.frame())
                .await
                .expect("frame in time")?;
            if let Ok(data) = frame.expect("frame").into_data() {
                return Some(data);
            }
        }
    };
    received.extend_from_slice(&next_chunk().await.expect("first bytes"));
    assert_eq!(received, b"one\n");
    append(&org.runner_api, &job_id, job.lease_id.as_str(), 4, b"two\n")
        .await
        .expect_status(StatusCode::OK);
    received.extend_from_slice(&next_chunk().await.expect("bytes appended while following"));
    assert_eq!(received, b"one\ntwo\n");
    append(
        &org.runner_api,
        &job_id,
        job.lease_id.as_str(),
        8,
        b"three\n",
    )
    .await
    .expect_status(StatusCode::OK);
    org.runner_api
        .post_json(
            &paths::job_complete(&job_id),
            &completion(&job, JobResult::Success, 14),
        )
        .await
        .expect_status(StatusCode::OK);
    while let Some(chunk) = next_chunk().await {
        received.extend_from_slice(&chunk);
    }
    assert_eq!(
        received, b"one\ntwo\nthree\n",
        "the stream ends after the last byte"
    );
}

#[tokio::test]
async fn a_restarted_hub_keeps_everything_and_its_runners_carry_on() {
    let hub = TestHub::start(|c| c.lease_ttl_s = 2).await;
    let admin_key = hub.admin_key.clone();
    let org = hub.org(&unique("restart")).await;
    let runner = org.register("r", &["linux"]).await;
    let job_id = org.submit(&[]).await;
    let queued = org.submit(&[]).await;
    let job = org.acquire(&runner, 0).await.expect("job");
    append(
        &org.runner_api,
        &job_id,
        job.lease_id.as_str(),
        0,
        b"before ",
    )
    .await
    .expect_status(StatusCode::OK);
    let step = StepUpdate {
        index: 0,
        name: "hello".into(),
        state: StepState::Running,
        exit_code: None,
        started_at: None,
        finished_at: None,
        failure: None,
        log_offset: Some(0),
    };
    org.runner_api
        .post_json(&paths::job_steps(&job_id, job.lease_id.as_str()), &step)
        .await
        .expect_status(StatusCode::OK);
    let expires = heartbeat(&org.runner_api, &runner, &[held(&job)], 0)
        .await
        .jobs[0]
        .lease_expires_at
        .expect("lease");
    let (dir, config) = hub.stop().await;
    // Stay down past the lease's end: the downtime must not count against the runner.
    wait_until("the lease's expiry has passed", || async {
        Timestamp::now() > expires
    })
    .await;
    let hub = TestHub::start_with(dir, config).await;
    assert_eq!(
        hub.admin_key, admin_key,
        "the generated admin key is reused"
    );
    let org = common::TestOrg {
        api: hub.api(&org.api_key),
        runner_api: hub.api(&org.runner_token),
        ..org
    };
    let beat = heartbeat(&org.runner_api, &runner, &[held(&job)], 0).await;
    assert!(
        !beat.jobs[0].lease_lost,
        "same runner, same lease after the restart"
    );
    assert_eq!(org.register("r", &["linux"]).await, runner);
    let committed = append(&org.runner_api, &job_id, job.lease_id.as_str(), 0, b"")
        .await
        .json::<LogAppendResponse>()
        .committed;
    assert_eq!(committed, 7);
    append(&org.runner_api, &job_id, job.lease_id.as_str(), 7, b"after")
        .await
        .expect_status(StatusCode::OK);
    org.runner_api
        .post_json(
            &paths::job_complete(&job_id),
            &completion(&job, JobResult::Success, 12),
        )
        .await
        .expect_status(StatusCode::OK);
    let details = org.job(&job_id).await;
    assert_eq!(
        (details.state, details.log_bytes, details.steps.len()),
        (JobState::Success, 12, 1)
    );
    let log = org
        .api
        .get(&paths::job_log_read(&org.name, &job_id, 0, false))
        .await;
    assert_eq!(&log.body[..], b"before after");
    assert_eq!(
        org.acquire(&runner, 0)
            .await
            .map(|j| j.job_id.into_string()),
        Some(queued)
    );
}

#[tokio::test]
async fn shutdown_answers_held_long_polls_at_once() {
    let hub = TestHub::start(|c| c.heartbeat_interval_s = 120).await;
    let org = hub.org(&unique("stop")).await;
    let runner = org.register("r", &[]).await;
    let api = org.runner_api.clone();
    let runner_id = runner.clone();
    let pending = tokio::spawn(async move { acquire(&api, &runner_id, 120).await });
    hub.wait_metric("outpost_hub_acquire_waiting", 1.0).await;
    hub.stop().await;
    let answer = tokio::time::timeout(DEADLINE, pending)
        .await
        .expect("answered")
        .expect("task");
    assert!(answer.is_none(), "a held acquire answers 204 on shutdown");
}

#[tokio::test]
async fn a_heartbeat_held_across_a_revocation_answers_401_and_renews_nothing() {
    use outpost_hub::store::{SqliteStore, Store};

    let hub = TestHub::start(|c| c.heartbeat_interval_s = 20).await;
    let org = hub.org(&unique("held-revoke")).await;
    let runner = org.register("r", &[]).await;
    org.submit(&[]).await;
    let job = org.acquire(&runner, 0).await.expect("job");

    let request = HeartbeatRequest {
        runner_id: runner.as_str().into(),
        jobs: vec![held(&job)],
        wait_s: 20,
    };
    let api = org.runner_api.clone();
    let beat = tokio::spawn(async move { api.post_json(paths::HEARTBEAT, &request).await });
    hub.wait_metric("outpost_hub_heartbeat_waiting", 1.0).await;
    // A second handle on the database: the lease's expiry as the held heartbeat left it when it
    // arrived.
    let db = hub.db();
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(&db))
        .await
        .expect("task")
        .expect("open the store");
    let before = store
        .next_lease_expiry()
        .await
        .expect("read")
        .expect("a live lease");

    org.api
        .delete(&paths::runner_token(&org.name, &org.token_id))
        .await
        .expect_status(StatusCode::NO_CONTENT);
    let answer = tokio::time::timeout(DEADLINE, beat)
        .await
        .expect("the held heartbeat answers")
        .expect("task");
    answer.expect_error(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized);
    let after = store
        .next_lease_expiry()
        .await
        .expect("read")
        .expect("a live lease");
    assert_eq!(after, before, "the revoked heartbeat renewed the lease");
}
