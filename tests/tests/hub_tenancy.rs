//! Tenancy: nothing of one organization is visible to, or changeable by, another. Every admin
//! and runner endpoint is tried with organization B's credentials against organization A's
//! things (404, never 403, and nothing changes), and B's listings never show A's things.

use std::collections::HashSet;

use http::Method;
use outpost_e2e::{job, running_job, step};
use outpost_protocol::{
    AcquireRequest, CompleteRequest, CreateRunnerTokenRequest, ErrorCode, HeartbeatRequest,
    HeartbeatResponse, HeldLease, JobList, JobResult, JobState, RunnerList, RunnerTokenList,
    StepState, paths,
};
use outpost_testkit::{Http, TestHub, TestRunner, held, unique};

/// Who sends a request of the table.
#[derive(Debug, Clone, Copy)]
enum As {
    /// Organization B's API key.
    OrgKey,
    /// Organization B's runner token.
    RunnerToken,
}

/// One request of the table, sent with B's credential; it must answer 404 `not_found`.
struct Case {
    what: &'static str,
    who: As,
    method: Method,
    path: String,
    body: Body,
}

enum Body {
    Empty,
    Json(serde_json::Value),
    Bytes(&'static [u8]),
}

impl Case {
    fn new(what: &'static str, who: As, method: Method, path: String) -> Self {
        Self {
            what,
            who,
            method,
            path,
            body: Body::Empty,
        }
    }

    fn json(mut self, body: impl serde::Serialize) -> Self {
        self.body = Body::Json(serde_json::to_value(body).expect("serializable"));
        self
    }

