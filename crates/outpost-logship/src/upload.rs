//! The uploader: sends a spool to the hub from the hub's committed offset, in order, in bounded
//! batches, retrying with backoff through outages of any length (DESIGN.md §3 log append, §6.1).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use outpost_protocol::MAX_LOG_CHUNK;
use outpost_time::Backoff;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::LogshipError;
use crate::spool::SpoolReader;

/// Where a job's log goes: the runner implements it with its hub client
/// (`POST /api/v1/runner/jobs/{id}/log?offset=N`).
#[async_trait]
pub trait LogTarget: Send + Sync {
    /// Appends `bytes` at byte `offset` of the job's log and answers the hub's committed length
    /// afterwards. Bytes below the committed length are ignored by the hub (idempotent); it may
    /// also commit only part of them. `offset` 0 with empty `bytes` just asks for the
    /// committed length.
    async fn append(&self, offset: u64, bytes: Bytes) -> Result<u64, TargetError>;
}

/// How an append failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The offset was past the hub's committed length (`409 {committed}`): resend from there.
    #[error("the hub refused the append: it has committed {committed} bytes")]
    Gap {
        /// The hub's committed length.
        committed: u64,
    },
    /// A failure worth retrying (network error, hub unavailable, 5xx).
    #[error("append failed, will retry: {0}")]
    Retryable(String),
    /// A failure that retrying cannot fix (job not found, unauthorized): uploading stops.
    #[error("append refused for good: {0}")]
    Fatal(String),
}

/// Settings of an [`Uploader`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploaderConfig {
    /// Largest batch, in bytes; clamped to `1..=MAX_LOG_CHUNK` (1 MiB).
    pub max_batch: usize,
    /// Longest a partial batch waits for more bytes after the previous upload. The first bytes
    /// after an idle period (no upload for this long) go out at once.
    pub flush_interval: Duration,
    /// First retry delay; doubles on each consecutive failure, with full jitter.
    pub backoff_initial: Duration,
    /// Upper bound of the retry delay.
    pub backoff_max: Duration,
    /// How often the uploader makes the spool durable (`fdatasync`) while uploading.
    pub sync_interval: Duration,
}

impl Default for UploaderConfig {
    fn default() -> Self {
        UploaderConfig {
            max_batch: MAX_LOG_CHUNK,
            flush_interval: Duration::from_millis(200),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            sync_interval: Duration::from_secs(1),
        }
    }
}

/// Starts uploaders.
#[derive(Debug)]
pub struct Uploader;

impl Uploader {
    /// Spawns the task that uploads `reader`'s spool to `target` until
    /// [`UploaderHandle::finish`] sees everything committed, a fatal error, or `cancel`.
    /// It first asks the target for its committed length and continues from there (so after a
    /// runner restart it resumes where the hub is). Must be called within a Tokio runtime.
    pub fn spawn(
        reader: SpoolReader,
        target: Arc<dyn LogTarget>,
        config: UploaderConfig,
        cancel: CancellationToken,
    ) -> UploaderHandle {
        let (committed_tx, committed_rx) = watch::channel(0);
        let (final_tx, final_rx) = watch::channel(None);
        let spooled_rx = reader.watch();
        let path = reader.path().to_owned();
        let task = Task {
            reader,
            target,
            config: UploaderConfig {
                max_batch: config.max_batch.clamp(1, MAX_LOG_CHUNK),
                ..config
            },
            cancel,
            committed_tx,
            final_rx,
            backoff_attempt: 0,
        };
        UploaderHandle {
            path,
            committed_rx,
            spooled_rx,
            final_tx,
            task: Some(tokio::spawn(task.run())),
        }
    }
}

/// The owner of a running uploader. Dropping it aborts the upload (the spool keeps the bytes).
pub struct UploaderHandle {
    path: PathBuf,
    committed_rx: watch::Receiver<u64>,
    spooled_rx: watch::Receiver<u64>,
    final_tx: watch::Sender<Option<u64>>,
    task: Option<JoinHandle<Result<u64, LogshipError>>>,
}

impl UploaderHandle {
    /// Bytes the hub has committed, as last heard (0 until the first answer).
    pub fn committed(&self) -> u64 {
        *self.committed_rx.borrow()
    }

    /// A receiver of the committed length, to wait on progress.
    pub fn committed_watch(&self) -> watch::Receiver<u64> {
        self.committed_rx.clone()
    }

