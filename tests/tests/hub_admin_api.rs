//! The admin side of the hub's API over HTTP against the real `outpost-hub` process:
//! organizations and keys, runner tokens and revocation, runners, job submission, listing,
//! details.

use std::collections::BTreeMap;

use outpost_e2e::{PIPELINE, job, org_with_runner, running_job};
use outpost_protocol::{
    CreateOrgRequest, CreateOrgResponse, ErrorCode, GitSource, JobList, JobResult, JobState,
    RunnerList, RunnerTokenList, Source, SubmitJobRequest, paths,
};
use outpost_testkit::{TestHub, TestRunner, held, unique};

#[tokio::test]
async fn organizations_are_created_with_the_admin_key_only() {
    let hub = TestHub::start().await;
    let name = unique("org");
    let answer = hub
        .admin()
        .post_json(paths::ORGS, &CreateOrgRequest { name: name.clone() })
        .await;
    let created: CreateOrgResponse = answer.expect(201).json();
    assert_eq!(created.name, name);
    assert!(
        created.api_key.len() >= 16,
        "a guessable api key: {answer:?}"
    );
    assert_ne!(created.api_key, hub.admin_key());

    // The same name again.
    let again = hub
        .admin()
        .post_json(paths::ORGS, &CreateOrgRequest { name: name.clone() })
        .await;
    again.expect_error(409, ErrorCode::AlreadyExists);
    // An org key may not create orgs; no key or a wrong key is not a credential at all.
    let other = CreateOrgRequest {
        name: unique("org"),
    };
    let org_key = hub.http().bearer(created.api_key.clone());
    org_key
        .post_json(paths::ORGS, &other)
        .await
        .expect_error(403, ErrorCode::Forbidden);
    hub.http()
        .post_json(paths::ORGS, &other)
        .await
        .expect_error(401, ErrorCode::Unauthorized);
    let wrong = hub.http().bearer(format!("{}x", hub.admin_key()));
    wrong
        .post_json(paths::ORGS, &other)
        .await
        .expect_error(401, ErrorCode::Unauthorized);
    // None of the refused requests created the org.
    let absent = hub.admin().get(&paths::jobs(&other.name)).await;
    absent.expect_error(404, ErrorCode::NotFound);

    // The org key and the admin key both work on the org; nothing else does.
    let jobs: JobList = org_key.get(&paths::jobs(&name)).await.expect(200).json();
    assert!(jobs.jobs.is_empty(), "{jobs:?}");
    let jobs: JobList = hub
        .admin()
        .get(&paths::jobs(&name))
        .await
        .expect(200)
        .json();
    assert!(jobs.jobs.is_empty(), "{jobs:?}");
    hub.http()
        .get(&paths::jobs(&name))
        .await
        .expect_error(401, ErrorCode::Unauthorized);
    wrong
        .get(&paths::jobs(&name))
        .await
        .expect_error(401, ErrorCode::Unauthorized);
    // An org key is not a runner token, nor the other way round.
    let as_runner = org_key
        .post_json(paths::REGISTER, &TestRunner::register_request("r", &[]))
        .await;
    as_runner.expect_error(401, ErrorCode::Unauthorized);
    let org = outpost_testkit::Org {
        name: name.clone(),
        api_key: created.api_key.clone(),
    };
    let token = hub.create_runner_token(&org).await;
    let token_as_key = hub.http().bearer(token).get(&paths::jobs(&name)).await;
    token_as_key.expect_error(401, ErrorCode::Unauthorized);
}

