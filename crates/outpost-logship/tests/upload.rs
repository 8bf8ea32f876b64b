//! End-to-end tests of the log pipeline (mask → spool → upload) against an in-process
//! `LogTarget` that behaves like the hub's log endpoint and injects failures: outages, gaps,
//! partial acceptance, fatal refusals. Each test checks the stored log byte for byte.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use outpost_logship::{
    JobLog, LogTarget, LogshipError, Masker, TargetError, UNLIMITED, Uploader, UploaderConfig,
};
use outpost_protocol::MASK;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Longest any test waits for a condition before failing.
const DEADLINE: Duration = Duration::from_secs(60);

/// What the target does with one call, decided by the test's fault script.
enum Fault {
    /// Behave like the hub.
    None,
    /// Answer a retryable error without storing anything.
    Retryable,
    /// Answer a fatal error.
    Fatal,
    /// Store at most this many new bytes.
    AcceptAtMost(usize),
    /// Lose everything past this length (a hub that went back), then behave like the hub.
    LoseTail(u64),
}

type Script = Box<dyn FnMut(u64, u64, usize) -> Fault + Send>;

struct State {
    stored: Vec<u8>,
    calls: u64,
    /// `(offset, len)` of every non-empty append.
    appends: Vec<(u64, usize)>,
    /// Bytes re-sent below the committed length that differed from what was stored.
    mismatches: u64,
    script: Script,
}

/// A hub log endpoint in memory: appends at `offset`, idempotent below the committed length,
/// `Gap` past it.
struct MemTarget {
    state: Mutex<State>,
    down: AtomicBool,
    committed_tx: watch::Sender<u64>,
}

impl MemTarget {
    fn new(script: Script) -> Arc<MemTarget> {
        Arc::new(MemTarget {
            state: Mutex::new(State {
                stored: Vec::new(),
                calls: 0,
                appends: Vec::new(),
                mismatches: 0,
                script,
            }),
            down: AtomicBool::new(false),
            committed_tx: watch::channel(0).0,
        })
    }

    fn healthy() -> Arc<MemTarget> {
        MemTarget::new(Box::new(|_, _, _| Fault::None))
    }

    fn with_stored(self: Arc<Self>, bytes: &[u8]) -> Arc<Self> {
        self.state.lock().expect("lock").stored = bytes.to_vec();
        self.committed_tx.send_replace(bytes.len() as u64);
        self
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn stored(&self) -> Vec<u8> {
        self.state.lock().expect("lock").stored.clone()
    }

    fn appends(&self) -> Vec<(u64, usize)> {
        self.state.lock().expect("lock").appends.clone()
    }

    fn mismatches(&self) -> u64 {
        self.state.lock().expect("lock").mismatches
    }

    /// Waits until the target holds at least `len` bytes.
    async fn wait_for_len(&self, len: u64) {
        let mut rx = self.committed_tx.subscribe();
        tokio::time::timeout(DEADLINE, rx.wait_for(|c| *c >= len))
            .await
            .expect("deadline waiting for the target")
            .expect("target alive");
    }
}

#[async_trait]
impl LogTarget for MemTarget {
    async fn append(&self, offset: u64, bytes: Bytes) -> Result<u64, TargetError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(TargetError::Retryable("connection refused".to_owned()));
        }
        let mut state = self.state.lock().expect("lock");
        state.calls += 1;
        let call = state.calls;
        let fault = (state.script)(call, offset, bytes.len());
        let mut limit = usize::MAX;
        match fault {
            Fault::None => {}
            Fault::Retryable => return Err(TargetError::Retryable(format!("call {call} failed"))),
            Fault::Fatal => return Err(TargetError::Fatal("job not found".to_owned())),
            Fault::AcceptAtMost(n) => limit = n,
            Fault::LoseTail(keep) => {
                let keep = usize::try_from(keep)
                    .expect("small")
                    .min(state.stored.len());
                state.stored.truncate(keep);
                self.committed_tx.send_replace(keep as u64);
            }
        }
        let committed = state.stored.len() as u64;
        if offset > committed {
            return Err(TargetError::Gap { committed });
        }
        if !bytes.is_empty() {
            state.appends.push((offset, bytes.len()));
        }
        let overlap = usize::try_from(committed - offset)
            .expect("small")
            .min(bytes.len());
        let start = usize::try_from(offset).expect("small");
        if bytes[..overlap] != state.stored[start..start + overlap] {
            state.mismatches += 1;
        }
        let new = &bytes[overlap..];
        let new = &new[..new.len().min(limit)];
        state.stored.extend_from_slice(new);
        let committed = state.stored.len() as u64;
        self.committed_tx.send_replace(committed);
        Ok(committed)
    }
}

/// A tiny deterministic generator (xorshift64*).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const SECRET: &[u8] = b"s3cr3t-T0ken-value";

