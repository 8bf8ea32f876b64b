//! Container logs as the kubelet keeps them: the node reads each container's output itself and
//! writes CRI log records (`<RFC3339Nano> stdout|stderr F|P <content>`) to a file that is
//! rotated at a configured size. Only the current file is kept, and `pods/log` serves only that
//! one: a follower holding the old file reads it to its end and moves on, but a reader that
//! starts over from byte 0 after a rotation finds the older lines gone.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::Stream;
use jiff::{SignedDuration, Timestamp};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};

use crate::cluster::lock;
use crate::meta;

/// containerd's default `max_container_log_line_size`: longer lines are split into partials.
const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogStream {
    Stdout,
    Stderr,
}

struct State {
    generation: u64,
    size: u64,
    finished: bool,
    last: Timestamp,
}

/// One container instance's log.
pub(crate) struct LogFile {
    dir: PathBuf,
    rotate_at: u64,
    state: Mutex<State>,
    tx: watch::Sender<u64>,
}

impl LogFile {
    pub fn create(dir: &Path, rotate_at: u64) -> std::io::Result<Arc<LogFile>> {
        std::fs::create_dir_all(dir)?;
        std::fs::File::create(dir.join("0.log"))?;
        let (tx, _) = watch::channel(0);
        Ok(Arc::new(LogFile {
            dir: dir.to_owned(),
            rotate_at: rotate_at.max(1),
            state: Mutex::new(State {
                generation: 0,
                size: 0,
                finished: false,
                last: Timestamp::UNIX_EPOCH,
            }),
            tx,
        }))
    }

    fn path(&self, generation: u64) -> PathBuf {
        self.dir.join(format!("{generation}.log"))
    }

    fn bump(&self) {
        self.tx.send_modify(|v| *v += 1);
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }

    pub fn finished(&self) -> bool {
        lock(&self.state).finished
    }

    /// Starts the writer on a blocking thread; frames sent to the returned channel are logged,
    /// and dropping the sender ends the log (flushing partial lines).
    pub fn writer(
        self: &Arc<Self>,
    ) -> (
        mpsc::UnboundedSender<(LogStream, Bytes)>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, mut rx) = mpsc::unbounded_channel::<(LogStream, Bytes)>();
        let log = self.clone();
        let task = tokio::task::spawn_blocking(move || {
            let mut w = match Writer::open(log.clone()) {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(dir = %log.dir.display(), error = %e, "cannot open a container log");
                    lock(&log.state).finished = true;
                    log.bump();
                    return;
                }
            };
            while let Some((stream, data)) = rx.blocking_recv() {
                if let Err(e) = w.frame(stream, &data) {
                    tracing::warn!(dir = %log.dir.display(), error = %e, "cannot write a container log");
                }
            }
            if let Err(e) = w.finish() {
                tracing::warn!(dir = %log.dir.display(), error = %e, "cannot finish a container log");
            }
        });
        (tx, task)
    }
}

struct Writer {
    log: Arc<LogFile>,
    file: std::fs::File,
    partial: [Vec<u8>; 2],
}

impl Writer {
    fn open(log: Arc<LogFile>) -> std::io::Result<Writer> {
        let file = std::fs::OpenOptions::new().append(true).open(log.path(0))?;
        Ok(Writer {
            log,
            file,
            partial: [Vec::new(), Vec::new()],
        })
    }

