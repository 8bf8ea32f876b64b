//! `outpost-step receive <dir>`: extracts the tar stream on stdin (the job's checkout, streamed
//! by the runner through the init container's attached stdin) into `<dir>`, refusing anything
//! that would land outside it, then writes a marker if asked to.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::Error;
use crate::tar::{Entry, Kind, Reader, TarError};

/// What was extracted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub entries: u64,
    /// Bytes of file data written.
    pub bytes: u64,
}

/// Extracts the archive read from `input` into `root` (created if missing).
///
/// Regular files, directories, symbolic links and hard links are extracted with their
/// permission bits (`0o777`; set-id and sticky bits are dropped) and files with their mtime;
/// owners are not (the container's user owns everything). Paths are refused when absolute or
/// when a `..` component would climb out of `root`, and no entry is written through a symbolic
/// link (an earlier entry `a -> /etc` makes a later `a/passwd` an error). A symlink's target is
/// stored as given: it is never followed here.
pub fn extract(input: impl Read, root: &Path) -> Result<Summary, Error> {
    fs::create_dir_all(root).map_err(|e| Error::io("create directory", root, e))?;
    let mut reader = Reader::new(input);
    let mut summary = Summary::default();
    // Directory modes are set last, so that a read-only directory can still be filled.
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    while let Some(entry) = reader.next_entry().map_err(tar_error)? {
        summary.entries += 1;
        let Some(rel) = relative(&entry.path, &entry, "its path")? else {
            // `.` or `./`: the root itself, which exists and keeps its own mode.
            continue;
        };
        let path = root.join(&rel);
        prepare_parents(root, &rel, &entry, "it", true)?;
        match &entry.kind {
            Kind::Dir => {
                match fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        remove(&path)?;
                        create_dir(&path)?;
                    }
                    Err(_) => create_dir(&path)?,
                }
                dir_modes.push((path, entry.mode & 0o777));
            }
            Kind::File => {
                clear(&path, &entry)?;
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| Error::io("create", &path, e))?;
                let mut out = io::BufWriter::with_capacity(64 * 1024, &mut file);
                reader
                    .copy_data(entry.size, &mut out)
                    .map_err(|e| match e {
                        TarError::Io(e) => Error::io("extract", &path, e),
                        other => tar_error(other),
                    })?;
                io::Write::flush(&mut out).map_err(|e| Error::io("write", &path, e))?;
                drop(out);
                summary.bytes += entry.size;
                if let Some(secs) = entry.mtime {
                    // Build tools compare mtimes; keep the sender's.
                    let _ = file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
                }
                file.set_permissions(fs::Permissions::from_mode(entry.mode & 0o777))
                    .map_err(|e| Error::io("set the mode of", &path, e))?;
            }
            Kind::Symlink { target } => {
                if target.is_empty() || target.contains(&0) {
                    return Err(refused(&entry, "its link target is empty or holds a NUL"));
                }
                clear(&path, &entry)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(target), &path)
                    .map_err(|e| Error::io("create the symbolic link", &path, e))?;
            }
            Kind::HardLink { target } => {
                let Some(target_rel) = relative(target, &entry, "its link target")? else {
                    return Err(refused(&entry, "it is a hard link to the root directory"));
                };
                prepare_parents(root, &target_rel, &entry, "its link target", false)?;
                clear(&path, &entry)?;
                let source = root.join(&target_rel);
                fs::hard_link(&source, &path).map_err(|e| Error::Io {
                    what: format!("cannot link `{}` to `{}`", path.display(), source.display()),
                    source: e,
                })?;
            }
        }
    }
    for (path, mode) in dir_modes.iter().rev() {
        fs::set_permissions(path, fs::Permissions::from_mode(*mode))
            .map_err(|e| Error::io("set the mode of", path, e))?;
    }
    reader.drain().map_err(tar_error)?;
    Ok(summary)
}

/// `path` (the entry's path or link target, `what` in messages) as components under the root,
/// `None` for the root itself.
fn relative(path: &[u8], entry: &Entry, what: &str) -> Result<Option<PathBuf>, Error> {
    if path.is_empty() {
        return Err(refused(entry, &format!("{what} is empty")));
    }
    if path.contains(&0) {
        return Err(refused(entry, &format!("{what} holds a NUL")));
    }
    if path.starts_with(b"/") {
        return Err(refused(entry, &format!("{what} is absolute")));
    }
    let mut rel = PathBuf::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(refused(entry, &format!("{what} contains `..`"))),
            part => rel.push(OsStr::from_bytes(part)),
        }
    }
    Ok((!rel.as_os_str().is_empty()).then_some(rel))
}

/// Makes sure every parent of `rel` under `root` is a real directory (creating missing ones when
/// `create`), never a symbolic link: what is written or linked must stay inside `root`. `what`
/// starts messages ("it", "its link target").
fn prepare_parents(
    root: &Path,
    rel: &Path,
    entry: &Entry,
    what: &str,
    create: bool,
) -> Result<(), Error> {
    let mut dir = root.to_path_buf();
    let parents: Vec<_> = rel.components().collect();
    for part in &parents[..parents.len().saturating_sub(1)] {
        dir.push(part);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(refused(
                    entry,
                    &format!(
                        "{what} goes through the symbolic link `{}`",
                        dir.strip_prefix(root).unwrap_or(&dir).display()
                    ),
                ));
            }
            Ok(_) => {
                return Err(refused(
                    entry,
                    &format!(
                        "`{}` is not a directory",
                        dir.strip_prefix(root).unwrap_or(&dir).display()
                    ),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => create_dir(&dir)?,
            Err(e) => return Err(Error::io("inspect", &dir, e)),
        }
    }
    Ok(())
}

/// Removes what sits where a file or link goes (a later entry replaces an earlier one); a
/// directory there is an error rather than a tree removed.
fn clear(path: &Path, entry: &Entry) -> Result<(), Error> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Err(refused(entry, "a directory of that name is already there")),
        Ok(_) => remove(path),
        Err(_) => Ok(()),
    }
}

fn remove(path: &Path) -> Result<(), Error> {
    fs::remove_file(path).map_err(|e| Error::io("replace", path, e))
}

fn create_dir(path: &Path) -> Result<(), Error> {
    fs::create_dir(path).map_err(|e| Error::io("create directory", path, e))
}

fn refused(entry: &Entry, why: &str) -> Error {
    Error::Tar {
        offset: entry.offset,
        message: format!(
            "entry `{}` is refused: {why}",
            String::from_utf8_lossy(&entry.path)
        ),
    }
}

fn tar_error(e: TarError) -> Error {
    match e {
        TarError::Format { offset, message } => Error::Tar { offset, message },
        TarError::Io(source) => Error::Io {
            what: "cannot read the tar stream from stdin".to_owned(),
            source,
        },
    }
}
