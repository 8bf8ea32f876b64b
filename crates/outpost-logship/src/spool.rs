//! The per-job spool: an append-only file holding the job's masked log, written before anything
//! is uploaded, so a hub outage of any length costs disk, not memory, and a runner restart
//! resumes from the file.
//!
//! Durability policy: every append is one `write(2)` straight to the OS (no user-space buffer),
//! so the bytes survive a crash of the runner process and the uploader's separate read handle
//! sees them at once. `fdatasync` is explicit: [`Spool::sync`] / [`SpoolReader::sync`], called by
//! [`crate::JobLog::finish`] and periodically by the uploader (off the writer's path). A power
//! loss can therefore lose up to one sync interval of spooled bytes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use crate::LogshipError;

/// A cap meaning "no size limit".
pub const UNLIMITED: u64 = u64::MAX;

/// The line written once when a job's log reaches its cap.
pub fn truncation_notice(cap: u64) -> String {
    format!(
        "\n[outpost: log truncated: the job's log reached its limit of {cap} bytes; further \
         output is dropped]\n"
    )
}

/// The writing side of a job's spool file. Only masked bytes are ever given to it.
pub struct Spool {
    path: PathBuf,
    file: Arc<File>,
    read: Arc<File>,
    len: u64,
    cap: u64,
    dropped: u64,
    truncated: bool,
    len_tx: watch::Sender<u64>,
    /// `write(2)` calls that succeeded: tests check that one append is one write.
    #[cfg(test)]
    pub(crate) writes: u64,
}

impl Spool {
    /// Opens the spool at `path`, creating it (and its parent directories) when absent. An
    /// existing file is resumed: its length is the spooled length. `cap_bytes` limits the log's
    /// size ([`UNLIMITED`] for none); a resumed file at or over the cap stays truncated (the
    /// notice is written if it is not already there).
    ///
    /// Blocking (a few file system calls): call it where that is acceptable, once per job.
    pub fn open_or_create(path: &Path, cap_bytes: u64) -> Result<Spool, LogshipError> {
        let err = |op, source| LogshipError::Spool {
            path: path.to_owned(),
            op,
            source,
        };
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            fs::create_dir_all(parent).map_err(|e| err("create the directory of", e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| err("open", e))?;
        let read = File::open(path).map_err(|e| err("open for reading", e))?;
        let len = file.metadata().map_err(|e| err("stat", e))?.len();
        let (len_tx, _) = watch::channel(len);
        let mut spool = Spool {
            path: path.to_owned(),
            file: Arc::new(file),
            read: Arc::new(read),
            len,
            cap: cap_bytes,
            dropped: 0,
            truncated: false,
            len_tx,
            #[cfg(test)]
            writes: 0,
        };
        if len >= cap_bytes {
            let notice = truncation_notice(cap_bytes);
            let tail_at = len.saturating_sub(notice.len() as u64);
            let tail =
                read_exact_at(&spool.read, tail_at, notice.len()).map_err(|e| err("read", e))?;
            spool.truncated = true;
            if tail != notice.as_bytes() {
                spool.write_raw(notice.as_bytes())?;
            }
        }
        Ok(spool)
    }

    /// Appends masked bytes. Up to the cap they go to the file in one write; past it the
    /// truncation notice is written once and the rest is dropped (and counted).
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), LogshipError> {
        if bytes.is_empty() {
            return Ok(());
        }
        if self.truncated {
            self.dropped += bytes.len() as u64;
            return Ok(());
        }
        let room = self.cap.saturating_sub(self.len);
        if (bytes.len() as u64) <= room {
            return self.write_raw(bytes);
        }
        // `room` < bytes.len() here, so it fits in usize.
        let keep = usize::try_from(room).unwrap_or(bytes.len());
        // The kept bytes and the notice go out in one write, like every append: the uploader
        // must not see (and send) a length between the two.
        let mut last = bytes[..keep].to_vec();
        last.extend_from_slice(truncation_notice(self.cap).as_bytes());
        self.write_raw(&last)?;
        self.truncated = true;
        self.dropped += (bytes.len() - keep) as u64;
        tracing::warn!(
            path = %self.path.display(),
            cap = self.cap,
            "job log reached its size limit; further output is dropped"
        );
        Ok(())
    }