#[tokio::test]
async fn runner_tokens_are_listed_without_secrets_and_revocation_is_immediate() {
    let hub = TestHub::start().await;
    let org = hub.create_org(&unique("org")).await;
    let builders = hub.create_runner_token_with_id(&org, "builders").await;
    let spare = hub.create_runner_token_with_id(&org, "spare").await;
    assert_ne!(builders.id, spare.id);
    assert_ne!(builders.token, spare.token);
    assert!(
        builders.token.len() >= 16,
        "a guessable token: {builders:?}"
    );

    let listing = hub.as_org(&org).get(&paths::runner_tokens(&org.name)).await;
    let list: RunnerTokenList = listing.expect(200).json();
    assert!(
        !listing.text().contains(&builders.token),
        "the listing shows a token: {listing:?}"
    );
    assert!(
        !listing.text().contains(&spare.token),
        "the listing shows a token: {listing:?}"
    );
    let mut described: Vec<(String, String, bool)> = list
        .tokens
        .iter()
        .map(|t| (t.id.clone(), t.description.clone(), t.revoked_at.is_some()))
        .collect();
    described.sort();
    let mut expected = vec![
        (builders.id.clone(), "builders".to_owned(), false),
        (spare.id.clone(), "spare".to_owned(), false),
    ];
    expected.sort();
    assert_eq!(described, expected);

    let runner = TestRunner::register(hub.url(), &builders.token, &unique("r"), &[]).await;
    let bystander = TestRunner::register(hub.url(), &spare.token, &unique("r"), &[]).await;
    assert!(runner.acquire(0).await.is_none());

    let revoke = hub
        .as_org(&org)
        .delete(&paths::runner_token(&org.name, &builders.id))
        .await;
    assert!(matches!(revoke.code(), 200 | 204), "{revoke:?}");
    // The very next call with the revoked token is refused, whatever it is.
    runner
        .acquire_response(0)
        .await
        .expect_error(401, ErrorCode::Unauthorized);
    runner
        .heartbeat_response(&[], 0)
        .await
        .expect_error(401, ErrorCode::Unauthorized);
    let register = hub
        .http()
        .bearer(builders.token.clone())
        .post_json(
            paths::REGISTER,
            &TestRunner::register_request(&runner.name, &[]),
        )
        .await;
    register.expect_error(401, ErrorCode::Unauthorized);
    // The other token is untouched.
    assert!(bystander.acquire(0).await.is_none());

    let listing = hub.as_org(&org).get(&paths::runner_tokens(&org.name)).await;
    let list: RunnerTokenList = listing.expect(200).json();
    assert!(!listing.text().contains(&builders.token), "{listing:?}");
    let revoked = list
        .tokens
        .iter()
        .find(|t| t.id == builders.id)
        .expect("revoked token listed");
    let revoked_at = revoked.revoked_at.expect("revoked_at is set");
    assert!(revoked_at >= revoked.created_at, "{revoked:?}");
    let kept = list
        .tokens
        .iter()
        .find(|t| t.id == spare.id)
        .expect("other token listed");
    assert_eq!(kept.revoked_at, None);

    let unknown = hub
        .as_org(&org)
        .delete(&paths::runner_token(&org.name, "no-such-token"))
        .await;
    unknown.expect_error(404, ErrorCode::NotFound);
    let garbage = runner.with_token("not-a-token").acquire_response(0).await;
    garbage.expect_error(401, ErrorCode::Unauthorized);
}

#[tokio::test]
async fn jobs_are_listed_newest_first_and_filtered_by_state() {
    let hub = TestHub::start().await;
    let org = hub.create_org(&unique("org")).await;
    let first = hub.submit(&org, &job(&[])).await;
    let second = hub.submit(&org, &job(&["x"])).await;
    let third = hub.submit(&org, &job(&[])).await;
    hub.as_org(&org)
        .post_json(&paths::job_cancel(&org.name, &second), &())
        .await
        .expect(200);

    let ids = |list: JobList| list.jobs.into_iter().map(|j| j.job_id).collect::<Vec<_>>();
    let all: JobList = hub
        .as_org(&org)
        .get(&paths::jobs(&org.name))
        .await
        .expect(200)
        .json();
    let listed = all
        .jobs
        .iter()
        .find(|j| j.job_id == second)
        .expect("listed")
        .clone();
    assert_eq!(listed.state, JobState::Cancelled);
    assert_eq!(listed.labels, vec!["x".to_owned()]);
    assert!(listed.finished_at.is_some(), "{listed:?}");
    assert_eq!(ids(all), vec![third.clone(), second.clone(), first.clone()]);

    let queued = hub
        .as_org(&org)
        .get(&format!("{}?state=queued", paths::jobs(&org.name)))
        .await;
    assert_eq!(ids(queued.expect(200).json()), vec![third, first]);
    let cancelled = hub
        .as_org(&org)
        .get(&format!("{}?state=cancelled", paths::jobs(&org.name)))
        .await;
    assert_eq!(ids(cancelled.expect(200).json()), vec![second]);
    let none = hub
        .as_org(&org)
        .get(&format!("{}?state=success", paths::jobs(&org.name)))
        .await;
    assert_eq!(ids(none.expect(200).json()), Vec::<String>::new());
    let bogus = hub
        .as_org(&org)
        .get(&format!("{}?state=bogus", paths::jobs(&org.name)))
        .await;
    bogus.expect_error(400, ErrorCode::BadRequest);
}

