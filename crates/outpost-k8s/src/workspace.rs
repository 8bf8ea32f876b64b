//! Streams the checkout (a host directory) as a tar archive, built on a blocking thread and
//! handed over in bounded chunks, so a large checkout never sits in memory whole. The same as
//! the Docker backend's: the archive holds the directory's contents, symlinks kept as links.

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const CHUNK: usize = 64 * 1024;

struct ChannelWriter {
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "upload stopped"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// Whether `dir` exists and holds at least one entry.
pub async fn has_content(dir: &Path) -> std::io::Result<bool> {
    if dir.as_os_str().is_empty() {
        return Ok(false);
    }
    match tokio::fs::read_dir(dir).await {
        Ok(mut entries) => Ok(entries.next_entry().await?.is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The archive of `dir`'s contents; the handle reports whether building it failed.
pub fn tar_stream(
    dir: PathBuf,
) -> (
    impl Stream<Item = Bytes> + Send + Unpin + 'static,
    JoinHandle<std::io::Result<()>>,
) {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let task = tokio::task::spawn_blocking(move || {
        let writer = ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        };
        let mut builder = tar::Builder::new(writer);
        builder.follow_symlinks(false);
        let mut entries: Vec<_> = std::fs::read_dir(&dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name();
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                builder.append_dir_all(&name, &path)?;
            } else {
                builder.append_path_with_name(&path, &name)?;
            }
        }
        let mut writer = builder.into_inner()?;
        writer.flush()
    });
    let stream = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    }));
    (stream, task)
}
