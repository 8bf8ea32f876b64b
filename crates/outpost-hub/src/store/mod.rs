//! The hub's storage interface: every durable operation the handlers need, as one narrow async
//! trait ([`Store`]) in domain terms (no SQL), so another backend (PostgreSQL) can be added
//! without touching a handler. [`SqliteStore`] is the embedded default. Job logs live in files
//! ([`LogFiles`]), which any backend can use beside its rows.

mod logfiles;
mod sqlite;

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;
use outpost_protocol::{
    CompleteRequest, HeldLease, JobAssignment, JobDetails, JobSpec, JobState, JobSummary,
    LeaseStatus, RegisterRequest, RunnerInfo, RunnerTokenInfo, StepUpdate, Timestamp,
};

pub use self::logfiles::{LogFileError, LogFiles, LogLock, LogWriter};
pub use self::sqlite::SqliteStore;

/// An organization's internal key.
pub type OrgId = i64;

/// The SHA-256 of a secret (API key, runner token); secrets themselves are never stored.
pub type SecretHash = [u8; 32];

/// An organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Org {
    pub id: OrgId,
    pub name: String,
}

/// A registered runner, as the dispatch needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerRecord {
    pub runner_id: String,
    pub labels: Vec<String>,
}

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub job_id: String,
    pub spec: JobSpec,
    pub labels: Vec<String>,
    pub variables: BTreeMap<String, String>,
    pub now: Timestamp,
}

/// A lease to hand out with a claimed job.
#[derive(Debug, Clone)]
pub struct NewLease {
    pub lease_id: String,
    pub now: Timestamp,
    pub expires_at: Timestamp,
}

/// A job claimed by a runner.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub assignment: JobAssignment,
    /// When the job (last) entered the queue, for the pickup-latency metric.
    pub enqueued_at: Timestamp,
}

/// A job whose state the hub changed on its own when its lease ran out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredLease {
    pub org: OrgId,
    pub job_id: String,
    pub labels: Vec<String>,
    /// `queued` (it never started: back in the queue), `lost` or `cancelled`.
    pub new_state: JobState,
}

/// The answer to a heartbeat, and what happened on the way.
#[derive(Debug, Clone)]
pub struct HeartbeatOutcome {
    /// One entry per lease of the request, in order.
    pub statuses: Vec<LeaseStatus>,
    /// Something the runner must learn now: a lease it lost, or a cancel request it has not
    /// been told about yet (marked as told by this call).
    pub news: bool,
    /// Leases found expired (and handled) by this call.
    pub expired: Vec<ExpiredLease>,
}

/// The result of a log append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Bytes the hub holds for the job after the append.
    pub committed: u64,
    /// New bytes stored by this call (0 for a pure replay).
    pub added: u64,
}

/// A slice of a job's log.
#[derive(Debug, Clone)]
pub struct LogSlice {
    pub data: Bytes,
    /// Bytes the hub holds in all.
    pub total: u64,
    /// The job has ended (no more bytes expected, except a dead runner's late ones).
    pub ended: bool,
}

/// The result of a completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completed {
    pub state: JobState,
    /// This call ended the job (false for a repeated completion).
    pub newly: bool,
}

/// The result of a cancel request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelOutcome {
    pub state: JobState,
    pub cancel_requested: bool,
    /// The runner holding the job, to wake its heartbeat.
    pub runner_id: Option<String>,
    /// This call ended the job (it was queued).
    pub ended: bool,
}

