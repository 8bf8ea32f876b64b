//! The embedded SQLite store: one database file in WAL mode for every row, and the job logs in
//! append-only files beside it ([`LogFiles`], `<database>.logs/`). rusqlite is blocking, so
//! every call runs on tokio's blocking pool, on one of two connections (a writer and a reader,
//! each behind a std mutex that is never held across an `.await`). Writes are `BEGIN IMMEDIATE`
//! transactions; state changes are conditional UPDATEs, so a job is claimed exactly once even
//! when several hubs or admin commands share the file.
//!
//! Durability: `synchronous=NORMAL` in WAL mode: every committed transaction survives a crash of
//! the hub process (kill -9); a power loss or OS crash may lose the last few transactions. A log
//! append writes and `fdatasync`s the job's file first and commits the new length (`log_bytes`)
//! after, so the database never counts a byte the file may not hold; bytes past `log_bytes` (an
//! append cut short by a crash) are never served and are cut off by the job's next append.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use outpost_protocol::{
    CompleteRequest, Failure, FailureClass, HeldLease, JobAssignment, JobDetails, JobSpec,
    JobState, JobSummary, LeaseStatus, RegisterRequest, RunnerInfo, RunnerTokenInfo, Source,
    StepInfo, StepState, StepUpdate, Timestamp,
};
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::logfiles::{LogFiles, LogWriter};
use super::{
    Appended, CancelOutcome, Claimed, Completed, ExpiredLease, HeartbeatOutcome, LogSlice, NewJob,
    NewLease, Org, OrgId, RunnerRecord, SecretHash, Store, StoreError,
};

/// How long a call waits for another process's write lock before failing with `Busy`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// The schema version this code writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 2;
/// How many orphaned log files are checked against the jobs table in one read transaction.
const ORPHAN_BATCH: usize = 500;
/// How many log files the schema 1 → 2 migration writes before syncing them together.
const MIGRATION_SYNC_BATCH: usize = 32;

/// Version 1: every table, with log bytes in `log_chunks` rows. A new database is created at
/// version 1 and migrated, so every database goes through the same steps.
const SCHEMA_V1: &str = "
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

/// Version 2: log bytes live in files ([`LogFiles`]); `migrate_logs_to_files` has moved the
/// chunks out before this runs. The index serves the retention sweep.
const SCHEMA_V2: &str = "
DROP TABLE log_chunks;
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
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
    logs: LogFiles,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .field("logs", &self.inner.logs.root())
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

impl From<super::LogFileError> for Fail {
    fn from(e: super::LogFileError) -> Self {
        Fail::Domain(e.into())
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
    /// Opens (creating when missing) the database file and its log folder
    /// (`<database>.logs`), and brings the schema up to date (moving the log chunks of a
    /// version 1 database into files). Blocking: call it from a blocking context.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let writer = open_connection(path).map_err(open_err)?;
        // After the database, so a database path in a missing folder fails as it always did,
        // instead of the log folder creating that folder.
        let logs = LogFiles::open(&LogFiles::root_for(path))?;
        migrate(&writer, &logs).map_err(|e| match e {
            Fail::Sql(e) => open_err(e),
            Fail::Domain(e) => e,
        })?;
        let reader = open_connection(path).map_err(open_err)?;
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                writer: Mutex::new(writer),
                reader: Mutex::new(reader),
                logs,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The folder of the job log files.
    pub fn logs_dir(&self) -> &Path {
        self.inner.logs.root()
    }

    /// Runs `f` on the blocking pool with the store's parts.
    async fn blocking<T, F>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let task = tokio::task::spawn_blocking(move || f(&inner));
        task.await.map_err(|e| StoreError::Task {
            op,
            message: e.to_string(),
        })?
    }

    /// Runs `f` in an immediate (write) transaction on the blocking pool; commits on `Ok`.
    async fn write<T, F>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> TxResult<T> + Send + 'static,
    {
        self.blocking(op, move |inner| inner.write(op, f)).await
    }

    /// Runs `f` in a read transaction (one consistent snapshot) on the blocking pool.
    async fn read<T, F>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> TxResult<T> + Send + 'static,
    {
        self.blocking(op, move |inner| inner.read(op, f)).await
    }
}

impl Inner {
    /// Runs `f` in an immediate (write) transaction on the writer; commits on `Ok`. Blocking.
    fn write<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Transaction<'_>) -> TxResult<T>,
    ) -> Result<T, StoreError> {
        let mut conn = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let r = (|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let value = f(&tx)?;
            tx.commit()?;
            Ok(value)
        })();
        finish(op, r)
    }

    /// Runs `f` in a read transaction on the reader. Blocking.
    fn read<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Transaction<'_>) -> TxResult<T>,
    ) -> Result<T, StoreError> {
        let mut conn = self.reader.lock().unwrap_or_else(PoisonError::into_inner);
        let r = (|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
            let value = f(&tx)?;
            tx.finish()?;
            Ok(value)
        })();
        finish(op, r)
    }
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    // Every statement of the store is prepared once per connection and kept (there are fewer
    // than this many).
    conn.set_prepared_statement_cache_capacity(64);
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(path = %path.display(), mode, "database is not in WAL mode");
    }
    // NORMAL: a commit survives a crash of the process (kill -9), fsyncs happen at checkpoints.
    // Checkpoints every ~16 MiB of WAL instead of SQLite's 4 MiB: fewer checkpoint fsyncs (log
    // bytes no longer pass through the WAL, but a busy hub still writes many small rows).
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = 4000;",
    )?;
    Ok(conn)
}

