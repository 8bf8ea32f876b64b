//! Reattach progress records: after each spool append of a step's output, how far the job had
//! got, so a restarted runner tells its backend exactly which raw bytes of the running step it
//! still needs (none lost, none doubled).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::Path;

/// One reattach record. `raw_bytes` counts only the raw output of step `step_index` whose masked
/// form is already in the spool, so a resumed backend replays exactly the rest, and `spool_len`
/// is where the spool is cut back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgressRecord {
    pub step_index: u32,
    pub raw_bytes: u64,
    pub spool_len: u64,
}

impl ProgressRecord {
    /// Size of one record on disk: `u32` step, `u64` raw bytes, `u64` spool length, little endian.
    pub const SIZE: usize = 20;

    fn encode(self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        out[..4].copy_from_slice(&self.step_index.to_le_bytes());
        out[4..12].copy_from_slice(&self.raw_bytes.to_le_bytes());
        out[12..].copy_from_slice(&self.spool_len.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        Some(Self {
            step_index: u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?),
            raw_bytes: u64::from_le_bytes(bytes.get(4..12)?.try_into().ok()?),
            spool_len: u64::from_le_bytes(bytes.get(12..20)?.try_into().ok()?),
        })
    }

    /// The last complete record of a progress file (a torn last record is ignored); `None` when
    /// the file is missing or holds none. Blocking.
    pub fn read_last(path: &Path) -> io::Result<Option<Self>> {
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let whole = bytes.len() / Self::SIZE * Self::SIZE;
        if whole == 0 {
            return Ok(None);
        }
        Ok(Self::decode(&bytes[whole - Self::SIZE..whole]))
    }
}

/// The append-only progress file of one job.
#[derive(Debug)]
pub(crate) struct ProgressFile {
    file: File,
    last: Option<ProgressRecord>,
}

impl ProgressFile {
    /// Opens the file for appending, cutting a torn last record off first. Blocking.
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        let len = file.metadata()?.len();
        let whole = len / ProgressRecord::SIZE as u64 * ProgressRecord::SIZE as u64;
        if whole != len {
            file.set_len(whole)?;
        }
        let last = ProgressRecord::read_last(path)?;
        Ok(Self { file, last })
    }

    /// Appends a record unless it equals the last one.
    pub(crate) fn append(&mut self, record: ProgressRecord) -> io::Result<()> {
        if self.last == Some(record) {
            return Ok(());
        }
        self.file.write_all(&record.encode())?;
        self.last = Some(record);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("progress");
        assert_eq!(ProgressRecord::read_last(&path).expect("read"), None);
        let mut file = ProgressFile::open(&path).expect("open");
        let a = ProgressRecord {
            step_index: 0,
            raw_bytes: 10,
            spool_len: 30,
        };
        let b = ProgressRecord {
            step_index: 1,
            raw_bytes: u64::MAX - 1,
            spool_len: 1 << 40,
        };
        file.append(a).expect("append");
        file.append(b).expect("append");
        file.append(b).expect("append");
        drop(file);
        assert_eq!(
            fs::metadata(&path).expect("meta").len(),
            2 * ProgressRecord::SIZE as u64
        );
        assert_eq!(ProgressRecord::read_last(&path).expect("read"), Some(b));
        // A torn record at the end is ignored, and cut off when the file is reopened.
        OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open")
            .write_all(&[1, 2, 3])
            .expect("write");
        assert_eq!(ProgressRecord::read_last(&path).expect("read"), Some(b));
        let mut file = ProgressFile::open(&path).expect("reopen");
        file.append(a).expect("append");
        assert_eq!(ProgressRecord::read_last(&path).expect("read"), Some(a));
    }
}