fn masker() -> Masker {
    Masker::new(&[("DEPLOY_TOKEN".to_owned(), SECRET.to_vec())]).expect("valid secret")
}

/// A job's output of about `size` bytes, cut into random writes, with the secret planted raw
/// and base64-encoded; returns the writes and the expected masked log.
fn job_output(size: usize, seed: u64) -> (Vec<Vec<u8>>, Vec<u8>) {
    let mut rng = XorShift(seed);
    let mut input = Vec::with_capacity(size + 1024);
    let mut expected = Vec::with_capacity(size + 1024);
    let encoded = STANDARD.encode(SECRET);
    let mut line = 0u64;
    while input.len() < size {
        line += 1;
        let text = format!(
            "line {line}: compiling crate number {} of the build\n",
            rng.below(999)
        );
        input.extend_from_slice(text.as_bytes());
        expected.extend_from_slice(text.as_bytes());
        match rng.below(20) {
            0 => {
                input.extend_from_slice(b"token=");
                input.extend_from_slice(SECRET);
                input.push(b'\n');
                expected.extend_from_slice(format!("token={MASK}\n").as_bytes());
            }
            1 => {
                input.extend_from_slice(format!("auth: {encoded}\n").as_bytes());
                expected.extend_from_slice(format!("auth: {MASK}\n").as_bytes());
            }
            _ => {}
        }
    }
    let mut writes = Vec::new();
    let mut rest = &input[..];
    while !rest.is_empty() {
        let n = (1 + rng.below(16 * 1024)).min(rest.len());
        writes.push(rest[..n].to_vec());
        rest = &rest[n..];
    }
    (writes, expected)
}

/// The output of a job run by two runner processes in turn (the first one stops at a line
/// boundary: the masker's state does not survive a restart), and the expected masked log.
fn two_runs(size: usize, seed: u64) -> (Vec<Vec<u8>>, Vec<Vec<u8>>, Vec<u8>) {
    let (first, mut expected) = job_output(size, seed);
    let (second, expected_second) = job_output(size, seed + 1000);
    expected.extend_from_slice(&expected_second);
    (first, second, expected)
}

fn fast_config() -> UploaderConfig {
    UploaderConfig {
        max_batch: 64 * 1024,
        flush_interval: Duration::from_millis(5),
        backoff_initial: Duration::from_millis(1),
        backoff_max: Duration::from_millis(5),
        sync_interval: Duration::from_millis(50),
    }
}

fn spool_path(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("jobs").join("job-1").join("log.spool")
}

/// Writes everything, finishes the log and the upload, and checks the stored log.
async fn write_all_and_finish(
    log: &mut JobLog,
    handle: outpost_logship::UploaderHandle,
    writes: &[Vec<u8>],
) -> u64 {
    for w in writes {
        log.write(w).expect("write");
    }
    let final_len = log.finish().await.expect("finish log");
    let committed = tokio::time::timeout(DEADLINE, handle.finish(final_len))
        .await
        .expect("deadline waiting for the upload")
        .expect("upload");
    assert_eq!(committed, final_len);
    final_len
}