/// Why a store call failed. The first group are answers a client caused; the last group are
/// failures of the store itself.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The thing does not exist, or belongs to another organization.
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    /// A thing with this name exists already.
    #[error("{what} `{id}` exists already")]
    AlreadyExists { what: &'static str, id: String },
    /// The job's state does not allow the call.
    #[error("job {job} {message}")]
    InvalidState { job: String, message: String },
    /// The lease id is not the job's lease.
    #[error("lease {lease} is not the lease of job {job}")]
    LeaseMismatch { job: String, lease: String },
    /// The job has ended: its log and steps take no new writes.
    #[error("job {job} has ended ({state}): {what} closed")]
    JobEnded {
        job: String,
        state: JobState,
        /// `its log is` or `its steps are`.
        what: &'static str,
        /// The log bytes the hub holds, on a refused log append.
        committed: Option<u64>,
    },
    /// A log append would leave a gap.
    #[error(
        "log of job {job}: offset {offset} is past the {committed} bytes committed; resend from {committed}"
    )]
    LogGap {
        job: String,
        offset: u64,
        committed: u64,
    },
    /// A completion announced more log bytes than the hub holds.
    #[error(
        "log of job {job}: the completion announces {announced} bytes but the hub holds {committed}; send the rest first"
    )]
    LogIncomplete {
        job: String,
        announced: u64,
        committed: u64,
    },
    /// A log read from past the log's end.
    #[error("log of job {job}: offset {offset} is past the end of the log ({end} bytes)")]
    OffsetPastEnd { job: String, offset: u64, end: u64 },
    /// The database stayed locked by another process past the busy timeout.
    #[error("database busy during {op}")]
    Busy { op: &'static str },
    /// The database could not be opened or migrated.
    #[error("database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// A query failed.
    #[error("database error during {op}: {source}")]
    Database {
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    /// The blocking task running a query died.
    #[error("store task failed during {op}: {message}")]
    Task { op: &'static str, message: String },
    /// A job's log file could not be read or written.
    #[error(transparent)]
    LogFile(#[from] LogFileError),
}

/// Every durable operation of the hub. Each call is atomic; calls that change a job's state
/// are conditional on the state they expect, so concurrent callers never both win.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Checks that the store answers (for `/healthz`).
    async fn check_health(&self) -> Result<(), StoreError>;

    // ----- organizations and credentials -----

    async fn create_org(
        &self,
        name: String,
        api_key_hash: SecretHash,
        now: Timestamp,
    ) -> Result<Org, StoreError>;
    async fn org_by_name(&self, name: String) -> Result<Option<Org>, StoreError>;
    async fn org_by_api_key(&self, hash: SecretHash) -> Result<Option<Org>, StoreError>;
    /// The organization of a runner token that is not revoked.
    async fn org_by_runner_token(&self, hash: SecretHash) -> Result<Option<Org>, StoreError>;
    async fn create_runner_token(
        &self,
        org: OrgId,
        id: String,
        description: String,
        hash: SecretHash,
        now: Timestamp,
    ) -> Result<(), StoreError>;
    async fn list_runner_tokens(&self, org: OrgId) -> Result<Vec<RunnerTokenInfo>, StoreError>;
    /// Revokes a token (idempotent); `NotFound` when the org has no such token.
    async fn revoke_runner_token(
        &self,
        org: OrgId,
        id: String,
        now: Timestamp,
    ) -> Result<(), StoreError>;

    // ----- runners -----

    /// Registers a runner, or updates the one of the same name; returns its id (`new_id` for a
    /// new runner).
    async fn register_runner(
        &self,
        org: OrgId,
        new_id: String,
        request: RegisterRequest,
        now: Timestamp,
    ) -> Result<String, StoreError>;
    /// Marks a runner as seen and returns it; `NotFound` when the org has no such runner.
    async fn touch_runner(
        &self,
        org: OrgId,
        runner_id: String,
        now: Timestamp,
    ) -> Result<RunnerRecord, StoreError>;
    async fn list_runners(&self, org: OrgId) -> Result<Vec<RunnerInfo>, StoreError>;

    // ----- jobs -----

    async fn submit_job(&self, org: OrgId, job: NewJob) -> Result<(), StoreError>;
    /// Assigns job `prefer` (the one a held acquire was woken for) if it is still queued and
    /// the runner has its labels; else the oldest queued job of the org whose labels the runner
    /// has and that is not in `skip` (jobs reserved for other acquires), if any.
    async fn claim_job(
        &self,
        org: OrgId,
        runner: RunnerRecord,
        lease: NewLease,
        prefer: Option<String>,
        skip: Vec<String>,
    ) -> Result<Option<Claimed>, StoreError>;
    /// Renews the runner's leases that are still valid and reports on each.
    async fn heartbeat(
        &self,
        org: OrgId,
        runner_id: String,
        leases: Vec<HeldLease>,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Result<HeartbeatOutcome, StoreError>;
    /// Appends log bytes at `offset` for the holder of `lease_id` (docs/protocol.md: lease,
    /// replay, gap and closed-log rules).
    async fn append_log(
        &self,
        org: OrgId,
        job_id: String,
        lease_id: String,
        offset: u64,
        data: Bytes,
        now: Timestamp,
    ) -> Result<Appended, StoreError>;
    /// Reads up to `max` log bytes from `offset`.
    async fn read_log(
        &self,
        org: OrgId,
        job_id: String,
        offset: u64,
        max: usize,
    ) -> Result<LogSlice, StoreError>;
    /// Upserts a step by (job, index) for the holder of `lease_id`; returns whether the job
    /// started running by it. Refused once the job has ended.
    async fn upsert_step(
        &self,
        org: OrgId,
        job_id: String,
        lease_id: String,
        step: StepUpdate,
        now: Timestamp,
    ) -> Result<bool, StoreError>;
    async fn complete_job(
        &self,
        org: OrgId,
        job_id: String,
        request: CompleteRequest,
        now: Timestamp,
    ) -> Result<Completed, StoreError>;
    async fn cancel_job(
        &self,
        org: OrgId,
        job_id: String,
        now: Timestamp,
    ) -> Result<CancelOutcome, StoreError>;
    /// Jobs newest first, optionally in one state.
    async fn list_jobs(
        &self,
        org: OrgId,
        state: Option<JobState>,
        limit: u32,
    ) -> Result<Vec<JobSummary>, StoreError>;
    async fn job_details(&self, org: OrgId, job_id: String) -> Result<JobDetails, StoreError>;

    // ----- leases and statistics -----

    /// Handles every lease that expired at or before `now`.
    async fn expire_leases(&self, now: Timestamp) -> Result<Vec<ExpiredLease>, StoreError>;
    /// The earliest expiry of a live lease.
    async fn next_lease_expiry(&self) -> Result<Option<Timestamp>, StoreError>;
    /// Extends every live lease that ends before `expires_at` to it (on startup, so hub downtime
    /// never counts against runners); returns how many.
    async fn extend_live_leases(&self, expires_at: Timestamp) -> Result<u64, StoreError>;
    /// How many jobs are in each state.
    async fn job_counts(&self) -> Result<Vec<(JobState, u64)>, StoreError>;

    // ----- retention -----

    /// Deletes up to `limit` jobs (oldest first) that ended before `ended_before`, with their
    /// steps and log files; returns how many. Jobs that have not ended are never deleted.
    async fn delete_finished_jobs(
        &self,
        ended_before: Timestamp,
        limit: u32,
    ) -> Result<u64, StoreError>;
    /// Removes log files whose job no longer exists (left by a crash between deleting a job
    /// and its file); returns how many.
    async fn remove_orphan_logs(&self) -> Result<u64, StoreError>;
}

/// Whether a runner with `runner_labels` may take a job with `job_labels` (a subset).
pub fn labels_match(job_labels: &[String], runner_labels: &[String]) -> bool {
    job_labels.iter().all(|label| runner_labels.contains(label))
}
