//! [`TestRunner`]: the runner side of the protocol as thin typed calls, for tests that play a
//! runner by hand (register, acquire, heartbeat, log, steps, complete).

use bytes::Bytes;
use outpost_protocol::{
    AcquireRequest, AcquireResponse, CompleteRequest, Failure, HeartbeatRequest, HeartbeatResponse,
    HeldLease, JobAssignment, JobResult, LogAppendResponse, RegisterRequest, RegisterResponse,
    RunnerId, StepUpdate, paths,
};

use crate::{Http, Response};

/// A registered runner: its token, id and a client carrying the token. Cheap to clone (e.g. to
/// move a long-poll into a task).
#[derive(Debug, Clone)]
pub struct TestRunner {
    pub http: Http,
    pub token: String,
    pub runner_id: RunnerId,
    pub name: String,
    pub labels: Vec<String>,
    /// What the hub answered at registration.
    pub registration: RegisterResponse,
}

/// The capacity test runners register with.
pub const TEST_RUNNER_CAPACITY: u32 = 64;

/// The lease a runner holds on an assigned job, as heartbeats name it.
pub fn held(job: &JobAssignment) -> HeldLease {
    HeldLease {
        job_id: job.job_id.clone(),
        lease_id: job.lease_id.clone(),
    }
}

impl TestRunner {
    /// A registration request as these tests send it: executor `process`, capacity
    /// [`TEST_RUNNER_CAPACITY`] (tests often hold several jobs with one runner).
    pub fn register_request(name: &str, labels: &[&str]) -> RegisterRequest {
        RegisterRequest {
            name: name.to_owned(),
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
            executor: "process".to_owned(),
            version: "0.0.0-test".to_owned(),
            capacity: TEST_RUNNER_CAPACITY,
        }
    }

    /// Registers a runner named `name` with `labels` on the hub at `base_url`; panics unless
    /// the hub answers 200 with a runner id.
    pub async fn register(base_url: &str, token: &str, name: &str, labels: &[&str]) -> TestRunner {
        Self::register_with(base_url, token, &Self::register_request(name, labels)).await
    }

    /// Registers with a request of the caller's making; panics unless 200 with a runner id.
    pub async fn register_with(
        base_url: &str,
        token: &str,
        request: &RegisterRequest,
    ) -> TestRunner {
        let http = Http::new(base_url).bearer(token);
        let answer = http.post_json(paths::REGISTER, request).await;
        let registration: RegisterResponse = answer.expect(200).json();
        assert!(
            !registration.runner_id.as_str().is_empty(),
            "empty runner id: {answer:?}"
        );
        TestRunner {
            http,
            token: token.to_owned(),
            runner_id: registration.runner_id.clone(),
            name: request.name.clone(),
            labels: request.labels.clone(),
            registration,
        }
    }

    /// The same runner calling with another token (e.g. another org's, or a revoked one).
    pub fn with_token(&self, token: &str) -> TestRunner {
        TestRunner {
            http: self.http.bearer(token),
            token: token.to_owned(),
            ..self.clone()
        }
    }

    /// `POST /runner/acquire` with one free slot; the raw answer.
    pub async fn acquire_response(&self, wait_s: u64) -> Response {
        let request = AcquireRequest {
            runner_id: self.runner_id.clone(),
            free_slots: 1,
            wait_s,
        };
        self.http.post_json(paths::ACQUIRE, &request).await
    }

    /// Acquires a job: `Some` on 200, `None` on 204 (with an empty body); panics otherwise.
    pub async fn acquire(&self, wait_s: u64) -> Option<JobAssignment> {
        let answer = self.acquire_response(wait_s).await;
        match answer.code() {
            200 => Some(answer.json::<AcquireResponse>().job),
            204 => {
                assert!(answer.body.is_empty(), "204 with a body: {answer:?}");
                None
            }
            _ => panic!("acquire failed: {answer:?}"),
        }
    }

    /// `POST /runner/heartbeat` for `jobs`; the raw answer.
    pub async fn heartbeat_response(&self, jobs: &[HeldLease], wait_s: u64) -> Response {
        let request = HeartbeatRequest {
            runner_id: self.runner_id.clone(),
            jobs: jobs.to_vec(),
            wait_s,
        };
        self.http.post_json(paths::HEARTBEAT, &request).await
    }

    /// Heartbeats `jobs`; panics unless 200 with one status per job, in order.
    pub async fn heartbeat(&self, jobs: &[HeldLease], wait_s: u64) -> HeartbeatResponse {
        let answer = self.heartbeat_response(jobs, wait_s).await;
        let response: HeartbeatResponse = answer.expect(200).json();
        let asked: Vec<&str> = jobs.iter().map(|j| j.job_id.as_str()).collect();
        let got: Vec<&str> = response.jobs.iter().map(|j| j.job_id.as_str()).collect();
        assert_eq!(
            got, asked,
            "heartbeat answer does not list the jobs in order: {answer:?}"
        );
        response
    }

    /// Appends `bytes` at `offset` to the log of `job`, as the holder of its lease; the raw
    /// answer.
    pub async fn append_log(
        &self,
        job: &JobAssignment,
        offset: u64,
        bytes: impl Into<Bytes>,
    ) -> Response {
        self.append_log_as(&job.job_id, &job.lease_id, offset, bytes)
            .await
    }

    /// Appends and panics unless 200; returns `committed`.
    pub async fn append_log_ok(
        &self,
        job: &JobAssignment,
        offset: u64,
        bytes: impl Into<Bytes>,
    ) -> u64 {
        let answer = self.append_log(job, offset, bytes).await;
        answer.expect(200).json::<LogAppendResponse>().committed
    }

    /// Appends to the log of job `job_id` naming lease `lease_id` (another runner's, a made-up
    /// one); the raw answer.
    pub async fn append_log_as(
        &self,
        job_id: impl AsRef<str>,
        lease_id: impl AsRef<str>,
        offset: u64,
        bytes: impl Into<Bytes>,
    ) -> Response {
        let path = paths::job_log(job_id.as_ref(), lease_id.as_ref(), offset);
        self.http.post_bytes(&path, bytes).await
    }

    /// Upserts a step of `job`, as the holder of its lease; the raw answer.
    pub async fn step(&self, job: &JobAssignment, update: &StepUpdate) -> Response {
        self.step_as(&job.job_id, &job.lease_id, update).await
    }

    /// Upserts a step of job `job_id` naming lease `lease_id`; the raw answer.
    pub async fn step_as(
        &self,
        job_id: impl AsRef<str>,
        lease_id: impl AsRef<str>,
        update: &StepUpdate,
    ) -> Response {
        let path = paths::job_steps(job_id.as_ref(), lease_id.as_ref());
        self.http.post_json(&path, update).await
    }

    /// Completes a job; the raw answer.
    pub async fn complete(&self, job_id: impl AsRef<str>, request: &CompleteRequest) -> Response {
        self.http
            .post_json(&paths::job_complete(job_id.as_ref()), request)
            .await
    }

    /// A completion of `job` with `result` and `log_bytes`, failing with `failure` if any.
    pub fn completion(
        job: &JobAssignment,
        result: JobResult,
        failure: Option<Failure>,
        log_bytes: u64,
    ) -> CompleteRequest {
        CompleteRequest {
            lease_id: job.lease_id.clone(),
            result,
            failure,
            log_bytes,
        }
    }
}
