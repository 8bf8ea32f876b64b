//! Pins the JSON form of every wire message: each sample is serialized and compared with its
//! fixture file, and the fixture is parsed back into the same value. A failure here means the wire
//! format changed; if that is intended, run with `OUTPOST_BLESS=1` and review the diff.

use std::collections::BTreeMap;
use std::path::PathBuf;

use outpost_protocol::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

fn ts(ms: i64) -> Timestamp {
    Timestamp::from_unix_millis(ms)
}

fn check<T>(name: &str, value: T)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/{name}.json"));
    let actual = serde_json::to_string_pretty(&value).expect("serializable") + "\n";
    if std::env::var_os("OUTPOST_BLESS").is_some() {
        std::fs::write(&path, &actual).expect("write fixture");
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "fixture {} missing ({e}); run with OUTPOST_BLESS=1",
            path.display()
        )
    });
    assert_eq!(actual, expected, "wire form of `{name}` changed");
    let parsed: T = serde_json::from_str(&expected).expect("fixture parses");
    assert_eq!(
        parsed, value,
        "fixture `{name}` does not parse back to the same value"
    );
}

#[test]
fn error_bodies() {
    check(
        "error",
        ErrorBody::new(ErrorCode::NotFound, "job j_1 not found"),
    );
    check(
        "error_log_gap",
        ErrorBody::new(ErrorCode::LogGap, "offset 10 is past 4").with_committed(4),
    );
    check(
        "error_lease_mismatch",
        ErrorBody::new(
            ErrorCode::LeaseMismatch,
            "lease l_2 is not the lease of job j_1",
        ),
    );
    check(
        "error_rate_limited",
        ErrorBody::new(
            ErrorCode::RateLimited,
            "too many wrong credentials from this address; try again in 6 s",
        ),
    );
    check(
        "error_job_ended",
        ErrorBody::new(
            ErrorCode::JobEnded,
            "job j_1 has ended (failed): its log is closed at 4 bytes",
        )
        .with_committed(4),
    );
}

/// Log appends and step updates name the writer's lease in the query (the log's body is raw
/// bytes, and a step's body is the step).
#[test]
fn runner_writes_carry_the_lease_in_the_query() {
    assert_eq!(
        paths::job_log("j_1", "l_1", 4096),
        "/api/v1/runner/jobs/j_1/log?offset=4096&lease_id=l_1"
    );
    assert_eq!(
        paths::job_steps("j_1", "l_1"),
        "/api/v1/runner/jobs/j_1/steps?lease_id=l_1"
    );
    assert_eq!(ErrorCode::JobEnded.status(), 409);
    assert_eq!(ErrorCode::JobEnded.as_str(), "job_ended");
}

#[test]
fn runner_side() {
    check(
        "register_request",
        RegisterRequest {
            name: "builder-1".into(),
            labels: vec!["linux".into(), "docker".into()],
            executor: "docker".into(),
            version: "0.1.0".into(),
            capacity: 4,
        },
    );
    check(
        "register_response",
        RegisterResponse {
            runner_id: "r_abc".into(),
            lease_ttl_s: 60,
            heartbeat_interval_s: 20,
        },
    );
    check(
        "acquire_request",
        AcquireRequest {
            runner_id: "r_abc".into(),
            free_slots: 2,
            wait_s: 30,
        },
    );
    check(
        "acquire_response_inline",
        AcquireResponse {
            job: JobAssignment {
                job_id: "j_1".into(),
                lease_id: "l_1".into(),
                lease_expires_at: ts(1_795_000_060_000),
                spec: JobSpec::Inline {
                    pipeline: "version: 1\n".into(),
                },
                labels: vec!["linux".into()],
                variables: BTreeMap::from([("RUST_LOG".into(), "info".into())]),
                created_at: ts(1_795_000_000_000),
            },
        },
    );
    check(
        "acquire_response_git",
        AcquireResponse {
            job: JobAssignment {
                job_id: "j_2".into(),
                lease_id: "l_2".into(),
                lease_expires_at: ts(1_795_000_060_000),
                spec: JobSpec::Repo {
                    source: Source {
                        git: GitSource {
                            url: "https://git.example/app.git".into(),
                            git_ref: Some("main".into()),
                        },
                        path: DEFAULT_PIPELINE_PATH.into(),
                    },
                },
                labels: vec![],
                variables: BTreeMap::new(),
                created_at: ts(1_795_000_000_000),
            },
        },
    );
    check(
        "heartbeat_request",
        HeartbeatRequest {
            runner_id: "r_abc".into(),
            jobs: vec![HeldLease {
                job_id: "j_1".into(),
                lease_id: "l_1".into(),
            }],
            wait_s: 20,
        },
    );
    check(
        "heartbeat_response",
        HeartbeatResponse {
            jobs: vec![
                LeaseStatus {
                    job_id: "j_1".into(),
                    lease_lost: false,
                    lease_expires_at: Some(ts(1_795_000_090_000)),
                    cancel_requested: true,
                },
                LeaseStatus {
                    job_id: "j_9".into(),
                    lease_lost: true,
                    lease_expires_at: None,
                    cancel_requested: false,
                },
            ],
        },
    );
    check("log_append_response", LogAppendResponse { committed: 4096 });
    check(
        "step_update",
        StepUpdate {
            index: 1,
            name: "test".into(),
            state: StepState::Failed,
            exit_code: Some(2),
            started_at: Some(ts(1_795_000_001_000)),
            finished_at: Some(ts(1_795_000_002_500)),
            failure: Some(Failure::new(FailureClass::Script, "exit code 2")),
            log_offset: Some(120),
        },
    );
    check(
        "complete_request",
        CompleteRequest {
            lease_id: "l_1".into(),
            result: JobResult::Failed,
            failure: Some(Failure::new(
                FailureClass::Oom,
                "step `build` was killed: out of memory",
            )),
            log_bytes: 4096,
        },
    );
    check(
        "complete_response",
        CompleteResponse {
            job_id: "j_1".into(),
            state: JobState::Failed,
        },
    );
}