    /// Bytes in the spool.
    pub fn spooled(&self) -> u64 {
        *self.spooled_rx.borrow()
    }

    /// Spooled bytes the hub has not committed yet (for the runner's unsent-bytes metric).
    pub fn unsent(&self) -> u64 {
        self.spooled().saturating_sub(self.committed())
    }

    /// The spool being uploaded.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the upload task has ended (a fatal error, cancellation); [`Self::finish`] then
    /// answers at once with the reason.
    pub fn is_stopped(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Declares the log complete at `final_len` bytes (from [`crate::JobLog::finish`]) and waits
    /// until the hub has committed all of them; answers the committed length. Send the job's
    /// completion only after this succeeded. Ends early with [`LogshipError::Cancelled`] when
    /// the cancellation token fires, or [`LogshipError::UploadFatal`] on a fatal refusal.
    pub async fn finish(mut self, final_len: u64) -> Result<u64, LogshipError> {
        self.final_tx.send_replace(Some(final_len));
        let Some(task) = self.task.take() else {
            return Err(LogshipError::Task {
                path: self.path.clone(),
                message: "the uploader was already finished".to_owned(),
            });
        };
        match task.await {
            Ok(result) => result,
            Err(e) => Err(LogshipError::Task {
                path: self.path.clone(),
                message: e.to_string(),
            }),
        }
    }
}

impl Drop for UploaderHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

struct Task {
    reader: SpoolReader,
    target: Arc<dyn LogTarget>,
    config: UploaderConfig,
    cancel: CancellationToken,
    committed_tx: watch::Sender<u64>,
    final_rx: watch::Receiver<Option<u64>>,
    backoff_attempt: u32,
}

/// What one wait in the main loop ended with.
enum Woken {
    Cancelled,
    Changed,
}

impl Task {
    async fn run(mut self) -> Result<u64, LogshipError> {
        let mut committed = self.learn_committed().await?;
        self.committed_tx.send_replace(committed);
        tracing::debug!(path = %self.reader.path().display(), committed, "log upload starts");

        let mut len_rx = self.reader.watch();
        let mut writer_open = true;
        let mut finish_open = true;
        let mut last_send: Option<Instant> = None;
        let mut last_sync = Instant::now();
        let mut sync_task: Option<tokio::task::JoinHandle<()>> = None;
        let mut failures = 0u32;
        let mut warned_ahead = false;
        loop {
            let spooled = *len_rx.borrow_and_update();
            let final_len = *self.final_rx.borrow_and_update();
            if final_len.is_some_and(|f| committed >= f) {
                return Ok(committed);
            }
            if committed > spooled && !warned_ahead {
                // The hub holds more than the spool: the spool lost its tail (power loss
                // before a sync). Nothing to resend; wait for the writer to catch up.
                warned_ahead = true;
                tracing::warn!(
                    path = %self.reader.path().display(),
                    committed,
                    spooled,
                    "the hub has committed more log bytes than the spool holds"
                );
            }
            let available = spooled.saturating_sub(committed);
            let max_batch = self.config.max_batch as u64;

            // Wait for bytes, for a fuller batch, or for the finish.
            let due = match last_send {
                Some(t) if final_len.is_none() && available < max_batch => {
                    Some(t + self.config.flush_interval).filter(|d| *d > Instant::now())
                }
                _ => None,
            };
            if available == 0 || due.is_some() {
                let woken = tokio::select! {
                    () = self.cancel.cancelled() => Woken::Cancelled,
                    () = sleep_until_opt(due), if available > 0 => Woken::Changed,
                    r = len_rx.changed(), if writer_open => {
                        writer_open = r.is_ok();
                        Woken::Changed
                    }
                    r = self.final_rx.changed(), if finish_open => {
                        finish_open = r.is_ok();
                        Woken::Changed
                    }
                };
                if let Woken::Cancelled = woken {
                    return Err(self.cancelled(committed));
                }
                if !writer_open && !finish_open && available == 0 {
                    // Nothing more can arrive and nobody can finish: only cancel ends this.
                    self.cancel.cancelled().await;
                    return Err(self.cancelled(committed));
                }
                continue;
            }

            // fsync runs beside the upload, never in front of it: on a busy disk one fsync can
            // take seconds (ext4 flushes its whole journal), and live output must not wait.
            if last_sync.elapsed() >= self.config.sync_interval
                && sync_task.as_ref().is_none_or(|t| t.is_finished())
            {
                last_sync = Instant::now();
                let reader = self.reader.clone();
                sync_task = Some(tokio::task::spawn_blocking(move || {
                    if let Err(e) = reader.sync() {
                        tracing::warn!(error = %e, "cannot sync the log spool");
                    }
                }));
            }

            let want = usize::try_from(available.min(max_batch)).unwrap_or(self.config.max_batch);
            let reader = self.reader.clone();
            let offset = committed;
            let bytes = tokio::task::spawn_blocking(move || reader.read_at(offset, want))
                .await
                .map_err(|e| LogshipError::Task {
                    path: self.reader.path().to_owned(),
                    message: e.to_string(),
                })??;
            if bytes.is_empty() {
                // The watch said there were bytes but the file has none there: the file was
                // cut behind our back. Retry later rather than spin.
                tracing::warn!(
                    path = %self.reader.path().display(),
                    offset,
                    "the log spool is shorter than its recorded length"
                );
                self.backoff().await?;
                continue;
            }
            let sent = bytes.len() as u64;
            last_send = Some(Instant::now());
            let result = tokio::select! {
                () = self.cancel.cancelled() => return Err(self.cancelled(committed)),
                r = self.target.append(offset, bytes) => r,
            };
            match result {
                Ok(c) if c > offset => {
                    if failures > 0 {
                        tracing::info!(
                            path = %self.reader.path().display(),
                            failures,
                            "log upload recovered"
                        );
                    }
                    failures = 0;
                    self.backoff_attempt = 0;
                    committed = c;
                    warned_ahead = false;
                    tracing::trace!(offset, sent, committed, "log bytes committed");
                }
                Ok(c) if c < offset => {
                    // The hub went back (it lost bytes): resend from where it is.
                    tracing::warn!(
                        offset,
                        committed = c,
                        "the hub's committed log offset went back"
                    );
                    committed = c;
                }
                Ok(_) => {
                    // Nothing accepted: back off instead of hammering the hub.
                    failures += 1;
                    self.backoff().await?;
                }
                Err(TargetError::Gap { committed: c }) => {
                    tracing::debug!(
                        offset,
                        committed = c,
                        "log append gap; resending from there"
                    );
                    if c == offset {
                        failures += 1;
                        self.backoff().await?;
                    }
                    committed = c;
                }
                Err(TargetError::Retryable(message)) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(
                            path = %self.reader.path().display(),
                            error = %message,
                            "log upload failed; retrying with backoff"
                        );
                    } else {
                        tracing::debug!(failures, error = %message, "log upload failed again");
                    }
                    self.backoff().await?;
                }
                Err(TargetError::Fatal(message)) => {
                    return Err(LogshipError::UploadFatal {
                        path: self.reader.path().to_owned(),
                        committed,
                        message,
                    });
                }
            }
            self.committed_tx.send_replace(committed);
        }
    }

    /// Asks the target for its committed length, retrying until it answers.
    async fn learn_committed(&mut self) -> Result<u64, LogshipError> {
        loop {
            let result = tokio::select! {
                () = self.cancel.cancelled() => return Err(self.cancelled(0)),
                r = self.target.append(0, Bytes::new()) => r,
            };
            match result {
                Ok(c) | Err(TargetError::Gap { committed: c }) => {
                    self.backoff_attempt = 0;
                    return Ok(c);
                }
                Err(TargetError::Retryable(message)) => {
                    tracing::debug!(error = %message, "cannot learn the hub's committed log offset");
                    self.backoff().await?;
                }
                Err(TargetError::Fatal(message)) => {
                    return Err(LogshipError::UploadFatal {
                        path: self.reader.path().to_owned(),
                        committed: 0,
                        message,
                    });
                }
            }
        }
    }

    /// Sleeps a random time in `[0, min(max, initial * 2^attempt)]` ("full jitter"), or until
    /// cancelled.
    async fn backoff(&mut self) -> Result<(), LogshipError> {
        let backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max);
        let delay = backoff.delay(self.backoff_attempt);
        self.backoff_attempt = self.backoff_attempt.saturating_add(1);
        tokio::select! {
            () = self.cancel.cancelled() => Err(self.cancelled(*self.committed_tx.borrow())),
            () = tokio::time::sleep(delay) => Ok(()),
        }
    }

    fn cancelled(&self, committed: u64) -> LogshipError {
        LogshipError::Cancelled {
            path: self.reader.path().to_owned(),
            committed,
            spooled: self.reader.len(),
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