#[tokio::test]
async fn inline_pipelines_are_validated_at_submission() {
    let hub = TestHub::start().await;
    let org = hub.create_org(&unique("org")).await;
    let submit = |request: SubmitJobRequest| {
        let http = hub.as_org(&org);
        let path = paths::jobs(&org.name);
        async move { http.post_json(&path, &request).await }
    };

    let syntax = SubmitJobRequest {
        pipeline: Some("version: 1\nsteps:\n  - name: [unclosed\n".to_owned()),
        ..SubmitJobRequest::default()
    };
    submit(syntax)
        .await
        .expect_error(422, ErrorCode::Unprocessable);
    let version = SubmitJobRequest {
        pipeline: Some(PIPELINE.replace("version: 1", "version: 999")),
        ..SubmitJobRequest::default()
    };
    submit(version)
        .await
        .expect_error(422, ErrorCode::Unprocessable);
    let neither = SubmitJobRequest::default();
    submit(neither).await.expect_client_error();
    let both = SubmitJobRequest {
        pipeline: Some(PIPELINE.to_owned()),
        source: Some(git_source()),
        ..SubmitJobRequest::default()
    };
    submit(both).await.expect_client_error();

    let list: JobList = hub
        .as_org(&org)
        .get(&paths::jobs(&org.name))
        .await
        .expect(200)
        .json();
    assert!(
        list.jobs.is_empty(),
        "a refused submission created a job: {list:?}"
    );
}

fn git_source() -> Source {
    Source {
        git: GitSource {
            url: "https://git.example.invalid/app.git".to_owned(),
            git_ref: Some("main".to_owned()),
        },
        path: "ci/outpost.yml".to_owned(),
    }
}

#[tokio::test]
async fn job_details_and_assignments_carry_the_submitted_spec() {
    let hub = TestHub::start().await;
    let org = hub.create_org(&unique("org")).await;
    let runner = hub.register_runner(&org, &unique("r"), &["linux"]).await;
    let variables = BTreeMap::from([("GREETING".to_owned(), "hello".to_owned())]);
    let inline = SubmitJobRequest {
        pipeline: Some(PIPELINE.to_owned()),
        labels: vec!["linux".to_owned()],
        variables: variables.clone(),
        ..SubmitJobRequest::default()
    };
    let inline_id = hub.submit(&org, &inline).await;
    let details = hub.job(&org, &inline_id).await;
    assert_eq!(details.job_id, inline_id);
    assert_eq!(details.state, JobState::Queued);
    assert_eq!(details.spec.pipeline(), Some(PIPELINE));
    assert_eq!(details.spec.source(), None);
    assert_eq!(details.labels, vec!["linux".to_owned()]);
    assert_eq!(details.variables, variables);
    assert_eq!(details.runner_id, None);
    assert_eq!((details.started_at, details.finished_at), (None, None));
    assert_eq!(details.log_bytes, 0);
    assert!(details.steps.is_empty());

    let assignment = runner.acquire(0).await.expect("the linux job");
    assert_eq!(assignment.job_id, inline_id);
    assert_eq!(assignment.spec, details.spec);
    assert_eq!(assignment.labels, details.labels);
    assert_eq!(assignment.variables, variables);
    assert_eq!(assignment.created_at, details.created_at);
    assert!(assignment.lease_expires_at > details.created_at);

    let from_git = SubmitJobRequest {
        source: Some(git_source()),
        ..SubmitJobRequest::default()
    };
    let git_id = hub.submit(&org, &from_git).await;
    let details = hub.job(&org, &git_id).await;
    assert_eq!(details.spec.source(), Some(&git_source()));
    assert_eq!(details.spec.pipeline(), None);
    let assignment = runner.acquire(0).await.expect("the git job");
    assert_eq!(assignment.job_id, git_id);
    assert_eq!(assignment.spec.source(), Some(&git_source()));
}

#[tokio::test]
async fn runners_are_listed_with_their_running_jobs() {
    let hub = TestHub::start().await;
    let (org, runner) = org_with_runner(&hub).await;
    let list = |hub: &TestHub| {
        let http = hub.as_org(&org);
        let path = paths::runners(&org.name);
        async move { http.get(&path).await.expect(200).json::<RunnerList>() }
    };
    let before = list(&hub).await;
    assert_eq!(before.runners.len(), 1, "{before:?}");
    assert_eq!(before.runners[0].runner_id, runner.runner_id);
    assert_eq!(before.runners[0].running_jobs, 0);

    let job = running_job(&hub, &org, &runner).await;
    runner.heartbeat(&[held(&job)], 0).await;
    let during = list(&hub).await;
    assert_eq!(during.runners[0].running_jobs, 1, "{during:?}");
    assert!(during.runners[0].last_seen_at >= before.runners[0].last_seen_at);

    let done = TestRunner::completion(&job, JobResult::Success, None, 0);
    runner.complete(&job.job_id, &done).await.expect(200);
    let after = list(&hub).await;
    assert_eq!(after.runners[0].running_jobs, 0, "{after:?}");
}
