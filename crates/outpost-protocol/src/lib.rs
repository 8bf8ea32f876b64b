//! Wire types of the outpost HTTP API (DESIGN.md §3): every request and answer between runner and
//! hub, and of the admin side. Serde only: no I/O stack, so every other crate can depend on it.
//!
//! The JSON form of each message is pinned by fixture tests (`tests/fixtures/*.json`); a change
//! that breaks one is a wire-format change and needs a new API version.

mod ids;
pub mod text;
mod time;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use crate::ids::{JobId, LeaseId, RunnerId};
pub use crate::time::Timestamp;

/// The API version every path lives under.
pub const API_VERSION: &str = "v1";
/// The common prefix of every API path.
pub const API_PREFIX: &str = "/api/v1";
/// Largest body of one log append, in bytes (DESIGN.md §3).
pub const MAX_LOG_CHUNK: usize = 1024 * 1024;
/// The largest integer the protocol carries, 2^63−1 (what a signed 64-bit column holds): a byte
/// offset or count above it is refused with `400`.
pub const MAX_INTEGER: u64 = i64::MAX as u64;
/// The string a masked secret is replaced with in logs.
pub const MASK: &str = "[MASKED]";

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// The body of every error answer: `{"error": {"code", "message"}}`, plus `committed` on the
/// `409` answers of log append (`log_gap`, `job_ended`) and completion (`log_incomplete`), so the
/// runner knows where the hub's copy ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed: Option<u64>,
}

/// Machine-readable code and human message of an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
}

/// The error codes the hub answers with. Unknown codes from a newer hub parse as `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body or a parameter is malformed (400).
    BadRequest,
    /// No credential, or a wrong, revoked or unknown one (401).
    Unauthorized,
    /// The credential is valid but not allowed to do this (403), e.g. an org key on `POST /orgs`.
    Forbidden,
    /// The thing does not exist, or belongs to another organization (404).
    NotFound,
    /// The thing exists already (409), e.g. an organization name.
    AlreadyExists,
    /// A log append left a gap; resend from `committed` (409).
    LogGap,
    /// A completion arrived while the hub holds fewer log bytes than announced (409).
    LogIncomplete,
    /// The lease id is not the job's current lease (409).
    LeaseMismatch,
    /// The job is in a state that does not allow this call (409).
    InvalidState,
    /// The job has ended: its log and steps are closed to new writes (409). Log answers carry
    /// `committed`.
    JobEnded,
    /// The body is larger than the configured limit (413).
    PayloadTooLarge,
    /// The body is well-formed but its content is invalid, e.g. a bad pipeline (422).
    Unprocessable,
    /// Too many wrong credentials from this address or with this key prefix (429); come back
    /// after `Retry-After` seconds.
    RateLimited,
    /// The hub failed (500); the message says what, without leaking internals.
    Internal,
    /// The hub cannot serve right now (503); retry.
    Unavailable,
    /// An error code this version does not know.
    #[serde(other)]
    Other,
}

impl ErrorCode {
    /// The HTTP status code that goes with this error code.
    pub fn status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::AlreadyExists
            | Self::LogGap
            | Self::LogIncomplete
            | Self::LeaseMismatch
            | Self::InvalidState
            | Self::JobEnded => 409,
            Self::PayloadTooLarge => 413,
            Self::Unprocessable => 422,
            Self::RateLimited => 429,
            Self::Internal | Self::Other => 500,
            Self::Unavailable => 503,
        }
    }
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code,
                message: message.into(),
            },
            committed: None,
        }
    }

    pub fn with_committed(mut self, committed: u64) -> Self {
        self.committed = Some(committed);
        self
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error.code.as_str(), self.error.message)
    }
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::AlreadyExists => "already_exists",
            Self::LogGap => "log_gap",
            Self::LogIncomplete => "log_incomplete",
            Self::LeaseMismatch => "lease_mismatch",
            Self::InvalidState => "invalid_state",
            Self::JobEnded => "job_ended",
            Self::PayloadTooLarge => "payload_too_large",
            Self::Unprocessable => "unprocessable",
            Self::RateLimited => "rate_limited",
            Self::Internal => "internal",
            Self::Unavailable => "unavailable",
            Self::Other => "other",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// States, results and failures
// ---------------------------------------------------------------------------------------------

/// The life of a job: `queued → assigned → running → success | failed | cancelled | timed_out |
/// error | lost`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Assigned,
    Running,
    Success,
    Failed,
    Cancelled,
    TimedOut,
    Error,
    Lost,
}

impl JobState {
    pub const ALL: [JobState; 9] = [
        Self::Queued,
        Self::Assigned,
        Self::Running,
        Self::Success,
        Self::Failed,
        Self::Cancelled,
        Self::TimedOut,
        Self::Error,
        Self::Lost,
    ];

