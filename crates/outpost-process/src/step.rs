//! Running one step: spawn `sh -c <run>` in a new process group, stream both pipes to the event
//! channel in the order read, and stop the group on cancel, timeout or a closed event channel.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use outpost_executor::{
    CancellationToken, EventSender, ExecEvent, ExecutorError, OutputStream, PreparedJob, StepEnd,
    StepOutcome, StepSpec,
};
use outpost_protocol::{Failure, FailureClass};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::time::Instant;

use crate::ProcessConfig;
use crate::group::{JobGroups, LeaderExit, signal_group, signal_name, watch_leader};

/// Bytes asked of a pipe per read; a read returns whatever is there, up to this.
const CHUNK: usize = 64 * 1024;

/// Everything a step needs from its job.
pub(crate) struct StepContext<'a> {
    pub job: &'a PreparedJob,
    pub step: &'a StepSpec,
    pub config: &'a ProcessConfig,
    pub caches: &'a BTreeMap<String, String>,
    pub job_deadline: Option<Instant>,
    pub events: &'a EventSender,
    pub cancel: &'a CancellationToken,
}

/// Why a running step was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Cancel,
    StepTimeout,
    JobTimeout,
}

/// The signal sequence that stops a step's group: `SIGTERM`, the grace period, `SIGKILL`.
struct Stopper<'a> {
    job_id: &'a str,
    pgid: Pid,
    grace: Duration,
    drain: Duration,
    kill_at: Option<Instant>,
    killed: bool,
    /// When to give up reading pipes that a process outside the group keeps open.
    abandon_at: Option<Instant>,
}

impl Stopper<'_> {
    fn terminate(&mut self, leader_exited: bool) {
        if self.grace.is_zero() {
            self.kill(leader_exited);
        } else {
            signal_group(self.job_id, self.pgid, Signal::SIGTERM);
            self.kill_at = Some(Instant::now() + self.grace);
        }
    }

    fn kill(&mut self, leader_exited: bool) {
        signal_group(self.job_id, self.pgid, Signal::SIGKILL);
        self.killed = true;
        self.kill_at = None;
        if leader_exited {
            self.abandon_at = Some(Instant::now() + self.drain);
        }
    }

    fn leader_exited(&mut self) {
        if self.killed {
            self.abandon_at = Some(Instant::now() + self.drain);
        }
    }
}

