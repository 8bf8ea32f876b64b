//! Marking the per-job workspaces this backend uses under its work root, listing them, and
//! removing one whose job is no longer live. Only a directory with a marker is ever removed.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

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

/// A marked workspace: the job it belongs to, its directory and its marker.
#[derive(Debug)]
pub(crate) struct Marked {
    pub job_id: String,
    workspace: PathBuf,
    marker: PathBuf,
}

/// Every marked workspace under `work_root` (whichever job it belongs to), and what could not be
/// read.
pub(crate) fn marked(work_root: &Path) -> (Vec<Marked>, SweepReport) {
    let mut report = SweepReport::default();
    let mut found = Vec::new();
    let entries = match fs::read_dir(work_root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return (found, report),
        Err(e) => {
            report
                .failed
                .push(format!("work root {}: {e}", work_root.display()));
            return (found, report);
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
        match fs::read_to_string(&marker) {
            Ok(content) => found.push(Marked {
                job_id: content.trim().to_owned(),
                workspace: work_root.join(dir_name),
                marker,
            }),
            Err(e) => report
                .failed
                .push(format!("marker {}: {e}", marker.display())),
        }
    }
    (found, report)
}

/// Removes a marked workspace, then its marker (the marker last: a crash in between leaves a
/// marker the next sweep finds again).
pub(crate) fn remove(marked: &Marked) -> SweepReport {
    let mut report = SweepReport::default();
    let Marked {
        job_id,
        workspace,
        marker,
    } = marked;
    match fs::symlink_metadata(workspace) {
        Ok(meta) if meta.is_dir() => match fs::remove_dir_all(workspace) {
            Ok(()) => report
                .removed
                .push(format!("workspace {} (job {job_id})", workspace.display())),
            Err(e) => {
                report.failed.push(format!(
                    "workspace {} (job {job_id}): {e}",
                    workspace.display()
                ));
                return report;
            }
        },
        Ok(_) => {
            report.failed.push(format!(
                "workspace {} (job {job_id}): not a directory, left alone",
                workspace.display()
            ));
            return report;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            report.failed.push(format!(
                "workspace {} (job {job_id}): {e}",
                workspace.display()
            ));
            return report;
        }
    }
    if let Err(e) = fs::remove_file(marker)
        && e.kind() != io::ErrorKind::NotFound
    {
        report
            .failed
            .push(format!("marker {}: {e}", marker.display()));
    }
    report
}