    /// Whether the job has ended; an ended job never changes state again.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Queued | Self::Assigned | Self::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Assigned => "assigned",
            Self::Running => "running",
            Self::Success => "success",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::TimedOut => "timed_out",
            Self::Error => "error",
            Self::Lost => "lost",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown job state `{s}` (expected one of: {})",
                    Self::ALL.map(JobState::as_str).join(", ")
                )
            })
    }
}

/// How a runner says a job ended (the terminal states a runner may report; `lost` is the hub's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobResult {
    Success,
    Failed,
    Cancelled,
    TimedOut,
    Error,
}

impl JobResult {
    pub fn state(self) -> JobState {
        match self {
            Self::Success => JobState::Success,
            Self::Failed => JobState::Failed,
            Self::Cancelled => JobState::Cancelled,
            Self::TimedOut => JobState::TimedOut,
            Self::Error => JobState::Error,
        }
    }
}

/// The class of a failure, so a person (and a retry policy) can tell a broken build from a
/// broken runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// A step exited non-zero.
    Script,
    /// A step was killed for exceeding its memory limit.
    Oom,
    /// An image could not be pulled.
    ImagePull,
    /// The pipeline is invalid or a secret is missing.
    Config,
    /// A step or the job ran past its timeout.
    Timeout,
    /// Someone cancelled the job.
    Cancelled,
    /// The runner or its engine failed.
    Infrastructure,
    /// The runner went away and its lease expired.
    RunnerLost,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Script => "script",
            Self::Oom => "oom",
            Self::ImagePull => "image_pull",
            Self::Config => "config",
            Self::Timeout => "timeout",
            Self::Cancelled => "cancelled",
            Self::Infrastructure => "infrastructure",
            Self::RunnerLost => "runner_lost",
        }
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure: its class and a message for a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub class: FailureClass,
    pub message: String,
}

impl Failure {
    pub fn new(class: FailureClass, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
        }
    }
}

/// The state of one step of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Pending,
    Running,
    Success,
    Failed,
    Skipped,
    Cancelled,
    TimedOut,
}

impl StepState {
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Pending | Self::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Success => "success",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Cancelled => "cancelled",
            Self::TimedOut => "timed_out",
        }
    }
}

impl fmt::Display for StepState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------------------------
// Runner side
// ---------------------------------------------------------------------------------------------

/// `POST /api/v1/runner/register`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub name: String,
    #[serde(default)]
    pub labels: Vec<String>,
    /// The backend kind: `process`, `docker`, `kubernetes`.
    pub executor: String,
    /// The runner's version.
    pub version: String,
    /// How many jobs the runner runs at once.
    pub capacity: u32,
}

/// Answer to [`RegisterRequest`]. Registering the same name again returns the same `runner_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub runner_id: RunnerId,
    /// Seconds a lease lasts without a heartbeat.
    pub lease_ttl_s: u64,
    /// Seconds the runner should hold a heartbeat long-poll (`wait_s`) at most.
    pub heartbeat_interval_s: u64,
}

/// `POST /api/v1/runner/acquire`: a long-poll for one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcquireRequest {
    pub runner_id: RunnerId,
    pub free_slots: u32,
    /// Seconds to hold the request open when no job is queued; the hub caps it.
    pub wait_s: u64,
}

/// `200` answer to [`AcquireRequest`] (a `204` with no body means no job within `wait_s`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcquireResponse {
    pub job: JobAssignment,
}

/// A job handed to one runner under a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobAssignment {
    pub job_id: JobId,
    pub lease_id: LeaseId,
    pub lease_expires_at: Timestamp,
    /// The pipeline: inline, or where the runner fetches it from.
    #[serde(flatten)]
    pub spec: JobSpec,
    #[serde(default)]
    pub labels: Vec<String>,
    /// Pipeline variables defined on the hub (not secrets).
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    pub created_at: Timestamp,
}

/// Where a job's pipeline comes from: inline YAML (`pipeline`) or a repository (`source`). On the
/// wire it is flattened into its message as exactly one of those two keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum JobSpec {
    /// The pipeline file's text, inline.
    Inline { pipeline: String },
    /// A repository the runner clones inside the premises.
    Repo { source: Source },
}

impl JobSpec {
    /// The inline pipeline's text, if the job has one.
    pub fn pipeline(&self) -> Option<&str> {
        match self {
            JobSpec::Inline { pipeline } => Some(pipeline),
            JobSpec::Repo { .. } => None,
        }
    }

