//! Job logs as append-only files, one per job: `<root>/<org id>/<job id>.log`, where `<root>` is
//! `<database>.logs` beside the database. A store backend keeps each job's committed length in
//! its own rows; this module only holds the bytes, so every backend (SQLite now, PostgreSQL
//! later) can share it.
//!
//! The contract with the backend, which makes an acknowledged byte survive `kill -9` (and a
//! power loss, as far as the file system keeps its promises):
//!
//! 1. take the job's [`LogLock`] (appends to one job are serialized in this process);
//! 2. read the committed length `C` from the database;
//! 3. [`LogLock::append`]`(C, bytes)`: cut the file back to `C` (a torn tail left by a crash
//!    between an earlier write and its commit), write the bytes at `C`, `fdatasync` the file
//!    (and, for a new file, its directory);
//! 4. commit `C + len` in the database, only then answer.
//!
//! Bytes past the committed length are never read ([`LogFiles::read`] is bounded by what the
//! caller says is committed), so a torn tail is harmless until the next append cuts it off.
//! Everything here is blocking: call it from `spawn_blocking` or the store's blocking calls.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, PoisonError};

use bytes::Bytes;

use super::OrgId;

/// Longest job id that names a file (hub ids are `j_` and 20 hex digits).
const MAX_JOB_ID: usize = 128;
/// The file name suffix of a job's log.
const SUFFIX: &str = ".log";

/// Why a log file operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LogFileError {
    /// A job id that cannot safely name a file (the hub never makes such ids).
    #[error("job id {job:?} cannot name a log file: 1 to {MAX_JOB_ID} letters, digits, `_` or `-`")]
    BadJobId { job: String },
    /// Reading, writing, syncing or removing a log file or directory failed.
    #[error("log file {path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The file holds fewer bytes than the store has committed: bytes were lost outside the
    /// hub (a disk failure, a hand edit, a backup that took the database without the logs).
    #[error(
        "log file {path} holds {len} bytes but {committed} are committed; the missing bytes were lost outside the hub"
    )]
    Short {
        path: PathBuf,
        len: u64,
        committed: u64,
    },
}

fn io_error<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> LogFileError + 'a {
    move |source| LogFileError::Io {
        path: path.to_owned(),
        op,
        source,
    }
}

/// The log files of one database.
#[derive(Debug)]
pub struct LogFiles {
    root: PathBuf,
    /// Jobs whose lock is held; waiters sleep on `released`.
    held: Mutex<HashSet<(OrgId, String)>>,
    released: Condvar,
}

impl LogFiles {
    /// Where the logs of `database` live: `<database>.logs` (beside `<database>.admin-key`).
    pub fn root_for(database: &Path) -> PathBuf {
        let mut name = database.as_os_str().to_owned();
        name.push(".logs");
        PathBuf::from(name)
    }

    /// Opens the log directory `root`, creating it (mode 0700) when missing; its parent must
    /// exist.
    pub fn open(root: &Path) -> Result<Self, LogFileError> {
        if !root.is_dir() {
            create_dir(root)?;
        }
        Ok(Self {
            root: root.to_owned(),
            held: Mutex::new(HashSet::new()),
            released: Condvar::new(),
        })
    }

    /// The log directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file of a job's log.
    pub fn path(&self, org: OrgId, job_id: &str) -> Result<PathBuf, LogFileError> {
        check_job_id(job_id)?;
        Ok(self.org_dir(org).join(format!("{job_id}{SUFFIX}")))
    }

    fn org_dir(&self, org: OrgId) -> PathBuf {
        self.root.join(org.to_string())
    }

