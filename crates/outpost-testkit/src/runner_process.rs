//! [`RunnerProcess`]: the real `runner-process` binary as a child process, pointed at a hub (or
//! a [`FaultProxy`](crate::FaultProxy) in front of one), with its token in a file, a state
//! directory a test can keep across restarts, and its `/metrics`, `/healthz` and `/readyz` on a
//! loopback port. Killed on drop.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::Method;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::{Http, bin_path, unique};

/// The line the runner logs once its metrics listener is bound.
const SERVING_LINE: &str = "serving /metrics, /healthz and /readyz";
/// What the runner says when the metrics port is taken.
const PORT_BUSY: &str = "cannot listen for metrics";
/// How many lines of the runner's stderr a panic message shows.
const STDERR_TAIL_LINES: usize = 80;
/// Timeout of one request to the runner's metrics listener.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of a [`RunnerProcess`]: `RunnerProcess::builder(hub.url(), &token).start().await`.
#[derive(Debug, Clone)]
pub struct RunnerProcessBuilder {
    hub_url: String,
    token: String,
    name: String,
    labels: Vec<String>,
    concurrency: u32,
    state_dir: Option<PathBuf>,
    secrets_dir: Option<PathBuf>,
    config: String,
    env: Vec<(String, String)>,
    binary: Option<PathBuf>,
    start_timeout: Duration,
}

impl RunnerProcessBuilder {
    /// The runner's name (default: a unique `runner-…`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// `--labels` (default: none).
    pub fn labels(mut self, labels: &[&str]) -> Self {
        self.labels = labels.iter().map(|l| (*l).to_owned()).collect();
        self
    }

    /// `--concurrency` (default 1).
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n;
        self
    }

    /// Uses this state directory (created if missing, never removed by the kit) instead of a
    /// temporary one: two runners started one after the other with the same path share it.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// `--secrets-dir`.
    pub fn secrets_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.secrets_dir = Some(dir.into());
        self
    }

    /// TOML text of the `--config` file, e.g. `drain_grace = "5m"\n[executor]\nkill_grace =
    /// "0s"\n` (top-level keys before any section). Default: an empty file.
    pub fn config(mut self, toml: impl Into<String>) -> Self {
        self.config = toml.into();
        self
    }

    /// One more environment variable, e.g. `OUTPOST_SECRET_TOKEN` or `RUST_LOG`.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Runs this executable instead of [`bin_path`]`("runner-process")`.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// How long the runner may take to serve its metrics port (default 30 s).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Starts the runner and waits until its metrics listener answers `/healthz` (not until it
    /// registered: see [`RunnerProcess::wait_ready`]). Panics, with the runner's stderr, when it
    /// does not come up.
    pub async fn start(self) -> RunnerProcess {
        let dir = tempfile::Builder::new()
            .prefix("outpost-testrunner-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory for a runner: {e}"));
        let state_dir = self
            .state_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("state"));
        let token_file = dir.path().join("token");
        let config_file = dir.path().join("runner.toml");
        write_file(&token_file, &format!("{}\n", self.token));
        write_file(&config_file, &self.config);
        let mut runner = RunnerProcess {
            binary: self
                .binary
                .clone()
                .unwrap_or_else(|| bin_path("runner-process")),
            stderr_path: dir.path().join("runner.stderr"),
            stdout_path: dir.path().join("runner.stdout"),
            token_file,
            config_file,
            state_dir,
            options: self,
            child: None,
            exit: None,
            metrics_addr: None,
            dir,
            tail_shown: AtomicBool::new(false),
        };
        runner.spawn_and_wait().await;
        runner
    }
}