/// Runs one step to its end. Sends `StepStarted` and the output; the step loop sends
/// `StepFinished`. The step's group is registered in `groups` (killed when the job ends).
pub(crate) async fn run(
    ctx: StepContext<'_>,
    groups: &mut JobGroups,
) -> Result<StepEnd, ExecutorError> {
    let StepContext {
        job,
        step,
        config,
        caches,
        job_deadline,
        events,
        cancel,
    } = ctx;
    let job_id = job.job_id.as_str();
    let closed = || ExecutorError::EventsClosed {
        job_id: job.job_id.clone(),
    };

    let env = crate::env::step_env(&config.base_env, job, step, caches);
    let spawned = Command::new(&config.shell)
        .arg("-c")
        .arg(&step.run)
        .current_dir(&job.workspace)
        .env_clear()
        .envs(&env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn();
    let started = Instant::now();
    let started_event = ExecEvent::StepStarted {
        index: step.index,
        at: SystemTime::now(),
    };
    // Registered before anything can fail, so the group is killed whatever happens next.
    let registered = spawned.and_then(|mut child| {
        let pipes = (child.stdout.take(), child.stderr.take());
        groups.add(child).map(|pgid| (pgid, pipes))
    });
    events.send(started_event).await.map_err(|_| closed())?;
    let (pgid, (Some(stdout), Some(stderr))) = (match registered {
        Ok(ok) => ok,
        Err(e) => {
            tracing::warn!(job_id, step = %step.name, error = %e, "could not start step");
            return Ok(StepEnd::of(StepOutcome::failed(
                Failure::new(
                    FailureClass::Infrastructure,
                    format!(
                        "could not start step `{}` with `{}`: {e}",
                        step.name, config.shell
                    ),
                ),
                None,
            )));
        }
    }) else {
        unreachable!("stdout and stderr are configured as pipes")
    };
    tracing::debug!(job_id, step = %step.name, pgid = pgid.as_raw(), "step started");

    let step_deadline = step.timeout.map(|t| started + t);
    let mut watch = watch_leader(pgid);
    let mut leader: Option<LeaderExit> = None;
    let mut stop: Option<Stop> = None;
    let mut stopper = Stopper {
        job_id,
        pgid,
        grace: config.kill_grace,
        drain: config.drain_timeout,
        kill_at: None,
        killed: false,
        abandon_at: None,
    };
    let mut drain_at: Option<Instant> = None;
    let mut cancel_seen = false;
    let mut abandoned = false;
    let mut stdout = Some(stdout);
    let mut stderr = Some(stderr);
    let mut out_buf = BytesMut::new();
    let mut err_buf = BytesMut::new();
    let mut pending: Option<ExecEvent> = None;

    loop {
        let pipes_done = abandoned || (stdout.is_none() && stderr.is_none());
        if leader.is_some() && pipes_done && pending.is_none() {
            break;
        }
        tokio::select! {
            biased;
            () = events.closed() => {
                stopper.kill(leader.is_some());
                return Err(closed());
            }
            () = cancel.cancelled(), if !cancel_seen && !stopper.killed => {
                cancel_seen = true;
                if leader.is_some() {
                    // The step already ended; only leftovers holding its output remain.
                    stopper.kill(true);
                } else if stop.is_none() {
                    tracing::debug!(job_id, step = %step.name, "cancel: stopping step");
                    stop = Some(Stop::Cancel);
                    stopper.terminate(false);
                }
            }
            () = sleep_opt(job_deadline), if stop.is_none() && leader.is_none() => {
                tracing::debug!(job_id, step = %step.name, "job timeout: stopping step");
                stop = Some(Stop::JobTimeout);
                stopper.terminate(false);
            }
            () = sleep_opt(step_deadline), if stop.is_none() && leader.is_none() => {
                tracing::debug!(job_id, step = %step.name, "step timeout: stopping step");
                stop = Some(Stop::StepTimeout);
                stopper.terminate(false);
            }
            () = sleep_opt(stopper.kill_at), if !stopper.killed => {
                tracing::debug!(job_id, step = %step.name, "grace period over: killing group");
                stopper.kill(leader.is_some());
            }
            () = sleep_opt(drain_at), if !stopper.killed => {
                tracing::info!(job_id, step = %step.name,
                    "step exited but a background process holds its output: killing its group");
                stopper.kill(true);
            }
            () = sleep_opt(stopper.abandon_at), if !abandoned => {
                tracing::warn!(job_id, step = %step.name,
                    "a process outside the step's group holds its output: no longer reading it");
                abandoned = true;
                stdout = None;
                stderr = None;
            }
            exit = &mut watch, if leader.is_none() => {
                leader = Some(exit.unwrap_or(LeaderExit::Unknown));
                stopper.leader_exited();
                if !stopper.killed && stop.is_none() {
                    drain_at = Some(Instant::now() + config.drain_timeout);
                }
            }
            permit = events.reserve(), if pending.is_some() => {
                let permit = permit.map_err(|_| closed())?;
                if let Some(event) = pending.take() {
                    permit.send(event);
                }
            }
            // Whichever pipe has data; when both do, a fair (random) pick, so a busy stdout
            // cannot keep stderr waiting.
            (stream, read) = async {
                tokio::select! {
                    read = read_chunk(&mut stdout, &mut out_buf) => (OutputStream::Stdout, read),
                    read = read_chunk(&mut stderr, &mut err_buf) => (OutputStream::Stderr, read),
                }
            }, if pending.is_none() && (stdout.is_some() || stderr.is_some()) => {
                pending = match stream {
                    OutputStream::Stdout => {
                        chunk_event(job_id, step, stream, read, &mut stdout, &mut out_buf)
                    }
                    OutputStream::Stderr => {
                        chunk_event(job_id, step, stream, read, &mut stderr, &mut err_buf)
                    }
                };
            }
        }
    }

    let exit = match leader {
        Some(LeaderExit::Code(code)) => Exit::Code(code),
        Some(LeaderExit::Signal(signo)) => Exit::Signal(signo),
        Some(LeaderExit::Unknown) | None => reap(groups, pgid, job_id).await,
    };
    let end = outcome(job, step, stop, exit);
    tracing::debug!(job_id, step = %step.name, state = %end.outcome.state,
        exit_code = ?end.outcome.exit_code, "step ended");
    Ok(end)
}

/// The main process's end, as read by `waitid` or by reaping.
#[derive(Debug, Clone, Copy)]
enum Exit {
    Code(i32),
    Signal(i32),
    Unreadable,
}

/// Reaps the leader to read a status `waitid` could not decode.
async fn reap(groups: &mut JobGroups, pgid: Pid, job_id: &str) -> Exit {
    let Some(child) = groups.child_mut(pgid) else {
        return Exit::Unreadable;
    };
    match child.wait().await {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(signo)) => Exit::Signal(signo),
            (None, None) => Exit::Unreadable,
        },
        Err(e) => {
            tracing::warn!(job_id, error = %e, "could not read a step's exit status");
            Exit::Unreadable
        }
    }
}

