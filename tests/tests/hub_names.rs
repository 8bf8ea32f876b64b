//! What runners send to be shown to people is checked by the hub (issue 10, finding 5): runner
//! names, executor and version, labels, step names and failure messages have length limits and
//! no control characters (`422` naming the field), so a runner cannot forge lines in the hub's
//! log or drive a terminal that shows them.

use outpost_e2e::{assigned_job, org_with_runner, step};
use outpost_protocol::{
    CompleteRequest, ErrorCode, Failure, FailureClass, JobResult, RegisterRequest, StepState, paths,
};
use outpost_testkit::{Response, TestHub, TestRunner, unique};

#[track_caller]
fn refused(answer: &Response, field: &str) {
    let body = answer.expect_error(422, ErrorCode::Unprocessable);
    assert!(
        body.error.message.contains(&format!("`{field}`")),
        "the refusal does not name `{field}`: {answer:?}"
    );
}

#[tokio::test]
async fn registration_refuses_names_and_labels_with_control_characters_or_too_long() {
    let hub = TestHub::start().await;
    let org = hub.create_org(&unique("org")).await;
    let token = hub.create_runner_token(&org).await;
    let http = hub.http().bearer(&token);
    let forged = "INFO outpost_hub: forged line from a runner";
    let long = "x".repeat(500_000);
    let request = |name: &str, labels: &[&str]| RegisterRequest {
        labels: labels.iter().map(|l| (*l).to_owned()).collect(),
        ..TestRunner::register_request(name, &[])
    };
    let cases: Vec<(RegisterRequest, &str)> = vec![
        (request(&format!("evil\n{forged}"), &[]), "name"),
        (request("\x1b]0;pwned\x07", &[]), "name"),
        (request(&long, &[]), "name"),
        (request("", &[]), "name"),
        (request(" padded ", &[]), "name"),
        (request("ok", &["linux", "\x1b[31mred"]), "labels"),
        (request("ok", &["linux", &"l".repeat(200)]), "labels"),
        (
            RegisterRequest {
                executor: "docker\r\nX-Forged: 1".to_owned(),
                ..request("ok", &[])
            },
            "executor",
        ),
        (
            RegisterRequest {
                version: "v".repeat(1000),
                ..request("ok", &[])
            },
            "version",
        ),
    ];
    for (request, field) in &cases {
        let answer = http.post_json(paths::REGISTER, request).await;
        refused(&answer, field);
    }
    // A fine name still registers, and nothing of the refused ones reached the hub's log.
    TestRunner::register(hub.url(), &token, "builder-1 (rack 3)", &["linux"]).await;
    let log = std::fs::read_to_string(hub.stderr_path()).expect("hub stderr");
    assert!(
        !log.lines().any(|line| line.starts_with(forged)),
        "a runner forged a line in the hub's log:\n{log}"
    );
    assert!(
        !log.contains('\x1b'),
        "an escape sequence reached the hub's log"
    );
}

#[tokio::test]
async fn step_names_and_failure_messages_are_checked() {
    let hub = TestHub::start().await;
    let (org, runner) = org_with_runner(&hub).await;
    let job = assigned_job(&hub, &org, &runner).await;

    let cases = [
        (step(0, "", StepState::Running), "name"),
        (step(0, &"s".repeat(500_000), StepState::Running), "name"),
        (step(0, "\x1b[2J\x1b[Hall good", StepState::Running), "name"),
        (
            outpost_protocol::StepUpdate {
                failure: Some(Failure::new(FailureClass::Script, "\x1b]0;owned\x07exit 2")),
                ..step(0, "build", StepState::Failed)
            },
            "failure.message",
        ),
        (
            outpost_protocol::StepUpdate {
                failure: Some(Failure::new(FailureClass::Script, "m".repeat(100_000))),
                ..step(0, "build", StepState::Failed)
            },
            "failure.message",
        ),
    ];
    for (update, field) in &cases {
        refused(&runner.step(&job, update).await, field);
    }
    assert!(hub.job(&org, &job.job_id).await.steps.is_empty());

    // A multi-line message (a tool's stderr) is fine; so is a name with spaces and Unicode.
    let fine = outpost_protocol::StepUpdate {
        failure: Some(Failure::new(
            FailureClass::Script,
            "exit 2:\n\terror: build failed",
        )),
        ..step(0, "build → test", StepState::Failed)
    };
    runner.step(&job, &fine).await.expect(200);

    let forged = CompleteRequest {
        lease_id: job.lease_id.clone(),
        result: JobResult::Failed,
        failure: Some(Failure::new(
            FailureClass::Script,
            "done\x1b[1A\x1b[2K✔ success",
        )),
        log_bytes: 0,
    };
    refused(
        &runner.complete(&job.job_id, &forged).await,
        "failure.message",
    );
    let honest = CompleteRequest {
        failure: Some(Failure::new(
            FailureClass::Script,
            "step `build` exited with 2",
        )),
        ..forged
    };
    runner.complete(&job.job_id, &honest).await.expect(200);
}
