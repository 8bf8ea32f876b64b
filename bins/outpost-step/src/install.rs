//! `outpost-step install <dir>`: copies this very executable to `<dir>/outpost-step`, so that the
//! pod's first init container (the runner's image) can hand the wrapper to every step container
//! through a shared `emptyDir`, whatever their images hold.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::atomic;
use crate::error::Error;

/// The installed file's name.
pub const FILE_NAME: &str = "outpost-step";

/// Installs and returns the installed path.
pub fn install(dir: &Path) -> Result<PathBuf, Error> {
    // /proc/self/exe is the running binary even when it was started through a symlink or a
    // relative path, and even in an image without a PATH lookup for it.
    let me = Path::new("/proc/self/exe");
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    let target = dir.join(FILE_NAME);
    // Copied under a temporary name and renamed, so that no step ever executes half a binary.
    let temp = atomic::temp_path(&target);
    let result = (|| {
        std::fs::copy(me, &temp).map_err(|e| Error::io("copy this executable to", &temp, e))?;
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| Error::io("make executable", &temp, e))?;
        std::fs::rename(&temp, &target).map_err(|e| Error::io("rename into place", &target, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result.map(|()| target)
}
