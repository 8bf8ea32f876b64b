//! The runner's state directory: where each job's journal, spool and progress file live, and
//! the durable-write helpers the journal and the outbox share.
//!
//! ```text
//! <state>/jobs/<job_id>/job.json    the journal: the assignment, and the pipeline once loaded
//! <state>/jobs/<job_id>/log.spool   the job's masked log (outpost-logship's spool)
//! <state>/jobs/<job_id>/progress    reattach records (outpost-logship's `ProgressRecord`)
//! <state>/work/<job_id>/            the job's workspace (checkout)
//! <state>/outbox/<seq>.json         undelivered step updates and completions
//! ```
//!
//! A job's directories are removed once the hub acknowledged its completion.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use outpost_protocol::{JobAssignment, JobId, RunnerId};
use serde::{Deserialize, Serialize};

/// Paths of the state directory.
#[derive(Debug, Clone)]
pub(crate) struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub(crate) fn new(root: PathBuf) -> Self {
        Self { root }
    }

    pub(crate) fn jobs(&self) -> PathBuf {
        self.root.join("jobs")
    }

    pub(crate) fn work(&self) -> PathBuf {
        self.root.join("work")
    }

    pub(crate) fn outbox(&self) -> PathBuf {
        self.root.join("outbox")
    }

    pub(crate) fn job_dir(&self, job_id: &JobId) -> PathBuf {
        self.jobs().join(job_id.as_str())
    }

    pub(crate) fn journal(&self, job_id: &JobId) -> PathBuf {
        self.job_dir(job_id).join("job.json")
    }

    pub(crate) fn spool(&self, job_id: &JobId) -> PathBuf {
        self.job_dir(job_id).join("log.spool")
    }

    pub(crate) fn progress(&self, job_id: &JobId) -> PathBuf {
        self.job_dir(job_id).join("progress")
    }

    pub(crate) fn workspace(&self, job_id: &JobId) -> PathBuf {
        self.work().join(job_id.as_str())
    }

    /// Creates the directories (mode 0700 on Unix: spools and checkouts are private).
    pub(crate) fn create(&self) -> io::Result<()> {
        for dir in [self.root.clone(), self.jobs(), self.work(), self.outbox()] {
            create_private_dir(&dir)?;
        }
        Ok(())
    }

    /// Removes everything a job left in the state directory.
    pub(crate) fn remove_job(&self, job_id: &JobId) -> io::Result<()> {
        remove_dir_if_exists(&self.workspace(job_id))?;
        remove_dir_if_exists(&self.job_dir(job_id))?;
        sync_dir(&self.jobs())
    }

    /// The ids of the jobs with a directory under `jobs/`.
    pub(crate) fn journaled_jobs(&self) -> io::Result<Vec<JobId>> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(self.jobs())? {
            let entry = entry?;
            if entry.file_type()?.is_dir()
                && let Some(name) = entry.file_name().to_str()
                && is_safe_job_id(name)
            {
                ids.push(JobId::new(name));
            }
        }
        ids.sort();
        Ok(ids)
    }
}

/// Whether a job id from the hub can be used as a path component as it is.
pub(crate) fn is_safe_job_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

fn remove_dir_if_exists(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Fsyncs a directory, so that a rename or removal in it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` durably and atomically: a temporary file beside it, fsynced, renamed
/// over `path`, and the directory fsynced.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("path has no parent directory"))?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    {
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// A job as journaled: enough to know, after a restart, what the runner was running.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct JournalRecord {
    /// The runner id the job was acquired under.
    pub runner_id: RunnerId,
    /// The assignment as the hub sent it (no secrets in it).
    pub assignment: JobAssignment,
    /// Set once the pipeline was loaded, so a resumed job is rebuilt from the same text.
    #[serde(default)]
    pub pipeline: Option<JournaledPipeline>,
}

/// The pipeline a journaled job runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct JournaledPipeline {
    /// The name the pipeline was parsed under (`<inline>`, `.outpost.yml`).
    pub source_name: String,
    /// The pipeline file's text.
    pub text: String,
    /// The job's cache scope.
    pub cache_scope: String,
}

impl JournalRecord {
    pub(crate) fn write(&self, state: &StateDir) -> io::Result<()> {
        let job_id = &self.assignment.job_id;
        create_private_dir(&state.job_dir(job_id))?;
        let bytes = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        write_atomic(&state.journal(job_id), &bytes)
    }

    pub(crate) fn read(state: &StateDir, job_id: &JobId) -> io::Result<Self> {
        let mut text = Vec::new();
        File::open(state.journal(job_id))?.read_to_end(&mut text)?;
        serde_json::from_slice(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_that_are_path_safe() {
        for ok in ["j_1", "01J9ZK-abc", "a.b"] {
            assert!(is_safe_job_id(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a\\b", "a b", &"x".repeat(129)] {
            assert!(!is_safe_job_id(bad), "{bad}");
        }
    }

    #[test]
    fn atomic_write_replaces_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f.json");
        write_atomic(&path, b"one").expect("write");
        write_atomic(&path, b"two").expect("write");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        assert!(!dir.path().join("f.json.tmp").exists());
    }
}
