//! What the wrapper's process tests share: the built binary, a markers directory, waiting on a
//! condition with a deadline, and reading a child's output line by line.

#![allow(dead_code)] // each test binary uses a different part

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Long enough for a loaded 2-core machine; only ever reached when something is broken.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The wrapper as built for this test run.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_outpost-step")
}

/// `outpost-step <args…>` with stdin from /dev/null.
pub fn wrapper(args: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(args).stdin(Stdio::null());
    cmd
}

/// Runs `outpost-step <args…>` to its end, output captured.
pub fn run(args: &[&str]) -> Output {
    wrapper(args).output().expect("the wrapper starts")
}

/// The exit code, or 128 + the signal (as a shell would say).
pub fn code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .expect("an exit code or a signal")
}

/// A temporary markers directory, removed at the end of the test.
pub struct Markers {
    pub dir: tempfile::TempDir,
}

impl Markers {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("a temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn arg(&self) -> &str {
        self.dir.path().to_str().expect("a UTF-8 temp path")
    }

    pub fn file(&self, index: u32) -> PathBuf {
        self.dir.path().join(format!("{index}.done"))
    }

    /// Writes step `index`'s marker the way the wrapper does: a temporary file renamed.
    pub fn put(&self, index: u32, text: &str) {
        let temp = self.dir.path().join(format!(".{index}.test-tmp"));
        std::fs::write(&temp, text).expect("temp marker written");
        std::fs::rename(&temp, self.file(index)).expect("marker renamed into place");
    }

    /// Step `index`'s marker, if written.
    pub fn get(&self, index: u32) -> Option<String> {
        std::fs::read_to_string(self.file(index)).ok()
    }
}

/// Waits until `cond` holds, failing the test at the deadline with `what`.
#[track_caller]
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for `child` to end, killing it and failing the test at the deadline.
#[track_caller]
pub fn wait_exit(child: &mut Child) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait works") {
            return status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("the wrapper did not end within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The lines a child writes to one of its pipes, read on a thread, so that a test can wait for
/// a given line with a deadline.
pub struct Lines {
    rx: mpsc::Receiver<String>,
    /// Every line seen so far.
    pub seen: Vec<String>,
}

impl Lines {
    pub fn stdout(pipe: ChildStdout) -> Self {
        Self::spawn(BufReader::new(pipe))
    }

    pub fn stderr(pipe: ChildStderr) -> Self {
        Self::spawn(BufReader::new(pipe))
    }

    fn spawn(reader: impl BufRead + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `needle` and returns it.
    #[track_caller]
    pub fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with `{needle}` (pipe closed or deadline passed); seen: {:?}",
                    self.seen
                ),
            }
        }
    }

    /// Everything until the pipe closes.
    pub fn rest(&mut self) -> Vec<String> {
        while let Ok(line) = self.rx.recv_timeout(DEADLINE) {
            self.seen.push(line);
        }
        self.seen.clone()
    }
}
