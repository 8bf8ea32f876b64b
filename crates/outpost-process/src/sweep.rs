//! Marking the per-job workspaces this backend uses under its work root, and removing those whose
//! job is no longer live. Only a directory with a marker is ever removed.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::Path;

use outpost_executor::SweepReport;

/// The marker of workspace `<work_root>/<dir>` is the file `<work_root>/<dir><MARKER_SUFFIX>`,
/// holding the job id. It sits beside the workspace so that no step can delete it by cleaning its
/// tree and no checkout ever shows it.
pub const MARKER_SUFFIX: &str = ".outpost-process-job";

/// Writes the marker of `workspace` when it is a direct child of `work_root` (and does nothing
/// otherwise).
pub(crate) fn mark(work_root: &Path, workspace: &Path, job_id: &str) -> io::Result<()> {
    let Some(name) = workspace.file_name() else {
        return Ok(());
    };
    if !same_dir(workspace.parent(), work_root) {
        return Ok(());
    }
    let mut marker = name.to_os_string();
    marker.push(MARKER_SUFFIX);
    fs::create_dir_all(work_root)?;
    fs::write(work_root.join(marker), format!("{job_id}\n"))
}

/// Whether `parent` is `work_root`, literally or after resolving both.
fn same_dir(parent: Option<&Path>, work_root: &Path) -> bool {
    let Some(parent) = parent else {
        return false;
    };
    if parent == work_root {
        return true;
    }
    match (fs::canonicalize(parent), fs::canonicalize(work_root)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Removes every marked workspace under `work_root` whose job is not in `live`, with its marker.
pub(crate) fn sweep(work_root: &Path, live: &HashSet<String>) -> SweepReport {
    let mut report = SweepReport::default();
    let entries = match fs::read_dir(work_root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return report,
        Err(e) => {
            report
                .failed
                .push(format!("work root {}: {e}", work_root.display()));
            return report;
        }
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                report
                    .failed
                    .push(format!("work root {}: {e}", work_root.display()));
                continue;
            }
        };
        let file_name = entry.file_name();
        let Some(dir_name) = file_name
            .to_str()
            .and_then(|n| n.strip_suffix(MARKER_SUFFIX))
        else {
            continue;
        };
        if dir_name.is_empty() || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let marker = entry.path();
        let job_id = match fs::read_to_string(&marker) {
            Ok(content) => content.trim().to_owned(),
            Err(e) => {
                report
                    .failed
                    .push(format!("marker {}: {e}", marker.display()));
                continue;
            }
        };
        if live.contains(&job_id) {
            continue;
        }
        let workspace = work_root.join(dir_name);
        match fs::symlink_metadata(&workspace) {
            Ok(meta) if meta.is_dir() => match fs::remove_dir_all(&workspace) {
                Ok(()) => report
                    .removed
                    .push(format!("workspace {} (job {job_id})", workspace.display())),
                Err(e) => {
                    report.failed.push(format!(
                        "workspace {} (job {job_id}): {e}",
                        workspace.display()
                    ));
                    continue;
                }
            },
            Ok(_) => {
                report.failed.push(format!(
                    "workspace {} (job {job_id}): not a directory, left alone",
                    workspace.display()
                ));
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                report.failed.push(format!(
                    "workspace {} (job {job_id}): {e}",
                    workspace.display()
                ));
                continue;
            }
        }
        if let Err(e) = fs::remove_file(&marker)
            && e.kind() != io::ErrorKind::NotFound
        {
            report
                .failed
                .push(format!("marker {}: {e}", marker.display()));
        }
    }
    report
}
