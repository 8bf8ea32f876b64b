//! A job's log on the runner side: the masker, the spool and the reattach progress file written
//! together, and the [`LogTarget`] that uploads a spool through the hub client.
//!
//! The masker is flushed at every step boundary, so a progress record's `raw_bytes` is exact:
//! the raw output of the step whose masked form is in the spool (`pushed - held_back`).

use std::path::Path;

use async_trait::async_trait;
use bytes::Bytes;
use outpost_client::{ClientError, HubClient, LogAppend};
use outpost_logship::{LogTarget, LogshipError, Masker, Spool, SpoolReader, TargetError};

use crate::fatal::Fatal;
use crate::state::{ProgressFile, ProgressRecord};

/// The writing side of a job's log.
pub(crate) struct LogWriter {
    masker: Masker,
    spool: Spool,
    progress: Option<ProgressFile>,
    out: Vec<u8>,
    /// The step whose output is being written, and its raw bytes pushed so far.
    step: Option<(u32, u64)>,
    at_line_start: bool,
}

impl LogWriter {
    /// Opens (or resumes) the spool and, when given, the progress file. Blocking.
    pub(crate) fn open(
        spool_path: &Path,
        progress_path: Option<&Path>,
        cap: u64,
        masker: Masker,
    ) -> Result<Self, LogshipError> {
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
        Ok(Self {
            masker,
            spool,
            progress,
            out: Vec::new(),
            step: None,
            at_line_start,
        })
    }

    pub(crate) fn reader(&self) -> SpoolReader {
        self.spool.reader()
    }

    /// Masked bytes in the spool.
    #[cfg(test)]
    pub(crate) fn len(&self) -> u64 {
        self.spool.len()
    }

    /// Masks a text the way the log is masked (for messages sent to the hub).
    pub(crate) fn mask_str(&self, text: &str) -> String {
        self.masker.mask_str(text)
    }

    /// Marks the start of a step's section: the masker is flushed, a header line written, and a
    /// progress record saying step `index` has consumed nothing yet. Answers the offset where the
    /// section starts.
    pub(crate) fn start_step(&mut self, index: u32, name: &str) -> Result<u64, LogshipError> {
        self.flush()?;
        let offset = self.spool.len();
        let lead = if self.at_line_start || offset == 0 {
            ""
        } else {
            "\n"
        };
        let header = if offset == 0 {
            format!("── step {name} ──\n")
        } else {
            format!("{lead}\n── step {name} ──\n")
        };
        self.push(header.as_bytes())?;
        self.flush()?;
        self.step = Some((index, 0));
        self.record(index, 0);
        Ok(offset)
    }

    /// Continues a step after a runner restart: `raw_bytes` of it are already in the spool.
    pub(crate) fn resume_step(&mut self, index: u32, raw_bytes: u64) {
        self.step = Some((index, raw_bytes));
    }

    /// Raw output of step `index`.
    pub(crate) fn output(&mut self, index: u32, data: &[u8]) -> Result<(), LogshipError> {
        match self.step {
            Some((current, _)) if current == index => {}
            _ => {
                self.flush()?;
                self.step = Some((index, 0));
            }
        }
        self.push(data)?;
        if let Some((step, raw)) = &mut self.step {
            *raw += data.len() as u64;
            let consumed = raw.saturating_sub(self.masker.held_back() as u64);
            let step = *step;
            self.record(step, consumed);
        }
        Ok(())
    }

    /// Bytes of output the masker still holds back (they may be the start of a secret).
    pub(crate) fn held_back(&self) -> usize {
        self.masker.held_back()
    }

    /// Output paused: what the masker holds back that cannot begin a secret goes out, so the
    /// last line of a quiet step (a prompt, "waiting for …") is visible live.
    pub(crate) fn release(&mut self) -> Result<(), LogshipError> {
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
    pub(crate) fn end_step(&mut self, index: u32) -> Result<(), LogshipError> {
        self.flush()?;
        if let Some((step, raw)) = self.step
            && step == index
        {
            self.record(step, raw);
        }
        Ok(())
    }

    /// A line of the runner's own (an error, a note), on a line of its own, masked.
    pub(crate) fn line(&mut self, text: &str) -> Result<(), LogshipError> {
        self.flush()?;
        if !self.at_line_start {
            self.push(b"\n")?;
        }
        self.push(text.as_bytes())?;
        if !text.ends_with('\n') {
            self.push(b"\n")?;
        }
        self.flush()
    }

    /// Flushes the masker, makes the spool durable, and answers the final length. Blocking
    /// (`fdatasync`).
    pub(crate) fn finish(&mut self) -> Result<u64, LogshipError> {
        self.flush()?;
        self.spool.sync()?;
        Ok(self.spool.len())
    }

    fn push(&mut self, data: &[u8]) -> Result<(), LogshipError> {
        let Some(&last) = data.last() else {
            return Ok(());
        };
        self.out.clear();
        self.masker.push(data, &mut self.out);
        let result = self.spool.append(&self.out);
        self.out.clear();
        self.at_line_start = last == b'\n';
        result
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
            tracing::warn!(path = %self.spool.path().display(), error = %e, "cannot write a reattach progress record");
        }
    }
}

