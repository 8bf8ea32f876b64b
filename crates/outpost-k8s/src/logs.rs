//! A step container's log, followed with `timestamps=true`: the timestamps are stripped before
//! the bytes go out, and serve to resume after a runner restart without re-reading from byte 0
//! (the kubelet rotates container logs, 10 MiB by default, and serves only the current file).
//!
//! The follower appends checkpoints `(step, time, offset)` to the job's cursor file: `time` is
//! the exact timestamp of a line, `offset` the step's output bytes before it. At most one is
//! written per chunk read, at the chunk's last line whose timestamp differs from the line's
//! before it, when the second changed or [`CHECKPOINT_BYTES`] of output came since the last. To resume after
//! `output_bytes`, the last checkpoint of the step with `offset ≤ output_bytes` gives the read:
//! `sinceTime` its second (the API has second precision), lines stamped before its time dropped
//! (they come before it), its line found again by its exact time, and `output_bytes - offset`
//! bytes skipped from there. Without a checkpoint the log is read from its start and
//! `output_bytes` skipped.
//!
//! Limits, which are the kubelet's: the bytes of one line that holds a write split over several
//! runtime records carry the first record's time; stdout and stderr arrive merged (as
//! `Stdout`); and a checkpoint's line is gone when the step wrote more than the rotation size
//! while no runner was reading, in which case the follower says so in the log and goes on from
//! the oldest line the kubelet still has.

use std::path::{Path, PathBuf};

use jiff::Timestamp;

use crate::error::K8sError;

/// A piece of a log stream with timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece<'a> {
    /// The timestamp at the start of a line.
    Stamp(Timestamp),
    /// Output bytes (a line's content, newline included, in one or more pieces).
    Content(&'a [u8]),
}

/// Splits a `timestamps=true` log stream into stamps and content, chunk by chunk, never holding
/// more than a timestamp's worth of bytes.
#[derive(Debug, Default)]
pub struct StampParser {
    /// Bytes of a line's start that may still be its timestamp.
    head: Vec<u8>,
    /// Inside a line's content (after its timestamp).
    in_line: bool,
}

/// An RFC 3339 timestamp with nanoseconds is 30 bytes; anything longer before a space is not one.
const MAX_STAMP: usize = 40;

