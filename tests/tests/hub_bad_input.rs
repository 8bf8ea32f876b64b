//! Bad input against the real hub: malformed JSON, wrong types, unknown fields, oversized
//! bodies, unknown ids, wrong leases, impossible offsets and waits. Each is a 4xx with the
//! JSON error body (never a 5xx, never a hang), and none changes anything.

use outpost_e2e::{assigned_job, org_with_runner, step};
use outpost_protocol::{
    CompleteRequest, ErrorCode, JobResult, JobState, MAX_LOG_CHUNK, StepState, paths,
};
use outpost_testkit::{Http, Response, TestHub, TestRunner};
use serde_json::json;

/// Which error a case must produce: an exact one, or any fitting 4xx.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Exactly(u16, ErrorCode),
    Any4xx,
}

fn check(what: &str, answer: &Response, expect: Expect) {
    assert!(
        !answer.status.is_server_error(),
        "{what}: a 5xx for bad input: {answer:?}"
    );
    match expect {
        Expect::Exactly(status, code) => {
            assert_eq!(answer.code(), status, "{what}: {answer:?}");
            let body = answer.error_body();
            assert_eq!(body.error.code, code, "{what}: {answer:?}");
            assert!(
                !body.error.message.is_empty(),
                "{what}: no message: {answer:?}"
            );
        }
        Expect::Any4xx => {
            assert!(answer.status.is_client_error(), "{what}: {answer:?}");
            let body = answer.error_body();
            assert_eq!(
                body.error.code.status(),
                answer.code(),
                "{what}: code vs status: {answer:?}"
            );
            assert!(
                !body.error.message.is_empty(),
                "{what}: no message: {answer:?}"
            );
        }
    }
}

async fn raw_json(http: &Http, path: &str, body: &'static str) -> Response {
    http.post_raw(path, "application/json", body).await
}