    /// Takes the job's lock, waiting while another thread of this process holds it. Appends,
    /// rewrites and removals of one job go through it; reads below the committed length do not
    /// need it (those bytes never change). The lock is per job, so appends to different jobs
    /// write and `fdatasync` in parallel (and the file system can merge their journal commits).
    pub fn lock(&self, org: OrgId, job_id: &str) -> LogLock<'_> {
        let key = (org, job_id.to_owned());
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        while held.contains(&key) {
            held = self
                .released
                .wait(held)
                .unwrap_or_else(PoisonError::into_inner);
        }
        held.insert(key.clone());
        LogLock { files: self, key }
    }

    /// Reads exactly `len` bytes at `offset`; the caller makes sure they are committed, and
    /// bounds `len` (the bytes are read into memory at once).
    pub fn read(
        &self,
        org: OrgId,
        job_id: &str,
        offset: u64,
        len: usize,
    ) -> Result<Bytes, LogFileError> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let path = self.path(org, job_id)?;
        let committed = offset.saturating_add(len as u64);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(LogFileError::Short {
                    path,
                    len: 0,
                    committed,
                });
            }
            Err(e) => return Err(io_error(&path, "open")(e)),
        };
        let mut buf = vec![0; len];
        let mut filled = 0;
        while filled < len {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => {
                    return Err(LogFileError::Short {
                        path,
                        len: offset + filled as u64,
                        committed,
                    });
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(&path, "read")(e)),
            }
        }
        Ok(Bytes::from(buf))
    }

    /// Every job that has a log file, as `(org, job id)`; files and folders that this module
    /// did not name are skipped.
    pub fn list(&self) -> Result<Vec<(OrgId, String)>, LogFileError> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(&self.root).map_err(io_error(&self.root, "list"))?;
        for entry in entries {
            let entry = entry.map_err(io_error(&self.root, "list"))?;
            let Some(org) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<OrgId>().ok())
            else {
                continue;
            };
            let dir = entry.path();
            if !dir.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(&dir).map_err(io_error(&dir, "list"))? {
                let file = file.map_err(io_error(&dir, "list"))?;
                let name = file.file_name();
                let Some(job) = name.to_str().and_then(|n| n.strip_suffix(SUFFIX)) else {
                    continue;
                };
                if check_job_id(job).is_ok() {
                    out.push((org, job.to_owned()));
                }
            }
        }
        Ok(out)
    }
}

/// A held job lock; released on drop.
#[derive(Debug)]
pub struct LogLock<'a> {
    files: &'a LogFiles,
    key: (OrgId, String),
}

impl LogLock<'_> {
    /// The file of this job's log.
    pub fn path(&self) -> Result<PathBuf, LogFileError> {
        self.files.path(self.key.0, &self.key.1)
    }

    /// Writes `bytes` at `committed` (the length the store has committed) and makes them
    /// durable before returning: see the module documentation for the order.
    pub fn append(&self, committed: u64, bytes: &[u8]) -> Result<(), LogFileError> {
        let mut writer = self.writer(committed)?;
        writer.write(bytes)?;
        writer.finish()
    }

    /// A writer positioned at `committed`: the file is created when missing, and cut back to
    /// `committed` when longer (a torn tail). Nothing is durable before [`LogWriter::finish`].
    pub fn writer(&self, committed: u64) -> Result<LogWriter, LogFileError> {
        let path = self.path()?;
        let (file, created) = match open_rw(&path, false) {
            Ok(file) => (file, false),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let dir = self.files.org_dir(self.key.0);
                if !dir.is_dir() {
                    create_dir(&dir)?;
                }
                (
                    open_rw(&path, true).map_err(io_error(&path, "create"))?,
                    true,
                )
            }
            Err(e) => return Err(io_error(&path, "open")(e)),
        };
        let len = file.metadata().map_err(io_error(&path, "stat"))?.len();
        if len < committed {
            return Err(LogFileError::Short {
                path,
                len,
                committed,
            });
        }
        if len > committed {
            tracing::info!(
                path = %path.display(),
                committed,
                extra = len - committed,
                "log file had uncommitted bytes past its end (an append cut short); cut back"
            );
            file.set_len(committed)
                .map_err(io_error(&path, "truncate"))?;
        }
        Ok(LogWriter {
            file,
            path,
            pos: committed,
            created,
        })
    }

    /// Removes this job's log file; `false` when there was none.
    pub fn remove(&self) -> Result<bool, LogFileError> {
        let path = self.path()?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_error(&path, "remove")(e)),
        }
    }
}

impl Drop for LogLock<'_> {
    fn drop(&mut self) {
        let mut held = self
            .files
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        held.remove(&self.key);
        drop(held);
        self.files.released.notify_all();
    }
}

/// Sequential writes to one job's log file (under its [`LogLock`]).
#[derive(Debug)]
pub struct LogWriter {
    file: File,
    path: PathBuf,
    pos: u64,
    created: bool,
}

impl LogWriter {
    /// Writes `bytes` at the end of what this writer wrote so far.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), LogFileError> {
        self.file
            .write_all_at(bytes, self.pos)
            .map_err(io_error(&self.path, "write"))?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Where the next write lands: the file's length once the writes are done.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Makes the writes durable: `fdatasync` of the file, then of its folder when the file is
    /// new (so its name survives a power loss, not only its blocks).
    pub fn finish(self) -> Result<(), LogFileError> {
        self.file
            .sync_data()
            .map_err(io_error(&self.path, "fdatasync"))?;
        if self.created
            && let Some(dir) = self.path.parent()
        {
            sync_dir(dir)?;
        }
        Ok(())
    }
}

fn open_rw(path: &Path, create: bool) -> io::Result<File> {
    // 0600: a log holds whatever the job printed (masked, but still the customer's output).
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .mode(0o600)
        .open(path)
}

