//! The process groups of one job's steps: signalling a whole group, noticing that a step's main
//! process exited without reaping it, and killing every group when the job ends.
//!
//! A step's main process is the leader of its group, and the group id is the leader's pid. Once
//! the leader is reaped, its pid (and with it the group id) may be handed to an unrelated process,
//! and a later `killpg` would hit that one. So leaders stay unreaped zombies (exit noticed with
//! `waitid(WNOWAIT)`) until the job's groups have been killed for the last time.

use std::io;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;
use tokio::process::Child;
use tokio::task::JoinHandle;

/// How a step's main process ended, as far as `waitid` could tell without reaping it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaderExit {
    Code(i32),
    Signal(i32),
    /// The status could not be read without reaping (e.g. a real-time signal nix has no name
    /// for); the caller reaps the process to learn it.
    Unknown,
}

/// Sends `signal` to every process of the group `pgid`. A group that is already gone is fine.
pub(crate) fn signal_group(job_id: &str, pgid: Pid, signal: Signal) {
    match killpg(pgid, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!(job_id, pgid = pgid.as_raw(), %signal, error = %e,
            "could not signal a step's process group"),
    }
}

/// Waits on a blocking thread until the process `pid` (a child of this process) has exited,
/// leaving it unreaped. The thread ends when the process ends; whoever drops the handle must make
/// sure it does (the job's groups are killed on drop).
pub(crate) fn watch_leader(pid: Pid) -> JoinHandle<LeaderExit> {
    tokio::task::spawn_blocking(move || {
        loop {
            match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                Ok(WaitStatus::Exited(_, code)) => return LeaderExit::Code(code),
                Ok(WaitStatus::Signaled(_, signal, _)) => return LeaderExit::Signal(signal as i32),
                Err(Errno::EINTR) => continue,
                Ok(_) | Err(_) => return LeaderExit::Unknown,
            }
        }
    })
}

/// The name of a signal number, such as `SIGKILL`, when it has one.
pub(crate) fn signal_name(signo: i32) -> Option<&'static str> {
    Signal::try_from(signo).ok().map(Signal::as_str)
}

/// Every step process group of one job, with its (unreaped) leader.
pub(crate) struct JobGroups {
    job_id: String,
    groups: Vec<(Pid, Child)>,
}

impl JobGroups {
    pub(crate) fn new(job_id: &str) -> Self {
        Self {
            job_id: job_id.to_owned(),
            groups: Vec::new(),
        }
    }

    /// Takes ownership of a freshly spawned step (leader of its own group) and returns its group
    /// id.
    pub(crate) fn add(&mut self, child: Child) -> io::Result<Pid> {
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .ok_or_else(|| io::Error::other("the step process has no pid"))?;
        let pgid = Pid::from_raw(pid);
        self.groups.push((pgid, child));
        Ok(pgid)
    }

    /// The leader of the group `pgid`.
    pub(crate) fn child_mut(&mut self, pgid: Pid) -> Option<&mut Child> {
        self.groups
            .iter_mut()
            .find(|(p, _)| *p == pgid)
            .map(|(_, c)| c)
    }

    /// Kills every group of the job (`SIGKILL`), then reaps the leaders.
    pub(crate) async fn finish(&mut self) {
        for &(pgid, _) in &self.groups {
            signal_group(&self.job_id, pgid, Signal::SIGKILL);
        }
        for (pgid, mut child) in self.groups.drain(..) {
            if let Err(e) = child.wait().await {
                tracing::warn!(job_id = %self.job_id, pgid = pgid.as_raw(), error = %e,
                    "could not reap a step process");
            }
        }
    }
}

impl Drop for JobGroups {
    /// When a job's future is dropped mid-step, nothing of it may live on: kill every group. The
    /// leaders go to tokio's orphan queue, which reaps them.
    fn drop(&mut self) {
        for &(pgid, _) in &self.groups {
            signal_group(&self.job_id, pgid, Signal::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(9), Some("SIGKILL"));
        assert_eq!(signal_name(15), Some("SIGTERM"));
        assert_eq!(signal_name(0), None);
    }
}
