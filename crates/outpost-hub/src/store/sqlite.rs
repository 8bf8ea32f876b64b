//! The embedded SQLite store: one database file in WAL mode. rusqlite is blocking, so every call
//! runs on tokio's blocking pool, on one of two connections (a writer and a reader, each behind
//! a std mutex that is never held across an `.await`). Writes are `BEGIN IMMEDIATE`
//! transactions; state changes are conditional UPDATEs, so a job is claimed exactly once even
//! when several hubs or admin commands share the file.
//!
//! Durability: `synchronous=NORMAL` in WAL mode: every committed transaction survives a crash of
//! the hub process (kill -9); a power loss or OS crash may lose the last few transactions.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use outpost_protocol::{
    CompleteRequest, Failure, FailureClass, HeldLease, JobAssignment, JobDetails, JobSpec,
    JobState, JobSummary, LeaseStatus, RegisterRequest, RunnerInfo, RunnerTokenInfo, Source,
    StepInfo, StepState, StepUpdate, Timestamp,
};
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{
    Appended, CancelOutcome, Claimed, Completed, ExpiredLease, HeartbeatOutcome, LogSlice, NewJob,
    NewLease, Org, OrgId, RunnerRecord, SecretHash, Store, StoreError,
};

/// How long a call waits for another process's write lock before failing with `Busy`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Small appends are merged into the job's last chunk up to this size, so a log written in many
/// small pieces still reads back in few rows.
const COALESCE_LIMIT: usize = 64 * 1024;
/// The schema version this code writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE orgs (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    api_key_hash BLOB NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
CREATE TABLE runner_tokens (
    id TEXT PRIMARY KEY,
    org_id INTEGER NOT NULL REFERENCES orgs (id),
    description TEXT NOT NULL,
    token_hash BLOB NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE TABLE runners (
    id TEXT PRIMARY KEY,
    org_id INTEGER NOT NULL REFERENCES orgs (id),
    name TEXT NOT NULL,
    labels TEXT NOT NULL,
    executor TEXT NOT NULL,
    version TEXT NOT NULL,
    capacity INTEGER NOT NULL,
    registered_at INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    UNIQUE (org_id, name)
);
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    org_id INTEGER NOT NULL REFERENCES orgs (id),
    state TEXT NOT NULL,
    pipeline TEXT,
    source TEXT,
    labels TEXT NOT NULL,
    variables TEXT NOT NULL,
    runner_id TEXT,
    lease_id TEXT,
    lease_expires_at INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    cancel_reported INTEGER NOT NULL DEFAULT 0,
    failure_class TEXT,
    failure_message TEXT,
    log_bytes INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    enqueued_at INTEGER NOT NULL,
    assigned_at INTEGER,
    started_at INTEGER,
    finished_at INTEGER
);
CREATE INDEX jobs_by_org ON jobs (org_id, seq);
CREATE INDEX jobs_by_org_state ON jobs (org_id, state, seq);
CREATE INDEX jobs_live_leases ON jobs (lease_expires_at) WHERE state IN ('assigned', 'running');
CREATE INDEX jobs_live_by_runner ON jobs (runner_id) WHERE state IN ('assigned', 'running');
CREATE TABLE job_steps (
    job_seq INTEGER NOT NULL REFERENCES jobs (seq),
    idx INTEGER NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    exit_code INTEGER,
    started_at INTEGER,
    finished_at INTEGER,
    failure_class TEXT,
    failure_message TEXT,
    log_offset INTEGER,
    PRIMARY KEY (job_seq, idx)
) WITHOUT ROWID;
CREATE TABLE log_chunks (
    job_seq INTEGER NOT NULL REFERENCES jobs (seq),
    start INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (job_seq, start)
);
";

/// The SQLite implementation of [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

/// A failure inside a transaction: SQL, or a domain answer that rolls the transaction back.
enum Fail {
    Sql(rusqlite::Error),
    Domain(StoreError),
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Self {
        Fail::Sql(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Domain(e)
    }
}

type TxResult<T> = Result<T, Fail>;

fn sql_error(op: &'static str, e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            StoreError::Busy { op }
        }
        _ => StoreError::Database { op, source: e },
    }
}

fn finish<T>(op: &'static str, r: TxResult<T>) -> Result<T, StoreError> {
    r.map_err(|f| match f {
        Fail::Sql(e) => sql_error(op, e),
        Fail::Domain(e) => e,
    })
}

