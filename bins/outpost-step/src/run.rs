//! `outpost-step run`: one step of a Kubernetes job pod. Waits for the previous step's marker,
//! decides from all earlier markers and its `when` (the shared rule of `outpost-steprules`),
//! runs the command in its own process group, enforces the time limit, forwards SIGTERM and
//! SIGINT, and writes its own marker atomically.

use std::fs;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal, killpg};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use outpost_steprules::{Decision, MAX_MARKER_BYTES, Marker, Outcome, marker_file_name};

use crate::atomic;
use crate::cli::RunArgs;
use crate::error::{EXIT_WRAPPER, Error};

/// How often a waiting wrapper looks for the previous step's marker. Polling a file is what
/// works on every volume type; a stat every 25 ms costs nothing and bounds the pause between
/// two steps.
const POLL: Duration = Duration::from_millis(25);

/// The signals the wrapper takes as "stop the step": Kubernetes sends SIGTERM to every container
/// of a pod being deleted, a terminal sends SIGINT.
const STOP_SIGNALS: [Signal; 2] = [Signal::SIGTERM, Signal::SIGINT];

/// What the wrapper's threads report to its main loop.
enum Event {
    /// A stop signal arrived.
    Signal(Signal),
    /// The step's command ended with this exit code (128 + signal when killed).
    Exited(i32),
    /// Waiting for the command failed.
    WaitFailed(Errno),
}

/// Runs the step and returns the wrapper's exit code. Every path that knows the markers
/// directory leaves a marker behind, so that the next step never waits for nothing.
pub fn run(args: &RunArgs) -> i32 {
    let verbose = args.verbose;
    let marker_path = args.markers.join(marker_file_name(args.index));
    let (marker, code) = match step(args) {
        Ok(ended) => ended,
        Err(e) => {
            eprintln!("outpost-step: {e}");
            let code = e.exit_code();
            (
                Marker {
                    outcome: Outcome::Failed,
                    exit: Some(code),
                },
                code,
            )
        }
    };
    if verbose {
        eprintln!(
            "outpost-step: step {} ended: {marker}; writing {}",
            args.index,
            marker_path.display()
        );
    }
    if let Some(path) = &args.termination_log {
        // Before the marker: once the marker is there, the next step runs, and this
        // container's status should already say how this one ended when its process exits.
        if let Err(e) = std::fs::write(path, format!("{marker}\n")) {
            eprintln!("outpost-step: cannot write {}: {e}", path.display());
        }
    }
    match atomic::write(&marker_path, format!("{marker}\n").as_bytes()) {
        Ok(()) => code,
        Err(e) => {
            eprintln!("outpost-step: {e}");
            EXIT_WRAPPER
        }
    }
}

/// Everything up to the marker: the marker to write and the exit code.
fn step(args: &RunArgs) -> Result<(Marker, i32), Error> {
    let verbose = args.verbose;
    let (tx, events) = mpsc::channel();
    // First, before any other thread exists, so that every thread inherits the blocked mask
    // and the signal can only be taken by `sigwait` in the listener.
    listen_for_signals(tx.clone())?;
    fs::create_dir_all(&args.markers)
        .map_err(|e| Error::io("create directory", &args.markers, e))?;

    if let Some(previous) = args.index.checked_sub(1) {
        let path = args.markers.join(marker_file_name(previous));
        if verbose {
            eprintln!(
                "outpost-step: step {} waiting for {}",
                args.index,
                path.display()
            );
        }
        if let Some(signal) = wait_for_file(&path, &events)? {
            eprintln!(
                "outpost-step: received {signal} while waiting for step {previous}; the step is \
                 cancelled"
            );
            return Ok((cancelled_before_start(), 128 + signal as i32));
        }
    }
    let mut previous = Vec::new();
    for index in 0..args.index {
        previous.push(read_marker(&args.markers.join(marker_file_name(index)))?.outcome);
    }
    if outpost_steprules::decide(&previous, args.when) == Decision::Skip {
        if verbose {
            eprintln!(
                "outpost-step: step {} skipped (when: {})",
                args.index,
                args.when.as_str()
            );
        }
        return Ok((Marker::skipped(), 0));
    }
    // A stop that came while the markers were read: the command never starts.
    if let Ok(Event::Signal(signal)) = events.try_recv() {
        eprintln!("outpost-step: received {signal} before the step started; it is cancelled");
        return Ok((cancelled_before_start(), 128 + signal as i32));
    }
    supervise(args, tx, &events)
}

fn cancelled_before_start() -> Marker {
    Marker {
        outcome: Outcome::Cancelled,
        exit: None,
    }
}

