//! A job's log as the runner writes it: every byte goes through the job's [`Masker`] and then
//! into its [`Spool`]; the uploader follows the spool through a [`SpoolReader`].

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::LogshipError;
use crate::masker::Masker;
use crate::spool::{Spool, SpoolReader};

/// Input is masked and spooled in pieces of at most this size, which bounds the output buffer.
const WRITE_CHUNK: usize = 64 * 1024;

/// The writing half of a job's log: mask, then spool (which wakes the uploader).
///
/// Shared by several producers (a step's stdout and stderr, the runner's own lines) through
/// `&self`: an internal mutex makes each `write` atomic with respect to the others, so the log
/// is one stream masked as a whole. The mutex is never held across an `.await` (the methods
/// that write are synchronous; [`JobLog::finish`] releases it before syncing).
///
/// `write` does one `write(2)` into the page cache per 64 KiB of input and never `fsync`s: that
/// is as cheap as a tracing file appender and is done in place, on the caller's task. The
/// expensive `fdatasync` happens in `spawn_blocking` (in `finish` and in the uploader).
///
/// Each `write` or `write_line` of up to 64 KiB reaches the spool as one append, so the uploader
/// never sees (and sends) part of it: the rest would wait a flush interval behind it.
pub struct JobLog {
    path: PathBuf,
    reader: SpoolReader,
    inner: Mutex<Inner>,
}

struct Inner {
    masker: Masker,
    spool: Spool,
    /// Masked output of the current piece, reused so writes do not allocate.
    out: Vec<u8>,
    finished: bool,
    /// Whether the last byte written (before masking) ended a line.
    at_line_start: bool,
}

