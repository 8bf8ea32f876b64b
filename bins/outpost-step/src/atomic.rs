//! Writing a file so that a reader sees either nothing or all of it: write a temporary file in
//! the same directory, then rename it into place (a rename within one file system is atomic).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::Error;

/// The temporary name next to `path`: `.<name>.tmp-<pid>`, hidden, and unique per writer so that
/// two wrappers never share one.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `bytes` to `path` atomically.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let temp = temp_path(path);
    let result = (|| {
        let mut file = std::fs::File::create(&temp).map_err(|e| Error::io("create", &temp, e))?;
        file.write_all(bytes)
            .map_err(|e| Error::io("write", &temp, e))?;
        // Closed before the rename: once the name appears, nothing touches the file any more.
        drop(file);
        // Readers in other containers see the rename at once (one kernel); syncing to disk would
        // only matter after a node crash, which ends the pod anyway.
        std::fs::rename(&temp, path).map_err(|e| Error::io("rename into place", path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replaces_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("0.done");
        write(&path, b"state=skipped\n").expect("written");
        // A stale temporary file of a writer with the same pid (a restarted container) is
        // simply overwritten.
        std::fs::write(temp_path(&path), b"half").expect("stale temp file");
        write(&path, b"state=success exit=0\n").expect("replaced");
        assert_eq!(
            std::fs::read_to_string(&path).expect("readable"),
            "state=success exit=0\n"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("listable")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["0.done"]);
    }

    #[test]
    fn errors_name_the_path() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("missing").join("0.done");
        let err = write(&path, b"x")
            .expect_err("no such directory")
            .to_string();
        assert!(
            err.starts_with(&format!(
                "cannot create `{}{}`: ",
                dir.path().join("missing/.0.done.tmp-").display(),
                std::process::id()
            )),
            "{err}"
        );
    }
}
