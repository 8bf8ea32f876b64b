//! Streams a host directory as a tar archive, built on a blocking thread and handed over in
//! bounded chunks, so a large checkout never sits in memory whole.

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

/// The archive of `dir`'s contents (not of `dir` itself, so the volume's root keeps its owner
/// and mode), symlinks kept as links. The handle reports whether building it failed; a failure
/// ends the stream early.
pub fn tar_stream(
    dir: PathBuf,
) -> (
    impl Stream<Item = Bytes> + Send + 'static,
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
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    (stream, task)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn archives_contents_with_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("src")).expect("mkdir");
        std::fs::write(dir.path().join("src/main.rs"), "fn main() {}").expect("write");
        std::fs::write(dir.path().join("README"), vec![b'x'; 200_000]).expect("write");
        std::os::unix::fs::symlink("README", dir.path().join("link")).expect("symlink");
        assert!(has_content(dir.path()).await.expect("readable"));

        let (stream, task) = tar_stream(dir.path().to_owned());
        let chunks: Vec<Bytes> = stream.collect().await;
        task.await.expect("joined").expect("archived");
        let bytes: Vec<u8> = chunks.concat();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut names = Vec::new();
        for e in archive.entries().expect("entries") {
            let e = e.expect("entry");
            let name = e.path().expect("path").display().to_string();
            if name == "link" {
                assert_eq!(e.header().entry_type(), tar::EntryType::Symlink);
            }
            names.push(name);
        }
        names.sort();
        assert_eq!(names, ["README", "link", "src/", "src/main.rs"]);
        assert!(!has_content(&dir.path().join("absent")).await.expect("ok"));
    }
}
