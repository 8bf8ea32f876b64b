//! A job's log as the runner writes it: every byte goes through the job's [`Masker`] and then
//! into its [`Spool`], framed into step sections, with a reattach progress record after each
//! append of a step's output. The uploader follows the spool through a [`SpoolReader`].
//!
//! The masker is flushed at every step boundary, so a progress record's `raw_bytes` is exact:
//! the raw output of the step whose masked form is in the spool (`pushed - held_back`).

use std::io;
use std::path::{Path, PathBuf};

use crate::LogshipError;
use crate::masker::Masker;
use crate::progress::{ProgressFile, ProgressRecord};
use crate::spool::{Spool, SpoolReader};

/// Input is masked and spooled in pieces of at most this size, which bounds the output buffer.
const WRITE_CHUNK: usize = 64 * 1024;

/// The writing half of a job's log: mask, then spool (which wakes the uploader). It has one
/// owner, the job's event loop; the uploader reads through [`JobLog::reader`].
///
/// A write does one `write(2)` into the page cache per 64 KiB of input and never `fsync`s; the
/// expensive `fdatasync` happens in `spawn_blocking` (in [`JobLog::finish`] and in the
/// uploader). A runner line ([`JobLog::write_line`], a step header) reaches the spool in one
/// append, so the uploader never sends half of it and then waits a flush interval for the rest.
pub struct JobLog {
    path: PathBuf,
    masker: Masker,
    spool: Spool,
    progress: Option<ProgressFile>,
    /// Masked output of the current piece, reused so writes do not allocate.
    out: Vec<u8>,
    /// The step whose output is being written, and its raw bytes pushed so far.
    step: Option<(u32, u64)>,
    /// Whether the last byte written (before masking) ended a line.
    at_line_start: bool,
    finished: bool,
}

impl JobLog {
    /// Opens (or continues) the spool at `spool_path` with a size cap (see
    /// [`Spool::open_or_create`]); everything written is masked with `masker`. No progress
    /// records are kept. Blocking (a few file system calls).
    pub fn open(spool_path: &Path, cap: u64, masker: Masker) -> Result<JobLog, LogshipError> {
        Self::build(spool_path, None, cap, masker)
    }

    /// Like [`JobLog::open`], and keeps reattach progress records in `progress_path`.
    pub fn with_progress(
        spool_path: &Path,
        progress_path: &Path,
        cap: u64,
        masker: Masker,
    ) -> Result<JobLog, LogshipError> {
        Self::build(spool_path, Some(progress_path), cap, masker)
    }

    /// Takes over the log of a job a previous runner process was writing: the spool is cut back
    /// to the last progress record (what follows it may be a partial masked tail whose raw
    /// bytes the backend will deliver again), and that record is answered, so the backend can
    /// be told where to resume. Without a record the spool is kept whole and nothing was
    /// consumed of any step. Blocking.
    pub fn reattach(
        spool_path: &Path,
        progress_path: &Path,
        cap: u64,
        masker: Masker,
    ) -> Result<(JobLog, Option<ProgressRecord>), LogshipError> {
        let progress_err = |op, source| LogshipError::Spool {
            path: progress_path.to_owned(),
            op,
            source,
        };
        let last = ProgressRecord::read_last(progress_path)
            .map_err(|e| progress_err("read the progress file", e))?;
        if let Some(record) = last {
            cut_back(spool_path, record.spool_len).map_err(|source| LogshipError::Spool {
                path: spool_path.to_owned(),
                op: "cut back",
                source,
            })?;
        }
        let mut log = Self::build(spool_path, Some(progress_path), cap, masker)?;
        if let Some(record) = last {
            log.step = Some((record.step_index, record.raw_bytes));
        }
        Ok((log, last))
    }