    /// The repository, if the job's pipeline lives in one.
    pub fn source(&self) -> Option<&Source> {
        match self {
            JobSpec::Inline { .. } => None,
            JobSpec::Repo { source } => Some(source),
        }
    }

    /// From the two optional keys of a submission: exactly one must be given.
    pub fn from_parts(
        pipeline: Option<String>,
        source: Option<Source>,
    ) -> Result<JobSpec, &'static str> {
        match (pipeline, source) {
            (Some(pipeline), None) => Ok(JobSpec::Inline { pipeline }),
            (None, Some(source)) => Ok(JobSpec::Repo { source }),
            (Some(_), Some(_)) => Err("give exactly one of `pipeline` and `source`, not both"),
            (None, None) => Err("give exactly one of `pipeline` (inline YAML) and `source`"),
        }
    }
}

/// A pipeline in a repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub git: GitSource,
    /// The pipeline file's path inside the repository.
    #[serde(default = "default_pipeline_path")]
    pub path: String,
}

/// The default path of the pipeline file inside a repository.
pub const DEFAULT_PIPELINE_PATH: &str = ".outpost.yml";

fn default_pipeline_path() -> String {
    DEFAULT_PIPELINE_PATH.to_owned()
}

/// A git repository and the ref to check out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitSource {
    pub url: String,
    /// Branch, tag or commit; the remote's default branch when absent.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
}

/// One job and its lease, as a runner holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldLease {
    pub job_id: JobId,
    pub lease_id: LeaseId,
}

/// `POST /api/v1/runner/heartbeat`: renews the leases of all of a runner's jobs and long-polls
/// for their cancellation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    pub runner_id: RunnerId,
    #[serde(default)]
    pub jobs: Vec<HeldLease>,
    pub wait_s: u64,
}

/// Answer to [`HeartbeatRequest`]: one entry per job of the request, in the same order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    pub jobs: Vec<LeaseStatus>,
}

/// The state of one lease after a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseStatus {
    pub job_id: JobId,
    /// The lease is gone (expired, job ended or re-assigned): the runner must stop the job.
    #[serde(default)]
    pub lease_lost: bool,
    /// When the renewed lease expires; absent when `lease_lost`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<Timestamp>,
    /// Someone asked to cancel the job.
    #[serde(default)]
    pub cancel_requested: bool,
}

/// Answer to `POST /api/v1/runner/jobs/{id}/log?offset=N&lease_id=L`: how many bytes the hub
/// holds. An empty body at offset 0 asks for `committed` without sending anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogAppendResponse {
    pub committed: u64,
}

/// `POST /api/v1/runner/jobs/{id}/steps?lease_id=L`: upserts one step's state (idempotent). The
/// lease id goes in the query, as on log appends, so the body stays the step itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepUpdate {
    /// The step's position in the pipeline, from 0.
    pub index: u32,
    pub name: String,
    pub state: StepState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// Byte offset in the job's log where this step's output starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_offset: Option<u64>,
}

/// `POST /api/v1/runner/jobs/{id}/complete` (idempotent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    pub lease_id: LeaseId,
    pub result: JobResult,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// The job's full log length; refused with `409 {committed}` while the hub holds fewer.
    pub log_bytes: u64,
}

/// Answer to [`CompleteRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompleteResponse {
    pub job_id: JobId,
    pub state: JobState,
}

// ---------------------------------------------------------------------------------------------
// Admin side
// ---------------------------------------------------------------------------------------------

/// `POST /api/v1/orgs` (admin key only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateOrgRequest {
    pub name: String,
}

/// `201` answer to [`CreateOrgRequest`]; the API key is shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateOrgResponse {
    pub name: String,
    pub api_key: String,
}

/// `POST /api/v1/orgs/{org}/runner-tokens`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRunnerTokenRequest {
    #[serde(default)]
    pub description: String,
}

/// `201` answer to [`CreateRunnerTokenRequest`]; the token is shown once and stored as a hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRunnerTokenResponse {
    pub id: String,
    pub token: String,
}

/// `GET /api/v1/orgs/{org}/runner-tokens` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerTokenList {
    pub tokens: Vec<RunnerTokenInfo>,
}

/// A runner token as listed: never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerTokenInfo {
    pub id: String,
    pub description: String,
    pub created_at: Timestamp,
    #[serde(default)]
    pub revoked_at: Option<Timestamp>,
}

/// `GET /api/v1/orgs/{org}/runners` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerList {
    pub runners: Vec<RunnerInfo>,
}

/// A registered runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerInfo {
    pub runner_id: RunnerId,
    pub name: String,
    pub labels: Vec<String>,
    pub executor: String,
    pub version: String,
    pub last_seen_at: Timestamp,
    pub running_jobs: u32,
}

