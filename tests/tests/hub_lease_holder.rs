//! Writes to a job come from its lease holder only (issue 10, finding 3): log appends and step
//! updates carry the lease id; another runner of the same organization is refused, and a job
//! that has ended has its log and steps closed (a replay of committed bytes stays harmless).

use outpost_e2e::{assigned_job, step};
use outpost_protocol::{ErrorCode, JobResult, JobState, LogAppendResponse, StepState};
use outpost_testkit::{TestHub, TestRunner, unique};

fn log_path(job: &str, lease: Option<&str>, offset: u64) -> String {
    match lease {
        Some(lease) => format!("/api/v1/runner/jobs/{job}/log?offset={offset}&lease_id={lease}"),
        None => format!("/api/v1/runner/jobs/{job}/log?offset={offset}"),
    }
}

fn steps_path(job: &str, lease: Option<&str>) -> String {
    match lease {
        Some(lease) => format!("/api/v1/runner/jobs/{job}/steps?lease_id={lease}"),
        None => format!("/api/v1/runner/jobs/{job}/steps"),
    }
}

#[tokio::test]
async fn only_the_lease_holder_writes_and_an_ended_job_is_closed() {
    let hub = TestHub::start().await;
    let org = hub.create_org(&unique("org")).await;
    let holder = hub.register_runner(&org, &unique("holder"), &[]).await;
    let other = hub.register_runner(&org, &unique("other"), &[]).await;
    let job = assigned_job(&hub, &org, &holder).await;
    let (id, lease) = (job.job_id.as_str(), job.lease_id.as_str());

    // The holder writes with its lease.
    let committed: LogAppendResponse = holder
        .http
        .post_bytes(&log_path(id, Some(lease), 0), "hello\n")
        .await
        .expect(200)
        .json();
    assert_eq!(committed.committed, 6);
    holder
        .http
        .post_json(
            &steps_path(id, Some(lease)),
            &step(0, "build", StepState::Running),
        )
        .await
        .expect(200);

    // Another runner of the same org: without a lease, with a made-up one, or with none at all.
    let forged = "l_00000000000000000000";
    for lease in [None, Some(forged)] {
        let status = if lease.is_none() { 400 } else { 409 };
        let answer = other
            .http
            .post_bytes(&log_path(id, lease, 6), "INJECTED: tests passed\n")
            .await;
        assert_eq!(answer.code(), status, "{lease:?}: {answer:?}");
        let answer = other
            .http
            .post_json(
                &steps_path(id, lease),
                &step(0, "build", StepState::Success),
            )
            .await;
        assert_eq!(answer.code(), status, "{lease:?}: {answer:?}");
    }
    other
        .http
        .post_bytes(&log_path(id, Some(forged), 6), "x")
        .await
        .expect_error(409, ErrorCode::LeaseMismatch);

    holder
        .complete(
            id,
            &TestRunner::completion(&job, JobResult::Failed, None, 6),
        )
        .await
        .expect(200);

    // Ended: even the holder adds nothing more, but a replay of committed bytes is harmless.
    let closed = holder
        .http
        .post_bytes(&log_path(id, Some(lease), 6), "late\n")
        .await
        .expect_error(409, ErrorCode::JobEnded);
    assert_eq!(closed.committed, Some(6), "{closed:?}");
    let replay: LogAppendResponse = holder
        .http
        .post_bytes(&log_path(id, Some(lease), 0), "hello\n")
        .await
        .expect(200)
        .json();
    assert_eq!(replay.committed, 6);
    holder
        .http
        .post_json(
            &steps_path(id, Some(lease)),
            &step(0, "build", StepState::Success),
        )
        .await
        .expect_error(409, ErrorCode::JobEnded);

    let details = hub.job(&org, id).await;
    assert_eq!(details.state, JobState::Failed);
    assert_eq!(hub.log(&org, id).await, b"hello\n");
    assert_eq!(details.steps.len(), 1, "{details:#?}");
    assert_eq!(details.steps[0].state, StepState::Running, "{details:#?}");
}