    fn frame(&mut self, stream: LogStream, data: &[u8]) -> std::io::Result<()> {
        let i = stream as usize;
        self.partial[i].extend_from_slice(data);
        loop {
            let buf = &self.partial[i];
            if let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.partial[i].drain(..=nl).collect();
                self.record(stream, false, &line[..line.len() - 1])?;
            } else if buf.len() >= MAX_LINE {
                let chunk: Vec<u8> = self.partial[i].drain(..MAX_LINE).collect();
                self.record(stream, true, &chunk)?;
            } else {
                return Ok(());
            }
        }
    }

    fn finish(&mut self) -> std::io::Result<()> {
        // A last line without a newline is a partial record, as containerd writes it.
        for stream in [LogStream::Stdout, LogStream::Stderr] {
            let rest = std::mem::take(&mut self.partial[stream as usize]);
            if !rest.is_empty() {
                self.record(stream, true, &rest)?;
            }
        }
        self.file.flush()?;
        lock(&self.log.state).finished = true;
        self.log.bump();
        Ok(())
    }

    fn record(&mut self, stream: LogStream, partial: bool, content: &[u8]) -> std::io::Result<()> {
        let (ts, rotate) = {
            let mut s = lock(&self.log.state);
            let mut now = Timestamp::now();
            // Strictly increasing per container, so that resuming by timestamp is exact.
            if now <= s.last {
                now = s
                    .last
                    .checked_add(SignedDuration::from_nanos(1))
                    .unwrap_or(s.last);
            }
            s.last = now;
            (now, s.size >= self.log.rotate_at)
        };
        if rotate {
            self.rotate()?;
        }
        let mut rec = Vec::with_capacity(content.len() + 48);
        rec.extend_from_slice(meta::rfc3339_nano(ts).as_bytes());
        rec.extend_from_slice(match stream {
            LogStream::Stdout => b" stdout ",
            LogStream::Stderr => b" stderr ",
        });
        rec.extend_from_slice(if partial { b"P " } else { b"F " });
        rec.extend_from_slice(content);
        rec.push(b'\n');
        self.file.write_all(&rec)?;
        lock(&self.log.state).size += rec.len() as u64;
        self.log.bump();
        Ok(())
    }

    /// A new current file; the old one is unlinked (a reader that has it open finishes it).
    fn rotate(&mut self) -> std::io::Result<()> {
        let old = lock(&self.log.state).generation;
        let new = old + 1;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log.path(new))?;
        self.file.flush()?;
        self.file = file;
        {
            let mut s = lock(&self.log.state);
            s.generation = new;
            s.size = 0;
        }
        let _ = std::fs::remove_file(self.log.path(old));
        self.log.bump();
        Ok(())
    }
}

/// What a `pods/log` request asks for.
#[derive(Debug, Clone, Default)]
pub(crate) struct LogQuery {
    pub follow: bool,
    pub timestamps: bool,
    pub since: Option<Timestamp>,
    pub limit_bytes: Option<u64>,
    pub tail_lines: Option<u64>,
}

struct Reader {
    log: Arc<LogFile>,
    q: LogQuery,
    rx: watch::Receiver<u64>,
    file: Option<(tokio::fs::File, u64)>,
    pending: Vec<u8>,
    sent: u64,
    /// The previous record was partial: the next one continues its line (no timestamp prefix).
    in_line: bool,
    done: bool,
    /// The open file was read to its end once after the writer rotated it.
    drained: bool,
}

impl Reader {
    /// Renders complete records of `pending`; the tail without a newline stays for later.
    fn render(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut consumed = 0;
        while let Some(nl) = self.pending[consumed..].iter().position(|b| *b == b'\n') {
            let rec = &self.pending[consumed..consumed + nl];
            consumed += nl + 1;
            render_record(rec, &self.q, &mut self.in_line, &mut out);
        }
        self.pending.drain(..consumed);
        self.limit(out)
    }

    fn limit(&mut self, mut out: Vec<u8>) -> Vec<u8> {
        if let Some(limit) = self.q.limit_bytes {
            let room = limit.saturating_sub(self.sent);
            if (out.len() as u64) >= room {
                out.truncate(usize::try_from(room).unwrap_or(usize::MAX));
                self.done = true;
            }
        }
        self.sent += out.len() as u64;
        out
    }