/// `POST /api/v1/orgs/{org}/jobs`: exactly one of `pipeline` and `source`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitJobRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    /// A runner takes the job only if it has all of these labels.
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
}

/// `201` answer to [`SubmitJobRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitJobResponse {
    pub job_id: JobId,
}

/// `GET /api/v1/orgs/{org}/jobs?state=S&limit=N` answer, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobList {
    pub jobs: Vec<JobSummary>,
}

/// A job as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSummary {
    pub job_id: JobId,
    pub state: JobState,
    #[serde(default)]
    pub labels: Vec<String>,
    pub created_at: Timestamp,
    #[serde(default)]
    pub finished_at: Option<Timestamp>,
}

/// `GET /api/v1/orgs/{org}/jobs/{id}` answer: the job with its state, result and steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDetails {
    pub job_id: JobId,
    pub state: JobState,
    #[serde(default)]
    pub failure: Option<Failure>,
    #[serde(flatten)]
    pub spec: JobSpec,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    /// The runner that holds or held the job.
    #[serde(default)]
    pub runner_id: Option<RunnerId>,
    pub created_at: Timestamp,
    #[serde(default)]
    pub started_at: Option<Timestamp>,
    #[serde(default)]
    pub finished_at: Option<Timestamp>,
    /// Log bytes the hub holds.
    pub log_bytes: u64,
    #[serde(default)]
    pub steps: Vec<StepInfo>,
}

/// A step as the hub holds it (the last [`StepUpdate`] of that index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepInfo {
    pub index: u32,
    pub name: String,
    pub state: StepState,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub started_at: Option<Timestamp>,
    #[serde(default)]
    pub finished_at: Option<Timestamp>,
    #[serde(default)]
    pub failure: Option<Failure>,
    #[serde(default)]
    pub log_offset: Option<u64>,
}

impl From<StepUpdate> for StepInfo {
    fn from(u: StepUpdate) -> Self {
        Self {
            index: u.index,
            name: u.name,
            state: u.state,
            exit_code: u.exit_code,
            started_at: u.started_at,
            finished_at: u.finished_at,
            failure: u.failure,
            log_offset: u.log_offset,
        }
    }
}

/// `POST /api/v1/orgs/{org}/jobs/{id}/cancel` answer: the job's state after the request
/// (`cancelled` at once for a queued job; unchanged, with the cancel pending, for a running one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelResponse {
    pub job_id: JobId,
    pub state: JobState,
    pub cancel_requested: bool,
}

/// Paths of the API, in one place so that hub, client and tests agree.
pub mod paths {
    pub const REGISTER: &str = "/api/v1/runner/register";
    pub const ACQUIRE: &str = "/api/v1/runner/acquire";
    pub const HEARTBEAT: &str = "/api/v1/runner/heartbeat";
    pub const ORGS: &str = "/api/v1/orgs";
    pub const HEALTHZ: &str = "/healthz";
    pub const METRICS: &str = "/metrics";

    /// A log append by the holder of lease `lease_id` (ids are URL-safe as the hub makes them;
    /// a caller passing others encodes them first).
    pub fn job_log(job_id: &str, lease_id: &str, offset: u64) -> String {
        format!("/api/v1/runner/jobs/{job_id}/log?offset={offset}&lease_id={lease_id}")
    }
    /// A step update by the holder of lease `lease_id`.
    pub fn job_steps(job_id: &str, lease_id: &str) -> String {
        format!("/api/v1/runner/jobs/{job_id}/steps?lease_id={lease_id}")
    }
    pub fn job_complete(job_id: &str) -> String {
        format!("/api/v1/runner/jobs/{job_id}/complete")
    }
    pub fn runner_tokens(org: &str) -> String {
        format!("/api/v1/orgs/{org}/runner-tokens")
    }
    pub fn runner_token(org: &str, id: &str) -> String {
        format!("/api/v1/orgs/{org}/runner-tokens/{id}")
    }
    pub fn runners(org: &str) -> String {
        format!("/api/v1/orgs/{org}/runners")
    }
    pub fn jobs(org: &str) -> String {
        format!("/api/v1/orgs/{org}/jobs")
    }
    pub fn job(org: &str, id: &str) -> String {
        format!("/api/v1/orgs/{org}/jobs/{id}")
    }
    pub fn job_log_read(org: &str, id: &str, offset: u64, follow: bool) -> String {
        format!("/api/v1/orgs/{org}/jobs/{id}/log?offset={offset}&follow={follow}")
    }
    pub fn job_cancel(org: &str, id: &str) -> String {
        format!("/api/v1/orgs/{org}/jobs/{id}/cancel")
    }
}