/// Creates a folder (mode 0700) and makes its name durable in its parent.
fn create_dir(dir: &Path) -> Result<(), LogFileError> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        // Another thread or process made it first.
        Err(e) if e.kind() == ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(io_error(dir, "create folder")(e)),
    }
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> Result<(), LogFileError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir, "fsync folder"))
}

/// Job ids name files: only what the hub's own ids are made of, so no id can climb out of its
/// folder (`..`, `/`) or collide with another's name.
fn check_job_id(job_id: &str) -> Result<(), LogFileError> {
    let ok = !job_id.is_empty()
        && job_id.len() <= MAX_JOB_ID
        && job_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(LogFileError::BadJobId {
            job: job_id.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    fn files() -> (tempfile::TempDir, LogFiles) {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = LogFiles::open(&dir.path().join("hub.db.logs")).expect("open");
        (dir, files)
    }

    #[test]
    fn job_ids_that_could_escape_are_refused() {
        let check = |id: &str, ok: bool| assert_eq!(check_job_id(id).is_ok(), ok, "{id:?}");
        check("j_0123456789abcdef0123", true);
        check("A-z_9", true);
        check("", false);
        check("..", false);
        check("../x", false);
        check("a/b", false);
        check("a.log", false);
        check("é", false);
        check(&"x".repeat(MAX_JOB_ID), true);
        check(&"x".repeat(MAX_JOB_ID + 1), false);
    }

    #[test]
    fn appends_land_at_the_committed_length_and_cut_a_torn_tail() {
        let (_dir, files) = files();
        let path = files.path(7, "j_a").expect("path");
        assert_eq!(path, files.root().join("7").join("j_a.log"));
        files.lock(7, "j_a").append(0, b"hello ").expect("append");
        files.lock(7, "j_a").append(6, b"world").expect("append");
        assert_eq!(std::fs::read(&path).expect("read"), b"hello world");
        // A crash between a write and its commit leaves bytes past the committed length.
        std::fs::write(&path, b"hello world, torn tail").expect("tear");
        assert_eq!(&files.read(7, "j_a", 6, 5).expect("read")[..], b"world");
        files.lock(7, "j_a").append(11, b"!").expect("append");
        assert_eq!(std::fs::read(&path).expect("read"), b"hello world!");
    }

    #[test]
    fn a_file_shorter_than_committed_is_an_error_not_a_hole() {
        let (_dir, files) = files();
        files.lock(1, "j_b").append(0, b"abc").expect("append");
        let short = files.lock(1, "j_b").append(5, b"x");
        assert!(
            matches!(
                short,
                Err(LogFileError::Short {
                    len: 3,
                    committed: 5,
                    ..
                })
            ),
            "{short:?}"
        );
        let read = files.read(1, "j_b", 2, 2);
        assert!(
            matches!(
                read,
                Err(LogFileError::Short {
                    len: 3,
                    committed: 4,
                    ..
                })
            ),
            "{read:?}"
        );
        let missing = files.read(1, "j_none", 0, 1);
        assert!(
            matches!(missing, Err(LogFileError::Short { len: 0, .. })),
            "{missing:?}"
        );
        assert!(files.read(1, "j_none", 0, 0).expect("empty").is_empty());
    }

    #[test]
    fn list_and_remove() {
        let (_dir, files) = files();
        files.lock(1, "j_a").append(0, b"a").expect("append");
        files.lock(2, "j_b").append(0, b"b").expect("append");
        std::fs::write(files.root().join("README"), b"not a log").expect("write");
        std::fs::write(files.root().join("1").join("notes.txt"), b"x").expect("write");
        let mut listed = files.list().expect("list");
        listed.sort();
        assert_eq!(listed, vec![(1, "j_a".to_owned()), (2, "j_b".to_owned())]);
        assert!(files.lock(1, "j_a").remove().expect("remove"));
        assert!(!files.lock(1, "j_a").remove().expect("remove again"));
        assert_eq!(files.list().expect("list"), vec![(2, "j_b".to_owned())]);
    }

    #[test]
    fn the_lock_is_per_job() {
        let (_dir, files) = files();
        let files = Arc::new(files);
        let held = files.lock(1, "j_a");
        // Another job's lock is free while j_a's is held.
        drop(files.lock(1, "j_b"));
        let entered = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (files, entered) = (Arc::clone(&files), Arc::clone(&entered));
            std::thread::spawn(move || {
                let _lock = files.lock(1, "j_a");
                entered.store(true, Ordering::SeqCst);
            })
        };
        // The waiter is blocked until the holder lets go; it must not have entered yet.
        assert!(!entered.load(Ordering::SeqCst));
        drop(held);
        waiter.join().expect("waiter");
        assert!(entered.load(Ordering::SeqCst));
    }
}