/// Brings the schema to [`SCHEMA_VERSION`], one version at a time, in one transaction: a crash
/// part-way leaves the database at its old version, and the next open starts over.
fn migrate(conn: &Connection, logs: &LogFiles) -> TxResult<()> {
    let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "schema version {version} is newer than this hub knows ({SCHEMA_VERSION})"
        ))
        .into());
    }
    if version < 1 {
        tx.execute_batch(SCHEMA_V1)?;
    }
    if version < 2 {
        migrate_logs_to_files(&tx, logs)?;
        tx.execute_batch(SCHEMA_V2)?;
    }
    if version < SCHEMA_VERSION {
        tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))?;
    }
    tx.commit()?;
    Ok(())
}

/// Version 1 → 2: writes each job's `log_chunks` rows, in offset order, to its log file and
/// syncs it, before the transaction that drops the table commits. A crash in between leaves the
/// chunks in place; the next open rewrites the files from offset 0. One chunk at a time is in
/// memory.
fn migrate_logs_to_files(tx: &Transaction<'_>, logs: &LogFiles) -> TxResult<()> {
    let jobs: Vec<(i64, OrgId, String, u64)> = {
        let mut stmt = tx.prepare(
            "SELECT j.seq, j.org_id, j.id, j.log_bytes FROM jobs j
             WHERE EXISTS (SELECT 1 FROM log_chunks c WHERE c.job_seq = j.seq)
             ORDER BY j.seq",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, u64_col(r, 3)?))
        })?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    if jobs.is_empty() {
        return Ok(());
    }
    tracing::info!(
        jobs = jobs.len(),
        logs = %logs.root().display(),
        "moving job logs out of the database into files (schema 1 → 2)"
    );
    let mut chunks =
        tx.prepare("SELECT start, data FROM log_chunks WHERE job_seq = ?1 ORDER BY start")?;
    let mut bytes = 0u64;
    let mut unsynced = Vec::with_capacity(MIGRATION_SYNC_BATCH);
    for (seq, org, job_id, log_bytes) in jobs {
        let mut writer = logs.lock(org, &job_id).writer(0)?;
        let mut rows = chunks.query([seq])?;
        while let Some(row) = rows.next()? {
            let start = u64_col(row, 0)?;
            let data = row.get_ref(1)?.as_blob().map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(1, Type::Blob, Box::new(e))
            })?;
            // The old store wrote contiguous chunks; anything else is kept up to the first hole.
            let skip =
                usize::try_from(writer.position().saturating_sub(start)).unwrap_or(usize::MAX);
            if start > writer.position() {
                tracing::warn!(job = %job_id, at = writer.position(), next = start, "log chunks have a hole; the log is kept up to it");
                break;
            }
            if skip < data.len() {
                writer.write(&data[skip..])?;
            }
        }
        let written = writer.position();
        unsynced.push(writer);
        if unsynced.len() == MIGRATION_SYNC_BATCH {
            finish_all(&mut unsynced)?;
        }
        bytes += written.min(log_bytes);
        if written < log_bytes {
            tracing::warn!(job = %job_id, log_bytes, written, "log chunks hold fewer bytes than the job counted; log_bytes set to what they hold");
            tx.execute(
                "UPDATE jobs SET log_bytes = ?2 WHERE seq = ?1",
                params![seq, i64_of(written)],
            )?;
        }
        // More bytes than counted cannot come from the old store; the extra is past log_bytes,
        // so it is never served and the next append cuts it off.
    }
    finish_all(&mut unsynced)?;
    tracing::info!(bytes, "job logs moved into files");
    Ok(())
}

