//! Input the hub now refuses (issue 10, finding 7): organization names that are not lowercase
//! RFC 1123 labels (`.`, `..`, `-rf`, `OrgA`), integers beyond the protocol's range (a step's
//! `log_offset` above 2^63−1), and variables no runner could apply (NUL, huge values).

use outpost_e2e::{PIPELINE, assigned_job, org_with_runner, step};
use outpost_protocol::{
    CompleteRequest, CreateOrgRequest, ErrorCode, JobResult, StepState, SubmitJobRequest, paths,
};
use outpost_testkit::TestHub;

#[tokio::test]
async fn new_organizations_are_named_by_lowercase_rfc_1123_labels() {
    let hub = TestHub::start().await;
    let create = |name: String| {
        let admin = hub.admin();
        async move {
            admin
                .post_json(paths::ORGS, &CreateOrgRequest { name })
                .await
        }
    };
    for name in [
        ".",
        "..",
        "-rf",
        "OrgA",
        "a_b",
        "a.b",
        "-a",
        "a-",
        "",
        "a b",
        "ünï",
        &"a".repeat(64),
    ] {
        let answer = create(name.to_owned()).await;
        let body = answer.expect_error(422, ErrorCode::Unprocessable);
        assert!(
            body.error.message.contains("organization name"),
            "{name:?}: {answer:?}"
        );
    }
    for name in ["acme", "acme-2", "a", "0rg", &"a".repeat(63)] {
        create(name.to_owned()).await.expect(201);
    }
    // Upper case is refused, so `orga` and `ORGA` can never be two organizations.
    create("orga".to_owned()).await.expect(201);
    create("ORGA".to_owned())
        .await
        .expect_error(422, ErrorCode::Unprocessable);
}

#[tokio::test]
async fn integers_beyond_the_protocols_range_are_400() {
    let hub = TestHub::start().await;
    let (org, runner) = org_with_runner(&hub).await;
    let job = assigned_job(&hub, &org, &runner).await;
    let too_big = (i64::MAX as u64) + 1;

    let mut update = step(0, "build", StepState::Running);
    update.log_offset = Some(too_big);
    let answer = runner.step(&job, &update).await;
    let body = answer.expect_error(400, ErrorCode::BadRequest);
    assert!(body.error.message.contains("log_offset"), "{answer:?}");
    update.log_offset = Some(i64::MAX as u64);
    runner.step(&job, &update).await.expect(200);

    let answer = runner.append_log(&job, too_big, "x").await;
    let body = answer.expect_error(400, ErrorCode::BadRequest);
    assert!(body.error.message.contains("offset"), "{answer:?}");

    let complete = CompleteRequest {
        lease_id: job.lease_id.clone(),
        result: JobResult::Success,
        failure: None,
        log_bytes: too_big,
    };
    let answer = runner.complete(&job.job_id, &complete).await;
    let body = answer.expect_error(400, ErrorCode::BadRequest);
    assert!(body.error.message.contains("log_bytes"), "{answer:?}");
}

#[tokio::test]
async fn variables_no_runner_could_apply_are_refused_at_submit() {
    let hub = TestHub::start().await;
    let (org, _runner) = org_with_runner(&hub).await;
    let submit = |variables: Vec<(String, String)>| {
        let http = hub.as_org(&org);
        let request = SubmitJobRequest {
            pipeline: Some(PIPELINE.to_owned()),
            variables: variables.into_iter().collect(),
            ..SubmitJobRequest::default()
        };
        let path = paths::jobs(&org.name);
        async move { http.post_json(&path, &request).await }
    };
    let cases: Vec<(Vec<(String, String)>, &str)> = vec![
        (vec![("A\0B".into(), "x".into())], "NUL"),
        (vec![("A".into(), "x\0y".into())], "NUL"),
        (vec![("BIG".into(), "v".repeat(900_000))], "BIG"),
        (vec![("A=B".into(), "x".into())], "A=B"),
        (vec![(String::new(), "x".into())], "variable"),
        (
            (0..300).map(|i| (format!("V{i}"), "x".into())).collect(),
            "variables",
        ),
    ];
    for (variables, needle) in cases {
        let answer = submit(variables).await;
        let body = answer.expect_error(422, ErrorCode::Unprocessable);
        assert!(body.error.message.contains(needle), "{needle}: {answer:?}");
    }
    submit(vec![
        ("RUST_LOG".into(), "info".into()),
        ("MULTI_LINE".into(), "a\nb".into()),
        ("NOT_SHELL-SAFE".into(), "ok".into()),
    ])
    .await
    .expect(201);
}