    fn build(
        spool_path: &Path,
        progress_path: Option<&Path>,
        cap: u64,
        masker: Masker,
    ) -> Result<JobLog, LogshipError> {
        let spool = Spool::open_or_create(spool_path, cap)?;
        let at_line_start = spool.is_empty()
            || spool
                .read_at(spool.len() - 1, 1)
                .is_ok_and(|last| last.as_ref() == b"\n");
        let progress = match progress_path {
            Some(path) => Some(
                ProgressFile::open(path).map_err(|source| LogshipError::Spool {
                    path: path.to_owned(),
                    op: "open the progress file",
                    source,
                })?,
            ),
            None => None,
        };
        Ok(JobLog {
            path: spool_path.to_owned(),
            masker,
            spool,
            progress,
            out: Vec::new(),
            step: None,
            at_line_start,
            finished: false,
        })
    }

    /// A read handle on the spool, for [`crate::Uploader::spawn`].
    pub fn reader(&self) -> SpoolReader {
        self.spool.reader()
    }

    /// Masked bytes spooled so far.
    pub fn len(&self) -> u64 {
        self.spool.len()
    }

    /// Whether nothing was spooled yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The spool file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes dropped because the log reached its cap.
    pub fn dropped(&self) -> u64 {
        self.spool.dropped()
    }

    /// Capacity of the in-memory buffers (masker and output), for tests and diagnostics: it
    /// stays bounded whatever is written.
    pub fn buffer_capacity(&self) -> usize {
        self.masker.buffer_capacity() + self.out.capacity()
    }

    /// Bytes of output the masker holds back (they may be the start of a secret); 0 after
    /// [`JobLog::finish`].
    pub fn held_back(&self) -> usize {
        self.masker.held_back()
    }

    /// Masks a text the way the log is masked (for messages sent to the hub).
    pub fn mask_str(&self, text: &str) -> String {
        self.masker.mask_str(text)
    }

    /// Starts a step's section: the masker is flushed, a header line written, and a progress
    /// record says step `index` has consumed nothing yet. Answers the offset where the section
    /// starts.
    pub fn start_step(&mut self, index: u32, name: &str) -> Result<u64, LogshipError> {
        self.check_open()?;
        self.flush()?;
        // The section starts after what the masker held back of the previous output.
        let offset = self.spool.len();
        let mut header = String::with_capacity(name.len() + 16);
        if offset > 0 {
            if !self.at_line_start {
                header.push('\n');
            }
            header.push('\n');
        }
        header.push_str("── step ");
        header.push_str(name);
        header.push_str(" ──\n");
        self.runner_text(header.as_bytes())?;
        self.step = Some((index, 0));
        self.record(index, 0);
        Ok(offset)
    }

    /// Raw output of step `index`.
    pub fn output(&mut self, index: u32, data: &[u8]) -> Result<(), LogshipError> {
        match self.step {
            Some((current, _)) if current == index => {}
            _ => {
                self.check_open()?;
                self.flush()?;
                self.step = Some((index, 0));
            }
        }
        self.write(data)
    }

    /// Raw output of the current section (the running step, or none).
    pub fn write(&mut self, data: &[u8]) -> Result<(), LogshipError> {
        self.check_open()?;
        self.push(data)?;
        if let Some((step, raw)) = &mut self.step {
            *raw += data.len() as u64;
            let consumed = raw.saturating_sub(self.masker.held_back() as u64);
            let step = *step;
            self.record(step, consumed);
        }
        Ok(())
    }

    /// Output paused: what the masker holds back that cannot begin a secret goes out, so the
    /// last line of a quiet step (a prompt, "waiting for …") is visible live.
    pub fn release(&mut self) -> Result<(), LogshipError> {
        self.check_open()?;
        self.out.clear();
        self.masker.release(&mut self.out);
        let result = self.spool.append(&self.out);
        self.out.clear();
        if let Some((step, raw)) = self.step {
            let consumed = raw.saturating_sub(self.masker.held_back() as u64);
            self.record(step, consumed);
        }
        result
    }

    /// Ends a step's section: what the masker held back goes out.
    pub fn end_step(&mut self, index: u32) -> Result<(), LogshipError> {
        self.check_open()?;
        self.flush()?;
        if let Some((step, raw)) = self.step
            && step == index
        {
            self.record(step, raw);
        }
        Ok(())
    }