fn assert_same(actual: &[u8], expected: &[u8]) {
    assert_eq!(actual.len(), expected.len(), "stored length");
    if let Some(i) = actual.iter().zip(expected).position(|(a, b)| a != b) {
        panic!(
            "stored log differs at byte {i}: {:?} vs {:?}",
            String::from_utf8_lossy(&actual[i..(i + 60).min(actual.len())]),
            String::from_utf8_lossy(&expected[i..(i + 60).min(expected.len())]),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_target_gets_the_masked_log_byte_for_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (writes, expected) = job_output(512 * 1024, 1);
    let target = MemTarget::healthy();
    let mut log = JobLog::open(&spool_path(&dir), UNLIMITED, masker()).expect("open");
    let handle = Uploader::spawn(
        log.reader(),
        target.clone(),
        fast_config(),
        CancellationToken::new(),
    );
    write_all_and_finish(&mut log, handle, &writes).await;
    assert_same(&target.stored(), &expected);
    assert_eq!(target.mismatches(), 0);
    assert_eq!(
        std::fs::read(spool_path(&dir)).expect("spool"),
        expected,
        "spool is masked too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_then_recovery_is_byte_exact_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (writes, expected) = job_output(50 * 1024 * 1024, 2);
    let target = MemTarget::healthy();
    target.set_down(true);
    let config = fast_config();
    let mut log = JobLog::open(&spool_path(&dir), UNLIMITED, masker()).expect("open");
    let handle = Uploader::spawn(
        log.reader(),
        target.clone(),
        config.clone(),
        CancellationToken::new(),
    );

    // The whole job runs while the hub is down: everything goes to disk, not to memory.
    let bound = 4 * 64 * 1024 + 1024;
    for w in &writes {
        log.write(w).expect("write");
        assert!(
            log.buffer_capacity() <= bound,
            "buffers grew to {}",
            log.buffer_capacity()
        );
        assert!(log.held_back() < masker().longest_form());
    }
    let final_len = log.finish().await.expect("finish log");
    assert_eq!(final_len, expected.len() as u64);
    assert_eq!(handle.committed(), 0);
    assert_eq!(
        handle.unsent(),
        final_len,
        "all of it is waiting in the spool"
    );
    assert!(target.stored().is_empty());

    target.set_down(false);
    let committed = tokio::time::timeout(DEADLINE, handle.finish(final_len))
        .await
        .expect("deadline")
        .expect("upload");
    assert_eq!(committed, final_len);
    let stored = target.stored();
    assert_same(&stored, &expected);
    let appends = target.appends();
    assert!(
        appends.iter().all(|(_, len)| *len <= config.max_batch),
        "batches are bounded"
    );
    // In order: every append starts exactly where the previous one ended.
    let mut next = 0;
    for (offset, len) in appends {
        assert_eq!(offset, next, "appends are sent in order without overlap");
        next = offset + len as u64;
    }
    assert_eq!(target.mismatches(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_run_of_retryable_failures_and_partial_acceptance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (writes, expected) = job_output(300 * 1024, 3);
    // 200 failures in a row, then every other call fails and the rest accept ≤ 1000 bytes.
    let target = MemTarget::new(Box::new(|call, _, _| match call {
        0..=200 => Fault::Retryable,
        c if c % 2 == 0 => Fault::Retryable,
        _ => Fault::AcceptAtMost(1000),
    }));
    let mut log = JobLog::open(&spool_path(&dir), UNLIMITED, masker()).expect("open");
    let handle = Uploader::spawn(
        log.reader(),
        target.clone(),
        fast_config(),
        CancellationToken::new(),
    );
    write_all_and_finish(&mut log, handle, &writes).await;
    assert_same(&target.stored(), &expected);
    assert!(
        target
            .appends()
            .iter()
            .any(|(off, _)| off % 1000 == 0 && *off > 0)
    );
    assert_eq!(target.mismatches(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaps_make_the_uploader_resend_from_the_hubs_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (writes, expected) = job_output(300 * 1024, 4);
    // Every 5th call the hub "loses" the last 3000 bytes it had, so the append is past its
    // committed length and refused with a gap.
    let target = MemTarget::new(Box::new(|call, offset, _| {
        if call % 5 == 0 && offset > 3000 {
            Fault::LoseTail(offset - 3000)
        } else {
            Fault::None
        }
    }));
    let mut log = JobLog::open(&spool_path(&dir), UNLIMITED, masker()).expect("open");
    let config = UploaderConfig {
        max_batch: 8 * 1024,
        ..fast_config()
    };
    let handle = Uploader::spawn(
        log.reader(),
        target.clone(),
        config,
        CancellationToken::new(),
    );
    write_all_and_finish(&mut log, handle, &writes).await;
    assert_same(&target.stored(), &expected);
    let appends = target.appends();
    assert!(
        appends.windows(2).any(|w| w[1].0 < w[0].0 + w[0].1 as u64),
        "some bytes were resent after a gap"
    );
    assert_eq!(target.mismatches(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_from_the_hubs_committed_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = spool_path(&dir);
    let (first, second, expected) = two_runs(100 * 1024, 5);
    // An earlier runner process spooled the first part and the hub committed 70_000 bytes.
    {
        let mut log = JobLog::open(&path, UNLIMITED, masker()).expect("open");
        for w in &first {
            log.write(w).expect("write");
        }
        log.finish().await.expect("finish");
    }
    let spooled = std::fs::read(&path).expect("spool");
    assert!(spooled.len() > 70_000);
    let target = MemTarget::healthy().with_stored(&spooled[..70_000]);

    // The restarted runner reopens the spool and carries on.
    let mut log = JobLog::open(&path, UNLIMITED, masker()).expect("reopen");
    assert_eq!(log.len(), spooled.len() as u64);
    let handle = Uploader::spawn(
        log.reader(),
        target.clone(),
        fast_config(),
        CancellationToken::new(),
    );
    write_all_and_finish(&mut log, handle, &second).await;
    assert_same(&target.stored(), &expected);
    let appends = target.appends();
    assert_eq!(
        appends.first().map(|a| a.0),
        Some(70_000),
        "no byte below the hub's offset resent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_upload_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = spool_path(&dir);
    let (first, second, expected) = two_runs(150 * 1024, 6);
    let target = MemTarget::new(Box::new(|_, _, _| Fault::AcceptAtMost(5000)));
    {
        let mut log = JobLog::open(&path, UNLIMITED, masker()).expect("open");
        let handle = Uploader::spawn(
            log.reader(),
            target.clone(),
            fast_config(),
            CancellationToken::new(),
        );
        for w in &first {
            log.write(w).expect("write");
        }
        // Kill the runner once part of it is up: drop the uploader mid-flight.
        target.wait_for_len(20_000).await;
        drop(handle);
        log.finish().await.expect("finish");
    }
    let mut log = JobLog::open(&path, UNLIMITED, masker()).expect("reopen");
    let handle = Uploader::spawn(
        log.reader(),
        target.clone(),
        fast_config(),
        CancellationToken::new(),
    );
    write_all_and_finish(&mut log, handle, &second).await;
    assert_same(&target.stored(), &expected);
    assert_eq!(target.mismatches(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_bytes_go_out_at_once_and_finish_does_not_wait_for_the_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = MemTarget::healthy();
    let config = UploaderConfig {
        // So long that waiting for it would fail the test by its deadline.
        flush_interval: Duration::from_secs(3600),
        ..fast_config()
    };
    let mut log = JobLog::open(&spool_path(&dir), UNLIMITED, Masker::none()).expect("open");
    let handle = Uploader::spawn(
        log.reader(),
        target.clone(),
        config,
        CancellationToken::new(),
    );
    log.write_line("$ step build").expect("write");
    target.wait_for_len(13).await;
    assert_eq!(target.stored(), b"$ step build\n");
    let mut committed = handle.committed_watch();
    tokio::time::timeout(DEADLINE, committed.wait_for(|c| *c == 13))
        .await
        .expect("deadline")
        .expect("uploader alive");
    assert_eq!(handle.unsent(), 0);

    log.write(b"more output\n").expect("write");
    let final_len = log.finish().await.expect("finish");
    let done = tokio::time::timeout(DEADLINE, handle.finish(final_len))
        .await
        .expect("finish does not wait for the flush interval")
        .expect("upload");
    assert_eq!(done, final_len);
    assert_eq!(target.stored(), b"$ step build\nmore output\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_refusal_stops_the_upload_with_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = MemTarget::new(Box::new(|call, _, _| {
        if call > 2 {
            Fault::Fatal
        } else {
            Fault::AcceptAtMost(10)
        }
    }));
    let mut log = JobLog::open(&spool_path(&dir), UNLIMITED, Masker::none()).expect("open");
    let handle = Uploader::spawn(
        log.reader(),
        target.clone(),
        fast_config(),
        CancellationToken::new(),
    );
    log.write(&[b'x'; 1000]).expect("write");
    let final_len = log.finish().await.expect("finish");
    let err = tokio::time::timeout(DEADLINE, handle.finish(final_len))
        .await
        .expect("deadline")
        .expect_err("fatal");
    match err {
        LogshipError::UploadFatal {
            committed, message, ..
        } => {
            assert_eq!(committed, 10);
            assert_eq!(message, "job not found");
        }
        other => panic!("unexpected {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_ends_an_endless_outage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = MemTarget::healthy();
    target.set_down(true);
    let cancel = CancellationToken::new();
    let mut log = JobLog::open(&spool_path(&dir), UNLIMITED, Masker::none()).expect("open");
    let handle = Uploader::spawn(log.reader(), target.clone(), fast_config(), cancel.clone());
    log.write(b"never delivered\n").expect("write");
    let final_len = log.finish().await.expect("finish");
    assert_eq!(handle.unsent(), final_len);
    let finishing = tokio::spawn(handle.finish(final_len));
    cancel.cancel();
    let err = tokio::time::timeout(DEADLINE, finishing)
        .await
        .expect("deadline")
        .expect("join")
        .expect_err("cancelled");
    assert!(
        matches!(err, LogshipError::Cancelled { committed: 0, spooled, .. } if spooled == final_len),
        "{err}"
    );
    // The bytes are still in the spool for the next start.
    assert_eq!(
        std::fs::read(log.path()).expect("spool"),
        b"never delivered\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capped_log_uploads_the_truncation_notice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = MemTarget::healthy();
    let path = spool_path(&dir);
    let mut log = JobLog::open(&path, 100, Masker::none()).expect("open");
    let handle = Uploader::spawn(
        log.reader(),
        target.clone(),
        fast_config(),
        CancellationToken::new(),
    );
    for _ in 0..50 {
        log.write(b"0123456789").expect("write");
    }
    assert_eq!(log.dropped(), 400);
    let final_len = log.finish().await.expect("finish");
    handle.finish(final_len).await.expect("upload");
    let expected = format!(
        "{}{}",
        "0123456789".repeat(10),
        outpost_logship::truncation_notice(100)
    );
    assert_eq!(String::from_utf8_lossy(&target.stored()), expected);
    assert!(Path::new(&path).exists());
}