    async fn open_current(&mut self) -> std::io::Result<bool> {
        loop {
            let (generation, finished) = {
                let s = lock(&self.log.state);
                (s.generation, s.finished)
            };
            match tokio::fs::File::open(self.log.path(generation)).await {
                Ok(f) => {
                    self.file = Some((f, generation));
                    return Ok(true);
                }
                // Rotated away between reading the generation and opening: look again.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if finished && lock(&self.log.state).generation == generation {
                        return Ok(false);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn next_chunk(&mut self) -> Option<std::io::Result<Bytes>> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if self.done {
                return None;
            }
            if self.file.is_none() {
                match self.open_current().await {
                    Ok(true) => {}
                    Ok(false) => return None,
                    Err(e) => return Some(Err(e)),
                }
            }
            // Seen-marking before the read: a write after it wakes the wait below.
            self.rx.borrow_and_update();
            let (file, generation) = self.file.as_mut()?;
            let generation = *generation;
            let n = match file.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => return Some(Err(e)),
            };
            if n > 0 {
                self.pending.extend_from_slice(&buf[..n]);
                let out = self.render();
                if !out.is_empty() {
                    return Some(Ok(Bytes::from(out)));
                }
                continue;
            }
            let (current, finished) = {
                let s = lock(&self.log.state);
                (s.generation, s.finished)
            };
            if current != generation {
                // The writer moved on: the old file is complete now, but what it flushed into
                // it just before the rotation may have come after the read above, so it is read
                // to its end once more before the follower moves on. Files rotated away in
                // between are lost, as with the kubelet.
                if !self.drained {
                    self.drained = true;
                    continue;
                }
                self.drained = false;
                self.file = None;
                continue;
            }
            if finished || !self.q.follow {
                return None;
            }
            if self.rx.changed().await.is_err() {
                return None;
            }
        }
    }
}