    /// A line of the runner's own (an error, a note), masked like everything else, on a line of
    /// its own and ending with a newline, in one append.
    pub fn write_line(&mut self, line: &str) -> Result<(), LogshipError> {
        self.check_open()?;
        let mut framed = Vec::with_capacity(line.len() + 2);
        if !self.at_line_start {
            framed.push(b'\n');
        }
        framed.extend_from_slice(line.as_bytes());
        if !line.ends_with('\n') {
            framed.push(b'\n');
        }
        self.runner_text(&framed)
    }

    /// Text of the runner's own: what the masker held back, the text masked, and the masker's
    /// window all go out in one append.
    fn runner_text(&mut self, text: &[u8]) -> Result<(), LogshipError> {
        self.out.clear();
        self.masker.flush(&mut self.out);
        self.masker.push(text, &mut self.out);
        self.masker.flush(&mut self.out);
        let result = self.spool.append(&self.out);
        self.out.clear();
        if let Some(&last) = text.last() {
            self.at_line_start = last == b'\n';
        }
        result
    }

    /// Ends the log: emits what the masker held back, makes the spool durable (`fdatasync` in
    /// `spawn_blocking`), and answers the final length to hand to
    /// [`crate::UploaderHandle::finish`]. Later writes are refused; calling it again answers
    /// the same length.
    pub async fn finish(&mut self) -> Result<u64, LogshipError> {
        if !self.finished {
            self.flush()?;
            self.finished = true;
        }
        let reader = self.spool.reader();
        tokio::task::spawn_blocking(move || reader.sync())
            .await
            .map_err(|e| LogshipError::Task {
                path: self.path.clone(),
                message: e.to_string(),
            })??;
        Ok(self.spool.len())
    }