    fn write_raw(&mut self, bytes: &[u8]) -> Result<(), LogshipError> {
        match (&*self.file).write_all(bytes) {
            Ok(()) => {
                #[cfg(test)]
                {
                    self.writes += 1;
                }
                self.len += bytes.len() as u64;
                self.len_tx.send_replace(self.len);
                Ok(())
            }
            Err(source) => {
                // Part of the write may have landed: learn the real length so offsets stay true.
                if let Ok(meta) = self.file.metadata() {
                    self.len = meta.len();
                    self.len_tx.send_replace(self.len);
                }
                Err(LogshipError::Spool {
                    path: self.path.clone(),
                    op: "append to",
                    source,
                })
            }
        }
    }

    /// Bytes in the file (handed to the OS): the spooled length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was spooled yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes dropped after the cap was reached (since this spool was opened).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Whether the cap was reached.
    pub fn is_truncated(&self) -> bool {
        self.truncated
    }

    /// The size cap.
    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// The spool file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes every appended byte durable (`fdatasync`). Blocking: from async code, call it in
    /// `spawn_blocking` (as [`crate::JobLog::finish`] does).
    pub fn sync(&self) -> Result<(), LogshipError> {
        self.reader().sync()
    }

    /// Reads up to `max` bytes from `offset` (fewer at the end of the file). Blocking.
    pub fn read_at(&self, offset: u64, max: usize) -> Result<Bytes, LogshipError> {
        self.reader().read_at(offset, max)
    }

    /// A read handle for the uploader: reads with its own file handle (concurrently with
    /// appends) and watches the spooled length.
    pub fn reader(&self) -> SpoolReader {
        SpoolReader {
            path: self.path.clone(),
            read: Arc::clone(&self.read),
            write: Arc::clone(&self.file),
            len_rx: self.len_tx.subscribe(),
        }
    }
}

/// The reading side of a spool, cheap to clone.
#[derive(Clone)]
pub struct SpoolReader {
    path: PathBuf,
    read: Arc<File>,
    write: Arc<File>,
    len_rx: watch::Receiver<u64>,
}

impl SpoolReader {
    /// The spool file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The spooled length now.
    pub fn len(&self) -> u64 {
        *self.len_rx.borrow()
    }

    /// Whether nothing was spooled yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A receiver that changes whenever bytes are appended (it reports closed once the
    /// [`Spool`] is dropped).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.len_rx.clone()
    }

    /// Reads up to `max` bytes from `offset`: fewer at the end of what is spooled, none past
    /// it. Blocking (`pread`): from async code, call it in `spawn_blocking`.
    pub fn read_at(&self, offset: u64, max: usize) -> Result<Bytes, LogshipError> {
        let available = self.len().saturating_sub(offset);
        let want = usize::try_from(available).map_or(max, |a| a.min(max));
        read_exact_at(&self.read, offset, want)
            .map(Bytes::from)
            .map_err(|source| LogshipError::Spool {
                path: self.path.clone(),
                op: "read",
                source,
            })
    }

    /// `fdatasync` of the spool file. Blocking.
    pub fn sync(&self) -> Result<(), LogshipError> {
        self.write
            .sync_data()
            .map_err(|source| LogshipError::Spool {
                path: self.path.clone(),
                op: "sync",
                source,
            })
    }
}