#[tokio::test]
async fn bad_runner_requests_are_4xx_with_an_error_body_and_change_nothing() {
    // A small wait cap: a hub that caps an absurd wait instead of refusing it fails fast.
    let hub = TestHub::builder().max_wait_s(3).start().await;
    let (org, runner) = org_with_runner(&hub).await;
    let job = assigned_job(&hub, &org, &runner).await;
    let id = job.job_id.as_str();
    runner.append_log_ok(&job, 0, "0123456789").await;
    let r = &runner.http;
    let rid = runner.runner_id.as_str();
    use Expect::{Any4xx, Exactly};
    let bad_request = Exactly(400, ErrorCode::BadRequest);
    let not_found = Exactly(404, ErrorCode::NotFound);

    let register = paths::REGISTER;
    let acquire = paths::ACQUIRE;
    let heartbeat = paths::HEARTBEAT;
    let lease = job.lease_id.as_str();
    let steps = paths::job_steps(id, lease);
    let steps = steps.as_str();
    let steps_without_lease = format!("/api/v1/runner/jobs/{id}/steps");
    let steps_other_lease = paths::job_steps(id, "l_00000000000000000000");
    let complete = paths::job_complete(id);
    let complete = complete.as_str();
    let unknown_steps = paths::job_steps("no-such-job", lease);
    let unknown_complete = paths::job_complete("no-such-job");
    let json_cases: Vec<(&str, &str, String, Expect)> = vec![
        ("register: malformed json", register, r#"{"name": "#.into(), bad_request),
        ("register: empty body", register, String::new(), Any4xx),
        ("register: not an object", register, "[1, 2]".into(), Any4xx),
        (
            "register: wrong type",
            register,
            r#"{"name": 5, "labels": [], "executor": "process", "version": "1", "capacity": 1}"#
                .into(),
            Any4xx,
        ),
        (
            "register: unknown field",
            register,
            r#"{"name": "n", "labels": [], "executor": "process", "version": "1", "capacity": 1, "admin": true}"#
                .into(),
            Any4xx,
        ),
        ("register: missing fields", register, r#"{"name": "n"}"#.into(), Any4xx),
        (
            "register: negative capacity",
            register,
            r#"{"name": "n", "labels": [], "executor": "process", "version": "1", "capacity": -1}"#
                .into(),
            Any4xx,
        ),
        ("acquire: malformed json", acquire, "{".into(), bad_request),
        (
            "acquire: wait_s as a string",
            acquire,
            format!(r#"{{"runner_id": "{rid}", "free_slots": 1, "wait_s": "10"}}"#),
            Any4xx,
        ),
        (
            "acquire: negative wait_s",
            acquire,
            format!(r#"{{"runner_id": "{rid}", "free_slots": 1, "wait_s": -1}}"#),
            Any4xx,
        ),
        (
            "acquire: absurd wait_s",
            acquire,
            format!(r#"{{"runner_id": "{rid}", "free_slots": 1, "wait_s": {}}}"#, u64::MAX),
            Any4xx,
        ),
        (
            "acquire: wait_s beyond u64",
            acquire,
            format!(r#"{{"runner_id": "{rid}", "free_slots": 1, "wait_s": 1e40}}"#),
            Any4xx,
        ),
        (
            "acquire: unknown field",
            acquire,
            format!(r#"{{"runner_id": "{rid}", "free_slots": 1, "wait_s": 0, "org": "x"}}"#),
            Any4xx,
        ),
        (
            "acquire: unknown runner",
            acquire,
            r#"{"runner_id": "no-such-runner", "free_slots": 1, "wait_s": 0}"#.into(),
            not_found,
        ),
        ("heartbeat: malformed json", heartbeat, r#"{"runner_id"#.into(), bad_request),
        (
            "heartbeat: absurd wait_s",
            heartbeat,
            format!(r#"{{"runner_id": "{rid}", "jobs": [], "wait_s": {}}}"#, u64::MAX),
            Any4xx,
        ),
        (
            "heartbeat: jobs not a list",
            heartbeat,
            format!(r#"{{"runner_id": "{rid}", "jobs": "{id}", "wait_s": 0}}"#),
            Any4xx,
        ),
        (
            "heartbeat: unknown runner",
            heartbeat,
            r#"{"runner_id": "no-such-runner", "jobs": [], "wait_s": 0}"#.into(),
            not_found,
        ),
        ("steps: malformed json", steps, "{{".into(), bad_request),
        (
            "steps: unknown state",
            steps,
            r#"{"index": 0, "name": "build", "state": "exploded"}"#.into(),
            Any4xx,
        ),
        (
            "steps: negative index",
            steps,
            r#"{"index": -1, "name": "build", "state": "running"}"#.into(),
            Any4xx,
        ),
        (
            "steps: unknown field",
            steps,
            r#"{"index": 0, "name": "build", "state": "running", "color": "red"}"#.into(),
            Any4xx,
        ),
        (
            "steps: no lease id",
            &steps_without_lease,
            r#"{"index": 0, "name": "build", "state": "running"}"#.into(),
            bad_request,
        ),
        (
            "steps: another lease",
            &steps_other_lease,
            r#"{"index": 0, "name": "build", "state": "running"}"#.into(),
            Exactly(409, ErrorCode::LeaseMismatch),
        ),
        (
            "steps: unknown job",
            &unknown_steps,
            r#"{"index": 0, "name": "build", "state": "running"}"#.into(),
            not_found,
        ),
        ("complete: malformed json", complete, "nope".into(), bad_request),
        (
            "complete: unknown result",
            complete,
            format!(r#"{{"lease_id": "{}", "result": "great", "log_bytes": 10}}"#, job.lease_id),
            Any4xx,
        ),
        (
            "complete: missing log_bytes",
            complete,
            format!(r#"{{"lease_id": "{}", "result": "success"}}"#, job.lease_id),
            Any4xx,
        ),
        (
            "complete: wrong lease",
            complete,
            r#"{"lease_id": "not-the-lease", "result": "success", "log_bytes": 10}"#.into(),
            Exactly(409, ErrorCode::LeaseMismatch),
        ),
        (
            "complete: unknown job",
            &unknown_complete,
            format!(r#"{{"lease_id": "{}", "result": "success", "log_bytes": 0}}"#, job.lease_id),
            not_found,
        ),
    ];
    for (what, path, body, expect) in json_cases {
        let answer = r.post_raw(path, "application/json", body).await;
        check(what, &answer, expect);
    }

    let log_cases: Vec<(&str, String, Vec<u8>, Expect)> = vec![
        (
            "log: no offset",
            format!("/api/v1/runner/jobs/{id}/log"),
            b"x".to_vec(),
            bad_request,
        ),
        (
            "log: offset not a number",
            format!("/api/v1/runner/jobs/{id}/log?offset=ten"),
            b"x".to_vec(),
            bad_request,
        ),
        (
            "log: negative offset",
            format!("/api/v1/runner/jobs/{id}/log?offset=-1"),
            b"x".to_vec(),
            bad_request,
        ),
        (
            "log: no lease id",
            format!("/api/v1/runner/jobs/{id}/log?offset=10"),
            b"x".to_vec(),
            bad_request,
        ),
        (
            "log: another lease",
            paths::job_log(id, "l_00000000000000000000", 10),
            b"x".to_vec(),
            Exactly(409, ErrorCode::LeaseMismatch),
        ),
        (
            "log: unknown job",
            paths::job_log("no-such-job", lease, 0),
            b"x".to_vec(),
            not_found,
        ),
        (
            "log: oversized chunk",
            paths::job_log(id, lease, 10),
            vec![b'x'; MAX_LOG_CHUNK + 1],
            Exactly(413, ErrorCode::PayloadTooLarge),
        ),
        (
            "log: far past committed",
            paths::job_log(id, lease, u64::MAX),
            b"x".to_vec(),
            Any4xx,
        ),
    ];
    for (what, path, body, expect) in log_cases {
        let answer = r.post_bytes(&path, body).await;
        check(what, &answer, expect);
    }

    // Nothing changed: the log, the state, the steps, and the runner carries on normally.
    let details = hub.job(&org, id).await;
    assert_eq!(details.state, JobState::Running);
    assert_eq!(details.log_bytes, 10);
    assert!(details.steps.is_empty(), "{details:?}");
    assert_eq!(hub.log(&org, id).await, b"0123456789");
    runner
        .step(&job, &step(0, "build", StepState::Running))
        .await
        .expect(200);
    let done = CompleteRequest {
        lease_id: job.lease_id.clone(),
        result: JobResult::Success,
        failure: None,
        log_bytes: 10,
    };
    runner.complete(id, &done).await.expect(200);
    hub.http().get(paths::HEALTHZ).await.expect(200);
}

#[tokio::test]
async fn bad_admin_requests_are_4xx_with_an_error_body_and_change_nothing() {
    let hub = TestHub::start().await;
    let (org, runner) = org_with_runner(&hub).await;
    let job = assigned_job(&hub, &org, &runner).await;
    runner.append_log_ok(&job, 0, "abc").await;
    let o = hub.as_org(&org);
    let admin = hub.admin();
    let n = org.name.as_str();
    let id = job.job_id.as_str();
    use Expect::{Any4xx, Exactly};
    let bad_request = Exactly(400, ErrorCode::BadRequest);
    let not_found = Exactly(404, ErrorCode::NotFound);

    check(
        "orgs: malformed json",
        &raw_json(&admin, paths::ORGS, "{\"name\":").await,
        bad_request,
    );
    check(
        "orgs: wrong type",
        &admin.post_json(paths::ORGS, &json!({"name": 7})).await,
        Any4xx,
    );
    check(
        "orgs: unknown field",
        &admin
            .post_json(paths::ORGS, &json!({"name": "x-y", "plan": "gold"}))
            .await,
        Any4xx,
    );
    check(
        "orgs: empty name",
        &admin.post_json(paths::ORGS, &json!({"name": ""})).await,
        Any4xx,
    );
    check(
        "orgs: slash in name",
        &admin.post_json(paths::ORGS, &json!({"name": "a/b"})).await,
        Any4xx,
    );

    let tokens = paths::runner_tokens(n);
    check(
        "tokens: malformed json",
        &raw_json(&o, &tokens, "{").await,
        bad_request,
    );
    check(
        "tokens: unknown field",
        &o.post_json(&tokens, &json!({"description": "d", "admin": true}))
            .await,
        Any4xx,
    );
    check(
        "tokens: wrong type",
        &o.post_json(&tokens, &json!({"description": ["d"]})).await,
        Any4xx,
    );

    let jobs = paths::jobs(n);
    check(
        "jobs: malformed json",
        &raw_json(&o, &jobs, "{\"pipeline\": \"x").await,
        bad_request,
    );
    check(
        "jobs: labels not a list",
        &o.post_json(
            &jobs,
            &json!({"pipeline": outpost_e2e::PIPELINE, "labels": "gpu"}),
        )
        .await,
        Any4xx,
    );
    check(
        "jobs: variables not strings",
        &o.post_json(
            &jobs,
            &json!({"pipeline": outpost_e2e::PIPELINE, "variables": {"A": [1]}}),
        )
        .await,
        Any4xx,
    );
    check(
        "jobs: unknown field",
        &o.post_json(
            &jobs,
            &json!({"pipeline": outpost_e2e::PIPELINE, "priority": 9}),
        )
        .await,
        Any4xx,
    );
    let huge = "#".repeat(2 * 1024 * 1024);
    check(
        "jobs: oversized body",
        &o.post_json(&jobs, &json!({ "pipeline": huge })).await,
        Exactly(413, ErrorCode::PayloadTooLarge),
    );

    check(
        "job: unknown id",
        &o.get(&paths::job(n, "no-such-job")).await,
        not_found,
    );
    check(
        "log: unknown id",
        &o.get(&paths::job_log_read(n, "no-such-job", 0, false))
            .await,
        not_found,
    );
    check(
        "cancel: unknown id",
        &o.post_json(&paths::job_cancel(n, "no-such-job"), &()).await,
        not_found,
    );
    check(
        "token: unknown id",
        &o.delete(&paths::runner_token(n, "no-such-token")).await,
        not_found,
    );
    check(
        "org: unknown",
        &admin.get(&paths::jobs("no-such-org-anywhere")).await,
        not_found,
    );
    check(
        "log: offset past end",
        &o.get(&paths::job_log_read(n, id, 4, false)).await,
        Any4xx,
    );
    check(
        "log: offset not a number",
        &o.get(&format!("/api/v1/orgs/{n}/jobs/{id}/log?offset=x"))
            .await,
        bad_request,
    );
    check(
        "route: unknown",
        &o.get("/api/v1/nothing-here").await,
        not_found,
    );

    // The log at its end offset is empty, not an error.
    let at_end = o.get(&paths::job_log_read(n, id, 3, false)).await;
    assert!(at_end.expect(200).body.is_empty(), "{at_end:?}");

    // Nothing changed.
    let listed: outpost_protocol::JobList = o.get(&jobs).await.expect(200).json();
    assert_eq!(
        listed.jobs.len(),
        1,
        "a bad submission created a job: {listed:?}"
    );
    assert_eq!(hub.job(&org, id).await.state, JobState::Running);
    assert_eq!(hub.log(&org, id).await, b"abc");
    let orgs_ok = TestRunner::register(hub.url(), &runner.token, &runner.name, &[]).await;
    assert_eq!(orgs_ok.runner_id, runner.runner_id);
    hub.http().get(paths::HEALTHZ).await.expect(200);
}