    fn check_open(&self) -> Result<(), LogshipError> {
        if self.finished {
            return Err(LogshipError::Finished {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    fn push(&mut self, data: &[u8]) -> Result<(), LogshipError> {
        let Some(&last) = data.last() else {
            return Ok(());
        };
        for piece in data.chunks(WRITE_CHUNK) {
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

    fn flush(&mut self) -> Result<(), LogshipError> {
        self.out.clear();
        self.masker.flush(&mut self.out);
        let result = self.spool.append(&self.out);
        self.out.clear();
        result
    }

    fn record(&mut self, step_index: u32, raw_bytes: u64) {
        let spool_len = self.spool.len();
        if let Some(progress) = &mut self.progress
            && let Err(e) = progress.append(ProgressRecord {
                step_index,
                raw_bytes,
                spool_len,
            })
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write a reattach progress record");
        }
    }
}

/// Cuts a spool back to `len` bytes (it may be missing: nothing was spooled).
fn cut_back(path: &Path, len: u64) -> io::Result<()> {
    let file = match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if file.metadata()?.len() > len {
        file.set_len(len)?;
        file.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::UNLIMITED;

    fn secret_masker() -> Masker {
        Masker::new(&[("TOKEN".to_owned(), b"tok-12345".to_vec())]).expect("valid secret")
    }

    #[tokio::test]
    async fn masks_before_spooling_and_frames_runner_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.spool");
        let mut log = JobLog::open(&path, UNLIMITED, secret_masker()).expect("open");
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
        for masker in [Masker::none(), secret_masker()] {
            let mut log = JobLog::open(&path, UNLIMITED, masker).expect("open");
            log.write(b"no newline yet").expect("write");
            let before = log.spool.writes;
            log.write_line("$ step build").expect("line");
            assert_eq!(log.spool.writes - before, 1);
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
    async fn a_continued_log_appends_to_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.spool");
        let mut log = JobLog::open(&path, UNLIMITED, Masker::none()).expect("open");
        log.write(b"partial line").expect("write");
        drop(log);
        let mut log = JobLog::open(&path, UNLIMITED, Masker::none()).expect("reopen");
        assert_eq!(log.len(), 12);
        log.write_line("$ resumed").expect("line");
        log.finish().await.expect("finish");
        assert_eq!(
            std::fs::read(&path).expect("read"),
            b"partial line\n$ resumed\n"
        );
    }

    #[tokio::test]
    async fn progress_counts_only_what_reached_the_spool() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = dir.path().join("log.spool");
        let progress = dir.path().join("progress");
        let masker = Masker::new(&[("T".to_owned(), b"s3cret-value".to_vec())]).expect("masker");
        let mut log = JobLog::with_progress(&spool, &progress, UNLIMITED, masker).expect("open");
        let last = || {
            ProgressRecord::read_last(&progress)
                .expect("read")
                .expect("record")
        };
        assert_eq!(log.start_step(0, "build").expect("start"), 0);
        log.output(0, b"token s3cret-").expect("out");
        // "s3cret-" may be the start of the secret: held back, so not counted as consumed.
        let rec = last();
        assert_eq!(rec.step_index, 0);
        assert!(rec.raw_bytes <= 6, "{rec:?}");
        assert_eq!(rec.spool_len, log.len());
        log.output(0, b"value!\n").expect("out");
        log.end_step(0).expect("end");
        // At the step's end everything is out and counted.
        let rec = last();
        assert_eq!(rec.raw_bytes, 20);
        assert_eq!(rec.spool_len, log.len());
        // A long output: the record counts exactly the raw bytes whose masked form is spooled.
        log.start_step(1, "long").expect("start");
        let before = log.len();
        log.output(1, &[b'x'; 1000]).expect("out");
        let rec = last();
        assert_eq!(rec.step_index, 1);
        assert_eq!(rec.raw_bytes, log.len() - before);
        assert!(rec.raw_bytes < 1000);
        log.end_step(1).expect("end");
        log.start_step(2, "test").expect("start");
        log.output(2, b"partial").expect("out");
        log.write_line("error: boom").expect("line");
        let len = log.finish().await.expect("finish");
        let text = String::from_utf8(std::fs::read(&spool).expect("read")).expect("utf8");
        assert_eq!(
            text,
            format!(
                "── step build ──\ntoken [MASKED]!\n\n── step long ──\n{}\n\n── step test ──\npartial\nerror: boom\n",
                "x".repeat(1000)
            )
        );
        assert_eq!(len, text.len() as u64);
    }

    #[tokio::test]
    async fn reattach_cuts_the_spool_back_to_the_last_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = dir.path().join("log.spool");
        let progress = dir.path().join("progress");
        let mut log =
            JobLog::with_progress(&spool, &progress, UNLIMITED, Masker::none()).expect("open");
        log.start_step(0, "build").expect("start");
        log.output(0, b"line one\n").expect("out");
        let consumed = log.len();
        drop(log);
        // A tail written after the last record (a crash between the two writes).
        std::fs::OpenOptions::new()
            .append(true)
            .open(&spool)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"torn"))
            .expect("append tail");
        let (mut log, last) =
            JobLog::reattach(&spool, &progress, UNLIMITED, Masker::none()).expect("reattach");
        let last = last.expect("a record");
        assert_eq!((last.step_index, last.raw_bytes), (0, 9));
        assert_eq!(log.len(), consumed);
        // The same step goes on, counting from what was consumed.
        log.output(0, b"line two\n").expect("out");
        assert_eq!(
            ProgressRecord::read_last(&progress).expect("read"),
            Some(ProgressRecord {
                step_index: 0,
                raw_bytes: 18,
                spool_len: log.len()
            })
        );
        log.finish().await.expect("finish");
        assert_eq!(
            std::fs::read_to_string(&spool).expect("read"),
            "── step build ──\nline one\nline two\n"
        );
        // Without records, nothing is cut.
        let bare = dir.path().join("bare.spool");
        std::fs::write(&bare, b"kept").expect("write");
        let (log, last) =
            JobLog::reattach(&bare, &dir.path().join("none"), UNLIMITED, Masker::none())
                .expect("reattach");
        assert_eq!((log.len(), last), (4, None));
    }
}