impl StampParser {
    pub fn feed(&mut self, mut chunk: &[u8], out: &mut impl FnMut(Piece<'_>)) {
        while !chunk.is_empty() {
            if self.in_line {
                match chunk.iter().position(|&b| b == b'\n') {
                    Some(nl) => {
                        out(Piece::Content(&chunk[..=nl]));
                        chunk = &chunk[nl + 1..];
                        self.in_line = false;
                    }
                    None => {
                        out(Piece::Content(chunk));
                        return;
                    }
                }
                continue;
            }
            match chunk.iter().position(|&b| b == b' ' || b == b'\n') {
                Some(i) if self.head.len() + i <= MAX_STAMP => {
                    self.head.extend_from_slice(&chunk[..i]);
                    let stamp = std::str::from_utf8(&self.head)
                        .ok()
                        .and_then(|t| t.parse::<Timestamp>().ok());
                    match (stamp, chunk[i]) {
                        (Some(ts), b' ') => {
                            out(Piece::Stamp(ts));
                            chunk = &chunk[i + 1..];
                        }
                        // Not a timestamp after all: the bytes are output.
                        _ => {
                            let head = std::mem::take(&mut self.head);
                            out(Piece::Content(&head));
                            chunk = &chunk[i..];
                        }
                    }
                    self.head.clear();
                    self.in_line = true;
                }
                Some(_) => self.give_up(out),
                None if self.head.len() + chunk.len() > MAX_STAMP => self.give_up(out),
                None => {
                    self.head.extend_from_slice(chunk);
                    return;
                }
            }
        }
    }

    /// A line start that cannot be a timestamp: its bytes are output.
    fn give_up(&mut self, out: &mut impl FnMut(Piece<'_>)) {
        let head = std::mem::take(&mut self.head);
        if !head.is_empty() {
            out(Piece::Content(&head));
        }
        self.in_line = true;
    }

    /// The end of the stream: bytes held back as a possible timestamp are output.
    pub fn finish(&mut self, out: &mut impl FnMut(Piece<'_>)) {
        let head = std::mem::take(&mut self.head);
        if !head.is_empty() {
            out(Piece::Content(&head));
        }
    }
}

/// Output bytes between two checkpoints within one second: small next to any rotation size, so
/// that the last checkpoint before a consumed byte is still in the kubelet's current file after
/// a rotation (unless the rotation fell within these few bytes).
pub const CHECKPOINT_BYTES: u64 = 4 * 1024;

/// One checkpoint of a step's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub step: u32,
    /// The exact timestamp of the line.
    pub at: Timestamp,
    /// The step's output bytes before the line.
    pub offset: u64,
}

impl Checkpoint {
    /// The last checkpoint of `step` at or before `output_bytes`.
    pub fn pick(checkpoints: &[Checkpoint], step: u32, output_bytes: u64) -> Option<Checkpoint> {
        checkpoints
            .iter()
            .filter(|c| c.step == step && c.offset <= output_bytes)
            .max_by_key(|c| (c.offset, c.at))
            .copied()
    }
}

/// The job's cursor file: `<state_dir>/kubernetes/<job>.cursor`, one `step nanoseconds offset` line
/// per checkpoint, appended (a torn last line is ignored when read).
#[derive(Debug)]
pub struct CursorFile {
    path: PathBuf,
    file: Option<tokio::fs::File>,
}

impl CursorFile {
    pub fn new(dir: &Path, job_file_name: &str) -> Self {
        Self {
            path: dir.join(format!("{job_file_name}.cursor")),
            file: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The checkpoints written so far (none when the file does not exist).
    pub async fn load(&self) -> Result<Vec<Checkpoint>, K8sError> {
        match tokio::fs::read_to_string(&self.path).await {
            Ok(text) => Ok(parse_checkpoints(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(K8sError::Cursor {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Appends a checkpoint. Not synced: a checkpoint lost in a crash only makes the resume
    /// start at an earlier one, and skip more.
    pub async fn append(&mut self, c: Checkpoint) -> Result<(), K8sError> {
        use tokio::io::AsyncWriteExt;
        let err = |source| K8sError::Cursor {
            path: self.path.clone(),
            source,
        };
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                tokio::fs::create_dir_all(dir).await.map_err(err)?;
            }
            let f = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .await
                .map_err(err)?;
            self.file = Some(f);
        }
        let line = format!("{} {} {}\n", c.step, c.at.as_nanosecond(), c.offset);
        if let Some(f) = self.file.as_mut() {
            f.write_all(line.as_bytes()).await.map_err(err)?;
            f.flush().await.map_err(err)?;
        }
        Ok(())
    }

    /// Removes the file once the job is over.
    pub async fn remove(mut self) {
        self.file = None;
        let _ = tokio::fs::remove_file(&self.path).await;
    }
}

fn parse_checkpoints(text: &str) -> Vec<Checkpoint> {
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let step = f.next()?.parse().ok()?;
            let nanos: i128 = f.next()?.parse().ok()?;
            let c = Checkpoint {
                step,
                at: Timestamp::from_nanosecond(nanos).ok()?,
                offset: f.next()?.parse().ok()?,
            };
            f.next().is_none().then_some(c)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` and renders stamps as `[<second>]` and content as is.
    #[track_caller]
    fn check(chunks: &[&str], expected: &str) {
        let mut p = StampParser::default();
        let mut out = String::new();
        let mut push = |piece: Piece<'_>| match piece {
            Piece::Stamp(ts) => out.push_str(&format!("[{}]", ts.as_second() % 100)),
            Piece::Content(c) => out.push_str(&String::from_utf8_lossy(c)),
        };
        for c in chunks {
            p.feed(c.as_bytes(), &mut push);
        }
        p.finish(&mut push);
        assert_eq!(out, expected, "{chunks:?}");
    }

    #[test]
    fn stamps_are_stripped_in_any_chunking() {
        let a = "2026-01-01T00:00:01.5Z hello\n2026-01-01T00:00:02.000000001Z  two spaces\n";
        check(&[a], "[1]hello\n[2] two spaces\n");
        let bytes: Vec<String> = a.chars().map(String::from).collect();
        let refs: Vec<&str> = bytes.iter().map(String::as_str).collect();
        check(&refs, "[1]hello\n[2] two spaces\n");
        check(&["2026-01-01T00:00:03Z no newline"], "[3]no newline");
        check(&["2026-01-01T00:00:03Z \n"], "[3]\n");
        check(&["not-a-stamp x\n"], "not-a-stamp x\n");
        check(
            &[&format!("{}\n", "y".repeat(100))],
            &format!("{}\n", "y".repeat(100)),
        );
        check(&["2026-01-01T00:00:0"], "2026-01-01T00:00:0");
    }

    fn at(second: i64, nanos: i32) -> Timestamp {
        Timestamp::new(second, nanos).expect("in range")
    }

    #[test]
    fn resume_points() {
        let c = |step, second, offset| Checkpoint {
            step,
            at: at(second, 5),
            offset,
        };
        let cps = [
            c(0, 10, 0),
            c(0, 11, 500),
            c(1, 20, 0),
            c(1, 22, 900),
            c(1, 25, 4000),
        ];
        let pick =
            |step, bytes| Checkpoint::pick(&cps, step, bytes).map(|c| (c.at.as_second(), c.offset));
        assert_eq!(pick(1, 1000), Some((22, 900)));
        assert_eq!(pick(1, 900), Some((22, 900)));
        assert_eq!(pick(1, 899), Some((20, 0)));
        assert_eq!(pick(0, 9999), Some((11, 500)));
        assert_eq!(pick(2, 5), None);
        assert_eq!(
            parse_checkpoints("0 10000000005 0\n1 20000000005 5\n1 2"),
            vec![c(0, 10, 0), c(1, 20, 5)]
        );
    }

    #[tokio::test]
    async fn the_cursor_file_appends_and_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut f = CursorFile::new(&dir.path().join("kubernetes"), "j_1");
        assert!(f.load().await.expect("load").is_empty());
        let c = Checkpoint {
            step: 2,
            at: at(1_700_000_000, 123_456_789),
            offset: 42,
        };
        f.append(c).await.expect("append");
        f.append(Checkpoint { offset: 50, ..c })
            .await
            .expect("append");
        assert_eq!(
            f.load().await.expect("load"),
            vec![c, Checkpoint { offset: 50, ..c }]
        );
        let path = f.path().to_owned();
        f.remove().await;
        assert!(!path.exists());
    }
}