    fn bytes(mut self, body: &'static [u8]) -> Self {
        self.body = Body::Bytes(body);
        self
    }
}

#[tokio::test]
async fn organization_b_cannot_reach_anything_of_organization_a() {
    let hub = TestHub::start().await;
    let a = hub.create_org(&unique("a")).await;
    let b = hub.create_org(&unique("b")).await;

    // A: a token, a runner with a running job (with log and a step), a queued job.
    let a_token = hub.create_runner_token_with_id(&a, "a's builders").await;
    let a_runner_name = unique("shared-name");
    let a_runner = TestRunner::register(hub.url(), &a_token.token, &a_runner_name, &[]).await;
    let a_running = running_job(&hub, &a, &a_runner).await;
    a_runner
        .append_log_ok(&a_running, 0, "a's secret log\n")
        .await;
    let a_queued = hub.submit(&a, &job(&[])).await;
    let a_before = hub.job(&a, &a_running.job_id).await;

    // B: a key, a token and a runner that registers under the same name as A's runner.
    let b_key = hub.as_org(&b);
    let b_token = hub.create_runner_token_with_id(&b, "b's builders").await;
    let b_runner = TestRunner::register(hub.url(), &b_token.token, &a_runner_name, &[]).await;
    assert_ne!(
        b_runner.runner_id, a_runner.runner_id,
        "a runner name is per organization"
    );
    let b_as_a_runner = TestRunner {
        runner_id: a_runner.runner_id.clone(),
        ..b_runner.clone()
    };

    let (an, bn) = (a.name.as_str(), b.name.as_str());
    let (running, queued) = (a_running.job_id.as_str(), a_queued.as_str());
    let a_lease = a_running.lease_id.as_str();
    let lease = a_running.lease_id.clone();
    let complete = CompleteRequest {
        lease_id: lease.clone(),
        result: JobResult::Success,
        failure: None,
        log_bytes: 15,
    };
    let token_req = CreateRunnerTokenRequest {
        description: "intruder".to_owned(),
    };
    use As::{OrgKey, RunnerToken};
    let cases = vec![
        // Admin endpoints under A's name.
        Case::new(
            "list A's tokens",
            OrgKey,
            Method::GET,
            paths::runner_tokens(an),
        ),
        Case::new(
            "create a token in A",
            OrgKey,
            Method::POST,
            paths::runner_tokens(an),
        )
        .json(&token_req),
        Case::new(
            "revoke A's token",
            OrgKey,
            Method::DELETE,
            paths::runner_token(an, &a_token.id),
        ),
        Case::new("list A's runners", OrgKey, Method::GET, paths::runners(an)),
        Case::new("submit a job to A", OrgKey, Method::POST, paths::jobs(an)).json(job(&[])),
        Case::new("list A's jobs", OrgKey, Method::GET, paths::jobs(an)),
        Case::new(
            "list A's queued jobs",
            OrgKey,
            Method::GET,
            format!("{}?state=queued", paths::jobs(an)),
        ),
        Case::new("read A's job", OrgKey, Method::GET, paths::job(an, running)),
        Case::new(
            "read A's log",
            OrgKey,
            Method::GET,
            paths::job_log_read(an, running, 0, false),
        ),
        Case::new(
            "follow A's log",
            OrgKey,
            Method::GET,
            paths::job_log_read(an, running, 0, true),
        ),
        Case::new(
            "cancel A's queued job",
            OrgKey,
            Method::POST,
            paths::job_cancel(an, queued),
        )
        .json(()),
        Case::new(
            "cancel A's running job",
            OrgKey,
            Method::POST,
            paths::job_cancel(an, running),
        )
        .json(()),
        // A's ids under B's own name.
        Case::new(
            "revoke A's token via B",
            OrgKey,
            Method::DELETE,
            paths::runner_token(bn, &a_token.id),
        ),
        Case::new(
            "read A's job via B",
            OrgKey,
            Method::GET,
            paths::job(bn, running),
        ),
        Case::new(
            "read A's log via B",
            OrgKey,
            Method::GET,
            paths::job_log_read(bn, running, 0, false),
        ),
        Case::new(
            "follow A's log via B",
            OrgKey,
            Method::GET,
            paths::job_log_read(bn, running, 0, true),
        ),
        Case::new(
            "cancel A's queued job via B",
            OrgKey,
            Method::POST,
            paths::job_cancel(bn, queued),
        )
        .json(()),
        Case::new(
            "cancel A's running job via B",
            OrgKey,
            Method::POST,
            paths::job_cancel(bn, running),
        )
        .json(()),
        // Runner endpoints with B's token against A's runner and jobs.
        Case::new(
            "acquire as A's runner",
            RunnerToken,
            Method::POST,
            paths::ACQUIRE.to_owned(),
        )
        .json(AcquireRequest {
            runner_id: a_runner.runner_id.clone(),
            free_slots: 1,
            wait_s: 0,
        }),
        Case::new(
            "heartbeat as A's runner",
            RunnerToken,
            Method::POST,
            paths::HEARTBEAT.to_owned(),
        )
        .json(HeartbeatRequest {
            runner_id: a_runner.runner_id.clone(),
            jobs: vec![held(&a_running)],
            wait_s: 0,
        }),
        Case::new(
            "append to A's log",
            RunnerToken,
            Method::POST,
            paths::job_log(running, a_lease, 15),
        )
        .bytes(b"more"),
        Case::new(
            "probe A's log",
            RunnerToken,
            Method::POST,
            paths::job_log(running, a_lease, 0),
        ),
        Case::new(
            "update A's step",
            RunnerToken,
            Method::POST,
            paths::job_steps(running, a_lease),
        )
        .json(step(0, "build", StepState::Failed)),
        Case::new(
            "complete A's job",
            RunnerToken,
            Method::POST,
            paths::job_complete(running),
        )
        .json(&complete),
        Case::new(
            "complete A's queued job",
            RunnerToken,
            Method::POST,
            paths::job_complete(queued),
        )
        .json(&complete),
    ];

    for case in &cases {
        let http = match case.who {
            OrgKey => b_key.clone(),
            RunnerToken => b_runner.http.clone(),
        };
        let answer = send(&http, case).await;
        let body = answer.error_body();
        assert_eq!(answer.code(), 404, "{}: {answer:?}", case.what);
        assert_eq!(
            body.error.code,
            ErrorCode::NotFound,
            "{}: {answer:?}",
            case.what
        );
        assert!(
            !answer.text().contains("a's secret log"),
            "{}: {answer:?}",
            case.what
        );
    }

    // A heartbeat of B's own runner naming A's job renews nothing and reveals nothing: either
    // refused as unknown, or that lease reported lost.
    let foreign = HeldLease {
        job_id: a_running.job_id.clone(),
        lease_id: lease.clone(),
    };
    let answer = b_runner.heartbeat_response(&[foreign], 0).await;
    match answer.code() {
        404 => assert_eq!(answer.error_body().error.code, ErrorCode::NotFound),
        200 => {
            let beat: HeartbeatResponse = answer.json();
            assert!(
                beat.jobs
                    .iter()
                    .all(|j| j.lease_lost && !j.cancel_requested),
                "{beat:?}"
            );
        }
        _ => panic!("heartbeat naming another org's job: {answer:?}"),
    }
    // B's runner is not handed A's queued job, and cannot act as A's runner.
    assert!(
        b_runner.acquire(0).await.is_none(),
        "B's runner got A's job"
    );
    b_as_a_runner
        .acquire_response(0)
        .await
        .expect_error(404, ErrorCode::NotFound);

    // Nothing of A changed.
    let a_after = hub.job(&a, &a_running.job_id).await;
    assert_eq!(a_after.state, JobState::Running);
    assert_eq!(a_after.log_bytes, a_before.log_bytes);
    assert_eq!(a_after.steps, a_before.steps);
    assert_eq!(hub.log(&a, &a_running.job_id).await, b"a's secret log\n");
    assert_eq!(hub.job(&a, &a_queued).await.state, JobState::Queued);
    let beat = a_runner.heartbeat(&[held(&a_running)], 0).await;
    assert!(
        !beat.jobs[0].lease_lost && !beat.jobs[0].cancel_requested,
        "{beat:?}"
    );
    let a_tokens: RunnerTokenList = hub
        .as_org(&a)
        .get(&paths::runner_tokens(an))
        .await
        .expect(200)
        .json();
    assert_eq!(
        a_tokens.tokens.len(),
        1,
        "B created a token in A: {a_tokens:?}"
    );
    assert_eq!(a_tokens.tokens[0].revoked_at, None, "B revoked A's token");
    let a_jobs: JobList = hub
        .as_org(&a)
        .get(&paths::jobs(an))
        .await
        .expect(200)
        .json();
    assert_eq!(a_jobs.jobs.len(), 2, "B submitted a job to A: {a_jobs:?}");
    // A's token still works, and A's runner gets A's queued job.
    assert_eq!(
        a_runner.acquire(0).await.map(|j| j.job_id.into_string()),
        Some(a_queued.clone())
    );
    a_runner
        .complete(&a_running.job_id, &complete)
        .await
        .expect(200);

    // B's listings show only B's things.
    let b_tokens: RunnerTokenList = b_key
        .get(&paths::runner_tokens(bn))
        .await
        .expect(200)
        .json();
    let ids: HashSet<String> = b_tokens.tokens.into_iter().map(|t| t.id).collect();
    assert_eq!(ids, HashSet::from([b_token.id.clone()]));
    let b_runners: RunnerList = b_key.get(&paths::runners(bn)).await.expect(200).json();
    let ids: Vec<String> = b_runners
        .runners
        .into_iter()
        .map(|r| r.runner_id.into_string())
        .collect();
    assert_eq!(ids, vec![b_runner.runner_id.clone()]);
    let b_jobs: JobList = b_key.get(&paths::jobs(bn)).await.expect(200).json();
    assert!(b_jobs.jobs.is_empty(), "B sees jobs: {b_jobs:?}");

    // Positive control: A's own key reaches every one of A's things that the table tried.
    let a_key = hub.as_org(&a);
    for path in [
        paths::runner_tokens(an),
        paths::runners(an),
        paths::jobs(an),
        paths::job(an, running),
        paths::job_log_read(an, running, 0, false),
    ] {
        a_key.get(&path).await.expect(200);
    }
}

async fn send(http: &Http, case: &Case) -> outpost_testkit::Response {
    match (&case.method, &case.body) {
        (&Method::GET, _) => http.get(&case.path).await,
        (&Method::DELETE, _) => http.delete(&case.path).await,
        (_, Body::Json(body)) => http.post_json(&case.path, body).await,
        (_, Body::Bytes(bytes)) => http.post_bytes(&case.path, *bytes).await,
        (_, Body::Empty) => http.post_bytes(&case.path, Vec::new()).await,
    }
}

#[tokio::test]
async fn an_org_key_is_refused_with_404_for_another_org_even_when_that_org_does_not_exist() {
    let hub = TestHub::start().await;
    let b = hub.create_org(&unique("b")).await;
    let missing = unique("never-created");
    // Whether the other org exists must not be observable: same answer as for an existing one.
    for path in [
        paths::jobs(&missing),
        paths::runners(&missing),
        paths::runner_tokens(&missing),
    ] {
        hub.as_org(&b)
            .get(&path)
            .await
            .expect_error(404, ErrorCode::NotFound);
    }
    let a = hub.create_org(&unique("a")).await;
    for path in [
        paths::jobs(&a.name),
        paths::runners(&a.name),
        paths::runner_tokens(&a.name),
    ] {
        hub.as_org(&b)
            .get(&path)
            .await
            .expect_error(404, ErrorCode::NotFound);
    }
}