#[test]
fn admin_side() {
    check(
        "create_org_request",
        CreateOrgRequest {
            name: "acme".into(),
        },
    );
    check(
        "create_org_response",
        CreateOrgResponse {
            name: "acme".into(),
            api_key: "opk_secret".into(),
        },
    );
    check(
        "create_runner_token_request",
        CreateRunnerTokenRequest {
            description: "builders".into(),
        },
    );
    check(
        "create_runner_token_response",
        CreateRunnerTokenResponse {
            id: "t_1".into(),
            token: "oprt_secret".into(),
        },
    );
    check(
        "runner_token_list",
        RunnerTokenList {
            tokens: vec![RunnerTokenInfo {
                id: "t_1".into(),
                description: "builders".into(),
                created_at: ts(1_795_000_000_000),
                revoked_at: Some(ts(1_795_000_100_000)),
            }],
        },
    );
    check(
        "runner_list",
        RunnerList {
            runners: vec![RunnerInfo {
                runner_id: "r_abc".into(),
                name: "builder-1".into(),
                labels: vec!["linux".into()],
                executor: "process".into(),
                version: "0.1.0".into(),
                last_seen_at: ts(1_795_000_000_000),
                running_jobs: 1,
            }],
        },
    );
    check(
        "submit_job_request",
        SubmitJobRequest {
            pipeline: Some("version: 1\nsteps:\n  - { name: a, run: echo hi }\n".into()),
            source: None,
            labels: vec!["linux".into()],
            variables: BTreeMap::from([("MODE".into(), "fast".into())]),
        },
    );
    check(
        "submit_job_response",
        SubmitJobResponse {
            job_id: "j_1".into(),
        },
    );
    check(
        "job_list",
        JobList {
            jobs: vec![JobSummary {
                job_id: "j_1".into(),
                state: JobState::Success,
                labels: vec![],
                created_at: ts(1_795_000_000_000),
                finished_at: Some(ts(1_795_000_009_000)),
            }],
        },
    );
    check(
        "job_details",
        JobDetails {
            job_id: "j_1".into(),
            state: JobState::Lost,
            failure: Some(Failure::new(FailureClass::RunnerLost, "lease expired")),
            spec: JobSpec::Inline {
                pipeline: "version: 1\n".into(),
            },
            labels: vec![],
            variables: BTreeMap::new(),
            runner_id: Some("r_abc".into()),
            created_at: ts(1_795_000_000_000),
            started_at: Some(ts(1_795_000_001_000)),
            finished_at: Some(ts(1_795_000_070_000)),
            log_bytes: 12,
            steps: vec![StepInfo {
                index: 0,
                name: "build".into(),
                state: StepState::Running,
                exit_code: None,
                started_at: Some(ts(1_795_000_001_000)),
                finished_at: None,
                failure: None,
                log_offset: Some(0),
            }],
        },
    );
    check(
        "cancel_response",
        CancelResponse {
            job_id: "j_1".into(),
            state: JobState::Running,
            cancel_requested: true,
        },
    );
}

#[test]
fn every_job_state_and_failure_class_has_a_fixed_name() {
    let states: Vec<String> = JobState::ALL
        .iter()
        .map(|s| serde_json::to_string(s).unwrap())
        .collect();
    assert_eq!(
        states.join(","),
        r#""queued","assigned","running","success","failed","cancelled","timed_out","error","lost""#
    );
    for state in JobState::ALL {
        assert_eq!(
            serde_json::to_string(&state).unwrap(),
            format!("\"{}\"", state.as_str())
        );
        assert_eq!(state.as_str().parse::<JobState>(), Ok(state));
    }
    let classes = [
        FailureClass::Script,
        FailureClass::Oom,
        FailureClass::ImagePull,
        FailureClass::Config,
        FailureClass::Timeout,
        FailureClass::Cancelled,
        FailureClass::Infrastructure,
        FailureClass::RunnerLost,
    ];
    let names: Vec<String> = classes
        .iter()
        .map(|c| serde_json::to_string(c).unwrap())
        .collect();
    assert_eq!(
        names.join(","),
        r#""script","oom","image_pull","config","timeout","cancelled","infrastructure","runner_lost""#
    );
}

#[test]
fn requests_refuse_unknown_fields() {
    let err = serde_json::from_str::<AcquireRequest>(
        r#"{"runner_id":"r","free_slots":1,"wait_s":1,"x":1}"#,
    )
    .unwrap_err();
    assert!(err.to_string().contains("unknown field `x`"), "{err}");
}

#[test]
fn unknown_error_codes_from_newer_hubs_parse() {
    let body: ErrorBody =
        serde_json::from_str(r#"{"error":{"code":"brand_new","message":"m"},"extra":true}"#)
            .unwrap();
    assert_eq!(body.error.code, ErrorCode::Other);
}