/// A running `runner-process`. SIGKILLed when dropped; when dropped during a panic, the tail of
/// its stderr is printed so the failing test shows what the runner said.
pub struct RunnerProcess {
    binary: PathBuf,
    stderr_path: PathBuf,
    stdout_path: PathBuf,
    token_file: PathBuf,
    config_file: PathBuf,
    state_dir: PathBuf,
    options: RunnerProcessBuilder,
    child: Option<Child>,
    /// How the last process ended, once it did.
    exit: Option<ExitStatus>,
    metrics_addr: Option<SocketAddr>,
    /// Token file, config file, output files, and the state directory unless one was given.
    dir: TempDir,
    tail_shown: AtomicBool,
}

impl std::fmt::Debug for RunnerProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerProcess")
            .field("name", &self.options.name)
            .field("hub", &self.options.hub_url)
            .field("pid", &self.pid())
            .field("metrics", &self.metrics_addr)
            .field("state_dir", &self.state_dir)
            .finish()
    }
}

impl RunnerProcess {
    /// Options for a runner of `hub_url` (a hub's or a proxy's URL) with the runner `token`.
    pub fn builder(hub_url: impl Into<String>, token: impl Into<String>) -> RunnerProcessBuilder {
        RunnerProcessBuilder {
            hub_url: hub_url.into(),
            token: token.into(),
            name: unique("runner"),
            labels: Vec::new(),
            concurrency: 1,
            state_dir: None,
            secrets_dir: None,
            config: String::new(),
            env: Vec::new(),
            binary: None,
            start_timeout: Duration::from_secs(30),
        }
    }

    /// The runner's name at the hub.
    pub fn name(&self) -> &str {
        &self.options.name
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is running (not yet seen to exit, not killed by the kit).
    pub fn is_running(&mut self) -> bool {
        self.poll_exit();
        self.child.is_some()
    }

    /// The state directory (kept across [`RunnerProcess::restart`]).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The runner's own temporary directory (token file, config file, output).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The metrics listener's address of the current process.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
            .expect("a started runner has a metrics address")
    }