impl JobLog {
    /// Opens (or resumes) the job's spool at `spool_path` with a size cap (see
    /// [`Spool::open_or_create`]) and masks everything written with `masker`.
    pub fn open(spool_path: &Path, cap: u64, masker: Masker) -> Result<JobLog, LogshipError> {
        let spool = Spool::open_or_create(spool_path, cap)?;
        let at_line_start = spool.is_empty()
            || spool
                .read_at(spool.len() - 1, 1)
                .is_ok_and(|last| last.as_ref() == b"\n");
        Ok(JobLog {
            path: spool_path.to_owned(),
            reader: spool.reader(),
            inner: Mutex::new(Inner {
                masker,
                spool,
                out: Vec::new(),
                finished: false,
                at_line_start,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while writing leaves at worst a few unmasked bytes held back, never written:
        // carrying on is safe.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes output of the job: masks it and appends it to the spool.
    pub fn write(&self, bytes: &[u8]) -> Result<(), LogshipError> {
        let mut inner = self.lock();
        if inner.finished {
            return Err(LogshipError::Finished {
                path: self.path.clone(),
            });
        }
        inner.write(bytes)
    }

    /// Writes a line of the runner's own (e.g. `$ step build`), through the masker like
    /// everything else. It starts on a line of its own and ends with a newline.
    pub fn write_line(&self, line: &str) -> Result<(), LogshipError> {
        let mut inner = self.lock();
        if inner.finished {
            return Err(LogshipError::Finished {
                path: self.path.clone(),
            });
        }
        // One buffer, so the line reaches the spool in one append: written piecewise, the
        // uploader could wake between the pieces, send the line without its newline, and hold
        // the newline back for a whole flush interval as the tail of a partial batch.
        let mut framed = Vec::with_capacity(line.len() + 2);
        if !inner.at_line_start {
            framed.push(b'\n');
        }
        framed.extend_from_slice(line.as_bytes());
        if !line.ends_with('\n') {
            framed.push(b'\n');
        }
        inner.write(&framed)
    }

    /// Ends the log: emits what the masker held back, makes the spool durable, and answers the
    /// final length to hand to [`crate::UploaderHandle::finish`]. Later writes are refused;
    /// calling it again answers the same length.
    pub async fn finish(&self) -> Result<u64, LogshipError> {
        let len = {
            let mut inner = self.lock();
            if !inner.finished {
                let Inner {
                    masker, spool, out, ..
                } = &mut *inner;
                out.clear();
                masker.flush(out);
                let result = spool.append(out);
                out.clear();
                result?;
                inner.finished = true;
            }
            inner.spool.len()
        };
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || reader.sync())
            .await
            .map_err(|e| LogshipError::Task {
                path: self.path.clone(),
                message: e.to_string(),
            })??;
        Ok(len)
    }

    /// A read handle on the spool, for [`crate::Uploader::spawn`].
    pub fn reader(&self) -> SpoolReader {
        self.reader.clone()
    }

    /// Masked bytes spooled so far.
    pub fn len(&self) -> u64 {
        self.reader.len()
    }

    /// Whether nothing was spooled yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the masker holds back (not yet in the spool); 0 after [`JobLog::finish`].
    pub fn held_back(&self) -> usize {
        self.lock().masker.held_back()
    }

    /// Bytes dropped because the log reached its cap.
    pub fn dropped(&self) -> u64 {
        self.lock().spool.dropped()
    }

    /// Capacity of the in-memory buffers (masker and output), for tests and diagnostics: it
    /// stays bounded whatever is written.
    pub fn buffer_capacity(&self) -> usize {
        let inner = self.lock();
        inner.masker.buffer_capacity() + inner.out.capacity()
    }

    /// The spool file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Inner {
    fn write(&mut self, bytes: &[u8]) -> Result<(), LogshipError> {
        let Some(&last) = bytes.last() else {
            return Ok(());
        };
        for piece in bytes.chunks(WRITE_CHUNK) {
            if self.masker.is_passthrough() {
                self.spool.append(piece)?;
                continue;
            }
            self.out.clear();
            self.masker.push(piece, &mut self.out);
            let result = self.spool.append(&self.out);
            self.out.clear();
            result?;
        }
        self.at_line_start = last == b'\n';
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::UNLIMITED;

    #[tokio::test]
    async fn masks_before_spooling_and_frames_runner_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.spool");
        let masker =
            Masker::new(&[("TOKEN".to_owned(), b"tok-12345".to_vec())]).expect("valid secret");
        let log = JobLog::open(&path, UNLIMITED, masker).expect("open");
        log.write_line("$ step build").expect("line");
        log.write(b"using tok-").expect("write");
        assert!(log.held_back() > 0, "a possible secret prefix is held back");
        log.write(b"12345 now").expect("write");
        log.write_line("$ step test\n").expect("line");
        log.write(b"tok-123").expect("write");
        let len = log.finish().await.expect("finish");
        assert_eq!(log.held_back(), 0);
        let text = std::fs::read(&path).expect("read spool");
        assert_eq!(
            String::from_utf8_lossy(&text),
            "$ step build\nusing [MASKED] now\n$ step test\ntok-123"
        );
        assert_eq!(len, text.len() as u64);
        assert!(matches!(
            log.write(b"late"),
            Err(LogshipError::Finished { .. })
        ));
        assert_eq!(log.finish().await.expect("finish again"), len);
    }

    #[tokio::test]
    async fn a_runner_line_reaches_the_spool_in_one_append() {
        // Spooled in pieces, the line could be uploaded without its newline, and the newline
        // would then wait a whole flush interval as the tail of a partial batch.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.spool");
        let masker =
            Masker::new(&[("TOKEN".to_owned(), b"tok-12345".to_vec())]).expect("valid secret");
        for masker in [Masker::none(), masker] {
            let log = JobLog::open(&path, UNLIMITED, masker).expect("open");
            log.write(b"no newline yet").expect("write");
            let before = log.lock().spool.writes;
            log.write_line("$ step build").expect("line");
            assert_eq!(log.lock().spool.writes - before, 1);
            log.finish().await.expect("finish");
            drop(log);
            assert_eq!(
                std::fs::read(&path).expect("read spool"),
                b"no newline yet\n$ step build\n"
            );
            std::fs::remove_file(&path).expect("remove spool");
        }
    }

    #[tokio::test]
    async fn resumed_log_continues_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.spool");
        let log = JobLog::open(&path, UNLIMITED, Masker::none()).expect("open");
        log.write(b"partial line").expect("write");
        drop(log);
        let log = JobLog::open(&path, UNLIMITED, Masker::none()).expect("reopen");
        assert_eq!(log.len(), 12);
        log.write_line("$ resumed").expect("line");
        log.finish().await.expect("finish");
        assert_eq!(
            std::fs::read(&path).expect("read"),
            b"partial line\n$ resumed\n"
        );
    }
}