impl SqliteStore {
    /// Opens (creating when missing) the database file and brings its schema up to date.
    /// Blocking: call it from a blocking context.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let writer = open_connection(path).map_err(open_err)?;
        migrate(&writer).map_err(open_err)?;
        let reader = open_connection(path).map_err(open_err)?;
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                writer: Mutex::new(writer),
                reader: Mutex::new(reader),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` in an immediate (write) transaction on the blocking pool; commits on `Ok`.
    async fn write<T, F>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> TxResult<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let task = tokio::task::spawn_blocking(move || {
            let mut conn = inner.writer.lock().unwrap_or_else(PoisonError::into_inner);
            let r = (|| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let value = f(&tx)?;
                tx.commit()?;
                Ok(value)
            })();
            finish(op, r)
        });
        task.await.map_err(|e| StoreError::Task {
            op,
            message: e.to_string(),
        })?
    }

    /// Runs `f` in a read transaction (one consistent snapshot) on the blocking pool.
    async fn read<T, F>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> TxResult<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let task = tokio::task::spawn_blocking(move || {
            let mut conn = inner.reader.lock().unwrap_or_else(PoisonError::into_inner);
            let r = (|| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
                let value = f(&tx)?;
                tx.finish()?;
                Ok(value)
            })();
            finish(op, r)
        });
        task.await.map_err(|e| StoreError::Task {
            op,
            message: e.to_string(),
        })?
    }
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(path = %path.display(), mode, "database is not in WAL mode");
    }
    // NORMAL: a commit survives a crash of the process (kill -9), fsyncs happen at checkpoints.
    // Checkpoints every ~16 MiB of WAL instead of SQLite's 4 MiB: log appends are large, and each
    // checkpoint costs an fsync.
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = 4000;",
    )?;
    Ok(conn)
}

fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version == 0 {
        tx.execute_batch(SCHEMA)?;
        tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))?;
    } else if version > SCHEMA_VERSION {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "schema version {version} is newer than this hub knows ({SCHEMA_VERSION})"
        )));
    }
    tx.commit()
}

// ---------------------------------------------------------------------------------------------
// Conversions
// ---------------------------------------------------------------------------------------------

fn conversion(col: usize, message: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(col, Type::Text, message.into())
}

fn to_json<T: Serialize>(value: &T) -> rusqlite::Result<String> {
    serde_json::to_string(value).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

fn from_json<T: DeserializeOwned>(row: &Row<'_>, col: usize) -> rusqlite::Result<T> {
    let text: String = row.get(col)?;
    serde_json::from_str(&text).map_err(|e| conversion(col, e.to_string()))
}

/// A snake_case enum stored as its name.
fn enum_col<T: DeserializeOwned>(row: &Row<'_>, col: usize) -> rusqlite::Result<T> {
    let text: String = row.get(col)?;
    serde_json::from_value(serde_json::Value::String(text))
        .map_err(|e| conversion(col, e.to_string()))
}

fn opt_enum_col<T: DeserializeOwned>(row: &Row<'_>, col: usize) -> rusqlite::Result<Option<T>> {
    let text: Option<String> = row.get(col)?;
    text.map(|t| serde_json::from_value(serde_json::Value::String(t)))
        .transpose()
        .map_err(|e| conversion(col, e.to_string()))
}

fn ts(row: &Row<'_>, col: usize) -> rusqlite::Result<Timestamp> {
    Ok(Timestamp::from_unix_millis(row.get(col)?))
}

fn opt_ts(row: &Row<'_>, col: usize) -> rusqlite::Result<Option<Timestamp>> {
    Ok(row
        .get::<_, Option<i64>>(col)?
        .map(Timestamp::from_unix_millis))
}

fn failure(
    row: &Row<'_>,
    class_col: usize,
    message_col: usize,
) -> rusqlite::Result<Option<Failure>> {
    let class: Option<FailureClass> = opt_enum_col(row, class_col)?;
    let message: Option<String> = row.get(message_col)?;
    Ok(class.map(|class| Failure {
        class,
        message: message.unwrap_or_default(),
    }))
}

fn u64_col(row: &Row<'_>, col: usize) -> rusqlite::Result<u64> {
    let v: i64 = row.get(col)?;
    u64::try_from(v).map_err(|_| conversion(col, format!("negative value {v}")))
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn job_state(row: &Row<'_>, col: usize) -> rusqlite::Result<JobState> {
    let text: String = row.get(col)?;
    text.parse().map_err(|e: String| conversion(col, e))
}

fn spec(row: &Row<'_>, pipeline_col: usize, source_col: usize) -> rusqlite::Result<JobSpec> {
    let pipeline: Option<String> = row.get(pipeline_col)?;
    let source: Option<String> = row.get(source_col)?;
    let source = source
        .map(|s| serde_json::from_str::<Source>(&s))
        .transpose()
        .map_err(|e| conversion(source_col, e.to_string()))?;
    JobSpec::from_parts(pipeline, source).map_err(|e| conversion(pipeline_col, e.to_owned()))
}

/// The facts about a job most calls start from.
struct JobHead {
    seq: i64,
    state: JobState,
    runner_id: Option<String>,
    lease_id: Option<String>,
    lease_expires_at: Option<i64>,
    cancel_requested: bool,
    cancel_reported: bool,
    log_bytes: u64,
    labels: Vec<String>,
}

fn job_head(tx: &Transaction<'_>, org: OrgId, job_id: &str) -> TxResult<JobHead> {
    let head = tx
        .query_row(
            "SELECT seq, state, runner_id, lease_id, lease_expires_at, cancel_requested,
                    cancel_reported, log_bytes, labels
             FROM jobs WHERE id = ?1 AND org_id = ?2",
            params![job_id, org],
            |r| {
                Ok(JobHead {
                    seq: r.get(0)?,
                    state: job_state(r, 1)?,
                    runner_id: r.get(2)?,
                    lease_id: r.get(3)?,
                    lease_expires_at: r.get(4)?,
                    cancel_requested: r.get(5)?,
                    cancel_reported: r.get(6)?,
                    log_bytes: u64_col(r, 7)?,
                    labels: from_json(r, 8)?,
                })
            },
        )
        .optional()?;
    head.ok_or_else(|| {
        Fail::Domain(StoreError::NotFound {
            what: "job",
            id: job_id.to_owned(),
        })
    })
}

fn queued_error(job_id: &str) -> Fail {
    Fail::Domain(StoreError::InvalidState {
        job: job_id.to_owned(),
        message: "is queued: no runner holds it yet".to_owned(),
    })
}

/// Ends or requeues a job whose lease ran out.
fn expire_job(
    tx: &Transaction<'_>,
    org: OrgId,
    job_id: &str,
    head: &JobHead,
    now: Timestamp,
) -> TxResult<ExpiredLease> {
    let now_ms = now.unix_millis();
    let runner = head.runner_id.as_deref().unwrap_or("?");
    let new_state = if head.cancel_requested {
        let message = format!(
            "cancelled; runner {runner} stopped renewing its lease before confirming the cancel"
        );
        tx.execute(
            "UPDATE jobs SET state = 'cancelled', lease_expires_at = NULL, finished_at = ?2,
                 failure_class = 'cancelled', failure_message = ?3
             WHERE seq = ?1",
            params![head.seq, now_ms, message],
        )?;
        JobState::Cancelled
    } else if head.state == JobState::Assigned {
        tx.execute(
            "UPDATE jobs SET state = 'queued', runner_id = NULL, lease_id = NULL,
                 lease_expires_at = NULL, assigned_at = NULL, enqueued_at = ?2,
                 cancel_reported = 0
             WHERE seq = ?1",
            params![head.seq, now_ms],
        )?;
        JobState::Queued
    } else {
        let message = format!("runner {runner} stopped renewing its lease; the job was lost");
        tx.execute(
            "UPDATE jobs SET state = 'lost', lease_expires_at = NULL, finished_at = ?2,
                 failure_class = 'runner_lost', failure_message = ?3
             WHERE seq = ?1",
            params![head.seq, now_ms, message],
        )?;
        JobState::Lost
    };
    Ok(ExpiredLease {
        org,
        job_id: job_id.to_owned(),
        labels: head.labels.clone(),
        new_state,
    })
}

fn is_live(state: JobState) -> bool {
    matches!(state, JobState::Assigned | JobState::Running)
}

#[async_trait]
impl Store for SqliteStore {
    async fn check_health(&self) -> Result<(), StoreError> {
        self.read("health check", |tx| {
            let one: i64 = tx.query_row("SELECT 1", [], |r| r.get(0))?;
            Ok(one)
        })
        .await
        .map(|_| ())
    }

    async fn create_org(
        &self,
        name: String,
        api_key_hash: SecretHash,
        now: Timestamp,
    ) -> Result<Org, StoreError> {
        self.write("create organization", move |tx| {
            let exists: bool = tx
                .query_row("SELECT 1 FROM orgs WHERE name = ?1", [&name], |_| Ok(true))
                .optional()?
                .unwrap_or(false);
            if exists {
                return Err(StoreError::AlreadyExists {
                    what: "organization",
                    id: name,
                }
                .into());
            }
            tx.execute(
                "INSERT INTO orgs (name, api_key_hash, created_at) VALUES (?1, ?2, ?3)",
                params![name, &api_key_hash[..], now.unix_millis()],
            )?;
            Ok(Org {
                id: tx.last_insert_rowid(),
                name,
            })
        })
        .await
    }

    async fn org_by_name(&self, name: String) -> Result<Option<Org>, StoreError> {
        self.read("look up organization", move |tx| {
            Ok(tx
                .query_row("SELECT id, name FROM orgs WHERE name = ?1", [&name], |r| {
                    Ok(Org {
                        id: r.get(0)?,
                        name: r.get(1)?,
                    })
                })
                .optional()?)
        })
        .await
    }

    async fn org_by_api_key(&self, hash: SecretHash) -> Result<Option<Org>, StoreError> {
        self.read("authenticate api key", move |tx| {
            Ok(tx
                .query_row(
                    "SELECT id, name FROM orgs WHERE api_key_hash = ?1",
                    [&hash[..]],
                    |r| {
                        Ok(Org {
                            id: r.get(0)?,
                            name: r.get(1)?,
                        })
                    },
                )
                .optional()?)
        })
        .await
    }

    async fn org_by_runner_token(&self, hash: SecretHash) -> Result<Option<Org>, StoreError> {
        self.read("authenticate runner token", move |tx| {
            Ok(tx
                .query_row(
                    "SELECT o.id, o.name FROM runner_tokens t JOIN orgs o ON o.id = t.org_id
                     WHERE t.token_hash = ?1 AND t.revoked_at IS NULL",
                    [&hash[..]],
                    |r| {
                        Ok(Org {
                            id: r.get(0)?,
                            name: r.get(1)?,
                        })
                    },
                )
                .optional()?)
        })
        .await
    }

    async fn create_runner_token(
        &self,
        org: OrgId,
        id: String,
        description: String,
        hash: SecretHash,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.write("create runner token", move |tx| {
            tx.execute(
                "INSERT INTO runner_tokens (id, org_id, description, token_hash, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, org, description, &hash[..], now.unix_millis()],
            )?;
            Ok(())
        })
        .await
    }

    async fn list_runner_tokens(&self, org: OrgId) -> Result<Vec<RunnerTokenInfo>, StoreError> {
        self.read("list runner tokens", move |tx| {
            let mut stmt = tx.prepare(
                "SELECT id, description, created_at, revoked_at FROM runner_tokens
                 WHERE org_id = ?1 ORDER BY created_at, id",
            )?;
            let rows = stmt.query_map([org], |r| {
                Ok(RunnerTokenInfo {
                    id: r.get(0)?,
                    description: r.get(1)?,
                    created_at: ts(r, 2)?,
                    revoked_at: opt_ts(r, 3)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn revoke_runner_token(
        &self,
        org: OrgId,
        id: String,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.write("revoke runner token", move |tx| {
            let found = tx
                .query_row(
                    "SELECT 1 FROM runner_tokens WHERE id = ?1 AND org_id = ?2",
                    params![id, org],
                    |_| Ok(()),
                )
                .optional()?;
            if found.is_none() {
                return Err(StoreError::NotFound {
                    what: "runner token",
                    id,
                }
                .into());
            }
            tx.execute(
                "UPDATE runner_tokens SET revoked_at = ?3
                 WHERE id = ?1 AND org_id = ?2 AND revoked_at IS NULL",
                params![id, org, now.unix_millis()],
            )?;
            Ok(())
        })
        .await
    }

    async fn register_runner(
        &self,
        org: OrgId,
        new_id: String,
        request: RegisterRequest,
        now: Timestamp,
    ) -> Result<String, StoreError> {
        self.write("register runner", move |tx| {
            let labels = to_json(&request.labels)?;
            let id: String = tx.query_row(
                "INSERT INTO runners (id, org_id, name, labels, executor, version, capacity,
                                      registered_at, last_seen_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
                 ON CONFLICT (org_id, name) DO UPDATE SET
                     labels = excluded.labels, executor = excluded.executor,
                     version = excluded.version, capacity = excluded.capacity,
                     last_seen_at = excluded.last_seen_at
                 RETURNING id",
                params![
                    new_id,
                    org,
                    request.name,
                    labels,
                    request.executor,
                    request.version,
                    request.capacity,
                    now.unix_millis()
                ],
                |r| r.get(0),
            )?;
            Ok(id)
        })
        .await
    }

    async fn touch_runner(
        &self,
        org: OrgId,
        runner_id: String,
        now: Timestamp,
    ) -> Result<RunnerRecord, StoreError> {
        self.write("touch runner", move |tx| {
            let labels = tx
                .query_row(
                    "UPDATE runners SET last_seen_at = ?3 WHERE id = ?1 AND org_id = ?2
                     RETURNING labels",
                    params![runner_id, org, now.unix_millis()],
                    |r| from_json::<Vec<String>>(r, 0),
                )
                .optional()?;
            match labels {
                Some(labels) => Ok(RunnerRecord { runner_id, labels }),
                None => Err(StoreError::NotFound {
                    what: "runner",
                    id: runner_id,
                }
                .into()),
            }
        })
        .await
    }

    async fn list_runners(&self, org: OrgId) -> Result<Vec<RunnerInfo>, StoreError> {
        self.read("list runners", move |tx| {
            let mut stmt = tx.prepare(
                "SELECT r.id, r.name, r.labels, r.executor, r.version, r.last_seen_at,
                        (SELECT COUNT(*) FROM jobs j
                         WHERE j.runner_id = r.id AND j.state IN ('assigned', 'running'))
                 FROM runners r WHERE r.org_id = ?1 ORDER BY r.name",
            )?;
            let rows = stmt.query_map([org], |r| {
                Ok(RunnerInfo {
                    runner_id: r.get::<_, String>(0)?.into(),
                    name: r.get(1)?,
                    labels: from_json(r, 2)?,
                    executor: r.get(3)?,
                    version: r.get(4)?,
                    last_seen_at: ts(r, 5)?,
                    running_jobs: r.get(6)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn submit_job(&self, org: OrgId, job: NewJob) -> Result<(), StoreError> {
        self.write("submit job", move |tx| {
            let source = job.spec.source().map(to_json).transpose()?;
            let now = job.now.unix_millis();
            tx.execute(
                "INSERT INTO jobs (id, org_id, state, pipeline, source, labels, variables,
                                   created_at, enqueued_at)
                 VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?6, ?7, ?7)",
                params![
                    job.job_id,
                    org,
                    job.spec.pipeline(),
                    source,
                    to_json(&job.labels)?,
                    to_json(&job.variables)?,
                    now
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn claim_job(
        &self,
        org: OrgId,
        runner: RunnerRecord,
        lease: NewLease,
    ) -> Result<Option<Claimed>, StoreError> {
        self.write("claim job", move |tx| {
            let labels = to_json(&runner.labels)?;
            // One conditional UPDATE picks the oldest queued job of the org whose labels are all
            // among the runner's, and assigns it; `state = 'queued'` makes the claim exclusive.
            let claimed = tx
                .query_row(
                    "UPDATE jobs SET state = 'assigned', runner_id = ?3, lease_id = ?4,
                         lease_expires_at = ?5, assigned_at = ?6, cancel_reported = 0
                     WHERE state = 'queued' AND seq = (
                         SELECT j.seq FROM jobs j
                         WHERE j.org_id = ?1 AND j.state = 'queued'
                           AND NOT EXISTS (
                               SELECT 1 FROM json_each(j.labels) l
                               WHERE l.value NOT IN (SELECT value FROM json_each(?2)))
                         ORDER BY j.seq LIMIT 1)
                     RETURNING id, pipeline, source, labels, variables, created_at, enqueued_at",
                    params![
                        org,
                        labels,
                        runner.runner_id,
                        lease.lease_id,
                        lease.expires_at.unix_millis(),
                        lease.now.unix_millis()
                    ],
                    |r| {
                        Ok(Claimed {
                            assignment: JobAssignment {
                                job_id: r.get::<_, String>(0)?.into(),
                                lease_id: lease.lease_id.as_str().into(),
                                lease_expires_at: lease.expires_at,
                                spec: spec(r, 1, 2)?,
                                labels: from_json(r, 3)?,
                                variables: from_json(r, 4)?,
                                created_at: ts(r, 5)?,
                            },
                            enqueued_at: ts(r, 6)?,
                        })
                    },
                )
                .optional()?;
            Ok(claimed)
        })
        .await
    }

    async fn heartbeat(
        &self,
        org: OrgId,
        runner_id: String,
        leases: Vec<HeldLease>,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Result<HeartbeatOutcome, StoreError> {
        self.write("heartbeat", move |tx| {
            let seen = tx.execute(
                "UPDATE runners SET last_seen_at = ?3 WHERE id = ?1 AND org_id = ?2",
                params![runner_id, org, now.unix_millis()],
            )?;
            if seen == 0 {
                return Err(StoreError::NotFound {
                    what: "runner",
                    id: runner_id,
                }
                .into());
            }
            let mut outcome = HeartbeatOutcome {
                statuses: Vec::with_capacity(leases.len()),
                news: false,
                expired: Vec::new(),
            };
            for held in leases {
                let lost = LeaseStatus {
                    job_id: held.job_id.clone(),
                    lease_lost: true,
                    lease_expires_at: None,
                    cancel_requested: false,
                };
                let head = match job_head(tx, org, held.job_id.as_str()) {
                    Ok(head) => head,
                    Err(Fail::Domain(StoreError::NotFound { .. })) => {
                        outcome.news = true;
                        outcome.statuses.push(lost);
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let holds = is_live(head.state)
                    && head.runner_id.as_deref() == Some(runner_id.as_str())
                    && head.lease_id.as_deref() == Some(held.lease_id.as_str());
                if !holds {
                    outcome.news = true;
                    outcome.statuses.push(LeaseStatus {
                        cancel_requested: head.cancel_requested,
                        ..lost
                    });
                    continue;
                }
                if head.lease_expires_at.is_none_or(|t| t <= now.unix_millis()) {
                    outcome
                        .expired
                        .push(expire_job(tx, org, held.job_id.as_str(), &head, now)?);
                    outcome.news = true;
                    outcome.statuses.push(LeaseStatus {
                        cancel_requested: head.cancel_requested,
                        ..lost
                    });
                    continue;
                }
                tx.execute(
                    "UPDATE jobs SET lease_expires_at = ?2,
                         cancel_reported = cancel_reported OR cancel_requested
                     WHERE seq = ?1",
                    params![head.seq, expires_at.unix_millis()],
                )?;
                if head.cancel_requested && !head.cancel_reported {
                    outcome.news = true;
                }
                outcome.statuses.push(LeaseStatus {
                    job_id: held.job_id,
                    lease_lost: false,
                    lease_expires_at: Some(expires_at),
                    cancel_requested: head.cancel_requested,
                });
            }
            Ok(outcome)
        })
        .await
    }

    async fn append_log(
        &self,
        org: OrgId,
        job_id: String,
        offset: u64,
        data: Bytes,
        now: Timestamp,
    ) -> Result<Appended, StoreError> {
        self.write("append log", move |tx| {
            let head = job_head(tx, org, &job_id)?;
            if head.state == JobState::Queued {
                return Err(queued_error(&job_id));
            }
            let committed = head.log_bytes;
            if offset > committed {
                return Err(StoreError::LogGap {
                    job: job_id,
                    offset,
                    committed,
                }
                .into());
            }
            let end = offset.saturating_add(data.len() as u64);
            if end <= committed {
                return Ok(Appended {
                    committed,
                    added: 0,
                });
            }
            // Bytes below `committed` were stored by an earlier call: skip them.
            let skip = usize::try_from(committed - offset).unwrap_or(usize::MAX);
            let fresh = &data[skip.min(data.len())..];
            // The last chunk's length first: its bytes are read only when small appends are
            // coalesced into it, never for the large batches a busy log sends.
            let last = tx
                .query_row(
                    "SELECT start, length(data) FROM log_chunks WHERE job_seq = ?1
                     ORDER BY start DESC LIMIT 1",
                    [head.seq],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
                )
                .optional()?;
            match last {
                Some((start, len))
                    if usize::try_from(len)
                        .unwrap_or(usize::MAX)
                        .saturating_add(fresh.len())
                        <= COALESCE_LIMIT
                        && i64_of(committed) == start + len =>
                {
                    let mut bytes: Vec<u8> = tx.query_row(
                        "SELECT data FROM log_chunks WHERE job_seq = ?1 AND start = ?2",
                        params![head.seq, start],
                        |r| r.get(0),
                    )?;
                    bytes.extend_from_slice(fresh);
                    tx.execute(
                        "UPDATE log_chunks SET data = ?3 WHERE job_seq = ?1 AND start = ?2",
                        params![head.seq, start, bytes],
                    )?;
                }
                _ => {
                    tx.execute(
                        "INSERT INTO log_chunks (job_seq, start, data) VALUES (?1, ?2, ?3)",
                        params![head.seq, i64_of(committed), fresh],
                    )?;
                }
            }
            let added = fresh.len() as u64;
            tx.execute(
                "UPDATE jobs SET log_bytes = log_bytes + ?2,
                     state = CASE WHEN state = 'assigned' THEN 'running' ELSE state END,
                     started_at = CASE WHEN state = 'assigned' THEN ?3 ELSE started_at END
                 WHERE seq = ?1",
                params![head.seq, i64_of(added), now.unix_millis()],
            )?;
            Ok(Appended {
                committed: committed + added,
                added,
            })
        })
        .await
    }

    async fn read_log(
        &self,
        org: OrgId,
        job_id: String,
        offset: u64,
        max: usize,
    ) -> Result<LogSlice, StoreError> {
        self.read("read log", move |tx| {
            let head = job_head(tx, org, &job_id)?;
            let total = head.log_bytes;
            let ended = head.state.is_terminal();
            if offset > total {
                return Err(StoreError::OffsetPastEnd {
                    job: job_id,
                    offset,
                    end: total,
                }
                .into());
            }
            let mut out = BytesMut::new();
            if offset < total && max > 0 {
                let mut stmt = tx.prepare(
                    "SELECT start, data FROM log_chunks
                     WHERE job_seq = ?1 AND start >= COALESCE(
                         (SELECT MAX(start) FROM log_chunks WHERE job_seq = ?1 AND start <= ?2), 0)
                     ORDER BY start",
                )?;
                let mut rows = stmt.query(params![head.seq, i64_of(offset)])?;
                while let Some(row) = rows.next()? {
                    let start = u64_col(row, 0)?;
                    let data = row.get_ref(1)?.as_blob().map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(1, Type::Blob, Box::new(e))
                    })?;
                    let skip = usize::try_from(offset.saturating_sub(start)).unwrap_or(usize::MAX);
                    if skip >= data.len() {
                        continue;
                    }
                    let room = max - out.len();
                    let piece = &data[skip..];
                    out.extend_from_slice(&piece[..piece.len().min(room)]);
                    if out.len() >= max {
                        break;
                    }
                }
            }
            Ok(LogSlice {
                data: out.freeze(),
                total,
                ended,
            })
        })
        .await
    }

    async fn upsert_step(
        &self,
        org: OrgId,
        job_id: String,
        step: StepUpdate,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        self.write("update step", move |tx| {
            let head = job_head(tx, org, &job_id)?;
            if head.state == JobState::Queued {
                return Err(queued_error(&job_id));
            }
            let (class, message) = match &step.failure {
                Some(f) => (Some(f.class.as_str()), Some(f.message.as_str())),
                None => (None, None),
            };
            tx.execute(
                "INSERT INTO job_steps (job_seq, idx, name, state, exit_code, started_at,
                                        finished_at, failure_class, failure_message, log_offset)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (job_seq, idx) DO UPDATE SET
                     name = excluded.name, state = excluded.state, exit_code = excluded.exit_code,
                     started_at = excluded.started_at, finished_at = excluded.finished_at,
                     failure_class = excluded.failure_class,
                     failure_message = excluded.failure_message, log_offset = excluded.log_offset",
                params![
                    head.seq,
                    step.index,
                    step.name,
                    step.state.as_str(),
                    step.exit_code,
                    step.started_at.map(Timestamp::unix_millis),
                    step.finished_at.map(Timestamp::unix_millis),
                    class,
                    message,
                    step.log_offset.map(i64_of)
                ],
            )?;
            let started = head.state == JobState::Assigned;
            if started {
                tx.execute(
                    "UPDATE jobs SET state = 'running', started_at = ?2
                     WHERE seq = ?1 AND state = 'assigned'",
                    params![head.seq, now.unix_millis()],
                )?;
            }
            Ok(started)
        })
        .await
    }

    async fn complete_job(
        &self,
        org: OrgId,
        job_id: String,
        request: CompleteRequest,
        now: Timestamp,
    ) -> Result<Completed, StoreError> {
        self.write("complete job", move |tx| {
            let head = job_head(tx, org, &job_id)?;
            if head.state == JobState::Queued {
                return Err(queued_error(&job_id));
            }
            if head.lease_id.as_deref() != Some(request.lease_id.as_str()) {
                return Err(StoreError::LeaseMismatch {
                    job: job_id,
                    lease: request.lease_id.into_string(),
                }
                .into());
            }
            let wanted = request.result.state();
            if head.state.is_terminal() {
                if head.state == wanted {
                    return Ok(Completed {
                        state: wanted,
                        newly: false,
                    });
                }
                return Err(StoreError::InvalidState {
                    job: job_id,
                    message: format!("ended already as `{}`, not `{wanted}`", head.state),
                }
                .into());
            }
            if request.log_bytes > head.log_bytes {
                return Err(StoreError::LogIncomplete {
                    job: job_id,
                    announced: request.log_bytes,
                    committed: head.log_bytes,
                }
                .into());
            }
            let (class, message) = match &request.failure {
                Some(f) => (Some(f.class.as_str()), Some(f.message.clone())),
                None => (None, None),
            };
            tx.execute(
                "UPDATE jobs SET state = ?2, failure_class = ?3, failure_message = ?4,
                     finished_at = ?5, started_at = COALESCE(started_at, ?5),
                     lease_expires_at = NULL
                 WHERE seq = ?1",
                params![head.seq, wanted.as_str(), class, message, now.unix_millis()],
            )?;
            Ok(Completed {
                state: wanted,
                newly: true,
            })
        })
        .await
    }

    async fn cancel_job(
        &self,
        org: OrgId,
        job_id: String,
        now: Timestamp,
    ) -> Result<CancelOutcome, StoreError> {
        self.write("cancel job", move |tx| {
            let head = job_head(tx, org, &job_id)?;
            match head.state {
                JobState::Queued => {
                    tx.execute(
                        "UPDATE jobs SET state = 'cancelled', cancel_requested = 1,
                             finished_at = ?2, failure_class = 'cancelled',
                             failure_message = 'cancelled before a runner took it'
                         WHERE seq = ?1",
                        params![head.seq, now.unix_millis()],
                    )?;
                    Ok(CancelOutcome {
                        state: JobState::Cancelled,
                        cancel_requested: true,
                        runner_id: None,
                        ended: true,
                    })
                }
                JobState::Assigned | JobState::Running => {
                    if !head.cancel_requested {
                        tx.execute(
                            "UPDATE jobs SET cancel_requested = 1, cancel_reported = 0
                             WHERE seq = ?1",
                            [head.seq],
                        )?;
                    }
                    Ok(CancelOutcome {
                        state: head.state,
                        cancel_requested: true,
                        runner_id: head.runner_id,
                        ended: false,
                    })
                }
                ended => Ok(CancelOutcome {
                    state: ended,
                    cancel_requested: head.cancel_requested,
                    runner_id: None,
                    ended: false,
                }),
            }
        })
        .await
    }

    async fn list_jobs(
        &self,
        org: OrgId,
        state: Option<JobState>,
        limit: u32,
    ) -> Result<Vec<JobSummary>, StoreError> {
        self.read("list jobs", move |tx| {
            let mut stmt = tx.prepare(
                "SELECT id, state, labels, created_at, finished_at FROM jobs
                 WHERE org_id = ?1 AND (?2 IS NULL OR state = ?2)
                 ORDER BY seq DESC LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![org, state.map(JobState::as_str), limit], |r| {
                Ok(JobSummary {
                    job_id: r.get::<_, String>(0)?.into(),
                    state: job_state(r, 1)?,
                    labels: from_json(r, 2)?,
                    created_at: ts(r, 3)?,
                    finished_at: opt_ts(r, 4)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn job_details(&self, org: OrgId, job_id: String) -> Result<JobDetails, StoreError> {
        self.read("read job", move |tx| {
            let details = tx
                .query_row(
                    "SELECT seq, id, state, failure_class, failure_message, pipeline, source,
                            labels, variables, runner_id, created_at, started_at, finished_at,
                            log_bytes
                     FROM jobs WHERE id = ?1 AND org_id = ?2",
                    params![job_id, org],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            JobDetails {
                                job_id: r.get::<_, String>(1)?.into(),
                                state: job_state(r, 2)?,
                                failure: failure(r, 3, 4)?,
                                spec: spec(r, 5, 6)?,
                                labels: from_json(r, 7)?,
                                variables: from_json(r, 8)?,
                                runner_id: r.get::<_, Option<String>>(9)?.map(Into::into),
                                created_at: ts(r, 10)?,
                                started_at: opt_ts(r, 11)?,
                                finished_at: opt_ts(r, 12)?,
                                log_bytes: u64_col(r, 13)?,
                                steps: Vec::new(),
                            },
                        ))
                    },
                )
                .optional()?;
            let Some((seq, mut details)) = details else {
                return Err(StoreError::NotFound {
                    what: "job",
                    id: job_id,
                }
                .into());
            };
            let mut stmt = tx.prepare(
                "SELECT idx, name, state, exit_code, started_at, finished_at, failure_class,
                        failure_message, log_offset
                 FROM job_steps WHERE job_seq = ?1 ORDER BY idx",
            )?;
            let steps = stmt.query_map([seq], |r| {
                Ok(StepInfo {
                    index: r.get(0)?,
                    name: r.get(1)?,
                    state: enum_col::<StepState>(r, 2)?,
                    exit_code: r.get(3)?,
                    started_at: opt_ts(r, 4)?,
                    finished_at: opt_ts(r, 5)?,
                    failure: failure(r, 6, 7)?,
                    log_offset: r
                        .get::<_, Option<i64>>(8)?
                        .map(|v| u64::try_from(v).unwrap_or(0)),
                })
            })?;
            details.steps = steps.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(details)
        })
        .await
    }

    async fn expire_leases(&self, now: Timestamp) -> Result<Vec<ExpiredLease>, StoreError> {
        self.write("expire leases", move |tx| {
            let due: Vec<(i64, String)> = {
                let mut stmt = tx.prepare(
                    "SELECT org_id, id FROM jobs
                     WHERE state IN ('assigned', 'running') AND lease_expires_at <= ?1
                     ORDER BY seq",
                )?;
                let rows = stmt.query_map([now.unix_millis()], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect::<rusqlite::Result<Vec<_>>>()?
            };
            let mut expired = Vec::with_capacity(due.len());
            for (org, job_id) in due {
                let head = job_head(tx, org, &job_id)?;
                expired.push(expire_job(tx, org, &job_id, &head, now)?);
            }
            Ok(expired)
        })
        .await
    }

    async fn next_lease_expiry(&self) -> Result<Option<Timestamp>, StoreError> {
        self.read("next lease expiry", |tx| {
            let next: Option<i64> = tx.query_row(
                "SELECT MIN(lease_expires_at) FROM jobs WHERE state IN ('assigned', 'running')",
                [],
                |r| r.get(0),
            )?;
            Ok(next.map(Timestamp::from_unix_millis))
        })
        .await
    }

    async fn extend_live_leases(&self, expires_at: Timestamp) -> Result<u64, StoreError> {
        self.write("extend leases", move |tx| {
            let n = tx.execute(
                "UPDATE jobs SET lease_expires_at = ?1
                 WHERE state IN ('assigned', 'running')
                   AND (lease_expires_at IS NULL OR lease_expires_at < ?1)",
                [expires_at.unix_millis()],
            )?;
            Ok(n as u64)
        })
        .await
    }

    async fn job_counts(&self) -> Result<Vec<(JobState, u64)>, StoreError> {
        self.read("count jobs", |tx| {
            let mut stmt = tx.prepare("SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
            let rows = stmt.query_map([], |r| Ok((job_state(r, 0)?, u64_col(r, 1)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }
}