    /// The file the runner's stderr goes to (appended to across restarts).
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// All the runner has written to stderr so far, across restarts.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.stderr_path).unwrap_or_default()).into_owned()
    }

    /// The last `lines` lines of the runner's stderr.
    pub fn stderr_tail(&self, lines: usize) -> String {
        tail(&self.stderr_path, lines)
    }

    /// A client for the runner's metrics listener.
    pub fn http(&self) -> Http {
        Http::new(format!("http://{}", self.metrics_addr())).timeout(PROBE_TIMEOUT)
    }

    /// The status `/readyz` answers, `None` when nothing answers (the runner is gone).
    pub async fn readyz(&self) -> Option<u16> {
        self.probe("/readyz").await.map(|(status, _)| status)
    }

    /// `GET /healthz`'s status, `None` when nothing answers.
    pub async fn healthz(&self) -> Option<u16> {
        self.probe("/healthz").await.map(|(status, _)| status)
    }

    /// The `/metrics` text; panics (with the runner's stderr) when it does not answer 200.
    pub async fn metrics(&self) -> String {
        match self.probe("/metrics").await {
            Some((200, body)) => body,
            other => self.fail(&format!(
                "GET /metrics of runner {} answered {other:?}",
                self.options.name
            )),
        }
    }

    /// The value of one sample of `/metrics`, named with its labels exactly as the runner
    /// prints them (`outpost_runner_jobs_total{result="success"}`); `None` when absent.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        metric_value(&self.metrics().await, sample)
    }

    /// Waits until `/readyz` answers 200 (registered and taking jobs); panics at `deadline`.
    pub async fn wait_ready(&self, deadline: Duration) {
        let end = tokio::time::Instant::now() + deadline;
        loop {
            if self.readyz().await == Some(200) {
                return;
            }
            if tokio::time::Instant::now() >= end {
                self.fail(&format!(
                    "runner {} was not ready within {deadline:?}",
                    self.options.name
                ));
            }
            tokio::time::sleep(crate::POLL_INTERVAL).await;
        }
    }

    /// Sends SIGTERM (the first one drains, a second cancels the running jobs).
    pub fn sigterm(&self) {
        self.signal(Signal::SIGTERM);
    }

    /// Sends SIGINT (like SIGTERM).
    pub fn sigint(&self) {
        self.signal(Signal::SIGINT);
    }

    /// Kills the runner with SIGKILL and waits until it is gone; its child processes (steps)
    /// are not touched. A no-op when it is not running.
    pub async fn sigkill(&mut self) {
        self.poll_exit();
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if let Err(e) = child.kill() {
            panic!("cannot kill the runner (pid {}): {e}", child.id());
        }
        self.wait_exit(Duration::from_secs(30)).await;
    }

    /// Waits until the runner has exited and answers how; panics (with its stderr) at
    /// `deadline`.
    pub async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let end = tokio::time::Instant::now() + deadline;
        loop {
            self.poll_exit();
            if self.child.is_none()
                && let Some(status) = self.exit
            {
                return status;
            }
            if self.child.is_none() {
                self.fail("wait_exit on a runner that was never started");
            }
            if tokio::time::Instant::now() >= end {
                self.fail(&format!(
                    "runner {} did not exit within {deadline:?}",
                    self.options.name
                ));
            }
            tokio::time::sleep(crate::POLL_INTERVAL).await;
        }
    }

    /// How the last process ended, once it has.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.poll_exit();
        self.exit
    }

    /// Starts the runner again with the same arguments and state directory (on a fresh metrics
    /// port); SIGKILLs it first when it still runs.
    pub async fn restart(&mut self) {
        self.sigkill().await;
        self.note_in_stderr("restart");
        self.spawn_and_wait().await;
    }

    /// Panics with `what` and the tail of the runner's stderr.
    #[track_caller]
    pub fn fail(&self, what: &str) -> ! {
        self.tail_shown.store(true, Ordering::Relaxed);
        panic!(
            "{what}\n--- runner {} stderr (tail, {}) ---\n{}",
            self.options.name,
            self.stderr_path.display(),
            self.stderr_tail(STDERR_TAIL_LINES)
        );
    }

    fn signal(&self, signal: Signal) {
        let Some(pid) = self.pid() else {
            self.fail(&format!("cannot send {signal}: the runner is not running"));
        };
        let pid = Pid::from_raw(i32::try_from(pid).expect("pids fit in i32"));
        if let Err(e) = kill(pid, signal) {
            self.fail(&format!(
                "cannot send {signal} to the runner (pid {pid}): {e}"
            ));
        }
    }

    async fn probe(&self, path: &str) -> Option<(u16, String)> {
        let addr = self.metrics_addr?;
        let http = Http::new(format!("http://{addr}")).timeout(PROBE_TIMEOUT);
        match http.send(Method::GET, path, None).await {
            Ok(answer) => Some((answer.code(), answer.text())),
            Err(_) => None,
        }
    }

    fn poll_exit(&mut self) {
        if let Some(child) = self.child.as_mut() {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.exit = Some(status);
                    self.child = None;
                }
                Ok(None) => {}
                Err(e) => panic!("cannot wait for the runner (pid {}): {e}", child.id()),
            }
        }
    }

    fn note_in_stderr(&self, what: &str) {
        if let Ok(mut f) = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
        {
            let _ = writeln!(f, "--- testkit: {what} ---");
        }
    }

    fn command(&self, metrics: SocketAddr) -> Command {
        let o = &self.options;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--hub")
            .arg(&o.hub_url)
            .arg("--token-file")
            .arg(&self.token_file)
            .arg("--name")
            .arg(&o.name)
            .arg("--concurrency")
            .arg(o.concurrency.to_string())
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--metrics-listen")
            .arg(metrics.to_string())
            .arg("--config")
            .arg(&self.config_file);
        if !o.labels.is_empty() {
            cmd.arg("--labels").arg(o.labels.join(","));
        }
        if let Some(dir) = &o.secrets_dir {
            cmd.arg("--secrets-dir").arg(dir);
        }
        // A clean slate: no configuration, secret or proxy of the test's own environment.
        let inherited: Vec<String> = std::env::vars()
            .map(|(k, _)| k)
            .filter(|k| {
                k.starts_with("OUTPOST_")
                    || k.eq_ignore_ascii_case("http_proxy")
                    || k.eq_ignore_ascii_case("https_proxy")
                    || k.eq_ignore_ascii_case("all_proxy")
                    || k == "RUST_LOG"
            })
            .collect();
        for k in inherited {
            cmd.env_remove(k);
        }
        cmd.env("RUST_LOG", "info").env("NO_COLOR", "1");
        for (key, value) in &o.env {
            cmd.env(key, value);
        }
        cmd.current_dir(self.dir.path()).stdin(Stdio::null());
        cmd
    }

    /// Spawns the runner on a free metrics port, retrying another port when the chosen one was
    /// taken in between, until the start timeout.
    async fn spawn_and_wait(&mut self) {
        let deadline = tokio::time::Instant::now() + self.options.start_timeout;
        loop {
            match self.spawn_once(deadline).await {
                Ok(()) => return,
                Err(Retry::PortBusy) if tokio::time::Instant::now() < deadline => {
                    self.note_in_stderr("metrics port taken; retrying on another");
                }
                Err(Retry::PortBusy) => self.fail("runner-process found no free metrics port"),
                Err(Retry::Fatal(why)) => {
                    self.fail(&format!("runner-process did not start: {why}"));
                }
            }
        }
    }

    async fn spawn_once(&mut self, deadline: tokio::time::Instant) -> Result<(), Retry> {
        let metrics = free_port().map_err(Retry::Fatal)?;
        let from = std::fs::metadata(&self.stderr_path).map_or(0, |m| m.len());
        let stdout = File::create(&self.stdout_path).map_err(|e| {
            Retry::Fatal(format!("cannot create {}: {e}", self.stdout_path.display()))
        })?;
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .map_err(|e| {
                Retry::Fatal(format!("cannot open {}: {e}", self.stderr_path.display()))
            })?;
        let mut cmd = self.command(metrics);
        let child =
            cmd.stdout(stdout).stderr(stderr).spawn().map_err(|e| {
                Retry::Fatal(format!("cannot spawn {}: {e}", self.binary.display()))
            })?;
        self.child = Some(child);
        self.exit = None;
        self.metrics_addr = Some(metrics);
        loop {
            let said = self.stderr_since(from);
            if said.contains(SERVING_LINE) && self.healthz().await == Some(200) {
                return Ok(());
            }
            self.poll_exit();
            if self.child.is_none() {
                let said = self.stderr_since(from);
                if said.contains(PORT_BUSY) {
                    return Err(Retry::PortBusy);
                }
                return Err(Retry::Fatal(format!(
                    "it exited with {:?} before serving its metrics port\ncommand: {cmd:?}",
                    self.exit
                )));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Retry::Fatal(format!(
                    "its metrics port {metrics} did not answer within {:?}\ncommand: {cmd:?}",
                    self.options.start_timeout
                )));
            }
            tokio::time::sleep(crate::POLL_INTERVAL).await;
        }
    }

    fn stderr_since(&self, from: u64) -> String {
        let bytes = std::fs::read(&self.stderr_path).unwrap_or_default();
        let from = usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
        String::from_utf8_lossy(&bytes[from..]).into_owned()
    }
}