/// Cuts a spool back to `len` bytes (a restarted runner drops what may be a partial tail).
/// Blocking.
pub(crate) fn truncate_spool(path: &Path, len: u64) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    if file.metadata()?.len() > len {
        file.set_len(len)?;
        file.sync_all()?;
    }
    Ok(())
}

/// Uploads one job's log through the hub client.
pub(crate) struct HubLogTarget {
    pub client: HubClient,
    pub job_id: String,
    pub fatal: Fatal,
}

#[async_trait]
impl LogTarget for HubLogTarget {
    async fn append(&self, offset: u64, bytes: Bytes) -> Result<u64, TargetError> {
        match self.client.append_log(&self.job_id, offset, bytes).await {
            Ok(LogAppend::Committed(committed)) => Ok(committed),
            Ok(LogAppend::Gap { committed }) => Err(TargetError::Gap { committed }),
            Err(ClientError::Unauthorized { endpoint }) => {
                let message = format!("{endpoint}: token revoked or invalid");
                self.fatal.unauthorized(endpoint);
                Err(TargetError::Fatal(message))
            }
            Err(e) if e.is_retryable() => Err(TargetError::Retryable(e.to_string())),
            Err(e) => Err(TargetError::Fatal(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_counts_only_what_reached_the_spool() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = dir.path().join("log.spool");
        let progress = dir.path().join("progress");
        let masker = Masker::new(&[("T".to_owned(), b"s3cret-value".to_vec())]).expect("masker");
        let mut log = LogWriter::open(&spool, Some(&progress), u64::MAX, masker).expect("open");
        let offset = log.start_step(0, "build").expect("start");
        assert_eq!(offset, 0);
        log.output(0, b"token s3cret-").expect("out");
        let rec = ProgressRecord::read_last(&progress)
            .expect("read")
            .expect("record");
        // "s3cret-" may be the start of the secret: held back, so not counted as consumed.
        assert_eq!(rec.step_index, 0);
        assert!(rec.raw_bytes <= 6, "{rec:?}");
        assert_eq!(rec.spool_len, log.len());
        log.output(0, b"value!\n").expect("out");
        log.end_step(0).expect("end");
        // At the step's end everything is out and counted.
        let rec = ProgressRecord::read_last(&progress)
            .expect("read")
            .expect("record");
        assert_eq!(rec.raw_bytes, 20);
        assert_eq!(rec.spool_len, log.len());
        // A long output: the record counts exactly the raw bytes whose masked form is spooled.
        log.start_step(1, "long").expect("start");
        let before = log.len();
        let long = vec![b'x'; 1000];
        log.output(1, &long).expect("out");
        let rec = ProgressRecord::read_last(&progress)
            .expect("read")
            .expect("record");
        assert_eq!(rec.step_index, 1);
        assert_eq!(rec.raw_bytes, log.len() - before);
        assert!(rec.raw_bytes < 1000);
        log.end_step(1).expect("end");
        log.start_step(2, "test").expect("start");
        log.output(2, b"partial").expect("out");
        log.line("error: boom").expect("line");
        let len = log.finish().expect("finish");
        let text = String::from_utf8(std::fs::read(&spool).expect("read")).expect("utf8");
        assert_eq!(
            text,
            format!(
                "── step build ──\ntoken [MASKED]!\n\n── step long ──\n{}\n\n── step test ──\npartial\nerror: boom\n",
                "x".repeat(1000)
            )
        );
        assert_eq!(len, text.len() as u64);
        truncate_spool(&spool, 3).expect("truncate");
        assert_eq!(std::fs::metadata(&spool).expect("meta").len(), 3);
    }
}