fn outcome(job: &PreparedJob, step: &StepSpec, stop: Option<Stop>, exit: Exit) -> StepEnd {
    let exit_code = match exit {
        Exit::Code(code) => Some(code),
        Exit::Signal(signo) => Some(128 + signo),
        Exit::Unreadable => None,
    };
    let with_code = |outcome: StepOutcome| StepOutcome {
        exit_code,
        ..outcome
    };
    let outcome = match (stop, exit) {
        (Some(Stop::Cancel), _) => with_code(StepOutcome::cancelled(&step.name)),
        (Some(Stop::StepTimeout), _) => with_code(StepOutcome::timed_out(
            &step.name,
            step.timeout.unwrap_or_default(),
        )),
        (Some(Stop::JobTimeout), _) => {
            return StepEnd::job_timeout(step, job.timeout.unwrap_or_default(), exit_code);
        }
        (None, Exit::Code(code)) => StepOutcome::exited(code, &step.name),
        (None, Exit::Signal(signo)) => {
            let name = signal_name(signo)
                .map(|n| format!(" ({n})"))
                .unwrap_or_default();
            StepOutcome::failed(
                Failure::new(
                    FailureClass::Script,
                    format!("step `{}` was killed by signal {signo}{name}", step.name),
                ),
                exit_code,
            )
        }
        (None, Exit::Unreadable) => StepOutcome::failed(
            Failure::new(
                FailureClass::Infrastructure,
                format!("the exit status of step `{}` could not be read", step.name),
            ),
            None,
        ),
    };
    StepEnd::of(outcome)
}

/// Reads what a pipe has, up to [`CHUNK`] bytes. Cancel-safe: a read dropped before it
/// completes has consumed nothing.
async fn read_chunk<R: AsyncRead + Unpin>(
    pipe: &mut Option<R>,
    buf: &mut BytesMut,
) -> std::io::Result<usize> {
    let Some(pipe) = pipe.as_mut() else {
        return std::future::pending().await;
    };
    if buf.capacity() - buf.len() < CHUNK / 4 {
        buf.reserve(CHUNK);
    }
    pipe.read_buf(buf).await
}

/// The output event of a completed read, or `None` at EOF (then the pipe is closed).
fn chunk_event<R>(
    job_id: &str,
    step: &StepSpec,
    stream: OutputStream,
    read: std::io::Result<usize>,
    pipe: &mut Option<R>,
    buf: &mut BytesMut,
) -> Option<ExecEvent> {
    match read {
        Ok(0) => {
            *pipe = None;
            None
        }
        Ok(_) => Some(ExecEvent::Output {
            index: step.index,
            stream,
            data: buf.split().freeze(),
        }),
        Err(e) => {
            tracing::warn!(job_id, step = %step.name, ?stream, error = %e,
                "reading a step's output failed: treating it as closed");
            *pipe = None;
            None
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