/// Blocks the stop signals in this thread (and so in every thread started later) and starts the
/// thread that takes them with `sigwait`.
///
/// Why this shape: the wrapper is PID 1 of its container, and PID 1 ignores a signal it has no
/// handler for, so it must take SIGTERM somehow. `sigwait` on a blocked signal needs no handler
/// and no unsafe code (nix wraps it safely). The step's command does not inherit the blocked
/// mask: std's `Command` resets the signal mask (and SIGPIPE) in the child before `exec`.
fn listen_for_signals(tx: Sender<Event>) -> Result<(), Error> {
    let mut set = SigSet::empty();
    for signal in STOP_SIGNALS {
        set.add(signal);
    }
    set.thread_block()
        .map_err(|e| Error::system("cannot block SIGTERM and SIGINT", e))?;
    // Detached on purpose: it lives as long as the process, which ends with the step.
    std::thread::Builder::new()
        .name("signals".to_owned())
        .spawn(move || {
            loop {
                match set.wait() {
                    Ok(signal) => {
                        if tx.send(Event::Signal(signal)).is_err() {
                            return;
                        }
                    }
                    Err(Errno::EINTR) => {}
                    Err(e) => {
                        eprintln!("outpost-step: cannot wait for signals: {e}");
                        return;
                    }
                }
            }
        })
        .map_err(|e| Error::Io {
            what: "cannot start the signal thread".to_owned(),
            source: e,
        })?;
    Ok(())
}

/// Waits until `path` exists; `Some(signal)` when a stop signal came first.
fn wait_for_file(path: &Path, events: &Receiver<Event>) -> Result<Option<Signal>, Error> {
    loop {
        match path.try_exists() {
            Ok(true) => return Ok(None),
            Ok(false) => {}
            Err(e) => return Err(Error::io("look for", path, e)),
        }
        match events.recv_timeout(POLL) {
            Ok(Event::Signal(signal)) => return Ok(Some(signal)),
            // No command runs yet, so nothing else can be reported.
            Ok(Event::Exited(_) | Event::WaitFailed(_)) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Err(Error::Io {
                    what: "the signal thread is gone".to_owned(),
                    source: std::io::Error::other("channel closed"),
                });
            }
        }
    }
}

/// Reads and parses one marker file.
pub fn read_marker(path: &Path) -> Result<Marker, Error> {
    let file = fs::File::open(path).map_err(|e| Error::io("read the marker", path, e))?;
    let mut bytes = Vec::new();
    file.take(MAX_MARKER_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("read the marker", path, e))?;
    let text = String::from_utf8_lossy(&bytes);
    Marker::parse(&text).map_err(|source| Error::Marker {
        path: PathBuf::from(path),
        source,
    })
}

/// Why the wrapper is stopping the command.
struct Stopping {
    outcome: Outcome,
    /// When SIGKILL follows the SIGTERM.
    kill_at: Instant,
    killed: bool,
}