/// Syncs the files of a migration batch in parallel: concurrent fdatasyncs share the file
/// system's journal commits, where one after another each would wait for its own.
fn finish_all(writers: &mut Vec<LogWriter>) -> Result<(), super::LogFileError> {
    std::thread::scope(|scope| {
        let syncs: Vec<_> = writers
            .drain(..)
            .map(|writer| scope.spawn(move || writer.finish()))
            .collect();
        // The scope joins every thread, also those after the first error.
        syncs.into_iter().try_for_each(|sync| {
            sync.join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    })
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

/// Checks that `lease_id` is the job's lease: only its holder writes to a job.
fn check_lease(head: &JobHead, job_id: &str, lease_id: &str) -> Result<(), StoreError> {
    if head.lease_id.as_deref() == Some(lease_id) {
        Ok(())
    } else {
        Err(StoreError::LeaseMismatch {
            job: job_id.to_owned(),
            lease: lease_id.to_owned(),
        })
    }
}

fn queued_error(job_id: &str) -> StoreError {
    StoreError::InvalidState {
        job: job_id.to_owned(),
        message: "is queued: no runner holds it yet".to_owned(),
    }
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
        tx.prepare_cached(
            "UPDATE jobs SET state = 'cancelled', lease_expires_at = NULL, finished_at = ?2,
                 failure_class = 'cancelled', failure_message = ?3
             WHERE seq = ?1",
        )?
        .execute(params![head.seq, now_ms, message])?;
        JobState::Cancelled
    } else if head.state == JobState::Assigned {
        tx.prepare_cached(
            "UPDATE jobs SET state = 'queued', runner_id = NULL, lease_id = NULL,
                 lease_expires_at = NULL, assigned_at = NULL, enqueued_at = ?2,
                 cancel_reported = 0
             WHERE seq = ?1",
        )?
        .execute(params![head.seq, now_ms])?;
        JobState::Queued
    } else {
        let message = format!("runner {runner} stopped renewing its lease; the job was lost");
        tx.prepare_cached(
            "UPDATE jobs SET state = 'lost', lease_expires_at = NULL, finished_at = ?2,
                 failure_class = 'runner_lost', failure_message = ?3
             WHERE seq = ?1",
        )?
        .execute(params![head.seq, now_ms, message])?;
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
            let one: i64 = tx.prepare_cached("SELECT 1")?.query_row([], |r| r.get(0))?;
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
            tx.prepare_cached(
                "INSERT INTO orgs (name, api_key_hash, created_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![name, &api_key_hash[..], now.unix_millis()])?;
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
            tx.prepare_cached(
                "INSERT INTO runner_tokens (id, org_id, description, token_hash, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![id, org, description, &hash[..], now.unix_millis()])?;
            Ok(())
        })
        .await
    }

    async fn list_runner_tokens(&self, org: OrgId) -> Result<Vec<RunnerTokenInfo>, StoreError> {
        self.read("list runner tokens", move |tx| {
            let mut stmt = tx.prepare_cached(
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
            tx.prepare_cached(
                "UPDATE runner_tokens SET revoked_at = ?3
                 WHERE id = ?1 AND org_id = ?2 AND revoked_at IS NULL",
            )?
            .execute(params![id, org, now.unix_millis()])?;
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
            let id: String = tx
                .prepare_cached(
                    "INSERT INTO runners (id, org_id, name, labels, executor, version, capacity,
                                      registered_at, last_seen_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
                 ON CONFLICT (org_id, name) DO UPDATE SET
                     labels = excluded.labels, executor = excluded.executor,
                     version = excluded.version, capacity = excluded.capacity,
                     last_seen_at = excluded.last_seen_at
                 RETURNING id",
                )?
                .query_row(
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
            let mut stmt = tx.prepare_cached(
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
            tx.prepare_cached(
                "INSERT INTO jobs (id, org_id, state, pipeline, source, labels, variables,
                                   created_at, enqueued_at)
                 VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?6, ?7, ?7)",
            )?
            .execute(params![
                job.job_id,
                org,
                job.spec.pipeline(),
                source,
                to_json(&job.labels)?,
                to_json(&job.variables)?,
                now
            ])?;
            Ok(())
        })
        .await
    }

    async fn claim_job(
        &self,
        org: OrgId,
        runner: RunnerRecord,
        lease: NewLease,
        prefer: Option<String>,
        skip: Vec<String>,
    ) -> Result<Option<Claimed>, StoreError> {
        self.write("claim job", move |tx| {
            let labels = to_json(&runner.labels)?;
            let skip = to_json(&skip)?;
            let (expires_at, now) = (lease.expires_at.unix_millis(), lease.now.unix_millis());
            let params = params![
                org,
                labels,
                runner.runner_id,
                lease.lease_id,
                expires_at,
                now,
                skip
            ];
            let row = |r: &Row<'_>| {
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
            };
            // The job the acquire was woken for, if it is still queued (one lookup by id);
            // else, or unwoken, one conditional UPDATE picks the oldest queued job of the org
            // whose labels are all among the runner's and that is not reserved for another
            // acquire. `state = 'queued'` makes either claim exclusive.
            if let Some(prefer) = &prefer {
                let params = params![
                    org,
                    labels,
                    runner.runner_id,
                    lease.lease_id,
                    expires_at,
                    now,
                    prefer
                ];
                let preferred = tx
                    .query_row(
                        "UPDATE jobs SET state = 'assigned', runner_id = ?3, lease_id = ?4,
                             lease_expires_at = ?5, assigned_at = ?6, cancel_reported = 0
                         WHERE id = ?7 AND org_id = ?1 AND state = 'queued'
                           AND NOT EXISTS (
                               SELECT 1 FROM json_each(jobs.labels) l
                               WHERE l.value NOT IN (SELECT value FROM json_each(?2)))
                         RETURNING id, pipeline, source, labels, variables, created_at,
                                   enqueued_at",
                        params,
                        row,
                    )
                    .optional()?;
                if preferred.is_some() {
                    return Ok(preferred);
                }
            }
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
                           AND j.id NOT IN (SELECT value FROM json_each(?7))
                         ORDER BY j.seq LIMIT 1)
                     RETURNING id, pipeline, source, labels, variables, created_at, enqueued_at",
                    params,
                    row,
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
            let seen = tx
                .prepare_cached(
                    "UPDATE runners SET last_seen_at = ?3 WHERE id = ?1 AND org_id = ?2",
                )?
                .execute(params![runner_id, org, now.unix_millis()])?;
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
                tx.prepare_cached(
                    "UPDATE jobs SET lease_expires_at = ?2,
                         cancel_reported = cancel_reported OR cancel_requested
                     WHERE seq = ?1",
                )?
                .execute(params![head.seq, expires_at.unix_millis()])?;
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
        lease_id: String,
        offset: u64,
        data: Bytes,
        now: Timestamp,
    ) -> Result<Appended, StoreError> {
        const OP: &str = "append log";
        self.blocking(OP, move |inner| {
            // The job's lock orders its appends; appends to other jobs run beside this one,
            // each with its own fdatasync, and meet only in the short commit below.
            let lock = inner.logs.lock(org, &job_id);
            let head = inner.read(OP, |tx| job_head(tx, org, &job_id))?;
            if head.state == JobState::Queued {
                return Err(queued_error(&job_id));
            }
            check_lease(&head, &job_id, &lease_id)?;
            let committed = head.log_bytes;
            let end = offset.saturating_add(data.len() as u64);
            // A replay of bytes the hub holds is harmless, also once the job has ended (a
            // retry whose answer was lost, a restarted runner asking where to resume).
            if offset <= committed && end <= committed {
                return Ok(Appended {
                    committed,
                    added: 0,
                });
            }
            if head.state.is_terminal() {
                return Err(StoreError::JobEnded {
                    job: job_id,
                    state: head.state,
                    what: "its log is",
                    committed: Some(committed),
                });
            }
            if offset > committed {
                return Err(StoreError::LogGap {
                    job: job_id,
                    offset,
                    committed,
                });
            }
            // Bytes below `committed` were stored by an earlier call: skip them.
            let skip = usize::try_from(committed - offset).unwrap_or(usize::MAX);
            let fresh = &data[skip.min(data.len())..];
            let added = fresh.len() as u64;
            // Durable in the file first, counted in the database after: see `LogFiles`.
            lock.append(committed, fresh)?;
            inner.write(OP, |tx| {
                let updated = tx
                    .prepare_cached(
                        "UPDATE jobs SET log_bytes = ?3,
                         state = CASE WHEN state = 'assigned' THEN 'running' ELSE state END,
                         started_at = CASE WHEN state = 'assigned' THEN ?4 ELSE started_at END
                     WHERE seq = ?1 AND log_bytes = ?2 AND state IN ('assigned', 'running')
                         AND lease_id = ?5",
                    )?
                    .execute(params![
                        head.seq,
                        i64_of(committed),
                        i64_of(committed + added),
                        now.unix_millis(),
                        lease_id
                    ])?;
                if updated == 1 {
                    return Ok(());
                }
                // The job changed between the read and this commit. The bytes written past
                // its committed length are not counted, so they are never served.
                let again = job_head(tx, org, &job_id)?;
                if again.state == JobState::Queued {
                    return Err(queued_error(&job_id).into());
                }
                check_lease(&again, &job_id, &lease_id)?;
                if again.state.is_terminal() {
                    return Err(StoreError::JobEnded {
                        job: job_id.clone(),
                        state: again.state,
                        what: "its log is",
                        committed: Some(again.log_bytes),
                    }
                    .into());
                }
                Err(StoreError::InvalidState {
                    job: job_id.clone(),
                    message: format!(
                        "log changed during the append ({committed} bytes committed before, {} \
                         now): is another hub process appending to this database?",
                        again.log_bytes
                    ),
                }
                .into())
            })?;
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
        const OP: &str = "read log";
        self.blocking(OP, move |inner| {
            let head = inner.read(OP, |tx| job_head(tx, org, &job_id))?;
            let total = head.log_bytes;
            if offset > total {
                return Err(StoreError::OffsetPastEnd {
                    job: job_id,
                    offset,
                    end: total,
                });
            }
            // Only committed bytes, and at most `max` of them: a torn tail is never served and
            // a long log is read in pieces. Bytes below `log_bytes` never change, so the file
            // is read without the job's lock and without holding the database.
            let len = usize::try_from(total - offset)
                .unwrap_or(usize::MAX)
                .min(max);
            let data = inner.logs.read(org, &job_id, offset, len)?;
            Ok(LogSlice {
                data,
                total,
                ended: head.state.is_terminal(),
            })
        })
        .await
    }

    async fn upsert_step(
        &self,
        org: OrgId,
        job_id: String,
        lease_id: String,
        step: StepUpdate,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        self.write("update step", move |tx| {
            let head = job_head(tx, org, &job_id)?;
            if head.state == JobState::Queued {
                return Err(queued_error(&job_id).into());
            }
            check_lease(&head, &job_id, &lease_id)?;
            if head.state.is_terminal() {
                return Err(StoreError::JobEnded {
                    job: job_id,
                    state: head.state,
                    what: "its steps are",
                    committed: None,
                }
                .into());
            }
            let (class, message) = match &step.failure {
                Some(f) => (Some(f.class.as_str()), Some(f.message.as_str())),
                None => (None, None),
            };
            tx.prepare_cached(
                "INSERT INTO job_steps (job_seq, idx, name, state, exit_code, started_at,
                                        finished_at, failure_class, failure_message, log_offset)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (job_seq, idx) DO UPDATE SET
                     name = excluded.name, state = excluded.state, exit_code = excluded.exit_code,
                     started_at = excluded.started_at, finished_at = excluded.finished_at,
                     failure_class = excluded.failure_class,
                     failure_message = excluded.failure_message, log_offset = excluded.log_offset",
            )?
            .execute(params![
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
            ])?;
            let started = head.state == JobState::Assigned;
            if started {
                tx.prepare_cached(
                    "UPDATE jobs SET state = 'running', started_at = ?2
                     WHERE seq = ?1 AND state = 'assigned'",
                )?
                .execute(params![head.seq, now.unix_millis()])?;
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
                return Err(queued_error(&job_id).into());
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
            tx.prepare_cached(
                "UPDATE jobs SET state = ?2, failure_class = ?3, failure_message = ?4,
                     finished_at = ?5, started_at = COALESCE(started_at, ?5),
                     lease_expires_at = NULL
                 WHERE seq = ?1",
            )?
            .execute(params![
                head.seq,
                wanted.as_str(),
                class,
                message,
                now.unix_millis()
            ])?;
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
                    tx.prepare_cached(
                        "UPDATE jobs SET state = 'cancelled', cancel_requested = 1,
                             finished_at = ?2, failure_class = 'cancelled',
                             failure_message = 'cancelled before a runner took it'
                         WHERE seq = ?1",
                    )?
                    .execute(params![head.seq, now.unix_millis()])?;
                    Ok(CancelOutcome {
                        state: JobState::Cancelled,
                        cancel_requested: true,
                        runner_id: None,
                        ended: true,
                    })
                }
                JobState::Assigned | JobState::Running => {
                    if !head.cancel_requested {
                        tx.prepare_cached(
                            "UPDATE jobs SET cancel_requested = 1, cancel_reported = 0
                             WHERE seq = ?1",
                        )?
                        .execute([head.seq])?;
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
            let mut stmt = tx.prepare_cached(
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
            let mut stmt = tx.prepare_cached(
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
                let mut stmt = tx.prepare_cached(
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
            let next: Option<i64> = tx
                .prepare_cached(
                    "SELECT MIN(lease_expires_at) FROM jobs WHERE state IN ('assigned', 'running')",
                )?
                .query_row([], |r| r.get(0))?;
            Ok(next.map(Timestamp::from_unix_millis))
        })
        .await
    }

    async fn extend_live_leases(&self, expires_at: Timestamp) -> Result<u64, StoreError> {
        self.write("extend leases", move |tx| {
            let n = tx
                .prepare_cached(
                    "UPDATE jobs SET lease_expires_at = ?1
                 WHERE state IN ('assigned', 'running')
                   AND (lease_expires_at IS NULL OR lease_expires_at < ?1)",
                )?
                .execute([expires_at.unix_millis()])?;
            Ok(n as u64)
        })
        .await
    }

    async fn job_counts(&self) -> Result<Vec<(JobState, u64)>, StoreError> {
        self.read("count jobs", |tx| {
            let mut stmt = tx.prepare_cached("SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
            let rows = stmt.query_map([], |r| Ok((job_state(r, 0)?, u64_col(r, 1)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn delete_finished_jobs(
        &self,
        ended_before: Timestamp,
        limit: u32,
    ) -> Result<u64, StoreError> {
        const OP: &str = "delete finished jobs";
        self.blocking(OP, move |inner| {
            let before = ended_before.unix_millis();
            let due: Vec<(i64, OrgId, String)> = inner.read(OP, |tx| {
                let mut stmt = tx.prepare_cached(
                    "SELECT seq, org_id, id FROM jobs
                     WHERE finished_at IS NOT NULL AND finished_at < ?1
                       AND state NOT IN ('queued', 'assigned', 'running')
                     ORDER BY finished_at LIMIT ?2",
                )?;
                let rows = stmt.query_map(params![before, limit], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })?;
            let mut deleted = 0;
            for (seq, org, job_id) in due {
                // Under the job's lock, so a late append cannot recreate the file after it is
                // removed. The rows go first: a crash before the file is removed leaves an
                // orphan file (removed by `remove_orphan_logs`), never a job without its log.
                let lock = inner.logs.lock(org, &job_id);
                let gone = inner.write(OP, |tx| {
                    let still_due = tx
                        .query_row(
                            "SELECT 1 FROM jobs WHERE seq = ?1 AND finished_at < ?2
                               AND state NOT IN ('queued', 'assigned', 'running')",
                            params![seq, before],
                            |_| Ok(()),
                        )
                        .optional()?
                        .is_some();
                    if still_due {
                        tx.prepare_cached("DELETE FROM job_steps WHERE job_seq = ?1")?
                            .execute([seq])?;
                        tx.prepare_cached("DELETE FROM jobs WHERE seq = ?1")?
                            .execute([seq])?;
                    }
                    Ok(still_due)
                })?;
                if gone {
                    lock.remove()?;
                    deleted += 1;
                }
            }
            Ok(deleted)
        })
        .await
    }

    async fn remove_orphan_logs(&self) -> Result<u64, StoreError> {
        const OP: &str = "remove orphan logs";
        self.blocking(OP, move |inner| {
            let files = inner.logs.list()?;
            let mut removed = 0;
            for batch in files.chunks(ORPHAN_BATCH) {
                let orphans: Vec<&(OrgId, String)> = inner.read(OP, |tx| {
                    let mut stmt =
                        tx.prepare_cached("SELECT 1 FROM jobs WHERE org_id = ?1 AND id = ?2")?;
                    let mut orphans = Vec::new();
                    for file in batch {
                        if !stmt.exists(params![file.0, file.1])? {
                            orphans.push(file);
                        }
                    }
                    Ok(orphans)
                })?;
                for (org, job_id) in orphans {
                    // A job that is gone does not come back (ids are never reused), and its
                    // file is only ever created for an existing job: no recheck needed. The
                    // lock keeps this apart from a retention delete of the same job.
                    if inner.logs.lock(*org, job_id).remove()? {
                        tracing::info!(org, job = %job_id, "removed the log file of a deleted job");
                        removed += 1;
                    }
                }
            }
            Ok(removed)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use outpost_protocol::JobResult;

    use super::*;

    const PIPELINE: &str = "version: 1\nsteps:\n  - name: a\n    run: true\n";

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_unix_millis(ms)
    }

    async fn open(dir: &Path) -> SqliteStore {
        let path = dir.join("hub.db");
        tokio::task::spawn_blocking(move || SqliteStore::open(&path))
            .await
            .expect("open task")
            .expect("open")
    }

    async fn org(store: &SqliteStore) -> Org {
        store
            .create_org("acme".into(), [7; 32], at(0))
            .await
            .expect("org")
    }

    /// Submits and claims a job; returns its lease id.
    async fn running_job(store: &SqliteStore, org: OrgId, job_id: &str) -> String {
        store
            .submit_job(
                org,
                NewJob {
                    job_id: job_id.to_owned(),
                    spec: JobSpec::Inline {
                        pipeline: PIPELINE.to_owned(),
                    },
                    labels: Vec::new(),
                    variables: BTreeMap::new(),
                    now: at(1),
                },
            )
            .await
            .expect("submit");
        let lease_id = format!("l_{job_id}");
        let claimed = store
            .claim_job(
                org,
                RunnerRecord {
                    runner_id: "r_1".into(),
                    labels: Vec::new(),
                },
                NewLease {
                    lease_id: lease_id.clone(),
                    now: at(2),
                    expires_at: at(i64::MAX / 2),
                },
                Some(job_id.to_owned()),
                Vec::new(),
            )
            .await
            .expect("claim")
            .expect("a queued job");
        assert_eq!(claimed.assignment.job_id.as_str(), job_id);
        lease_id
    }

    #[tokio::test]
    async fn a_claim_takes_the_job_it_was_woken_for_else_the_oldest_free_one_it_can() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path()).await;
        let org = org(&store).await;
        for (job, labels) in [("j_1", &[][..]), ("j_2", &["gpu"][..]), ("j_3", &[][..])] {
            let job = NewJob {
                job_id: job.to_owned(),
                spec: JobSpec::Inline {
                    pipeline: PIPELINE.to_owned(),
                },
                labels: labels.iter().map(|l| (*l).to_owned()).collect(),
                variables: BTreeMap::new(),
                now: at(1),
            };
            store.submit_job(org.id, job).await.expect("submit");
        }
        let claim = |prefer: Option<&str>, skip: &[&str]| {
            let store = store.clone();
            let prefer = prefer.map(str::to_owned);
            let skip: Vec<String> = skip.iter().map(|s| (*s).to_owned()).collect();
            async move {
                store
                    .claim_job(
                        org.id,
                        RunnerRecord {
                            runner_id: "r_1".into(),
                            labels: Vec::new(),
                        },
                        NewLease {
                            lease_id: format!("l_{}", rand::random::<u32>()),
                            now: at(2),
                            expires_at: at(i64::MAX / 2),
                        },
                        prefer,
                        skip,
                    )
                    .await
                    .expect("claim")
                    .map(|c| c.assignment.job_id.to_string())
            }
        };
        assert_eq!(
            claim(Some("j_3"), &["j_3"]).await.as_deref(),
            Some("j_3"),
            "the job woken for, though reserved (for this very acquire)"
        );
        assert_eq!(
            claim(None, &["j_1"]).await,
            None,
            "j_1 is reserved, j_2 needs a label"
        );
        // One the runner cannot take, or one gone: the oldest free one it can.
        assert_eq!(claim(Some("j_2"), &[]).await.as_deref(), Some("j_1"));
        assert_eq!(claim(Some("j_3"), &[]).await, None, "j_2 needs a label");
    }

    async fn append(store: &SqliteStore, org: OrgId, job: &str, offset: u64, data: &[u8]) -> u64 {
        store
            .append_log(
                org,
                job.to_owned(),
                format!("l_{job}"),
                offset,
                Bytes::copy_from_slice(data),
                at(3),
            )
            .await
            .expect("append")
            .committed
    }

    async fn log(store: &SqliteStore, org: OrgId, job: &str, offset: u64, max: usize) -> Vec<u8> {
        store
            .read_log(org, job.to_owned(), offset, max)
            .await
            .expect("read")
            .data
            .to_vec()
    }

    async fn complete(store: &SqliteStore, org: OrgId, job: &str, lease: &str, len: u64, ms: i64) {
        let request = CompleteRequest {
            lease_id: lease.into(),
            result: JobResult::Success,
            failure: None,
            log_bytes: len,
        };
        store
            .complete_job(org, job.to_owned(), request, at(ms))
            .await
            .expect("complete");
    }

    #[tokio::test]
    async fn log_bytes_live_in_the_job_file_and_reads_are_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path()).await;
        let org = org(&store).await;
        running_job(&store, org.id, "j_a").await;
        assert_eq!(append(&store, org.id, "j_a", 0, b"hello ").await, 6);
        assert_eq!(append(&store, org.id, "j_a", 3, b"lo world").await, 11);
        let file = dir
            .path()
            .join("hub.db.logs")
            .join(org.id.to_string())
            .join("j_a.log");
        assert_eq!(store.logs_dir(), dir.path().join("hub.db.logs"));
        assert_eq!(std::fs::read(&file).expect("log file"), b"hello world");
        assert_eq!(log(&store, org.id, "j_a", 0, 1024).await, b"hello world");
        assert_eq!(log(&store, org.id, "j_a", 2, 4).await, b"llo ");
        assert_eq!(log(&store, org.id, "j_a", 11, 4).await, b"");
        // Job ids from a request never reach the file system unless the job exists.
        let err = store
            .append_log(
                org.id,
                "../../x".into(),
                "l_x".into(),
                0,
                Bytes::from_static(b"x"),
                at(3),
            )
            .await
            .expect_err("no such job");
        assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appends_and_replays_keep_every_log_exact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path()).await;
        let org = org(&store).await;
        let jobs: Vec<String> = (0..6).map(|i| format!("j_{i}")).collect();
        for job in &jobs {
            running_job(&store, org.id, job).await;
        }
        let line = |job: &str, i: usize| format!("{job} line {i:04}\n").into_bytes();
        // Two writers per job send the same lines at the same offsets (a runner and its retry),
        // racing each other and the other jobs' writers.
        let mut tasks = Vec::new();
        for job in &jobs {
            for _ in 0..2 {
                let (store, job) = (store.clone(), job.clone());
                tasks.push(tokio::spawn(async move {
                    let mut offset = 0;
                    for i in 0..100 {
                        let bytes = line(&job, i);
                        let answer = store
                            .append_log(
                                org.id,
                                job.clone(),
                                format!("l_{job}"),
                                offset,
                                bytes.clone().into(),
                                at(3),
                            )
                            .await
                            .expect("append");
                        offset += bytes.len() as u64;
                        assert!(answer.committed >= offset, "{answer:?}");
                    }
                }));
            }
        }
        for task in tasks {
            task.await.expect("writer");
        }
        for job in &jobs {
            let expected: Vec<u8> = (0..100).flat_map(|i| line(job, i)).collect();
            assert_eq!(
                log(&store, org.id, job, 0, 1 << 20).await,
                expected,
                "{job}"
            );
            let details = store.job_details(org.id, job.clone()).await.expect("job");
            assert_eq!(details.log_bytes, expected.len() as u64);
        }
    }

    #[tokio::test]
    async fn a_torn_tail_is_never_served_and_the_next_append_cuts_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path()).await;
        let org = org(&store).await;
        let lease = running_job(&store, org.id, "j_t").await;
        append(&store, org.id, "j_t", 0, b"committed\n").await;
        let file = store.inner.logs.path(org.id, "j_t").expect("path");
        drop(store);
        // What a crash between an append's write and its commit leaves behind.
        let mut torn = std::fs::read(&file).expect("read");
        torn.extend_from_slice(b"never acknowledged, and longer than what follows\n");
        std::fs::write(&file, &torn).expect("tear");

        let store = open(dir.path()).await;
        assert_eq!(log(&store, org.id, "j_t", 0, 1 << 20).await, b"committed\n");
        let gap = store
            .append_log(
                org.id,
                "j_t".into(),
                lease.clone(),
                20,
                Bytes::from_static(b"x"),
                at(3),
            )
            .await
            .expect_err("the torn tail is not counted");
        assert!(
            matches!(gap, StoreError::LogGap { committed: 10, .. }),
            "{gap:?}"
        );
        assert_eq!(append(&store, org.id, "j_t", 10, b"next\n").await, 15);
        assert_eq!(std::fs::read(&file).expect("read"), b"committed\nnext\n");
        complete(&store, org.id, "j_t", &lease, 15, 10).await;
        assert_eq!(
            log(&store, org.id, "j_t", 0, 1 << 20).await,
            b"committed\nnext\n"
        );
    }

    #[tokio::test]
    async fn retention_deletes_only_jobs_that_ended_before_the_cutoff() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path()).await;
        let org = org(&store).await;
        let mut files = Vec::new();
        for (job, ended) in [
            ("j_old", Some(1_000)),
            ("j_new", Some(5_000)),
            ("j_live", None),
        ] {
            let lease = running_job(&store, org.id, job).await;
            append(&store, org.id, job, 0, job.as_bytes()).await;
            let step = StepUpdate {
                index: 0,
                name: "a".into(),
                state: StepState::Success,
                exit_code: Some(0),
                started_at: None,
                finished_at: None,
                failure: None,
                log_offset: Some(0),
            };
            store
                .upsert_step(org.id, job.to_owned(), lease.clone(), step, at(3))
                .await
                .expect("step");
            if let Some(ms) = ended {
                complete(&store, org.id, job, &lease, job.len() as u64, ms).await;
            }
            files.push(store.inner.logs.path(org.id, job).expect("path"));
        }
        assert!(files.iter().all(|f| f.is_file()));

        assert_eq!(
            store
                .delete_finished_jobs(at(3_000), 10)
                .await
                .expect("sweep"),
            1
        );
        let gone = store.job_details(org.id, "j_old".into()).await;
        assert!(matches!(gone, Err(StoreError::NotFound { .. })), "{gone:?}");
        assert!(
            !files[0].exists(),
            "the deleted job's log file is still there"
        );
        for (job, file) in [("j_new", &files[1]), ("j_live", &files[2])] {
            let kept = store.job_details(org.id, job.into()).await.expect("kept");
            assert_eq!(kept.steps.len(), 1);
            assert_eq!(log(&store, org.id, job, 0, 64).await, job.as_bytes());
            assert!(file.is_file());
        }
        // A cutoff after every end: the live job still stays; the limit is honoured.
        assert_eq!(
            store
                .delete_finished_jobs(at(i64::MAX), 0)
                .await
                .expect("sweep"),
            0
        );
        assert_eq!(
            store
                .delete_finished_jobs(at(i64::MAX), 10)
                .await
                .expect("sweep"),
            1
        );
        assert!(!files[1].exists());
        assert!(store.job_details(org.id, "j_live".into()).await.is_ok());
        assert!(files[2].is_file());
    }

    #[tokio::test]
    async fn orphaned_log_files_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path()).await;
        let org = org(&store).await;
        running_job(&store, org.id, "j_kept").await;
        append(&store, org.id, "j_kept", 0, b"kept").await;
        // What a crash between a retention delete and the file's removal leaves.
        let orphan = store.inner.logs.path(org.id, "j_deleted").expect("path");
        std::fs::write(&orphan, b"old").expect("write");
        let other_org = store.inner.logs.path(org.id + 1, "j_kept").expect("path");
        std::fs::create_dir_all(other_org.parent().expect("parent")).expect("mkdir");
        std::fs::write(&other_org, b"same id, other org").expect("write");
        assert_eq!(store.remove_orphan_logs().await.expect("sweep"), 2);
        assert!(!orphan.exists() && !other_org.exists());
        assert_eq!(log(&store, org.id, "j_kept", 0, 64).await, b"kept");
        assert_eq!(store.remove_orphan_logs().await.expect("sweep"), 0);
    }

    #[tokio::test]
    async fn a_version_1_database_has_its_log_chunks_moved_into_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hub.db");
        // A database as the version 1 store left it: chunks keyed by start offset, one job
        // with a log, one without.
        let expected: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        {
            let conn = Connection::open(&path).expect("create v1");
            conn.execute_batch(SCHEMA_V1).expect("schema v1");
            conn.execute_batch(
                "PRAGMA user_version = 1;
                 INSERT INTO orgs (id, name, api_key_hash, created_at) VALUES (1, 'acme', x'01', 0);
                 INSERT INTO jobs (id, org_id, state, pipeline, labels, variables, log_bytes,
                                   created_at, enqueued_at, finished_at)
                 VALUES ('j_logged', 1, 'success', 'x', '[]', '{}', 200000, 0, 0, 5),
                        ('j_quiet', 1, 'queued', 'x', '[]', '{}', 0, 0, 0, NULL);",
            )
            .expect("rows");
            let mut start = 0;
            for len in [65_536usize, 10, 100_000, 34_454] {
                conn.execute(
                    "INSERT INTO log_chunks (job_seq, start, data) VALUES (1, ?1, ?2)",
                    params![start as i64, &expected[start..start + len]],
                )
                .expect("chunk");
                start += len;
            }
            assert_eq!(start, expected.len());
        }
        let store = open(dir.path()).await;
        assert_eq!(log(&store, 1, "j_logged", 0, 1 << 20).await, expected);
        assert_eq!(
            log(&store, 1, "j_logged", 65_540, 7).await,
            &expected[65_540..65_547]
        );
        assert_eq!(log(&store, 1, "j_quiet", 0, 64).await, b"");
        let file = store.inner.logs.path(1, "j_logged").expect("path");
        assert_eq!(std::fs::read(&file).expect("file"), expected);
        drop(store);
        let conn = Connection::open(&path).expect("reopen");
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(version, SCHEMA_VERSION);
        let tables: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'log_chunks'",
                [],
                |r| r.get(0),
            )
            .expect("tables");
        assert_eq!(tables, 0, "the chunk table is dropped once moved");
        drop(conn);
        // Opening again is a no-op on the files.
        let store = open(dir.path()).await;
        assert_eq!(log(&store, 1, "j_logged", 0, 1 << 20).await, expected);
    }
}