fn render_record(rec: &[u8], q: &LogQuery, in_line: &mut bool, out: &mut Vec<u8>) {
    let mut parts = rec.splitn(4, |b| *b == b' ');
    let (Some(ts), Some(_stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let content = parts.next().unwrap_or(&[]);
    let partial = tag == b"P";
    if let Some(since) = q.since {
        let t = std::str::from_utf8(ts).ok().and_then(meta::parse_time);
        if t.is_some_and(|t| t < since) {
            *in_line = partial;
            return;
        }
    }
    if q.timestamps && !*in_line {
        out.extend_from_slice(ts);
        out.push(b' ');
    }
    out.extend_from_slice(content);
    if !partial {
        out.push(b'\n');
    }
    *in_line = partial;
}

/// The log as a byte stream, per the query.
pub(crate) async fn read(
    log: Arc<LogFile>,
    q: LogQuery,
) -> std::io::Result<impl Stream<Item = std::io::Result<Bytes>> + Send + 'static> {
    let rx = log.tx.subscribe();
    let mut reader = Reader {
        log,
        q,
        rx,
        file: None,
        pending: Vec::new(),
        sent: 0,
        in_line: false,
        done: false,
        drained: false,
    };
    let mut first: Option<Bytes> = None;
    if let Some(tail) = reader.q.tail_lines {
        // The last lines of the current file, then (when following) what comes after.
        if !reader.open_current().await? {
            return Ok(futures_util::stream::unfold((reader, None::<Bytes>), step));
        }
        let mut all = Vec::new();
        if let Some((f, _)) = reader.file.as_mut() {
            f.read_to_end(&mut all).await?;
        }
        let mut lines: VecDeque<Vec<u8>> = VecDeque::new();
        let mut cur = Vec::new();
        let mut in_line = false;
        let mut consumed = 0;
        while let Some(nl) = all[consumed..].iter().position(|b| *b == b'\n') {
            let rec = &all[consumed..consumed + nl];
            consumed += nl + 1;
            render_record(rec, &reader.q, &mut in_line, &mut cur);
            if !in_line && !cur.is_empty() {
                lines.push_back(std::mem::take(&mut cur));
                if lines.len() as u64 > tail {
                    lines.pop_front();
                }
            }
        }
        reader.pending.extend_from_slice(&all[consumed..]);
        // A line still open (its last record partial) counts as a line, as for the kubelet.
        if !cur.is_empty() {
            lines.push_back(std::mem::take(&mut cur));
            if lines.len() as u64 > tail {
                lines.pop_front();
            }
        }
        let joined: Vec<u8> = lines.into_iter().flatten().collect();
        reader.in_line = in_line;
        let out = reader.limit(joined);
        if !out.is_empty() {
            first = Some(Bytes::from(out));
        }
        if !reader.q.follow {
            reader.done = true;
        }
    }
    Ok(futures_util::stream::unfold((reader, first), step))
}

async fn step(
    (mut reader, first): (Reader, Option<Bytes>),
) -> Option<(std::io::Result<Bytes>, (Reader, Option<Bytes>))> {
    if let Some(b) = first {
        return Some((Ok(b), (reader, None)));
    }
    let chunk = reader.next_chunk().await?;
    Some((chunk, (reader, None)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    async fn collect(log: &Arc<LogFile>, q: LogQuery) -> String {
        let s = read(log.clone(), q).await.expect("readable");
        let chunks: Vec<_> = s.collect().await;
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&c.expect("chunk"));
        }
        String::from_utf8(out).expect("utf-8")
    }

    #[tokio::test]
    async fn records_partials_rotation_and_filters() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = LogFile::create(dir.path(), 200).expect("log");
        let (tx, task) = log.writer();
        tx.send((LogStream::Stdout, Bytes::from_static(b"one\ntw")))
            .expect("open");
        tx.send((LogStream::Stderr, Bytes::from_static(b"err\n")))
            .expect("open");
        tx.send((LogStream::Stdout, Bytes::from_static(b"o\nthree")))
            .expect("open");
        drop(tx);
        task.await.expect("writer");
        assert!(log.finished());
        let text = collect(&log, LogQuery::default()).await;
        assert_eq!(text, "one\nerr\ntwo\nthree");
        let stamped = collect(
            &log,
            LogQuery {
                timestamps: true,
                ..Default::default()
            },
        )
        .await;
        let first = stamped.lines().next().expect("a line");
        let (ts, rest) = first.split_once(' ').expect("prefix");
        assert_eq!(rest, "one");
        let ts = meta::parse_time(ts).expect("a timestamp");
        let after = collect(
            &log,
            LogQuery {
                since: Some(
                    ts.checked_add(SignedDuration::from_nanos(1))
                        .expect("in range"),
                ),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(after, "err\ntwo\nthree");
        let limited = collect(
            &log,
            LogQuery {
                limit_bytes: Some(5),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(limited, "one\ne");
        let tail = collect(
            &log,
            LogQuery {
                tail_lines: Some(2),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(tail, "two\nthree");

        // Rotation: past 200 bytes the current file starts over, older lines are gone.
        let dir = tempfile::tempdir().expect("temp dir");
        let log = LogFile::create(dir.path(), 200).expect("log");
        let follower = tokio::spawn({
            let log = log.clone();
            async move {
                collect(
                    &log,
                    LogQuery {
                        follow: true,
                        ..Default::default()
                    },
                )
                .await
            }
        });
        let (tx, task) = log.writer();
        let mut all = String::new();
        for i in 0..40 {
            let line = format!("line {i}\n");
            all.push_str(&line);
            tx.send((LogStream::Stdout, Bytes::from(line)))
                .expect("open");
        }
        drop(tx);
        task.await.expect("writer");
        let current = collect(&log, LogQuery::default()).await;
        assert!(
            all.ends_with(&current) && current.len() < all.len(),
            "{current}"
        );
        // The follower may lose whole rotated files when it lags; what it has is in order.
        let followed = follower.await.expect("follower");
        assert!(followed.ends_with(&current), "{followed}");
    }
}