/// Reads up to `want` bytes at `offset`, stopping early only at the end of the file.
fn read_exact_at(file: &File, offset: u64, want: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; want];
    let mut filled = 0;
    while filled < want {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool_path(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("jobs").join("j1").join("log.spool")
    }

    #[test]
    fn appends_and_resumes_after_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = spool_path(&dir);
        let mut spool = Spool::open_or_create(&path, UNLIMITED).expect("create");
        assert!(spool.is_empty());
        spool.append(b"hello ").expect("append");
        spool.append(b"world\n").expect("append");
        assert_eq!(spool.len(), 12);
        spool.sync().expect("sync");
        drop(spool);

        let mut spool = Spool::open_or_create(&path, UNLIMITED).expect("reopen");
        assert_eq!(spool.len(), 12, "the file's length is the spooled length");
        spool.append(b"again\n").expect("append");
        assert_eq!(
            &spool.read_at(0, 1000).expect("read")[..],
            b"hello world\nagain\n"
        );
        assert_eq!(&spool.read_at(6, 5).expect("read")[..], b"world");
        assert!(
            spool
                .read_at(100, 10)
                .expect("read past the end")
                .is_empty()
        );
    }

    #[test]
    fn reader_sees_appends_while_the_writer_goes_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spool = Spool::open_or_create(&spool_path(&dir), UNLIMITED).expect("create");
        let reader = spool.reader();
        let mut rx = reader.watch();
        for i in 0..100u32 {
            spool
                .append(format!("line {i}\n").as_bytes())
                .expect("append");
            assert!(rx.has_changed().expect("writer alive"));
            rx.borrow_and_update();
            let tail = reader.read_at(spool.len() - 1, 10).expect("read");
            assert_eq!(&tail[..], b"\n");
        }
        assert_eq!(reader.len(), spool.len());
        drop(spool);
        assert!(
            rx.has_changed().is_err(),
            "the watch closes with the writer"
        );
    }

    /// The cap cuts the input where it is reached, writes the notice once and counts the rest.
    fn check_cap(cap: u64, writes: &[&[u8]], expected: &[u8], dropped: u64) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spool = Spool::open_or_create(&spool_path(&dir), cap).expect("create");
        for w in writes {
            spool.append(w).expect("append");
        }
        assert_eq!(
            String::from_utf8_lossy(&spool.read_at(0, 10_000).expect("read")),
            String::from_utf8_lossy(expected)
        );
        assert_eq!(spool.dropped(), dropped);
        assert_eq!(spool.len(), expected.len() as u64);
    }

    #[test]
    fn cap_and_truncation_notice() {
        let notice = truncation_notice(10);
        assert!(notice.contains("limit of 10 bytes"));
        check_cap(10, &[b"0123456789"], b"0123456789", 0);
        check_cap(
            10,
            &[b"01234", b"56789abc", b"def"],
            format!("0123456789{notice}").as_bytes(),
            6,
        );
        check_cap(
            10,
            &[b"0123456789", b"x"],
            format!("0123456789{notice}").as_bytes(),
            1,
        );
        check_cap(0, &[b"abc"], truncation_notice(0).as_bytes(), 3);
    }

    #[test]
    fn reaching_the_cap_is_one_write() {
        // The uploader must never see the kept bytes without the notice behind them.
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spool = Spool::open_or_create(&spool_path(&dir), 10).expect("create");
        spool.append(b"01234").expect("append");
        let before = spool.writes;
        spool.append(b"56789abc").expect("append");
        assert_eq!(spool.writes - before, 1);
        assert_eq!(spool.len(), 10 + truncation_notice(10).len() as u64);
    }

    #[test]
    fn a_truncated_spool_stays_truncated_after_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = spool_path(&dir);
        let mut spool = Spool::open_or_create(&path, 4).expect("create");
        spool.append(b"abcdef").expect("append");
        let len = spool.len();
        drop(spool);
        let mut spool = Spool::open_or_create(&path, 4).expect("reopen");
        assert!(spool.is_truncated());
        assert_eq!(spool.len(), len, "no second notice");
        spool.append(b"more").expect("append");
        assert_eq!(spool.len(), len);
        assert_eq!(spool.dropped(), 4);

        // A spool that reached its cap without the notice (a crash in between) gets it.
        let other = dir.path().join("other.spool");
        fs::write(&other, b"abcd").expect("write");
        let spool = Spool::open_or_create(&other, 4).expect("open");
        assert_eq!(
            &spool.read_at(0, 1000).expect("read")[..],
            format!("abcd{}", truncation_notice(4)).as_bytes()
        );
    }
}