/// Starts the command and watches it to its end.
fn supervise(
    args: &RunArgs,
    tx: Sender<Event>,
    events: &Receiver<Event>,
) -> Result<(Marker, i32), Error> {
    // Through the `_exec` trampoline (this binary again), which clears the signal mask and then
    // execs the command: the mask blocking SIGTERM here would otherwise be inherited (std's
    // `Command` keeps it, and busybox's `sh` does not reset it), and the command could never be
    // stopped by SIGTERM. The trampoline reports a command it cannot run as 126 or 127.
    let me = Path::new("/proc/self/exe");
    let child = std::process::Command::new(me)
        .arg0("outpost-step")
        .arg(crate::cli::EXEC_SUBCOMMAND)
        .arg("--")
        .args(&args.command)
        // Its own group, so that SIGTERM reaches everything the script started.
        .process_group(0)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| Error::io("start the step's command through", me, e))?;
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("a pid fits in i32"));
    // The child is reaped below with waitpid(-1), not through `child`: as PID 1 the wrapper also
    // inherits the script's orphans, and reaping them keeps the container free of zombies.
    drop(child);
    std::thread::Builder::new()
        .name("reaper".to_owned())
        .spawn(move || reap(pid, &tx))
        .map_err(|e| Error::Io {
            what: "cannot start the reaper thread".to_owned(),
            source: e,
        })?;

    let timeout_at = args.timeout.map(|t| Instant::now() + t);
    let mut stopping: Option<Stopping> = None;
    let exit = loop {
        let deadline = match &stopping {
            None => timeout_at,
            Some(s) if !s.killed => Some(s.kill_at),
            Some(_) => None,
        };
        let event = match deadline {
            Some(at) => events.recv_timeout(at.saturating_duration_since(Instant::now())),
            None => events.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match event {
            Ok(Event::Exited(code)) => {
                // What the script left running in its group ends with the step, as it would
                // with the container. The group outlives its reaped leader only while it has
                // members, so its id cannot have been reused by then.
                signal_group(pid, Signal::SIGKILL);
                break code;
            }
            Ok(Event::WaitFailed(e)) => {
                return Err(Error::system("cannot wait for the step's command", e));
            }
            Ok(Event::Signal(signal)) => match &mut stopping {
                None => {
                    eprintln!(
                        "outpost-step: received {signal}; stopping the step (SIGTERM, then \
                         SIGKILL after {})",
                        show(args.grace)
                    );
                    signal_group(pid, Signal::SIGTERM);
                    stopping = Some(Stopping {
                        outcome: Outcome::Cancelled,
                        kill_at: Instant::now() + args.grace,
                        killed: false,
                    });
                }
                Some(s) if !s.killed => {
                    eprintln!("outpost-step: received {signal} again; killing the step");
                    signal_group(pid, Signal::SIGKILL);
                    s.killed = true;
                }
                Some(_) => {}
            },
            Err(RecvTimeoutError::Timeout) => match &mut stopping {
                None => {
                    eprintln!(
                        "outpost-step: the step timed out after {}; stopping it (SIGTERM, then \
                         SIGKILL after {})",
                        show(args.timeout.unwrap_or_default()),
                        show(args.grace)
                    );
                    signal_group(pid, Signal::SIGTERM);
                    stopping = Some(Stopping {
                        outcome: Outcome::TimedOut,
                        kill_at: Instant::now() + args.grace,
                        killed: false,
                    });
                }
                Some(s) => {
                    eprintln!(
                        "outpost-step: the step is still running {} after SIGTERM; killing it",
                        show(args.grace)
                    );
                    signal_group(pid, Signal::SIGKILL);
                    s.killed = true;
                }
            },
            Err(RecvTimeoutError::Disconnected) => {
                return Err(Error::Io {
                    what: "the reaper thread is gone".to_owned(),
                    source: std::io::Error::other("channel closed"),
                });
            }
        }
    };
    let marker = match stopping {
        // Whatever the command did on SIGTERM, the step did not end on its own.
        Some(s) => Marker {
            outcome: s.outcome,
            exit: Some(exit),
        },
        None => Marker::exited(exit),
    };
    Ok((marker, exit))
}

/// The `_exec` trampoline, in the process that becomes the step's command: clears the signal
/// mask inherited from the wrapper and replaces itself with `command`. Returns only when that
/// fails, with the exit code a shell would give (127 not found, 126 not executable).
pub fn exec(command: &[std::ffi::OsString]) -> Error {
    if let Err(e) = SigSet::empty().thread_set_mask() {
        return Error::system("cannot clear the signal mask", e);
    }
    let source = std::process::Command::new(&command[0])
        .args(&command[1..])
        .exec();
    Error::Spawn {
        exit: if source.kind() == std::io::ErrorKind::NotFound {
            127
        } else {
            126
        },
        program: command[0].to_string_lossy().into_owned(),
        source,
    }
}

/// Reaps children until `pid` ends, then reports its exit code.
fn reap(pid: Pid, tx: &Sender<Event>) {
    loop {
        let event = match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(p, code)) if p == pid => Event::Exited(code),
            Ok(WaitStatus::Signaled(p, signal, _)) if p == pid => {
                Event::Exited(128 + signal as i32)
            }
            // An orphan of the script, or a report that is not an ending.
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => Event::WaitFailed(e),
        };
        let _ = tx.send(event);
        return;
    }
}

/// Signals the command's process group; a group that is already gone is fine.
fn signal_group(pgid: Pid, signal: Signal) {
    match killpg(pgid, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => eprintln!("outpost-step: cannot send {signal} to the step: {e}"),
    }
}

/// `90s`, `1m30s`, `500ms`: how a duration reads in the wrapper's notes.
fn show(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    if out.is_empty() { "0s".to_owned() } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_written() {
        for (d, text) in [
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(3600), "1h"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::ZERO, "0s"),
        ] {
            assert_eq!(show(d), text);
        }
    }

    #[test]
    fn markers_are_read_with_their_path_in_errors() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("0.done");
        fs::write(&path, "state=failed exit=3\n").expect("written");
        assert_eq!(read_marker(&path).expect("valid"), Marker::exited(3));
        fs::write(&path, "state=maybe\n").expect("written");
        let err = read_marker(&path).expect_err("invalid").to_string();
        assert_eq!(
            err,
            format!(
                "{}: invalid marker `state=maybe`: unknown state `maybe`; expected one of \
                 `success`, `failed`, `timed_out`, `cancelled`, `skipped`",
                path.display()
            )
        );
        let missing = dir.path().join("7.done");
        let err = read_marker(&missing).expect_err("missing").to_string();
        assert!(
            err.starts_with(&format!("cannot read the marker `{}`", missing.display())),
            "{err}"
        );
    }
}