impl Drop for RunnerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            // Reaping a SIGKILLed child returns at once.
            let _ = child.wait();
        }
        if std::thread::panicking() && !self.tail_shown.load(Ordering::Relaxed) {
            eprintln!(
                "--- runner {} stderr (tail, {}) ---\n{}",
                self.options.name,
                self.stderr_path.display(),
                self.stderr_tail(STDERR_TAIL_LINES)
            );
        }
    }
}

enum Retry {
    PortBusy,
    Fatal(String),
}

/// A loopback port nobody listens on right now (bound to port 0, then released).
fn free_port() -> Result<SocketAddr, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot bind 127.0.0.1:0 to find a free port: {e}"))?;
    listener
        .local_addr()
        .map_err(|e| format!("a bound listener has no address: {e}"))
}

fn write_file(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// The value of the sample `sample` (name and labels exactly as printed) in Prometheus or
/// OpenMetrics text; `None` when absent or not a number.
pub fn metric_value(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let rest = line.strip_prefix(sample)?;
            let value = rest.strip_prefix(' ')?.split_whitespace().next()?;
            value.parse().ok()
        })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// Writes an executable shell script standing in for runner-process.
    fn fake_runner(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("fake-runner");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write the fake runner");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    #[test]
    fn metric_values_by_exact_sample() {
        let text = "# HELP x y\n# TYPE outpost_runner_jobs counter\n\
                    outpost_runner_jobs_total{result=\"success\"} 2\n\
                    outpost_runner_jobs_total{result=\"failed\"} 1\n\
                    outpost_runner_seconds_since_last_hub_success -1.0\n\
                    outpost_runner_pickup_latency_seconds_count 3\n# EOF\n";
        let check = |sample: &str, expected: Option<f64>| {
            assert_eq!(metric_value(text, sample), expected, "{sample}");
        };
        check("outpost_runner_jobs_total{result=\"success\"}", Some(2.0));
        check("outpost_runner_jobs_total{result=\"failed\"}", Some(1.0));
        check("outpost_runner_jobs_total{result=\"error\"}", None);
        check("outpost_runner_seconds_since_last_hub_success", Some(-1.0));
        check("outpost_runner_pickup_latency_seconds_count", Some(3.0));
        check("outpost_runner_pickup_latency_seconds", None);
    }

    #[tokio::test]
    #[should_panic(expected = "exited with")]
    async fn a_runner_that_exits_at_once_panics_with_its_stderr() {
        let scripts = tempfile::tempdir().expect("tempdir");
        let fake = fake_runner(scripts.path(), "echo 'no hub here' >&2; exit 2");
        RunnerProcess::builder("http://127.0.0.1:1", "t")
            .binary(fake)
            .start()
            .await;
    }

    #[tokio::test]
    async fn retries_on_a_busy_port_and_passes_the_arguments() {
        let scripts = tempfile::tempdir().expect("tempdir");
        let count = scripts.path().join("count");
        // Claims the port is busy on the first start; on the second prints the serving line
        // and records its arguments, but serves nothing: the start then waits for /healthz.
        let body = format!(
            r#"n=$(cat {count} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {count}
if [ "$n" = 1 ]; then echo "runner-process: cannot listen for metrics on x: busy" >&2; exit 1; fi
echo "args: $* token=$(cat "$4") secret=$OUTPOST_SECRET_X log=$RUST_LOG" >&2
echo "serving /metrics, /healthz and /readyz" >&2
exec sleep 300"#,
            count = count.display()
        );
        let fake = fake_runner(scripts.path(), &body);
        let start = RunnerProcess::builder("http://127.0.0.1:1", "tok3n")
            .binary(fake)
            .name("r1")
            .labels(&["a", "b"])
            .env("OUTPOST_SECRET_X", "sekret")
            .start_timeout(Duration::from_millis(1500))
            .start();
        // The fake never answers /healthz, so the start gives up; what it said shows both runs.
        let panic = tokio::spawn(start).await.expect_err("the start times out");
        let message = panic
            .into_panic()
            .downcast::<String>()
            .map(|s| *s)
            .unwrap_or_default();
        assert!(message.contains("did not answer within"), "{message}");
        assert!(
            message.contains("--- testkit: metrics port taken; retrying on another ---"),
            "{message}"
        );
        assert!(message.contains("--name r1"), "{message}");
        assert!(message.contains("--labels a,b"), "{message}");
        assert!(message.contains("token=tok3n"), "{message}");
        assert!(message.contains("secret=sekret log=info"), "{message}");
        assert_eq!(std::fs::read_to_string(&count).expect("count").trim(), "2");
    }
}
